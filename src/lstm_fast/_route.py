# cython: auto_pickle=False
"""The one route from padded, time-major arrays to a backend, and ``LSTM``'s per-call work.

* ``run_forward`` / ``run_backward``: one layer-direction (reversal for the second
  direction, lengths through a ``LengthPlan``); ``LSTMCache`` is the one cache format.
  ``functional`` (``lstm_forward``/``lstm_backward``), ``LSTM``, ``Stream`` and
  ``lstm_fast.torch`` all call these.
* ``bias_grads`` / ``grads_by_name``: the kernels' gradients under the parameters' names
  (both bias gradients from the one db); ``_params`` re-exports them.
* ``layer_forward`` / ``layer_backward``: the bodies of ``LSTM.forward`` and
  ``LSTM.backward`` (every layer and direction, lengths, dropout, the gradients by name);
  ``LayerBase``: ``LSTM``'s base, whose ``forward``, ``__call__`` and ``backward`` call them,
  and the layer's fields that they read on every call.

Compiled with Cython beside this file, as ``_validation`` is (the types in _route.pxd):
at small sizes a training step costs a few microseconds, and the Python frames and
tuples between the layer and the kernel were a third of it. The .py alone runs where
the extension is not built.
"""

import numpy as np

from . import _validation, backends
from ._lengths import LengthPlan


class LSTMCache:
    """What backward needs from one layer-direction's forward call. Treat as opaque.

    Returned by `lstm_forward` (``result.cache``) and passed to `lstm_backward`.

    Attributes
    ----------
    backend : str
        Name of the backend that ran the forward call.
    gates : numpy.ndarray
        Activated gates i, f, g, o, (T, B, 4H); zero at padded positions.
    c : numpy.ndarray
        Cell state after every step, (T, B, H); zero at padded positions.

    bfloat16 training on the C backend keeps gates and c as bfloat16 bit patterns
    (uint16, half the bytes of float32); these two attributes give their float32 values.

    Examples
    --------
    >>> x, w_ih, w_hh = np.ones((4, 2, 3)), np.full((8, 3), 0.1), np.full((8, 2), 0.1)
    >>> cache = lstm_fast.lstm_forward(x, w_ih, w_hh, backend="numpy").cache
    >>> cache.backend, cache.gates.shape, cache.c.shape
    ('numpy', (4, 2, 8), (4, 2, 2))
    """

    # impl: the backend module; packed: its packed weights; saved: (x, h0, c0, y, gates, c)
    # as the backend saw them, then (rdrop, zoneout) with a mask, then (stats,) with layer
    # norm; plan: LengthPlan or None; reverse: the second direction (time reversed).
    # A class rather than a NamedTuple: compiled (a cdef class, _route.pxd), the route makes
    # one and reads its fields as C fields (a tuple subclass costs ~1,400 instructions a
    # training step more: its construction through tuple.__new__ and reads by index).
    __slots__ = ("impl", "packed", "saved", "plan", "reverse")

    def __init__(self, impl, packed, saved, plan, reverse):
        self.impl = impl
        self.packed = packed
        self.saved = saved
        self.plan = plan
        self.reverse = reverse

    @property
    def backend(self):
        """Name of the backend that ran the forward call."""
        return backends.name_of(self.impl)

    @property
    def gates(self):
        """Activated gates i, f, g, o, (T, B, 4H); zero at padded positions."""
        return self._padded(_values(self.saved[4]))

    @property
    def c(self):
        """Cell state after every step, (T, B, H); zero at padded positions."""
        return self._padded(_values(self.saved[5]))

    def _padded(self, a):
        if self.plan is not None:
            return self.plan.scatter(a, self.reverse)
        return a[::-1] if self.reverse else a


def _values(a):
    """Saved gates or c as float32 values (bfloat16 bit patterns widened)."""
    from .backends.reference import bf16_values     # (not imported before it is needed)
    return bf16_values(a)


