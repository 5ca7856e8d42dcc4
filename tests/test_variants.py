"""LSTM variants of issue 15 (peepholes, gate pre-activation clip, cell clip, coupled input and
forget gates (CIFG), forget-gate bias initialisation) on every backend: each backend equals the NumPy reference (evaluated in
float64 on the same values) for outputs, final states and every gradient, the peephole
weights' included; the reference's gradients equal finite differences in float64; bits do
not depend on the thread count or on chunking; the options of ``lstm_forward`` and ``LSTM``
and their errors. ONNX Runtime as the outside oracle: test_adapters_variants.py.
"""

import contextlib

import numpy as np
import pytest

import lstm_fast
from lstm_fast import backends
from lstm_fast.backends import Variant
from lstm_fast.backends import reference as ref

from _support import (BACKENDS, BITWISE_BACKENDS, assert_every_simd_level_matches_reference,
                      assert_functional_gradients, assert_matches,
                      assert_same_bits_for_any_threads, assert_variant_matches_reference,
                      c_claims, contract_problem, run_variant, same_bits)

# clip 0.5 and cell_clip 0.3 clamp a good share of the values of contract_problem
# (pre-activations and cell states of order 1), so both sides of each clamp are exercised.
VARIANTS = {
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.5),
    "cell_clip": dict(cell_clip=0.3),
    "all": dict(peephole=True, clip=0.5, cell_clip=0.3),
    "cifg": dict(cifg=True),
    "onnx": dict(peephole=True, clip=0.5, cifg=True),        # what ONNX allows together
    "everything": dict(peephole=True, clip=0.5, cell_clip=0.3, cifg=True),
}

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 1, 1, 1),
    (1, 4, 3, 5),
    (5, 3, 7, 17),      # odd H, I != H
    (3, 5, 64, 1),      # H = 1
    (6, 32, 3, 32),     # B >= 16: the C step does x_t.w_ih^T itself
    (8, 7, 96, 129),    # I > 16, H past a multiple of the vector width
]
CASES = [(s, 0) for s in SHAPES] + [((5, 3, 7, 17), 5), ((4, 6, 9, 12), 4)]
IDS = ["T{}B{}I{}H{}P{}".format(*s, P) for s, P in CASES]


def _lengths(T, B):
    if B == 1:
        return [T]
    return sorted([T, 1] + [max(0, T - 2 - 3 * k) for k in range(B - 2)], reverse=True)


def variant_problem(T, B, I, H, P, lengths, dtype, seed, opts):
    """contract_problem plus the variant (peephole (3, H) weights of order 1). Coupled gates:
    the kernels' 4H rows with the f rows zero (the contract's form of 3H weights)."""
    p = contract_problem(T, B, I, H, P, lengths, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    peep = rng.uniform(-1, 1, (3, H)).astype(dtype) if opts.get("peephole") else None
    p["variant"] = Variant(peep, opts.get("clip", 0.0), opts.get("cell_clip", 0.0),
                           opts.get("cifg", False))
    if opts.get("cifg"):
        for w in p["w"][:3]:
            if w is not None:
                w[H:2 * H] = 0
    return p


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("shape,P", CASES, ids=IDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_reference(impl, dtype, variant, shape, P, ragged, num_threads):
    T, B, I, H = shape
    p = variant_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype,
                        hash(shape) % 1000, VARIANTS[variant])
    assert_variant_matches_reference(impl, p, dtype, num_threads)


def test_the_clamps_are_exercised():
    """The problems above clamp some values and leave others: both branches are tested."""
    p = variant_problem(5, 3, 7, 17, 0, None, np.float64, 3, VARIANTS["all"])
    x = p["x"].reshape(-1, 7)
    (y, _, _, gates, c), _ = run_variant(ref, p)
    assert 0.05 < np.mean(np.abs(c) >= 0.3 - 1e-15) < 0.95
    lo, hi = ref.sigmoid(np.array([-0.5, 0.5]))
    i = gates[..., :17]
    assert 0.05 < np.mean((i <= lo + 1e-15) | (i >= hi - 1e-15)) < 0.95
    assert x.size


# C: the steps' blocks claimed at run time by default; "others-first": every thread starts on
# the other threads' parts, so blocks (their running dc, db, peephole gradients) move threads
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 3])
@pytest.mark.parametrize("name,claims", [(b, None) for b in BACKENDS if b in BITWISE_BACKENDS]
                         + [("c", "others-first")] * ("c" in BITWISE_BACKENDS),
                         ids=lambda v: v or "")
