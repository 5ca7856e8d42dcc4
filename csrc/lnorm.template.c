/* lnorm.template.c: the layer-normalized LSTM (haste's LayerNormLSTM; equations, the
 * saved statistics and their columns in backends/reference.py, "Layer-normalized LSTM"),
 * forward and backward, of the C kernel. Included by lstm.template.c after the plain
 * forward and backward, whose pieces it reuses; no library fuses a layer norm into an
 * LSTM's recurrence on the CPU (oneDNN's RNN has none), hence this file.
 *
 * Why not a branch of the plain cell: a row's layer norm needs all 4H values of each
 * product before any gate is activated, and the two products apart (each has its own
 * statistics), while the plain step tiles sum x.w_ih^T and h.w_hh^T per tile of hidden
 * units. So:
 * Forward: x.w_ih^T of all rows in one GEMM (no bias) into gates (training) or a
 *   scratch [N,4H] (inference; or, where ln_fuse_x says so, by each step's tiles into
 *   the scratch's first rows: fwd_step with no h_prev). Per step the step tiles of the
 *   plain forward (fwd_step, its packed w_hh, threads splitting hidden blocks) compute
 *   h_{t-1}.w_hh^T with a cell that only stores the tile (fwd_cell_args.raw) into zh
 *   [B,4H]; after a barrier each row's cell (ln_row_stats2, ln_cell_gates, ln_row_stats,
 *   ln_cell_out, each over the step's rows; threads split the rows): both products' LNs
 *   (the input's there too, while its row is in cache: a pass over all rows before the
 *   loop cost a write and a read of [N,4H] more), the gates, c_t, c_t's LN, h_t. Saved
 *   for backward, as Numba's (the contract is one): the gates, c and stats
 *   [N, LSTM_LN_STATS_COLS(H)] (means, rstds, then the normalized products zhat_x, zhat_h
 *   from columns LSTM_LN_ZHAT, LSTM_LN_ZHAT_H(H): lstm.h); with nothing saved stats is
 *   [N, 6] and c the running state in c_n.
 * Backward step: dh = dz_h[t+1].w_hh (* rdrop) + dy (bwd_dh of the plain backward:
 *   its tiles on the packed w_hh, threads splitting output blocks); after a barrier the
 *   rows' cells, threads splitting the rows (ln_cell_grad: c_t's LN backward, the gate
 *   gradients, both products' LN backward into dz_h, dz_x, and each row's terms of the
 *   parameters' gradients kept in its row buffer); after a second barrier the
 *   parameters' sums (ln_param_sums), threads splitting the hidden units, each sum adding
 *   the rows in order (steps last to first), so the bits do not depend on the thread
 *   count. After the loop the whole-sequence GEMMs: dw_ih = dz_x^T.x,
 *   dw_hh = dz_h^T.h_prev, dx = dz_x.w_ih.
 * The elementwise code is written in the vector layer (vload_n/vstore_n, the sums in
 * vectors whose lanes are added in order: ln_hsum), the same operations in the same
 * order at every SIMD level; pre-activations are plain multiplies and adds (FP
 * contraction is off), so the backward recomputes the forward's clamped pre-activations
 * bit for bit. No projection, no cifg (the callers refuse them). */

#include <math.h>

#define LN_EPS 1e-5   /* reference.LN_EPS (haste: rsqrt(var + 1e-5)) */
#define LN_RB 7       /* a backward row's buffer: LN_RB * H values (ln_cell_grad) */

/* The lanes of v added pairwise (halves, then quarters, ...): a fixed order, log2(V)
 * dependent adds instead of V (the sums' latency was ~60 cycles per row statistic). With
 * AVX-512 / AVX2 the halves are added in registers (extract, add), the same adds in the same
 * order as the portable path's (which goes through memory: a store and V reloads). */
INLINE TYPE FN(ln_hsum)(vec v)
{
#if ISA == 2 && IS_F64
    __m512d a = (__m512d)v;
    __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
#elif ISA == 2
    __m512 a = (__m512)v;
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
#elif ISA == 1 && IS_F64
    __m256d a = (__m256d)v;
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
#elif ISA == 1
    __m256 a = (__m256)v;
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
#else
    TYPE t[V] __attribute__((aligned(64)));
    vstore(t, v);
#pragma GCC unroll 16
    for (int w = V / 2; w > 0; w /= 2)
#pragma GCC unroll 16
        for (int l = 0; l < w; l++)
            t[l] += t[l + w];
    return t[0];
#endif
}

/* st[0], st[1] = mean and rstd = 1 / sqrt(var + LN_EPS) of z[:n] (biased variance, two
 * passes, two vector partial sums each, the last n mod 2V values on a scalar). (One pass,
 * sum and sum of squares shifted by z[0], saved ~20 us of 470 at (32, 16, 64, 64) but
 * lost float32 accuracy beyond the tests' tolerance where c_t's spread is small.) */
INLINE void FN(ln_row_stats)(const TYPE *z, int64_t n, TYPE *st)
{
    vec s0 = {0}, s1 = {0};
    int64_t n2 = n - n % (2 * V), j;
    for (j = 0; j < n2; j += 2 * V) {
        s0 = s0 + vload(z + j);
        s1 = s1 + vload(z + j + V);
    }
    TYPE t = 0;
    for (j = n2; j < n; j++)
        t += z[j];
    TYPE mean = (FN(ln_hsum)(s0 + s1) + t) / (TYPE)n;
    vec m = vset1(mean), v0 = {0}, v1 = {0};
    for (j = 0; j < n2; j += 2 * V) {
        vec d0 = vload(z + j) - m, d1 = vload(z + j + V) - m;
        v0 = v0 + d0 * d0;
        v1 = v1 + d1 * d1;
    }
    t = 0;
    for (j = n2; j < n; j++) {
        TYPE d = z[j] - mean;
        t += d * d;
    }
    TYPE var = (FN(ln_hsum)(v0 + v1) + t) / (TYPE)n + (TYPE)LN_EPS;
    st[0] = mean;
    st[1] = (TYPE)1 / (TYPE)sqrt((double)var);
}

