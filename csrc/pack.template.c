/* pack.template.c: the packed-weights layout and lstm_pack. Included by
 * lstm.template.c after cell.template.c.
 *
 * The weights are packed once per weight version (the caller keeps the buffer)
 * into the layouts the kernels stream through: GEMM panels for the
 * whole-sequence products and step-tile blocks for the recurrent ones. The
 * buffer records the SIMD level it was built for (the layout depends on V and
 * NR), so a pack made at one level is refused (LSTM_ERR_PACKED) by another. */

/* Whether dx is computed step by step: the n rows of step t+1, out [n,I] =
 * dg . w_ih (bwd_rows with wih_b), in step t, while dg is still in cache;
 * otherwise one GEMM after the loop (wih). Only without a projection and for
 * I > 16: measured on the AMD Zen 5 (f32, 1 thread, CPU time of the backward,
 * GEMM / steps): (32,64,256,256) 21.1/20.0 ms, (32,16,64,64) .327/.312 ms; but
 * (6,32,3,32) 26.4/27.7 us: with I = 3 a tile of V columns is mostly padding,
 * where the GEMM's narrow tile has twice the rows. With B >= 32 rows sharing
 * them, the steps hide the streaming of w_hh and w_ih from L3: on the Intel Xeon
 * (L2 2 MiB, f32, 1 thread, backward ms, steps / GEMM) (50,64,512,512)
 * 178.4/185.0, (128,64,512,512) 458/483. Below that, only when
 *   - B >= MR: a step reads all of w_ih for its B rows, the GEMM once per MR rows
 *     (its register tile); with fewer rows the steps read w_ih from L2 more often
 *     per row than the GEMM, and at B = 1 a step is a matrix-vector product
 *     bound by L2 bandwidth. Intel Xeon (f32, 1 thread, backward ms, steps /
 *     GEMM): (32,1,256,256) 1.78/.89, (32,4,256,256) 2.87/2.01, (32,8,256,256)
 *     5.02/4.05, (32,1,128,128) .243/.189, (32,1,64,64) .057/.047;
 *   - and w_hh and w_ih, which a step reads, fit in half the L2 (the rest holds
 *     the step's rows of dgates, gates, c, dy, as the GEMM's B block takes half
 *     of it, gemm_nc): at exactly the L2's size they are evicted each step:
 *     (32,12,256,256) 6.49/5.85, (32,16,256,256) 8.45/7.90; earlier
 *     (35,20,650,650) 73.8/68.1, (200,16,640,320) 121.5/112.5, (200,16,80,320)
 *     50.3/48.8 (w_hh and w_ih beyond the L2).
 * Not in the steps, dx is one product over all N rows after the loop: the GEMM
 * (wih) where w_ih and w_hh exceed the L2, else the steps' tiles (bwd_rows with
 * wih_b) over all rows, which read w_ih once per row tile as the GEMM does and
 * need no second packed copy of w_ih (measured alike: (32,1,256,256) .93 vs .88,
 * (32,8,256,256) 4.16 vs 4.39, (32,16,256,256) 8.77 vs 9.01 ms; the extra copy
 * made pack 11% slower at (256,256)). Depends on the shape (B, I, H, P) and the
 * CPU only, never on T or the thread count. */
static int FN(dx_steps_possible)(int64_t I, int64_t P) { return !P && I > 16; }

static int FN(dx_fits_l2)(int64_t I, int64_t H)
{
    return (I + H) * 4 * H * (int64_t)sizeof(TYPE) <= lstm_cpu()->l2 / 2;
}

/* Whether w_ih is packed as GEMM panels for dx (wih): only where its column
 * blocks (wih_b) would not fit the L2 next to w_hh; otherwise dx is computed as
 * the steps' tiles, in the steps or over all rows after the loop. */
static int FN(dx_gemm)(int64_t I, int64_t H, int64_t P)
{
    return !FN(dx_steps_possible)(I, P) ||
           (I + H) * 4 * H * (int64_t)sizeof(TYPE) > lstm_cpu()->l2;
}

static int FN(bwd_dx_in_steps)(int64_t B, int64_t I, int64_t H, int64_t P)
{
    return FN(dx_steps_possible)(I, P) && (B >= 32 || (B >= MR && FN(dx_fits_l2)(I, H)));
}

/* The block of W units (hidden units, or output columns in the backward) that carries at
 * most V/2 of them: the last one, if so and the ISA has half vectors (AVX-512), else nblk
 * (none). The forward step packs it in gate pairs (pack_pair_block, fwd_tile_pair); the
 * backward's tiles and the GEMM's last panel run it on half vectors. */
