"""The LSTM of the Numba backend (csrc/lstm.template.c in C): the forward step tiles and time
loop, the backward step tiles, time loop and whole-sequence products, on the weights as
``packed.pack`` lays them out. Function names are C's for the same concept (``fwd_tile``,
``fwd_step``, ``fwd_job``, ``lstm_forward``, ``bwd_tile``, ``bwd_rows``, ``bwd_step``, ``bwd_job``,
``lstm_backward``); where Numba's structure differs, the docstring's last line says how.

* Forward step (``fwd_step``): per hidden block (V units) and FR = 6 rows, the 24 accumulators
  of h_{t-1}.w_hh^T for the 4 gates (``fwd_tile``) are added to the input projection in gates
  (x.w_ih^T + b, a GEMM hoisted out of the loop), then ``cell.fwd_cell`` runs on that tile
  while it is in L1. One row (B = 1): 1 row x 4 blocks (``fwd_tile1``).
* Inference (save=False): nothing for backward is written; the input projection goes to a
  workspace of at most FWD_CHUNK_BYTES (or one step), a chunk of steps at a time (each step's
  own rows when the threads split the sequences), and the running cell state lives in c_n.
* Backward step (``bwd_step``): dh = dgates[t+1].w_hh for 4 rows x 4 blocks (``bwd_tile``,
  + dy; 1 row x 8 blocks ``bwd_tile1``), then ``cell.bwd_cell`` for the same units; dx, dw_ih,
  dw_hh, db (and dw_hr) are whole-sequence GEMMs after the loop.
* Lengths: one code path, the packed step-major layout (x (N, I), step t's rows at
  sum(batch_sizes[:t]), only the first batch_sizes[t] sequences advance); sizes never increase,
  so h_{t-1}/c_{t-1} are the first n rows of step t-1 in y/c. Padded input is
  batch_sizes = [B] * T.
* Projection (w_hr (P, H)): forward writes m = o*tanh(c) to ``m`` and y_t = m.w_hr^T is a GEMM
  per step; backward forms dh (P wide), dm = dh.w_hr, then the cell; dw_hr = dh_all^T.m_all
  after the loop. Without one those arrays have 0 rows and the branches are skipped at run
  time (never None: see "Compilation" below).
* Threads (``num_threads``) over ``prange(num_threads)`` regions with a fixed partition: with
  >= ROWS_PER_THREAD sequences per thread each thread runs its own sequences through all steps
  (one region per pass: on a shared machine every region can wait a scheduler tick for the
  second thread), else each step splits its hidden blocks and the GEMMs their output tiles;
  work under PAR_MIN multiply-adds stays on the calling thread. K is never split and every
  output element is computed by the same operations whatever the partition, so the bits do
  not depend on the thread count. C runs one job per thread for the whole call with a
  barrier after every step; Numba has no barrier inside a prange, so its ``*_par`` functions
  are one parallel region each and the time loop runs on the calling thread between them.
* Compilation: every option is a run-time value of one argument type: the variants a tuple of
  fixed types (``cell.var_on``), the projection's arrays, the peephole gradients and the
  recurrent dropout and zoneout masks arrays of 0 rows when off, never None. Each kernel then
  compiles once per dtype for every combination (Numba compiles the whole call tree again for
  each distinct argument type, 15-17 s per kernel cold).
"""

import numpy as np
from numba import njit, prange

from .cell import bwd_cell, fwd_cell
from .gemm import PAR_MIN, gemm, gemm_job, pack_b, split
from .simd import JIT, PJIT, lanes, ld, nl, ptr, st, vadd, vfma, vload, vload_n, vset1, vstore_n, vzero

FR = 6                 # rows of the forward step tile (x 4 gates: 24 accumulators)
ROWS_PER_THREAD = 8    # below this many sequences per thread the steps split hidden blocks instead
# save=False: the input projection of as many steps as fit in this many bytes (at least one step).
# Measured, f32, Intel Xeon: 128 KiB..all steps within 2% at five shapes, 1 and 2 threads, except
# (128,64,64,64) 1 thread: 5.75 ms at 512 KiB, 6.13 with all steps (and with save=True).
FWD_CHUNK_BYTES = 1 << 19

# --- forward ---------------------------------------------------------------------------


@njit(inline="always", **JIT)
def add_gates(gates, gi, H, nv, a0, a1, a2, a3):
    """gates[gi + g*H:][:nv] += a_g for the 4 gates (pre-activation = input projection + h.w_hh^T)."""
    vstore_n(gates, gi, vadd(vload_n(gates, gi, nv), a0), nv)
    vstore_n(gates, gi + H, vadd(vload_n(gates, gi + H, nv), a1), nv)
    vstore_n(gates, gi + 2 * H, vadd(vload_n(gates, gi + 2 * H, nv), a2), nv)
    vstore_n(gates, gi + 3 * H, vadd(vload_n(gates, gi + 3 * H, nv), a3), nv)


