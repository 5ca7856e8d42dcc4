"""``lstm_fast.torch.LSTM`` and ``LSTMCell``: torch.nn.LSTM and torch.nn.LSTMCell with their
CPU work done by lstm_fast's kernels.

Subclasses of torch's modules: constructor, attributes, parameters, state_dict,
repr and ``forward(input, hx=None)`` are torch's; only the computation differs. Each
layer and direction is one call of ``functional.run_forward`` on the tensors' memory
(``tensor.numpy()`` / ``torch.from_numpy``, no copies for contiguous float tensors):
through a ``torch.autograd.Function`` when a gradient is needed, directly and keeping
nothing for backward when none is (``torch.no_grad``, ``torch.inference_mode``, or no
input or parameter requiring grad). A cell call is the backend's forward (and in
backward its backward) of one step; once the cell's weights are packed, the whole call is
compiled (``_torch_eval.cell_forward``), the bodies of its autograd Function too.
Between layers, in training mode, torch's own ``F.dropout`` runs in the autograd graph,
on the same data torch.nn.LSTM drops out (the packed rows for a PackedSequence), so a
seeded run draws the same masks as torch.nn.LSTM. PackedSequence inputs are unpacked to
padded time-major arrays plus lengths, run with lstm_fast's ``lengths`` support (the
reverse direction starts at each sequence's own last step) and repacked with the input's
``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``.

Under torch.compile and torch.export (non-strict and strict) the modules call the custom
operators of ``lstm_fast._torch_ops`` instead (fake implementations and registered autograd:
no graph break, our kernels inside the compiled graph; without a gradient the whole stack is
one operator call); PackedSequence input takes torch's path there. TorchScript scripting/tracing and ONNX export take torch's path, so an exported
ONNX file holds torch's standard LSTM op.

Packed weights are kept between calls, one per layer and direction, and packed again
when a parameter changed. A change is seen through the tensors' version counters and
storage: an optimizer step, ``load_state_dict``, ``.to()``, writes under
``torch.no_grad()`` all bump the counter or replace the storage. ``p.data`` writes do
neither on a plain torch Parameter, so this module's parameters are ``_Parameter`` objects,
whose ``.data`` is ``p.detach()``: the same memory, sharing the version counter, so the
classic ``p.data.add_(p.grad, alpha=-lr)`` update is seen too. (Unlike plain
``.data``, such a write between a forward and its backward is then reported by
autograd as an in-place modification, as a ``detach()`` write is.) Parameters that are
not ``_Parameter`` objects (replaced from outside, parametrizations) are packed at every call.

Falls back to ``torch.nn.LSTM.forward`` (torch's numbers, torch's errors) for
everything the kernels do not cover: tensors not on the CPU, dtypes other than
float32/float64, inputs whose dtype differs from the weights (torch then raises its
own error), empty inputs (T = 0 or B = 0), autocast (but see below), TorchScript scripting/tracing,
ONNX export and functorch transforms (vmap, grad). Shape errors are torch's own
(``check_forward_args``), raised before any kernel runs. ``backend="torch"`` always uses
torch's implementation. Double backward (``create_graph=True`` then differentiating
the gradients, e.g. a gradient penalty) raises an error naming ``backend="torch"``,
which computes it. DistributedDataParallel works as with torch's modules
(tests/test_torch_ddp.py).

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` ``LSTM`` runs bfloat16 on our
kernels (``bf16_autocast=True``, the default; ``LSTM._autocast_forward``), on AMX tiles
where the CPU has them, forward and backward: mixed-precision training with the float32
parameters as masters on a backend that trains in bfloat16 (``backends.BF16_TRAINING``:
"c", "numpy"), bfloat16 inference (no gradient needed) on "c" and "numpy"; output and
states come back bfloat16 as torch.nn.LSTM's do under CPU autocast. Measured on an Intel
Xeon of the project's kind, one training step: 1.03-1.18x torch's autocast step (oneDNN,
also on AMX) on 1 thread, 1.05-1.9x on 2, and 2.4-3.4x our float32 one; where oneDNN has no
bfloat16 RNN for the CPU, torch's autocast LSTM fails ("could not create a primitive
descriptor", pytorch#88136) and ours runs (benchmarks/README.md, "Session 15").
``bf16_autocast=False`` takes torch's own bfloat16 LSTM (torch's numbers). Otherwise
(another autocast dtype, a projection, the "numba" backend) torch's path; a variant under
autocast raises, as for any torch fallback.
"""

import functools
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _params, _philox, _torch_ops, _validation, backends
from .functional import LSTMCache, make_plan, run_backward, run_forward

try:    # the compiled eval route (issue 14); without the extension, the Python route alone
    from . import _torch_eval
except ImportError:     # pragma: no cover (the extension is built with the package)
    _torch_eval = None

__all__ = ["LSTM", "LSTMCell", "QuantizedLSTM", "quantize"]

_DTYPES = (torch.float32, torch.float64)


_NP = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
if _torch_eval is not None:
    _torch_eval.setup(torch.Tensor, torch.from_numpy, torch.is_grad_enabled, torch._C._is_tracing,
                      torch._C._is_any_autocast_enabled, _wrapped, globals(), backends.ENV_VAR)
    _eval_forward = _torch_eval.eval_forward
else:
    _eval_forward = None


def _np(t):
    """Zero-copy NumPy view of a CPU tensor (contiguous copy first if needed)."""
    if t.requires_grad:
        t = t.detach()
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _torch_key():
    """A mask key (two uint32, ``lstm_fast._philox``) from torch's default generator."""
    k = torch.randint(0, 1 << 32, (2,), dtype=torch.int64)
    return int(k[0]), int(k[1])


def _t(a):
    """Tensor sharing ``a``'s memory (copied first if ``a`` has negative strides; a reversed
    array of size-1 axes is C-contiguous to NumPy and keeps its negative stride)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if min(a.strides, default=0) >= 0 else a.copy())


class _Parameter(torch.nn.Parameter):
    """A Parameter whose ``.data`` is ``detach()``: the same memory and the same version
    counter, so that writes through ``.data`` are seen by the packed-weights cache."""

    @property
    def data(self):
        return self.detach()

    @data.setter
    def data(self, value):
        torch.Tensor.data.__set__(self, value)


def _generation(packed):
    """How many times ``packed`` was written over by ``pack(..., out=packed)`` (backends that
    never reuse a Packed have no such count: 0)."""
    return getattr(packed, "generation", 0)


DOUBLE_BACKWARD_ERROR = (
    "lstm_fast's kernels compute first derivatives only: differentiating a gradient taken "
    "with create_graph=True (double backward, e.g. a gradient penalty) needs "
    "backend=\"torch\" on the lstm_fast.torch module (torch's own implementation)")


def _first_order(backward):
    """``once_differentiable`` with an error that says what to do: backward runs without a
    graph; under ``create_graph=True`` its results are tied to a node that raises
    ``DOUBLE_BACKWARD_ERROR`` if they are differentiated (first-order use still works).
    Unlike ``once_differentiable`` this holds whether or not the incoming gradients require
    grad, so a gradient penalty gets this error and not "does not require grad"."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if not torch.is_grad_enabled():     # the usual backward (no create_graph)
            return backward(ctx, *grads)
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        message = getattr(ctx, "double_backward_error", DOUBLE_BACKWARD_ERROR)
        err = torch._C._functions.DelayedError(message.encode(), len(outputs))
        return err(*(None if t is None else t.detach().requires_grad_(True) for t in outputs))
    return wrapper


def _variant_error(options):
    """The message for a call our kernels cannot run with a variant on: torch has none."""
    return (f"lstm_fast.torch.LSTM with {options}: torch.nn.LSTM has no such variant, so only "
            "lstm_fast's kernels run it (CPU float32/float64 tensors of one dtype, first "
            "derivatives, not under TorchScript, tracing, ONNX export, autocast, vmap/grad or "
            "backend=\"torch\")")


