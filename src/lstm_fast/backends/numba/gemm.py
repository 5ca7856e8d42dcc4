"""Packed GEMM of the Numba backend (csrc/gemm.template.c in C): C = A.B (+ bias) with B in
packed panels, for the hoisted input projection, the projection and the backward's
whole-sequence products.

* B packed as panels [ceil(N/NR)][K][NR], NR = 2 vectors (``pack_b``; ``packed.panels`` for the
  weights); A row-major or transposed (the dW products), read in place.
* Blocked KC x (MCT tiles of MR rows): the B sliver (KC x NR) stays in L1 and the A block in
  L2. Register tiles: ``gemm_tile`` MR = 8 rows x 2 vectors, row-major A (C's gemm_tile as
  gemm_tile_direct), ``gemm_tile_t`` the same for transposed A (gemm_tile_direct_t),
  ``gemm_tile1`` 1 row x 4 panels for one-row products (C's one-row WP-panel tile). C also
  packs A (pack_a, pack_at) for large products; Numba reads A in place (both tiles ran at ~257
  GFLOP/s f32, one thread, AMD Zen 5).
* Threads: ``gemm`` splits output panels (or row tiles, whichever are more) over num_threads
  in one prange region (``gemm_par``); C calls gemm inside every thread's job instead. K is
  never split, so every element of C is the same k-ordered FMA chain for any thread count
  and any number of rows.
"""

from numba import njit, prange

from .simd import JIT, PJIT, lanes, ld, nl, ptr, vadd, vfma, vload, vload_n, vset1, vstore, vstore_n, vzero

MR = 8       # rows of the GEMM register tile (columns: NR = 2 vectors)
KC = 256     # k block: the B sliver KC x NR (32 KiB) stays in L1
MCT = 12     # row tiles per A block (96 rows x KC: ~96 KiB f32, in L2)
PAR_MIN = 1 << 18   # multiply-adds below which a product or step stays on one thread (~20 us)

# --- register tiles (hand-unrolled: one accumulator variable per vector) -----------------


@njit(inline="always", **JIT)
def ukr_store(c, ci, v0, v1, nn, first, bias, bo):
    """Store a 2-vector row of a GEMM tile at flat index ci: acc (+ bias) if first, else C + acc."""
    V = lanes(c)
    n0 = min(nn, V)
    if first:
        if bias is not None:
            v0 = vadd(v0, vload_n(bias, bo, n0))
    else:
        v0 = vadd(v0, vload_n(c, ci, n0))
    vstore_n(c, ci, v0, n0)
    if nn > V:
        n1 = min(nn - V, V)
        if first:
            if bias is not None:
                v1 = vadd(v1, vload_n(bias, bo + V, n1))
        else:
            v1 = vadd(v1, vload_n(c, ci + V, n1))
        vstore_n(c, ci + V, v1, n1)


@njit(inline="always", **JIT)
def ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
               c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71):
    """Store the first mr rows (ldc apart from ci) of an 8-row GEMM tile with ``ukr_store``."""
    ukr_store(c, ci + 0 * ldc, c00, c01, nn, first, bias, bo)
    if mr > 1:
        ukr_store(c, ci + 1 * ldc, c10, c11, nn, first, bias, bo)
    if mr > 2:
        ukr_store(c, ci + 2 * ldc, c20, c21, nn, first, bias, bo)
    if mr > 3:
        ukr_store(c, ci + 3 * ldc, c30, c31, nn, first, bias, bo)
    if mr > 4:
        ukr_store(c, ci + 4 * ldc, c40, c41, nn, first, bias, bo)
    if mr > 5:
        ukr_store(c, ci + 5 * ldc, c50, c51, nn, first, bias, bo)
    if mr > 6:
        ukr_store(c, ci + 6 * ldc, c60, c61, nn, first, bias, bo)
    if mr > 7:
        ukr_store(c, ci + 7 * ldc, c70, c71, nn, first, bias, bo)


