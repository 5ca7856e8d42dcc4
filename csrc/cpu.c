#include "cpu.h"

lstm_simd_level lstm_cpu_simd_level(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        return LSTM_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return LSTM_SIMD_AVX2;
#endif
    return LSTM_SIMD_PORTABLE;
}

const char *lstm_simd_name(lstm_simd_level level)
{
    switch (level) {
    case LSTM_SIMD_AVX512: return "avx512";
    case LSTM_SIMD_AVX2: return "avx2";
    default: return "portable";
    }
}
