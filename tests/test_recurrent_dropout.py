"""Recurrent (variational) dropout of issue 15 (Gal & Ghahramani 2016; Keras'
``recurrent_dropout``): one mask (B, R) per sequence, the same at every step, on h_{t-1} in
the recurrent product only. Every backend equals the NumPy reference (float64) for outputs,
final states and every gradient, alone and with the other variants, padded and with lengths,
with a projection, 1-2 threads and at every SIMD level; the bits do not depend on the
thread count; a mask of ones is the plain LSTM bit for bit; the reference equals a plain
transcription of Keras' LSTMCell and finite differences in float64; the layer's option
(training only, seeded) and the errors.
"""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _philox
from lstm_fast import backends
from lstm_fast.backends import reference as ref

from _support import (BACKENDS, BITWISE_BACKENDS, assert_every_simd_level_matches_reference,
                      assert_functional_gradients, assert_layer_agrees_on_every_backend,
                      assert_same_bits_for_any_threads, assert_variant_matches_reference,
                      reference64, run_variant, same_bits)
from test_variants import CASES, IDS, VARIANTS, _lengths, variant_problem

P_DROP = 0.4


def with_mask(p, seed, p_drop=P_DROP):
    """A variant_problem plus a recurrent dropout mask (B, R): zeros and 1/(1-p)."""
    B, R = p["h0"].shape
    keep = np.random.default_rng(seed + 2).random((B, R)) >= p_drop
    p["rdrop"] = (keep / (1 - p_drop)).astype(p["h0"].dtype)
    return p


COMBOS = {"alone": {}, "all": VARIANTS["all"], "everything": VARIANTS["everything"]}


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("shape,P", CASES, ids=IDS)
@pytest.mark.parametrize("combo", list(COMBOS))
def test_matches_reference(impl, dtype, combo, shape, P, ragged, num_threads):
    T, B, I, H = shape
    p = with_mask(variant_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype,
                                  hash(shape) % 1000, COMBOS[combo]), 1)
    assert_variant_matches_reference(impl, p, dtype, num_threads)


def test_the_mask_changes_every_output():
    """The problems above are not blind to the mask: it changes y, the states and every
    gradient, and a zero entry cuts exactly that unit's recurrent path."""
    p = with_mask(variant_problem(5, 3, 7, 17, 0, None, np.float64, 3, {}), 1)
    got = reference64(p)
    q = dict(p, rdrop=np.ones_like(p["rdrop"]))
    plain = reference64(q)
    for a, b in zip(got[0][:3] + got[1][:6], plain[0][:3] + plain[1][:6]):
        assert not np.allclose(a, b)
    assert 0.2 < np.mean(p["rdrop"] == 0) < 0.6


def test_reference_is_keras_lstmcell():
    """A transcription of Keras 3's LSTMCell.call (keras/src/layers/rnn/lstm.py) in training
    with recurrent_dropout: ``h_tm1 = h_tm1 * rec_dp_mask`` (one mask for the four gates,
    drawn once per sequence by DropoutRNNCell), then ``z = x W + h_tm1 U + b`` with the
    gate order i, f, c, o (torch's i, f, g, o) and h = o * tanh(c)."""
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 4, 5
    x, W, U, b = (rng.standard_normal(s) for s in ((T, B, I), (I, 4 * H), (H, 4 * H), (4 * H,)))
    mask = (rng.random((B, H)) >= 0.5) / 0.5
    h, c = np.zeros((B, H)), np.zeros((B, H))
    ys = []
    for t in range(T):
        z = x[t] @ W + (h * mask) @ U + b
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = ref.sigmoid(f) * c + ref.sigmoid(i) * np.tanh(g)
        h = ref.sigmoid(o) * np.tanh(c)
        ys.append(h)
    y, h_n, c_n, _, _ = ref.lstm_forward(x, W.T.copy(), U.T.copy(), b, np.zeros((B, H)),
                                         np.zeros((B, H)), rdrop=mask)
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(c_n, c, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 3])
@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_bits_do_not_depend_on_num_threads(name, dtype, P, ragged):
    impl = backends.get(name)
    T, B, I, H = 9, 20, 24, 40     # B = 20: Numba's threads take sequences, C's units
    p = with_mask(variant_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype, 5,
                                  VARIANTS["all"]), 2)
    assert_same_bits_for_any_threads(run_variant, impl, p)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_simd_level_matches_reference(combo, dtype):
    p = with_mask(variant_problem(6, 5, 9, 21, 0, _lengths(6, 5), dtype, 11, COMBOS[combo]), 3)
    assert_every_simd_level_matches_reference(p, dtype)


@pytest.mark.parametrize("P", [0, 4])
@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_a_mask_of_ones_is_the_plain_lstm_bit_for_bit(name, dtype, P):
    impl = backends.get(name)
    p = with_mask(variant_problem(7, 5, 6, 19, P, _lengths(7, 5), dtype, 2, {}), 0, 0.0)
    assert np.all(p["rdrop"] == 1)
    packed = impl.pack(*p["w"])
    fwd = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, p["batch_sizes"])
    bwd = impl.backward(packed, p["x"], p["h0"], p["c0"], fwd[0], fwd[3], fwd[4], p["dy"],
                        p["dh_n"], p["dc_n"], 1, p["batch_sizes"])
    got = run_variant(impl, p)
    assert same_bits(got[0], tuple(fwd)) and same_bits(got[1][:7], tuple(bwd))