def _make_cache(impl, packed, saved, plan, reverse):
    """An LSTMCache (compiled: its fields set as C fields, no argument tuple)."""
    cache = LSTMCache.__new__(LSTMCache)
    cache.impl = impl
    cache.packed = packed
    cache.saved = saved
    cache.plan = plan
    cache.reverse = reverse
    return cache


def run_forward(impl, packed, x, h0, c0, num_threads, plan=None, reverse=False, save=True,
                out=None, rdrop=None, zoneout=None, ln=False, inputs=None):
    """One layer-direction over padded x (T, B, I): ``(y (T, B, R), h_n, c_n, cache)``;
    h0 (B, R) and c0 (B, H), or (1, B, R) and (1, B, H), and h_n, c_n in their shapes.

    ``reverse`` reads every sequence backwards (from its own last valid step when
    ``plan`` holds lengths); y is returned in the original time order. The final
    states h_n (B, R), c_n (B, H) are new arrays, or ``out = (h_n, c_n)``. ``cache`` is
    an ``LSTMCache``, or None when ``save`` is false (nothing is kept for backward).
    ``rdrop`` (B, R): the recurrent dropout mask of the sequences (scaled), or None;
    ``zoneout`` (T, B, H): the zoneout mask in x's time order, or None; the cache keeps them
    (``saved[6:8]``) for backward. ``ln``: the packed weights are a layer-normalized LSTM's
    (``packed.variant.layer_norm``): the rows' statistics are kept too (``saved[8]``).
    ``inputs``: the calling layer's ``_validation.LayerInputs`` bound to ``impl``; the
    plain padded call then goes through it (``call_forward``: a C call for the C backend).
    """
    if ln:
        return _run_forward_ln(impl, packed, x, h0, c0, num_threads, plan, reverse, save, out,
                               rdrop, zoneout)
    if plan is None:
        xin = np.ascontiguousarray(x[::-1]) if reverse else x
        if zoneout is not None:
            if reverse:
                zoneout = np.ascontiguousarray(zoneout[::-1])
            y, h_n, c_n, gates, c = impl.forward(packed, xin, h0, c0, num_threads, None, save,
                                                 None if out is None else (None,) + out,
                                                 rdrop=rdrop, zoneout=zoneout)
            saved = (xin, h0, c0, y, gates, c, rdrop, zoneout)
        elif rdrop is None:
            if inputs is None:
                y, h_n, c_n, gates, c = impl.forward(packed, xin, h0, c0, num_threads, None,
                                                     save, None if out is None else (None,) + out)
            else:
                inputs.call_forward(packed, xin, h0, c0, num_threads, save,
                                    None if out is None else (None,) + out)
                y, h_n, c_n, gates, c = inputs.y, inputs.h_n, inputs.c_n, inputs.gates, inputs.c
                inputs.y = inputs.h_n = inputs.c_n = inputs.gates = inputs.c = None
            saved = (xin, h0, c0, y, gates, c)
        else:
            y, h_n, c_n, gates, c = impl.forward(packed, xin, h0, c0, num_threads, None, save,
                                                 None if out is None else (None,) + out,
                                                 rdrop=rdrop)
            saved = (xin, h0, c0, y, gates, c, rdrop, None)
        if reverse:
            y = y[::-1]
    else:
        xin, h0s, c0s, rdrop, zoneout = _by_length(plan, reverse, x, h0, c0, rdrop, zoneout)
        if rdrop is None and zoneout is None:
            y, hs, cs, gates, c = impl.forward(packed, xin, h0s, c0s, num_threads,
                                               plan.batch_sizes, save)
        else:
            y, hs, cs, gates, c = impl.forward(packed, xin, h0s, c0s, num_threads,
                                               plan.batch_sizes, save, rdrop=rdrop,
                                               zoneout=zoneout)
        h_n, c_n = _in_caller_order(plan, h0, c0, hs, cs, out)
        saved = (xin, h0s, c0s, y, gates, c) if rdrop is None and zoneout is None else \
            (xin, h0s, c0s, y, gates, c, rdrop, zoneout)
        y = plan.scatter(y, reverse)
    return y, h_n, c_n, (_make_cache(impl, packed, saved, plan, reverse) if save else None)


