"""bfloat16 weights for inference (issue 16, first part): what is specific to bfloat16
(the rounding rule, native vdpbf16ps against its emulation on hard values, the products at
every level, the info line), and the tolerances, explained below, of the tests shared with
int8 in tests/test_low_precision.py (the C kernel against the NumPy oracle of the same
arithmetic, backends/reference.py: lstm_forward_bf16, at every SIMD level, native and
emulated, 1 and 2 threads; the error against the float64 reference as a function of T;
the layer, quantize and Stream; bad input).

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
import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import cancelling_problem, same_bits, simd_levels

ck = pytest.importorskip("lstm_fast.backends._c")

LEVELS = simd_levels(ck)


NATIVE = ck.cpu_has_avx512bf16()
# AMX-BF16 used by default (at the AVX-512 level, every B): the automatic choice below
AMX = ck.cpu_has_amx_bf16() and ck.simd_level() == "avx512"
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


def test_float32_layer_unchanged():
    """The plain path: weight_dtype None/float32 is the float32 layer, bit for bit."""
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    a = lstm_fast.LSTM(3, 7, seed=0)
    b = lstm_fast.LSTM(3, 7, seed=0, weight_dtype="float32")
    assert a.weight_dtype == "float32" and same_bits(a(x)[0], b(x)[0])
    assert b.training and b.backward(np.ones((4, 2, 7), np.float32))[0].shape == x.shape


def test_info_names_the_bf16_path(capsys):
    from lstm_fast import cli
    cli.info([])
    out = capsys.readouterr().out
    assert "bfloat16 weights (weight_dtype='bfloat16'): " in out
    if AMX:   # tdpbf16ps at every B (tests/test_bf16_amx.py)
        assert "B = 1 AMX (tdpbf16ps" in out and "B = 64 AMX (tdpbf16ps" in out
    else:
        assert ("native (vdpbf16ps" in out) == (NATIVE and ck.simd_level() == "avx512")
    ck.set_bf16_native(False)
    try:
        assert ck.bf16_path().startswith("emulated")
    finally:
        ck.set_bf16_native(None)
    if not NATIVE:
        with pytest.raises(RuntimeError, match="AVX512_BF16"):
            ck.set_bf16_native(True)


def test_instruction_rates_measured():
    """The per-core rates the automatic choice reads: measured once, quickly, present
    exactly where the CPU has the instruction, and shown by lstm-fast info."""
    r = ck.instruction_rates()
    assert (r["fp32_fma"] is not None) == (ck.cpu_simd_level() != "portable")
    assert (r["bf16_dot"] is not None) == NATIVE
    assert r["fp32_bits"] == {"avx512": 512, "avx2": 256, "portable": 0}[ck.cpu_simd_level()]
    for k in ("fp32_fma", "bf16_dot", "int8_dot"):
        assert r[k] is None or 1 < r[k] < 1e5, (k, r[k])
    assert 0 < r["seconds"] < 0.05 or r["fp32_fma"] is None   # ~0.1-0.3 ms when idle
    assert ck.instruction_rates() == r                        # once per process
    assert ck.build_info()["instruction_rates"] == r


def test_amx_rates_measured():
    """The AMX tiles' rates (the benchmarks' roofline peak of the AMX paths): present
    exactly where the CPU and the OS have AMX-BF16 / AMX-INT8, measured once, quickly,
    and shown by lstm-fast info."""
    a = ck.amx_rates()
    assert (a["bf16"] is not None) == ck.cpu_has_amx_bf16()
    assert (a["int8"] is not None) == ck.cpu_has_amx_int8()
    for k in ("bf16", "int8"):   # tdpbf16ps: ~1024 FLOP per cycle, tdpbusd twice that
        assert a[k] is None or 100 < a[k] < 1e5, (k, a[k])
    assert a["seconds"] < 0.05
    assert ck.amx_rates() == a and ck.build_info()["amx_rates"] == a
    if a["bf16"] is not None:
        assert "tdpbf16ps" in ck.rates_summary()


@pytest.mark.parametrize("fp32, bf16, B, native", [
    (172, 85, 1, True), (172, 85, 2, False), (172, 85, 64, False),    # Intel Xeon (0.5x)
    (116, 234, 1, True), (116, 234, 2, True), (116, 234, 64, True),   # AMD Zen 4 (2.0x)
    (100, 149, 2, False), (100, 150, 2, True), (100, 150, 1000, True),
    (100, 0, 1, False), (100, None, 64, False), (0, 200, 1, True), (0, 200, 2, False)])
def test_bf16_native_rule(fp32, bf16, B, native):
    """vdpbf16ps at B = 1 wherever it exists; at B > 1 only where it runs at >= 1.5x the
    fp32 FMA's FLOP rate (0 or None: the instruction is missing)."""
    assert ck.bf16_native_rule(fp32, bf16, B) is native


