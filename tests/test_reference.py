"""The oracle itself: NumPy reference gradients against central finite differences (float64)."""

import numpy as np
import pytest

from lstm_fast.backends import reference as ref

from _support import central_difference, make_problem


def _loss(p, g):
    """A scalar loss touching every output: <y, dy> + <h_n, dh_n> + <c_n, dc_n>."""
    b = p["b_ih"] + p["b_hh"]
    y, h_n, c_n, _, _ = ref.lstm_forward(p["x"], p["w_ih"], p["w_hh"], b, p["h0"], p["c0"])
    return np.sum(y * g["dy"]) + np.sum(h_n * g["dh_n"]) + np.sum(c_n * g["dc_n"])


def _fd(p, g, name, eps=1e-6):
    return central_difference(lambda: _loss(p, g), p[name], eps)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 3, 2), (4, 1, 2, 3), (5, 3, 1, 1)])
def test_gradients_match_finite_differences(shape):
    p, g = make_problem(*shape, dtype=np.float64, seed=sum(shape), scale=1.0)
    b = p["b_ih"] + p["b_hh"]
    y, h_n, c_n, gates, c = ref.lstm_forward(p["x"], p["w_ih"], p["w_hh"], b, p["h0"], p["c0"])
    dx, dw_ih, dw_hh, db, dh0, dc0 = ref.lstm_backward(
        p["x"], p["w_ih"], p["w_hh"], p["h0"], p["c0"], y, gates, c, g["dy"], g["dh_n"], g["dc_n"])
    for name, analytic in (("x", dx), ("w_ih", dw_ih), ("w_hh", dw_hh), ("b_ih", db),
                           ("b_hh", db), ("h0", dh0), ("c0", dc0)):
        np.testing.assert_allclose(analytic, _fd(p, g, name), rtol=1e-7, atol=1e-9, err_msg=name)


def test_gate_order_is_i_f_g_o():
    """Only the 'g' block uses tanh; 'f' multiplies the old cell; 'o' scales tanh(c)."""
    H = 1
    x = np.zeros((1, 1, 1))
    w_ih = np.zeros((4, 1))
    w_hh = np.zeros((4, 1))
    b = np.array([0.0, 0.0, 100.0, 0.0])    # g = tanh(100) = 1; sigmoid(0) = 0.5 for i, f, o
    c0 = np.array([[2.0]])
    y, h_n, c_n, gates, c = ref.lstm_forward(x, w_ih, w_hh, b, np.zeros((1, H)), c0)
    np.testing.assert_allclose(gates[0, 0], [0.5, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(c_n, [[0.5 * 2.0 + 0.5 * 1.0]])
    np.testing.assert_allclose(h_n, 0.5 * np.tanh(c_n))


def test_sigmoid_is_safe_for_huge_arguments():
    z = np.array([-1e30, -1000.0, -30.0, 0.0, 30.0, 1000.0, 1e30, np.nan, -np.inf, np.inf])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ref.sigmoid(z)
    np.testing.assert_array_equal(s[[0, 1, 5, 6, 7, 8, 9]], [0.0, 0.0, 1.0, 1.0, np.nan, 0.0, 1.0])
    np.testing.assert_allclose(s[2], 1 / (1 + np.exp(30.0)), rtol=1e-15)
    assert s[3] == 0.5


def test_projection_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    T, B, I, H, P = 4, 2, 3, 5, 2
    p = dict(x=rng.standard_normal((T, B, I)), w_ih=rng.standard_normal((4 * H, I)) * 0.5,
             w_hh=rng.standard_normal((4 * H, P)) * 0.5, b=rng.standard_normal(4 * H) * 0.5,
             h0=rng.standard_normal((B, P)), c0=rng.standard_normal((B, H)),
             w_hr=rng.standard_normal((P, H)) * 0.5)
    g = dict(dy=rng.standard_normal((T, B, P)), dh_n=rng.standard_normal((B, P)), dc_n=rng.standard_normal((B, H)))

    def loss():
        y, h_n, c_n, _, _ = ref.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"], w_hr=p["w_hr"])
        return np.sum(y * g["dy"]) + np.sum(h_n * g["dh_n"]) + np.sum(c_n * g["dc_n"])

    y, h_n, c_n, gates, c = ref.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"], w_hr=p["w_hr"])
    grads = ref.lstm_backward(p["x"], p["w_ih"], p["w_hh"], p["h0"], p["c0"], y, gates, c,
                              g["dy"], g["dh_n"], g["dc_n"], w_hr=p["w_hr"])
    for name, analytic in zip(("x", "w_ih", "w_hh", "b", "h0", "c0", "w_hr"), grads):
        fd = central_difference(loss, p[name])
        np.testing.assert_allclose(analytic, fd, rtol=1e-7, atol=1e-9, err_msg=name)
