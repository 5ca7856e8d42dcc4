/* lstm.template.c: the LSTM kernel, written once over the element type and the
 * instruction set.
 *
 * Design: hand-written, not delegated to a BLAS, because the BLAS libraries at
 * hand run AVX2 code on this AMD Zen 5 (AVX-512, full 512-bit FMA): numpy's
 * OpenBLAS is pinned to AVX2 by OPENBLAS_CORETYPE=Haswell and MKL picks AVX2 on
 * AMD, i.e. half the machine. Measured side by side (2048x256 . 256x1024, one
 * thread): numpy matmul 68 GFLOP/s f32 / 50 f64; this kernel's forward (that
 * GEMM plus an equal recurrent GEMM plus the cell update) 136 / 88 on a loaded
 * machine (/tmp script, see the C-kernel report). A BLAS call also cannot apply
 * the gate activations and cell update while the h.w_hh^T tile is still in
 * registers, which is where small and medium shapes spend their time. Included by lstm.c once per (TYPE, ISA):
 *   TYPE    float | double        IS_F64  0 | 1
 *   ISA     0 portable (GCC vector extensions, baseline target)
 *           1 AVX2 + FMA          2 AVX-512 F/DQ/VL
 *   SFX     name suffix, e.g. f32_avx512
 * Every function carries __attribute__((target(...))) for its ISA, so one
 * binary holds all levels and the caller picks one at run time (cpu.c).
 *
 * Layers, each a few dozen lines:
 *   vector layer   GCC vector types + the few ops operators cannot express
 *                  (FMA, masked tail load/store), per ISA.
 *   activations    exp via Cody-Waite reduction + Taylor polynomial, giving
 *                  2^n and expm1(r) separately, so that sigmoid = 1/(1+e^-|z|)
 *                  and tanh = -expm1(-2|z|)/(2+expm1(-2|z|)) are both accurate
 *                  to a few ulp over the whole range (no cancellation near 0),
 *                  saturate without overflow for |z| up to inf, propagate NaN.
 *   GEMM           packed, blocked (KC x NC block of B in L2, MR x KC sliver
 *                  of A in L1), MR x 2V register tile, C = A.B (+bias) or
 *                  C += A.B per K block. Threads split output tiles only.
 *   forward step   [w_ih | w_hh] packed so one tile computes the i, f, g, o
 *                  columns of the same V hidden units: [block][k][gate][V]. A
 *                  tile of rows x blocks accumulates h.w_hh^T in registers (and
 *                  x_t.w_ih^T too where fwd_fuse_x says so, else that came from
 *                  one hoisted GEMM), then one elementwise pass adds the rest of
 *                  the pre-activation, activates, updates c and h and stores
 *                  gates, c, y.
 *   backward step  dh = dgates[t+1].w_hh (w_hh packed [block][k][V]) fused with
 *                  the elementwise gate gradients of step t for the same
 *                  units, and (bwd_dx_in_steps) dx of step t+1 = dgates[t+1].w_ih
 *                  as the same kind of tile; [dw_ih | dw_hh] (one product over
 *                  [x | h_prev]), db, and otherwise dx are whole-sequence GEMMs
 *                  after the loop.
 *   lengths        one code path for padded and variable-length batches: the
 *                  kernels see packed step-major rows and per-step row offsets
 *                  (offs[t] = sum(batch_sizes[:t]), NULL sizes = B per step);
 *                  sizes never increase, so step t's n rows read h/c of t-1
 *                  from the first n rows of step t-1 in y/c, with no copies.
 *                  dw_hh's h_{t-1} rows are mapped through offs in pack_b.
 *   projection     (P > 0) forward: the cell writes m = o*tanh(c) to scratch,
 *                  then y_t = m.w_hr^T is a GEMM per step (second barrier);
 *                  backward: dh (P wide) per step, dm = dh.w_hr GEMM, then the
 *                  cell; dw_hr = dh_all^T.m_all after the loop. Not fused: the
 *                  step tile widths differ (P vs H), and correctness came first.
 * Thread partition: hidden blocks for the steps (one spin barrier per step),
 * output tiles for the GEMMs. Each output element is always computed by the
 * same sequence of operations (the elementwise pass is one shared function,
 * FP contraction is off, FMAs are explicit), so results do not depend on the
 * thread count.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

#if ISA == 2
#define ATTR __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define VBYTES 64
#define MR 12
#define FR 6      /* forward step tile: up to FR rows x 1 block (4 gates) */
#define BR 6      /* backward step tile: up to BR rows x BNB blocks */
#define BNB 4
#define NB1 4     /* blocks per tile when a tile has a single row */
#elif ISA == 1
#define ATTR __attribute__((target("avx2,fma")))
#define VBYTES 32
#define MR 6
#define FR 2
#define BR 2
#define BNB 4
#define NB1 2
#else
#define ATTR
#define VBYTES 16
#define MR 4
#define FR 2
#define BR 2
#define BNB 4
#define NB1 2
#endif

#if IS_F64
#define ITYPE int64_t
#define KC 256
#define NC 256
#else
#define ITYPE int32_t
#define KC 256
#define NC 512
#endif

#define V ((int)(VBYTES / sizeof(TYPE)))
#define NV 2
#define NR (NV * V)
#define WP 4      /* panels per tile of a 1- or 2-row GEMM tile */
#define MAXACC 24   /* register accumulators per step tile */

#define INLINE static inline __attribute__((always_inline)) ATTR
#define KERNEL static ATTR

typedef TYPE FN(vec) __attribute__((vector_size(VBYTES)));
typedef TYPE FN(uvec) __attribute__((vector_size(VBYTES), aligned(sizeof(TYPE)), may_alias));
typedef ITYPE FN(ivec) __attribute__((vector_size(VBYTES)));
#define vec FN(vec)
#define uvec FN(uvec)
#define ivec FN(ivec)

/* ---- vector layer ------------------------------------------------------- */

INLINE vec FN(vload)(const TYPE *p) { return *(const uvec *)p; }
INLINE void FN(vstore)(TYPE *p, vec v) { *(uvec *)p = v; }
INLINE vec FN(vset1)(TYPE s)
{
#if ISA == 2 && IS_F64
    return (vec)_mm512_set1_pd(s);
#elif ISA == 2
    return (vec)_mm512_set1_ps(s);
#elif ISA == 1 && IS_F64
    return (vec)_mm256_set1_pd(s);
#elif ISA == 1
    return (vec)_mm256_set1_ps(s);
#else
    return s - (vec){0};   /* not (vec){0} + s: that turns -0.0 into +0.0 */
#endif
}

#if ISA == 2 && IS_F64
#define VFMA(a, b, c) ((vec)_mm512_fmadd_pd((__m512d)(a), (__m512d)(b), (__m512d)(c)))
#elif ISA == 2
#define VFMA(a, b, c) ((vec)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#elif ISA == 1 && IS_F64
#define VFMA(a, b, c) ((vec)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#elif ISA == 1
#define VFMA(a, b, c) ((vec)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#else
#define VFMA(a, b, c) ((a) * (b) + (c))
#endif

/* Load / store the first n lanes (0 < n <= V); the other lanes load as 0. */
INLINE vec FN(vload_n)(const TYPE *p, int n)
{
    if (n >= V)
        return FN(vload)(p);
#if ISA == 2 && IS_F64
    return (vec)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
#elif ISA == 2
    return (vec)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#elif ISA == 1
    ivec iota, m;
    for (int l = 0; l < V; l++)
        iota[l] = l;
    m = iota < (ITYPE)n;
#if IS_F64
    return (vec)_mm256_maskload_pd(p, (__m256i)m);
#else
    return (vec)_mm256_maskload_ps(p, (__m256i)m);
#endif
#else
    vec v = {0};
    for (int l = 0; l < n; l++)
        v[l] = p[l];
    return v;
#endif
}

INLINE void FN(vstore_n)(TYPE *p, vec v, int n)
{
    if (n >= V) {
        FN(vstore)(p, v);
        return;
    }
#if ISA == 2 && IS_F64
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
#elif ISA == 2
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#elif ISA == 1
    ivec iota, m;
    for (int l = 0; l < V; l++)
        iota[l] = l;
    m = iota < (ITYPE)n;
#if IS_F64
    _mm256_maskstore_pd(p, (__m256i)m, (__m256d)v);
#else
    _mm256_maskstore_ps(p, (__m256i)m, (__m256)v);
#endif
#else
    for (int l = 0; l < n; l++)
        p[l] = v[l];
#endif
}

INLINE vec FN(vselect)(ivec m, vec a, vec b)
{
    return (vec)(((ivec)a & m) | ((ivec)b & ~m));
}

/* ---- activations --------------------------------------------------------- */

#if IS_F64
#define EXP_XMIN (-708.0)                 /* exp(-708) is still a normal number */
#define EXP_XCLAMP (-750.0)               /* 2^round(-750 log2 e) = 2^-1082 underflows to 0 */
#define EXP_MAGIC 6755399441055744.0      /* 1.5 * 2^52: adding it rounds to integer */
#define EXP_MANT 52
#define EXP_BIAS 1023
#define LN2_HI 6.93145751953125E-1        /* few mantissa bits: n * LN2_HI is exact */
#define LN2_LO 1.42860682030941723212E-6
#else
#define EXP_XMIN (-87.0f)
#define EXP_XCLAMP (-110.0f)              /* 2^-159 underflows to 0 */
#define EXP_MAGIC 12582912.0f             /* 1.5 * 2^23 */
#define EXP_MANT 23
#define EXP_BIAS 127
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440054690583e-4f)
#endif
#define LOG2E ((TYPE)1.44269504088896340736)

