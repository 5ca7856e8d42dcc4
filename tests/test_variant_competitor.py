"""The competitor of benchmarks/bench_variants.py (benchmarks/competitors/peephole_lstm.py:
a peephole LSTM with clipping as an eager loop of torch ops and its TorchScript version)
computes what lstm_fast's layer computes, outputs and every gradient, so that the speed
comparison is between equal computations."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lstm_fast  # noqa: E402
from benchmarks.competitors.peephole_lstm import PeepholeLSTM  # noqa: E402

from _support import assert_close  # noqa: E402


@pytest.mark.parametrize("script", [False, True], ids=["eager", "torchscript"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", [dict(clip=0.5, cell_clip=0.4), dict(clip=0.0, cell_clip=0.0),
                                  dict(clip=3.0, cell_clip=3.0)])
def test_competitor_equals_our_layer(script, dtype, opts):
    T, B, I, H = 7, 3, 5, 6
    tdt = getattr(torch, np.dtype(dtype).name)
    torch.manual_seed(0)
    comp = PeepholeLSTM(I, H, script=script, dtype=tdt, **opts)
    with torch.no_grad():
        for p in comp.parameters():
            p.mul_(3.0)     # the clamps are reached
    layer = lstm_fast.LSTM(I, H, dtype=dtype, peephole=True, backend="c",
                           clip=opts["clip"] or None, cell_clip=opts["cell_clip"] or None)
    layer.load_state_dict({k: v.detach().numpy() for k, v in comp.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((1, B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    y, (h, c) = comp(xt, (torch.from_numpy(h0), torch.from_numpy(c0)))
    y.backward(torch.from_numpy(dy))
    ey, (eh, ec) = layer(x, (h0, c0))
    dx, _ = layer.backward(dy)
    assert_close(y.detach().numpy(), ey, dtype, "y")
    assert_close(c.detach().numpy(), ec, dtype, "c_n")
    assert_close(xt.grad.numpy(), dx, dtype, "dx")
    for name, p in comp.named_parameters():
        assert_close(p.grad.numpy(), layer.grads[name], dtype, name)
    if opts["cell_clip"] == 0.4:
        assert np.isclose(np.abs(ec), 0.4).any()
