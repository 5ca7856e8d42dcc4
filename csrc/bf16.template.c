/* bf16.template.c: bfloat16 weights for inference (forward and streaming), float32
 * inputs, outputs and state. Included by lstm.template.c for TYPE float only, after
 * pack.template.c; uses the step plan (step_plan_for) and the cell (fwd_cell) of the
 * float32 kernel unchanged.
 * The job's loop and its step's walk of the tiles (row tiles, K in chunks, alternate
 * sweep) are written out here as in fwd_job/fwd_step and i8_step: the loops are alike but
 * what runs inside them is not (here three tile paths, emulated, vdpbf16ps and the widened
 * copy, on rounded pairs; the prefetch of the next chunk in fwd_step; x's and h's sums
 * apart in i8_step); a shared walk would put a callback (an indirect call or a macro body)
 * in the innermost loop of the B = 1 streaming step, the case these weights are for.
 * Sharing only the job's start and end (c0 into c_n, h_n from y, the cell's arguments)
 * with the float32 kernel was tried: benchmarks/bench_int8.py, 1 thread, Intel Xeon family
 * 6 model 167, medians of 2-3 alternated runs, the (32, 64, 256, 256) forward 15.7-16.2 ms
 * before and 16.6-18.1 after for bfloat16, 14.8-15.7 and 15.9-16.9 for int8 (B = 1 stream
 * unchanged); within the runs' noise but all after-runs slower, so it was left as it was.
 *
 * Arithmetic, exactly (every SIMD level gives the same pre-activation bits; the one
 * exception is AMX, opt-in, whose tdpbf16ps sums the same products in its own order:
 * see "AMX" below):
 *   - weights: w_ih and w_hh rounded to bfloat16 once, at pack time, by
 *     bf16_round: round to nearest even; zero and denormal inputs give a signed
 *     zero (denormals are flushed, as VCVTNEPS2BF16 does), NaN a quiet NaN, and a
 *     value that rounds past the largest bf16 gives inf. The bias stays float32.
 *   - inputs of the products: x_t and h_{t-1} rounded to bfloat16 the same way,
 *     at every step (per thread, into the workspace).
 *   - products: for each pre-activation (row, gate column), K = [x | h] is taken in
 *     pairs (2p, 2p+1): x pairs first (ceil(I/2), the last one padded with a zero
 *     weight and a zero input when I is odd), then h pairs (ceil(H/2), likewise).
 *     Starting from acc = +0, for p = 0, 1, ...:
 *         acc = fma(x[2p+1], w[2p+1], acc);  acc = fma(x[2p], w[2p], acc)
 *     each an fp32 fused multiply-add rounded to nearest even with denormal
 *     inputs read as zero and denormal results flushed to zero. This is
 *     VDPBF16PS per fp32 lane (Intel SDM: "FP32 FMA with daz in, ftz out and RNE
 *     rounding", the odd element of the pair first), so the AVX512_BF16 path is
 *     one vdpbf16ps per pair and 16 units; the emulation widens the bf16 weights
 *     to fp32 in registers (a shift and a mask: a bf16 is the top half of its fp32)
 *     and issues the two FMAs in that order with MXCSR's FTZ and DAZ set: the same
 *     bits. The portable level has no FMA: a bf16 x bf16 product is exact in
 *     float64 and so is its sum with a float32 acc whenever the exponents are
 *     within 29 (beyond that the smaller term is below 1/32 ulp of the larger and
 *     cannot change the rounding), so acc = (float)((double)acc + (double)x *
 *     (double)w) is the correctly rounded FMA too, flushed by FTZ.
 *   - then the float32 cell of the float32 kernel: pre = acc + b, the
 *     activations, c_t = f*c_{t-1} + i*g (fused), h_t = o*tanh(c_t), all float32.
 *     The whole forward runs with FTZ and DAZ set (restored at the end): results
 *     below 2^-126 in magnitude are zero. The cell's exp and reciprocal differ
 *     between the SIMD levels in the last bits, as in the float32 kernel, so the
 *     outputs are bitwise identical across levels only where the cell is the
 *     same code: AVX-512 native and AVX-512 emulated.
 * No projection. Saved for backward only by lstm_forward_bf16_ex (bfloat16 training):
 * then the cell also stores the gates and c_t of every step rounded to bfloat16, as bit
 * patterns (2 bytes each: half the float32 training's saved bytes; the running c stays
 * float32 in c_n), so the outputs' bits are the inference forward's.
 *
 * Packed layout (header, then 64-byte aligned):
 *   w  [ceil(H/V)][KPA][4][V] uint32  KP = ceil(I/2) + ceil(H/2) pairs, KPA = KP rounded
 *                                     up to 16 at the AVX-512 level (AMX's tiles; rows
 *                                     KP..KPA-1 zero words), else KP; word =
 *                                     bf16(w[2p+1]) << 16 | bf16(w[2p]) of one unit
 *                                     and gate: VDPBF16PS's operand layout
 *   b  [4H] float                     b_ih + b_hh (zeros without a bias)
 *   wide [ceil(H/V)][2 KP][4][V] float the same weights widened to float32, rows in
 *                                     the order of the FMAs (2p+1, 2p, 2p+3, ...): the
 *                                     layout of the float32 kernel's whh_f, so that with
 *                                     several row tiles (B > FR, compute bound) a step
 *                                     runs the float32 kernel's tile (fwd_tile_any) on
 *                                     the inputs stored in that order, the same FMAs
 *                                     without the widening's integer ops per use
 *                                     (AVX2 and AVX-512 only: the portable tile has no
 *                                     FMA). Costs 4 bytes per weight more in the pack. */

