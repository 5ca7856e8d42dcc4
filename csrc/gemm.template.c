/* gemm.template.c: the packed GEMM, C = A.B (+ bias), and its register tiles.
 * Included by lstm.template.c after simd.template.h (see there for TYPE, ISA,
 * SFX and the register-tile constants).
 *
 * Why hand-written and not a BLAS (the one place this is argued):
 *   - the recurrent part is not a GEMM call: the gate activations and the cell
 *     update are applied while the h.w_hh^T tile is still in registers
 *     (fwd_tile + fwd_cell), and the backward's gate gradients while the
 *     dgates.w_hh tile is (bwd_tile + bwd_cell); per step the products have
 *     only B rows, where a BLAS call's own packing and dispatch cost as much
 *     as the product. Small and medium shapes spend their time there.
 *   - the remaining whole-sequence products (x.w_ih^T, dw, dx) share the
 *     packed weights and the thread partition of the steps, and must give the
 *     same bits for any thread count (threads split output tiles, never K).
 *   - no dependency on whichever BLAS numpy or torch ship, whose speed varies
 *     by CPU vendor: on the AMD Zen 5 machine (AVX-512 with full 512-bit FMA)
 *     numpy's OpenBLAS runs AVX2 code (OPENBLAS_CORETYPE=Haswell there) and MKL
 *     picks AVX2 on AMD, i.e. half the machine; measured side by side there
 *     (2048x256 . 256x1024, 1 thread): numpy matmul 68 GFLOP/s f32 / 50 f64,
 *     this kernel's forward (that GEMM, an equal recurrent GEMM and the cell)
 *     136 / 88. On Intel, MKL runs AVX-512 and is the bar to meet.
 *
 * Blocking: a KC x nc block of B (packed into panels of NR columns) stays in
 * L2 and an MR x KC sliver of A in L1; the MR x NR register tile accumulates
 * over KC, C = A.B (+bias) on the first K block, C += A.B after. KC is fixed
 * (it sets the order of the sums: the same bits on every CPU); nc comes from
 * the running CPU's L2 (gemm_nc: half of it for the block), and transposed A
 * is packed once per K block and reused for all of the thread's panels when
 * they fit one block (dw: N = I + R up to ~1000 with a 2 MiB L2). B is either
 * prepacked (weights, packed once by lstm_pack_*) or packed here per block
 * (activations: dw = dgates^T.[x | h_prev]). A is read in place (row-major,
 * or transposed for dgates^T when small) or packed (transposed A, and row-major
 * A whose row stride is a large power of two, which would thrash L1 sets).
 * A tile of 1 or 2 rows (B = 1 streaming) spans WP panels instead, enough
 * independent accumulators to hide the FMA latency. Threads split the output
 * panels (or row tiles when there are more of those), so each output element
 * is the same sum in the same order whatever the thread count. */

#define KC 256
#define NC_MAX 4096   /* columns of a B block at most (the workspace grows with it) */
#define NV 2          /* vectors per panel row */
#define NR (NV * V)   /* columns of a panel */
#define WP 4          /* panels per tile of a 1- or 2-row GEMM tile */
#define ATB 8         /* transposed A is packed ATB tiles at a time (stays in L2 with B) */

/* Operands. A is M x K: element (m, k) at a[m*lda + k], or a[k*lda + m] if
 * a_trans. B is K x N: either prepacked panels [N/NR][K][NR] (bpacked), or
 * row-major b[k*ldb + n]; or, if offs is set (K = offs[nsteps] packed rows of
 * variable-length steps), the h_{t-1} rows of row k = offs[t] + r: b0[r*ldb + n]
 * at t = 0, else b[(offs[t-1] + r)*ldb + n]. With bx set, B = [x | 0 | h_prev]
 * for dw_ih and dw_hh in one product: the first px panels (px*NR >= nx columns)
 * hold bx[k*ldbx + n] for n < nx and zeros after, the panels from px the
 * sources above (column n is their n - px*NR); C of the first px panels goes to
 * c (nx columns, ldc), of the others to c2 (ldc2), and the zero columns nowhere.
 * C (M x N, ldc) = A.B + bias[n] (bias may be NULL). */
