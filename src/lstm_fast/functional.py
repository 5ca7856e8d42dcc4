"""Functional API: one LSTM layer, one direction, time-major.

    y, h_n, c_n, cache = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    grads = lstm_backward(cache, dy, dh_n, dc_n)

Arguments are validated once here (see ``_validation``) and handed to the
backend chosen by ``backend`` ("auto", "c", "numba", "numpy").
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _backends, _validation


class LSTMCache:
    """What ``lstm_backward`` needs from a forward call. Treat as opaque."""

    __slots__ = ("backend", "packed", "dtype", "has_bias", "x", "h0", "c0", "y", "gates", "c")

    def __init__(self, backend, packed, dtype, has_bias, x, h0, c0, y, gates, c):
        self.backend = backend
        self.packed = packed
        self.dtype = dtype
        self.has_bias = has_bias
        self.x = x
        self.h0 = h0
        self.c0 = c0
        self.y = y
        self.gates = gates
        self.c = c


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
    dh0: np.ndarray               #: (B, H)
    dc0: np.ndarray               #: (B, H)


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, backend="auto"):
    """Run one LSTM layer over a sequence.

    Parameters follow torch.nn.LSTM (gate order i, f, g, o):
    x (T, B, I); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or both None;
    h0, c0 (B, H) or None for zeros. The dtype (float32 or float64) is that of
    ``w_ih``; see ``lstm_fast._validation`` for the conversion rules.

    Returns ``LSTMResult(y, h_n, c_n, cache)``; pass ``cache`` to
    ``lstm_backward``. T = 0 is allowed: y is empty and h_n, c_n equal h0, c0.
    """
    name = _backends.resolve(backend)
    w_ih, w_hh, b, dtype, I, H = _validation.weights(w_ih, w_hh, b_ih, b_hh)
    x = _validation.sequence(x, "x", dtype, I)
    B = x.shape[1]
    h0 = _validation.state(h0, "h0", dtype, B, H)
    c0 = _validation.state(c0, "c0", dtype, B, H)
    impl = _backends.get(name)
    packed = impl.pack(w_ih, w_hh, b)
    y, h_n, c_n, gates, c = impl.forward(packed, x, h0, c0, _backends.get_num_threads())
    cache = LSTMCache(name, packed, dtype, b is not None, x, h0, c0, y, gates, c)
    return LSTMResult(y, h_n, c_n, cache)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for a forward call.

    ``dy`` (T, B, H), ``dh_n`` and ``dc_n`` (B, H) are the gradients of the loss
    with respect to ``y``, ``h_n`` and ``c_n``; None means zero. Returns
    ``LSTMGrads(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0)``.
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError(f"cache must be the LSTMCache returned by lstm_forward, got {type(cache).__name__}")
    T, B, H = cache.y.shape
    dtype = cache.dtype
    if dy is None:
        dy = np.zeros((T, B, H), dtype)
    else:
        dy = _validation.as_array(dy, "dy", dtype, (T, B, H))
    dh_n = _validation.state(dh_n, "dh_n", dtype, B, H)
    dc_n = _validation.state(dc_n, "dc_n", dtype, B, H)
    impl = _backends.get(cache.backend)
    dx, dw_ih, dw_hh, db, dh0, dc0 = impl.backward(
        cache.packed, cache.x, cache.h0, cache.c0, cache.y, cache.gates, cache.c,
        dy, dh_n, dc_n, _backends.get_num_threads())
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0)