def _by_length(plan, reverse, x, h0, c0, rdrop, zoneout):
    """The inputs of a forward over sequences of several lengths in the backend's order
    (rows packed step by step, longest sequence first): x, h0, c0, rdrop, zoneout."""
    xin = plan.gather(x, reverse)
    h0s, c0s = plan.sort(backends.as_matrix(h0)), plan.sort(backends.as_matrix(c0))
    return (xin, h0s, c0s, None if rdrop is None else plan.sort(rdrop),
            None if zoneout is None else plan.gather(zoneout, reverse))


def _in_caller_order(plan, h0, c0, hs, cs, out):
    """h_n, c_n (new, or ``out``) from the backend's final states ``hs``, ``cs`` in its order."""
    h_n, c_n = (np.empty(h0.shape, hs.dtype), np.empty(c0.shape, cs.dtype)) if out is None else out
    backends.as_matrix(h_n)[plan.order] = hs
    backends.as_matrix(c_n)[plan.order] = cs
    return h_n, c_n


def _run_forward_ln(impl, packed, x, h0, c0, num_threads, plan, reverse, save, out, rdrop,
                    zoneout):
    """``run_forward`` of a layer-normalized LSTM: the backend's forward also fills ``stats``
    (what backward needs of the rows' layer norms, (T, B, S) padded or (N, S) packed with
    S = ``backends.ln_stats_width(H)``, in the order the backend saw the rows), kept as
    ``saved[8]`` for backward."""
    S = backends.ln_stats_width(packed.hidden_size)
    if plan is None:
        xin = np.ascontiguousarray(x[::-1]) if reverse else x
        if zoneout is not None and reverse:
            zoneout = np.ascontiguousarray(zoneout[::-1])
        stats = _validation.empty_lines((xin.shape[0], xin.shape[1], S), xin.dtype) if save else None
        y, h_n, c_n, gates, c = impl.forward(packed, xin, h0, c0, num_threads, None, save,
                                             None if out is None else (None,) + out,
                                             rdrop=rdrop, zoneout=zoneout, stats=stats)
        saved = (xin, h0, c0, y, gates, c, rdrop, zoneout, stats)
        if reverse:
            y = y[::-1]
    else:
        xin, h0s, c0s, rdrop, zoneout = _by_length(plan, reverse, x, h0, c0, rdrop, zoneout)
        stats = _validation.empty_lines((plan.N, S), xin.dtype) if save else None
        y, hs, cs, gates, c = impl.forward(packed, xin, h0s, c0s, num_threads, plan.batch_sizes,
                                           save, rdrop=rdrop, zoneout=zoneout, stats=stats)
        h_n, c_n = _in_caller_order(plan, h0, c0, hs, cs, out)
        saved = (xin, h0s, c0s, y, gates, c, rdrop, zoneout, stats)
        y = plan.scatter(y, reverse)
    return y, h_n, c_n, (_make_cache(impl, packed, saved, plan, reverse) if save else None)