@pytest.mark.parametrize("combo", ["alone", "everything"])
def test_save_false_and_chunks_give_the_same_bits(impl, dtype, combo):
    """Inference with the mask (nothing saved) and two chunks (the mask per sequence, so the
    same mask for both) equal one call."""
    T, B, I, H = 6, 4, 5, 11
    p = with_mask(variant_problem(T, B, I, H, 0, None, dtype, 4, COMBOS[combo]), 5)
    packed = impl.pack(*p["w"], variant=p["variant"])
    m = p["rdrop"]
    y, h_n, c_n, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, rdrop=m)
    y2, h2, c2, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, save=False, rdrop=m)
    ya, ha, ca, _, _ = impl.forward(packed, p["x"][:2], p["h0"], p["c0"], 1, rdrop=m)
    yb, hb, cb, _, _ = impl.forward(packed, p["x"][2:], ha, ca, 1, rdrop=m)
    if impl.__name__.endswith("reference"):
        close = lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6)
    else:
        close = np.array_equal
    assert close(y2, y) and close(h2, h_n) and close(c2, c_n)
    assert close(np.concatenate([ya, yb]), y) and close(hb, h_n) and close(cb, c_n)


# --- finite differences (float64) ---------------------------------------------------------


@pytest.mark.parametrize("combo", ["alone", "all"])
@pytest.mark.parametrize("proj", [False, True], ids=["P0", "P2"])
def test_gradients_match_finite_differences(impl, combo, proj):
    """Every gradient by central differences in float64 of loss = sum(y dy) + sum(h_n dh_n)
    + sum(c_n dc_n) through the functional API with a fixed mask (a zero included), with
    lengths."""
    opts = COMBOS[combo]
    rng = np.random.default_rng(8)
    T, B, I, H = 4, 3, 2, 3
    R = 2 if proj else H
    u = lambda *s: rng.uniform(-1, 1, s)
    a = dict(x=u(T, B, I), w_ih=u(4 * H, I), w_hh=u(4 * H, R), b_ih=u(4 * H), b_hh=u(4 * H),
             h0=u(B, R), c0=u(B, H))
    if proj:
        a["w_hr"] = u(R, H)
    if opts.get("peephole"):
        a.update(w_ci=u(H), w_cf=u(H), w_co=u(H))
    mask = np.array([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0], [2.0, 2.0, 0.0]])[:, :R]
    kw = dict(clip=opts.get("clip"), cell_clip=opts.get("cell_clip"), rdrop=mask,
              lengths=[4, 2, 3], backend=backends.name_of(impl))
    dy, dh_n, dc_n = u(T, B, R), u(B, R), u(B, H)
    dy[2:, 1] = 0
    dy[3:, 2] = 0
    assert_functional_gradients(a, kw, dy, dh_n, dc_n)


# --- the layer and the functional API -----------------------------------------------------


def test_layer_equals_the_reference_on_every_backend(dtype):
    """Two layers, both directions, lengths, a projection: the same seeded masks on every
    backend give the numpy layer's outputs and gradients."""
    assert_layer_agrees_on_every_backend(
        lambda name: lstm_fast.LSTM(3, 7, num_layers=2, bidirectional=True, proj_size=4,
                                    dtype=dtype, seed=1, backend=name, recurrent_dropout=0.3,
                                    peephole=True), dtype, 2 * 4)


def test_layer_masks_training_only_seeded_and_per_call():
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    a = lstm_fast.LSTM(3, 6, seed=2, recurrent_dropout=0.5)
    b = lstm_fast.LSTM(3, 6, seed=2, recurrent_dropout=0.5)
    plain = lstm_fast.LSTM(3, 6, seed=2)
    ya, yb, yp = a(x)[0], b(x)[0], plain(x)[0]
    assert np.array_equal(ya, yb)                    # the same seed, the same mask
    assert not np.allclose(ya, yp)                   # training: masked
    assert not np.array_equal(a(x)[0], ya)           # a new mask per call
    a.eval()
    plain.eval()
    assert np.array_equal(a(x)[0], plain(x)[0])      # eval: off
    assert "recurrent_dropout=0.5" in repr(a)


def test_layer_mask_is_the_functional_mask():
    """The layer's training forward is lstm_forward with the mask it drew (dropout stream)."""
    x = np.random.default_rng(1).standard_normal((5, 4, 3))
    layer = lstm_fast.LSTM(3, 6, seed=3, recurrent_dropout=0.25, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(3).spawn(1)[0])
    mask = _philox.mask_numpy((4, 6), _philox.key_from(rng), _philox.threshold(0.25), 1 / 0.75,
                              np.float64)   # Philox4x32-10 under a key from the stream
    sd = layer.state_dict()
    want = lstm_fast.lstm_forward(x, sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"],
                                  sd["bias_hh_l0"], rdrop=mask, backend="numpy").y
    np.testing.assert_allclose(layer(x)[0], want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_bad_recurrent_dropout_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match=r"recurrent_dropout must be a number in \[0, 1\)"):
        lstm_fast.LSTM(3, 4, recurrent_dropout=value)


def test_bad_mask_shape_is_an_error_naming_rdrop():
    rng = np.random.default_rng(0)
    x, w_ih, w_hh = rng.standard_normal((3, 2, 4)), rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    with pytest.raises(ValueError, match="rdrop"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, rdrop=np.ones((3, 2)))


def test_pickle_keeps_the_option():
    import pickle
    layer = lstm_fast.LSTM(3, 4, recurrent_dropout=0.2)
    assert pickle.loads(pickle.dumps(layer)).recurrent_dropout == 0.2
