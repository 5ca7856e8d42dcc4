/* int8.template.c: int8 weights for inference (forward and streaming), float32 inputs,
 * outputs and state: weight-only quantization, the weights widened back to float32 in
 * registers. Included by lstm.template.c for TYPE float only, after bf16.template.c;
 * uses the step plan (step_plan_for), the float32 tile (fwd_tile_any) and the cell
 * (fwd_cell) of the float32 kernel unchanged.
 * The job's loop and its step's walk of the tiles (row tiles, K in chunks, alternate
 * sweep) are written out here as in fwd_job/fwd_step and bf_step: the loops are alike but
 * what runs inside them is not (here x's and h's sums apart, each scaled, over two
 * segments; the prefetch of the next chunk in fwd_step; three tile paths on rounded pairs
 * in bf_step); a shared walk would put a callback (an indirect call or a macro body) in
 * the innermost loop of the B = 1 streaming step, the case these weights are for. Sharing
 * only the job's start and end (c0 into c_n, h_n from y, the cell's arguments) with the
 * float32 kernel was tried: benchmarks/bench_int8.py, 1 thread, Intel Xeon family 6 model
 * 167, medians of 2-3 alternated runs, the (32, 64, 256, 256) forward 15.7-16.2 ms before
 * and 16.6-18.1 after for bfloat16, 14.8-15.7 and 15.9-16.9 for int8 (B = 1 stream
 * unchanged); within the runs' noise but all after-runs slower, so it was left as it was.
 *
 * Arithmetic, exactly (every SIMD level gives the same pre-activation bits):
 *   - weights, at pack time, per output row n of the 4H gate rows and separately for
 *     w_ih and w_hh (per-output-channel symmetric scales): a = max_k |w[n,k]|,
 *     s[n] = a / 127 (float32 division), q[n,k] = rint(w[n,k] / s[n]) (float32
 *     division, round to nearest even) clamped to [-127, 127], an int8; s[n] = 0 and
 *     q = 0 for a row of zeros; a NaN quotient (a NaN or infinite weight) gives q = 0.
 *     The bias stays float32 (b_ih + b_hh as in the float32 kernel).
 *   - per step, for each row r and gate row n, two sums over the float32 inputs as
 *     they are (x_t and h_{t-1} are not quantized):
 *         ax = sum_k x[k] q_ih[n,k],  k = 0, 1, ..., I-1
 *         ah = sum_k h[k] q_hh[n,k],  k = 0, 1, ..., H-1
 *     each from acc = +0 by acc = fma(x[k], (float)q[k], acc): a float32 fused
 *     multiply-add, rounded to nearest even (denormals kept: MXCSR is not touched).
 *     AVX2 and AVX-512 widen 4 x V int8 weights per k to float32 in registers (a
 *     sign extension and an int -> float conversion, both exact) and issue vfmadd; the
 *     portable level has no FMA instruction and computes each lane's FMA exactly (correctly
 *     rounded, i8_fma_exact: the same bits, slowly; x q has 32 significant bits, so a
 *     plain float64 sum could round twice).
 *   - then the products of the gate row: z = fl(fl(s_ih[n] ax) + fl(s_hh[n] ah)) (two
 *     float32 products and an add, no FMA: -ffp-contract=off), and the float32 cell of
 *     the float32 kernel: pre = z + b, the activations, c_t = f c_{t-1} + i g (fused),
 *     h_t = o tanh(c_t). The cell's exp and reciprocal differ between the SIMD levels
 *     in the last bits as in the float32 kernel, so outputs are bitwise identical
 *     across levels only where the cell is the same code.
 * Why weight-only (and not x, h quantized per step for vpdpbusd): it keeps the float32
 * inputs exact, so the only error is the weights' rounding (half a step of s per weight,
 * 2^-8 of the row's largest |w|), every level gives the same bits, and at B = 1 (the case
 * int8 is for: the step re-reads all weights) the time is the weights' bytes, a quarter of
 * float32's; widening costs 2 uops per 16 weights there, below the memory time. Measured
 * on the Intel Xeon (family 6 model 167), Stream.step at B = 1 (benchmarks/bench_int8.py):
 * H = 512 3.05x float32 on 1 thread, 4.4x on 2; H = 1024 3.4x and 3.5x. At large batches (compute
 * bound) it runs at the float32 FMA rate (forward (32, 64, 256, 256): 0.9-1.0x); there the
 * vpdpbusd register tile (option b) did the step's products 2.67x faster than the float32
 * tile, 2.56x with quantizing x, h and dequantizing (benchmarks/int8_tile_micro.c): the
 * way to the large-batch gain, built as weight_dtype "int8_dynamic" (int8d.template.c;
 * an explicit choice, never by batch size: it adds x's and h's rounding). Widening in registers for many rows was 15 %
 * slower than the float32 copy (608 vs 529 us per step there), hence the copy. Figures
 * and commands: benchmarks/README.md ("int8 weights").
 * No projection, nothing saved for backward (inference only).
 *
 * Packed layout (header, then 64-byte aligned):
 *   q    [ceil(H/V)][K][4][V] int8    K = I + H rows (x, then h) of one block's 4 gates:
 *                                     the float32 kernel's whh_f layout, a byte per weight
 *   s_ih [ceil(H/V)][4][V] float      the scales of each gate row (0 in the padding)
 *   s_hh [ceil(H/V)][4][V] float
 *   b    [4H] float                   b_ih + b_hh (zeros without a bias)
 *   wide [ceil(H/V)][K][4][V] float   (float)q, at the AVX2 and AVX-512 levels: with several
 *                                     row tiles (B > FR, compute bound) a step runs the
 *                                     float32 kernel's tile on it, the same FMAs without
 *                                     the widening's two uops per weight vector and use
 *                                     (costs 4 bytes per weight more in the pack). */

