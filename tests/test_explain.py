"""`lstm-fast explain`: the worked example against torch's numbers (tests/data) and a scalar hand computation."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lstm_fast import available_backends as lstm_fast_available
from lstm_fast import cli
from lstm_fast.explain import worked_example

from _support import BACKENDS

GOLDEN = json.loads((pathlib.Path(__file__).parent / "data" / "worked_example.json").read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_matches_torch(backend):
    r = worked_example(backend=backend)
    np.testing.assert_allclose(r["h"], GOLDEN["h"], rtol=1e-12)
    np.testing.assert_allclose(r["c"][-1], GOLDEN["c_n"], rtol=1e-12)
    np.testing.assert_allclose([r["pred"], r["loss"], r["dhead"]],
                               [GOLDEN["pred"], GOLDEN["loss"], GOLDEN["dhead"]], rtol=1e-12)
    for k in ("dw_ih", "dw_hh", "db", "dx"):
        np.testing.assert_allclose(r["grads"][k], GOLDEN[k], rtol=1e-11, err_msg=k)
    # the per-step trace adds up to the totals
    np.testing.assert_allclose(sum(s["dw_ih"] for s in r["steps"]), r["grads"]["dw_ih"], rtol=1e-12)
    np.testing.assert_allclose(sum(s["dgates"] for s in r["steps"]), r["grads"]["db"], rtol=1e-12)
    np.testing.assert_allclose([s["dx"] for s in r["steps"]], r["grads"]["dx"], rtol=1e-12)


def test_first_step_by_hand():
    """Step 1 with plain math: h0 = c0 = 0, x = 1."""
    sig = lambda z: 1 / (1 + math.exp(-z))
    i, f, g, o = sig(0.6), sig(0.5), math.tanh(0.7), sig(0.8)
    c1 = i * g
    h1 = o * math.tanh(c1)
    r = worked_example()
    np.testing.assert_allclose(r["gates"][0], [i, f, g, o], rtol=1e-14)
    assert math.isclose(r["c"][0], c1, rel_tol=1e-14)
    assert math.isclose(r["h"][0], h1, rel_tol=1e-14)
    assert math.isclose(r["h"][0], 0.2563562828, rel_tol=1e-9)


def test_cli_prints_full_trace(capsys):
    assert cli.main(["explain"]) == 0
    out = capsys.readouterr().out
    for text in ("step 1:", "step 3:", "Prediction: y = 4 * 0.870678 = 3.482711",
                 "Loss: (3.482711 - 4)^2 / 2 = 0.133794", "Backward pass",
                 "dL/dw_ih = [-0.180624, -0.143139, -0.169858, -0.368049]",
                 "dL/dv    = -0.450392"):
        assert text in out, text


def test_cli_options_change_the_example(capsys):
    assert cli.main(["explain", "--x", "0.5,-1", "--target", "1", "--bias", "0,1,0,0"]) == 0
    out = capsys.readouterr().out
    assert "step 2:" in out and "step 3:" not in out
    r = worked_example(x=(0.5, -1), target=1.0, bias=(0, 1, 0, 0))
    assert f"{r['loss']:.6f}" in out


def test_cli_rejects_bad_weights():
    with pytest.raises(SystemExit):
        cli.main(["explain", "--w-ih", "1,2,3"])


def test_console_entry_points():
    out = subprocess.run([sys.executable, "-m", "lstm_fast", "explain"], capture_output=True, text=True, check=True)
    assert "Parameter gradients" in out.stdout
    out = subprocess.run([sys.executable, "-m", "lstm_fast", "info"], capture_output=True, text=True, check=True)
    assert "backends" in out.stdout and "numpy  available, self-check ok" in out.stdout
    for name in lstm_fast_available():
        if name != "numba":
            assert f"{name:<6} available, self-check ok" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lstm_fast", "info"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, LSTM_FAST_SIMD="bogus"))
    assert "LSTM_FAST_SIMD=bogus" in bad.stdout
    if "c" in lstm_fast_available():
        assert "self-check error: RuntimeError" in bad.stdout and "got 'bogus'" in bad.stdout
    out = subprocess.run([sys.executable, "-m", "lstm_fast", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown command" in out.stderr