/* For x <= 0 (or NaN): *scale = 2^n and *p = expm1(r) with x = n ln2 + r,
 * so exp(x) = scale + scale*p and expm1(x) = scale*p + (scale - 1).
 * Portable/AVX2: below EXP_XMIN, scale = 0 (exp flushes to 0, expm1 to -1).
 * AVX-512: x is clamped at EXP_XCLAMP, where 2^n already underflows to 0, and
 * vrndscale/vscalef give n and 2^n (subnormal below EXP_XMIN, as exp's true
 * value) in 3 instructions instead of about 8; n is the same round-to-nearest
 * value, so both give the same bits wherever exp(x) is a normal number. */
INLINE void FN(exp_parts)(vec x, vec *scale, vec *p)
{
#if ISA == 2
#if IS_F64
    x = (vec)_mm512_max_pd((__m512d)FN(vset1)(EXP_XCLAMP), (__m512d)x);   /* NaN x stays */
    vec n = (vec)_mm512_roundscale_pd((__m512d)(x * LOG2E),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *scale = (vec)_mm512_scalef_pd((__m512d)FN(vset1)(1), (__m512d)n);
#else
    x = (vec)_mm512_max_ps((__m512)FN(vset1)(EXP_XCLAMP), (__m512)x);
    vec n = (vec)_mm512_roundscale_ps((__m512)(x * LOG2E),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *scale = (vec)_mm512_scalef_ps((__m512)FN(vset1)(1), (__m512)n);
#endif
#else
    const vec xmin = FN(vset1)(EXP_XMIN), magic = FN(vset1)(EXP_MAGIC);
    ivec under = x < xmin;
    x = FN(vselect)(under, xmin, x);
    vec t = x * LOG2E + magic;
    vec n = t - magic;
    ivec e = ((ivec)t - (ivec)magic + (ITYPE)EXP_BIAS) << EXP_MANT;
    *scale = FN(vselect)(under, (vec){0}, (vec)e);
#endif
    vec r = VFMA(n, FN(vset1)(-LN2_HI), x);
    r = VFMA(n, FN(vset1)(-LN2_LO), r);
#if IS_F64
    vec q = FN(vset1)(1.6059043836821613e-10);
    q = VFMA(q, r, FN(vset1)(2.08767569878681e-09));
    q = VFMA(q, r, FN(vset1)(2.505210838544172e-08));
    q = VFMA(q, r, FN(vset1)(2.755731922398589e-07));
    q = VFMA(q, r, FN(vset1)(2.7557319223985893e-06));
    q = VFMA(q, r, FN(vset1)(2.48015873015873e-05));
    q = VFMA(q, r, FN(vset1)(0.0001984126984126984));
    q = VFMA(q, r, FN(vset1)(0.001388888888888889));
    q = VFMA(q, r, FN(vset1)(0.008333333333333333));
    q = VFMA(q, r, FN(vset1)(0.041666666666666664));
    q = VFMA(q, r, FN(vset1)(0.16666666666666666));
    q = VFMA(q, r, FN(vset1)(0.5));
#else
    vec q = FN(vset1)(1.98412698e-4f);
    q = VFMA(q, r, FN(vset1)(1.38888889e-3f));
    q = VFMA(q, r, FN(vset1)(8.33333333e-3f));
    q = VFMA(q, r, FN(vset1)(4.16666667e-2f));
    q = VFMA(q, r, FN(vset1)(1.66666667e-1f));
    q = VFMA(q, r, FN(vset1)(0.5f));
#endif
    *p = VFMA(r * r, q, r);
}

INLINE vec FN(vabs)(vec z)
{
    const ivec sign = (ivec)FN(vset1)((TYPE)-0.0);
    return (vec)((ivec)z & ~sign);
}

/* 1/d for d in [1, 2] (or NaN). AVX-512: 14-bit reciprocal estimate refined by
 * Newton steps (one for float, two for double), faster than vdiv and within
 * an ulp; elsewhere a division. */
INLINE vec FN(vrecip12)(vec d)
{
#if ISA == 2
#if IS_F64
    vec r = (vec)_mm512_rcp14_pd((__m512d)d);
#else
    vec r = (vec)_mm512_rcp14_ps((__m512)d);
#endif
    const vec one = FN(vset1)(1);
    r = VFMA(r, VFMA(-d, r, one), r);
#if IS_F64
    r = VFMA(r, VFMA(-d, r, one), r);
#endif
    return r;
#else
    return 1 / d;
#endif
}

/* 1/(1+e^-z) as e^-|z| based formula, exact 0/1 saturation, NaN in -> NaN out */
INLINE vec FN(vsigmoid)(vec z)
{
    const ivec sign = (ivec)FN(vset1)((TYPE)-0.0);
    vec s, p;
    FN(exp_parts)((vec)((ivec)z | sign), &s, &p);   /* -|z| */
    vec e = VFMA(s, p, s);
    vec r = FN(vrecip12)(1 + e);
#if ISA == 2 && IS_F64
    __mmask8 neg = _mm512_cmp_pd_mask((__m512d)z, (__m512d){0}, _CMP_NGE_UQ);
    return (vec)_mm512_mask_mul_pd((__m512d)r, neg, (__m512d)e, (__m512d)r);
#elif ISA == 2
    __mmask16 neg = _mm512_cmp_ps_mask((__m512)z, (__m512){0}, _CMP_NGE_UQ);
    return (vec)_mm512_mask_mul_ps((__m512)r, neg, (__m512)e, (__m512)r);
#else
    return FN(vselect)(z >= (vec){0}, r, e * r);
#endif
}

INLINE vec FN(vtanh)(vec z)
{
    const ivec sign = (ivec)FN(vset1)((TYPE)-0.0);
    vec s, p;
    FN(exp_parts)(FN(vabs)(z) * (TYPE)-2, &s, &p);
    vec em = VFMA(s, p, s - 1);
    vec t = em * FN(vrecip12)(2 + em);     /* -tanh|z| (<= 0) */
    return (vec)((ivec)t ^ (~(ivec)z & sign));   /* one vpternlog */
}

/* ---- GEMM ------------------------------------------------------------------ */

/* Operands. A is M x K: element (m, k) at a[m*lda + k], or a[k*lda + m] if
 * a_trans. B is K x N: either prepacked panels [N/NR][K][NR] (bpacked), or
 * row-major b[k*ldb + n]; or, if offs is set (K = offs[nsteps] packed rows of
 * variable-length steps), the h_{t-1} rows of row k = offs[t] + r: b0[r*ldb + n]
 * at t = 0, else b[(offs[t-1] + r)*ldb + n]. With bx set, B = [x | 0 | h_prev]
 * for dw_ih and dw_hh in one product: the first px panels (px*NR >= nx columns)
 * hold bx[k*ldbx + n] for n < nx and zeros after, the panels from px the
 * sources above (column n is their n - px*NR); C of the first px panels goes to
 * c (nx columns, ldc), of the others to c2 (ldc2), and the zero columns nowhere.
 * C (M x N, ldc) = A.B + bias[n] (bias may be NULL). */
typedef struct {
    int64_t M, N, K;
    const TYPE *a;
    int64_t lda;
    int a_trans;
    const TYPE *bpacked;
    const TYPE *b, *b0;
    int64_t ldb;
    const int64_t *offs;
    int64_t nsteps;
    const TYPE *bx;
    int64_t ldbx, nx, px;
    TYPE *c2;
    int64_t ldc2;
    const TYPE *bias;
    TYPE *c;
    int64_t ldc;
} FN(gemm_args);

/* Transposed A: pack tiles mt0..mt1 at once, sweeping each stored row of A
 * once (a per-tile sweep would stride through memory by lda per element).
 * Tile mt goes to ap[(mt-mt0)*kc*MR + k*MR + r]. */
KERNEL void FN(pack_at)(const FN(gemm_args) *g, int64_t mt0, int64_t mt1, int64_t kb,
                        int64_t kc, TYPE *ap)
{
    int64_t m1 = mt1 * MR < g->M ? mt1 * MR : g->M;
    for (int64_t k0 = 0; k0 < kc; k0 += 8) {   /* 8 source rows at a time: few write streams */
        int64_t k1 = k0 + 8 < kc ? k0 + 8 : kc;
        for (int64_t mt = mt0; mt < mt1; mt++) {
            int64_t m = mt * MR;
            TYPE *dst = ap + (mt - mt0) * kc * MR;
            for (int64_t k = k0; k < k1; k++) {
                const TYPE *src = g->a + (kb + k) * g->lda + m;
                if (m + MR <= m1) {
                    memcpy(dst + k * MR, src, MR * sizeof(TYPE));
                    continue;
                }
                int64_t r = 0;
                for (; r < m1 - m; r++)
                    dst[k * MR + r] = src[r];
                for (; r < MR; r++)
                    dst[k * MR + r] = 0;
            }
        }
    }
}

/* Row-major A, one tile: ap[k*MR + r] = A[m0+r][kb+k], zero padded. Used when
 * lda is a large power of two, where reading MR rows in place thrashes L1 sets. */
KERNEL void FN(pack_a)(const FN(gemm_args) *g, int64_t m0, int64_t kb, int64_t kc, TYPE *ap)
{
    int64_t mr = g->M - m0 < MR ? g->M - m0 : MR;
    for (int64_t r = 0; r < MR; r++) {
        const TYPE *src = g->a + (m0 + (r < mr ? r : mr - 1)) * g->lda + kb;
        for (int64_t k = 0; k < kc; k++)
            ap[k * MR + r] = src[k];
    }
}

/* Pack rows kb..kb+kc of raw B, panels p0..p1, into bp[p-p0][k][NR]. */
KERNEL void FN(pack_b)(const FN(gemm_args) *g, int64_t kb, int64_t kc, int64_t p0, int64_t p1,
                       TYPE *bp)
{
    int64_t t0 = 0;
    if (g->offs) {   /* step of row kb: last t with offs[t] <= kb */
        int64_t lo = 0, hi = g->nsteps - 1;
        while (lo < hi) {
            int64_t mid = (lo + hi + 1) / 2;
            if (g->offs[mid] <= kb)
                lo = mid;
            else
                hi = mid - 1;
        }
        t0 = lo;
    }
    for (int64_t p = p0; p < p1; p++) {
        int64_t n0 = p * NR, nn = g->N - n0 < NR ? g->N - n0 : NR;
        TYPE *dst = bp + (p - p0) * kc * NR;
        int64_t t = t0;
        for (int64_t k = 0; k < kc; k++) {
            int64_t row = kb + k;
            const TYPE *src = g->b + row * g->ldb;
            if (g->offs) {
                while (row >= g->offs[t + 1])
                    t++;
                int64_t r = row - g->offs[t];
                src = t ? g->b + (g->offs[t - 1] + r) * g->ldb : g->b0 + r * g->ldb;
            }
            if (g->bx) {
                if (p < g->px) {   /* x columns, zero padded to the panel */
                    int64_t nxp = g->nx - n0 < NR ? g->nx - n0 : NR;
                    memcpy(dst + k * NR, g->bx + row * g->ldbx + n0, (size_t)nxp * sizeof(TYPE));
                    for (int64_t n = nxp; n < NR; n++)
                        dst[k * NR + n] = 0;
                    continue;
                }
                src -= g->px * NR;
            }
            src += n0;
            if (nn == NR) {
                memcpy(dst + k * NR, src, NR * sizeof(TYPE));
                continue;
            }
            int64_t n = 0;
            for (; n < nn; n++)
                dst[k * NR + n] = src[n];
            for (; n < NR; n++)
                dst[k * NR + n] = 0;
        }
    }
}

/* MR x NR register tile over kc: C = acc + bias (first) or C += acc.
 * A packed (ap[k*MR + r], direct 0) or read in place: row-major A (ap[r*lda + k],
 * direct 1) or transposed A (ap[k*lda + r], direct 2); in place, rows past mr
 * re-read row mr-1 and their results are dropped. */
INLINE void FN(gemm_ukr_body)(const int rows, const int nvec, int64_t kc, const TYPE *restrict ap,
                              int64_t lda, const int direct, const TYPE *restrict bp,
                              int64_t pstride, TYPE *restrict c, int64_t ldc, int64_t mr,
                              int64_t nn, int first, const TYPE *bias)
{
    vec acc[MR][NV * WP];
    const TYPE *arow[MR];
#pragma GCC unroll 16
    for (int r = 0; r < rows; r++) {
        arow[r] = ap + (r < mr ? r : mr - 1) * (direct == 2 ? 1 : lda);
#pragma GCC unroll 8
        for (int j = 0; j < nvec; j++)
            acc[r][j] = (vec){0};
    }
    for (int64_t k = 0; k < kc; k++) {
        vec b[NV * WP];
#pragma GCC unroll 8
        for (int j = 0; j < nvec; j++)
            b[j] = FN(vload)(bp + (j / NV) * pstride + (j % NV) * V);
#pragma GCC unroll 16
        for (int r = 0; r < rows; r++) {
            vec a = FN(vset1)(direct == 2 ? arow[r][k * lda] : direct ? arow[r][k] : ap[r]);
#pragma GCC unroll 8
            for (int j = 0; j < nvec; j++)
                acc[r][j] = VFMA(a, b[j], acc[r][j]);
        }
        if (!direct)
            ap += MR;
        bp += NR;
    }
    for (int r = 0; r < rows && r < mr; r++) {
        for (int j = 0; j < nvec; j++) {
            int64_t n = nn - j * V;
            if (n <= 0)
                break;
            int nv = n < V ? (int)n : V;
            TYPE *cp = c + r * ldc + j * V;
            vec v = acc[r][j];
            if (!first)
                v = v + FN(vload_n)(cp, nv);
            else if (bias)
                v = v + FN(vload_n)(bias + j * V, nv);
            FN(vstore_n)(cp, v, nv);
        }
    }
}

/* The register tile has `rows` rows, a compile-time count >= mr: a 1-row product
 * (B = 1 streaming) must not pay for MR rows. Each output element sees the same
 * FMA sequence whatever the variant. */
#if MR >= 12
#define UKR_ROWS(mr) ((mr) <= 4 ? (int)(mr) : (mr) <= 6 ? 6 : (mr) <= 8 ? 8 : MR)
#elif MR >= 6
#define UKR_ROWS(mr) ((mr) <= 4 ? (int)(mr) : MR)
#else
#define UKR_ROWS(mr) ((int)(mr) < MR ? (int)(mr) : MR)
#endif
#define UKR_CASE(n, direct)                                                                   \
    case n:                                                                                   \
        FN(gemm_ukr_body)(n < MR ? n : MR, NV, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn,   \
                          first, bias);                                                       \
        return;
/* wide: 1 or 2 rows over WP panels (pstride apart), enough independent
 * accumulators to hide the FMA latency; narrow: a full-height tile of a panel
 * with at most V columns (small I in dx, dw_ih) computes one vector, not NV */
#define UKR_SWITCH(direct)                                                                    \
    if (wide) {                                                                               \
        if (mr == 1)                                                                          \
            FN(gemm_ukr_body)(1, NV * WP, kc, ap, lda, direct, bp, pstride, c, ldc, mr, nn,   \
                              first, bias);                                                   \
        else                                                                                  \
            FN(gemm_ukr_body)(2, NV * WP, kc, ap, lda, direct, bp, pstride, c, ldc, mr, nn,   \
                              first, bias);                                                   \
        return;                                                                               \
    }                                                                                         \
    if (NV > 1 && nn <= V && UKR_ROWS(mr) == MR) {                                            \
        FN(gemm_ukr_body)(MR, 1, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn, first, bias);    \
        return;                                                                               \
    }                                                                                         \
    switch (UKR_ROWS(mr)) {                                                                   \
        UKR_CASE(1, direct)                                                                   \
        UKR_CASE(2, direct)                                                                   \
        UKR_CASE(3, direct)                                                                   \
        UKR_CASE(4, direct)                                                                   \
        UKR_CASE(6, direct)                                                                   \
        UKR_CASE(8, direct)                                                                   \
    default:                                                                                  \
        FN(gemm_ukr_body)(MR, NV, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn, first, bias);  \
    }

KERNEL void FN(gemm_ukr_packed)(int64_t kc, const TYPE *ap, const TYPE *bp, int wide,
                                int64_t pstride, TYPE *c, int64_t ldc, int64_t mr, int64_t nn,
                                int first, const TYPE *bias)
{
    const int64_t lda = 0;
    UKR_SWITCH(0)
}

KERNEL void FN(gemm_ukr_direct)(int64_t kc, const TYPE *ap, int64_t lda, const TYPE *bp,
                                int wide, int64_t pstride, TYPE *c, int64_t ldc, int64_t mr,
                                int64_t nn, int first, const TYPE *bias)
{
    UKR_SWITCH(1)
}

KERNEL void FN(gemm_ukr_direct_t)(int64_t kc, const TYPE *ap, int64_t lda, const TYPE *bp,
                                  int wide, int64_t pstride, TYPE *c, int64_t ldc, int64_t mr,
                                  int64_t nn, int first, const TYPE *bias)
{
    UKR_SWITCH(2)
}

static inline int64_t FN(split)(int64_t n, int tid, int nth) { return n * tid / nth; }

/* Per-thread workspace: B block KC x NC (raw B only), then the A slivers:
 * MR x KC, or for transposed A all the thread's tiles of an M x KC block. */
#define ATB 8   /* transposed A is packed ATB tiles at a time (stays in L2 with B) */
static int64_t FN(gemm_ws_elems)(int64_t M_at, int nth, int raw_b)
{
    (void)M_at; (void)nth;
    return (raw_b ? (int64_t)KC * NC : 0) + (int64_t)ATB * MR * KC + 64;
}

/* Room for any thread count up to nth (the pool may run fewer threads). */
static int64_t FN(gemm_ws_total)(int64_t M_at, int nth, int raw_b)
{
    int64_t best = 0;
    for (int n = 1; n <= nth; n++) {
        int64_t e = n * FN(gemm_ws_elems)(M_at, n, raw_b);
        best = e > best ? e : best;
    }
    return best;
}

KERNEL void FN(gemm)(const FN(gemm_args) *g, TYPE *ws, int tid, int nth)
{
    int64_t mtiles = (g->M + MR - 1) / MR, npan = (g->N + NR - 1) / NR;
    int64_t mt0 = 0, mt1 = mtiles, p0 = 0, p1 = npan;
    if (npan >= mtiles) {
        p0 = FN(split)(npan, tid, nth);
        p1 = FN(split)(npan, tid + 1, nth);
    } else {
        mt0 = FN(split)(mtiles, tid, nth);
        mt1 = FN(split)(mtiles, tid + 1, nth);
    }
    if (p0 >= p1 || mt0 >= mt1)
        return;
    TYPE *bpk = ws, *ap = ws + (g->bpacked ? 0 : (int64_t)KC * NC);
    int pack_rows = !g->a_trans && (g->lda * (int64_t)sizeof(TYPE)) % 2048 == 0 &&
                    p1 - p0 >= 4;
    /* a small transposed A (dgates^T of a short sequence) is read in place: its
     * MR values per k are contiguous, and packing would cost as much as the
     * product when N is small (dw_ih with small I) */
    int at_direct = g->a_trans && g->K * g->lda * (int64_t)sizeof(TYPE) <= (256 << 10) &&
                    (g->lda * (int64_t)sizeof(TYPE)) % 2048 != 0;
    if (g->K == 0) {
        for (int64_t m = mt0 * MR; m < g->M && m < mt1 * MR; m++)
            for (int64_t n = p0 * NR; n < g->N && n < p1 * NR; n++)
                g->c[m * g->ldc + n] = g->bias ? g->bias[n] : 0;
        return;
    }
    for (int64_t kb = 0; kb < g->K; kb += KC) {
        int64_t kc = g->K - kb < KC ? g->K - kb : KC;
        for (int64_t pb = p0; pb < p1; pb += NC / NR) {
            int64_t pe = pb + NC / NR < p1 ? pb + NC / NR : p1;
            const TYPE *bblk;
            int64_t pstride;
            if (g->bpacked) {
                bblk = g->bpacked + pb * g->K * NR + kb * NR;
                pstride = g->K * NR;
            } else {
                FN(pack_b)(g, kb, kc, pb, pe, bpk);
                bblk = bpk;
                pstride = kc * NR;
            }
            for (int64_t mt = mt0; mt < mt1; mt++) {
                int64_t m0 = mt * MR, mr = g->M - m0 < MR ? g->M - m0 : MR;
                if (g->a_trans && !at_direct && (mt - mt0) % ATB == 0)
                    FN(pack_at)(g, mt, mt + ATB < mt1 ? mt + ATB : mt1, kb, kc, ap);
                if (pack_rows)
                    FN(pack_a)(g, m0, kb, kc, ap);
                for (int64_t p = pb; p < pe;) {
                    int wide = mr <= 2 && pe - p >= WP &&
                               (!g->c2 || p + WP <= g->px || p >= g->px);
                    TYPE *cp = g->c + m0 * g->ldc + p * NR;
                    int64_t ldc = g->ldc, nn = g->N - p * NR;
                    if (g->c2 && p >= g->px) {
                        cp = g->c2 + m0 * g->ldc2 + (p - g->px) * NR;
                        ldc = g->ldc2;
                    } else if (g->c2) {
                        nn = g->nx - p * NR;
                    }
                    const TYPE *bias = g->bias ? g->bias + p * NR : NULL;
                    const TYPE *bpp = bblk + (p - pb) * pstride;
                    if (pack_rows)
                        FN(gemm_ukr_packed)(kc, ap, bpp, wide, pstride, cp, ldc, mr,
                                            nn, kb == 0, bias);
                    else if (at_direct)
                        FN(gemm_ukr_direct_t)(kc, g->a + kb * g->lda + m0, g->lda, bpp, wide,
                                              pstride, cp, ldc, mr, nn,
                                              kb == 0, bias);
                    else if (g->a_trans)
                        FN(gemm_ukr_packed)(kc, ap + (mt - mt0) % ATB * kc * MR, bpp, wide,
                                            pstride, cp, ldc, mr, nn, kb == 0,
                                            bias);
                    else
                        FN(gemm_ukr_direct)(kc, g->a + m0 * g->lda + kb, g->lda, bpp, wide,
                                            pstride, cp, ldc, mr, nn, kb == 0,
                                            bias);
                    p += wide ? WP : 1;
                }
            }
        }
    }
}

/* Whether dx is computed step by step: the n rows of step t+1, out [n,I] =
 * dg . w_ih (bwd_rows with wih_b), in step t, while dg is still in cache;
 * otherwise one GEMM after the loop (wih). Used without a projection and for I > 16;
 * measured (f32, 1 thread, CPU time of the backward, GEMM / steps):
 * (32,64,256,256) 21.1/20.0 ms, (32,16,64,64) .327/.312 ms; but (6,32,3,32)
 * 26.4/27.7 us: with I = 3 a tile of V columns is mostly padding, where the
 * GEMM's narrow tile has twice the rows. */
static int FN(bwd_dx_in_steps)(int64_t I, int64_t P) { return !P && I > 16; }

/* ---- packed weights ----------------------------------------------------------
 * R = P with a projection, else H: the width of h. header, then (64-byte aligned):
 *   wih_t  [ceil(4H/NR)][I][NR]   B = w_ih^T for gates = x.w_ih^T
 *   wih    [ceil(I/NR)][4H][NR]   B = w_ih   for dx = dgates.w_ih (a GEMM; empty if
 *                                 bwd_dx_in_steps)
 *   whh_f  [ceil(H/V)][I+R][4][V] forward step: i,f,g,o of V units together;
 *                                 the block's first I rows hold w_ih^T, for
 *                                 steps that do x_t.w_ih^T themselves (fwd_fuse_x)
 *   whh_b  [ceil(R/V)][4H][V]     backward step: dh = dgates.w_hh
 *   wih_b  [ceil(I/V)][4H][V]     backward step: dx = dgates.w_ih (only if
 *                                 bwd_dx_in_steps)
 *   b      [4H]
 *   whr_t  [ceil(P/NR)][H][NR]    B = w_hr^T for h = m.w_hr^T   (projection only)
 *   whr    [ceil(H/NR)][P][NR]    B = w_hr   for dm = dh.w_hr    (projection only)
 */
typedef struct {
    uint32_t magic;
    int32_t level, elem_size, has_bias;
    int64_t I, H, P;
    int64_t off_wih_t, off_wih, off_whh_f, off_whh_b, off_wih_b, off_b, off_whr_t, off_whr;
    int64_t total;
} FN(packed_hdr);

#define PACK_MAGIC 0x4c53544du
#define ALIGN64(n) (((n) + 63) & ~(int64_t)63)

static void FN(packed_layout)(int64_t I, int64_t H, int64_t P, FN(packed_hdr) *h)
{
    int64_t R = P ? P : H, s = (int64_t)sizeof(TYPE), dx_steps = FN(bwd_dx_in_steps)(I, P);
    h->magic = PACK_MAGIC;
    h->level = ISA;
    h->elem_size = (int32_t)sizeof(TYPE);
    h->I = I;
    h->H = H;
    h->P = P;
    int64_t off = ALIGN64((int64_t)sizeof(FN(packed_hdr)));
    h->off_wih_t = off;
    off = ALIGN64(off + (4 * H + NR - 1) / NR * I * NR * s);
    h->off_wih = off;
    off = ALIGN64(off + (dx_steps ? 0 : (I + NR - 1) / NR * 4 * H * NR * s));
    h->off_whh_f = off;
    off = ALIGN64(off + (H + V - 1) / V * (I + R) * 4 * V * s);
    h->off_whh_b = off;
    off = ALIGN64(off + (R + V - 1) / V * 4 * H * V * s);
    h->off_wih_b = off;
    off = ALIGN64(off + (dx_steps ? (I + V - 1) / V * 4 * H * V * s : 0));
    h->off_b = off;
    off = ALIGN64(off + 4 * H * s);
    h->off_whr_t = off;
    off = ALIGN64(off + (P + NR - 1) / NR * H * NR * s);
    h->off_whr = off;
    off = ALIGN64(off + (H + NR - 1) / NR * P * NR * s);
    h->total = off;
}

static size_t FN(packed_size)(int64_t I, int64_t H, int64_t P)
{
    FN(packed_hdr) h;
    FN(packed_layout)(I, H, P, &h);
    return (size_t)h.total + 64;
}

static unsigned char *FN(align_ptr)(void *p)
{
    return (unsigned char *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

/* dst [ceil(N/NR)][K][NR] = panels of the K x N matrix (k, n) -> src[k*sk + n*sn] */
static void FN(pack_panels)(int64_t K, int64_t N, const TYPE *src, int64_t sk, int64_t sn,
                            TYPE *dst)
{
    for (int64_t p = 0; p < (N + NR - 1) / NR; p++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t n = 0; n < NR; n++) {
                int64_t col = p * NR + n;
                dst[(p * K + k) * NR + n] = col < N ? src[k * sk + col * sn] : 0;
            }
}

static int FN(pack)(int64_t I, int64_t H, int64_t P, const TYPE *w_ih, const TYPE *w_hh,
                    const TYPE *b, const TYPE *w_hr, void *packed)
{
    unsigned char *base = FN(align_ptr)(packed);
    FN(packed_hdr) *h = (FN(packed_hdr) *)base;
    FN(packed_layout)(I, H, P, h);
    h->has_bias = b != NULL;
    int64_t G = 4 * H, R = P ? P : H;
    TYPE *whh_f = (TYPE *)(base + h->off_whh_f), *whh_b = (TYPE *)(base + h->off_whh_b);
    TYPE *bb = (TYPE *)(base + h->off_b);
    FN(pack_panels)(I, G, w_ih, 1, I, (TYPE *)(base + h->off_wih_t));
    int64_t KF = I + R, dx_steps = FN(bwd_dx_in_steps)(I, P);
    if (!dx_steps)
        FN(pack_panels)(G, I, w_ih, I, 1, (TYPE *)(base + h->off_wih));
    for (int64_t j = 0; j < (H + V - 1) / V; j++)
        for (int64_t k = 0; k < KF; k++)
            for (int g = 0; g < 4; g++)
                for (int l = 0; l < V; l++) {
                    int64_t u = j * V + l;
                    TYPE w = 0;
                    if (u < H)
                        w = k < I ? w_ih[(g * H + u) * I + k] : w_hh[(g * H + u) * R + k - I];
                    whh_f[((j * KF + k) * 4 + g) * V + l] = w;
                }
    for (int64_t j = 0; j < (R + V - 1) / V; j++)
        for (int64_t k = 0; k < G; k++)
            for (int l = 0; l < V; l++) {
                int64_t u = j * V + l;
                whh_b[(j * G + k) * V + l] = u < R ? w_hh[k * R + u] : 0;
            }
    TYPE *wih_b = (TYPE *)(base + h->off_wih_b);
    for (int64_t j = 0; j < (dx_steps ? (I + V - 1) / V : 0); j++)
        for (int64_t k = 0; k < G; k++)
            for (int l = 0; l < V; l++) {
                int64_t u = j * V + l;
                wih_b[(j * G + k) * V + l] = u < I ? w_ih[k * I + u] : 0;
            }
    for (int64_t k = 0; k < G; k++)
        bb[k] = b ? b[k] : 0;
    if (P) {
        FN(pack_panels)(H, P, w_hr, 1, H, (TYPE *)(base + h->off_whr_t));
        FN(pack_panels)(P, H, w_hr, H, 1, (TYPE *)(base + h->off_whr));
    }
    return LSTM_OK;
}

static const FN(packed_hdr) *FN(check_packed)(const void *packed, int64_t I, int64_t H,
                                              int64_t P)
{
    const FN(packed_hdr) *h = (const FN(packed_hdr) *)FN(align_ptr)((void *)packed);
    if (h->magic != PACK_MAGIC || h->level != ISA || h->elem_size != (int)sizeof(TYPE) ||
        h->I != I || h->H != H || h->P != P)
        return NULL;
    return h;
}

/* Row offsets of the steps: offs[t] = sum(batch_sizes[:t]), t = 0..T; batch_sizes
 * NULL means B rows per step. 0 if the sizes are not non-increasing in [0, B]. */
static int FN(step_offsets)(int64_t T, int64_t B, const int64_t *bs, int64_t *offs)
{
    int64_t prev = B;
    offs[0] = 0;
    for (int64_t t = 0; t < T; t++) {
        int64_t n = bs ? bs[t] : B;
        if (n < 0 || n > prev)
            return 0;
        offs[t + 1] = offs[t] + n;
        prev = n;
    }
    return 1;
}

/* ---- forward ---------------------------------------------------------------- */

typedef struct {
    int64_t T, B, I, H, P;
    const FN(packed_hdr) *hdr;
    const int64_t *offs;     /* [T+1] step row offsets */
    const TYPE *x, *h0, *c0;
    TYPE *y, *h_n, *c_n, *gates, *c;
    TYPE *m;                 /* [B,H] unprojected h of the step (projection only) */
    TYPE *ws;
} FN(fwd_ctx);

/* acc [mr][nb][4][V] += src[rows] . (K rows of the packed whh_f from w), rows ld apart */
INLINE void FN(fwd_dot_add)(const int mr, const int nb, int64_t K, const TYPE *restrict src,
                            int64_t ld, const TYPE *restrict w, int64_t bstride, vec *acc)
{
    for (int64_t k = 0; k < K; k++) {
        const TYPE *wk = w + k * 4 * V;
#pragma GCC unroll 24
        for (int r = 0; r < mr; r++) {
            vec a = FN(vset1)(src[r * ld + k]);
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++)
                acc[r * nb * 4 + q] = VFMA(a, FN(vload)(wk + (q / 4) * bstride + (q % 4) * V),
                                           acc[r * nb * 4 + q]);
        }
    }
}

/* acc [mr][nb][4][V] = x_t[rows] . w_ih^T (XF = I > 0 only) + h_prev[rows] . w_hh^T
 * for nb blocks (w: packed whh_f at the first block, I + K rows per block); K = width
 * of h */
INLINE void FN(fwd_dot)(const int mr, const int nb, int64_t XF, const TYPE *restrict xp,
                        int64_t I, int64_t K, const TYPE *restrict hp, const TYPE *restrict w,
                        TYPE *restrict out)
{
    vec acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        acc[q] = (vec){0};
    const int64_t bstride = (I + K) * 4 * V;
    FN(fwd_dot_add)(mr, nb, XF, xp, I, w, bstride, acc);
    FN(fwd_dot_add)(mr, nb, K, hp, K, w + I * 4 * V, bstride, acc);
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        FN(vstore)(out + q * V, acc[q]);
}

/* Elementwise LSTM update of rows r0..r0+mr, blocks j0..j0+nb at one step.
 * Two passes of independent iterations (activations, then cell and h) rather
 * than one long dependency chain per unit block: measured 1.4x faster at
 * (6,32,3,32), where this pass is most of the forward time. */
/* The pre-activation is acc + pre[row*pre_ld + gate*H + unit]: the hoisted
 * x.w_ih^T + b in gates_t itself (pre_ld = 4H), or the bias alone (pre_ld = 0)
 * when the step already did x_t.w_ih^T (XF > 0). */
KERNEL void FN(fwd_cell)(int mr, int nb, int64_t H, int64_t r0, int64_t j0, const TYPE *acc,
                         const TYPE *pre, int64_t pre_ld, const TYPE *cprev, TYPE *gates_t,
                         TYPE *c_t, TYPE *y_t)
{
    TYPE act[MAXACC * V] __attribute__((aligned(64)));
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *a = acc + q * 4 * V;
        TYPE *gr = gates_t + row * 4 * H + off, *ac = act + q * 4 * V;
        const TYPE *pr = pre + row * pre_ld + off;
        vec i = FN(vsigmoid)(FN(vload)(a) + FN(vload_n)(pr, n));
        vec f = FN(vsigmoid)(FN(vload)(a + V) + FN(vload_n)(pr + H, n));
        vec g = FN(vtanh)(FN(vload)(a + 2 * V) + FN(vload_n)(pr + 2 * H, n));
        vec o = FN(vsigmoid)(FN(vload)(a + 3 * V) + FN(vload_n)(pr + 3 * H, n));
        FN(vstore)(ac, i);
        FN(vstore)(ac + V, f);
        FN(vstore)(ac + 2 * V, g);
        FN(vstore)(ac + 3 * V, o);
        FN(vstore_n)(gr, i, n);
        FN(vstore_n)(gr + H, f, n);
        FN(vstore_n)(gr + 2 * H, g, n);
        FN(vstore_n)(gr + 3 * H, o, n);
    }
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *ac = act + q * 4 * V;
        vec i = FN(vload)(ac), f = FN(vload)(ac + V), g = FN(vload)(ac + 2 * V);
        vec o = FN(vload)(ac + 3 * V);
        vec cn = VFMA(f, FN(vload_n)(cprev + row * H + off, n), i * g);
        vec h = o * FN(vtanh)(cn);
        FN(vstore_n)(c_t + row * H + off, cn, n);
        FN(vstore_n)(y_t + row * H + off, h, n);
    }
}

#define FWD_TILE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV):                                                                 \
        FN(fwd_dot)(MRV, NBV, XF, xt + r0 * I, I, R, hp + r0 * R, w + j * (I + R) * 4 * V,   \
                    acc);                                                                    \
        break;

/* One step for rows 0..B-1 (the active ones), hidden blocks j0..j1: h_prev [B,R],
 * y_t [B,H] gets o*tanh(c) (h, or m before the projection). rev sweeps the tiles
 * last to first (odd steps): tiles are independent, so the values do not change,
 * but each step then starts on the w_hh lines the previous one used last, which
 * are still in L2 when w_hh is about the L2 size (H = 256 f32: 1 MiB). */
KERNEL void FN(fwd_step)(int64_t B, int64_t I, int64_t H, int64_t R, int64_t j0, int64_t j1,
                         const TYPE *w, int64_t XF, const TYPE *xt, const TYPE *bias,
                         const TYPE *hp, const TYPE *cp, TYPE *gates_t, TYPE *c_t, TYPE *y_t,
                         int rev)
{
    const TYPE *pre = XF ? bias : gates_t;
    int64_t pre_ld = XF ? 0 : 4 * H;
    TYPE acc[MAXACC * V] __attribute__((aligned(64)));
    int64_t jstep = B == 1 ? NB1 : 1, ntile = (j1 - j0 + jstep - 1) / jstep;
    for (int64_t it = 0; it < ntile; it++) {
        int64_t j = j0 + (rev ? ntile - 1 - it : it) * jstep;
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t r0 = 0; r0 < B; r0 += FR) {
            int mr = B - r0 < FR ? (int)(B - r0) : FR;
            switch (mr * 16 + nb) {
                FWD_TILE(1, 1)
                FWD_TILE(1, 2)
#if NB1 >= 4
                FWD_TILE(1, 3)
                FWD_TILE(1, 4)
#endif
                FWD_TILE(2, 1)
#if FR >= 6
                FWD_TILE(3, 1)
                FWD_TILE(4, 1)
                FWD_TILE(5, 1)
                FWD_TILE(6, 1)
#endif
            default:
                break;
            }
            FN(fwd_cell)(mr, nb, H, r0, j, acc, pre, pre_ld, cp, gates_t, c_t, y_t);
        }
    }
}

