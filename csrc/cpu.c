#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* syscall (arch_prctl for AMX's tile state) */
#endif
#include "cpu.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_CPUID 1
#else
#define HAVE_CPUID 0
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

lstm_simd_level lstm_cpu_simd_level(void)
{
#if HAVE_CPUID
    __builtin_cpu_init();
    /* BW too: the int8 kernels' byte and word instructions (every CPU with DQ and VL
     * has it: Skylake-SP and later, Zen 4 and later) */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return LSTM_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return LSTM_SIMD_AVX2;
#endif
    return LSTM_SIMD_PORTABLE;
}

int lstm_cpu_has_avx512vnni(void)
{
#if HAVE_CPUID
    return lstm_cpu_simd_level() == LSTM_SIMD_AVX512 && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

int lstm_cpu_has_avxvnni(void)
{
#if HAVE_CPUID
    return lstm_cpu_simd_level() >= LSTM_SIMD_AVX2 && __builtin_cpu_supports("avxvnni");
#else
    return 0;
#endif
}

/* AMX-TILE with AMX-INT8 or AMX-BF16 (cpuid leaf 7: EDX bits 24; 25, 22), the OS saving
 * the tile state (XCR0 bits 17, 18) and, on Linux, the tile data granted to this process
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), Linux >= 5.16): once */
#if HAVE_CPUID && defined(__linux__)
static int amx_ok, amx_bf16_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static void amx_probe(void)
{
    unsigned a, b, c, d, d7;
    if (lstm_cpu_simd_level() != LSTM_SIMD_AVX512)
        return;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d7) || !(d7 & (1u << 24)))
        return;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))   /* OSXSAVE */
        return;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0)
        return;
    amx_ok = (d7 & (1u << 25)) && lstm_cpu_has_avx512vnni();
    amx_bf16_ok = (d7 & (1u << 22)) && lstm_cpu_has_avx512bf16();
}
#endif

int lstm_cpu_has_amx_bf16(void)
{
#if HAVE_CPUID && defined(__linux__)
    pthread_once(&amx_once, amx_probe);
    return amx_bf16_ok;
#else
    return 0;
#endif
}

int lstm_cpu_has_amx_int8(void)
{
#if HAVE_CPUID && defined(__linux__)
    pthread_once(&amx_once, amx_probe);
    return amx_ok;
#else
    return 0;
#endif
}

int lstm_cpu_has_avx512bf16(void)
{
#if HAVE_CPUID
    return lstm_cpu_simd_level() == LSTM_SIMD_AVX512 && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

const char *lstm_simd_name(lstm_simd_level level)
{
    switch (level) {
    case LSTM_SIMD_AVX512: return "avx512";
    case LSTM_SIMD_AVX2: return "avx2";
    default: return "portable";
    }
}

/* One cache level as found: size in bytes and logical CPUs sharing it. */
typedef struct {
    int64_t size[4];   /* index: level 1 (data or unified), 2, 3 */
    int shared[4];
} caches;

#if HAVE_CPUID
/* Deterministic cache parameters: leaf 4 (Intel) and 0x8000001D (AMD) share the
 * format. EAX[4:0] type (0 none, 1 data, 2 instruction, 3 unified), EAX[7:5]
 * level, EAX[25:14] logical CPUs sharing - 1; EBX line size, partitions and
 * ways, each - 1; ECX sets - 1. */
static int cpuid_leaf_caches(unsigned leaf, caches *out)
{
    int found = 0;
    for (unsigned sub = 0; sub < 16; sub++) {
        unsigned a, b, c, d;
        if (!__get_cpuid_count(leaf, sub, &a, &b, &c, &d))
            return found;
        unsigned type = a & 31, level = (a >> 5) & 7;
        if (type == 0)
            break;
        if (type == 2 || level < 1 || level > 3)
            continue;
        int64_t size = (int64_t)(((b >> 22) & 1023) + 1) * (((b >> 12) & 1023) + 1) *
                       ((b & 4095) + 1) * ((int64_t)c + 1);
        out->size[level] = size;
        out->shared[level] = (int)((a >> 14) & 4095) + 1;
        found = 1;
    }
    return found;
}

static int cpuid_caches(const char *vendor, caches *out)
{
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!strcmp(vendor, "GenuineIntel"))
        return __get_cpuid_max(0, NULL) >= 4 && cpuid_leaf_caches(4, out);
    if (strcmp(vendor, "AuthenticAMD") && strcmp(vendor, "HygonGenuine"))
        return 0;
    unsigned ext = __get_cpuid_max(0x80000000u, NULL);
    if (ext >= 0x8000001Du && __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c >> 22) & 1)
        if (cpuid_leaf_caches(0x8000001Du, out))   /* topology extensions */
            return 1;
    if (ext < 0x80000006u)
        return 0;
    __get_cpuid(0x80000005u, &a, &b, &c, &d);
    out->size[1] = (int64_t)(c >> 24) << 10;
    __get_cpuid(0x80000006u, &a, &b, &c, &d);
    out->size[2] = (int64_t)(c >> 16) << 10;
    out->size[3] = (int64_t)(d >> 18) << 19;
    return out->size[1] > 0;
}
#endif

