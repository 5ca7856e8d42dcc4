"""ours (every available backend) vs torch.nn.LSTM vs ONNX Runtime, per case and shape.

One test per case; each parameter set is (shape, dtype, threads, competitor),
made by ``pytest_generate_tests`` in conftest.py, ordered so the competitors of
one group run back to back. Every benchmark
first checks its own output against the oracle (torch.nn.LSTM, same weights),
so a benchmark of wrong numbers fails instead of being timed.
"""

import pytest

from lstm_fast import _bench
from shapes import LARGE, SHAPES

# Rounds for the large shapes (one call can take seconds there; no calibration).
LARGE_ROUNDS = {"forward": 5, "stream": 5, "train": 3}

_problems = {}
_oracles = {}


def problem(shape, dtype):
    key = (shape, dtype)
    if key not in _problems:
        _problems.clear()
        _problems[key] = _bench.make_problem(*SHAPES[shape], dtype)
    return _problems[key]


def expected(case, shape, dtype):
    key = (case, shape, dtype)
    if key not in _oracles:
        _oracles.clear()
        _oracles[key] = _bench.oracle(case, problem(shape, dtype))
    return _oracles[key]


def run(benchmark, case, shape, dtype, threads, competitor):
    T, B, I, H = SHAPES[shape]
    want = expected(case, shape, dtype)
    runner = _bench.make_runner(competitor, case, problem(shape, dtype), threads)
    _bench.check(runner.extract(runner.fn()), want, dtype, competitor)
    _bench.set_threads(threads)
    benchmark.group = f"{case} {dtype} T,B,I,H={T},{B},{I},{H} threads={threads}"
    benchmark.extra_info.update(case=case, shape=shape, T=T, B=B, I=I, H=H, dtype=dtype,
                                threads=threads, competitor=competitor,
                                flops=_bench.flops(case, T, B, I, H))
    if shape in LARGE:
        result = benchmark.pedantic(runner.fn, rounds=LARGE_ROUNDS[case], iterations=1)
    else:
        result = benchmark(runner.fn)
    _bench.check(runner.extract(result), want, dtype, competitor)


def test_forward(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "forward", shape, dtype, threads, competitor)


def test_train(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "train", shape, dtype, threads, competitor)


def test_stream(benchmark, shape, dtype, threads, competitor):
    run(benchmark, "stream", shape, dtype, threads, competitor)