@njit(**JIT)
def fwd_tile(K, hp, hi, w, wi, gates, gi, G, H, mr, nv):
    """gates[rows, g*H + off:][:nv] += h_prev[rows] . w_hh^T for one block of V hidden units and
    its 4 gates, up to 6 rows (24 accumulators): h rows at hp.flat[hi + r*K], w_hh block at
    w.flat[wi:] as [k][4][V], gates rows at gates.flat[gi + r*G]. Rows past mr re-read row
    mr - 1 and are dropped."""
    h0 = hi + min(0, mr - 1) * K
    h1 = hi + min(1, mr - 1) * K
    h2 = hi + min(2, mr - 1) * K
    h3 = hi + min(3, mr - 1) * K
    h4 = hi + min(4, mr - 1) * K
    h5 = hi + min(5, mr - 1) * K
    z = vzero(gates)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = z
    for k in range(K):
        o = wi + k * 4 * lanes(gates)
        w0 = vload(w, o + 0 * lanes(gates))
        w1 = vload(w, o + 1 * lanes(gates))
        w2 = vload(w, o + 2 * lanes(gates))
        w3 = vload(w, o + 3 * lanes(gates))
        s = vset1(ld(hp, h0 + k))
        a00 = vfma(s, w0, a00)
        a01 = vfma(s, w1, a01)
        a02 = vfma(s, w2, a02)
        a03 = vfma(s, w3, a03)
        s = vset1(ld(hp, h1 + k))
        a10 = vfma(s, w0, a10)
        a11 = vfma(s, w1, a11)
        a12 = vfma(s, w2, a12)
        a13 = vfma(s, w3, a13)
        s = vset1(ld(hp, h2 + k))
        a20 = vfma(s, w0, a20)
        a21 = vfma(s, w1, a21)
        a22 = vfma(s, w2, a22)
        a23 = vfma(s, w3, a23)
        s = vset1(ld(hp, h3 + k))
        a30 = vfma(s, w0, a30)
        a31 = vfma(s, w1, a31)
        a32 = vfma(s, w2, a32)
        a33 = vfma(s, w3, a33)
        s = vset1(ld(hp, h4 + k))
        a40 = vfma(s, w0, a40)
        a41 = vfma(s, w1, a41)
        a42 = vfma(s, w2, a42)
        a43 = vfma(s, w3, a43)
        s = vset1(ld(hp, h5 + k))
        a50 = vfma(s, w0, a50)
        a51 = vfma(s, w1, a51)
        a52 = vfma(s, w2, a52)
        a53 = vfma(s, w3, a53)
    add_gates(gates, gi + 0 * G, H, nv, a00, a01, a02, a03)
    if mr > 1:
        add_gates(gates, gi + 1 * G, H, nv, a10, a11, a12, a13)
    if mr > 2:
        add_gates(gates, gi + 2 * G, H, nv, a20, a21, a22, a23)
    if mr > 3:
        add_gates(gates, gi + 3 * G, H, nv, a30, a31, a32, a33)
    if mr > 4:
        add_gates(gates, gi + 4 * G, H, nv, a40, a41, a42, a43)
    if mr > 5:
        add_gates(gates, gi + 5 * G, H, nv, a50, a51, a52, a53)


@njit(**JIT)
def fwd_tile1(K, hp, hi, w, wi, nb, gates, gi, H, off):
    """One row (B = 1 or a tail row): gates[g*H + off + q*V:] += h . w_hh^T for nb <= 4 blocks of
    V units from block offset wi (blocks K*4*V apart) and unit offset off. Blocks past nb
    re-read block nb - 1 and are dropped."""
    V = lanes(gates)
    bs = K * 4 * V
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    z = vzero(gates)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for k in range(K):
        s = vset1(ld(hp, hi + k))
        o = k * 4 * V
        a00 = vfma(s, vload(w, q0 + o + 0 * V), a00)
        a01 = vfma(s, vload(w, q0 + o + 1 * V), a01)
        a02 = vfma(s, vload(w, q0 + o + 2 * V), a02)
        a03 = vfma(s, vload(w, q0 + o + 3 * V), a03)
        a10 = vfma(s, vload(w, q1 + o + 0 * V), a10)
        a11 = vfma(s, vload(w, q1 + o + 1 * V), a11)
        a12 = vfma(s, vload(w, q1 + o + 2 * V), a12)
        a13 = vfma(s, vload(w, q1 + o + 3 * V), a13)
        a20 = vfma(s, vload(w, q2 + o + 0 * V), a20)
        a21 = vfma(s, vload(w, q2 + o + 1 * V), a21)
        a22 = vfma(s, vload(w, q2 + o + 2 * V), a22)
        a23 = vfma(s, vload(w, q2 + o + 3 * V), a23)
        a30 = vfma(s, vload(w, q3 + o + 0 * V), a30)
        a31 = vfma(s, vload(w, q3 + o + 1 * V), a31)
        a32 = vfma(s, vload(w, q3 + o + 2 * V), a32)
        a33 = vfma(s, vload(w, q3 + o + 3 * V), a33)
    add_gates(gates, gi + off + 0 * V, H, min(V, H - off - 0 * V), a00, a01, a02, a03)
    if nb > 1:
        add_gates(gates, gi + off + 1 * V, H, min(V, H - off - 1 * V), a10, a11, a12, a13)
    if nb > 2:
        add_gates(gates, gi + off + 2 * V, H, min(V, H - off - 2 * V), a20, a21, a22, a23)
    if nb > 3:
        add_gates(gates, gi + off + 3 * V, H, min(V, H - off - 3 * V), a30, a31, a32, a33)


@njit(**JIT)
def check_steps(batch_sizes, N, B):
    """batch_sizes must be non-increasing in [0, B] and sum to N (a wrong one would
    index out of bounds: Numba does not check)."""
    total = 0
    prev = B
    for t in range(batch_sizes.shape[0]):
        n = batch_sizes[t]
        if n < 0 or n > prev:
            raise ValueError("batch_sizes must be non-increasing, in [0, B]")
        total += n
        prev = n
    if total != N:
        raise ValueError("sum(batch_sizes) must equal the number of packed rows")


