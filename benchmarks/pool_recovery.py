"""Does a forced 2-thread forward return to its speed after another process used the CPUs?

    python -m benchmarks.pool_recovery T,B,I,H [torch]

Times the NumPy layer's forward (backend c, 2 threads forced) before, then during 0.5 s of a
busy loop in another process, then every 0.2 s after it ended, with the pool's barrier sleeps
per call and whether jobs are judged contended (``lstm_pool_stats``, ``pool_contended``).
``torch`` imports torch first, so that jobs run on torch's OpenMP team. Measured in
benchmarks/README.md, "Session 13": until then a short barrier budget carried over from a
contended job never recovered.
"""

import ctypes
import statistics
import subprocess
import sys
import time

import numpy as np


def main(argv):
    if "torch" in argv[1:]:
        import torch  # noqa: F401
    import lstm_fast
    import lstm_fast.backends._c as ck
    stats = ctypes.CDLL(ck.__file__).lstm_pool_stats
    out = (ctypes.c_long * 6)()
    T, B, I, H = map(int, argv[0].split(","))
    lstm_fast.set_num_threads(2)
    layer = lstm_fast.LSTM(I, H, backend="c")
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)

    def timed(n=30):
        stats(out)
        s0 = list(out)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            layer(x)
            ts.append(time.perf_counter() - t0)
        stats(out)
        return statistics.median(ts) * 1e6, (out[2] - s0[2]) / n

    for _ in range(20):
        layer(x)
    print("before: %.1f us, %.1f barrier sleeps per call" % timed())
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 0.5: pass"])
    t_end = time.time() + 0.5
    while busy.poll() is None:
        layer(x)
    for _ in range(6):
        us, sleeps = timed()
        print("t+%.1f s after the busy loop: %.1f us, %.1f barrier sleeps per call, contended %d"
              % (time.time() - t_end, us, sleeps, ck.pool_contended()))
        time.sleep(0.2)


if __name__ == "__main__":
    main(sys.argv[1:])
