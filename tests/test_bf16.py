"""bfloat16 weights for inference (issue 16, first part): the C kernel against the NumPy
oracle of the same arithmetic (backends/reference.py: lstm_forward_bf16), at every SIMD
level, native vdpbf16ps and emulated, 1 and 2 threads; the error against the float64
reference as a function of T; the layer, quantize and Stream; bad input.

How tight each comparison is, and why:
* one step from the same state (h, c): the products are the oracle's bits (same pairs,
  same order, same rounding, FTZ); what differs is the cell's exp/tanh/reciprocal and
  the fused c update, a few float32 ulp: y within STEP_ATOL, c within STEP_RTOL.
* whole sequences: a difference of an ulp in h can move h across a bfloat16 rounding
  boundary at the next step (one bf16 ulp, 2^-8 relative, in one input of the products),
  so sequences are compared with the accuracy bound of bf16 itself (ERR_BOUND), except
  where the code is the same: AVX-512 native and emulated, any thread count, streamed in
  chunks or not: bitwise.
"""
import pickle

import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import same_bits

ck = pytest.importorskip("lstm_fast.backends._c")

_ORDER = ("portable", "avx2", "avx512")
LEVELS = _ORDER[:_ORDER.index(ck.cpu_simd_level()) + 1]

def _native_available():
    try:
        ck.set_bf16_native(True)
    except RuntimeError:
        return False
    finally:
        ck.set_bf16_native(None)
    return True


NATIVE = _native_available()
# (level, native) pairs this CPU can run: every level emulated, AVX-512 also native
MODES = [(lv, False) for lv in LEVELS] + ([("avx512", True)] if NATIVE else [])

STEP_ATOL = 2.0 ** -20     # |y| <= 1: 8 ulp of the largest |y|
STEP_RTOL = 2.0 ** -20     # c: 8 ulp of max(1, |c|)
# max |y - y_float64| over the outputs (|y| < 1, so also the error relative to the largest
# output) after T steps, weights at torch's scale 1/sqrt(H), x and c0 of order 1, (B, I, H)
# = (4, 48, 64): measured on the Intel Xeon, max (median) over 8 seeds, 7.3e-4 (6.1e-4) at
# T = 1, 1.02e-3 (9.1e-4) at T = 64, 1.17e-3 (1.04e-3) at T = 512, the float32 kernel 1e-7.
# It grows little with T: the forget gate damps old errors. Bounds: about twice that.
ERR_BOUND = {1: 1.5e-3, 64: 2e-3, 512: 2.5e-3}
# whole sequences against the oracle: one h element moved across a bf16 rounding boundary
# changes the next pre-activations by at most 2^-8 |h| |w| (< 1e-3 here); measured 2.4e-7
# (no such move) over every shape, level and 5 seeds. At most 1 % of the outputs may differ
# by more than STEP_ATOL.
SEQ_ATOL = 2e-3


@pytest.fixture(params=MODES, ids=lambda m: m[0] + ("-native" if m[1] else "-emulated"))
def mode(request):
    level, native = request.param
    before = ck.simd_level()
    ck.set_simd_level(level)
    ck.set_bf16_native(native if native else False)
    yield request.param
    ck.set_bf16_native(None)
    ck.set_simd_level(before)