@njit(**JIT)
def fwd_step(n, H, R, w, hp, cp, gates_t, c_t, h_t, j0, j1, rev, var):
    """One step for rows 0..n, hidden blocks j0..j1 (V units each): h_prev hp (n, R), c_prev cp,
    gates_t (n, 4H) holding the input projection, c_t, h_t (n, H) written (c_t may be cp: the
    running state). ``rev`` sweeps the blocks last to first (odd steps: the next step starts on
    the w_hh lines last used, as in C); blocks are independent, so the values do not change."""
    V = lanes(gates_t)
    G = 4 * H
    bs = R * 4 * V
    hp, w, cp, gates_t, c_t, h_t = ptr(hp), ptr(w), ptr(cp), ptr(gates_t), ptr(c_t), ptr(h_t)
    if n == 1:   # one row: 1 x 4-block tiles (16 accumulators)
        for j in range(j0, j1, 4):
            nb = min(4, j1 - j)
            off = j * V
            fwd_tile1(R, hp, 0, w, j * bs, nb, gates_t, 0, H, off)
            fwd_cell(gates_t, cp, c_t, h_t, nl(0), nl(1), H, off, min(nb * V, H - off), var)
        return
    nblk = j1 - j0
    for it in range(nblk):
        j = j0 + (nblk - 1 - it if rev else it)
        off = j * V
        nv = min(V, H - off)
        for r0 in range(0, n, FR):
            mr = min(FR, n - r0)
            fwd_tile(R, hp, r0 * R, w, j * bs, gates_t, r0 * G + off, G, H, mr, nv)
            fwd_cell(gates_t, cp, c_t, h_t, r0, mr, H, off, nv, var)


@njit(**PJIT)
def fwd_step_par(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, num_threads, var):
    nblk = (H + lanes(gates_t) - 1) // lanes(gates_t)
    for tid in prange(num_threads):
        fwd_step(n, H, R, w, hp, cp, gates_t, c_t, h_t, split(nblk, nl(tid), num_threads),
                 split(nblk, nl(tid) + 1, num_threads), rev, var)


@njit(**JIT)
def fwd_step_all(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, num_threads, var):
    """``fwd_step`` over all hidden blocks, split over num_threads in one parallel region
    (``fwd_step_par``) if the step is worth it."""
    if num_threads > 1 and n * 4 * H * R >= PAR_MIN:
        fwd_step_par(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, num_threads, var)
    else:
        fwd_step(n, H, R, w, hp, cp, gates_t, c_t, h_t, nl(0), (H + lanes(gates_t) - 1) // lanes(gates_t), rev,
                 var)