/* ln_row_stats of two rows za, zb (n each) into sa[0:2], sb[0:2], interleaved: each row's
 * sums are ln_row_stats' (the same adds in the same order, so the same bits), but the two
 * rows' dependent chains (adds, lane sums, divisions, square root) overlap instead of
 * following each other (the forward's two products: ~150 cycles of latency per statistic). */
INLINE void FN(ln_row_stats2)(const TYPE *za, const TYPE *zb, int64_t n, TYPE *sa, TYPE *sb)
{
    vec a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    int64_t n2 = n - n % (2 * V), j;
    for (j = 0; j < n2; j += 2 * V) {
        a0 = a0 + vload(za + j);
        a1 = a1 + vload(za + j + V);
        b0 = b0 + vload(zb + j);
        b1 = b1 + vload(zb + j + V);
    }
    TYPE ta = 0, tb = 0;
    for (j = n2; j < n; j++) {
        ta += za[j];
        tb += zb[j];
    }
    TYPE mean_a = (FN(ln_hsum)(a0 + a1) + ta) / (TYPE)n;
    TYPE mean_b = (FN(ln_hsum)(b0 + b1) + tb) / (TYPE)n;
    vec ma = vset1(mean_a), mb = vset1(mean_b);
    a0 = a1 = b0 = b1 = (vec){0};
    for (j = 0; j < n2; j += 2 * V) {
        vec d0 = vload(za + j) - ma, d1 = vload(za + j + V) - ma;
        vec e0 = vload(zb + j) - mb, e1 = vload(zb + j + V) - mb;
        a0 = a0 + d0 * d0;
        a1 = a1 + d1 * d1;
        b0 = b0 + e0 * e0;
        b1 = b1 + e1 * e1;
    }
    ta = tb = 0;
    for (j = n2; j < n; j++) {
        TYPE d = za[j] - mean_a, e = zb[j] - mean_b;
        ta += d * d;
        tb += e * e;
    }
    TYPE var_a = (FN(ln_hsum)(a0 + a1) + ta) / (TYPE)n + (TYPE)LN_EPS;
    TYPE var_b = (FN(ln_hsum)(b0 + b1) + tb) / (TYPE)n + (TYPE)LN_EPS;
    sa[0] = mean_a;
    sa[1] = (TYPE)1 / (TYPE)sqrt((double)var_a);
    sb[0] = mean_b;
    sb[1] = (TYPE)1 / (TYPE)sqrt((double)var_b);
}

/* One row of a forward step (the parts below together): gx (4H) holds x.w_ih^T and receives the activated gates
 * (its statistics into st[0:2]); zh (4H) the recurrent product, its statistics into
 * st[2:4]; hz: stats' zhat_h (training: both normalized products go to stats, zhat_x at
 * st[LSTM_LN_ZHAT:]), or zh itself (inference: neither is kept); cp c_{t-1} (may be ct: the
 * running state), ct c_t, its statistics into st[4:6]; ht = o * tanh(LN(c_t)), then with
 * zoneout (zm, hprev rows) (ht - hprev)*zm + hprev. */
/* The cell is split in four parts (ln_fwd_job runs each over all of the step's rows
 * before the next): the products' statistics (ln_row_stats2), the gates and c_t
 * (ln_cell_gates), c_t's statistics (ln_row_stats), h_t (ln_cell_out). A row's statistics are chains
 * of dependent adds, lane sums, divisions and a square root (~150 cycles each) that one
 * row's cell could not hide; rows are independent, so running the same part over the rows
 * lets the out-of-order core overlap their chains. Same operations per row: same bits. */
KERNEL void FN(ln_cell_gates)(TYPE *gx, const TYPE *zh, TYPE *hz, const TYPE *cp, TYPE *ct,
                              TYPE *st, const TYPE *ln, const TYPE *b, int64_t H,
                              const TYPE *peep, TYPE clip, TYPE cell_clip)
{
    const int64_t G = 4 * H;
    vec mx = vset1(st[0]), rx = vset1(st[1]), m = vset1(st[2]), rs = vset1(st[3]);
    const int keep = hz != zh;   /* training: both normalized products into stats */
    for (int64_t u = 0; u < H; u += V) {
        int k = H - u < V ? (int)(H - u) : V;
        vec cpv = vload_n(cp + u, k);
        vec xi = (vload_n(gx + u, k) - mx) * rx, xf = (vload_n(gx + H + u, k) - mx) * rx;
        vec xg = (vload_n(gx + 2 * H + u, k) - mx) * rx, xo = (vload_n(gx + 3 * H + u, k) - mx) * rx;
        vec ni = (vload_n(zh + u, k) - m) * rs, nf = (vload_n(zh + H + u, k) - m) * rs;
        vec ng = (vload_n(zh + 2 * H + u, k) - m) * rs, no = (vload_n(zh + 3 * H + u, k) - m) * rs;
        if (keep) {
            vstore_n(hz + u, ni, k);
            vstore_n(hz + H + u, nf, k);
            vstore_n(hz + 2 * H + u, ng, k);
            vstore_n(hz + 3 * H + u, no, k);
            TYPE *xh = st + LSTM_LN_ZHAT;
            vstore_n(xh + u, xi, k);
            vstore_n(xh + H + u, xf, k);
            vstore_n(xh + 2 * H + u, xg, k);
            vstore_n(xh + 3 * H + u, xo, k);
        }
        /* LN(x.w_ih^T) * g_ih + b, then + LN(h.w_hh^T) * g_hh (the backward's order) */
        vec zi = (xi * vload_n(ln + u, k) + vload_n(b + u, k)) + ni * vload_n(ln + G + u, k);
        vec zf = (xf * vload_n(ln + H + u, k) + vload_n(b + H + u, k)) +
                 nf * vload_n(ln + G + H + u, k);
        vec zg = (xg * vload_n(ln + 2 * H + u, k) + vload_n(b + 2 * H + u, k)) +
                 ng * vload_n(ln + G + 2 * H + u, k);
        vec zo = (xo * vload_n(ln + 3 * H + u, k) + vload_n(b + 3 * H + u, k)) +
                 no * vload_n(ln + G + 3 * H + u, k);
        if (peep) {
            zi = zi + vload_n(peep + u, k) * cpv;
            zf = zf + vload_n(peep + H + u, k) * cpv;
        }
        if (clip > 0) {
            zi = FN(vclamp)(zi, clip);
            zf = FN(vclamp)(zf, clip);
            zg = FN(vclamp)(zg, clip);
        }
        vec i = vsigmoid(zi), f = vsigmoid(zf), g = vtanh(zg);
        vec cv = f * cpv + i * g;
        if (cell_clip > 0)
            cv = FN(vclamp)(cv, cell_clip);
        if (peep)
            zo = zo + vload_n(peep + 2 * H + u, k) * cv;
        if (clip > 0)
            zo = FN(vclamp)(zo, clip);
        vstore_n(gx + u, i, k);
        vstore_n(gx + H + u, f, k);
        vstore_n(gx + 2 * H + u, g, k);
        vstore_n(gx + 3 * H + u, vsigmoid(zo), k);
        vstore_n(ct + u, cv, k);
    }
}

