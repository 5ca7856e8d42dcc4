"""Public API: validation messages, backend selection, thread setting, parameter routes."""

import copy
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import lstm_fast
from lstm_fast import backends

from _support import BACKENDS, in_ci, make_problem


# --- environment ----------------------------------------------------------

@pytest.mark.skipif(not in_ci(), reason="only CI must have every backend and torch")
def test_all_backends_present_in_ci():
    assert lstm_fast.backend_status() == {"c": None, "numba": None, "numpy": None}
    assert importlib.util.find_spec("torch") is not None


def test_import_does_not_import_numba_or_torch():
    code = "import sys, lstm_fast; print('numba' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- backend selection ----------------------------------------------------

def test_available_backends_and_auto():
    avail = lstm_fast.available_backends()
    assert "numpy" in avail
    assert backends.resolve("auto") == avail[0]
    status = lstm_fast.backend_status()
    assert set(status) == {"c", "numba", "numpy"}
    for name in avail:
        assert status[name] is None


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"backend must be one of .*'numpy'.*got 'cuda'"):
        lstm_fast.LSTM(2, 3, backend="cuda")
    p, _ = make_problem(2, 1, 2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        lstm_fast.lstm_forward(**p, backend="fast")


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(backends._status, "numba", "numba is not installed (pip install numba)")
    with pytest.raises(lstm_fast.BackendUnavailableError, match="'numba' is not available: numba is not installed"):
        lstm_fast.LSTM(2, 3, backend="numba")


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv("LSTM_FAST_BACKEND", "numpy")
    assert lstm_fast.LSTM(2, 3).backend == "numpy"
    p, _ = make_problem(2, 1, 2, 3)
    assert lstm_fast.lstm_forward(**p).cache.backend == "numpy"
    monkeypatch.setenv("LSTM_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="got 'nonsense'"):
        lstm_fast.LSTM(2, 3)


def test_per_call_backend(backend):
    p, _ = make_problem(2, 1, 2, 3)
    assert lstm_fast.lstm_forward(**p, backend=backend).cache.backend == backend


def test_set_num_threads_validation():
    lstm_fast.set_num_threads(2)
    assert lstm_fast.get_num_threads() == 2
    lstm_fast.set_num_threads(None)
    assert lstm_fast.get_num_threads() == 0
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="num_threads must be"):
            lstm_fast.set_num_threads(bad)


# --- functional validation ------------------------------------------------

@pytest.fixture
def prob():
    p, g = make_problem(3, 2, 4, 5, dtype=np.float32)
    return p, g


@pytest.mark.parametrize("name,value,exc,pattern", [
    ("x", np.zeros((3, 2, 5), np.float32), ValueError, r"x must have shape \(T, B, I=4\), got \(3, 2, 5\)"),
    ("x", np.zeros((3, 4), np.float32), ValueError, r"x must have shape \(T, B, I=4\), got \(3, 4\)"),
    ("x", np.zeros((3, 2, 4), np.float64), TypeError, "x must have dtype float32 .* got float64"),
    ("x", np.zeros((3, 2, 4), np.complex64), TypeError, "x must have dtype float32"),
    ("w_hh", np.zeros((20, 4), np.float32), ValueError, r"w_hh must have shape \(4\*H, H\) = \(20, 5\), got \(20, 4\)"),
    ("w_hh", np.zeros((20, 5), np.float64), TypeError, "w_hh must have dtype float32"),
    ("w_ih", np.zeros((19, 4), np.float32), ValueError, r"w_ih must have shape \(4\*H, I\)"),
    ("w_ih", np.zeros((20, 4), np.int64), TypeError, "w_ih must be float32 or float64, got int64"),
    ("b_ih", np.zeros(19, np.float32), ValueError, r"b_ih must have shape \(4\*H,\) = \(20,\), got \(19,\)"),
    ("b_hh", None, ValueError, "b_ih and b_hh must both be given or both be None"),
    ("h0", np.zeros((3, 5), np.float32), ValueError, r"h0 must have shape \(B, H\) = \(2, 5\), got \(3, 5\)"),
    ("c0", np.zeros((2, 5, 1), np.float32), ValueError, r"c0 must have shape \(B, H\) = \(2, 5\)"),
])
def test_forward_argument_errors(prob, name, value, exc, pattern):
    p, _ = prob
    p[name] = value
    with pytest.raises(exc, match=pattern):
        lstm_fast.lstm_forward(**p)


def test_backward_argument_errors(prob):
    p, g = prob
    cache = lstm_fast.lstm_forward(**p).cache
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 2, 5\), got \(3, 2, 4\)"):
        lstm_fast.lstm_backward(cache, dy=np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dh_n must have shape \(B, H\) = \(2, 5\)"):
        lstm_fast.lstm_backward(cache, dh_n=np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="cache must be the LSTMCache"):
        lstm_fast.lstm_backward(p["x"])


def test_integer_and_strided_inputs_are_converted(backend):
    """Documented: integer inputs are cast to the weights' dtype; any memory layout is accepted."""
    p, _ = make_problem(4, 3, 2, 5, dtype=np.float64)
    ref = lstm_fast.lstm_forward(**p, backend=backend).y
    xi = np.arange(24).reshape(4, 3, 2) % 3
    p_int = dict(p, x=xi)
    np.testing.assert_array_equal(lstm_fast.lstm_forward(**p_int, backend=backend).y,
                                  lstm_fast.lstm_forward(**dict(p, x=xi.astype(np.float64)), backend=backend).y)
    fortran = np.asfortranarray(p["x"])
    reversed_ = p["x"][::-1].copy()[::-1]
    big_endian = p["x"].astype(">f8")
    readonly = p["x"].copy()
    readonly.flags.writeable = False
    for x in (fortran, reversed_, big_endian, readonly, p["x"].tolist()):
        np.testing.assert_array_equal(lstm_fast.lstm_forward(**dict(p, x=x), backend=backend).y, ref)


# --- layer validation -------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(input_size=0), ValueError, "input_size must be >= 1, got 0"),
    (dict(hidden_size=2.5), TypeError, "hidden_size must be an int"),
    (dict(hidden_size=float("nan")), TypeError, "hidden_size must be an int"),
    (dict(num_layers=-1), ValueError, "num_layers must be >= 1"),
    (dict(bias="yes"), TypeError, "bias must be a bool"),
    (dict(dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\]"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(dtype="float16"), TypeError, "dtype must be float32 or float64"),
])
def test_layer_constructor_errors(kwargs, exc, pattern):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        lstm_fast.LSTM(**args)


