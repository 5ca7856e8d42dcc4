"""int8 weights for inference (issue 16): the C kernel against the NumPy oracle of the
same arithmetic (backends/reference.py: lstm_forward_int8), at every SIMD level, 1 and 2
threads, one row tile (int8 widened in registers) and several (the pack's float32 copy);
the error against the float64 reference as a function of T; the layer, quantize and
Stream; bad input.

How tight each comparison is, and why:
* one step from the same state (h, c): the products are the oracle's bits (same scales,
  same int8 values, the same FMAs in the same order, then the same scaling); what differs
  is the cell's exp/tanh/reciprocal and the fused c update, a few float32 ulp: y within
  STEP_ATOL, c within STEP_RTOL.
* whole sequences: x and h are not quantized, so a difference of an ulp in h stays a few
  ulp (no rounding boundary to cross, unlike bf16): SEQ_ATOL. Bitwise where the code is
  the same: any thread count, streamed in chunks or not.
* the products alone: with a bias that cancels the exact products, the outputs are the
  accumulations' rounding errors, so a single ulp of difference in a sum shows
  (test_products_at_every_level_are_the_oracles).
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

STEP_ATOL = 2.0 ** -20     # |y| <= 1: 8 ulp of the largest |y|
STEP_RTOL = 2.0 ** -20     # c: 8 ulp of max(1, |c|)
SEQ_ATOL = 2.0 ** -16      # whole sequences (measured <= 2.4e-7 over the shapes and levels)
# max |y - y_float64| over the outputs (|y| < 1) after T steps, weights at torch's scale
# 1/sqrt(H), x and c0 of order 1, (B, I, H) = (4, 48, 64): measured on the Intel Xeon
# (family 6 model 167), max (median) over 8 seeds: 1.08e-3 (9.5e-4) at T = 1, 1.91e-3
# (1.50e-3) at T = 64, 2.07e-3 (1.83e-3) at T = 512; float32 1e-7. Bounds: about twice.
ERR_BOUND = {1: 2.5e-3, 64: 4e-3, 512: 4.5e-3}


@pytest.fixture(params=LEVELS)
def level(request):
    before = ck.simd_level()
    ck.set_simd_level(request.param)
    yield request.param
    ck.set_simd_level(before)


def problem(T, B, I, H, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    u = lambda lim, *shape: rng.uniform(-lim, lim, shape).astype(np.float32)
    return dict(x=u(1, T, B, I), w_ih=u(s, 4 * H, I), w_hh=u(s, 4 * H, H),
                b=u(s, 4 * H) if bias else None, h0=u(0.5, B, H), c0=u(1, B, H))


SHAPES = [(1, 1, 1, 1), (3, 1, 1, 1), (4, 1, 7, 19), (5, 3, 5, 1), (4, 2, 9, 37),
          (3, 5, 24, 40), (3, 13, 16, 33), (2, 7, 33, 17), (2, 16, 40, 64), (2, 3, 0, 5)]
IDS = ["T{}B{}I{}H{}".format(*s) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_every_step_matches_the_oracle(level, shape, num_threads):
    """Each step from the kernel's own state against the oracle's step from that state."""
    T, B, I, H = shape
    p = problem(*shape, seed=sum(shape))
    packed = ck.pack_int8(p["w_ih"], p["w_hh"], p["b"])
    h, c = p["h0"].copy(), p["c0"].copy()
    for t in range(T):
        want_y, _, want_c = ref.lstm_forward_int8(p["x"][t:t + 1], p["w_ih"], p["w_hh"], p["b"],
                                                  h, c)
        y = ck.step(packed, p["x"][t], h, c, num_threads)
        np.testing.assert_allclose(y, want_y[0], rtol=0, atol=STEP_ATOL)
        np.testing.assert_allclose(c, want_c, rtol=0,
                                   atol=STEP_RTOL * max(1.0, float(np.abs(want_c).max())))
        assert same_bits(h, y)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_same_bits_for_threads_and_chunks(shape):
    T, B, I, H = shape
    p = problem(*shape, seed=3)
    packed = ck.pack_int8(p["w_ih"], p["w_hh"], p["b"])
    runs = [ck.forward(packed, p["x"], p["h0"], p["c0"], n, None, False)[:3] for n in (1, 2, 3)]
    h, c = p["h0"].copy(), p["c0"].copy()
    runs.append((np.stack([ck.step(packed, xt, h, c, 1) for xt in p["x"]]), h, c))
    for got in runs[1:]:
        assert all(same_bits(a, b) for a, b in zip(got, runs[0]))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_match_the_oracle(level, shape):
    T, B, I, H = shape
    p = problem(*shape, seed=5)
    y, h_n, c_n, _, _ = ck.forward(ck.pack_int8(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"],
                                   p["c0"], 2, None, False)
    want = ref.lstm_forward_int8(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])
    for got, w in zip((y, h_n, c_n), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=SEQ_ATOL * max(1, np.abs(w).max()))


@pytest.mark.parametrize("shape", [(2, 8, 200, 320), (1, 3, 600, 600)],
                         ids=["B8-float32-copy-chunked", "B3-int8-chunked-portable"])
def test_weights_beyond_the_l2_match_the_oracle(level, shape):
    """Weights larger than the L2 (2 MiB here): the steps walk K in chunks per group of
    rows (step_plan), each segment's sums carried through acc_mem: (2, 8, 200, 320) on the
    pack's float32 copy (AVX2, AVX-512: 2.7 MB), (1, 3, 600, 600) on the int8 weights
    (portable: 2.9 MB; AVX2 takes the float32 copy)."""
    T, B, I, H = shape
    p = problem(*shape, seed=7)
    packed = ck.pack_int8(p["w_ih"], p["w_hh"], p["b"])
    for n in (1, 2):
        y, h_n, c_n, _, _ = ck.forward(packed, p["x"], p["h0"], p["c0"], n, None, False)
        want = ref.lstm_forward_int8(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])
        for got, w in zip((y, h_n, c_n), want):
            np.testing.assert_allclose(got, w, rtol=0, atol=STEP_ATOL * max(1, np.abs(w).max()))


def test_variable_lengths_match_the_oracle():
    p = problem(5, 4, 6, 13, seed=2)
    bs = np.array([4, 4, 3, 1, 1], np.int64)
    x = np.concatenate([p["x"][t, :n] for t, n in enumerate(bs)])
    packed = ck.pack_int8(p["w_ih"], p["w_hh"], p["b"])
    y, h_n, c_n, _, _ = ck.forward(packed, x, p["h0"], p["c0"], 2, bs, False)
    want = ref.lstm_forward_int8(x, p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"], bs)
    for got, w in zip((y, h_n, c_n), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=SEQ_ATOL * max(1, np.abs(w).max()))


@pytest.mark.parametrize("T", [1, 64, 512])
def test_error_against_float64_as_a_function_of_T(T):
    """The int8 forward's distance to the exact (float64) LSTM of the same float32 weights,
    and that the oracle has the same error (it is the same arithmetic)."""
    B, I, H = 4, 48, 64
    p = problem(T, B, I, H, seed=11)
    exact = ref.lstm_forward(*(p[k].astype(np.float64) for k in ("x", "w_ih", "w_hh", "b",
                                                                 "h0", "c0")))[0]
    got = ck.forward(ck.pack_int8(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                     None, False)[0]
    oracle = ref.lstm_forward_int8(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    err, err_oracle = np.abs(got - exact).max(), np.abs(oracle - exact).max()
    f32 = ck.forward(ck.pack(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1, None,
                     False)[0]
    print(f"T={T}: int8 {err:.2e}, oracle {err_oracle:.2e}, float32 {np.abs(f32 - exact).max():.2e}")
    assert err <= ERR_BOUND[T] and err_oracle <= ERR_BOUND[T]
    assert err > 10 * np.abs(f32 - exact).max()   # it is int8 arithmetic, not float32
    np.testing.assert_allclose(got, oracle, rtol=0, atol=SEQ_ATOL)


def test_quantize_int8_rule():
    """Per row: s = max|w| / 127, q = rint(w / s) (nearest even) in [-127, 127]; zero rows
    give s = 0 and q = 0; NaN weights give q = 0 and do not set the scale."""
    w = np.array([[127, -63.5, 0.5, 1.5, 2.5, -127],
                  [0, 0, 0, 0, 0, 0],
                  [np.nan, 2.54, -1.27, 0, 0.01, 0.005]], np.float32)
    q, s = ref.quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert same_bits(s, np.array([1, 0, np.float32(2.54) / np.float32(127)], np.float32))
    assert q[0].tolist() == [127, -64, 0, 2, 2, -127]
    assert q[1].tolist() == [0] * 6
    assert q[2].tolist() == [0, 127, -64, 0, 0, 0]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 33)).astype(np.float32)
    q, s = ref.quantize_int8(w)
    assert np.abs(q).max() == 127 and (np.abs(q).max(axis=1) == 127).all()
    assert (np.abs(q * s[:, None] - w) <= s[:, None] / 2 * (1 + 1e-6)).all()


def test_fma_f32_is_correctly_rounded():
    """The oracle's FMA (and the portable level's) against exact rational arithmetic on
    cases where a float64 sum would round twice: a*b a float32 midpoint plus a tiny c."""
    from fractions import Fraction
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(20000) * 2.0 ** rng.integers(-10, 10, 20000)).astype(np.float32)
    b = rng.integers(-127, 128, 20000).astype(np.float32)
    c = (rng.standard_normal(20000) * 2.0 ** rng.integers(-60, 10, 20000)).astype(np.float32)
    # midpoints: (1 + 2^-23) * 3 = 3 + 1.5 ulp lies halfway between two floats; a tiny c
    # (below half a float64 ulp of it for exponents < -53) decides the rounding
    a[:1000] = np.float32(1 + 2.0 ** -23) * np.float32(2.0) ** rng.integers(-5, 5, 1000)
    b[:1000] = 3
    c[:1000] = (rng.choice([-1, 1], 1000) * 2.0 ** rng.integers(-60, -30, 1000)).astype(np.float32)
    got = ref.fma_f32(a, b, c)
    for i in range(0, 20000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        want = np.float32(float(exact))   # Fraction -> float64 is correctly rounded...
        lo, hi = np.nextafter(want, np.float32(-np.inf)), np.nextafter(want, np.float32(np.inf))
        best = min((lo, want, hi), key=lambda v: (abs(Fraction(float(v)) - exact),
                                                  int(np.float32(v).view(np.int32)) & 1))
        assert same_bits(got[i:i + 1], np.array([best], np.float32)), (a[i], b[i], c[i])


def test_nan_and_inf_propagate():
    p = problem(3, 2, 4, 5)
    p["x"][1, 0, 2] = np.nan
    p["x"][1, 1, 0] = np.inf
    y = ck.forward(ck.pack_int8(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                   None, False)[0]
    want = ref.lstm_forward_int8(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(y[1:, 0]).all()


def _hard_problem(B, seed):
    """Weights over 2^-40..2^12 in magnitude (long exponent gaps: absorption,
    cancellation) and a bias that cancels the exact products, so that each pre-activation
    is the accumulation's rounding error itself and the outputs carry its bits."""
    rng = np.random.default_rng(seed)
    I, H = 37, 21
    e = lambda *s: (rng.standard_normal(s) * 2.0 ** rng.integers(-40, 12, s)).astype(np.float32)
    w_ih, w_hh = e(4 * H, I), e(4 * H, H)
    x1, h1 = e(I), e(H)
    x, h0 = np.tile(x1, (1, B, 1)), np.tile(h1, (B, 1))
    c0 = np.zeros((B, H), np.float32)
    (qi, si), (qh, sh) = ref.quantize_int8(w_ih), ref.quantize_int8(w_hh)
    exact = (si.astype(np.float64) * (qi.astype(np.float64) @ x1.astype(np.float64)) +
             sh.astype(np.float64) * (qh.astype(np.float64) @ h1.astype(np.float64)))
    return w_ih, w_hh, (-exact).astype(np.float32), x, h0, c0


