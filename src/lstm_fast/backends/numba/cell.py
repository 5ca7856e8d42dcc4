"""The elementwise passes of the Numba backend, the only gate math (csrc/cell.template.c in
C): ``fwd_cell`` (activations, c_t, h_t) and ``bwd_cell`` (gate gradients, dc_{t-1}).

Gate order i, f, g, o: a row's 4H gate columns are [i | f | g | o], H each. Both passes go one
vector of V units at a time (the last one masked) over the units a step tile covers, while
that tile's values are still in L1. Forward saves the activated gates; backward takes the
derivatives from them (sigmoid' = s(1 - s), tanh' = 1 - t^2) and recomputes only tanh(c_t).
Both take pointers (``simd.ptr``); row strides 4H for gates and dgates, H for the rest.
C's fwd_cell instead adds the tile's accumulators (kept in a scratch array) to the input
projection itself; here ``lstm.fwd_tile`` has already added them into gates_t.

Variants (issue 15; equations in backends/reference.py): ``var`` is always the tuple
``(peep, has_peep, clip, cell_clip, cifg)`` with peep (3, H) rows w_ci, w_cf, w_co (any 2-D array
of the dtype when has_peep is False) and the clips (> 0: on); all off is the plain LSTM. The
cells test it at run time (``var_on``): the plain loops run when every variant is off,
``fwd_cell_var`` / ``bwd_cell_var`` otherwise. One tuple type, never None: one compilation per
dtype serves the plain LSTM and every variant (a None would compile the whole call tree again).
As C, backward tells a clamped gate by its saved activation (at or beyond act(+-clip)) and
c_t's clamp from f*c_{t-1} + i*g recomputed with the forward's operations. Unlike C, the peephole gradients are summed after the time loop
(``lstm.peephole_grads``), since Numba's threads may split sequences rather than units.
"""

from numba import njit

from .simd import JIT, lanes, vfma, vload_n, vsel_ge, vsel_gt, vsigmoid, vsplat, vstore_n, vtanh


@njit(inline="always", **JIT)
def vclamp(x, b):
    """x clamped to [-b, b] (NaN stays NaN)."""
    hi = vsplat(x, b)
    lo = vsplat(x, -b)
    x = vsel_gt(x, hi, hi, x)
    return vsel_gt(lo, x, lo, x)


@njit(inline="always", **JIT)
def clip_keep(d, s, lo, hi):
    """d, or 0 where the saved activation s is at or beyond act(+-clip) (lo, hi): the gate's
    pre-activation was clamped. NaN passes."""
    z = vsplat(d, 0.0)
    d = vsel_ge(s, hi, z, d)
    return vsel_ge(lo, s, z, d)


@njit(inline="always", **JIT)
def var_on(var):
    """Whether any variant of ``var`` is on (else the plain loops run)."""
    return var[1] or var[2] > 0 or var[3] > 0 or var[4]


@njit(**JIT)
def fwd_cell_var(gates_t, cp, c_t, h_t, r0, mr, H, u0, nu, var):
    """``fwd_cell`` with the variants ``var`` (see the module docstring): i, f add the
    peephole terms of c_{t-1}, o that of the new (clamped) c_t."""
    peep, has_peep, clip, cell_clip, cifg = var
    V = lanes(gates_t)
    G = 4 * H
    for r in range(r0, r0 + mr):
        for u in range(u0, u0 + nu, V):
            k = min(V, u0 + nu - u)
            gi = r * G + u
            ci = r * H + u
            cpv = vload_n(cp, ci, k)
            zi = vload_n(gates_t, gi, k)
            zf = vload_n(gates_t, gi + H, k)
            zg = vload_n(gates_t, gi + 2 * H, k)
            zo = vload_n(gates_t, gi + 3 * H, k)
            if has_peep:
                zi = vfma(vload_n(peep, u, k), cpv, zi)
                zf = vfma(vload_n(peep, H + u, k), cpv, zf)
            if clip > 0:
                zi = vclamp(zi, clip)
                zf = vclamp(zf, clip)
                zg = vclamp(zg, clip)
            i = vsigmoid(zi)
            f = 1.0 - i if cifg else vsigmoid(zf)
            g = vtanh(zg)
            cv = f * cpv + i * g
            if cell_clip > 0:
                cv = vclamp(cv, cell_clip)
            if has_peep:
                zo = vfma(vload_n(peep, 2 * H + u, k), cv, zo)
            if clip > 0:
                zo = vclamp(zo, clip)
            o = vsigmoid(zo)
            vstore_n(gates_t, gi, i, k)
            vstore_n(gates_t, gi + H, f, k)
            vstore_n(gates_t, gi + 2 * H, g, k)
            vstore_n(gates_t, gi + 3 * H, o, k)
            vstore_n(c_t, ci, cv, k)
            vstore_n(h_t, ci, o * vtanh(cv), k)


