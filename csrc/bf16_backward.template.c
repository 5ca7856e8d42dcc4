/* bf16_backward.template.c: bfloat16 training's backward products with vdpbf16ps
 * (float32 at the AVX-512 level only; elsewhere BWD_BF16 is 0 and the float32 path runs).
 * Included by backward.template.c before the backward steps that call them. */

/* ---- bfloat16 training: the backward's per-step products with vdpbf16ps ----------
 * Where lstm.c's rule chooses vdpbf16ps for B rows (bf16_native_for: AVX512_BF16 at the
 * AVX-512 level and, at B > 1, a bf16 dot measured at >= 1.5x the fp32 FMA rate) and the
 * caller gave variant.bf16_ws, the per-step products of bfloat16 training, dh_{t-1} =
 * r(da_t) . r(w_hh) and (where dx is computed in the steps) dx_t = r(da_t) . r(w_ih),
 * run on bf16 pairs along the 4H gate gradients: each output element is acc = +0, then
 * for p = 0 .. 2H-1: acc = fma(da[2p+1], w[2p+1], acc); acc = fma(da[2p], w[2p], acc),
 * each an fp32 FMA rounded to nearest even with denormal results flushed (VDPBF16PS; its
 * denormal inputs cannot occur: bf16_round flushes them). The operands are the values the
 * float32 path multiplies (the gate gradients are rounded by the cell, the pack holds the
 * rounded weights), so the two paths are sums of the same exact products in different
 * orders: each within gamma_K sum_k |a_k b_k| (K = 4H, gamma_K ~ K 2^-24) of the exact
 * sum, the flushes adding at most K 2^-126 (backends/reference.py, "bfloat16 training").
 * dw_ih and dw_hh likewise (dwb_product below: pairs of rows); dx where not in the steps
 * stays the float32 GEMM. Layout (in variant.bf16_ws, made per call from the float32 pack's whh_b
 * and wih_b, each thread its own column blocks): [block][2H pairs][V] words bf16(w[2p+1])
 * << 16 | bf16(w[2p]); per thread the step's gate gradient rows as [n][2H] pair words. */
#if ISA == 2 && !IS_F64
#define BWD_BF16 1
#define ATTR_BFB __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma")))