#ifndef LSTM_I8_SCALAR
#define LSTM_I8_SCALAR
#define I8_MAGIC 0x4c534938u
/* |f| (no libm: the kernel links none) */
static inline float i8_abs(float f) { return f < 0 ? -f : f; }

/* the scale of a row of n weights (stride 1): max |w| / 127 (NaN skipped) */
static float i8_scale(const float *w, int64_t n)
{
    float a = 0;
    for (int64_t k = 0; k < n; k++) {
        float m = i8_abs(w[k]);
        a = m > a ? m : a;
    }
    return a / 127.0f;
}

/* rint(w / s) clamped to [-127, 127]; NaN -> 0; s = 0 -> 0 */
static int8_t i8_quant(float w, float s)
{
    if (s == 0)
        return 0;
    volatile float big = 12582912.0f;   /* 1.5 * 2^23: v + big - big rounds to nearest even */
    float v = w / s;
    if (v != v)
        return 0;
    if (i8_abs(v) < 8388608.0f)
        v = (v + big) - big;
    return (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
}

/* fl(a*b + c) rounded once, without an FMA instruction: a*b is exact in double (a float
 * times an int8: 32 bits), the double sum is rounded to odd (its exact error by TwoSum
 * moves it to the odd neighbour), then to float: rounding to odd with 53 >= 24 + 2 bits
 * first gives the correctly rounded result (Boldo and Melquiond, 2008). */
static inline float i8_fma_exact(float a, float b, float c)
{
    double p = (double)a * (double)b, cd = (double)c, s = p + cd;
    double bb = s - p, e = (p - (s - bb)) + (cd - bb);
    if (e != 0 && e == e && i8_abs((float)s) < __builtin_inff()) {
        uint64_t u;
        memcpy(&u, &s, 8);
        if (!(u & 1)) {
            u += (e > 0) == (s > 0) ? 1 : (uint64_t)-1;
            memcpy(&s, &u, 8);
        }
    }
    return (float)s;
}
#endif

typedef struct {
    uint32_t magic;
    int32_t level, elem_size, has_bias;   /* elem_size 1: an int8 pack */
    int64_t I, H, K, off_q, off_sih, off_shh, off_b, off_wide, total;
} FN(i8_hdr);

static void FN(i8_layout)(int64_t I, int64_t H, FN(i8_hdr) *h)
{
    int64_t nblk = (H + V - 1) / V;
    h->magic = I8_MAGIC;
    h->level = ISA;
    h->elem_size = 1;
    h->I = I;
    h->H = H;
    h->K = I + H;
    int64_t off = ALIGN64((int64_t)sizeof(FN(i8_hdr)));
    h->off_q = off;
    off = ALIGN64(off + nblk * h->K * 4 * V);
    h->off_sih = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_shh = off;
    off = ALIGN64(off + nblk * 4 * V * 4);
    h->off_b = off;
    off = ALIGN64(off + 4 * H * 4);
    h->off_wide = off;
    off = ALIGN64(off + (ISA > 0 ? nblk * h->K * 4 * V * 4 : 0));
    h->total = off;
}

static size_t FN(i8_packed_size)(int64_t I, int64_t H)
{
    FN(i8_hdr) h;
    FN(i8_layout)(I, H, &h);
    return (size_t)h.total + 64;
}

static int FN(i8_pack)(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                       const float *b, void *packed)
{
    unsigned char *base = FN(align_ptr)(packed);
    FN(i8_hdr) *h = (FN(i8_hdr) *)base;
    FN(i8_layout)(I, H, h);
    h->has_bias = b != NULL;
    int64_t K = h->K, nblk = (H + V - 1) / V;
    int8_t *q = (int8_t *)(base + h->off_q);
    float *sih = (float *)(base + h->off_sih), *shh = (float *)(base + h->off_shh);
    float *wide = (float *)(base + h->off_wide), *bb = (float *)(base + h->off_b);
    for (int64_t j = 0; j < nblk; j++)
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < V; l++) {
                int64_t u = j * V + l, n = g * H + u;
                float si = u < H ? i8_scale(w_ih + n * I, I) : 0;
                float sh = u < H ? i8_scale(w_hh + n * H, H) : 0;
                sih[(j * 4 + g) * V + l] = si;
                shh[(j * 4 + g) * V + l] = sh;
                for (int64_t k = 0; k < K; k++) {
                    int8_t v = u >= H ? 0 : k < I ? i8_quant(w_ih[n * I + k], si)
                                                  : i8_quant(w_hh[n * H + k - I], sh);
                    int64_t at = ((j * K + k) * 4 + g) * V + l;
                    q[at] = v;
                    if (ISA > 0)
                        wide[at] = (float)v;
                }
            }
    for (int64_t k = 0; k < 4 * H; k++)
        bb[k] = b ? b[k] : 0;
    return LSTM_OK;
}

