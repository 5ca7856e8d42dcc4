"""int8 weights with x and h quantized per row per step (weight_dtype "int8_dynamic", issue
16): what is specific to it (the row quantization rule, the products bit for bit at every
SIMD level, native vpdpbusd and emulated, the int32 bound, NaN rows, the API), and the
tolerances of the tests shared with bfloat16 and int8 in tests/test_low_precision.py (the
C kernel against the NumPy oracle of the same arithmetic, backends/reference.py:
lstm_forward_int8_dynamic, at every level, 1 and 2 threads; the error against the float64
reference as a function of T; the layer, quantize and Stream; bad input).

How tight each comparison is, and why:
* the products z of one step (before the bias and the cell; ``_c.int8_dynamic_products``):
  integer sums and the same float32 dequantization: the oracle's bits, asserted bitwise at
  every level, vpdpbusd and emulated.
* one step from the same state: the same z, then the cell's exp/tanh/reciprocal and the
  fused c update, a few float32 ulp: STEP_ATOL, STEP_RTOL as int8.
* whole sequences: an ulp of difference in h (the cell's last bits) can move a value of
  the next step's quantization across a rounding boundary: one unit of p, a change of
  s_h s_hh q in z (up to about 1e-3 with weights at torch's scale), which the following
  steps carry on. Measured against the oracle on the Intel Xeon (family 6 model 167): the
  shapes of test_low_precision.py (T <= 5) at every level at most 1.2e-7 (no crossing);
  T = 512, (B, I, H) = (4, 48, 64): 1.7e-4, 1.2 % of the outputs beyond STEP_ATOL.
  SEQ_ATOL = 2^-11 (4.9e-4) covers a few crossings; a wrong product is caught bit for bit
  by the products test and from the same state by STEP_ATOL.
"""
import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import inference_problem as problem, same_bits, simd_levels

ck = pytest.importorskip("lstm_fast.backends._c")

LEVELS = simd_levels(ck)
HAS_AMX = ck.cpu_has_amx_int8()
# (level, path): None automatic (AMX where the CPU has AMX-INT8 at the AVX-512 level, else
# vpdpbusd where it has it), False the emulation; with AMX, "vnni" (vpdpbusd, never AMX) at
# the AVX-512 level too
MODES = ([(lv, nat) for lv in LEVELS for nat in ((None, False) if lv != "portable" else (None,))]
         + ([("avx512", "vnni")] if HAS_AMX else []))

STEP_ATOL = 2.0 ** -20
STEP_RTOL = 2.0 ** -20
SEQ_ATOL = 2.0 ** -11
# max |y - y_float64| after T steps, (B, I, H) = (4, 48, 64), weights at torch's scale,
# x and c0 of order 1: measured on the Intel Xeon (family 6 model 167), max (median) over 8
# seeds: 1.37e-3 (1.19e-3) at T = 1, 2.82e-3 (2.30e-3) at T = 64, 2.79e-3 (2.56e-3) at
# T = 512 (weight-only int8 on the same seeds: 1.56e-3, 1.94e-3, 2.19e-3). Bounds: about twice.
ERR_BOUND = {1: 3e-3, 64: 6e-3, 512: 6e-3}


def set_path(path):
    """None, False (set_int8_dynamic_native) or a path name (set_int8_dynamic_path)."""
    if isinstance(path, str):
        ck.set_int8_dynamic_path(path)
    else:
        ck.set_int8_dynamic_native(path)


def _mode_id(m):
    return f"{m[0]}-" + ("emulated" if m[1] is False else "auto" if m[1] is None else m[1])


@pytest.fixture(params=MODES, ids=_mode_id)
def mode(request):
    level, native = request.param
    before = ck.simd_level()
    ck.set_simd_level(level)
    set_path(native)
    yield request.param
    ck.set_int8_dynamic_native(None)
    ck.set_simd_level(before)


def test_quantize_rows_rule():
    """Per row: s = max|v| / 127, p = rint(v / s) (nearest even) in [-127, 127]; a row of
    zeros gives s = 0 and p = 0; a NaN or an inf in a row gives s = NaN and p = 0."""
    v = np.array([[127, -63.5, 0.5, 1.5, 2.5, -127],
                  [0, 0, 0, 0, 0, 0],
                  [np.nan, 2.54, -1.27, 0, 0.01, 0.005],
                  [1, np.inf, 0, 0, 0, 0],
                  [-2.54, 1.27, 0, 0, 0.01, 0.005]], np.float32)
    p, s = ref.quantize_rows_dynamic(v)
    assert p.dtype == np.int32 and s.dtype == np.float32
    assert same_bits(s[[0, 1, 4]], np.array([1, 0, np.float32(2.54) / np.float32(127)],
                                            np.float32))
    assert np.isnan(s[2]) and np.isnan(s[3])
    assert p[0].tolist() == [127, -64, 0, 2, 2, -127]
    assert p[1].tolist() == p[2].tolist() == p[3].tolist() == [0] * 6
    assert p[4].tolist() == [-127, 64, 0, 0, 0, 0]
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 33)).astype(np.float32)
    p, s = ref.quantize_rows_dynamic(v)
    assert (np.abs(p).max(axis=1) == 127).all()
    assert (np.abs(p * s[:, None] - v) <= s[:, None] / 2 * (1 + 1e-6)).all()


