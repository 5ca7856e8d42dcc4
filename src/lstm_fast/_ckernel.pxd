# Declarations of the C kernel (csrc/). Only nogil extern declarations live here.

cdef extern from "cpu.h" nogil:
    ctypedef enum lstm_simd_level:
        LSTM_SIMD_PORTABLE
        LSTM_SIMD_AVX2
        LSTM_SIMD_AVX512
    lstm_simd_level lstm_cpu_simd_level()
    const char *lstm_simd_name(lstm_simd_level level)
