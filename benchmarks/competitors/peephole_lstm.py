"""What users run today for a peephole LSTM with clipping on the CPU: a loop over
LSTMCell-style torch ops (torch.nn.LSTM has no peepholes, pytorch#630), eager or compiled
with TorchScript (``torch.jit.script``). The competitor of benchmarks/bench_variants.py.

The equations are lstm_fast's (``lstm_fast.backends.reference``, ONNX's LSTM with ``P`` and
``clip``, TensorFlow's ``cell_clip``): per step, gates in torch's order i, f, g, o,

    i = sigmoid(clamp(W_i x + R_i h + b_i + w_ci * c_{t-1}))
    f = sigmoid(clamp(W_f x + R_f h + b_f + w_cf * c_{t-1}))
    g = tanh(clamp(W_g x + R_g h + b_g))
    c_t = clamp_cell(f * c_{t-1} + i * g)
    o = sigmoid(clamp(W_o x + R_o h + b_o + w_co * c_t))
    h_t = o * tanh(c_t)

(clamp to [-clip, clip], clamp_cell to [-cell_clip, cell_clip]; 0 is off). The input
projection of all steps is one matrix product before the loop (as a careful user writes
it; a per-step product would only be slower). Gradients are autograd's.
"""

import math
from typing import Tuple

import torch
from torch import Tensor


def _clamp(z: Tensor, bound: float) -> Tensor:
    return z.clamp(-bound, bound) if bound > 0 else z


def peephole_lstm(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                  b_hh: Tensor, w_ci: Tensor, w_cf: Tensor, w_co: Tensor, clip: float,
                  cell_clip: float) -> Tuple[Tensor, Tensor, Tensor]:
    """x (T, B, I), h and c (B, H) -> (y (T, B, H), h_T, c_T)."""
    xw = torch.matmul(x, w_ih.t()) + (b_ih + b_hh)     # (T, B, 4H), all steps at once
    ys = []
    for t in range(x.shape[0]):
        a = xw[t] + torch.matmul(h, w_hh.t())
        ai, af, ag, ao = a.chunk(4, 1)
        i = torch.sigmoid(_clamp(ai + w_ci * c, clip))
        f = torch.sigmoid(_clamp(af + w_cf * c, clip))
        g = torch.tanh(_clamp(ag, clip))
        c = _clamp(f * c + i * g, cell_clip)
        o = torch.sigmoid(_clamp(ao + w_co * c, clip))
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


_scripted = None


def scripted():
    """``peephole_lstm`` compiled by TorchScript (once)."""
    global _scripted
    if _scripted is None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _scripted = torch.jit.script(peephole_lstm)
    return _scripted


class PeepholeLSTM(torch.nn.Module):
    """One layer: torch.nn.LSTM's parameters (weight_ih_l0, weight_hh_l0, bias_ih_l0,
    bias_hh_l0) plus weight_ci_l0, weight_cf_l0, weight_co_l0 (H,), so lstm_fast's
    state_dict loads as is. ``script=True`` runs the TorchScript loop."""

    def __init__(self, input_size, hidden_size, clip=0.0, cell_clip=0.0, script=False,
                 dtype=torch.float32):
        super().__init__()
        H, I = hidden_size, input_size
        k = 1.0 / math.sqrt(H)
        shapes = {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H), "bias_ih_l0": (4 * H,),
                  "bias_hh_l0": (4 * H,), "weight_ci_l0": (H,), "weight_cf_l0": (H,),
                  "weight_co_l0": (H,)}
        for name, shape in shapes.items():
            self.register_parameter(name, torch.nn.Parameter(
                torch.empty(shape, dtype=dtype).uniform_(-k, k)))
        self.hidden_size, self.clip, self.cell_clip = H, float(clip), float(cell_clip)
        self.fn = scripted() if script else peephole_lstm

    def forward(self, x, hx=None):
        B, H = x.shape[1], self.hidden_size
        h, c = (x.new_zeros(B, H), x.new_zeros(B, H)) if hx is None else (hx[0][0], hx[1][0])
        y, h, c = self.fn(x, h, c, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                          self.bias_hh_l0, self.weight_ci_l0, self.weight_cf_l0,
                          self.weight_co_l0, self.clip, self.cell_clip)
        return y, (h[None], c[None])