SHAPES = [(1, 1, 1), (1, 7, 19), (3, 5, 1), (2, 9, 37), (5, 24, 40), (13, 16, 33), (7, 33, 17),
          (16, 40, 64), (3, 0, 5), (1, 130, 70), (64, 96, 80), (8, 300, 200)]


@pytest.mark.parametrize("shape", SHAPES, ids=["B{}I{}H{}".format(*s) for s in SHAPES])
def test_products_are_the_oracles_bits(mode, shape):
    """One step's z (the dequantized products, no bias) at every level, vpdpbusd and
    emulated, bit for bit the oracle's: the tiles (1..FR rows, 1..NB1 blocks), the padding
    of I and H to groups of 4 and of H to the vector width, I = 0."""
    B, I, H = shape
    p = problem(1, B, I, H, seed=sum(shape))
    packed = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], p["b"])
    x = np.ascontiguousarray(p["x"][0])
    h = (p["h0"] * 3).astype(np.float32)   # wider than the weights' rows: other scales
    z = ck.int8_dynamic_products(packed, x, h)
    (qi, si), (qh, sh) = ref.quantize_int8(p["w_ih"]), ref.quantize_int8(p["w_hh"])
    want = ref.int8_dynamic_preactivations(x, h, qi, si, qh, sh)
    assert same_bits((z,), (want,))
    assert np.count_nonzero(z) > z.size // 2


def _largest_sums_problem(I, H):
    """Weights of +-1 (mixed signs in row 2) and 0.5, x rows at +2, -2 and mixed: every u =
    255 or 1 against q = 127: the packed weights, x, h and the oracle's pre-activations."""
    w_ih = np.ones((4 * H, I), np.float32)
    w_ih[1] = -1
    w_ih[2, ::3] = -1
    w_hh = np.full((4 * H, H), 0.5, np.float32)
    packed = ck.pack_int8_dynamic(w_ih, w_hh, None)
    x = np.stack([np.full(I, 2.0, np.float32), np.full(I, -2.0, np.float32),
                  np.random.default_rng(0).uniform(-1, 1, I).astype(np.float32)])
    h = np.ones((3, H), np.float32)
    (qi, si), (qh, sh) = ref.quantize_int8(w_ih), ref.quantize_int8(w_hh)
    return packed, x, h, ref.int8_dynamic_preactivations(x, h, qi, si, qh, sh)


def test_largest_sums_are_exact(mode):
    """The int32 bound: I = 66311 (the largest the pack takes), every u = 255 and q = 127
    (x and w at their rows' maxima): vpdpbusd's sum is 66311 * 255 * 127 = 2^31 - 1912, no
    overflow; the dequantized sum, 66311 * 127^2 > 2^24, is rounded to float32 as the
    oracle rounds it. Then every u = 1 (p = -127) and mixed signs."""
    I, H = 66311, 3
    packed, x, h, want = _largest_sums_problem(I, H)
    z = ck.int8_dynamic_products(packed, x, h)
    assert same_bits((z,), (want,))
    f, n = np.float32, np.float32(127)
    assert z[0, 0] == f((f(2) / n) * (f(1) / n)) * f(I * 127 * 127) + \
        f((f(1) / n) * (f(0.5) / n)) * f(H * 127 * 127)
    with pytest.raises(ValueError, match="66311"):
        ck.pack_int8_dynamic(np.ones((4, 66312), np.float32), np.ones((4, 1), np.float32), None)