static inline int64_t FN(half_block)(int64_t W)
{
    int64_t nblk = (W + V - 1) / V;
    return ISA == 2 && W - (nblk - 1) * V <= V / 2 ? nblk - 1 : nblk;
}

/* ---- packed weights ----------------------------------------------------------
 * R = P with a projection, else H: the width of h. header, then (64-byte aligned):
 *   wih_t  [ceil(4H/NR)][I][NR]   B = w_ih^T for gates = x.w_ih^T
 *   wih    [ceil(I/NR)][4H][NR]   B = w_ih   for dx = dgates.w_ih (a GEMM; only if
 *                                 dx_gemm)
 *   whh_f  [ceil(H/V)][I+R][4][V] forward step: i,f,g,o of V units together;
 *                                 the block's first I rows hold w_ih^T, for
 *                                 steps that do x_t.w_ih^T themselves (fwd_fuse_x);
 *                                 AVX-512: a last block of at most V/2 units
 *                                 as [i f | g o | 0 0] in half vectors
 *                                 (pack_pair_block, fwd_tile_pair)
 *   whh_b  [ceil(R/V)][4H][V]     backward step: dh = dgates.w_hh
 *   wih_b  [ceil(I/V)][4H][V]     backward step: dx = dgates.w_ih (only if
 *                                 bwd_dx_in_steps can say yes)
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

#define PACK_MAGIC 0x4c53544eu   /* 0x4c53544d before the paired last block */
#define ALIGN64(n) (((n) + 63) & ~(int64_t)63)