@pytest.mark.parametrize("B", [1, 2, 7, 64])
def test_bf16_choice_follows_rates(B):
    """The automatic choice is the rule applied to this CPU's measured rates (at the
    AVX-512 level, where vdpbf16ps can run); forcing either way still works."""
    r = ck.instruction_rates()
    want = NATIVE and ck.simd_level() == "avx512" and \
        ck.bf16_native_rule(r["fp32_fma"], r["bf16_dot"], B)
    if AMX:   # AMX first, whatever B; without it, the rule
        assert ck.bf16_path(B, 8, 8).startswith("AMX (tdpbf16ps")
        ck.set_bf16_amx(False)
    try:
        assert ck.bf16_path(B, 8, 8).startswith("native") == want
        if not want:
            assert "emulated" in ck.bf16_path(B, 8, 8)
    finally:
        ck.set_bf16_amx(None) if AMX else None
    ck.set_bf16_native(False)
    try:   # the reason given first: a CPU without the instruction, else the forcing
        why = "emulation forced" if NATIVE else "the CPU has no AVX512_BF16"
        assert ck.bf16_path(B, 8, 8).startswith(f"emulated ({why}")
    finally:
        ck.set_bf16_native(None)
    if NATIVE and ck.simd_level() == "avx512":
        ck.set_bf16_native(True)
        try:
            assert ck.bf16_path(B, 8, 8).startswith("native")
        finally:
            ck.set_bf16_native(None)


def test_info_shows_the_rates(capsys):
    from lstm_fast import cli
    cli.info([])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("instruction rates: "))
    r = ck.instruction_rates()
    assert (f"fp32 FMA {r['fp32_fma']:.0f} GFLOP/s" in line) == (r["fp32_fma"] is not None)
    assert ("vdpbf16ps: none" in line) == (not NATIVE)
    if NATIVE:
        rule = ck.bf16_native_rule(r["fp32_fma"], r["bf16_dot"], 2)
        assert ("native at every B" if rule else "native at B = 1 only") in line


def _bf16_products(w_ih, w_hh, x1, h1):
    """The exact (float64) products of the bf16-rounded weights and inputs."""
    return (np.concatenate([ref.round_bf16(w_ih), ref.round_bf16(w_hh)], 1).astype(np.float64)
            @ np.concatenate([ref.round_bf16(x1), ref.round_bf16(h1)]).astype(np.float64))


def _hard_problem(B, seed):
    """tests/_support.cancelling_problem for bf16: x and h standard normal."""
    return cancelling_problem(B, seed, _bf16_products, wide_inputs=False)


@pytest.mark.skipif(not NATIVE, reason="needs AVX512_BF16 (vdpbf16ps), the hardware truth")
@pytest.mark.parametrize("B", [1, 3, 8], ids=["B1-tile", "B3-emulated", "B8-widened"])
def test_emulation_equals_vdpbf16ps_on_hard_values(B):
    """Weights over 2^-40..2^12 (long exponent gaps, absorption, cancellation) and a bias
    that cancels the exact product, so that each pre-activation is the accumulation's
    rounding error itself and the outputs carry its bits: the emulation's FMAs with
    FTZ/DAZ give vdpbf16ps's bits, in registers (B <= 6) and from the pack's float32 copy
    (B > 6); the oracle's products are the same."""
    w_ih, w_hh, b, x, h0, c0 = _hard_problem(B, B)
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