def problem(T, B, I, H, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    u = lambda lim, *shape: rng.uniform(-lim, lim, shape).astype(np.float32)
    return dict(x=u(1, T, B, I), w_ih=u(s, 4 * H, I), w_hh=u(s, 4 * H, H),
                b=u(s, 4 * H) if bias else None, h0=u(0.5, B, H), c0=u(1, B, H))


SHAPES = [(1, 1, 1, 1), (3, 1, 1, 1), (4, 1, 7, 19), (5, 3, 5, 1), (4, 2, 9, 37),
          (3, 5, 24, 40), (3, 13, 16, 33), (2, 7, 33, 17), (2, 16, 40, 64)]
IDS = ["T{}B{}I{}H{}".format(*s) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_every_step_matches_the_oracle(mode, shape, num_threads):
    """Each step from the kernel's own state against the oracle's step from that state."""
    T, B, I, H = shape
    p = problem(*shape, seed=sum(shape))
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    h, c = p["h0"].copy(), p["c0"].copy()
    for t in range(T):
        want_y, _, want_c = ref.lstm_forward_bf16(p["x"][t:t + 1], p["w_ih"], p["w_hh"], p["b"],
                                                  h, c)
        y = ck.step(packed, p["x"][t], h, c, num_threads)
        np.testing.assert_allclose(y, want_y[0], rtol=0, atol=STEP_ATOL)
        np.testing.assert_allclose(c, want_c, rtol=0,
                                   atol=STEP_RTOL * max(1.0, float(np.abs(want_c).max())))
        assert same_bits(h, y)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_same_bits_for_threads_native_and_chunks(shape):
    """Any thread count, native or emulated at AVX-512, whole or streamed: same bits."""
    T, B, I, H = shape
    p = problem(*shape, seed=3)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    runs = []
    for native in ([False, True] if NATIVE else [False]):
        ck.set_bf16_native(native)
        try:
            for n in (1, 2, 3):
                runs.append(ck.forward(packed, p["x"], p["h0"], p["c0"], n, None, False)[:3])
        finally:
            ck.set_bf16_native(None)
    h, c = p["h0"].copy(), p["c0"].copy()
    runs.append((np.stack([ck.step(packed, xt, h, c, 1) for xt in p["x"]]), h, c))
    for got in runs[1:]:
        assert all(same_bits(a, b) for a, b in zip(got, runs[0]))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_match_the_oracle_within_the_bf16_bound(mode, shape):
    T, B, I, H = shape
    p = problem(*shape, seed=5)
    y, h_n, c_n, _, _ = ck.forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"],
                                   p["c0"], 2, None, False)
    want = ref.lstm_forward_bf16(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])
    for got, w in zip((y, h_n, c_n), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=SEQ_ATOL)
        assert np.mean(np.abs(got - w) > STEP_ATOL * max(1, np.abs(w).max())) <= 0.01


@pytest.mark.parametrize("T", [1, 64, 512])
def test_error_against_float64_as_a_function_of_T(T):
    """The bf16 forward's distance to the exact (float64) LSTM of the same float32 weights,
    and that the oracle has the same error (it is the same arithmetic)."""
    B, I, H = 4, 48, 64
    p = problem(T, B, I, H, seed=11)
    exact = ref.lstm_forward(*(p[k].astype(np.float64) for k in ("x", "w_ih", "w_hh", "b",
                                                                 "h0", "c0")))[0]
    got = ck.forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                     None, False)[0]
    oracle = ref.lstm_forward_bf16(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    err, err_oracle = np.abs(got - exact).max(), np.abs(oracle - exact).max()
    f32 = ck.forward(ck.pack(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1, None,
                     False)[0]
    print(f"T={T}: bf16 {err:.2e}, oracle {err_oracle:.2e}, float32 {np.abs(f32 - exact).max():.2e}")
    assert err <= ERR_BOUND[T] and err_oracle <= ERR_BOUND[T]
    assert err > 10 * np.abs(f32 - exact).max()   # it is bf16 arithmetic, not float32


def test_round_bf16_is_nearest_even():
    torch = pytest.importorskip("torch")
    one = np.float32(1)
    cases = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 1 + 2.0 ** -8 + 2.0 ** -20,
                      3.4e38, np.inf, -np.inf, 1e-40, -1e-40, 0.0, -0.0], np.float32)
    got = ref.round_bf16(cases)
    want = np.array([1, 1 + 2.0 ** -6, -1, 1 + 2.0 ** -7, np.inf, np.inf, -np.inf, 0, -0.0, 0,
                     -0.0], np.float32)
    assert same_bits(got, want)
    assert np.isnan(ref.round_bf16(np.array([np.nan], np.float32))).all()
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * \
        np.float32(10.0) ** np.random.default_rng(1).integers(-30, 30, 100_000).astype(np.float32)
    t = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert same_bits(ref.round_bf16(x), t)
    assert one == ref.round_bf16(np.array([one]))[0]


def test_nan_and_inf_propagate():
    p = problem(3, 2, 4, 5)
    p["x"][1, 0, 2] = np.nan
    p["x"][1, 1, 0] = np.inf
    y = ck.forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                   None, False)[0]
    want = ref.lstm_forward_bf16(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(y[1:, 0]).all()


# --- the layer, quantize, Stream ---------------------------------------------------------

LAYERS = [dict(num_layers=1), dict(num_layers=2), dict(bidirectional=True),
          dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False)]


