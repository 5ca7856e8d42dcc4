"""The layer-normalized LSTM of the Numba backend (haste's LayerNormLSTM; equations, the saved
statistics and the kernel design note in backends/reference.py), forward and backward.

Separate entry points (``ln_forward``, ``ln_backward``) rather than a branch of
``lstm.lstm_forward`` / ``lstm.lstm_backward``: Numba compiles a function's whole call tree, so
a branch would add the layer norm's code to the plain LSTM's first-use compile; here it compiles
only when a layer-normalized LSTM first runs, once per dtype, and every other option (the
variants ``var``, lengths, the recurrent dropout and zoneout masks, threads) is a run-time
argument of one type, as in lstm.py. The products are the plain kernels' (``gemm``, the forward
step tiles ``lstm.fwd_tile``/``fwd_tile1`` on ``whh_f``, ``lstm.bwd_dh`` on ``whh_b``); the
layer norms' sums (the forward's row statistics, the backward's), the parameters' column sums
and the cells are vectors (``simd``; a vector's lanes added by ``vhsum``).

* Forward: ``x.w_ih^T`` for all rows (one GEMM), then each row's statistics over its 4H values
  and ``LN(.) * g_ih + b`` in place. Per step the recurrent product goes to a buffer of its own
  (``zh``, (B, 4H)): a row's statistics need all its 4H values before any gate is activated;
  then per row (``ln_cell``, vectors of V units as cell.py): the recurrent LN added, the gates,
  c_t, c_t's statistics over H, h~_t = o * tanh(LN(c_t)). Statistics are computed in vectors of
  the dtype and stored in ``stats`` (columns ``reference.LN_STATS``) in the dtype; the
  normalization uses the stored values.
* Saved for backward: the activated gates, c (as the plain LSTM) and ``stats`` (N, ``backends.ln_stats_width(H)``): the
  rows' means and rstds, then the normalized products zhat_x and zhat_h (4H each), stored by
  the forward as it computes them (``ln_input``, ``ln_cell``), so backward recomputes neither
  product (it did: two products of the forward's size, ~70% of the layer norm's extra training
  time at (32, 64, 256, 256)); the price is memory, 8H more values per row than the plain
  LSTM's 5H (gates and c) kept for backward. With ``clip`` backward recomputes the pre-activations from them with the
  forward's operations to tell the clamped gates (as the reference). Inference passes
  ``stats`` (N, 6): the normalized products are not kept.
* Backward step (``ln_cell_grad``): dh = dz_h[t+1].w_hh (+ dy; ``lstm.bwd_dh``), zoneout's
  split, then per row in three passes: the LN of c_t backward; the gate gradients with the
  sums of both product LNs' backward; the gradients of both products through their LNs (dzh,
  dzx) with the row's terms of the gains', the c bias's and the bias's gradients (summed in the
  time loop's row order, last step first: while the row is in cache, instead of column sums
  over all rows after the loop). After the loop dx, dw_ih, dw_hh (GEMMs).
* Threads: the forward splits each step's rows (>= ROWS_PER_THREAD per thread; recurrent
  product and cells in one parallel region) or else the recurrent product's hidden blocks; the
  backward's time loop runs on the calling thread with dh's blocks split; the GEMMs split
  output tiles. Every value is computed by the same operations in the same order whatever the
  partition (the parameters' sums in the time loop, on one thread): the bits do not depend on the
  thread count.
* No projection and no cifg (as the reference; the caller raises).
"""

import math

import numpy as np
from numba import njit, prange

from .. import LN_ZHAT   # stats' first column of zhat_x (backends.ln_zhat_columns)
from .cell import vclamp
from .gemm import PAR_MIN, gemm, pack_b, split
from .lstm import (FR, ROWS_PER_THREAD, bwd_dh_all, check_steps, fwd_tile, fwd_tile1, pack_h_prev,
                   peephole_grads, row_split)
from .simd import (JIT, PJIT, ld, lanes, nl, padd, ptr, vabs, vhsum, vload, vload_n, vsel_gt, vsigmoid,
                   vsplat, vstore_n, vtanh, vzero)
from .simd import st as put

LN_EPS = 1e-5   # reference.LN_EPS (haste: rsqrt(var + 1e-5))