#ifndef LSTM_BF16_SCALAR
#define LSTM_BF16_SCALAR
/* bfloat16 bits of f: nearest even; zero/denormal -> signed zero; NaN -> quiet NaN */
static inline uint16_t bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;   /* selects, no branches: */
    r = (u & 0x7f800000u) == 0 ? (u >> 16) & 0x8000u : r;  /* the loops vectorize */
    r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r;
    return (uint16_t)r;
}

static inline float bf16_to_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#define BF16_MAGIC 0x4c534246u
#endif

#if ISA == 2
#define BF_NATIVE 1
#define ATTR_BF __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma")))
#else
#define BF_NATIVE 0
#endif

typedef ITYPE FN(uivec) __attribute__((vector_size(VBYTES), aligned(4), may_alias));

typedef struct {
    uint32_t magic;
    int32_t level, elem_size, has_bias;   /* elem_size 2: a bf16 pack */
    int64_t I, H, KPX, KPH, KPA, off_w, off_b, off_wide, total;
} FN(bf_hdr);

/* pairs per block row of w: KP, rounded up to AMX's 16 pairs per tile at the AVX-512 level
 * (the rows beyond KP are zero words, never read by the other paths) */
#define BF_KPA(KP) (ISA == 2 ? ((KP) + 15) / 16 * 16 : (KP))

static void FN(bf_layout)(int64_t I, int64_t H, FN(bf_hdr) *h)
{
    h->magic = BF16_MAGIC;
    h->level = ISA;
    h->elem_size = 2;
    h->I = I;
    h->H = H;
    h->KPX = (I + 1) / 2;
    h->KPH = (H + 1) / 2;
    h->KPA = BF_KPA(h->KPX + h->KPH);
    int64_t off = ALIGN64((int64_t)sizeof(FN(bf_hdr)));
    h->off_w = off;
    off = ALIGN64(off + (H + V - 1) / V * h->KPA * 4 * V * 4);
    h->off_b = off;
    off = ALIGN64(off + 4 * H * 4);
    h->off_wide = off;
    off = ALIGN64(off + (ISA > 0 ? (H + V - 1) / V * (h->KPX + h->KPH) * 2 * 4 * V * 4 : 0));
    h->total = off;
}

static size_t FN(bf_packed_size)(int64_t I, int64_t H)
{
    FN(bf_hdr) h;
    FN(bf_layout)(I, H, &h);
    return (size_t)h.total + 64;
}

/* weight k of row n of the K = [x pairs | h pairs] matrix (zero in the padding) */
static inline uint32_t FN(bf_weight)(int64_t I, int64_t H, int64_t KPX, const float *w_ih,
                                     const float *w_hh, int64_t n, int64_t k)
{
    if (k < 2 * KPX)
        return k < I ? bf16_round(w_ih[n * I + k]) : 0;
    k -= 2 * KPX;
    return k < H ? bf16_round(w_hh[n * H + k]) : 0;
}

