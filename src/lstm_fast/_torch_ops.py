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

from . import _params, _validation, backends
from .functional import LSTMCache, run_backward, run_forward

_PACKS = {}          # (backend, dtype, shapes, data pointers) -> (weakrefs, versions, Packed)
_PACKS_MAX = 64
calls = {"forward": 0, "backward": 0}     # kernel calls through the operators (for tests)


def _np(t):
    return t.detach().contiguous().numpy()


def _tensor(a):
    """A tensor of ``a`` (copied if it has negative strides, which a reversed array of
    size-1 axes keeps through ``np.ascontiguousarray``)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if min(a.strides, default=0) >= 0 else a.copy())


def _weights(w_ih, w_hh, b_ih, b_hh, w_hr, peep=(None, None, None)):
    return [t for t in (w_ih, w_hh, b_ih, b_hh, w_hr) + tuple(peep) if t is not None]


def pack_direction(impl, w_ih, w_hh, b, w_hr, peep, clip, cell_clip, cifg, out=None, ln=None):
    """``impl.pack`` of one layer-direction from NumPy arrays, with the variants (issue 15):
    ``peep`` None or (3, H) rows w_ci, w_cf, w_co; coupled gates: the 3H rows (i, g, o)
    handed on as the kernels' 4H rows (``_params.cifg_expand``); ``ln`` None or the (10H,)
    layer-norm parameters (``backends.Variant.layer_norm``)."""
    if peep is None and not clip and not cell_clip and not cifg and ln is None:
        return impl.pack(w_ih, w_hh, b, w_hr, out=out)
    if cifg:
        w_ih, w_hh, b = map(_params.cifg_expand, (w_ih, w_hh, b))
    return impl.pack(w_ih, w_hh, b, w_hr, out=out,
                     variant=backends.Variant(peep, float(clip), float(cell_clip), bool(cifg), ln))


def _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr, peep=(None, None, None), clip=0.0,
            cell_clip=0.0, cifg=False):
    """The packed weights, packed again when any weight tensor is another one or its
    version counter moved (the peephole weights included)."""
    ws = _weights(w_ih, w_hh, b_ih, b_hh, w_hr, peep)
    key = (name, w_ih.dtype, b_ih is None, w_hr is None, peep[0] is None, clip, cell_clip, cifg,
           tuple((t.data_ptr(), tuple(t.shape)) for t in ws))
    versions = tuple(t._version for t in ws)
    e = _PACKS.get(key)
    if e is not None and e[1] == versions and all(r() is t for r, t in zip(e[0], ws)):
        return e[2]
    b = None if b_ih is None else _np(b_ih + b_hh)
    p = None if peep[0] is None else np.stack([_np(t) for t in peep])
    packed = pack_direction(impl, _np(w_ih), _np(w_hh), b, None if w_hr is None else _np(w_hr),
                            p, clip, cell_clip, cifg)
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
              reverse: bool, backend: str, w_ci: Optional[Tensor] = None,
              w_cf: Optional[Tensor] = None, w_co: Optional[Tensor] = None, clip: float = 0.0,
              cell_clip: float = 0.0, cifg: bool = False
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer-direction; the variants (issue 15): peephole weights w_ci, w_cf, w_co (H,)
    (all or none), clip, cell_clip (0: off), cifg (w_ih, w_hh, b_ih, b_hh of 3H rows)."""
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr, (w_ci, w_cf, w_co), clip,
                     cell_clip, cifg)
    T, B = x.shape[0], x.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], c0.shape[1])
    y, h_n, c_n, cache = run_forward(impl, packed, _np(x), _np(h0), _np(c0), nt, None,
                                     reverse, True)
    calls["forward"] += 1
    _, _, _, _, gates, c = cache.saved
    return tuple(_tensor(a) for a in (y, h_n, c_n, gates, c))


@direction.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, w_ci=None, w_cf=None,
      w_co=None, clip=0.0, cell_clip=0.0, cifg=False):
    T, B = x.shape[0], x.shape[1]
    R, H = h0.shape[1], c0.shape[1]
    return (x.new_empty(T, B, R), x.new_empty(B, R), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T, B, H))


@torch.library.custom_op("lstm_fast::direction_inference", mutates_args=())
def direction_inference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                        reverse: bool, backend: str, w_ci: Optional[Tensor] = None,
                        w_cf: Optional[Tensor] = None, w_co: Optional[Tensor] = None,
                        clip: float = 0.0, cell_clip: float = 0.0, cifg: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """``direction`` keeping nothing for backward (no gates, no c): (y, h_n, c_n). For calls
    that need no gradient (no_grad, inference_mode, nothing requiring grad); no autograd."""
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr, (w_ci, w_cf, w_co), clip,
                     cell_clip, cifg)
    T, B = x.shape[0], x.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], c0.shape[1])
    y, h_n, c_n, _ = run_forward(impl, packed, _np(x), _np(h0), _np(c0), nt, None, reverse, False)
    calls["forward"] += 1
    return tuple(_tensor(a) for a in (y, h_n, c_n))


