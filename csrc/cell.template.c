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

typedef unsigned int FN(u32v) __attribute__((vector_size(VBYTES)));

/* float x rounded to bfloat16 (as a float): nearest even, zero and denormals a signed
 * zero, NaN quiet: bf16_round of bf16.template.c, per lane (float only) */
INLINE vec FN(vround_bf16)(vec x)
{
    FN(u32v) u = (FN(u32v))x;
    FN(u32v) r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    FN(u32v) tiny = (FN(u32v))((u & 0x7f800000u) == 0);
    FN(u32v) nan = (FN(u32v))((u & 0x7fffffffu) > 0x7f800000u);
    r = (r & ~tiny) | (u & 0x80000000u & tiny);
    r = (r & ~nan) | ((u | 0x00400000u) & 0xffff0000u & nan);
    return (vec)r;
}

/* bfloat16 training keeps the forward's gates and c_t as bfloat16 bit patterns (2 bytes
 * each, half a float's): n <= V of them widened to floats (exact: a bf16 is the top half
 * of its float), and rounded floats (vround_bf16's, low halves zero) stored as them.
 * float only; the float64 instances are never called. */
#if !IS_F64
typedef uint16_t FN(h16v) __attribute__((vector_size(VBYTES / 2)));
/* The full vectors with the level's widening and narrowing instructions (vpmovzxwd,
 * vpmovdw; AVX2: vpmovzxwd, vpackusdw): the generic conversions compiled to a vector
 * spilled to the stack and five shuffles a store (measured: the (32,32,128,128) training
 * forward 3 % slower than with float32 words, Zen 4); a partial vector (H not a
 * multiple of V, the last block) element by element. */
INLINE FN(h16v) FN(narrow16)(vec x)
{
#if ISA == 2
    __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32((__m512i)x, 16));
    __asm__("" : "+x"(h));   /* a register vpmovdw, then a store (the store form is slow) */
    return (FN(h16v))h;
#elif ISA == 1
    __m256i u = _mm256_srli_epi32((__m256i)x, 16);
    return (FN(h16v))_mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
#else
    return __builtin_convertvector((FN(u32v))x >> 16, FN(h16v));
#endif
}
INLINE vec FN(widen16)(FN(h16v) h)
{
#if ISA == 2
    return (vec)_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16);
#elif ISA == 1
    return (vec)_mm256_slli_epi32(_mm256_cvtepu16_epi32((__m128i)h), 16);
#else
    return (vec)(__builtin_convertvector(h, FN(u32v)) << 16);
#endif
}
INLINE vec FN(vload_bf16_n)(const uint16_t *p, int n)
{
    FN(h16v) h = {0};
    if (n >= V)   /* (a memcpy of a variable size is a call) */
        memcpy(&h, p, sizeof h);
    else
        for (int l = 0; l < n; l++)
            h[l] = p[l];
    return FN(widen16)(h);
}
INLINE void FN(vstore_bf16_n)(uint16_t *p, vec x, int n)
{
    FN(h16v) h = FN(narrow16)(x);
    if (n >= V)
        memcpy(p, &h, sizeof h);
    else
        for (int l = 0; l < n; l++)
            p[l] = h[l];
}
#else
INLINE vec FN(vload_bf16_n)(const uint16_t *p, int n)
{
    (void)p, (void)n;
    return (vec){0};
}
INLINE void FN(vstore_bf16_n)(uint16_t *p, vec x, int n)
{
    (void)p, (void)x, (void)n;
}
#endif

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
    /* LSTM variants (lstm_variant in lstm.h); all off (var 0) in a plain LSTM */
    int var;            /* 1: one of the below is on, the cell takes its variant path */
    const TYPE *peep;   /* [3,H] w_ci, w_cf, w_co, or NULL */
    TYPE clip;          /* > 0: gate pre-activations clamped to [-clip, clip] */
    TYPE cell_clip;     /* > 0: c_t clamped to [-cell_clip, cell_clip] */
    int cifg;           /* 1: coupled gates, f = 1 - i (f's products unused) */
    const TYPE *zm;     /* [.,H] zoneout mask of the step's rows, or NULL (var is then 1) */
    const TYPE *hprev;  /* [.,H] h_{t-1} (with zm) */
    /* bfloat16 training (float only, plain cell; gates NULL): the activated gates [.,4H]
       and c_t [.,H] stored rounded to bfloat16, as bit patterns (c keeps the float32
       running state), or NULL */
    uint16_t *g16, *c16;
    /* layer norm (lnorm.template.c; var is then 1): the tile's products are stored
       as they are into raw [.,4H] (row*4H + gate*H + unit), nothing else is done */
    TYPE *raw;
} FN(fwd_cell_args);

