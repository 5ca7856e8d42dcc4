/* simd.template.h: the vector layer and the activations, written once over the
 * element type and the instruction set. First of the kernel templates that
 * lstm.template.c includes once per (TYPE, ISA) for lstm.c:
 *   TYPE    float | double        IS_F64  0 | 1
 *   ISA     0 portable (GCC vector extensions, baseline x86-64 or any target)
 *           1 AVX2 + FMA          2 AVX-512 F/DQ/VL
 *   SFX     name suffix, e.g. f32_avx512
 * Every function carries __attribute__((target(...))) for its ISA, so one
 * binary holds all levels and lstm.c picks one at run time (cpu.c).
 *
 * Names: FN(name) is name_SFX. The vector layer's names (vload, vfma, vsigmoid,
 * ...) and the vector types (vec, ivec) are also macros for their suffixed
 * versions, so the kernels read as plain vector code.
 *
 * Vector layer: GCC vector types (arithmetic by operators) plus the few
 * operations operators cannot express: FMA (explicit, because the build uses
 * -ffp-contract=off so that every output element is computed by the same
 * operations whatever the tiling), masked loads/stores of the first n lanes
 * (the tail of a hidden size that is not a multiple of V), broadcast.
 *
 * Activations: exp via Cody-Waite reduction and a Taylor polynomial, giving 2^n
 * and expm1(r) separately (vexp_parts), so that sigmoid = 1/(1+e^-|z|) and
 * tanh = -expm1(-2|z|)/(2+expm1(-2|z|)) are both accurate to a few ulp over the
 * whole range (no cancellation near 0), saturate without overflow for |z| up to
 * inf and propagate NaN.
 *
 * Register tiles: the ISA's register file (32 zmm with AVX-512, 16 ymm/xmm
 * otherwise) sets every register-tile shape, so they are defined here together:
 * MR (GEMM tile rows, gemm.template.c), FR/NB1 (forward step tile), BR/BNB
 * (backward step tile), MAXACC (accumulators of a step tile). */

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
#define NB1 4     /* blocks per forward tile when a tile has a single row */
#elif ISA == 1
/* 16 ymm registers. The step tiles take 3 rows: 12 accumulators (3 rows x 4 gates, or
 * x BNB blocks), 3 weight vectors and the broadcast, the fourth weight an FMA memory
 * operand. At 2 rows, 8 accumulators are exactly the FMAs in flight at 2 a cycle and a
 * latency of 4 (AMD Zen 3; Intel's Haswell to Ice Lake alike), so any stall idles the
 * FMA units: a forward tile over K = 144 weight rows ran at 52 GFLOP/s with 2 rows and
 * 83 with 3 on an AMD EPYC Zen 3 (1 thread; 4 rows spill: 46; benchmarks/fwd_step_micro.c -DISA=1).
 * NB1 (B = 1) stays 2 blocks: 3 measured 0.96-1.05x there, a memory-bound tile. */
#define ATTR __attribute__((target("avx2,fma")))
#define VBYTES 32
#define MR 6
#define FR 3
#define BR 3
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
#define MAXACC 24   /* register accumulators per step tile */

#if IS_F64
#define ITYPE int64_t
#else
#define ITYPE int32_t
#endif

#define V ((int)(VBYTES / sizeof(TYPE)))   /* lanes per vector */

#define INLINE static inline __attribute__((always_inline)) ATTR
#define KERNEL static ATTR

typedef TYPE FN(vec) __attribute__((vector_size(VBYTES)));
typedef TYPE FN(uvec) __attribute__((vector_size(VBYTES), aligned(sizeof(TYPE)), may_alias));
typedef ITYPE FN(ivec) __attribute__((vector_size(VBYTES)));
#define vec FN(vec)
#define uvec FN(uvec)
#define ivec FN(ivec)
#define vload FN(vload)
#define vstore FN(vstore)
#define vset1 FN(vset1)
#define vfma FN(vfma)
#define vload_n FN(vload_n)
#define vstore_n FN(vstore_n)
#define vselect FN(vselect)
#define vabs FN(vabs)
#define vexp_parts FN(vexp_parts)
#define vrecip12 FN(vrecip12)
#define vsigmoid FN(vsigmoid)
#define vtanh FN(vtanh)

/* ---- vector layer ------------------------------------------------------- */

