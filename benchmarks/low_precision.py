"""What bench_bf16.py and bench_int8.py share: the shapes (B = 1 streaming with
``Stream.step`` at H = 512 and 1024, where every step re-reads the weights, and the large
forward (32, 64, 256, 256) and (128, 64, 512, 512), compute bound), our layer quantized to a weight dtype, and the
benchmark body (outputs checked against the float32 layer's first; under
``--benchmark-disable``, the test suite, one untimed call on small shapes)."""

import numpy as np

import lstm_fast

from . import harness
from .conftest import benchmark_disabled

# name: (case, T, B, I, H); stream: T steps of Stream.step per timed call
CASES = {"stream512": ("stream", 32, 1, 512, 512), "stream1024": ("stream", 32, 1, 1024, 1024),
         "large256": ("forward", 32, 64, 256, 256), "large512": ("forward", 128, 64, 512, 512)}
SMOKE = {"stream512": ("stream", 3, 1, 16, 16), "stream1024": ("stream", 3, 1, 9, 33),
         "large256": ("forward", 3, 8, 16, 20), "large512": ("forward", 2, 3, 7, 12)}
ROUNDS = {"forward": 7, "stream": None}


def layer_runner(case, T, B, I, H, weights):
    """Our c-backend layer with ``weights`` ("float32", a weight dtype, or a weight dtype
    and a mode after a dash, "bfloat16-native": the mode is the caller's to set)."""
    p = harness.make_problem(T, B, I, H, "float32")
    layer = lstm_fast.LSTM(I, H, backend="c").eval()
    layer.load_state_dict(p["state_dict"])
    if weights != "float32":
        layer = lstm_fast.quantize(layer, weights.partition("-")[0])
    x, hx = p["x"], (p["h0"][None], p["c0"][None])
    if case == "forward":
        return harness.Runner(weights, lambda: layer(x, hx), lambda r: r[0])
    stream = lstm_fast.Stream(layer, B, hx)
    steps = list(x)

    def fn():
        stream.reset(hx)
        return [stream.step(xt) for xt in steps]
    return harness.Runner(weights, fn, np.stack)


def run(benchmark, request, name, weights, threads, label, tol, extra, runner=layer_runner):
    """One benchmark of CASES[name]: ``runner(case, T, B, I, H, weights)`` timed after its
    outputs are checked against the float32 layer's (within 1e-5 for float32, ``tol``
    otherwise); ``extra(B, I, H)``: what to record besides the shape."""
    case, T, B, I, H = (SMOKE if benchmark_disabled(request.config) else CASES)[name]
    want = layer_runner(case, T, B, I, H, "float32").outputs()

    def check(got):
        err = np.abs(got - want).max()
        assert err < (1e-5 if weights == "float32" else tol), (weights, err)

    try:
        harness.run_benchmark(
            benchmark, runner(case, T, B, I, H, weights), threads, check,
            group=f"{label} {case} T,B,I,H={T},{B},{I},{H} threads={threads}",
            extra=dict(case=case, shape=name, T=T, B=B, I=I, H=H, threads=threads,
                       weights=weights, **extra(B, I, H)),
            rounds=ROUNDS[case])
    finally:
        harness.reset_threads()
