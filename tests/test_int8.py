"""int8 weights for inference (issue 16): what is specific to int8 (the quantization rule,
the exact FMA, weights beyond the L2, variable lengths, the info line), and the
tolerances, explained below, of the tests shared with bfloat16 in
tests/test_low_precision.py (the C kernel against the NumPy oracle of the same
arithmetic, backends/reference.py: lstm_forward_int8, at every SIMD level, 1 and 2
threads, one row tile (int8 widened in registers) and several (the pack's float32 copy);
the error against the float64 reference as a function of T; the products on hard values;
the layer, quantize and Stream; bad input).

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
import numpy as np
import pytest

from lstm_fast.backends import reference as ref

from _support import cancelling_problem, inference_problem as problem, same_bits, simd_levels

ck = pytest.importorskip("lstm_fast.backends._c")

LEVELS = simd_levels(ck)

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


def _int8_products(w_ih, w_hh, x1, h1):
    """The exact (float64) products of the quantized weights (scale times int8 sums)."""
    (qi, si), (qh, sh) = ref.quantize_int8(w_ih), ref.quantize_int8(w_hh)
    return (si.astype(np.float64) * (qi.astype(np.float64) @ x1.astype(np.float64)) +
            sh.astype(np.float64) * (qh.astype(np.float64) @ h1.astype(np.float64)))


def _hard_problem(B, seed):
    """tests/_support.cancelling_problem for int8: x and h of the weights' wide range."""
    return cancelling_problem(B, seed, _int8_products, wide_inputs=True)


def test_info_names_the_int8_path(capsys):
    from lstm_fast import cli
    cli.info([])
    out = capsys.readouterr().out
    assert "int8 weights (weight_dtype='int8'): weight-only int8, widened to float32" in out
    assert ck.build_info()["int8"] == ck.int8_path()
