"""Inter-layer dropout of the NumPy-facing layer: torch's semantics, seeded, same masks in backward."""

import numpy as np
import pytest

import lstm_fast

from _support import assert_close


def _layer(backend, dtype=np.float64, p=0.5, seed=0, L=3):
    return lstm_fast.LSTM(3, 4, num_layers=L, dropout=p, seed=seed, dtype=dtype, backend=backend)


def test_masks_reproducible_from_seed_and_off_in_eval(backend):
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    a, b = _layer(backend), _layer(backend)
    out_a, _ = a(x)
    out_b, _ = b(x)
    np.testing.assert_array_equal(out_a, out_b)
    out_a2, _ = a(x)
    assert not np.array_equal(out_a, out_a2)          # a fresh mask each call
    no_drop = lstm_fast.LSTM(3, 4, num_layers=3, seed=0, dtype=np.float64, backend=backend)
    a.eval()
    np.testing.assert_array_equal(a(x)[0], a(x)[0])
    assert_close(a(x)[0], no_drop(x)[0], np.float64, "eval mode = no dropout")


def test_backward_applies_the_forward_masks(backend, dtype):
    """Compose the same network from single-layer LSTMs with the recorded masks applied by hand."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 3)).astype(dtype)
    net = _layer(backend, dtype, p=0.4, seed=5, L=2)
    out, (h, c) = net(x)
    g = rng.standard_normal(out.shape).astype(dtype)
    dx, _ = net.backward(g)
    mask = net._cache[1][0]
    assert set(np.unique(mask)) <= {0.0, dtype(1 / 0.6)}
    l0 = lstm_fast.LSTM(3, 4, dtype=dtype, backend=backend)
    l1 = lstm_fast.LSTM(4, 4, dtype=dtype, backend=backend)
    sd = net.state_dict()
    l0.load_state_dict({k: v for k, v in sd.items() if k.endswith("_l0")})
    l1.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    y0, _ = l0(x)
    y1, _ = l1(y0 * mask)
    assert_close(out, y1, dtype, "output")
    d1, _ = l1.backward(g)
    d0, _ = l0.backward(d1 * mask)
    assert_close(dx, d0, dtype, "grad_x")
    assert_close(net.grads["weight_hh_l0"], l0.grads["weight_hh_l0"], dtype, "weight_hh_l0")


def test_dropout_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        lstm_fast.LSTM(3, 4, dropout=0.2)


def test_dropout_one_zeroes_between_layers():
    layer = lstm_fast.LSTM(3, 4, num_layers=2, dropout=1.0, seed=0, dtype=np.float64)
    out, _ = layer(np.ones((2, 1, 3)))
    zero_in = lstm_fast.LSTM(4, 4, dtype=np.float64)
    zero_in.load_state_dict({k.replace("_l1", "_l0"): v for k, v in layer.state_dict().items() if "_l1" in k})
    np.testing.assert_allclose(out, zero_in(np.zeros((2, 1, 4)))[0], rtol=1e-14)