typedef struct {
    int64_t M, N, K;
    const TYPE *a;
    int64_t lda;
    int a_trans;
    const TYPE *bpacked;
    const TYPE *b, *b0;
    int64_t ldb;
    const int64_t *offs;
    int64_t nsteps;
    const TYPE *bx;
    int64_t ldbx, nx, px;
    TYPE *c2;
    int64_t ldc2;
    const TYPE *bias;
    TYPE *c;
    int64_t ldc;
    /* kdesc: the K blocks (KC rows each, from k = 0) are summed last to first: C = the
       last block's product, then C += each block below it (the backward's dw, whose
       rows of dgates the steps write last to first). khi > 0: only the blocks that
       hold rows klo..khi-1 (block-aligned; klo a multiple of KC), in that order, so
       that calls over consecutive ranges give the bits of one call */
    int kdesc;
    int64_t klo, khi;
} FN(gemm_args);

/* Transposed A: pack tiles mt0..mt1 at once, sweeping each stored row of A
 * once (a per-tile sweep would stride through memory by lda per element).
 * Tile mt goes to ap[(mt-mt0)*kc*MR + k*MR + r]. */
KERNEL void FN(pack_at)(const FN(gemm_args) *g, int64_t mt0, int64_t mt1, int64_t kb,
                        int64_t kc, TYPE *ap)
{
    int64_t m1 = mt1 * MR < g->M ? mt1 * MR : g->M;
    for (int64_t k0 = 0; k0 < kc; k0 += 8) {   /* 8 source rows at a time: few write streams */
        int64_t k1 = k0 + 8 < kc ? k0 + 8 : kc;
        for (int64_t mt = mt0; mt < mt1; mt++) {
            int64_t m = mt * MR;
            TYPE *dst = ap + (mt - mt0) * kc * MR;
            for (int64_t k = k0; k < k1; k++) {
                const TYPE *src = g->a + (kb + k) * g->lda + m;
                if (m + MR <= m1) {
                    memcpy(dst + k * MR, src, MR * sizeof(TYPE));
                    continue;
                }
                int64_t r = 0;
                for (; r < m1 - m; r++)
                    dst[k * MR + r] = src[r];
                for (; r < MR; r++)
                    dst[k * MR + r] = 0;
            }
        }
    }
}

/* Row-major A, one tile: ap[k*MR + r] = A[m0+r][kb+k], zero padded. Used when
 * lda is a large power of two, where reading MR rows in place thrashes L1 sets. */
KERNEL void FN(pack_a)(const FN(gemm_args) *g, int64_t m0, int64_t kb, int64_t kc, TYPE *ap)
{
    int64_t mr = g->M - m0 < MR ? g->M - m0 : MR;
    for (int64_t r = 0; r < MR; r++) {
        const TYPE *src = g->a + (m0 + (r < mr ? r : mr - 1)) * g->lda + kb;
        for (int64_t k = 0; k < kc; k++)
            ap[k * MR + r] = src[k];
    }
}

