"""The models group (shapes.MODELS; see models.py for what each case runs): ours vs
torch.nn.LSTM vs ONNX Runtime on the LSTM stacks real models use, inside a small torch
model (``model_*``) and alone (``layer_*``).

Parameters (model, dtype, threads, competitor) come from conftest.py; every benchmark
checks its outputs against torch.nn.LSTM's before and after timing.
"""

from . import harness, models
from .shapes import model_config, model_flops

problem = harness.last_only(models.make_problem)      # problem(model, dtype)
expected = harness.last_only(lambda case, model, dtype: models.oracle(case, problem(model, dtype)))


def run(benchmark, case, model, dtype, threads, competitor):
    m = model_config(model)
    want = expected(case, model, dtype)
    runner = models.make_runner(competitor, case, problem(model, dtype), threads)
    dims = f"{m.T},{m.B},{m.I},{m.H}x{m.layers}{' bidirectional' if m.bidirectional else ''}"
    harness.run_checked(
        benchmark, runner, want, dtype, threads,
        group=f"{case} {dtype} {model} T,B,I,H={dims} threads={threads}",
        extra=dict(case=case, shape=model, T=m.T, B=m.B, I=m.I, H=m.H, layers=m.layers,
                   bidirectional=m.bidirectional, dropout=m.dropout, dtype=dtype, threads=threads,
                   competitor=competitor, flops=model_flops(case, m), group="models"))


def test_model_train(benchmark, model, dtype, threads, competitor):
    run(benchmark, "model_train", model, dtype, threads, competitor)


def test_model_eval(benchmark, model, dtype, threads, competitor):
    run(benchmark, "model_eval", model, dtype, threads, competitor)


def test_layer_forward(benchmark, model, dtype, threads, competitor):
    run(benchmark, "layer_forward", model, dtype, threads, competitor)


def test_layer_train(benchmark, model, dtype, threads, competitor):
    run(benchmark, "layer_train", model, dtype, threads, competitor)