@njit(**JIT)
def zhat_h_col(G):
    """stats' first column of zhat_h for G = 4H gate columns (backends.ln_zhat_columns)."""
    return LN_ZHAT + (G + 15) // 16 * 16


@njit(**JIT)
def row_stats(z, n, st, k):
    """st[k], st[k + 1] = mean and rstd = 1 / sqrt(var + LN_EPS) of z[:n] (biased variance,
    two passes). The sums in vectors of V lanes, two partial sums each (blocks of V units,
    alternating), their lanes added pairwise (``vhsum``), the last n mod 2V values on a scalar
    added after: a fixed order whatever the threads. z, st: arrays or pointers (``ld``, ``put``)."""
    V = lanes(z)
    s0 = vzero(z)
    s1 = vzero(z)
    n2 = n - n % (2 * V)
    for j in range(0, n2, 2 * V):
        s0 = s0 + vload(z, j)
        s1 = s1 + vload(z, j + V)
    t = 0.0
    for j in range(n2, n):
        t += ld(z, j)
    mean = (vhsum(s0 + s1) + t) / n
    v0 = vzero(z)
    v1 = vzero(z)
    for j in range(0, n2, 2 * V):
        d0 = vload(z, j) - mean
        d1 = vload(z, j + V) - mean
        v0 = v0 + d0 * d0
        v1 = v1 + d1 * d1
    t = 0.0
    for j in range(n2, n):
        d = ld(z, j) - mean
        t += d * d
    v = vhsum(v0 + v1) + t
    put(st, k, mean)
    put(st, k + 1, 1.0 / math.sqrt(v / n + LN_EPS))


@njit(**JIT)
def ln_input(gates, stats, ln, b, r0, r1):
    """Rows r0..r1 of gates (x.w_ih^T) -> LN(.) * g_ih + b, their statistics into stats[:, 0:2]
    and (stats of ln_stats_width(H) columns: saved for backward) the normalized rows into
    stats[:, LN_ZHAT:LN_ZHAT+4H]."""
    G = gates.shape[1]
    S = stats.shape[1]
    V = lanes(gates)
    gp, sp, lp, bp = ptr(gates), ptr(stats), ptr(ln), ptr(b)
    for r in range(r0, r1):
        z = padd(gp, r * G)
        st = padd(sp, r * S)
        row_stats(z, G, st, 0)
        m = ld(st, 0)
        rs = ld(st, 1)
        for j in range(0, G, V):   # vectors of V units, the masked tail as cell.py
            k = min(V, G - j)
            zh = (vload_n(z, j, k) - m) * rs
            if S > 6:
                vstore_n(st, LN_ZHAT + j, zh, k)
            vstore_n(z, j, zh * vload_n(lp, j, k) + vload_n(bp, j, k), k)


@njit(**PJIT)
def ln_input_par(gates, stats, ln, b, num_threads):
    N = gates.shape[0]
    for tid in prange(num_threads):
        ln_input(gates, stats, ln, b, split(N, nl(tid), num_threads), split(N, nl(tid) + 1, num_threads))


@njit(**JIT)
def ln_rec(n, H, R, w, hp, zh, j0, j1):
    """zh[rows 0..n, the 4 gates' units of hidden blocks j0..j1] = hp . w_hh^T (zh zero there
    before): the forward step tiles (``lstm.fwd_tile``; one row ``fwd_tile1``) without the cell.
    Each element is the k-ordered FMA chain of the plain forward, whatever the rows or blocks."""
    V = lanes(zh)
    G = 4 * H
    bs = R * 4 * V
    hp, w, zh = ptr(hp), ptr(w), ptr(zh)
    if n == 1:
        for j in range(j0, j1, 4):
            fwd_tile1(R, hp, 0, w, j * bs, min(4, j1 - j), zh, 0, H, j * V)
        return
    for j in range(j0, j1):
        off = j * V
        nv = min(V, H - off)
        for r0 in range(0, n, FR):
            fwd_tile(R, hp, r0 * R, w, j * bs, zh, r0 * G + off, G, H, min(FR, n - r0), nv)


