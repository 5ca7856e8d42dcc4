"""The machine's GEMM ceiling (ceiling.py): an N x N x N product through oneDNN, torch.mm
and NumPy's BLAS, float32 and float64, 1 and 2 threads; N = 2048 when timed (64 in the
untimed smoke run). Runs first (the file sorts first), in the same run as the LSTMs."""

from . import ceiling
from .harness import last_only

ROUNDS = 7

problem = last_only(ceiling.make_problem)      # problem(n, dtype)


def test_gemm(benchmark, gemm_n, dtype, threads, competitor):
    from . import harness
    p = problem(gemm_n, dtype)
    runner = ceiling.make_runner(competitor, p, threads)
    runner.fn()     # warm-up (packing buffers, thread start)
    harness.run_benchmark(
        benchmark, runner, threads, lambda got: ceiling.check(got, p, competitor),
        group=f"gemm {dtype} N={gemm_n} threads={threads}",
        extra=dict(case="gemm", shape=f"gemm{gemm_n}", N=gemm_n, dtype=dtype, threads=threads,
                   competitor=competitor, flops=ceiling.flops(gemm_n), group="ceiling"),
        rounds=ROUNDS)