static int FN(bf_pack)(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                       const float *b, void *packed)
{
    unsigned char *base = FN(align_ptr)(packed);
    FN(bf_hdr) *h = (FN(bf_hdr) *)base;
    FN(bf_layout)(I, H, h);
    h->has_bias = b != NULL;
    int64_t KP = h->KPX + h->KPH, KPA = h->KPA;
    uint32_t *w = (uint32_t *)(base + h->off_w);
    float *bb = (float *)(base + h->off_b);
    for (int64_t j = 0; j < (H + V - 1) / V; j++)
        for (int64_t p = 0; p < KPA; p++)
            for (int g = 0; g < 4; g++)
                for (int l = 0; l < V; l++) {
                    int64_t u = j * V + l;
                    uint32_t word = 0;
                    if (p >= KP) {   /* AMX's padding rows */
                        w[((j * KPA + p) * 4 + g) * V + l] = 0;
                        continue;
                    }
                    if (u < H)
                        word = FN(bf_weight)(I, H, h->KPX, w_ih, w_hh, g * H + u, 2 * p) |
                               FN(bf_weight)(I, H, h->KPX, w_ih, w_hh, g * H + u, 2 * p + 1)
                                   << 16;
                    w[((j * KPA + p) * 4 + g) * V + l] = word;
                    if (ISA > 0) {   /* wide: the pair's odd row, then its even row */
                        uint32_t *wd = (uint32_t *)(base + h->off_wide);
                        wd[((j * 2 * KP + 2 * p) * 4 + g) * V + l] = word & 0xffff0000u;
                        wd[((j * 2 * KP + 2 * p + 1) * 4 + g) * V + l] = word << 16;
                    }
                }
    for (int64_t k = 0; k < 4 * H; k++)
        bb[k] = b ? b[k] : 0;
    return LSTM_OK;
}

/* ---- step tiles ---------------------------------------------------------------
 * acc [mr][nb][4][V] += pairs p0..p1 of the rows' rounded [x | h] . nb blocks of w
 * (bstride words apart). Emulated: src holds the rounded values as floats, 2 KP
 * per row; native: the bf16 pairs as words, KP per row. */

/* one emulated accumulation step: c + a*b with VDPBF16PS's rounding (see the top) */
INLINE vec FN(bf_fma)(vec a, vec b, vec c)
{
#if ISA == 0
    typedef double dvec __attribute__((vector_size(2 * VBYTES)));
    dvec r = __builtin_convertvector(c, dvec) +
             __builtin_convertvector(a, dvec) * __builtin_convertvector(b, dvec);
    return __builtin_convertvector(r, vec);
#else
    return vfma(a, b, c);
#endif
}

INLINE void FN(bf_add_emul)(const int mr, const int nb, int64_t p0, int64_t p1,
                            const float *restrict src, int64_t ld, const uint32_t *restrict w,
                            int64_t bstride, vec *acc)
{
    /* as fwd_tile_add: K rows in order (the odd one of a pair, then the even one),
     * per row the nb*4 weight vectors in registers and one input broadcast per row */
    for (int64_t p = p0; p < p1; p++) {
        const uint32_t *wp = w + p * 4 * V;
        vec wk[16];
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++) {
                ivec wv = (ivec)*(const FN(uivec) *)(wp + (q / 4) * bstride + (q % 4) * V);
                wk[q] = half ? (vec)(wv << 16) : (vec)(wv & (ITYPE)(int32_t)0xffff0000u);
            }
#pragma GCC unroll 6
            for (int r = 0; r < mr; r++) {
                vec a = vset1(src[r * ld + 2 * p + 1 - half]);
#pragma GCC unroll 16
                for (int q = 0; q < nb * 4; q++)
                    acc[r * nb * 4 + q] = FN(bf_fma)(a, wk[q], acc[r * nb * 4 + q]);
            }
        }
    }
}

#if BF_NATIVE
static inline __attribute__((always_inline)) ATTR_BF void
FN(bf_add_native)(const int mr, const int nb, int64_t p0, int64_t p1, const uint32_t *restrict src,
                  int64_t ld, const uint32_t *restrict w, int64_t bstride, vec *acc)
{
    for (int64_t p = p0; p < p1; p++) {
        const uint32_t *wp = w + p * 4 * V;
#pragma GCC unroll 16
        for (int q = 0; q < nb * 4; q++) {
            __m512i wv = _mm512_loadu_si512((const void *)(wp + (q / 4) * bstride + (q % 4) * V));
#pragma GCC unroll 6
            for (int r = 0; r < mr; r++)
                acc[r * nb * 4 + q] = (vec)_mm512_dpbf16_ps(
                    (__m512)acc[r * nb * 4 + q],
                    (__m512bh)_mm512_set1_epi32((int)src[r * ld + p]), (__m512bh)wv);
        }
    }
}
#endif