static void FN(packed_layout)(int64_t I, int64_t H, int64_t P, FN(packed_hdr) *h)
{
    int64_t R = P ? P : H, s = (int64_t)sizeof(TYPE);
    int dx_steps = FN(dx_steps_possible)(I, P), dx_gemm = FN(dx_gemm)(I, H, P);
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
    off = ALIGN64(off + (dx_gemm ? (I + NR - 1) / NR * 4 * H * NR * s : 0));
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

/* dst rows kk = 0..V-1 (dstride apart) = element kk of the V rows src + l*ld, l < nl
 * (rows l >= nl give zeros): a V x V transpose in registers, log2(V) stages of
 * two-source shuffles, each swapping the off-diagonal h x h blocks of every 2h x 2h
 * block (h = V/2, ..., 1). The pack's transposes were scalar loops (an element per
 * instruction or two): 4.5 ms to pack (650, 650) into a reused buffer. */
INLINE void FN(transpose_tile)(const TYPE *src, int64_t ld, int nl, TYPE *dst, int64_t dstride)
{
    vec r[V];
    if (nl == V) {
#pragma GCC unroll 16
        for (int l = 0; l < V; l++)
            r[l] = vload(src + l * ld);
    } else {
#pragma GCC unroll 16
        for (int l = 0; l < V; l++)
            r[l] = l < nl ? vload(src + l * ld) : (vec){0};
    }
#pragma GCC unroll 4
    for (int h = V / 2; h >= 1; h /= 2) {
        ivec lo, hi;
#pragma GCC unroll 16
        for (int c = 0; c < V; c++) {
            lo[c] = (c & h) ? V + c - h : c;
            hi[c] = (c & h) ? V + c : c + h;
        }
#pragma GCC unroll 16
        for (int i = 0; i < V; i++)
            if (!(i & h)) {
                vec a = r[i], b = r[i + h];
                r[i] = __builtin_shuffle(a, b, lo);
                r[i + h] = __builtin_shuffle(a, b, hi);
            }
    }
#pragma GCC unroll 16
    for (int k = 0; k < V; k++)
        vstore(dst + k * dstride, r[k]);
}

/* dst[k*dstride + l] = src[l*ld + k] for k < K, l < V (0 for l >= nl): the K x nl matrix
 * whose columns are the nl rows at src, as K rows of V lanes. */
KERNEL void FN(pack_transposed)(int64_t K, const TYPE *src, int64_t ld, int nl, TYPE *dst,
                                int64_t dstride)
{
    int64_t k = 0;
    if (nl == V)   /* (a separate loop: the full tile's loads unconditional) */
        for (; k + V <= K; k += V)
            FN(transpose_tile)(src + k, ld, V, dst + k * dstride, dstride);
    else if (nl > 0)
        for (; k + V <= K; k += V)
            FN(transpose_tile)(src + k, ld, nl, dst + k * dstride, dstride);
    for (; k < K; k++)
        for (int l = 0; l < V; l++)
            dst[k * dstride + l] = l < nl ? src[l * ld + k] : 0;
}

/* dst[0..w) = src[0..n), zeros after (n may be <= 0); w a multiple of V */
INLINE void FN(copy_pad)(TYPE *dst, const TYPE *src, int64_t n, const int w)
{
#pragma GCC unroll 4
    for (int o = 0; o < w; o += V) {
        int64_t m = n - o;
        vstore(dst + o, m >= V ? vload(src + o) : m > 0 ? vload_n(src + o, (int)m) : (vec){0});
    }
}

/* dst [ceil(N/NR)][K][NR] = panels of the K x N matrix (k, n) -> src[k*sk + n*sn], with
 * sn == 1 (rows of src are the k's) or sk == 1 (rows of src are the n's). The loops follow
 * src's contiguous direction: with sn == 1 one row at a time across all panels, else
 * V x V tiles transposed in registers. A panel-at-a-time walk over a row-major src
 * re-reads the whole matrix once per panel at a stride of a row, which missed the caches
 * and the TLB for every line once the matrix outgrew the L2: w_ih of (650, 650) took 12
 * ms to pack that way. */
KERNEL void FN(pack_panels)(int64_t K, int64_t N, const TYPE *src, int64_t sk, int64_t sn,
                            TYPE *dst)
{
    int64_t np = (N + NR - 1) / NR;
    if (sn == 1) {
        for (int64_t k = 0; k < K; k++)
            for (int64_t p = 0; p < np; p++)
                FN(copy_pad)(dst + (p * K + k) * NR, src + k * sk + p * NR, N - p * NR, NR);
        return;
    }
    for (int64_t p = 0; p < np; p++)
        for (int h = 0; h < NR / V; h++) {
            int64_t col = p * NR + h * V, nl = N - col < V ? N - col : V;
            FN(pack_transposed)(K, src + (nl > 0 ? col * sn : 0), sn, (int)(nl > 0 ? nl : 0),
                                dst + p * K * NR + h * V, NR);
        }
}

/* dst [ceil(C/V)][rows][V] = blocks of V columns of the row-major rows x C matrix src
 * (zero past C); row by row, for the same reason as pack_panels. */
KERNEL void FN(pack_col_blocks)(int64_t rows, int64_t C, const TYPE *src, TYPE *dst)
{
    int64_t nb = (C + V - 1) / V;
    for (int64_t k = 0; k < rows; k++)
        for (int64_t j = 0; j < nb; j++)
            FN(copy_pad)(dst + (j * rows + k) * V, src + k * C + j * V, C - j * V, V);
}

#if ISA == 2
/* whh_f's last block, if at most V/2 of its units are live (half_block): each k row
 * [i | f | g | o] (V lanes each, the upper halves 0) rearranged into half vectors
 * [i f | g o | 0 0] for fwd_tile_pair. */
KERNEL void FN(pack_pair_block)(int64_t H, int64_t KF, TYPE *whh_f)
{
    int64_t j = FN(half_block)(H);
    if (j == (H + V - 1) / V)
        return;
    for (int64_t k = 0; k < KF; k++) {
        TYPE *row = whh_f + (j * KF + k) * 4 * V;
        hvec g[4];
        for (int q = 0; q < 4; q++)
            g[q] = hload(row + q * V);
        for (int q = 0; q < 4; q++) {
            hstore(row + q * V / 2, g[q]);
            hstore(row + 2 * V + q * V / 2, (hvec){0});
        }
    }
}
#endif

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
    int64_t KF = I + R;
    int dx_steps = FN(dx_steps_possible)(I, P);
    if (FN(dx_gemm)(I, H, P))
        FN(pack_panels)(G, I, w_ih, I, 1, (TYPE *)(base + h->off_wih));
    for (int64_t j = 0; j < (H + V - 1) / V; j++) {   /* [j][k][g][l] = [w_ih | w_hh][g*H + jV + l][k] */
        int nl = H - j * V < V ? (int)(H - j * V) : V;
        for (int g = 0; g < 4; g++) {
            int64_t row = g * H + j * V;
            FN(pack_transposed)(I, w_ih + row * I, I, nl, whh_f + (j * KF * 4 + g) * V, 4 * V);
            FN(pack_transposed)(R, w_hh + row * R, R, nl, whh_f + ((j * KF + I) * 4 + g) * V,
                                4 * V);
        }
    }
#if ISA == 2
    FN(pack_pair_block)(H, KF, whh_f);
#endif
    FN(pack_col_blocks)(G, R, w_hh, whh_b);
    if (dx_steps)
        FN(pack_col_blocks)(G, I, w_ih, (TYPE *)(base + h->off_wih_b));
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

