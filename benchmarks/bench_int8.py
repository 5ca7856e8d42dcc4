"""int8 weights (issue 16) against our own float32 and bfloat16, in the same run: B = 1
streaming (``Stream.step``, H = 512 and 1024, where every step re-reads the weights: int8
reads a quarter of float32's bytes) and the large forward (32, 64, 256, 256) (compute
bound), 1 and 2 threads.

Competitors: ``float32`` (the c backend's plain layer), ``bfloat16`` and ``int8`` (what
``quantize(layer, "bfloat16" | "int8")`` runs), and ``torch-dynamic-int8``: torch's dynamic
quantized LSTM (``torch.ao.nn.quantized.dynamic.LSTM``, int8 weights and per-step dynamic
quantization of x and h; deprecated for removal, and ``quantize_dynamic`` no longer
converts an ``nn.LSTM`` in torch 2.13: built from the float module with ``from_float``)
where torch has it. Each benchmark first checks its outputs against the float32 layer's
(within the low precision's accuracy). Under ``--benchmark-disable`` (the test suite) one
untimed call on small shapes.

    flock -x /tmp/lstm_cpu.lock python -m pytest benchmarks/bench_int8.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""

import warnings

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


def _torch_dynamic():
    """torch.ao.nn.quantized.dynamic, or None where torch (or the module) is missing."""
    if not harness.have("torch"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torch.ao.nn.quantized.dynamic as nnqd
        except ImportError:
            return None
    return nnqd if hasattr(nnqd, "LSTM") else None


WEIGHTS = ("float32", "bfloat16", "int8") + (("torch-dynamic-int8",) if _torch_dynamic() else ())


def _torch_runner(case, p, weights):
    import torch
    nnqd = _torch_dynamic()
    m = torch.nn.LSTM(p["I"], p["H"])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in p["state_dict"].items()})
    m.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = nnqd.LSTM.from_float(m)
    x = torch.from_numpy(p["x"])
    hx = (torch.from_numpy(p["h0"])[None], torch.from_numpy(p["c0"])[None])
    if case == "forward":
        def fn():
            with torch.inference_mode():
                return q(x, hx)[0]
        return harness.Runner(weights, fn, lambda r: r.numpy())
    steps = [x[t:t + 1] for t in range(x.shape[0])]

    def fn_stream():
        with torch.inference_mode():
            state, out = hx, []
            for xt in steps:
                y, state = q(xt, state)
                out.append(y[0])
            return out
    return harness.Runner(weights, fn_stream, lambda r: np.stack([t.numpy() for t in r]))


def _runner(case, T, B, I, H, weights):
    p = harness.make_problem(T, B, I, H, "float32")
    if weights == "torch-dynamic-int8":
        return _torch_runner(case, p, weights)
    layer = lstm_fast.LSTM(I, H, backend="c").eval()
    layer.load_state_dict(p["state_dict"])
    if weights != "float32":
        layer = lstm_fast.quantize(layer, weights)
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
def test_int8(benchmark, request, name, weights, threads):
    case, T, B, I, H = (SMOKE if benchmark_disabled(request.config) else CASES)[name]
    want = _runner(case, T, B, I, H, "float32").outputs()

    def check(got):
        err = np.abs(got - want).max()
        assert err < (1e-5 if weights == "float32" else 3e-2), (weights, err)

    harness.run_benchmark(
        benchmark, _runner(case, T, B, I, H, weights), threads, check,
        group=f"int8 {case} T,B,I,H={T},{B},{I},{H} threads={threads}",
        extra=dict(case=case, shape=name, T=T, B=B, I=I, H=H, threads=threads, weights=weights,
                   int8_path=ck.int8_path()),
        rounds=ROUNDS[case])
    harness.reset_threads()
