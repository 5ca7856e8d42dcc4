# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of the C kernel (csrc/): arrays to pointers, GIL released, status to exception."""


def cpu_simd_level():
    """Widest SIMD level this CPU supports: "avx512", "avx2" or "portable"."""
    return lstm_simd_name(lstm_cpu_simd_level()).decode()