#define BF_TILE(NAME, ATTRS, ADD, STYPE)                                                     \
    static inline __attribute__((always_inline)) ATTRS void NAME(                            \
        const int mr, const int nb, int64_t p0, int64_t p1, const void *src, int64_t ld,     \
        const uint32_t *w, int64_t bstride, float *restrict acc_mem)                         \
    {                                                                                        \
        vec acc[MAXACC];                                                                     \
        _Pragma("GCC unroll 24") for (int q = 0; q < mr * nb * 4; q++) acc[q] =              \
            p0 ? vload(acc_mem + q * V) : (vec){0};                                          \
        ADD(mr, nb, p0, p1, (const STYPE *)src, ld, w, bstride, acc);                        \
        _Pragma("GCC unroll 24") for (int q = 0; q < mr * nb * 4; q++)                       \
            vstore(acc_mem + q * V, acc[q]);                                                 \
    }

#define BF_CASE(TILE, MRV, NBV)                                                              \
    case (MRV) * 16 + (NBV): TILE(MRV, NBV, p0, p1, src, ld, w, bstride, acc_mem); break;

#if FR >= 6
#define BF_CASES_FR(TILE) BF_CASE(TILE, 3, 1) BF_CASE(TILE, 4, 1) BF_CASE(TILE, 5, 1) BF_CASE(TILE, 6, 1)
#elif FR >= 3
#define BF_CASES_FR(TILE) BF_CASE(TILE, 3, 1)
#else
#define BF_CASES_FR(TILE)
#endif
#if NB1 >= 4
#define BF_CASES_NB(TILE) BF_CASE(TILE, 1, 3) BF_CASE(TILE, 1, 4)
#else
#define BF_CASES_NB(TILE)
#endif

/* the tile for run-time mr <= FR (nb = 1) or mr = 1, nb <= NB1 */
#define BF_TILE_ANY(NAME, ATTRS, TILE)                                                       \
    static ATTRS void NAME(int mr, int nb, int64_t p0, int64_t p1, const void *src,          \
                           int64_t ld, const uint32_t *w, int64_t bstride, float *acc_mem)   \
    {                                                                                        \
        switch (mr * 16 + nb) {                                                              \
            BF_CASE(TILE, 1, 1)                                                              \
            BF_CASE(TILE, 1, 2)                                                              \
            BF_CASE(TILE, 2, 1)                                                              \
            BF_CASES_NB(TILE)                                                                \
            BF_CASES_FR(TILE)                                                                \
        default: break;                                                                      \
        }                                                                                    \
    }

BF_TILE(FN(bf_tile_emul), ATTR, FN(bf_add_emul), float)
BF_TILE_ANY(FN(bf_tile_any_emul), ATTR, FN(bf_tile_emul))
#if BF_NATIVE
BF_TILE(FN(bf_tile_native), ATTR_BF, FN(bf_add_native), uint32_t)
BF_TILE_ANY(FN(bf_tile_any_native), ATTR_BF, FN(bf_tile_native))
#endif


/* ---- AMX (tdpbf16ps), the forward, by default where the CPU has it (lstm_set_bf16_amx) -
 * A tile: 16 rows of the rounded [x | h] as bf16 words, 16 pairs (64 bytes) each, rows
 * lda = 4 KPA bytes apart (zero words from KP to KPA); B tile for one gate: 16 pair rows
 * x the block's V = 16 units, the pack's w with a row stride of 4 V 4 = 256 bytes (its
 * rows KP..KPA-1 are zero words); C: 16 rows x 16 floats, stored into out [16][4][V].
 * The sums are not the other paths' bits: tdpbf16ps adds its products in an order and
 * with roundings of its own (measured: 87 % of its sums differ from every sequential
 * FMA order in the last bits); the bound is bfloat16's (tests/test_bf16_amx.py). The
 * tiles: amx.template.c's amx_block_bf16. */

