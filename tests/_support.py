"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import os

import numpy as np

import lstm_fast

# Every backend that is registered and available here joins the shared test
# bodies by registration alone. In CI all of them must be present (see
# test_api.py::test_all_backends_present_in_ci), so nothing is skipped there.
BACKENDS = lstm_fast.available_backends()
FAST_BACKENDS = tuple(b for b in BACKENDS if b != "numpy")
DTYPES = (np.float32, np.float64)

# Tolerances for comparing a backend with the NumPy reference (relative to the
# magnitude of each array); float64 near round-off, float32 a few ulp accumulated.
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def make_problem(T, B, I, H, dtype=np.float64, seed=0, bias=True, scale=0.5):
    """Random weights, input, states and output gradients for one layer."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.uniform(-scale, scale, size=s)).astype(dtype)
    p = dict(x=r(T, B, I), w_ih=r(4 * H, I), w_hh=r(4 * H, H),
             b_ih=r(4 * H) if bias else None, b_hh=r(4 * H) if bias else None,
             h0=r(B, H), c0=r(B, H))
    g = dict(dy=r(T, B, H), dh_n=r(B, H), dc_n=r(B, H))
    return p, g


def assert_close(actual, expected, dtype, name=""):
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=name)




def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