def run_backward(cache, dy, dh_n, dc_n, num_threads, out=None, dpeephole=None, dlayer_norm=None,
                 inputs=None, need_dx=True):
    """Backward of ``run_forward`` for dy (T, B, R) (any strides), dh_n (B, R), dc_n (B, H):
    ``(dx (T, B, I), dw_ih, dw_hh, db, dh0, dc0, dw_hr)``, db None without a bias and dw_hr
    None without a projection; dh0 and dc0 are new arrays, or ``out = (dh0, dc0)``.
    With peepholes, ``dpeephole`` (3, H) receives their gradients (rows ci, cf, co); with
    layer norm, ``dlayer_norm`` (10H,) those of ``packed.variant.layer_norm``.
    ``inputs``: as for ``run_forward``; the plain padded call goes through it
    (``call_backward``) and leaves its ``db2`` slot (the second bias gradient or None) for
    the caller. ``need_dx`` False: dx is None (the backend may skip it)."""
    impl = cache.impl
    packed = cache.packed
    saved = cache.saved
    plan = cache.plan
    reverse = cache.reverse
    rdrop = zoneout = stats = None
    if len(saved) == 6:
        xin, h0, c0, y, gates, c = saved
    elif len(saved) == 8:
        xin, h0, c0, y, gates, c, rdrop, zoneout = saved
    else:
        xin, h0, c0, y, gates, c, rdrop, zoneout, stats = saved
    if plan is None:
        if reverse or not (dy.flags.c_contiguous if inputs is None else inputs.c_order(dy)):
            dy = np.ascontiguousarray(dy[::-1] if reverse else dy)
        if stats is not None:
            dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = impl.backward(
                packed, xin, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads,
                dpeephole=dpeephole, rdrop=rdrop, zoneout=zoneout, stats=stats,
                dlayer_norm=dlayer_norm, need_dx=need_dx)
        elif rdrop is not None or zoneout is not None or not need_dx:
            dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = impl.backward(
                packed, xin, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads,
                dpeephole=dpeephole, rdrop=rdrop, zoneout=zoneout, need_dx=need_dx)
        elif dpeephole is None and inputs is not None and inputs.impl is impl:
            inputs.call_backward(packed, xin, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads)
            dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = (inputs.dx, inputs.dw_ih, inputs.dw_hh,
                                                     inputs.db, inputs.dh0, inputs.dc0,
                                                     inputs.dw_hr)
            inputs.dx = inputs.dw_ih = inputs.dw_hh = inputs.db = inputs.dh0 = None
            inputs.dc0 = inputs.dw_hr = None
        elif dpeephole is None:     # (a call with keywords costs a dict and a tuple)
            dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = impl.backward(
                packed, xin, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads)
        else:
            dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = impl.backward(
                packed, xin, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads,
                dpeephole=dpeephole)
        if reverse and dx is not None:
            dx = dx[::-1]
        if out is not None:
            out[0][...] = dh0
            out[1][...] = dc0
            dh0, dc0 = out
    else:
        masks = {} if rdrop is None and zoneout is None else dict(rdrop=rdrop, zoneout=zoneout)
        if stats is not None:
            masks.update(rdrop=rdrop, zoneout=zoneout, stats=stats, dlayer_norm=dlayer_norm)
        dx, dw_ih, dw_hh, db, dhs, dcs, dw_hr = impl.backward(
            packed, xin, h0, c0, y, gates, c, plan.gather(dy, reverse),
            plan.sort(backends.as_matrix(dh_n)), plan.sort(backends.as_matrix(dc_n)),
            num_threads, plan.batch_sizes, dpeephole=dpeephole, need_dx=need_dx, **masks)
        if dx is not None:
            dx = plan.scatter(dx, reverse)
        dh0, dc0 = (np.empty(dh_n.shape, dhs.dtype), np.empty(dc_n.shape, dcs.dtype)) \
            if out is None else out
        backends.as_matrix(dh0)[plan.order] = dhs
        backends.as_matrix(dc0)[plan.order] = dcs
    return dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr


def make_plan(lengths, T, B):
    """A LengthPlan for validated lengths, or None when every sequence is full."""
    if lengths is None or np.all(lengths == T):
        return None
    return LengthPlan(lengths, T, B)


def bias_grads(db, db2=None):
    """(grad of bias_ih, grad of bias_hh) from the kernels' db: the same values as separate
    arrays (or tensors), so that changing one in place leaves the other; (None, None) without
    a bias. ``db2``: a copy of db already made (the C backend's, ``LayerInputs.db2``), or None."""
    if db is None:
        return None, None
    if db2 is not None:
        return db, db2
    return db, (db.copy() if type(db) is np.ndarray else db.clone())