def test_a_nan_or_inf_row_gives_nan_rows_only():
    p = problem(2, 3, 6, 5, seed=1)
    p["x"][0, 0, 2] = np.nan
    p["x"][0, 1, 0] = -np.inf
    packed = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], p["b"])
    y = ck.forward(packed, p["x"], p["h0"], p["c0"], 1, None, False)[0]
    assert np.isnan(y[:, :2]).all() and np.isfinite(y[:, 2]).all()
    want = ref.lstm_forward_int8_dynamic(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    np.testing.assert_allclose(y[:, 2], want[:, 2], rtol=0, atol=SEQ_ATOL)


def test_api_is_an_explicit_choice():
    """quantize(layer, "int8", activations="dynamic") is weight_dtype "int8_dynamic"; the
    default stays weight-only at every batch size; bad options name the choices."""
    layer = lstm_fast.LSTM(5, 9, num_layers=2, seed=2)
    a = lstm_fast.quantize(layer, "int8", activations="dynamic")
    b = lstm_fast.quantize(layer, "int8_dynamic")
    assert a.weight_dtype == b.weight_dtype == "int8_dynamic"
    assert lstm_fast.quantize(layer, "int8").weight_dtype == "int8"
    assert lstm_fast.quantize(layer, "int8", activations="float32").weight_dtype == "int8"
    for B in (1, 64):
        x = np.random.default_rng(B).standard_normal((3, B, 5)).astype(np.float32)
        assert same_bits(a(x)[0:1], b(x)[0:1])
        w8 = lstm_fast.quantize(layer, "int8")(x)[0]
        assert not same_bits((w8,), (a(x)[0],))   # weight-only by default, at any B
    with pytest.raises(ValueError, match=r"activations must be one of \(None, 'float32', "
                                         r"'dynamic'\)"):
        lstm_fast.quantize(layer, "int8", activations="static")
    with pytest.raises(ValueError, match="applies to weight_dtype 'int8'"):
        lstm_fast.quantize(layer, "bfloat16", activations="dynamic")
    with pytest.raises(ValueError, match="applies to weight_dtype 'int8'"):
        lstm_fast.quantize(layer, "int8_dynamic", activations="float32")


def test_info_names_the_path(capsys):
    from lstm_fast import cli
    cli.info([])
    assert ("int8 weights, x and h quantized per step (weight_dtype='int8_dynamic'): int8 "
            "weights, x and h quantized per row per step" in capsys.readouterr().out)
    info = ck.build_info()["int8_dynamic"]
    assert info == ck.int8_dynamic_path() and "x and h quantized per row per step" in info
    try:
        ck.set_int8_dynamic_native(False)
        assert "emulated" in ck.int8_dynamic_path()
    finally:
        ck.set_int8_dynamic_native(None)
    with pytest.raises(ValueError, match="None or False"):
        ck.set_int8_dynamic_native(True)
    with pytest.raises(ValueError, match="path must be one of 'auto', 'emulated', 'vnni', 'amx'"):
        ck.set_int8_dynamic_path("avx512")
    try:
        if HAS_AMX and ck.simd_level() != "avx512":   # AMX is the AVX-512 level's path
            assert "AMX" not in ck.int8_dynamic_path(64)
            ck.set_int8_dynamic_path("amx")            # accepted; as "vnni" at this level
            assert "AMX" not in ck.int8_dynamic_path(64)
        elif HAS_AMX:
            assert "AMX" in ck.int8_dynamic_path(64)
            ck.set_int8_dynamic_path("vnni")
            assert "vpdpbusd" in ck.int8_dynamic_path(64) and "AMX not used" in \
                ck.int8_dynamic_path(64)
            ck.set_int8_dynamic_path("amx")
            assert "AMX" in ck.int8_dynamic_path(1)
        else:
            assert "AMX" not in ck.int8_dynamic_path(64)
            with pytest.raises(RuntimeError, match="AMX-INT8 cannot be used here"):
                ck.set_int8_dynamic_path("amx")
        ck.set_int8_dynamic_path("emulated")
        assert "emulated" in ck.int8_dynamic_path()
    finally:
        ck.set_int8_dynamic_path("auto")


def test_edge_shapes(mode):
    """T = 0 (the states copied), variable lengths with a sequence of length 0 (its state
    left as h0, c0), no bias, 1-3 threads: the oracle's outputs, the same bits for any
    thread count."""
    p = problem(3, 4, 5, 7)
    pk = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], p["b"])
    y, h, c, _, _ = ck.forward(pk, p["x"][:0], p["h0"], p["c0"], 2, None, False)
    assert y.shape == (0, 4, 7) and same_bits((h, c), (p["h0"], p["c0"]))
    bs = np.array([3, 2, 1], np.int64)
    x = np.concatenate([p["x"][t, :n] for t, n in enumerate(bs)])
    want = ref.lstm_forward_int8_dynamic(x, p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"], bs)
    runs = [ck.forward(pk, x, p["h0"], p["c0"], n, bs, False)[:3] for n in (1, 2, 3)]
    for got in runs:
        assert same_bits(got, runs[0])
    for got, w in zip(runs[0], want):
        np.testing.assert_allclose(got, w, rtol=0, atol=SEQ_ATOL)
    assert same_bits((runs[0][1][3], runs[0][2][3]), (p["h0"][3], p["c0"][3]))
    pk = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], None)
    y = ck.forward(pk, p["x"], p["h0"], p["c0"], 1, None, False)[0]
    want = ref.lstm_forward_int8_dynamic(p["x"], p["w_ih"], p["w_hh"], None, p["h0"], p["c0"])[0]
    np.testing.assert_allclose(y, want, rtol=0, atol=SEQ_ATOL)


