/* int8d.template.c: int8 weights with dynamically quantized activations (weight_dtype
 * "int8_dynamic", inference: forward and streaming): x_t and h_{t-1} quantized per row per
 * step to 8 bits, the products in int32 by vpdpbusd (AVX512-VNNI, AVX-VNNI) or an exact
 * emulation, dequantized, then the float32 cell. Included by lstm.template.c for TYPE
 * float only, after int8.template.c; uses its weight quantization (i8_scale, i8_quant) and
 * the cell (fwd_cell) of the float32 kernel unchanged.
 *
 * Arithmetic, exactly (integer products: every SIMD level, native or emulated, gives the
 * same pre-activation bits; backends/reference.py lstm_forward_int8_dynamic is its NumPy
 * transcription):
 *   - weights, at pack time, as int8.template.c (weight-only int8): per gate row n,
 *     separately for w_ih and w_hh, s_w[n] = max_k |w[n,k]| / 127 and q[n,k] =
 *     rint(w[n,k] / s_w[n]) in [-127, 127]; plus, per row, the compensation
 *     c[n] = 128 * sum_k q[n,k] (int32, exact) for the +128 offset below.
 *   - per step, each row r of x_t (I values) and of h_{t-1} (H values) separately:
 *     a = max_k |v[k]| (taken on the bits: |v| as uint32), s_r = a / 127 (float32
 *     division); if some v[k] is NaN or +-inf, s_r = NaN (the row's outputs are NaN) and
 *     every u = 128; if s_r = 0, every u = 128; else
 *         p[k] = rint(fl(v[k] / s_r)) clamped to [-127, 127]  (nearest even; computed as
 *                the low bits of fl(fl(v / s_r) + 1.5 * 2^23)),  u[k] = p[k] + 128 in [1, 255]
 *     (symmetric s8 values stored with the +128 offset as the u8 that vpdpbusd takes).
 *   - the sums, int32, exact: acc[n] = sum_k u[k] q[n,k] (vpdpbusd: 4 u8 x s8 products
 *     per int32 lane, no saturation), then d[n] = acc[n] - c[n] = sum_k p[k] q[n,k].
 *     Bound: every partial sum of acc is at most K 255 127 in magnitude, so no int32
 *     overflow for K <= 66311 (66311 * 32385 < 2^31); the pack refuses I or H above
 *     I8D_KMAX = 66311 (LSTM_ERR_ARG). The sums over x and over h are apart (their own
 *     scales): dx[n] over k < I, dh[n] over k < H.
 *   - dequantized, float32, no FMA (-ffp-contract=off), each operation rounded to nearest:
 *         z = fl( fl(fl(s_x[r] s_ih[n]) (float)dx[n]) + fl(fl(s_h[r] s_hh[n]) (float)dh[n]) )
 *     ((float) of an int32 rounds to nearest even: exact below 2^24), then the float32
 *     cell of the float32 kernel: pre = z + b, the activations, c_t, h_t = o tanh(c_t).
 *     As everywhere, the cell's exp and reciprocal differ between the SIMD levels in the
 *     last bits, so whole sequences are bitwise equal across levels only where that code
 *     is (a last-bit difference in h can move a value of the next step's quantization
 *     across a rounding boundary: one unit of p).
 * AMX (AVX-512 level; a CPU with AMX-TILE and AMX-INT8 whose OS grants the tile state,
 * cpu.c): tdpbusd, the same u8 x s8 products summed in int32 without saturation, so the
 * same sums; tiles of 16 rows x 64 bytes, the rows of u padded with zero bytes to a
 * multiple of 64 (the weights' rows there, h's groups, the next block's or the pack's
 * zero tail pad, multiply zeros); used from B = 6 (lstm.c), or forced by
 * set_int8_dynamic_path("amx"). With several threads, each quantizes a share of h's rows
 * into one buffer, then a barrier.
 * The emulation (a CPU without VNNI, or set_int8_dynamic_native(False)): the u8 and s8
 * bytes split into their even and odd halves widened to int16 (u: a mask and a shift;
 * q: shifts with sign), two vpmaddwd (int16 x int16 pairs summed in int32, exact: no
 * vpmaddubsw, whose int16 sum saturates at 2 * 255 * 127) and two adds per vpdpbusd: the
 * same int32 sums (integer addition: any order). Portable level: plain C, the same sums.
 * AVX-512 without VNNI emulates with AVX512BW (every AVX-512 CPU with DQ and VL has it).
 *
 * Why: at large batches the step is compute bound and vpdpbusd does 4 multiply-adds per
 * int32 lane where vfmadd does 1 (benchmarks/int8_tile_micro.c: the tile 2.67x the float32
 * tile, 2.56x with quantizing and dequantizing). Error: x and h are rounded to half a
 * step of their row's largest |value| / 127 each step, on top of the weights' rounding
 * (tests/test_int8_dynamic.py states the bounds measured).
 *
 Work: first every row of x (all steps) is quantized, the rows split over the threads,
 * then a barrier. Per step every thread (its hidden blocks j0..j1) quantizes all the
 * step's rows of h_{t-1} itself into its own part of the workspace (the same bits in every
 * thread; B H divisions against the B K 4H / threads multiply-adds of its tiles: no
 * second barrier per step), then register tiles of up to FR rows x 1 block (B = 1: NB1
 * blocks) over the x groups and the h groups, the dequantization and the cell.
 * No projection, nothing saved for backward (inference only).
 *
 * Packed layout (header, then 64-byte aligned), KX = I and KH = H rounded up to 4:
 *   q    [ceil(H/V)][(KX + KH)/4][4][V][4] int8  per block of V units: groups of 4 k (x's
 *                                      then h's) of the 4 gates, V lanes of 4 bytes (the
 *                                      vpdpbusd operand; 0 in the padding)
 *   c_ih [ceil(H/V)][4][V] int32       the compensations (0 in the padding)
 *   c_hh [ceil(H/V)][4][V] int32
 *   s_ih [ceil(H/V)][4][V] float       the weight scales (0 in the padding)
 *   s_hh [ceil(H/V)][4][V] float
 *   b    [4H] float                    b_ih + b_hh (zeros without a bias)
 * (and I8D_QPAD = 4096 zero bytes after q, which AMX's last B tiles may read).
 * Workspace: the step offsets, u_x [T B + 16][ldx] bytes and s_x [T B] floats (x's
 * rows), then per thread u_x [16 ceil(B/16)][ldx] (one step's x: i8d_products), u_h
 * [16 ceil(B/16)][ldh] bytes, s_x and s_h floats; ldx = KX and ldh = KH, with AMX rounded
 * up to 64 (the sizes: always for AMX). */

