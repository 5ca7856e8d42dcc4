"""The backends: the registry, the contract every backend implements, and threads.

Glossary (one meaning per name in C, Numba, NumPy and Python)::

    T  steps            B  sequences (batch)      I  input size      H  hidden size
    P  projection size (0: none)                  R  width of h: P if P > 0 else H
    G  4H (gate rows)   N  packed rows = sum(batch_sizes) (T*B when padded)
    num_threads  threads of one call (a count >= 1 once resolved; 0 = choose per shape)
    gate order   i, f, g, o

Registry: ``REGISTRY`` maps a name to the function that imports its module
(``_load_c`` -> ``backends/_c.pyx``, ``_load_numba`` -> ``backends/numba/``,
``_load_numpy`` -> ``backends/reference.py``); nothing is imported before a backend is
first used, so ``import lstm_fast`` never imports Numba. ``"auto"`` is the first
available of ``PREFERENCE`` unless the environment variable ``LSTM_FAST_BACKEND`` names
one. A backend that is asked for but not available raises ``BackendUnavailableError``;
there is no silent fallback.

The contract. Every backend module implements exactly these four functions. Arguments
arrive validated (C-contiguous, native byte order, the weights' float dtype, shapes as
below, ``batch_sizes`` valid), and ``num_threads`` is already resolved (>= 1, see
``threads_for``)::

    pack(w_ih, w_hh, b, w_hr=None, out=None, variant=None) -> Packed
        w_ih (G, I), w_hh (G, R), b = b_ih + b_hh (G,) or None, w_hr (P, H) or None;
        variant a ``Variant`` (peepholes, clip, cell_clip) or None (the plain LSTM),
        kept as ``Packed.variant``.
        The weights in the backend's own layout, once per weight version. ``Packed``
        has .input_size, .hidden_size, .proj_size (0: none), .dtype, .has_bias.
        out: an earlier Packed whose weights are no longer wanted, which the backend may
        write over and return (same shapes and dtype) instead of allocating; ignored
        otherwise. A backend that reuses a Packed gives it .generation, incremented each
        time it is written over, so a holder can tell that its packing is gone.
    forward(packed, x, h0, c0, num_threads, batch_sizes=None, save=True, out=None, rdrop=None,
            zoneout=None, stats=None)
        -> (y, h_n, c_n, gates, c)
        Padded: x (T, B, I) -> y (T, B, R), gates (T, B, G), c (T, B, H). With
        batch_sizes (T,): x (N, I) packed step-major -> y (N, R), gates (N, G), c (N, H).
        h0, h_n (B, R); c0, c_n (B, H); the states may also carry a leading axis of 1
        ((1, B, R): one layer-direction of a layer's states, no view needed), and h_n, c_n
        come back in h0's and c0's shapes (backward: dh0, dc0 in h0's and c0's shapes,
        dh_n, dc_n shaped like them). save=False keeps nothing for backward: gates
        and c are returned as None and never written (inference). out=(y, h_n, c_n)
        writes the outputs into the caller's arrays (any may be None); h_n may be h0
        and c_n may be c0, which updates the state in place. rdrop (B, R): a recurrent
        (variational) dropout mask, already scaled, on h_{t-1} in the recurrent product at
        every step (rows in the order of h0: with batch_sizes, the sorted sequences), or
        None; the matching backward takes the same mask. With ``packed.variant.layer_norm``
        (every backend) the caller passes ``stats``, an (N, S) array
        ((T, B, S) padded, S = ``ln_stats_width(H)``, 16 + 8H rounded up) that receives what the
        backward needs of each row's layer norms (mean and rstd of the input product, of
        the recurrent product and of c_t, then the two normalized products: columns in
        reference.LN_STATS and its docstring), or None with save=False; the matching
        backward takes it back.
    backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None,
             dpeephole=None, rdrop=None, zoneout=None, stats=None, dlayer_norm=None,
             need_dx=True)
        -> (dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr)
        need_dx=False: the input needs no gradient (the first layer of a model); dx comes
        back as None and the backend may skip computing it (the C backend does).
        db is the gradient of b_ih (= of b_hh), None without a bias; dw_hr (P, H), None
        without a projection. With peepholes (packed.variant.peephole) the caller passes
        dpeephole, a (3, H) array that receives their gradients (rows ci, cf, co). With
        layer norm: ``stats`` (the forward's) and ``dlayer_norm``, a (10H,) array that
        receives the gradients of ``variant.layer_norm`` (laid out as it is).
    step(packed, x, h, c, num_threads, y=None) -> y
        One step: x (B, I) -> y (B, R); h (B, R) and c (B, H) are updated in place.

Low precision (optional): ``pack_bf16`` / ``pack_int8`` / ``pack_int8_dynamic(w_ih, w_hh,
b, out=None)`` give a Packed of that weight dtype for ``forward`` with save=False and
``step``. A backend with ``TRAINS_BF16 = True`` (those in ``BF16_TRAINING``) also takes a
``pack_bf16`` Packed in ``forward`` with save=True and in ``backward``: bfloat16 training
(mixed precision; the arithmetic in ``reference``, "bfloat16 training"), gates and c then
hold bfloat16 values: float32 arrays in ``reference``, uint16 arrays of bfloat16 bit
patterns (half the bytes) in the C backend, whose backward also takes float32 ones
(``reference.bf16_values`` widens the bits).

Optional, the C backend only: ``bind_layer(inputs)`` gives a layer's
``_validation.LayerInputs`` two C functions that run ``forward``/``backward`` (padded, no
per-call masks) without a Python call and leave the results in its slots; the layer's route
then calls them (``LayerInputs.call_forward``/``call_backward``), and every other backend
through the four functions above.

Variable lengths: sequences sorted longest first, packed step-major as torch's
PackedSequence.data: the rows of step t start at sum(batch_sizes[:t]) and are the first
batch_sizes[t] sequences, which alone advance at step t (batch_sizes non-increasing,
batch_sizes[0] <= B). h_n, c_n hold each sequence's state after its own last step.

Every backend gives the same bits for any thread count, and a sequence run in chunks
(h_n, c_n of one call as h0, c0 of the next) gives the same bits as one call ("c" and
"numba"; the NumPy reference to rounding).
"""

