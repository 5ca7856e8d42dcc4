/* lstm.template.c: the LSTM forward and backward of one layer and direction,
 * written once over the element type and the instruction set. lstm.c includes
 * this file once per (TYPE, ISA); it holds the forward and includes the layers below it:
 *   simd.template.h    vector layer, activations, register-tile sizes
 *   gemm.template.c    packed GEMM (the whole-sequence products)
 *   cell.template.c    fwd_cell, bwd_cell: the only gate math
 *   pack.template.c    packed-weights layout and pack
 *   backward.template.c  the backward, after the forward (it includes
 *                      bf16_backward.template.c, bfloat16 training's products)
 *   lnorm.template.c   the layer-normalized LSTM, after it
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
 *   the loop; db is summed by the cells (or after the loop, when the rows are split).
 * Lengths: one code path for padded and variable-length batches: the kernels
 *   see packed step-major rows and per-step row offsets (offs[t] =
 *   sum(batch_sizes[:t]); NULL sizes = B per step); sizes never increase, so
 *   step t's n rows read h and c of t-1 from the first n rows of step t-1, with
 *   no copies. dw_hh's h_{t-1} rows are mapped through offs in pack_b.
 * Projection (P > 0): forward, the cell writes m = o*tanh(c) to scratch, then
 *   y_t = m.w_hr^T is a GEMM per step (a second barrier); backward, dh (P wide)
 *   per step, dm = dh.w_hr as a GEMM, then the cell; dw_hr = dh_all^T.m_all
 *   after the loop. Not fused into the step tiles: their widths differ (P vs H).
 * Threads: hidden blocks for the steps (a barrier per step), or, for the plain LSTM
 *   whose pack fits the L2, each step's rows (fwd_rows_split, bwd_rows_split: nothing
 *   crosses between the cores within a step); output tiles for the GEMMs. Each output
 *   element is computed by the same operations whatever
 *   the thread count or tiling (one cell function, FP contraction off, explicit
 *   FMAs), so results are bitwise identical for any thread count, and a
 *   sequence run in chunks gives the bits of one call: every rule that changes
 *   the order of operations (fwd_fuse_x, bwd_dx_in_steps) depends on the shape
 *   and the running CPU's caches only, never on T or the thread count. */

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
    lstm_claims *claims;     /* the steps' hidden blocks, claimed at run time (fwd_job) */
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
#if FR >= 3
        FWD_TILE(3, 1)
#endif
#if FR >= 6
        FWD_TILE(4, 1)
        FWD_TILE(5, 1)
        FWD_TILE(6, 1)
#endif
    default:
        break;
    }
}

#if ISA == 2
/* The last hidden block when at most V/2 of its units are live (half_block): pack
 * stores its k rows as [i f | g o | 0 0] in half vectors (pack_pair_block), so a
 * row's four gates take two full-vector FMAs instead of four (half vectors would
 * take as many FMA slots as full ones where the CPU has two 512-bit FMA ports, as
 * Intel's and AMD Zen 5's). Each live lane gets the same FMAs in the same order,
 * so the bits are those of the full-block layout. acc_mem is in the usual
 * [mr][4][V] form (upper halves 0, what fwd_tile gives them for finite inputs)
 * before and after, so chunks and the cell need not know. Forward steps' nb = 1
 * tiles. */
INLINE void FN(fwd_tile_pair_add)(const int mr, int64_t K, const TYPE *restrict src,
                                  int64_t ld, const TYPE *restrict w, vec *acc,
                                  const int PF, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    int64_t pfc = 0;
    for (int64_t k = 0; k < K; k++) {
        const TYPE *wk = w + k * 4 * V;
        if (PF && k < npf && --pfc <= 0) {
            FN(prefetch_row)(pf, k);
            pfc = pfstep;
        }
        vec w0 = vload(wk), w1 = vload(wk + V);
#pragma GCC unroll 24
        for (int r = 0; r < mr; r++) {
            vec a = vset1(src[r * ld + k]);
            acc[r * 2] = vfma(a, w0, acc[r * 2]);
            acc[r * 2 + 1] = vfma(a, w1, acc[r * 2 + 1]);
        }
    }
}

