/* cell.template.c: the elementwise LSTM cell, forward and backward: the only
 * gate math of the C kernel. Included by lstm.template.c after gemm.template.c.
 *
 * The step tiles (lstm.template.c) compute the matrix products of a block of
 * rows x hidden units in registers and hand them here, as oneDNN's RNN is
 * "GEMM, GEMM, post-GEMM": fwd_cell turns the pre-activations of a tile into
 * gates, c_t and h_t; bwd_cell turns dh of a tile into the gate gradients. Each
 * takes one argument struct for the step (what it reads and writes) plus the
 * tile's position; the LSTM variants (peepholes, cell clipping, zoneout, ...)
 * are meant to extend these structs and functions by parameters rather than
 * copy them. Gate order i, f, g, o; gates are saved activated, so backward
 * takes the derivatives from them (sigma' = s(1-s), tanh' = 1-t^2) and never
 * calls exp. Every element is computed by the same operations whatever the tile
 * shape, so the results do not depend on tiling or thread count. */

/* What the forward cell of one step reads and writes. Rows are the step's
 * active sequences; row r of an [.,W] array is at r*W. */
typedef struct {
    int64_t H;
    const TYPE *pre;    /* added to the tile's products: pre[row*pre_ld + gate*H + unit] */
    int64_t pre_ld;     /* 4H: the hoisted x.w_ih^T + b of each row; 0: the bias alone
                           (the step did x_t.w_ih^T itself) */
    const TYPE *cprev;  /* [.,H] c_{t-1} */
    TYPE *gates;        /* [.,4H] activated gates, or NULL (inference: nothing saved); may
                           be pre (pre_ld 4H): each element is read before it is written */
    TYPE *c;            /* [.,H] c_t; may be cprev (the running state kept in place) */
    TYPE *h;            /* [.,H] o*tanh(c_t): h_t, or m before the projection */
} FN(fwd_cell_args);

/* Forward cell of rows r0..r0+mr, hidden blocks j0..j0+nb (V units each) of one
 * step; acc [mr][nb][4][V] holds the tile's products (x_t.w_ih^T if fused, plus
 * h_{t-1}.w_hh^T). Two passes of independent iterations (activations, then cell
 * and h) rather than one long dependency chain per block: measured 1.4x faster
 * at (6,32,3,32), where this pass is most of the forward time. */
KERNEL void FN(fwd_cell)(const FN(fwd_cell_args) *a, int mr, int nb, int64_t r0, int64_t j0,
                         const TYPE *acc)
{
    const int64_t H = a->H;
    TYPE act[MAXACC * V] __attribute__((aligned(64)));
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *s = acc + q * 4 * V;
        TYPE *ac = act + q * 4 * V;
        const TYPE *pr = a->pre + row * a->pre_ld + off;
        vec i = vsigmoid(vload(s) + vload_n(pr, n));
        vec f = vsigmoid(vload(s + V) + vload_n(pr + H, n));
        vec g = vtanh(vload(s + 2 * V) + vload_n(pr + 2 * H, n));
        vec o = vsigmoid(vload(s + 3 * V) + vload_n(pr + 3 * H, n));
        vstore(ac, i);
        vstore(ac + V, f);
        vstore(ac + 2 * V, g);
        vstore(ac + 3 * V, o);
        if (a->gates) {
            TYPE *gr = a->gates + row * 4 * H + off;
            vstore_n(gr, i, n);
            vstore_n(gr + H, f, n);
            vstore_n(gr + 2 * H, g, n);
            vstore_n(gr + 3 * H, o, n);
        }
    }
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *ac = act + q * 4 * V;
        vec i = vload(ac), f = vload(ac + V), g = vload(ac + 2 * V), o = vload(ac + 3 * V);
        vec cn = vfma(f, vload_n(a->cprev + row * H + off, n), i * g);
        vec h = o * vtanh(cn);
        vstore_n(a->c + row * H + off, cn, n);
        vstore_n(a->h + row * H + off, h, n);
    }
}

/* What the backward cell of one step reads and writes (rows as above). */
typedef struct {
    int64_t H;
    const TYPE *dh;     /* [.,H] dLoss/dm for rows whose tile brings none, or NULL */
    const TYPE *dy;     /* [.,H] added to dh, or NULL */
    const TYPE *gates;  /* [.,4H] the forward's activated gates of the step */
    const TYPE *c;      /* [.,H] c_t */
    const TYPE *cprev;  /* [.,H] c_{t-1} */
    TYPE *dc;           /* [.,H] running dc: read, replaced by the gradient reaching c_{t-1} */
    TYPE *dg;           /* [.,ldg] gate gradients out */
    int64_t ldg;
    TYPE *m;            /* [.,H] receives o*tanh(c_t), or NULL */
    TYPE *db;           /* [4H] the gate gradients are added to it */
} FN(bwd_cell_args);

/* Backward cell of rows r0..r0+mr, hidden blocks j0..j0+nb of one step. dh of
 * m = o*tanh(c) is the tile dh_tile [mr][nb][V] (dgates_{t+1}.w_hh) or, if
 * NULL, a->dh. */
KERNEL void FN(bwd_cell)(const FN(bwd_cell_args) *a, int mr, int nb, int64_t r0, int64_t j0,
                         const TYPE *dh_tile)
{
    const int64_t H = a->H;
    for (int r = 0; r < mr; r++) {
        for (int jb = 0; jb < nb; jb++) {
            int64_t row = r0 + r, off = (j0 + jb) * V, ro = row * H + off;
            int n = H - off < V ? (int)(H - off) : V;
            vec dh = dh_tile ? vload(dh_tile + (r * nb + jb) * V) : vload_n(a->dh + ro, n);
            if (a->dy)
                dh = dh + vload_n(a->dy + ro, n);
            const TYPE *gr = a->gates + row * 4 * H + off;
            vec i = vload_n(gr, n), f = vload_n(gr + H, n);
            vec g = vload_n(gr + 2 * H, n), o = vload_n(gr + 3 * H, n);
            vec tc = vtanh(vload_n(a->c + ro, n));
            vec dcv = vload_n(a->dc + ro, n);
            dcv = dcv + dh * o * (1 - tc * tc);
            TYPE *dgr = a->dg + row * a->ldg + off;
            vec dgv[4] = {dcv * g * i * (1 - i), dcv * vload_n(a->cprev + ro, n) * f * (1 - f),
                          dcv * i * (1 - g * g), dh * tc * o * (1 - o)};
            for (int q = 0; q < 4; q++) {
                vstore_n(dgr + q * H, dgv[q], n);
                vstore_n(a->db + q * H + off, vload_n(a->db + q * H + off, n) + dgv[q], n);
            }
            vstore_n(a->dc + ro, dcv * f, n);
            if (a->m)
                vstore_n(a->m + ro, o * tc, n);
        }
    }
}