static inline __attribute__((always_inline)) ATTR_BFB void
FN(bwdb_tile)(const int mr, const int nb, int64_t p0, int64_t p1, const uint32_t *restrict dgw,
              int64_t ldw, const uint32_t *restrict w, int64_t bstride, float *restrict acc_mem)
{
    __m512 acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        acc[q] = p0 ? _mm512_load_ps(acc_mem + q * V) : _mm512_setzero_ps();
    for (int64_t p = p0; p < p1; p++) {
        __m512i wv[8];
#pragma GCC unroll 8
        for (int q = 0; q < nb; q++)
            wv[q] = _mm512_loadu_si512((const void *)(w + p * V + q * bstride));
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)dgw[r * ldw + p]);
#pragma GCC unroll 8
            for (int q = 0; q < nb; q++)
                acc[r * nb + q] = _mm512_dpbf16_ps(acc[r * nb + q], a, (__m512bh)wv[q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        _mm512_store_ps(acc_mem + q * V, acc[q]);
}

#define BWDB_TILE(MRV, NBV)                                                                  \
    case (MRV) * 16 + (NBV):                                                                 \
        FN(bwdb_tile)(MRV, NBV, p0, p1, dgw, ldw, w, bstride, acc_mem);                      \
        break;

static ATTR_BFB void FN(bwdb_tile_any)(int mr, int nb, int64_t p0, int64_t p1,
                                       const uint32_t *dgw, int64_t ldw, const uint32_t *w,
                                       int64_t bstride, float *acc_mem)
{
    switch (mr * 16 + nb) {
        BWDB_TILE(1, 1) BWDB_TILE(1, 2) BWDB_TILE(1, 3) BWDB_TILE(1, 4)
        BWDB_TILE(1, 5) BWDB_TILE(1, 6) BWDB_TILE(1, 7) BWDB_TILE(1, 8)
        BWDB_TILE(2, 1) BWDB_TILE(2, 2) BWDB_TILE(2, 3) BWDB_TILE(2, 4)
        BWDB_TILE(3, 1) BWDB_TILE(3, 2) BWDB_TILE(3, 3) BWDB_TILE(3, 4)
        BWDB_TILE(4, 1) BWDB_TILE(4, 2) BWDB_TILE(4, 3) BWDB_TILE(4, 4)
        BWDB_TILE(5, 1) BWDB_TILE(5, 2) BWDB_TILE(5, 3) BWDB_TILE(5, 4)
        BWDB_TILE(6, 1) BWDB_TILE(6, 2) BWDB_TILE(6, 3) BWDB_TILE(6, 4)
    default: break;
    }
}

/* part [n][nb][V] = the n rows' pair words dgw (ldw apart) . nb pair blocks at w (KP
 * pairs each, bstride apart): bwd_tiles' row tiles and K chunks (a pair row has the
 * bytes of a float32 row), without the prefetch. */
KERNEL void FN(bwdb_tiles)(int64_t n, int nb, int64_t KP, const uint32_t *dgw, int64_t ldw,
                           const uint32_t *w, int64_t bstride, float *part,
                           const FN(step_plan) *sp)
{
    int64_t nt = (n + BR - 1) / BR, kc = nt > 1 && sp->kc < KP ? sp->kc : KP;
    for (int64_t k0 = 0; k0 < KP; k0 += kc) {
        int64_t k1 = KP - k0 < kc ? KP : k0 + kc;
        for (int64_t t = 0; t < nt; t++) {
            int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
            FN(bwdb_tile_any)((int)(r1 - r0), nb, k0, k1, dgw + r0 * ldw, ldw, w, bstride,
                              part + r0 * nb * V);
        }
    }
}

/* out [n,W] = dgw . w for output blocks p0..p1 of W (bwd_rows without mul and add) */
KERNEL void FN(bwdb_rows)(int64_t H, int64_t W, const uint32_t *w, int64_t p0, int64_t p1,
                          const uint32_t *dgw, int64_t n, float *out, const FN(step_plan) *sp)
{
    int64_t KP = 2 * H;
    float part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    int64_t jstep = n == 1 ? 2 * BNB : BNB;
    for (int64_t j = p0; j < p1; j += jstep) {
        int nb = p1 - j < jstep ? (int)(p1 - j) : (int)jstep;
        for (int64_t g0 = 0, g1; g0 < n; g0 = g1) {
            g1 = FN(group_end)(sp, g0, n, BR);
            int64_t ng = g1 - g0;
            FN(bwdb_tiles)(ng, nb, KP, dgw + g0 * KP, KP, w + j * KP * V, KP * V, part, sp);
            for (int64_t r = 0; r < ng; r++)
                for (int jb = 0; jb < nb; jb++) {
                    int64_t off = (j + jb) * V, ro = (g0 + r) * W + off;
                    int cnt = W - off < V ? (int)(W - off) : V;
                    vstore_n(out + ro, vload(part + (r * nb + jb) * V), cnt);
                }
        }
    }
}

/* blocks j0..j1 of a float32 [block][4H][V] pack (values bf16 already) as pair words */
KERNEL void FN(bwdb_pack)(int64_t H, const float *wb, int64_t j0, int64_t j1, uint32_t *out)
{
    int64_t G = 4 * H;
    for (int64_t j = j0; j < j1; j++)
        for (int64_t p = 0; p < 2 * H; p++) {
            const uint32_t *e = (const uint32_t *)(wb + (j * G + 2 * p) * V);
            const uint32_t *o = (const uint32_t *)(wb + (j * G + 2 * p + 1) * V);
            uint32_t *d = out + (j * 2 * H + p) * V;
            for (int l = 0; l < V; l++)
                d[l] = (o[l] & 0xffff0000u) | (e[l] >> 16);
        }
}

/* n rows of gate gradients (ldg apart, values bf16 already) as [n][2H] pair words */
KERNEL void FN(bwdb_rows_words)(int64_t n, int64_t H, const float *dg, int64_t ldg,
                                uint32_t *out)
{
    for (int64_t r = 0; r < n; r++) {
        const uint32_t *u = (const uint32_t *)(dg + r * ldg);
        uint32_t *d = out + r * 2 * H;
        for (int64_t p = 0; p < 2 * H; p++)
            d[p] = (u[2 * p + 1] & 0xffff0000u) | (u[2 * p] >> 16);
    }
}

/* dw_ih and dw_hh of bfloat16 training with vdpbf16ps: dW [4H][W] = r(da)^T . b (b = x or
 * h_{t-1}, rows bf16 already), summed in pairs of rows (n = 2p, 2p+1; the odd one first, a
 * zero row after an odd N), each output element acc = +0, then fma per row in that order
 * (K = N: the bound gamma_N S + N 2^-126). Packed per call: ap [ceil(4H/16)][NP][16] words
 * of 16 gate columns of rows 2p, 2p+1; bp [ceil(W/16)][NP][16] of 16 columns of b. */
#define DWB_MR 8
#define DWB_NB 3
static inline __attribute__((always_inline)) ATTR_BFB void
FN(dwb_tile)(const int mr, const int nb, int64_t p0, int64_t p1, const uint32_t *restrict a,
             const uint32_t *restrict b, int64_t bstride, float *restrict part)
{
    __m512 acc[DWB_MR * DWB_NB];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        acc[q] = _mm512_load_ps(part + q * 16);
    for (int64_t p = p0; p < p1; p++) {
        __m512i bv[DWB_NB];
#pragma GCC unroll 3
        for (int q = 0; q < nb; q++)
            bv[q] = _mm512_load_si512((const void *)(b + q * bstride + p * 16));
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[p * 16 + r]);
#pragma GCC unroll 3
            for (int q = 0; q < nb; q++)
                acc[r * nb + q] = _mm512_dpbf16_ps(acc[r * nb + q], av, (__m512bh)bv[q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        _mm512_store_ps(part + q * 16, acc[q]);
}

#define DWB_CASE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV): FN(dwb_tile)(MRV, NBV, p0, p1, a, b, bstride, part); break;
static ATTR_BFB void FN(dwb_tile_any)(int mr, int nb, int64_t p0, int64_t p1, const uint32_t *a,
                                      const uint32_t *b, int64_t bstride, float *part)
{
    switch (mr * 16 + nb) {
        DWB_CASE(8, 1) DWB_CASE(8, 2) DWB_CASE(8, 3)
        DWB_CASE(4, 1) DWB_CASE(4, 2) DWB_CASE(4, 3)
    default: break;
    }
}

/* 16 columns c0.. of rows 2p, 2p+1 (NULL: zeros) as pair words, for p = 0..NP-1 */
static ATTR_BFB void FN(dwb_pack16)(int64_t NP, int64_t N, int64_t cnt,
                                    const float *(*row)(const void *, int64_t), const void *arg,
                                    int64_t c0, uint32_t *out)
{
    __mmask16 m = (__mmask16)((1u << cnt) - 1u);
    for (int64_t p = 0; p < NP; p++) {
        __m512i lo = _mm512_maskz_loadu_epi32(m, row(arg, 2 * p) + c0);
        __m512i hi = 2 * p + 1 < N ? _mm512_maskz_loadu_epi32(m, row(arg, 2 * p + 1) + c0)
                                   : _mm512_setzero_si512();
        __m512i w = _mm512_or_si512(_mm512_and_si512(hi, _mm512_set1_epi32((int)0xffff0000u)),
                                    _mm512_srli_epi32(lo, 16));
        _mm512_store_si512((void *)(out + p * 16), w);
    }
}

typedef struct {
    const float *base, *base0;   /* rows: base + n ld, or with offs h_{t-1} of y / h0 */
    int64_t ld;
    const int64_t *offs;
    int64_t t;                   /* offs: the step of the last row asked (rows ascend) */
} FN(dwb_rows);

static const float *FN(dwb_row)(const void *arg, int64_t n)
{
    FN(dwb_rows) *r = (FN(dwb_rows) *)arg;
    if (!r->offs)
        return r->base + n * r->ld;
    if (n < r->offs[r->t])
        r->t = 0;
    int64_t t = r->t;
    while (n >= r->offs[t + 1])
        t++;
    r->t = t;
    int64_t k = n - r->offs[t];
    return t ? r->base + (r->offs[t - 1] + k) * r->ld : r->base0 + k * r->ld;
}

/* C [4H][W] (rows m0..m1, multiples of 16 but the last) = a^T b on the packed words */
static ATTR_BFB void FN(dwb_product)(int64_t m0, int64_t m1, int64_t W, int64_t NP,
                                     const uint32_t *ap, const uint32_t *bp, float *C)
{
    float part[DWB_MR * DWB_NB * 16] __attribute__((aligned(64)));
    int64_t nblk = (W + 15) / 16, kc = 256;
    if (NP == 0) {   /* no rows (T = 0): sums of nothing */
        for (int64_t m = m0; m < m1; m++)
            memset(C + m * W, 0, (size_t)W * sizeof(float));
        return;
    }
    for (int64_t k0 = 0; k0 < NP; k0 += kc) {
        int64_t k1 = NP - k0 < kc ? NP : k0 + kc;
        for (int64_t j = 0; j < nblk; j += DWB_NB) {
            int nb = nblk - j < DWB_NB ? (int)(nblk - j) : DWB_NB;
            for (int64_t m = m0; m < m1; m += DWB_MR) {
                int mr = m1 - m < DWB_MR ? (int)(m1 - m) : DWB_MR;   /* 8 or 4 */
                for (int r = 0; r < mr; r++)
                    for (int q = 0; q < nb; q++) {
                        int64_t off = (j + q) * 16;
                        int cnt = W - off < 16 ? (int)(W - off) : 16;
                        __mmask16 mk = (__mmask16)((1u << cnt) - 1u);
                        _mm512_store_ps(part + (r * nb + q) * 16,
                                        k0 ? _mm512_maskz_loadu_ps(mk, C + (m + r) * W + off)
                                           : _mm512_setzero_ps());
                    }
                FN(dwb_tile_any)(mr, nb, k0, k1, ap + (m / 16) * NP * 16 + m % 16,
                                 bp + j * NP * 16, NP * 16, part);
                for (int r = 0; r < mr; r++)
                    for (int q = 0; q < nb; q++) {
                        int64_t off = (j + q) * 16;
                        int cnt = W - off < 16 ? (int)(W - off) : 16;
                        _mm512_mask_storeu_ps(C + (m + r) * W + off,
                                              (__mmask16)((1u << cnt) - 1u),
                                              _mm512_load_ps(part + (r * nb + q) * 16));
                    }
            }
        }
    }
}
#else
#define BWD_BF16 0
#endif