INLINE void FN(fwd_tile_pair)(const int mr, int64_t k0, int64_t k1, int64_t XF,
                              const TYPE *restrict xp, int64_t I, const TYPE *restrict hp,
                              int64_t R, const TYPE *restrict w, TYPE *restrict acc_mem,
                              const int PF, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    vec acc[FR * 2];
#pragma GCC unroll 24
    for (int q = 0; q < mr * 2; q++)
        acc[q] = k0 ? FN(hcat)(hload(acc_mem + 2 * q * V), hload(acc_mem + (2 * q + 1) * V))
                    : (vec){0};
    int64_t kx = k1 < XF ? k1 : XF, kh = k0 > XF ? k0 : XF;
    if (k0 < kx)
        FN(fwd_tile_pair_add)(mr, kx - k0, xp + k0, I, w + k0 * 4 * V, acc, PF, pf, npf,
                              pfstep);
    if (kh < k1)
        FN(fwd_tile_pair_add)(mr, k1 - kh, hp + kh - XF, R, w + kh * 4 * V, acc, PF,
                              pf + (kh - k0) * 4 * V, npf - (kh - k0), pfstep);
#pragma GCC unroll 24
    for (int q = 0; q < mr * 2; q++) {
        hstore(acc_mem + 2 * q * V, FN(hlo)(acc[q]));
        hstore(acc_mem + 2 * q * V + V / 2, (hvec){0});
        hstore(acc_mem + (2 * q + 1) * V, FN(hhi)(acc[q]));
        hstore(acc_mem + (2 * q + 1) * V + V / 2, (hvec){0});
    }
}

#define FWD_TILE_PAIR(MRV)                                                                   \
    case MRV:                                                                                \
        if (pf)                                                                              \
            FN(fwd_tile_pair)(MRV, k0, k1, XF, xp, I, hp, R, w, acc_mem, 1, pf, npf, pfstep); \
        else                                                                                 \
            FN(fwd_tile_pair)(MRV, k0, k1, XF, xp, I, hp, R, w, acc_mem, 0, pf, 0, 0);        \
        break;

/* fwd_tile_pair for run-time mr <= FR */
KERNEL void FN(fwd_tile_pair_any)(int mr, int64_t k0, int64_t k1, int64_t XF, const TYPE *xp,
                                  int64_t I, const TYPE *hp, int64_t R, const TYPE *w,
                                  TYPE *acc_mem, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    switch (mr) {
        FWD_TILE_PAIR(1)
        FWD_TILE_PAIR(2)
        FWD_TILE_PAIR(3)
        FWD_TILE_PAIR(4)
        FWD_TILE_PAIR(5)
        FWD_TILE_PAIR(6)
    default:
        break;
    }
}
#undef FWD_TILE_PAIR
#endif

/* How a step walks its tiles; any choice gives the same bits. While the weights a
 * thread reads in a step fit in its L2, every row tile streams its block from L2
 * (the row tiles of B = 20: 5+5+5+5, not 6+6+6+2). Beyond that they come from
 * L3 every step, and a block is walked in chunks of kc rows instead, every row
 * tile of a group of up to `rows` rows per chunk (their partial sums [rows][4][V]
 * kept in L1), so that each weight is read from L3 once per step and reused from
 * L1; meanwhile the row tiles prefetch the next chunk, spread over all of them.
 * Sizes from the running CPU's caches (cpu.h). */
#define STEP_ROWS_MAX 64

/* The least products (FLOPs) of a chunk of a step's blocks claimed at run time (fwd_job,
 * bwd_job): 128K, 0.5-2 us on the project's CPUs, several times the cache lines a claim
 * moves between the cores. Measured on the AMD EPYC Zen 3 (2 threads, eval forward,
 * claimed / static, benchmarks/claims_ab.py): (6,32,3,32), 72K a chunk, 1.026;
 * (32,16,64,64), 131K, 1.000; (100,32,16,128), 295K, 0.952 overall. */