@direction_inference.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, w_ci=None, w_cf=None,
      w_co=None, clip=0.0, cell_clip=0.0, cifg=False):
    T, B = x.shape[0], x.shape[1]
    return x.new_empty(T, B, h0.shape[1]), x.new_empty(B, h0.shape[1]), x.new_empty(B, c0.shape[1])


def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, peep=(None, None, None),
        clip=0.0, cell_clip=0.0, cifg=False):
    """(y, h_n, c_n) through ``direction`` when a gradient may be needed, else through
    ``direction_inference`` (decided while tracing: Dynamo specializes on grad mode and
    requires_grad). ``peep``, clip, cell_clip, cifg: the variants (see ``direction``)."""
    kw = {} if peep[0] is None and not clip and not cell_clip and not cifg else dict(
        w_ci=peep[0], w_cf=peep[1], w_co=peep[2], clip=float(clip), cell_clip=float(cell_clip),
        cifg=bool(cifg))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in
                                       (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) + tuple(peep)):
        return direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, **kw)[:3]
    return direction_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, **kw)


# --- A whole stack without gradients as one operator ------------------------------------
# Defined on torch.library's low-level Library, with the CPU kernel registered directly:
# ``custom_op`` wraps its kernels in Python layers (an Autograd kernel that walks every
# argument, output alias checks) that cost ~10-15 us per call (inference_mode: ~4), more than
# the kernel at small shapes; a plain CPU kernel costs the dispatcher's ~2-3 us. It needs no
# autograd: it is only called when no gradient can be needed (``stack_applies``).

_LIB = torch.library.Library("lstm_fast", "FRAGMENT")   # noqa: TOR901
_LIB.define(
    "stack_inference(Tensor x, Tensor? h0, Tensor? c0, Tensor[] weights, Tensor[] peepholes, "
    "int num_layers, bool bidirectional, bool bias, int hidden_size, int proj_size, "
    "str backend, float clip=0.0, float cell_clip=0.0, bool cifg=False) "
    "-> (Tensor, Tensor, Tensor)")


