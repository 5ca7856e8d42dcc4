/* lstm.c: instantiates the kernel templates (lstm.template.c and the layers it
 * includes) for float/double x portable/AVX2/AVX-512 and dispatches the public
 * functions of lstm.h to the level the packed weights were built for. Why the
 * kernel is hand-written rather than built on a BLAS: see gemm.template.c. No
 * -march=native: the binary runs on any x86-64, the AVX2 and AVX-512 code is
 * compiled per function with target attributes and chosen at run time (cpu.c). */
#include "lstm.h"
#include "cpu.h"
#include "pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

/* bfloat16 training's backward products (bf16_backward.template.c: vdpbf16ps, or AMX
 * tiles): the choice and the parts of variant.bf16_ws: pair blocks of W output columns
 * ([ceil(W/16)][KPA][16] words, KPA = 2H pairs padded with zero pairs to a multiple of
 * 16, an AMX tile's depth: whh W = H, wih W = I), then per thread ceil(B/16) 16 rows of
 * KPA pair words (an AMX tile reads 16 rows) */
static int bf16_native_for(int level, int64_t B);
static int bf16_path_for(int level, int64_t B);
static int64_t bf16_ws_align(int64_t n) { return (n + 63) & ~(int64_t)63; }
static int64_t bf16_bwd_kpa(int64_t H) { return (2 * H + 15) & ~(int64_t)15; }
static int64_t bf16_ws_whh_bytes(int64_t W, int64_t H)
{
    return bf16_ws_align((W + 15) / 16 * 16 * bf16_bwd_kpa(H) * 4);
}
static int64_t bf16_ws_rows_bytes(int64_t B, int64_t H)
{
    return bf16_ws_align((B + 15) / 16 * 16 * bf16_bwd_kpa(H) * 4);
}
/* the dw products' row pairs: NP = ceil(N/2) pairs, padded with zero pairs to a
 * multiple of 16 */
static int64_t bf16_dw_pairs(int64_t N) { return ((N + 1) / 2 + 15) & ~(int64_t)15; }

/* then the dw products' pair words: ceil(4H/16) + ceil(H/16) + ceil(I/16) blocks of
 * bf16_dw_pairs(N) x 16 words */
size_t lstm_bf16_grads_workspace_size(int64_t N, int64_t B, int64_t I, int64_t H,
                                      int num_threads)
{
    if (N < 0 || B < 0 || I < 0 || H < 0)
        return 0;
    int64_t dw = ((4 * H + 15) / 16 + (H + 15) / 16 + (I + 15) / 16) * bf16_dw_pairs(N) * 64;
    return (size_t)(bf16_ws_whh_bytes(H, H) + bf16_ws_whh_bytes(I, H) +
                    (num_threads < 1 ? 1 : num_threads) * bf16_ws_rows_bytes(B, H) + dw + 64);
}

/* The backward's whole-sequence products interleaved with its steps (backward.template.c,
 * bwd_interleave): -1 automatic, 0 never, 1 wherever the call allows it. The same bits
 * either way. */
static int bwd_interleave_mode = -1;

int lstm_set_bwd_interleave(int mode)
{
    if (mode < -1 || mode > 1)
        return LSTM_ERR_ARG;
    __atomic_store_n(&bwd_interleave_mode, mode, __ATOMIC_RELAXED);
    return LSTM_OK;
}

int lstm_get_bwd_interleave(void) { return __atomic_load_n(&bwd_interleave_mode, __ATOMIC_RELAXED); }

/* The steps' hidden blocks claimed at run time (pool.h lstm_claim; fwd_job, bwd_job):
 * -1 automatic, 0 never, 1 wherever the threads split the units, 2 as 1 with every thread
 * claiming from the other threads' parts first. The same bits in every mode. */
static int claims_mode = -1;

int lstm_set_claims(int mode)
{
    if (mode < -1 || mode > 2)
        return LSTM_ERR_ARG;
    __atomic_store_n(&claims_mode, mode, __ATOMIC_RELAXED);
    return LSTM_OK;
}

int lstm_get_claims(void) { return __atomic_load_n(&claims_mode, __ATOMIC_RELAXED); }