/* c + a*b rounded once (see the top) */
INLINE vec FN(i8_fma)(vec a, vec b, vec c)
{
#if ISA == 0
    vec r;
    for (int l = 0; l < V; l++)
        r[l] = i8_fma_exact(a[l], b[l], c[l]);
    return r;
#else
    return vfma(a, b, c);
#endif
}

/* V int8 at p as floats (exact): a sign extension and a conversion (GCC's
 * __builtin_convertvector goes through scalars here) */
INLINE vec FN(i8_widen)(const int8_t *p)
{
#if ISA == 2
    return (vec)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif ISA == 1
    return (vec)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    vec r;
    for (int l = 0; l < V; l++)
        r[l] = (float)p[l];
    return r;
#endif
}

/* acc [mr][nb][4][V] += rows k0..k1 of src (mr rows, ld apart) . the int8 weights of nb
 * blocks (w: row 0 of the segment in the first block, blocks bstride bytes apart),
 * widened in registers: per k the nb*4 weight vectors, then one broadcast per row. */
INLINE void FN(i8_tile)(const int mr, const int nb, int64_t k0, int64_t k1,
                        const float *restrict src, int64_t ld, const int8_t *restrict w,
                        int64_t bstride, float *restrict acc_mem)
{
    vec acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        acc[q] = k0 ? vload(acc_mem + q * V) : (vec){0};
    for (int64_t k = k0; k < k1; k++) {
        const int8_t *wk = w + k * 4 * V;
        vec wv[16];
#pragma GCC unroll 16
        for (int q = 0; q < nb * 4; q++)
            wv[q] = FN(i8_widen)(wk + (q / 4) * bstride + (q % 4) * V);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            vec a = vset1(src[r * ld + k]);
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++)
                acc[r * nb * 4 + q] = FN(i8_fma)(a, wv[q], acc[r * nb * 4 + q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        vstore(acc_mem + q * V, acc[q]);
}

#define I8_CASE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV):                                                                \
        FN(i8_tile)(MRV, NBV, k0, k1, src, ld, w, bstride, acc_mem);                        \
        break;

/* i8_tile for run-time mr <= FR (nb = 1) or mr = 1, nb <= NB1 */
KERNEL void FN(i8_tile_any)(int mr, int nb, int64_t k0, int64_t k1, const float *src,
                            int64_t ld, const int8_t *w, int64_t bstride, float *acc_mem)
{
    switch (mr * 16 + nb) {
        I8_CASE(1, 1)
        I8_CASE(1, 2)
        I8_CASE(2, 1)
#if NB1 >= 4
        I8_CASE(1, 3)
        I8_CASE(1, 4)
#endif
#if FR >= 3
        I8_CASE(3, 1)
#endif
#if FR >= 6
        I8_CASE(4, 1)
        I8_CASE(5, 1)
        I8_CASE(6, 1)
#endif
    default:
        break;
    }
}

/* z = s_ih ax + s_hh ah for a tile's [mr][nb][4][V] sums (into ah), block j first */
INLINE void FN(i8_scale_tile)(int mr, int nb, int64_t j, const float *sih, const float *shh,
                              const float *ax, float *ah)
{
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < nb * 4; q++) {
            const float *si = sih + (j * 4 + q) * V, *sh = shh + (j * 4 + q) * V;
            float *z = ah + (r * nb * 4 + q) * V;
            vec u = vload(si) * vload(ax + (r * nb * 4 + q) * V);
            vstore(z, u + vload(sh) * vload(z));
        }
}

/* One step for rows 0..B-1, hidden blocks j0..j1: the tiles' walk of fwd_step (row tiles,
 * K in chunks where the weights exceed the L2, alternate sweep direction), x's rows and
 * h's rows as two segments with their own sums. wide: the float32 copy (several row
 * tiles), else the int8 weights widened in registers. */
KERNEL void FN(i8_step)(const FN(fwd_cell_args) *ca, int64_t B, int64_t I, int64_t H,
                        int64_t j0, int64_t j1, const FN(i8_hdr) *hdr, int use_wide,
                        const float *xt, const float *hp, int rev, const FN(step_plan) *sp)
{
    float part_x[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    float part_h[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    const unsigned char *base = (const unsigned char *)hdr;
    const int8_t *q = (const int8_t *)(base + hdr->off_q);
    const float *wide = (const float *)(base + hdr->off_wide);
    const float *sih = (const float *)(base + hdr->off_sih);
    const float *shh = (const float *)(base + hdr->off_shh);
    const int64_t K = I + H, bstride = K * 4 * V;
    int64_t jstep = B == 1 ? NB1 : 1, ntile = (j1 - j0 + jstep - 1) / jstep;
    for (int64_t it = 0; it < ntile; it++) {
        int64_t j = j0 + (rev ? ntile - 1 - it : it) * jstep;
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t g0 = 0; g0 < B; g0 += sp->rows) {
            int64_t n = B - g0 < sp->rows ? B - g0 : sp->rows, nt = (n + FR - 1) / FR;
            int64_t kc = nt > 1 && sp->kc < K ? sp->kc : K;
            for (int seg = 0; seg < 2; seg++) {
                int64_t s0 = seg ? I : 0, s1 = seg ? K : I;
                float *part = seg ? part_h : part_x;
                if (s0 == s1)   /* I = 0: no x products */
                    memset(part, 0, (size_t)n * nb * 4 * V * sizeof(float));
                for (int64_t k0 = s0; k0 < s1; k0 += kc) {
                    int64_t k1 = s1 - k0 < kc ? s1 : k0 + kc;
                    for (int64_t t = 0; t < nt; t++) {
                        int64_t r0 = g0 + n * t / nt, r1 = g0 + n * (t + 1) / nt;
                        float *pt = part + (r0 - g0) * nb * 4 * V;
                        if (use_wide) {
                            /* the float32 tile on [x | h] (x I wide), rows k0..k1 of one
                             * segment; it starts from acc_mem unless k0 = 0: h's sums
                             * start from zeros stored there */
                            if (k0 == s0 && k0 > 0)
                                memset(pt, 0, (size_t)(r1 - r0) * nb * 4 * V * sizeof(float));
                            FN(fwd_tile_any)((int)(r1 - r0), nb, k0, k1, I, xt + r0 * I, I,
                                             hp + r0 * H, H, wide + j * bstride, bstride, pt,
                                             NULL, 0, 0);
                        } else {
                            FN(i8_tile_any)((int)(r1 - r0), nb, k0 - s0, k1 - s0,
                                            seg ? hp + r0 * H : xt + r0 * I, seg ? H : I,
                                            q + j * bstride + s0 * 4 * V, bstride, pt);
                        }
                        if (seg && k1 == s1) {
                            float *px = part_x + (r0 - g0) * nb * 4 * V;
                            FN(i8_scale_tile)((int)(r1 - r0), nb, j, sih, shh, px, pt);
                            FN(fwd_cell)(ca, (int)(r1 - r0), nb, r0, j, pt);
                        }
                    }
                }
            }
        }
    }
}

typedef struct {
    int64_t T, B, I, H;
    const FN(i8_hdr) *hdr;
    const int64_t *offs;
    const float *x, *h0, *c0;
    float *y, *h_n, *c_n;
} FN(i8_ctx);

KERNEL void FN(i8_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(i8_ctx) *ctx = (const FN(i8_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, K = I + H;
    const int64_t *offs = ctx->offs;
    const FN(i8_hdr) *hdr = ctx->hdr;
    const unsigned char *base = (const unsigned char *)hdr;
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
    const FN(step_plan) sp = FN(step_plan_for)((j1 - j0) * K * 4 * V, 4 * V);
    const FN(step_plan) spw = FN(step_plan_for)((j1 - j0) * K * 4 * V * 4, 4 * V * 4);
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        const float *hp = t ? ctx->y + offs[t - 1] * H : ctx->h0;
        ca.h = ctx->y + offs[t] * H;
        /* several row tiles (compute bound): the widened weights, no integer ops per use */
        int wide = ISA > 0 && n > FR;
        if (j0 < j1)
            FN(i8_step)(&ca, n, I, H, j0, j1, hdr, wide, ctx->x + offs[t] * I, hp, (int)(t & 1),
                        wide ? &spw : &sp);
        lstm_barrier_wait(bar, num_threads);
    }
    if (tid == 0)   /* h_n: each sequence's last y (c_n is the running state) */
        FN(last_rows)(offs, T, B, H, ctx->h0, ctx->y, ctx->h_n);
}

static size_t FN(i8_ws_size)(int64_t T, int64_t B, int64_t I, int64_t H, int num_threads)
{
    (void)B;
    (void)I;
    (void)H;
    (void)num_threads;
    return (size_t)FN(offs_bytes)(T) + 64;
}

static int FN(i8_forward)(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                          const int64_t *batch_sizes, const float *x, const float *h0,
                          const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                          int num_threads)
{
    const FN(i8_hdr) *hdr = (const FN(i8_hdr) *)FN(align_ptr)((void *)packed);
    if (hdr->magic != I8_MAGIC || hdr->level != ISA || hdr->elem_size != 1 || hdr->I != I ||
        hdr->H != H)
        return LSTM_ERR_PACKED;
    int64_t *offs = (int64_t *)FN(align_ptr)(workspace);
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    FN(i8_ctx) ctx = {T, B, I, H, hdr, offs, x, h0, c0, y, h_n, c_n};
    lstm_pool_run(FN(i8_job), &ctx, num_threads < 1 ? 1 : num_threads);
    return LSTM_OK;
}

#undef I8_CASE