def grads_by_name(names, dw_ih, dw_hh, db, dw_hr, dpeephole=None, dlayer_norm=None, db2=None):
    """One layer-direction's gradients under ``names`` (from ``_params.direction_names``);
    ``dpeephole`` (3, H) the peephole weights' (rows ci, cf, co), or None; ``dlayer_norm``
    (10H,) the layer-norm parameters' (gains ih, hh, c and bias c, laid out as
    ``backends.Variant.layer_norm``; the last four names), or None; ``db2`` as for
    ``bias_grads``."""
    out = {names[0]: dw_ih, names[1]: dw_hh}
    k = 2
    if db is not None:
        out[names[2]], out[names[3]] = bias_grads(db, db2)
        k = 4
    if dw_hr is not None:
        out[names[k]] = dw_hr
        k += 1
    if dpeephole is not None:
        for name, g in zip(names[k:k + 3], dpeephole):
            out[name] = g
    if dlayer_norm is not None:
        H = dlayer_norm.shape[0] // 10
        out[names[-4]] = dlayer_norm[:4 * H]
        out[names[-3]] = dlayer_norm[4 * H:8 * H]
        out[names[-2]] = dlayer_norm[8 * H:9 * H]
        out[names[-1]] = dlayer_norm[9 * H:]
    return out


def direction_grads(inputs, k, dw_ih, dw_hh, db, dw_hr, dp, dln=None, db2=None):
    """Layer-direction k's gradients by name (``inputs``: the layer's LayerInputs; coupled
    gates: the kernels' 4H rows -> 3H)."""
    if inputs.cifg:
        from ._params import cifg_compress      # (_params imports this module)
        dw_ih, dw_hh, db = map(cifg_compress, (dw_ih, dw_hh, db))
        db2 = None
    return grads_by_name(inputs.names[k], dw_ih, dw_hh, db, dw_hr, dp, dln, db2)


# --- LSTM.forward and LSTM.backward ------------------------------------------------------

NOT_SAVED = "not saved"     # the cache after a forward call that kept nothing for backward
_NOT_SAVED = NOT_SAVED      # (a C variable when compiled: no look-up by name)


def layer_forward(layer, x, hx, lengths, save):
    """The body of ``LSTM.forward``: ``(output, (h_n, c_n))``; the cache for backward (or
    ``NOT_SAVED``) goes to ``layer._cache`` as (caches, masks, output shape, unbatched)."""
    batch_first = layer.batch_first
    inputs = layer._inputs
    x, h0, c0, unbatched = inputs.forward(x, hx, batch_first)
    xa = x          # (an ndarray: compiled, its dims are read without the shape tuple)
    T = xa.shape[0]
    B = xa.shape[1]
    plan = None if lengths is None else make_plan(_validation.lengths(lengths, B, T), T, B)
    if save is None:
        save = layer.training
    impl = inputs.impl
    packed = inputs.packed
    num_threads = inputs.threads(T, B)
    rdrop = inputs.recurrent_dropout > 0.0 and layer.training   # a mask per layer-direction
    zo = inputs.zoneout > 0.0
    if len(packed) == 1:   # one layer-direction: the states (1, B, R) as they are
        p = packed[0]
        y, h_n, c_n, cache = run_forward(impl, p if p is not None else layer._pack(0), x, h0,
                                         c0, num_threads, plan, False, save, None,
                                         layer._rdrop_mask(B) if rdrop else None,
                                         layer._zoneout_mask(T, B) if zo else None,
                                         inputs.layer_norm, inputs)
        caches = [cache]
        masks = ()
        shape = (T, B, inputs.out_size)     # y's (not y.shape: a look-up by name)
    else:
        D = 2 if layer.bidirectional else 1
        dtype = layer.dtype
        training = layer.training
        dropout = layer.dropout
        h_n, c_n = np.empty(h0.shape, dtype), np.empty(c0.shape, dtype)
        caches, masks = [], []
        y = x
        for k_layer in range(layer.num_layers):
            if k_layer and training and dropout > 0.0:
                masks.append(layer._dropout_mask(y.shape))
                y = y * masks[-1]
            outs = []
            for d in range(D):
                k = k_layer * D + d
                out, _, _, cache = run_forward(impl, layer._pack(k), y, h0[k], c0[k],
                                               num_threads, plan, d == 1, save,
                                               (h_n[k], c_n[k]),
                                               layer._rdrop_mask(B) if rdrop else None,
                                               layer._zoneout_mask(T, B) if zo else None,
                                               inputs.layer_norm, inputs)
                caches.append(cache)
                outs.append(out)
            y = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        shape = y.shape
    layer._cache = (caches, masks, shape, unbatched) if save else _NOT_SAVED
    if unbatched:
        return y[:, 0], (h_n[:, 0], c_n[:, 0])
    if batch_first:
        y = y.transpose(1, 0, 2)
    return y, (h_n, c_n)


