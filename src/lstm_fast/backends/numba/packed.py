"""Packed weights of the Numba backend (csrc/pack.template.c in C; the module is not named
pack.py because the package exports the function ``pack``): ``pack`` lays the weights out once
per weight version, in NumPy (nothing compiles before the first forward), as the kernels
stream through them (V lanes per vector, NR = 2V, R the width of h):

    wih_t  [ceil(4H/NR)][I][NR]   GEMM panels of w_ih^T: gates = x.w_ih^T
    wih    [ceil(I/NR)][4H][NR]   GEMM panels of w_ih: dx = dgates.w_ih
    whh_f  [ceil(H/V)][R][4][V]   forward step tiles: the i, f, g, o columns of the same V units
    whh_b  [ceil(R/V)][4H][V]     backward step tiles: dh = dgates.w_hh
    b      (4H,)                  b_ih + b_hh, zeros without a bias
    whr_t  [ceil(P/NR)][H][NR]    GEMM panels of w_hr^T: y = m.w_hr^T     (projection only)
    whr    [ceil(H/NR)][P][NR]    GEMM panels of w_hr: dm = dh.w_hr       (projection only)

C's pack also holds w_ih in the step tiles (fwd_fuse_x) and for dx in the steps
(bwd_dx_in_steps); Numba always hoists x.w_ih^T and computes dx after the loop.
"""

from typing import NamedTuple, Optional

import numpy as np


class Packed(NamedTuple):
    """The weights in the kernels' layout (module docstring), made by ``pack``; the first five
    fields are the backend contract's."""
    input_size: int
    hidden_size: int
    proj_size: int                 #: 0: no projection
    dtype: np.dtype
    has_bias: bool
    wih_t: np.ndarray
    wih: np.ndarray
    whh_f: np.ndarray
    whh_b: np.ndarray
    b: np.ndarray                  #: (4H,), zeros without a bias
    whr_t: Optional[np.ndarray]    #: None without a projection
    whr: Optional[np.ndarray]
    variant: Optional[object] = None   #: backends.Variant, or None (plain)
    var: tuple = ()                    #: the kernels' form (cell.py), every variant off: plain


def panels(w, NR):
    """GEMM panels [ceil(N/NR)][K][NR] of the K x N matrix w (``gemm.pack_b`` in NumPy)."""
    K, N = w.shape
    npan = (N + NR - 1) // NR
    pad = np.zeros((K, npan * NR), w.dtype)
    pad[:, :N] = w
    return np.ascontiguousarray(pad.reshape(K, npan, NR).transpose(1, 0, 2))


def pack(w_ih, w_hh, b, w_hr=None, out=None, variant=None):
    """w_ih (4H, I), w_hh (4H, R), b (4H,) or None, w_hr (P, H) or None -> ``Packed``.
    out (a Packed to reuse) is accepted and not used: NumPy builds these layouts.
    variant: a backends.Variant or None; the kernels get it as (peep, has_peep, clip,
    cell_clip, cifg) (cell.py), every variant off (peep (0, 0)) for None: always the same
    tuple type, so that one compilation per dtype serves the plain LSTM and every variant."""
    dt = w_hh.dtype
    V = 64 // dt.itemsize
    NR = 2 * V
    G, R = w_hh.shape
    H = G // 4
    nblk = (H + V - 1) // V
    wf = np.zeros((4, nblk * V, R), dt)
    wf[:, :H] = w_hh.reshape(4, H, R)
    whh_f = np.ascontiguousarray(wf.reshape(4, nblk, V, R).transpose(1, 3, 0, 2))   # [blk][k][g][V]
    rblk = (R + V - 1) // V
    wb = np.zeros((G, rblk * V), dt)
    wb[:, :R] = w_hh
    whh_b = np.ascontiguousarray(wb.reshape(G, rblk, V).transpose(1, 0, 2))         # [blk][k][V]
    bias = np.zeros(G, dt) if b is None else np.ascontiguousarray(b, dt)
    whr_t = whr = None
    if w_hr is not None:
        whr_t, whr = panels(w_hr.T, NR), panels(w_hr, NR)
    has_peep = variant is not None and variant.peephole is not None
    peep = np.ascontiguousarray(variant.peephole, dt) if has_peep else np.zeros((0, 0), dt)
    if variant is None:
        var = (peep, False, 0.0, 0.0, False)
    else:
        var = (peep, has_peep, float(variant.clip), float(variant.cell_clip), bool(variant.cifg))
    return Packed(w_ih.shape[1], H, 0 if w_hr is None else w_hr.shape[0], dt, b is not None,
                  panels(w_ih.T, NR), panels(w_ih, NR), whh_f, whh_b, bias, whr_t, whr, variant, var)