INLINE vec vload(const TYPE *p) { return *(const uvec *)p; }
INLINE void vstore(TYPE *p, vec v) { *(uvec *)p = v; }
INLINE vec vset1(TYPE s)
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

/* a * b + c, fused where the ISA has FMA (portable: a multiply and an add) */
INLINE vec vfma(vec a, vec b, vec c)
{
#if ISA == 2 && IS_F64
    return (vec)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif ISA == 2
    return (vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif ISA == 1 && IS_F64
    return (vec)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif ISA == 1
    return (vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return a * b + c;
#endif
}

#if ISA == 2
/* Half vectors: the lower 256 bits, for a hidden block or GEMM panel with at most V/2
 * live lanes (H = 200: twelve full blocks of 16 and one of 8). Each live lane gets the
 * same FMAs in the same order as on a full vector, so the bits are the same; where the
 * CPU runs a 512-bit FMA as two 256-bit halves (AMD Zen 4) they take half the time, on
 * Intel's two 512-bit FMA ports the same. */
typedef TYPE FN(hvec) __attribute__((vector_size(32)));
typedef TYPE FN(uhvec) __attribute__((vector_size(32), aligned(sizeof(TYPE)), may_alias));
#define hvec FN(hvec)
#define uhvec FN(uhvec)
#define hload FN(hload)
#define hstore FN(hstore)
#define hset1 FN(hset1)
#define hfma FN(hfma)
#define hwiden FN(hwiden)
INLINE hvec hload(const TYPE *p) { return *(const uhvec *)p; }
INLINE void hstore(TYPE *p, hvec v) { *(uhvec *)p = v; }
INLINE hvec hset1(TYPE s)
{
#if IS_F64
    return (hvec)_mm256_set1_pd(s);
#else
    return (hvec)_mm256_set1_ps(s);
#endif
}
INLINE hvec hfma(hvec a, hvec b, hvec c)
{
#if IS_F64
    return (hvec)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return (hvec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#endif
}
/* a full vector of two halves: lo in the lower lanes, hi in the upper; and back */
INLINE vec FN(hcat)(hvec lo, hvec hi)
{
#if IS_F64
    return (vec)_mm512_insertf64x4(_mm512_castpd256_pd512((__m256d)lo), (__m256d)hi, 1);
#else
    return (vec)_mm512_insertf32x8(_mm512_castps256_ps512((__m256)lo), (__m256)hi, 1);
#endif
}
INLINE hvec FN(hlo)(vec v)
{
#if IS_F64
    return (hvec)_mm512_castpd512_pd256((__m512d)v);
#else
    return (hvec)_mm512_castps512_ps256((__m512)v);
#endif
}
INLINE hvec FN(hhi)(vec v)
{
#if IS_F64
    return (hvec)_mm512_extractf64x4_pd((__m512d)v, 1);
#else
    return (hvec)_mm512_extractf32x8_ps((__m512)v, 1);
#endif
}
/* a full vector: h in the lower half, 0 in the upper */
INLINE vec hwiden(hvec h)
{
#if IS_F64
    return (vec)_mm512_zextpd256_pd512((__m256d)h);
#else
    return (vec)_mm512_zextps256_ps512((__m256)h);
#endif
}
#endif

/* Load / store the first n lanes (0 < n <= V); the other lanes load as 0. */
INLINE vec vload_n(const TYPE *p, int n)
{
    if (n >= V)
        return vload(p);
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

INLINE void vstore_n(TYPE *p, vec v, int n)
{
    if (n >= V) {
        vstore(p, v);
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

INLINE vec vselect(ivec m, vec a, vec b)
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
INLINE void vexp_parts(vec x, vec *scale, vec *p)
{
#if ISA == 2
#if IS_F64
    x = (vec)_mm512_max_pd((__m512d)vset1(EXP_XCLAMP), (__m512d)x);   /* NaN x stays */
    vec n = (vec)_mm512_roundscale_pd((__m512d)(x * LOG2E),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *scale = (vec)_mm512_scalef_pd((__m512d)vset1(1), (__m512d)n);
#else
    x = (vec)_mm512_max_ps((__m512)vset1(EXP_XCLAMP), (__m512)x);
    vec n = (vec)_mm512_roundscale_ps((__m512)(x * LOG2E),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *scale = (vec)_mm512_scalef_ps((__m512)vset1(1), (__m512)n);
#endif
#else
    const vec xmin = vset1(EXP_XMIN), magic = vset1(EXP_MAGIC);
    ivec under = x < xmin;
    x = vselect(under, xmin, x);
    vec t = x * LOG2E + magic;
    vec n = t - magic;
    ivec e = ((ivec)t - (ivec)magic + (ITYPE)EXP_BIAS) << EXP_MANT;
    *scale = vselect(under, (vec){0}, (vec)e);
#endif
    vec r = vfma(n, vset1(-LN2_HI), x);
    r = vfma(n, vset1(-LN2_LO), r);
#if IS_F64
    vec q = vset1(1.6059043836821613e-10);
    q = vfma(q, r, vset1(2.08767569878681e-09));
    q = vfma(q, r, vset1(2.505210838544172e-08));
    q = vfma(q, r, vset1(2.755731922398589e-07));
    q = vfma(q, r, vset1(2.7557319223985893e-06));
    q = vfma(q, r, vset1(2.48015873015873e-05));
    q = vfma(q, r, vset1(0.0001984126984126984));
    q = vfma(q, r, vset1(0.001388888888888889));
    q = vfma(q, r, vset1(0.008333333333333333));
    q = vfma(q, r, vset1(0.041666666666666664));
    q = vfma(q, r, vset1(0.16666666666666666));
    q = vfma(q, r, vset1(0.5));
#else
    vec q = vset1(1.98412698e-4f);
    q = vfma(q, r, vset1(1.38888889e-3f));
    q = vfma(q, r, vset1(8.33333333e-3f));
    q = vfma(q, r, vset1(4.16666667e-2f));
    q = vfma(q, r, vset1(1.66666667e-1f));
    q = vfma(q, r, vset1(0.5f));
#endif
    *p = vfma(r * r, q, r);
}

INLINE vec vabs(vec z)
{
    const ivec sign = (ivec)vset1((TYPE)-0.0);
    return (vec)((ivec)z & ~sign);
}

/* 1/d for d in [1, 2] (or NaN). AVX-512: 14-bit reciprocal estimate refined by
 * Newton steps (one for float, two for double), faster than vdiv and within
 * an ulp; elsewhere a division. */
INLINE vec vrecip12(vec d)
{
#if ISA == 2
#if IS_F64
    vec r = (vec)_mm512_rcp14_pd((__m512d)d);
#else
    vec r = (vec)_mm512_rcp14_ps((__m512)d);
#endif
    const vec one = vset1(1);
    r = vfma(r, vfma(-d, r, one), r);
#if IS_F64
    r = vfma(r, vfma(-d, r, one), r);
#endif
    return r;
#else
    return 1 / d;
#endif
}

/* 1/(1+e^-z) as e^-|z| based formula, exact 0/1 saturation, NaN in -> NaN out */
INLINE vec vsigmoid(vec z)
{
    const ivec sign = (ivec)vset1((TYPE)-0.0);
    vec s, p;
    vexp_parts((vec)((ivec)z | sign), &s, &p);   /* -|z| */
    vec e = vfma(s, p, s);
    vec r = vrecip12(1 + e);
#if ISA == 2 && IS_F64
    __mmask8 neg = _mm512_cmp_pd_mask((__m512d)z, (__m512d){0}, _CMP_NGE_UQ);
    return (vec)_mm512_mask_mul_pd((__m512d)r, neg, (__m512d)e, (__m512d)r);
#elif ISA == 2
    __mmask16 neg = _mm512_cmp_ps_mask((__m512)z, (__m512){0}, _CMP_NGE_UQ);
    return (vec)_mm512_mask_mul_ps((__m512)r, neg, (__m512)e, (__m512)r);
#else
    return vselect(z >= (vec){0}, r, e * r);
#endif
}

INLINE vec vtanh(vec z)
{
    const ivec sign = (ivec)vset1((TYPE)-0.0);
    vec s, p;
    vexp_parts(vabs(z) * (TYPE)-2, &s, &p);
    vec em = vfma(s, p, s - 1);
    vec t = em * vrecip12(2 + em);     /* -tanh|z| (<= 0) */
    return (vec)((ivec)t ^ (~(ivec)z & sign));   /* one vpternlog */
}