def test_layer_call_errors():
    layer = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, I=3\), got \(5, 2, 4\)"):
        layer(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x must be 3-D \(T, B, I\) or 2-D"):
        layer(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"hx\[0\] \(h0\) must have shape \(num_layers\*num_directions, B, H\) = \(4, 2, 4\), got \(2, 2, 4\)"):
        layer(x, (np.zeros((2, 2, 4), np.float32), np.zeros((4, 2, 4), np.float32)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h0, c0\)"):
        layer(x, np.zeros((4, 2, 4), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        layer(x.astype(np.float64))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before a forward call"):
        lstm_fast.LSTM(3, 4).backward(np.zeros((5, 2, 4), np.float32))
    layer(x)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(5, 2, 8\)"):
        layer.backward(np.zeros((5, 2, 4), np.float32))


def test_projection_runs_on_every_backend(backend):
    layer = lstm_fast.LSTM(3, 4, proj_size=2, backend=backend)
    x = np.zeros((2, 1, 3), np.float32)
    assert layer(x)[0].shape == (2, 1, 2)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size=4, got 4"):
        lstm_fast.LSTM(3, 4, proj_size=4)


# --- parameters: a packed copy is never used stale -----------------------------

def _out(layer, x):
    return layer(x)[0]


def test_parameters_are_read_only_and_changes_are_seen(backend):
    layer = lstm_fast.LSTM(3, 4, seed=0, backend=backend, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    before = _out(layer, x)
    with pytest.raises(ValueError, match="read-only"):
        layer.weight_hh_l0[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        layer.named_parameters()[0][1][...] = 0
    # optimizer-style in-place update inside the unlocked context
    layer(x)
    layer.backward(np.ones((5, 2, 4)))
    with layer.unlocked_parameters() as params:
        for name, g in layer.grads.items():
            params[name] -= 0.1 * g
    after_step = _out(layer, x)
    assert not np.allclose(before, after_step)
    fresh = lstm_fast.LSTM(3, 4, backend="numpy", dtype=np.float64)
    fresh.load_state_dict(layer.state_dict())
    np.testing.assert_allclose(after_step, _out(fresh, x), rtol=1e-12, atol=1e-14)
    # load_state_dict
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * 0.5
    layer.load_state_dict(sd)
    fresh.load_state_dict(sd)
    np.testing.assert_allclose(_out(layer, x), _out(fresh, x), rtol=1e-12, atol=1e-14)
    # set_parameter
    layer.set_parameter("bias_ih_l0", np.ones(16))
    fresh.set_parameter("bias_ih_l0", np.ones(16))
    np.testing.assert_allclose(_out(layer, x), _out(fresh, x), rtol=1e-12, atol=1e-14)
    # state_dict returns copies: writing into them changes nothing
    sd = layer.state_dict()
    sd["weight_ih_l0"][:] = 0
    np.testing.assert_allclose(_out(layer, x), _out(fresh, x), rtol=1e-12, atol=1e-14)


def test_load_state_dict_errors():
    layer = lstm_fast.LSTM(3, 4)
    sd = layer.state_dict()
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(16, 3\), got \(16, 4\)"):
        layer.load_state_dict(dict(sd, weight_ih_l0=np.zeros((16, 4))))
    del sd["bias_hh_l0"]
    with pytest.raises(KeyError, match="missing \\['bias_hh_l0'\\]"):
        layer.load_state_dict(sd)
    with pytest.raises(KeyError, match="no parameter named 'weight'"):
        layer.set_parameter("weight", np.zeros(3))


def test_deepcopy_and_pickle_keep_parameters_locked(backend):
    layer = lstm_fast.LSTM(3, 4, seed=1, backend=backend)
    x = np.ones((2, 1, 3), np.float32)
    out = _out(layer, x)
    clone = copy.deepcopy(layer)
    np.testing.assert_array_equal(_out(clone, x), out)
    with pytest.raises(ValueError, match="read-only"):
        clone.weight_ih_l0[0, 0] = 0


# --- the remaining messages, one test each ------------------------------------------

def test_missing_array_is_named(prob):
    p, _ = prob
    with pytest.raises(TypeError, match="x must be an array, got None"):
        lstm_fast.lstm_forward(**dict(p, x=None))


def test_projection_shape_errors(prob):
    p, _ = prob          # H = 5, I = 4
    with pytest.raises(ValueError, match=r"w_hr must have shape \(P, H=5\) with 0 < P < H, got \(5, 5\)"):
        lstm_fast.lstm_forward(**p, w_hr=np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, P\) = \(20, 2\), got \(20, 5\)"):
        lstm_fast.lstm_forward(**p, w_hr=np.zeros((2, 5), np.float32))


def test_load_state_dict_rejects_non_real_values():
    layer = lstm_fast.LSTM(3, 4)
    sd = layer.state_dict()
    with pytest.raises(TypeError, match="bias_ih_l0 must be a real array, got dtype complex128"):
        layer.load_state_dict(dict(sd, bias_ih_l0=np.zeros(16, complex)))


def test_grad_hx_must_be_a_pair():
    layer = lstm_fast.LSTM(3, 4)
    out, (h, c) = layer(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match=r"grad_hx must be a tuple \(grad_h_n, grad_c_n\)"):
        layer.backward(np.ones_like(out), h)
    with pytest.raises(ValueError, match=r"grad_hx\[1\] must have shape \(1, 1, 4\), got \(1, 4\)"):
        layer.backward(np.ones_like(out), (h, c[0]))


def test_stream_hx_must_be_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h0, c0\)"):
        lstm_fast.Stream(lstm_fast.LSTM(3, 4), hx=np.zeros((1, 1, 4), np.float32))


def test_eval_mode_keeps_nothing_for_backward_unless_asked(backend):
    layer = lstm_fast.LSTM(3, 4, num_layers=2, backend=backend, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out_train, _ = layer(x)
    layer.eval()
    out_eval, _ = layer(x)
    np.testing.assert_array_equal(out_eval, out_train)
    with pytest.raises(RuntimeError, match="kept nothing for backward"):
        layer.backward(np.ones_like(out_eval))
    out, _ = layer(x, save=True)                 # eval-mode gradients when asked
    dx, _ = layer.backward(np.ones_like(out))
    layer.train()
    layer(x, save=False)
    with pytest.raises(RuntimeError, match="kept nothing for backward"):
        layer.backward(np.ones_like(out))
    layer(x)
    dx2, _ = layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(dx, dx2)


def test_functional_save_false_returns_no_cache(backend):
    p = dict(x=np.ones((3, 2, 4), np.float32), w_ih=np.full((20, 4), 0.1, np.float32),
             w_hh=np.full((20, 5), 0.1, np.float32))
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, backend=backend, save=False)
    assert cache is None
    np.testing.assert_array_equal(y, lstm_fast.lstm_forward(**p, backend=backend).y)
