/* The running CPU: SIMD level for run-time dispatch, vendor and cache sizes for
 * the kernels' blocking decisions.
 *
 * The kernels are compiled for several instruction sets in one binary; the
 * widest level the CPU supports is chosen once, and LSTM_FAST_SIMD
 * ("avx512", "avx2", "portable") can force a lower one for testing.
 *
 * Cache sizes come from cpuid (leaf 4 on Intel, 0x8000001D on AMD, the legacy
 * AMD leaves 0x80000005/6 before that), cross-checked against Linux's
 * /sys/devices/system/cpu/cpu0/cache (which the kernel derives from the same
 * leaves), which is also the fallback on other CPUs. Under a hypervisor both
 * report what the host chose to expose: the L3 in particular can be far off
 * (a 2-vCPU guest has been seen reporting a 480 MiB L3), so blocking should
 * lean on L1d and L2, which are per core. */
#ifndef LSTM_FAST_CPU_H
#define LSTM_FAST_CPU_H

#include <stdint.h>

typedef enum {
    LSTM_SIMD_PORTABLE = 0,
    LSTM_SIMD_AVX2 = 1,   /* AVX2 + FMA */
    LSTM_SIMD_AVX512 = 2  /* AVX-512 F + DQ + VL */
} lstm_simd_level;

/* Widest level this CPU supports. */
lstm_simd_level lstm_cpu_simd_level(void);

/* 1 if the CPU has AVX512_BF16 (vdpbf16ps) as well as the AVX-512 level. */
int lstm_cpu_has_avx512bf16(void);

/* 1 if the CPU has AVX512_VNNI (vpdpbusd on zmm; with AVX512BW) as well as the AVX-512
 * level; AVX-VNNI (the VEX vpdpbusd on ymm) and the AVX2 level. */
int lstm_cpu_has_avx512vnni(void);
int lstm_cpu_has_avxvnni(void);

/* 1 if AMX-TILE and AMX-INT8 (tdpbusd) are usable: the CPU has them (and AVX512_VNNI),
 * the OS saves the tile state and (Linux) granted it to this process; asked once. */
int lstm_cpu_has_amx_int8(void);
/* 1 if AMX-TILE and AMX-BF16 (tdpbf16ps) are usable (with AVX512_BF16), as above. */
int lstm_cpu_has_amx_bf16(void);

/* Per-core, register-only throughput of the instructions the kernels' products use, as
 * measured on the running CPU: 12 independent accumulator chains per instruction, no
 * memory operands, one thread, the best of a few short repeats (about 0.3 ms in all,
 * once per process, thread-safe). What the hardware is rated at differs by CPU (an
 * Intel Xeon runs vdpbf16ps at half its FMA rate, AMD Zen 4 at twice), so choices that
 * depend on it (lstm.c: bf16_native_for) read these. 0 where the CPU lacks the
 * instruction. Counting: an fp32 FMA lane 2 FLOP; a vdpbf16ps lane 4 FLOP (2 products,
 * 2 adds); a vpdpbusd lane 8 OP (4 products, 4 adds). */
typedef struct {
    double fp32_fma;      /* GFLOP/s, vfmadd231ps: zmm at the AVX-512 level, else ymm
                             (AVX2 + FMA), else 0 */
    double bf16_dot;      /* GFLOP/s, vdpbf16ps zmm (AVX512_BF16), else 0 */
    double int8_dot;      /* GOP/s, vpdpbusd: zmm (AVX512_VNNI), else ymm (AVX-VNNI), else 0 */
    int fp32_bits, int8_bits;   /* vector width measured: 512, 256, or 0 */
    double seconds;       /* what the measurement took */
} lstm_cpu_rates;

const lstm_cpu_rates *lstm_cpu_rates_get(void);

/* The AMX tiles' per-core rates, measured the first time they are asked for (never by
 * the kernels: for reports; about 1 ms): tdpbf16ps in GFLOP/s (a 16 x 16 x 32 product,
 * 16384 FLOP per instruction) and tdpbusd in GOP/s (16 x 16 x 64, 32768 OP), 0 where the
 * CPU or the OS lacks AMX-BF16 / AMX-INT8. */
typedef struct {
    double bf16, int8, seconds;
} lstm_amx_rates;

const lstm_amx_rates *lstm_amx_rates_get(void);

/* Name of a level: "portable", "avx2", "avx512". */
const char *lstm_simd_name(lstm_simd_level level);

typedef struct {
    char vendor[16];      /* cpuid vendor: "GenuineIntel", "AuthenticAMD", ...; "" if unknown */
    int family, model;    /* display family and model (cpuid leaf 1); 0 if unknown */
    int64_t l1d, l2, l3;  /* bytes of the L1 data cache, the L2 and the L3 that the first
                             CPU sees (0: none or unknown) */
    int l2_shared_by;     /* logical CPUs sharing that L2 (hyperthreads of one core: 2) */
    int l3_shared_by;     /* logical CPUs sharing that L3 */
    const char *source;   /* where the sizes come from: "cpuid", "sysfs", "cpuid+sysfs"
                             (both agree), "cpuid (sysfs differs)", or "default" */
} lstm_cpu_info;

/* The running CPU, determined once (thread-safe). Never NULL; when nothing can
 * be read the sizes are conservative defaults (32 KiB L1d, 256 KiB L2, no L3). */
const lstm_cpu_info *lstm_cpu(void);

#endif