/* bf16_round on V lanes: the rounded value's float bits (bf16 in the top half) */
typedef uint32_t FN(u32v) __attribute__((vector_size(VBYTES)));
typedef uint32_t FN(u32uv) __attribute__((vector_size(VBYTES), aligned(4), may_alias));
typedef uint16_t FN(u16v) __attribute__((vector_size(VBYTES / 2)));
INLINE FN(u32v) FN(bf_round_v)(FN(u32v) u)
{
    FN(u32v) r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    FN(u32v) zero = (FN(u32v))((u & 0x7f800000u) == 0);
    FN(u32v) nan = (FN(u32v))((u & 0x7fffffffu) > 0x7f800000u);
    r = (zero & (u & 0x80000000u)) | (~zero & r);
    return (nan & ((u | 0x00400000u) & 0xffff0000u)) | (~nan & r);
}

/* n values of src rounded to dst: as floats (emulated), with the elements of each pair
 * swapped (native == 2: the wide tile's order), or as bf16 (native == 1) */
INLINE void FN(bf_round_n)(int64_t n, const float *src, int native, void *dst)
{
    int64_t k = 0;
    for (; k + V <= n; k += V) {
        FN(u32v) r = FN(bf_round_v)(*(const FN(u32uv) *)(src + k));
        if (native == 2) {
            FN(u32v) swap;
            for (int l = 0; l < V; l++)
                swap[l] = (uint32_t)(l ^ 1);
            *(FN(u32uv) *)((float *)dst + k) = __builtin_shuffle(r, swap);
        } else if (native) {
            FN(u16v) h = __builtin_convertvector(r >> 16, FN(u16v));
            memcpy((uint16_t *)dst + k, &h, sizeof h);
        } else {
            *(FN(u32uv) *)((float *)dst + k) = r;
        }
    }
    for (; k < n; k++) {
        uint16_t b = bf16_round(src[k]);
        if (native == 1)
            ((uint16_t *)dst)[k] = b;
        else
            ((float *)dst)[native ? k ^ 1 : k] = bf16_to_float(b);
    }
}

/* Rows 0..n-1 of [x | h] rounded to bf16 into dst: 2 KP per row, the pairs' padding 0;
 * as floats (native 0), as floats in the wide tile's order (2), or as bf16 (native 1,
 * the words vdpbf16ps broadcasts). */
KERNEL void FN(bf_round_rows)(int64_t n, const float *x, int64_t I, const float *h, int64_t H,
                              int64_t KPX, int64_t KP, int native, void *dst)
{
    int64_t es = native == 1 ? 2 : 4;   /* bytes per element in dst */
    for (int64_t r = 0; r < n; r++) {
        char *d = (char *)dst + r * 2 * KP * es;
        FN(bf_round_n)(I, x + r * I, native, d);
        if (I & 1)
            memset(d + (native == 2 ? I - 1 : I) * es, 0, (size_t)es);
        FN(bf_round_n)(H, h + r * H, native, d + 2 * KPX * es);
        if (H & 1)
            memset(d + (2 * KPX + (native == 2 ? H - 1 : H)) * es, 0, (size_t)es);
    }
}

/* One step for rows 0..B-1, hidden blocks j0..j1: the tiles' walk of fwd_step (row
 * tiles, K in chunks where the weights exceed the L2, alternate sweep direction), on
 * the pairs of src. path: 0 emulated on the bf16 weights w, 1 native (vdpbf16ps), 2
 * the float32 kernel's tile on the widened weights (src in that order), 3 AMX (src: rows
 * of KPA words, readable up to row 64 ceil(B / 64)); w's blocks are KPA pair rows. */
