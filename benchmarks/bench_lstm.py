"""The grid: ours (every available backend, and the torch module) vs torch.nn.LSTM vs ONNX
Runtime, per case and shape of shapes.SHAPES, one layer.

One test per case; each parameter set is (shape, dtype, threads, competitor), made by
``pytest_generate_tests`` in conftest.py, ordered so the competitors of one group run
back to back. Every benchmark first checks its own output against the oracle
(torch.nn.LSTM, same weights), so a benchmark of wrong numbers fails instead of being
timed.
"""

from . import harness
from .shapes import LARGE, SHAPES, flops

# Rounds for the large shapes (one call can take seconds there; no calibration).
LARGE_ROUNDS = {"forward": 5, "stream": 5, "train": 3}

problem = harness.last_only(lambda shape, dtype: harness.make_problem(*SHAPES[shape], dtype))
expected = harness.last_only(lambda case, shape, dtype: harness.oracle(case, problem(shape, dtype)))


def run(benchmark, case, shape, dtype, threads, competitor):
    T, B, I, H = SHAPES[shape]
    want = expected(case, shape, dtype)
    runner = harness.make_runner(competitor, case, problem(shape, dtype), threads)
    harness.run_checked(
        benchmark, runner, want, dtype, threads,
        group=f"{case} {dtype} T,B,I,H={T},{B},{I},{H} threads={threads}",
        extra=dict(case=case, shape=shape, T=T, B=B, I=I, H=H, dtype=dtype, threads=threads,
                   competitor=competitor, flops=flops(case, T, B, I, H)),
        rounds=LARGE_ROUNDS[case] if shape in LARGE else None)


def test_forward(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "forward", shape, dtype, threads, competitor)


def test_train(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "train", shape, dtype, threads, competitor)


def test_stream(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "stream", shape, dtype, threads, competitor)