@njit(**JIT)
def row_split(n, tid, num_threads):
    """Start of part tid of n batch rows cut into num_threads contiguous parts of whole 4-row tiles."""
    return n if tid >= num_threads else min(n, (n * tid // num_threads + 3) // 4 * 4)


@njit(**JIT)
def fwd_job(x, wih_t, b, inproj, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, save, r0, r1,
            num_threads, var, rdrop, hm, zm):
    """The time loop for sequences r0..r1 (rows r0.. of every step). Sequences are independent,
    so a thread can run its own range through all steps without waiting for the others;
    ``num_threads`` > 1 instead splits each step's hidden blocks (small batches). With ``inproj``
    each step first computes its rows of the input projection (same bits as the whole GEMM: row
    tiles never change an element's operations), so that a thread's whole forward is one
    parallel region. ``save``: gates (N, 4H) and c (N, H) get every step's rows; else c is the
    running state (B, H) (its rows r0.., c0 unused) and gates a workspace, its rows r0.. with
    ``inproj``, else the hoisted projection of x's rows. Without a projection ``whr_t`` and
    ``m`` have 0 rows. ``rdrop`` (B, R) the recurrent dropout
    mask, or 0 rows (off); ``hm`` (B, R) then receives h_{t-1} * rdrop of these rows, which the
    step reads. ``zm`` (N, H): the zoneout mask (no projection), or 0 rows (off): after each
    step's cells, h_t = (h~_t - h_{t-1}) * zm + h_{t-1} (C does it in its cell; the same
    operations). The masks are always arrays, tested at run time (0 rows: off), so that one
    compilation per dtype serves every mask combination (an Optional or None-typed argument
    would compile the whole call tree again for each).
    C's fwd_job is one thread's whole call; here it is the time loop, run by one thread over its
    sequences (``fwd_job_par``) or by the calling thread with each step split (``fwd_step_all``)."""
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    I = x.shape[1]
    off = 0
    prev = 0
    for t in range(batch_sizes.shape[0]):
        nt = batch_sizes[t]
        n = min(nt, r1) - r0
        if n <= 0:
            break
        # the n active sequences were all active at t - 1 (non-increasing sizes)
        a = off + r0
        p = prev + r0
        hp = h0[r0:r0 + n] if t == 0 else y[p:p + n]
        hprev = hp
        if rdrop.shape[0] > 0:
            for r in range(n):
                for k in range(R):
                    hm[r0 + r, k] = hp[r, k] * rdrop[r0 + r, k]
            hp = hm[r0:r0 + n]
        if save:
            cp = c0[r0:r0 + n] if t == 0 else c[p:p + n]
            c_t = c[a:a + n]
        else:
            cp = c_t = c[r0:r0 + n]
        g_t = gates[r0:r0 + n] if inproj and not save else gates[a:a + n]
        if inproj:
            gemm(n, G, I, x[a:a + n], False, wih_t, g_t, b, nl(1))
        if whr_t.shape[0] == 0:
            fwd_step_all(n, H, R, whh_f, hp, cp, g_t, c_t, y[a:a + n], t & 1, num_threads, var)
            if zm.shape[0] > 0:
                for r in range(n):
                    for k in range(H):
                        v = y[a + r, k]
                        y[a + r, k] = (v - hprev[r, k]) * zm[a + r, k] + hprev[r, k]
        else:
            fwd_step_all(n, H, R, whh_f, hp, cp, g_t, c_t, m[r0:r0 + n], t & 1, num_threads, var)
            gemm(n, R, H, m[r0:r0 + n], False, whr_t, y[a:a + n], None, num_threads)
        prev = off
        off += nt


@njit(**PJIT)
def fwd_job_par(x, wih_t, b, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, save, n0, num_threads, var,
                rdrop, hm, zm):
    for tid in prange(num_threads):
        r0 = row_split(n0, nl(tid), num_threads)
        r1 = row_split(n0, nl(tid) + 1, num_threads)
        if r1 > r0:
            fwd_job(x, wih_t, b, True, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, save, r0, r1, nl(1),
                    var, rdrop, hm, zm)


@njit(**JIT)
def lstm_forward(x, wih_t, whh_f, b, whr_t, h0, c0, batch_sizes, y, h_n, c_n, gates, c, m, save, var,
                 rdrop, hm, zm, num_threads):
    """Forward pass into caller-provided outputs, packed layout (see module docstring).

    x (N, I), y (N, R) with N = sum(batch_sizes); step t's rows start at sum(batch_sizes[:t])
    and only its first batch_sizes[t] sequences advance. Weights as ``pack`` makes them:
    ``wih_t`` panels, ``whh_f``, ``b`` (4H,), ``whr_t`` panels, or (0, 0, 0) without a projection;
    ``m`` (B, H) workspace with a projection, else (0, 0). h_n may be h0, c_n may be c0.
    ``save``: gates (N, 4H) and c (N, H) receive every step (for backward). Not ``save``
    (inference): c is not used (pass an empty (0, H)), the running cell state lives in c_n, and
    gates is a workspace of at least batch_sizes[0] rows: the hoisted input projection goes
    there as many steps at a time as fit.
    ``num_threads``: with >= ROWS_PER_THREAD sequences per thread each thread runs its sequences
    through all steps, input projection included (one parallel region per call); else the input
    projection splits output tiles and each step its hidden blocks.
    ``var``: the variants, as ``cell.fwd_cell`` takes them (all off: plain). ``rdrop`` (B, R):
    the recurrent dropout mask (the steps read h_{t-1} * rdrop, copied into the workspace ``hm``
    (B, R)), or an array of 0 rows (off; ``hm`` too). ``zm`` (N, H): the zoneout mask, or 0
    rows (off). Never None: see ``fwd_job``.
    """
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    check_steps(batch_sizes, N, B)
    n0 = batch_sizes[0] if T > 0 else 0
    state = c if save else c_n
    if not save:
        c_n[:] = c0
    if num_threads > 1 and n0 >= ROWS_PER_THREAD * num_threads:   # one parallel region for the whole pass
        fwd_job_par(x, wih_t, b, whh_f, whr_t, h0, c0, batch_sizes, y, gates, state, m, save, n0, num_threads,
                    var, rdrop, hm, zm)
    else:   # hoisted input projection + bias: all steps, or (not save) as many as gates holds
        hprev = h0
        t0 = o0 = 0
        while t0 < T:
            t1, o1 = t0 + 1, o0 + batch_sizes[t0]
            while t1 < T and o1 + batch_sizes[t1] - o0 <= gates.shape[0]:
                o1 += batch_sizes[t1]
                t1 += 1
            g = gates[o0:o1] if save else gates[:o1 - o0]
            gemm(o1 - o0, G, I, x[o0:o1], False, wih_t, g, b, num_threads)
            fwd_job(x[o0:o1], wih_t, b, False, whh_f, whr_t, hprev, c0, batch_sizes[t0:t1], y[o0:o1], g,
                    state[o0:o1] if save else state, m, save, nl(0), batch_sizes[t0], num_threads, var, rdrop,
                    hm, zm[o0:o1] if zm.shape[0] > 0 else zm)
            hprev = y[o1 - batch_sizes[t1 - 1]:o1]
            t0, o0 = t1, o1
    # final states: sequence r's last step is the last t with batch_sizes[t] > r
    h_n[n0:] = h0[n0:]
    if save:
        c_n[n0:] = c0[n0:]
    off = 0
    for t in range(T):
        n = batch_sizes[t]
        nn = batch_sizes[t + 1] if t + 1 < T else 0
        h_n[nn:n] = y[off + nn:off + n]
        if save:
            c_n[nn:n] = c[off + nn:off + n]
        off += n


# --- backward --------------------------------------------------------------------------


@njit(inline="always", **JIT)
def store_dh(out, oi, col, R, v, dy, dyi):
    """out[oi + col:][:n] = v (+ dy[dyi + col:][:n]), n = min(V, R - col)."""
    n = min(lanes(out), R - col)
    if dy is not None:
        v = vadd(v, vload_n(dy, dyi + col, n))
    vstore_n(out, oi + col, v, n)


@njit(**JIT)
def bwd_tile(G, dg, di, w, wi, mr, nb, out, oi, ldo, R, off, dy, dyi):
    """out[rows, off + q*V:] = dg[rows] . w_hh (+ dy) for up to 4 rows x 4 blocks of V columns of
    h (width R): dg rows at dg.flat[di + r*G], w_hh blocks [k][V] at w.flat[wi + q*G*V:], out rows
    at out.flat[oi + r*ldo], dy (None or same layout as out) at dy.flat[dyi + r*ldo]. Rows past
    mr and blocks past nb re-read the last one and are dropped."""
    V = lanes(out)
    bs = G * V
    d0 = di + min(0, mr - 1) * G
    d1 = di + min(1, mr - 1) * G
    d2 = di + min(2, mr - 1) * G
    d3 = di + min(3, mr - 1) * G
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    z = vzero(out)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for k in range(G):
        o = k * V
        w0 = vload(w, q0 + o)
        w1 = vload(w, q1 + o)
        w2 = vload(w, q2 + o)
        w3 = vload(w, q3 + o)
        s = vset1(ld(dg, d0 + k))
        a00 = vfma(s, w0, a00)
        a01 = vfma(s, w1, a01)
        a02 = vfma(s, w2, a02)
        a03 = vfma(s, w3, a03)
        s = vset1(ld(dg, d1 + k))
        a10 = vfma(s, w0, a10)
        a11 = vfma(s, w1, a11)
        a12 = vfma(s, w2, a12)
        a13 = vfma(s, w3, a13)
        s = vset1(ld(dg, d2 + k))
        a20 = vfma(s, w0, a20)
        a21 = vfma(s, w1, a21)
        a22 = vfma(s, w2, a22)
        a23 = vfma(s, w3, a23)
        s = vset1(ld(dg, d3 + k))
        a30 = vfma(s, w0, a30)
        a31 = vfma(s, w1, a31)
        a32 = vfma(s, w2, a32)
        a33 = vfma(s, w3, a33)
    store_dh(out, oi + 0 * ldo, off + 0 * V, R, a00, dy, dyi + 0 * ldo)
    if nb > 1:
        store_dh(out, oi + 0 * ldo, off + 1 * V, R, a01, dy, dyi + 0 * ldo)
    if nb > 2:
        store_dh(out, oi + 0 * ldo, off + 2 * V, R, a02, dy, dyi + 0 * ldo)
    if nb > 3:
        store_dh(out, oi + 0 * ldo, off + 3 * V, R, a03, dy, dyi + 0 * ldo)
    if mr > 1:
        store_dh(out, oi + 1 * ldo, off + 0 * V, R, a10, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 1:
        store_dh(out, oi + 1 * ldo, off + 1 * V, R, a11, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 2:
        store_dh(out, oi + 1 * ldo, off + 2 * V, R, a12, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 3:
        store_dh(out, oi + 1 * ldo, off + 3 * V, R, a13, dy, dyi + 1 * ldo)
    if mr > 2:
        store_dh(out, oi + 2 * ldo, off + 0 * V, R, a20, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 1:
        store_dh(out, oi + 2 * ldo, off + 1 * V, R, a21, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 2:
        store_dh(out, oi + 2 * ldo, off + 2 * V, R, a22, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 3:
        store_dh(out, oi + 2 * ldo, off + 3 * V, R, a23, dy, dyi + 2 * ldo)
    if mr > 3:
        store_dh(out, oi + 3 * ldo, off + 0 * V, R, a30, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 1:
        store_dh(out, oi + 3 * ldo, off + 1 * V, R, a31, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 2:
        store_dh(out, oi + 3 * ldo, off + 2 * V, R, a32, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 3:
        store_dh(out, oi + 3 * ldo, off + 3 * V, R, a33, dy, dyi + 3 * ldo)


@njit(**JIT)
def bwd_tile1(G, dg, di, w, wi, nb, out, oi, R, off, dy, dyi):
    """One row of ``bwd_tile`` over up to 8 blocks (8 accumulators; the 4 x 4 tile would
    compute 3 dropped rows for B = 1). Blocks past nb re-read the last one and are dropped."""
    V = lanes(out)
    bs = G * V
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    q4 = wi + min(4, nb - 1) * bs
    q5 = wi + min(5, nb - 1) * bs
    q6 = wi + min(6, nb - 1) * bs
    q7 = wi + min(7, nb - 1) * bs
    z = vzero(out)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    for k in range(G):
        s = vset1(ld(dg, di + k))
        o = k * V
        a0 = vfma(s, vload(w, q0 + o), a0)
        a1 = vfma(s, vload(w, q1 + o), a1)
        a2 = vfma(s, vload(w, q2 + o), a2)
        a3 = vfma(s, vload(w, q3 + o), a3)
        a4 = vfma(s, vload(w, q4 + o), a4)
        a5 = vfma(s, vload(w, q5 + o), a5)
        a6 = vfma(s, vload(w, q6 + o), a6)
        a7 = vfma(s, vload(w, q7 + o), a7)
    store_dh(out, oi, off + 0 * V, R, a0, dy, dyi)
    if nb > 1:
        store_dh(out, oi, off + 1 * V, R, a1, dy, dyi)
    if nb > 2:
        store_dh(out, oi, off + 2 * V, R, a2, dy, dyi)
    if nb > 3:
        store_dh(out, oi, off + 3 * V, R, a3, dy, dyi)
    if nb > 4:
        store_dh(out, oi, off + 4 * V, R, a4, dy, dyi)
    if nb > 5:
        store_dh(out, oi, off + 5 * V, R, a5, dy, dyi)
    if nb > 6:
        store_dh(out, oi, off + 6 * V, R, a6, dy, dyi)
    if nb > 7:
        store_dh(out, oi, off + 7 * V, R, a7, dy, dyi)


@njit(**JIT)
def bwd_rows(G, dg, n, w, add, out, R, q0, q1):
    """out[rows 0..n, column blocks q0..q1 (V wide) of R] = dg[rows] . w (+ add) as register
    tiles: 4 rows x 4 blocks (``bwd_tile``), one row x 8 blocks (``bwd_tile1``). Pointers: dg
    rows 4H apart, w packed [ceil(R/V)][4H][V] (whh_b), out and add (or None) rows R apart.
    C also uses it for dx in the steps (``wih_b``); here dx is one GEMM after the loop."""
    V = lanes(out)
    jstep = 8 if n == 1 else 4
    for j in range(q0, q1, jstep):
        nb = min(jstep, q1 - j)
        if n == 1:
            bwd_tile1(G, dg, nl(0), w, j * G * V, nb, out, nl(0), R, j * V, add, nl(0))
        for r0 in range(0, n if n > 1 else 0, 4):
            bwd_tile(G, dg, r0 * G, w, j * G * V, min(4, n - r0), nb, out, r0 * R, R, R, j * V, add, r0 * R)


@njit(**JIT)
def bwd_dh(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, q0, q1, rdrop, has_rdrop):
    """dh of rows 0..n, column blocks q0..q1 (V wide) of h (width R), into out (., R): rows
    below nn (active at t+1) get dg_next . w_hh (times rdrop, the recurrent dropout mask,
    if ``has_rdrop``, a run-time flag), rows nn..n (last step t) dh_n; plus dy_t unless None.
    Pointers (row strides 4H for dg_next, R for the others)."""
    u0, u1 = q0 * lanes(out), min(R, q1 * lanes(out))
    if not has_rdrop:
        bwd_rows(G, dg_next, nn, whh_b, dy_t, out, R, q0, q1)
    else:   # (dg_next . w_hh) * rdrop + dy: C's operations (bwd_rows' mul, then add)
        bwd_rows(G, dg_next, nn, whh_b, None, out, R, q0, q1)
        for r in range(nn):
            for u in range(u0, u1):
                v = ld(out, r * R + u) * ld(rdrop, r * R + u)
                if dy_t is not None:
                    v = v + ld(dy_t, r * R + u)
                st(out, r * R + u, v)
    for r in range(nn, n):
        for u in range(u0, u1):
            if dy_t is None:
                st(out, r * R + u, ld(dh_n, r * R + u))
            else:
                st(out, r * R + u, ld(dh_n, r * R + u) + ld(dy_t, r * R + u))


@njit(**PJIT)
def bwd_dh_par(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, num_threads, rdrop):
    nblk = (R + lanes(out) - 1) // lanes(out)
    has_rdrop = rdrop.shape[0] > 0
    for tid in prange(num_threads):
        bwd_dh(G, ptr(dg_next), nn, n, ptr(whh_b), ptr(dh_n), ptr(dy_t), ptr(out), R,
               split(nblk, nl(tid), num_threads), split(nblk, nl(tid) + 1, num_threads), ptr(rdrop),
               has_rdrop)


@njit(**JIT)
def bwd_dh_all(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, num_threads, rdrop):
    """``bwd_dh`` on arrays over all column blocks, split over num_threads (``bwd_dh_par``);
    ``rdrop`` the mask's rows, or 0 rows (off)."""
    if num_threads > 1:
        bwd_dh_par(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, num_threads, rdrop)
    else:
        bwd_dh(G, ptr(dg_next), nn, n, ptr(whh_b), ptr(dh_n), ptr(dy_t), ptr(out), R, nl(0),
               (R + lanes(out) - 1) // lanes(out), ptr(rdrop), rdrop.shape[0] > 0)


@njit(**JIT)
def bwd_step(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t, j0, j1, var,
             rdrop, zm, dhz):
    """One backward step without a projection, hidden blocks j0..j1, fused per 4 blocks: the dh
    tile (dg_next . w_hh + dy) into dhs, then the gate gradients of the same units.
    C hands bwd_cell the tile in a small stack scratch; here dh goes through the rows of dhs.
    ``rdrop`` (n, H), ``zm`` and ``dhz`` (n, H) the masks' rows, or 0 rows (off; run-time tests)."""
    V = lanes(dhs)
    has_rdrop, has_zm = rdrop.shape[0] > 0, zm.shape[0] > 0
    dg_next, whh_b, dh_n, dy_t, dhs = ptr(dg_next), ptr(whh_b), ptr(dh_n), ptr(dy_t), ptr(dhs)
    gates_t, c_t, cprev, dc, dg_t = ptr(gates_t), ptr(c_t), ptr(cprev), ptr(dc), ptr(dg_t)
    rdrop, zp, dz = ptr(rdrop), ptr(zm), ptr(dhz)
    for j in range(j0, j1, 4):
        j2 = min(j + 4, j1)
        bwd_dh(G, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, H, j, j2, rdrop, has_rdrop)
        if has_zm:   # zoneout: as C's cell, dh + carry -> zm*dh (cell), (1-zm)*dh (carry)
            for r in range(n):
                for u in range(j * V, min(H, j2 * V)):
                    z = ld(zp, r * H + u)
                    d = ld(dhs, r * H + u) + ld(dz, r * H + u)
                    st(dz, r * H + u, (1 - z) * d)
                    st(dhs, r * H + u, z * d)
        bwd_cell(n, H, dhs, gates_t, c_t, cprev, dc, dg_t, None, j * V, min(H, j2 * V) - j * V, var)


@njit(**PJIT)
def bwd_step_par(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t, num_threads,
                 var, rdrop, zm, dhz):
    nblk = (H + lanes(dhs) - 1) // lanes(dhs)
    for tid in prange(num_threads):
        bwd_step(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t,
                 split(nblk, nl(tid), num_threads), split(nblk, nl(tid) + 1, num_threads), var, rdrop, zm, dhz)


@njit(**JIT)
def bwd_step_proj_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu, var):
    """With a projection: the cell part of a backward step, units u0..u0+nu, dh of m from dm."""
    bwd_cell(n, H, ptr(dm), ptr(gates_t), ptr(c_t), ptr(cprev), ptr(dc), ptr(dg_t), ptr(m_out), u0, nu, var)


@njit(**PJIT)
def bwd_step_proj_cell_par(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, num_threads, var):
    V = lanes(dm)
    nblk = (H + V - 1) // V
    for tid in prange(num_threads):
        u0 = split(nblk, nl(tid), num_threads) * V
        u1 = min(H, split(nblk, nl(tid) + 1, num_threads) * V)
        if u1 > u0:
            bwd_step_proj_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, u1 - u0, var)


@njit(**JIT)
def bwd_job(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
            dc0, r0, r1, num_threads, var, rdrop, zm, dhz):
    """The backward time loop for sequences r0..r1, steps last to first; ``dc0`` rows hold the
    running dc.
    C's bwd_job is one thread's whole call; here it is the time loop, as ``fwd_job``."""
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    N = dgates.shape[0]
    off = N
    for t in range(T - 1, -1, -1):
        nt = batch_sizes[t]
        off -= nt
        n = min(nt, r1) - r0
        if n <= 0:
            continue
        nn = max(0, min(batch_sizes[t + 1], r1) - r0) if t + 1 < T else 0
        a = off + r0
        p = off - batch_sizes[t - 1] + r0 if t > 0 else 0
        cprev = c0[r0:r0 + n] if t == 0 else c[p:p + n]
        dg_next = dgates[off + nt + r0:off + nt + r0 + nn]
        g_t = gates[a:a + n]
        c_t = c[a:a + n]
        dg_t = dgates[a:a + n]
        dy_t = dy[a:a + n]
        dhn = dh_n[r0:r0 + n]
        dc = dc0[r0:r0 + n]
        rd = rdrop[r0:r0 + n]   # (0 rows stay 0 rows: off)
        zt = zm[a:a + n]
        dz = dhz[r0:r0 + n]
        par = num_threads > 1 and n * G * R >= PAR_MIN
        if whr.shape[0] == 0:
            if par:
                bwd_step_par(G, H, dg_next, nn, n, whh_b, dhn, dy_t, dhs[r0:r0 + n], g_t, c_t, cprev, dc,
                             dg_t, num_threads, var, rd, zt, dz)
            else:
                bwd_step(G, H, dg_next, nn, n, whh_b, dhn, dy_t, dhs[r0:r0 + n], g_t, c_t, cprev, dc, dg_t,
                         nl(0), (H + lanes(dhs) - 1) // lanes(dhs), var, rd, zt, dz)
        else:
            dha = dh_all[a:a + n]
            bwd_dh_all(G, dg_next, nn, n, whh_b, dhn, dy_t, dha, R, num_threads if par else 1, rd)
            gemm(n, H, R, dha, False, whr, dm[r0:r0 + n], None, num_threads)
            if par:
                bwd_step_proj_cell_par(n, H, dm[r0:r0 + n], g_t, c_t, cprev, dc, dg_t, m_all[a:a + n],
                                       num_threads, var)
            else:
                bwd_step_proj_cell(n, H, dm[r0:r0 + n], g_t, c_t, cprev, dc, dg_t, m_all[a:a + n], nl(0), H,
                                   var)


@njit(**PJIT)
def bwd_job_par(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                dc0, dh0, n0, num_threads, var, rdrop, zm, dhz):
    for tid in prange(num_threads):
        r0 = row_split(n0, nl(tid), num_threads)
        r1 = row_split(n0, nl(tid) + 1, num_threads)
        if r1 > r0:
            bwd_job(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                    dc0, r0, r1, nl(1), var, rdrop, zm, dhz)
            # dh0 of these sequences (all active at t = 0): dgates[0] . w_hh
            R = h0.shape[1]
            nb = (R + lanes(dh0) - 1) // lanes(dh0)
            has_rdrop = rdrop.shape[0] > 0
            if dhz.shape[0] > 0:   # zoneout: plus the carried gradient
                bwd_dh(4 * c0.shape[1], ptr(dgates[r0:r1]), r1 - r0, r1 - r0, ptr(whh_b), ptr(dh_n[r0:r1]),
                       ptr(dhz[r0:r1]), ptr(dh0[r0:r1]), R, nl(0), nb, ptr(rdrop[r0:r1]), has_rdrop)
            else:
                bwd_dh(4 * c0.shape[1], ptr(dgates[r0:r1]), r1 - r0, r1 - r0, ptr(whh_b), ptr(dh_n[r0:r1]),
                       None, ptr(dh0[r0:r1]), R, nl(0), nb, ptr(rdrop[r0:r1]), has_rdrop)


@njit(**JIT)
def bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, tid, num_threads):
    """Part tid of num_threads of the whole-sequence products: dx = dgates.w_ih, dw_ih = dgates^T.x,
    dw_hh = dgates^T.h_prev, with a projection dw_hr = dh_all^T.m_all."""
    N, G = dgates.shape
    I = dx.shape[1]
    R = dw_hh.shape[1]
    gemm_job(N, I, G, dgates, False, wih, dx, None, tid, num_threads)
    gemm_job(G, I, N, dgates, True, xpan, dw_ih, None, tid, num_threads)
    gemm_job(G, R, N, dgates, True, hpan, dw_hh, None, tid, num_threads)
    if dw_hr.shape[0] > 0:
        gemm_job(R, dw_hr.shape[1], N, dh_all, True, mpan, dw_hr, None, tid, num_threads)


@njit(**PJIT)
def bwd_gemms_par(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, num_threads):
    for tid in prange(num_threads):
        bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, nl(tid), num_threads)


@njit(**JIT)
def pack_h_prev(h0, y, batch_sizes, rdrop, hm, hpan):
    """Pack h_{t-1} of every row (h0 at t = 0, else y of step t-1) into hpan for the
    whole-sequence dw_hh product; with recurrent dropout (rdrop not empty) masked as the
    forward's product saw it, through the scratch hm (N, R)."""
    T = batch_sizes.shape[0]
    N = y.shape[0]
    R = y.shape[1]
    n0 = batch_sizes[0] if T > 0 else 0
    if rdrop.shape[0] == 0:
        pack_b(h0, nl(0), n0, hpan, nl(0))
        off = n0
        prev = 0
        for t in range(1, T):
            n = batch_sizes[t]
            pack_b(y, prev, n, hpan, off)
            prev = off
            off += n
        return
    off = 0
    prev = 0
    for t in range(T):
        n = batch_sizes[t]
        for r in range(n):
            for k in range(R):
                hm[off + r, k] = (h0[r, k] if t == 0 else y[prev + r, k]) * rdrop[r, k]
        prev = off
        off += n
    pack_b(hm, nl(0), N, hpan, nl(0))


@njit(**JIT)
def lstm_backward(x, wih, whh_b, whr, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes,
                  dgates, dhs, xpan, hpan, dm, dh_all, m_all, mpan,
                  dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, var, dpeep, rdrop, zm, dhz, num_threads):
    """Backpropagation through time into caller-provided outputs, packed layout.

    Weights as ``pack`` makes them (``wih``, ``whh_b`` and ``whr``, (0, 0, 0) without a
    projection). Workspace:
    ``dgates`` (N, 4H), ``dhs`` (B, H) the dh of a step, ``xpan``/``hpan`` panels
    [ceil(I/NR)][N][NR] / [ceil(R/NR)][N][NR] for x and the h_{t-1} rows; with a
    projection ``dm`` (B, H), ``dh_all`` (N, R), ``m_all`` (N, H), ``mpan``
    [ceil(H/NR)][N][NR] and output ``dw_hr`` (R, H), all of 0 rows without. ``db`` (4H,), or empty
    (0,) without a bias: not computed. ``dc0`` doubles as the running dc (rows of inactive
    sequences pass through). ``num_threads`` threads, split as in ``lstm_forward``; the
    whole-sequence GEMMs split output tiles. ``var``: the variants, as ``cell.bwd_cell`` takes
    them (all off: plain); ``dpeep`` (3, H) receives the peephole gradients, or 0 rows (none).
    ``rdrop`` (B, R): the forward's recurrent dropout mask, or 0 rows (off). ``zm`` (N, H): the
    forward's zoneout mask with ``dhz`` (B, H) zeros (the carried gradient), or both 0 rows
    (off). Never None: one compilation serves every combination (see ``fwd_job``).
    """
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    check_steps(batch_sizes, N, B)
    dc0[:] = dc_n
    n0 = batch_sizes[0] if T > 0 else 0
    if num_threads > 1 and n0 >= ROWS_PER_THREAD * num_threads:   # one parallel region for the time loop and dh0
        bwd_job_par(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                    dc0, dh0, n0, num_threads, var, rdrop, zm, dhz)
        dh0[n0:] = dh_n[n0:]
        if dhz.shape[0] > 0:   # as C: dh_n + the (zero) carry of sequences of length 0
            for r in range(n0, B):
                for u in range(R):
                    dh0[r, u] = dh0[r, u] + dhz[r, u]
    else:
        bwd_job(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                dc0, nl(0), n0, num_threads, var, rdrop, zm, dhz)
        nt = num_threads if B * G * R >= PAR_MIN else 1
        if dhz.shape[0] > 0:
            bwd_dh_all(G, dgates[:n0], n0, B, whh_b, dh_n, dhz, dh0, R, nt, rdrop)
        else:
            bwd_dh_all(G, dgates[:n0], n0, B, whh_b, dh_n, None, dh0, R, nt, rdrop)
    # whole-sequence products over all N rows, after the loop
    pack_b(x, nl(0), N, xpan, nl(0))
    pack_h_prev(h0, y, batch_sizes, rdrop, np.empty((N if rdrop.shape[0] > 0 else 0, R), y.dtype),
                hpan)
    if whr.shape[0] > 0:
        pack_b(m_all, nl(0), N, mpan, nl(0))
    if num_threads > 1 and N * G * (I + R) >= PAR_MIN:   # dx, dw_ih, dw_hh (dw_hr) in one parallel region
        bwd_gemms_par(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, num_threads)
    else:
        bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, nl(0), nl(1))
    if db.shape[0]:
        db[:] = 0
        for r in range(N):
            dr = dgates[r]
            for j in range(G):
                db[j] += dr[j]
    if dpeep.shape[0] > 0:
        peephole_grads(dgates, c, c0, batch_sizes, dpeep)


@njit(**JIT)
def peephole_grads(dgates, c, c0, batch_sizes, dpeep):
    """dpeep (3, H) = the peephole weights' gradients: sum over rows of dgates_i * c_{t-1},
    dgates_f * c_{t-1}, dgates_o * c_t, rows in order (the same bits for any thread count).
    C adds them in its cells, whose threads own units; Numba's may own sequences."""
    H = c.shape[1]
    dpeep[:] = 0
    off = 0
    prev = 0
    for t in range(batch_sizes.shape[0]):
        for r in range(batch_sizes[t]):
            dg = dgates[off + r]
            cp = c0[r] if t == 0 else c[prev + r]
            ct = c[off + r]
            for j in range(H):
                dpeep[0, j] += dg[j] * cp[j]
                dpeep[1, j] += dg[H + j] * cp[j]
                dpeep[2, j] += dg[3 * H + j] * ct[j]
        prev = off
        off += batch_sizes[t]