def test_variant_bits_do_not_depend_on_num_threads(name, claims, dtype, P, ragged):
    impl = backends.get(name)
    T, B, I, H = 9, 20, 24, 40     # B = 20: Numba's threads take sequences, C's units
    p = variant_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype, 5,
                        VARIANTS["all"])
    with c_claims(claims) if name == "c" else contextlib.nullcontext():
        assert_same_bits_for_any_threads(run_variant, impl, p)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_simd_level_matches_reference(variant, dtype):
    p = variant_problem(6, 5, 9, 21, 0, _lengths(6, 5), dtype, 11, VARIANTS[variant])
    assert_every_simd_level_matches_reference(p, dtype, threads=(2,))


@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_all_off_is_the_plain_lstm_bit_for_bit(name, dtype):
    impl = backends.get(name)
    p = variant_problem(7, 5, 6, 19, 0, None, dtype, 2, {})
    plain = contract_problem(7, 5, 6, 19, 0, None, dtype, 2)
    packed = impl.pack(*plain["w"])
    fwd = impl.forward(packed, plain["x"], plain["h0"], plain["c0"], 1)
    bwd = impl.backward(packed, plain["x"], plain["h0"], plain["c0"], fwd[0], fwd[3], fwd[4],
                        plain["dy"], plain["dh_n"], plain["dc_n"], 1)
    got = run_variant(impl, p)
    assert same_bits(got[0], tuple(fwd)) and same_bits(got[1][:7], tuple(bwd))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_false_steps_and_chunks_give_the_same_bits(impl, dtype, variant):
    """Inference (nothing saved), one step at a time and two chunks equal one call."""
    T, B, I, H = 6, 4, 5, 11
    p = variant_problem(T, B, I, H, 0, None, dtype, 4, VARIANTS[variant])
    packed = impl.pack(*p["w"], variant=p["variant"])
    y, h_n, c_n, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1)
    y2, h2, c2, g2, cc2 = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, save=False)
    assert g2 is None and cc2 is None
    h, c = p["h0"].copy(), p["c0"].copy()
    ys = [impl.step(packed, p["x"][t], h, c, 1) for t in range(T)]
    ya, ha, ca, _, _ = impl.forward(packed, p["x"][:2], p["h0"], p["c0"], 1)
    yb, hb, cb, _, _ = impl.forward(packed, p["x"][2:], ha, ca, 1)
    if impl.__name__.endswith("reference"):
        close = lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6)
    else:
        close = np.array_equal
    assert close(y2, y) and close(h2, h_n) and close(c2, c_n)
    assert close(np.stack(ys), y) and close(h, h_n) and close(c, c_n)
    assert close(np.concatenate([ya, yb]), y) and close(hb, h_n) and close(cb, c_n)
    if VARIANTS[variant].get("cell_clip"):
        assert np.abs(c_n).max() <= VARIANTS[variant]["cell_clip"]


# --- finite differences (float64) ---------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_match_finite_differences(impl, variant):
    """Every gradient, the peephole weights' included, by central differences in float64 of
    loss = sum(y dy) + sum(h_n dh_n) + sum(c_n dc_n), through the functional API."""
    opts = VARIANTS[variant]
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 2, 3
    G = (3 if opts.get("cifg") else 4) * H
    u = lambda *s: rng.uniform(-1, 1, s)
    a = dict(x=u(T, B, I), w_ih=u(G, I), w_hh=u(G, H), b_ih=u(G), b_hh=u(G),
             h0=u(B, H), c0=u(B, H))
    if opts.get("peephole"):
        a.update(w_ci=u(H), w_cf=u(H), w_co=u(H))
    kw = dict(clip=opts.get("clip"), cell_clip=opts.get("cell_clip"),
              cifg=opts.get("cifg", False), backend=backends.name_of(impl))
    dy, dh_n, dc_n = u(T, B, H), u(B, H), u(B, H)
    g = assert_functional_gradients(a, kw, dy, dh_n, dc_n)
    if not opts.get("peephole"):
        assert g.dw_ci is None and g.dw_cf is None and g.dw_co is None
    elif opts.get("cifg"):
        assert not np.any(g.dw_cf)        # f = 1 - i: w_cf is not used


# --- the functional API and the layer -----------------------------------------------------


