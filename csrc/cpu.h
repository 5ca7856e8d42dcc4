/* CPU feature detection for run-time SIMD dispatch.
 *
 * The kernels are compiled for several instruction sets in one binary; the
 * widest level the CPU supports is chosen once, and LSTM_FAST_SIMD
 * ("avx512", "avx2", "portable") can force a lower one for testing. */
#ifndef LSTM_FAST_CPU_H
#define LSTM_FAST_CPU_H

typedef enum {
    LSTM_SIMD_PORTABLE = 0,
    LSTM_SIMD_AVX2 = 1,   /* AVX2 + FMA */
    LSTM_SIMD_AVX512 = 2  /* AVX-512 F + DQ + VL */
} lstm_simd_level;

/* Widest level this CPU supports. */
lstm_simd_level lstm_cpu_simd_level(void);

/* Name of a level: "portable", "avx2", "avx512". */
const char *lstm_simd_name(lstm_simd_level level);

#endif
