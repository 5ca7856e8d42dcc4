/* bf16_backward.template.c: bfloat16 training's backward products with vdpbf16ps or on
 * AMX tiles (tdpbf16ps) (float32 at the AVX-512 level only; elsewhere BWD_BF16 is 0 and the
 * float32 path runs). Included by backward.template.c before the backward steps that call
 * them; amx.template.c (tile configuration) comes before it.
 *
 * Which (lstm.c bf16_path_for, as the forward): AMX by default where the CPU has AMX-BF16,
 * at every B (measured on the Intel Xeon family 6 model 167, one training step, 1 thread:
 * (32, 64, 256, 256) 11.6 ms against 38.5 with vdpbf16ps/float32 and 35.9 for float32
 * training; (128, 64, 512, 512) 213 against 613 and 601; B = 1, H = 512 6.5 against 7.5);
 * else vdpbf16ps where lstm_bf16_native_rule says so for B rows; else the float32
 * products on the same rounded operands. */
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

static void FN(bwda_tiles)(int64_t n, int nb, int64_t KPA, const uint32_t *a, int64_t lda,
                           const uint32_t *w, int64_t bstride, float *part);

/* out [n,W] = dgw . w for output blocks p0..p1 of W (bwd_rows without mul and add): dgw
 * rows and w blocks KPA pair words apart (bf16_bwd_kpa); on AMX tiles (amx) or vdpbf16ps */
KERNEL void FN(bwdb_rows)(int64_t H, int64_t W, const uint32_t *w, int64_t p0, int64_t p1,
                          const uint32_t *dgw, int64_t n, float *out, const FN(step_plan) *sp,
                          int amx)
{
    int64_t KP = 2 * H, KPA = bf16_bwd_kpa(H);
    float part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    int64_t jstep = amx ? BNB : n == 1 ? 2 * BNB : BNB;
    for (int64_t j = p0; j < p1; j += jstep) {
        int nb = p1 - j < jstep ? (int)(p1 - j) : (int)jstep;
        for (int64_t g0 = 0, g1; g0 < n; g0 = g1) {
            g1 = amx ? (n - g0 < STEP_ROWS_MAX ? n : g0 + STEP_ROWS_MAX)
                     : FN(group_end)(sp, g0, n, BR);
            int64_t ng = g1 - g0;
            if (amx)
                FN(bwda_tiles)(ng, nb, KPA, dgw + g0 * KPA, KPA, w + j * KPA * V, KPA * V,
                               part);
            else
                FN(bwdb_tiles)(ng, nb, KP, dgw + g0 * KPA, KPA, w + j * KPA * V, KPA * V,
                               part, sp);
            for (int64_t r = 0; r < ng; r++)
                for (int jb = 0; jb < nb; jb++) {
                    int64_t off = (j + jb) * V, ro = (g0 + r) * W + off;
                    int cnt = W - off < V ? (int)(W - off) : V;
                    vstore_n(out + ro, vload(part + (r * nb + jb) * V), cnt);
                }
        }
    }
}

/* blocks j0..j1 of a float32 [block][4H][V] pack (values bf16 already) as pair words,
 * KPA rows per block (the rows from 2H on zero) */
KERNEL void FN(bwdb_pack)(int64_t H, const float *wb, int64_t j0, int64_t j1, uint32_t *out)
{
    int64_t G = 4 * H, KPA = bf16_bwd_kpa(H);
    for (int64_t j = j0; j < j1; j++) {
        for (int64_t p = 0; p < 2 * H; p++) {
            const uint32_t *e = (const uint32_t *)(wb + (j * G + 2 * p) * V);
            const uint32_t *o = (const uint32_t *)(wb + (j * G + 2 * p + 1) * V);
            uint32_t *d = out + (j * KPA + p) * V;
            for (int l = 0; l < V; l++)
                d[l] = (o[l] & 0xffff0000u) | (e[l] >> 16);
        }
        memset(out + (j * KPA + 2 * H) * V, 0, (size_t)(KPA - 2 * H) * V * 4);
    }
}

/* n rows of gate gradients (ldg apart, values bf16 already) as [n][KPA] pair words (the
 * words from 2H on zero) */