/* Pack rows kb..kb+kc of raw B, panels p0..p1, into bp[p-p0][k][NR]. */
KERNEL void FN(pack_b)(const FN(gemm_args) *g, int64_t kb, int64_t kc, int64_t p0, int64_t p1,
                       TYPE *bp)
{
    int64_t t0 = 0;
    if (g->offs) {   /* step of row kb: last t with offs[t] <= kb */
        int64_t lo = 0, hi = g->nsteps - 1;
        while (lo < hi) {
            int64_t mid = (lo + hi + 1) / 2;
            if (g->offs[mid] <= kb)
                lo = mid;
            else
                hi = mid - 1;
        }
        t0 = lo;
    }
    for (int64_t p = p0; p < p1; p++) {
        int64_t n0 = p * NR, nn = g->N - n0 < NR ? g->N - n0 : NR;
        TYPE *dst = bp + (p - p0) * kc * NR;
        int64_t t = t0;
        for (int64_t k = 0; k < kc; k++) {
            int64_t row = kb + k;
            const TYPE *src = g->b + row * g->ldb;
            if (g->offs) {
                while (row >= g->offs[t + 1])
                    t++;
                int64_t r = row - g->offs[t];
                src = t ? g->b + (g->offs[t - 1] + r) * g->ldb : g->b0 + r * g->ldb;
            }
            if (g->bx) {
                if (p < g->px) {   /* x columns, zero padded to the panel */
                    int64_t nxp = g->nx - n0 < NR ? g->nx - n0 : NR;
                    memcpy(dst + k * NR, g->bx + row * g->ldbx + n0, (size_t)nxp * sizeof(TYPE));
                    for (int64_t n = nxp; n < NR; n++)
                        dst[k * NR + n] = 0;
                    continue;
                }
                src -= g->px * NR;
            }
            src += n0;
            if (nn == NR) {
                memcpy(dst + k * NR, src, NR * sizeof(TYPE));
                continue;
            }
            int64_t n = 0;
            for (; n < nn; n++)
                dst[k * NR + n] = src[n];
            for (; n < NR; n++)
                dst[k * NR + n] = 0;
        }
    }
}

/* MR x NR register tile over kc: C = acc + bias (first) or C += acc.
 * A packed (ap[k*MR + r], direct 0) or read in place: row-major A (ap[r*lda + k],
 * direct 1) or transposed A (ap[k*lda + r], direct 2); in place, rows past mr
 * re-read row mr-1 and their results are dropped. */
INLINE void FN(gemm_tile)(const int rows, const int nvec, int64_t kc, const TYPE *restrict ap,
                          int64_t lda, const int direct, const TYPE *restrict bp, int64_t pstride,
                          TYPE *restrict c, int64_t ldc, int64_t mr, int64_t nn, int first,
                          const TYPE *bias)
{
    vec acc[MR][NV * WP];
    const TYPE *arow[MR];
#pragma GCC unroll 16
    for (int r = 0; r < rows; r++) {
        arow[r] = ap + (r < mr ? r : mr - 1) * (direct == 2 ? 1 : lda);
#pragma GCC unroll 8
        for (int j = 0; j < nvec; j++)
            acc[r][j] = (vec){0};
    }
    /* the C tile is read (or written) after the k loop: start fetching it now,
     * its lines otherwise miss one after another at the end of every tile */
#pragma GCC unroll 16
    for (int r = 0; r < rows; r++)
        if (r < mr)
#pragma GCC unroll 8
            for (int j = 0; j < nvec; j++)
                if (j * V < nn)
                    __builtin_prefetch(c + r * ldc + j * V, 1, 3);
    for (int64_t k = 0; k < kc; k++) {
        vec b[NV * WP];
#pragma GCC unroll 8
        for (int j = 0; j < nvec; j++)
            b[j] = vload(bp + (j / NV) * pstride + (j % NV) * V);
#pragma GCC unroll 16
        for (int r = 0; r < rows; r++) {
            vec a = vset1(direct == 2 ? arow[r][k * lda] : direct ? arow[r][k] : ap[r]);
#pragma GCC unroll 8
            for (int j = 0; j < nvec; j++)
                acc[r][j] = vfma(a, b[j], acc[r][j]);
        }
        if (!direct)
            ap += MR;
        bp += NR;
    }
    for (int r = 0; r < rows && r < mr; r++) {
        for (int j = 0; j < nvec; j++) {
            int64_t n = nn - j * V;
            if (n <= 0)
                break;
            int nv = n < V ? (int)n : V;
            TYPE *cp = c + r * ldc + j * V;
            vec v = acc[r][j];
            if (!first)
                v = v + vload_n(cp, nv);
            else if (bias)
                v = v + vload_n(bias + j * V, nv);
            vstore_n(cp, v, nv);
        }
    }
}