@pytest.mark.parametrize("kw", LAYERS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("lengths", [None, [6, 2, 5]])
def test_layer_against_float64_and_the_numpy_backend(kw, lengths):
    layer = lstm_fast.LSTM(5, 11, seed=1, **kw)
    q = lstm_fast.quantize(layer, "bfloat16")
    qn = lstm_fast.quantize(layer, "bfloat16")
    qn.backend = "numpy"
    exact = lstm_fast.LSTM(5, 11, seed=1, dtype=np.float64, backend="numpy", **kw)
    exact.load_state_dict(layer.state_dict())
    x = np.random.default_rng(2).standard_normal((6, 3, 5)).astype(np.float32)
    if kw.get("batch_first"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    out, (h, c) = q(x, lengths=lengths)
    out_n, (h_n, c_n) = qn(x, lengths=lengths)
    out64, (h64, c64) = exact(x.astype(np.float64), lengths=lengths)
    for a, b, e in ((out, out_n, out64), (h, h_n, h64), (c, c_n, c64)):
        assert a.dtype == np.float32 and a.shape == e.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=SEQ_ATOL)
        # H = 11: weights up to 1/sqrt(11), three times those of the ERR_BOUND problem; a
        # plumbing error (a wrong weight, direction or length) would be off by O(0.1)
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-2)
    assert np.abs(out - out64).max() > 1e-5   # the weights really are bf16
    if lengths is not None:
        assert np.all((out[1, 2:] if kw.get("batch_first") else out[2:, 1]) == 0)


def test_quantize_keeps_the_masters_and_the_original():
    layer = lstm_fast.LSTM(4, 6, num_layers=2, seed=0)
    before = layer.state_dict()
    q = lstm_fast.quantize(layer)
    assert q.weight_dtype == "bfloat16" and not q.training and layer.weight_dtype == "float32"
    assert layer.training
    for k, v in q.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])
    back = lstm_fast.quantize(q, "float32")
    x = np.ones((3, 2, 4), np.float32)
    assert same_bits(back(x)[0], layer(x)[0])
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.weight_dtype == "bfloat16" and same_bits(q2(x)[0], q(x)[0])
    assert "weight_dtype='bfloat16'" in repr(q)


def test_constructor_option_equals_quantize():
    a = lstm_fast.LSTM(3, 9, num_layers=2, seed=4, weight_dtype="bfloat16")
    b = lstm_fast.quantize(lstm_fast.LSTM(3, 9, num_layers=2, seed=4))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    assert same_bits(a(x)[0], b(x)[0]) and not a.training


@pytest.mark.parametrize("B", [1, 3])
def test_stream_gives_the_layers_bits(B):
    layer = lstm_fast.LSTM(6, 21, num_layers=2, seed=3, weight_dtype="bfloat16")
    x = np.random.default_rng(1).standard_normal((7, B, 6)).astype(np.float32)
    want, (h, c) = layer(x)
    s = lstm_fast.Stream(layer, batch_size=B)
    steps = np.stack([s.step(xt) for xt in x[:4]])
    rest = s.run(x[4:])
    assert same_bits(np.concatenate([steps, rest]), want)
    assert same_bits(s.state[0], h) and same_bits(s.state[1], c)


def test_float32_layer_unchanged():
    """The plain path: weight_dtype None/float32 is the float32 layer, bit for bit."""
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    a = lstm_fast.LSTM(3, 7, seed=0)
    b = lstm_fast.LSTM(3, 7, seed=0, weight_dtype="float32")
    assert a.weight_dtype == "float32" and same_bits(a(x)[0], b(x)[0])
    assert b.training and b.backward(np.ones((4, 2, 7), np.float32))[0].shape == x.shape


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(weight_dtype="int4"), r"weight_dtype must be one of \('float32', 'float64', 'bfloat16', 'int8'\)"),
    (dict(weight_dtype=3), "weight_dtype must be one of"),
    (dict(weight_dtype="float64"), "must be the layer's dtype"),
    (dict(weight_dtype="bfloat16", dtype=np.float64), "needs dtype float32"),
    (dict(weight_dtype="bfloat16", proj_size=2), "proj_size"),
    (dict(weight_dtype="bfloat16", peephole=True), "variants"),
    (dict(weight_dtype="bfloat16", clip=3.0), "variants"),
    (dict(weight_dtype="bfloat16", backend="numba"), "'c' and 'numpy' backends"),
])
def test_bad_weight_dtype(kw, match):
    if kw.get("backend") == "numba" and "numba" not in lstm_fast.available_backends():
        pytest.skip("numba not installed")
    with pytest.raises(ValueError, match=match):
        lstm_fast.LSTM(3, 4, **kw)


def test_inference_only():
    q = lstm_fast.LSTM(3, 4, weight_dtype="bfloat16")
    x = np.ones((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="inference only"):
        q.train()
    with pytest.raises(ValueError, match="inference only"):
        q(x, save=True)
    q(x)
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match="'c' and 'numpy' backends"):
        q.backend = "numba" if "numba" in lstm_fast.available_backends() else pytest.skip()
    p = problem(2, 1, 3, 4)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    with pytest.raises(ValueError, match="inference only"):
        ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    with pytest.raises(ValueError, match="inference only"):
        ref.forward(ref.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1)
    with pytest.raises(TypeError, match="lstm_fast.LSTM"):
        lstm_fast.quantize(object())