/* Whether the steps do x_t.w_ih^T themselves, in the same register tile as
 * h.w_hh^T (1), or one GEMM over all T*B rows does it before the loop (0).
 * Fusing saves writing and re-reading 4H pre-activations per row, and with a
 * tiny I the hoisted GEMM is nothing but that traffic; the hoisted GEMM reads
 * w_ih once for all rows, the fused step once per step and row tile. Measured
 * (f32, 1 thread, ms, hoisted/fused): (6,32,3,32) .0153/.0130; (32,16,64,64)
 * .173/.165; (128,64,64,64) 3.41/2.95; (32,64,256,256) 10.9/9.45; (32,1,64,64)
 * .018/.026; (32,1,256,256) .28/.50; (32,8,256,256) 1.26/1.44. Depends on the
 * shape only (not T or threads): a streamed step gives the same bits as a
 * whole-sequence call. */
static int FN(fwd_fuse_x)(int64_t B, int64_t I) { return I <= 16 || B >= 16; }

KERNEL void FN(fwd_job)(void *arg, int tid, int nth, lstm_barrier *bar)
{
    const FN(fwd_ctx) *ctx = (const FN(fwd_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, P = ctx->P, G = 4 * H;
    int64_t R = P ? P : H;
    const int64_t *offs = ctx->offs;
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(0, nth, 0);
    FN(gemm_args) g = {0};
    g.M = offs[T];
    g.N = G;
    g.K = I;
    g.a = ctx->x;
    g.lda = I;
    g.bpacked = (const TYPE *)(base + ctx->hdr->off_wih_t);
    g.bias = ctx->hdr->has_bias ? (const TYPE *)(base + ctx->hdr->off_b) : NULL;
    g.c = ctx->gates;
    g.ldc = G;
    int64_t XF = FN(fwd_fuse_x)(B, I) ? I : 0;
    if (!XF) {
        FN(gemm)(&g, ws, tid, nth);
        lstm_barrier_wait(bar, nth);
    }
    const TYPE *bias = (const TYPE *)(base + ctx->hdr->off_b);
    FN(gemm_args) gp = {0};   /* projection: y_t = m . w_hr^T */
    gp.N = P;
    gp.K = H;
    gp.a = ctx->m;
    gp.lda = H;
    gp.bpacked = (const TYPE *)(base + ctx->hdr->off_whr_t);
    gp.ldc = P;
    int64_t nblk = (H + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, nth), j1 = FN(split)(nblk, tid + 1, nth);
    const TYPE *w = (const TYPE *)(base + ctx->hdr->off_whh_f);
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        const TYPE *hp = t ? ctx->y + offs[t - 1] * R : ctx->h0;
        const TYPE *cp = t ? ctx->c + offs[t - 1] * H : ctx->c0;
        TYPE *yt = ctx->y + offs[t] * R;
        FN(fwd_step)(n, I, H, R, j0, j1, w, XF, ctx->x + offs[t] * I, bias, hp, cp,
                     ctx->gates + offs[t] * G,
                     ctx->c + offs[t] * H, P ? ctx->m : yt, (int)(t & 1));
        lstm_barrier_wait(bar, nth);
        if (P) {
            gp.M = n;
            gp.c = yt;
            FN(gemm)(&gp, ws, tid, nth);
            lstm_barrier_wait(bar, nth);
        }
    }
    if (tid == 0) {
        /* sequence r's last step is the last t with batch_sizes[t] > r */
        int64_t n0 = T ? offs[1] : 0;
        if (ctx->h_n != ctx->h0)
            memcpy(ctx->h_n + n0 * R, ctx->h0 + n0 * R, (size_t)((B - n0) * R) * sizeof(TYPE));
        if (ctx->c_n != ctx->c0)
            memcpy(ctx->c_n + n0 * H, ctx->c0 + n0 * H, (size_t)((B - n0) * H) * sizeof(TYPE));
        for (int64_t t = 0; t < T; t++) {
            int64_t n = offs[t + 1] - offs[t];
            int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
            memcpy(ctx->h_n + nn * R, ctx->y + (offs[t] + nn) * R,
                   (size_t)((n - nn) * R) * sizeof(TYPE));
            memcpy(ctx->c_n + nn * H, ctx->c + (offs[t] + nn) * H,
                   (size_t)((n - nn) * H) * sizeof(TYPE));
        }
    }
}

/* Workspace: step offsets, m (projection), per-thread GEMM buffers. */
static int64_t FN(offs_bytes)(int64_t T) { return ALIGN64((T + 1) * (int64_t)sizeof(int64_t)); }

static size_t FN(fwd_ws_size)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, int nth)
{
    (void)I;
    return (size_t)(FN(offs_bytes)(T) + (P ? ALIGN64(B * H * (int64_t)sizeof(TYPE)) : 0)) +
           (size_t)FN(gemm_ws_total)(0, nth, 0) * sizeof(TYPE) + 64;
}