#if ISA == 2
/* gemm_tile on half vectors (hvec, simd.template.h) for MR rows of one panel with at
 * most V/2 columns (dx and dw_ih at I = 200: the last panel holds 8 of 32) */
INLINE void FN(gemm_tile_half)(int64_t kc, const TYPE *restrict ap, int64_t lda,
                               const int direct, const TYPE *restrict bp, TYPE *restrict c,
                               int64_t ldc, int64_t mr, int64_t nn, int first, const TYPE *bias)
{
    hvec acc[MR];
    const TYPE *arow[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        arow[r] = ap + (r < mr ? r : mr - 1) * (direct == 2 ? 1 : lda);
        acc[r] = (hvec){0};
    }
    for (int64_t k = 0; k < kc; k++) {
        hvec b = hload(bp);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            hvec a = hset1(direct == 2 ? arow[r][k * lda] : direct ? arow[r][k] : ap[r]);
            acc[r] = hfma(a, b, acc[r]);
        }
        if (!direct)
            ap += MR;
        bp += NR;
    }
    for (int r = 0; r < MR && r < mr; r++) {
        TYPE *cp = c + r * ldc;
        vec v = hwiden(acc[r]);
        if (!first)
            v = v + vload_n(cp, (int)nn);
        else if (bias)
            v = v + vload_n(bias, (int)nn);
        vstore_n(cp, v, (int)nn);
    }
}
#define GEMM_TILE_HALF(direct)                                                                \
    if (nn <= V / 2 && TILE_ROWS(mr) == MR) {                                                 \
        FN(gemm_tile_half)(kc, ap, lda, direct, bp, c, ldc, mr, nn, first, bias);             \
        return;                                                                               \
    }
#else
#define GEMM_TILE_HALF(direct)
#endif

/* The register tile has `rows` rows, a compile-time count >= mr: a 1-row product
 * (B = 1 streaming) must not pay for MR rows. Each output element sees the same
 * FMA sequence whatever the variant. */
#if MR >= 12
#define TILE_ROWS(mr) ((mr) <= 4 ? (int)(mr) : (mr) <= 6 ? 6 : (mr) <= 8 ? 8 : MR)
#elif MR >= 6
#define TILE_ROWS(mr) ((mr) <= 4 ? (int)(mr) : MR)
#else
#define TILE_ROWS(mr) ((int)(mr) < MR ? (int)(mr) : MR)
#endif
#define TILE_CASE(n, direct)                                                                  \
    case n:                                                                                   \
        FN(gemm_tile)(n < MR ? n : MR, NV, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn, first, \
                      bias);                                                                  \
        return;
/* wide: 1 or 2 rows over WP panels (pstride apart), enough independent
 * accumulators to hide the FMA latency; narrow: a full-height tile of a panel
 * with at most V columns (small I in dx, dw_ih) computes one vector, not NV */
#define TILE_SWITCH(direct)                                                                   \
    if (wide) {                                                                               \
        if (mr == 1)                                                                          \
            FN(gemm_tile)(1, NV * WP, kc, ap, lda, direct, bp, pstride, c, ldc, mr, nn,       \
                          first, bias);                                                       \
        else                                                                                  \
            FN(gemm_tile)(2, NV * WP, kc, ap, lda, direct, bp, pstride, c, ldc, mr, nn,       \
                          first, bias);                                                       \
        return;                                                                               \
    }                                                                                         \
    GEMM_TILE_HALF(direct)                                                                    \
    if (NV > 1 && nn <= V && TILE_ROWS(mr) == MR) {                                           \
        FN(gemm_tile)(MR, 1, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn, first, bias);        \
        return;                                                                               \
    }                                                                                         \
    switch (TILE_ROWS(mr)) {                                                                  \
        TILE_CASE(1, direct)                                                                  \
        TILE_CASE(2, direct)                                                                  \
        TILE_CASE(3, direct)                                                                  \
        TILE_CASE(4, direct)                                                                  \
        TILE_CASE(6, direct)                                                                  \
        TILE_CASE(8, direct)                                                                  \
    default:                                                                                  \
        FN(gemm_tile)(MR, NV, kc, ap, lda, direct, bp, 0, c, ldc, mr, nn, first, bias);       \
    }

