"""What torch itself costs per call around a custom autograd.Function, at the churn shape
(T, B, I, H) = (6, 32, 3, 32), float32, 1 thread: the floor under
``lstm_fast.torch.LSTM``'s per-call cost (issue 14, "Module cost").

* train floor: the models group's ``layer_train`` step (parameters' and x's grads set to
  None, forward, ``y.backward(dy)``) through a module whose forward is one
  ``autograd.Function`` with our Function's arguments (x requiring grad, h0 = c0 = None,
  4 parameters) that does no work (preallocated outputs and gradients, 8 tensors saved);
* eval floor: ``torch.inference_mode()`` + a module call that takes ``x.numpy()`` and
  returns three ``torch.from_numpy`` tensors (what the module's eval path cannot avoid).

Not a pytest-benchmark case (no competitor): a floor to read the suite's figures against.

    python -m benchmarks.module_floor
"""

import timeit

import numpy as np
import torch

T, B, I, H = 6, 32, 3, 32


def main():
    torch.set_num_threads(1)
    x = torch.randn(T, B, I, requires_grad=True)
    ps = [torch.nn.Parameter(torch.randn(4 * H, I)), torch.nn.Parameter(torch.randn(4 * H, H)),
          torch.nn.Parameter(torch.randn(4 * H)), torch.nn.Parameter(torch.randn(4 * H))]
    Y = np.zeros((T, B, H), np.float32)
    HN, CN = np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32)
    G = [np.zeros(tuple(t.shape), np.float32) for t in [x] + ps]

    class Nop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, a, b, c, run):
            y = torch.from_numpy(Y)
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, y)
            ctx.set_materialize_grads(False)
            return y, torch.from_numpy(HN), torch.from_numpy(CN)

        @staticmethod
        def backward(ctx, dy, dh, dc):
            ctx.saved_tensors
            g = [torch.from_numpy(a) for a in G]
            return (g[0], None, None, g[1], g[2], g[3], g[4].clone(), None, None, None, None,
                    None)

    apply = super(torch.autograd.Function, Nop).apply     # as lstm_fast.torch calls it

    class Train(torch.nn.Module):
        def forward(self, x, hx=None):
            return apply(x, None, None, *ps, None, None, None, None, None)

    class Eval(torch.nn.Module):
        def forward(self, x, hx=None):
            x.numpy()
            return torch.from_numpy(Y), (torch.from_numpy(HN), torch.from_numpy(CN))

    train_m, eval_m, dy, xe = Train(), Eval(), torch.ones(T, B, H), x.detach()

    def train():
        for q in ps:
            q.grad = None
        x.grad = None
        train_m(x)[0].backward(dy)

    def forward_only():
        for q in ps:
            q.grad = None
        x.grad = None
        return train_m(x)

    def evaluate():
        with torch.inference_mode():
            return eval_m(xe)

    def t(f, n=3000):
        for _ in range(300):
            f()
        return min(timeit.repeat(f, number=n, repeat=7)) / n * 1e6

    print(f"train floor (no-work Function step): {t(train):.1f} us "
          f"(its forward alone {t(forward_only):.1f} us)")
    print(f"eval floor (inference_mode, module call, x.numpy(), 3 from_numpy): {t(evaluate):.1f} us")


if __name__ == "__main__":
    main()