@njit(**JIT)
def gemm_tile(kc, a, ai, lda, bp, bi, c, ci, ldc, mr, nn, first, bias, bo):
    """MR x NR register tile (MR = 8 rows, NR = 2 vectors) over kc steps of k, row-major A:
    A(r, k) = a.flat[ai + r*lda + k]; B(k, :) = bp.flat[bi + k*NR:][:NR] (packed panel);
    C rows ci + r*ldc get acc (+ bias[bo:] if bias is not None) if first, else C += acc.
    Rows past mr re-read row mr - 1 and are dropped; columns past nn are masked. Each element
    of C is the k-ordered FMA chain, whatever the tile (same bits for any partition)."""
    V = lanes(c)
    NR = 2 * V
    a0 = ai + min(0, mr - 1) * lda
    a1 = ai + min(1, mr - 1) * lda
    a2 = ai + min(2, mr - 1) * lda
    a3 = ai + min(3, mr - 1) * lda
    a4 = ai + min(4, mr - 1) * lda
    a5 = ai + min(5, mr - 1) * lda
    a6 = ai + min(6, mr - 1) * lda
    a7 = ai + min(7, mr - 1) * lda
    z = vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = z
    for k in range(kc):
        b0 = vload(bp, bi + k * NR)
        b1 = vload(bp, bi + k * NR + V)
        o = k
        s = vset1(ld(a, a0 + o))
        c00 = vfma(s, b0, c00)
        c01 = vfma(s, b1, c01)
        s = vset1(ld(a, a1 + o))
        c10 = vfma(s, b0, c10)
        c11 = vfma(s, b1, c11)
        s = vset1(ld(a, a2 + o))
        c20 = vfma(s, b0, c20)
        c21 = vfma(s, b1, c21)
        s = vset1(ld(a, a3 + o))
        c30 = vfma(s, b0, c30)
        c31 = vfma(s, b1, c31)
        s = vset1(ld(a, a4 + o))
        c40 = vfma(s, b0, c40)
        c41 = vfma(s, b1, c41)
        s = vset1(ld(a, a5 + o))
        c50 = vfma(s, b0, c50)
        c51 = vfma(s, b1, c51)
        s = vset1(ld(a, a6 + o))
        c60 = vfma(s, b0, c60)
        c61 = vfma(s, b1, c61)
        s = vset1(ld(a, a7 + o))
        c70 = vfma(s, b0, c70)
        c71 = vfma(s, b1, c71)
    ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
               c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71)


@njit(**JIT)
def gemm_tile_t(kc, a, ai, lda, bp, bi, c, ci, ldc, mr, nn, first, bias, bo):
    """``gemm_tile`` for transposed A (the dW products): A(r, k) = a.flat[ai + r + k*lda];
    B(k, :) = bp.flat[bi + k*NR:][:NR] (packed panel);
    C rows ci + r*ldc get acc (+ bias[bo:] if bias is not None) if first, else C += acc.
    Rows past mr re-read row mr - 1 and are dropped; columns past nn are masked. Each element
    of C is the k-ordered FMA chain, whatever the tile (same bits for any partition)."""
    V = lanes(c)
    NR = 2 * V
    a0 = ai + min(0, mr - 1)
    a1 = ai + min(1, mr - 1)
    a2 = ai + min(2, mr - 1)
    a3 = ai + min(3, mr - 1)
    a4 = ai + min(4, mr - 1)
    a5 = ai + min(5, mr - 1)
    a6 = ai + min(6, mr - 1)
    a7 = ai + min(7, mr - 1)
    z = vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = z
    for k in range(kc):
        b0 = vload(bp, bi + k * NR)
        b1 = vload(bp, bi + k * NR + V)
        o = k * lda
        s = vset1(ld(a, a0 + o))
        c00 = vfma(s, b0, c00)
        c01 = vfma(s, b1, c01)
        s = vset1(ld(a, a1 + o))
        c10 = vfma(s, b0, c10)
        c11 = vfma(s, b1, c11)
        s = vset1(ld(a, a2 + o))
        c20 = vfma(s, b0, c20)
        c21 = vfma(s, b1, c21)
        s = vset1(ld(a, a3 + o))
        c30 = vfma(s, b0, c30)
        c31 = vfma(s, b1, c31)
        s = vset1(ld(a, a4 + o))
        c40 = vfma(s, b0, c40)
        c41 = vfma(s, b1, c41)
        s = vset1(ld(a, a5 + o))
        c50 = vfma(s, b0, c50)
        c51 = vfma(s, b1, c51)
        s = vset1(ld(a, a6 + o))
        c60 = vfma(s, b0, c60)
        c61 = vfma(s, b1, c61)
        s = vset1(ld(a, a7 + o))
        c70 = vfma(s, b0, c70)
        c71 = vfma(s, b1, c71)
    ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
               c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71)


