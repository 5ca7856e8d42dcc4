"""The C kernel (lstm_fast._ckernel) called directly, against the NumPy reference.

Every SIMD level the CPU supports is exercised in-process through
``_set_simd_level``; the environment variable LSTM_FAST_SIMD is checked in a
subprocess. Thread counts must give identical bits.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from lstm_fast import _reference as ref

ck = pytest.importorskip("lstm_fast._ckernel")

_ORDER = ("portable", "avx2", "avx512")
LEVELS = _ORDER[:_ORDER.index(ck.cpu_simd_level()) + 1]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(params=LEVELS)
def level(request):
    ck._set_simd_level(request.param)
    yield request.param
    ck._set_simd_level(ck.cpu_simd_level())


def make(T, B, I, H, dtype, seed=0, bias=True, scale=1.0):
    rng = np.random.default_rng(seed)
    s = scale / np.sqrt(H)
    w = dict(
        w_ih=rng.uniform(-s, s, (4 * H, I)).astype(dtype),
        w_hh=rng.uniform(-s, s, (4 * H, H)).astype(dtype),
        b=rng.uniform(-s, s, 4 * H).astype(dtype) if bias else None,
    )
    data = dict(
        x=rng.standard_normal((T, B, I)).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype),
        c0=rng.standard_normal((B, H)).astype(dtype),
        dy=rng.standard_normal((T, B, H)).astype(dtype),
        dh_n=rng.standard_normal((B, H)).astype(dtype),
        dc_n=rng.standard_normal((B, H)).astype(dtype),
    )
    return w, data


def run_c(w, d, num_threads=1):
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"])
    fwd = ck.forward(p, d["x"], d["h0"], d["c0"], num_threads)
    y, _, _, gates, c = fwd
    bwd = ck.backward(p, d["x"], d["h0"], d["c0"], y, gates, c, d["dy"], d["dh_n"], d["dc_n"],
                      num_threads)
    return fwd, bwd


def run_ref(w, d):
    fwd = ref.lstm_forward(d["x"], w["w_ih"], w["w_hh"], w["b"], d["h0"], d["c0"])
    y, _, _, gates, c = fwd
    bwd = ref.lstm_backward(d["x"], w["w_ih"], w["w_hh"], d["h0"], d["c0"], y, gates, c,
                            d["dy"], d["dh_n"], d["dc_n"])
    return fwd, bwd


FWD_NAMES = ("y", "h_n", "c_n", "gates", "c")
BWD_NAMES = ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0")


def assert_close(got, want, names, dtype):
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        scale = float(np.max(np.abs(b))) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * max(scale, 1.0),
                                   err_msg=name)


SHAPES = [
    (1, 1, 1, 1), (3, 1, 1, 1), (1, 4, 3, 5), (5, 3, 7, 17), (4, 7, 5, 33), (3, 2, 40, 9),
    (6, 32, 3, 32), (9, 1, 16, 16), (512, 2, 3, 4), (32, 16, 64, 64), (5, 13, 100, 130),
    # either side of the rule for doing x_t.w_ih^T inside the step (fwd_fuse_x in
    # csrc/lstm.template.c: I <= 16 or B >= 16) instead of one GEMM before the loop
    (4, 15, 17, 19), (4, 16, 17, 19), (3, 17, 16, 18), (3, 15, 16, 18), (2, 16, 200, 9),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(level, shape, dtype):
    w, d = make(*shape, dtype)
    fwd, bwd = run_c(w, d)
    want_fwd, want_bwd = run_ref(w, d)
    assert_close(fwd, want_fwd, FWD_NAMES, dtype)
    assert_close(bwd, want_bwd, BWD_NAMES, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_larger_shape(dtype):
    w, d = make(16, 24, 96, 160, dtype, seed=3)
    fwd, bwd = run_c(w, d, num_threads=0)
    want_fwd, want_bwd = run_ref(w, d)
    assert_close(fwd, want_fwd, FWD_NAMES, dtype)
    assert_close(bwd, want_bwd, BWD_NAMES, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_no_bias_and_b1(dtype):
    w, d = make(7, 1, 6, 21, dtype, bias=False)
    fwd, bwd = run_c(w, d)
    want_fwd, want_bwd = run_ref(w, d)
    assert_close(fwd, want_fwd, FWD_NAMES, dtype)
    assert_close(bwd, want_bwd, BWD_NAMES, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_empty_sequence(dtype):
    w, d = make(0, 3, 4, 5, dtype)
    (y, h_n, c_n, gates, c), (dx, dw_ih, dw_hh, db, dh0, dc0) = run_c(w, d)
    assert y.shape == (0, 3, 5) and gates.shape == (0, 3, 20) and c.shape == (0, 3, 5)
    assert np.array_equal(h_n, d["h0"]) and np.array_equal(c_n, d["c0"])
    assert h_n is not d["h0"] and not np.shares_memory(h_n, d["h0"])
    assert dx.shape == (0, 3, 4)
    assert not dw_ih.any() and not dw_hh.any() and not db.any() and db.shape == (20,)
    assert np.array_equal(dh0, d["dh_n"]) and np.array_equal(dc0, d["dc_n"])


def _two_thread_shape(dtype):
    shape = (12, 24, 48, 96)
    if ck._threads_for(*shape, 2, np.dtype(dtype).itemsize) < 2:
        pytest.skip("this machine has a single CPU")
    return shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_threads_bitwise_identical(level, dtype):
    shape = _two_thread_shape(dtype)
    w, d = make(*shape, dtype, seed=5)
    one = run_c(w, d, num_threads=1)
    two = run_c(w, d, num_threads=2)
    auto = run_c(w, d, num_threads=0)
    for a, b, c in zip(one[0] + one[1], two[0] + two[1], auto[0] + auto[1]):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert_close(one[0], run_ref(w, d)[0], FWD_NAMES, dtype)


@pytest.mark.parametrize("shape", [(5, 7, 13, 45), (5, 17, 33, 45)],
                         ids=["hoisted-x", "fused-x"])
def test_threads_bitwise_identical_odd_sizes(shape):
    # tails in every dimension, blocks split unevenly
    w, d = make(*shape, np.float64, seed=9)
    one = run_c(w, d, 1)
    for n in (2, 3):
        other = run_c(w, d, n)
        for a, b in zip(one[0] + one[1], other[0] + other[1]):
            assert np.array_equal(a, b)


def test_auto_threads_small_shape_is_single():
    assert ck._threads_for(3, 1, 1, 1, 0) == 1
    assert ck._threads_for(6, 32, 3, 32, 0) == 1
    assert ck._threads_for(3, 1, 1, 1, 1) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_huge_preactivations_saturate(level, dtype):
    w, d = make(6, 3, 5, 19, dtype, seed=2, scale=1e30)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        fwd, bwd = run_c(w, d)
    for a in fwd + bwd[:1] + bwd[4:]:
        assert np.all(np.isfinite(a))
    gates = fwd[3]
    assert np.all((gates >= -1) & (gates <= 1))
    assert np.isin(gates, [-1, 0, 1]).mean() > 0.9
    want_fwd, _ = run_ref(w, d)
    for name, a, b in zip(FWD_NAMES, fwd, want_fwd):
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_activations_accuracy(level, dtype):
    """Gates of a 1-unit LSTM with w_ih = 1: the activations themselves, to a few ulp."""
    z = np.concatenate([np.linspace(-30, 30, 4001), np.geomspace(1e-30, 1, 200),
                        -np.geomspace(1e-30, 1, 200), [0.0, -0.0, 1e30, -1e30, 88.0, -88.0,
                                                       700.0, -700.0, 1e-300]]).astype(dtype)
    T = z.size
    w_ih = np.ones((4, 1), dtype)
    w_hh = np.zeros((4, 1), dtype)
    p = ck.pack(w_ih, w_hh, None)
    x = z.reshape(T, 1, 1)
    zeros = np.zeros((1, 1), dtype)
    _, _, _, gates, _ = ck.forward(p, x, zeros, zeros, 1)
    zz = z.astype(np.float64)
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-zz))
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    for k, want in ((0, sig), (1, sig), (2, np.tanh(zz)), (3, sig)):
        got = gates[:, 0, k].astype(np.float64)
        err = np.abs(got - want) / np.maximum(np.abs(want), tiny)
        assert np.all(err[np.abs(want) > 1e3 * tiny] < 8 * eps), (k, np.max(err))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_nan_propagates(level, dtype):
    w, d = make(4, 3, 5, 6, dtype)
    d["x"][1, 1, 2] = np.nan
    fwd, _ = run_c(w, d)
    y = fwd[0]
    assert not np.isnan(y[0]).any() and not np.isnan(y[:, [0, 2]]).any()
    assert np.isnan(y[1:, 1]).all()
    assert np.isnan(fwd[1][1]).all() and np.isnan(fwd[2][1]).all()


def test_errors():
    w, d = make(2, 2, 3, 4, np.float64)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"])
    with pytest.raises(ValueError):
        ck.forward(p, d["x"].astype(np.float32), d["h0"], d["c0"], 1)
    with pytest.raises(ValueError):
        ck.forward(p, d["x"][:, :, :2].copy(), d["h0"], d["c0"], 1)
    with pytest.raises(ValueError):
        ck.forward(p, np.asfortranarray(d["x"]), d["h0"], d["c0"], 1)
    with pytest.raises(TypeError):
        ck.pack(w["w_ih"].astype(np.int64), w["w_hh"], None)
    with pytest.raises(ValueError):
        ck._set_simd_level("sse9")
    before = ck.forward(p, d["x"], d["h0"], d["c0"], 1)
    ck._set_simd_level(LEVELS[0])
    try:   # a pack keeps the level it was made for
        after = ck.forward(p, d["x"], d["h0"], d["c0"], 1)
    finally:
        ck._set_simd_level(ck.cpu_simd_level())
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


def test_info():
    info = ck.build_info()
    assert {"compiler", "flags", "simd_levels_compiled", "threading"} <= set(info)
    assert "-march=native" not in info["flags"]
    assert ck.simd_level() in info["simd_levels_compiled"]
    assert ck.cpu_simd_level() in info["simd_levels_compiled"]
    caches = info["caches"]
    assert caches["l1d"] >= 4096 and caches["l2"] >= caches["l1d"] and caches["l3"] >= 0
    assert caches["l2_shared_by"] >= 1 and caches["l3_shared_by"] >= 1
    assert info["caches_from"] in ("cpuid", "sysfs", "cpuid+sysfs", "cpuid (sysfs differs)",
                                   "default")


def _in_subprocess(level, code):
    env = dict(os.environ, LSTM_FAST_SIMD=level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def test_env_var_forces_level():
    code = ("import numpy as np, lstm_fast._ckernel as ck; print(ck.simd_level());"
            "w=np.ones((4,1)); p=ck.pack(w,w,None); z=np.zeros((1,1));"
            "print(ck.forward(p, np.ones((2,1,1)), z, z, 1)[0].ravel())")
    for level in LEVELS:
        r = _in_subprocess(level, code)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == level
    r = _in_subprocess("avx1024", code)
    assert r.returncode != 0
    assert "RuntimeError" in r.stderr and "LSTM_FAST_SIMD" in r.stderr


# --- variable lengths (batch_sizes) and projection (w_hr) ---------------------

def make_packed(batch_sizes, B, I, H, P, dtype, seed=0, bias=True):
    """Weights and packed step-major data for ``batch_sizes``; P = 0: no projection."""
    rng = np.random.default_rng(seed)
    bs = np.asarray(batch_sizes, np.int64)
    N, R, s = int(bs.sum()), P or H, 1 / np.sqrt(H)
    w = dict(
        w_ih=rng.uniform(-s, s, (4 * H, I)).astype(dtype),
        w_hh=rng.uniform(-s, s, (4 * H, R)).astype(dtype),
        b=rng.uniform(-s, s, 4 * H).astype(dtype) if bias else None,
        w_hr=rng.uniform(-s, s, (P, H)).astype(dtype) if P else None,
    )
    data = dict(
        x=rng.standard_normal((N, I)).astype(dtype),
        h0=rng.standard_normal((B, R)).astype(dtype),
        c0=rng.standard_normal((B, H)).astype(dtype),
        dy=rng.standard_normal((N, R)).astype(dtype),
        dh_n=rng.standard_normal((B, R)).astype(dtype),
        dc_n=rng.standard_normal((B, H)).astype(dtype),
    )
    return w, data, bs


def run_c_bs(w, d, bs, num_threads=1):
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"])
    fwd = ck.forward(p, d["x"], d["h0"], d["c0"], num_threads, bs)
    y, _, _, gates, c = fwd
    bwd = ck.backward(p, d["x"], d["h0"], d["c0"], y, gates, c, d["dy"], d["dh_n"], d["dc_n"],
                      num_threads, bs)
    return fwd, bwd


def run_ref_bs(w, d, bs):
    fwd = ref.lstm_forward(d["x"], w["w_ih"], w["w_hh"], w["b"], d["h0"], d["c0"], bs, w["w_hr"])
    y, _, _, gates, c = fwd
    bwd = ref.lstm_backward(d["x"], w["w_ih"], w["w_hh"], d["h0"], d["c0"], y, gates, c,
                            d["dy"], d["dh_n"], d["dc_n"], bs, w["w_hr"])
    return fwd, bwd


BWD_NAMES_P = BWD_NAMES + ("dw_hr",)

# (batch_sizes, B, I, H); each runs without a projection and with P in PROJ
LENGTH_CASES = [
    ([4, 3, 3, 1], 5, 3, 9),              # a length-0 (row 4) and a length-1 (row 3) sequence
    ([2, 2, 1], 2, 4, 7),
    ([1] * 6, 1, 3, 33),                  # B = 1
    ([3, 3, 3], 3, 2, 17),                # full lengths through batch_sizes
    ([0, 0, 0], 3, 4, 5),                 # N = 0, T > 0
    ([], 2, 3, 5),                        # T = 0
    ([16, 16, 12, 7, 7, 3, 1], 17, 40, 70),   # tails in every dimension
    ([9, 6, 6, 6, 2], 9, 1, 1),           # H = 1
    # N * 4H large enough that dw_ih and dw_hh are one product over [x | h_prev]
    # (csrc: bwd_job), with h_prev mapped through the step offsets
    ([30] * 4 + [25] * 4 + [20] * 4 + [9] * 2 + [3] * 2, 30, 19, 70),
]
PROJ = (0, 1, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("P", PROJ, ids=lambda p: f"P{p}")
@pytest.mark.parametrize("case", LENGTH_CASES, ids=lambda c: f"bs{len(c[0])}-B{c[1]}-H{c[3]}")
def test_lengths_projection_match_reference(level, case, P, dtype):
    bs, B, I, H = case
    w, d, bs = make_packed(bs, B, I, H, P, dtype, seed=len(bs) + P)
    fwd, bwd = run_c_bs(w, d, bs)
    want_fwd, want_bwd = run_ref_bs(w, d, bs)
    assert len(bwd) == (7 if P else 6)
    assert_close(fwd, want_fwd, FWD_NAMES, dtype)
    assert_close(bwd, want_bwd, BWD_NAMES_P, dtype)
    y, h_n, c_n = fwd[:3]
    n0 = int(bs[0]) if len(bs) else 0
    # rows never active keep h0, c0 exactly; a length-1 sequence ends at step 0
    assert np.array_equal(h_n[n0:], d["h0"][n0:]) and np.array_equal(c_n[n0:], d["c0"][n0:])
    if len(bs) > 1 and bs[1] < bs[0]:
        assert np.array_equal(h_n[bs[1]:n0], y[bs[1]:n0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("P", (0, 3), ids=lambda p: f"P{p}")
def test_padded_is_batch_sizes_full(level, P, dtype):
    """No batch_sizes == batch_sizes [B]*T on the same memory, bitwise."""
    T, B, I, H = 5, 4, 6, 19
    w, d, bs = make_packed([B] * T, B, I, H, P, dtype, seed=11)
    fwd, bwd = run_c_bs(w, d, bs)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"])
    R = P or H
    x3 = d["x"].reshape(T, B, I)
    pf = ck.forward(p, x3, d["h0"], d["c0"], 1)
    pb = ck.backward(p, x3, d["h0"], d["c0"], pf[0], pf[3], pf[4], d["dy"].reshape(T, B, R),
                     d["dh_n"], d["dc_n"], 1)
    assert pf[0].shape == (T, B, R) and pb[0].shape == (T, B, I)
    for a, b in zip(fwd + bwd, pf + pb):
        assert np.array_equal(a.reshape(b.shape), b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("P", (0, 5), ids=lambda p: f"P{p}")
def test_lengths_threads_bitwise_identical(level, P, dtype):
    if ck._threads_for(8, 24, 16, 96, 2, np.dtype(dtype).itemsize) < 2:
        pytest.skip("this machine has a single CPU")
    bs = [24, 24, 20, 13, 13, 13, 5, 1]
    w, d, bs = make_packed(bs, 26, 16, 45, P, dtype, seed=4)
    one = run_c_bs(w, d, bs, 1)
    for n in (2, 3):
        other = run_c_bs(w, d, bs, n)
        for a, b in zip(one[0] + one[1], other[0] + other[1]):
            assert np.array_equal(a, b)
    assert_close(one[1], run_ref_bs(w, d, bs)[1], BWD_NAMES_P, dtype)


# (batch_sizes or None for padded, B, I, H): both sides of fwd_fuse_x (B = 1 with
# I = 64 hoists x.w_ih^T, into the workspace when nothing is saved; B = 16 or
# I <= 16 fuse it into the step), tails, lengths with rows that end early or never start
SAVE_CASES = [
    (None, 1, 64, 40), (None, 16, 24, 33), (None, 5, 3, 17), (None, 7, 70, 70),
    ([6, 6, 4, 4, 1], 6, 40, 45), ([5, 3, 3, 1], 7, 12, 9), ([2, 1, 1], 2, 64, 20), ([], 3, 4, 5),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("P", (0, 4), ids=lambda p: f"P{p}")
@pytest.mark.parametrize("case", SAVE_CASES, ids=lambda c: f"{'pad' if c[0] is None else 'bs'}"
                         f"{'' if c[0] is None else len(c[0])}-B{c[1]}-I{c[2]}-H{c[3]}")
def test_forward_without_saving_is_bitwise_equal(level, case, P, dtype):
    """save=False: gates and c are None, y, h_n, c_n the bits of save=True (1 and 2
    threads); the inputs are not touched."""
    bs, B, I, H = case
    T = 5 if bs is None else len(bs)
    w, d, bsa = make_packed([B] * T if bs is None else bs, B, I, H, P, dtype, seed=B + I + P)
    x = d["x"].reshape(T, B, I) if bs is None else d["x"]
    bsa = None if bs is None else bsa
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"])
    want = ck.forward(p, x, d["h0"], d["c0"], 1, bsa)
    h0, c0, x0 = d["h0"].copy(), d["c0"].copy(), x.copy()
    for n in (1, 2):
        got = ck.forward(p, x, d["h0"], d["c0"], n, bsa, save=False)
        assert got[3] is None and got[4] is None
        for a, b in zip(got[:3], want[:3]):
            assert np.array_equal(a, b)
    assert np.array_equal(h0, d["h0"]) and np.array_equal(c0, d["c0"]) and np.array_equal(x0, x)


def test_projection_pack_shapes():
    w, _, _ = make_packed([2], 2, 3, 8, 3, np.float64)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"])
    assert (p.input_size, p.hidden_size, p.proj_size, p.out_size) == (3, 8, 3, 3)
    assert ck.SUPPORTS_PROJECTION
    with pytest.raises(ValueError):      # w_hh must be (4H, P) with a projection
        ck.pack(w["w_ih"], np.zeros((32, 8)), w["b"], w["w_hr"])
    with pytest.raises(ValueError):      # w_hr must be (P, H)
        ck.pack(w["w_ih"], w["w_hh"], w["b"], np.zeros((3, 7)))
    with pytest.raises(ValueError):      # packed for P = 3: h0 has 3 columns
        ck.forward(p, np.zeros((1, 2, 3)), np.zeros((2, 8)), np.zeros((2, 8)), 1)


@pytest.mark.parametrize("bad, err", [
    ([2, 3], ValueError),                # increasing
    ([4, 1], ValueError),                # batch_sizes[0] > B
    ([2, -1, 0], ValueError),            # negative
    ([2, 2], ValueError),                # sum != N
    ([[2, 1]], ValueError),              # not 1-d
    ([2.0, 1.0], TypeError),             # not integers
])
def test_bad_batch_sizes_rejected(bad, err):
    w, d, bs = make_packed([2, 1], 3, 4, 5, 0, np.float64)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"])
    with pytest.raises(err, match="batch_sizes"):
        ck.forward(p, d["x"], d["h0"], d["c0"], 1, bad)
    fwd = ck.forward(p, d["x"], d["h0"], d["c0"], 1, bs)
    with pytest.raises(err, match="batch_sizes"):
        ck.backward(p, d["x"], d["h0"], d["c0"], fwd[0], fwd[3], fwd[4], d["dy"], d["dh_n"],
                    d["dc_n"], 1, bad)
    with pytest.raises(ValueError):      # packed x must be 2-d with batch_sizes
        ck.forward(p, d["x"][None], d["h0"], d["c0"], 1, bs)


# --- streaming entry points: forward_into, step ---------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("P", (0, 3), ids=lambda p: f"P{p}")
@pytest.mark.parametrize("B", (1, 5, 16))   # 16: the step does x_t.w_ih^T (fwd_fuse_x)
def test_step_and_chunks_bitwise_equal_full_call(level, B, P, dtype):
    """One step at a time (state in place) and uneven chunks give the bits of one call."""
    T, I, H = 11, 64, 64
    w, d, _ = make_packed([B] * T, B, I, H, P, dtype, seed=B + P)
    R = P or H
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"])
    x = d["x"].reshape(T, B, I)
    y, h_n, c_n, _, _ = ck.forward(p, x, d["h0"], d["c0"], 1)
    h, c = d["h0"].copy(), d["c0"].copy()
    gws, cws, out = np.empty((B, 4 * H), dtype), np.empty((B, H), dtype), np.empty((B, R), dtype)
    for t in range(T):
        yt = ck.step(p, x[t], h, c, gws, cws, 1, out if t % 2 else None)
        assert np.array_equal(yt, y[t]) and (yt is out) == bool(t % 2)
    assert np.array_equal(h, h_n) and np.array_equal(c, c_n)
    h, c = d["h0"].copy(), d["c0"].copy()
    t0 = 0
    for n in (3, 1, 0, 7):
        yc, gc, cc = (np.empty((n, B, F), dtype) for F in (R, 4 * H, H))
        assert ck.forward_into(p, x[t0:t0 + n], h, c, yc, h, c, gc, cc, 2) is None
        assert np.array_equal(yc, y[t0:t0 + n])
        t0 += n
    assert np.array_equal(h, h_n) and np.array_equal(c, c_n)


def test_streaming_entry_points_reject_overlap_and_shapes():
    w, d, _ = make_packed([2] * 3, 2, 4, 6, 0, np.float64)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"])
    x = d["x"].reshape(3, 2, 4)
    h, c = d["h0"].copy(), d["c0"].copy()
    y, g, cs = np.empty((3, 2, 6)), np.empty((3, 2, 24)), np.empty((3, 2, 6))
    ck.forward_into(p, x, h, c, y, np.empty((2, 6)), np.empty((2, 6)), g, cs, 1)
    with pytest.raises(ValueError, match="overlap"):       # y is h0
        ck.forward_into(p, x[:1], h, c, h[None], np.empty((2, 6)), c, g[:1], cs[:1], 1)
    with pytest.raises(ValueError, match="overlap"):       # c is c_n
        ck.forward_into(p, x[:1], h, c, y[:1], h, cs[0], g[:1], cs[:1], 1)
    buf = np.empty(100)
    with pytest.raises(ValueError, match="overlap"):       # gates partly over y
        ck.forward_into(p, x[:1], h, c, buf[:12].reshape(1, 2, 6), h, c,
                        buf[6:54].reshape(1, 2, 24), cs[:1], 1)
    ck.forward_into(p, x[:1], h, c, y[:1], h, c, g[:1], cs[:1], 1)   # state in place: fine
    gws, cws = np.empty((2, 24)), np.empty((2, 6))
    with pytest.raises(ValueError, match="overlap"):       # y is h
        ck.step(p, x[0], h, c, gws, cws, 1, h)
    with pytest.raises(ValueError, match="overlap"):       # scratch c_ws is c
        ck.step(p, x[0], h, c, gws, c, 1)
    with pytest.raises(ValueError, match="overlap"):       # h and c overlap
        ck.step(p, x[0], h, h, gws, cws, 1)
    with pytest.raises(ValueError):                        # x must be (B, I)
        ck.step(p, x, h, c, gws, cws, 1)
    with pytest.raises(ValueError):                        # y must be (B, R)
        ck.step(p, x[0], h, c, gws, cws, 1, np.empty((2, 5)))


def test_gil_released_during_kernel_calls():
    """Another Python thread runs while a kernel call is in progress (forward and
    backward): the binding releases the GIL around every call."""
    import threading
    T, B, I, H = 200, 64, 128, 128          # ~10-20 ms per call
    w, d = make(T, B, I, H, np.float32, seed=4)
    p = ck.pack(w["w_ih"], w["w_hh"], w["b"])
    x = d["x"].reshape(T, B, I)
    y, _, _, gates, c = ck.forward(p, x, d["h0"], d["c0"], 1)
    dy, z = np.ones_like(y), np.zeros_like(d["h0"])
    calls = {
        "forward": lambda: ck.forward(p, x, d["h0"], d["c0"], 1),
        "backward": lambda: ck.backward(p, x, d["h0"], d["c0"], y, gates, c, dy, z, z, 1),
    }
    for name, call in calls.items():
        started, done = threading.Event(), threading.Event()

        def worker():
            started.set()
            call()
            done.set()

        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        ticks = 0
        while not done.is_set():
            ticks += 1
        t.join()
        # with the GIL held, this loop could not run until the call returned
        assert ticks > 1000, (name, ticks)