/* x clamped to [-b, b] (b > 0; NaN stays NaN) */
INLINE vec FN(vclamp)(vec x, TYPE b)
{
    vec hi = vset1(b), lo = vset1(-b);
    x = vselect(x > hi, hi, x);
    return vselect(x < lo, lo, x);
}

/* The variant forward cell (peepholes, clip, cell_clip; equations in
 * backends/reference.py): i and f add w_ci*c_{t-1}, w_cf*c_{t-1} before the
 * activation, o adds w_co*c_t of the new (clamped) c_t, so o is activated in the
 * second pass. Same tile contract as fwd_cell. */
INLINE void FN(fwd_cell_var)(const FN(fwd_cell_args) *a, int mr, int nb, int64_t r0,
                             int64_t j0, const TYPE *acc)
{
    const int64_t H = a->H;
    const TYPE clip = a->clip, cell_clip = a->cell_clip;
    TYPE act[MAXACC * V] __attribute__((aligned(64)));
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *s = acc + q * 4 * V;
        TYPE *ac = act + q * 4 * V;
        const TYPE *pr = a->pre + row * a->pre_ld + off;
        vec zi = vload(s) + vload_n(pr, n), zf = vload(s + V) + vload_n(pr + H, n);
        vec zg = vload(s + 2 * V) + vload_n(pr + 2 * H, n);
        vec zo = vload(s + 3 * V) + vload_n(pr + 3 * H, n);
        if (a->peep) {
            vec cp = vload_n(a->cprev + row * H + off, n);
            zi = vfma(vload_n(a->peep + off, n), cp, zi);
            zf = vfma(vload_n(a->peep + H + off, n), cp, zf);
        }
        if (clip > 0) {
            zi = FN(vclamp)(zi, clip);
            zf = FN(vclamp)(zf, clip);
            zg = FN(vclamp)(zg, clip);
        }
        vec i = vsigmoid(zi), g = vtanh(zg);
        vec f = a->cifg ? 1 - i : vsigmoid(zf);
        vstore(ac, i);
        vstore(ac + V, f);
        vstore(ac + 2 * V, g);
        vstore(ac + 3 * V, zo);   /* o's pre-activation without its peephole term */
        if (a->gates) {
            TYPE *gr = a->gates + row * 4 * H + off;
            vstore_n(gr, i, n);
            vstore_n(gr + H, f, n);
            vstore_n(gr + 2 * H, g, n);
        }
    }
    for (int q = 0; q < mr * nb; q++) {
        int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
        int n = H - off < V ? (int)(H - off) : V;
        const TYPE *ac = act + q * 4 * V;
        vec i = vload(ac), f = vload(ac + V), g = vload(ac + 2 * V), zo = vload(ac + 3 * V);
        vec cn = vfma(f, vload_n(a->cprev + row * H + off, n), i * g);
        if (cell_clip > 0)
            cn = FN(vclamp)(cn, cell_clip);
        if (a->peep)
            zo = vfma(vload_n(a->peep + 2 * H + off, n), cn, zo);
        if (clip > 0)
            zo = FN(vclamp)(zo, clip);
        vec o = vsigmoid(zo);
        if (a->gates)
            vstore_n(a->gates + row * 4 * H + 3 * H + off, o, n);
        vec h = o * vtanh(cn);
        if (a->zm) {   /* zoneout: h_{t-1} + zm*(h~ - h_{t-1}), haste's operations */
            vec hp = vload_n(a->hprev + row * H + off, n);
            h = (h - hp) * vload_n(a->zm + row * H + off, n) + hp;
        }
        vstore_n(a->c + row * H + off, cn, n);
        vstore_n(a->h + row * H + off, h, n);
    }
}

