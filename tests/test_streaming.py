"""Stream: chunked calls give the same bits as one call over the whole sequence."""

import numpy as np
import pytest

import lstm_fast

from _support import assert_close

# Backends whose products are row-independent, so chunking cannot change a bit
# (numpy's BLAS may round the last bit differently for another row count).
BITWISE = {"c", "numba"}


def _same(a, b, backend, dtype):
    if backend in BITWISE:
        np.testing.assert_array_equal(a, b)
    else:
        assert_close(a, b, dtype)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("B, I, H", [(4, 3, 8), (1, 20, 17), (17, 20, 33)])
def test_steps_and_chunks_bitwise_equal_full_call(backend, dtype, num_layers, B, I, H):
    layer = lstm_fast.LSTM(I, H, num_layers=num_layers, seed=0, dtype=dtype, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, B, I)).astype(dtype)
    hx = tuple(rng.standard_normal((num_layers, B, H)).astype(dtype) for _ in range(2))
    full, (h_n, c_n) = layer(x, hx)
    s = lstm_fast.Stream(layer, batch_size=B, hx=hx)
    stepped = np.stack([s.step(x[t]) for t in range(12)])
    _same(stepped, full, backend, dtype)
    _same(s.state[0], h_n, backend, dtype)
    _same(s.state[1], c_n, backend, dtype)
    s.reset(hx)
    chunks = np.concatenate([s.run(x[a:b]) for a, b in ((0, 5), (5, 6), (6, 12))])
    _same(chunks, full, backend, dtype)


def test_stream_sees_weight_changes_and_rejects_bad_input(backend):
    layer = lstm_fast.LSTM(2, 3, seed=1, backend=backend, dtype=np.float64)
    s = lstm_fast.Stream(layer)
    x = np.ones((1, 2))
    a = s.step(x)
    layer.set_parameter("bias_ih_l0", np.full(12, 0.5))
    s.reset()
    b = s.step(x)
    np.testing.assert_array_equal(b, layer(x[None])[0][0])
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, I\) = \(1, 2\), got \(2, 2\)"):
        s.step(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(num_layers, B, H\) = \(1, 1, 3\)"):
        s.reset((np.zeros((1, 3)), np.zeros((1, 1, 3))))
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        lstm_fast.Stream(lstm_fast.LSTM(2, 3, bidirectional=True))
