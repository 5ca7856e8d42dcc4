/* lstm.template.c: the LSTM forward and backward of one layer and direction,
 * written once over the element type and the instruction set. lstm.c includes
 * this file once per (TYPE, ISA); it includes the layers below it:
 *   simd.template.h    vector layer, activations, register-tile sizes
 *   gemm.template.c    packed GEMM (the whole-sequence products)
 *   cell.template.c    fwd_cell, bwd_cell: the only gate math
 *   pack.template.c    packed-weights layout and pack
 *   bf16.template.c    bfloat16 weights for inference (float only), at the end
 *   int8.template.c    int8 weights for inference (float only), after it
 *   int8d.template.c   int8 weights, x and h quantized per step (vpdpbusd), after it
 * and undefines every template macro at its end.
 *
 * Forward: [w_ih | w_hh] are packed so that one register tile computes the i,
 *   f, g, o columns of the same V hidden units ([block][k][gate][V]). fwd_tile
 *   accumulates h_{t-1}.w_hh^T for rows x blocks in registers (and x_t.w_ih^T
 *   too where fwd_fuse_x says so; otherwise one GEMM over all rows did that
 *   before the loop), then fwd_cell adds the rest of the pre-activation,
 *   activates, updates c and h and stores them. fwd_step is one step over a
 *   range of hidden blocks, fwd_job what a thread does for the whole call.
 *   Without gates and c (inference, save = 0) nothing is kept for backward:
 *   the running cell state lives in c_n, and the hoisted x.w_ih^T + b (if that
 *   path is taken) in the workspace.
 * Backward: dh = dgates_{t+1}.w_hh (w_hh packed [block][k][V]) as register
 *   tiles (bwd_tile) fused with the gate gradients of step t for the same units
 *   (bwd_cell), and, where bwd_dx_in_steps says so, dx of step t+1 =
 *   dgates_{t+1}.w_ih as the same kind of tile (bwd_rows); [dw_ih | dw_hh] (one
 *   product over [x | h_prev]), and otherwise dx, are whole-sequence GEMMs after
 *   the loop; db is summed by the cells.
 * Lengths: one code path for padded and variable-length batches: the kernels
 *   see packed step-major rows and per-step row offsets (offs[t] =
 *   sum(batch_sizes[:t]); NULL sizes = B per step); sizes never increase, so
 *   step t's n rows read h and c of t-1 from the first n rows of step t-1, with
 *   no copies. dw_hh's h_{t-1} rows are mapped through offs in pack_b.
 * Projection (P > 0): forward, the cell writes m = o*tanh(c) to scratch, then
 *   y_t = m.w_hr^T is a GEMM per step (a second barrier); backward, dh (P wide)
 *   per step, dm = dh.w_hr as a GEMM, then the cell; dw_hr = dh_all^T.m_all
 *   after the loop. Not fused into the step tiles: their widths differ (P vs H).
 * Threads: hidden blocks for the steps (a barrier per step), output tiles for
 *   the GEMMs. Each output element is computed by the same operations whatever
 *   the thread count or tiling (one cell function, FP contraction off, explicit
 *   FMAs), so results are bitwise identical for any thread count, and a
 *   sequence run in chunks gives the bits of one call: every rule that changes
 *   the order of operations (fwd_fuse_x, bwd_dx_in_steps) depends on the shape
 *   (B, I, P) only, never on T or the thread count. */

#include "simd.template.h"
#include "gemm.template.c"
#include "cell.template.c"
#include "pack.template.c"

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
    TYPE *y, *h_n, *c_n;
    TYPE *gates, *c;         /* [N,4H], [N,H]; both NULL: nothing saved (inference) */
    TYPE *xw;                /* [N,4H] hoisted x.w_ih^T + b when gates is NULL, else NULL */
    TYPE *m;                 /* [B,H] unprojected h of the step (projection only) */
    TYPE *ws;
    const lstm_variant *var; /* the variants, or NULL (plain) */
} FN(fwd_ctx);

/* The variant fields of a cell's arguments from v (NULL: plain, var 0). */
#define SET_CELL_VARIANT(ca, v)                                                              \
    do {                                                                                     \
        if (v && ((v)->peephole || (v)->clip > 0 || (v)->cell_clip > 0 || (v)->cifg)) {     \
            (ca).var = 1;                                                                    \
            (ca).peep = (const TYPE *)(v)->peephole;                                         \
            (ca).clip = (TYPE)(v)->clip;                                                     \
            (ca).cell_clip = (TYPE)(v)->cell_clip;                                           \
            (ca).cifg = (v)->cifg;                                                           \
        }                                                                                    \
    } while (0)

/* Prefetch row k of the packed step weights at pf (4 vectors) into L2. */
INLINE void FN(prefetch_row)(const TYPE *pf, int64_t k)
{
#pragma GCC unroll 4
    for (int l = 0; l < 4 * VBYTES / 64; l++)
        __builtin_prefetch((const char *)(pf + k * 4 * V) + 64 * l, 0, 2);
}

/* acc [mr][nb][4][V] += src[rows] . (K rows of the packed whh_f from w), rows ld apart;
 * meanwhile rows 0, pfstep, 2 pfstep, ... below npf at pf are prefetched. */
INLINE void FN(fwd_tile_add)(const int mr, const int nb, int64_t K, const TYPE *restrict src,
                             int64_t ld, const TYPE *restrict w, int64_t bstride, vec *acc,
                             const int PF, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    int64_t pfc = 0;
    for (int64_t k = 0; k < K; k++) {
        const TYPE *wk = w + k * 4 * V;
        if (PF && k < npf && --pfc <= 0) {
            FN(prefetch_row)(pf, k);
            pfc = pfstep;
        }
#pragma GCC unroll 24
        for (int r = 0; r < mr; r++) {
            vec a = vset1(src[r * ld + k]);
#pragma GCC unroll 16
            for (int q = 0; q < nb * 4; q++)
                acc[r * nb * 4 + q] = vfma(a, vload(wk + (q / 4) * bstride + (q % 4) * V),
                                           acc[r * nb * 4 + q]);
        }
    }
}

/* The forward register tile: acc [mr][nb][4][V] += rows k0..k1 of [x_t | h_{t-1}]
 * (XF + R columns: x_t [.,I] only if XF = I, then h_prev [.,R]) . the matching rows
 * of nb packed whh_f blocks (w: row 0 of [x | h] in the first block, blocks
 * bstride apart). acc starts at 0 when k0 == 0, else at the values the previous
 * chunk stored in acc_mem; it is stored there at the end. Storing and reloading
 * a partial sum does not change it, so any chunking gives the bits of one pass.
 * Meanwhile the first npf rows at pf (what the next chunk will read) are
 * prefetched. */