static int FN(forward)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                       const void *packed, const int64_t *batch_sizes, const TYPE *x,
                       const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,
                       TYPE *gates, TYPE *c, void *workspace, int nthreads)
{
    const FN(packed_hdr) *hdr = FN(check_packed)(packed, I, H, P);
    if (!hdr)
        return LSTM_ERR_PACKED;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    wsb += FN(offs_bytes)(T);
    TYPE *m = NULL;
    if (P) {
        m = (TYPE *)wsb;
        wsb += ALIGN64(B * H * (int64_t)sizeof(TYPE));
    }
    FN(fwd_ctx) ctx = {T, B, I, H, P, hdr, offs, x, h0, c0, y, h_n, c_n, gates, c, m,
                       (TYPE *)wsb};
    if (nthreads < 1)
        nthreads = 1;
    lstm_pool_run(FN(fwd_job), &ctx, nthreads);
    return LSTM_OK;
}

/* ---- backward --------------------------------------------------------------- */

typedef struct {
    int64_t T, B, I, H, P;
    const FN(packed_hdr) *hdr;
    const int64_t *offs;     /* [T+1] step row offsets */
    const TYPE *x, *h0, *c0, *y, *gates, *c, *dy, *dh_n, *dc_n;
    TYPE *dx, *dw_ih, *dw_hh, *db, *dh0, *dc0, *dw_hr;
    TYPE *dgates;       /* [N][ldg] */
    int64_t ldg;
    TYPE *dm;           /* [B,H]  projection: dLoss/dm of the step */
    TYPE *dh_all;       /* [N,P]  projection: dLoss/dh of every step */
    TYPE *m_all;        /* [N,H]  projection: m = o*tanh(c) of every step */
    TYPE *ws;
} FN(bwd_ctx);

