"""Numba backend specifics: the kernels themselves against the NumPy reference
(padded and packed with batch_sizes, with and without a projection),
activations at extreme arguments, NaN/inf propagation, thread-count
independence, inference (save=False) and step on every kernel path, the
packed weights' layouts, the names shared with csrc/, lazy import and the
on-disk compilation cache.

The cross-backend body (the backend contract, every backend) lives in test_contract.py.
"""

import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import lstm_fast  # noqa: E402
from lstm_fast.backends import numba as nk  # noqa: E402
from lstm_fast.backends import reference as ref  # noqa: E402

from _support import DTYPES, TOL, assert_close, make_problem  # noqa: E402

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (0, 2, 3, 4),       # empty sequence
    (1, 3, 5, 4),       # T = 1
    (3, 1, 4, 6),       # B = 1: matrix-vector path
    (4, 2, 5, 1),       # H = 1
    (5, 3, 7, 17),      # odd H, I != H
    (6, 32, 3, 32),
    (9, 1, 20, 33),
    (2, 4, 64, 64),
]
FWD = ("y", "h_n", "c_n", "gates", "c")
BWD = ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0")


def _b(p):
    return None if p["b_ih"] is None else p["b_ih"] + p["b_hh"]


def _reference(p, g, dtype):
    """Reference forward and backward evaluated in ``dtype``."""
    q = {k: (None if v is None else np.asarray(v, dtype)) for k, v in p.items()}
    h = {k: np.asarray(v, dtype) for k, v in g.items()}
    b = None if q["b_ih"] is None else q["b_ih"] + q["b_hh"]
    out = ref.lstm_forward(q["x"], q["w_ih"], q["w_hh"], b, q["h0"], q["c0"])
    y, _, _, gates, c = out
    grads = ref.lstm_backward(q["x"], q["w_ih"], q["w_hh"], q["h0"], q["c0"], y, gates, c,
                              h["dy"], h["dh_n"], h["dc_n"])
    return out, grads