@pytest.mark.parametrize("B", [1, 3, 8], ids=["B1-tile", "B3", "B8-widened"])
def test_products_at_every_level_are_the_oracles(level, B):
    """The outputs, a few times the rounding error of each product sum, agree with the
    oracle's to a few float32 ulp relative (one ulp of difference in a sum would change
    them by about 100 %): the int8 widened in registers (B <= 6 at AVX-512), the pack's
    float32 copy (B > FR) and the portable level's exact FMA give the oracle's sums."""
    w_ih, w_hh, b, x, h0, c0 = _hard_problem(B, B + 10)
    y = ck.forward(ck.pack_int8(w_ih, w_hh, b), x, h0, c0, 2, None, False)[0]
    want = ref.lstm_forward_int8(x, w_ih, w_hh, b, h0, c0)[0]
    np.testing.assert_allclose(y, want, rtol=2.0 ** -19, atol=1e-37)
    assert np.count_nonzero(y) >= y.size // 4


# --- the layer, quantize, Stream ---------------------------------------------------------

LAYERS = [dict(num_layers=1), dict(num_layers=2), dict(bidirectional=True),
          dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False)]


@pytest.mark.parametrize("kw", LAYERS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("lengths", [None, [6, 2, 5]])
def test_layer_against_float64_and_the_numpy_backend(kw, lengths):
    layer = lstm_fast.LSTM(5, 11, seed=1, **kw)
    q = lstm_fast.quantize(layer, "int8")
    qn = lstm_fast.quantize(layer, "int8")
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
        np.testing.assert_allclose(a, b, rtol=0, atol=SEQ_ATOL * max(1, np.abs(b).max()))
        # H = 11: weights up to 1/sqrt(11); a plumbing error (a wrong weight, direction or
        # length) would be off by O(0.1)
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-2)
    assert np.abs(out - out64).max() > 1e-5   # the weights really are int8
    if lengths is not None:
        assert np.all((out[1, 2:] if kw.get("batch_first") else out[2:, 1]) == 0)