#define CLAIM_FLOPS (128 << 10)

/* Where the threads split a step's nblk hidden blocks (by units), whether they claim them
 * at run time (lstm_claim; mode lstm_get_claims(): automatic where a step has B >= 8 rows,
 * so that a block taken from another thread's part costs more products than moving its
 * weights, and a chunk's products, block_flops each, are >= CLAIM_FLOPS): the chunk to
 * claim at a time, about an eighth of a thread's part and a multiple of step blocks
 * (a tile's), or 0 for each thread its own part. */
static int64_t FN(claim_chunk)(int64_t nblk, int nt, int64_t step, int64_t B,
                               int64_t block_flops)
{
    const int mode = lstm_get_claims();
    const int64_t part = (nblk + nt - 1) / nt;
    const int64_t chunk = ((part + 7) / 8 + step - 1) / step * step;
    if (nt < 2 || !mode)
        return 0;
    if (mode < 0 && (B < 8 || (chunk < part ? chunk : part) * block_flops < CLAIM_FLOPS))
        return 0;
    return chunk;
}
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
                         int64_t j0, int64_t j1, int64_t jnext, const TYPE *w, int64_t XF,
                         const TYPE *xt, const TYPE *hp, int rev, const FN(step_plan) *sp)
{
    TYPE part[STEP_ROWS_MAX * 4 * V] __attribute__((aligned(64)));
    /* hp NULL: x_t.w_ih^T alone (XF = I; the layer norm's input product, raw) */
    const int64_t K = XF + (hp ? R : 0), bstride = (I + R) * 4 * V;
    const TYPE *w0 = w + (I - XF) * 4 * V;   /* row 0 of [x | h] in block 0 */
    /* tiles of jstep blocks over the full blocks j0..jf, then the paired block jf (the
     * last, if at most V/2 of its units are live: fwd_tile_pair), a tile of its own */
    int64_t jstep = B == 1 ? NB1 : 1, jf = j1;
#if ISA == 2
    const int64_t jpair = FN(half_block)(ca->H);
    if (jpair >= j0 && jpair < j1)
        jf = jpair;
#endif
    const int64_t nfull = (jf - j0 + jstep - 1) / jstep, ntile = nfull + (jf < j1);
#define TILE_BLOCK(ti) ((ti) < nfull ? j0 + (ti) * jstep : jf)
    for (int64_t it = 0; it < ntile; it++) {
        int64_t ti = rev ? ntile - 1 - it : it, j = TILE_BLOCK(ti);
        int nb = ti == nfull ? 1 : jf - j < jstep ? (int)(jf - j) : (int)jstep;
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
                } else if (nb == 1 && (it + 1 < ntile || jnext >= 0) && g0 + sp->rows >= B) {
                    pf = w0 + (it + 1 < ntile ? TILE_BLOCK(rev ? ntile - 2 - it : it + 1)
                                              : jnext) * bstride;
                    npf = K < kc ? K : kc;
                }
                for (int64_t t = 0; t < nt; t++) {
                    int64_t r0 = g0 + n * t / nt, r1 = g0 + n * (t + 1) / nt;
                    TYPE *pt = kc < K ? part + (r0 - g0) * nb * 4 * V : part;
                    const TYPE *pft = pf && npf > t ? pf + t * 4 * V : NULL;
#if ISA == 2
                    if (ti == nfull)
                        FN(fwd_tile_pair_any)((int)(r1 - r0), k0, k1, XF, xt + r0 * I, I,
                                              hp ? hp + r0 * R : NULL, R, w0 + j * bstride, pt,
                                              pft, npf - t, nt);
                    else
#endif
                        FN(fwd_tile_any)((int)(r1 - r0), nb, k0, k1, XF, xt + r0 * I, I,
                                         hp ? hp + r0 * R : NULL, R, w0 + j * bstride, bstride,
                                         pt, pft, npf - t, nt);
                    if (k1 == K)
                        FN(fwd_cell)(ca, (int)(r1 - r0), nb, r0, j, pt);
                }
            }
        }
    }