# AMX (tdpbusd): tiles of 16 rows x 64 bytes, 1 to 4 row groups per call (1 x 4 gates, 2 x 2,
# 3 or 4 x 1), u's rows zero-padded to 64 bytes, the pack's zero tail pad: row counts
# around 16, 32, 48, 64 and beyond, I and H around 64 and 4 (K remainders), I = 0, H = 1
AMX_SHAPES = [(1, 1, 1), (1, 3, 70), (15, 64, 17), (16, 63, 64), (17, 65, 1), (31, 4, 9),
              (32, 128, 33), (33, 0, 16), (47, 5, 127), (48, 66, 48), (49, 1, 65), (64, 17, 40),
              (65, 64, 64), (100, 33, 20), (130, 200, 130)]
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="no AMX-INT8 here (CPU or OS)")


def _products_every_path(pk, x, h):
    """z by every path (amx, vnni, emulated) at the AVX-512 level; the level and the path
    restored after."""
    got = {}
    before = ck.simd_level()
    try:
        ck.set_simd_level("avx512")
        for path in ("amx", "vnni", "emulated"):
            ck.set_int8_dynamic_path(path)
            got[path] = ck.int8_dynamic_products(pk, x, h)
    finally:
        ck.set_int8_dynamic_path("auto")
        ck.set_simd_level(before)
    return got


@needs_amx
@pytest.mark.parametrize("shape", AMX_SHAPES, ids=["B{}I{}H{}".format(*s) for s in AMX_SHAPES])
def test_amx_products_are_the_oracles_bits(shape):
    """AMX's z bit for bit the oracle's, vpdpbusd's and the emulation's."""
    B, I, H = shape
    p = problem(1, B, I, H, seed=sum(shape) + 1)
    pk = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], p["b"])
    x = np.ascontiguousarray(p["x"][0])
    h = (p["h0"] * 3).astype(np.float32)
    got = _products_every_path(pk, x, h)
    (qi, si), (qh, sh) = ref.quantize_int8(p["w_ih"]), ref.quantize_int8(p["w_hh"])
    want = ref.int8_dynamic_preactivations(x, h, qi, si, qh, sh)
    for path, z in got.items():
        assert same_bits((z,), (want,)), path
    assert np.count_nonzero(got["amx"]) > got["amx"].size // 2


@needs_amx
def test_amx_largest_sums_are_exact():
    """The int32 bound through AMX: K = 66311 (tiles of 64 bytes and a remainder), every
    u = 255 and q = 127, every u = 1, mixed signs: the same sums as vpdpbusd."""
    pk, x, h, want = _largest_sums_problem(66311, 3)
    got = _products_every_path(pk, x, h)
    for path, z in got.items():
        assert same_bits((z,), (want,)), path


@needs_amx
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 17, 65, 33), (3, 1, 5, 7), (4, 16, 64, 64),
                                   (5, 33, 7, 130), (2, 49, 0, 20), (3, 70, 128, 17)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_amx_sequences_are_vnnis_bits(shape):
    """Whole sequences (the same cell code): AMX gives vpdpbusd's outputs and states bit for
    bit, with and without a bias, with shrinking batch sizes (the per-step row groups cross
    16), for 1, 2 and 3 threads; and close to the oracle."""
    T, B, I, H = shape
    p = problem(T, B, I, H, seed=T + B + I + H)
    bs = np.maximum(1, B - 15 * np.arange(T)).astype(np.int64)
    xv = np.concatenate([p["x"][t, :n] for t, n in enumerate(bs)])
    before = ck.simd_level()
    try:
        ck.set_simd_level("avx512")
        for b in (p["b"], None):
            pk = ck.pack_int8_dynamic(p["w_ih"], p["w_hh"], b)
            runs = {}
            for path in ("amx", "vnni"):
                ck.set_int8_dynamic_path(path)
                runs[path] = [ck.forward(pk, x, p["h0"], p["c0"], n, lens, False)[:3]
                              for n in (1, 2, 3) for x, lens in ((p["x"], None), (xv, bs))]
            for a, v in zip(runs["amx"], runs["vnni"]):
                assert same_bits(a, v)
        want = ref.lstm_forward_int8_dynamic(xv, p["w_ih"], p["w_hh"], None, p["h0"], p["c0"], bs)
        for got, w in zip(runs["amx"][1], want):
            np.testing.assert_allclose(got, w, rtol=0, atol=SEQ_ATOL)
    finally:
        ck.set_int8_dynamic_path("auto")
        ck.set_simd_level(before)
