"""bfloat16 weights on AMX (tdpbf16ps: by default, at every B, where the CPU has AMX-BF16;
``set_bf16_amx``; csrc/bf16.template.c): the forward against
the NumPy oracle of the bf16 arithmetic (backends/reference.py: lstm_forward_bf16) and against float64, the same bits for any thread count and in chunks,
no leak between rows or blocks (AMX's tiles read 16 rows and 16 pairs whatever the shape:
the padding must multiply zeros), bfloat16 training with the AMX forward, the switch.

How tight, and why: tdpbf16ps adds its products in an order and with roundings of its own,
so its sums differ from the other paths' (and the oracle's) in the last float32 bits, as a
different thread count of a BLAS would; whole sequences are then compared with the bound of
bf16 itself (tests/test_bf16.py: SEQ_ATOL), and bit for bit only with themselves (threads,
chunks). Those last-bit differences move more h values across a bf16 rounding boundary than
the cell's alone (measured on the Intel Xeon, family 6 model 167: 1.0-1.7 % of the outputs
beyond STEP_ATOL of the oracle where the other paths have 0.2-0.7 %), so the share that
test_bf16.py bounds is not asserted here; the typical output (the median) still agrees with
the oracle within STEP_ATOL, as the sums differ only by rounding.
"""
import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import inference_problem as problem, same_bits

ck = pytest.importorskip("lstm_fast.backends._c")

import test_bf16 as bf16  # noqa: E402  (the bf16 tolerances)

AMX = ck.cpu_has_amx_bf16() and ck.simd_level() == "avx512"   # the level in force
pytestmark = pytest.mark.skipif(not AMX, reason="needs AMX-BF16 (tdpbf16ps) at the AVX-512 level")

# T=1, B=1, H=1, odd sizes, I != H; K pairs below, at and above 16 (a tile's pairs); B
# below, at and above 16, 32 and 64 (the tiles' rows and a group of tiles); H not a
# multiple of 16 (the last block half empty)
SHAPES = [(1, 1, 1, 1), (3, 1, 7, 19), (5, 3, 5, 1), (4, 2, 9, 37), (3, 13, 16, 33),
          (2, 16, 40, 64), (3, 17, 31, 16), (2, 33, 64, 48), (2, 64, 30, 2), (2, 70, 96, 130),
          (2, 3, 0, 5)]
IDS = ["T{}B{}I{}H{}".format(*s) for s in SHAPES]


@pytest.fixture
def amx():
    """AMX forced (as the default where nothing else is forced)."""
    ck.set_bf16_amx(True)
    yield
    ck.set_bf16_amx(None)


def _forward(packed, p, threads=1):
    return ck.forward(packed, p["x"], p["h0"], p["c0"], threads, None, False)[:3]


def _assert_bf16_close(got, want):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=bf16.SEQ_ATOL)
        if g.size:
            assert np.median(np.abs(g - w)) <= bf16.STEP_ATOL * max(1, np.abs(w).max())


def test_the_automatic_choice_the_switch_and_the_path_named():
    """Automatic: AMX at every B, unless a path is forced; True: always; False: never."""
    for B in (1, 3, 64):
        assert ck.bf16_path(B, 8, 8).startswith("AMX (tdpbf16ps")
    assert "any batch split gives the same bits" in ck.bf16_path(1)
    for native in (False, True):
        ck.set_bf16_native(native)
        try:
            assert not ck.bf16_path(64, 8, 8).startswith("AMX")
        finally:
            ck.set_bf16_native(None)
    try:
        ck.set_bf16_amx(False)
        assert not ck.bf16_path(64, 8, 8).startswith("AMX")
        ck.set_bf16_amx(True)
        assert "set_bf16_amx(True)" in ck.bf16_path(1)
        ck.set_bf16_native(False)   # forced AMX wins over a forced path
        assert ck.bf16_path(1).startswith("AMX")
    finally:
        ck.set_bf16_native(None)
        ck.set_bf16_amx(None)
    for bad in (1, 0, "on"):
        with pytest.raises(ValueError, match="on must be True, False or None"):
            ck.set_bf16_amx(bad)


def test_any_batch_split_gives_the_same_bits():
    """A row's sums do not depend on the other rows of its tile: one sequence at a time,
    blocks of 5, 16 or 33, or all 70 together give the same bits (what a streaming scorer
    relies on)."""
    p = problem(4, 70, 29, 40, seed=9)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    whole = _forward(packed, p)
    for block in (1, 5, 16, 33):
        parts = [ck.forward(packed, np.ascontiguousarray(p["x"][:, r:r + block]),
                            p["h0"][r:r + block], p["c0"][r:r + block], 1, None, False)[:3]
                 for r in range(0, 70, block)]
        got = (np.concatenate([q[0] for q in parts], 1), np.concatenate([q[1] for q in parts]),
               np.concatenate([q[2] for q in parts]))
        assert all(same_bits(a, b) for a, b in zip(got, whole)), block


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_match_the_oracle(amx, shape):
    p = problem(*shape, seed=5)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    want = ref.lstm_forward_bf16(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])
    _assert_bf16_close(_forward(packed, p, 2), want)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_same_bits_for_threads_and_steps(amx, shape):
    p = problem(*shape, seed=3)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    runs = [_forward(packed, p, n) for n in (1, 2, 3)]
    h, c = p["h0"].copy(), p["c0"].copy()
    runs.append((np.stack([ck.step(packed, xt, h, c, 1) for xt in p["x"]]), h, c))
    for got in runs[1:]:
        assert all(same_bits(a, b) for a, b in zip(got, runs[0]))