INLINE void FN(fwd_tile)(const int mr, const int nb, int64_t k0, int64_t k1, int64_t XF,
                         const TYPE *restrict xp, int64_t I, const TYPE *restrict hp, int64_t R,
                         const TYPE *restrict w, int64_t bstride, TYPE *restrict acc_mem,
                         const int PF, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    vec acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        acc[q] = k0 ? vload(acc_mem + q * V) : (vec){0};
    int64_t kx = k1 < XF ? k1 : XF, kh = k0 > XF ? k0 : XF;
    if (k0 < kx)
        FN(fwd_tile_add)(mr, nb, kx - k0, xp + k0, I, w + k0 * 4 * V, bstride, acc, PF, pf,
                         npf, pfstep);
    if (kh < k1)
        FN(fwd_tile_add)(mr, nb, k1 - kh, hp + kh - XF, R, w + kh * 4 * V, bstride, acc, PF,
                         pf + (kh - k0) * 4 * V, npf - (kh - k0), pfstep);
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb * 4; q++)
        vstore(acc_mem + q * V, acc[q]);
}

#define FWD_TILE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV):                                                                 \
        if (pf)                                                                              \
            FN(fwd_tile)(MRV, NBV, k0, k1, XF, xp, I, hp, R, w, bstride, acc_mem, 1, pf, npf,  \
                         pfstep);                                                            \
        else                                                                                 \
            FN(fwd_tile)(MRV, NBV, k0, k1, XF, xp, I, hp, R, w, bstride, acc_mem, 0, pf, 0, 0); \
        break;

/* fwd_tile for run-time mr <= FR (nb = 1) or mr = 1, nb <= NB1 */
KERNEL void FN(fwd_tile_any)(int mr, int nb, int64_t k0, int64_t k1, int64_t XF,
                             const TYPE *xp, int64_t I, const TYPE *hp, int64_t R,
                             const TYPE *w, int64_t bstride, TYPE *acc_mem, const TYPE *pf,
                             int64_t npf, int64_t pfstep)
{
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
}

/* How a step walks its tiles; any choice gives the same bits. While the weights a
 * thread reads in a step fit in its L2, every row tile streams its block from L2
 * (the row tiles of B = 20: 5+5+5+5, not 6+6+6+2). Beyond that they come from
 * L3 every step, and a block is walked in chunks of kc rows instead, every row
 * tile of a group of up to `rows` rows per chunk (their partial sums [rows][4][V]
 * kept in L1), so that each weight is read from L3 once per step and reused from
 * L1; meanwhile the row tiles prefetch the next chunk, spread over all of them.
 * Sizes from the running CPU's caches (cpu.h). */
#define STEP_ROWS_MAX 64
typedef struct {
    int64_t rows, kc;
    int prefetch;
} FN(step_plan);

/* Rows g0..g1 of the next group after row g0 of n rows: up to sp->rows rows when the
 * step walks K in chunks, else one row tile (tiles of near-equal size). */
static inline int64_t FN(group_end)(const FN(step_plan) *sp, int64_t g0, int64_t n, int tr)
{
    if (sp->kc != INT64_MAX)
        return n - g0 < sp->rows ? n : g0 + sp->rows;
    int64_t nt = (n + tr - 1) / tr, t = g0 * nt / n;   /* g0 = n*t/nt exactly */
    while (n * t / nt < g0)
        t++;
    return n * (t + 1) / nt;
}

/* wbytes: the weights a thread reads per step; line: bytes of one k row of a tile's
 * weights (4 gates x V, or BNB blocks x V in the backward). */
static FN(step_plan) FN(step_plan_for)(int64_t wbytes, int64_t line)
{
    const lstm_cpu_info *cpu = lstm_cpu();
    FN(step_plan) sp = {STEP_ROWS_MAX, INT64_MAX, 0};
    if (wbytes <= cpu->l2)
        return sp;
    sp.rows = cpu->l1d / 4 / line;
    sp.rows = sp.rows < FR ? FR : sp.rows > STEP_ROWS_MAX ? STEP_ROWS_MAX : sp.rows;
    sp.kc = cpu->l1d / 2 / line;
    sp.kc = sp.kc < 16 ? 16 : sp.kc & ~(int64_t)7;
    sp.prefetch = 1;
    return sp;
}

/* One step for rows 0..B-1 (the active ones), hidden blocks j0..j1: x_t [B,I],
 * h_prev [B,R]; the cell's arguments say where the pre-activation comes from
 * and where gates, c_t and h (o*tanh(c_t): h_t, or m before the projection)
 * go. rev sweeps the blocks last to first (odd steps): blocks are independent, so
 * the values do not change, but each step then starts on the weights the
 * previous one used last, which are still in cache when the weights are about
 * the cache's size. */
KERNEL void FN(fwd_step)(const FN(fwd_cell_args) *ca, int64_t B, int64_t I, int64_t R,
                         int64_t j0, int64_t j1, const TYPE *w, int64_t XF, const TYPE *xt,
                         const TYPE *hp, int rev, const FN(step_plan) *sp)
{
    TYPE part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    const int64_t K = XF + R, bstride = (I + R) * 4 * V;
    const TYPE *w0 = w + (I - XF) * 4 * V;   /* row 0 of [x | h] in block 0 */
    int64_t jstep = B == 1 ? NB1 : 1, ntile = (j1 - j0 + jstep - 1) / jstep;
    for (int64_t it = 0; it < ntile; it++) {
        int64_t j = j0 + (rev ? ntile - 1 - it : it) * jstep;
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t g0 = 0; g0 < B; g0 += sp->rows) {
            int64_t n = B - g0 < sp->rows ? B - g0 : sp->rows, nt = (n + FR - 1) / FR;
            int64_t kc = nt > 1 && sp->kc < K ? sp->kc : K;
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
                int64_t k1 = K - k0 < kc ? K : k0 + kc;
                /* what the next chunk reads: the rest of this block, else (nb = 1) the
                 * next block's first chunk, unless this was the step's last block */
                const TYPE *pf = NULL;
                int64_t npf = 0;
                if (!sp->prefetch) {
                } else if (k1 < K) {
                    pf = w0 + j * bstride + k1 * 4 * V;
                    npf = K - k1 < kc ? K - k1 : kc;
                } else if (nb == 1 && it + 1 < ntile && g0 + sp->rows >= B) {
                    pf = w0 + (j0 + (rev ? ntile - 2 - it : it + 1)) * bstride;
                    npf = K < kc ? K : kc;
                }
                for (int64_t t = 0; t < nt; t++) {
                    int64_t r0 = g0 + n * t / nt, r1 = g0 + n * (t + 1) / nt;
                    TYPE *pt = kc < K ? part + (r0 - g0) * nb * 4 * V : part;
                    FN(fwd_tile_any)((int)(r1 - r0), nb, k0, k1, XF, xt + r0 * I, I, hp + r0 * R,
                                     R, w0 + j * bstride, bstride, pt,
                                     pf && npf > t ? pf + t * 4 * V : NULL, npf - t, nt);
                    if (k1 == K)
                        FN(fwd_cell)(ca, (int)(r1 - r0), nb, r0, j, pt);
                }
            }
        }
    }
}