#define TYPE float
#define IS_F64 0
#define ISA 0
#define SFX f32_portable
#include "lstm.template.c"
#undef ISA
#undef SFX
#if HAVE_X86
#define ISA 1
#define SFX f32_avx2
#include "lstm.template.c"
#undef ISA
#undef SFX
#define ISA 2
#define SFX f32_avx512
#include "lstm.template.c"
#undef ISA
#undef SFX
#endif
#undef TYPE
#undef IS_F64

#define TYPE double
#define IS_F64 1
#define ISA 0
#define SFX f64_portable
#include "lstm.template.c"
#undef ISA
#undef SFX
#if HAVE_X86
#define ISA 1
#define SFX f64_avx2
#include "lstm.template.c"
#undef ISA
#undef SFX
#define ISA 2
#define SFX f64_avx512
#include "lstm.template.c"
#undef ISA
#undef SFX
#endif
#undef TYPE
#undef IS_F64

static int simd_level = -1;

int lstm_get_simd_level(void)
{
    if (simd_level < 0)
        simd_level = (int)lstm_cpu_simd_level();
    return simd_level;
}

int lstm_set_simd_level(int level)
{
    if (level < LSTM_SIMD_PORTABLE || level > LSTM_SIMD_AVX512 ||
        level > (int)lstm_cpu_simd_level())
        return LSTM_ERR_SIMD;
    simd_level = level;
    return LSTM_OK;
}

#ifndef LSTM_COMPILE_FLAGS
#define LSTM_COMPILE_FLAGS "?"
#endif
#ifndef LSTM_COMPILER_ID
#define LSTM_COMPILER_ID "?"
#endif

static char build_info[512];
static pthread_once_t build_info_once = PTHREAD_ONCE_INIT;

static void make_build_info(void)
{
    const lstm_cpu_info *cpu = lstm_cpu();
    snprintf(build_info, sizeof build_info,
             "compiler=" LSTM_COMPILER_ID " (" __VERSION__ ")"
             ";flags=" LSTM_COMPILE_FLAGS
#if HAVE_X86
             ";levels=portable,avx2,avx512"
#else
             ";levels=portable"
#endif
             ";cpu=%s family %d model %d;l1d=%lld;l2=%lld;l3=%lld;l2_shared_by=%d"
             ";l3_shared_by=%d;caches_from=%s;avx512_bf16=%d",
             cpu->vendor[0] ? cpu->vendor : "unknown", cpu->family, cpu->model,
             (long long)cpu->l1d, (long long)cpu->l2, (long long)cpu->l3, cpu->l2_shared_by,
             cpu->l3_shared_by, cpu->source, lstm_cpu_has_avx512bf16());
}

const char *lstm_build_info(void)
{
    /* threads= is what runs multi-thread jobs at this moment (the host's
     * OpenMP runtime once one is loaded, else our pool), hence added per call. */
    static _Thread_local char buf[sizeof build_info + 256];
    pthread_once(&build_info_once, make_build_info);
    snprintf(buf, sizeof buf, "%s;threads=%s", build_info, lstm_pool_runtime());
    return buf;
}

/* All packed headers start like this (see packed_hdr in the template). */
typedef struct {
    uint32_t magic;
    int32_t level, elem_size, has_bias;
} packed_prefix;

static int packed_level(const void *packed)
{
    const packed_prefix *h = (const packed_prefix *)(((uintptr_t)packed + 63) & ~(uintptr_t)63);
    return h->level;
}

#if HAVE_X86
#define DISPATCH(level, SFXT, call, args)                                                    \
    switch (level) {                                                                        \
    case LSTM_SIMD_AVX512: return call##_##SFXT##_avx512 args;                              \
    case LSTM_SIMD_AVX2: return call##_##SFXT##_avx2 args;                                  \
    default: return call##_##SFXT##_portable args;                                          \
    }
#else
#define DISPATCH(level, SFXT, call, args) return call##_##SFXT##_portable args;
#endif

#define MAX3(a, b, c) ((a) > (b) ? ((a) > (c) ? (a) : (c)) : ((b) > (c) ? (b) : (c)))