@njit(**JIT)
def gemm_tile1(kc, a, ai, sk, bp, bi, ps, npan, c, ci, nn, first, bias, bo):
    """One-row GEMM tile over up to 4 panels (8 vectors): A(0, k) = a.flat[ai + k*sk], panel q
    of B at bp.flat[bi + q*ps:] ([k][NR]), C at c.flat[ci + q*NR:], nn columns left from the first
    panel. Panels past npan re-read the last one and are dropped. Each element gets the same
    FMA chain as in the 8-row tile (a single row, e.g. B = 1 streaming, pays for one row)."""
    V = lanes(c)
    NR = 2 * V
    b0 = bi + min(0, npan - 1) * ps
    b1 = bi + min(1, npan - 1) * ps
    b2 = bi + min(2, npan - 1) * ps
    b3 = bi + min(3, npan - 1) * ps
    z = vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for k in range(kc):
        s = vset1(ld(a, ai + k * sk))
        o = k * NR
        c00 = vfma(s, vload(bp, b0 + o), c00)
        c01 = vfma(s, vload(bp, b0 + o + V), c01)
        c10 = vfma(s, vload(bp, b1 + o), c10)
        c11 = vfma(s, vload(bp, b1 + o + V), c11)
        c20 = vfma(s, vload(bp, b2 + o), c20)
        c21 = vfma(s, vload(bp, b2 + o + V), c21)
        c30 = vfma(s, vload(bp, b3 + o), c30)
        c31 = vfma(s, vload(bp, b3 + o + V), c31)
    ukr_store(c, ci + 0 * NR, c00, c01, nn - 0 * NR, first, bias, bo + 0 * NR)
    if npan > 1:
        ukr_store(c, ci + 1 * NR, c10, c11, nn - 1 * NR, first, bias, bo + 1 * NR)
    if npan > 2:
        ukr_store(c, ci + 2 * NR, c20, c21, nn - 2 * NR, first, bias, bo + 2 * NR)
    if npan > 3:
        ukr_store(c, ci + 3 * NR, c30, c31, nn - 3 * NR, first, bias, bo + 3 * NR)


# --- the product ----------------------------------------------------------------------


@njit(**JIT)
def split(n, tid, num_threads):
    """Start of part tid of n items cut into num_threads contiguous parts."""
    return n * tid // num_threads


