"""First-use cost of the Numba backend in a fresh process: cold (empty cache) and from cache.

    python benchmarks/numba_first_use.py            # uses a fresh NUMBA_CACHE_DIR, then reuses it
    python benchmarks/numba_first_use.py --layer-norm   # the layer-normalized LSTM (lnorm.py's kernels)
"""
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np, lstm_fast
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((6, 32, 3)).astype(np.float32)
w_ih = rng.standard_normal((128, 3)).astype(np.float32)
w_hh = rng.standard_normal((128, 32)).astype(np.float32)
ln = dict(ln_w_ih=np.ones(128, np.float32), ln_w_hh=np.ones(128, np.float32), ln_w_c=np.ones(32, np.float32),
          ln_b_c=np.zeros(32, np.float32)) if "--layer-norm" in sys.argv else {}
r = lstm_fast.lstm_forward(x, w_ih, w_hh, backend="numba", **ln)
t2 = time.perf_counter()
lstm_fast.lstm_backward(r.cache, np.ones_like(r.y))
t3 = time.perf_counter()
print(f"import lstm_fast {t1 - t0:.2f} s; first forward (incl. importing numba) {t2 - t1:.2f} s; "
      f"first backward {t3 - t2:.2f} s")
"""


def main():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "from cache", "from cache", "from cache"):
            out = subprocess.run([sys.executable, "-c", CHILD] + sys.argv[1:], env=env, capture_output=True, text=True, check=True)
            print(f"{label:>10}: {out.stdout.strip()}")


if __name__ == "__main__":
    main()