static int64_t read_size(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long v = 0;
    char unit = 0;
    int n = fscanf(f, "%lld%c", &v, &unit);
    fclose(f);
    if (n < 1)
        return -1;
    if (unit == 'K')
        v <<= 10;
    else if (unit == 'M')
        v <<= 20;
    return (int64_t)v;
}

static int read_text(const char *path, char *buf, int len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(buf, len, f) != NULL;
    fclose(f);
    return ok;
}

/* CPUs in a list like "0-1,4,6-7". */
static int count_cpus(const char *list)
{
    int n = 0, a, b, used;
    while (*list && *list != '\n') {
        if (sscanf(list, "%d-%d%n", &a, &b, &used) == 2)
            n += b - a + 1;
        else if (sscanf(list, "%d%n", &a, &used) == 1)
            n += 1;
        else
            break;
        list += used;
        if (*list == ',')
            list++;
    }
    return n;
}

static int sysfs_caches(caches *out)
{
    int found = 0;
    for (int i = 0; i < 16; i++) {
        char path[128], text[256];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        int64_t level = read_size(path);
        if (level < 0)
            break;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if (!read_text(path, text, sizeof text) || !strncmp(text, "Instruction", 11) ||
            level < 1 || level > 3)
            continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        int64_t size = read_size(path);
        if (size <= 0)
            continue;
        out->size[level] = size;
        snprintf(path, sizeof path,
                 "/sys/devices/system/cpu/cpu0/cache/index%d/shared_cpu_list", i);
        out->shared[level] = read_text(path, text, sizeof text) ? count_cpus(text) : 1;
        found = 1;
    }
    return found;
}

static lstm_cpu_info info;
static pthread_once_t info_once = PTHREAD_ONCE_INIT;

static void detect(void)
{
    caches cc = {{0}, {0}}, sc = {{0}, {0}};
    int from_cpuid = 0;
#if HAVE_CPUID
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        memcpy(info.vendor, &b, 4);
        memcpy(info.vendor + 4, &d, 4);
        memcpy(info.vendor + 8, &c, 4);
        info.vendor[12] = 0;
    }
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int fam = (a >> 8) & 15, mod = (a >> 4) & 15;
        if (fam == 15)
            fam += (a >> 20) & 255;
        if (fam == 6 || fam >= 15)
            mod += ((a >> 16) & 15) << 4;
        info.family = fam;
        info.model = mod;
    }
    from_cpuid = cpuid_caches(info.vendor, &cc);
#endif
    int from_sysfs = sysfs_caches(&sc);
    const caches *use = from_cpuid ? &cc : &sc;
    if (from_cpuid && from_sysfs)
        info.source = memcmp(cc.size, sc.size, sizeof cc.size) ? "cpuid (sysfs differs)"
                                                                 : "cpuid+sysfs";
    else
        info.source = from_cpuid ? "cpuid" : from_sysfs ? "sysfs" : "default";
    info.l1d = use->size[1] > 0 ? use->size[1] : 32 << 10;
    info.l2 = use->size[2] > 0 ? use->size[2] : 256 << 10;
    info.l3 = use->size[3];
    info.l2_shared_by = use->shared[2] > 0 ? use->shared[2] : 1;
    info.l3_shared_by = use->shared[3] > 0 ? use->shared[3] : 1;
}

const lstm_cpu_info *lstm_cpu(void)
{
    pthread_once(&info_once, detect);
    return &info;
}