@njit(**JIT)
def bwd_cell_var(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu, var):
    """``bwd_cell`` with the variants ``var`` (see the module docstring)."""
    peep, has_peep, clip, cell_clip, cifg = var
    V = lanes(dm)
    G = 4 * H
    for r in range(n):
        for u in range(u0, u0 + nu, V):
            k = min(V, u0 + nu - u)
            gi = r * G + u
            ci = r * H + u
            i = vload_n(gates_t, gi, k)
            f = vload_n(gates_t, gi + H, k)
            g = vload_n(gates_t, gi + 2 * H, k)
            o = vload_n(gates_t, gi + 3 * H, k)
            ct = vload_n(c_t, ci, k)
            cpv = vload_n(cprev, ci, k)
            tc = vtanh(ct)
            d = vload_n(dm, ci, k)
            if clip > 0:   # act(+-clip): what the forward's clamp gives
                slo = vsigmoid(vsplat(o, -clip))
                shi = vsigmoid(vsplat(o, clip))
                tlo = vtanh(vsplat(o, -clip))
                thi = vtanh(vsplat(o, clip))
            else:
                slo = shi = tlo = thi = vsplat(o, 0.0)
            dgo = d * tc * o * (1.0 - o)
            if clip > 0:
                dgo = clip_keep(dgo, o, slo, shi)
            dcv = vload_n(dc, ci, k) + d * o * (1.0 - tc * tc)
            if has_peep:
                dcv = vfma(vload_n(peep, 2 * H + u, k), dgo, dcv)
            if cell_clip > 0:
                craw = f * cpv + i * g
                z = vsplat(dcv, 0.0)
                dcv = vsel_gt(craw, vsplat(craw, cell_clip), z, dcv)
                dcv = vsel_gt(vsplat(craw, -cell_clip), craw, z, dcv)
            if cifg:   # f = 1 - i: dL/di = dc*g - dc*c_{t-1}
                dgi = dcv * (g - cpv) * i * (1.0 - i)
                dgf = vsplat(dcv, 0.0)
            else:
                dgi = dcv * g * i * (1.0 - i)
                dgf = dcv * cpv * f * (1.0 - f)
            dgg = dcv * i * (1.0 - g * g)
            if clip > 0:
                dgi = clip_keep(dgi, i, slo, shi)
                if not cifg:
                    dgf = clip_keep(dgf, f, slo, shi)
                dgg = clip_keep(dgg, g, tlo, thi)
            vstore_n(dg_t, gi, dgi, k)
            vstore_n(dg_t, gi + H, dgf, k)
            vstore_n(dg_t, gi + 2 * H, dgg, k)
            vstore_n(dg_t, gi + 3 * H, dgo, k)
            dcp = dcv * f
            if has_peep:
                dcp = vfma(vload_n(peep, u, k), dgi, dcp)
                dcp = vfma(vload_n(peep, H + u, k), dgf, dcp)
            vstore_n(dc, ci, dcp, k)
            if m_out is not None:
                vstore_n(m_out, ci, o * tc, k)


@njit(**JIT)
def fwd_cell(gates_t, cp, c_t, h_t, r0, mr, H, u0, nu, var):
    """Elementwise update of rows r0..r0+mr, units u0..u0+nu, one vector at a time: activate
    the pre-activations in gates_t in place, c_t = f*c_prev + i*g, h_t = o*tanh(c_t).
    ``var``: the variants; with any on, ``fwd_cell_var`` runs instead."""
    if var_on(var):
        fwd_cell_var(gates_t, cp, c_t, h_t, r0, mr, H, u0, nu, var)
        return
    V = lanes(gates_t)
    G = 4 * H
    for r in range(r0, r0 + mr):
        for u in range(u0, u0 + nu, V):
            k = min(V, u0 + nu - u)
            gi = r * G + u
            i = vsigmoid(vload_n(gates_t, gi, k))
            f = vsigmoid(vload_n(gates_t, gi + H, k))
            g = vtanh(vload_n(gates_t, gi + 2 * H, k))
            o = vsigmoid(vload_n(gates_t, gi + 3 * H, k))
            vstore_n(gates_t, gi, i, k)
            vstore_n(gates_t, gi + H, f, k)
            vstore_n(gates_t, gi + 2 * H, g, k)
            vstore_n(gates_t, gi + 3 * H, o, k)
            ci = r * H + u
            cv = f * vload_n(cp, ci, k) + i * g
            vstore_n(c_t, ci, cv, k)
            vstore_n(h_t, ci, o * vtanh(cv), k)


@njit(**JIT)
def bwd_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu, var):
    """Gate gradients of rows 0..n, units u0..u0+nu, of one step, one vector at a time. ``dm``
    (., H) is the gradient reaching m_t = o*tanh(c_t) (dh without a projection, dy included).
    Writes dg_t, turns ``dc`` into the gradient reaching c_{t-1}, and stores m_t into
    ``m_out`` unless None. ``var``: the variants; with any on, ``bwd_cell_var`` runs instead."""
    if var_on(var):
        bwd_cell_var(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu, var)
        return
    V = lanes(dm)
    G = 4 * H
    for r in range(n):
        for u in range(u0, u0 + nu, V):
            k = min(V, u0 + nu - u)
            gi = r * G + u
            ci = r * H + u
            i = vload_n(gates_t, gi, k)
            f = vload_n(gates_t, gi + H, k)
            g = vload_n(gates_t, gi + 2 * H, k)
            o = vload_n(gates_t, gi + 3 * H, k)
            tc = vtanh(vload_n(c_t, ci, k))
            d = vload_n(dm, ci, k)
            dcv = vload_n(dc, ci, k) + d * o * (1.0 - tc * tc)
            vstore_n(dg_t, gi + 3 * H, d * tc * o * (1.0 - o), k)
            if m_out is not None:
                vstore_n(m_out, ci, o * tc, k)
            vstore_n(dg_t, gi, dcv * g * i * (1.0 - i), k)
            vstore_n(dg_t, gi + H, dcv * vload_n(cprev, ci, k) * f * (1.0 - f), k)
            vstore_n(dg_t, gi + 2 * H, dcv * i * (1.0 - g * g), k)
            vstore_n(dc, ci, dcv * f, k)
