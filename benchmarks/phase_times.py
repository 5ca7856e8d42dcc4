"""Per-phase wall times of a training step of the NumPy layer (backend c), for profiling.

    python -m benchmarks.phase_times SHAPE DTYPE THREADS [CALLS] [loop]

SHAPE is a name of shapes.SHAPES or T,B,I,H (e.g. 35,20,650,650). Prints the medians over CALLS calls (after 2 warm-up
calls) of the forward with saving (``layer(x, hx)`` in training mode) and of
``layer.backward(dy)``, their GFLOP/s (forward 2*T*B*4H*(I+H), backward twice that), and
the share of one CPU that other processes used meanwhile (from /proc/stat: a figure taken
while they ran is not a measurement of this code alone). With ``loop`` it only runs the
calls, for ``perf record``; the installed extension is stripped, so first
``perf buildid-cache -a build/dev/_c.abi3.so`` (same build id) to see the kernel's
function names.
"""

import os
import resource
import sys
import time

import numpy as np

import lstm_fast

from .shapes import SHAPES


def _busy_seconds():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv):
    shape, dtype, threads = argv[0], argv[1], int(argv[2])
    calls = int(argv[3]) if len(argv) > 3 else 10
    T, B, I, H = SHAPES[shape] if shape in SHAPES else map(int, shape.split(","))
    lstm_fast.set_num_threads(threads)
    rng = np.random.default_rng(0)
    layer = lstm_fast.LSTM(I, H, dtype=dtype, backend="c")
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    hx = (np.zeros((1, B, H), dtype), np.zeros((1, B, H), dtype))
    layer.train()

    def one():
        t0 = time.perf_counter()
        layer(x, hx)
        t1 = time.perf_counter()
        layer.backward(dy)
        return t1 - t0, time.perf_counter() - t1

    for _ in range(2):
        one()
    if len(argv) > 4 and argv[4] == "loop":
        for _ in range(calls):
            one()
        return
    b0, o0, w0 = _busy_seconds(), _own_seconds(), time.time()
    f, b = np.median([one() for _ in range(calls)], axis=0)
    foreign = ((_busy_seconds() - b0) - (_own_seconds() - o0)) / (time.time() - w0)
    flop = 2 * T * B * 4 * H * (I + H)
    print(f"{shape} {dtype} {threads}T forward(saving) {f * 1e3:.3f} ms {flop / f / 1e9:.1f} GFLOP/s, "
          f"backward {b * 1e3:.3f} ms {2 * flop / b / 1e9:.1f} GFLOP/s, "
          f"step {(f + b) * 1e3:.3f} ms {3 * flop / (f + b) / 1e9:.1f} GFLOP/s; "
          f"other processes {foreign:.2f} CPU")


if __name__ == "__main__":
    main(sys.argv[1:])