def _kernel_calls(x, w_ih, w_hh, b, w_hr, h0, c0, bs, dy, dh_n, dc_n, nth=1):
    """The two kernels on a packed problem (x, dy (N, .)), into NaN-filled outputs and
    workspace: every element the kernels promise must be written."""
    (N, I), (B, R), H = x.shape, h0.shape, c0.shape[1]
    dt = x.dtype
    NR = 2 * (64 // dt.itemsize)
    full = lambda *s: np.full(s, np.nan, dt)
    pan = lambda cols: full((cols + NR - 1) // NR, N, NR)
    pk = nk.pack(w_ih, w_hh, b, w_hr)
    proj = w_hr is not None
    off, off3 = np.empty((0, 0), dt), np.empty((0, 0, 0), dt)   # options off: 0 rows, never None
    fwd = (full(N, R), full(B, R), full(B, H), full(N, 4 * H), full(N, H))
    # inputs read-only as the adapters pass them (nk._in): the same compilation as theirs
    x, h0, c0, bs, dy, dh_n, dc_n = map(nk._in, (x, h0, c0, bs, dy, dh_n, dc_n))
    assert nk.lstm_forward(x, pk.wih_t, pk.whh_f, pk.b, pk.whr_t if proj else off3, h0, c0, bs, *fwd,
                           full(B, H) if proj else off, True, pk.var, off, off, off, nth) is None
    y, _, _, gates, c = fwd
    ws = (full(N, 4 * H), full(0 if proj else B, H), pan(I), pan(R))
    ws += (full(B, H), full(N, R), full(N, H), pan(H)) if proj else (off, off, off, off3)
    bwd = (full(N, I), full(4 * H, I), full(4 * H, R), full(4 * H), full(B, R), full(B, H))
    dw_hr = full(*w_hr.shape) if proj else off
    assert nk.lstm_backward(x, pk.wih, pk.whh_b, pk.whr if proj else off3, h0, c0, *map(nk._in, (y, gates, c)),
                            dy, dh_n, dc_n,
                            bs, *ws, *bwd, dw_hr, pk.var, off, off, off, off, nth) is None
    return fwd, bwd + ((dw_hr,) if proj else ())


def _run_kernels(p, g, nth=1):
    """Padded (T, B, .) problem, handed to the kernels packed as batch_sizes = [B] * T."""
    x = p["x"]
    T, B, I = x.shape
    H = p["w_hh"].shape[1]
    N = T * B
    bs = np.full(T, B, np.int64)
    fwd, bwd = _kernel_calls(x.reshape(N, I), p["w_ih"], p["w_hh"], _b(p), None, p["h0"], p["c0"], bs,
                             g["dy"].reshape(N, H), g["dh_n"], g["dc_n"], nth)
    y, h_n, c_n, gates, c = fwd
    fwd = (y.reshape(T, B, H), h_n, c_n, gates.reshape(T, B, 4 * H), c.reshape(T, B, H))
    bwd = (bwd[0].reshape(T, B, I),) + bwd[1:]
    return fwd, bwd


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_kernels_match_reference(shape, dtype):
    p, g = make_problem(*shape, dtype=dtype, seed=sum(shape))
    fwd, bwd = _run_kernels(p, g)
    efwd, ebwd = _reference(p, g, np.float64)
    for name, a, e in zip(FWD + BWD, fwd + bwd, efwd + ebwd):
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_adapters_without_bias(dtype):
    p, g = make_problem(5, 3, 4, 6, dtype=dtype, bias=False)
    packed = nk.pack(p["w_ih"], p["w_hh"], None)
    out = nk.forward(packed, p["x"], p["h0"], p["c0"], 1)
    grads = nk.backward(packed, p["x"], p["h0"], p["c0"], out[0], out[3], out[4],
                        g["dy"], g["dh_n"], g["dc_n"], 1)
    assert len(grads) == 7 and grads[3] is None and grads[6] is None    # no bias, no projection
    efwd, ebwd = _reference(p, g, np.float64)
    for name, a, e in zip(FWD + BWD, out + grads, efwd + ebwd):
        if name != "db":
            assert a.dtype == dtype, name
            assert_close(a, e, dtype, name)


# --- variable lengths (packed batch_sizes) and projection (w_hr) -------------

def _batch_sizes(lengths):
    lengths = np.sort(np.asarray(lengths))[::-1]
    T = int(lengths.max()) if lengths.size else 0
    return np.array([np.count_nonzero(lengths > t) for t in range(T)], np.int64)


def make_packed_problem(lengths, I, H, P=0, dtype=np.float64, seed=0, scale=0.5):
    """Packed step-major problem: x, dy (N, .), h0 (B, P or H), w_hr (P, H) or None."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.uniform(-scale, scale, size=s).astype(dtype)
    bs = _batch_sizes(lengths)
    B, N, Ph = len(lengths), int(bs.sum()), P or H
    p = dict(x=r(N, I), w_ih=r(4 * H, I), w_hh=r(4 * H, Ph), b=r(4 * H), w_hr=r(P, H) if P else None,
             h0=r(B, Ph), c0=r(B, H))
    g = dict(dy=r(N, Ph), dh_n=r(B, Ph), dc_n=r(B, H))
    return p, g, bs


def _packed_reference(p, g, bs):
    f = lambda a: None if a is None else np.asarray(a, np.float64)
    q, h = {k: f(v) for k, v in p.items()}, {k: f(v) for k, v in g.items()}
    out = ref.lstm_forward(q["x"], q["w_ih"], q["w_hh"], q["b"], q["h0"], q["c0"], bs, q["w_hr"])
    grads = ref.lstm_backward(q["x"], q["w_ih"], q["w_hh"], q["h0"], q["c0"], out[0], out[3], out[4],
                              h["dy"], h["dh_n"], h["dc_n"], bs, q["w_hr"])
    return out, grads


def _run_packed_kernels(p, g, bs, nth=1):
    """The kernels on a packed problem, into NaN-filled outputs and workspace."""
    return _kernel_calls(p["x"], p["w_ih"], p["w_hh"], p["b"], p["w_hr"], p["h0"], p["c0"], bs,
                         g["dy"], g["dh_n"], g["dc_n"], nth)


PACKED = [  # (lengths, I, H, P); lengths sorted longest first as the contract wants
    ([5, 3, 3, 1, 0], 3, 4, 0),        # a length-1 and a length-0 sequence
    ([5, 3, 3, 1, 0], 3, 4, 1),        # ... with P = 1
    ([4, 4, 1], 2, 5, 3),              # sizes [3, 2, 2, 2]
    ([4, 4, 4, 3], 3, 6, 0),           # sizes [4, 4, 4, 3]: only the last step smaller
    ([4, 4, 4, 2], 3, 6, 0),           # sizes [4, 4, 3, 3]
    ([3, 3, 3, 3], 3, 6, 0),           # every size the first
    ([3, 3, 2], 4, 5, 2),              # [3, 3, 2]
    ([1], 3, 4, 2),                    # B = 1, T = 1
    ([6], 5, 7, 3),                    # B = 1: one-row tiles
    ([0, 0], 3, 4, 2),                 # N = 0, T = 0: states pass through
    ([9, 7, 7, 4, 2, 1, 1, 0], 6, 17, 5),
    ([12, 11, 3, 1], 8, 33, 1),
    ([7, 7, 6, 5, 5, 2, 1, 1, 1], 40, 37, 20),   # several tiles, ragged blocks (H, P not multiples of W)
    ([3, 2], 70, 40, 0),               # I > NR: several GEMM panels
]
PACKED_IDS = ["L{}-I{}H{}P{}".format("_".join(map(str, c[0])), *c[1:]) for c in PACKED]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", PACKED, ids=PACKED_IDS)
def test_packed_kernels_match_reference(case, dtype):
    lengths, I, H, P = case
    p, g, bs = make_packed_problem(lengths, I, H, P, dtype=dtype, seed=len(lengths) + H)
    fwd, bwd = _run_packed_kernels(p, g, bs)
    efwd, ebwd = _packed_reference(p, g, bs)
    names = FWD + BWD + (("dw_hr",) if P else ())
    assert len(bwd) == len(ebwd)
    for name, a, e in zip(names, fwd + bwd, efwd + ebwd):
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_close(a, e, dtype, name)
    # never-active rows keep h0/c0 bit for bit, and their gradients pass through
    n0 = int(bs[0]) if len(bs) else 0
    h_n, c_n, dh0, dc0 = fwd[1], fwd[2], bwd[4], bwd[5]
    np.testing.assert_array_equal(h_n[n0:], p["h0"][n0:])
    np.testing.assert_array_equal(c_n[n0:], p["c0"][n0:])
    np.testing.assert_array_equal(dh0[n0:], g["dh_n"][n0:])
    np.testing.assert_array_equal(dc0[n0:], g["dc_n"][n0:])


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("P", [0, 1, 3])
def test_contract_with_batch_sizes_and_projection(dtype, P):
    """forward/backward of the backend contract: packed in, 7 gradients exactly with w_hr."""
    lengths, I, H = [6, 4, 1, 1, 0], 3, 5
    p, g, bs = make_packed_problem(lengths, I, H, P, dtype=dtype, seed=7)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"]) if P else nk.pack(p["w_ih"], p["w_hh"], p["b"])
    out = nk.forward(packed, p["x"], p["h0"], p["c0"], 1, bs)
    grads = nk.backward(packed, p["x"], p["h0"], p["c0"], out[0], out[3], out[4],
                        g["dy"], g["dh_n"], g["dc_n"], 1, bs)
    assert len(grads) == 7 and (grads[6] is None) == (P == 0)
    efwd, ebwd = _packed_reference(p, g, bs)
    for name, a, e in zip(FWD + BWD + ("dw_hr",), out + grads[:6 + (P > 0)], efwd + ebwd):
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("P", [0, 2])
def test_padded_equals_full_batch_sizes_bitwise(dtype, P):
    """batch_sizes = [B] * T is the padded layout: the same kernel path, the same bits."""
    T, B, I, H = 4, 3, 5, 6
    p, g, bs = make_packed_problem([T] * B, I, H, P, dtype=dtype, seed=9)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"])
    out_p = nk.forward(packed, p["x"], p["h0"], p["c0"], 1, bs)
    gr_p = nk.backward(packed, p["x"], p["h0"], p["c0"], out_p[0], out_p[3], out_p[4],
                       g["dy"], g["dh_n"], g["dc_n"], 1, bs)
    pad = lambda a: a.reshape(T, B, a.shape[-1])
    out = nk.forward(packed, pad(p["x"]), p["h0"], p["c0"], 1)
    gr = nk.backward(packed, pad(p["x"]), p["h0"], p["c0"], out[0], out[3], out[4],
                     pad(g["dy"]), g["dh_n"], g["dc_n"], 1)
    assert out[0].shape == (T, B, P or H) and gr[0].shape == (T, B, I)
    for a, e in zip(out + gr, out_p + gr_p):
        if e is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a.reshape(e.shape), e)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_projection_matches_reference_padded(dtype):
    """Projection with the padded layout against the reference (T=0 included)."""
    for T, B, I, H, P in ((5, 3, 4, 6, 1), (3, 1, 2, 5, 4), (0, 2, 3, 4, 2)):
        p, g, _ = make_packed_problem([T] * B, I, H, P, dtype=dtype, seed=T + H)
        x, dy = p["x"].reshape(T, B, I), g["dy"].reshape(T, B, P)
        packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"])
        out = nk.forward(packed, x, p["h0"], p["c0"], 1)
        grads = nk.backward(packed, x, p["h0"], p["c0"], out[0], out[3], out[4], dy, g["dh_n"], g["dc_n"], 1)
        f = lambda a: np.asarray(a, np.float64)
        eo = ref.lstm_forward(f(x), f(p["w_ih"]), f(p["w_hh"]), f(p["b"]), f(p["h0"]), f(p["c0"]), w_hr=f(p["w_hr"]))
        eg = ref.lstm_backward(f(x), f(p["w_ih"]), f(p["w_hh"]), f(p["h0"]), f(p["c0"]), eo[0], eo[3], eo[4],
                               f(dy), f(g["dh_n"]), f(g["dc_n"]), w_hr=f(p["w_hr"]))
        for name, a, e in zip(FWD + BWD + ("dw_hr",), out + grads, eo + eg):
            assert a.dtype == dtype and a.shape == e.shape, name
            assert_close(a, e, dtype, f"T{T} {name}")


@pytest.mark.parametrize("bad", [[2, 3], [3, 1, 2], [4, 1], [-1, 1], [2, 1, 1], [1]])
def test_kernel_rejects_bad_batch_sizes(bad):
    """A direct kernel call with inconsistent sizes raises instead of indexing out of bounds."""
    bs = np.array(bad, np.int64)
    p, g, _ = make_packed_problem([1, 1, 1], 2, 3)    # B = 3, N = 3
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"])
    with pytest.raises(ValueError, match="batch_sizes"):
        nk.forward(packed, p["x"], p["h0"], p["c0"], 1, bs)
    y = np.zeros((3, 3)); gates = np.zeros((3, 12))
    with pytest.raises(ValueError, match="batch_sizes"):
        nk.backward(packed, p["x"], p["h0"], p["c0"], y, gates, y, y, g["dh_n"], g["dc_n"], 1, bs)


# Pre-activations placed in the bias with zero weights, so that every gate sees
# exactly these values: the kernel's own sigmoid/tanh against NumPy's.
EXTREME = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.3, -0.3, 0.6249, -0.6249, 0.625, -0.625,
           1.0, -1.0, 4.5, -4.5, 9.0, -9.0, 17.0, -17.0, 44.0, -44.0, 87.0, -87.0, 88.5, -88.5,
           100.0, -100.0, 709.0, -709.0, 800.0, -800.0, 1e30, -1e30]
NONFINITE = [np.inf, -np.inf, np.nan]


def _bias_problem(values, dtype, T=2, B=2, I=3):
    H = len(values)
    rng = np.random.default_rng(1)
    v = np.asarray(values, np.float64)
    p = dict(x=rng.uniform(-1, 1, (T, B, I)).astype(dtype),
             w_ih=np.zeros((4 * H, I), dtype), w_hh=np.zeros((4 * H, H), dtype),
             b_ih=np.tile(v, 4).astype(dtype), b_hh=np.zeros(4 * H, dtype),
             h0=rng.uniform(-1, 1, (B, H)).astype(dtype), c0=rng.uniform(-1, 1, (B, H)).astype(dtype))
    g = dict(dy=rng.uniform(-1, 1, (T, B, H)).astype(dtype),
             dh_n=rng.uniform(-1, 1, (B, H)).astype(dtype), dc_n=rng.uniform(-1, 1, (B, H)).astype(dtype))
    return p, g


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_activations_at_extreme_arguments(dtype):
    """|z| up to 1e30: no warnings, values within a few ulp of NumPy's exp/tanh."""
    p, g = _bias_problem(EXTREME, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd, bwd = _run_kernels(p, g)
        efwd, ebwd = _reference(p, g, np.float64)
    gates, egates = fwd[3], efwd[3]
    assert np.all(np.isfinite(gates))
    tiny = np.finfo(dtype).tiny
    rtol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(gates, egates, rtol=rtol, atol=tiny)
    for name, a, e in zip(FWD + BWD, fwd + bwd, efwd + ebwd):
        assert np.all(np.isfinite(a)), name
        assert_close(a, e, dtype, name)


def _same_nonfinite(a, e, name):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=name + " NaN positions")
    np.testing.assert_array_equal(np.isposinf(a), np.isposinf(e), err_msg=name + " +inf positions")
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(e), err_msg=name + " -inf positions")
    fin = np.isfinite(e)
    tol = 1e-5 if a.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a[fin], e[fin], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_nonfinite_preactivations_like_reference(dtype):
    """inf/NaN reaching the activations: saturate or propagate exactly as the reference."""
    p, g = _bias_problem(EXTREME[:6] + NONFINITE, dtype)
    fwd, bwd = _run_kernels(p, g)
    with np.errstate(all="ignore"):
        efwd, ebwd = _reference(p, g, dtype)
    for name, a, e in zip(FWD + BWD, fwd + bwd, efwd + ebwd):
        _same_nonfinite(a, e, name)
    assert np.isnan(fwd[0]).any() and np.isfinite(fwd[0]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("where", ["x", "h0", "c0", "dy"])
def test_nonfinite_inputs_like_reference(dtype, where):
    p, g = make_problem(4, 3, 5, 7, dtype=dtype, seed=3)
    arrays = {**p, **g}
    a = arrays[where]
    a.reshape(-1)[1] = np.nan
    a.reshape(-1)[-1] = np.inf
    if a.size > 4:
        a.reshape(-1)[3] = -np.inf
    fwd, bwd = _run_kernels(p, g)
    with np.errstate(all="ignore"):
        efwd, ebwd = _reference(p, g, dtype)
    for name, x, e in zip(FWD + BWD, fwd + bwd, efwd + ebwd):
        _same_nonfinite(x, e, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_huge_inputs_no_warnings(dtype):
    p, g = make_problem(3, 2, 4, 5, dtype=dtype, seed=4)
    p["x"] *= dtype(1e30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd, bwd = _run_kernels(p, g)
    efwd, _ = _reference(p, g, np.float64)
    for name, a, e in zip(FWD, fwd, efwd):
        assert np.all(np.isfinite(a)), name
        assert_close(a, e, dtype, name)


def test_public_api_bits_do_not_depend_on_thread_count():
    p, g = make_problem(8, 64, 48, 96, dtype=np.float32, seed=5)
    results = []
    try:
        for n in (1, 2, 3, 0):
            lstm_fast.set_num_threads(n)
            y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend="numba")
            grads = lstm_fast.lstm_backward(cache, **g)
            results.append((y, h_n, c_n, cache.gates, cache.c) + tuple(grads))
    finally:
        lstm_fast.set_num_threads(0)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a is None and b is None) or np.array_equal(a, b)


# Bits per thread count: shapes with several hidden blocks and row tiles per thread, ragged
# blocks, one-row steps, lengths, projection; (lengths, I, H, P).
THREAD_CASES = [
    ([6] * 9, 40, 70, 0),                 # padded-like, ragged H
    ([6] * 20, 64, 200, 0),               # 13 blocks (f32): split 7/6 or 5/4/4
    ([9, 7, 7, 4, 2, 1, 1, 0], 33, 50, 0),  # lengths, one-row steps
    ([9, 7, 7, 4, 2, 1, 1, 0], 33, 50, 20),  # ... with a projection
    ([5] * 12, 70, 160, 100),             # projection, steps worth splitting (n*4H*P >= 2^18)
    ([4], 300, 400, 0),                   # B = 1: one-row tiles, several K blocks in the GEMMs
    ([1], 300, 400, 130),                 # T = B = 1: one-row GEMMs (input, projection), K > KC
    ([12] * 3 + [5] * 5, 24, 130, 0),     # M*N*K large enough for the parallel GEMMs
    ([9] * 10 + [7] * 8 + [3] * 8 + [1] * 4 + [0] * 2, 20, 37, 0),   # >= 8 sequences per thread:
    ([9] * 10 + [7] * 8 + [3] * 8 + [1] * 4 + [0] * 2, 20, 37, 11),  # the sequences are split
]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: "B{}T{}I{}H{}P{}".format(len(c[0]), max(c[0]), *c[1:]))
def test_kernel_bits_do_not_depend_on_thread_count(case, dtype):
    """Forward outputs and every gradient bit-identical for nth = 1, 2, 3 (kernels called
    directly, so nth = 3 really runs 3 partitions even on 2 CPUs), and close to the reference."""
    lengths, I, H, P = case
    # weights at torch's init scale 1/sqrt(H): with 0.5 and H >= 130 the f32 recurrence itself
    # is ill-conditioned (NumPy's own f32 reference misses the f64 one by more than TOL)
    p, g, bs = make_packed_problem(lengths, I, H, P, dtype=dtype, seed=len(lengths) + I, scale=H ** -0.5)
    old = numba.get_num_threads()
    runs = {}
    try:
        for nth in (1, 2, 3):
            numba.set_num_threads(min(nth, numba.config.NUMBA_NUM_THREADS))
            runs[nth] = _run_packed_kernels(p, g, bs, nth)
    finally:
        numba.set_num_threads(old)
    names = FWD + BWD + (("dw_hr",) if P else ())
    for nth in (2, 3):
        for name, a, e in zip(names, runs[nth][0] + runs[nth][1], runs[1][0] + runs[1][1]):
            assert a.tobytes() == e.tobytes(), f"{name}: nth={nth} differs from nth=1"
    efwd, ebwd = _packed_reference(p, g, bs)
    for name, a, e in zip(names, runs[1][0] + runs[1][1], efwd + ebwd):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("P", [0, 3])
def test_contract_bits_do_not_depend_on_num_threads(dtype, P):
    """The backend contract (what lstm_fast calls) with num_threads 1, 2, 3 (resolved counts;
    0 is resolved by backends.threads_for before the backend): same bits."""
    p, g, bs = make_packed_problem([7, 7, 5, 5, 3, 1] * 5, 20, 40, P, dtype=dtype, seed=11)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"])
    res = []
    for n in (1, 2, 3):
        out = nk.forward(packed, p["x"], p["h0"], p["c0"], n, bs)
        grads = nk.backward(packed, p["x"], p["h0"], p["c0"], out[0], out[3], out[4],
                            g["dy"], g["dh_n"], g["dc_n"], n, bs)
        res.append(out + grads)
    for other in res[1:]:
        for a, e in zip(other, res[0]):
            assert (a is None and e is None) or a.tobytes() == e.tobytes()


# --- inference (save=False), step and Packed on Numba's kernel paths ------------
# (test_contract.py has the contract's own cases for every backend)

INFER_CASES = [  # (lengths, I, H, P)
    ([6] * 4, 5, 7, 0),                          # padded-like
    ([9, 7, 7, 4, 2, 1, 1, 0], 33, 50, 20),      # lengths, one-row steps, projection
    ([5] * 20, 20, 37, 0),                       # >= 8 sequences per thread: sequences split
    ([5] * 20, 20, 37, 4),
    ([6], 5, 7, 3),                              # B = 1
    ([0, 0], 3, 4, 0),                           # T = 0: states pass through
]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", INFER_CASES, ids=lambda c: "B{}I{}H{}P{}".format(len(c[0]), *c[1:]))
@pytest.mark.parametrize("chunk", ["default", "one_step"])
def test_forward_without_saving_gives_the_same_bits(monkeypatch, case, dtype, chunk):
    """save=False: gates and c are None, y, h_n, c_n the bits of save=True, on both paths (1
    thread: the input projection hoisted a chunk of steps at a time, one_step: a workspace of
    batch_sizes[0] rows, so chunk boundaries fall on every change of size; 2 threads: the
    sequences split, each step's rows projected by their thread), also with the state updated
    in place (out=(y, h0, c0))."""
    lengths, I, H, P = case
    p, g, bs = make_packed_problem(lengths, I, H, P, dtype=dtype, seed=len(lengths) + I, scale=H ** -0.5)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"])
    if chunk == "one_step":
        monkeypatch.setattr(nk, "FWD_CHUNK_BYTES", 1)
    for n in (1, 2):
        full = nk.forward(packed, p["x"], p["h0"], p["c0"], n, bs)
        out = nk.forward(packed, p["x"], p["h0"], p["c0"], n, bs, save=False)
        assert out[3] is None and out[4] is None
        for name, a, e in zip(FWD[:3], out[:3], full[:3]):
            assert a.shape == e.shape and a.tobytes() == e.tobytes(), f"{name}, {n} threads"
        y, h, c = np.full_like(full[0], np.nan), p["h0"].copy(), p["c0"].copy()
        out = nk.forward(packed, p["x"], h, c, n, bs, save=False, out=(y, h, c))
        assert out[0] is y and out[1] is h and out[2] is c
        for name, a, e in zip(FWD[:3], (y, h, c), full[:3]):
            assert a.tobytes() == e.tobytes(), f"{name} in place, {n} threads"


def test_forward_without_saving_keeps_no_per_row_arrays(monkeypatch):
    """save=False hands the kernel no (N, 4H) or (N, H) array: gates is a workspace of fewer
    rows (512 KiB here) and c is empty; the running cell state is c_n."""
    T, B, I, H = 64, 4, 8, 128
    p, _ = make_problem(T, B, I, H, dtype=np.float64, seed=2)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b_ih"] + p["b_hh"])
    shapes = []

    def spy(*args):
        shapes.append((args[11].shape, args[12].shape))
        return kernel(*args)

    kernel = nk.lstm_forward
    monkeypatch.setattr(nk, "lstm_forward", spy)
    y, h_n, c_n, gates, c = nk.forward(packed, p["x"], p["h0"], p["c0"], 1, save=False)
    assert gates is None and c is None
    (gshape, cshape), = shapes
    assert gshape == (nk.FWD_CHUNK_BYTES // (4 * H * 8), 4 * H) and gshape[0] < T * B
    assert cshape == (0, H)
    full = nk.forward(packed, p["x"], p["h0"], p["c0"], 1)
    for a, e in zip((y, h_n, c_n), full[:3]):
        assert a.tobytes() == e.tobytes()


STEP_CASES = [  # (B, I, H, P, num_threads)
    (1, 3, 7, 0, 1),          # one-row tiles
    (3, 5, 17, 0, 1),
    (4, 6, 33, 5, 2),         # projection, hidden blocks split
    (20, 8, 40, 0, 2),        # sequences split between the threads
    (16, 300, 70, 0, 1),      # I > KC: the input projection in two k blocks
    (2, 4, 300, 0, 2),        # a step worth splitting its hidden blocks (n * 4H * R >= PAR_MIN)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: "B{}I{}H{}P{}n{}".format(*c))
def test_step_gives_the_bits_of_the_whole_sequence(case, dtype):
    """step(packed, x_t, h, c, n, y=None): y_t and the in-place h, c are the bits of step t of
    one forward over the whole sequence, on the kernel paths a step can take (one-row tiles,
    hidden blocks or sequences split over 2 threads, I > KC); y is the caller's when given."""
    B, I, H, P, n = case
    T = 5
    p, _, _ = make_packed_problem([T] * B, I, H, P, dtype=dtype, seed=B + I, scale=H ** -0.5)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b"], p["w_hr"])
    x = p["x"].reshape(T, B, I)
    full = nk.forward(packed, x, p["h0"], p["c0"], n)
    h, c = p["h0"].copy(), p["c0"].copy()
    ybuf = np.empty((B, P or H), dtype)
    for t in range(T):
        y_t = nk.step(packed, x[t], h, c, n, y=ybuf if t % 2 else None)
        assert y_t.shape == (B, P or H) and (y_t is ybuf) == (t % 2 == 1)
        assert y_t.tobytes() == full[0][t].tobytes(), t
        assert h.tobytes() == full[0][t].tobytes(), t
    assert h.tobytes() == full[1].tobytes() and c.tobytes() == full[2].tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("bias, P", [(True, 0), (False, 0), (True, 3), (False, 2)])
def test_packed_fields(dtype, bias, P):
    """pack returns a Packed: the contract's fields as plain Python/NumPy values, then the
    kernels' arrays in the layouts of packed.py (V lanes, NR = 2V)."""
    I, H = 5, 7
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(dtype)
    pk = nk.pack(r(4 * H, I), r(4 * H, P or H), r(4 * H) if bias else None, r(P, H) if P else None)
    assert isinstance(pk, nk.Packed)
    assert (pk.input_size, pk.hidden_size, pk.proj_size, pk.dtype, pk.has_bias) == (I, H, P, np.dtype(dtype), bias)
    assert all(type(v) is int for v in (pk.input_size, pk.hidden_size, pk.proj_size))
    assert isinstance(pk.dtype, np.dtype) and type(pk.has_bias) is bool
    assert (pk.whr_t is None) == (pk.whr is None) == (P == 0)
    assert all(a.dtype == dtype and a.flags.c_contiguous for a in (pk.wih_t, pk.wih, pk.whh_f, pk.whh_b, pk.b))
    V = 64 // np.dtype(dtype).itemsize
    up = lambda n, k: -(-n // k)
    R = P or H
    assert pk.wih_t.shape == (up(4 * H, 2 * V), I, 2 * V) and pk.wih.shape == (up(I, 2 * V), 4 * H, 2 * V)
    assert pk.whh_f.shape == (up(H, V), R, 4, V) and pk.whh_b.shape == (up(R, V), 4 * H, V)
    if P:
        assert pk.whr_t.shape == (up(P, 2 * V), H, 2 * V) and pk.whr.shape == (up(H, 2 * V), P, 2 * V)
    if not bias:
        assert not pk.b.any()


# --- the names shared with csrc/ -------------------------------------------------

# DESIGN.md's kernel vocabulary: the same function name for the same concept in C and Numba,
# by file (numba module -> csrc files).
VOCABULARY = {
    "simd": (("simd.template.h",), ("vload", "vload_n", "vstore", "vstore_n", "vset1", "vfma", "vsigmoid", "vtanh")),
    "gemm": (("gemm.template.c",), ("gemm", "gemm_tile")),
    "cell": (("cell.template.c",), ("fwd_cell", "bwd_cell")),
    "packed": (("pack.template.c",), ("pack",)),
    "lstm": (("lstm.template.c", "backward.template.c", "lstm.c", "lstm.h"),
             ("fwd_tile", "fwd_step", "fwd_job", "lstm_forward", "bwd_tile", "bwd_rows", "bwd_step", "bwd_job",
              "lstm_backward")),
}
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def test_numba_modules_have_the_kernel_vocabulary():
    import importlib
    for mod, (_, names) in VOCABULARY.items():
        m = importlib.import_module(f"lstm_fast.backends.numba.{mod}")
        for name in names:
            assert callable(getattr(m, name, None)), f"lstm_fast.backends.numba.{mod}.{name}"


def _c_code(path):
    with open(path) as f:
        s = f.read()
    return re.sub(r"//[^\n]*", " ", re.sub(r"/\*.*?\*/", " ", s, flags=re.S))


def test_csrc_has_the_kernel_vocabulary():
    """Each vocabulary name is in the code (comments left out) of the C file(s) the Numba module
    mirrors: as written, as a macro (VFMA) or with the dtype suffix of an entry point
    (lstm_forward_f32)."""
    if not os.path.isdir(CSRC):
        pytest.skip("no csrc/ next to the tests (installed package)")
    files = {f for files, _ in VOCABULARY.values() for f in files}
    missing_files = sorted(f for f in files if not os.path.exists(os.path.join(CSRC, f)))
    if missing_files:
        pytest.skip(f"csrc/ is not split by concern yet (no {', '.join(missing_files)})")
    for mod, (cfiles, names) in VOCABULARY.items():
        code = " ".join(_c_code(os.path.join(CSRC, f)) for f in cfiles)
        for name in names:
            assert re.search(rf"\b(?:{name}|{name.upper()})(?:_f32|_f64)?\b", code), \
                f"{name} (numba/{mod}.py) not in csrc/{' or '.join(cfiles)}"


def test_cache_stamp_covers_every_kernel_file():
    """Numba's disk cache checks only the file that defines a function; every kernel function
    here carries the hash of all kernel files instead, so that an edit of simd.py also retires
    the cached lstm_forward that has simd.py's code compiled in."""
    import hashlib
    h = hashlib.sha256()
    for name in nk.simd.KERNEL_FILES:
        with open(os.path.join(os.path.dirname(nk.simd.__file__), name), "rb") as f:
            h.update(f.read())
    for disp in (nk.lstm.lstm_forward, nk.lstm.lstm_backward, nk.gemm.gemm, nk.cell.fwd_cell):
        loc = disp._cache._impl.locator
        assert isinstance(loc, nk.simd.KernelSourcesLocator), disp
        assert loc.get_source_stamp() == h.hexdigest()
    assert sorted(nk.simd.KERNEL_FILES) == sorted(
        f for f in os.listdir(os.path.dirname(nk.simd.__file__)) if f.endswith(".py") and f not in ("__init__.py", "packed.py"))


def _cap():
    return min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("requested", [1, 2, 3, 0])
def test_thread_setting_is_honoured(monkeypatch, requested):
    """lstm_fast.set_num_threads reaches the kernels: numba.get_num_threads() observed at the
    kernel call and the kernels' nth equal the request (clamped to the usable CPUs), for
    forward and backward; the caller's Numba setting is restored afterwards."""
    seen = []

    def spy(kernel):
        def call(*args):
            seen.append((kernel.__name__, numba.get_num_threads(), args[-1]))
            return kernel(*args)
        return call

    monkeypatch.setattr(nk, "lstm_forward", spy(nk.lstm_forward))
    monkeypatch.setattr(nk, "lstm_backward", spy(nk.lstm_backward))
    p, g = make_problem(3, 4, 5, 6, dtype=np.float32)
    before = numba.get_num_threads()
    try:
        lstm_fast.set_num_threads(requested)
        y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend="numba")
        lstm_fast.lstm_backward(cache, **g)
    finally:
        lstm_fast.set_num_threads(0)
    expected = min(requested, _cap()) if requested else 1    # 0: this small shape gets 1
    assert [s[0] for s in seen] == ["lstm_forward", "lstm_backward"]
    assert all(s[1] == expected and s[2] == expected for s in seen), seen
    assert numba.get_num_threads() == before


def test_backend_runs_the_count_it_is_given(monkeypatch):
    """num_threads arrives resolved (the one automatic rule is backends.threads_for): the
    backend has no rule of its own and runs the count it gets, capped at Numba's pool, even
    where the automatic rule would choose 1 (this small shape)."""
    assert not hasattr(nk, "threads_for")
    seen = []

    def spy(kernel):
        def call(*args):
            seen.append((numba.get_num_threads(), args[-1]))
            return kernel(*args)
        return call

    monkeypatch.setattr(nk, "lstm_forward", spy(nk.lstm_forward))
    monkeypatch.setattr(nk, "lstm_backward", spy(nk.lstm_backward))
    p, g = make_problem(3, 4, 5, 6, dtype=np.float32)
    packed = nk.pack(p["w_ih"], p["w_hh"], p["b_ih"] + p["b_hh"])
    before = numba.get_num_threads()
    for n in (1, 2, 5):
        out = nk.forward(packed, p["x"], p["h0"], p["c0"], n)
        nk.backward(packed, p["x"], p["h0"], p["c0"], out[0], out[3], out[4], g["dy"], g["dh_n"], g["dc_n"], n)
        cap = min(n, numba.config.NUMBA_NUM_THREADS)
        assert seen[-2:] == [(cap, cap), (cap, cap)], seen
    assert numba.get_num_threads() == before


def _python(code):
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_import_lstm_fast_does_not_import_numba():
    out = _python("""
        import sys, lstm_fast
        lstm_fast.backend_status()
        print(sorted(m for m in sys.modules if m == "numba" or m.startswith(("numba.", "llvmlite"))))
    """)
    assert out.strip() == "[]"


def test_module_import_does_not_compile():
    out = _python("""
        from lstm_fast.backends import numba as nk
        print(len(nk.lstm.lstm_forward.signatures), len(nk.lstm.lstm_backward.signatures),
              len(nk.gemm.gemm.signatures), len(nk.lstm.fwd_step_par.signatures),
              len(nk.cell.fwd_cell.signatures))
    """)
    assert out.split() == ["0", "0", "0", "0", "0"]


def test_fresh_process_loads_from_cache():
    # Compile (or load) here first: this process writes the cache if it is cold.
    for dtype in DTYPES:
        _run_kernels(*make_problem(2, 2, 3, 4, dtype=dtype))
    for disp in (nk.lstm_forward, nk.lstm_backward):
        index = disp._cache._cache_file._index_path
        assert os.path.exists(index), index
    out = _python("""
        import time
        import numpy as np
        t0 = time.perf_counter()
        import lstm_fast
        from lstm_fast.backends import numba as nk
        for dt in (np.float32, np.float64):
            x = np.ones((2, 2, 3), dt); w_ih = np.ones((16, 3), dt); w_hh = np.ones((16, 4), dt)
            h = np.zeros((2, 4), dt)
            packed = nk.pack(w_ih, w_hh, None)
            y, h_n, c_n, gates, c = nk.forward(packed, x, h, h, 1)
            nk.backward(packed, x, h, h, y, gates, c, y, h, h, 1)
        print(time.perf_counter() - t0)
        for d in (nk.lstm_forward, nk.lstm_backward):  # inner kernels are linked in, not dispatched
            print(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
    """)
    lines = out.split("\n")
    first_use = float(lines[0])
    for line in lines[1:]:
        if line.strip():
            hits, misses = map(int, line.split())
            assert misses == 0 and hits >= 1, out
    assert first_use < 10.0, f"import + first calls from cache took {first_use:.2f} s"
