/* backward.template.c: the LSTM backward of one layer and direction (float32 and float64,
 * every SIMD level). Included by lstm.template.c after the forward, whose step plan, cell
 * and packed layout it uses; the design (register tiles fused with the cell, dx in the
 * steps or a GEMM, [dw_ih | dw_hh] one whole-sequence product) is described at the top of
 * lstm.template.c. It includes bf16_backward.template.c, bfloat16 training's products,
 * before the steps that call them. */

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
    int pf_dg;          /* prefetch dgates[t+1] at the start of step t (threads split units) */
    int pf_next;        /* the cells of step t prefetch step t-1's dgates and gates
                           (bwd_long_narrow) */
    int rows;           /* the threads split each step's rows (bwd_rows_split) */
    lstm_claims *claims;   /* the steps' hidden blocks, claimed at run time (bwd_job) */
    const uint16_t *g16, *c16;   /* bfloat16 training: the saved gates and c as bf16 bits
                                    (var->bf16_gates, bf16_c; gates, c unused), or NULL */
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
#if BR >= 3
        BWD_TILE(3, 1)
        BWD_TILE(3, 2)
        BWD_TILE(3, 3)
        BWD_TILE(3, 4)
#endif
#if BR >= 6
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

#if ISA == 2
/* bwd_tile on half vectors (hvec) for one output block with at most V/2 live columns
 * (the same bits as a full vector's live lanes; the upper lanes stored as 0, as
 * fwd_tile_pair stores them). */