/* Whether the steps do x_t.w_ih^T themselves, in the same register tile as
 * h.w_hh^T (1), or one GEMM over all T*B rows does it before the loop (0).
 * Fusing saves writing and re-reading 4H pre-activations per row, and with a
 * tiny I the hoisted GEMM is nothing but that traffic; the hoisted GEMM reads
 * w_ih once for all rows, the fused step once per step (and per row tile where
 * the weights stay in L2). Measured on the AMD Zen 5 (f32, 1 thread, ms,
 * hoisted/fused): (6,32,3,32) .0153/.0130; (32,16,64,64) .173/.165;
 * (128,64,64,64) 3.41/2.95; (32,64,256,256) 10.9/9.45; (32,1,64,64) .018/.026;
 * (32,1,256,256) .28/.50; (32,8,256,256) 1.26/1.44. On the Intel Xeon (L2 2 MiB)
 * hoisting where [w_ih | w_hh] exceeds half the L2 at 16 <= B < 32 (the steps
 * then stream it from L3) did not pay either, with the chunked steps of
 * fwd_step: ms fused/hoisted, forward without saving / training step:
 * (35,20,200,200) 3.07/3.10, 11.75/11.77; (35,20,650,650) 31.8/33.1,
 * 119.2/120.6; (200,16,80,320) 22.6/26.4, 83.5/84.6; (200,16,640,320)
 * 57.8/57.5, 197.0/195.8. But where w_ih and w_hh together exceed the L2 while
 * w_hh alone fits in 3/4 of it, the fused steps stream [w_ih | w_hh] from L3 every
 * step where the hoisted ones keep w_hh in L2: on the AMD Zen 4 (L2 1 MiB; f32, eval
 * forward of the layer, ms fused/hoisted, two runs) (35,20,200,200) x2 10.10/8.95,
 * 9.18/8.98 on 1 thread, 4.69/4.78 on 2 (each thread's half fits: alike); the training
 * step's forward 4.82/4.73, 4.85/4.62; where w_hh does not fit either, fused stays
 * ahead: (35,20,650,650) x2 90.9/96.6, (200,16,80,320) 32.4/40.4, (100,32,16,128)
 * 4.96/5.31; (32,64,256,256), w_hh = the L2: 20.6/21.0. The rule reads the L2 of the
 * running CPU (the Intel Xeon's 2 MiB: fused at (35,20,200,200), as measured above).
 * Depends on the shape and the CPU only (not T or threads): a streamed step gives the
 * same bits as a whole-sequence call. */
static int FN(fwd_fuse_x)(int64_t B, int64_t I, int64_t H)
{
    if (I <= 16)
        return 1;
    if (B < 16)
        return 0;
    const int64_t l2 = lstm_cpu()->l2, whh = 4 * H * H * (int64_t)sizeof(TYPE);
    return !((I + H) * 4 * H * (int64_t)sizeof(TYPE) > l2 && 4 * whh <= 3 * l2);
}

/* out [B,W], row r: the row of sequence r's last step in all [N,W] (its last step is the
 * last t with batch_sizes[t] > r), or init's row r for a sequence of no steps; out may be
 * init. h_n and c_n of every forward (float32, bf16, int8 weights). */
static void FN(last_rows)(const int64_t *offs, int64_t T, int64_t B, int64_t W,
                          const TYPE *init, const TYPE *all, TYPE *out)
{
    int64_t n0 = T ? offs[1] : 0;
    if (out != init)
        memcpy(out + n0 * W, init + n0 * W, (size_t)((B - n0) * W) * sizeof(TYPE));
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
        memcpy(out + nn * W, all + (offs[t] + nn) * W, (size_t)((n - nn) * W) * sizeof(TYPE));
    }
}

