"""int8 weights (issue 16) against our own float32 and bfloat16, in the same run: B = 1
streaming (``Stream.step``, H = 512 and 1024, where every step re-reads the weights: int8
reads a quarter of float32's bytes) and the large forward (32, 64, 256, 256) (compute
bound), 1 and 2 threads.

Competitors: ``float32`` (the c backend's plain layer), ``bfloat16`` and ``int8`` (what
``quantize(layer, "bfloat16" | "int8")`` runs; int8 weight-only), ``int8_dynamic``
(``quantize(layer, "int8", activations="dynamic")``: x and h quantized per row per step,
int32 sums by vpdpbusd where the CPU has AVX512-VNNI / AVX-VNNI), and ``torch-dynamic-int8``: torch's dynamic
quantized LSTM (``torch.ao.nn.quantized.dynamic.LSTM``, int8 weights and per-step dynamic
quantization of x and h; deprecated for removal, and ``quantize_dynamic`` no longer
converts an ``nn.LSTM`` in torch 2.13: built from the float module with ``from_float``)
where torch has it, and ``ort-dynamic-int8``: ONNX Runtime's contrib DynamicQuantizeLSTM
(int8 weights, x and h quantized per step), the model that
``onnxruntime.quantization.quantize_dynamic`` makes of ``adapters.to_onnx_model``'s float
one, as ONNX Runtime's users get it (``harness.ort_session``). Each benchmark first checks its outputs against the float32 layer's
(within the low precision's accuracy). Under ``--benchmark-disable`` (the test suite) one
untimed call on small shapes. Shapes, runner and body: benchmarks/low_precision.py
(shared with bench_bf16.py).

    flock -x /tmp/lstm_cpu.lock python -m pytest benchmarks/bench_int8.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""

import functools
import warnings

import numpy as np
import pytest

from . import harness, low_precision

ck = pytest.importorskip("lstm_fast.backends._c")


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


WEIGHTS = (("float32", "bfloat16", "int8", "int8_dynamic") +
           (("torch-dynamic-int8",) if _torch_dynamic() else ()) +
           (("ort-dynamic-int8",) if harness.have("onnxruntime") else ()))


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


def _runner(case, T, B, I, H, weights, threads=1):
    if weights == "torch-dynamic-int8":
        return _torch_runner(case, harness.make_problem(T, B, I, H, "float32"), weights)
    if weights == "ort-dynamic-int8":
        p = harness.make_problem(T, B, I, H, "float32")
        r = harness._ort(weights, case, p, threads, quantize=True)
        return harness.Runner(weights, r.fn, lambda out: r.extract(out)["y"])
    return low_precision.layer_runner(case, T, B, I, H, weights)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", list(low_precision.CASES))
def test_int8(benchmark, request, name, weights, threads):
    low_precision.run(benchmark, request, name, weights, threads, "int8", 3e-2,
                      lambda B, I, H: dict(int8_path=ck.int8_path(),
                                           int8_dynamic_path=ck.int8_dynamic_path()),
                      runner=functools.partial(_runner, threads=threads))