#ifndef LSTM_I8D_SCALAR
#define LSTM_I8D_SCALAR
#define I8D_MAGIC 0x4c534944u
#define I8D_KMAX 66311   /* 66311 * 255 * 127 < 2^31 */
#define I8D_MAGIC_F 12582912.0f   /* 1.5 * 2^23 */
#define I8D_QPAD 4096   /* zero bytes after q: AMX's tail reads (16 groups of 256 bytes) */
#define I8D_R16(n) (((n) + 15) / 16 * 16)
#define I8D_K64(k) (((k) + 63) / 64 * 64)

/* p = rint(fl(v / s)) in [-127, 127] as u = p + 128 (s > 0 finite, v finite) */
static inline uint8_t i8d_u8(float v, float s)
{
    float t = v / s + I8D_MAGIC_F;
    int32_t ti, mi;
    float m = I8D_MAGIC_F;
    memcpy(&ti, &t, 4);
    memcpy(&mi, &m, 4);
    int32_t p = ti - mi;
    p = p > 127 ? 127 : p < -127 ? -127 : p;
    return (uint8_t)(p + 128);
}
#endif

typedef struct {
    uint32_t magic;
    int32_t level, elem_size, has_bias;   /* elem_size 1: an int8 pack */
    int64_t I, H, KX, KH, off_q, off_cih, off_chh, off_sih, off_shh, off_b, total;
} FN(i8d_hdr);

static void FN(i8d_layout)(int64_t I, int64_t H, FN(i8d_hdr) *h)
{
    int64_t nblk = (H + V - 1) / V;
    h->magic = I8D_MAGIC;
    h->level = ISA;
    h->elem_size = 1;
    h->I = I;
    h->H = H;
    h->KX = (I + 3) / 4 * 4;
    h->KH = (H + 3) / 4 * 4;
    int64_t off = ALIGN64((int64_t)sizeof(FN(i8d_hdr)));
    h->off_q = off;
    off = ALIGN64(off + nblk * (h->KX + h->KH) * 4 * V) + I8D_QPAD;
    h->off_cih = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_chh = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_sih = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_shh = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_b = off;
    off = ALIGN64(off + 4 * H * 4);
    h->total = off;
}

static size_t FN(i8d_packed_size)(int64_t I, int64_t H)
{
    FN(i8d_hdr) h;
    FN(i8d_layout)(I, H, &h);
    return (size_t)h.total + 64;
}