/* Forward cell of rows r0..r0+mr, hidden blocks j0..j0+nb (V units each) of one
 * step; acc [mr][nb][4][V] holds the tile's products (x_t.w_ih^T if fused, plus
 * h_{t-1}.w_hh^T). Two passes of independent iterations (activations, then cell
 * and h) rather than one long dependency chain per block: measured 1.4x faster
 * at (6,32,3,32), where this pass is most of the forward time. */
KERNEL void FN(fwd_cell)(const FN(fwd_cell_args) *a, int mr, int nb, int64_t r0, int64_t j0,
                         const TYPE *acc)
{
    if (a->var) {   /* one test per tile; the plain loops below are unchanged */
        if (a->raw) {
            for (int q = 0; q < mr * nb; q++) {
                int64_t row = r0 + q / nb, off = (j0 + q % nb) * V;
                int n = a->H - off < V ? (int)(a->H - off) : V;
                for (int k = 0; k < 4; k++)
                    vstore_n(a->raw + row * 4 * a->H + k * a->H + off, vload(acc + (q * 4 + k) * V), n);
            }
            return;
        }
        FN(fwd_cell_var)(a, mr, nb, r0, j0, acc);
        return;
    }
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
        } else if (sizeof(TYPE) == 4 && a->g16) {   /* bfloat16 training */
            uint16_t *gr = a->g16 + row * 4 * H + off;
            FN(vstore_bf16_n)(gr, FN(vround_bf16)(i), n);
            FN(vstore_bf16_n)(gr + H, FN(vround_bf16)(f), n);
            FN(vstore_bf16_n)(gr + 2 * H, FN(vround_bf16)(g), n);
            FN(vstore_bf16_n)(gr + 3 * H, FN(vround_bf16)(o), n);
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
        if (sizeof(TYPE) == 4 && a->c16)
            FN(vstore_bf16_n)(a->c16 + row * H + off, FN(vround_bf16)(cn), n);
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
    /* variants, as in fwd_cell_args (var 0: plain) */
    int var;
    const TYPE *peep;   /* [3,H] w_ci, w_cf, w_co, or NULL */
    TYPE clip, cell_clip;
    int cifg;           /* 1: f = 1 - i: f's gradient goes to i */
    TYPE *dpeep;        /* [3,H] with peep: their gradients are added to it */
    const TYPE *rdrop;  /* [B,H] recurrent dropout mask, or NULL: dh_tile (the gradient of
                           the masked h_t) is multiplied by it (var is then 1) */
    const TYPE *zm;     /* [.,H] zoneout mask of the step's rows, or NULL (var is then 1) */
    TYPE *dhz;          /* [B,H] with zm: the gradient zoneout carries to h_{t-1}: read
                           (added to dh), replaced by (1 - zm)*dh */
    int bf16;           /* 1 (float only, plain cell): dg stored rounded to bfloat16 (db
                           sums the unrounded): bfloat16 training */
    /* bfloat16 training with the forward's saved values as bfloat16 bit patterns (float
       only; var is then 1 and gates, c unused): gates [.,4H], c_t [.,H], and c_{t-1}
       [.,H] or NULL (step 0: cprev, c0 as given) */
    const uint16_t *g16, *c16, *cp16;
    /* the next step's (t-1) rows of dg and of the saved gates, or NULL: the plain cell
       prefetches, for each element it handles, the same element there (bwd_step) */
    TYPE *pf_dg;
    const TYPE *pf_gates;
} FN(bwd_cell_args);


/* d, or 0 where the saved activated gate s shows a clamped pre-activation: s at or
 * beyond act(+-clip) (lo, hi), the values the forward's clamp gives. NaN passes. */
INLINE vec FN(clip_keep)(vec d, vec s, vec lo, vec hi)
{
    return vselect((s >= hi) | (s <= lo), (vec){0}, d);
}

/* The variant backward cell (equations in backends/reference.py); same tile
 * contract as bwd_cell. cell_clip: c_t's clamp is found from f*c_{t-1} + i*g,
 * recomputed with the forward's operations (the same bits). */