/* ---- instruction rates (lstm_cpu_rates_get) ----------------------------------------
 * Each measurement: RATE_CHAINS independent accumulators (enough to cover the latency
 * times the issue width of every x86 core we know: 4-5 cycles x 2 ports), each updated
 * RATE_ITERS times by the instruction alone, operands in registers; the rate is the best
 * of RATE_REPS repeats after one warm-up (which also lets an Intel core raise its AVX-512
 * power level), the instructions interleaved so that a frequency change or a preemption
 * affects all alike. The empty asm keeps each accumulator in a register and the loop as
 * written. */
#define RATE_CHAINS 12
#define RATE_ITERS 2048
#define RATE_REPS 5

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if HAVE_CPUID
/* 12 named accumulators (an array would live on the stack across the timer's call). The
 * timing functions carry the _avx2/_avx512 suffix of the dispatched kernels: they run only
 * after the CPU was found to have their instructions, and tools/check_isa.py allows
 * instructions beyond baseline x86-64 only in functions so named. */
#define RATE_EACH(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
#define RATE_DECL(i) VT a##i = INIT(i);
#define RATE_STEP(i) a##i = OP(a##i); __asm__ volatile("" : "+v"(a##i));
#define RATE_SINK(i) SINK(a##i);
#define RATE_LOOP                                                                          \
    RATE_EACH(RATE_DECL)                                                                   \
    double t = now_seconds();                                                              \
    for (int n = 0; n < RATE_ITERS; n++) {                                                 \
        RATE_EACH(RATE_STEP)                                                               \
    }                                                                                      \
    t = now_seconds() - t;                                                                 \
    RATE_EACH(RATE_SINK)                                                                   \
    return t;

static volatile float rate_sink_f;
static volatile int rate_sink_i;

__attribute__((noinline, target("avx512f"))) static double time_fma_avx512(void)
{
    __m512 b = _mm512_set1_ps(1.0001f), c = _mm512_set1_ps(0.999f);
    #define VT __m512
#define INIT(i) _mm512_set1_ps((float)(i))
#define OP(v) _mm512_fmadd_ps(v, b, c)
#define SINK(v) rate_sink_f = _mm512_reduce_add_ps(v)
    RATE_LOOP
#undef VT
#undef INIT
#undef OP
#undef SINK
}

__attribute__((noinline, target("avx2,fma"))) static double time_fma_avx2(void)
{
    __m256 b = _mm256_set1_ps(1.0001f), c = _mm256_set1_ps(0.999f);
    #define VT __m256
#define INIT(i) _mm256_set1_ps((float)(i))
#define OP(v) _mm256_fmadd_ps(v, b, c)
#define SINK(v) rate_sink_f = _mm256_cvtss_f32(v)
    RATE_LOOP
#undef VT
#undef INIT
#undef OP
#undef SINK
}

__attribute__((noinline, target("avx512f,avx512bw,avx512bf16"))) static double time_bf16_avx512(void)
{
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3f00);
    #define VT __m512
#define INIT(i) _mm512_set1_ps((float)(i))
#define OP(v) _mm512_dpbf16_ps(v, b, c)
#define SINK(v) rate_sink_f = _mm512_reduce_add_ps(v)
    RATE_LOOP
#undef VT
#undef INIT
#undef OP
#undef SINK
}

__attribute__((noinline, target("avx512f,avx512bw,avx512vnni"))) static double time_vnni_avx512(void)
{
    __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
    #define VT __m512i
#define INIT(i) _mm512_set1_epi32(i)
#define OP(v) _mm512_dpbusd_epi32(v, b, c)
#define SINK(v) rate_sink_i = _mm512_reduce_add_epi32(v)
    RATE_LOOP
#undef VT
#undef INIT
#undef OP
#undef SINK
}

__attribute__((noinline, target("avx2,avxvnni"))) static double time_vnni_avx2(void)
{
    __m256i b = _mm256_set1_epi8(1), c = _mm256_set1_epi8(2);
    #define VT __m256i
#define INIT(i) _mm256_set1_epi32(i)
#define OP(v) _mm256_dpbusd_avx_epi32(v, b, c)
#define SINK(v) rate_sink_i = _mm256_cvtsi256_si32(v)
    RATE_LOOP
#undef VT
#undef INIT
#undef OP
#undef SINK
}
#endif

/* AMX: tdpbf16ps (bf) or tdpbusd on 4 accumulator tiles (C 0-3) from 2 A (4, 5) and 2 B
 * (6, 7) tiles loaded once, RATE_ITERS / 4 rounds of 4 independent products (each 16 x 16
 * outputs, K = 64 bytes per row): what the tiles alone sustain. The caller checked AMX. */