def test_functional_options_equal_the_reference(dtype):
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 4, 3, 6
    u = lambda *s: rng.uniform(-1, 1, s).astype(dtype)
    args = (u(T, B, I), u(4 * H, I), u(4 * H, H), u(4 * H), u(4 * H), u(B, H), u(B, H))
    w_c = u(3, H)
    res = {}
    for be in BACKENDS:
        y, h_n, c_n, cache = lstm_fast.lstm_forward(*args, w_ci=w_c[0], w_cf=w_c[1],
                                                    w_co=w_c[2], clip=0.6, cell_clip=0.4,
                                                    lengths=[5, 2, 4, 0], backend=be)
        g = lstm_fast.lstm_backward(cache, np.ones_like(y))
        res[be] = (y, h_n, c_n) + tuple(g)
    for be in BACKENDS:
        for name, a, e in zip(("y", "h_n", "c_n") + g._fields, res[be], res["numpy"]):
            if e is None:
                assert a is None
            else:
                assert_matches([a], [e], [name], dtype)
    assert np.abs(res["numpy"][2][:3]).max() <= 0.4   # sequence 3 (length 0) keeps its c0


def test_layer_default_state_dict_is_unchanged():
    plain = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    assert list(plain.state_dict()) == [
        f"{k}_l{layer}{s}" for layer in range(2) for s in ("", "_reverse")
        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert repr(plain) == ("LSTM(3, 4, num_layers=2, bidirectional=True, dtype=float32, "
                           f"backend={plain.backend!r})")


def test_layer_peephole_parameters_names_and_seeded_values():
    plain = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    peep = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, seed=0,
                          peephole=True)
    sd, sp = plain.state_dict(), peep.state_dict()
    extra = [n for n in sp if n not in sd]
    assert extra == [f"{k}_l{layer}{s}" for layer in range(2) for s in ("", "_reverse")
                     for k in ("weight_ci", "weight_cf", "weight_co")]
    assert all(sp[n].shape == (4,) for n in extra)
    assert all(np.array_equal(sd[n], sp[n]) for n in sd)     # torch's draw the same values
    names = list(sp)
    assert names.index("weight_co_l0") < names.index("weight_ih_l0_reverse")


def test_forget_bias_initialises_the_forget_slice():
    layer = lstm_fast.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0, forget_bias=1.0)
    plain = lstm_fast.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0)
    H = 5
    for name, arr in layer.state_dict().items():
        want = plain.state_dict()[name].copy()
        if name.startswith("bias_ih"):
            want[H:2 * H] = 1.0
        elif name.startswith("bias_hh"):
            want[H:2 * H] = 0.0
        assert np.array_equal(arr, want), name
    with pytest.raises(ValueError, match="forget_bias needs bias=True"):
        lstm_fast.LSTM(3, 5, bias=False, forget_bias=1.0)
    with pytest.raises(ValueError, match="forget_bias"):
        lstm_fast.LSTM(3, 5, forget_bias=float("nan"))
    with pytest.raises(ValueError, match="forget_bias: with cifg=True there is no forget gate"):
        lstm_fast.LSTM(3, 5, cifg=True, forget_bias=1.0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layer_equals_the_reference_on_every_backend(dtype, variant):
    """2 layers, bidirectional, lengths, batch_first: outputs, states, dx, dh0, dc0 and every
    parameter gradient (the peephole weights' included) of each backend equal numpy's."""
    opts = VARIANTS[variant]
    x = np.random.default_rng(0).uniform(-1, 1, (4, 6, 3)).astype(dtype)
    lengths = [6, 1, 3, 6]
    out = {}
    for be in BACKENDS:
        layer = lstm_fast.LSTM(3, 7, num_layers=2, bidirectional=True, batch_first=True,
                               dtype=dtype, seed=1, backend=be, **opts)
        y, (h_n, c_n) = layer(x, lengths=lengths)
        dy = np.random.default_rng(1).uniform(-1, 1, y.shape).astype(dtype)
        dx, (dh0, dc0) = layer.backward(dy, (np.ones_like(h_n), np.ones_like(c_n)))
        out[be] = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                       **{"d" + k: v for k, v in layer.grads.items()})
        assert set(layer.grads) == set(layer.state_dict())
    for be in BACKENDS:
        assert set(out[be]) == set(out["numpy"])
        for name, e in out["numpy"].items():
            assert_matches([out[be][name]], [e], [name], dtype)