/* Row stride of dgates: 4H, plus a cache line when 4H elements are a multiple
 * of 512 bytes, so that MR consecutive rows do not all map to one L1 set. */
static int64_t FN(dg_ld)(int64_t H)
{
    int64_t G = 4 * H;
    return (G * (int64_t)sizeof(TYPE)) % 512 == 0 ? G + 64 / (int64_t)sizeof(TYPE) : G;
}

/* out [mr][nb][V] = dg[rows] . w_hh for nb blocks (K = 4H) */
INLINE void FN(bwd_dot)(const int mr, const int nb, int64_t H, const TYPE *restrict dg,
                        int64_t ldg, const TYPE *restrict w, TYPE *restrict out)
{
    vec acc[MAXACC];
    const int64_t G = 4 * H, bstride = G * V;
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        acc[q] = (vec){0};
    for (int64_t k = 0; k < G; k++) {
        const TYPE *wk = w + k * V;
#pragma GCC unroll 24
        for (int r = 0; r < mr; r++) {
            vec a = FN(vset1)(dg[r * ldg + k]);
#pragma GCC unroll 8
            for (int q = 0; q < nb; q++)
                acc[r * nb + q] = VFMA(a, FN(vload)(wk + q * bstride), acc[r * nb + q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        FN(vstore)(out + q * V, acc[q]);
}

#define BWD_TILE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV):                                                                 \
        FN(bwd_dot)(MRV, NBV, H, dg, ldg, w, acc);                                          \
        break;

/* acc [mr][nb][V] = dg[0..mr) . w_hh for nb output blocks starting at w */
KERNEL void FN(bwd_tile)(int mr, int nb, int64_t H, const TYPE *dg, int64_t ldg, const TYPE *w,
                         TYPE *acc)
{
    switch (mr * 16 + nb) {
        BWD_TILE(1, 1)
        BWD_TILE(1, 2)
        BWD_TILE(1, 3)
        BWD_TILE(1, 4)
        BWD_TILE(1, 5)
        BWD_TILE(1, 6)
        BWD_TILE(1, 7)
        BWD_TILE(1, 8)
        BWD_TILE(2, 1)
        BWD_TILE(2, 2)
        BWD_TILE(2, 3)
        BWD_TILE(2, 4)
#if BR >= 6
        BWD_TILE(3, 1)
        BWD_TILE(3, 2)
        BWD_TILE(3, 3)
        BWD_TILE(3, 4)
        BWD_TILE(4, 1)
        BWD_TILE(4, 2)
        BWD_TILE(4, 3)
        BWD_TILE(4, 4)
        BWD_TILE(5, 1)
        BWD_TILE(5, 2)
        BWD_TILE(5, 3)
        BWD_TILE(5, 4)
        BWD_TILE(6, 1)
        BWD_TILE(6, 2)
        BWD_TILE(6, 3)
        BWD_TILE(6, 4)
#endif
    default:
        break;
    }
}

/* Gate gradients of rows r0.., blocks j0.. of one step. dh of m = o*tanh(c) is the
 * tile dh_rec [mr][nb][V] or, if NULL, the rows of dh_src [.,H]; dy_t is added if
 * set. dc (running, [.,H]) is read and replaced by the gradient reaching c_{t-1}.
 * m_out, if set, receives o*tanh(c). */
KERNEL void FN(bwd_cell)(int mr, int nb, int64_t H, int64_t r0, int64_t j0,
                         const TYPE *dh_rec, const TYPE *dh_src, const TYPE *dy_t,
                         const TYPE *gates_t, const TYPE *c_t, const TYPE *cprev, TYPE *dc,
                         TYPE *dg_t, int64_t ldg, TYPE *m_out, TYPE *db)
{
    for (int r = 0; r < mr; r++) {
        for (int jb = 0; jb < nb; jb++) {
            int64_t row = r0 + r, off = (j0 + jb) * V, ro = row * H + off;
            int n = H - off < V ? (int)(H - off) : V;
            vec dh = dh_rec ? FN(vload)(dh_rec + (r * nb + jb) * V) : FN(vload_n)(dh_src + ro, n);
            if (dy_t)
                dh = dh + FN(vload_n)(dy_t + ro, n);
            const TYPE *gr = gates_t + row * 4 * H + off;
            vec i = FN(vload_n)(gr, n), f = FN(vload_n)(gr + H, n);
            vec g = FN(vload_n)(gr + 2 * H, n), o = FN(vload_n)(gr + 3 * H, n);
            vec tc = FN(vtanh)(FN(vload_n)(c_t + ro, n));
            vec dcv = FN(vload_n)(dc + ro, n);
            dcv = dcv + dh * o * (1 - tc * tc);
            TYPE *dgr = dg_t + row * ldg + off;
            vec dgv[4] = {dcv * g * i * (1 - i), dcv * FN(vload_n)(cprev + ro, n) * f * (1 - f),
                          dcv * i * (1 - g * g), dh * tc * o * (1 - o)};
            for (int q = 0; q < 4; q++) {
                FN(vstore_n)(dgr + q * H, dgv[q], n);
                FN(vstore_n)(db + q * H + off, FN(vload_n)(db + q * H + off, n) + dgv[q], n);
            }
            FN(vstore_n)(dc + ro, dcv * f, n);
            if (m_out)
                FN(vstore_n)(m_out + ro, o * tc, n);
        }
    }
}

/* out [n,W] = dg [n rows, ldg apart] . w for output blocks p0..p1 of W, as register
 * tiles; w packed [ceil(W/V)][4H][V] (whh_b: W = R, wih_b: W = I); plus add [n,W]
 * if set. */
KERNEL void FN(bwd_rows)(int64_t H, int64_t W, const TYPE *w, int64_t p0, int64_t p1,
                         const TYPE *dg, int64_t ldg, int64_t n, const TYPE *add, TYPE *out)
{
    int64_t G = 4 * H;
    TYPE acc[MAXACC * V] __attribute__((aligned(64)));
    int64_t jstep = n == 1 ? 2 * BNB : BNB;
    for (int64_t j = p0; j < p1; j += jstep) {
        int nb = p1 - j < jstep ? (int)(p1 - j) : (int)jstep;
        for (int64_t r0 = 0; r0 < n; r0 += BR) {
            int mr = n - r0 < BR ? (int)(n - r0) : BR;
            FN(bwd_tile)(mr, nb, H, dg + r0 * ldg, ldg, w + j * G * V, acc);
            for (int r = 0; r < mr; r++)
                for (int jb = 0; jb < nb; jb++) {
                    int64_t off = (j + jb) * V, ro = (r0 + r) * W + off;
                    int cnt = W - off < V ? (int)(W - off) : V;
                    vec v = FN(vload)(acc + (r * nb + jb) * V);
                    if (add)
                        v = v + FN(vload_n)(add + ro, cnt);
                    FN(vstore_n)(out + ro, v, cnt);
                }
        }
    }
}

/* dh of rows 0..n, output blocks p0..p1 of R (the width of h), into out [n,R]:
 * rows < nn get dg_next . w_hh, rows nn..n get dh_n; plus dy_t if set. */
KERNEL void FN(bwd_dh)(const FN(bwd_ctx) *ctx, int64_t p0, int64_t p1, const TYPE *dg_next,
                       int64_t nn, int64_t n, const TYPE *dy_t, TYPE *out)
{
    int64_t H = ctx->H, R = ctx->P ? ctx->P : H;
    const TYPE *wb = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    FN(bwd_rows)(H, R, wb, p0, p1, dg_next, ctx->ldg, nn, dy_t, out);
    for (int64_t r = nn; r < n; r++)
        for (int64_t j = p0; j < p1; j++) {
            int64_t off = j * V, ro = r * R + off;
            int cnt = R - off < V ? (int)(R - off) : V;
            vec v = FN(vload_n)(ctx->dh_n + ro, cnt);
            if (dy_t)
                v = v + FN(vload_n)(dy_t + ro, cnt);
            FN(vstore_n)(out + ro, v, cnt);
        }
}

/* One backward step t without a projection, hidden blocks j0..j1, fused: rows
 * below nn (active at t+1) take dh = dgates[t+1] . w_hh from the register tile,
 * the others (whose last step is t) take dh_n. */
KERNEL void FN(bwd_step)(const FN(bwd_ctx) *ctx, int64_t t, int64_t j0, int64_t j1)
{
    int64_t T = ctx->T, H = ctx->H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t n = offs[t + 1] - offs[t], nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
    const TYPE *w = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    const TYPE *dg_next = nn ? ctx->dgates + offs[t + 1] * ldg : NULL;
    const TYPE *dy_t = ctx->dy + offs[t] * H, *gates_t = ctx->gates + offs[t] * 4 * H;
    const TYPE *c_t = ctx->c + offs[t] * H, *cprev = t ? ctx->c + offs[t - 1] * H : ctx->c0;
    TYPE *dg_t = ctx->dgates + offs[t] * ldg;
    TYPE acc[MAXACC * V] __attribute__((aligned(64)));
    int64_t jstep = nn == 1 ? 2 * BNB : BNB;
    for (int64_t j = j0; j < j1; j += jstep) {
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t r0 = 0; r0 < nn; r0 += BR) {
            int mr = nn - r0 < BR ? (int)(nn - r0) : BR;
            FN(bwd_tile)(mr, nb, H, dg_next + r0 * ldg, ldg, w + j * 4 * H * V, acc);
            FN(bwd_cell)(mr, nb, H, r0, j, acc, NULL, dy_t, gates_t, c_t, cprev, ctx->dc0, dg_t,
                         ldg, NULL, ctx->db);
        }
        for (int64_t r0 = nn; r0 < n; r0 += BR) {
            int mr = n - r0 < BR ? (int)(n - r0) : BR;
            FN(bwd_cell)(mr, nb, H, r0, j, NULL, ctx->dh_n, dy_t, gates_t, c_t, cprev,
                         ctx->dc0, dg_t, ldg, NULL, ctx->db);
        }
    }
}

/* Projection: the cell part of step t, hidden blocks j0..j1, dh of m from dm. */
KERNEL void FN(bwd_step_proj_cell)(const FN(bwd_ctx) *ctx, int64_t t, int64_t j0, int64_t j1)
{
    int64_t H = ctx->H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t n = offs[t + 1] - offs[t];
    const TYPE *gates_t = ctx->gates + offs[t] * 4 * H, *c_t = ctx->c + offs[t] * H;
    const TYPE *cprev = t ? ctx->c + offs[t - 1] * H : ctx->c0;
    for (int64_t j = j0; j < j1; j += BNB) {
        int nb = j1 - j < BNB ? (int)(j1 - j) : BNB;
        for (int64_t r0 = 0; r0 < n; r0 += BR) {
            int mr = n - r0 < BR ? (int)(n - r0) : BR;
            FN(bwd_cell)(mr, nb, H, r0, j, NULL, ctx->dm, NULL, gates_t, c_t, cprev, ctx->dc0,
                         ctx->dgates + offs[t] * ldg, ldg, ctx->m_all + offs[t] * H, ctx->db);
        }
    }
}

KERNEL void FN(bwd_job)(void *arg, int tid, int nth, lstm_barrier *bar)
{
    const FN(bwd_ctx) *ctx = (const FN(bwd_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, P = ctx->P, G = 4 * H;
    int64_t R = P ? P : H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t N = offs[T];
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(G, nth, 1);
    int64_t nblk = (H + V - 1) / V, rblk = (R + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, nth), j1 = FN(split)(nblk, tid + 1, nth);
    int64_t q0 = FN(split)(rblk, tid, nth), q1 = FN(split)(rblk, tid + 1, nth);
    int64_t iblk = (I + V - 1) / V, dx_steps = FN(bwd_dx_in_steps)(I, P);
    const TYPE *wih_b = (const TYPE *)(base + ctx->hdr->off_wih_b);
    int64_t x0 = FN(split)(iblk, tid, nth), x1 = FN(split)(iblk, tid + 1, nth);

    /* running dc starts as dc_n, db as 0; each thread owns the columns of its
     * blocks. db sums dgates as the cells write them (steps last to first, rows
     * in order), not in a pass over dgates after the loop (3% of the backward
     * at (32,64,256,256)). */
    for (int64_t j = j0; j < j1; j++) {
        int64_t off = j * V;
        int cnt = H - off < V ? (int)(H - off) : V;
        for (int64_t r = 0; r < B; r++)
            FN(vstore_n)(ctx->dc0 + r * H + off, FN(vload_n)(ctx->dc_n + r * H + off, cnt), cnt);
        for (int q = 0; q < 4; q++)
            FN(vstore_n)(ctx->db + q * H + off, (vec){0}, cnt);
    }
    FN(gemm_args) gm = {0};   /* projection: dm = dh . w_hr */
    gm.N = H;
    gm.K = P;
    gm.lda = P;
    gm.bpacked = (const TYPE *)(base + ctx->hdr->off_whr);
    gm.c = ctx->dm;
    gm.ldc = H;
    for (int64_t t = T - 1; t >= 0; t--) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            continue;
        if (!P) {
            FN(bwd_step)(ctx, t, j0, j1);
            if (dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])   /* dx of step t+1 */
                FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates + offs[t + 1] * ldg, ldg,
                             offs[t + 2] - offs[t + 1], NULL, ctx->dx + offs[t + 1] * I);
            lstm_barrier_wait(bar, nth);
            continue;
        }
        int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates + offs[t + 1] * ldg, nn, n, ctx->dy + offs[t] * P,
                   ctx->dh_all + offs[t] * P);
        lstm_barrier_wait(bar, nth);
        gm.M = n;
        gm.a = ctx->dh_all + offs[t] * P;
        FN(gemm)(&gm, ws, tid, nth);
        lstm_barrier_wait(bar, nth);
        FN(bwd_step_proj_cell)(ctx, t, j0, j1);
        lstm_barrier_wait(bar, nth);
    }
    FN(bwd_dh)(ctx, q0, q1, ctx->dgates, T ? offs[1] : 0, B, NULL, ctx->dh0);
    if (dx_steps && T && offs[1])
        FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates, ldg, offs[1], NULL, ctx->dx);

    /* [dw_ih | dw_hh] = dgates^T . [x | h_prev]. When dgates^T is packed (a large
     * N * 4H), as one product writing both outputs, so that it is packed once
     * (measured at (32,64,256,256) f32: two products spent 14% of the backward
     * packing; one: 22.0 -> 21.1 ms); else as two products, which read it in
     * place (one product cost 26.3 -> 27.6 us at (6,32,3,32)). Either way each
     * element is the same sum in the same order. */
    FN(gemm_args) g = {0};   /* dw_hh = dgates^T . h_prev */
    g.M = G;
    g.K = N;
    g.a = ctx->dgates;
    g.lda = ldg;
    g.a_trans = 1;
    g.N = R;
    g.b = ctx->y;
    g.b0 = ctx->h0;
    g.offs = offs;
    g.nsteps = T;
    g.ldb = R;
    g.c = ctx->dw_hh;
    g.ldc = R;
    if (N * ldg * (int64_t)sizeof(TYPE) > (256 << 10)) {   /* with dw_ih in front */
        g.bx = ctx->x;
        g.ldbx = I;
        g.nx = I;
        g.px = (I + NR - 1) / NR;
        g.N = g.px * NR + R;
        g.c2 = ctx->dw_hh;
        g.ldc2 = R;
        g.c = ctx->dw_ih;
        g.ldc = I;
    } else {
        FN(gemm_args) gi = g;   /* dw_ih = dgates^T . x */
        gi.N = I;
        gi.b = ctx->x;
        gi.b0 = NULL;
        gi.offs = NULL;
        gi.ldb = I;
        gi.c = ctx->dw_ih;
        gi.ldc = I;
        FN(gemm)(&gi, ws, tid, nth);
    }
    FN(gemm)(&g, ws, tid, nth);

    if (P) {
        FN(gemm_args) gr = {0};
        gr.M = P;
        gr.K = N;
        gr.a = ctx->dh_all;
        gr.lda = P;
        gr.a_trans = 1;
        gr.N = H;
        gr.b = ctx->m_all;
        gr.ldb = H;
        gr.c = ctx->dw_hr;
        gr.ldc = H;
        FN(gemm)(&gr, ws, tid, nth);
    }

    if (!dx_steps) {
        FN(gemm_args) gx = {0};
        gx.M = N;
        gx.N = I;
        gx.K = G;
        gx.a = ctx->dgates;
        gx.lda = ldg;
        gx.bpacked = (const TYPE *)(base + ctx->hdr->off_wih);
        gx.c = ctx->dx;
        gx.ldc = I;
        FN(gemm)(&gx, ws, tid, nth);
    }
}