static int FN(i8d_pack)(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                        const float *b, void *packed)
{
    if (I > I8D_KMAX || H > I8D_KMAX)
        return LSTM_ERR_ARG;
    unsigned char *base = FN(align_ptr)(packed);
    FN(i8d_hdr) *h = (FN(i8d_hdr) *)base;
    FN(i8d_layout)(I, H, h);
    h->has_bias = b != NULL;
    int64_t nblk = (H + V - 1) / V, KG = (h->KX + h->KH) / 4, GX = h->KX / 4;
    int8_t *q = (int8_t *)(base + h->off_q);
    int32_t *cih = (int32_t *)(base + h->off_cih), *chh = (int32_t *)(base + h->off_chh);
    float *sih = (float *)(base + h->off_sih), *shh = (float *)(base + h->off_shh);
    float *bb = (float *)(base + h->off_b);
    memset(q, 0, (size_t)(h->off_cih - h->off_q));   /* with the tail pad */
    for (int64_t j = 0; j < nblk; j++)
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < V; l++) {
                int64_t u = j * V + l, n = g * H + u, at = (j * 4 + g) * V + l;
                int32_t sx = 0, sh = 0;
                float si = u < H ? i8_scale(w_ih + n * I, I) : 0;
                float sw = u < H ? i8_scale(w_hh + n * H, H) : 0;
                sih[at] = si;
                shh[at] = sw;
                for (int64_t k = 0; u < H && k < I + H; k++) {
                    int8_t v = k < I ? i8_quant(w_ih[n * I + k], si)
                                     : i8_quant(w_hh[n * H + k - I], sw);
                    int64_t kk = k < I ? k : k - I, grp = (k < I ? 0 : GX) + kk / 4;
                    q[(((j * KG + grp) * 4 + g) * V + l) * 4 + kk % 4] = v;
                    if (k < I)
                        sx += v;
                    else
                        sh += v;
                }
                cih[at] = 128 * sx;
                chh[at] = 128 * sh;
            }
    for (int64_t k = 0; k < 4 * H; k++)
        bb[k] = b ? b[k] : 0;
    return LSTM_OK;
}

/* One row of n floats quantized (see the top) into u [kp] (the padding to kp: 128);
 * returns the row's scale. */
INLINE float FN(i8d_qrow)(const float *restrict v, int64_t n, uint8_t *restrict u, int64_t kp)
{
    ivec am = {0};
    int64_t k = 0;
    for (; k + V <= n; k += V) {
        ivec b = (ivec)vload(v + k) & 0x7fffffff;
        ivec gt = b > am;
        am = (b & gt) | (am & ~gt);
    }
    int32_t a = 0;
    for (int l = 0; l < V; l++)
        a = am[l] > a ? am[l] : a;
    for (; k < n; k++) {
        int32_t b;
        memcpy(&b, v + k, 4);
        b &= 0x7fffffff;
        a = b > a ? b : a;
    }
    float af, s;
    memcpy(&af, &a, 4);
    s = a >= 0x7f800000 ? __builtin_nanf("") : af / 127.0f;
    if (!(s > 0)) {   /* NaN, inf or a row of zeros: p = 0 */
        memset(u, 128, (size_t)kp);
        return s;
    }
    const vec vs = vset1(s), magic = vset1(I8D_MAGIC_F);
    const ivec mi = (ivec)magic;
    k = 0;
    for (; k + V <= n; k += V) {
        ivec p = (ivec)(vload(v + k) / vs + magic) - mi;
        ivec hi = p > 127, lo = p < -127;
        p = (p & ~hi) | (127 & hi);
        p = (p & ~lo) | (-127 & lo);
        p += 128;
#if ISA == 2
        _mm_storeu_si128((__m128i *)(u + k), _mm512_cvtepi32_epi8((__m512i)p));
#else
        for (int l = 0; l < V; l++)
            u[k + l] = (uint8_t)p[l];
#endif
    }
    for (; k < n; k++)
        u[k] = i8d_u8(v[k], s);
    for (; k < kp; k++)
        u[k] = 128;
    return s;
}

/* ---- the register tile: acc [mr][nb*4][V] int32 = sum over ng groups of 4 bytes of the
 * rows' u (a: row 0, rows lda bytes apart) times the int8 weights of nb blocks (w: group
 * 0 of the segment in the first block, blocks bstride bytes apart) ---------------------- */