import importlib.util
import os
from typing import NamedTuple, Optional

PREFERENCE = ("c", "numba", "numpy")
BF16_TRAINING = ("c", "numpy")    # the backends with TRAINS_BF16 (bfloat16 training)
ENV_VAR = "LSTM_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend is not available on this installation.

    Raised instead of falling back silently to another backend; the message gives
    the reason (`backend_status` lists them all). A subclass of ``RuntimeError``.

    Examples
    --------
    >>> missing = [n for n, why in lstm_fast.backend_status().items() if why is not None]
    >>> for name in missing:            # none where every backend is installed
    ...     try:
    ...         lstm_fast.LSTM(3, 4, backend=name)
    ...     except lstm_fast.BackendUnavailableError as e:
    ...         assert str(e).startswith(f"backend {name!r} is not available")
    >>> issubclass(lstm_fast.BackendUnavailableError, RuntimeError)
    True
    """


def _load_c():
    from . import _c
    _buffer_cache_from_env(_c)
    return _c


def _load_numba():
    if importlib.util.find_spec("numba") is None:
        raise ImportError("numba is not installed (pip install numba)")
    from . import numba
    return numba


def _load_numpy():
    from . import reference
    return reference


class Variant(NamedTuple):
    """The LSTM variants of one layer-direction (issue 15), handed to ``pack``.

    ``peephole`` (3, H) rows w_ci, w_cf, w_co of the weights' dtype, or None; ``clip`` > 0
    clamps every gate pre-activation to [-clip, clip] (ONNX ``clip``), ``cell_clip`` > 0 the
    cell state c_t to [-cell_clip, cell_clip] (TensorFlow ``cell_clip``); 0 is off. Validated
    by the callers (``_validation.variant``). ``cifg``: coupled input and forget gates,
    f = 1 - i; the kernels still take 4H weight rows, the f rows zeros (``_params.cifg_expand``).
    See ``reference.lstm_forward`` for the equations. ``layer_norm``: the layer-normalized
    LSTM (haste's LayerNormLSTM), a (10H,) array [g_ih (4H), g_hh (4H), g_c (H), b_c (H)]
    of the weights' dtype, or None; every backend runs it ("auto" never picks "numba" for it:
    ``layer_norm_backend``).
    """
    peephole: Optional[object] = None
    clip: float = 0.0
    cell_clip: float = 0.0
    cifg: bool = False
    layer_norm: Optional[object] = None


# the backends that run a layer-normalized LSTM, and the rule that picks one: _validation's
from .._validation import LAYER_NORM_BACKENDS, layer_norm_backend  # noqa: E402,F401


REGISTRY = {"c": _load_c, "numba": _load_numba, "numpy": _load_numpy}

_modules = {}    # name -> loaded module
_status = {}     # name -> None (available) or the reason it is not


def _check(name):
    """None if backend ``name`` can be used, else the reason it cannot. Numba is only
    looked for here (importing it takes ~0.4 s); it is imported by ``get``."""
    if name not in _status:
        reason = None
        try:
            if name == "numba":
                if importlib.util.find_spec("numba") is None:
                    reason = "numba is not installed (pip install numba)"
            else:
                _modules[name] = REGISTRY[name]()
        except ImportError as e:
            reason = f"it could not be imported: {e}"
        _status[name] = reason
    return _status[name]


def backend_status():
    """Which backends this installation has, and why one is missing.

    Returns
    -------
    dict of str to str or None
        Every known backend (``"c"``, ``"numba"``, ``"numpy"``) to None if it is
        available, else the reason it is not (e.g. the import error).

    Examples
    --------
    >>> status = lstm_fast.backend_status()
    >>> sorted(status), status["numpy"] is None
    (['c', 'numba', 'numpy'], True)
    """
    return {name: _check(name) for name in REGISTRY}


def available_backends():
    """Names of the backends usable here, in the order ``"auto"`` prefers them.

    Returns
    -------
    tuple of str
        A subsequence of ``("c", "numba", "numpy")``; the NumPy reference is always there.

    Examples
    --------
    >>> "numpy" in lstm_fast.available_backends()
    True
    """
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
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"backend must be one of {('auto',) + tuple(REGISTRY)}, got {name!r}")
    reason = _check(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return name


def get(name):
    """The module implementing the (resolved) backend ``name``."""
    mod = _modules.get(name)
    if mod is None:
        mod = _modules[name] = REGISTRY[name]()
    return mod


LN_ZHAT = 16   # the first column of zhat_x in ``stats`` (csrc/lstm.h LSTM_LN_ZHAT)


def ln_zhat_columns(hidden_size):
    """(first column of zhat_x, first column of zhat_h) in a layer-normalized LSTM's
    ``stats``: the 6 statistics padded to 16 columns, then zhat_x (4H), then zhat_h (4H)
    from the next multiple of 16 columns: every part of a row starts on a 64-byte line
    when the row does (float32: a vector of the C kernel; float64: two). The padding
    columns are never written."""
    return LN_ZHAT, LN_ZHAT + -(-4 * hidden_size // 16) * 16   # ceil(4H / 16) 16


def ln_stats_width(hidden_size):
    """Columns of a layer-normalized LSTM's ``stats`` (the contract above): the 6
    statistics, then the normalized input and recurrent products (4H each), each part from
    a multiple of 16 columns (``ln_zhat_columns``): 16 + 2 ceil(4H / 16) 16 (a multiple of
    16: rows start on a line when the array does)."""
    zx, zh = ln_zhat_columns(hidden_size)
    return zh + (zh - zx)


def as_matrix(state):
    """A state (B, C) or (1, B, C) as (B, C) (a view): the one extra axis the contract allows."""
    return state if state.ndim == 2 else state.reshape(state.shape[-2:])


def name_of(module):
    """The registry name of a loaded backend module."""
    return next(name for name, mod in _modules.items() if mod is module)


# --- threads -------------------------------------------------------------------------
# The setting and the automatic rule are compiled with the per-call checks (_validation):
# every call of every backend asks for its thread count.
from .._validation import CPUS, get_num_threads, set_num_threads, threads_for  # noqa: E402,F401


# --- the C backend's buffer cache ------------------------------------------------------
# Freed large output arrays kept for the next call (backends/_bufcache.h says why: fresh
# pages above glibc's mmap threshold). Nothing else of the process is affected.

BUFFER_CACHE_ENV = "LSTM_FAST_BUFFER_CACHE"


def _cache_backend():
    """The loaded C backend module, or None where it is not available."""
    return _modules.get("c") if _check("c") is None else None


def buffer_cache_info():
    """What the C backend's buffer cache holds now.

    The C backend allocates its large output arrays (1 MiB or more: ``y``, the gates and
    cell states saved for backward, ``dx``, the gradients) through a small cache: when such
    an array is freed its memory is kept, up to a limit (1 GiB by default, at most 8 blocks),
    and the next large array of a similar size (up to twice as large) reuses it. That
    spares the first-touch cost of fresh pages that glibc maps for every allocation above
    its mmap threshold (32 MiB): up to a third of a large float64 training step on the
    project's machines. Only the arrays the C backend makes go through it; every other
    allocation of the process is NumPy's and glibc's as before.

    Returns
    -------
    dict
        ``kept_bytes`` and ``kept_blocks`` (memory held now without an array),
        ``limit_bytes`` (0: the cache is off), ``reused`` (allocations served from it since
        the start), ``min_block_bytes`` and ``max_blocks`` (the policy's constants). All 0
        where the C backend is not available.

    See Also
    --------
    set_buffer_cache_limit, release_buffer_cache

    Examples
    --------
    >>> info = lstm_fast.buffer_cache_info()
    >>> sorted(info)
    ['kept_blocks', 'kept_bytes', 'limit_bytes', 'max_blocks', 'min_block_bytes', 'reused']
    """
    c = _cache_backend()
    if c is None:
        return {"kept_bytes": 0, "kept_blocks": 0, "limit_bytes": 0, "reused": 0,
                "min_block_bytes": 0, "max_blocks": 0}
    return c.buffer_cache_info()


def set_buffer_cache_limit(nbytes):
    """Set how many bytes of freed large arrays the C backend keeps for reuse.

    What is kept now is freed first; the new limit applies to arrays freed from then on.
    Process-wide; the environment variable ``LSTM_FAST_BUFFER_CACHE`` (a byte count, read
    at import) sets it too. Results do not depend on it.

    Parameters
    ----------
    nbytes : int
        The limit in bytes, >= 0; 0 turns the cache off (large arrays then come from
        NumPy's allocator). The default is 1 GiB (``1 << 30``).

    Raises
    ------
    ValueError
        nbytes negative or not an int.

    See Also
    --------
    buffer_cache_info, release_buffer_cache

    Examples
    --------
    >>> lstm_fast.set_buffer_cache_limit(256 << 20)     # keep at most 256 MiB
    >>> lstm_fast.set_buffer_cache_limit(0)             # off: NumPy's allocator
    >>> lstm_fast.set_buffer_cache_limit(1 << 30)       # the default again
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int (bytes; 0 turns the buffer cache "
                         f"off), got {nbytes!r}")
    c = _cache_backend()
    if c is not None:
        c.set_buffer_cache_limit(min(nbytes, 2**63 - 1))


def release_buffer_cache():
    """Free the memory the C backend's buffer cache keeps now (the limit stays).

    See Also
    --------
    buffer_cache_info, set_buffer_cache_limit

    Examples
    --------
    >>> lstm_fast.release_buffer_cache()
    >>> lstm_fast.buffer_cache_info()["kept_bytes"]
    0
    """
    c = _cache_backend()
    if c is not None:
        c.release_buffer_cache()


def _buffer_cache_from_env(c):
    """Apply ``LSTM_FAST_BUFFER_CACHE`` (bytes) to the C backend ``c`` as it is loaded; a
    value that is not a non-negative integer warns and leaves the default."""
    value = os.environ.get(BUFFER_CACHE_ENV)
    if value is None or value.strip() == "":
        return
    try:
        n = int(value.strip())
        if n < 0:
            raise ValueError
    except ValueError:
        import warnings
        warnings.warn(f"{BUFFER_CACHE_ENV}={value!r} is not a non-negative byte count; "
                      f"the buffer cache keeps its default limit (1 GiB)", RuntimeWarning,
                      stacklevel=2)
        return
    c.set_buffer_cache_limit(min(n, 2**63 - 1))
