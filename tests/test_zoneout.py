"""Zoneout on h of issue 15, haste's ZoneoutLSTM semantics (lmnt-com/haste,
lib/lstm_forward_gpu.cu.cc): training h_t = h_{t-1} + m_t (h~_t - h_{t-1}) with a new
Bernoulli mask m_t every step, eval h_t = z h_{t-1} + (1 - z) h~_t. Every backend equals the
NumPy reference (float64) for outputs, final states and every gradient, alone and with the
other variants and recurrent dropout, padded and with lengths, 1-2 threads, every SIMD level;
bits do not depend on the thread count; the reference equals a transcription of haste's
kernel and finite differences in float64; the layer's option and the errors.
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
                      run_variant, same_bits)
from test_variants import IDS as _IDS, CASES as _CASES, VARIANTS, _lengths, variant_problem
from test_recurrent_dropout import with_mask

CASES = [(s, P) for s, P in _CASES if P == 0]     # no projection (as haste)
IDS = [i for i, (s, P) in zip(_IDS, _CASES) if P == 0]
Z = 0.3


def with_zoneout(p, seed, eval_mode=False, rdrop=False):
    """A variant_problem plus a zoneout mask shaped like y (and a recurrent dropout mask)."""
    y_shape = p["dy"].shape
    m = (np.random.default_rng(seed + 3).random(y_shape) >= Z).astype(p["h0"].dtype)
    p["zoneout"] = np.full(y_shape, 1 - Z, p["h0"].dtype) if eval_mode else m
    if rdrop:
        with_mask(p, seed)
    else:
        p["rdrop"] = None
    return p


COMBOS = {"alone": ({}, False, False), "eval": ({}, True, False),
          "with_rdrop": ({}, False, True), "everything": (VARIANTS["everything"], False, True)}


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("shape,P", CASES, ids=IDS)
@pytest.mark.parametrize("combo", list(COMBOS))
def test_matches_reference(impl, dtype, combo, shape, P, ragged, num_threads):
    T, B, I, H = shape
    opts, eval_mode, rdrop = COMBOS[combo]
    p = with_zoneout(variant_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype,
                                     hash(shape) % 1000, opts), 1, eval_mode, rdrop)
    assert_variant_matches_reference(impl, p, dtype, num_threads)


def test_reference_is_haste():
    """A transcription of haste's LSTM pointwise kernel with zoneout (lib/lstm_forward_gpu.cu.cc):
    ``cur_h_value = (cur_h_value - h) * zoneout_mask + h`` (training),
    ``zoneout_prob * h + (1 - zoneout_prob) * cur_h_value`` (eval); gates i, g, f, o of
    haste's layout are torch's i, f, g, o here."""
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 4, 5
    x = rng.standard_normal((T, B, I))
    W, R, b = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H)
    mask = (rng.random((T, B, H)) >= Z).astype(float)
    for eval_mode in (False, True):
        h, c = np.zeros((B, H)), np.zeros((B, H))
        ys = []
        for t in range(T):
            z = x[t] @ W.T + h @ R.T + b
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = ref.sigmoid(f) * c + ref.sigmoid(i) * np.tanh(g)
            cur = ref.sigmoid(o) * np.tanh(c)
            h = Z * h + (1 - Z) * cur if eval_mode else (cur - h) * mask[t] + h
            ys.append(h)
        zm = np.full((T, B, H), 1 - Z) if eval_mode else mask
        y = ref.lstm_forward(x, W, R, b, np.zeros((B, H)), np.zeros((B, H)), zoneout=zm)[0]
        np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_bits_do_not_depend_on_num_threads(name, dtype, ragged):
    impl = backends.get(name)
    T, B, I, H = 9, 20, 24, 40     # B = 20: Numba's threads take sequences, C's units
    p = with_zoneout(variant_problem(T, B, I, H, 0, _lengths(T, B) if ragged else None, dtype, 5,
                                     VARIANTS["all"]), 2, rdrop=True)
    assert_same_bits_for_any_threads(run_variant, impl, p)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_simd_level_matches_reference(combo, dtype):
    opts, eval_mode, rdrop = COMBOS[combo]
    p = with_zoneout(variant_problem(6, 5, 9, 21, 0, _lengths(6, 5), dtype, 11, opts), 3,
                     eval_mode, rdrop)
    assert_every_simd_level_matches_reference(p, dtype)


@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_save_false_gives_the_same_bits(name, dtype):
    """Inference (nothing saved) equals the training forward bit for bit."""
    impl = backends.get(name)
    p = with_zoneout(variant_problem(6, 4, 5, 11, 0, None, dtype, 4, {}), 5, rdrop=True)
    packed = impl.pack(*p["w"], variant=p["variant"])
    kw = dict(rdrop=p["rdrop"], zoneout=p["zoneout"])
    y, h_n, c_n, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, **kw)
    y2, h2, c2, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, save=False, **kw)
    assert same_bits((y2, h2, c2), (y, h_n, c_n))


# --- finite differences (float64) ---------------------------------------------------------


@pytest.mark.parametrize("combo", ["alone", "eval", "everything"])
def test_gradients_match_finite_differences(impl, combo):
    """Every gradient by central differences in float64, through the functional API, with
    lengths and a fixed mask (non-binary entries included: the formula is linear in it)."""
    opts, eval_mode, rdrop = COMBOS[combo]
    rng = np.random.default_rng(9)
    T, B, I, H = 4, 3, 2, 3
    G = (3 if opts.get("cifg") else 4) * H
    u = lambda *s: rng.uniform(-1, 1, s)
    a = dict(x=u(T, B, I), w_ih=u(G, I), w_hh=u(G, H), b_ih=u(G), b_hh=u(G), h0=u(B, H),
             c0=u(B, H))
    if opts.get("peephole"):
        a.update(w_ci=u(H), w_cf=u(H), w_co=u(H))
    zm = np.full((T, B, H), 1 - Z) if eval_mode else (rng.random((T, B, H)) >= Z) * 1.0
    kw = dict(clip=opts.get("clip"), cell_clip=opts.get("cell_clip"),
              cifg=opts.get("cifg", False), zoneout=zm, lengths=[4, 2, 3],
              rdrop=(rng.random((B, H)) >= 0.3) / 0.7 if rdrop else None,
              backend=backends.name_of(impl))
    dy, dh_n, dc_n = u(T, B, H), u(B, H), u(B, H)
    dy[2:, 1] = 0
    dy[3:, 2] = 0
    assert_functional_gradients(a, kw, dy, dh_n, dc_n)


# --- the layer and the functional API -----------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_equals_the_reference_on_every_backend(dtype, training):
    def make(name):
        layer = lstm_fast.LSTM(3, 7, num_layers=2, bidirectional=True, dtype=dtype, seed=1,
                               backend=name, zoneout=0.2, recurrent_dropout=0.1, clip=2.0)
        return layer.train(training)
    assert_layer_agrees_on_every_backend(make, dtype, 2 * 7, save=True)


def test_layer_masks_per_step_and_eval_expectation():
    x = np.random.default_rng(0).standard_normal((5, 4, 3))
    layer = lstm_fast.LSTM(3, 6, seed=2, zoneout=Z, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(2).spawn(1)[0])
    m = _philox.mask_numpy((5, 4, 6), _philox.key_from(rng), _philox.threshold(Z), 1.0,
                           np.float64)   # Philox4x32-10 under a key from the stream
    assert 0 < m.mean() < 1 and not np.all(m[0] == m[1])      # a new mask every step
    sd = layer.state_dict()
    w = (sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])
    want = lstm_fast.lstm_forward(x, *w, zoneout=m, backend="numpy").y
    np.testing.assert_allclose(layer(x)[0], want, rtol=1e-12, atol=1e-13)
    layer.eval()
    want = lstm_fast.lstm_forward(x, *w, zoneout=np.full((5, 4, 6), 1 - Z), backend="numpy").y
    np.testing.assert_allclose(layer(x)[0], want, rtol=1e-12, atol=1e-13)
    assert "zoneout=0.3" in repr(layer)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), "0.1", True])
def test_bad_zoneout_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\)"):
        lstm_fast.LSTM(3, 4, zoneout=value)


def test_zoneout_with_a_projection_is_an_error():
    with pytest.raises(ValueError, match="zoneout needs proj_size=0"):
        lstm_fast.LSTM(3, 4, proj_size=2, zoneout=0.1)
    rng = np.random.default_rng(0)
    x, w_ih, w_hh, w_hr = (rng.standard_normal(s) for s in ((3, 2, 4), (8, 4), (8, 1), (1, 2)))
    with pytest.raises(ValueError, match="zoneout needs no projection"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, w_hr=w_hr, zoneout=np.ones((3, 2, 2)))


def test_bad_mask_shape_is_an_error_naming_zoneout():
    rng = np.random.default_rng(0)
    x, w_ih, w_hh = rng.standard_normal((3, 2, 4)), rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    with pytest.raises(ValueError, match="zoneout"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, zoneout=np.ones((2, 2, 2)))


def test_pickle_keeps_the_option():
    import pickle
    layer = lstm_fast.LSTM(3, 4, zoneout=0.2)
    assert pickle.loads(pickle.dumps(layer)).zoneout == 0.2


def test_stream_and_bfloat16_reject_zoneout():
    layer = lstm_fast.LSTM(3, 4, zoneout=0.2)
    with pytest.raises(ValueError, match="zoneout cannot stream"):
        lstm_fast.Stream(layer)
    with pytest.raises(ValueError, match="zoneout"):
        lstm_fast.LSTM(3, 4, zoneout=0.2, weight_dtype="bfloat16", backend="numpy")