#if ISA == 0
INLINE void FN(i8d_tile_n)(const int mr, const int nb, const uint8_t *restrict a, int64_t lda,
                           int64_t ng, const int8_t *restrict w, int64_t bstride,
                           int32_t *restrict out)
{
    int32_t acc[MAXACC][V];
    memset(acc, 0, sizeof acc);
    for (int64_t g = 0; g < ng; g++)
        for (int r = 0; r < mr; r++) {
            const uint8_t *ar = a + r * lda + 4 * g;
            for (int q = 0; q < nb * 4; q++) {
                const int8_t *wq = w + (q / 4) * bstride + (g * 4 + q % 4) * V * 4;
                for (int l = 0; l < V; l++)
                    acc[r * nb * 4 + q][l] += ar[0] * wq[4 * l] + ar[1] * wq[4 * l + 1] +
                                              ar[2] * wq[4 * l + 2] + ar[3] * wq[4 * l + 3];
            }
        }
    memcpy(out, acc, (size_t)mr * nb * 4 * V * sizeof(int32_t));
}
#define I8D_NATIVE_CASE(MRV, NBV)
#define I8D_EMUL_CASE(MRV, NBV)                                                              \
    case (MRV) * 16 + (NBV):                                                                  \
        FN(i8d_tile_n)(MRV, NBV, a, lda, ng, w, bstride, out);                                \
        break;
#else
#if ISA == 2
typedef __m512i FN(i8d_iv);
#define I8D_ATTR_NATIVE                                                                    \
    __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,avx512vnni")))
#define I8D_ATTR_EMUL __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#define I8D_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define I8D_SET1(x) _mm512_set1_epi32(x)
#define I8D_ZERO() _mm512_setzero_si512()
#define I8D_STORE(p, v) _mm512_storeu_si512((void *)(p), v)
#define I8D_DOT_NATIVE(acc, a, w) _mm512_dpbusd_epi32(acc, a, w)
#define I8D_ADD _mm512_add_epi32
#define I8D_MADD _mm512_madd_epi16
#define I8D_SLLI16 _mm512_slli_epi16
#define I8D_SRAI16 _mm512_srai_epi16
#else
typedef __m256i FN(i8d_iv);
#define I8D_ATTR_NATIVE __attribute__((target("avx2,fma,avxvnni")))
#define I8D_ATTR_EMUL __attribute__((target("avx2,fma")))
#define I8D_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define I8D_SET1(x) _mm256_set1_epi32(x)
#define I8D_ZERO() _mm256_setzero_si256()
#define I8D_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define I8D_DOT_NATIVE(acc, a, w) _mm256_dpbusd_avx_epi32(acc, a, w)
#define I8D_ADD _mm256_add_epi32
#define I8D_MADD _mm256_madd_epi16
#define I8D_SLLI16 _mm256_slli_epi16
#define I8D_SRAI16 _mm256_srai_epi16
#endif
#define iv FN(i8d_iv)

