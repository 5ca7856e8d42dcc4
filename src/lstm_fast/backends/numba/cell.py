"""The elementwise passes of the Numba backend, the only gate math (csrc/cell.template.c in
C): ``fwd_cell`` (activations, c_t, h_t) and ``bwd_cell`` (gate gradients, dc_{t-1}).

Gate order i, f, g, o: a row's 4H gate columns are [i | f | g | o], H each. Both passes go one
vector of V units at a time (the last one masked) over the units a step tile covers, while
that tile's values are still in L1. Forward saves the activated gates; backward takes the
derivatives from them (sigmoid' = s(1 - s), tanh' = 1 - t^2) and recomputes only tanh(c_t).
Both take pointers (``simd.ptr``); row strides 4H for gates and dgates, H for the rest.
C's fwd_cell instead adds the tile's accumulators (kept in a scratch array) to the input
projection itself; here ``lstm.fwd_tile`` has already added them into gates_t.
"""

from numba import njit

from .simd import JIT, lanes, vload_n, vsigmoid, vstore_n, vtanh


@njit(**JIT)
def fwd_cell(gates_t, cp, c_t, h_t, r0, mr, H, u0, nu):
    """Elementwise update of rows r0..r0+mr, units u0..u0+nu, one vector at a time: activate
    the pre-activations in gates_t in place, c_t = f*c_prev + i*g, h_t = o*tanh(c_t)."""
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
def bwd_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu):
    """Gate gradients of rows 0..n, units u0..u0+nu, of one step, one vector at a time. ``dm``
    (., H) is the gradient reaching m_t = o*tanh(c_t) (dh without a projection, dy included).
    Writes dg_t, turns ``dc`` into the gradient reaching c_{t-1}, and stores m_t into
    ``m_out`` unless None."""
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