/* The tile of packed A (ap[k*MR + r]) */
KERNEL void FN(gemm_tile_packed)(int64_t kc, const TYPE *ap, const TYPE *bp, int wide,
                                 int64_t pstride, TYPE *c, int64_t ldc, int64_t mr, int64_t nn,
                                 int first, const TYPE *bias)
{
    const int64_t lda = 0;
    TILE_SWITCH(0)
}

/* The tile of row-major A read in place (ap[r*lda + k]) */
KERNEL void FN(gemm_tile_direct)(int64_t kc, const TYPE *ap, int64_t lda, const TYPE *bp,
                                 int wide, int64_t pstride, TYPE *c, int64_t ldc, int64_t mr,
                                 int64_t nn, int first, const TYPE *bias)
{
    TILE_SWITCH(1)
}

/* The tile of transposed A read in place (ap[k*lda + r]) */
KERNEL void FN(gemm_tile_direct_t)(int64_t kc, const TYPE *ap, int64_t lda, const TYPE *bp,
                                   int wide, int64_t pstride, TYPE *c, int64_t ldc, int64_t mr,
                                   int64_t nn, int first, const TYPE *bias)
{
    TILE_SWITCH(2)
}

/* Start of part tid of n items split into num_threads parts. */
static inline int64_t FN(split)(int64_t n, int tid, int num_threads)
{
    return n * tid / num_threads;
}

/* Columns of a block of B: KC x nc elements fill about half the L2 of the
 * running CPU (the rest holds C and A's slivers), a multiple of NR in
 * [4 NR, NC_MAX]. Only the blocking, never the bits, depends on it. */
static int64_t FN(gemm_nc)(void)
{
    int64_t nc = lstm_cpu()->l2 / 2 / (KC * (int64_t)sizeof(TYPE)) / NR * NR;
    return nc < 4 * NR ? 4 * NR : nc > NC_MAX ? NC_MAX : nc;
}

/* Per-thread workspace (elements): B block KC x nc (raw B only), then the A
 * slivers: MR x KC, or for transposed A ATB tiles of MR x KC. */
static int64_t FN(gemm_ws_elems)(int raw_b)
{
    return (raw_b ? (int64_t)KC * FN(gemm_nc)() : 0) + (int64_t)ATB * MR * KC + 64;
}