def layer_backward(layer, grad_output, grad_hx):
    """The body of ``LSTM.backward``: ``(grad_x, (grad_h0, grad_c0))``; the parameter
    gradients go to ``layer.grads``."""
    cache = layer._cache
    if cache is None:
        raise RuntimeError("backward() called before a forward call")
    if cache is _NOT_SAVED:
        raise RuntimeError("the last forward call kept nothing for backward (eval mode or "
                           "save=False): call layer.train() first, or forward(..., save=True)")
    caches, masks, shape, unbatched = cache
    batch_first = layer.batch_first
    inputs = layer._inputs
    num_threads = inputs.threads(shape[0], shape[1])
    dout, dh_n, dc_n = inputs.backward(grad_output, grad_hx, shape, unbatched, batch_first)
    peephole = inputs.peephole
    ln = inputs.layer_norm
    H = inputs.hidden_size
    if len(caches) == 1:
        dp = _validation.empty_lines((3, H), inputs.dtype) if peephole else None
        dln = _validation.empty_lines(10 * H, inputs.dtype) if ln else None
        inputs.db2 = None
        dout, dw_ih, dw_hh, db, dh0, dc0, dw_hr = run_backward(caches[0], dout, dh_n, dc_n,
                                                               num_threads, None, dp, dln, inputs)
        db2 = inputs.db2
        inputs.db2 = None
        layer.grads = direction_grads(inputs, 0, dw_ih, dw_hh, db, dw_hr, dp, dln, db2)
    else:
        D = 2 if layer.bidirectional else 1
        R = layer.proj_size or H
        dtype = layer.dtype
        dh0, dc0 = np.empty(dh_n.shape, dtype), np.empty(dc_n.shape, dtype)
        grads = {}
        for k_layer in reversed(range(layer.num_layers)):
            dinp = None
            for d in range(D):
                k = k_layer * D + d
                dy = dout[:, :, d * R:(d + 1) * R] if D == 2 else dout
                dp = _validation.empty_lines((3, H), dtype) if peephole else None
                dln = _validation.empty_lines(10 * H, dtype) if ln else None
                inputs.db2 = None
                dx, dw_ih, dw_hh, db, _, _, dw_hr = run_backward(
                    caches[k], dy, dh_n[k], dc_n[k], num_threads, (dh0[k], dc0[k]), dp, dln,
                    inputs)
                db2 = inputs.db2
                inputs.db2 = None
                grads.update(direction_grads(inputs, k, dw_ih, dw_hh, db, dw_hr, dp, dln, db2))
                dinp = dx if dinp is None else dinp + dx
            dout = dinp * masks[k_layer - 1] if k_layer and masks else dinp
        layer.grads = {name: grads[name] for name in layer._params}
    if unbatched:
        return dout[:, 0], (dh0[:, 0], dc0[:, 0])
    if batch_first:
        dout = dout.transpose(1, 0, 2)
    return dout, (dh0, dc0)