KERNEL void FN(ln_cell_out)(const TYPE *gx, const TYPE *ct, TYPE *ht, const TYPE *st, const TYPE *ln,
                            int64_t H, const TYPE *zm, const TYPE *hprev)
{
    const int64_t G = 4 * H;
    vec mc = vset1(st[4]), rc = vset1(st[5]);
    for (int64_t u = 0; u < H; u += V) {
        int k = H - u < V ? (int)(H - u) : V;
        vec n = (vload_n(ct + u, k) - mc) * rc * vload_n(ln + G + G + u, k) +
                vload_n(ln + G + G + H + u, k);
        vec h = vload_n(gx + 3 * H + u, k) * vtanh(n);
        if (zm) {
            vec hp = vload_n(hprev + u, k);
            h = (h - hp) * vload_n(zm + u, k) + hp;
        }
        vstore_n(ht + u, h, k);
    }
}

/* How the threads share a step: 1, each its own rows through the whole step (the
 * product of all hidden blocks, then the rows' cells), or 0, the product's hidden blocks,
 * a barrier, then the rows' cells. A row's cell needs the row's whole product, so
 * splitting the blocks costs a barrier between the two; splitting the rows needs none
 * in the forward (a row's next step reads only its own h) and one instead of two in the
 * backward, but every thread then reads all of w_hh every step: only where it fits in
 * half the L2, and with at least two rows per thread. Any split gives the same bits. */
static int FN(ln_split_rows)(int64_t B, int64_t H, int num_threads)
{
    return num_threads > 1 && B >= 2 * num_threads &&
           4 * H * H * (int64_t)sizeof(TYPE) <= lstm_cpu()->l2 / 2;
}

/* Whether the forward's steps make x_t.w_ih^T themselves (as a second product of
 * fwd_step's tiles, stored raw beside h.w_hh^T), or one GEMM over all rows before the
 * loop. Only in inference: there the hoisted product is an [N,4H] scratch written and read
 * again, where the steps' version reuses B rows that stay in cache; a training forward
 * writes the saved gates anyway, and there the steps' two short products (each K = I or
 * H, against the plain step's one of I + H) cost more than the GEMM (measured, Intel Xeon
 * family 6 model 167, 1 thread, steps / GEMM, ms: training (100,32,16,128) 17.8/16.9,
 * (35,20,200,200) 11.1/10.6, (32,64,128,128) 14.8/14.6; inference (32,16,64,64)
 * .313/.328, (32,64,128,128) 3.85/4.20, (100,32,16,128) 3.93/4.18). Also only while
 * [w_ih | w_hh] fits in half the L2: beyond, the steps re-read w_ih from L3 (inference
 * (35,20,200,200), 1.28 MB of a 2 MiB L2: 3.42/3.27). And only for I <= KC, where the
 * GEMM sums each product in one K block: the same FMAs in the same order as the steps'
 * tiles, so inference and training forwards (and a stream's steps) give the same bits. */
static int FN(ln_fuse_x)(int save, int64_t I, int64_t H)
{
    return !save && I <= KC && (I + H) * 4 * H * (int64_t)sizeof(TYPE) <= lstm_cpu()->l2 / 2;
}

typedef struct {
    int64_t T, B, I, H;
    const FN(packed_hdr) *hdr;
    const int64_t *offs;
    const TYPE *x, *h0, *c0;
    TYPE *y, *h_n, *c_n;
    TYPE *gates;     /* [N,4H]: the saved gates, or scratch (inference) */
    TYPE *c;         /* [N,H], or NULL: the running state in c_n (inference) */
    TYPE *stats;     /* [N,S] */
    int64_t S;
    TYPE *zh;        /* [B,4H] the step's recurrent products */
    TYPE *ws;
    const lstm_variant *var;
} FN(ln_fwd_ctx);