KERNEL void FN(fwd_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(fwd_ctx) *ctx = (const FN(fwd_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, P = ctx->P, G = 4 * H;
    int64_t R = P ? P : H;
    const int64_t *offs = ctx->offs;
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    int save = ctx->gates != NULL;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(0);
    TYPE *pre = save ? ctx->gates : ctx->xw;   /* hoisted pre-activations, [N,4H] */
    int64_t nblk = (H + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, num_threads), j1 = FN(split)(nblk, tid + 1, num_threads);
    if (!save && ctx->c_n != ctx->c0) {   /* the running c starts as c0 (this thread's units) */
        int64_t u0 = j0 * V, u1 = j1 * V < H ? j1 * V : H;
        for (int64_t r = 0; r < B && u0 < u1; r++)
            memcpy(ctx->c_n + r * H + u0, ctx->c0 + r * H + u0, (size_t)(u1 - u0) * sizeof(TYPE));
    }
    int64_t XF = FN(fwd_fuse_x)(B, I, H) ? I : 0;
    if (!XF) {
        FN(gemm_args) g = {0};
        g.M = offs[T];
        g.N = G;
        g.K = I;
        g.a = ctx->x;
        g.lda = I;
        g.bpacked = (const TYPE *)(base + ctx->hdr->off_wih_t);
        g.bias = ctx->hdr->has_bias ? (const TYPE *)(base + ctx->hdr->off_b) : NULL;
        g.c = pre;
        g.ldc = G;
        FN(gemm)(&g, ws, tid, num_threads);
        lstm_barrier_wait(bar, num_threads);
    }
    FN(gemm_args) gp = {0};   /* projection: y_t = m . w_hr^T */
    gp.N = P;
    gp.K = H;
    gp.a = ctx->m;
    gp.lda = H;
    gp.bpacked = (const TYPE *)(base + ctx->hdr->off_whr_t);
    gp.ldc = P;
    FN(fwd_cell_args) ca = {0};
    ca.H = H;
    ca.pre = XF ? (const TYPE *)(base + ctx->hdr->off_b) : NULL;   /* the bias alone */
    ca.pre_ld = XF ? 0 : G;
    SET_CELL_VARIANT(ca, ctx->var);
    const TYPE *rdrop = ctx->var ? (const TYPE *)ctx->var->rdrop : NULL;
    TYPE *hm = rdrop ? (TYPE *)FN(align_ptr)(ctx->var->var_ws) + tid * B * R : NULL;
    const TYPE *zmask = ctx->var ? (const TYPE *)ctx->var->zoneout : NULL;
    if (zmask)
        ca.var = 1;
    const TYPE *w = (const TYPE *)(base + ctx->hdr->off_whh_f);
    const int64_t s = (int64_t)sizeof(TYPE);
    const FN(step_plan) sp = FN(step_plan_for)((j1 - j0) * (XF + R) * 4 * V * s, 4 * V * s);
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        const TYPE *hp = t ? ctx->y + offs[t - 1] * R : ctx->h0;
        if (zmask) {
            ca.zm = zmask + offs[t] * H;
            ca.hprev = hp;
        }
        if (hm) {   /* recurrent dropout: this thread's copy of h_{t-1} * mask (n*R
                       multiplies per thread and step, no barrier) */
            for (int64_t e = 0; e < n * R; e++)
                hm[e] = hp[e] * rdrop[e];
            hp = hm;
        }
        TYPE *yt = ctx->y + offs[t] * R;
        if (!XF)
            ca.pre = pre + offs[t] * G;
        if (save) {
            ca.gates = ctx->gates + offs[t] * G;
            ca.cprev = t ? ctx->c + offs[t - 1] * H : ctx->c0;
            ca.c = ctx->c + offs[t] * H;
        } else {
            ca.cprev = ca.c = ctx->c_n;
        }
        ca.h = P ? ctx->m : yt;
        FN(fwd_step)(&ca, n, I, R, j0, j1, w, XF, ctx->x + offs[t] * I, hp, (int)(t & 1), &sp);
        lstm_barrier_wait(bar, num_threads);
        if (P) {
            gp.M = n;
            gp.c = yt;
            FN(gemm)(&gp, ws, tid, num_threads);
            lstm_barrier_wait(bar, num_threads);
        }
    }
    if (tid == 0) {   /* with nothing saved, c_n already holds every sequence's last c */
        FN(last_rows)(offs, T, B, R, ctx->h0, ctx->y, ctx->h_n);
        if (save)
            FN(last_rows)(offs, T, B, H, ctx->c0, ctx->c, ctx->c_n);
    }
}

/* Workspace: step offsets, m (projection), the hoisted pre-activations when
 * nothing is saved and the input product is hoisted, per-thread GEMM buffers. */
static int64_t FN(offs_bytes)(int64_t T) { return ALIGN64((T + 1) * (int64_t)sizeof(int64_t)); }

static int64_t FN(fwd_xw_bytes)(int64_t T, int64_t B, int64_t I, int64_t H, int save)
{
    return save || FN(fwd_fuse_x)(B, I, H) ? 0 : ALIGN64(T * B * 4 * H * (int64_t)sizeof(TYPE));
}

static size_t FN(fwd_ws_size)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              int num_threads, int save)
{
    return (size_t)(FN(offs_bytes)(T) + (P ? ALIGN64(B * H * (int64_t)sizeof(TYPE)) : 0) +
                    FN(fwd_xw_bytes)(T, B, I, H, save)) +
           (size_t)num_threads * (size_t)FN(gemm_ws_elems)(0) * sizeof(TYPE) + 64;
}

/* The layer-normalized LSTM (lnorm.template.c, included after the backward, whose
 * pieces it reuses): forward and backward take this path when variant->layer_norm is set. */
static int FN(ln_forward)(int64_t T, int64_t B, int64_t I, int64_t H,
                          const FN(packed_hdr) *hdr, const int64_t *batch_sizes, const TYPE *x,
                          const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,
                          TYPE *gates, TYPE *c, void *workspace, int num_threads,
                          const lstm_variant *var);
static int FN(ln_backward)(int64_t T, int64_t B, int64_t I, int64_t H,
                           const FN(packed_hdr) *hdr, const int64_t *batch_sizes, const TYPE *x,
                           const TYPE *h0, const TYPE *c0, const TYPE *y, const TYPE *gates,
                           const TYPE *c, const TYPE *dy, const TYPE *dh_n, const TYPE *dc_n,
                           TYPE *dx, TYPE *dw_ih, TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0,
                           void *workspace, int num_threads, const lstm_variant *var,
                           TYPE *dpeep);

static int FN(forward)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                       const void *packed, const int64_t *batch_sizes, const TYPE *x,
                       const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,
                       TYPE *gates, TYPE *c, void *workspace, int num_threads,
                       const lstm_variant *var)
{
    const FN(packed_hdr) *hdr = FN(check_packed)(packed, I, H, P);
    if (!hdr)
        return LSTM_ERR_PACKED;
    if ((gates == NULL) != (c == NULL))
        return LSTM_ERR_ARG;
    if (var && var->layer_norm)
        return P ? LSTM_ERR_ARG
                 : FN(ln_forward)(T, B, I, H, hdr, batch_sizes, x, h0, c0, y, h_n, c_n, gates, c,
                                  workspace, num_threads < 1 ? 1 : num_threads, var);
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    wsb += FN(offs_bytes)(T);
    TYPE *m = NULL, *xw = NULL;
    if (P) {
        m = (TYPE *)wsb;
        wsb += ALIGN64(B * H * (int64_t)sizeof(TYPE));
    }
    if (FN(fwd_xw_bytes)(T, B, I, H, gates != NULL)) {
        xw = (TYPE *)wsb;
        wsb += FN(fwd_xw_bytes)(T, B, I, H, 0);
    }
    FN(fwd_ctx) ctx = {T, B, I, H, P, hdr, offs, x, h0, c0, y, h_n, c_n, gates, c, xw, m,
                       (TYPE *)wsb, var};
    if (num_threads < 1)
        num_threads = 1;
    lstm_pool_run(FN(fwd_job), &ctx, num_threads);
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
    const lstm_variant *var;   /* the variants, or NULL (plain) */
    TYPE *dpeep;        /* [3,H] peephole gradients (with var->peephole) */
    TYPE *dhz;          /* [B,H] zoneout: the gradient carried to h_{t-1}, or NULL */
} FN(bwd_ctx);

/* Row stride of dgates: 4H, plus a cache line when 4H elements are a multiple
 * of 512 bytes, so that MR consecutive rows do not all map to one L1 set. */
static int64_t FN(dg_ld)(int64_t H)
{
    int64_t G = 4 * H;
    return (G * (int64_t)sizeof(TYPE)) % 512 == 0 ? G + 64 / (int64_t)sizeof(TYPE) : G;
}

