"""One test body for every backend: outputs, final states and every gradient
against the NumPy reference evaluated in float64 on the same inputs."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import BACKENDS, DTYPES, assert_close, make_problem

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 1, 1, 1),
    (1, 4, 3, 5),
    (6, 32, 3, 32),     # churn
    (5, 3, 7, 17),      # odd H, I != H
    (4, 2, 33, 33),
    (7, 3, 10, 6),
    (3, 5, 64, 1),      # H = 1
    (2, 1, 1, 40),
    (512, 2, 3, 4),     # long T
    (32, 16, 64, 64),   # medium
    (8, 7, 96, 129),
]


def _reference64(p, g):
    p64 = {k: (None if v is None else v.astype(np.float64)) for k, v in p.items()}
    g64 = {k: v.astype(np.float64) for k, v in g.items()}
    b = None if p64["b_ih"] is None else p64["b_ih"] + p64["b_hh"]
    y, h_n, c_n, gates, c = ref.lstm_forward(p64["x"], p64["w_ih"], p64["w_hh"], b, p64["h0"], p64["c0"])
    grads = ref.lstm_backward(p64["x"], p64["w_ih"], p64["w_hh"], p64["h0"], p64["c0"],
                              y, gates, c, g64["dy"], g64["dh_n"], g64["dc_n"])
    return (y, h_n, c_n, gates, c), grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_matches_reference(backend, dtype, shape):
    p, g = make_problem(*shape, dtype=dtype, seed=hash(shape) % 1000)
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend)
    grads = lstm_fast.lstm_backward(cache, **g)
    (ry, rh, rc, rgates, rcs), (dx, dw_ih, dw_hh, db, dh0, dc0) = _reference64(p, g)
    for name, a, e in (("y", y, ry), ("h_n", h_n, rh), ("c_n", c_n, rc),
                       ("gates", cache.gates, rgates), ("c", cache.c, rcs),
                       ("dx", grads.dx, dx), ("dw_ih", grads.dw_ih, dw_ih),
                       ("dw_hh", grads.dw_hh, dw_hh), ("db_ih", grads.db_ih, db),
                       ("db_hh", grads.db_hh, db), ("dh0", grads.dh0, dh0), ("dc0", grads.dc0, dc0)):
        assert a.dtype == dtype, name
        assert a.shape == e.shape, name
        assert_close(a, e, dtype, name)


def test_without_bias(backend, dtype):
    p, g = make_problem(4, 3, 5, 6, dtype=dtype, bias=False)
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend)
    grads = lstm_fast.lstm_backward(cache, **g)
    assert grads.db_ih is None and grads.db_hh is None
    (ry, *_), (dx, dw_ih, *_rest) = _reference64(p, g)
    assert_close(y, ry, dtype, "y")
    assert_close(grads.dw_ih, dw_ih, dtype, "dw_ih")


def test_empty_sequence(backend, dtype):
    """T = 0: empty output, final states equal the initial ones, gradients pass through."""
    p, g = make_problem(0, 3, 2, 4, dtype=dtype)
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend)
    assert y.shape == (0, 3, 4)
    np.testing.assert_array_equal(h_n, p["h0"])
    np.testing.assert_array_equal(c_n, p["c0"])
    grads = lstm_fast.lstm_backward(cache, **g)
    assert grads.dx.shape == (0, 3, 2)
    np.testing.assert_array_equal(grads.dh0, g["dh_n"])
    np.testing.assert_array_equal(grads.dc0, g["dc_n"])
    np.testing.assert_array_equal(grads.dw_ih, 0)
    np.testing.assert_array_equal(grads.db_ih, 0)


@pytest.mark.parametrize("value", [1e30, -1e30, 1e4])
def test_huge_preactivations_are_finite(backend, dtype, value):
    """Saturated gates: no NaN, no overflow warning, values equal to the reference."""
    p, g = make_problem(3, 2, 4, 5, dtype=dtype)
    p["x"][:] = value
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend)
        grads = lstm_fast.lstm_backward(cache, **g)
    (ry, rh, rc, *_), (dx, dw_ih, *_r) = _reference64(p, g)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(grads.dw_hh))
    assert_close(y, ry, dtype, "y")
    assert_close(c_n, rc, dtype, "c_n")


def test_nan_and_inf_propagate_like_reference(backend, dtype):
    p, g = make_problem(4, 3, 2, 3, dtype=dtype)
    p["x"][1, 0, 0] = np.nan
    p["x"][2, 2, 1] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend)
        grads = lstm_fast.lstm_backward(cache, **g)
        (ry, rh, rc, *_), (dx, dw_ih, *_r) = _reference64(p, g)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
    np.testing.assert_array_equal(np.isnan(grads.dx), np.isnan(dx))
    np.testing.assert_array_equal(np.isnan(grads.dw_ih), np.isnan(dw_ih))
    finite = np.isfinite(ry)
    assert_close(y[finite], ry[finite], dtype, "y")


def test_backends_agree_with_each_other(dtype):
    """Cross-backend agreement on one problem: every pair within the tolerance."""
    p, g = make_problem(9, 4, 6, 7, dtype=dtype, seed=3)
    ys = {}
    for b in BACKENDS:
        y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=b)
        ys[b] = (y, lstm_fast.lstm_backward(cache, **g).dw_hh)
    first = ys[BACKENDS[0]]
    for b, (y, dw) in ys.items():
        assert_close(y, first[0], dtype, f"y {b}")
        assert_close(dw, first[1], dtype, f"dw_hh {b}")