/* Workspace: step offsets, dgates [N][ldg], with a projection dm [B,H],
 * dh_all [N,P], m_all [N,H], then per-thread GEMM buffers. */
static size_t FN(bwd_ws_size)(int64_t T, int64_t N, int64_t B, int64_t I, int64_t H, int64_t P,
                              int nth)
{
    (void)I;
    int64_t s = (int64_t)sizeof(TYPE);
    int64_t bytes = FN(offs_bytes)(T) + ALIGN64(N * FN(dg_ld)(H) * s);
    if (P)
        bytes += ALIGN64(B * H * s) + ALIGN64(N * P * s) + ALIGN64(N * H * s);
    return (size_t)bytes + (size_t)FN(gemm_ws_total)(4 * H, nth, 1) * sizeof(TYPE) + 64;
}

static int FN(backward)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                        const void *packed, const int64_t *batch_sizes, const TYPE *x,
                        const TYPE *h0, const TYPE *c0, const TYPE *y, const TYPE *gates,
                        const TYPE *c, const TYPE *dy, const TYPE *dh_n, const TYPE *dc_n,
                        TYPE *dx, TYPE *dw_ih, TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0,
                        TYPE *dw_hr, void *workspace, int nthreads)
{
    const FN(packed_hdr) *hdr = FN(check_packed)(packed, I, H, P);
    if (!hdr)
        return LSTM_ERR_PACKED;
    if (P && !dw_hr)
        return LSTM_ERR_ARG;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    int64_t N = offs[T], s = (int64_t)sizeof(TYPE), ldg = FN(dg_ld)(H);
    wsb += FN(offs_bytes)(T);
    TYPE *dgates = (TYPE *)wsb;
    wsb += ALIGN64(N * ldg * s);
    TYPE *dm = NULL, *dh_all = NULL, *m_all = NULL;
    if (P) {
        dm = (TYPE *)wsb;
        wsb += ALIGN64(B * H * s);
        dh_all = (TYPE *)wsb;
        wsb += ALIGN64(N * P * s);
        m_all = (TYPE *)wsb;
        wsb += ALIGN64(N * H * s);
    }
    FN(bwd_ctx) ctx = {T, B, I, H, P, hdr, offs, x, h0, c0, y, gates, c, dy, dh_n, dc_n,
                       dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, dgates, ldg, dm, dh_all, m_all,
                       (TYPE *)wsb};
    if (nthreads < 1)
        nthreads = 1;
    lstm_pool_run(FN(bwd_job), &ctx, nthreads);
    return LSTM_OK;
}

#undef CAT_
#undef CAT
#undef FN
#undef ATTR
#undef VBYTES
#undef MR
#undef FR
#undef BR
#undef BNB
#undef NB1
#undef ITYPE
#undef KC
#undef NC
#undef V
#undef NV
#undef NR
#undef WP
#undef MAXACC
#undef INLINE
#undef KERNEL
#undef vec
#undef uvec
#undef ivec
#undef VFMA
#undef EXP_XMIN
#undef EXP_XCLAMP
#undef EXP_MAGIC
#undef EXP_MANT
#undef EXP_BIAS
#undef LN2_HI
#undef LN2_LO
#undef LOG2E
#undef PACK_MAGIC
#undef ATB
#undef ALIGN64
#undef FWD_TILE
#undef UKR_ROWS
#undef UKR_CASE
#undef UKR_SWITCH
#undef BWD_TILE
