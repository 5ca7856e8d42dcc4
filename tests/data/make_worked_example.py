"""Generate worked_example.json: the hand-worked example computed by torch.nn.LSTM.

An outside implementation (torch autograd), so the test of `lstm-fast explain`
does not compare the library with itself. Run: python tests/data/make_worked_example.py
"""
import json
import pathlib

import torch

x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).reshape(3, 1, 1)
m = torch.nn.LSTM(1, 1).double()
with torch.no_grad():
    m.weight_ih_l0.copy_(torch.tensor([[0.6], [0.5], [0.7], [0.8]], dtype=torch.float64))
    m.weight_hh_l0.copy_(torch.tensor([[0.2], [0.1], [0.3], [0.4]], dtype=torch.float64))
    m.bias_ih_l0.zero_()
    m.bias_hh_l0.zero_()
x.requires_grad_(True)
head = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
out, (h_n, c_n) = m(x)
pred = head * h_n[0, 0, 0]
loss = 0.5 * (pred - 4.0) ** 2
loss.backward()
data = {
    "h": out[:, 0, 0].tolist(),
    "c_n": c_n.item(),
    "pred": pred.item(),
    "loss": loss.item(),
    "dw_ih": m.weight_ih_l0.grad[:, 0].tolist(),
    "dw_hh": m.weight_hh_l0.grad[:, 0].tolist(),
    "db": m.bias_ih_l0.grad.tolist(),
    "dhead": head.grad.item(),
    "dx": x.grad[:, 0, 0].tolist(),
}
path = pathlib.Path(__file__).with_name("worked_example.json")
path.write_text(json.dumps(data, indent=1) + "\n")
print(f"wrote {path}")