KERNEL void FN(ln_fwd_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(ln_fwd_ctx) *ctx = (const FN(ln_fwd_ctx) *)arg;
    const lstm_variant *var = ctx->var;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, G = 4 * H, S = ctx->S;
    const int64_t *offs = ctx->offs;
    int64_t N = offs[T];
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(0);
    const TYPE *ln = (const TYPE *)var->layer_norm, *bias = (const TYPE *)(base + ctx->hdr->off_b);
    const TYPE *peep = (const TYPE *)var->peephole;
    const TYPE clip = (TYPE)var->clip, cell_clip = (TYPE)var->cell_clip;
    const TYPE *rdrop = (const TYPE *)var->rdrop, *zmask = (const TYPE *)var->zoneout;
    TYPE *hm = rdrop ? (TYPE *)FN(align_ptr)(var->var_ws) + tid * B * H : NULL;
    if (!ctx->c && ctx->c_n != ctx->c0) {   /* the running c starts as c0 */
        int64_t r0 = FN(split)(B, tid, num_threads), r1 = FN(split)(B, tid + 1, num_threads);
        if (r1 > r0)
            memcpy(ctx->c_n + r0 * H, ctx->c0 + r0 * H, (size_t)((r1 - r0) * H) * sizeof(TYPE));
    }
    /* x.w_ih^T (no bias: added after the LN) in the steps (ln_fuse_x), else of all rows
     * in one GEMM before them */
    const int fuse = FN(ln_fuse_x)(ctx->c != NULL, I, H);
    if (!fuse) {
        FN(gemm_args) g = {0};
        g.M = N;
        g.N = G;
        g.K = I;
        g.a = ctx->x;
        g.lda = I;
        g.bpacked = (const TYPE *)(base + ctx->hdr->off_wih_t);
        g.c = ctx->gates;
        g.ldc = G;
        FN(gemm)(&g, ws, tid, num_threads);
    }
    lstm_barrier_wait(bar, num_threads);
    FN(fwd_cell_args) ca = {0}, cx = {0};
    ca.H = cx.H = H;
    ca.var = cx.var = 1;
    int64_t nblk = (H + V - 1) / V;
    const int rows = FN(ln_split_rows)(B, H, num_threads);
    int64_t j0 = rows ? 0 : FN(split)(nblk, tid, num_threads);
    int64_t j1 = rows ? nblk : FN(split)(nblk, tid + 1, num_threads);
    int64_t b0 = FN(split)(B, tid, num_threads), b1 = FN(split)(B, tid + 1, num_threads);
    const TYPE *w = (const TYPE *)(base + ctx->hdr->off_whh_f);
    const int64_t s = (int64_t)sizeof(TYPE);
    const FN(step_plan) sp =
        FN(step_plan_for)((j1 - j0) * ((fuse ? I : 0) + H) * 4 * V * s, 4 * V * s);
    for (int64_t t = 0; t < T; t++) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            break;
        /* the step's rows of x.w_ih^T, then of the activated gates: the saved gates, or
         * (inference) scratch, whose first rows serve every step when the steps make it */
        TYPE *gt = ctx->gates + (fuse && !ctx->c ? 0 : offs[t] * G);
        /* the product for rows m0..m1: this thread's rows, or all of them */
        int64_t m0 = rows ? b0 : 0, m1 = !rows ? n : b1 < n ? b1 : n;
        const TYPE *hp = t ? ctx->y + offs[t - 1] * H : ctx->h0, *hprev = hp;
        if (hm) {   /* recurrent dropout: this thread's copy of h_{t-1} * mask */
            for (int64_t e = m0 * H; e < m1 * H; e++)
                hm[e] = hp[e] * rdrop[e];
            hp = hm;
        }
        ca.raw = ctx->zh + m0 * G;
        cx.raw = gt + m0 * G;
        if (m1 > m0 && fuse)
            FN(fwd_step)(&cx, m1 - m0, I, H, j0, j1, -1, w, I, ctx->x + (offs[t] + m0) * I, NULL,
                         (int)(t & 1), &sp);
        if (m1 > m0)
            FN(fwd_step)(&ca, m1 - m0, I, H, j0, j1, -1, w, 0, ctx->x, hp + m0 * H, (int)(t & 1), &sp);
        if (!rows)
            lstm_barrier_wait(bar, num_threads);
        int64_t r0 = rows ? m0 : FN(split)(n, tid, num_threads);
        int64_t r1 = rows ? m1 : FN(split)(n, tid + 1, num_threads);
        for (int64_t r = r0; r < r1; r++) {
            int64_t q = offs[t] + r;
            FN(ln_row_stats2)(gt + r * G, ctx->zh + r * G, G, ctx->stats + q * S,
                              ctx->stats + q * S + 2);
        }
        for (int64_t r = r0; r < r1; r++) {
            int64_t q = offs[t] + r;
            TYPE *st = ctx->stats + q * S, *zr = ctx->zh + r * G;
            const TYPE *cp;
            TYPE *ct;
            if (ctx->c) {
                cp = t ? ctx->c + (offs[t - 1] + r) * H : ctx->c0 + r * H;
                ct = ctx->c + q * H;
            } else {
                cp = ct = ctx->c_n + r * H;
            }
            FN(ln_cell_gates)(gt + r * G, zr, S > 6 ? st + LSTM_LN_ZHAT_H(H) : zr, cp,
                              ct, st, ln, bias, H, peep, clip, cell_clip);
        }
        for (int64_t r = r0; r < r1; r++) {
            int64_t q = offs[t] + r;
            FN(ln_row_stats)(ctx->c ? ctx->c + q * H : ctx->c_n + r * H, H, ctx->stats + q * S + 4);
        }
        for (int64_t r = r0; r < r1; r++) {
            int64_t q = offs[t] + r;
            TYPE *ct = ctx->c ? ctx->c + q * H : ctx->c_n + r * H;
            FN(ln_cell_out)(gt + r * G, ct, ctx->y + q * H, ctx->stats + q * S, ln, H,
                            zmask ? zmask + q * H : NULL, hprev + r * H);
        }
        if (!rows)
            lstm_barrier_wait(bar, num_threads);
    }
    if (rows)
        lstm_barrier_wait(bar, num_threads);
    if (tid == 0) {
        FN(last_rows)(offs, T, B, H, ctx->h0, ctx->y, ctx->h_n);
        if (ctx->c)
            FN(last_rows)(offs, T, B, H, ctx->c0, ctx->c, ctx->c_n);
    }
}

/* variant.ln_ws bytes: forward zh [B,4H] (+ the inference's gates scratch [N,4H]);
 * backward dz_x [N][ldg], dh [B,H], the parameters' sums [17H], the rows' buffers [2][B][LN_RB H]. */