/* The backward register tile: acc [mr][nb][V] += dg[rows, k0..k1) . rows k0..k1 of nb
 * blocks of V output columns (w packed [block][4H][V], blocks bstride apart: whh_b
 * for dh, wih_b for dx). acc starts at 0 when k0 == 0, else at the values the
 * previous chunk stored in acc_mem, and is stored there at the end (same bits for
 * any chunking); meanwhile rows 0, pfstep, ... below npf of the nb blocks at pf are
 * prefetched. */
INLINE void FN(bwd_tile)(const int mr, const int nb, int64_t k0, int64_t k1,
                         const TYPE *restrict dg, int64_t ldg, const TYPE *restrict w,
                         int64_t bstride, TYPE *restrict acc_mem, const int PF, const TYPE *pf,
                         int64_t npf, int64_t pfstep)
{
    vec acc[MAXACC];
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        acc[q] = k0 ? vload(acc_mem + q * V) : (vec){0};
    int64_t pfc = 0;
    for (int64_t k = k0; k < k1; k++) {
        const TYPE *wk = w + k * V;
        if (PF && k - k0 < npf && --pfc <= 0) {
#pragma GCC unroll 8
            for (int q = 0; q < nb; q++)
                __builtin_prefetch(pf + q * bstride + (k - k0) * V, 0, 2);
            pfc = pfstep;
        }
#pragma GCC unroll 24
        for (int r = 0; r < mr; r++) {
            vec a = vset1(dg[r * ldg + k]);
#pragma GCC unroll 8
            for (int q = 0; q < nb; q++)
                acc[r * nb + q] = vfma(a, vload(wk + q * bstride), acc[r * nb + q]);
        }
    }
#pragma GCC unroll 24
    for (int q = 0; q < mr * nb; q++)
        vstore(acc_mem + q * V, acc[q]);
}

#define BWD_TILE(MRV, NBV)                                                                   \
    case (MRV) * 16 + (NBV):                                                                 \
        if (pf)                                                                              \
            FN(bwd_tile)(MRV, NBV, k0, k1, dg, ldg, w, bstride, acc_mem, 1, pf, npf, pfstep);  \
        else                                                                                 \
            FN(bwd_tile)(MRV, NBV, k0, k1, dg, ldg, w, bstride, acc_mem, 0, pf, 0, 0);         \
        break;

/* bwd_tile for run-time mr <= BR, nb <= BNB, or mr = 1, nb <= 2 BNB */
KERNEL void FN(bwd_tile_any)(int mr, int nb, int64_t k0, int64_t k1, const TYPE *dg,
                             int64_t ldg, const TYPE *w, int64_t bstride, TYPE *acc_mem,
                             const TYPE *pf, int64_t npf, int64_t pfstep)
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

/* part [n][nb][V] = dg [n rows, ldg apart] . the nb blocks at w (K = G rows each,
 * blocks bstride apart), n <= sp->rows, in row tiles of near-equal size and, as the
 * plan says (see step_plan), in chunks of K with the next chunk prefetched; the
 * last chunk prefetches pf_next (the next blocks' start) if set. */
KERNEL void FN(bwd_tiles)(int64_t n, int nb, int64_t G, const TYPE *dg, int64_t ldg,
                          const TYPE *w, int64_t bstride, TYPE *part, const FN(step_plan) *sp,
                          const TYPE *pf_next)
{
    int64_t nt = (n + BR - 1) / BR, kc = nt > 1 && sp->kc < G ? sp->kc : G;
    for (int64_t k0 = 0; k0 < G; k0 += kc) {
        int64_t k1 = G - k0 < kc ? G : k0 + kc, npf = 0;
        const TYPE *pf = NULL;
        if (!sp->prefetch || nt == 1) {   /* one row tile: the prefetch would double its loads */
        } else if (k1 < G) {
            pf = w + k1 * V;
            npf = G - k1 < kc ? G - k1 : kc;
        } else if (pf_next) {
            pf = pf_next;
            npf = G < kc ? G : kc;
        }
        for (int64_t t = 0; t < nt; t++) {
            int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
            FN(bwd_tile_any)((int)(r1 - r0), nb, k0, k1, dg + r0 * ldg, ldg, w, bstride,
                             part + r0 * nb * V, pf && npf > t ? pf + t * V : NULL, npf - t, nt);
        }
    }
}

/* out [n,W] = dg [n rows, ldg apart] . w for output blocks p0..p1 of W; w packed
 * [ceil(W/V)][4H][V] (whh_b: W = R, wih_b: W = I); times mul [n,W] if set (recurrent
 * dropout), then plus add [n,W] if set. */
KERNEL void FN(bwd_rows)(int64_t H, int64_t W, const TYPE *w, int64_t p0, int64_t p1,
                         const TYPE *dg, int64_t ldg, int64_t n, const TYPE *mul,
                         const TYPE *add, TYPE *out, const FN(step_plan) *sp)
{
    int64_t G = 4 * H;
    TYPE part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    int64_t jstep = n == 1 ? 2 * BNB : BNB;
    for (int64_t j = p0; j < p1; j += jstep) {
        int nb = p1 - j < jstep ? (int)(p1 - j) : (int)jstep;
        for (int64_t g0 = 0, g1; g0 < n; g0 = g1) {
            g1 = FN(group_end)(sp, g0, n, BR);
            int64_t ng = g1 - g0;
            const TYPE *pf_next = g1 == n && j + jstep < p1 ? w + (j + jstep) * G * V : NULL;
            FN(bwd_tiles)(ng, nb, G, dg + g0 * ldg, ldg, w + j * G * V, G * V, part, sp,
                          pf_next);
            for (int64_t r = 0; r < ng; r++)
                for (int jb = 0; jb < nb; jb++) {
                    int64_t off = (j + jb) * V, ro = (g0 + r) * W + off;
                    int cnt = W - off < V ? (int)(W - off) : V;
                    vec v = vload(part + (r * nb + jb) * V);
                    if (mul)
                        v = v * vload_n(mul + ro, cnt);
                    if (add)
                        v = v + vload_n(add + ro, cnt);
                    vstore_n(out + ro, v, cnt);
                }
        }
    }
}

/* dh of rows 0..n, output blocks p0..p1 of R (the width of h), into out [n,R]:
 * rows < nn get dg_next . w_hh, rows nn..n get dh_n; plus dy_t if set. */
