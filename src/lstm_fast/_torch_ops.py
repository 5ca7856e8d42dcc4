"""lstm_fast's kernels as PyTorch custom operators, for torch.compile and torch.export.

``torch.ops.lstm_fast.direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend)``
runs one layer-direction over padded, time-major x (T, B, I) and returns
``(y (T, B, R), h_n, c_n, gates, c)`` (gates and c: what backward needs);
``torch.ops.lstm_fast.direction_backward`` is its backward, registered as its autograd
formula. Both have fake (meta) implementations, so torch.compile traces them without a
graph break and runs the kernels inside the compiled graph; torch.export records them.
``lstm_fast.torch.LSTM`` and ``LSTMCell`` call them while compiling; eager calls keep the
direct route (the module's own packed-weights cache and autograd.Function, no dispatcher
cost).

An operator cannot take the module's Packed object, so the weights are packed here, kept
per weight storage and checked against the tensors' version counters at every call (as the
modules do): an optimizer step, ``load_state_dict`` or any in-place write packs them again.
"""

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import backends
from .functional import LSTMCache, run_backward, run_forward

_PACKS = {}          # (backend, dtype, shapes, data pointers) -> (weakrefs, versions, Packed)
_PACKS_MAX = 64
calls = {"forward": 0, "backward": 0}     # kernel calls through the operators (for tests)


def _np(t):
    return t.detach().contiguous().numpy()


def _weights(w_ih, w_hh, b_ih, b_hh, w_hr):
    return [t for t in (w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]


def _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr):
    """The packed weights, packed again when any weight tensor is another one or its
    version counter moved."""
    ws = _weights(w_ih, w_hh, b_ih, b_hh, w_hr)
    key = (name, w_ih.dtype, b_ih is None, w_hr is None,
           tuple((t.data_ptr(), tuple(t.shape)) for t in ws))
    versions = tuple(t._version for t in ws)
    e = _PACKS.get(key)
    if e is not None and e[1] == versions and all(r() is t for r, t in zip(e[0], ws)):
        return e[2]
    b = None if b_ih is None else _np(b_ih + b_hh)
    packed = impl.pack(_np(w_ih), _np(w_hh), b, None if w_hr is None else _np(w_hr))
    if len(_PACKS) >= _PACKS_MAX:
        _PACKS.clear()
    import weakref
    _PACKS[key] = ([weakref.ref(t) for t in ws], versions, packed)
    return packed


def _impl(backend):
    name = backends.resolve(backend)
    return backends.get(name), name


@torch.library.custom_op("lstm_fast::direction", mutates_args=())
def direction(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
              reverse: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr)
    T, B = x.shape[0], x.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], w_hh.shape[0] // 4)
    y, h_n, c_n, cache = run_forward(impl, packed, _np(x), _np(h0), _np(c0), nt, None,
                                     reverse, True)
    calls["forward"] += 1
    _, _, _, _, gates, c = cache.saved
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (y, h_n, c_n, gates, c))


@direction.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend):
    T, B = x.shape[0], x.shape[1]
    G, R = w_hh.shape
    H = G // 4
    return (x.new_empty(T, B, R), x.new_empty(B, R), x.new_empty(B, H), x.new_empty(T, B, G),
            x.new_empty(T, B, H))


@torch.library.custom_op("lstm_fast::direction_inference", mutates_args=())
def direction_inference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                        reverse: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``direction`` keeping nothing for backward (no gates, no c): (y, h_n, c_n). For calls
    that need no gradient (no_grad, inference_mode, nothing requiring grad); no autograd."""
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr)
    T, B = x.shape[0], x.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], w_hh.shape[0] // 4)
    y, h_n, c_n, _ = run_forward(impl, packed, _np(x), _np(h0), _np(c0), nt, None, reverse, False)
    calls["forward"] += 1
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (y, h_n, c_n))


@direction_inference.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend):
    T, B = x.shape[0], x.shape[1]
    G, R = w_hh.shape
    return x.new_empty(T, B, R), x.new_empty(B, R), x.new_empty(B, G // 4)


def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend):
    """(y, h_n, c_n) through ``direction`` when a gradient may be needed, else through
    ``direction_inference`` (decided while tracing: Dynamo specializes on grad mode and
    requires_grad)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)):
        return direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend)[:3]
    return direction_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend)


@torch.library.custom_op("lstm_fast::direction_backward", mutates_args=())
def direction_backward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                       y: Tensor, gates: Tensor, c: Tensor, dy: Tensor, dh_n: Tensor,
                       dc_n: Tensor, reverse: bool, backend: str
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr); db is empty without a bias and dw_hr
    without a projection (an operator returns tensors only)."""
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr)
    xs, ys = _np(x), _np(y)
    if reverse:     # as the kernel saw them (run_forward)
        xs, ys = np.ascontiguousarray(xs[::-1]), np.ascontiguousarray(ys[::-1])
    cache = LSTMCache(impl, packed, (xs, _np(h0), _np(c0), ys, _np(gates), _np(c)), None, reverse)
    T, B = x.shape[0], x.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], w_hh.shape[0] // 4)
    dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = run_backward(cache, _np(dy), _np(dh_n), _np(dc_n), nt)
    calls["backward"] += 1
    empty = np.empty(0, xs.dtype)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (
        dx, dh0, dc0, dw_ih, dw_hh, empty if db is None else db, empty if dw_hr is None else dw_hr))


@direction_backward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, dy, dh_n, dc_n, reverse, backend):
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(0) if b_ih is None else torch.empty_like(b_ih),
            x.new_empty(0) if w_hr is None else torch.empty_like(w_hr))


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend = inputs
    y, _, _, gates, c = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c)
    ctx.args = (reverse, backend)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dc):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c = ctx.saved_tensors
    reverse, backend = ctx.args
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = direction_backward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, dy, dh_n, dc_n, reverse, backend)
    bias = b_ih is not None
    return (dx, dh0, dc0, dw_ih, dw_hh, db if bias else None, db.clone() if bias else None,
            dw_hr if w_hr is not None else None, None, None)


direction.register_autograd(_backward, setup_context=_setup_context)