static size_t FN(ln_ws_size)(int64_t N, int64_t B, int64_t H, int save, int backward)
{
    int64_t s = (int64_t)sizeof(TYPE);
    if (backward)
        return (size_t)(ALIGN64(N * FN(dg_ld)(H) * s) + ALIGN64(B * H * s) + ALIGN64(17 * H * s) +
                        ALIGN64(2 * B * LN_RB * H * s)) + 64;
    return (size_t)(ALIGN64(B * 4 * H * s) + (save ? 0 : ALIGN64(N * 4 * H * s))) + 64;
}

static int FN(ln_forward)(int64_t T, int64_t B, int64_t I, int64_t H,
                          const FN(packed_hdr) *hdr, const int64_t *batch_sizes, const TYPE *x,
                          const TYPE *h0, const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,
                          TYPE *gates, TYPE *c, void *workspace, int num_threads,
                          const lstm_variant *var)
{
    int save = gates != NULL;
    int64_t S = var->ln_stats_cols;
    if (!var->ln_stats || !var->ln_ws || var->cifg || (S != 6 && S != LSTM_LN_STATS_COLS(H)) ||
        (save && S != LSTM_LN_STATS_COLS(H)))
        return LSTM_ERR_ARG;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    wsb += FN(offs_bytes)(T);
    unsigned char *lw = FN(align_ptr)(var->ln_ws);
    TYPE *zh = (TYPE *)lw;
    if (!save)
        gates = (TYPE *)(lw + ALIGN64(B * 4 * H * (int64_t)sizeof(TYPE)));
    FN(ln_fwd_ctx) ctx = {T, B, I, H, hdr, offs, x, h0, c0, y, h_n, c_n, gates, c,
                          (TYPE *)var->ln_stats, S, zh, (TYPE *)wsb, var};
    lstm_pool_run(FN(ln_fwd_job), &ctx, num_threads);
    return LSTM_OK;
}

/* ---- backward --------------------------------------------------------------- */

/* d, or 0 where the pre-activation z was clamped (|z| > clip; NaN passes). */
INLINE vec FN(ln_keep)(vec d, vec z, TYPE clip)
{
    return vselect(vabs(z) > vset1(clip), (vec){0}, d);
}

/* One row of a backward step (Numba's ln_cell_grad, the same sums): dm (H) the gradient
 * reaching h~_t, g_t the gates, ct c_t, cp c_{t-1}; dc (H) the running gradient of c
 * (becomes that of c_{t-1}); writes the gradients of both products through their LNs,
 * dzh and dzx (4H). xh, hh the forward's normalized products. rb [LN_RB H], the row's
 * own: [0, 2H) scratch, then what the parameters' gradients need (ln_param_sums): the
 * gate gradients dg [2H, 6H) and the gradient of c_t's normalized value before its gain
 * [6H, 7H). Rows are independent, so threads split them. */