#if HAVE_CPUID && defined(__linux__)
__attribute__((noinline, target("amx-tile,amx-bf16,amx-int8"))) static double time_amx(int bf)
{
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } cfg __attribute__((aligned(64)));
    static uint8_t buf[1024] __attribute__((aligned(64)));   /* zeros: A and B */
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));   /* by hand: see amx.template.c */
    _tile_loadd(4, buf, 64);
    _tile_loadd(5, buf, 64);
    _tile_loadd(6, buf, 64);
    _tile_loadd(7, buf, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    double t0 = now_seconds();
    for (int i = 0; i < RATE_ITERS / 4; i++) {
        if (bf) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        } else {
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
        }
    }
    static uint8_t out[1024] __attribute__((aligned(64)));
    _tile_stored(0, out, 64);   /* the products' results are used */
    double dt = now_seconds() - t0;
    _tile_release();
    rate_sink_i = out[0];
    return dt;
}
#endif

static lstm_amx_rates amx_rates;
static pthread_once_t amx_rates_once = PTHREAD_ONCE_INIT;

static void measure_amx_rates(void)
{
#if HAVE_CPUID && defined(__linux__)
    double t0 = now_seconds();
    int bf = lstm_cpu_has_amx_bf16(), i8 = lstm_cpu_has_amx_int8();
    double best[2] = {1e30, 1e30};
    for (int r = 0; r <= RATE_REPS; r++) {   /* r = 0: the warm-up */
        double t[2] = {bf ? time_amx(1) : 0, i8 ? time_amx(0) : 0};
        for (int k = 0; k < 2 && r > 0; k++)
            if (t[k] > 0 && t[k] < best[k])
                best[k] = t[k];
    }
    /* per instruction: 16 x 16 outputs x (32 bf16 pairs' halves, or 64 bytes) x 2 */
    double n = (double)(RATE_ITERS / 4 * 4);
    amx_rates.bf16 = bf ? n * 16 * 16 * 32 * 2 / best[0] * 1e-9 : 0;
    amx_rates.int8 = i8 ? n * 16 * 16 * 64 * 2 / best[1] * 1e-9 : 0;
    amx_rates.seconds = now_seconds() - t0;
#endif
}

const lstm_amx_rates *lstm_amx_rates_get(void)
{
    pthread_once(&amx_rates_once, measure_amx_rates);
    return &amx_rates;
}

static lstm_cpu_rates rates;
static pthread_once_t rates_once = PTHREAD_ONCE_INIT;

static void measure_rates(void)
{
#if HAVE_CPUID
    double t0 = now_seconds();
    int avx512 = lstm_cpu_simd_level() == LSTM_SIMD_AVX512;
    int fma = avx512 ? 512 : lstm_cpu_simd_level() == LSTM_SIMD_AVX2 ? 256 : 0;
    int bf = lstm_cpu_has_avx512bf16();
    int vnni = lstm_cpu_has_avx512vnni() ? 512 : lstm_cpu_has_avxvnni() ? 256 : 0;
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = 0; r <= RATE_REPS; r++) {   /* r = 0: the warm-up */
        double t[3] = {
            fma == 512 ? time_fma_avx512() : fma == 256 ? time_fma_avx2() : 0,
            bf ? time_bf16_avx512() : 0,
            vnni == 512 ? time_vnni_avx512() : vnni == 256 ? time_vnni_avx2() : 0,
        };
        for (int k = 0; k < 3 && r > 0; k++)
            if (t[k] > 0 && t[k] < best[k])
                best[k] = t[k];
    }
    double n = (double)RATE_CHAINS * RATE_ITERS;
    /* per instruction: lanes x FLOP (or OP) per lane */
    rates.fp32_fma = fma ? n * (fma / 32) * 2 / best[0] * 1e-9 : 0;
    rates.bf16_dot = bf ? n * 16 * 4 / best[1] * 1e-9 : 0;
    rates.int8_dot = vnni ? n * (vnni / 32) * 8 / best[2] * 1e-9 : 0;
    rates.fp32_bits = fma;
    rates.int8_bits = vnni;
    rates.seconds = now_seconds() - t0;
#endif
}

const lstm_cpu_rates *lstm_cpu_rates_get(void)
{
    pthread_once(&rates_once, measure_rates);
    return &rates;
}