KERNEL void FN(bf_step)(const FN(fwd_cell_args) *ca, int64_t B, int64_t KP, int64_t KPA,
                        int64_t j0, int64_t j1, const uint32_t *w, const float *wide,
                        const void *src, int path, int rev, const FN(step_plan) *sp)
{
#if ISA == 2
    if (path == 3) {
        float part3[AMX_ROWS * 4 * V] __attribute__((aligned(64)));
        int64_t ntile = j1 - j0;
        for (int64_t it = 0; it < ntile; it++) {
            int64_t j = j0 + (rev ? ntile - 1 - it : it);
            for (int64_t r0 = 0; r0 < B; r0 += AMX_ROWS) {
                int mr = B - r0 < AMX_ROWS ? (int)(B - r0) : AMX_ROWS;
                FN(amx_block_bf16)(mr, (const uint8_t *)src + r0 * KPA * 4, KPA * 4, KPA,
                                   w + j * KPA * 4 * V, part3);
                for (int r = 0; r < mr; r += FR)   /* the cell takes up to FR rows */
                    FN(fwd_cell)(ca, mr - r < FR ? mr - r : FR, 1, r0 + r, j, part3 + r * 4 * V);
            }
        }
        return;
    }
#endif
    float part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    const int64_t K = KP, bstride = KPA * 4 * V, ld = path == 1 ? KP : 2 * KP;
    const int64_t wstride = KP * 4 * V;   /* the wide copy's blocks: 2 KP rows */
    const int64_t ebytes = path == 1 ? 4 : 8;   /* bytes of one row's pair in src */
    int64_t jstep = B == 1 ? NB1 : 1, ntile = (j1 - j0 + jstep - 1) / jstep;
    for (int64_t it = 0; it < ntile; it++) {
        int64_t j = j0 + (rev ? ntile - 1 - it : it) * jstep;
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t g0 = 0; g0 < B; g0 += sp->rows) {
            int64_t n = B - g0 < sp->rows ? B - g0 : sp->rows, nt = (n + FR - 1) / FR;
            int64_t kc = nt > 1 && sp->kc < K ? sp->kc : K;
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
                int64_t k1 = K - k0 < kc ? K : k0 + kc;
                for (int64_t t = 0; t < nt; t++) {
                    int64_t r0 = g0 + n * t / nt, r1 = g0 + n * (t + 1) / nt;
                    float *pt = kc < K ? part + (r0 - g0) * nb * 4 * V : part;
                    const void *s = (const char *)src + r0 * KP * ebytes;
                    if (path == 2)
                        FN(fwd_tile_any)((int)(r1 - r0), nb, 2 * k0, 2 * k1, 0, NULL, 0,
                                         (const float *)s, ld, wide + j * 2 * wstride,
                                         2 * wstride, pt, NULL, 0, 0);
#if BF_NATIVE
                    else if (path == 1)
                        FN(bf_tile_any_native)((int)(r1 - r0), nb, k0, k1, s, ld,
                                               w + j * bstride, bstride, pt);
#endif
                    else
                        FN(bf_tile_any_emul)((int)(r1 - r0), nb, k0, k1, s, ld,
                                             w + j * bstride, bstride, pt);
                    if (k1 == K)
                        FN(fwd_cell)(ca, (int)(r1 - r0), nb, r0, j, pt);
                }
            }
        }
    }
}

static int64_t FN(bf_rows_bytes)(int64_t B, int64_t I, int64_t H)
{
    int64_t KP = (I + 1) / 2 + (H + 1) / 2, rows = B * KP * 8;
    if (ISA == 2) {   /* AMX: rows of KPA words, 64 ceil(B / 64) of them */
        int64_t amx = (B + 63) / 64 * 64 * BF_KPA(KP) * 4;
        rows = amx > rows ? amx : rows;
    }
    return ALIGN64(rows);
}

typedef struct {
    int64_t T, B, I, H;
    const FN(bf_hdr) *hdr;
    const int64_t *offs;
    const float *x, *h0, *c0;
    float *y, *h_n, *c_n;
    uint16_t *gates, *c;     /* [N,4H], [N,H] saved for backward (bf16 bits), or both NULL */
    unsigned char *rows;     /* per thread: B rows of rounded [x | h] */
    int64_t rows_bytes;      /* per thread */
    int native;              /* 0 emulated, 1 vdpbf16ps, 2 AMX */
} FN(bf_ctx);

