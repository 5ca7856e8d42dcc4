"""The C backend's one-call path of ``LSTM`` (one layer, one direction, time-major,
no lengths): same results as the general path, which still converts every
argument the fast path declines and raises every message."""

import copy
import pickle

import numpy as np
import pytest

import lstm_fast

pytestmark = pytest.mark.skipif("c" not in lstm_fast.available_backends(),
                                reason="the C backend is not built")

T, B, I, H = 4, 3, 5, 6


def _pair(proj_size=0, bias=True, dtype=np.float32, seed=0):
    """Two equal layers: one may take the one-call path, one never does."""
    fast = lstm_fast.LSTM(I, H, bias=bias, proj_size=proj_size, dtype=dtype, backend="c", seed=seed)
    slow = copy.deepcopy(fast)
    slow._fast = None
    return fast, slow


def _inputs(dtype, R, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = (rng.standard_normal((1, B, R)).astype(dtype), rng.standard_normal((1, B, H)).astype(dtype))
    gout = rng.standard_normal((T, B, R)).astype(dtype)
    ghx = (rng.standard_normal((1, B, R)).astype(dtype), rng.standard_normal((1, B, H)).astype(dtype))
    return x, hx, gout, ghx


def _same(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    else:
        assert type(a) is type(b)
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("with_grads", [True, False])
def test_one_call_path_equals_general_path(dtype, proj_size, bias, with_hx, with_grads):
    fast, slow = _pair(proj_size, bias, dtype)
    x, hx, gout, ghx = _inputs(dtype, proj_size or H)
    hx = hx if with_hx else None
    args = (gout, ghx) if with_grads else ()
    f = fast(x, hx)
    assert len(fast._cache) == 2                 # the one-call path was taken
    s = slow(x, hx)
    _same(f, s)
    _same(fast.backward(*args), slow.backward(*args))
    _same(fast.grads, slow.grads)
    assert list(fast.grads) == [n for n, _ in fast.named_parameters()]


class _Sub(np.ndarray):
    """An ndarray subclass: the general path takes it as a plain array."""


def _converted_inputs(dtype, R):
    """Arguments the one-call path declines, each with an equivalent plain array."""
    x, hx, _, _ = _inputs(dtype, R)
    xf = np.asfortranarray(x)
    swapped = x.astype(x.dtype.newbyteorder(">"))
    padded = np.zeros((T, B, 2 * I), dtype)
    padded[:, :, ::2] = x
    return [
        (xf, hx), (np.round(x * 4).astype(int).tolist(), hx), (swapped, hx), (padded[:, :, ::2], hx),
        (x, list(hx)), (x, (np.asfortranarray(hx[0]), hx[1])), (x, (np.round(hx[0] * 4).astype(int).tolist(), hx[1])),
        (np.round(x * 4).astype(np.int32), hx), (x.view(_Sub), hx),
    ], x, hx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arguments_that_need_conversion_give_the_same_results(dtype):
    fast, slow = _pair(dtype=dtype)
    cases, x, hx = _converted_inputs(dtype, H)
    for xin, hin in cases:
        _same(fast(xin, hin), slow(xin, hin))
        _same(fast.backward(np.ones((T, B, H), dtype)), slow.backward(np.ones((T, B, H), dtype)))
        _same(fast.grads, slow.grads)


def test_gradients_that_need_conversion_give_the_same_results():
    fast, slow = _pair()
    x, hx, gout, ghx = _inputs(np.float32, H)
    for g, gh in [(np.asfortranarray(gout), ghx), (np.round(gout * 4).astype(int).tolist(), ghx), (gout.astype(np.int64), None),
                  (gout, [ghx[0], np.asfortranarray(ghx[1])]), (None, ghx), (None, None)]:
        for h in (hx, None):
            fast(x, h)
            slow(x, h)
            _same(fast.backward(g, gh), slow.backward(g, gh))
            _same(fast.grads, slow.grads)


def test_other_structures_take_the_general_path():
    x, hx, _, _ = _inputs(np.float32, H)
    for kw in (dict(batch_first=True), dict(bidirectional=True), dict(num_layers=2)):
        layer = lstm_fast.LSTM(I, H, backend="c", seed=0, **kw)
        layer(x)
        assert len(layer._cache) == 6
    layer = lstm_fast.LSTM(I, H, backend="c", seed=0)
    out, _ = layer(x, lengths=np.array([4, 2, 3]))
    assert len(layer._cache) == 6 and np.all(out[3, 1:] == 0)
    np.testing.assert_array_equal(layer(x[:, :1])[0], layer(x[:, 0])[0][:, None])   # unbatched
    assert layer(np.zeros((0, B, I), np.float32))[0].shape == (0, B, H)           # T = 0


def test_batch_first_set_after_construction_is_honoured():
    fast, slow = _pair()
    x, _, _, _ = _inputs(np.float32, H)
    fast(x)
    fast.batch_first = slow.batch_first = True
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    _same(fast(xb), slow(xb))
    _same(fast.backward(np.ones((B, T, H), np.float32)), slow.backward(np.ones((B, T, H), np.float32)))


def test_messages_are_those_of_the_general_path():
    layer = lstm_fast.LSTM(I, H, backend="c")
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, I=5\), got \(4, 3, 4\)"):
        layer(np.zeros((T, B, 4), np.float32))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c0\) must have shape \(num_layers\*num_directions, B, H\) = \(1, 3, 6\), got \(1, 2, 6\)"):
        layer(x, (np.zeros((1, B, H), np.float32), np.zeros((1, 2, H), np.float32)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h0, c0\)"):
        layer(x, (np.zeros((1, B, H), np.float32),))
    layer(x)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(4, 3, 6\), got \(4, 3, 5\)"):
        layer.backward(np.zeros((T, B, 5), np.float32))
    with pytest.raises(TypeError, match="grad_output must have dtype float32"):
        layer.backward(np.zeros((T, B, H), np.float64))
    with pytest.raises(ValueError, match=r"grad_hx\[0\] must have shape \(1, 3, 6\), got \(3, 6\)"):
        layer.backward(None, (np.zeros((B, H), np.float32), np.zeros((1, B, H), np.float32)))


def test_every_weight_route_is_seen_by_the_one_call_path():
    fast, slow = _pair(dtype=np.float64)
    x, hx, gout, _ = _inputs(np.float64, H)
    fast(x, hx)
    fast.backward(gout)
    with fast.unlocked_parameters() as p:
        p["weight_hh_l0"] *= 0.5
        p["bias_ih_l0"] += 0.25
    slow.load_state_dict(fast.state_dict())
    _same(fast(x, hx), slow(x, hx))
    fast.set_parameter("weight_ih_l0", np.ones((4 * H, I)))
    slow.set_parameter("weight_ih_l0", np.ones((4 * H, I)))
    _same(fast(x, hx), slow(x, hx))
    sd = fast.state_dict()
    sd["bias_hh_l0"] = -sd["bias_hh_l0"]
    fast.load_state_dict(sd)
    slow.load_state_dict(sd)
    _same(fast(x, hx), slow(x, hx))
    _same(fast.backward(gout), slow.backward(gout))


def test_pickled_layer_takes_the_one_call_path_again():
    layer = lstm_fast.LSTM(I, H, backend="c", seed=3)
    x, hx, _, _ = _inputs(np.float32, H)
    out = layer(x, hx)
    clone = pickle.loads(pickle.dumps(layer))
    _same(clone(x, hx), out)
    assert len(clone._cache) == 2
    clone.backend = "numpy"
    np.testing.assert_allclose(clone(x, hx)[0], out[0], rtol=2e-5, atol=2e-6)
    assert len(clone._cache) == 6


def test_large_zero_states_and_gradients():
    """hx, dy and grad_hx given as None beyond the shared zero buffer (64 KiB)."""
    fast = lstm_fast.LSTM(2, 300, backend="c", seed=0, dtype=np.float64)
    slow = copy.deepcopy(fast)
    slow._fast = None
    x = np.random.default_rng(0).standard_normal((5, 40, 2))
    _same(fast(x), slow(x))
    _same(fast.backward(), slow.backward())
    _same(fast.grads, slow.grads)


def test_unusable_simd_level_is_reported_after_the_checks_of_x():
    import os
    import subprocess
    import sys
    code = ("import numpy as np, lstm_fast\n"
            "layer = lstm_fast.LSTM(3, 4, backend='c')\n"
            "for x in (np.zeros((2, 1, 5), np.float32), np.zeros((2, 1, 3), np.float32)):\n"
            "    try:\n"
            "        layer(x)\n"
            "    except Exception as e:\n"
            "        print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LSTM_FAST_SIMD="avx1024"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith("ValueError x must have shape (T, B, I=3), got (2, 1, 5)")
    assert second.startswith("RuntimeError") and "LSTM_FAST_SIMD" in second