@njit(**JIT)
def gemm_part(M, N, K, a, sr, sk, bp, c, bias, p0, p1, mt0, mt1):
    """C = A.B (+ bias[n]) for row tiles mt0..mt1 (of MR rows) and column panels p0..p1.

    A(m, k) = a.flat[m*sr + k*sk] (row-major: sr = lda, sk = 1; transposed: sr = 1, sk = lda);
    B packed panels bp [ceil(N/NR)][K][NR]; C = c (M, N) C-contiguous; bias (N,) or None.
    Each element of C: the k-ordered FMA chain of each KC block, blocks added in k order.
    """
    V = lanes(c)
    NR = 2 * V
    ldc = c.shape[1]
    if K == 0:
        for m in range(mt0 * MR, min(M, mt1 * MR)):
            for n in range(p0 * NR, min(N, p1 * NR)):
                c[m, n] = 0 if bias is None else bias[n]
        return
    ap, bpp, cp, bptr = ptr(a), ptr(bp), ptr(c), ptr(bias)
    if M == 1:   # one row (B = 1): 1 x 4-panel tiles
        for kb in range(0, K, KC):
            kc = min(KC, K - kb)
            for p in range(p0, p1, 4):
                npn = min(4, p1 - p)
                gemm_tile1(kc, ap, kb * sk, sk, bpp, (p * K + kb) * NR, K * NR, npn, cp, p * NR, N - p * NR,
                           kb == 0, bptr, p * NR)
        return
    for kb in range(0, K, KC):
        kc = min(KC, K - kb)
        for mb in range(mt0, mt1, MCT):
            me = min(mb + MCT, mt1)
            for p in range(p0, p1):
                bi = (p * K + kb) * NR
                nn = min(NR, N - p * NR)
                for mt in range(mb, me):
                    m0 = mt * MR
                    ai = m0 * sr + kb * sk
                    ci = m0 * ldc + p * NR
                    mr = min(MR, M - m0)
                    # one tile per A layout, unit stride literal (transposed A, the dW products:
                    # 120 -> 240 GFLOP/s f32 against a generic-stride tile)
                    if sk == 1:
                        gemm_tile(kc, ap, ai, sr, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, bptr, p * NR)
                    else:
                        gemm_tile_t(kc, ap, ai, sk, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, bptr, p * NR)


@njit(**JIT)
def gemm_job(M, N, K, a, a_trans, bp, c, bias, tid, num_threads):
    """Part tid of num_threads of ``gemm``: output panels (or row tiles, whichever are more) split."""
    NR = 2 * lanes(c)
    ld = a.shape[1]
    sr, sk = (1, ld) if a_trans else (ld, 1)
    mtiles = (M + MR - 1) // MR
    npan = (N + NR - 1) // NR
    if npan >= mtiles:
        gemm_part(M, N, K, a, sr, sk, bp, c, bias, split(npan, tid, num_threads), split(npan, tid + 1, num_threads),
                  nl(0), mtiles)
    else:
        gemm_part(M, N, K, a, sr, sk, bp, c, bias, nl(0), npan, split(mtiles, tid, num_threads),
                  split(mtiles, tid + 1, num_threads))


@njit(**PJIT)
def gemm_par(M, N, K, a, a_trans, bp, c, bias, num_threads):
    for tid in prange(num_threads):
        gemm_job(M, N, K, a, a_trans, bp, c, bias, nl(tid), num_threads)


@njit(**JIT)
def gemm(M, N, K, a, a_trans, bp, c, bias, num_threads):
    """c[:M, :N] = op(a) @ B (+ bias): op(a) = a (M, K) or a^T (a (K, M)); B panels bp."""
    if M == 0 or N == 0:
        return
    if num_threads > 1 and M * N * K >= PAR_MIN:
        gemm_par(M, N, K, a, a_trans, bp, c, bias, num_threads)
    else:
        gemm_job(M, N, K, a, a_trans, bp, c, bias, nl(0), nl(1))


@njit(**JIT)
def pack_b(src, r0, nrows, dst, k0):
    """Rows r0.. of src (., Nc) into the panels dst [ceil(Nc/NR)][K][NR] at rows k0.., zero
    past Nc (masked loads, whole-vector stores)."""
    V = lanes(dst)
    K, NR = dst.shape[1], dst.shape[2]
    Nc = src.shape[1]
    for p in range(dst.shape[0]):
        n0 = p * NR
        for r in range(nrows):
            si = (r0 + r) * Nc + n0
            di = (p * K + k0 + r) * NR
            vstore(dst, di, vload_n(src, si, min(V, Nc - n0)))
            vstore(dst, di + V, vload_n(src, si + V, min(V, Nc - n0 - V)))