def test_quantize_keeps_the_masters_and_the_original():
    layer = lstm_fast.LSTM(4, 6, num_layers=2, seed=0)
    before = layer.state_dict()
    q = lstm_fast.quantize(layer, "int8")
    assert q.weight_dtype == "int8" and not q.training and layer.weight_dtype == "float32"
    assert layer.training
    for k, v in q.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])
    back = lstm_fast.quantize(q, "float32")
    x = np.ones((3, 2, 4), np.float32)
    assert same_bits(back(x)[0], layer(x)[0])
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.weight_dtype == "int8" and same_bits(q2(x)[0], q(x)[0])
    assert "weight_dtype='int8'" in repr(q)
    assert not same_bits(lstm_fast.quantize(layer, "bfloat16")(x)[0], q(x)[0])


def test_constructor_option_equals_quantize():
    a = lstm_fast.LSTM(3, 9, num_layers=2, seed=4, weight_dtype="int8")
    b = lstm_fast.quantize(lstm_fast.LSTM(3, 9, num_layers=2, seed=4), "int8")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    assert same_bits(a(x)[0], b(x)[0]) and not a.training


@pytest.mark.parametrize("B", [1, 3, 8])
def test_stream_gives_the_layers_bits(B):
    layer = lstm_fast.LSTM(6, 21, num_layers=2, seed=3, weight_dtype="int8")
    x = np.random.default_rng(1).standard_normal((7, B, 6)).astype(np.float32)
    want, (h, c) = layer(x)
    s = lstm_fast.Stream(layer, batch_size=B)
    steps = np.stack([s.step(xt) for xt in x[:4]])
    rest = s.run(x[4:])
    assert same_bits(np.concatenate([steps, rest]), want)
    assert same_bits(s.state[0], h) and same_bits(s.state[1], c)


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(weight_dtype="int4"), r"weight_dtype must be one of \('float32', 'float64', 'bfloat16', 'int8'\)"),
    (dict(weight_dtype="int8", dtype=np.float64), "needs dtype float32"),
    (dict(weight_dtype="int8", proj_size=2), "proj_size"),
    (dict(weight_dtype="int8", peephole=True), "variants"),
    (dict(weight_dtype="int8", cifg=True), "variants"),
    (dict(weight_dtype="int8", cell_clip=1.0), "variants"),
    (dict(weight_dtype="int8", backend="numba"), "'c' and 'numpy' backends"),
])
def test_bad_weight_dtype(kw, match):
    if kw.get("backend") == "numba" and "numba" not in lstm_fast.available_backends():
        pytest.skip("numba not installed")
    with pytest.raises(ValueError, match=match):
        lstm_fast.LSTM(3, 4, **kw)


def test_inference_only():
    q = lstm_fast.LSTM(3, 4, weight_dtype="int8")
    x = np.ones((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="inference only"):
        q.train()
    with pytest.raises(ValueError, match="inference only"):
        q(x, save=True)
    q(x)
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((2, 1, 4), np.float32))
    p = problem(2, 1, 3, 4)
    packed = ck.pack_int8(p["w_ih"], p["w_hh"], p["b"])
    with pytest.raises(ValueError, match="int8 weights are for inference only"):
        ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    with pytest.raises(ValueError, match="int8 weights are for inference only"):
        ref.forward(ref.pack_int8(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1)
    y, h_n, c_n, _, _ = ck.forward(packed, p["x"], p["h0"], p["c0"], 1, None, False)
    with pytest.raises(ValueError, match="int8 weights are for inference only"):
        ck.backward(packed, p["x"], p["h0"], p["c0"], y, y, y, y, h_n, c_n, 1)


def test_info_names_the_int8_path(capsys):
    from lstm_fast import cli
    cli.info([])
    out = capsys.readouterr().out
    assert "int8 weights (weight_dtype='int8'): weight-only int8, widened to float32" in out
    assert ck.build_info()["int8"] == ck.int8_path()