KERNEL void FN(bwd_dh)(const FN(bwd_ctx) *ctx, int64_t p0, int64_t p1, const TYPE *dg_next,
                       int64_t nn, int64_t n, const TYPE *dy_t, TYPE *out,
                       const FN(step_plan) *sp)
{
    int64_t H = ctx->H, R = ctx->P ? ctx->P : H;
    const TYPE *wb = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    const TYPE *rdrop = ctx->var ? (const TYPE *)ctx->var->rdrop : NULL;
    FN(bwd_rows)(H, R, wb, p0, p1, dg_next, ctx->ldg, nn, rdrop, dy_t, out, sp);
    for (int64_t r = nn; r < n; r++)
        for (int64_t j = p0; j < p1; j++) {
            int64_t off = j * V, ro = r * R + off;
            int cnt = R - off < V ? (int)(R - off) : V;
            vec v = vload_n(ctx->dh_n + ro, cnt);
            if (dy_t)
                v = v + vload_n(dy_t + ro, cnt);
            vstore_n(out + ro, v, cnt);
        }
}

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

/* One backward step t without a projection, hidden blocks j0..j1, fused: rows
 * below nn (active at t+1) take dh = dgates[t+1] . w_hh from the register tile,
 * the others (whose last step is t) take dh_n. */
KERNEL void FN(bwd_step)(const FN(bwd_ctx) *ctx, int64_t t, int64_t j0, int64_t j1,
                         const FN(step_plan) *sp, const uint32_t *bf_w, uint32_t *bf_rows)
{
    int64_t T = ctx->T, H = ctx->H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t n = offs[t + 1] - offs[t], nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
    const TYPE *w = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    const TYPE *dg_next = nn ? ctx->dgates + offs[t + 1] * ldg : NULL;
    const TYPE *dy_t = ctx->dy + offs[t] * H, *gates_t = ctx->gates + offs[t] * 4 * H;
    const TYPE *c_t = ctx->c + offs[t] * H, *cprev = t ? ctx->c + offs[t - 1] * H : ctx->c0;
    TYPE *dg_t = ctx->dgates + offs[t] * ldg;
    FN(bwd_cell_args) ca = {.H = H, .dh = ctx->dh_n, .dy = dy_t, .gates = gates_t, .c = c_t,
                            .cprev = cprev, .dc = ctx->dc0, .dg = dg_t, .ldg = ldg,
                            .m = NULL, .db = ctx->db};
    SET_CELL_VARIANT(ca, ctx->var);
    ca.dpeep = ctx->dpeep;
    ca.bf16 = ctx->var && ctx->var->bf16_grads;   /* bfloat16 training */
    if (ctx->var && ctx->var->rdrop) {   /* the tile's dh is of the masked h_t */
        ca.rdrop = (const TYPE *)ctx->var->rdrop;
        ca.var = 1;
    }
    if (ctx->dhz) {   /* zoneout */
        ca.zm = (const TYPE *)ctx->var->zoneout + offs[t] * H;
        ca.dhz = ctx->dhz;
        ca.var = 1;
    }
    TYPE part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    int64_t G = 4 * H, jstep = nn == 1 ? 2 * BNB : BNB;
#if BWD_BF16
    if (bf_w && nn)   /* vdpbf16ps: the rows of dgates[t+1] as pair words (also dx's) */
        FN(bwdb_rows_words)(nn, H, dg_next, ldg, bf_rows);
#else
    (void)bf_w;
    (void)bf_rows;
#endif
    for (int64_t j = j0; j < j1; j += jstep) {
        int nb = j1 - j < jstep ? (int)(j1 - j) : (int)jstep;
        for (int64_t g0 = 0, g1; g0 < nn; g0 = g1) {
            g1 = FN(group_end)(sp, g0, nn, BR);
            int64_t ng = g1 - g0;
            const TYPE *pf_next = g1 == nn && j + jstep < j1 ? w + (j + jstep) * G * V : NULL;
#if BWD_BF16
            if (bf_w)
                FN(bwdb_tiles)(ng, nb, 2 * H, bf_rows + g0 * 2 * H, 2 * H, bf_w + j * 2 * H * V,
                               2 * H * V, part, sp);
            else
#endif
                FN(bwd_tiles)(ng, nb, G, dg_next + g0 * ldg, ldg, w + j * G * V, G * V, part,
                              sp, pf_next);
            FN(bwd_cell)(&ca, (int)ng, nb, g0, j, part);
        }
        if (nn < n)
            FN(bwd_cell)(&ca, (int)(n - nn), nb, nn, j, NULL);
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
    FN(bwd_cell_args) ca = {.H = H, .dh = ctx->dm, .dy = NULL, .gates = gates_t, .c = c_t,
                            .cprev = cprev, .dc = ctx->dc0, .dg = ctx->dgates + offs[t] * ldg,
                            .ldg = ldg, .m = ctx->m_all + offs[t] * H, .db = ctx->db};
    SET_CELL_VARIANT(ca, ctx->var);
    ca.dpeep = ctx->dpeep;
    for (int64_t j = j0; j < j1; j += BNB) {
        int nb = j1 - j < BNB ? (int)(j1 - j) : BNB;
        for (int64_t r0 = 0; r0 < n; r0 += BR) {
            int mr = n - r0 < BR ? (int)(n - r0) : BR;
            FN(bwd_cell)(&ca, mr, nb, r0, j, NULL);
        }
    }
}

KERNEL void FN(bwd_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(bwd_ctx) *ctx = (const FN(bwd_ctx) *)arg;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, P = ctx->P, G = 4 * H;
    int64_t R = P ? P : H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t N = offs[T];
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(1);
    int64_t nblk = (H + V - 1) / V, rblk = (R + V - 1) / V;
    int64_t j0 = FN(split)(nblk, tid, num_threads), j1 = FN(split)(nblk, tid + 1, num_threads);
    int64_t q0 = FN(split)(rblk, tid, num_threads), q1 = FN(split)(rblk, tid + 1, num_threads);
    /* dx NULL: the input's gradient is not wanted (the first layer of a model), skipped */
    int64_t iblk = (I + V - 1) / V, dx_steps = ctx->dx && FN(bwd_dx_in_steps)(B, I, H, P);
    const TYPE *wih_b = (const TYPE *)(base + ctx->hdr->off_wih_b);
    int64_t x0 = FN(split)(iblk, tid, num_threads), x1 = FN(split)(iblk, tid + 1, num_threads);
    const int64_t s = (int64_t)sizeof(TYPE);
    const FN(step_plan) sp = FN(step_plan_for)(
        ((P ? q1 - q0 : j1 - j0) + (dx_steps ? x1 - x0 : 0)) * G * V * s, BNB * V * s);
    /* bfloat16 training with vdpbf16ps (see bwdb_tile): this thread's pair blocks */
    const uint32_t *bf_whh = NULL;
    uint32_t *bf_rows = NULL;
#if BWD_BF16
    const uint32_t *bf_wih = NULL;
    uint32_t *bf_dw = NULL;
    if (!P && ctx->var && ctx->var->bf16_grads && ctx->var->bf16_ws &&
        bf16_native_for(ISA, B)) {
        unsigned char *bw = FN(align_ptr)(ctx->var->bf16_ws);
        uint32_t *whh = (uint32_t *)bw, *wih = (uint32_t *)(bw + bf16_ws_whh_bytes(H, H));
        FN(bwdb_pack)(H, (const float *)(base + ctx->hdr->off_whh_b), j0, j1, whh);
        if (dx_steps)
            FN(bwdb_pack)(H, wih_b, x0, x1, wih);
        bf_whh = whh;
        bf_wih = wih;
        bf_rows = (uint32_t *)(bw + bf16_ws_whh_bytes(H, H) + bf16_ws_whh_bytes(I, H) +
                               tid * bf16_ws_rows_bytes(B, H));
        bf_dw = (uint32_t *)(bw + bf16_ws_whh_bytes(H, H) + bf16_ws_whh_bytes(I, H) +
                             num_threads * bf16_ws_rows_bytes(B, H));
    }
#endif

    /* running dc starts as dc_n, db as 0; each thread owns the columns of its
     * blocks. db sums dgates as the cells write them (steps last to first, rows
     * in order), not in a pass over dgates after the loop (3% of the backward
     * at (32,64,256,256)). */
    for (int64_t j = j0; j < j1; j++) {
        int64_t off = j * V;
        int cnt = H - off < V ? (int)(H - off) : V;
        for (int64_t r = 0; r < B; r++)
            vstore_n(ctx->dc0 + r * H + off, vload_n(ctx->dc_n + r * H + off, cnt), cnt);
        for (int q = 0; q < 4; q++)
            vstore_n(ctx->db + q * H + off, (vec){0}, cnt);
        for (int q = 0; ctx->dpeep && q < 3; q++)   /* peephole gradients: as db */
            vstore_n(ctx->dpeep + q * H + off, (vec){0}, cnt);
        for (int64_t r = 0; ctx->dhz && r < B; r++)   /* zoneout's carried gradient */
            vstore_n(ctx->dhz + r * H + off, (vec){0}, cnt);
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
            FN(bwd_step)(ctx, t, j0, j1, &sp, bf_whh, bf_rows);
#if BWD_BF16
            if (bf_whh && dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])
                FN(bwdb_rows)(H, I, bf_wih, x0, x1, bf_rows, offs[t + 2] - offs[t + 1],
                              ctx->dx + offs[t + 1] * I, &sp);   /* words made by bwd_step */
            else
#endif
            if (dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])   /* dx of step t+1 */
                FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates + offs[t + 1] * ldg, ldg,
                             offs[t + 2] - offs[t + 1], NULL, NULL, ctx->dx + offs[t + 1] * I,
                             &sp);
            lstm_barrier_wait(bar, num_threads);
            continue;
        }
        int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates + offs[t + 1] * ldg, nn, n, ctx->dy + offs[t] * P,
                   ctx->dh_all + offs[t] * P, &sp);
        lstm_barrier_wait(bar, num_threads);
        gm.M = n;
        gm.a = ctx->dh_all + offs[t] * P;
        FN(gemm)(&gm, ws, tid, num_threads);
        lstm_barrier_wait(bar, num_threads);
        FN(bwd_step_proj_cell)(ctx, t, j0, j1);
        lstm_barrier_wait(bar, num_threads);
    }
