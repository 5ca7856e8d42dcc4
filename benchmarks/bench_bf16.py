"""bfloat16 weights (issue 16) against our own float32, in the same run: B = 1 streaming
(``Stream.step``, H = 512 and 1024, where every step re-reads the weights: bf16 halves
that traffic) and the large forward (32, 64, 256, 256) (compute bound), 1 and 2 threads.

Competitors: ``float32`` (the c backend's plain layer), ``bfloat16`` (what
``weight_dtype="bfloat16"`` runs: native vdpbf16ps or the emulation, chosen per shape by
lstm.c), and where the CPU has AVX512_BF16 both forced, ``bfloat16-native`` and
``bfloat16-emulated`` (the same bits; the rule in lstm.c comes from this comparison).
Each benchmark first checks its outputs against the float32 layer's (within bf16's
accuracy). Under ``--benchmark-disable`` (the test suite) one untimed call on small shapes.

    flock -x /tmp/lstm_cpu.lock python -m pytest benchmarks/bench_bf16.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""

import numpy as np
import pytest

import lstm_fast

from . import harness
from .conftest import benchmark_disabled

ck = pytest.importorskip("lstm_fast.backends._c")

# name: (case, T, B, I, H); stream: T steps of Stream.step per timed call
CASES = {"stream512": ("stream", 32, 1, 512, 512), "stream1024": ("stream", 32, 1, 1024, 1024),
         "large256": ("forward", 32, 64, 256, 256)}
SMOKE = {"stream512": ("stream", 3, 1, 16, 16), "stream1024": ("stream", 3, 1, 9, 33),
         "large256": ("forward", 3, 8, 16, 20)}
ROUNDS = {"forward": 7, "stream": None}


def _native_available():
    try:
        ck.set_bf16_native(True)
    except RuntimeError:
        return False
    finally:
        ck.set_bf16_native(None)
    return True


WEIGHTS = ("float32", "bfloat16") + (("bfloat16-native", "bfloat16-emulated")
                                     if _native_available() else ())
MODE = {"bfloat16": None, "bfloat16-native": True, "bfloat16-emulated": False}


def _runner(case, T, B, I, H, weights):
    p = harness.make_problem(T, B, I, H, "float32")
    layer = lstm_fast.LSTM(I, H, backend="c").eval()
    layer.load_state_dict(p["state_dict"])
    if weights != "float32":
        layer = lstm_fast.quantize(layer, "bfloat16")
    x, hx = p["x"], (p["h0"][None], p["c0"][None])
    if case == "forward":
        return harness.Runner(weights, lambda: layer(x, hx), lambda r: r[0])
    stream = lstm_fast.Stream(layer, B, hx)
    steps = list(x)

    def fn():
        stream.reset(hx)
        return [stream.step(xt) for xt in steps]
    return harness.Runner(weights, fn, np.stack)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", list(CASES))
def test_bf16(benchmark, request, name, weights, threads):
    case, T, B, I, H = (SMOKE if benchmark_disabled(request.config) else CASES)[name]
    want = _runner(case, T, B, I, H, "float32").outputs()

    def check(got):
        err = np.abs(got - want).max()
        assert err < (1e-5 if weights == "float32" else 2e-2), (weights, err)

    ck.set_bf16_native(MODE.get(weights))
    try:
        harness.run_benchmark(
            benchmark, _runner(case, T, B, I, H, weights), threads, check,
            group=f"bf16 {case} T,B,I,H={T},{B},{I},{H} threads={threads}",
            extra=dict(case=case, shape=name, T=T, B=B, I=I, H=H, threads=threads,
                       weights=weights, bf16_path=ck.bf16_path(B, I, H)),
            rounds=ROUNDS[case])
    finally:
        ck.set_bf16_native(None)
        harness.reset_threads()
