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


step_problem = last_only(lambda dtype, shape: ceiling.make_problem(0, dtype, shape=shape))


def test_step_gemm(benchmark, step_model, dtype, threads, competitor):
    """One recurrent step's product of a model (B x H by H x 4H: ceiling.step_shape) through
    the same libraries: what a per-step library GEMM reaches at the model's batch size."""
    from . import harness, shapes
    m, k, n = ceiling.step_shape(shapes.model_config(step_model))
    p = step_problem(dtype, (m, k, n))
    runner = ceiling.make_runner(competitor, p, threads)
    runner.fn()
    harness.run_benchmark(
        benchmark, runner, threads, lambda got: ceiling.check(got, p, competitor),
        group=f"step gemm {dtype} {step_model} M,K,N={m},{k},{n} threads={threads}",
        extra=dict(case="stepgemm", shape=step_model, M=m, K=k, N=n, dtype=dtype, threads=threads,
                   competitor=competitor, flops=ceiling.flops(m, k, n), group="ceiling"))