def test_info_names_the_bf16_path(capsys):
    from lstm_fast import cli
    cli.info([])
    out = capsys.readouterr().out
    assert "bfloat16 weights (weight_dtype='bfloat16'): " in out
    assert ("native (vdpbf16ps" in out) == (NATIVE and ck.simd_level() == "avx512")
    ck.set_bf16_native(False)
    try:
        assert ck.bf16_path().startswith("emulated")
    finally:
        ck.set_bf16_native(None)
    if not NATIVE:
        with pytest.raises(RuntimeError, match="AVX512_BF16"):
            ck.set_bf16_native(True)


@pytest.mark.skipif(not NATIVE, reason="needs AVX512_BF16 (vdpbf16ps), the hardware truth")
@pytest.mark.parametrize("B", [1, 3, 8], ids=["B1-tile", "B3-emulated", "B8-widened"])
def test_emulation_equals_vdpbf16ps_on_hard_values(B):
    """Weights over 2^-40..2^12 (long exponent gaps, absorption, cancellation) and a bias
    that cancels the exact product, so that each pre-activation is the accumulation's
    rounding error itself and the outputs carry its bits: the emulation's FMAs with
    FTZ/DAZ give vdpbf16ps's bits, in registers (B <= 6) and from the pack's float32 copy
    (B > 6); the oracle's products are the same."""
    rng = np.random.default_rng(B)
    I, H = 37, 21
    e = lambda *s: (rng.standard_normal(s) * 2.0 ** rng.integers(-40, 12, s)).astype(np.float32)
    w_ih, w_hh = e(4 * H, I), e(4 * H, H)
    x1, h1 = rng.standard_normal(I).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    x, h0 = np.tile(x1, (1, B, 1)), np.tile(h1, (B, 1))
    c0 = np.zeros((B, H), np.float32)
    exact = (np.concatenate([ref.round_bf16(w_ih), ref.round_bf16(w_hh)], 1).astype(np.float64)
             @ np.concatenate([ref.round_bf16(x1), ref.round_bf16(h1)]).astype(np.float64))
    b = (-exact).astype(np.float32)
    packed = ck.pack_bf16(w_ih, w_hh, b)
    got = []
    for native in (True, False):
        ck.set_bf16_native(native)
        try:
            got.append(ck.forward(packed, x, h0, c0, 1, None, False)[:3])
        finally:
            ck.set_bf16_native(None)
    assert all(same_bits(a, b) for a, b in zip(*got))
    want = ref.lstm_forward_bf16(x, w_ih, w_hh, b, h0, c0)
    np.testing.assert_allclose(got[0][0], want[0], rtol=0, atol=STEP_ATOL)
    # the outputs carry the rounding: y = o tanh(i tanh(error)), nonzero where the float32
    # accumulation was not exact (with exact sums every y would be 0)
    assert np.count_nonzero(got[0][0]) >= got[0][0].size // 4


@pytest.mark.parametrize("B", [1, 3, 8])
def test_products_at_every_level_are_the_oracles(mode, B):
    """The problem of the test above at every level: the outputs, a few times the rounding
    error of each product sum, agree with the oracle's to a few float32 ulp relative (a
    single ulp of difference in a sum would change them by about 100 %)."""
    rng = np.random.default_rng(B + 10)
    I, H = 37, 21
    e = lambda *s: (rng.standard_normal(s) * 2.0 ** rng.integers(-40, 12, s)).astype(np.float32)
    w_ih, w_hh = e(4 * H, I), e(4 * H, H)
    x1, h1 = rng.standard_normal(I).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    x, h0 = np.tile(x1, (1, B, 1)), np.tile(h1, (B, 1))
    c0 = np.zeros((B, H), np.float32)
    exact = (np.concatenate([ref.round_bf16(w_ih), ref.round_bf16(w_hh)], 1).astype(np.float64)
             @ np.concatenate([ref.round_bf16(x1), ref.round_bf16(h1)]).astype(np.float64))
    b = (-exact).astype(np.float32)
    y = ck.forward(ck.pack_bf16(w_ih, w_hh, b), x, h0, c0, 2, None, False)[0]
    want = ref.lstm_forward_bf16(x, w_ih, w_hh, b, h0, c0)[0]
    np.testing.assert_allclose(y, want, rtol=2.0 ** -19, atol=1e-37)
    assert np.count_nonzero(y) >= y.size // 4