INLINE void FN(bwd_cell_var)(const FN(bwd_cell_args) *a, int mr, int nb, int64_t r0,
                             int64_t j0, const TYPE *dh_tile)
{
    const int64_t H = a->H;
    const TYPE clip = a->clip, cell_clip = a->cell_clip;
    vec slo = {0}, shi = {0}, tlo = {0}, thi = {0};
    if (clip > 0) {
        slo = vsigmoid(vset1(-clip));
        shi = vsigmoid(vset1(clip));
        tlo = vtanh(vset1(-clip));
        thi = vtanh(vset1(clip));
    }
    for (int r = 0; r < mr; r++) {
        for (int jb = 0; jb < nb; jb++) {
            int64_t row = r0 + r, off = (j0 + jb) * V, ro = row * H + off;
            int n = H - off < V ? (int)(H - off) : V;
            vec dh = dh_tile ? vload(dh_tile + (r * nb + jb) * V) : vload_n(a->dh + ro, n);
            if (dh_tile && a->rdrop)
                dh = dh * vload_n(a->rdrop + ro, n);
            if (a->dy)
                dh = dh + vload_n(a->dy + ro, n);
            if (a->zm) {   /* zoneout: dh of h~ and the part carried to h_{t-1} */
                vec zv = vload_n(a->zm + ro, n);
                dh = dh + vload_n(a->dhz + ro, n);
                vstore_n(a->dhz + ro, (1 - zv) * dh, n);
                dh = zv * dh;
            }
            const TYPE *gr = a->gates + row * 4 * H + off;
            vec i = vload_n(gr, n), f = vload_n(gr + H, n);
            vec g = vload_n(gr + 2 * H, n), o = vload_n(gr + 3 * H, n);
            vec ct = vload_n(a->c + ro, n), cp = vload_n(a->cprev + ro, n);
            vec tc = vtanh(ct);
            vec dgo = dh * tc * o * (1 - o);
            if (clip > 0)
                dgo = FN(clip_keep)(dgo, o, slo, shi);
            vec dcv = vload_n(a->dc + ro, n);
            dcv = dcv + dh * o * (1 - tc * tc);
            if (a->peep)
                dcv = vfma(vload_n(a->peep + 2 * H + off, n), dgo, dcv);
            if (cell_clip > 0) {
                vec craw = vfma(f, cp, i * g);
                vec cb = vset1(cell_clip);
                dcv = vselect((craw > cb) | (craw < -cb), (vec){0}, dcv);
            }
            vec dgi, dgf, dgg = dcv * i * (1 - g * g);
            if (a->cifg) {   /* dL/di = dc*g - dc*c_{t-1} (through f = 1 - i) */
                dgi = dcv * (g - cp) * i * (1 - i);
                dgf = (vec){0};
            } else {
                dgi = dcv * g * i * (1 - i);
                dgf = dcv * cp * f * (1 - f);
            }
            if (clip > 0) {
                dgi = FN(clip_keep)(dgi, i, slo, shi);
                if (!a->cifg)
                    dgf = FN(clip_keep)(dgf, f, slo, shi);
                dgg = FN(clip_keep)(dgg, g, tlo, thi);
            }
            TYPE *dgr = a->dg + row * a->ldg + off;
            vec dgv[4] = {dgi, dgf, dgg, dgo};
            for (int q = 0; q < 4; q++) {
                vstore_n(dgr + q * H, dgv[q], n);
                vstore_n(a->db + q * H + off, vload_n(a->db + q * H + off, n) + dgv[q], n);
            }
            vec dcp = dcv * f;
            if (a->peep) {
                dcp = vfma(vload_n(a->peep + off, n), dgi, dcp);
                dcp = vfma(vload_n(a->peep + H + off, n), dgf, dcp);
                TYPE *dp = a->dpeep + off;
                vstore_n(dp, vfma(dgi, cp, vload_n(dp, n)), n);
                vstore_n(dp + H, vfma(dgf, cp, vload_n(dp + H, n)), n);
                vstore_n(dp + 2 * H, vfma(dgo, ct, vload_n(dp + 2 * H, n)), n);
            }
            vstore_n(a->dc + ro, dcp, n);
            if (a->m)
                vstore_n(a->m + ro, o * tc, n);
        }
    }
}

