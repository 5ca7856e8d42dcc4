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

``--after-kernel SHAPE ...`` (T,B,I,H, float32, 1 thread; session 20) measures the eval
floor where it matters at larger weights: each call of our kernel streams the packed
weights through the L2, and whatever runs next (torch's bindings, the module machinery)
runs from colder caches. Interleaved rounds (harness.measure), medians, of: the kernel alone
(``_route.run_forward`` on the module's pack), the NumPy ``lstm_fast.LSTM``, a module whose
forward is the floor above *with that kernel call inside* (x.numpy(), two hx.numpy(), the
kernel, three from_numpy of preallocated arrays), and ``lstm_fast.torch.LSTM``; then the
cost of one ``torch.from_numpy`` warm and as the first torch call after the kernel or after
``np.copyto`` of 2 MB (no torch code at all):

    python -m benchmarks.module_floor --after-kernel 1,1,256,256 32,1,256,256 32,16,64,64
"""

import argparse
import statistics
import time
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


def after_kernel(shape, rounds=7):
    """The eval route's cost over the kernel at ``shape`` (see the module docstring)."""
    import lstm_fast
    import lstm_fast.torch as lt
    from lstm_fast import _route
    from lstm_fast.backends import _c
    T_, B_, I_, H_ = shape
    torch.set_num_threads(1)
    lstm_fast.set_num_threads(1)
    rng = np.random.default_rng(0)
    module = lt.LSTM(I_, H_, backend="c").eval()
    layer = lstm_fast.LSTM(I_, H_, backend="c").eval()
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = rng.standard_normal((T_, B_, I_)).astype(np.float32)
    h0, c0 = np.zeros((1, B_, H_), np.float32), np.zeros((1, B_, H_), np.float32)
    xt, hx = torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0))
    with torch.inference_mode():
        module(xt, hx)
    pack = module._packed[1][0]

    def kernel():
        return _route.run_forward(_c, pack, x, h0, c0, 1, None, False, False)

    y, hn, cn = kernel()[:3]

    class Floor(torch.nn.Module):
        def forward(self, x, hx):
            x.numpy(), hx[0].numpy(), hx[1].numpy()
            kernel()
            return torch.from_numpy(y), (torch.from_numpy(hn), torch.from_numpy(cn))

    floor = Floor()

    def floor_call():
        with torch.inference_mode():
            return floor(xt, hx)

    def module_call():
        with torch.inference_mode():
            return module(xt, hx)

    from .harness import Runner, measure
    runners = [Runner(name, fn, None) for name, fn in (
        ("kernel", kernel), ("NumPy layer", lambda: layer(x, (h0, c0))),
        ("floor module", floor_call), ("lstm_fast.torch", module_call))]
    med = {k: v * 1e6 for k, v in measure(runners, repeat=rounds, min_time=0.02).items()}
    k0 = med["kernel"]
    print(f"{T_},{B_},{I_},{H_}: " + ", ".join(
        f"{k} {v:.1f} us" + ("" if k == "kernel" else f" (+{v - k0:.1f})") for k, v in med.items()))

    src = np.ones(1 << 19, np.float32)   # 2 MB
    dst = np.empty_like(src)
    small = np.zeros(16, np.float32)

    def first_call_after(before, n=301):
        ts = []
        for _ in range(n):
            before()
            t0 = time.perf_counter()
            torch.from_numpy(small)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e6

    print(f"  torch.from_numpy: warm {first_call_after(lambda: None):.2f} us, first after the "
          f"kernel {first_call_after(kernel):.2f} us, first after np.copyto of 2 MB "
          f"{first_call_after(lambda: np.copyto(dst, src)):.2f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--after-kernel", nargs="+", metavar="T,B,I,H",
                    help="the eval floor with the kernel inside, at these shapes")
    args = ap.parse_args()
    if args.after_kernel:
        for spec in args.after_kernel:
            after_kernel(tuple(int(v) for v in spec.split(",")))
    else:
        main()