KERNEL void FN(ln_cell_grad)(const TYPE *dm, const TYPE *g_t, const TYPE *ct, const TYPE *cp,
                             TYPE *dc, TYPE *dzh, TYPE *dzx, const TYPE *xh, const TYPE *hh,
                             const TYPE *st, const TYPE *ln, const TYPE *b, TYPE *rb,
                             int64_t H, const TYPE *peep, TYPE clip, TYPE cell_clip)
{
    const int64_t G = 4 * H;
    TYPE *tb = rb, *dg = rb + 2 * H, *dn = rb + 6 * H;
    vec mc = vset1(st[4]), rc = vset1(st[5]);
    vec s1 = {0}, s2 = {0};
    for (int64_t u = 0; u < H; u += V) {   /* c_t's LN backward: dn = dm o (1 - tanh^2 n) */
        int k = H - u < V ? (int)(H - u) : V;
        vec ch = (vload_n(ct + u, k) - mc) * rc;
        vec gc = vload_n(ln + G + G + u, k);
        vec tn = vtanh(ch * gc + vload_n(ln + G + G + H + u, k));
        vec d = vload_n(dm + u, k) * vload_n(g_t + 3 * H + u, k) * (1 - tn * tn);
        vstore_n(dn + u, d, k);
        vstore_n(tb + u, tn, k);
        d = d * gc;   /* 0 in the lanes past H: the loads are masked */
        vstore_n(tb + H + u, d, k);
        s1 = s1 + d;
        s2 = s2 + d * ch;
    }
    vec m1 = vset1(FN(ln_hsum)(s1) / (TYPE)H), m2 = vset1(FN(ln_hsum)(s2) / (TYPE)H);
    vec ax = {0}, qx = {0}, ah = {0}, qh = {0};
    for (int64_t u = 0; u < H; u += V) {
        int k = H - u < V ? (int)(H - u) : V;
        vec i = vload_n(g_t + u, k), f = vload_n(g_t + H + u, k);
        vec g = vload_n(g_t + 2 * H + u, k), o = vload_n(g_t + 3 * H + u, k);
        vec ctv = vload_n(ct + u, k), cpv = vload_n(cp + u, k);
        vec ch = (ctv - mc) * rc;
        vec tn = vload_n(tb + u, k);
        vec dgo = vload_n(dm + u, k) * tn * o * (1 - o);
        if (clip > 0) {
            vec zo = vload_n(xh + 3 * H + u, k) * vload_n(ln + 3 * H + u, k) +
                     vload_n(b + 3 * H + u, k) +
                     vload_n(hh + 3 * H + u, k) * vload_n(ln + G + 3 * H + u, k);
            if (peep)
                zo = zo + vload_n(peep + 2 * H + u, k) * ctv;
            dgo = FN(ln_keep)(dgo, zo, clip);
        }
        vec dcv = vload_n(dc + u, k) + rc * (vload_n(tb + H + u, k) - m1 - ch * m2);
        if (peep)
            dcv = dcv + vload_n(peep + 2 * H + u, k) * dgo;
        if (cell_clip > 0)
            dcv = FN(ln_keep)(dcv, f * cpv + i * g, cell_clip);
        vec dgi = dcv * g * i * (1 - i), dgf = dcv * cpv * f * (1 - f), dgg = dcv * i * (1 - g * g);
        if (clip > 0) {
            vec zi = vload_n(xh + u, k) * vload_n(ln + u, k) + vload_n(b + u, k) +
                     vload_n(hh + u, k) * vload_n(ln + G + u, k);
            vec zf = vload_n(xh + H + u, k) * vload_n(ln + H + u, k) + vload_n(b + H + u, k) +
                     vload_n(hh + H + u, k) * vload_n(ln + G + H + u, k);
            vec zg = vload_n(xh + 2 * H + u, k) * vload_n(ln + 2 * H + u, k) +
                     vload_n(b + 2 * H + u, k) +
                     vload_n(hh + 2 * H + u, k) * vload_n(ln + G + 2 * H + u, k);
            if (peep) {
                zi = zi + vload_n(peep + u, k) * cpv;
                zf = zf + vload_n(peep + H + u, k) * cpv;
            }
            dgi = FN(ln_keep)(dgi, zi, clip);
            dgf = FN(ln_keep)(dgf, zf, clip);
            dgg = FN(ln_keep)(dgg, zg, clip);
        }
        vstore_n(dg + u, dgi, k);
        vstore_n(dg + H + u, dgf, k);
        vstore_n(dg + 2 * H + u, dgg, k);
        vstore_n(dg + 3 * H + u, dgo, k);
        vec ei = dgi * vload_n(ln + u, k), ef = dgf * vload_n(ln + H + u, k);
        vec eg = dgg * vload_n(ln + 2 * H + u, k), eo = dgo * vload_n(ln + 3 * H + u, k);
        ax = ax + ((ei + ef) + (eg + eo));
        qx = qx + ((ei * vload_n(xh + u, k) + ef * vload_n(xh + H + u, k)) +
                   (eg * vload_n(xh + 2 * H + u, k) + eo * vload_n(xh + 3 * H + u, k)));
        ei = dgi * vload_n(ln + G + u, k);
        ef = dgf * vload_n(ln + G + H + u, k);
        eg = dgg * vload_n(ln + G + 2 * H + u, k);
        eo = dgo * vload_n(ln + G + 3 * H + u, k);
        ah = ah + ((ei + ef) + (eg + eo));
        qh = qh + ((ei * vload_n(hh + u, k) + ef * vload_n(hh + H + u, k)) +
                   (eg * vload_n(hh + 2 * H + u, k) + eo * vload_n(hh + 3 * H + u, k)));
        vec dcp = dcv * f;
        if (peep)
            dcp = dcp + vload_n(peep + u, k) * dgi + vload_n(peep + H + u, k) * dgf;
        vstore_n(dc + u, dcp, k);
    }
    vec mx1 = vset1(FN(ln_hsum)(ax) / (TYPE)G), mx2 = vset1(FN(ln_hsum)(qx) / (TYPE)G);
    vec mh1 = vset1(FN(ln_hsum)(ah) / (TYPE)G), mh2 = vset1(FN(ln_hsum)(qh) / (TYPE)G);
    vec rx = vset1(st[1]), rh = vset1(st[3]);
    for (int64_t j = 0; j < G; j += V) {   /* dz = rstd (d g - mean(d g) - zhat mean(d g zhat)) */
        int k = G - j < V ? (int)(G - j) : V;
        vec d = vload_n(dg + j, k), xv = vload_n(xh + j, k), hv = vload_n(hh + j, k);
        vstore_n(dzx + j, rx * (d * vload_n(ln + j, k) - mx1 - xv * mx2), k);
        vstore_n(dzh + j, rh * (d * vload_n(ln + G + j, k) - mh1 - hv * mh2), k);
    }
}

/* The parameters' gradients of a step's n rows added to acc [17H] (dg_ih, dg_hh, dg_c,
 * db_c: the layer_norm layout; db (4H), dpeep (3H)), hidden units u0..u1 (the thread's
 * share: every sum stays in one thread), each row's terms added in row order: with
 * the steps last to first, one fixed order whatever the thread count. A term is the
 * product the row's cell would have added (dg * zhat_x, dg * zhat_h, dn * chat, dn,
 * dg, dg_i * c_{t-1}, dg_f * c_{t-1}, dg_o * c_t), recomputed from its row buffer rb
 * (rows LN_RB H apart) and the saved stats, c: the same roundings. */
KERNEL void FN(ln_param_sums)(int64_t n, int64_t u0, int64_t u1, int64_t H, const TYPE *rb,
                              const TYPE *st, int64_t S, const TYPE *ct, const TYPE *cp,
                              int peep, TYPE *acc)
{
    /* a[q] sums acc's row at H * at[q]: q = gate g of dg_ih (g), dg_hh (4 + g), db (8 + g),
     * then dg_c (12), db_c (13), dpeep (14..16) */
    static const int at[17] = {0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 8, 9, 14, 15, 16};
    for (int64_t u = u0; u < u1; u += V) {
        int k = u1 - u < V ? (int)(u1 - u) : V;
        vec a[17];
#pragma GCC unroll 17
        for (int q = 0; q < 17; q++)
            a[q] = vload_n(acc + at[q] * H + u, k);
        for (int64_t r = 0; r < n; r++) {
            const TYPE *dg = rb + r * LN_RB * H + 2 * H, *dn = rb + r * LN_RB * H + 6 * H;
            const TYPE *sr = st + r * S, *xh = sr + LSTM_LN_ZHAT, *hh = sr + LSTM_LN_ZHAT_H(H);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                vec d = vload_n(dg + g * H + u, k);
                a[g] = a[g] + d * vload_n(xh + g * H + u, k);
                a[4 + g] = a[4 + g] + d * vload_n(hh + g * H + u, k);
                a[8 + g] = a[8 + g] + d;
            }
            vec ctv = vload_n(ct + r * H + u, k), d = vload_n(dn + u, k);
            a[12] = a[12] + d * ((ctv - vset1(sr[4])) * vset1(sr[5]));
            a[13] = a[13] + d;
            if (peep) {
                vec cpv = vload_n(cp + r * H + u, k);
                a[14] = a[14] + vload_n(dg + u, k) * cpv;
                a[15] = a[15] + vload_n(dg + H + u, k) * cpv;
                a[16] = a[16] + vload_n(dg + 3 * H + u, k) * ctv;
            }
        }
#pragma GCC unroll 17
        for (int q = 0; q < 17; q++)
            vstore_n(acc + at[q] * H + u, a[q], k);
    }
}

