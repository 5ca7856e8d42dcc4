"""Functional API: one LSTM layer, one direction, time-major.

    y, h_n, c_n, cache = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    grads = lstm_backward(cache, dy, dh_n, dc_n)

Arguments are validated once here (see ``_validation``) and handed to the
backend chosen by ``backend`` ("auto", "c", "numba", "numpy").
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _validation, backends
from ._lengths import LengthPlan


class LSTMCache:
    """What ``lstm_backward`` needs from a forward call. Treat as opaque."""

    __slots__ = ("backend", "packed", "dtype", "has_bias", "shape", "saved", "plan")

    def __init__(self, backend, packed, dtype, has_bias, shape, saved, plan):
        self.backend = backend
        self.packed = packed
        self.dtype = dtype
        self.has_bias = has_bias
        self.shape = shape        # (T, B, H, P)
        self.saved = saved        # (x, h0, c0, y, gates, c) as the backend saw them
        self.plan = plan          # LengthPlan or None

    @property
    def gates(self):
        """Activated gates i, f, g, o, (T, B, 4H); zero at padded positions."""
        g = self.saved[4]
        return g if self.plan is None else self.plan.scatter(g)

    @property
    def c(self):
        """Cell state after every step, (T, B, H); zero at padded positions."""
        c = self.saved[5]
        return c if self.plan is None else self.plan.scatter(c)


def _forward_direction(impl, packed, x, h0, c0, nthreads, plan=None, reverse=False):
    """One direction over padded x (T, B, I): returns (y (T, B, H), h_n, c_n, saved).

    ``reverse`` reads every sequence backwards (from its own last valid step
    when ``plan`` holds lengths); y is returned in the original time order.
    """
    if plan is None:
        xin = np.ascontiguousarray(x[::-1]) if reverse else x
        y, h_n, c_n, gates, c = impl.forward(packed, xin, h0, c0, nthreads)
        return (y[::-1] if reverse else y), h_n, c_n, (xin, h0, c0, y, gates, c)
    xin, h0s, c0s = plan.gather(x, reverse), plan.sort(h0), plan.sort(c0)
    y, h_n, c_n, gates, c = impl.forward(packed, xin, h0s, c0s, nthreads, plan.batch_sizes)
    return (plan.scatter(y, reverse), plan.unsort(h_n), plan.unsort(c_n),
            (xin, h0s, c0s, y, gates, c))


def _backward_direction(impl, packed, saved, dy, dh_n, dc_n, nthreads, plan=None, reverse=False):
    """Backward of ``_forward_direction``: returns (dx (T, B, I), dw_ih, dw_hh, db, dh0, dc0, dw_hr),
    dw_hr None without a projection."""
    xin, h0, c0, y, gates, c = saved
    if plan is None:
        dyin = np.ascontiguousarray(dy[::-1] if reverse else dy)
        dx, dw_ih, dw_hh, db, dh0, dc0, *dw_hr = impl.backward(
            packed, xin, h0, c0, y, gates, c, dyin, dh_n, dc_n, nthreads)
        dx = dx[::-1] if reverse else dx
    else:
        dx, dw_ih, dw_hh, db, dh0, dc0, *dw_hr = impl.backward(
            packed, xin, h0, c0, y, gates, c, plan.gather(dy, reverse),
            plan.sort(dh_n), plan.sort(dc_n), nthreads, plan.batch_sizes)
        dx, dh0, dc0 = plan.scatter(dx, reverse), plan.unsort(dh0), plan.unsort(dc0)
    return dx, dw_ih, dw_hh, db, dh0, dc0, (dw_hr[0] if dw_hr else None)


def pack_weights(impl, name, w_ih, w_hh, b, w_hr=None):
    """impl.pack, with a clear error when the backend lacks a projection."""
    if w_hr is None:
        return impl.pack(w_ih, w_hh, b)
    if not getattr(impl, "SUPPORTS_PROJECTION", False):
        raise NotImplementedError(
            f"backend {name!r} does not support a projection (proj_size > 0) yet; "
            f"use backend='numpy' for it")
    return impl.pack(w_ih, w_hh, b, w_hr)


def make_plan(lengths, T, B):
    """A LengthPlan for validated lengths, or None when every sequence is full."""
    if lengths is None or np.all(lengths == T):
        return None
    return LengthPlan(lengths, T, B)


class LSTMResult(NamedTuple):
    """Output of ``lstm_forward``: unpacks as ``y, h_n, c_n, cache``."""
    y: np.ndarray        #: (T, B, H) hidden state at every step
    h_n: np.ndarray      #: (B, H) final hidden state
    c_n: np.ndarray      #: (B, H) final cell state
    cache: LSTMCache     #: input for lstm_backward


class LSTMGrads(NamedTuple):
    """Gradients returned by ``lstm_backward``, named after the arguments of ``lstm_forward``."""
    dx: np.ndarray                #: (T, B, I)
    dw_ih: np.ndarray             #: (4H, I)
    dw_hh: np.ndarray             #: (4H, H)
    db_ih: Optional[np.ndarray]   #: (4H,), None if the forward call had no bias
    db_hh: Optional[np.ndarray]   #: (4H,), equal to db_ih
    dh0: np.ndarray               #: (B, H), (B, P) with a projection
    dc0: np.ndarray               #: (B, H)
    dw_hr: Optional[np.ndarray] = None   #: (P, H) with a projection, else None


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None,
                 lengths=None, backend="auto"):
    """Run one LSTM layer over a sequence.

    Parameters follow torch.nn.LSTM (gate order i, f, g, o):
    x (T, B, I); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or both None;
    h0, c0 (B, H) or None for zeros; w_hr (P, H) for a projection (torch's
    proj_size = P: then w_hh is (4H, P), h0, h_n and y have P columns and the
    gradients include dw_hr). The dtype (float32 or float64) is that of
    ``w_ih``; see ``lstm_fast._validation`` for the conversion rules.

    ``lengths`` (B,) integers in [0, T], any order: sequence b is
    ``x[:lengths[b], b]``; its h_n, c_n come from its own last valid step and y
    is exactly zero past it. Work scales with the sum of lengths.

    Returns ``LSTMResult(y, h_n, c_n, cache)``; pass ``cache`` to
    ``lstm_backward``. T = 0 is allowed: y is empty and h_n, c_n equal h0, c0.
    """
    name = backends.resolve(backend)
    w_ih, w_hh, b, w_hr, dtype, I, H, P = _validation.weights(w_ih, w_hh, b_ih, b_hh, w_hr)
    x = _validation.sequence(x, "x", dtype, I)
    B = x.shape[1]
    h0 = _validation.state(h0, "h0", dtype, B, P)
    c0 = _validation.state(c0, "c0", dtype, B, H)
    plan = make_plan(_validation.lengths(lengths, B, x.shape[0]), x.shape[0], B)
    impl = backends.get(name)
    packed = pack_weights(impl, name, w_ih, w_hh, b, w_hr)
    y, h_n, c_n, saved = _forward_direction(impl, packed, x, h0, c0, backends.get_num_threads(), plan)
    cache = LSTMCache(name, packed, dtype, b is not None, (x.shape[0], B, H, P), saved, plan)
    return LSTMResult(y, h_n, c_n, cache)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for a forward call.

    ``dy`` (T, B, H), ``dh_n`` and ``dc_n`` (B, H) are the gradients of the loss
    with respect to ``y``, ``h_n`` and ``c_n``; None means zero. Returns
    ``LSTMGrads(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr)``.
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError(f"cache must be the LSTMCache returned by lstm_forward, got {type(cache).__name__}")
    T, B, H, P = cache.shape
    dtype = cache.dtype
    if dy is None:
        dy = np.zeros((T, B, P), dtype)
    else:
        dy = _validation.as_array(dy, "dy", dtype, (T, B, P))
    dh_n = _validation.state(dh_n, "dh_n", dtype, B, P)
    dc_n = _validation.state(dc_n, "dc_n", dtype, B, H)
    impl = backends.get(cache.backend)
    dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = _backward_direction(
        impl, cache.packed, cache.saved, dy, dh_n, dc_n, backends.get_num_threads(), cache.plan)
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr)