@pytest.mark.parametrize("T", [1, 64, 512])
def test_error_against_float64_as_a_function_of_T(amx, T):
    """The same bound as the other bf16 paths (tests/test_bf16.py: ERR_BOUND)."""
    p = problem(T, 4, 48, 64, seed=11)
    exact = ref.lstm_forward(*(p[k].astype(np.float64) for k in ("x", "w_ih", "w_hh", "b",
                                                                 "h0", "c0")))[0]
    got = _forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p)[0]
    assert np.abs(got - exact).max() <= bf16.ERR_BOUND[T]


def test_large_batch_matches_the_other_path():
    """Compute-bound sizes (what AMX is for), the automatic choice: within bf16's bound of
    the path without AMX."""
    p = problem(4, 80, 200, 256, seed=2)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    got = _forward(packed, p, 2)
    ck.set_bf16_amx(False)
    try:
        want = _forward(packed, p, 2)
    finally:
        ck.set_bf16_amx(None)
    _assert_bf16_close(got, want)


def test_nan_and_inf_stay_in_their_rows(amx):
    """A NaN or inf in one sequence's input reaches only that sequence's outputs: the rows
    AMX reads beyond it, and the padding pairs, multiply zeros."""
    p = problem(3, 20, 33, 40, seed=7)
    p["x"][1, 0, 2] = np.nan
    p["x"][1, 17, 0] = np.inf
    y = _forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p)[0]
    want = ref.lstm_forward_bf16(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(y[1:, 0]).all()
    clean = [r for r in range(20) if r not in (0, 17)]
    assert np.isfinite(y[:, clean]).all()


def test_an_infinite_weight_stays_in_its_unit(amx):
    """A weight that rounds to inf in bf16 makes its own unit NaN/inf only: the other
    blocks' tiles read the pack's zero padding rows, never that weight."""
    p = problem(2, 18, 33, 40, seed=8)
    p["w_ih"][3 * 40 + 37, 5] = 3.4e38   # gate o, unit 37 (block 2 of 3), rounds to inf
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    y = _forward(packed, p)[0]
    ck.set_bf16_amx(False)
    want = _forward(packed, p)[0]
    ck.set_bf16_amx(True)
    others = [u for u in range(40) if u != 37]
    np.testing.assert_allclose(y[0][:, others], want[0][:, others], rtol=0, atol=bf16.SEQ_ATOL)
    assert np.isfinite(y[0][:, others]).all()


def test_variable_lengths_through_the_layer():
    rng = np.random.default_rng(4)
    layer = lstm_fast.LSTM(24, 40, seed=1, weight_dtype="bfloat16").eval()
    x = rng.standard_normal((6, 20, 24)).astype(np.float32)
    lengths = rng.integers(1, 7, 20)
    ck.set_bf16_amx(False)
    try:
        want = layer(x, lengths=lengths)
    finally:
        ck.set_bf16_amx(None)
    got = layer(x, lengths=lengths)      # the default: AMX
    _assert_bf16_close((got[0], got[1][0], got[1][1]), (want[0], want[1][0], want[1][1]))


def test_bf16_training_on_amx():
    """bfloat16 training (mixed precision): the forward and the backward's products on
    AMX; the gradients within bf16's error of the path without AMX's (the backward on its
    own: tests/test_bf16_training.py, test_c_backward_on_amx_within_the_bound)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 24, 32)).astype(np.float32)
    dy = rng.standard_normal((5, 24, 48)).astype(np.float32)
    runs = []
    for on in (False, True):
        layer = lstm_fast.LSTM(32, 48, seed=2, weight_dtype="bfloat16", backend="c").train()
        ck.set_bf16_amx(on)
        try:
            y, _ = layer(x)
            dx, _ = layer.backward(dy)
        finally:
            ck.set_bf16_amx(None)
        runs.append((y, dx, layer.grads["weight_hh_l0"]))
    for a, b in zip(*runs):
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-2 * scale)


def test_stale_rows_of_an_earlier_call_do_not_leak(amx):
    """The workspace is reused between calls: rows a tile reads beyond this call's B may hold
    an earlier call's values, NaN here; they only make rows of the products no cell reads."""
    p = problem(3, 20, 33, 40, seed=12)
    packed = ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"])
    want = _forward(ck.pack_bf16(p["w_ih"], p["w_hh"], p["b"]), p)
    big = problem(3, 64, 33, 40, seed=13)
    big["x"][:] = np.nan
    assert np.isnan(_forward(packed, big)[0]).all()
    got = _forward(packed, p)
    assert all(same_bits(a, b) for a, b in zip(got, want))