def _stack_inference(x, h0, c0, weights, peepholes, num_layers, bidirectional, bias,
                     hidden_size, proj_size, backend, clip=0.0, cell_clip=0.0, cifg=False):
    """Every layer and direction of a stack over time-major x (T, B, I), nothing kept for
    backward: (y (T, B, D*R), h_n (L*D, B, R), c_n (L*D, B, H)); h0, c0 None for zeros;
    weights torch's flat list (``_flat_weights_names`` order), peepholes 3 per
    layer-direction or empty. The eager module's no-gradient route, as one operator."""
    impl, name = _impl(backend)
    D = 2 if bidirectional else 1
    n, H = num_layers * D, hidden_size
    R = proj_size or H
    per = len(weights) // n
    xs = _np(x)
    dtype = xs.dtype
    T, B = xs.shape[0], xs.shape[1]
    nt = backends.threads_for(T, B, xs.shape[2], H)
    h_n, c_n = np.empty((n, B, R), dtype), np.empty((n, B, H), dtype)
    h0s = np.zeros((n, B, R), dtype) if h0 is None else _np(h0)
    c0s = np.zeros((n, B, H), dtype) if c0 is None else _np(c0)
    inp = xs
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = weights[k * per:(k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
            peep = tuple(peepholes[3 * k:3 * k + 3]) if peepholes else (None, None, None)
            packed = _packed(impl, name, w[0], w[1], b_ih, b_hh, w[-1] if proj_size else None,
                             peep, clip, cell_clip, cifg)
            outs.append(run_forward(impl, packed, inp, h0s[k], c0s[k], nt, None, d == 1, False,
                                    (h_n[k], c_n[k]))[0])
            calls["forward"] += 1
        inp = outs[0] if D == 1 else np.concatenate(outs, 2)
    return _tensor(inp), torch.from_numpy(h_n), torch.from_numpy(c_n)


def _stack_inference_fake(x, h0, c0, weights, peepholes, num_layers, bidirectional, bias,
                          hidden_size, proj_size, backend, clip=0.0, cell_clip=0.0, cifg=False):
    D = 2 if bidirectional else 1
    T, B, R = x.shape[0], x.shape[1], proj_size or hidden_size
    return (x.new_empty(T, B, D * R), x.new_empty(num_layers * D, B, R),
            x.new_empty(num_layers * D, B, hidden_size))


_LIB.impl("stack_inference", _stack_inference, "CPU")
torch.library.register_fake("lstm_fast::stack_inference", _stack_inference_fake, lib=_LIB)
stack_inference = torch.ops.lstm_fast.stack_inference.default


def needs_grad(*tensors):
    """Whether a call on these tensors (None allowed) may need a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@torch.library.custom_op("lstm_fast::direction_backward", mutates_args=())
def direction_backward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                       y: Tensor, gates: Tensor, c: Tensor, dy: Tensor, dh_n: Tensor,
                       dc_n: Tensor, reverse: bool, backend: str, w_ci: Optional[Tensor] = None,
                       w_cf: Optional[Tensor] = None, w_co: Optional[Tensor] = None,
                       clip: float = 0.0, cell_clip: float = 0.0, cifg: bool = False,
                       need_dx: bool = True
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, dpeephole); db is empty without a bias, dw_hr
    without a projection and dpeephole (3, H) without peepholes (an operator returns
    tensors only); with cifg the gradients of the 3H-row weights. need_dx False: dx is
    not computed and empty (a model's first layer, as the eager module's need_dx)."""
    impl, name = _impl(backend)
    packed = _packed(impl, name, w_ih, w_hh, b_ih, b_hh, w_hr, (w_ci, w_cf, w_co), clip,
                     cell_clip, cifg)
    xs, ys = _np(x), _np(y)
    if reverse:     # as the kernel saw them (run_forward)
        xs, ys = np.ascontiguousarray(xs[::-1]), np.ascontiguousarray(ys[::-1])
    cache = LSTMCache(impl, packed, (xs, _np(h0), _np(c0), ys, _np(gates), _np(c)), None, reverse)
    T, B = x.shape[0], x.shape[1]
    H = c0.shape[1]
    nt = backends.threads_for(T, B, x.shape[2], H)
    dp = None if w_ci is None else _validation.empty_lines((3, H), xs.dtype)
    dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = run_backward(cache, _np(dy), _np(dh_n), _np(dc_n), nt,
                                                         dpeephole=dp, need_dx=need_dx)
    if cifg:    # the kernels' 4H rows -> i, g, o
        dw_ih, dw_hh, db = map(_params.cifg_compress, (dw_ih, dw_hh, db))
    calls["backward"] += 1
    empty = np.empty(0, xs.dtype)
    return tuple(_tensor(a) for a in (
        empty if dx is None else dx, dh0, dc0, dw_ih, dw_hh, empty if db is None else db,
        empty if dw_hr is None else dw_hr, empty if dp is None else dp))


@direction_backward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, dy, dh_n, dc_n, reverse, backend,
      w_ci=None, w_cf=None, w_co=None, clip=0.0, cell_clip=0.0, cifg=False, need_dx=True):
    return (torch.empty_like(x) if need_dx else x.new_empty(0),
            torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(0) if b_ih is None else torch.empty_like(b_ih),
            x.new_empty(0) if w_hr is None else torch.empty_like(w_hr),
            x.new_empty(0) if w_ci is None else x.new_empty(3, c0.shape[1]))


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, backend, w_ci, w_cf, w_co, clip, \
        cell_clip, cifg = inputs
    y, _, _, gates, c = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, w_ci, w_cf, w_co)
    ctx.args = (reverse, backend, clip, cell_clip, cifg)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dc):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, w_ci, w_cf, w_co = ctx.saved_tensors
    reverse, backend, clip, cell_clip, cifg = ctx.args
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    kw = {} if w_ci is None and not clip and not cell_clip and not cifg else dict(
        w_ci=w_ci, w_cf=w_cf, w_co=w_co, clip=clip, cell_clip=cell_clip, cifg=cifg)
    need_dx = ctx.needs_input_grad[0]
    if not need_dx:     # a model's first layer: no product for dx (the eager module's need_dx)
        kw["need_dx"] = False
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, dp = direction_backward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, c, dy, dh_n, dc_n, reverse, backend,
        **kw)
    bias = b_ih is not None
    peep = (None, None, None) if w_ci is None else (dp[0], dp[1], dp[2])
    return (dx if need_dx else None, dh0, dc0, dw_ih, dw_hh, db if bias else None,
            db.clone() if bias else None,
            dw_hr if w_hr is not None else None, None, None) + peep + (None, None, None)


direction.register_autograd(_backward, setup_context=_setup_context)