class _Direction(torch.autograd.Function):
    """One layer, one direction with gradients: (x (T, B, I), h0, c0, w_ih, w_hh, b_ih, b_hh,
    w_hr, w_ci, w_cf, w_co, g_ih, g_hh, g_c, b_c) -> (y (T, B, R), h_n, c_n); h0, c0 (B, R), (B, H), or
    (1, B, R), (1, B, H) (a one-direction stack's states as they are), or None for zeros;
    ``run`` is (backend module, packed weights, num_threads, LengthPlan or None, reverse,
    variant options (clip, cell_clip, cifg) or None, variant description or None, masks
    (recurrent dropout (B, R), zoneout (T, B, H)), each None when off, the states' leading
    shape ((B,) or (1, B)) for h0 = None); w_ci, w_cf, w_co the peephole weights or None;
    g_ih, g_hh, g_c, b_c the layer-norm parameters (``layer_norm``) or None (then the
    kernels also keep the rows' statistics, ``ctx.masks``). h_n, c_n have h0's shape (h0
    None: the leading shape's).

    Per-call cost (issue 14): the gradients that are not needed (unused outputs) arrive as
    None (``set_materialize_grads(False)``: no zero tensors made by autograd) and read-only
    shared zeros stand in for them; the kernel allocates h_n, c_n as arrays (no torch op)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ci, w_cf, w_co, g_ih, g_hh, g_c,
                b_c, run):
        impl, packed, num_threads, plan, reverse, opts, described, masks, lead, R, H = run
        xs = _np(x)
        if h0 is None:
            h0s, c0s = _validation.zeros(lead + (R,), xs.dtype), _validation.zeros(lead + (H,),
                                                                                   xs.dtype)
        else:
            h0s, c0s = _np(h0), _np(c0)
        if g_ih is None:
            y, h_n, c_n, cache = run_forward(impl, packed, xs, h0s, c0s, num_threads, plan,
                                             reverse, True, None, *masks)
        else:   # layer norm: the statistics kept too (cache.saved[8])
            y, h_n, c_n, cache = run_forward(impl, packed, xs, h0s, c0s, num_threads, plan,
                                             reverse, True, None, *(masks or (None, None)), True)
        y = _t(y)
        # Inputs and the output y are saved for autograd's check against in-place changes
        # (backward reads their memory); the kernel's own arrays go through
        # save_for_backward too, so that autograd frees them after backward like any saved
        # tensor.
        arrays = cache.saved[:6]
        if h0 is None:      # the shared read-only zeros stay arrays (a tensor must be writable)
            ctx.zeros = arrays[1:3]
            arrays = arrays[:1] + (None, None) + arrays[3:]
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ci, w_cf, w_co, y,
                              *[None if a is None else _t(a) for a in arrays], g_ih, g_hh, g_c, b_c)
        ctx.masks = cache.saved[6:]   # the masks as the kernels took them (or None), if any,
        #                               then the layer norm's statistics
        ctx.run = (impl, packed, _generation(packed), num_threads, plan, reverse, opts)
        ctx.set_materialize_grads(False)
        if described is not None:
            ctx.double_backward_error = _variant_error(described) + ": double backward " \
                "(differentiating a gradient taken with create_graph=True) is not available"
        return y, torch.from_numpy(h_n), torch.from_numpy(c_n)

    @staticmethod
    @_first_order
    def backward(ctx, dy, dh_n, dc_n):
        impl, packed, generation, num_threads, plan, reverse, opts = ctx.run
        saved = ctx.saved_tensors
        if _generation(packed) != generation:   # written over since forward: pack again
            clip, cell_clip, cifg = opts or (0.0, 0.0, False)
            w_ih, w_hh, b_ih, b_hh, w_hr = (None if t is None else _np(t) for t in saved[3:8])
            peep = None if saved[8] is None else np.stack([_np(t) for t in saved[8:11]])
            ln = None if saved[18] is None else np.concatenate([_np(t) for t in saved[18:]])
            packed = _torch_ops.pack_direction(impl, w_ih, w_hh,
                                               None if b_ih is None else b_ih + b_hh, w_hr, peep,
                                               clip, cell_clip, cifg, ln=ln)
        arrays = tuple([None if t is None else t.numpy() for t in saved[12:18]])
        if saved[1] is None:    # xin, h0, c0, y, gates, c
            arrays = arrays[:1] + ctx.zeros + arrays[3:]
        cache = LSTMCache(impl, packed, arrays + ctx.masks, plan, reverse)
        h0s, c0s = arrays[1], arrays[2]
        dtype = h0s.dtype
        if plan is None:
            sh, sc = h0s.shape, c0s.shape
        else:   # the kernels' states are sorted (B, ·) matrices; ours have h0's shape
            lead = h0s.shape[:-1] if saved[1] is None else saved[1].shape[:-1]
            sh, sc = lead + h0s.shape[-1:], lead + c0s.shape[-1:]
        if dy is None:  # padded (T, B, R), as the output
            x = saved[0]
            dy = _validation.zeros((x.shape[0], x.shape[1], h0s.shape[-1]), dtype)
        else:
            dy = _np(dy)
        dh_n = _validation.zeros(sh, dtype) if dh_n is None else _np(dh_n)
        dc_n = _validation.zeros(sc, dtype) if dc_n is None else _np(dc_n)
        H = c0s.shape[-1]
        dp = None if saved[8] is None else _validation.empty_lines((3, H), dtype)
        dln = None if saved[18] is None else _validation.empty_lines(10 * H, dtype)
        # the input's gradient only if wanted (not for a model's first layer: torch skips
        # it there too; a quarter of that layer's backward products at I = H)
        dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = run_backward(cache, dy, dh_n, dc_n, num_threads,
                                                             dpeephole=dp, dlayer_norm=dln,
                                                             need_dx=ctx.needs_input_grad[0])
        if opts is not None and opts[2]:    # cifg: the kernels' 4H rows -> i, g, o
            dw_ih, dw_hh, db = map(_params.cifg_compress, (dw_ih, dw_hh, db))
        if saved[1] is None:
            dh0 = dc0 = None
        else:
            dh0, dc0 = torch.from_numpy(dh0), torch.from_numpy(dc0)
        db_ih, db_hh = _params.bias_grads(None if db is None else _t(db))
        peep = (None, None, None) if dp is None else tuple(torch.from_numpy(r) for r in dp)
        ln = (None,) * 4 if dln is None else tuple(map(torch.from_numpy, (
            dln[:4 * H], dln[4 * H:8 * H], dln[8 * H:9 * H], dln[9 * H:])))
        return (None if dx is None else _t(dx), dh0, dc0, _t(dw_ih), _t(dw_hh), db_ih, db_hh,
                None if dw_hr is None else _t(dw_hr)) + peep + ln + (None,)


# ``Function.apply`` without its Python prologue (argument binding checks, the functorch
# dead-wrapper walk): ~5-10 us a call here. Only when no functorch transform is active
# (``_kernel_backend`` sends functorch-wrapped tensors to torch's path anyway).
_direction_apply = super(torch.autograd.Function, _Direction).apply
_functorch_active = torch._C._are_functorch_transforms_active


def _ops_apply(module, input, hx):
    """While compiling (torch.compile, torch.export): whether our custom operators take this
    call. Not for backend="torch", ONNX export, autocast, PackedSequence, tensors not on the
    CPU or not float32/float64, mixed dtypes, empty inputs: torch's implementation then."""
    if module.backend == "torch" or torch.onnx.is_in_onnx_export() \
            or torch.is_autocast_enabled("cpu") or not isinstance(input, torch.Tensor):
        return False
    if input.device.type != "cpu" or input.dtype not in _DTYPES or input.numel() == 0:
        return False
    if hx is not None:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            return False
        for t in hx:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype != input.dtype:
                return False
    for t in module.parameters():
        if t.device.type != "cpu" or t.dtype != input.dtype:
            return False
    return True


