"""The C example of the documentation (docs/examples/forward.c, shown on the C contract
page) compiles against csrc/ alone and prints what lstm_forward/lstm_backward compute."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lstm_fast import lstm_backward, lstm_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "docs", "examples", "forward.c")
CC = os.environ.get("CC", "cc")


@pytest.mark.skipif(not os.path.isfile(SRC) or not os.path.isdir(os.path.join(ROOT, "csrc")),
                    reason="a source checkout (docs/ and csrc/) is needed")
@pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler {CC!r}")
def test_c_example_matches_python(tmp_path):
    csrc = os.path.join(ROOT, "csrc")
    exe = str(tmp_path / "forward")
    subprocess.run([CC, "-O2", "-std=c11", "-Wall", "-Werror", "-I" + csrc,
                    *(os.path.join(csrc, f) for f in ("cpu.c", "pool.c", "lstm.c")), SRC,
                    "-o", exe, "-lpthread", "-ldl", "-lm"], check=True, capture_output=True)
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    steps = re.findall(r"step (\d): c = ([-\d.]+), h = ([-\d.]+)", out)
    dw_ih = re.search(r"dh_3/dw_ih = \[([^\]]+)\]", out).group(1)
    dx = re.search(r"dh_3/dx    = \[([^\]]+)\]", out).group(1)

    x = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    w_ih = np.array([0.6, 0.5, 0.7, 0.8]).reshape(4, 1)
    w_hh = np.array([0.2, 0.1, 0.3, 0.4]).reshape(4, 1)
    res = lstm_forward(x, w_ih, w_hh, np.zeros(4), np.zeros(4), backend="numpy")
    grads = lstm_backward(res.cache, None, np.ones((1, 1)))
    assert [int(t) for t, _, _ in steps] == [1, 2, 3]
    np.testing.assert_allclose([float(c) for _, c, _ in steps], res.cache.c.ravel(), atol=1e-6)
    np.testing.assert_allclose([float(h) for _, _, h in steps], res.y.ravel(), atol=1e-6)
    np.testing.assert_allclose([float(v) for v in dw_ih.split(",")], grads.dw_ih.ravel(), atol=1e-6)
    np.testing.assert_allclose([float(v) for v in dx.split(",")], grads.dx.ravel(), atol=1e-6)
