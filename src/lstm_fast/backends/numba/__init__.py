"""Backend "numba": the C kernel's design (csrc/) in Numba, compiled on first use.

This file is the backend contract (``lstm_fast.backends``: ``pack``, ``forward``, ``backward``,
``step``): it allocates outputs and workspace and calls the kernels, which never allocate.
The kernels mirror csrc/ file by file and function by function (tests/test_numba.py checks the
names of the kernel vocabulary on both sides):

    simd.py    vector layer and activations   vload, vload_n, vstore, vstore_n, vset1, vfma,
               (simd.template.h)              vsigmoid, vtanh
    gemm.py    packed GEMM (gemm.template.c)  gemm, gemm_tile (_t, 1), pack_b
    cell.py    the only gate math             fwd_cell, bwd_cell
               (cell.template.c)
    packed.py  packed weights                 Packed, pack
               (pack.template.c)
    lstm.py    forward and backward           fwd_tile, fwd_step, fwd_job, lstm_forward,
               (lstm.template.c)              bwd_tile, bwd_rows, bwd_step, bwd_job, lstm_backward
    lnorm.py   the layer-normalized LSTM      ln_forward, ln_backward (their own entry points:
               (no C counterpart yet)         the plain kernels' compile does not include them)

Why hand-written loops and not BLAS: a BLAS call cannot apply the gate activations while a
tile of h.w_hh^T is still in registers, and per-step calls cost microseconds each at small
shapes; the BLAS Numba reaches (SciPy's OpenBLAS, behind ``np.dot``) also ran AVX2 kernels on
the AMD Zen 5 machines (OPENBLAS_CORETYPE=Haswell), half their rate. The products here are
register tiles on explicit 64-byte vectors (simd.py). Measured, one thread, ``gemm.gemm``
against NumPy's matmul: AMD Zen 5, f32 2048x256 . 256x1024 253 vs 125 GFLOP/s, the transposed
dW shape (1024x2048 . 2048x256) 211 vs 120, f64 about 111 vs 60; Intel Xeon (family 6 model
167, OpenBLAS on its AVX-512 kernels), f32 2048x256 . 256x1024 177 vs 171, 512x64 . 64x256
182 vs 150, f64 77 vs 80 and 107 vs 80.

Threads: ``num_threads`` (resolved by ``backends.threads_for``) becomes
``numba.set_num_threads(n)`` for the call (thread-local, restored after; capped at Numba's pool,
NUMBA_NUM_THREADS) and the kernels' partition (lstm.py); the bits do not depend on it.

Compilation is lazy (nothing compiles at import) and cached to disk (``cache=True``; the cache
of every kernel file is invalidated by an edit of any of them, see simd.py). The registry
imports this package only when the backend is first used. Cold first use compiles for about
79 s per dtype (forward 40.4 s + backward 38.6 s, f32, Intel Xeon family 6 model 167, a shared
machine; main's plain-only kernels 26.8 + 29.8 s in the same run), once for every option;
from the cache the first call takes 0.45-0.55 s, importing Numba included
(benchmarks/numba_first_use.py). Every option is a run-time argument of a fixed type (lstm.py,
"Compilation"): inference (save=False), ``step``, the projection, the variants, the peephole
gradients and the recurrent dropout and zoneout masks run the same two compiled kernels per
dtype. The layer-normalized LSTM (``Variant.layer_norm``) runs two kernels of its own
(lnorm.py), compiled on its first use, once per dtype for every combination of the other
options: cold 19.6 s forward + 22.4 s backward (f32, its own process), while the plain
LSTM's first use measured 33.3 + 31.7 s in the same session (its kernels unchanged by it;
``benchmarks/numba_first_use.py [--layer-norm]``, Intel Xeon family 6 model 167, 2026-11-30).
"""

import numba
import numpy as np

from .. import as_matrix, ln_stats_width
from .lnorm import ln_backward, ln_forward
from .lstm import FWD_CHUNK_BYTES, lstm_backward, lstm_forward
from .packed import Packed, pack

__all__ = ["Packed", "pack", "forward", "backward", "step"]


class _numba_threads:
    """``numba.set_num_threads(n)`` for the duration of a call (thread-local), then restored."""

    __slots__ = ("n", "old")

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = numba.get_num_threads()
        if self.old != self.n:
            numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old != self.n:
            numba.set_num_threads(self.old)