# --- LSTM's base: its per-call entry points and fields -----------------------------------

# weight_dtype is the layer's dtype (one of these) or a lower precision for inference only
# (checked by _validation.check_weight_dtype); a tuple test, not dtype.name (~1 us per call)
FULL_PRECISION = ("float32", "float64")
_FULL = FULL_PRECISION      # (a C variable when compiled)


def inference_only(weight_dtype):
    """The message for a low-precision layer asked to save or to run backward."""
    return (f"a layer with {weight_dtype} weights is for inference only (eval mode, nothing "
            f"saved, no backward): train the float32 layer and quantize it "
            f"(lstm_fast.quantize)")


class LayerBase:
    """``LSTM``'s base: ``forward`` (also ``layer(...)``) and ``backward``, and the fields they
    read or write on every call (``_inputs``, ``_cache``, ``training``, ``batch_first``,
    ``weight_dtype``, ``grads``). Compiled (a cdef class, see _route.pxd), the fields are C fields and
    a call ``layer(x)`` reaches ``layer_forward`` without a Python frame or an attribute
    look-up by name (issue 13: a call at tiny shapes is mostly this kind of work)."""

    def forward(self, x, hx=None, lengths=None, *, save=None):
        """Run the layer over x (also ``layer(x, ...)``).

        Parameters
        ----------
        x : array_like
            (T, B, I), (B, T, I) if ``batch_first``, or (T, I) unbatched.
        hx : tuple of array_like or None, optional
            ``(h0, c0)``, (num_layers*D, B, R) and (num_layers*D, B, H); None for zeros.
        lengths : array_like of int or None, optional
            (B,) valid steps per sequence, any order: h_n, c_n come from each
            sequence's own last valid step (the reverse direction starts there),
            padded outputs are zero.
        save : bool or None, keyword-only
            Keep what `backward` needs; None (default) follows the training mode.
            Without it nothing of the kind is computed or kept.

        Returns
        -------
        output : numpy.ndarray
            (T, B, D*R) (batch first: (B, T, D*R); unbatched: (T, D*R)).
        (h_n, c_n) : tuple of numpy.ndarray
            (num_layers*D, B, R) and (num_layers*D, B, H).

        Raises
        ------
        ValueError
            x, hx or lengths of the wrong shape, naming the argument and the shape expected.
        TypeError
            hx not a pair; x of the other float precision.
        """
        if save and self.weight_dtype not in _FULL:
            self._check_trainable()
        return layer_forward(self, x, hx, lengths, save)

    def __call__(self, x, hx=None, lengths=None, *, save=None):
        """``forward``."""
        if save and self.weight_dtype not in _FULL:
            self._check_trainable()
        return layer_forward(self, x, hx, lengths, save)

    def backward(self, grad_output=None, grad_hx=None):
        """Gradients for the last forward call; parameter gradients go to ``layer.grads``.

        Parameters
        ----------
        grad_output : array_like or None, optional
            Gradient of the loss with respect to ``output``, its shape; None for zeros.
        grad_hx : tuple of array_like or None, optional
            ``(grad_h_n, grad_c_n)`` shaped like ``(h_n, c_n)``, or None for zeros.

        Returns
        -------
        grad_x : numpy.ndarray
            Shaped like x.
        (grad_h0, grad_c0) : tuple of numpy.ndarray
            Shaped like hx.

        Raises
        ------
        RuntimeError
            No forward call yet, or the last one kept nothing (eval mode, ``save=False``).
        ValueError
            A gradient of the wrong shape, naming it.
        """
        if self.weight_dtype not in _FULL and not self._trains_bf16():
            raise RuntimeError(inference_only(self.weight_dtype))
        return layer_backward(self, grad_output, grad_hx)