/* C (M x N) = A.B (+ bias), the part of thread tid of num_threads. */
KERNEL void FN(gemm)(const FN(gemm_args) *g, TYPE *ws, int tid, int num_threads)
{
    int64_t mtiles = (g->M + MR - 1) / MR, npan = (g->N + NR - 1) / NR;
    int64_t mt0 = 0, mt1 = mtiles, p0 = 0, p1 = npan;
    if (npan >= mtiles) {
        p0 = FN(split)(npan, tid, num_threads);
        p1 = FN(split)(npan, tid + 1, num_threads);
    } else {
        mt0 = FN(split)(mtiles, tid, num_threads);
        mt1 = FN(split)(mtiles, tid + 1, num_threads);
    }
    if (p0 >= p1 || mt0 >= mt1)
        return;
    const int64_t nc = FN(gemm_nc)(), npb = nc / NR;
    TYPE *bpk = ws, *ap = ws + (g->bpacked ? 0 : KC * nc);
    int pack_rows = !g->a_trans && (g->lda * (int64_t)sizeof(TYPE)) % 2048 == 0 &&
                    p1 - p0 >= 4;
    /* a small transposed A (dgates^T of a short sequence) is read in place: its
     * MR values per k are contiguous, and packing would cost as much as the
     * product when N is small (dw_ih with small I) */
    int at_direct = g->a_trans && g->K * g->lda * (int64_t)sizeof(TYPE) <= (256 << 10) &&
                    (g->lda * (int64_t)sizeof(TYPE)) % 2048 != 0;
    if (g->K == 0) {
        for (int64_t m = mt0 * MR; m < g->M && m < mt1 * MR; m++)
            for (int64_t n = p0 * NR; n < g->N && n < p1 * NR; n++)
                g->c[m * g->ldc + n] = g->bias ? g->bias[n] : 0;
        return;
    }
    const int64_t nkb = (g->K + KC - 1) / KC, kb0 = g->khi ? g->klo / KC : 0;
    const int64_t kb1 = g->khi ? (g->khi + KC - 1) / KC : nkb;
    for (int64_t bi = 0; bi < kb1 - kb0; bi++) {
        int64_t kb = (g->kdesc ? kb1 - 1 - bi : kb0 + bi) * KC;
        int64_t kc = g->K - kb < KC ? g->K - kb : KC;
        const int first = g->kdesc ? kb == (nkb - 1) * KC : kb == 0;
        for (int64_t pb = p0; pb < p1; pb += npb) {
            int64_t pe = pb + npb < p1 ? pb + npb : p1;
            const TYPE *bblk;
            int64_t pstride;
            if (g->bpacked) {
                bblk = g->bpacked + pb * g->K * NR + kb * NR;
                pstride = g->K * NR;
            } else {
                FN(pack_b)(g, kb, kc, pb, pe, bpk);
                bblk = bpk;
                pstride = kc * NR;
            }
            for (int64_t mt = mt0; mt < mt1; mt++) {
                int64_t m0 = mt * MR, mr = g->M - m0 < MR ? g->M - m0 : MR;
                if (g->a_trans && !at_direct && (mt - mt0) % ATB == 0)
                    FN(pack_at)(g, mt, mt + ATB < mt1 ? mt + ATB : mt1, kb, kc, ap);
                if (pack_rows)
                    FN(pack_a)(g, m0, kb, kc, ap);
                for (int64_t p = pb; p < pe;) {
                    int wide = mr <= 2 && pe - p >= WP &&
                               (!g->c2 || p + WP <= g->px || p >= g->px);
                    TYPE *cp = g->c + m0 * g->ldc + p * NR;
                    int64_t ldc = g->ldc, nn = g->N - p * NR;
                    if (g->c2 && p >= g->px) {
                        cp = g->c2 + m0 * g->ldc2 + (p - g->px) * NR;
                        ldc = g->ldc2;
                    } else if (g->c2) {
                        nn = g->nx - p * NR;
                    }
                    const TYPE *bias = g->bias ? g->bias + p * NR : NULL;
                    const TYPE *bpp = bblk + (p - pb) * pstride;
                    if (pack_rows)
                        FN(gemm_tile_packed)(kc, ap, bpp, wide, pstride, cp, ldc, mr, nn, first,
                                             bias);
                    else if (at_direct)
                        FN(gemm_tile_direct_t)(kc, g->a + kb * g->lda + m0, g->lda, bpp, wide,
                                               pstride, cp, ldc, mr, nn, first, bias);
                    else if (g->a_trans)
                        FN(gemm_tile_packed)(kc, ap + (mt - mt0) % ATB * kc * MR, bpp, wide,
                                             pstride, cp, ldc, mr, nn, first, bias);
                    else
                        FN(gemm_tile_direct)(kc, g->a + m0 * g->lda + kb, g->lda, bpp, wide,
                                             pstride, cp, ldc, mr, nn, first, bias);
                    p += wide ? WP : 1;
                }
            }
        }
    }
}