class LSTM(torch.nn.LSTM):
    """torch.nn.LSTM whose CPU float32/float64 forward and backward run on lstm_fast.

    Same arguments as ``torch.nn.LSTM`` plus the keyword ``backend`` ("auto", "c",
    "numba", "numpy", or "torch" for torch's own implementation). The backend is
    checked at construction (an unavailable one is an error) and resolved again at
    each call, so "auto" follows ``LSTM_FAST_BACKEND``. See the module docstring for
    what falls back to torch and how weight changes are seen.

    Parameters
    ----------
    *args, **kwargs
        ``torch.nn.LSTM``'s: input_size, hidden_size, num_layers, bias, batch_first,
        dropout, bidirectional, proj_size, device, dtype.
    backend : {"auto", "c", "numba", "numpy", "torch"}, keyword-only
        Which kernels run the CPU float32/float64 work; "torch" is torch's own.
    peephole, clip, cell_clip, cifg, forget_bias : keyword-only
        The LSTM variants, as for ``lstm_fast.LSTM`` (same meaning, same parameter names
        and shapes: ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` (H,) with
        peepholes, registered only then, after torch's parameters of their layer-direction;
        3H rows (gates i, g, o) in ``weight_ih``/``weight_hh``/``bias_*`` with cifg). All off
        by default: torch.nn.LSTM's module and state_dict. torch.nn.LSTM has none of them, so
        with one on there is no torch fallback: a call our kernels cannot run (another
        device or dtype, autocast, TorchScript, tracing, ONNX export, vmap/grad,
        ``backend="torch"``, double backward) raises an error naming the option.
    recurrent_dropout, zoneout : float, keyword-only
        As for ``lstm_fast.LSTM``: recurrent (variational) dropout p in [0, 1), one mask
        (B, R) per layer-direction and training call on h_{t-1} in the recurrent product;
        zoneout z in [0, 1) on h (haste's semantics; no projection), a new Bernoulli(1 - z)
        mask per step and sequence in training, the expectation (1 - z) in eval. The masks
        are drawn from torch's random generator (``torch.manual_seed`` repeats them), per
        layer-direction in the layer's order (recurrent dropout, then zoneout) after that
        layer's inter-layer dropout. 0 (default): off. As the variants, no torch fallback,
        and not under torch.compile or torch.export (an error names the option).
    layer_norm : bool, keyword-only
        The layer-normalized LSTM of haste's ``LayerNormLSTM``, as for ``lstm_fast.LSTM``
        (same equations, same parameter names and shapes): per layer-direction
        ``layer_norm_weight_ih_l{k}``, ``layer_norm_weight_hh_l{k}`` (4H,), the gains of the
        layer norms of the input and recurrent products, and ``layer_norm_weight_c_l{k}``,
        ``layer_norm_bias_c_l{k}`` (H,), the gain and bias of the layer norm of c_t
        (``_reverse`` for the second direction), registered only then, after the other
        parameters of their layer-direction, initialised to ones and zeros (also by
        ``reset_parameters``; nothing drawn: torch's seeded values are kept). Runs on the
        "c", "numba" and "numpy" backends ("auto" as the layer: c where it is available, else
        numpy, never numba). Combines with the other options except proj_size and cifg. As the
        variants, no torch fallback, and not under torch.compile or torch.export.
    bf16_autocast : bool, keyword-only
        Under ``torch.autocast("cpu", dtype=torch.bfloat16)``, run bfloat16 on our kernels
        (True, the default; backends "c" and "numpy": ``lstm_fast.LSTM(...,
        weight_dtype="bfloat16")``'s arithmetic, mixed-precision training with the float32
        parameters as masters), or torch's own bfloat16 LSTM (False: oneDNN's, torch's
        numbers). See the module's notes.

    Raises
    ------
    BackendUnavailableError
        The backend asked for is not available here.
    ValueError
        An option out of range (see ``lstm_fast.LSTM``), a variant with
        ``backend="torch"``, or layer_norm with proj_size or cifg.
    TypeError
        peephole, cifg, layer_norm or bf16_autocast not a bool.

    See Also
    --------
    lstm_fast.LSTM : the same layer on NumPy arrays.

    Examples
    --------
    >>> import torch
    >>> from lstm_fast.torch import LSTM
    >>> _ = torch.manual_seed(0)
    >>> rnn = LSTM(3, 8, num_layers=2, batch_first=True)      # was torch.nn.LSTM(3, 8, ...)
    >>> x = torch.randn(4, 6, 3)
    >>> out, (h_n, c_n) = rnn(x)
    >>> out.shape, h_n.shape
    (torch.Size([4, 6, 8]), torch.Size([2, 4, 8]))
    >>> out.sum().backward()                     # gradients through lstm_fast's kernels
    >>> rnn.weight_hh_l0.grad.shape
    torch.Size([32, 8])

    It computes what torch.nn.LSTM computes with the same weights:

    >>> ref = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    >>> ref.load_state_dict(rnn.state_dict())
    <All keys matched successfully>
    >>> torch.allclose(ref(x)[0], out, atol=1e-6)
    True
    """

    def __init__(self, *args, backend="auto", peephole=False, clip=None, cell_clip=None,
                 cifg=False, forget_bias=None, recurrent_dropout=0.0, zoneout=0.0,
                 layer_norm=False, bf16_autocast=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        for name, value in (("peephole", peephole), ("cifg", cifg), ("layer_norm", layer_norm),
                            ("bf16_autocast", bf16_autocast)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        self.peephole, self.cifg, self.layer_norm = bool(peephole), bool(cifg), bool(layer_norm)
        self.bf16_autocast = bool(bf16_autocast)
        _validation.check_layer_norm(self.layer_norm, self.proj_size, self.cifg)
        if backend != "torch":
            self._resolve(backend)
        self.clip = _validation.check_clip(clip, "clip")
        self.cell_clip = _validation.check_clip(cell_clip, "cell_clip")
        self.forget_bias = _validation.check_forget_bias(forget_bias, self.bias, self.cifg)
        self.recurrent_dropout = _validation.check_rate(recurrent_dropout, "recurrent_dropout")
        self.zoneout = _validation.check_zoneout(zoneout, self.proj_size)
        if backend == "torch" and self._variants():
            raise ValueError(f"backend=\"torch\": torch.nn.LSTM has no {self._variants()}; "
                             "use another backend")
        p0 = next(iter(self._parameters.values()))
        factory = {"device": p0.device, "dtype": p0.dtype}
        H = self.hidden_size
        if self.cifg:       # 3H gate rows (i, g, o): torch's 4H tensors replaced
            for name in self._flat_weights_names:
                if not name.startswith("weight_hr"):
                    old = getattr(self, name)
                    setattr(self, name, torch.nn.Parameter(
                        torch.empty((3 * H,) + tuple(old.shape[1:]), **factory)))
        if self.peephole:   # drawn after torch's, so those keep their seeded values
            k = 1.0 / np.sqrt(H)
            for layer in range(self.num_layers):
                for d in range(2 if self.bidirectional else 1):
                    for name in self._peephole_names(layer * (2 if self.bidirectional else 1) + d):
                        w = torch.nn.Parameter(torch.empty(H, **factory))
                        if not self.cifg:
                            torch.nn.init.uniform_(w, -k, k)
                        self.register_parameter(name, w)
        if self.layer_norm:     # ones and zeros, nothing drawn
            for k in range(len(self._all_weights)):
                for name, size in zip(self._layer_norm_names(k), (4 * H, 4 * H, H, H)):
                    self.register_parameter(name, torch.nn.Parameter(torch.empty(size, **factory)))
            self._init_layer_norm()
        if self.peephole or self.layer_norm:
            # state_dict order: each direction's own after its torch parameters
            order = _params.state_dict_names(self.num_layers, self.bidirectional, self.bias,
                                             self.proj_size, self.peephole, self.layer_norm)
            params = self._parameters
            reordered = {n: params[n] for n in order}
            params.clear()
            params.update(reordered)
        if self.cifg:
            self.reset_parameters()
        elif self.forget_bias is not None:
            self._init_forget_bias()
        self._wrap_parameters()

    def _resolve(self, backend):
        """The backend name ``backend`` resolves to for this module: with layer_norm
        ``backends.layer_norm_backend``'s rule ("auto" never numba)."""
        if getattr(self, "layer_norm", False):
            return backends.resolve(backends.layer_norm_backend(backend))
        return backends.resolve(backend)

    def _variants(self):
        """The variants on, as they are written in the constructor ("" when none)."""
        on = [f"{name}=True" for name in ("peephole", "cifg", "layer_norm")
              if getattr(self, name, False)]
        on += [f"{name}={getattr(self, name)}"
               for name in ("clip", "cell_clip", "recurrent_dropout", "zoneout")
               if getattr(self, name, 0.0)]
        return ", ".join(on)

    def _masked(self):
        """Whether recurrent dropout or zoneout is on (masks drawn at every call)."""
        return bool(getattr(self, "recurrent_dropout", 0.0) or getattr(self, "zoneout", 0.0))

    def _masks(self, T, B, dtype):
        """(recurrent dropout mask (B, R) or None, zoneout mask (T, B, H) or None) of one
        layer-direction and call, as ``lstm_fast.LSTM`` makes them (``_rdrop_mask``,
        ``_zoneout_mask``: Philox4x32-10, ``lstm_fast._philox``) but under a key drawn from
        torch's generator (``torch.manual_seed`` fixes them)."""
        p, z = self.recurrent_dropout, self.zoneout
        rdrop = zoneout = None
        if p > 0.0 and self.training:
            rdrop = _philox.bernoulli((B, self.proj_size or self.hidden_size), _torch_key(), p,
                                      dtype.type(1.0 / (1.0 - p)), dtype)
        if z > 0.0:
            if self.training:
                zoneout = _philox.bernoulli((T, B, self.hidden_size), _torch_key(), z, 1.0, dtype)
            else:
                zoneout = np.full((T, B, self.hidden_size), 1.0 - z, dtype)
        return rdrop, zoneout

    def _peephole_names(self, k):
        """``weight_ci``, ``weight_cf``, ``weight_co`` names of layer-direction k."""
        D = 2 if self.bidirectional else 1
        return tuple(kind + _params.suffix(k // D, k % D) for kind in _params.PEEPHOLE_KINDS)

    def _peepholes(self, k):
        """Layer-direction k's peephole parameters (w_ci, w_cf, w_co), or three None."""
        if not getattr(self, "peephole", False):
            return (None, None, None)
        p = self._parameters
        return tuple(p[n] for n in self._peephole_names(k))

    def _layer_norm_names(self, k):
        """The layer-norm parameters' names of layer-direction k (``_params.LAYER_NORM_KINDS``)."""
        D = 2 if self.bidirectional else 1
        return tuple(kind + _params.suffix(k // D, k % D) for kind in _params.LAYER_NORM_KINDS)

    def _layer_norms(self, k):
        """Layer-direction k's layer-norm parameters (g_ih, g_hh, g_c, b_c), or four None."""
        if not getattr(self, "layer_norm", False):
            return (None,) * 4
        p = self._parameters
        return tuple(p[n] for n in self._layer_norm_names(k))

    def _init_layer_norm(self):
        """The layer-norm parameters to ones (gains) and zeros (c's bias), as haste does."""
        if not getattr(self, "layer_norm", False):
            return
        with torch.no_grad():
            for k in range(len(self._all_weights)):
                for name in self._layer_norm_names(k):
                    getattr(self, name).fill_(0.0 if name.startswith("layer_norm_bias") else 1.0)

    def _options(self):
        """(clip, cell_clip, cifg), or None for a plain LSTM's kernels (no peepholes, no
        layer norm either)."""
        if not (self.peephole or self.clip or self.cell_clip or self.cifg or self.layer_norm):
            return None
        return (self.clip, self.cell_clip, self.cifg)

    def _init_forget_bias(self):
        if getattr(self, "forget_bias", None) is None or not self.bias:
            return
        H = self.hidden_size
        with torch.no_grad():
            for name in self._flat_weights_names:
                if name.startswith("bias_"):
                    getattr(self, name)[H:2 * H] = \
                        self.forget_bias if name.startswith("bias_ih") else 0.0

    def reset_parameters(self):
        """torch.nn.LSTM's (every parameter, peepholes included, uniform in +-1/sqrt(H)),
        then ``forget_bias`` if set; the layer-norm parameters to ones and zeros."""
        super().reset_parameters()
        self._init_forget_bias()
        self._init_layer_norm()

    def extra_repr(self):
        """torch.nn.LSTM's ``extra_repr`` plus the variants that are on.

        Returns
        -------
        str
            What ``repr`` shows between the parentheses.
        """
        s = super().extra_repr()
        on = self._variants()
        if getattr(self, "forget_bias", None) is not None:
            on = (on + ", " if on else "") + f"forget_bias={self.forget_bias}"
        return s + (", " + on if on else "")

    def _wrap_parameters(self):
        names = list(self._flat_weights_names)
        if getattr(self, "peephole", False):
            names += [n for k in range(len(self._all_weights)) for n in self._peephole_names(k)]
        if getattr(self, "layer_norm", False):
            names += [n for k in range(len(self._all_weights)) for n in self._layer_norm_names(k)]
        for name in names:
            p = getattr(self, name)
            if type(p) is torch.nn.Parameter:
                setattr(self, name, _Parameter(p.detach(), p.requires_grad))
        self._packed = None     # (key, packed weights per layer-direction, parameters,
        #                         the compiled eval route's EvalState or None)

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__")
                     else self.__dict__)
        state["_packed"] = None     # holds the backend module (not picklable); packed again
        state["_packed_bf16"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        for key, value in (("peephole", False), ("clip", 0.0), ("cell_clip", 0.0),
                           ("cifg", False), ("forget_bias", None), ("recurrent_dropout", 0.0),
                           ("zoneout", 0.0), ("layer_norm", False)):   # pickles from before them
            if key not in self.__dict__:
                setattr(self, key, value)
        self._wrap_parameters()

    def _torch_forward(self, input, hx):
        """torch.nn.LSTM's forward, for the calls our kernels do not run; with a variant on,
        an error naming it (torch has none)."""
        on = self._variants()
        if on:
            raise RuntimeError(_variant_error(on) + "; this call is not one of those")
        return super().forward(input, hx)

    def _kernel_backend(self, input, hx):
        """The resolved backend name if our kernels can run this call, else None. The
        weights are checked where they are packed (``_packed_weights``)."""
        backend = self.backend
        if backend == "torch" or torch.jit.is_scripting() or torch.jit.is_tracing() \
                or torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled():
            return None
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, torch.Tensor) or not data.is_cpu or data.dtype not in _DTYPES \
                or data.numel() == 0 or _wrapped(data):
            return None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            for t in hx:
                if not isinstance(t, torch.Tensor) or not t.is_cpu or t.dtype != data.dtype \
                        or _wrapped(t):
                    return None
        return self._resolve(backend) if self.layer_norm else backends.resolve(backend)

    def forward(self, input, hx=None):
        """``torch.nn.LSTM.forward``, on lstm_fast's kernels where they apply (else torch's).

        Parameters
        ----------
        input : torch.Tensor or PackedSequence
            (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or packed.
        hx : tuple of torch.Tensor or None, optional
            ``(h_0, c_0)`` as for torch.nn.LSTM; None for zeros.

        Returns
        -------
        output : torch.Tensor or PackedSequence
            As torch.nn.LSTM's.
        (h_n, c_n) : tuple of torch.Tensor
            As torch.nn.LSTM's.
        """
        if torch.compiler.is_compiling():
            if _ops_apply(self, input, hx):
                if self._masked() or self.layer_norm:
                    raise RuntimeError(_variant_error(self._variants()) + "; torch.compile and "
                                       "torch.export do not carry recurrent_dropout, zoneout or "
                                       "layer_norm")
                return self._forward_ops(input, hx)
        elif _eval_forward is not None:
            # no gradient, packed weights still valid, shapes torch accepts: the whole call
            # compiled (_torch_eval); None for anything else (the route below)
            out = _eval_forward(self, input, hx)
            if out is not None:
                return out
        if torch._C._is_any_autocast_enabled() and not torch.compiler.is_compiling():
            out = self._autocast_forward(input, hx)
            if out is not None:
                return out
        backend = self._kernel_backend(input, hx)
        packed = None
        if backend is not None:
            impl = backends.get(backend)
            data = input.data if isinstance(input, PackedSequence) else input
            packed = self._packed_weights(impl, data.dtype)
        if packed is None:
            return self._torch_forward(input, hx)
        return self._forward_packed(input, hx, impl, packed)

    def _forward_packed(self, input, hx, impl, packed):
        """``forward``'s work on our kernels, once the backend and packed weights are known."""
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                self.check_input(data, batch_sizes)
            else:
                self.check_forward_args(data, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
            # padded in sorted order (longest first), as torch's kernels see it
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            out, h_n, c_n = self._run(x, hx, impl, packed, lengths.numpy(), batch_sizes)
            out = pack_padded_sequence(out, lengths).data
            return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden((h_n, c_n), unsorted_indices))
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        if hx is None:
            self.check_input(input, None)
        else:
            want = 3 if batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D input" if batched else "unbatched 2-D input"
                raise RuntimeError(f"For {kind}, hx and cx should also be {want}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self.check_forward_args(input, hx, None)     # torch's shape checks and messages
        x = input.transpose(0, 1) if self.batch_first else input
        out, h_n, c_n = self._run(x, hx, impl, packed)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _autocast_forward(self, input, hx):
        """Under ``torch.autocast("cpu", dtype=torch.bfloat16)``: bfloat16 training (mixed
        precision) or bfloat16 inference on our kernels, or None for torch's path.

        The float32 parameters stay the masters; each layer-direction runs as
        ``lstm_fast.LSTM(..., weight_dtype="bfloat16")`` does (weights, x and h rounded to
        bfloat16 for the products, float32 accumulation, cell state and activations; in
        backward the gate gradients rounded too: ``backends.reference``, "bfloat16
        training"). Inputs and states may be float32 or bfloat16 (an autocast layer's
        output); output, h_n and c_n are bfloat16, as torch.nn.LSTM's under CPU autocast,
        and the parameters' gradients float32. Taken when CPU autocast's dtype is bfloat16,
        the module has no projection, variant, recurrent dropout or zoneout, the tensors are
        on the CPU, the parameters float32, and the backend runs bfloat16 ("c" and "numpy")
        and, if a gradient is needed, trains in it (``backends.BF16_TRAINING``)."""
        if not getattr(self, "bf16_autocast", True) or not torch.is_autocast_enabled("cpu") \
                or torch.get_autocast_dtype("cpu") != torch.bfloat16 \
                or self.backend == "torch" or torch.jit.is_scripting() \
                or torch.jit.is_tracing() or self.proj_size or self._variants() \
                or self._masked() or self.layer_norm:
            return None
        data = input.data if isinstance(input, PackedSequence) else input
        ok = (torch.float32, torch.bfloat16)
        if not isinstance(data, torch.Tensor) or not data.is_cpu or data.dtype not in ok \
                or data.numel() == 0 or _wrapped(data):
            return None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or any(
                    not isinstance(t, torch.Tensor) or not t.is_cpu or t.dtype not in ok
                    or _wrapped(t) for t in hx):
                return None
        flat = self._weights()
        if any(not t.is_cpu or t.dtype != torch.float32 or _wrapped(t) for t in flat):
            return None
        impl = backends.get(backends.resolve(self.backend))
        if not hasattr(impl, "pack_bf16"):
            return None
        grad = torch.is_grad_enabled() and (data.requires_grad or any(
            t.requires_grad for t in flat) or (hx is not None and (
                hx[0].requires_grad or hx[1].requires_grad)))
        if grad and not getattr(impl, "TRAINS_BF16", False):
            return None
        packed = self._bf16_packed(impl, flat)
        with torch.autocast("cpu", enabled=False):
            if isinstance(input, PackedSequence):
                input = PackedSequence(input.data.float(), input.batch_sizes,
                                       input.sorted_indices, input.unsorted_indices)
            else:
                input = input.float()
            if hx is not None:
                hx = (hx[0].float(), hx[1].float())
            out, (h_n, c_n) = self._forward_packed(input, hx, impl, packed)
            bf = torch.bfloat16
            if isinstance(out, PackedSequence):
                out = PackedSequence(out.data.to(bf), out.batch_sizes, out.sorted_indices,
                                     out.unsorted_indices)
            else:
                out = out.to(bf)
            return out, (h_n.to(bf), c_n.to(bf))

    def _bf16_packed(self, impl, flat):
        """Every layer-direction's ``pack_bf16`` weights, packed again after a parameter
        changed (as ``_packed_weights``); kept apart from the float32 packing."""
        state = tuple([t._version for t in flat] + [t.data_ptr() for t in flat])
        e = getattr(self, "_packed_bf16", None)
        if e is not None and e[0] is impl and e[1] == state \
                and all(map(operator.is_, e[2], flat)):
            return e[3]
        n = len(self._all_weights)
        per = len(flat) // n
        packed = []
        for k in range(n):
            w_ih, w_hh, b_ih, b_hh, _ = (None if t is None else _np(t)
                                         for t in self._direction(flat[k * per:(k + 1) * per]))
            packed.append(impl.pack_bf16(w_ih, w_hh, None if b_ih is None else b_ih + b_hh))
        self._packed_bf16 = ((impl, state, flat[:], packed)
                             if all(type(t) is _Parameter for t in flat) else None)
        return packed

    def _forward_ops(self, input, hx):
        """The tensor path of ``forward`` on the custom operators (``_torch_ops``), for
        torch.compile and torch.export: torch ops and ours only, no NumPy."""
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx is None:
            self.check_input(input, None)
        else:
            self.check_forward_args(input, hx, None)
        x = input.transpose(0, 1) if self.batch_first else input
        flat = self._weights()
        peeps = [t for k in range(len(self._all_weights)) for t in self._peepholes(k)] \
            if self.peephole else []
        if not _torch_ops.needs_grad(x, *flat, *peeps, *(hx or ())) and not (
                self.training and self.dropout > 0.0 and self.num_layers > 1):
            # no gradient: the whole stack is one operator call (the dispatcher's per-call
            # cost, not the kernels', dominates small shapes)
            h0, c0 = (None, None) if hx is None else hx
            y, h_n, c_n = _torch_ops.stack_inference(
                x, h0, c0, flat, peeps, self.num_layers, self.bidirectional, self.bias,
                self.hidden_size, self.proj_size, self.backend,
                *(self._options() or (0.0, 0.0, False)))
            if not batched:
                return y.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
            return (y.transpose(0, 1) if self.batch_first else y), (h_n, c_n)
        B = x.shape[1]
        D = 2 if self.bidirectional else 1
        n = self.num_layers * D
        R, H = self.proj_size or self.hidden_size, self.hidden_size
        h0, c0 = (x.new_zeros(n, B, R), x.new_zeros(n, B, H)) if hx is None else hx
        per = len(flat) // n
        opts = self._options() or (0.0, 0.0, False)
        hs, cs, inp = [], [], x.contiguous()
        for layer in range(self.num_layers):
            if layer and self.training and self.dropout > 0.0:
                inp = F.dropout(inp, self.dropout, True)
            outs = []
            for d in range(D):
                k = layer * D + d
                y, h, c = _torch_ops.run(
                    inp, h0[k], c0[k], *self._direction(flat[k * per:(k + 1) * per]), d == 1,
                    self.backend, self._peepholes(k), *opts)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            inp = outs[0] if D == 1 else torch.cat(outs, 2)
        h_n, c_n = torch.stack(hs), torch.stack(cs)
        if not batched:
            return inp.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (inp.transpose(0, 1) if self.batch_first else inp), (h_n, c_n)

    def _weights(self):
        """The layer-directions' weights in torch's order (``_flat_weights_names``), as the
        module holds them now. Not torch's ``_flat_weights``: that list is kept up to date
        by ``__setattr__`` only, so it goes stale when ``_parameters`` is written directly,
        as ``torch.func.functional_call`` and torch.export's non-strict tracing do (the
        latter swaps in its fake parameters; the stale list handed it the real ones). torch's
        own forward refreshes it at every call (``_update_flat_weights``, ~10 us); this is
        one dict lookup per weight (parametrized names, absent from ``_parameters``, through
        ``getattr``)."""
        p = self._parameters
        return [p[n] if n in p else getattr(self, n) for n in self._flat_weights_names]

    def _direction(self, weights):
        """(w_ih, w_hh, b_ih, b_hh, w_hr) from one layer-direction's parameters in torch's
        order, None where absent."""
        w_ih, w_hh, *rest = weights
        b_ih, b_hh = (rest[0], rest[1]) if self.bias else (None, None)
        return w_ih, w_hh, b_ih, b_hh, (rest[-1] if self.proj_size else None)

    def _packed_weights(self, impl, dtype):
        """The packed weights of every layer-direction, or None if the parameters cannot run
        on our kernels (another device or dtype than the input, functorch-wrapped). Packed
        again only after a parameter changed: another tensor, another storage, or a write
        that bumped its version counter (see the module docstring)."""
        flat = self._weights()
        n = len(self._all_weights)
        peeps = [self._peepholes(k) for k in range(n)] if self.peephole else None
        every = flat + [t for p in peeps for t in p] if peeps else flat
        lns = [self._layer_norms(k) for k in range(n)] if self.layer_norm else None
        if lns:
            every = every + [t for p in lns for t in p]
        opts = self._options()
        # the same tensor objects (entry[2]), versions and storage
        state = tuple([t._version for t in every] + [t.data_ptr() for t in every])
        key = (impl, dtype, opts, state)
        entry = self._packed
        if entry is not None and entry[0] == key and len(entry[2]) == len(every) \
                and all(map(operator.is_, entry[2], every)):
            return entry[1]
        if any(not t.is_cpu or t.dtype != dtype or _wrapped(t) for t in every):
            return None
        clip, cell_clip, cifg = opts or (0.0, 0.0, False)
        per = len(flat) // n
        old = entry[1] if entry is not None and entry[0][:3] == key[:3] else [None] * n
        self._packed = None
        packed = []
        for k in range(n):
            w_ih, w_hh, b_ih, b_hh, w_hr = (None if t is None else _np(t)
                                            for t in self._direction(flat[k * per:(k + 1) * per]))
            peep = None if peeps is None else np.stack([_np(t) for t in peeps[k]])
            ln = None if lns is None else np.concatenate([_np(t) for t in lns[k]])
            # The previous packing's memory is written over (in a training loop: after every
            # optimizer step); a graph that still holds it sees its generation change and
            # packs its own saved weights again in backward (_Direction.backward).
            packed.append(_torch_ops.pack_direction(
                impl, w_ih, w_hh, None if b_ih is None else b_ih + b_hh, w_hr, peep, clip,
                cell_clip, cifg, out=old[k], ln=ln))
        # kept only while every parameter is one whose .data writes are seen; with what the
        # compiled eval route checks it against (the names the tensors were found under;
        # layer norm: the Python route only)
        if all(type(t) is _Parameter for t in every):
            names = list(self._flat_weights_names)
            if peeps:
                names += [m for k in range(n) for m in self._peephole_names(k)]
            fast = None if _torch_eval is None or lns else _torch_eval.make_state(
                self, impl, _NP[dtype], packed, every, names,
                (self.peephole, self.clip, self.cell_clip, self.cifg))
            self._packed = (key, packed, every[:], fast)
        else:
            self._packed = None
        return packed

    def _run(self, x, hx, impl, packed, lengths=None, batch_sizes=None):
        """All layers over time-major padded x (T, B, I): (output, h_n, c_n)."""
        T, B = x.shape[:2]
        if len(packed) == 1 and lengths is None and not torch.is_grad_enabled() \
                and not self._masked():
            # no_grad / inference_mode on one layer-direction: the kernel on the tensors'
            # memory, nothing kept, its arrays returned as tensors (the per-call cost of
            # small shapes, issue 14)
            R, H = self.proj_size or self.hidden_size, self.hidden_size
            xs = _np(x)
            if hx is None:
                h0, c0 = _validation.zeros((1, B, R), xs.dtype), _validation.zeros((1, B, H),
                                                                                   xs.dtype)
            else:
                h0, c0 = _np(hx[0]), _np(hx[1])
            y, h_n, c_n, _ = run_forward(impl, packed[0], xs, h0, c0,
                                         backends.threads_for(T, B, self.input_size, H), None,
                                         False, False)
            return torch.from_numpy(y), torch.from_numpy(h_n), torch.from_numpy(c_n)
        plan = None if lengths is None else make_plan(lengths.astype(np.int64), T, B)
        D, n = 2 if self.bidirectional else 1, len(packed)
        R, H = self.proj_size or self.hidden_size, self.hidden_size
        num_threads = backends.threads_for(T, B, self.input_size, H)
        flat = self._weights()
        opts = self._options()
        masked = self._masked()
        described = None if opts is None and not masked else self._variants()
        dtype = _NP[x.dtype]
        no_masks = ()   # off: run_forward called as without the options
        peeps = [self._peepholes(k) for k in range(n)] if self.peephole else [(None,) * 3] * n
        lns = [self._layer_norms(k) for k in range(n)] if self.layer_norm else [(None,) * 4] * n
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in flat) or (
                hx is not None and (hx[0].requires_grad or hx[1].requires_grad)) or (
                self.peephole and any(t.requires_grad for p in peeps for t in p)) or (
                self.layer_norm and any(t.requires_grad for p in lns for t in p))):
            # hx None: zero states made inside (no torch ops); one layer-direction: the states
            # (1, B, ·) in and out as they are (no indexing, no stack)
            apply = _Direction.apply if _functorch_active() else _direction_apply
            if n == 1:
                h0, c0 = (None, None) if hx is None else hx
                w = self._direction(flat)
                y, h, c = apply(x, h0, c0, *w, *peeps[0], *lns[0],
                                (impl, packed[0], num_threads, plan, False, opts, described,
                                 self._masks(T, B, dtype) if masked else no_masks, (1, B), R, H))
                return y, h, c
            per = len(flat) // n
            hs, cs = [], []
            inp = x
            for layer in range(self.num_layers):
                if layer and self.training and self.dropout > 0.0:
                    inp = self._dropout(inp, lengths, batch_sizes)
                outs = []
                for d in range(D):
                    k = layer * D + d
                    masks = self._masks(T, B, dtype) if masked else no_masks
                    y, h, c = apply(inp, None if hx is None else hx[0][k],
                                    None if hx is None else hx[1][k],
                                    *self._direction(flat[k * per:(k + 1) * per]),
                                    *peeps[k], *lns[k],
                                    (impl, packed[k], num_threads, plan, d == 1, opts,
                                                described, masks, (B,), R, H))
                    outs.append(y)
                    hs.append(h)
                    cs.append(c)
                inp = outs[0] if D == 1 else torch.cat(outs, 2)
            return inp, torch.stack(hs), torch.stack(cs)
        # no gradient needed: nothing is kept for backward, the states are written in place
        h_n, c_n = np.empty((n, B, R), dtype), np.empty((n, B, H), dtype)
        if hx is None:
            h0, c0 = _validation.zeros((n, B, R), dtype), _validation.zeros((n, B, H), dtype)
        else:
            h0, c0 = _np(hx[0]), _np(hx[1])
        inp = _np(x)
        for layer in range(self.num_layers):
            if layer and self.training and self.dropout > 0.0:
                inp = _np(self._dropout(torch.from_numpy(inp), lengths, batch_sizes))
            outs = []
            for d in range(D):
                k = layer * D + d
                masks = self._masks(T, B, dtype) if masked else no_masks
                outs.append(run_forward(impl, packed[k], inp, h0[k], c0[k], num_threads, plan,
                                        d == 1, False, (h_n[k], c_n[k]), *masks)[0])
            inp = outs[0] if D == 1 else np.concatenate(outs, 2)
        return _t(inp), torch.from_numpy(h_n), torch.from_numpy(c_n)

    def _dropout(self, inp, lengths, batch_sizes):
        """torch.nn.LSTM's inter-layer dropout, drawn on the same elements in the same order."""
        if lengths is None:
            return F.dropout(inp, self.dropout, True)
        data = F.dropout(pack_padded_sequence(inp, torch.from_numpy(lengths)).data, self.dropout, True)
        return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=inp.shape[0])[0]


class _Cell(torch.autograd.Function):
    """One step with gradients: (x (B, I), h0 (B, H) or None, c0 (B, H) or None, w_ih, w_hh,
    b_ih, b_hh) -> (h (B, H), c (B, H)); ``run`` is (backend module, packed weights,
    num_threads). The backend's forward and backward with T = 1."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, run):
        impl, packed, num_threads = run
        xs = _np(x)[None]
        B, H = xs.shape[1], packed.hidden_size
        h0s = _validation.zeros((B, H), xs.dtype) if h0 is None else _np(h0)
        c0s = _validation.zeros((B, H), xs.dtype) if c0 is None else _np(c0)
        y, h_n, c_n, cache = run_forward(impl, packed, xs, h0s, c0s, num_threads, None, False,
                                         True)
        gates, c = cache.saved[4], cache.saved[5]
        # The inputs go through save_for_backward for autograd's check against in-place
        # changes (backward reads their memory); the outputs need not: backward reads the
        # kernel's own copies (y, c), kept on ctx with the gates (a few rows).
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        ctx.run = (impl, packed, _generation(packed), num_threads, xs, h0s, c0s, y, gates, c)
        return torch.from_numpy(h_n), torch.from_numpy(c_n)

    @staticmethod
    @_first_order
    def backward(ctx, dh, dc):
        impl, packed, generation, num_threads, xs, h0s, c0s, y, gates, c = ctx.run
        _, _, _, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors    # (the in-place check)
        if _generation(packed) != generation:   # written over since forward: pack again
            packed = _pack_cell(impl, w_ih, w_hh, b_ih, b_hh)
        dx, dw_ih, dw_hh, db, dh0, dc0, _ = impl.backward(
            packed, xs, h0s, c0s, y, gates, c, _np(dh)[None],
            _validation.zeros(h0s.shape, xs.dtype), _np(dc), num_threads)
        need = ctx.needs_input_grad
        return tuple(None if not n or a is None else torch.from_numpy(a) for n, a in zip(
            need, (dx[0], dh0, dc0, dw_ih, dw_hh, db, None if db is None else db.copy()))) + (None,)


_cell_apply = super(torch.autograd.Function, _Cell).apply    # as _direction_apply


def _pack_cell(impl, w_ih, w_hh, b_ih, b_hh, out=None):
    """A cell's packed weights (``out``: a Packed to write over, see _Cell.backward)."""
    return impl.pack(_np(w_ih), _np(w_hh), None if b_ih is None else _np(b_ih + b_hh), None,
                     out=out)


if _torch_eval is not None:
    class _CompiledCell(torch.autograd.Function):
        """``_Cell`` for the compiled route (``_torch_eval.cell_forward``): the step's forward
        has run before ``apply`` (its results are in ``run``, a ``_torch_eval.CellRun``);
        forward saves the inputs and hands the outputs over, backward is the kernel's
        backward of the step; both compiled (``_torch_eval``), as ``_Cell``'s bodies."""
        forward = staticmethod(_torch_eval.cell_function_forward)
        backward = staticmethod(_torch_eval.cell_function_backward)

    _torch_eval.setup_cell(super(torch.autograd.Function, _CompiledCell).apply, _functorch_active,
                           _first_order(_torch_eval.cell_function_backward), _pack_cell)
    _cell_forward = _torch_eval.cell_forward
else:
    _cell_forward = None


class LSTMCell(torch.nn.LSTMCell):
    """torch.nn.LSTMCell whose CPU float32/float64 step and its backward run on lstm_fast.

    Same arguments as ``torch.nn.LSTMCell`` plus the keyword ``backend`` (as for ``LSTM``).
    ``forward(input, hx=None)``: input (B, I) or unbatched (I,), hx = (h, c), each (B, H)
    or (H,), None for zeros; returns (h', c'). One call is the backend's forward of one
    step (T = 1), and in backward its backward of that step, through a
    ``torch.autograd.Function``; without a gradient to compute nothing is kept. Weights
    are packed once per version, as in ``LSTM``. Falls back to torch's implementation in
    the same cases as ``LSTM`` (device, dtype, mixed dtypes, B = 0, autocast, scripting,
    tracing, compile, functorch); inputs of the wrong shape get torch's own error (torch's
    checks run: ours only decide which path), before any kernel runs. Double backward needs
    ``backend="torch"``.

    Parameters
    ----------
    *args, **kwargs
        ``torch.nn.LSTMCell``'s: input_size, hidden_size, bias, device, dtype.
    backend : {"auto", "c", "numba", "numpy", "torch"}, keyword-only
        Which kernels run the CPU float32/float64 step; "torch" is torch's own.

    Raises
    ------
    BackendUnavailableError
        The backend asked for is not available here.

    See Also
    --------
    LSTM : the whole sequence in one call (faster than a loop over the cell).

    Examples
    --------
    >>> import torch
    >>> from lstm_fast.torch import LSTMCell
    >>> _ = torch.manual_seed(0)
    >>> cell = LSTMCell(3, 8)                        # was torch.nn.LSTMCell(3, 8)
    >>> x = torch.randn(5, 4, 3)                     # 5 steps of a batch of 4
    >>> h, c = torch.zeros(4, 8), torch.zeros(4, 8)
    >>> for x_t in x:                                # stepping by hand
    ...     h, c = cell(x_t, (h, c))
    >>> h.shape
    torch.Size([4, 8])
    >>> h.sum().backward()                           # gradients through lstm_fast's kernels
    >>> cell.weight_hh.grad.shape
    torch.Size([32, 8])

    It computes what torch.nn.LSTMCell computes with the same weights:

    >>> ref = torch.nn.LSTMCell(3, 8)
    >>> ref.load_state_dict(cell.state_dict())
    <All keys matched successfully>
    >>> torch.allclose(ref(x[0])[0], cell(x[0])[0], atol=1e-6)
    True
    """

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        if backend != "torch":
            backends.resolve(backend)
        self._wrap_parameters()

    def _wrap_parameters(self):
        for name, p in self._parameters.items():
            if type(p) is torch.nn.Parameter:
                setattr(self, name, _Parameter(p.detach(), p.requires_grad))
        self._packed = None     # (impl, dtype, w_ih, w_hh, b_ih, b_hh, versions, packed,
        #                         the compiled route's Packing or None)

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__")
                     else self.__dict__)
        state["_packed"] = None     # holds the backend module (not picklable); packed again
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._wrap_parameters()

    def _packed_weights(self, impl, dtype, w_ih, w_hh, b_ih, b_hh):
        """Packed weights, packed again only after a change: another tensor, storage or
        version (as ``LSTM._packed_weights``); None if they cannot run on our kernels
        (device, dtype, functorch, shapes torch would reject)."""
        versions = (w_ih._version, w_hh._version, w_ih.data_ptr(), w_hh.data_ptr()) \
            if b_ih is None else (w_ih._version, w_hh._version, b_ih._version, b_hh._version,
                                  w_ih.data_ptr(), w_hh.data_ptr(), b_ih.data_ptr(),
                                  b_hh.data_ptr())
        e = self._packed
        if e is not None and e[0] is impl and e[1] is dtype and e[2] is w_ih and e[3] is w_hh \
                and e[4] is b_ih and e[5] is b_hh and e[6] == versions:
            return e[7]
        ws = (w_ih, w_hh) if b_ih is None else (w_ih, w_hh, b_ih, b_hh)
        if any(not isinstance(t, torch.Tensor) or not t.is_cpu or t.dtype != dtype or _wrapped(t)
               for t in ws) or (b_ih is None) != (b_hh is None):
            return None
        G, H = w_hh.shape[0], w_hh.shape[-1]
        if w_ih.dim() != 2 or w_hh.dim() != 2 or G != 4 * H or w_ih.shape[0] != G or (
                b_ih is not None and (b_ih.shape != (G,) or b_hh.shape != (G,))):
            return None
        old = e[7] if e is not None and e[0] is impl and e[1] is dtype else None
        self._packed = None
        # the previous packing's memory is written over (see _Cell.backward)
        packed = _pack_cell(impl, w_ih, w_hh, b_ih, b_hh, out=old)
        if all(type(t) is _Parameter for t in ws):     # kept only when .data writes are seen
            fast = None if _torch_eval is None else _torch_eval.make_cell_state(
                self, impl, _NP[dtype], packed, (w_ih, w_hh, b_ih, b_hh))
            self._packed = (impl, dtype, w_ih, w_hh, b_ih, b_hh, versions, packed, fast)
        return packed

    def forward(self, input, hx=None):
        """``torch.nn.LSTMCell.forward``, on lstm_fast's kernels where they apply (else torch's).

        Parameters
        ----------
        input : torch.Tensor
            (B, I), or (I,) unbatched.
        hx : tuple of torch.Tensor or None, optional
            ``(h, c)``, each (B, H), or (H,) unbatched; None for zeros.

        Returns
        -------
        (h, c) : tuple of torch.Tensor
            The state after the step, as torch.nn.LSTMCell's.
        """
        if torch.compiler.is_compiling():
            if _ops_apply(self, input, hx):
                return self._forward_ops(input, hx)
        elif _cell_forward is not None:
            # packed weights still valid, shapes torch accepts: the whole call compiled
            # (_torch_eval), with or without a gradient; None for anything else
            out = _cell_forward(self, input, hx)
            if out is not None:
                return out
        backend = self.backend
        if backend == "torch" or torch.jit.is_scripting() or torch.jit.is_tracing() \
                or torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled() \
                or not isinstance(input, torch.Tensor):
            return super().forward(input, hx)
        dtype, dim = input.dtype, input.dim()
        if not input.is_cpu or dtype not in _DTYPES or dim not in (1, 2) or input.numel() == 0 \
                or _wrapped(input):
            return super().forward(input, hx)
        p = self._parameters
        w_ih, w_hh, b_ih, b_hh = p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        B, H = (input.shape[0] if dim == 2 else 1), w_hh.shape[-1]
        h0 = c0 = None
        if hx is not None:
            # anything but two CPU tensors of the input's dtype and shape (B, H) (or (H,)):
            # torch's path, which raises torch's own error where torch rejects the input
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return super().forward(input, hx)
            h0, c0 = hx
            shape = (B, H) if dim == 2 else (H,)
            for t in hx:
                if not isinstance(t, torch.Tensor) or t.shape != shape or t.dtype != dtype \
                        or not t.is_cpu or _wrapped(t):
                    return super().forward(input, hx)
        if input.shape[-1] != w_ih.shape[-1]:
            return super().forward(input, hx)
        impl = backends.get(backends.resolve(backend))
        entry = self._packed
        packed = self._packed_weights(impl, dtype, w_ih, w_hh, b_ih, b_hh)
        if packed is None:
            return super().forward(input, hx)
        if self._packed is not entry and _cell_forward is not None:
            out = _cell_forward(self, input, hx)    # packed now: the compiled route may hold
            if out is not None:
                return out
        num_threads = backends.threads_for(1, B, input.shape[-1], H)
        if torch.is_grad_enabled() and (input.requires_grad or w_ih.requires_grad
                                        or w_hh.requires_grad
                                        or (b_ih is not None and (b_ih.requires_grad
                                                                  or b_hh.requires_grad))
                                        or (hx is not None and (h0.requires_grad
                                                                or c0.requires_grad))):
            if dim == 1:
                input = input.unsqueeze(0)
                if hx is not None:
                    h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
            h, c = (_Cell.apply if _functorch_active() else _cell_apply)(
                input, h0, c0, w_ih, w_hh, b_ih, b_hh, (impl, packed, num_threads))
            return (h, c) if dim == 2 else (h.squeeze(0), c.squeeze(0))
        # no gradient needed: nothing is kept for backward
        xs = _np(input).reshape(1, B, -1)
        np_dtype = xs.dtype
        if hx is None:
            h0s = c0s = _validation.zeros((B, H), np_dtype)
        else:
            h0s, c0s = _np(h0).reshape(B, H), _np(c0).reshape(B, H)
        _, h_n, c_n, _ = run_forward(impl, packed, xs, h0s, c0s, num_threads, None, False, False)
        if dim == 1:
            h_n, c_n = h_n.reshape(H), c_n.reshape(H)
        return torch.from_numpy(h_n), torch.from_numpy(c_n)

    def _forward_ops(self, input, hx):
        """``forward`` on the custom operators (for torch.compile and torch.export): one step
        is the layer operator with T = 1. Shapes torch rejects go to torch's path (its errors)."""
        dim = input.dim()
        if dim not in (1, 2) or (hx is not None and (hx[0].dim() != dim or hx[1].dim() != dim)):
            return super().forward(input, hx)
        x = input if dim == 2 else input.unsqueeze(0)
        B, H = x.shape[0], self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros(B, H)
        else:
            h0, c0 = hx if dim == 2 else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if x.shape[1] != self.weight_ih.shape[1] or h0.shape != (B, H) or c0.shape != (B, H):
            return super().forward(input, hx)
        _, h, c = _torch_ops.run(x.unsqueeze(0), h0, c0, self.weight_ih, self.weight_hh,
                                 self.bias_ih, self.bias_hh, None, False, self.backend)
        return (h, c) if dim == 2 else (h.squeeze(0), c.squeeze(0))


# --- torch.compile: Dynamo refuses every torch.nn.LSTM instance (subclasses included) unless
# torch._dynamo.config.allow_rnn is set, which would also let it trace torch's own LSTMs (its
# experimental support). Ours run on our custom operators under compile, so Dynamo's module
# wrapping is told to allow them, and only them. Dynamo is not imported for this: the patch
# is applied when torch imports it (on the first torch.compile), or now if it already has.

_BUILDER = "torch._dynamo.variables.builder"


def _allow_ours_in_dynamo(builder):
    cls = getattr(builder, "VariableBuilder", None)
    orig = getattr(cls, "wrap_module", None)
    if orig is None or getattr(orig, "_lstm_fast", False):
        return
    from torch._dynamo import config

    @functools.wraps(orig)
    def wrap_module(self, value):
        if isinstance(value, LSTM) and value.backend != "torch" and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return orig(self, value)
        return orig(self, value)
    wrap_module._lstm_fast = True
    cls.wrap_module = wrap_module


class _DynamoImportHook:
    """A meta path finder that runs ``_allow_ours_in_dynamo`` right after torch imports
    Dynamo's variable builder; it removes itself on first use."""

    def find_spec(self, name, path=None, target=None):
        if name != _BUILDER:
            return None
        import importlib.util
        import sys
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            try:
                _allow_ours_in_dynamo(module)
            except Exception:       # a torch whose internals moved: Dynamo's own behaviour
                pass
        spec.loader.exec_module = exec_and_patch
        return spec


def _install_dynamo_hook():
    import sys
    if _BUILDER in sys.modules:
        _allow_ours_in_dynamo(sys.modules[_BUILDER])
    elif not any(isinstance(f, _DynamoImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _DynamoImportHook())


_install_dynamo_hook()


# --- quantize: an inference copy of a torch model whose LSTMs run with low-precision weights

def _inference_only_error(weight_dtype):
    return (f"lstm_fast.torch.QuantizedLSTM ({weight_dtype} weights) is for inference only: "
            "it computes no gradients and has no training mode; train the float32 model and "
            "quantize it again (lstm_fast.torch.quantize)")


class QuantizedLSTM(torch.nn.Module):
    """An inference-only ``torch.nn.LSTM`` whose products use low-precision weights: made by
    `quantize`, it runs an ``lstm_fast.quantize``-d NumPy layer (``self.layer``) on the
    tensors' memory, so its numbers are that layer's, bit for bit.

    ``forward(input, hx=None)`` is torch.nn.LSTM's (time-major or ``batch_first``,
    unbatched, PackedSequence, hx = (h_0, c_0) or None), on CPU tensors of the layer's dtype.
    Always in eval mode: ``train()`` raises, and so does a call that would need a gradient
    (an input or state that requires grad, with grad mode on). The module has no
    parameters: the float32 masters are the layer's (``self.layer.state_dict()``).

    Parameters
    ----------
    lstm : torch.nn.LSTM
        The trained LSTM (``torch.nn.LSTM`` or ``lstm_fast.torch.LSTM``), float32; its
        weights are copied and quantized, ``lstm`` itself is unchanged.
    weight_dtype : str, optional
        "bfloat16" (default), "int8", or another of ``lstm_fast.LSTM``'s weight dtypes.
    backend : str, optional
        lstm_fast backend of the quantized layer ("auto": the C kernels).

    Raises
    ------
    TypeError
        ``lstm`` not a torch.nn.LSTM, or its parameters not float32/float64.
    ValueError
        A weight dtype the layer does not accept (the options are named).

    Examples
    --------
    >>> import torch
    >>> import lstm_fast.torch
    >>> _ = torch.manual_seed(0)
    >>> lstm = torch.nn.LSTM(3, 8, batch_first=True)      # trained in float32
    >>> q = lstm_fast.torch.QuantizedLSTM(lstm, "bfloat16")  # or lstm_fast.torch.quantize(lstm)
    >>> out, (h_n, c_n) = q(torch.randn(2, 5, 3))
    >>> out.shape, q.training
    (torch.Size([2, 5, 8]), False)
    """

    def __init__(self, lstm, weight_dtype="bfloat16", backend="auto"):
        super().__init__()
        if not isinstance(lstm, torch.nn.LSTM):
            raise TypeError(f"lstm must be a torch.nn.LSTM (or lstm_fast.torch.LSTM), got "
                            f"{type(lstm).__name__}")
        from .layer import LSTM as _Layer, quantize as _quantize
        p0 = next(iter(lstm.parameters()))
        if p0.dtype not in _DTYPES:
            raise TypeError(f"lstm's parameters must be float32 or float64, got {p0.dtype}")
        variants = {k: getattr(lstm, k, v) for k, v in (
            ("peephole", False), ("clip", 0.0), ("cell_clip", 0.0), ("cifg", False),
            ("layer_norm", False))}
        layer = _Layer(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                       lstm.batch_first, 0.0, lstm.bidirectional, lstm.proj_size,
                       dtype=_NP[p0.dtype], backend=backend, peephole=variants["peephole"],
                       clip=variants["clip"] or None, cell_clip=variants["cell_clip"] or None,
                       cifg=variants["cifg"], layer_norm=variants["layer_norm"])
        layer.load_state_dict({k: v.detach().cpu().numpy()
                               for k, v in lstm.state_dict().items()})
        self.layer = _quantize(layer, weight_dtype)     # the layer checks weight_dtype
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "bidirectional", "proj_size"):
            setattr(self, name, getattr(lstm, name))
        self.dtype = p0.dtype
        super().train(False)

    @property
    def weight_dtype(self):
        """The weights' precision in the products ("bfloat16", ...)."""
        return self.layer.weight_dtype

    def train(self, mode=True):
        """Eval mode only: ``train(False)``/``eval()`` are accepted, ``train(True)`` raises.

        Parameters
        ----------
        mode : bool, optional
            Must be false: the module is for inference only.

        Returns
        -------
        QuantizedLSTM
            The module itself, in eval mode.

        Raises
        ------
        ValueError
            ``mode`` true: the module is for inference only.
        """
        if mode:
            raise ValueError(_inference_only_error(self.weight_dtype))
        return super().train(False)

    def extra_repr(self):
        """``input_size, hidden_size, ...`` as torch.nn.LSTM's, plus the weight dtype.

        Returns
        -------
        str
            What ``repr`` shows between the parentheses.
        """
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", weight_dtype={self.weight_dtype!r}"

    def _array(self, t, name):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_cpu or t.dtype != self.dtype:
            raise TypeError(f"{name} must be a CPU tensor of dtype {self.dtype} (the quantized "
                            f"LSTM's), got {t.dtype} on {t.device}")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(_inference_only_error(self.weight_dtype) + f" ({name} requires "
                               "grad: call it under torch.no_grad() or detach it)")
        return t.detach().contiguous().numpy()

    def forward(self, input, hx=None):
        """``torch.nn.LSTM.forward`` with the low-precision weights, no gradient.

        Parameters
        ----------
        input : torch.Tensor or PackedSequence
            (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or packed.
        hx : tuple of torch.Tensor or None, optional
            ``(h_0, c_0)`` as for torch.nn.LSTM; None for zeros.

        Returns
        -------
        output : torch.Tensor or PackedSequence
        (h_n, c_n) : tuple of torch.Tensor

        Raises
        ------
        RuntimeError
            A gradient would be needed (an input requires grad in grad mode).
        TypeError
            A tensor not on the CPU or not of the layer's dtype.
        """
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("hx must be a tuple (h_0, c_0) or None")
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._array(data, "input")
            if hx is not None and sorted_indices is not None:
                hx = tuple(t.index_select(1, sorted_indices) for t in hx)
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            layer = self.layer
            batch_first, layer.batch_first = layer.batch_first, False
            try:
                out, (h, c) = self._run(x, hx, lengths.numpy())
            finally:
                layer.batch_first = batch_first
            out = pack_padded_sequence(out, lengths).data
            if unsorted_indices is not None:
                h, c = h.index_select(1, unsorted_indices), c.index_select(1, unsorted_indices)
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h, c)
        return self._run(input, hx, None)

    def _run(self, input, hx, lengths):
        x = self._array(input, "input")
        h = None if hx is None else (self._array(hx[0], "hx[0]"), self._array(hx[1], "hx[1]"))
        out, (h_n, c_n) = self.layer(x, h, lengths)
        return _t(out), (_t(h_n), _t(c_n))


def quantize(module, weight_dtype="bfloat16", *, inplace=False, backend="auto"):
    """An inference copy of a torch model whose LSTMs compute with low-precision weights.

    ``lstm_fast.quantize`` for torch: every ``torch.nn.LSTM`` in `module` (so every
    ``lstm_fast.torch.LSTM``), found recursively as ``torch.ao.quantization.quantize_dynamic``
    finds its modules, is replaced by a `QuantizedLSTM` running lstm_fast's kernels with
    its weights in `weight_dtype`; the model is put in eval mode. Inputs, outputs and states
    stay float32; see the NumPy guide for the exact bfloat16 and int8 arithmetic and its
    error. Any weight dtype ``lstm_fast.LSTM(weight_dtype=...)`` accepts is accepted here,
    and checked by it (the options are named in its error).

    Parameters
    ----------
    module : torch.nn.Module
        A trained model, or an LSTM itself (then the `QuantizedLSTM` is returned).
    weight_dtype : str, optional
        "bfloat16" (default), "int8", or another of ``lstm_fast.LSTM``'s weight dtypes.
    inplace : bool, keyword-only
        Replace the LSTMs in `module` itself (default: in a deep copy; `module` unchanged).
    backend : str, keyword-only
        lstm_fast backend of the quantized layers ("auto": the C kernels).

    Returns
    -------
    torch.nn.Module
        The model (a copy unless `inplace`), in eval mode; gradients through its LSTMs and
        ``train()`` raise.

    Raises
    ------
    TypeError
        `module` is not a torch.nn.Module, or an LSTM's parameters are not float32/float64.
    ValueError
        A weight dtype the layers do not accept (e.g. bfloat16 with a projection or a
        variant, or with the numba backend).

    Examples
    --------
    >>> import torch
    >>> import lstm_fast.torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential()
    >>> model.lstm = lstm_fast.torch.LSTM(3, 8, num_layers=2)
    >>> q = lstm_fast.torch.quantize(model, "bfloat16")
    >>> q.lstm
    QuantizedLSTM(3, 8, num_layers=2, weight_dtype='bfloat16')
    >>> x = torch.randn(5, 2, 3)
    >>> with torch.no_grad():
    ...     err = (q.lstm(x)[0] - model.lstm(x)[0]).abs().max()
    >>> bool(err < 1e-2)
    True
    """
    if isinstance(module, torch.nn.LSTM):
        return QuantizedLSTM(module, weight_dtype, backend)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    import copy
    model = module if inplace else copy.deepcopy(module)

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.LSTM):
                setattr(parent, name, QuantizedLSTM(child, weight_dtype, backend))
            else:
                swap(child)
    swap(model)
    return model.eval()
