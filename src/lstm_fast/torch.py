"""``lstm_fast.torch.LSTM``: torch.nn.LSTM with its CPU work done by lstm_fast's kernels.

A subclass of ``torch.nn.LSTM``: constructor, attributes, parameters, state_dict,
repr and ``forward(input, hx=None)`` are torch's; only the computation differs. Each
layer and direction is one call of ``functional.run_forward`` on the tensors' memory
(``tensor.numpy()`` / ``torch.from_numpy``, no copies for contiguous float tensors):
through a ``torch.autograd.Function`` when a gradient is needed, directly and keeping
nothing for backward when none is (``torch.no_grad``, ``torch.inference_mode``, or no
input or parameter requiring grad). Between layers, in training mode, torch's own
``F.dropout`` runs in the autograd graph, on the same data torch.nn.LSTM drops out
(the packed rows for a PackedSequence), so a seeded run draws the same masks as
torch.nn.LSTM. PackedSequence inputs are unpacked to padded time-major arrays plus
lengths, run with lstm_fast's ``lengths`` support (the reverse direction starts at
each sequence's own last step) and repacked with the input's ``batch_sizes``,
``sorted_indices`` and ``unsorted_indices``.

Packed weights are kept between calls, one per layer and direction, and packed again
when a parameter changed. A change is seen through the tensors' version counters and
storage: an optimizer step, ``load_state_dict``, ``.to()``, writes under
``torch.no_grad()`` all bump the counter or replace the storage. ``p.data`` writes do
neither on a plain torch Parameter, so this module's parameters are ``_Parameter``s,
whose ``.data`` is ``p.detach()``: the same memory, sharing the version counter, so the
classic ``p.data.add_(p.grad, alpha=-lr)`` update is seen too. (Unlike plain
``.data``, such a write between a forward and its backward is then reported by
autograd as an in-place modification, as a ``detach()`` write is.) Parameters that are
not ``_Parameter``s (replaced from outside, parametrizations) are packed at every call.

Falls back to ``torch.nn.LSTM.forward`` (torch's numbers, torch's errors) for
everything the kernels do not cover: tensors not on the CPU, dtypes other than
float32/float64, inputs whose dtype differs from the weights (torch then raises its
own error), empty inputs (T = 0 or B = 0), autocast, TorchScript scripting/tracing,
torch.compile and functorch transforms (vmap, grad). Shape errors are torch's own
(``check_forward_args``), raised before any kernel runs. ``backend="torch"`` always uses
torch's implementation. Double backward (``create_graph=True`` then differentiating
the gradients) raises an error on our path; use ``backend="torch"`` for that.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _params, backends
from .functional import LSTMCache, make_plan, run_backward, run_forward

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)


def _np(t):
    """Zero-copy NumPy view of a CPU tensor (contiguous copy first if needed)."""
    return t.detach().contiguous().numpy()


def _t(a):
    """Tensor sharing ``a``'s memory (copied first if ``a`` has negative strides)."""
    return torch.from_numpy(np.ascontiguousarray(a))


class _Parameter(torch.nn.Parameter):
    """A Parameter whose ``.data`` is ``detach()``: the same memory and the same version
    counter, so that writes through ``.data`` are seen by the packed-weights cache."""

    @property
    def data(self):
        return self.detach()

    @data.setter
    def data(self, value):
        torch.Tensor.data.__set__(self, value)