@njit(**PJIT)
def ln_rec_par(n, H, R, w, hp, zh, num_threads):
    nblk = (H + lanes(zh) - 1) // lanes(zh)
    for tid in prange(num_threads):
        ln_rec(n, H, R, w, hp, zh, split(nblk, nl(tid), num_threads), split(nblk, nl(tid) + 1, num_threads))


@njit(**JIT)
def ln_cell(gx, zh, hz, cp, c_t, h_t, st, ln, H, peep, has_peep, clip, cell_clip):
    """One row of a forward step: gx (4H) holds LN(x.w_ih^T) * g_ih + b and receives the
    activated gates; zh (4H) the recurrent product (normalized here, statistics into st[2:4],
    the normalized values into hz: the row's zhat_h in stats, or zh itself when not kept);
    cp c_{t-1} (may be c_t: the running state), c_t and h_t = o * tanh(LN(c_t)) written,
    c_t's statistics into st[4:6]. ``var`` the variants (cell.py; no cifg). One vector of V
    units at a time; the pre-activations without fused multiply-adds (``ln_cell_grad``
    recomputes them with the same operations to tell the clamped gates). Operands are
    pointers (a row's first element; ``padd``): no array views per row."""
    G = 4 * H
    V = lanes(gx)
    row_stats(zh, G, st, 2)
    m = ld(st, 2)
    rs = ld(st, 3)
    for u in range(0, H, V):
        k = min(V, H - u)
        cpv = vload_n(cp, u, k)
        ni = (vload_n(zh, u, k) - m) * rs
        nf = (vload_n(zh, H + u, k) - m) * rs
        ng = (vload_n(zh, 2 * H + u, k) - m) * rs
        no = (vload_n(zh, 3 * H + u, k) - m) * rs
        vstore_n(hz, u, ni, k)
        vstore_n(hz, H + u, nf, k)
        vstore_n(hz, 2 * H + u, ng, k)
        vstore_n(hz, 3 * H + u, no, k)
        zi = vload_n(gx, u, k) + ni * vload_n(ln, G + u, k)
        zf = vload_n(gx, H + u, k) + nf * vload_n(ln, G + H + u, k)
        zg = vload_n(gx, 2 * H + u, k) + ng * vload_n(ln, G + 2 * H + u, k)
        zo = vload_n(gx, 3 * H + u, k) + no * vload_n(ln, G + 3 * H + u, k)
        if has_peep:
            zi = zi + vload_n(peep, u, k) * cpv
            zf = zf + vload_n(peep, H + u, k) * cpv
        if clip > 0:
            zi = vclamp(zi, clip)
            zf = vclamp(zf, clip)
            zg = vclamp(zg, clip)
        i = vsigmoid(zi)
        f = vsigmoid(zf)
        g = vtanh(zg)
        cv = f * cpv + i * g
        if cell_clip > 0:
            cv = vclamp(cv, cell_clip)
        if has_peep:
            zo = zo + vload_n(peep, 2 * H + u, k) * cv
        if clip > 0:
            zo = vclamp(zo, clip)
        vstore_n(gx, u, i, k)
        vstore_n(gx, H + u, f, k)
        vstore_n(gx, 2 * H + u, g, k)
        vstore_n(gx, 3 * H + u, vsigmoid(zo), k)
        vstore_n(c_t, u, cv, k)
    row_stats(c_t, H, st, 4)
    mc = ld(st, 4)
    rc = ld(st, 5)
    for u in range(0, H, V):
        k = min(V, H - u)
        n = (vload_n(c_t, u, k) - mc) * rc * vload_n(ln, G + G + u, k) + vload_n(ln, G + G + H + u, k)
        vstore_n(h_t, u, vload_n(gx, 3 * H + u, k) * vtanh(n), k)


