"""The layer's direct calls of the C backend (``_validation.LayerInputs.bind``: the C
backend's ``bind_layer``; issue 13, per-call cost) give the same bits as the backend contract
called through Python, and keep what the contract promises (separate bias gradients)."""

import numpy as np
import pytest

import lstm_fast

pytest.importorskip("lstm_fast.backends._c")


def _run(layer, x, hx, dy, dhx):
    out, (h, c) = layer(x, hx)
    dx, (dh0, dc0) = layer.backward(dy, dhx)
    return [out, h, c, dx, dh0, dc0] + [layer.grads[n] for n in sorted(layer.grads)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(), dict(proj_size=2), dict(bias=False),
                                dict(num_layers=2, bidirectional=True), dict(peephole=True),
                                dict(cifg=True)])
def test_direct_equals_contract(dtype, kw):
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 2, 5
    layer = lstm_fast.LSTM(I, H, dtype=dtype, backend="c", seed=1, **kw)
    assert layer._inputs.direct
    D = layer.num_directions * layer.num_layers
    R = kw.get("proj_size") or H
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = (rng.standard_normal((D, B, R)).astype(dtype), rng.standard_normal((D, B, H)).astype(dtype))
    dy = rng.standard_normal((T, B, R * layer.num_directions)).astype(dtype)
    dhx = (rng.standard_normal((D, B, R)).astype(dtype), rng.standard_normal((D, B, H)).astype(dtype))
    direct = _run(layer, x, hx, dy, dhx)
    layer._inputs.direct = False          # the same layer through the contract's Python calls
    contract = _run(layer, x, hx, dy, dhx)
    assert len(direct) == len(contract)
    for a, b in zip(direct, contract):
        np.testing.assert_array_equal(a, b)
    layer._inputs.direct = True
    _run(layer, x, hx, dy, dhx)
    if layer.bias:
        g = layer.grads
        assert g["bias_ih_l0"] is not g["bias_hh_l0"]
        assert not np.shares_memory(g["bias_ih_l0"], g["bias_hh_l0"])
        np.testing.assert_array_equal(g["bias_ih_l0"], g["bias_hh_l0"])


def test_backend_switched_between_forward_and_backward():
    """The cache keeps the backend of its forward call: a switch before backward does not
    send C-packed weights to another backend through the layer's (rebound) direct calls."""
    layer = lstm_fast.LSTM(2, 3, backend="c", seed=0)
    x = np.ones((4, 2, 2), np.float32)
    out, _ = layer(x)
    want = layer.backward(np.ones_like(out))[0]
    out, _ = layer(x)
    layer.backend = "numpy"
    assert not layer._inputs.direct
    got = layer.backward(np.ones_like(out))[0]
    np.testing.assert_array_equal(got, want)
    layer.backend = "c"
    assert layer._inputs.direct


def test_low_precision_backward_raises_through_direct_call():
    # int8 (inference only; bfloat16 trains: tests/test_bf16_training.py)
    layer = lstm_fast.LSTM(2, 3, backend="c", seed=0, weight_dtype="int8")
    out, _ = layer(np.ones((4, 2, 2), np.float32), save=False)
    with pytest.raises(RuntimeError, match="inference only"):
        layer.backward(np.ones_like(out))
