"""Backend registry: one dict from name to the module that implements it.

Every backend module implements the same three functions. Arguments arrive
validated (C-contiguous, native byte order, one float dtype, shapes as in
``_reference``); ``num_threads`` is 0 for "choose per shape" or a positive count.

    pack(w_ih, w_hh, b) -> packed
        Weights in whatever layout the backend's kernels want. ``b`` is
        ``b_ih + b_hh`` or None. Built once per weight version by the caller and
        reused for every forward/backward call with those weights.
    forward(packed, x, h0, c0, num_threads, batch_sizes=None) -> (y, h_n, c_n, gates, c)
    backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None)
        -> (dx, dw_ih, dw_hh, db, dh0, dc0)

Variable lengths: with ``batch_sizes`` (int64, shape (T,), non-increasing,
batch_sizes[0] <= B) the sequences arrive sorted by length, longest first,
and packed step-major like torch's PackedSequence.data: x is (N, I) with
N = sum(batch_sizes), the rows of step t starting at sum(batch_sizes[:t]);
only the first batch_sizes[t] sequences advance at step t, the others keep
their state (so h_n, c_n (B, H) hold each sequence's last valid step, and a
sequence of length 0 keeps h0, c0). y, gates, c, dy and dx are packed the same
way. Work then scales with the sum of lengths. Without ``batch_sizes`` the
layout is the padded (T, B, .) one, which is the same memory as
batch_sizes = [B] * T.

Projection (torch's proj_size = P): a backend that sets
``SUPPORTS_PROJECTION = True`` accepts ``pack(w_ih, w_hh, b, w_hr)`` with
w_hr (P, H) and w_hh (4H, P); h0, h_n, y and dy then have P columns, and
backward returns a 7th element, dw_hr (P, H).

Backends are imported lazily, on first use: ``import lstm_fast`` never compiles
or imports Numba. ``"auto"`` picks the first available of ``PREFERENCE`` unless
the environment variable ``LSTM_FAST_BACKEND`` names one. Asking for a backend
that is not available raises ``BackendUnavailableError``; there is no silent
fallback.
"""

import importlib
import importlib.util
import os

BACKENDS = {
    "c": "lstm_fast.backends._c",
    "numba": "lstm_fast.backends.numba",
    "numpy": "lstm_fast.backends.reference",
}
PREFERENCE = ("c", "numba", "numpy")
ENV_VAR = "LSTM_FAST_BACKEND"

_loaded = {}
_status = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend is not available on this installation."""


def _check(name):
    """Return None if backend ``name`` can be used, else the reason it cannot."""
    if name in _status:
        return _status[name]
    reason = None
    if name == "numba" and importlib.util.find_spec("numba") is None:
        reason = "numba is not installed (pip install numba)"
    elif name != "numba":
        try:
            mod = importlib.import_module(BACKENDS[name])
        except ImportError as e:
            reason = f"the compiled extension could not be imported: {e}"
        else:
            if not all(hasattr(mod, f) for f in ("pack", "forward", "backward")):
                reason = f"{BACKENDS[name]} does not implement the backend contract yet"
    elif importlib.util.find_spec(BACKENDS[name]) is None:
        reason = f"{BACKENDS[name]} is missing from this installation"
    _status[name] = reason
    return reason


def backend_status():
    """Dict of every known backend to None (available) or the reason it is not."""
    return {name: _check(name) for name in BACKENDS}


def available_backends():
    """Names of the backends usable here, in the order ``"auto"`` prefers them."""
    return tuple(name for name in PREFERENCE if _check(name) is None)


def resolve(name="auto"):
    """Turn ``"auto"``/None or a backend name into an available backend name."""
    if name is None or name == "auto":
        forced = os.environ.get(ENV_VAR, "").strip().lower()
        if forced and forced != "auto":
            return resolve(forced)
        for cand in PREFERENCE:
            if _check(cand) is None:
                return cand
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(
            f"backend must be one of {('auto',) + tuple(BACKENDS)}, got {name!r}")
    reason = _check(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return name


def get(name):
    """The module implementing the (already resolved) backend ``name``."""
    mod = _loaded.get(name)
    if mod is None:
        mod = _loaded[name] = importlib.import_module(BACKENDS[name])
    return mod


# --- threads ----------------------------------------------------------------

_num_threads = 0


def set_num_threads(n):
    """Threads used by the kernels: a positive count, or 0/None to choose per shape.

    The result does not depend on this setting: every backend gives the same
    bits for any thread count.
    """
    global _num_threads
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"num_threads must be a non-negative int or None, got {n!r}")
    _num_threads = n


def get_num_threads():
    """The thread setting: 0 means chosen per shape."""
    return _num_threads