#if HAVE_X86
#define WS_MAX(SFXT, name, args)                                                           \
    MAX3(name##_##SFXT##_portable args, name##_##SFXT##_avx2 args, name##_##SFXT##_avx512 args)
#else
#define WS_MAX(SFXT, name, args) name##_##SFXT##_portable args
#endif

/* num_threads as run: at least 1, at most the CPUs this process may use (more would
 * only take turns on a CPU at every barrier). */
static int usable_threads(int num_threads)
{
    int cpus = lstm_online_cpus();
    return num_threads < 1 ? 1 : num_threads > cpus ? cpus : num_threads;
}

/* A variant's clips are >= 0 (not NaN); NULL is the plain LSTM. */
static int variant_ok(const lstm_variant *v)
{
    return !v || (v->clip >= 0 && v->cell_clip >= 0 && (!(v->rdrop || v->zoneout) || v->var_ws) &&
                  (v->bf16_gates == NULL) == (v->bf16_c == NULL) &&
                  (!v->bf16_gates || (v->bf16_grads && !v->peephole && v->clip == 0 &&
                                      v->cell_clip == 0 && !v->cifg && !v->rdrop &&
                                      !v->zoneout && !v->layer_norm)));
}

/* NULL when every variant is off (bf16_grads counts as one: the backward of bf16
 * training): the plain cells (the same bits as lstm_forward_X). */
static const lstm_variant *variant_or_null(const lstm_variant *v)
{
    return v && (v->peephole || v->clip > 0 || v->cell_clip > 0 || v->cifg || v->rdrop ||
                 v->zoneout || v->bf16_grads || v->layer_norm)
               ? v
               : NULL;
}

/* The argument rule of every pack (P = 0 for bfloat16 and int8) and of every forward and
 * backward: sizes in range, the arrays no call can do without given; the variant's rule
 * on top where there is one. */
static int pack_args_ok(int64_t I, int64_t H, int64_t P, const void *w_ih, const void *w_hh,
                        const void *w_hr, const void *packed)
{
    return I >= 0 && H >= 1 && P >= 0 && w_ih && w_hh && packed && (!P || w_hr);
}

static int call_args_ok(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                        const void *packed, const void *workspace)
{
    return T >= 0 && B >= 0 && I >= 0 && H >= 1 && P >= 0 && packed && workspace;
}

static int variant_args_ok(int64_t P, const lstm_variant *variant)
{
    return variant_ok(variant) && !(variant && (variant->zoneout || variant->bf16_gates) && P);
}

#define DEFINE_PUBLIC(SFXT, TYPE)                                                            \
    size_t lstm_packed_size_##SFXT(int64_t I, int64_t H, int64_t P)                          \
    {                                                                                        \
        if (I < 0 || H < 0 || P < 0)                                                         \
            return 0;                                                                        \
        DISPATCH(lstm_get_simd_level(), SFXT, packed_size, (I, H, P))                        \
    }                                                                                        \
    int lstm_pack_##SFXT(int64_t I, int64_t H, int64_t P, const TYPE *w_ih, const TYPE *w_hh, \
                         const TYPE *b, const TYPE *w_hr, void *packed)                      \
    {                                                                                        \
        if (!pack_args_ok(I, H, P, w_ih, w_hh, w_hr, packed))                                \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(lstm_get_simd_level(), SFXT, pack, (I, H, P, w_ih, w_hh, b, w_hr, packed))  \
    }                                                                                        \
    size_t lstm_forward_workspace_size_##SFXT(int64_t T, int64_t B, int64_t I, int64_t H,    \
                                              int64_t P, int num_threads, int save)          \
    {                                                                                        \
        return WS_MAX(SFXT, fwd_ws_size, (T, B, I, H, P, num_threads, save));                \
    }                                                                                        \
    size_t lstm_backward_workspace_size_##SFXT(int64_t T, int64_t N, int64_t B, int64_t I,   \
                                               int64_t H, int64_t P, int num_threads)        \
    {                                                                                        \
        return WS_MAX(SFXT, bwd_ws_size, (T, N, B, I, H, P, num_threads));                   \
    }                                                                                        \
    size_t lstm_variant_workspace_size_##SFXT(int64_t N, int64_t B, int64_t R, int num_threads, \
                                            int backward)                                    \
    {                                                                                        \
        if (N < 0 || B < 0 || R < 0)                                                         \
            return 0;                                                                        \
        int nt = num_threads < 1 ? 1 : num_threads;                                          \
        return (size_t)((backward ? N + B : nt * B) * R) * sizeof(TYPE) + 128;               \
    }                                                                                        \
    int lstm_bernoulli_mask_##SFXT(int64_t n, uint32_t k0, uint32_t k1, uint64_t t,         \
                                   TYPE on, TYPE *out)                                       \
    {                                                                                        \
        if (n < 0 || (n && !out))                                                            \
            return LSTM_ERR_ARG;                                                             \
        int level = lstm_get_simd_level();                                                   \
        DISPATCH(level, SFXT, bernoulli_mask, (n, k0, k1, t, on, out))                       \
    }                                                                                        \
    size_t lstm_ln_workspace_size_##SFXT(int64_t N, int64_t B, int64_t H, int save,          \
                                         int backward)                                       \
    {                                                                                        \
        if (N < 0 || B < 0 || H < 0)                                                         \
            return 0;                                                                        \
        return WS_MAX(SFXT, ln_ws_size, (N, B, H, save, backward));                          \
    }                                                                                        \
    int lstm_forward_##SFXT(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,           \
                            const void *packed, const int64_t *batch_sizes, const TYPE *x,   \
                            const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,   \
                            TYPE *gates, TYPE *c, void *workspace, int num_threads)          \
    {                                                                                        \
        if (!call_args_ok(T, B, I, H, P, packed, workspace))                                 \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(packed_level(packed), SFXT, forward,                                        \
                 (T, B, I, H, P, packed, batch_sizes, x, h0, c0, y, h_n, c_n, gates, c,      \
                  workspace, usable_threads(num_threads), NULL))                             \
    }                                                                                        \
    int lstm_forward_ex_##SFXT(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,        \
                               const void *packed, const int64_t *batch_sizes, const TYPE *x, \
                               const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n,           \
                               TYPE *c_n, TYPE *gates, TYPE *c, void *workspace,             \
                               int num_threads, const lstm_variant *variant)                 \
    {                                                                                        \
        if (!call_args_ok(T, B, I, H, P, packed, workspace) || !variant_args_ok(P, variant))  \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(packed_level(packed), SFXT, forward,                                        \
                 (T, B, I, H, P, packed, batch_sizes, x, h0, c0, y, h_n, c_n, gates, c,      \
                  workspace, usable_threads(num_threads), variant_or_null(variant)))         \
    }                                                                                        \
    int lstm_backward_##SFXT(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,          \
                             const void *packed, const int64_t *batch_sizes, const TYPE *x,  \
                             const TYPE *h0, const TYPE *c0, const TYPE *y,                  \
                             const TYPE *gates, const TYPE *c, const TYPE *dy,               \
                             const TYPE *dh_n, const TYPE *dc_n, TYPE *dx, TYPE *dw_ih,      \
                             TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0, TYPE *dw_hr,       \
                             void *workspace, int num_threads)                               \
    {                                                                                        \
        if (!call_args_ok(T, B, I, H, P, packed, workspace))                                 \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(packed_level(packed), SFXT, backward,                                       \
                 (T, B, I, H, P, packed, batch_sizes, x, h0, c0, y, gates, c, dy, dh_n,      \
                  dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, workspace,                    \
                  usable_threads(num_threads), NULL, NULL))                                  \
    }                                                                                        \
    int lstm_backward_ex_##SFXT(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,       \
                                const void *packed, const int64_t *batch_sizes,              \
                                const TYPE *x, const TYPE *h0, const TYPE *c0, const TYPE *y, \
                                const TYPE *gates, const TYPE *c, const TYPE *dy,            \
                                const TYPE *dh_n, const TYPE *dc_n, TYPE *dx, TYPE *dw_ih,   \
                                TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0, TYPE *dw_hr,    \
                                void *workspace, int num_threads,                            \
                                const lstm_variant *variant, TYPE *dpeephole)                \
    {                                                                                        \
        if (!call_args_ok(T, B, I, H, P, packed, workspace) || !variant_args_ok(P, variant))  \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(packed_level(packed), SFXT, backward,                                       \
                 (T, B, I, H, P, packed, batch_sizes, x, h0, c0, y, gates, c, dy, dh_n,      \
                  dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, workspace,                    \
                  usable_threads(num_threads), variant_or_null(variant), dpeephole))         \
    }