def test_layer_state_dict_round_trip_with_peepholes():
    a = lstm_fast.LSTM(2, 3, peephole=True, cell_clip=1.0, seed=0)
    b = lstm_fast.LSTM(2, 3, peephole=True, cell_clip=1.0, seed=1)
    b.load_state_dict(a.state_dict())
    x = np.ones((3, 2, 2), np.float32)
    assert np.array_equal(a(x)[0], b(x)[0])
    with pytest.raises(KeyError, match="weight_ci_l0"):
        lstm_fast.LSTM(2, 3, peephole=True).load_state_dict(lstm_fast.LSTM(2, 3).state_dict())
    with pytest.raises(ValueError, match=r"weight_cf_l0 must have shape \(3,\)"):
        a.set_parameter("weight_cf_l0", np.zeros(4))


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip", "cell_clip"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_clip_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be None or 0"):
        lstm_fast.LSTM(2, 3, **{name: value})
    x, w_ih, w_hh = np.ones((2, 1, 2)), np.zeros((12, 2)), np.zeros((12, 3))
    with pytest.raises(ValueError, match=f"^{name} must be None or 0"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, **{name: value})


def test_bad_peephole_weights_are_errors_naming_them():
    x, w_ih, w_hh = np.ones((2, 1, 2)), np.zeros((12, 2)), np.zeros((12, 3))
    with pytest.raises(ValueError, match=r"w_cf must have shape \(H,\) = \(3,\), got \(4,\)"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, w_ci=np.zeros(3), w_cf=np.zeros(4), w_co=np.zeros(3))
    with pytest.raises(ValueError, match="w_ci, w_cf, w_co must all be given"):
        lstm_fast.lstm_forward(x, w_ih, w_hh, w_ci=np.zeros(3))
    with pytest.raises(TypeError, match="peephole must be a bool"):
        lstm_fast.LSTM(2, 3, peephole=1)


def test_cifg_weights_have_3h_rows():
    layer = lstm_fast.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, cifg=True)
    shapes = {k: v.shape for k, v in layer.state_dict().items()}
    assert shapes["weight_ih_l0"] == (15, 3) and shapes["weight_hh_l1_reverse"] == (15, 2)
    assert shapes["bias_ih_l1"] == (15,) and shapes["weight_hr_l0"] == (2, 5)
    x, h = np.ones((2, 1, 2)), 3
    with pytest.raises(ValueError, match=r"cifg=True: w_ih must have 3\*H = 9 rows \(gates i, g, o; "
                                         r"f = 1 - i\), got shape \(12, 2\)"):
        lstm_fast.lstm_forward(x, np.zeros((4 * h, 2)), np.zeros((3 * h, h)), cifg=True)
    with pytest.raises(ValueError, match=r"cifg=True: w_hh must have 3\*H = 9 rows"):
        lstm_fast.lstm_forward(x, np.zeros((3 * h, 2)), np.zeros((4 * h, h)), cifg=True)
    with pytest.raises(ValueError, match=r"w_ih must have shape \(4\*H, I\)"):
        lstm_fast.lstm_forward(x, np.zeros((3 * h, 2)), np.zeros((3 * h, h)))
    with pytest.raises(TypeError, match="cifg must be a bool"):
        lstm_fast.lstm_forward(x, np.zeros((3 * h, 2)), np.zeros((3 * h, h)), cifg=1)


def test_cifg_forget_gate_is_one_minus_input_gate():
    rng = np.random.default_rng(0)
    H = 4
    y, h_n, c_n, cache = lstm_fast.lstm_forward(rng.uniform(-1, 1, (3, 2, 5)),
                                                rng.uniform(-1, 1, (3 * H, 5)),
                                                rng.uniform(-1, 1, (3 * H, H)), cifg=True)
    gates = cache.gates
    np.testing.assert_allclose(gates[..., H:2 * H], 1 - gates[..., :H], rtol=0, atol=1e-15)


def test_c_kernel_rejects_a_negative_clip():
    """The C contract checks its variant too (callers bypassing the validation)."""
    ck = backends.get("c")
    p = variant_problem(2, 1, 2, 3, 0, None, np.float64, 0, {})
    packed = ck.pack(*p["w"], variant=Variant(None, -1.0, 0.0))
    with pytest.raises(ValueError, match="rejected its arguments"):
        ck.forward(packed, p["x"], p["h0"], p["c0"], 1)


@pytest.mark.parametrize("variant", ["all", "everything"])
def test_stream_and_pickle_keep_the_variants(variant, backend):
    """Stream (one step at a time) gives the layer's bits; a pickled layer keeps its options."""
    import pickle
    layer = lstm_fast.LSTM(3, 5, num_layers=2, seed=0, backend=backend, **VARIANTS[variant])
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    out, _ = layer(x)
    stream = lstm_fast.Stream(layer, batch_size=2)
    steps = np.stack([stream.step(x[t]) for t in range(6)])
    close = (lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6)) if backend == "numpy" \
        else np.array_equal
    assert close(steps, out)
    again = pickle.loads(pickle.dumps(layer))
    assert repr(again) == repr(layer) and np.array_equal(again(x)[0], out)
