"""bfloat16 training (mixed precision, issue 16) against float32 training, in the same run:
one training step (forward keeping what backward needs, then backward to every gradient)
of one layer at (T, B, I, H) = (32, 64, 256, 256), (32, 32, 128, 128) and (128, 64, 512, 512),
1 and 2 threads.

Competitors: ``float32`` (the c backend's layer, training mode), ``bfloat16`` (the same
layer with ``weight_dtype="bfloat16"`` in training mode: float32 masters, bf16 products;
see backends/reference.py "bfloat16 training"), ``torch`` (torch.nn.LSTM, float32),
``lstm_fast.torch`` (our torch module, float32), ``torch-autocast-bf16`` (torch.nn.LSTM
under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
on CPUs without oneDNN's bf16 RNN it fails with "could not create a primitive descriptor"
(pytorch#88136): the benchmark is then skipped with that message) and
``lstm_fast.torch-autocast-bf16`` (our torch module with ``bf16_autocast=True`` under the
same autocast, the c kernels). Each benchmark first checks dx against the float32 layer's (within bf16's
accuracy). Under ``--benchmark-disable`` (the test suite) one untimed call on small shapes.

On the Intel Xeon family 6 model 167 (AMX-BF16), torch 2.13's autocast LSTM runs oneDNN's
brgemm RNN on AMX tiles (ONEDNN_VERBOSE: "cpu,rnn,brgemm:avx10_1_512_amx"), not
vdpbf16ps: that, not the vdpbf16ps rate, is the bar for bf16 there.

    flock -x /tmp/lstm_cpu.lock python -m pytest benchmarks/bench_bf16_train.py \\
        --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""

import numpy as np
import pytest

import lstm_fast

from . import harness, low_precision
from .conftest import benchmark_disabled

pytest.importorskip("lstm_fast.backends._c")

CASES = {"large256": (32, 64, 256, 256), "medium128": (32, 32, 128, 128),
         "large512": (128, 64, 512, 512)}
SMOKE = {"large256": (3, 8, 16, 20), "medium128": (2, 3, 5, 7), "large512": (2, 5, 9, 12)}
COMPETITORS = ("float32", "bfloat16", "torch", "torch-autocast-bf16", "lstm_fast.torch",
               "lstm_fast.torch-autocast-bf16")


def _layer(p, weight_dtype):
    layer = lstm_fast.LSTM(p["I"], p["H"], backend="c", weight_dtype=weight_dtype)
    layer.load_state_dict(p["state_dict"])
    return layer.train()


def runner(name, p):
    x, dy, hx = p["x"], p["dy"], (p["h0"][None], p["c0"][None])
    if name in ("float32", "bfloat16"):
        layer = _layer(p, None if name == "float32" else name)

        def fn():
            layer(x, hx)
            return layer.backward(dy)[0]
        return harness.Runner(name, fn, np.asarray)
    torch = pytest.importorskip("torch")
    if name.startswith("lstm_fast.torch"):
        import lstm_fast.torch as lft
        m = lft.LSTM(p["I"], p["H"], backend="c", bf16_autocast=name.endswith("bf16"))
    else:
        m = torch.nn.LSTM(p["I"], p["H"])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in p["state_dict"].items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt, h0, c0 = (torch.from_numpy(a) for a in (dy, hx[0], hx[1]))
    autocast = name.endswith("autocast-bf16")

    def fn():
        xt.grad = None
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, _ = m(xt, (h0, c0))
        y.backward(dyt.to(y.dtype))
        return xt.grad
    return harness.Runner(name, fn, lambda g: g.float().numpy())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("competitor", COMPETITORS)
@pytest.mark.parametrize("name", list(CASES))
def test_bf16_train(benchmark, request, name, competitor, threads):
    T, B, I, H = (SMOKE if benchmark_disabled(request.config) else CASES)[name]
    p = harness.make_problem(T, B, I, H, "float32")
    want = runner("float32", p).outputs()
    tol = 1e-4 if competitor in ("float32", "torch", "lstm_fast.torch") else 3e-2

    def check(got):
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert err < tol, (competitor, err)

    r = runner(competitor, p)
    if competitor == "torch-autocast-bf16":
        try:
            r.outputs()
        except RuntimeError as e:   # oneDNN without a bf16 RNN primitive on this CPU
            pytest.skip(f"torch's bf16 LSTM fails here: {e}")
    # what forward keeps for backward (gates (N, 4H) and c (N, H)) in our layers: float32
    # words, or bfloat16 bit patterns in bfloat16 training (the C backend's uint16 arrays)
    kept = {"float32": 5 * T * B * H * 4, "bfloat16": 5 * T * B * H * 2}.get(competitor)
    try:
        harness.run_benchmark(
            benchmark, r, threads, check,
            group=f"bf16 training T,B,I,H={T},{B},{I},{H} threads={threads}",
            extra=dict(shape=name, T=T, B=B, I=I, H=H, threads=threads,
                       competitor=competitor, saved_bytes=kept), rounds=7)
        if competitor in ("float32", "bfloat16"):
            low_precision.record_roofline(benchmark, "bf16 training", competitor, T, B, I, H,
                                          threads, train=True)
    finally:
        harness.reset_threads()