DEFINE_PUBLIC(f32, float)
DEFINE_PUBLIC(f64, double)

/* ---- low-precision weights (bfloat16, int8): float32 activations, no projection ----- */

/* lstm_packed_size_NAME, lstm_pack_NAME and lstm_forward_workspace_size_NAME of the
 * templates' KERNEL_packed_size, KERNEL_pack and KERNEL_ws_size (bf16.template.c: bf_,
 * int8.template.c: i8_); the forwards differ (bf16 chooses vdpbf16ps) and follow. */
#define DEFINE_LOW_PRECISION(NAME, KERNEL)                                                   \
    size_t lstm_packed_size_##NAME(int64_t I, int64_t H)                                     \
    {                                                                                        \
        if (I < 0 || H < 0)                                                                  \
            return 0;                                                                        \
        DISPATCH(lstm_get_simd_level(), f32, KERNEL##_packed_size, (I, H))                   \
    }                                                                                        \
    int lstm_pack_##NAME(int64_t I, int64_t H, const float *w_ih, const float *w_hh,          \
                         const float *b, void *packed)                                       \
    {                                                                                        \
        if (!pack_args_ok(I, H, 0, w_ih, w_hh, NULL, packed))                                \
            return LSTM_ERR_ARG;                                                             \
        DISPATCH(lstm_get_simd_level(), f32, KERNEL##_pack, (I, H, w_ih, w_hh, b, packed))   \
    }                                                                                        \
    size_t lstm_forward_workspace_size_##NAME(int64_t T, int64_t B, int64_t I, int64_t H,    \
                                              int num_threads)                               \
    {                                                                                        \
        return WS_MAX(f32, KERNEL##_ws_size, (T, B, I, H, num_threads));                     \
    }

/* ---- bfloat16 weights ---------------------------------------------------------- */

static int bf16_mode = -1;

int lstm_set_bf16_mode(int mode)
{
    if (mode < -1 || mode > 1)
        return LSTM_ERR_ARG;
    if (mode == 1 && !lstm_cpu_has_avx512bf16())
        return LSTM_ERR_SIMD;
    bf16_mode = mode;
    return LSTM_OK;
}

int lstm_get_bf16_mode(void) { return bf16_mode; }

/* Native vdpbf16ps or the emulation (the same bits): where the CPU has it, the pack
 * is of the AVX-512 level, and (automatic mode) lstm_bf16_native_rule says so for the
 * running CPU's measured rates (cpu.c: lstm_cpu_rates_get, register-only, per core):
 * native at every B where vdpbf16ps's FLOP rate is at least BF16_NATIVE_MIN_RATIO times
 * the fp32 FMA rate, else only at B = 1 (where it halves the bytes of the weights read,
 * the B = 1 step being bound by that traffic, not by the multiplies).
 * Intel Xeon (family 6 model 167, vdpbf16ps at half the fp32 FMA rate: 85 vs 172
 * GFLOP/s): native was faster only at B = 1 (1 thread, forward T = 16, ms
 * native/emulated): H = 256 B = 1 .183/.212, B = 2 .365/.326, B = 4 .652/.468, B = 16
 * 2.54/1.76; H = 512 B = 1 1.63/1.69, B = 4 2.81/2.31, B = 16 10.3/7.3; (32,64,256,256)
 * 19.9/13.7.
 * AMD EPYC family 25 model 17 (Zen 4, KVM; vdpbf16ps 234 GFLOP/s, fp32 FMA 116: 2.0x):
 * native faster at every B (1 thread, forward T = 16, I = H, ms native/emulated, best of
 * 7): H = 256 B = 1 .176/.187, B = 2 .197/.324, B = 3 .261/.466, B = 4 .339/.617, B = 8
 * .668/1.25, B = 16 1.32/2.55, B = 64 5.38/10.2; H = 512 B = 1 .718/.745, B = 2
 * .775/1.24, B = 4 1.26/2.42, B = 8 2.58/5.07, B = 16 5.26/10.5, B = 64 21.1/41.2: no
 * crossover, 1.6x at B = 2 and 1.8-2.0x from B = 3. 1.5 sits between the two CPUs
 * (0.5 and 2.0) with room for the measurement's noise either way. */
#define BF16_NATIVE_MIN_RATIO 1.5
int lstm_bf16_native_rule(double fp32_rate, double bf16_rate, int64_t B)
{
    if (bf16_rate <= 0)
        return 0;
    return B <= 1 || (fp32_rate > 0 && bf16_rate >= BF16_NATIVE_MIN_RATIO * fp32_rate);
}

static int bf16_native_for(int level, int64_t B)
{
    if (bf16_mode == 0 || level != LSTM_SIMD_AVX512 || !lstm_cpu_has_avx512bf16())
        return 0;
    if (bf16_mode == 1 || B <= 1)   /* B = 1 needs no measurement */
        return 1;
    const lstm_cpu_rates *r = lstm_cpu_rates_get();
    return lstm_bf16_native_rule(r->fp32_fma, r->bf16_dot, B);
}

int lstm_instruction_rates(double *fp32_fma, double *bf16_dot, double *int8_dot,
                           int *fp32_bits, int *int8_bits, double *seconds)
{
    const lstm_cpu_rates *r = lstm_cpu_rates_get();
    *fp32_fma = r->fp32_fma;
    *bf16_dot = r->bf16_dot;
    *int8_dot = r->int8_dot;
    *fp32_bits = r->fp32_bits;
    *int8_bits = r->int8_bits;
    *seconds = r->seconds;
    return LSTM_OK;
}

int lstm_amx_instruction_rates(double *bf16, double *int8, double *seconds)
{
    const lstm_amx_rates *r = lstm_amx_rates_get();
    *bf16 = r->bf16;
    *int8 = r->int8;
    *seconds = r->seconds;
    return LSTM_OK;
}

int lstm_bf16_native(int64_t B, int64_t I, int64_t H)
{
    (void)I;
    (void)H;
    return bf16_native_for(lstm_get_simd_level(), B);
}

DEFINE_LOW_PRECISION(bf16, bf)

/* AMX (tdpbf16ps) for the bf16 forwards and bfloat16 training's backward products
 * (bf16_backward.template.c), at the AVX-512 level where the CPU has it: -1
 * automatic (the default: at every B, unless lstm_set_bf16_mode forced vdpbf16ps or the
 * emulation), 1 always, 0 never. Its sums are not the other paths' bits (bf16.template.c),
 * so it is used at every B: a row's sums do not depend on the other rows of its tile, and
 * any batch split (a customer alone, blocks of 32, the whole set) keeps giving the same
 * bits. What B = 1 costs, measured on the Intel Xeon (family 6 model 167, 1 thread, T = 16,
 * I = H, ms AMX / the other path): H = 256: B = 1 0.162 / 0.165, 2 0.179 / 0.294, 4 0.195 /
 * 0.405, 8 0.234 / 0.921, 32 0.661 / 2.977; H = 512: B = 1 1.69 / 1.57, 2 1.74 / 1.72, 3
 * 1.72 / 1.86, 4 1.79 / 2.00, 8 1.89 / 5.59, 32 3.06 / 12.9 (benchmarks/README.md,
 * session 14: B = 1 streaming 2-7 % slower on 1 thread, up to 21 % on 2). */
static int bf16_amx = -1;

int lstm_set_bf16_amx(int mode)
{
    if (mode < -1 || mode > 1)
        return LSTM_ERR_ARG;
    if (mode == 1 && !lstm_cpu_has_amx_bf16())
        return LSTM_ERR_ARG;
    bf16_amx = mode;
    return LSTM_OK;
}

int lstm_get_bf16_amx(void) { return bf16_amx; }

/* 2 AMX, 1 vdpbf16ps, 0 the emulation, for B rows at the pack's level */
static int bf16_path_for(int level, int64_t B)
{
    if (level == LSTM_SIMD_AVX512 && lstm_cpu_has_amx_bf16() &&
        (bf16_amx == 1 || (bf16_amx == -1 && bf16_mode == -1)))
        return 2;
    return bf16_native_for(level, B);
}

int lstm_bf16_path(int64_t B) { return bf16_path_for(lstm_get_simd_level(), B); }

int lstm_forward_bf16(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                      const int64_t *batch_sizes, const float *x, const float *h0,
                      const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                      int num_threads)
{
    if (!call_args_ok(T, B, I, H, 0, packed, workspace))
        return LSTM_ERR_ARG;
    int level = packed_level(packed);
    DISPATCH(level, f32, bf_forward,
             (T, B, I, H, packed, batch_sizes, x, h0, c0, y, h_n, c_n, NULL, NULL, workspace,
              usable_threads(num_threads), bf16_path_for(level, B)))
}

int lstm_forward_bf16_ex(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                         const int64_t *batch_sizes, const float *x, const float *h0,
                         const float *c0, float *y, float *h_n, float *c_n, uint16_t *gates,
                         uint16_t *c, void *workspace, int num_threads)
{
    if (!call_args_ok(T, B, I, H, 0, packed, workspace) || (gates == NULL) != (c == NULL))
        return LSTM_ERR_ARG;
    int level = packed_level(packed);
    DISPATCH(level, f32, bf_forward,
             (T, B, I, H, packed, batch_sizes, x, h0, c0, y, h_n, c_n, gates, c, workspace,
              usable_threads(num_threads), bf16_path_for(level, B)))
}

/* ---- int8 weights ---------------------------------------------------------------- */

DEFINE_LOW_PRECISION(i8, i8)

int lstm_forward_i8(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                    const int64_t *batch_sizes, const float *x, const float *h0,
                    const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                    int num_threads)
{
    if (!call_args_ok(T, B, I, H, 0, packed, workspace))
        return LSTM_ERR_ARG;
    DISPATCH(packed_level(packed), f32, i8_forward,
             (T, B, I, H, packed, batch_sizes, x, h0, c0, y, h_n, c_n, workspace,
              usable_threads(num_threads)))
}

/* ---- int8 weights, x and h quantized per step (vpdpbusd) --------------------------- */

static int i8d_mode = -1;

int lstm_set_i8d_mode(int mode)
{
    if (mode < -1 || mode > 2)
        return LSTM_ERR_ARG;
    if (mode == 2 && !lstm_cpu_has_amx_int8())
        return LSTM_ERR_ARG;
    i8d_mode = mode;
    return LSTM_OK;
}

int lstm_get_i8d_mode(void) { return i8d_mode; }

/* The int32 sums of a call with B rows at the pack's level: 2 AMX (tdpbusd) where the
 * CPU and the OS allow it at the AVX-512 level (automatic: B >= I8D_AMX_MIN_B), else 1
 * vpdpbusd where the level has it on this CPU (AVX512_VNNI at the AVX-512 level, AVX-VNNI
 * at AVX2), else 0 the emulation; mode 0 forces the emulation, 1 vpdpbusd (no AMX), 2 AMX
 * at the AVX-512 level. The same sums every way. */
/* B from which AMX is used automatically: its tiles take 16 rows whatever B. Measured on
 * the Intel Xeon (family 6 model 167), 1 thread, T = 32, I = H, ms AMX / vpdpbusd: B = 1
 * 0.55-0.88x (H = 64..1024), B = 4 0.97-1.08x, B = 6 0.97-1.26x, B = 8 1.05-1.63x. */
#define I8D_AMX_MIN_B 6
static int i8d_native_for(int level, int64_t B)
{
    if (i8d_mode == 0)
        return 0;
    if (level == LSTM_SIMD_AVX512 && lstm_cpu_has_amx_int8() &&
        (i8d_mode == 2 || (i8d_mode == -1 && B >= I8D_AMX_MIN_B)))
        return 2;
    return level == LSTM_SIMD_AVX512 ? lstm_cpu_has_avx512vnni()
           : level == LSTM_SIMD_AVX2 ? lstm_cpu_has_avxvnni()
                                     : 0;
}

int lstm_i8d_native(void) { return i8d_native_for(lstm_get_simd_level(), 1) != 0; }

int lstm_i8d_path(int64_t B) { return i8d_native_for(lstm_get_simd_level(), B); }

DEFINE_LOW_PRECISION(i8d, i8d)

int lstm_forward_i8d(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                     const int64_t *batch_sizes, const float *x, const float *h0,
                     const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                     int num_threads)
{
    if (!call_args_ok(T, B, I, H, 0, packed, workspace))
        return LSTM_ERR_ARG;
    int level = packed_level(packed);
    DISPATCH(level, f32, i8d_forward,
             (T, B, I, H, packed, batch_sizes, x, h0, c0, y, h_n, c_n, workspace,
              usable_threads(num_threads), i8d_native_for(level, B)))
}

int lstm_products_i8d(int64_t B, int64_t I, int64_t H, const void *packed, const float *x,
                      const float *h, float *z, void *workspace)
{
    if (B < 0 || I < 0 || H < 1 || !packed || !x || !h || !z || !workspace)
        return LSTM_ERR_ARG;
    int level = packed_level(packed);
    DISPATCH(level, f32, i8d_products, (B, I, H, packed, x, h, z, workspace,
                                        i8d_native_for(level, B)))
}