def _steps(x, batch_sizes):
    """(N, I) view of x, int64 batch_sizes ([B] * T for the padded layout) and the padded
    (T, B) to reshape outputs to, or None."""
    if batch_sizes is None:
        T, B, I = x.shape
        return x.reshape(T * B, I), np.full(T, B, np.int64), (T, B)
    return x, np.ascontiguousarray(batch_sizes, dtype=np.int64), None


_NONE = {}


def _none(dt, ndim=2):
    """The array of 0 rows (ndim axes, dtype dt) that stands for an absent mask, projection
    array or peephole gradient (the kernels test its rows at run time; a None would be a
    separate compilation of the whole call tree)."""
    a = _NONE.get((dt, ndim))
    if a is None:
        a = _NONE[dt, ndim] = np.empty((0,) * ndim, dt)
    return a


def _in(a):
    """A read-only view of an input array: the kernels are compiled for read-only inputs
    whatever the caller's flags, so a writable and a read-only x (h0, dy, ...) share one
    compilation per dtype (Numba types mutability: each mix of flags would otherwise compile
    the whole call tree again, ~25 s)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _mask(a, none):
    """A mask for the kernels: C-contiguous and writable (the array type they are compiled
    for), or ``none`` for None."""
    if a is None:
        return none
    if not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, order="C")
    return a


def _ln(packed):
    """The (10H,) layer-norm parameters of a layer-normalized LSTM in the kernels' form, or None."""
    v = packed.variant
    if v is None or v.layer_norm is None:
        return None
    if packed.whr_t is not None or v.cifg:
        raise ValueError("layer_norm: no projection (proj_size) and no cifg (haste's LayerNormLSTM "
                         "defines neither)")
    return np.ascontiguousarray(v.layer_norm, packed.dtype)


def _forward_start(x, batch_sizes, h0, c0, out, dt):
    """What every forward starts from: ``_steps`` of x, then y (N, R), h_n, c_n, the
    caller's (``out``, any of them None) or new."""
    xp, bs, padded = _steps(x, batch_sizes)
    N, R = xp.shape[0], h0.shape[-1]
    y_out, h_n, c_n = (None, None, None) if out is None else out
    y = np.empty((N, R), dt) if y_out is None else y_out.reshape(N, R)
    return (xp, bs, padded, y, np.empty(h0.shape, dt) if h_n is None else h_n,
            np.empty(c0.shape, dt) if c_n is None else c_n)


def _results(out, padded, y, h_n, c_n, gates, c, save):
    """The contract's (y, h_n, c_n, gates, c): y the caller's array if given, the rows
    reshaped to (T, B, .) for a padded input; gates and c None without saving."""
    if out is not None and out[0] is not None:
        y = out[0]
    elif padded is not None:
        y = y.reshape(*padded, y.shape[-1])
    if not save:
        return y, h_n, c_n, None, None
    if padded is not None:
        gates, c = gates.reshape(*padded, gates.shape[-1]), c.reshape(*padded, c.shape[-1])
    return y, h_n, c_n, gates, c