KERNEL void FN(bwdb_rows_words)(int64_t n, int64_t H, const float *dg, int64_t ldg,
                                uint32_t *out)
{
    int64_t KPA = bf16_bwd_kpa(H);
    for (int64_t r = 0; r < n; r++) {
        const uint32_t *u = (const uint32_t *)(dg + r * ldg);
        uint32_t *d = out + r * KPA;
        for (int64_t p = 0; p < 2 * H; p++)
            d[p] = (u[2 * p + 1] & 0xffff0000u) | (u[2 * p] >> 16);
        for (int64_t p = 2 * H; p < KPA; p++)
            d[p] = 0;
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

/* 16 columns c0.. of rows 2p, 2p+1 (NULL: zeros) as pair words, for p = 0..NP-1, then
 * zero words up to NPA (a multiple of 16): out [NPA][16], or transposed (tr: AMX's A
 * operand, a row per column) out [16][NPA] */
static ATTR_BFB void FN(dwb_pack16)(int64_t NP, int64_t NPA, int64_t N, int64_t cnt,
                                    const float *(*row)(const void *, int64_t), const void *arg,
                                    int64_t c0, uint32_t *out, int tr)
{
    __mmask16 m = (__mmask16)((1u << cnt) - 1u);
    uint32_t blk[16 * 16] __attribute__((aligned(64)));
    for (int64_t p0 = 0; p0 < NPA; p0 += 16) {
        uint32_t *dst = tr ? blk : out + p0 * 16;
        for (int64_t i = 0; i < 16; i++) {
            int64_t p = p0 + i;
            __m512i w = _mm512_setzero_si512();
            if (p < NP) {
                __m512i lo = _mm512_maskz_loadu_epi32(m, row(arg, 2 * p) + c0);
                __m512i hi = 2 * p + 1 < N
                    ? _mm512_maskz_loadu_epi32(m, row(arg, 2 * p + 1) + c0)
                    : _mm512_setzero_si512();
                w = _mm512_or_si512(_mm512_and_si512(hi, _mm512_set1_epi32((int)0xffff0000u)),
                                    _mm512_srli_epi32(lo, 16));
            }
            _mm512_store_si512((void *)(dst + i * 16), w);
        }
        if (tr) {   /* blk [16 pairs][16 columns] -> out [16 columns][NPA], pairs p0.. */
            const __m512i idx = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112,
                                                 96, 80, 64, 48, 32, 16, 0);
            for (int c = 0; c < 16; c++)
                _mm512_storeu_si512((void *)(out + c * NPA + p0),
                                    _mm512_i32gather_epi32(idx, (const void *)(blk + c), 4));
        }
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

/* C [4H][W] (rows m0..m1, multiples of 16 but the last) = a^T b on the packed words
 * (NP pairs, blocks NPA pairs apart) */
static ATTR_BFB void FN(dwb_product)(int64_t m0, int64_t m1, int64_t W, int64_t NP, int64_t NPA,
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
                FN(dwb_tile_any)(mr, nb, k0, k1, ap + (m / 16) * NPA * 16 + m % 16,
                                 bp + j * NPA * 16, NPA * 16, part);
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

/* ---- the same products on AMX tiles (tdpbf16ps), by default where the CPU has AMX-BF16
 * (lstm.c bf16_path_for: 2, as the forward). Operands as above, with their padding: the
 * gate gradient rows' pair words 2H..KPA and the weight blocks' pair rows 2H..KPA zero
 * (bwdb_rows_words, bwdb_pack), and for dw the pairs NP..NPA zero (dwb_pack16); A tiles
 * read 16 rows (the rows beyond n only make rows of C beyond n, never read). Each output
 * element is the tile's sum over all of K in one accumulator tile: its bits depend on
 * neither the thread count nor the row grouping. tdpbf16ps adds its products in an order
 * and with roundings of its own (bf16.template.c, AMX): the bound is the one above. */
#define BWDA_LOAD_DP(C, B, OFF)                                                              \
    do {                                                                                     \
        _tile_loadd(B, wk + (OFF), V * 4);                                                   \
        _tile_dpbf16ps(C, 4, B);                                                             \
    } while (0)

/* part [rows][nb][V] = n rows (n <= STEP_ROWS_MAX) of pair words a (lda words apart) . nb
 * pair blocks at w (bstride words apart, KPA pair rows of V words each); part has
 * STEP_ROWS_MAX rows: the 16-row tiles store whole */
static AMX_ATTR void FN(bwda_tiles)(int64_t n, int nb, int64_t KPA, const uint32_t *a,
                                    int64_t lda, const uint32_t *w, int64_t bstride, float *part)
{
    const int64_t ldp = (int64_t)nb * V * 4;   /* bytes from one row of part on */
    for (int64_t r0 = 0; r0 < n; r0 += 16) {
        const uint32_t *ar = a + r0 * lda;
        float *pr = part + r0 * nb * V;
        for (int q0 = 0; q0 < nb; q0 += 4) {
            int nq = nb - q0 < 4 ? nb - q0 : 4;
            const uint32_t *wq = w + q0 * bstride;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t k = 0; k < KPA; k += 16) {
                const uint32_t *wk = wq + k * V;
                _tile_loadd(4, ar + k, lda * 4);
                BWDA_LOAD_DP(0, 5, 0);
                if (nq > 1)
                    BWDA_LOAD_DP(1, 6, bstride);
                if (nq > 2)
                    BWDA_LOAD_DP(2, 7, 2 * bstride);
                if (nq > 3)
                    BWDA_LOAD_DP(3, 5, 3 * bstride);
            }
            _tile_stored(0, pr + q0 * V, ldp);
            if (nq > 1)
                _tile_stored(1, pr + (q0 + 1) * V, ldp);
            if (nq > 2)
                _tile_stored(2, pr + (q0 + 2) * V, ldp);
            if (nq > 3)
                _tile_stored(3, pr + (q0 + 3) * V, ldp);
        }
    }
}
#undef BWDA_LOAD_DP

/* C [4H][W] rows m0..m1 (m0 a multiple of 16) = a^T b: apt [rows][NPA] pair words of the
 * gate gradients' columns (dwb_pack16 transposed), bp [ceil(W/16)][NPA][16]. Tiles of
 * 2 x 16 rows by 2 blocks of 16 columns; a tile that would cross the end of C's rows or
 * columns goes through tmp. */
static AMX_ATTR void FN(dwb_product_amx)(int64_t m0, int64_t m1, int64_t W, int64_t NPA,
                                         const uint32_t *apt, const uint32_t *bp, float *C)
{
    float tmp[16 * 16] __attribute__((aligned(64)));
    int64_t nblk = (W + 15) / 16;
    for (int64_t m = m0; m < m1; m += 32) {
        int two_m = m + 16 < m1;
        const uint32_t *a0 = apt + m * NPA, *a1 = a0 + 16 * NPA;
        for (int64_t j = 0; j < nblk; j += 2) {
            int two_j = j + 1 < nblk;
            const uint32_t *b0 = bp + j * NPA * 16, *b1 = b0 + NPA * 16;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t k = 0; k < NPA; k += 16) {
                _tile_loadd(4, a0 + k, NPA * 4);
                _tile_loadd(6, b0 + k * 16, 64);
                _tile_dpbf16ps(0, 4, 6);
                if (two_j) {
                    _tile_loadd(7, b1 + k * 16, 64);
                    _tile_dpbf16ps(1, 4, 7);
                }
                if (two_m) {
                    _tile_loadd(5, a1 + k, NPA * 4);
                    _tile_dpbf16ps(2, 5, 6);
                    if (two_j)
                        _tile_dpbf16ps(3, 5, 7);
                }
            }
            for (int t = 0; t < 4; t++) {
                int64_t mt = m + (t >> 1) * 16, off = (j + (t & 1)) * 16;
                if ((t & 1 && !two_j) || (t >> 1 && !two_m))
                    continue;
                int rows = m1 - mt < 16 ? (int)(m1 - mt) : 16;
                int cnt = W - off < 16 ? (int)(W - off) : 16;
                int whole = rows == 16 && cnt == 16;
                float *dst = whole ? C + mt * W + off : tmp;
                int64_t ld = whole ? W * 4 : 64;
                switch (t) {
                case 0: _tile_stored(0, dst, ld); break;
                case 1: _tile_stored(1, dst, ld); break;
                case 2: _tile_stored(2, dst, ld); break;
                default: _tile_stored(3, dst, ld); break;
                }
                if (!whole)
                    for (int r = 0; r < rows; r++)
                        _mm512_mask_storeu_ps(C + (mt + r) * W + off,
                                              (__mmask16)((1u << cnt) - 1u),
                                              _mm512_load_ps(tmp + r * 16));
            }
        }
    }
}
#else
#define BWD_BF16 0
#endif
