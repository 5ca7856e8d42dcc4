import os

# Tests compare numbers, not speed: one BLAS/OpenMP thread for NumPy and torch
# keeps tiny problems from fighting over the 2 cores (our kernels' own thread
# pool is exercised explicitly by the thread tests).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
from hypothesis import settings

# CI replays a fixed set of hypothesis examples (reproducible verdicts);
# local runs draw new ones each time, which is how new bugs are found.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

import lstm_fast
from lstm_fast import backends

from _support import BACKENDS, DTYPES


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def impl(request):
    """A backend module (the contract: pack, forward, backward, step), each in turn."""
    return backends.get(request.param)


@pytest.fixture(params=DTYPES, ids=("f32", "f64"))
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def _clean_backend_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    yield
    lstm_fast.set_num_threads(0)
