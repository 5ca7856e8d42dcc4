"""Huge pages for the packed weights, measured in one process (not a pytest-benchmark case:
what it compares is how a pack was allocated, which no public option chooses).

    python -m benchmarks.pack_pages "T,B,I,H;..." THREADS ROUNDS

Two layers of the same weights: the first packed while NumPy's huge-page switch is off
(``numpy._core.multiarray._set_madvise_hugepage(False)``: its pack gets 4 KiB pages), the
second with it on (a pack of 4 MiB or more is advised MADV_HUGEPAGE, backends/_bufcache.h).
Their inference forward (two calls) and training step (forward, backward) alternate for
ROUNDS rounds; prints the medians and the median of the per-round ratios (huge / 4 KiB).
"""

import sys
import time

import numpy as np

import lstm_fast

try:
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
except ImportError:   # NumPy 1.x
    from numpy.core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage


def main(argv):
    specs, threads, rounds = argv[0], int(argv[1]), int(argv[2])
    lstm_fast.set_num_threads(threads)
    for spec in specs.split(";"):
        T, B, I, H = map(int, spec.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = rng.standard_normal((T, B, H)).astype(np.float32)
        layers = {}
        before = _get_madvise_hugepage()
        try:
            for huge in (False, True):
                _set_madvise_hugepage(huge)
                layer = lstm_fast.LSTM(I, H, backend="c", seed=0)
                layer.eval()
                layer(x)   # packs
                layers[huge] = layer
        finally:
            _set_madvise_hugepage(before)
        ev = {False: [], True: []}
        tr = {False: [], True: []}
        for _ in range(rounds):
            for huge, layer in layers.items():
                layer.eval()
                t0 = time.perf_counter()
                layer(x)
                layer(x)
                ev[huge].append((time.perf_counter() - t0) / 2)
                layer.train()
                t0 = time.perf_counter()
                layer(x)
                layer.backward(dy)
                tr[huge].append(time.perf_counter() - t0)
        for name, t in (("inference forward", ev), ("training step", tr)):
            ratio = np.median(np.array(t[True]) / np.array(t[False]))
            print(f"{spec} {threads}T {name}: 4 KiB {np.median(t[False]) * 1e3:.2f} ms, "
                  f"huge {np.median(t[True]) * 1e3:.2f} ms ({ratio:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