KERNEL void FN(bf_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(bf_ctx) *ctx = (const FN(bf_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H;
    const int64_t *offs = ctx->offs;
    const FN(bf_hdr) *hdr = ctx->hdr;
    const unsigned char *base = (const unsigned char *)hdr;
    int64_t KPX = hdr->KPX, KP = hdr->KPX + hdr->KPH, KPA = hdr->KPA;
#if ISA == 2
    const int amx = ctx->native == 2;
    if (amx) {   /* the rows' padding, pairs KP..KPA, stays zero; the rows from B on that
                  * the tiles also read only make rows of C that no cell reads */
        unsigned char *rows = ctx->rows + tid * ctx->rows_bytes;
        for (int64_t r = 0; r < B && KPA > KP; r++)
            memset(rows + (r * KPA + KP) * 4, 0, (size_t)(KPA - KP) * 4);
        FN(amx_begin)();
    }
#else
    const int amx = 0;
#endif
#if HAVE_X86
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);   /* FTZ | DAZ, as vdpbf16ps */
#endif
    int64_t nblk = (H + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, num_threads), j1 = FN(split)(nblk, tid + 1, num_threads);
    if (ctx->c_n != ctx->c0) {   /* the running c starts as c0 (this thread's units) */
        int64_t u0 = j0 * V, u1 = j1 * V < H ? j1 * V : H;
        for (int64_t r = 0; r < B && u0 < u1; r++)
            memcpy(ctx->c_n + r * H + u0, ctx->c0 + r * H + u0, (size_t)(u1 - u0) * sizeof(float));
    }
    FN(fwd_cell_args) ca = {0};
    ca.H = H;
    ca.pre = (const float *)(base + hdr->off_b);   /* the bias alone */
    ca.pre_ld = 0;
    ca.cprev = ca.c = ctx->c_n;
    const uint32_t *w = (const uint32_t *)(base + hdr->off_w);
    const float *wide = (const float *)(base + hdr->off_wide);
    void *src = ctx->rows + tid * ctx->rows_bytes;
    const FN(step_plan) sp = FN(step_plan_for)((j1 - j0) * KP * 4 * V * 4, 4 * V * 4);
    FN(step_plan) spw = FN(step_plan_for)((j1 - j0) * KP * 8 * V * 4, 4 * V * 4);
    if (spw.kc != INT64_MAX)
        spw.kc = spw.kc / 2 < 8 ? 8 : spw.kc / 2;   /* rows of 4V floats -> pairs */
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        const float *hp = t ? ctx->y + offs[t - 1] * H : ctx->h0;
        ca.h = ctx->y + offs[t] * H;
        if (ctx->c) {   /* saving: the gates and c_t rounded to bf16 into their rows */
            ca.g16 = ctx->gates + offs[t] * 4 * H;
            ca.c16 = ctx->c + offs[t] * H;
        }
        /* several row tiles (compute bound): the widened weights, no integer ops per use */
        int path = amx ? 3 : ctx->native ? 1 : ISA > 0 && n > FR ? 2 : 0;
        if (j0 < j1) {
            FN(bf_round_rows)(n, ctx->x + offs[t] * I, I, hp, H, KPX, path == 3 ? KPA : KP,
                              path == 3 ? 1 : path, src);
            FN(bf_step)(&ca, n, KP, KPA, j0, j1, w, wide, src, path, (int)(t & 1),
                        path == 2 ? &spw : &sp);
        }
        lstm_barrier_wait(bar, num_threads);
    }
    if (tid == 0)   /* h_n: each sequence's last y (c_n is the running state) */
        FN(last_rows)(offs, T, B, H, ctx->h0, ctx->y, ctx->h_n);
#if ISA == 2
    if (amx)
        FN(amx_end)();
#endif
#if HAVE_X86
    _mm_setcsr(csr);
#endif
}

static size_t FN(bf_ws_size)(int64_t T, int64_t B, int64_t I, int64_t H, int num_threads)
{
    return (size_t)(FN(offs_bytes)(T) + num_threads * FN(bf_rows_bytes)(B, I, H)) + 64;
}

static int FN(bf_forward)(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                          const int64_t *batch_sizes, const float *x, const float *h0,
                          const float *c0, float *y, float *h_n, float *c_n, uint16_t *gates,
                          uint16_t *c, void *workspace, int num_threads, int native)
{
    const FN(bf_hdr) *hdr = (const FN(bf_hdr) *)FN(align_ptr)((void *)packed);
    if (hdr->magic != BF16_MAGIC || hdr->level != ISA || hdr->elem_size != 2 || hdr->I != I ||
        hdr->H != H)
        return LSTM_ERR_PACKED;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    wsb += FN(offs_bytes)(T);
    FN(bf_ctx) ctx = {T, B, I, H, hdr, offs, x, h0, c0, y, h_n, c_n, gates, c, wsb,
                      FN(bf_rows_bytes)(B, I, H),
                      ISA == 2 && native == 2 ? 2 : BF_NATIVE && native ? 1 : 0};
    lstm_pool_run(FN(bf_job), &ctx, num_threads < 1 ? 1 : num_threads);
    return LSTM_OK;
}

#undef BF_NATIVE
#undef ATTR_BF
#undef BF_KPA
#undef BF_TILE
#undef BF_CASE
#undef BF_CASES_FR
#undef BF_CASES_NB
#undef BF_TILE_ANY
