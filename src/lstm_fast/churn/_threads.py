"""Limit NumPy's OpenBLAS threads for the duration of the churn job.

The churn model's matrix products are small (a batch of 128 customers x 4*32
gate units), so BLAS threads cost more than they give; on a busy machine
OpenBLAS's spinning threads made the numpy backend 10-20x slower (measured:
3.7 s vs 0.3 s per epoch). Uses threadpoolctl if installed, else OpenBLAS's
own ``set_num_threads`` found in the loaded libraries (ctypes); does nothing
if neither is found.
"""

import contextlib
import ctypes
import os


def _openblas_libs():
    libs = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "openblas" in os.path.basename(line.split()[-1]).lower()
                            and ".so" in line})
    except OSError:
        return libs
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes = [ctypes.c_int]
                    getter.restype = ctypes.c_int
                    libs.append((setter, getter))
                    break
            else:
                continue
            break
    return libs


@contextlib.contextmanager
def blas_threads(n):
    """Context: NumPy's BLAS uses ``n`` threads (restored on exit); n None = unchanged."""
    if n is None or n < 1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        libs = _openblas_libs()
        old = [g() for _, g in libs]
        for s, _ in libs:
            s(int(n))
        try:
            yield
        finally:
            for (s, _), o in zip(libs, old):
                s(o)
    else:
        with threadpool_limits(int(n), user_api="blas"):
            yield