@njit(**JIT)
def ln_step(r0, r1, H, R, whh_f, hp, cp, gates_t, zh, c_t, h_t, st, ln, var, rec):
    """Rows r0..r1 of a forward step: their recurrent product (unless ``rec`` is False: done)
    and cells."""
    if r1 <= r0:
        return
    if rec:
        zh[r0:r1] = 0
        ln_rec(r1 - r0, H, R, whh_f, hp[r0:r1], zh[r0:r1], nl(0), (H + lanes(zh) - 1) // lanes(zh))
    peep, has_peep, clip, cell_clip, cifg = var
    G = 4 * H
    S = st.shape[1]   # 6, or ln_stats_width(H): zhat_h kept from column zhat_h_col(G)
    gp, zp, cpp, cp_, hp_, sp, lp, pp = ptr(gates_t), ptr(zh), ptr(cp), ptr(c_t), ptr(h_t), ptr(st), ptr(ln), ptr(peep)
    for r in range(r0, r1):
        hz = padd(sp, r * S + zhat_h_col(G)) if S > 6 else padd(zp, r * G)
        ln_cell(padd(gp, r * G), padd(zp, r * G), hz, padd(cpp, r * H), padd(cp_, r * H), padd(hp_, r * H),
                padd(sp, r * S), lp, H, pp, has_peep, clip, cell_clip)


@njit(**PJIT)
def ln_step_par(n, H, R, whh_f, hp, cp, gates_t, zh, c_t, h_t, st, ln, var, num_threads):
    for tid in prange(num_threads):
        ln_step(row_split(n, nl(tid), num_threads), row_split(n, nl(tid) + 1, num_threads), H, R, whh_f, hp, cp,
                gates_t, zh, c_t, h_t, st, ln, var, True)


@njit(**JIT)
def ln_forward(x, wih_t, whh_f, b, ln, h0, c0, batch_sizes, y, h_n, c_n, gates, c, zh, stats, var, rdrop,
               hm, zm, num_threads):
    """Forward of the layer-normalized LSTM into caller-provided arrays, packed layout (as
    ``lstm.lstm_forward``): x (N, I), y (N, H), gates (N, 4H) and c (N, H) every step (also for
    inference), stats (N, 6) the rows' statistics or (N, ln_stats_width(H)) also the normalized products
    (saved for backward), zh (B, 4H) and hm (B, H) workspace; h_n, c_n
    may be h0, c0. ``ln`` (10H,) = [g_ih, g_hh, g_c, b_c]; b (4H,) the bias (zeros: none).
    ``rdrop`` (B, H), ``zm`` (N, H): the masks, or 0 rows (off)."""
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    check_steps(batch_sizes, N, B)
    for r in range(B):
        for u in range(R):
            h_n[r, u] = h0[r, u]
        for u in range(H):
            c_n[r, u] = c0[r, u]
    gemm(N, G, I, x, False, wih_t, gates, None, num_threads)
    if num_threads > 1 and N * G >= PAR_MIN // 64:
        ln_input_par(gates, stats, ln, b, num_threads)
    else:
        ln_input(gates, stats, ln, b, nl(0), N)
    off = 0
    prev = 0
    for t in range(batch_sizes.shape[0]):
        n = batch_sizes[t]
        if n <= 0:
            break
        hp = h0[:n] if t == 0 else y[prev:prev + n]
        hprev = hp
        if rdrop.shape[0] > 0:
            for r in range(n):
                for k in range(R):
                    hm[r, k] = hp[r, k] * rdrop[r, k]
            hp = hm[:n]
        cp = c0[:n] if t == 0 else c[prev:prev + n]
        a = off
        if num_threads > 1 and n >= ROWS_PER_THREAD * num_threads:
            ln_step_par(n, H, R, whh_f, hp, cp, gates[a:a + n], zh, c[a:a + n], y[a:a + n], stats[a:a + n], ln,
                        var, num_threads)
        else:
            if num_threads > 1 and n * G * R >= PAR_MIN:
                zh[:n] = 0
                ln_rec_par(n, H, R, whh_f, hp, zh[:n], num_threads)
                rec = False
            else:
                rec = True
            ln_step(nl(0), n, H, R, whh_f, hp, cp, gates[a:a + n], zh, c[a:a + n], y[a:a + n], stats[a:a + n], ln,
                    var, rec)
        if zm.shape[0] > 0:
            for r in range(n):
                for k in range(H):
                    v = y[a + r, k]
                    y[a + r, k] = (v - hprev[r, k]) * zm[a + r, k] + hprev[r, k]
        for r in range(n):
            for k in range(H):
                h_n[r, k] = y[a + r, k]
                c_n[r, k] = c[a + r, k]
        prev = off
        off += n


@njit(inline="always", **JIT)
def keep(d, z, clip):
    """d, or 0 where the pre-activation z was clamped (|z| > clip; NaN passes)."""
    return vsel_gt(vabs(z), vsplat(z, clip), vsplat(d, 0.0), d)


@njit(**JIT)
def ln_cell_grad(dm, g_t, c_t, cp, dc, dg, dzh, dzx, xh, hh, st, ln, b, acc, tb, H, peep, has_peep, clip, cell_clip):
    """One row of a backward step: dm (H) the gradient reaching h~_t (dy and zoneout included),
    g_t the saved gates, c_t, cp c_{t-1}; dc (H) the running gradient of c (becomes that of
    c_{t-1}); writes the gate gradients dg (4H) and the gradients of both products through their
    LNs, dzh (4H, the recurrent one) and dzx (4H, the input one), and adds the row's terms of the
    parameters' gradients to acc (14H: dg_ih, dg_hh, dg_c, db_c as ``dln``, then db). xh, hh
    (4H): the forward's normalized products (also the clip's pre-activations, recomputed with
    the forward's operations); tb (2H) scratch. Three passes over the row, one vector of V units
    at a time: c_t's LN backward (tanh(LN(c_t)) and dn g_c kept in tb, its two sums), the gates
    (with both product LNs' sums, a vector partial sum each, gates added pairwise), then dzh and
    dzx. The sums' lanes added by ``vhsum``: a fixed order whatever the threads. Operands are
    pointers (``padd``)."""
    G = 4 * H
    V = lanes(dm)
    mc = ld(st, 4)
    rc = ld(st, 5)
    s1 = vzero(dm)
    s2 = vzero(dm)
    for u in range(0, H, V):   # dn = dm o (1 - tanh^2 n), n = LN(c_t), and its LN's sums
        k = min(V, H - u)
        ch = (vload_n(c_t, u, k) - mc) * rc
        gc = vload_n(ln, G + G + u, k)
        tn = vtanh(ch * gc + vload_n(ln, G + G + H + u, k))
        d = vload_n(dm, u, k) * vload_n(g_t, 3 * H + u, k) * (1.0 - tn * tn)
        vstore_n(acc, G + G + u, vload_n(acc, G + G + u, k) + d * ch, k)            # dg_c
        vstore_n(acc, G + G + H + u, vload_n(acc, G + G + H + u, k) + d, k)         # db_c
        vstore_n(tb, u, tn, k)
        d = d * gc   # (0 in the lanes past H: the loads are masked)
        vstore_n(tb, H + u, d, k)
        s1 = s1 + d
        s2 = s2 + d * ch
    m1 = vhsum(s1) / H
    m2 = vhsum(s2) / H
    ax = vzero(dm)
    qx = vzero(dm)
    ah = vzero(dm)
    qh = vzero(dm)
    for u in range(0, H, V):
        k = min(V, H - u)
        i = vload_n(g_t, u, k)
        f = vload_n(g_t, H + u, k)
        g = vload_n(g_t, 2 * H + u, k)
        o = vload_n(g_t, 3 * H + u, k)
        ct = vload_n(c_t, u, k)
        cpv = vload_n(cp, u, k)
        ch = (ct - mc) * rc
        tn = vload_n(tb, u, k)
        dgo = vload_n(dm, u, k) * tn * o * (1.0 - o)
        if clip > 0:
            zo = vload_n(xh, 3 * H + u, k) * vload_n(ln, 3 * H + u, k) + vload_n(b, 3 * H + u, k) + \
                vload_n(hh, 3 * H + u, k) * vload_n(ln, G + 3 * H + u, k)
            if has_peep:
                zo = zo + vload_n(peep, 2 * H + u, k) * ct
            dgo = keep(dgo, zo, clip)
        dcv = vload_n(dc, u, k) + rc * (vload_n(tb, H + u, k) - m1 - ch * m2)
        if has_peep:
            dcv = dcv + vload_n(peep, 2 * H + u, k) * dgo
        if cell_clip > 0:
            dcv = keep(dcv, f * cpv + i * g, cell_clip)
        dgi = dcv * g * i * (1.0 - i)
        dgf = dcv * cpv * f * (1.0 - f)
        dgg = dcv * i * (1.0 - g * g)
        if clip > 0:
            zi = vload_n(xh, u, k) * vload_n(ln, u, k) + vload_n(b, u, k) + vload_n(hh, u, k) * vload_n(ln, G + u, k)
            zf = vload_n(xh, H + u, k) * vload_n(ln, H + u, k) + vload_n(b, H + u, k) + \
                vload_n(hh, H + u, k) * vload_n(ln, G + H + u, k)
            zg = vload_n(xh, 2 * H + u, k) * vload_n(ln, 2 * H + u, k) + vload_n(b, 2 * H + u, k) + \
                vload_n(hh, 2 * H + u, k) * vload_n(ln, G + 2 * H + u, k)
            if has_peep:
                zi = zi + vload_n(peep, u, k) * cpv
                zf = zf + vload_n(peep, H + u, k) * cpv
            dgi = keep(dgi, zi, clip)
            dgf = keep(dgf, zf, clip)
            dgg = keep(dgg, zg, clip)
        vstore_n(dg, u, dgi, k)
        vstore_n(dg, H + u, dgf, k)
        vstore_n(dg, 2 * H + u, dgg, k)
        vstore_n(dg, 3 * H + u, dgo, k)
        # the sums of both product LNs' backward: d g and d g zhat, gates added pairwise
        ei = dgi * vload_n(ln, u, k)
        ef = dgf * vload_n(ln, H + u, k)
        eg = dgg * vload_n(ln, 2 * H + u, k)
        eo = dgo * vload_n(ln, 3 * H + u, k)
        ax = ax + ((ei + ef) + (eg + eo))
        qx = qx + ((ei * vload_n(xh, u, k) + ef * vload_n(xh, H + u, k)) +
                   (eg * vload_n(xh, 2 * H + u, k) + eo * vload_n(xh, 3 * H + u, k)))
        ei = dgi * vload_n(ln, G + u, k)
        ef = dgf * vload_n(ln, G + H + u, k)
        eg = dgg * vload_n(ln, G + 2 * H + u, k)
        eo = dgo * vload_n(ln, G + 3 * H + u, k)
        ah = ah + ((ei + ef) + (eg + eo))
        qh = qh + ((ei * vload_n(hh, u, k) + ef * vload_n(hh, H + u, k)) +
                   (eg * vload_n(hh, 2 * H + u, k) + eo * vload_n(hh, 3 * H + u, k)))
        dcp = dcv * f
        if has_peep:
            dcp = dcp + vload_n(peep, u, k) * dgi + vload_n(peep, H + u, k) * dgf
        vstore_n(dc, u, dcp, k)
    mx1 = vhsum(ax) / G
    mx2 = vhsum(qx) / G
    mh1 = vhsum(ah) / G
    mh2 = vhsum(qh) / G
    rx = ld(st, 1)
    rh = ld(st, 3)
    for j in range(0, G, V):   # dz = rstd (d g - mean(d g) - zhat mean(d g zhat)); the parameters' terms
        k = min(V, G - j)
        d = vload_n(dg, j, k)
        xv = vload_n(xh, j, k)
        hv = vload_n(hh, j, k)
        vstore_n(dzx, j, rx * (d * vload_n(ln, j, k) - mx1 - xv * mx2), k)
        vstore_n(dzh, j, rh * (d * vload_n(ln, G + j, k) - mh1 - hv * mh2), k)
        vstore_n(acc, j, vload_n(acc, j, k) + d * xv, k)                  # dg_ih
        vstore_n(acc, G + j, vload_n(acc, G + j, k) + d * hv, k)          # dg_hh
        vstore_n(acc, G + G + H + H + j, vload_n(acc, G + G + H + H + j, k) + d, k)   # db


@njit(**JIT)
def ln_backward(x, wih, whh_b, b, ln, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes, stats,
                dzx, hprev, dgates, dzh, dhs, xpan, hpan, dx, dw_ih, dw_hh, db, dh0, dc0, dln, var, dpeep,
                rdrop, zm, dhz, num_threads):
    """Backpropagation through time of ``ln_forward`` into caller-provided arrays; stats (N, ln_stats_width(H))
    the forward's (statistics and normalized products). Workspace:
    dzx, dzh (N, 4H); dgates (N, 4H) with peepholes (their gradients need every row's gate
    gradients after the loop), else 0 rows (a row's stay in a scratch row in cache); hprev (N, R)
    (with rdrop; else 0 rows); dhs (B, H); xpan, hpan panels
    [ceil(I/NR)][N][NR], [ceil(H/NR)][N][NR]. Outputs dx (N, I), dw_ih (4H, I), dw_hh (4H, H),
    db (4H,) or (0,) (no bias), dh0, dc0 (B, H), dln (10H,) [dg_ih, dg_hh, dg_c, db_c], dpeep
    (3, H) or 0 rows. ``rdrop`` (B, H), ``zm`` (N, H) with ``dhz`` (B, H) zeros: the masks, or
    0 rows (off)."""
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    check_steps(batch_sizes, N, B)
    S = stats.shape[1]
    # the time loop, last step to first (the rows' operands as pointers: ``ln_cell_grad``)
    dc0[:] = dc_n
    peep, has_peep, clip, cell_clip, cifg = var
    dhp, gp, cpt, c0p, dcp, dgp = ptr(dhs), ptr(gates), ptr(c), ptr(c0), ptr(dc0), ptr(dgates)
    acc = np.zeros(14 * H, dln.dtype)   # the parameters' gradients, summed in the time loop's row order
    tb = np.empty(6 * H, dln.dtype)   # ln_cell_grad's scratch (2H), then a row's gate gradients (4H)
    keep_dg = dgates.shape[0] > 0
    dzp, dxp, sp, lp, bp, pp, ap, tp = ptr(dzh), ptr(dzx), ptr(stats), ptr(ln), ptr(b), ptr(peep), ptr(acc), ptr(tb)
    off = N
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        off -= n
        if n <= 0:
            continue
        nn = batch_sizes[t + 1] if t + 1 < T else 0
        nt = num_threads if n * G * R >= PAR_MIN else 1
        bwd_dh_all(G, dzh[off + n:off + n + nn], nn, n, whh_b, dh_n[:n], dy[off:off + n], dhs[:n], R, nt,
                   rdrop[:n])
        if zm.shape[0] > 0:   # h_t = h_{t-1} + zm (h~_t - h_{t-1})
            for r in range(n):
                for u in range(H):
                    z = zm[off + r, u]
                    d = dhs[r, u] + dhz[r, u]
                    dhz[r, u] = (1 - z) * d
                    dhs[r, u] = z * d
        p = off - batch_sizes[t - 1] if t > 0 else 0
        for r in range(n):
            q = off + r
            cp = padd(c0p, r * H) if t == 0 else padd(cpt, (p + r) * H)
            ln_cell_grad(padd(dhp, r * H), padd(gp, q * G), padd(cpt, q * H), cp, padd(dcp, r * H),
                         padd(dgp, q * G) if keep_dg else padd(tp, 2 * H),
                         padd(dzp, q * G), padd(dxp, q * G), padd(sp, q * S + LN_ZHAT), padd(sp, q * S + zhat_h_col(G)),
                         padd(sp, q * S), lp, bp, ap, tp, H, pp, has_peep, clip, cell_clip)
    n0 = batch_sizes[0] if T > 0 else 0
    nt = num_threads if B * G * R >= PAR_MIN else 1
    if dhz.shape[0] > 0:
        bwd_dh_all(G, dzh[:n0], n0, B, whh_b, dh_n, dhz, dh0, R, nt, rdrop)
    else:
        bwd_dh_all(G, dzh[:n0], n0, B, whh_b, dh_n, None, dh0, R, nt, rdrop)
    dln[:] = acc[:10 * H]
    if db.shape[0] > 0:
        db[:] = acc[10 * H:]
    # whole-sequence products: dx = dz_x.w_ih, dw_ih = dz_x^T.x, dw_hh = dz_h^T.h_prev
    gemm(N, I, G, dzx, False, wih, dx, None, num_threads)
    pack_b(x, nl(0), N, xpan, nl(0))
    gemm(G, I, N, dzx, True, xpan, dw_ih, None, num_threads)
    pack_h_prev(h0, y, batch_sizes, rdrop, hprev, hpan)   # h_{t-1} of every row, as lstm_backward
    gemm(G, R, N, dzh, True, hpan, dw_hh, None, num_threads)
    if dpeep.shape[0] > 0:
        peephole_grads(dgates, c, c0, batch_sizes, dpeep)