INLINE void FN(bwd_tile_half)(const int mr, int64_t k0, int64_t k1, const TYPE *restrict dg,
                              int64_t ldg, const TYPE *restrict w, TYPE *restrict acc_mem,
                              const int PF, const TYPE *pf, int64_t npf, int64_t pfstep)
{
    hvec acc[BR];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
        acc[r] = k0 ? hload(acc_mem + r * V) : (hvec){0};
    int64_t pfc = 0;
    for (int64_t k = k0; k < k1; k++) {
        const hvec wk = hload(w + k * V);
        if (PF && k - k0 < npf && --pfc <= 0) {
            __builtin_prefetch(pf + (k - k0) * V, 0, 2);
            pfc = pfstep;
        }
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
            acc[r] = hfma(hset1(dg[r * ldg + k]), wk, acc[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
        hstore(acc_mem + r * V, acc[r]);
        hstore(acc_mem + r * V + V / 2, (hvec){0});
    }
}

#define BWD_TILE_HALF(MRV)                                                                   \
    case MRV:                                                                                \
        if (pf)                                                                              \
            FN(bwd_tile_half)(MRV, k0, k1, dg, ldg, w, acc_mem, 1, pf, npf, pfstep);          \
        else                                                                                 \
            FN(bwd_tile_half)(MRV, k0, k1, dg, ldg, w, acc_mem, 0, pf, 0, 0);                 \
        break;

KERNEL void FN(bwd_tile_half_any)(int mr, int64_t k0, int64_t k1, const TYPE *dg, int64_t ldg,
                                  const TYPE *w, TYPE *acc_mem, const TYPE *pf, int64_t npf,
                                  int64_t pfstep)
{
    switch (mr) {
        BWD_TILE_HALF(1)
        BWD_TILE_HALF(2)
        BWD_TILE_HALF(3)
        BWD_TILE_HALF(4)
        BWD_TILE_HALF(5)
        BWD_TILE_HALF(6)
    default:
        break;
    }
}
#undef BWD_TILE_HALF
#endif

/* part [n][nb][V] = dg [n rows, ldg apart] . the nb blocks at w (K = G rows each,
 * blocks bstride apart), n <= sp->rows, in row tiles of near-equal size and, as the
 * plan says (see step_plan), in chunks of K with the next chunk prefetched; the
 * last chunk prefetches pf_next (the next blocks' start) if set. half (nb = 1): the
 * block is a half_block, bwd_tile_half's. */
KERNEL void FN(bwd_tiles)(int64_t n, int nb, int64_t G, const TYPE *dg, int64_t ldg,
                          const TYPE *w, int64_t bstride, TYPE *part, const FN(step_plan) *sp,
                          const TYPE *pf_next, int half)
{
    int64_t nt = (n + BR - 1) / BR, kc = nt > 1 && sp->kc < G ? sp->kc : G;
#if ISA != 2
    (void)half;
#endif
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
            const TYPE *pft = pf && npf > t ? pf + t * V : NULL;
#if ISA == 2
            if (half)   /* nb = 1 */
                FN(bwd_tile_half_any)((int)(r1 - r0), k0, k1, dg + r0 * ldg, ldg, w,
                                      part + r0 * V, pft, npf - t, nt);
            else
#endif
                FN(bwd_tile_any)((int)(r1 - r0), nb, k0, k1, dg + r0 * ldg, ldg, w, bstride,
                                 part + r0 * nb * V, pft, npf - t, nt);
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
    /* tiles of jstep blocks; the half block alone (bwd_tile_half) */
    const int64_t jstep = n == 1 ? 2 * BNB : BNB, jh = FN(half_block)(W), je = jh < p1 ? jh : p1;
    for (int64_t j = p0, nb; j < p1; j += nb) {
        nb = j >= jh ? 1 : je - j < jstep ? je - j : jstep;
        for (int64_t g0 = 0, g1; g0 < n; g0 = g1) {
            g1 = FN(group_end)(sp, g0, n, BR);
            int64_t ng = g1 - g0;
            const TYPE *pf_next = g1 == n && j + nb < p1 ? w + (j + nb) * G * V : NULL;
            FN(bwd_tiles)(ng, (int)nb, G, dg + g0 * ldg, ldg, w + j * G * V, G * V, part, sp,
                          pf_next, j >= jh);
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

/* dh of rows m0..n, output blocks p0..p1 of R (the width of h), into out [n,R]:
 * rows < nn get dg_next . w_hh, rows nn..n get dh_n; plus dy_t if set. */
KERNEL void FN(bwd_dh)(const FN(bwd_ctx) *ctx, int64_t p0, int64_t p1, const TYPE *dg_next,
                       int64_t nn, int64_t m0, int64_t n, const TYPE *dy_t, TYPE *out,
                       const FN(step_plan) *sp)
{
    int64_t H = ctx->H, R = ctx->P ? ctx->P : H, e = nn < n ? nn : n;
    const TYPE *wb = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    const TYPE *rdrop = ctx->var ? (const TYPE *)ctx->var->rdrop : NULL;
    if (e > m0)
        FN(bwd_rows)(H, R, wb, p0, p1, dg_next + m0 * ctx->ldg, ctx->ldg, e - m0,
                     rdrop ? rdrop + m0 * R : NULL, dy_t ? dy_t + m0 * R : NULL, out + m0 * R, sp);
    for (int64_t r = e > m0 ? e : m0; r < n; r++)
        for (int64_t j = p0; j < p1; j++) {
            int64_t off = j * V, ro = r * R + off;
            int cnt = R - off < V ? (int)(R - off) : V;
            vec v = vload_n(ctx->dh_n + ro, cnt);
            if (dy_t)
                v = v + vload_n(dy_t + ro, cnt);
            vstore_n(out + ro, v, cnt);
        }
}

#include "bf16_backward.template.c"  /* bfloat16 training's products (vdpbf16ps) */

/* One backward step t without a projection, hidden blocks j0..j1, fused: rows
 * below nn (active at t+1) take dh = dgates[t+1] . w_hh from the register tile,
 * the others (whose last step is t) take dh_n. */
KERNEL void FN(bwd_step)(const FN(bwd_ctx) *ctx, int64_t t, int64_t j0, int64_t j1,
                         int64_t jnext, int pf_dg, const FN(step_plan) *sp,
                         const uint32_t *bf_w, uint32_t *bf_rows, int amx, int64_t ra,
                         int64_t rb)
{
    int64_t T = ctx->T, H = ctx->H, ldg = ctx->ldg;
    const int64_t *offs = ctx->offs;
    int64_t n = offs[t + 1] - offs[t], nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
    /* rows ra..rb of the step (all: 0, n; ctx->rows: a thread's share, and db is summed
     * after the loop) */
    rb = rb < n ? rb : n;
    const TYPE *w = (const TYPE *)((const unsigned char *)ctx->hdr + ctx->hdr->off_whh_b);
    const TYPE *dg_next = nn ? ctx->dgates + offs[t + 1] * ldg : NULL;
    const TYPE *dy_t = ctx->dy + offs[t] * H, *gates_t = NULL, *c_t = NULL;
    const TYPE *cprev = t ? NULL : ctx->c0;
    if (!ctx->g16) {
        gates_t = ctx->gates + offs[t] * 4 * H;
        c_t = ctx->c + offs[t] * H;
        if (t)
            cprev = ctx->c + offs[t - 1] * H;
    }
    TYPE *dg_t = ctx->dgates + offs[t] * ldg;
    FN(bwd_cell_args) ca = {.H = H, .dh = ctx->dh_n, .dy = dy_t, .gates = gates_t, .c = c_t,
                            .cprev = cprev, .dc = ctx->dc0, .dg = dg_t, .ldg = ldg,
                            .m = NULL, .db = ctx->db};
    if (ctx->rows)
        ca.db = NULL;
    if (ctx->pf_next && t && !ctx->g16) {   /* step t-1 has at least this step's rows */
        ca.pf_dg = ctx->dgates + offs[t - 1] * ldg;
        ca.pf_gates = ctx->gates + offs[t - 1] * 4 * H;
    }
    SET_CELL_VARIANT(ca, ctx->var);
    ca.dpeep = ctx->dpeep;
    ca.bf16 = ctx->var && ctx->var->bf16_grads;   /* bfloat16 training */
    if (ctx->g16) {   /* ... on the saved bf16 bits (bwd_cell_b16) */
        ca.g16 = ctx->g16 + offs[t] * 4 * H;
        ca.c16 = ctx->c16 + offs[t] * H;
        ca.cp16 = t ? ctx->c16 + offs[t - 1] * H : NULL;
        ca.var = 1;
    }
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
    if (dg_next && pf_dg)   /* the other threads' columns of dgates[t+1] */
        for (int64_t r = 0; r < nn; r++)
            for (int64_t b = 0; b < G * (int64_t)sizeof(TYPE); b += 64)
                __builtin_prefetch((const char *)(dg_next + r * ldg) + b, 0, 2);
#if BWD_BF16
    if (bf_w && nn)   /* bf16 products: the rows of dgates[t+1] as pair words (also dx's) */
        FN(bwdb_rows_words)(nn, H, dg_next, ldg, bf_rows);
    const int64_t KPA = bf16_bwd_kpa(H);
    if (bf_w && amx)   /* AMX: jstep blocks, groups of up to STEP_ROWS_MAX rows */
        jstep = BNB;
#else
    (void)bf_w;
    (void)bf_rows;
    (void)amx;
#endif
    /* tiles of jstep blocks; the float words' half block alone (bwd_tile_half) */
    const int64_t jh = bf_w ? j1 : FN(half_block)(H), je = jh < j1 ? jh : j1;
    for (int64_t j = j0, nbj; j < j1; j += nbj) {
        nbj = j >= jh ? 1 : je - j < jstep ? je - j : jstep;
        const int nb = (int)nbj;
        const int64_t e = nn < rb ? nn : rb;   /* rows ra..e: dh from the tile */
        for (int64_t g0 = ra, g1; g0 < e; g0 = g1) {
            g1 = bf_w && amx ? (e - g0 < STEP_ROWS_MAX ? e : g0 + STEP_ROWS_MAX)
                             : ra + FN(group_end)(sp, g0 - ra, e - ra, BR);
            int64_t ng = g1 - g0;
            const TYPE *pf_next = g1 != nn ? NULL
                                  : j + nb < j1 ? w + (j + nb) * G * V
                                  : jnext >= 0 ? w + jnext * G * V : NULL;
#if BWD_BF16
            if (bf_w && amx)
                FN(bwda_tiles)(ng, nb, KPA, bf_rows + g0 * KPA, KPA, bf_w + j * KPA * V,
                               KPA * V, part);
            else if (bf_w)
                FN(bwdb_tiles)(ng, nb, 2 * H, bf_rows + g0 * KPA, KPA, bf_w + j * KPA * V,
                               KPA * V, part, sp);
            else
#endif
                FN(bwd_tiles)(ng, nb, G, dg_next + g0 * ldg, ldg, w + j * G * V, G * V, part,
                              sp, pf_next, j >= jh);
            FN(bwd_cell)(&ca, (int)ng, nb, g0, j, part);
        }
        const int64_t c0 = nn > ra ? nn : ra;   /* rows c0..rb: dh_n */
        if (c0 < rb)
            FN(bwd_cell)(&ca, (int)(rb - c0), nb, c0, j, NULL);
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

/* Recurrent dropout, backward: h_{t-1} * mask of every row (N rows of R) into var->var_ws,
 * the rows split over the threads, then a barrier; returns them (the B of dw_hh's
 * product). The plain and the layer-normalized backward's one copy. */
static const TYPE *FN(masked_h_rows)(const lstm_variant *var, const int64_t *offs, int64_t N,
                                     int64_t R, const TYPE *y, const TYPE *h0, int tid,
                                     int num_threads, lstm_barrier *bar)
{
    const TYPE *mask = (const TYPE *)var->rdrop;
    TYPE *hm = (TYPE *)FN(align_ptr)(var->var_ws);
    int64_t e0 = FN(split)(N, tid, num_threads), e1 = FN(split)(N, tid + 1, num_threads);
    for (int64_t t = 0, row = e0; row < e1; row++) {
        while (row >= offs[t + 1])
            t++;
        int64_t r = row - offs[t];
        const TYPE *src = t ? y + (offs[t - 1] + r) * R : h0 + r * R;
        for (int64_t k = 0; k < R; k++)
            hm[row * R + k] = src[k] * mask[r * R + k];
    }
    lstm_barrier_wait(bar, num_threads);
    return hm;
}

/* Whether a backward on several threads splits each step's rows between them (1), every
 * thread doing all hidden units of its rows, instead of the hidden units (0). Split by
 * units, each step's dh product reads all 4H gate gradients of every row of the step
 * after, half of them written by the other thread: 4 B H elements between the cores per
 * step (the forward's h: B H). Split by rows, none while the row count stays; db is then
 * summed after the loop in the cells' order (steps last to first, rows in order: the same
 * bits). Taken as fwd_rows_split: the plain LSTM (no projection, no variant, no bfloat16
 * products), whose w_hh (and w_ih, for dx in the steps) fit in 3/4 of the L2, and whose
 * row tiles per thread are as full as the whole batch's. */
static int FN(bwd_rows_split)(int64_t B, int64_t I, int64_t H, int want_dx, int nt)
{
    int64_t K = H + (want_dx && FN(bwd_dx_in_steps)(B, I, H, 0) ? I : 0);
    return FN(rows_split_ok)(B, K, H, BR, nt);
}

/* dw as one product (dw_args) */
static int FN(dw_one_product)(int64_t N, int64_t H)
{
    return N * FN(dg_ld)(H) * (int64_t)sizeof(TYPE) > (256 << 10);
}

/* [dw_ih | dw_hh] = dgates^T . [x | h_prev] as gemm arguments. When dgates^T is packed
 * (a large N * 4H), as one product writing both outputs (g), so that it is packed once
 * (measured at (32,64,256,256) f32: two products spent 14% of the backward packing;
 * one: 22.0 -> 21.1 ms); else as two products (gi for dw_ih, then g), which read it in
 * place (one product cost 26.3 -> 27.6 us at (6,32,3,32)); returns 1 then. Either way
 * each element is the same sum in the same order: K blocks of KC rows, last to first
 * (kdesc), as the steps write them. hm_all: h_{t-1} * the recurrent-dropout mask. */
static int FN(dw_args)(const FN(bwd_ctx) *ctx, const TYPE *hm_all, FN(gemm_args) *g,
                       FN(gemm_args) *gi)
{
    int64_t N = ctx->offs[ctx->T], R = ctx->P ? ctx->P : ctx->H, I = ctx->I;
    *g = (FN(gemm_args)){0};
    g->M = 4 * ctx->H;
    g->K = N;
    g->a = ctx->dgates;
    g->lda = ctx->ldg;
    g->a_trans = 1;
    g->kdesc = 1;
    g->N = R;
    g->b = ctx->y;
    g->b0 = ctx->h0;
    g->offs = ctx->offs;
    g->nsteps = ctx->T;
    g->ldb = R;
    if (hm_all) {
        g->b = hm_all;
        g->b0 = NULL;
        g->offs = NULL;
    }
    g->c = ctx->dw_hh;
    g->ldc = R;
    if (FN(dw_one_product)(N, ctx->H)) {   /* with dw_ih in front */
        g->bx = ctx->x;
        g->ldbx = I;
        g->nx = I;
        g->px = (I + NR - 1) / NR;
        g->N = g->px * NR + R;
        g->c2 = ctx->dw_hh;
        g->ldc2 = R;
        g->c = ctx->dw_ih;
        g->ldc = I;
        return 0;
    }
    *gi = *g;
    gi->N = I;
    gi->b = ctx->x;
    gi->b0 = NULL;
    gi->offs = NULL;
    gi->ldb = I;
    gi->c = ctx->dw_ih;
    gi->ldc = I;
    return 1;
}

/* Where a long sequence's gate gradients (dgates) exceed half the running CPU's L2 while a
 * block of KC rows of them fits in half of it, the backward does two things that pay only
 * there (measured below):
 *   - interleave: the whole-sequence products over rows of dgates (dw, and dx when it is
 *     not made in the steps) run interleaved with the steps, the rows of each K block of
 *     dw as soon as the steps have written them, while they are still in the L2, instead
 *     of after the loop, when they have gone to the L3. The sums are the same either way
 *     (dw_args: blocks last to first), so only the time depends on it
 *     (lstm_set_bwd_interleave forces it on or off, for tests and benchmarks);
 *   - prefetch: the plain cells of step t prefetch the lines of step t-1 they will use,
 *     its rows of dgates (for writing: without it each line of dgates is first read from
 *     the L3 or memory) and of the saved gates (into the L2). The hardware prefetchers do
 *     not run ahead of the cells, which walk a step's rows a block of units at a time,
 *     4H elements apart.
 * Measured (Intel Xeon family 6 model 167, L2 2 MiB, f32, backward alone, in-process
 * alternation, with / without): interleave, 1 thread, (100,32,16,128) 0.94-0.97,
 * (400,32,16,128) 0.88, (35,20,200,200) 1.00, 2 threads (100,32,16,128) 0.99,
 * (400,32,16,128) 0.96, (35,20,200,200) 0.98; then the prefetch, 1 thread,
 * (100,32,16,128) 0.91-0.95, (400,32,16,128) 0.90-0.94, (35,20,200,200) 0.99; 2 threads
 * 1.00-1.01. Where a block exceeds half the L2, both cost: interleaved,
 * (35,20,650,650) 1.01-1.03 and (32,64,256,256) 0.99-1.02 (the block leaves the L2
 * before dw reads it, and evicts the steps' weights); prefetching, (32,64,256,256)
 * 1.014-1.016 at 1 and 2 threads (a step's 512 KB of lines displace the tiles'). */
static int FN(bwd_long_narrow)(int64_t N, int64_t H)
{
    int64_t row = FN(dg_ld)(H) * (int64_t)sizeof(TYPE), half = lstm_cpu()->l2 / 2;
    return FN(dw_one_product)(N, H) && N * row > half && KC * row <= half;
}

static int FN(bwd_interleave)(int64_t N, int64_t H)
{
    int mode = lstm_get_bwd_interleave();
    return mode >= 0 ? mode : FN(bwd_long_narrow)(N, H);
}

/* The products over rows lo..hi of dgates (all written): with dw, the K blocks of dw
 * that hold them (lo a multiple of KC, hi one or N); dx of those rows as dxm says
 * (1: the steps' tiles, bwd_rows; 2: the GEMM gx). Threads split output columns or
 * tiles, as in one call over all rows. */
static void FN(bwd_rows_done)(const FN(bwd_ctx) *ctx, FN(gemm_args) *g, FN(gemm_args) *gi,
                              int dw_two, int dw, FN(gemm_args) *gx, int dxm,
                              const FN(step_plan) *spx, int64_t x0, int64_t x1, int64_t lo,
                              int64_t hi, TYPE *ws, int tid, int num_threads)
{
    if (dw && (hi > lo || ctx->offs[ctx->T] == 0)) {   /* no rows at all: khi 0, dw = 0 */
        g->klo = gi->klo = lo;
        g->khi = gi->khi = hi;
        if (dw_two)
            FN(gemm)(gi, ws, tid, num_threads);
        FN(gemm)(g, ws, tid, num_threads);
    }
    if (hi <= lo)
        return;
    int64_t ldg = ctx->ldg, I = ctx->I;
    if (dxm == 1) {
        const TYPE *wih_b = (const TYPE *)((const unsigned char *)ctx->hdr +
                                           ctx->hdr->off_wih_b);
        FN(bwd_rows)(ctx->H, I, wih_b, x0, x1, ctx->dgates + lo * ldg, ldg, hi - lo, NULL, NULL,
                     ctx->dx + lo * I, spx);
    } else if (dxm == 2) {
        gx->M = hi - lo;
        gx->a = ctx->dgates + lo * ldg;
        gx->c = ctx->dx + lo * I;
        FN(gemm)(gx, ws, tid, num_threads);
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
    if (ctx->rows) {   /* every unit, this thread's rows of each step (x0..x1: the dx
                        * after the loop, still split by columns) */
        j0 = q0 = 0;
        j1 = nblk;
        q1 = rblk;
    }
    const int64_t s = (int64_t)sizeof(TYPE);
    const FN(step_plan) sp = FN(step_plan_for)(
        ((P ? q1 - q0 : j1 - j0) + (dx_steps ? (ctx->rows ? iblk : x1 - x0) : 0)) * G * V * s,
        BNB * V * s);
    /* bfloat16 training with bf16 products (bf16_backward.template.c: AMX tiles or
     * vdpbf16ps, lstm.c bf16_path_for): this thread's pair blocks */
    const uint32_t *bf_whh = NULL;
    uint32_t *bf_rows = NULL;
    int amx = 0;   /* bf16 products on AMX tiles (else vdpbf16ps) */
#if BWD_BF16
    const uint32_t *bf_wih = NULL;
    uint32_t *bf_dw = NULL;
    const int bf_path = !P && ctx->var && ctx->var->bf16_grads && ctx->var->bf16_ws
        ? bf16_path_for(ISA, B) : 0;
    if (bf_path) {
        amx = bf_path == 2;
        if (amx)
            FN(amx_begin)();
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

    /* split by units (not for the projection's or bfloat16 products' steps, whose blocks
     * are this thread's), the steps' blocks may be claimed at run time as in fwd_job */
    const int64_t chunk = ctx->rows || P || bf_whh
        ? 0 : FN(claim_chunk)(nblk, num_threads, BNB, B, 2 * B * G * V);
    const int dyn = chunk > 0;

    /* running dc starts as dc_n, db as 0; each thread owns the columns of its
     * blocks. db sums dgates as the cells write them (steps last to first, rows
     * in order), not in a pass over dgates after the loop (3% of the backward
     * at (32,64,256,256)). */
    const int64_t b0 = ctx->rows ? FN(split)(B, tid, num_threads) : 0;
    const int64_t b1 = ctx->rows ? FN(split)(B, tid + 1, num_threads) : B;
    for (int64_t j = j0; j < j1; j++) {
        int64_t off = j * V;
        int cnt = H - off < V ? (int)(H - off) : V;
        for (int64_t r = b0; r < b1; r++)
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
    /* dx after the steps: dxm 1 as the steps' tiles over all rows (wih_b), 2 a GEMM (wih,
       where w_ih and w_hh exceed the L2) */
    const int dxm = !ctx->dx || dx_steps ? 0 : !FN(dx_gemm)(I, H, P) ? 1 : 2;
    const FN(step_plan) spx = FN(step_plan_for)((x1 - x0) * G * V * s, BNB * V * s);
    FN(gemm_args) gx = {0};   /* dx = dgates . w_ih (rows set by bwd_rows_done) */
    gx.N = I;
    gx.K = G;
    gx.lda = ldg;
    gx.bpacked = dxm == 2 ? (const TYPE *)(base + ctx->hdr->off_wih) : NULL;
    gx.ldc = I;
    /* dw (and dx) interleaved with the steps (bwd_interleave): the K blocks at and
       above kdone are done */
    FN(gemm_args) g, gi;
    int dw_two = 0;
    const int ilv = !P && !(ctx->var && (ctx->var->rdrop || ctx->var->bf16_grads)) &&
                    FN(bwd_interleave)(N, H);
    int64_t kdone = N;
    if (ilv)
        dw_two = FN(dw_args)(ctx, NULL, &g, &gi);
    if (ctx->rows || dyn)   /* the last step's rows (or units) may be another thread's */
        lstm_barrier_wait(bar, num_threads);
    long phase = 0;   /* claimed steps so far (dyn) */
    for (int64_t t = T - 1; t >= 0; t--) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            continue;
        if (!P) {
            if (ctx->rows) {
                int64_t ra = FN(split)(n, tid, num_threads), rb = FN(split)(n, tid + 1, num_threads);
                FN(bwd_step)(ctx, t, j0, j1, -1, 0, &sp, NULL, NULL, 0, ra, rb);
                int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
                int64_t d0 = FN(split)(nn, tid, num_threads), d1 = FN(split)(nn, tid + 1, num_threads);
                if (dx_steps && d1 > d0)   /* dx of step t+1: this thread's rows of it */
                    FN(bwd_rows)(H, I, wih_b, 0, iblk, ctx->dgates + (offs[t + 1] + d0) * ldg, ldg,
                                 d1 - d0, NULL, NULL, ctx->dx + (offs[t + 1] + d0) * I, &sp);
            } else if (dyn) {   /* this step's blocks claimed at run time, as fwd_job's */
                long a, b, nx;
                int first = 1;
                lstm_claims_next(ctx->claims, phase, tid);
                while (lstm_claim(ctx->claims, phase, tid, num_threads, nblk, chunk, 0, &a,
                                  &b, &nx)) {
                    FN(bwd_step)(ctx, t, a, b, nx, first && ctx->pf_dg, &sp, NULL, NULL, 0, 0,
                                 n);
                    first = 0;
                }
                phase++;   /* the steps with rows, each ended by a barrier */
                if (dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])   /* dx of step t+1 */
                    FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates + offs[t + 1] * ldg, ldg,
                                 offs[t + 2] - offs[t + 1], NULL, NULL,
                                 ctx->dx + offs[t + 1] * I, &sp);
            } else {
                FN(bwd_step)(ctx, t, j0, j1, -1, ctx->pf_dg, &sp, bf_whh, bf_rows, amx, 0, n);
#if BWD_BF16
                if (bf_whh && dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])
                    FN(bwdb_rows)(H, I, bf_wih, x0, x1, bf_rows, offs[t + 2] - offs[t + 1],
                                  ctx->dx + offs[t + 1] * I, &sp, amx);   /* words made by bwd_step */
                else
#endif
                if (dx_steps && t + 1 < T && offs[t + 2] > offs[t + 1])   /* dx of step t+1 */
                    FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates + offs[t + 1] * ldg, ldg,
                                 offs[t + 2] - offs[t + 1], NULL, NULL,
                                 ctx->dx + offs[t + 1] * I, &sp);
            }
            int64_t lo = (offs[t] + KC - 1) / KC * KC;   /* the blocks from lo are written */
            /* split by rows, step t - 1 needs only this thread's rows of this step when it
             * has this step's row count (the same split): a barrier only there, before
             * the interleaved products (all rows of their blocks) and after the last step
             * (measured, 2 threads, training step (100,32,16,128): 0.96x the time with
             * one after every step) */
            if (!ctx->rows || (ilv && lo < kdone) || t == 0 || offs[t] - offs[t - 1] != n)
                lstm_barrier_wait(bar, num_threads);
            if (ilv && lo < kdone) {
                FN(bwd_rows_done)(ctx, &g, &gi, dw_two, 1, &gx, dxm, &spx, x0, x1, lo, kdone, ws,
                                  tid, num_threads);
                kdone = lo;
            }
            continue;
        }
        int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates + offs[t + 1] * ldg, nn, 0, n, ctx->dy + offs[t] * P,
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
        FN(bwdb_rows)(H, H, bf_whh, j0, j1, bf_rows, n0, ctx->dh0, &sp, amx);
        for (int64_t r = n0; r < B; r++)   /* rows without a step: dh_n */
            for (int64_t j = j0; j < j1; j++) {
                int64_t off = j * V, ro = r * H + off;
                int cnt = H - off < V ? (int)(H - off) : V;
                vstore_n(ctx->dh0 + ro, vload_n(ctx->dh_n + ro, cnt), cnt);
            }
        if (dx_steps && n0)
            FN(bwdb_rows)(H, I, bf_wih, x0, x1, bf_rows, n0, ctx->dx, &sp, amx);
    } else
#endif
    if (ctx->rows) {   /* dh0 and dx of step 0: this thread's rows; db in the cells' order */
        int64_t n0 = T ? offs[1] : 0;
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates, n0, b0, b1, NULL, ctx->dh0, &sp);
        int64_t d0 = FN(split)(n0, tid, num_threads), d1 = FN(split)(n0, tid + 1, num_threads);
        if (dx_steps && d1 > d0)
            FN(bwd_rows)(H, I, wih_b, 0, iblk, ctx->dgates + d0 * ldg, ldg, d1 - d0, NULL, NULL,
                         ctx->dx + d0 * I, &sp);
        int64_t c0 = FN(split)(nblk, tid, num_threads), c1 = FN(split)(nblk, tid + 1, num_threads);
        for (int64_t j = c0; j < c1; j++) {
            int64_t off = j * V;
            int cnt = H - off < V ? (int)(H - off) : V;
            vec acc[4] = {{0}, {0}, {0}, {0}};
            for (int64_t t = T - 1; t >= 0; t--)
                for (int64_t r = offs[t]; r < offs[t + 1]; r++)
                    for (int q = 0; q < 4; q++)
                        acc[q] = acc[q] + vload_n(ctx->dgates + r * ldg + q * H + off, cnt);
            for (int q = 0; q < 4; q++)
                vstore_n(ctx->db + q * H + off, acc[q], cnt);
        }
    } else {
        FN(bwd_dh)(ctx, q0, q1, ctx->dgates, T ? offs[1] : 0, 0, B, ctx->dhz, ctx->dh0, &sp);
        if (dx_steps && T && offs[1])
            FN(bwd_rows)(H, I, wih_b, x0, x1, ctx->dgates, ldg, offs[1], NULL, NULL, ctx->dx,
                         &sp);
    }

    /* [dw_ih | dw_hh] = dgates^T . [x | h_prev] (dw_args), unless interleaved */
    const TYPE *hm_all = ctx->var && ctx->var->rdrop   /* recurrent dropout */
        ? FN(masked_h_rows)(ctx->var, offs, N, R, ctx->y, ctx->h0, tid, num_threads, bar) : NULL;
#if BWD_BF16
    if (bf_dw) {   /* dw_ih, dw_hh with bf16 products (dwb_product, _amx) */
        int64_t NP = (N + 1) / 2, NPA = bf16_dw_pairs(N), mblk = (G + 15) / 16;
        uint32_t *ap = bf_dw, *bph = ap + mblk * NPA * 16;
        uint32_t *bpx = bph + (H + 15) / 16 * NPA * 16;
        int64_t a0 = FN(split)(mblk, tid, num_threads), a1 = FN(split)(mblk, tid + 1, num_threads);
        FN(dwb_rows) ra = {ctx->dgates, NULL, ldg, NULL, 0};
        for (int64_t b = a0; b < a1; b++)   /* AMX: a row per gate column */
            FN(dwb_pack16)(NP, NPA, N, G - b * 16 < 16 ? G - b * 16 : 16, FN(dwb_row), &ra,
                           b * 16, ap + b * NPA * 16, amx);
        FN(dwb_rows) rh = {ctx->y, ctx->h0, H, offs, 0};
        FN(dwb_rows) rx = {ctx->x, NULL, I, NULL, 0};
        int64_t hb = (H + 15) / 16, xb = (I + 15) / 16;
        int64_t b0 = FN(split)(hb + xb, tid, num_threads), b1 = FN(split)(hb + xb, tid + 1, num_threads);
        for (int64_t b = b0; b < b1; b++) {
            if (b < hb)
                FN(dwb_pack16)(NP, NPA, N, H - b * 16 < 16 ? H - b * 16 : 16, FN(dwb_row), &rh,
                               b * 16, bph + b * NPA * 16, 0);
            else
                FN(dwb_pack16)(NP, NPA, N, I - (b - hb) * 16 < 16 ? I - (b - hb) * 16 : 16,
                               FN(dwb_row), &rx, (b - hb) * 16, bpx + (b - hb) * NPA * 16, 0);
        }
        lstm_barrier_wait(bar, num_threads);
        int64_t m0 = a0 * 16, m1 = a1 * 16 < G ? a1 * 16 : G;
        if (m0 < m1 && amx) {
            FN(dwb_product_amx)(m0, m1, H, NPA, ap, bph, ctx->dw_hh);
            FN(dwb_product_amx)(m0, m1, I, NPA, ap, bpx, ctx->dw_ih);
        } else if (m0 < m1) {
            FN(dwb_product)(m0, m1, H, NP, NPA, ap, bph, ctx->dw_hh);
            FN(dwb_product)(m0, m1, I, NP, NPA, ap, bpx, ctx->dw_ih);
        }
        goto after_dw;
    }
#endif
    if (!ilv) {
        dw_two = FN(dw_args)(ctx, hm_all, &g, &gi);
        FN(bwd_rows_done)(ctx, &g, &gi, dw_two, 1, &gx, 0, &spx, x0, x1, 0, N, ws, tid,
                          num_threads);
    }
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
    /* dx after the loop (with ilv, the rows below kdone and their dw: none after the
       loop's last step) */
    if (ilv || dxm)
        FN(bwd_rows_done)(ctx, &g, &gi, dw_two, ilv, &gx, dxm, &spx, x0, x1, 0, ilv ? kdone : N,
                          ws, tid, num_threads);
#if BWD_BF16
    if (amx)
        FN(amx_end)();
#endif
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
    if (var && var->bf16_gates && IS_F64)   /* bfloat16 training's saved bits: _f32 only */
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
                       (TYPE *)wsb, var, var && var->peephole ? dpeep : NULL, NULL, 0, 0, 0,
                       NULL, NULL, NULL};
    ctx.rows = !P && !var && FN(bwd_rows_split)(B, I, H, ctx.dx != NULL, num_threads);
    ctx.pf_dg = num_threads > 1 && !ctx.rows;   /* split by rows, dgates[t+1] is this thread's */
    ctx.pf_next = !P && FN(bwd_long_narrow)(N, H);
    if (var && var->bf16_gates) {   /* bfloat16 training's saved bf16 bits */
        ctx.g16 = var->bf16_gates;
        ctx.c16 = var->bf16_c;
    }
    if (var && var->zoneout)   /* after the rows of h_{t-1} * rdrop */
        ctx.dhz = (TYPE *)(FN(align_ptr)(var->var_ws) + ALIGN64(N * (P ? P : H) * s));
    if (num_threads < 1)
        num_threads = 1;
    lstm_claims claims;
    lstm_claims_init(&claims, num_threads, lstm_get_claims() == 2);
    ctx.claims = &claims;
    lstm_pool_run(FN(bwd_job), &ctx, num_threads);
    return LSTM_OK;
}