class _Direction(torch.autograd.Function):
    """One layer, one direction with gradients: (x (T, B, I), h0 (B, R), c0 (B, H),
    w_ih, w_hh, b_ih, b_hh, w_hr) -> (y (T, B, R), h_n (B, R), c_n (B, H)); ``run`` is
    (backend module, packed weights, num_threads, LengthPlan or None, reverse)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, run):
        impl, packed, num_threads, plan, reverse = run
        h_n, c_n = h0.new_empty(h0.shape), c0.new_empty(c0.shape)
        y, _, _, cache = run_forward(impl, packed, _np(x), _np(h0), _np(c0), num_threads, plan,
                                     reverse, True, (h_n.numpy(), c_n.numpy()))
        y = _t(y)
        # Inputs and outputs are saved for autograd's check against in-place changes;
        # the kernel's own arrays go through save_for_backward too, so that autograd
        # frees them after backward like any saved tensor.
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, h_n, c_n,
                              *map(_t, cache.saved))
        ctx.run = (impl, packed, num_threads, plan, reverse)
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        impl, packed, num_threads, plan, reverse = ctx.run
        cache = LSTMCache(impl, packed, tuple(t.numpy() for t in ctx.saved_tensors[11:]), plan,
                          reverse)
        B = dh_n.shape[0]
        dh0, dc0 = dh_n.new_empty(B, dh_n.shape[1]), dc_n.new_empty(B, dc_n.shape[1])
        dx, dw_ih, dw_hh, db, _, _, dw_hr = run_backward(cache, _np(dy), _np(dh_n), _np(dc_n),
                                                         num_threads, (dh0.numpy(), dc0.numpy()))
        db_ih = None if db is None else _t(db)
        db_hh = None if db is None else db_ih.clone()
        return (_t(dx), dh0, dc0, _t(dw_ih), _t(dw_hh), db_ih, db_hh,
                None if dw_hr is None else _t(dw_hr), None)


class LSTM(torch.nn.LSTM):
    """torch.nn.LSTM whose CPU float32/float64 forward and backward run on lstm_fast.

    Same arguments as ``torch.nn.LSTM`` plus the keyword ``backend`` ("auto", "c",
    "numba", "numpy", or "torch" for torch's own implementation). The backend is
    checked at construction (an unavailable one is an error) and resolved again at
    each call, so "auto" follows ``LSTM_FAST_BACKEND``. See the module docstring for
    what falls back to torch and how weight changes are seen.
    """

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        if backend != "torch":
            backends.resolve(backend)
        self._wrap_parameters()

    def _wrap_parameters(self):
        for name in self._flat_weights_names:
            p = getattr(self, name)
            if type(p) is torch.nn.Parameter:
                setattr(self, name, _Parameter(p.detach(), p.requires_grad))
        self._packed = {}     # layer-direction k -> (parameters, versions, packed)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._wrap_parameters()

    def _kernel_backend(self, input, hx):
        """The resolved backend name if our kernels can run this call, else None."""
        backend = getattr(self, "backend", "auto")
        if backend == "torch":
            return None
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling() \
                or torch._C._is_any_autocast_enabled():
            return None
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, torch.Tensor) or data.device.type != "cpu" \
                or data.dtype not in _DTYPES or data.numel() == 0:
            return None
        tensors = [getattr(self, name) for name in self._flat_weights_names]
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            tensors += list(hx)
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype != data.dtype:
                return None
        wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
        if wrapped is not None and any(wrapped(t) for t in [data] + tensors):
            return None
        return backends.resolve(backend)

    def forward(self, input, hx=None):
        backend = self._kernel_backend(input, hx)
        if backend is None:
            return super().forward(input, hx)
        D = 2 if self.bidirectional else 1
        n, R = self.num_layers * D, self.proj_size or self.hidden_size
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            B = int(batch_sizes[0])
            if hx is None:
                hx = (data.new_zeros(n, B, R), data.new_zeros(n, B, self.hidden_size))
            self.check_forward_args(data, hx, batch_sizes)
            hx = self.permute_hidden(hx, sorted_indices)
            # padded in sorted order (longest first), as torch's kernels see it
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            out, h_n, c_n = self._run(x, hx, backend, lengths.numpy(), batch_sizes)
            out = pack_padded_sequence(out, lengths).data
            return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden((h_n, c_n), unsorted_indices))
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        B = input.size(batch_dim)
        if hx is None:
            hx = (input.new_zeros(n, B, R), input.new_zeros(n, B, self.hidden_size))
            self.check_forward_args(input, hx, None)
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
        out, h_n, c_n = self._run(x, hx, backend)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _packed_weights(self, impl, k, weights):
        """The packed weights of layer-direction k, packed again only when a parameter
        changed (another tensor, another storage, or a write that bumped its version)."""
        versions = tuple((t._version, t.data_ptr()) for t in weights if t is not None)
        entry = self._packed.get(k)
        if entry is not None and entry[0] is impl and entry[2] == versions \
                and all(a is b for a, b in zip(entry[1], weights)):
            return entry[3]
        w_ih, w_hh, b_ih, b_hh, w_hr = (None if t is None else _np(t) for t in weights)
        packed = impl.pack(w_ih, w_hh, None if b_ih is None else b_ih + b_hh, w_hr)
        if all(t is None or type(t) is _Parameter for t in weights):
            self._packed[k] = (impl, weights, versions, packed)
        return packed

    def _run(self, x, hx, backend, lengths=None, batch_sizes=None):
        """All layers over time-major padded x (T, B, I): (output, h_n, c_n)."""
        T, B = x.shape[:2]
        impl = backends.get(backend)
        plan = None if lengths is None else make_plan(lengths.astype(np.int64), T, B)
        D = 2 if self.bidirectional else 1
        h0, c0 = hx
        num_threads = backends.threads_for(T, B, self.input_size, self.hidden_size)
        grad = torch.is_grad_enabled() and (
            x.requires_grad or h0.requires_grad or c0.requires_grad
            or any(p.requires_grad for p in self._flat_weights))
        if not grad:
            h_n, c_n = h0.new_empty(h0.shape), c0.new_empty(c0.shape)
            hn_np, cn_np = h_n.numpy(), c_n.numpy()
            h0_np, c0_np = _np(h0), _np(c0)
        hs, cs = [], []
        inp = x
        for layer in range(self.num_layers):
            if layer and self.training and self.dropout > 0.0:
                inp = self._dropout(inp, lengths, batch_sizes)
            outs = []
            for d in range(D):
                k = layer * D + d
                weights = tuple(getattr(self, name) if name else None
                                for name in self._direction_names(layer, d))
                run = (impl, self._packed_weights(impl, k, weights), num_threads, plan, d == 1)
                if grad:
                    y, h, c = _Direction.apply(inp, h0[k], c0[k], *weights, run)
                    hs.append(h)
                    cs.append(c)
                else:
                    y = run_forward(impl, run[1], _np(inp), h0_np[k], c0_np[k], num_threads,
                                    plan, d == 1, False, (hn_np[k], cn_np[k]))[0]
                    y = _t(y)
                outs.append(y)
            inp = outs[0] if D == 1 else torch.cat(outs, 2)
        if grad:
            return inp, torch.stack(hs), torch.stack(cs)
        return inp, h_n, c_n

    def _direction_names(self, layer, d):
        """(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) names, None where absent."""
        sfx = _params.suffix(layer, d)
        return ("weight_ih" + sfx, "weight_hh" + sfx,
                "bias_ih" + sfx if self.bias else None, "bias_hh" + sfx if self.bias else None,
                "weight_hr" + sfx if self.proj_size else None)

    def _dropout(self, inp, lengths, batch_sizes):
        """torch.nn.LSTM's inter-layer dropout, drawn on the same elements in the same order."""
        if lengths is None:
            return F.dropout(inp, self.dropout, True)
        data = F.dropout(pack_padded_sequence(inp, torch.from_numpy(lengths)).data, self.dropout, True)
        return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=inp.shape[0])[0]
