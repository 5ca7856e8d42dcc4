"""``lstm_fast.torch.LSTM``: torch.nn.LSTM with its CPU work done by lstm_fast's kernels.

A subclass of ``torch.nn.LSTM``: constructor, attributes, parameters, state_dict,
repr and ``forward(input, hx=None)`` are torch's; only the computation differs.
Each layer and direction is one ``torch.autograd.Function`` that hands the
tensors' memory to our kernels (``tensor.numpy()`` / ``torch.from_numpy``, no
copies for contiguous float tensors) and returns gradients for the input, h0,
c0 and every weight and bias. Between layers, in training mode, torch's own
``F.dropout`` runs in the autograd graph, on the same data torch.nn.LSTM drops
out (the packed rows for a PackedSequence), so a seeded run draws the same
masks as torch.nn.LSTM. PackedSequence inputs are unpacked to padded time-major
arrays plus lengths, run with lstm_fast's ``lengths`` support (the reverse
direction starts at each sequence's own last step) and repacked with the
input's ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``.

Falls back to ``torch.nn.LSTM.forward`` (torch's numbers, torch's errors) for
everything the kernels do not cover: ``proj_size > 0`` on a backend without
projection support (``SUPPORTS_PROJECTION``; the NumPy reference has it),
tensors not on the CPU, dtypes other than float32/float64, inputs whose dtype differs from the weights
(torch then raises its own error), empty inputs (T = 0 or B = 0), autocast,
TorchScript scripting/tracing, torch.compile and functorch transforms (vmap, grad).
Shape errors are torch's own (``check_forward_args``), raised before any kernel runs.
``backend="torch"`` always uses torch's implementation.

Weights are packed for the kernels at every forward call: parameters may change
in place at any time (optimizers, ``.data`` writes) and torch offers no
reliable signal for it; packing costs O(weights), small next to the sequence.

Not covered by the fallback, because it cannot be known at forward time:
double backward (``create_graph=True`` then differentiating the gradients, e.g.
a gradient penalty) raises an error on our path; construct the module with
``backend="torch"`` (or set ``module.backend = "torch"``) for that.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends
from .functional import _backward_direction, _forward_direction, make_plan, pack_weights

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)


def _np(t):
    """Zero-copy NumPy view of a CPU tensor (contiguous copy first if needed)."""
    return t.detach().contiguous().numpy()


def _t(a):
    """Tensor sharing ``a``'s memory (copied first if ``a`` has negative strides)."""
    return torch.from_numpy(np.ascontiguousarray(a))


class _Direction(torch.autograd.Function):
    """One layer, one direction: (x (T, B, I), h0 (B, R), c0 (B, H), weights)
    -> (y (T, B, R), h_n (B, R), c_n (B, H)), R = proj_size or H."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, backend, plan, reverse):
        impl = backends.get(backend)
        b = None if b_ih is None else _np(b_ih) + _np(b_hh)
        packed = pack_weights(impl, backend, _np(w_ih), _np(w_hh), b,
                              None if w_hr is None else _np(w_hr))
        y, h_n, c_n, saved = _forward_direction(
            impl, packed, _np(x), _np(h0), _np(c0), backends.get_num_threads(), plan, reverse)
        y, h_n, c_n = _t(y), _t(h_n), _t(c_n)
        # Inputs and outputs are saved for autograd's check against in-place
        # changes (the kernel's arrays share their memory); the kernel's own
        # arrays go through save_for_backward too, so autograd frees them after
        # backward like any saved tensor.
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, h_n, c_n, *map(_t, saved))
        ctx.kernel = (impl, packed, plan, reverse, b_ih is not None)
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        saved = tuple(t.numpy() for t in ctx.saved_tensors[11:])
        impl, packed, plan, reverse, has_bias = ctx.kernel
        dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = _backward_direction(
            impl, packed, saved, _np(dy), _np(dh_n), _np(dc_n), backends.get_num_threads(),
            plan, reverse)
        db_ih = _t(db) if has_bias else None
        db_hh = db_ih.clone() if has_bias else None
        return (_t(dx), _t(dh0), _t(dc0), _t(dw_ih), _t(dw_hh), db_ih, db_hh,
                None if dw_hr is None else _t(dw_hr), None, None, None)


class LSTM(torch.nn.LSTM):
    """torch.nn.LSTM whose CPU float32/float64 forward and backward run on lstm_fast.

    Same arguments as ``torch.nn.LSTM`` plus the keyword ``backend`` ("auto",
    "c", "numba", "numpy", or "torch" for torch's own implementation). The
    backend is checked at construction (an unavailable one is an error) and
    resolved again at each call, so "auto" follows ``LSTM_FAST_BACKEND``.
    See the module docstring for what falls back to torch.
    """

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        if backend != "torch":
            backends.resolve(backend)

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
        name = backends.resolve(backend)
        if self.proj_size > 0 and not getattr(backends.get(name), "SUPPORTS_PROJECTION", False):
            return None
        return name

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

    def _run(self, x, hx, backend, lengths=None, batch_sizes=None):
        """All layers over time-major padded x (T, B, I): (output, h_n, c_n)."""
        T, B = x.shape[:2]
        plan = None if lengths is None else make_plan(lengths.astype(np.int64), T, B)
        D = 2 if self.bidirectional else 1
        h0, c0 = hx
        hs, cs = [], []
        inp = x
        for layer in range(self.num_layers):
            if layer and self.training and self.dropout > 0.0:
                inp = self._dropout(inp, lengths, batch_sizes)
            outs = []
            for d in range(D):
                idx = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
                w_hr = getattr(self, "weight_hr" + sfx) if self.proj_size else None
                y, h, c = _Direction.apply(
                    inp, h0[idx], c0[idx], getattr(self, "weight_ih" + sfx),
                    getattr(self, "weight_hh" + sfx), b_ih, b_hh, w_hr, backend, plan, d == 1)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            inp = outs[0] if D == 1 else torch.cat(outs, 2)
        return inp, torch.stack(hs), torch.stack(cs)

    def _dropout(self, inp, lengths, batch_sizes):
        """torch.nn.LSTM's inter-layer dropout, drawn on the same elements in the same order."""
        if lengths is None:
            return F.dropout(inp, self.dropout, True)
        data = F.dropout(pack_padded_sequence(inp, torch.from_numpy(lengths)).data, self.dropout, True)
        return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=inp.shape[0])[0]
