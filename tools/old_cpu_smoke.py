"""Smoke test of the installed lstm_fast on a CPU without AVX (run under ``qemu-x86_64 -cpu Nehalem``).

The C kernel must detect "portable", run forward and backward (1 and 2 threads,
float32 and float64) with the NumPy reference's results, and refuse a forced
LSTM_FAST_SIMD=avx2 with an error instead of dying of SIGILL (``--refused``,
run as its own emulated process). Run from outside the source tree, so
``lstm_fast`` is the installed wheel.
"""
import os
import sys

import numpy as np

import lstm_fast
from lstm_fast.backends import _c as _ckernel


def close(a, b, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    return np.allclose(a, b, rtol=tol, atol=tol)


def refused():
    """With LSTM_FAST_SIMD=avx2 on a CPU without AVX2: the kernel must raise, not crash."""
    x = np.ones((2, 1, 3), np.float32)
    try:
        lstm_fast.lstm_forward(x, np.ones((8, 3), np.float32), np.ones((8, 2), np.float32), backend="c")
    except Exception as e:  # noqa: BLE001 - any clean Python error is the point
        print(f"LSTM_FAST_SIMD={os.environ.get('LSTM_FAST_SIMD')!r} refused: {type(e).__name__}: {e}")
        return
    raise AssertionError("forcing a SIMD level the CPU lacks ran instead of raising")


def main():
    print(f"lstm_fast {lstm_fast.__version__} from {os.path.dirname(lstm_fast.__file__)}")
    cpu, used = _ckernel.cpu_simd_level(), _ckernel.simd_level()
    print(f"CPU SIMD level: {cpu}; used: {used}")
    assert cpu == "portable" and used == "portable", (cpu, used)
    rng = np.random.default_rng(0)
    T, B, I, H = 7, 3, 5, 9
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((T, B, I)).astype(dtype)
        w_ih = (0.3 * rng.standard_normal((4 * H, I))).astype(dtype)
        w_hh = (0.3 * rng.standard_normal((4 * H, H))).astype(dtype)
        b_ih = (0.1 * rng.standard_normal(4 * H)).astype(dtype)
        b_hh = (0.1 * rng.standard_normal(4 * H)).astype(dtype)
        dy = rng.standard_normal((T, B, H)).astype(dtype)
        ref = lstm_fast.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, backend="numpy")
        gref = lstm_fast.lstm_backward(ref.cache, dy)
        for threads in (1, 2):
            lstm_fast.set_num_threads(threads)
            out = lstm_fast.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, backend="c")
            g = lstm_fast.lstm_backward(out.cache, dy)
            assert close(out.y, ref.y, dtype) and close(out.h_n, ref.h_n, dtype)
            assert close(out.c_n, ref.c_n, dtype)
            for name in ("dx", "dw_ih", "dw_hh", "db_ih", "dh0", "dc0"):
                assert close(getattr(g, name), getattr(gref, name), dtype), name
            print(f"  {np.dtype(dtype).name}, {threads} thread(s): forward and backward match the reference")
    print("old-CPU smoke test: OK")


if __name__ == "__main__":
    refused() if sys.argv[1:] == ["--refused"] else main()
