"""What torch itself costs around one call of an LSTM cell at (B, I, H) = (1, 64, 64), float32,
1 thread: the floor under ``lstm_fast.torch.LSTMCell``'s per-call cost (issue 17), timed
as bench_cell.py times its cases (``cell_forward``: one step under
``torch.inference_mode()``; ``cell_train``: the leaves' grads set to None, one step,
``torch.autograd.backward((h, c), (dh, dc))``), next to our cell and torch's.

* eval floor: a module whose forward takes ``x.numpy()`` and returns two ``torch.from_numpy``
  tensors (what any cell on NumPy memory cannot avoid); the compiled route with its kernel
  replaced by a stub (``lstm_fast.torch.run_forward`` replaced: the route's checks, then one
  Python call returning preallocated arrays in place of the C call);
* train floor: a module whose forward is one ``autograd.Function`` with our Function's
  arguments (x, h, c, 4 parameters) that does no work (outputs and gradients preallocated,
  7 tensors saved, 7 gradients returned); and an empty Function (saves nothing, returns
  no gradient) with the same arguments: the engine's and ``Function.apply``'s own cost.

Not a pytest-benchmark case (no competitor): a floor to read bench_cell.py's figures against.

    python -m benchmarks.cell_floor
"""

import timeit

import numpy as np
import torch

import lstm_fast.torch as ltorch

B, I, H = 1, 64, 64


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(I, H)
    ours = ltorch.LSTMCell(I, H)
    ours.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    dh, dc = torch.randn(B, H), torch.randn(B, H)
    HN, CN = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)

    class Nothing(torch.nn.Module):
        def forward(self, x, hx=None):
            return hx

    class Stub(torch.nn.Module):
        def forward(self, x, hx=None):
            x.numpy()
            return torch.from_numpy(HN), torch.from_numpy(CN)

    def inference(m):
        def fn():
            with torch.inference_mode():
                return m(x, (h, c))
        return fn

    def stub_kernel(impl, packed, x, h0, c0, *args):
        return None, HN, CN, None

    def t(f, n):
        for _ in range(n // 10):
            f()
        return min(timeit.repeat(f, number=n, repeat=7)) / n * 1e6

    rows = [("eval: inference_mode + module call alone",
             t(inference(Nothing()), 20000)),
            ("eval floor: x.numpy() + 2 from_numpy", t(inference(Stub()), 20000))]
    inference(ours)()                       # packed: the compiled route from now on
    real = ltorch.run_forward
    ltorch.run_forward = stub_kernel
    try:
        rows.append(("eval: our compiled route, stub kernel", t(inference(ours), 20000)))
    finally:
        ltorch.run_forward = real
    rows += [("eval: lstm_fast.torch.LSTMCell", t(inference(ours), 20000)),
             ("eval: torch.nn.LSTMCell", t(inference(ref), 20000))]

    xg, hg, cg = (t_.clone().requires_grad_(True) for t_ in (x, h, c))
    G = [np.zeros(tuple(t_.shape), np.float32) for t_ in (xg, hg, cg, *ref.parameters())]

    class NoWork(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, run):
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            ctx.set_materialize_grads(False)
            return torch.from_numpy(HN), torch.from_numpy(CN)

        @staticmethod
        def backward(ctx, dh, dc):
            ctx.saved_tensors
            return tuple(torch.from_numpy(a) for a in G) + (None,)

    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, run):
            return torch.from_numpy(HN), torch.from_numpy(CN)

        @staticmethod
        def backward(ctx, dh, dc):
            return (None,) * 8

    def module(fn):
        apply = super(torch.autograd.Function, fn).apply     # as lstm_fast.torch calls it

        class M(torch.nn.Module):
            def forward(self, x, hx):
                p = ref._parameters
                return apply(x, hx[0], hx[1], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                             p["bias_hh"], None)
        return M()

    def train(m, params):
        leaves = [xg, hg, cg, *params]

        def fn():
            for t_ in leaves:
                t_.grad = None
            h1, c1 = m(xg, (hg, cg))
            torch.autograd.backward((h1, c1), (dh, dc))
        return fn

    rows += [("train: empty Function (no saving, no gradient)",
              t(train(module(Empty), ref.parameters()), 5000)),
             ("train floor: no-work Function (7 saved, 7 gradients)",
              t(train(module(NoWork), ref.parameters()), 5000)),
             ("train: lstm_fast.torch.LSTMCell", t(train(ours, list(ours.parameters())), 5000)),
             ("train: torch.nn.LSTMCell", t(train(ref, list(ref.parameters())), 5000))]
    for name, us in rows:
        print(f"{name:55s} {us:7.2f} us")


if __name__ == "__main__":
    main()