#if BWD_BF16
    if (bf_whh) {   /* dh0 and dx of step 0 as the other steps' */
        int64_t n0 = T ? offs[1] : 0;
        FN(bwdb_rows_words)(n0, H, ctx->dgates, ldg, bf_rows);
        FN(bwdb_rows)(H, H, bf_whh, j0, j1, bf_rows, n0, ctx->dh0, &sp);
        for (int64_t r = n0; r < B; r++)   /* rows without a step: dh_n */
            for (int64_t j = j0; j < j1; j++) {
                int64_t off = j * V, ro = r * H + off;
                int cnt = H - off < V ? (int)(H - off) : V;
                vstore_n(ctx->dh0 + ro, vload_n(ctx->dh_n + ro, cnt), cnt);
            }
        if (dx_steps && n0)
            FN(bwdb_rows)(H, I, bf_wih, x0, x1, bf_rows, n0, ctx->dx, &sp);
    } else
#endif
    {
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates, T ? offs[1] : 0, B, ctx->dhz, ctx->dh0, &sp);
        if (dx_steps && T && offs[1])
            FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates, ldg, offs[1], NULL, NULL, ctx->dx,
                         &sp);
    }

    /* [dw_ih | dw_hh] = dgates^T . [x | h_prev]. When dgates^T is packed (a large
     * N * 4H), as one product writing both outputs, so that it is packed once
     * (measured at (32,64,256,256) f32: two products spent 14% of the backward
     * packing; one: 22.0 -> 21.1 ms); else as two products, which read it in
     * place (one product cost 26.3 -> 27.6 us at (6,32,3,32)). Either way each
     * element is the same sum in the same order. */
    const TYPE *hm_all = NULL;   /* recurrent dropout: h_prev * mask of every row */
    if (ctx->var && ctx->var->rdrop) {
        const TYPE *mask = (const TYPE *)ctx->var->rdrop;
        TYPE *hm = (TYPE *)FN(align_ptr)(ctx->var->var_ws);
        int64_t e0 = FN(split)(N, tid, num_threads), e1 = FN(split)(N, tid + 1, num_threads);
        for (int64_t t = 0, row = e0; row < e1; row++) {
            while (row >= offs[t + 1])
                t++;
            int64_t r = row - offs[t];
            const TYPE *src = t ? ctx->y + (offs[t - 1] + r) * R : ctx->h0 + r * R;
            for (int64_t k = 0; k < R; k++)
                hm[row * R + k] = src[k] * mask[r * R + k];
        }
        hm_all = hm;
        lstm_barrier_wait(bar, num_threads);
    }