typedef struct {
    FN(bwd_ctx) b;      /* the plain backward's context (bwd_dh reads it); dgates = dz_h */
    const TYPE *stats;  /* [N, LSTM_LN_STATS_COLS(H)] */
    TYPE *dzx;          /* [N][ldg] */
    TYPE *dhs;          /* [B,H] dh of the step */
    TYPE *acc;          /* [17H] */
    TYPE *rb;           /* [2][B][LN_RB H] the rows' buffers (ln_cell_grad) */
    TYPE *dln;          /* [10H] */
} FN(ln_bwd_ctx);

KERNEL void FN(ln_bwd_job)(void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    const FN(ln_bwd_ctx) *lc = (const FN(ln_bwd_ctx) *)arg;
    const FN(bwd_ctx) *ctx = &lc->b;
    const lstm_variant *var = ctx->var;
    int64_t T = ctx->T, B = ctx->B, I = ctx->I, H = ctx->H, G = 4 * H, ldg = ctx->ldg;
    int64_t S = LSTM_LN_STATS_COLS(H);
    const int64_t *offs = ctx->offs;
    int64_t N = offs[T];
    const unsigned char *base = (const unsigned char *)ctx->hdr;
    TYPE *ws = ctx->ws + tid * FN(gemm_ws_elems)(1);
    const TYPE *ln = (const TYPE *)var->layer_norm, *bias = (const TYPE *)(base + ctx->hdr->off_b);
    const TYPE *peep = (const TYPE *)var->peephole;
    const TYPE clip = (TYPE)var->clip, cell_clip = (TYPE)var->cell_clip;
    const TYPE *zmask = (const TYPE *)var->zoneout;
    TYPE *dzh = ctx->dgates, *dzx = lc->dzx, *dhs = lc->dhs, *acc = lc->acc;
    int64_t nblk = (H + V - 1) / V;
    int64_t q0 = FN(split)(nblk, tid, num_threads), q1 = FN(split)(nblk, tid + 1, num_threads);
    const int64_t s = (int64_t)sizeof(TYPE);
    const int64_t u0 = q0 * V, u1 = q1 * V < H ? q1 * V : H;   /* the parameters' sums */
    const int rows = FN(ln_split_rows)(B, H, num_threads);
    int64_t b0 = FN(split)(B, tid, num_threads), b1 = FN(split)(B, tid + 1, num_threads);
    /* the product's output blocks in the steps: all (rows) or this thread's */
    const int64_t p0 = rows ? 0 : q0, p1 = rows ? nblk : q1;
    const FN(step_plan) sp = FN(step_plan_for)((p1 - p0) * G * V * s, BNB * V * s);
    if (tid == 0) {
        memcpy(ctx->dc0, ctx->dc_n, (size_t)(B * H) * sizeof(TYPE));
        memset(acc, 0, (size_t)(17 * H) * sizeof(TYPE));
        if (ctx->dhz)
            memset(ctx->dhz, 0, (size_t)(B * H) * sizeof(TYPE));
    }
    lstm_barrier_wait(bar, num_threads);
    for (int64_t t = T - 1; t >= 0; t--) {
        int64_t n = offs[t + 1] - offs[t];
        if (n == 0)
            continue;
        int64_t nn = t + 1 < T ? offs[t + 2] - offs[t + 1] : 0;
        /* rows: this thread's rows through the step, the rows' buffers alternating
         * between steps (the sums of step t read them while the other threads may
         * already run step t - 1's cells); else the product's blocks, then a barrier */
        int64_t r0 = rows ? b0 : 0, r1 = !rows ? n : b1 < n ? b1 : n;
        TYPE *rb = lc->rb + (rows && (t & 1) ? B * LN_RB * H : 0);
        if (!rows || r1 > r0)
            FN(bwd_dh)(ctx, p0, p1, dzh + offs[t + 1] * ldg, nn, r0, r1, ctx->dy + offs[t] * H,
                       dhs, &sp);
        if (!rows) {
            lstm_barrier_wait(bar, num_threads);
            r0 = FN(split)(n, tid, num_threads);
            r1 = FN(split)(n, tid + 1, num_threads);
        }
        /* the rows' cells */
        for (int64_t r = r0; r < r1; r++) {
            int64_t q = offs[t] + r;
            TYPE *dh = dhs + r * H;
            if (zmask) {   /* h_t = h_{t-1} + zm (h~_t - h_{t-1}) */
                const TYPE *zr = zmask + q * H;
                TYPE *dz = ctx->dhz + r * H;
                for (int64_t u = 0; u < H; u++) {
                    TYPE d = dh[u] + dz[u];
                    dz[u] = (1 - zr[u]) * d;
                    dh[u] = zr[u] * d;
                }
            }
            const TYPE *cp = t ? ctx->c + (offs[t - 1] + r) * H : ctx->c0 + r * H;
            const TYPE *st = lc->stats + q * S;
            FN(ln_cell_grad)(dh, ctx->gates + q * G, ctx->c + q * H, cp, ctx->dc0 + r * H,
                             dzh + q * ldg, dzx + q * ldg, st + LSTM_LN_ZHAT,
                             st + LSTM_LN_ZHAT_H(H), st, ln, bias, rb + r * LN_RB * H, H, peep,
                             clip, cell_clip);
        }
        lstm_barrier_wait(bar, num_threads);
        /* the parameters' sums, threads splitting the hidden units; the next step's
         * bwd_dh reads none of what they read, and the next barrier comes before the
         * rows' buffers are written again */
        FN(ln_param_sums)(n, u0, u1, H, rb, lc->stats + offs[t] * S, S, ctx->c + offs[t] * H,
                          t ? ctx->c + offs[t - 1] * H : ctx->c0, peep != NULL, acc);
    }
    lstm_barrier_wait(bar, num_threads);
    const FN(step_plan) sp0 = FN(step_plan_for)((q1 - q0) * G * V * s, BNB * V * s);
    FN(bwd_dh)(ctx, q0, q1, dzh, T ? offs[1] : 0, 0, B, ctx->dhz, ctx->dh0, &sp0);
    if (tid == 0) {
        memcpy(lc->dln, acc, (size_t)(10 * H) * sizeof(TYPE));
        if (ctx->db)
            memcpy(ctx->db, acc + 10 * H, (size_t)G * sizeof(TYPE));
        if (ctx->dpeep)
            memcpy(ctx->dpeep, acc + 14 * H, (size_t)(3 * H) * sizeof(TYPE));
    }
    const TYPE *hm_all = var->rdrop   /* recurrent dropout: h_prev * mask of every row */
        ? FN(masked_h_rows)(var, offs, N, H, ctx->y, ctx->h0, tid, num_threads, bar) : NULL;
    FN(gemm_args) gi = {0};   /* dw_ih = dz_x^T . x */
    gi.M = G;
    gi.K = N;
    gi.a = dzx;
    gi.lda = ldg;
    gi.a_trans = 1;
    gi.N = I;
    gi.b = ctx->x;
    gi.ldb = I;
    gi.c = ctx->dw_ih;
    gi.ldc = I;
    FN(gemm)(&gi, ws, tid, num_threads);
    FN(gemm_args) g = {0};    /* dw_hh = dz_h^T . h_prev */
    g.M = G;
    g.K = N;
    g.a = dzh;
    g.lda = ldg;
    g.a_trans = 1;
    g.N = H;
    g.ldb = H;
    if (hm_all) {
        g.b = hm_all;
    } else {
        g.b = ctx->y;
        g.b0 = ctx->h0;
        g.offs = offs;
        g.nsteps = T;
    }
    g.c = ctx->dw_hh;
    g.ldc = H;
    FN(gemm)(&g, ws, tid, num_threads);
    if (!ctx->dx) {
    } else if (!FN(dx_gemm)(I, H, 0)) {   /* dx of all rows as the steps' tiles */
        int64_t iblk = (I + V - 1) / V;
        int64_t x0 = FN(split)(iblk, tid, num_threads), x1 = FN(split)(iblk, tid + 1, num_threads);
        const FN(step_plan) spx = FN(step_plan_for)((x1 - x0) * G * V * s, BNB * V * s);
        FN(bwd_rows)(H, I, (const TYPE *)(base + ctx->hdr->off_wih_b), x0, x1, dzx, ldg, N, NULL,
                     NULL, ctx->dx, &spx);
    } else {
        FN(gemm_args) gx = {0};
        gx.M = N;
        gx.N = I;
        gx.K = G;
        gx.a = dzx;
        gx.lda = ldg;
        gx.bpacked = (const TYPE *)(base + ctx->hdr->off_wih);
        gx.c = ctx->dx;
        gx.ldc = I;
        FN(gemm)(&gx, ws, tid, num_threads);
    }
}

