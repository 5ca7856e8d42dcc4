"""The cell group: one call of an LSTM cell, ``lstm_fast.torch.LSTMCell`` vs ``torch.nn.LSTMCell``
(same weights, same run), the per-call cost that models stepping by hand (autoregressive
generation, RL agents, scheduled sampling) pay at every step.

Cases: ``cell_forward`` is one step under ``torch.inference_mode()``; ``cell_train`` is one
training step of a cell: forward with gradients, then backward of sum(h * dh + c * dc)
(gradients for the input, the state and the parameters). Shapes (B, I, H) in ``SHAPES``;
float32, 1 thread. Every benchmark checks its outputs against torch.nn.LSTMCell's first.

    pytest benchmarks/bench_cell.py --benchmark-enable --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

from . import harness
from .harness import Runner

SHAPES = {"cell64": (1, 64, 64), "cell256": (1, 256, 256)}
CASES = ("cell_forward", "cell_train")
DTYPE, THREADS = "float32", 1


def competitors():
    if not harness.have("torch"):
        return []
    return [f"lstm_fast.torch[{harness.auto_backend()}]", "torch"]


def make_problem(B, I, H, dtype=DTYPE, seed=0):
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    u = lambda lim, *s: rng.uniform(-lim, lim, size=s).astype(dtype)  # noqa: E731
    return dict(state_dict={"weight_ih": u(k, 4 * H, I), "weight_hh": u(k, 4 * H, H),
                            "bias_ih": u(k, 4 * H), "bias_hh": u(k, 4 * H)},
                x=u(1.0, B, I), h=u(0.5, B, H), c=u(0.5, B, H), dh=u(1.0, B, H), dc=u(1.0, B, H))


def make_runner(name, case, p):
    import torch

    import lstm_fast.torch
    harness.set_threads(THREADS)
    I, H = p["state_dict"]["weight_ih"].shape[1], p["state_dict"]["weight_hh"].shape[1]
    cell = torch.nn.LSTMCell(I, H) if name == "torch" else lstm_fast.torch.LSTMCell(
        I, H, backend=harness.backend_of(name))
    cell.load_state_dict({k: torch.from_numpy(v) for k, v in p["state_dict"].items()})
    x, h, c, dh, dc = (torch.from_numpy(p[k]) for k in ("x", "h", "c", "dh", "dc"))
    if case == "cell_forward":
        def fn():
            with torch.inference_mode():
                return cell(x, (h, c))
        return Runner(name, fn, lambda r: dict(h=r[0].numpy(), c=r[1].numpy()))
    x, h, c = (t.clone().requires_grad_(True) for t in (x, h, c))
    leaves = [x, h, c, *cell.parameters()]

    def fn():
        for t in leaves:
            t.grad = None
        h1, c1 = cell(x, (h, c))
        torch.autograd.backward((h1, c1), (dh, dc))
        return h1, c1

    def extract(r):
        out = dict(h=r[0].detach().numpy(), c=r[1].detach().numpy())
        out.update({f"grad{i}": t.grad.numpy() for i, t in enumerate(leaves)})
        return out
    return Runner(name, fn, extract)


_problem = harness.last_only(lambda shape: make_problem(*SHAPES[shape]))
_expected = harness.last_only(
    lambda case, shape: {k: np.array(v, copy=True)
                         for k, v in make_runner("torch", case, _problem(shape)).outputs().items()})


@pytest.mark.parametrize("competitor", competitors() or [pytest.param(None, marks=pytest.mark.skip(
    reason="the cell group needs torch"))])
@pytest.mark.parametrize("cell_shape", list(SHAPES))
@pytest.mark.parametrize("case", CASES)
def test_cell(benchmark, case, cell_shape, competitor):
    shape = cell_shape
    B, I, H = SHAPES[shape]
    want = _expected(case, shape)
    runner = make_runner(competitor, case, _problem(shape))
    harness.run_checked(
        benchmark, runner, want, DTYPE, THREADS,
        group=f"{case} {DTYPE} B,I,H={B},{I},{H} threads={THREADS}",
        extra=dict(case=case, shape=shape, B=B, I=I, H=H, dtype=DTYPE, threads=THREADS,
                   competitor=competitor, group="cell"))


# --- compiled: a 2-layer LSTM model under torch.compile, ours and torch's ----------------

# T, B, I, H; 2 layers, float32: a tiny model, where the per-call costs of torch's compiled
# graph and of the operators' dispatch show, and word_language_model's small one
MODELS = {"tiny": (32, 1, 64, 64), "wlm_small": (35, 20, 200, 200)}
MODEL_COMPETITORS = ("lstm_fast.torch", "lstm_fast.torch+compile", "torch", "torch+compile")
MODEL_CASES = ("compiled_forward", "compiled_train")


def make_model_runner(name, p, case="compiled_forward"):
    """``compiled_forward``: the model under ``torch.inference_mode()``;
    ``compiled_train``: forward with gradients and backward of sum(y) (the input needs no
    gradient, as a model's first layer), the parameters' gradients checked too."""
    import torch

    import lstm_fast.torch
    harness.set_threads(THREADS)
    T, B, I, H = p["shape"]
    cls = torch.nn.LSTM if name.startswith("torch") else lstm_fast.torch.LSTM
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.lstm = cls(I, H, num_layers=2)
    net.train(case == "compiled_train")
    fn_net = torch.compile(net.lstm, fullgraph=name.startswith("lstm_fast")) \
        if name.endswith("+compile") else net.lstm
    x = torch.from_numpy(p["x"])
    params = list(net.lstm.parameters())
    if case == "compiled_forward":
        def fn():
            with torch.inference_mode():
                return fn_net(x)
        extract = lambda r: dict(y=r[0].numpy(), h=r[1][0].numpy(), c=r[1][1].numpy())  # noqa: E731
    else:
        def fn():
            for t in params:
                t.grad = None
            y, (h, c) = fn_net(x)
            y.sum().backward()
            return y, h, c

        def extract(r):
            out = dict(y=r[0].detach().numpy(), h=r[1].detach().numpy(), c=r[2].detach().numpy())
            out.update({f"grad{i}": t.grad.numpy() for i, t in enumerate(params)})
            return out
    fn()            # compiles (seconds), outside the check and the timing
    return Runner(name, fn, extract)


def _make_model_problem(model):
    shape = MODELS[model]
    x = np.random.default_rng(0).uniform(-1, 1, shape[:3]).astype(DTYPE)
    return dict(shape=shape, x=x)


_model_problem = harness.last_only(_make_model_problem)


@pytest.mark.parametrize("competitor", MODEL_COMPETITORS)
@pytest.mark.parametrize("net", list(MODELS))
@pytest.mark.parametrize("case", MODEL_CASES)
def test_compiled_model(benchmark, case, net, competitor):
    """2-layer LSTM (``MODELS``; the parameter is not called ``model``, which conftest.py
    gives the models group), forward under inference_mode or a training step: compiled
    ours (our kernels inside the graph), eager ours, torch eager, torch compiled (Dynamo runs
    torch's LSTM eagerly: it does not trace RNN modules by default)."""
    if not harness.have("torch"):
        pytest.skip("needs torch")
    if competitor.endswith("+compile") and benchmark.disabled:
        pytest.skip("compiling takes seconds: timed runs only")
    T, B, I, H = MODELS[net]
    want = make_model_runner("torch", _model_problem(net), case).outputs()
    runner = make_model_runner(competitor, _model_problem(net), case)
    harness.run_checked(
        benchmark, runner, want, DTYPE, THREADS,
        group=f"{case} {DTYPE} T,B,I,H={T},{B},{I},{H}x2 threads={THREADS}",
        extra=dict(case=case, model=net, T=T, B=B, I=I, H=H, layers=2, dtype=DTYPE,
                   threads=THREADS, competitor=competitor, group="cell"))