def forward(packed, x, h0, c0, num_threads, batch_sizes=None, save=True, out=None, rdrop=None, zoneout=None,
            stats=None):
    """-> (y, h_n, c_n, gates, c); gates and c None with save=False (the contract:
    lstm_fast.backends). out=(y, h_n, c_n), any of them None, receives the outputs.
    Layer norm: ``stats`` (T, B, S) or (N, S), S = ``ln_stats_width(H)``, receives what backward needs (the rows'
    statistics and normalized products; ``backends.ln_stats_width``), or None."""
    ln = _ln(packed)
    if ln is not None:
        return _ln_forward(packed, ln, x, h0, c0, num_threads, batch_sizes, save, out, rdrop, zoneout, stats)
    xp, bs, padded, y, h_n, c_n = _forward_start(x, batch_sizes, h0, c0, out, packed.dtype)
    N, (B, R), H, dt = xp.shape[0], h0.shape[-2:], packed.hidden_size, packed.dtype
    G = 4 * H
    if save:
        gates, c = np.empty((N, G), dt), np.empty((N, H), dt)
    else:
        n0 = int(bs[0]) if len(bs) else 0
        gates, c = np.empty((max(n0, min(N, FWD_CHUNK_BYTES // (G * dt.itemsize))), G), dt), np.empty((0, H), dt)
    none = _none(dt)   # options off: arrays of 0 rows, not None (one compilation, lstm.py)
    m, whr_t = (none, _none(dt, 3)) if packed.whr_t is None else (np.empty((B, H), dt), packed.whr_t)
    hm = none if rdrop is None else np.empty((B, R), dt)
    n = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    with _numba_threads(n):
        lstm_forward(_in(xp), packed.wih_t, packed.whh_f, packed.b, whr_t, _in(as_matrix(h0)), _in(as_matrix(c0)),
                     _in(bs), y,
                     as_matrix(h_n), as_matrix(c_n), gates, c, m, save, packed.var, _mask(rdrop, none), hm,
                     none if zoneout is None else _mask(zoneout.reshape(N, H), none), n)
    return _results(out, padded, y, h_n, c_n, gates, c, save)


def _ln_forward(packed, ln, x, h0, c0, num_threads, batch_sizes, save, out, rdrop, zoneout, stats):
    """``forward`` of the layer-normalized LSTM (lnorm.py): gates, c and the statistics are
    written for every row also for inference (save=False: then dropped)."""
    xp, bs, padded, y, h_n, c_n = _forward_start(x, batch_sizes, h0, c0, out, packed.dtype)
    N, (B, R), H, dt = xp.shape[0], h0.shape[-2:], packed.hidden_size, packed.dtype
    G = 4 * H
    gates, c = np.empty((N, G), dt), np.empty((N, H), dt)
    st = np.empty((N, 6), dt) if stats is None else stats.reshape(N, ln_stats_width(H))   # (N, 6): not kept
    none = _none(dt)
    n = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    with _numba_threads(n):
        ln_forward(_in(xp), packed.wih_t, packed.whh_f, packed.b, ln, _in(as_matrix(h0)), _in(as_matrix(c0)),
                   _in(bs), y,
                   as_matrix(h_n), as_matrix(c_n), gates, c, np.empty((B, G), dt), st, packed.var,
                   _mask(rdrop, none), np.empty((B, R), dt),
                   none if zoneout is None else _mask(zoneout.reshape(N, H), none), n)
    return _results(out, padded, y, h_n, c_n, gates, c, save)


def step(packed, x, h, c, num_threads, y=None):
    """One step, x (B, I) -> y (B, R); h (B, R) and c (B, H) updated in place (y must not be h).
    The forward with T = 1 and save=False: the same bits as that step of a whole sequence."""
    B, I = x.shape
    y_t = forward(packed, x.reshape(1, B, I), h, c, num_threads, save=False, out=(y, h, c))[0]
    return y_t if y is not None else y_t.reshape(B, h.shape[1])


def backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None, dpeephole=None,
             rdrop=None, zoneout=None, stats=None, dlayer_norm=None, need_dx=True):
    """-> (dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr); db None without a bias, dw_hr None without a
    projection (the contract: lstm_fast.backends); with peepholes dpeephole (3, H) receives
    their gradients. Layer norm: ``stats`` the forward's, ``dlayer_norm`` (10H,) receives the
    gradients of the layer-norm parameters. need_dx False: dx comes back as None (still
    computed here: the kernels have no variant without it)."""
    r = _backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes, dpeephole,
                  rdrop, zoneout, stats, dlayer_norm)
    return r if need_dx else (None,) + r[1:]


def _sizes(packed, x, h0, batch_sizes):
    """A backward's rows and sizes: x's rows xp (N, I) with the steps' bs and padded (as
    ``_steps``), N, I, B, R, H, G = 4H and the dtype."""
    xp, bs, padded = _steps(x, batch_sizes)
    N, I = xp.shape
    B, R = h0.shape[-2:]
    H = packed.hidden_size
    return xp, bs, padded, N, I, B, R, H, 4 * H, packed.dtype


def _panels(N, dt):
    """The backward's packed panels of N rows (the GEMMs' B operand): ``pan(cols)`` is
    (ceil(cols / NR), N, NR), NR two 64-byte vectors of dtype ``dt``."""
    NR = 2 * (64 // dt.itemsize)
    return lambda cols: np.empty(((cols + NR - 1) // NR, N, NR), dt)


def _grads_out(packed, N, I, R, h0, c0):
    """The backward's outputs: dx (N, I), dw_ih (4H, I), dw_hh (4H, R), db (4H,) (0 rows
    without a bias), dh0 and dc0 shaped as h0 and c0."""
    dt, G = packed.dtype, 4 * packed.hidden_size
    return (np.empty((N, I), dt), np.empty((G, I), dt), np.empty((G, R), dt),
            np.empty(G if packed.has_bias else 0, dt), np.empty(h0.shape, dt),
            np.empty(c0.shape, dt))


def _backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes, dpeephole,
              rdrop, zoneout, stats, dlayer_norm):
    ln = _ln(packed)
    if ln is not None:
        return _ln_backward(packed, ln, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes,
                            dpeephole, rdrop, zoneout, stats, dlayer_norm)
    xp, bs, padded, N, I, B, R, H, G, dt = _sizes(packed, x, h0, batch_sizes)
    y, gates, c, dy = (a.reshape(N, a.shape[-1]) for a in (y, gates, c, dy))
    pan = _panels(N, dt)
    dgates = np.empty((N, G), dt)
    dx, dw_ih, dw_hh, db, dh0, dc0 = _grads_out(packed, N, I, R, h0, c0)
    none = _none(dt)   # options off: arrays of 0 rows, not None (one compilation, lstm.py)
    if packed.whr is None:
        dhs = np.empty((B, H), dt)
        dm = dh_all = m_all = dw_hr = none
        whr = mpan = _none(dt, 3)
    else:
        dhs = np.empty((0, H), dt)
        dm, dh_all, m_all = np.empty((B, H), dt), np.empty((N, R), dt), np.empty((N, H), dt)
        whr, mpan, dw_hr = packed.whr, pan(H), np.empty((R, H), dt)
    n = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    with _numba_threads(n):
        lstm_backward(_in(xp), packed.wih, packed.whh_b, whr, _in(as_matrix(h0)), _in(as_matrix(c0)), _in(y),
                      _in(gates), _in(c), _in(dy), _in(as_matrix(dh_n)), _in(as_matrix(dc_n)), _in(bs), dgates,
                      dhs, pan(I), pan(R), dm, dh_all, m_all, mpan,
                      dx, dw_ih, dw_hh, db, as_matrix(dh0), as_matrix(dc0), dw_hr, packed.var,
                      dpeephole if packed.var[1] and dpeephole is not None else none, _mask(rdrop, none),
                      none if zoneout is None else _mask(zoneout.reshape(N, H), none),
                      none if zoneout is None else np.zeros((B, H), dt), n)
    if padded is not None:
        dx = dx.reshape(x.shape)
    return dx, dw_ih, dw_hh, (db if packed.has_bias else None), dh0, dc0, (None if packed.whr is None else dw_hr)


def _ln_backward(packed, ln, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes, dpeephole, rdrop,
                 zoneout, stats, dlayer_norm):
    """``backward`` of the layer-normalized LSTM (lnorm.py)."""
    if stats is None:
        raise ValueError("stats: the forward's layer-norm statistics are needed for backward")
    xp, bs, padded, N, I, B, R, H, G, dt = _sizes(packed, x, h0, batch_sizes)
    y, gates, c, dy = (np.ascontiguousarray(a.reshape(N, a.shape[-1])) for a in (y, gates, c, dy))
    pan = _panels(N, dt)
    dx, dw_ih, dw_hh, db, dh0, dc0 = _grads_out(packed, N, I, R, h0, c0)
    dln = np.empty(10 * H, dt)
    none = _none(dt)
    n = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    with _numba_threads(n):
        ln_backward(_in(xp), packed.wih, packed.whh_b, packed.b, ln,
                    _in(as_matrix(h0)), _in(as_matrix(c0)), _in(y), _in(gates), _in(c), _in(dy),
                    _in(as_matrix(dh_n)), _in(as_matrix(dc_n)), _in(bs),
                    _in(np.ascontiguousarray(stats.reshape(N, ln_stats_width(H)), dt)), np.empty((N, G), dt),
                    np.empty((N if rdrop is not None else 0, R), dt),
                    np.empty((N if packed.var[1] and dpeephole is not None else 0, G), dt), np.empty((N, G), dt),
                    np.empty((B, H), dt), pan(I), pan(R), dx, dw_ih, dw_hh, db, as_matrix(dh0), as_matrix(dc0),
                    dln, packed.var, dpeephole if packed.var[1] and dpeephole is not None else none,
                    _mask(rdrop, none), none if zoneout is None else _mask(zoneout.reshape(N, H), none),
                    none if zoneout is None else np.zeros((B, H), dt), n)
    if dlayer_norm is not None:
        dlayer_norm[...] = dln
    if padded is not None:
        dx = dx.reshape(x.shape)
    return dx, dw_ih, dw_hh, (db if packed.has_bias else None), dh0, dc0, None