#undef TILE_BLOCK
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
 * Where [w_ih | w_hh] exceed the L2 and I > H (speech's upper layers, I = 640, H = 320:
 * 4.9 MB, two thirds of it w_ih), hoisting streams only w_hh every step: on the AMD Zen 3
 * (L2 512 KiB; f32, (200,16,640,320), hoisted/fused, the two alternated call by call in
 * one process for 30-40 s) eval 0.93 on 1 and on 2 threads, forward with saving 0.96 and
 * 0.93, training step 1.00 and 0.98; on the Intel Xeon alike (57.5/57.8, 195.8/197.0
 * above). Where I <= H it stays fused: (35,20,650,650) eval on 2 threads 1.016.
 * Depends on the shape and the CPU only (not T or threads): a streamed step gives the
 * same bits as a whole-sequence call. */
static int FN(fwd_fuse_x)(int64_t B, int64_t I, int64_t H)
{
    if (I <= 16)
        return 1;
    if (B < 16)
        return 0;
    const int64_t l2 = lstm_cpu()->l2, whh = 4 * H * H * (int64_t)sizeof(TYPE);
    const int64_t wfused = (I + H) * 4 * H * (int64_t)sizeof(TYPE);
    if (wfused > l2 && I > H)   /* w_ih the larger share of what the steps would stream */
        return 0;
    return !(wfused > l2 && 4 * whh <= 3 * l2);
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

/* Whether a forward on several threads splits each step's rows between them, every thread
 * doing all hidden units of its rows (1), instead of the hidden units, every thread doing
 * all rows (0). Split by units, each step's products read all of h_{t-1}, half of it
 * written by the other thread in the step before: a transfer between the cores of B R
 * elements per step; split by rows, none (a row's h stays on its thread while the step's
 * row count stays). Taken for the plain LSTM without a projection where the whole pack
 * ([w_ih | w_hh] of the fused steps, or w_hh) fits in 3/4 of the L2, so that each thread
 * keeps all of it, and the row tiles of a thread's rows are as full as the whole batch's.
 * Measured (Intel Xeon family 6 model 167, f32, 2 threads, forward with saving): see
 * fwd_job. Every row's sums are the same either way (a row's products and cell do not
 * depend on the other rows): the same bits for any thread count. */
/* The rule both directions share: nt >= 2 threads, B >= 2 nt rows, K x 4H weights in 3/4
 * of the L2, and tiles of `tile` rows at least as full for a thread's rows as for all B
 * (m / tr >= B / tb - 0.05). */
static int FN(rows_split_ok)(int64_t B, int64_t K, int64_t H, int tile, int nt)
{
    if (nt < 2 || B < 2 * nt || K * 4 * H * (int64_t)sizeof(TYPE) > lstm_cpu()->l2 / 4 * 3)
        return 0;
    int64_t m = (B + nt - 1) / nt;   /* a thread's rows, at most */
    int64_t tr = (m + tile - 1) / tile * tile, tb = (B + tile - 1) / tile * tile;
    return m * tb >= B * tr - tr * tb / 20;
}

static int FN(fwd_rows_split)(int64_t B, int64_t R, int64_t H, int64_t P, int64_t XF,
                              const lstm_variant *var, int nt)
{
    return !P && !var && FN(rows_split_ok)(B, XF + R, H, FR, nt);
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
    int64_t XF = FN(fwd_fuse_x)(B, I, H) ? I : 0;
    const int rows = FN(fwd_rows_split)(B, R, H, P, XF, ctx->var, num_threads);
    if (rows) {   /* every unit, this thread's rows of each step */
        j0 = 0;
        j1 = nblk;
    }
    /* split by units, every step's blocks may be claimed at run time, each thread
     * starting on its own part j0..j1 (claim_chunk) */
    const int64_t chunk = rows ? 0 : FN(claim_chunk)(nblk, num_threads, B == 1 ? NB1 : 1, B,
                                                     2 * B * (XF + R) * 4 * V);
    const int dyn = chunk > 0;
    /* nothing saved, c_n is the running c: step 0 reads c0 and writes c_n, later steps
     * update c_n in place; the rows of sequences of no steps (at and after offs[1]) take
     * c0 here, this thread's part of them (no step writes them: no barrier needed) */
    if (!save && ctx->c_n != ctx->c0) {
        int64_t u0 = j0 * V, u1 = j1 * V < H ? j1 * V : H, n0 = T ? offs[1] : 0;
        int64_t b0 = rows ? FN(split)(B, tid, num_threads) : 0;
        int64_t b1 = rows ? FN(split)(B, tid + 1, num_threads) : B;
        for (int64_t r = b0 > n0 ? b0 : n0; r < b1 && u0 < u1; r++)
            memcpy(ctx->c_n + r * H + u0, ctx->c0 + r * H + u0, (size_t)(u1 - u0) * sizeof(TYPE));
    }
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
            ca.cprev = t ? ctx->c_n : ctx->c0;
            ca.c = ctx->c_n;
        }
        ca.h = P ? ctx->m : yt;
        if (rows) {   /* rows r0..r1 of the step: the row pointers moved on (plain cell) */
            int64_t r0 = FN(split)(n, tid, num_threads), r1 = FN(split)(n, tid + 1, num_threads);
            FN(fwd_cell_args) cr = ca;
            if (cr.pre_ld)
                cr.pre += r0 * cr.pre_ld;
            if (cr.gates)
                cr.gates += r0 * G;
            cr.cprev += r0 * H;
            cr.c += r0 * H;
            cr.h += r0 * R;
            if (r1 > r0)
                FN(fwd_step)(&cr, r1 - r0, I, R, j0, j1, -1, w, XF, ctx->x + (offs[t] + r0) * I,
                             hp + r0 * R, (int)(t & 1), &sp);
        } else if (dyn) {
            long a, b, nx;
            lstm_claims_next(ctx->claims, t, tid);
            while (lstm_claim(ctx->claims, t, tid, num_threads, nblk, chunk, (int)(t & 1), &a, &b,
                              &nx))
                FN(fwd_step)(&ca, n, I, R, a, b, nx, w, XF, ctx->x + offs[t] * I, hp, (int)(t & 1),
                             &sp);
        } else
            FN(fwd_step)(&ca, n, I, R, j0, j1, -1, w, XF, ctx->x + offs[t] * I, hp, (int)(t & 1),
                         &sp);
        /* split by rows, a thread's rows of step t + 1 are the rows it computed here
         * when the next step keeps this step's row count: nothing crosses threads, no
         * barrier (measured, 2 threads, eval: (35,20,200,200)x2 0.97x, (100,32,16,128)
         * 0.96x the time with it) */
        if (!rows || t + 1 >= T || offs[t + 2] - offs[t + 1] != n)
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
    if (num_threads < 1)
        num_threads = 1;
    lstm_claims claims;
    lstm_claims_init(&claims, num_threads, lstm_get_claims() == 2);
    FN(fwd_ctx) ctx = {T, B, I, H, P, hdr, offs, x, h0, c0, y, h_n, c_n, gates, c, xw, &claims,
                       m, (TYPE *)wsb, var};
    lstm_pool_run(FN(fwd_job), &ctx, num_threads);
    return LSTM_OK;
}

#if !IS_F64
#include "amx.template.c"    /* AMX tiles: what bf16 (forward and backward) and int8d share */
#endif
#include "backward.template.c"  /* the backward */

#include "lnorm.template.c"  /* the layer-normalized LSTM */
#include "mask.template.c"   /* Bernoulli masks (Philox4x32-10) */

#if !IS_F64
#include "bf16.template.c"   /* bfloat16 weights (inference), float32 only */
#include "int8.template.c"   /* int8 weights (inference), float32 only */
#include "int8d.template.c"  /* int8 weights, dynamically quantized x and h */
#if ISA == 2
#undef AMX_ATTR
#undef AMX_ROWS
#endif
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
#undef hvec
#undef uhvec
#undef hload
#undef hstore
#undef hset1
#undef hfma
#undef hwiden
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
#undef GEMM_TILE_HALF
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