#if BWD_BF16
    if (bf_dw) {   /* dw_ih, dw_hh with vdpbf16ps (dwb_product) */
        int64_t NP = (N + 1) / 2, mblk = (G + 15) / 16;
        uint32_t *ap = bf_dw, *bph = ap + mblk * NP * 16;
        uint32_t *bpx = bph + (H + 15) / 16 * NP * 16;
        int64_t a0 = FN(split)(mblk, tid, num_threads), a1 = FN(split)(mblk, tid + 1, num_threads);
        FN(dwb_rows) ra = {ctx->dgates, NULL, ldg, NULL, 0};
        for (int64_t b = a0; b < a1; b++)
            FN(dwb_pack16)(NP, N, G - b * 16 < 16 ? G - b * 16 : 16, FN(dwb_row), &ra, b * 16,
                           ap + b * NP * 16);
        FN(dwb_rows) rh = {ctx->y, ctx->h0, H, offs, 0};
        FN(dwb_rows) rx = {ctx->x, NULL, I, NULL, 0};
        int64_t hb = (H + 15) / 16, xb = (I + 15) / 16;
        int64_t b0 = FN(split)(hb + xb, tid, num_threads), b1 = FN(split)(hb + xb, tid + 1, num_threads);
        for (int64_t b = b0; b < b1; b++) {
            if (b < hb)
                FN(dwb_pack16)(NP, N, H - b * 16 < 16 ? H - b * 16 : 16, FN(dwb_row), &rh,
                               b * 16, bph + b * NP * 16);
            else
                FN(dwb_pack16)(NP, N, I - (b - hb) * 16 < 16 ? I - (b - hb) * 16 : 16,
                               FN(dwb_row), &rx, (b - hb) * 16, bpx + (b - hb) * NP * 16);
        }
        lstm_barrier_wait(bar, num_threads);
        int64_t m0 = a0 * 16, m1 = a1 * 16 < G ? a1 * 16 : G;
        if (m0 < m1) {
            FN(dwb_product)(m0, m1, H, NP, ap, bph, ctx->dw_hh);
            FN(dwb_product)(m0, m1, I, NP, ap, bpx, ctx->dw_ih);
        }
        goto after_dw;
    }
#endif
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
    if (hm_all) {
        g.b = hm_all;
        g.b0 = NULL;
        g.offs = NULL;
    }
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
        FN(gemm)(&gi, ws, tid, num_threads);
    }
    FN(gemm)(&g, ws, tid, num_threads);
#if BWD_BF16
after_dw:
#endif

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
        FN(gemm)(&gr, ws, tid, num_threads);
    }

    if (!ctx->dx) {
    } else if (!dx_steps && !FN(dx_gemm)(I, H, P)) {   /* dx of all rows as the steps' tiles */
        const FN(step_plan) spx = FN(step_plan_for)((x1 - x0) * G * V * s, BNB * V * s);
        FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates, ldg, N, NULL, NULL, ctx->dx, &spx);
    } else if (!dx_steps) {
        FN(gemm_args) gx = {0};
        gx.M = N;
        gx.N = I;
        gx.K = G;
        gx.a = ctx->dgates;
        gx.lda = ldg;
        gx.bpacked = (const TYPE *)(base + ctx->hdr->off_wih);
        gx.c = ctx->dx;
        gx.ldc = I;
        FN(gemm)(&gx, ws, tid, num_threads);
    }
}

/* Workspace: step offsets, dgates [N][ldg], with a projection dm [B,H],
 * dh_all [N,P], m_all [N,H], then per-thread GEMM buffers. */
static size_t FN(bwd_ws_size)(int64_t T, int64_t N, int64_t B, int64_t I, int64_t H, int64_t P,
                              int num_threads)
{
    (void)I;
    int64_t s = (int64_t)sizeof(TYPE);
    int64_t bytes = FN(offs_bytes)(T) + ALIGN64(N * FN(dg_ld)(H) * s);
    if (P)
        bytes += ALIGN64(B * H * s) + ALIGN64(N * P * s) + ALIGN64(N * H * s);
    return (size_t)bytes + (size_t)num_threads * (size_t)FN(gemm_ws_elems)(1) * sizeof(TYPE) + 64;
}

static int FN(backward)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                        const void *packed, const int64_t *batch_sizes, const TYPE *x,
                        const TYPE *h0, const TYPE *c0, const TYPE *y, const TYPE *gates,
                        const TYPE *c, const TYPE *dy, const TYPE *dh_n, const TYPE *dc_n,
                        TYPE *dx, TYPE *dw_ih, TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0,
                        TYPE *dw_hr, void *workspace, int num_threads,
                        const lstm_variant *var, TYPE *dpeep)
{
    const FN(packed_hdr) *hdr = FN(check_packed)(packed, I, H, P);
    if (!hdr)
        return LSTM_ERR_PACKED;
    if (P && !dw_hr)
        return LSTM_ERR_ARG;
    if (var && var->peephole && !dpeep)
        return LSTM_ERR_ARG;
    if (var && var->layer_norm)
        return P ? LSTM_ERR_ARG
                 : FN(ln_backward)(T, B, I, H, hdr, batch_sizes, x, h0, c0, y, gates, c, dy,
                                   dh_n, dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, workspace,
                                   num_threads < 1 ? 1 : num_threads, var, dpeep);
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
                       (TYPE *)wsb, var, var && var->peephole ? dpeep : NULL, NULL};
    if (var && var->zoneout)   /* after the rows of h_{t-1} * rdrop */
        ctx.dhz = (TYPE *)(FN(align_ptr)(var->var_ws) + ALIGN64(N * (P ? P : H) * s));
    if (num_threads < 1)
        num_threads = 1;
    lstm_pool_run(FN(bwd_job), &ctx, num_threads);
    return LSTM_OK;
}

#include "lnorm.template.c"  /* the layer-normalized LSTM */

#if !IS_F64
#include "bf16.template.c"   /* bfloat16 weights (inference), float32 only */
#include "int8.template.c"   /* int8 weights (inference), float32 only */
#include "int8d.template.c"  /* int8 weights, dynamically quantized x and h */
#endif

/* ---- end of one instantiation: every macro of the templates ------------------ */
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
#undef MAXACC
#undef ITYPE
#undef V
#undef INLINE
#undef KERNEL
#undef vec
#undef uvec
#undef ivec
#undef vload
#undef vstore
#undef vset1
#undef vfma
#undef vload_n
#undef vstore_n
#undef vselect
#undef vabs
#undef vexp_parts
#undef vrecip12
#undef vsigmoid
#undef vtanh
#undef EXP_XMIN
#undef EXP_XCLAMP
#undef EXP_MAGIC
#undef EXP_MANT
#undef EXP_BIAS
#undef LN2_HI
#undef LN2_LO
#undef LOG2E
#undef KC
#undef NC_MAX
#undef NV
#undef NR
#undef WP
#undef ATB
#undef TILE_ROWS
#undef TILE_CASE
#undef TILE_SWITCH
#undef PACK_MAGIC
#undef ALIGN64
#undef FWD_TILE
#undef STEP_ROWS_MAX
#undef BWD_TILE
#undef SET_CELL_VARIANT
#undef BWD_BF16
#ifdef ATTR_BFB
#undef ATTR_BFB
#endif