static int FN(ln_backward)(int64_t T, int64_t B, int64_t I, int64_t H,
                           const FN(packed_hdr) *hdr, const int64_t *batch_sizes, const TYPE *x,
                           const TYPE *h0, const TYPE *c0, const TYPE *y, const TYPE *gates,
                           const TYPE *c, const TYPE *dy, const TYPE *dh_n, const TYPE *dc_n,
                           TYPE *dx, TYPE *dw_ih, TYPE *dw_hh, TYPE *db, TYPE *dh0, TYPE *dc0,
                           void *workspace, int num_threads, const lstm_variant *var,
                           TYPE *dpeep)
{
    if (!var->ln_stats || !var->ln_ws || !var->ln_grad || var->cifg ||
        var->ln_stats_cols != LSTM_LN_STATS_COLS(H) || (var->peephole && !dpeep) ||
        ((var->rdrop || var->zoneout) && !var->var_ws))
        return LSTM_ERR_ARG;
    unsigned char *wsb = FN(align_ptr)(workspace);
    int64_t *offs = (int64_t *)wsb;
    if (!FN(step_offsets)(T, B, batch_sizes, offs))
        return LSTM_ERR_ARG;
    int64_t N = offs[T], s = (int64_t)sizeof(TYPE), ldg = FN(dg_ld)(H);
    wsb += FN(offs_bytes)(T);
    TYPE *dzh = (TYPE *)wsb;
    wsb += ALIGN64(N * ldg * s);
    unsigned char *lw = FN(align_ptr)(var->ln_ws);
    FN(ln_bwd_ctx) lc;
    memset(&lc, 0, sizeof lc);
    FN(bwd_ctx) b = {T, B, I, H, 0, hdr, offs, x, h0, c0, y, gates, c, dy, dh_n, dc_n,
                     dx, dw_ih, dw_hh, db, dh0, dc0, NULL, dzh, ldg, NULL, NULL, NULL,
                     (TYPE *)wsb, var, var->peephole ? dpeep : NULL, NULL, 0, 0, 0, NULL, NULL, NULL};
    if (var->zoneout)   /* after the rows of h_{t-1} * rdrop, as the plain backward */
        b.dhz = (TYPE *)(FN(align_ptr)(var->var_ws) + ALIGN64(N * H * s));
    lc.b = b;
    lc.stats = (const TYPE *)var->ln_stats;
    lc.dzx = (TYPE *)lw;
    lw += ALIGN64(N * ldg * s);
    lc.dhs = (TYPE *)lw;
    lw += ALIGN64(B * H * s);
    lc.acc = (TYPE *)lw;
    lw += ALIGN64(17 * H * s);
    lc.rb = (TYPE *)lw;
    lc.dln = (TYPE *)var->ln_grad;
    lstm_pool_run(FN(ln_bwd_job), &lc, num_threads);
    return LSTM_OK;
}

#undef LN_EPS