/* The plain backward cell over rows r0..r0+mr, hidden blocks j0..j0+nb (bwd_cell's
 * contract). b16 (a constant: each call is compiled for one): the gates, c_t and, where
 * cp16 is set, c_{t-1} are read from bfloat16 training's saved bit patterns (g16, c16,
 * cp16) and widened: the same floats the forward rounded, so the same bits as on float32
 * words holding them. */
INLINE void FN(bwd_cell_plain)(const FN(bwd_cell_args) *a, int mr, int nb, int64_t r0,
                               int64_t j0, const TYPE *dh_tile, const int b16)
{
    const int64_t H = a->H;
    for (int r = 0; r < mr; r++) {
        for (int jb = 0; jb < nb; jb++) {
            int64_t row = r0 + r, off = (j0 + jb) * V, ro = row * H + off;
            int n = H - off < V ? (int)(H - off) : V;
            vec dh = dh_tile ? vload(dh_tile + (r * nb + jb) * V) : vload_n(a->dh + ro, n);
            if (a->dy)
                dh = dh + vload_n(a->dy + ro, n);
            vec i, f, g, o, ct, cp;
            if (b16) {
                const uint16_t *gr = a->g16 + row * 4 * H + off;
                i = FN(vload_bf16_n)(gr, n), f = FN(vload_bf16_n)(gr + H, n);
                g = FN(vload_bf16_n)(gr + 2 * H, n), o = FN(vload_bf16_n)(gr + 3 * H, n);
                ct = FN(vload_bf16_n)(a->c16 + ro, n);
                cp = a->cp16 ? FN(vload_bf16_n)(a->cp16 + ro, n) : vload_n(a->cprev + ro, n);
            } else {
                const TYPE *gr = a->gates + row * 4 * H + off;
                i = vload_n(gr, n), f = vload_n(gr + H, n);
                g = vload_n(gr + 2 * H, n), o = vload_n(gr + 3 * H, n);
                ct = vload_n(a->c + ro, n);
                cp = vload_n(a->cprev + ro, n);
            }
            vec tc = vtanh(ct);
            vec dcv = vload_n(a->dc + ro, n);
            dcv = dcv + dh * o * (1 - tc * tc);
            TYPE *dgr = a->dg + row * a->ldg + off;
            if (!b16 && a->pf_dg) {   /* the next step's lines: dg to be written, gates read */
                TYPE *pd = a->pf_dg + row * a->ldg + off;
                const TYPE *pg = a->pf_gates + row * 4 * H + off;
                for (int q = 0; q < 4; q++) {
                    __builtin_prefetch(pd + q * H, 1, 3);
                    __builtin_prefetch(pg + q * H, 0, 2);
                }
            }
            vec dgv[4] = {dcv * g * i * (1 - i), dcv * cp * f * (1 - f),
                          dcv * i * (1 - g * g), dh * tc * o * (1 - o)};
            for (int q = 0; q < 4; q++) {
                vstore_n(dgr + q * H, sizeof(TYPE) == 4 && a->bf16 ? FN(vround_bf16)(dgv[q])
                                                                    : dgv[q], n);
                if (a->db)   /* NULL: summed after the loop (bwd_job, rows split) */
                    vstore_n(a->db + q * H + off, vload_n(a->db + q * H + off, n) + dgv[q], n);
            }
            vstore_n(a->dc + ro, dcv * f, n);
            if (a->m)
                vstore_n(a->m + ro, o * tc, n);
        }
    }
}

/* Backward cell of rows r0..r0+mr, hidden blocks j0..j0+nb of one step. dh of
 * m = o*tanh(c) is the tile dh_tile [mr][nb][V] (dgates_{t+1}.w_hh) or, if
 * NULL, a->dh. */
KERNEL void FN(bwd_cell)(const FN(bwd_cell_args) *a, int mr, int nb, int64_t r0, int64_t j0,
                         const TYPE *dh_tile)
{
    if (a->var) {   /* one test per tile; the float32 words' plain cell is compiled apart */
        if (sizeof(TYPE) == 4 && a->g16)   /* bfloat16 training, bf16 saved values */
            FN(bwd_cell_plain)(a, mr, nb, r0, j0, dh_tile, 1);
        else
            FN(bwd_cell_var)(a, mr, nb, r0, j0, dh_tile);
        return;
    }
    FN(bwd_cell_plain)(a, mr, nb, r0, j0, dh_tile, 0);
}