/* vpdpbusd */
static inline __attribute__((always_inline)) I8D_ATTR_NATIVE void
FN(i8d_tile_native)(const int mr, const int nb, const uint8_t *restrict a, int64_t lda,
                    int64_t ng, const int8_t *restrict w, int64_t bstride, int32_t *restrict out)
{
    iv acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        acc[q] = I8D_ZERO();
    for (int64_t g = 0; g < ng; g++) {
        iv wv[16];
#pragma GCC unroll 16
        for (int q = 0; q < nb * 4; q++)
            wv[q] = I8D_LOAD(w + (q / 4) * bstride + (g * 4 + q % 4) * V * 4);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            int32_t x4;
            memcpy(&x4, a + r * lda + 4 * g, 4);
            iv av = I8D_SET1(x4);
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++)
                acc[r * nb * 4 + q] = I8D_DOT_NATIVE(acc[r * nb * 4 + q], av, wv[q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        I8D_STORE(out + q * V, acc[q]);
}

/* the emulation: even and odd bytes as int16, two vpmaddwd (see the top) */
static inline __attribute__((always_inline)) I8D_ATTR_EMUL void
FN(i8d_tile_emul)(const int mr, const int nb, const uint8_t *restrict a, int64_t lda,
                  int64_t ng, const int8_t *restrict w, int64_t bstride, int32_t *restrict out)
{
    iv acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        acc[q] = I8D_ZERO();
    for (int64_t g = 0; g < ng; g++) {
        iv wlo[16], whi[16];
#pragma GCC unroll 16
        for (int q = 0; q < nb * 4; q++) {
            iv v = I8D_LOAD(w + (q / 4) * bstride + (g * 4 + q % 4) * V * 4);
            wlo[q] = I8D_SRAI16(I8D_SLLI16(v, 8), 8);   /* bytes 0, 2: sign-extended */
            whi[q] = I8D_SRAI16(v, 8);                 /* bytes 1, 3 */
        }
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            uint32_t x4;
            memcpy(&x4, a + r * lda + 4 * g, 4);
            iv alo = I8D_SET1((int32_t)(x4 & 0x00ff00ffu));
            iv ahi = I8D_SET1((int32_t)((x4 >> 8) & 0x00ff00ffu));
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++)
                acc[r * nb * 4 + q] = I8D_ADD(I8D_ADD(acc[r * nb * 4 + q], I8D_MADD(alo, wlo[q])),
                                              I8D_MADD(ahi, whi[q]));
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        I8D_STORE(out + q * V, acc[q]);
}
#undef iv
#define I8D_NATIVE_CASE(MRV, NBV)                                                            \
    case (MRV) * 16 + (NBV):                                                                  \
        FN(i8d_tile_native)(MRV, NBV, a, lda, ng, w, bstride, out);                           \
        break;
#define I8D_EMUL_CASE(MRV, NBV)                                                              \
    case (MRV) * 16 + (NBV):                                                                  \
        FN(i8d_tile_emul)(MRV, NBV, a, lda, ng, w, bstride, out);                             \
        break;
#endif

#if NB1 >= 4
#define I8D_CASES_NB4(C) C(1, 3) C(1, 4)
#else
#define I8D_CASES_NB4(C)
#endif
#if FR >= 6
#define I8D_CASES_FR6(C) C(3, 1) C(4, 1) C(5, 1) C(6, 1)
#elif FR >= 3
#define I8D_CASES_FR6(C) C(3, 1)
#else
#define I8D_CASES_FR6(C)
#endif
#define I8D_CASES(C) C(1, 1) C(1, 2) C(2, 1) I8D_CASES_NB4(C) I8D_CASES_FR6(C)

#if ISA > 0
static I8D_ATTR_NATIVE void FN(i8d_tile_any_native)(int mr, int nb, const uint8_t *a,
                                                     int64_t lda, int64_t ng, const int8_t *w,
                                                     int64_t bstride, int32_t *out)
{
    switch (mr * 16 + nb) {
        I8D_CASES(I8D_NATIVE_CASE)
    default:
        break;
    }
}
static I8D_ATTR_EMUL void FN(i8d_tile_any_emul)(int mr, int nb, const uint8_t *a, int64_t lda,
                                                 int64_t ng, const int8_t *w, int64_t bstride,
                                                 int32_t *out)
#else
KERNEL void FN(i8d_tile_any_emul)(int mr, int nb, const uint8_t *a, int64_t lda, int64_t ng,
                                  const int8_t *w, int64_t bstride, int32_t *out)
#endif
{
    switch (mr * 16 + nb) {
        I8D_CASES(I8D_EMUL_CASE)
    default:
        break;
    }
}

INLINE void FN(i8d_tile_any)(int native, int mr, int nb, const uint8_t *a, int64_t lda,
                             int64_t ng, const int8_t *w, int64_t bstride, int32_t *out)
{
#if ISA > 0
    if (native) {
        FN(i8d_tile_any_native)(mr, nb, a, lda, ng, w, bstride, out);
        return;
    }
#else
    (void)native;
#endif
    FN(i8d_tile_any_emul)(mr, nb, a, lda, ng, w, bstride, out);
}

/* ---- AMX (tdpbusd: u8 x s8, 64 products of 4 summed into each int32, no saturation: the
 * same int32 sums as vpdpbusd): amx.template.c's amx_block_i8, on the pack's q (a group
 * row of 4 V bytes per gate, 4 V 4 = 256 bytes apart). The rows of u are padded with zero
 * bytes to a multiple of 64 (lda), so the B rows beyond the segment's groups (h's groups,
 * the next block's, or the pack's zero tail pad I8D_QPAD) multiply zeros. */
#if ISA == 2
#define I8D_ZBUF (AMX_ROWS * 4 * V > MAXACC * V ? AMX_ROWS * 4 * V : MAXACC * V)
#else
#define I8D_ZBUF (MAXACC * V)
#endif

/* One step for rows 0..B-1 (quantized: ux, uh, rows ldx and ldh bytes apart, scales sx,
 * sh), hidden blocks j0..j1; native 0: the emulation, 1: vpdpbusd, 2: AMX (tiles of 16
 * rows: ux and uh readable up to row 16 ceil(B/16), zero bytes from KX to ldx and from KH
 * to ldh, both multiples of 64); zout: the products z themselves into zout [B][4H] instead
 * of the cell (tests) */
KERNEL void FN(i8d_step)(const FN(fwd_cell_args) *ca, int64_t B, int64_t j0, int64_t j1,
                         const FN(i8d_hdr) *hdr, const uint8_t *ux, int64_t ldx,
                         const uint8_t *uh, int64_t ldh, const float *sx, const float *sh,
                         int rev, int native, float *zout)
{
    int32_t dx[I8D_ZBUF] __attribute__((aligned(64)));
    int32_t dh[I8D_ZBUF] __attribute__((aligned(64)));
    float z[I8D_ZBUF] __attribute__((aligned(64)));
    const unsigned char *base = (const unsigned char *)hdr;
    const int8_t *q = (const int8_t *)(base + hdr->off_q);
    const int32_t *cih = (const int32_t *)(base + hdr->off_cih);
    const int32_t *chh = (const int32_t *)(base + hdr->off_chh);
    const float *sih = (const float *)(base + hdr->off_sih);
    const float *shh = (const float *)(base + hdr->off_shh);
    const int64_t KX = hdr->KX, KH = hdr->KH, bstride = (KX + KH) * 4 * V;
#if ISA == 2
    const int amx = native == 2, TR = amx ? AMX_ROWS : FR;
#else
    const int amx = 0, TR = FR;
#endif
    int64_t jstep = B == 1 && !amx ? NB1 : 1, ntile = (j1 - j0 + jstep - 1) / jstep;
    for (int64_t it = 0; it < ntile; it++) {
        int64_t j = j0 + (rev ? ntile - 1 - it : it) * jstep;
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        const int8_t *wj = q + j * bstride;
        for (int64_t r0 = 0; r0 < B; r0 += TR) {
            int mr = B - r0 < TR ? (int)(B - r0) : TR;
#if ISA == 2
            if (amx) {
                FN(amx_block_i8)(mr, ux + r0 * ldx, ldx, ldx / 4, wj, dx);
                FN(amx_block_i8)(mr, uh + r0 * ldh, ldh, ldh / 4, wj + KX * 4 * V, dh);
            } else
#endif
            {
                FN(i8d_tile_any)(native, mr, nb, ux + r0 * ldx, ldx, KX / 4, wj, bstride, dx);
                FN(i8d_tile_any)(native, mr, nb, uh + r0 * ldh, ldh, KH / 4, wj + KX * 4 * V,
                                 bstride, dh);
            }
            for (int r = 0; r < mr; r++) {
                vec vsx = vset1(sx[r0 + r]), vsh = vset1(sh[r0 + r]);
                for (int qq = 0; qq < nb * 4; qq++) {
                    int64_t at = (j * 4 + qq) * V, o = (r * nb * 4 + qq) * V;
                    ivec ix = *(const ivec *)(dx + o) - *(const ivec *)(cih + at);
                    ivec ih = *(const ivec *)(dh + o) - *(const ivec *)(chh + at);
                    vec fx = __builtin_convertvector(ix, vec);
                    vec fh = __builtin_convertvector(ih, vec);
                    vec zx = (vsx * vload(sih + at)) * fx;
                    vec zh = (vsh * vload(shh + at)) * fh;
                    vstore(z + o, zx + zh);
                }
            }
            if (zout) {
                int64_t H = hdr->H;
                for (int r = 0; r < mr; r++)
                    for (int qq = 0; qq < nb * 4; qq++) {
                        int64_t off = (j + qq / 4) * V;
                        int nl = H - off < V ? (int)(H - off) : V;
                        if (nl > 0)
                            vstore_n(zout + (r0 + r) * 4 * H + (qq % 4) * H + off,
                                     vload(z + (r * nb * 4 + qq) * V), nl);
                    }
            } else {
                for (int r = 0; r < mr; r += FR)   /* the cell takes up to FR rows */
                    FN(fwd_cell)(ca, mr - r < FR ? mr - r : FR, nb, r0 + r, j,
                                 z + r * nb * 4 * V);
            }
        }
    }
}

typedef struct {
    int64_t T, B, I, H;
    const FN(i8d_hdr) *hdr;
    const int64_t *offs;
    const float *x, *h0, *c0;
    float *y, *h_n, *c_n;
    uint8_t *uxall;        /* [N][ldx]: every row of x quantized (before the steps) */
    float *sxall;          /* [N] their scales */
    unsigned char *ws;     /* the threads' parts (h's rows), per_thread bytes apart */
    int64_t per_thread;
    int64_t ldx, ldh;      /* bytes from one row of u to the next: KX, KH; AMX: K64 of them */
    int native;            /* 0 the emulation, 1 vpdpbusd, 2 AMX */
} FN(i8d_ctx);

/* the workspace: offsets, x's rows quantized (N + 16 rows of up to K64(KX) bytes: AMX's
 * tiles read up to 15 rows on; N scales), then per thread one step's rows of x and of h
 * (16 ceil(B/16) rows of up to K64(KX), K64(KH) bytes) and their scales; N <= T B */
static int64_t FN(i8d_x_bytes)(int64_t T, int64_t B, int64_t I)
{
    return ALIGN64((T * B + 16) * I8D_K64((I + 3) / 4 * 4)) + ALIGN64(T * B * 4);
}

/* one thread's part: u_x, u_h, s_x, s_h (offsets in bytes) */
static int64_t FN(i8d_thread_off)(int64_t B, int64_t I, int64_t H, int what)
{
    int64_t R = I8D_R16(B), ux = ALIGN64(R * I8D_K64((I + 3) / 4 * 4));
    int64_t uh = ALIGN64(R * I8D_K64((H + 3) / 4 * 4)), sc = ALIGN64(R * 4);
    return what == 0 ? 0 : what == 1 ? ux : what == 2 ? ux + uh : what == 3 ? ux + uh + sc
                                                                : ux + uh + 2 * sc;
}

static int64_t FN(i8d_thread_bytes)(int64_t B, int64_t I, int64_t H)
{
    return FN(i8d_thread_off)(B, I, H, 4);
}

KERNEL void FN(i8d_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(i8d_ctx) *ctx = (const FN(i8d_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H;
    const int64_t *offs = ctx->offs;
    const FN(i8d_hdr) *hdr = ctx->hdr;
    const unsigned char *base = (const unsigned char *)hdr;
    int64_t KX = hdr->KX, KH = hdr->KH;
    int64_t nblk = (H + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, num_threads), j1 = FN(split)(nblk, tid + 1, num_threads);
    /* h's rows shared (AMX, several threads: each quantizes a share of the rows, then a
     * barrier; thread 0's part holds them) or each thread's own (all the rows) */
    const int shared = ctx->native == 2 && num_threads > 1;
    unsigned char *mine = ctx->ws + (shared ? 0 : tid) * ctx->per_thread;
    uint8_t *uh = mine + FN(i8d_thread_off)(B, I, H, 1);
    float *sh = (float *)(mine + FN(i8d_thread_off)(B, I, H, 3));
    const int64_t ldx = ctx->ldx, ldh = ctx->ldh;
    if (ctx->native == 2 && (!shared || tid == 0))   /* AMX: h's rows padded with zeros
                                                        (qrow writes up to KH) */
        memset(uh, 0, (size_t)(I8D_R16(B) * ldh));
    if (ctx->c_n != ctx->c0) {   /* the running c starts as c0 (this thread's units) */
        int64_t u0 = j0 * V, u1 = j1 * V < H ? j1 * V : H;
        for (int64_t r = 0; r < B && u0 < u1; r++)
            memcpy(ctx->c_n + r * H + u0, ctx->c0 + r * H + u0, (size_t)(u1 - u0) * sizeof(float));
    }
    {   /* x's rows quantized once, split over the threads (each row by one thread: the same
           bits whatever the split) */
        int64_t N = offs[T], n0 = FN(split)(N, tid, num_threads);
        int64_t n1 = FN(split)(N, tid + 1, num_threads);
        for (int64_t r = n0; r < n1; r++) {
            ctx->sxall[r] = FN(i8d_qrow)(ctx->x + r * I, I, ctx->uxall + r * ldx, KX);
            if (ldx > KX)
                memset(ctx->uxall + r * ldx + KX, 0, (size_t)(ldx - KX));
        }
        if (tid == 0 && ctx->native == 2)   /* the rows AMX's last tiles read past N */
            memset(ctx->uxall + N * ldx, 0, (size_t)(16 * ldx));
        if (num_threads > 1)
            lstm_barrier_wait(bar, num_threads);
    }
    FN(fwd_cell_args) ca = {0};
    ca.H = H;
    ca.pre = (const float *)(base + hdr->off_b);   /* the bias alone */
    ca.pre_ld = 0;
    ca.cprev = ca.c = ctx->c_n;
#if ISA == 2
    if (ctx->native == 2 && j0 < j1)
        FN(amx_begin)();
#endif
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        const float *hp = t ? ctx->y + offs[t - 1] * H : ctx->h0;
        ca.h = ctx->y + offs[t] * H;
        if (shared) {   /* this thread's share of the rows, then all of them */
            int64_t q0 = FN(split)(n, tid, num_threads), q1 = FN(split)(n, tid + 1, num_threads);
            for (int64_t r = q0; r < q1; r++)
                sh[r] = FN(i8d_qrow)(hp + r * H, H, uh + r * ldh, KH);
            lstm_barrier_wait(bar, num_threads);
        }
        if (j0 < j1) {
            for (int64_t r = 0; r < n && !shared; r++)
                sh[r] = FN(i8d_qrow)(hp + r * H, H, uh + r * ldh, KH);
            FN(i8d_step)(&ca, n, j0, j1, hdr, ctx->uxall + offs[t] * ldx, ldx, uh, ldh,
                         ctx->sxall + offs[t], sh, (int)(t & 1), ctx->native, NULL);
        }
        lstm_barrier_wait(bar, num_threads);
    }
#if ISA == 2
    if (ctx->native == 2 && j0 < j1)
        FN(amx_end)();
#endif
    if (tid == 0)   /* h_n: each sequence's last y (c_n is the running state) */
        FN(last_rows)(offs, T, B, H, ctx->h0, ctx->y, ctx->h_n);
}

static size_t FN(i8d_ws_size)(int64_t T, int64_t B, int64_t I, int64_t H, int num_threads)
{
    int nt = num_threads < 1 ? 1 : num_threads;
    return (size_t)(FN(offs_bytes)(T) + FN(i8d_x_bytes)(T, B, I) +
                    nt * FN(i8d_thread_bytes)(B, I, H)) + 64;
}

static int FN(i8d_forward)(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                           const int64_t *batch_sizes, const float *x, const float *h0,
                           const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                           int num_threads, int native)
{
    const FN(i8d_hdr) *hdr = (const FN(i8d_hdr) *)FN(align_ptr)((void *)packed);
    if (hdr->magic != I8D_MAGIC || hdr->level != ISA || hdr->elem_size != 1 || hdr->I != I ||
        hdr->H != H)
        return LSTM_ERR_PACKED;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    if (num_threads < 1)
        num_threads = 1;
    unsigned char *xq = wsb + FN(offs_bytes)(T);
    int64_t KX = hdr->KX, KH = hdr->KH;
    int amx = ISA == 2 && native == 2;
    FN(i8d_ctx) ctx = {T, B, I, H, hdr, offs, x, h0, c0, y, h_n, c_n, xq,
                       (float *)(xq + ALIGN64((T * B + 16) * I8D_K64(KX))),
                       xq + FN(i8d_x_bytes)(T, B, I), FN(i8d_thread_bytes)(B, I, H),
                       amx ? I8D_K64(KX) : KX, amx ? I8D_K64(KH) : KH, native};
    lstm_pool_run(FN(i8d_job), &ctx, num_threads);
    return LSTM_OK;
}

/* z [B][4H]: one step's products (no bias, no cell) of rows x [B][I], h [B][H], one
 * thread; workspace of i8d_ws_size(1, B, I, H, 1) (tests: the oracle's exact z) */
KERNEL int FN(i8d_products)(int64_t B, int64_t I, int64_t H, const void *packed, const float *x,
                              const float *h, float *zout, void *workspace, int native)
{
    const FN(i8d_hdr) *hdr = (const FN(i8d_hdr) *)FN(align_ptr)((void *)packed);
    if (hdr->magic != I8D_MAGIC || hdr->level != ISA || hdr->I != I || hdr->H != H)
        return LSTM_ERR_PACKED;
    unsigned char *mine = FN(align_ptr)(workspace) + FN(offs_bytes)(1) + FN(i8d_x_bytes)(1, B, I);
    int64_t KX = hdr->KX, KH = hdr->KH;
    int amx = ISA == 2 && native == 2;
    int64_t ldx = amx ? I8D_K64(KX) : KX, ldh = amx ? I8D_K64(KH) : KH;
    uint8_t *ux = mine, *uh = mine + FN(i8d_thread_off)(B, I, H, 1);
    float *sx = (float *)(mine + FN(i8d_thread_off)(B, I, H, 2));
    float *sh = (float *)(mine + FN(i8d_thread_off)(B, I, H, 3));
    if (amx) {   /* zero padding (see i8d_step) */
        memset(ux, 0, (size_t)(I8D_R16(B) * ldx));
        memset(uh, 0, (size_t)(I8D_R16(B) * ldh));
    }
    for (int64_t r = 0; r < B; r++) {
        sx[r] = FN(i8d_qrow)(x + r * I, I, ux + r * ldx, KX);
        sh[r] = FN(i8d_qrow)(h + r * H, H, uh + r * ldh, KH);
    }
#if ISA == 2
    if (amx)
        FN(amx_begin)();
#endif
    FN(i8d_step)(NULL, B, 0, (H + V - 1) / V, hdr, ux, ldx, uh, ldh, sx, sh, 0, native, zout);
#if ISA == 2
    if (amx)
        FN(amx_end)();
#endif
    return LSTM_OK;
}

#undef I8D_NATIVE_CASE
#undef I8D_EMUL_CASE
#undef I8D_CASES_NB4
#undef I8D_CASES_FR6
#undef I8D_CASES
#undef I8D_ATTR_NATIVE
#undef I8D_ATTR_EMUL
#undef I8D_ZBUF
#undef I8D_LOAD
#undef I8D_SET1
#undef I8D_ZERO
#undef I8D_STORE
#undef I8D_DOT_NATIVE
#undef I8D_ADD
#undef I8D_MADD
#undef I8D_SLLI16
#undef I8D_SRAI16
