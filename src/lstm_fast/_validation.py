"""All argument checking lives here: the kernels trust what passes.

Policy (documented in README "Input rules"):
* The weights decide the dtype: ``w_ih`` must be float32 or float64.
* Every other array must have that dtype. Integer and bool arrays (and Python
  lists of numbers) are converted to it; a float array of another precision is
  a ``TypeError`` (convert it explicitly: silent down-casting loses precision).
* Non-contiguous, negatively strided or non-native byte-order arrays are copied
  to C-contiguous native order; read-only inputs are fine (they are only read).
* Wrong shapes are a ``ValueError`` naming the argument, the shape received
  and the shape expected.
* NaN and inf in the values propagate as in torch.nn.LSTM; they are not errors.
"""

import math
import numbers
import os
import sys

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FLOAT_DTYPES = (F32, F64)
ndarray = np.ndarray


def check_dtype(dtype, name="dtype"):
    """Normalize a dtype argument to np.float32 or np.float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


WEIGHT_DTYPES = ("float32", "float64", "bfloat16", "int8", "int8_dynamic")
LOW_PRECISION_PACKERS = {"bfloat16": "pack_bf16", "int8": "pack_int8",     # backend packers
                         "int8_dynamic": "pack_int8_dynamic"}
# quantize's activations: what the products take of x and h (None: weight_dtype's own)
ACTIVATIONS = (None, "float32", "dynamic")


def weight_dtype_with_activations(weight_dtype, activations):
    """quantize's (weight_dtype, activations) as one weight_dtype: "int8" with "dynamic" is
    "int8_dynamic"; "float32" activations keep "int8" weight-only."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if activations is None:
        return weight_dtype
    if weight_dtype == "int8" and activations == "dynamic":
        return "int8_dynamic"
    if weight_dtype == "int8_dynamic" and activations == "dynamic":
        return weight_dtype
    if weight_dtype == "int8" and activations == "float32":
        return weight_dtype
    raise ValueError(f"activations={activations!r} applies to weight_dtype 'int8' "
                     f"(\"float32\": weight-only, \"dynamic\": x and h quantized per step), "
                     f"got weight_dtype={weight_dtype!r}")


def check_weight_dtype(weight_dtype, dtype, proj_size, backend_impl, backend_name):
    """A layer's weight_dtype: None (the layer's dtype) or one of WEIGHT_DTYPES, and what
    the rest of the layer allows with it. Returns the name ("float32", "bfloat16", ...)."""
    if weight_dtype is None:
        return dtype.name
    name = weight_dtype if isinstance(weight_dtype, str) else None
    if name is None:
        try:
            name = np.dtype(weight_dtype).name
        except TypeError:
            name = repr(weight_dtype)
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES} (or None: the layer's "
                         f"dtype), got {weight_dtype!r}")
    if name == dtype.name:
        return name
    if name not in LOW_PRECISION_PACKERS:
        raise ValueError(f"weight_dtype={name!r} must be the layer's dtype ({dtype.name}) or "
                         f"one of {tuple(LOW_PRECISION_PACKERS)}")
    if dtype.name != "float32":
        raise ValueError(f"weight_dtype={name!r} needs dtype float32, got {dtype.name}")
    if proj_size:
        raise ValueError(f"weight_dtype={name!r} does not support proj_size > 0 yet")
    if not hasattr(backend_impl, LOW_PRECISION_PACKERS[name]):
        raise ValueError(f"weight_dtype={name!r} runs on the 'c' and 'numpy' backends, not "
                         f"{backend_name!r}")
    return name


def check_size(value, name, minimum=1):
    """A size argument: an int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _fmt(shape):
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def to_numpy(a):
    """A NumPy view of an array-like (torch tensors detached and moved to the CPU)."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):   # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _shape_ok(actual, shape):
    if len(actual) != len(shape):
        return False
    for s, d in zip(shape, actual):
        if s is not None and s != d:
            return False
    return True


def as_array(a, name, dtype, shape=None, expected=None):
    """``a`` as a C-contiguous native array of ``dtype`` with ``shape``.

    ``shape`` entries may be None (any size). ``expected`` is a template for
    the expected shape in messages, filled with ``shape`` only on error, e.g.
    "(T, B, I={2})" or "(B, H) = ({}, {})"; without it the shape itself is shown.
    """
    # the common case, kept lean: already right (dtype is the canonical F32/F64)
    if type(a) is np.ndarray and a.dtype is dtype and (shape is None or a.shape == shape) \
            and a.flags.c_contiguous:
        return a
    return _convert(a, name, dtype, shape, expected)


def _convert(a, name, dtype, shape, expected):
    """``as_array`` for everything but the common case: convert, or raise."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} must be an array, got None")
        a = to_numpy(a)
    if a.dtype != dtype:
        kind = a.dtype.kind
        if kind in "biu":
            a = a.astype(dtype)
        elif kind == "f" and a.dtype.newbyteorder("=") == dtype:
            a = a.astype(dtype)          # same precision, other byte order
        else:
            raise TypeError(
                f"{name} must have dtype {dtype} (the dtype of the weights), got {a.dtype}; "
                f"convert it with .astype(np.{dtype})")
    if shape is not None and not _shape_ok(a.shape, shape):
        text = expected.format(*shape) if expected else _fmt(shape)
        raise ValueError(f"{name} must have shape {text}, got {_fmt(a.shape)}")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def weights(w_ih, w_hh, b_ih, b_hh, w_hr=None):
    """Validate the weights; returns (w_ih, w_hh, b, w_hr, dtype, I, H, R) with
    b = b_ih + b_hh or None, and R the width of h (the projection size P with w_hr,
    else H)."""
    if type(w_ih) is not np.ndarray:
        w_ih = to_numpy(w_ih)
    dtype = w_ih.dtype
    if dtype is not F32 and dtype is not F64:       # canonical singletons keep as_array lean
        native = dtype.newbyteorder("=")
        if native not in FLOAT_DTYPES:
            raise TypeError(f"w_ih must be float32 or float64, got {w_ih.dtype}")
        dtype = F32 if native == F32 else F64
    if w_ih.ndim != 2 or w_ih.shape[0] % 4 or w_ih.shape[0] == 0:
        raise ValueError(f"w_ih must have shape (4*H, I) with H >= 1, got {_fmt(w_ih.shape)}")
    H = w_ih.shape[0] // 4
    I = w_ih.shape[1]
    w_ih = as_array(w_ih, "w_ih", dtype)
    R = H
    if w_hr is not None:
        w_hr = as_array(w_hr, "w_hr", dtype)
        if w_hr.ndim != 2 or w_hr.shape[1] != H or not 0 < w_hr.shape[0] < H:
            raise ValueError(f"w_hr must have shape (P, H={H}) with 0 < P < H, got {_fmt(w_hr.shape)}")
        R = w_hr.shape[0]
    w_hh = as_array(w_hh, "w_hh", dtype, (4 * H, R),
                    "(4*H, H) = ({}, {})" if w_hr is None else "(4*H, P) = ({}, {})")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must both be given or both be None")
    b = None
    if b_ih is not None:
        b_ih = as_array(b_ih, "b_ih", dtype, (4 * H,), "(4*H,) = ({},)")
        b_hh = as_array(b_hh, "b_hh", dtype, (4 * H,), "(4*H,) = ({},)")
        b = b_ih + b_hh
    return w_ih, w_hh, b, w_hr, dtype, I, H, R


def check_clip(value, name):
    """A clip bound of the LSTM variants: None or 0 (off), else a finite number > 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be None or 0 (off) or a finite number > 0, got {value!r}")
    return float(value)


def check_rate(value, name):
    """A probability of the LSTM variants (recurrent_dropout, zoneout): a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_zoneout(value, proj_size):
    """zoneout of a layer or module: a number in [0, 1), 0 where there is a projection."""
    value = check_rate(value, "zoneout")
    if value and proj_size:
        raise ValueError("zoneout needs proj_size=0 (zoneout of a projected h is not "
                         "supported, as in haste)")
    return value


def check_layer_norm(layer_norm, proj_size, cifg):
    """layer_norm of a layer or module: not with a projection or coupled gates (haste's
    LayerNormLSTM has neither)."""
    if layer_norm and proj_size:
        raise ValueError("layer_norm needs proj_size=0 (haste's LayerNormLSTM has no "
                         "projection)")
    if layer_norm and cifg:
        raise ValueError("layer_norm does not combine with cifg=True (the layer norm of "
                         "three gates is not defined by haste's LayerNormLSTM)")


def check_forget_bias(value, bias, cifg):
    """forget_bias of a layer or module: None, or a finite number (float) where the layer has
    a bias and a forget gate."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"forget_bias must be None or a finite number, got {value!r}")
    if not bias:
        raise ValueError("forget_bias needs bias=True (it initialises bias_ih_l{k})")
    if cifg:
        raise ValueError("forget_bias: with cifg=True there is no forget gate (f = 1 - i)")
    return float(value)


def cifg_weights(w_ih, w_hh, b_ih, b_hh, w_hr=None):
    """``weights`` for coupled input and forget gates: (3H, .) rows i, g, o (H from w_hr's
    columns with a projection, else from w_hh's), handed on as the kernels' 4H rows (the f
    rows zero, ``_params.cifg_expand``)."""
    from ._params import cifg_expand
    w_hh = to_numpy(w_hh)
    H = to_numpy(w_hr).shape[-1] if w_hr is not None else (w_hh.shape[-1] if w_hh.ndim else 0)
    arrays = []
    for name, a in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        if a is not None:
            a = to_numpy(a)
            if a.ndim == 0 or a.shape[0] != 3 * H:
                raise ValueError(f"cifg=True: {name} must have 3*H = {3 * H} rows (gates i, g, o; "
                                 f"f = 1 - i), got shape {_fmt(a.shape)}")
            a = cifg_expand(a)
        arrays.append(a)
    return weights(*arrays, w_hr)


LAYER_NORM_BACKENDS = ("c", "numba", "numpy")


def layer_norm_backend(backend):
    """The backend of a layer-normalized LSTM (one of ``LAYER_NORM_BACKENDS``, all of them):
    "auto" (or None) picks what "auto" picks for the plain LSTM (the environment's
    ``LSTM_FAST_BACKEND`` included), except that it never picks "numba" (its kernels
    compile for about a minute on first use, so they are asked for by name): "numpy"
    instead. Any other name is returned as is. Returns the name to resolve."""
    if backend is None or backend == "auto":
        from . import backends
        name = backends.resolve("auto")
        return "numpy" if name == "numba" else name
    return backend


def layer_norm(dtype, H, ln_w_ih=None, ln_w_hh=None, ln_w_c=None, ln_b_c=None):
    """The layer-norm parameters of one layer-direction, all four or none: gains ln_w_ih,
    ln_w_hh (4H,) and ln_w_c (H,), bias ln_b_c (H,), as the (10H,) ``Variant.layer_norm``;
    None when none is given."""
    args = (("ln_w_ih", ln_w_ih, 4 * H), ("ln_w_hh", ln_w_hh, 4 * H), ("ln_w_c", ln_w_c, H),
            ("ln_b_c", ln_b_c, H))
    given = [a is not None for _, a, _ in args]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("the layer-norm parameters ln_w_ih, ln_w_hh, ln_w_c, ln_b_c must all "
                         "be given or all be None")
    return np.concatenate([as_array(a, name, dtype, (n,), "(" + ("4*H" if n == 4 * H else "H")
                                    + ",) = ({},)") for name, a, n in args])


def variant(dtype, H, w_ci=None, w_cf=None, w_co=None, clip=None, cell_clip=None, cifg=False,
            layer_norm=None):
    """The variants of one layer-direction (issue 15) as a ``backends.Variant``, or None when
    all are off: peephole weights w_ci, w_cf, w_co (H,) each, all three or none, stacked
    (3, H); clip and cell_clip bounds (see ``check_clip``); ``layer_norm`` the (10H,)
    parameters of the ``layer_norm`` function, or None."""
    from .backends import Variant
    clip, cell_clip = check_clip(clip, "clip"), check_clip(cell_clip, "cell_clip")
    given = [w is not None for w in (w_ci, w_cf, w_co)]
    if any(given) and not all(given):
        raise ValueError("the peephole weights w_ci, w_cf, w_co must all be given or all be None")
    peep = None
    if all(given):
        peep = np.stack([as_array(w, n, dtype, (H,), "(H,) = ({},)")
                         for w, n in ((w_ci, "w_ci"), (w_cf, "w_cf"), (w_co, "w_co"))])
    if peep is None and not clip and not cell_clip and not cifg and layer_norm is None:
        return None
    return Variant(peep, clip, cell_clip, bool(cifg), layer_norm)


def sequence(x, name, dtype, I):
    """x of shape (T, B, I)."""
    if type(x) is np.ndarray and x.dtype is dtype and x.ndim == 3 and x.shape[2] == I \
            and x.flags.c_contiguous:
        return x
    return _convert(x, name, dtype, (None, None, I), "(T, B, I={2})")


def state(s, name, dtype, B, H):
    """An initial state or state gradient of shape (B, H); None means zeros."""
    if s is None:
        return zeros((B, H), dtype)
    return as_array(s, name, dtype, (B, H), "(B, H) = ({}, {})")


_ZEROS = {}
_ZEROS_MAX_BYTES = 1 << 20


def empty_lines(shape, dtype):
    """An uninitialised C-contiguous array starting on a cache line (64 bytes): for the
    variants' parameter gradients (peephole (3, H), layer norm (10H,)), which the C
    kernel's threads update in place row after row, each its own columns; NumPy gives
    small arrays 16-byte alignment, and a line holding both threads' columns would go back
    and forth between the cores (as db did: the binding's own arrays start on a line)."""
    dtype = np.dtype(dtype)
    n = (shape if isinstance(shape, int) else math.prod(shape)) * dtype.itemsize
    raw = np.empty(n + 64, np.uint8)
    off = -raw.__array_interface__["data"][0] % 64
    return raw[off:off + n].view(dtype).reshape(shape)


def zeros(shape, dtype):
    """Read-only zeros for an input the kernels only read (a state or gradient given as
    None): small ones are shared between calls instead of allocated each time."""
    key = (shape, dtype)
    z = _ZEROS.get(key)
    if z is None:
        z = np.zeros(shape, dtype)
        if z.nbytes > _ZEROS_MAX_BYTES:
            return z
        if len(_ZEROS) >= 64:
            _ZEROS.clear()
        z.flags.writeable = False
        _ZEROS[key] = z
    return z


def lengths(value, B, T):
    """Per-sequence lengths: B integers in [0, T]; None means all T."""
    if value is None:
        return None
    a = to_numpy(value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {_fmt(a.shape)}")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got values from {a.min()} to {a.max()}")
    return a.astype(np.int64)


# --- the per-call checks of ``LSTM`` ---------------------------------------------------

_HX_NAMES = ("hx[0] (h0)", "hx[1] (c0)")
_HX_EXPECTED = "(num_layers*num_directions, B, H) = ({}, {}, {})"


def _ready(a, dtype, itemsize, d0, d1, d2):
    """True if ``a`` needs nothing: an ndarray of ``dtype`` with shape (d0, d1, d2) (-1: any)
    and C-contiguous strides (those of unit axes are free, as for NumPy's flag: ``h0[None]``
    has stride 0 there). False sends it to the general checks, which convert or raise."""
    if type(a) is not ndarray:
        return False
    arr = a
    if arr.ndim != 3 or arr.dtype is not dtype:
        return False
    shape, strides = arr.shape, arr.strides
    if (d0 >= 0 and shape[0] != d0) or (d1 >= 0 and shape[1] != d1) or shape[2] != d2:
        return False
    step = itemsize
    if shape[2] != 1 and strides[2] != step:
        return False
    step *= shape[2]
    if shape[1] != 1 and strides[1] != step:
        return False
    return shape[0] == 1 or strides[0] == step * shape[1]


class LayerInputs:
    """One ``LSTM``'s per-call state: the checks of its arguments and their memo (what is
    fixed for the layer: dtype, I, H, R = width of h, L*D states; the zero states of the last
    batch size), and what the route needs of the layer on every call: its backend
    (``impl``), packed weights (``packed``, one per layer-direction, None until packed), the
    parameter names (``names``) and the options fixed at construction. Compiled with Cython
    beside this file (see _validation.pxd), these are C fields: the route reads them without
    an attribute look-up on the layer. Arrays that need nothing pass in a few comparisons;
    anything else takes the general route (``as_array``), which converts or raises with
    the same messages.

    ``call_forward`` / ``call_backward`` run the backend on one layer-direction (the
    contract's ``forward`` / ``backward``, padded, without per-call masks) and leave the
    results in the slots ``y, h_n, c_n, gates, c`` / ``dx, dw_ih, dw_hh, db, db2, dh0, dc0,
    dw_hr`` (no tuples; the route takes and clears them). The C backend binds its direct
    entry points (``bind``: backends/_c.pyx ``bind_layer``): then they are C calls, and
    ``db2`` is the second bias gradient's array (a copy of db made there; None otherwise)."""

    def __init__(self, dtype, input_size, hidden_size, out_size, num_states):
        self.dtype = dtype
        self.itemsize = dtype.itemsize
        self.input_size, self.hidden_size, self.out_size = input_size, hidden_size, out_size
        self.num_states = num_states
        self.batch = -1
        self.zero_h = self.zero_c = None
        self.impl = self.packed = self.names = None
        self.recurrent_dropout = self.zoneout = 0.0
        self.layer_norm = self.peephole = self.cifg = False
        self.direct = False
        self.y = self.h_n = self.c_n = self.gates = self.c = None
        self.dx = self.dw_ih = self.dw_hh = self.db = self.db2 = self.dh0 = self.dc0 = None
        self.dw_hr = None

    def bind(self, impl):
        """Run on the backend module ``impl``: one that has ``bind_layer`` (the C backend)
        sets this object's direct entry points; any other is called through the contract."""
        self.impl = impl
        self.direct = False
        bind_layer = getattr(impl, "bind_layer", None)
        if bind_layer is not None:
            bind_layer(self)

    def call_forward(self, packed, x, h0, c0, num_threads, save, out):
        """``impl.forward(packed, x, h0, c0, num_threads, None, save, out)`` into the slots
        y, h_n, c_n, gates, c (a C call where the C backend is bound)."""
        if self.direct:
            return self.c_forward(self, packed, x, h0, c0, num_threads, save, out)
        self.y, self.h_n, self.c_n, self.gates, self.c = self.impl.forward(
            packed, x, h0, c0, num_threads, None, save, out)
        return 0

    def call_backward(self, packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads):
        """``impl.backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads)`` into
        the slots dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr (and db2, the second bias gradient,
        where the C backend is bound; else None)."""
        if self.direct:
            return self.c_backward(self, packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n,
                                   num_threads)
        self.dx, self.dw_ih, self.dw_hh, self.db, self.dh0, self.dc0, self.dw_hr = \
            self.impl.backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads)
        self.db2 = None
        return 0

    def c_order(self, a):
        """Whether ``a``, an array (T, B, R) of the layer's dtype, is C-contiguous (from its
        shape and strides where compiled; False for anything else, which the caller then
        copies)."""
        return _ready(a, self.dtype, self.itemsize, -1, -1, self.out_size)

    def zeros(self, B):
        """Read-only zero states (L*D, B, R), (L*D, B, H), kept for the last B."""
        self._batch(B)
        return self.zero_h, self.zero_c

    def _batch(self, B):
        """``zero_h``, ``zero_c``: the zero states for B rows (``zeros`` without its tuple)."""
        if B != self.batch:
            n, dtype = self.num_states, self.dtype
            self.zero_h = zeros((n, B, self.out_size), dtype)
            self.zero_c = zeros((n, B, self.hidden_size), dtype)
            self.batch = B
        return 0

    def threads(self, T, B):
        """Threads for a call of T steps of B rows of this layer (`threads_for`)."""
        return threads_for(T, B, self.input_size, self.hidden_size)

    def forward(self, x, hx, batch_first):
        """``(x, h0, c0, unbatched)``: x as a C-contiguous (T, B, I) array of the layer's
        dtype ((B, T, I) transposed if ``batch_first``; (T, I) gets B = 1, unbatched),
        h0 (L*D, B, R) and c0 (L*D, B, H) from hx (None: zeros)."""
        dtype, n = self.dtype, self.itemsize
        if not batch_first and _ready(x, dtype, n, -1, -1, self.input_size):
            xa = x
            B = xa.shape[1]
            if hx is None:
                self._batch(B)
                return x, self.zero_h, self.zero_c, False
            if type(hx) is tuple and len(hx) == 2:
                h0, c0 = hx
                if _ready(h0, dtype, n, self.num_states, B, self.out_size) \
                        and _ready(c0, dtype, n, self.num_states, B, self.hidden_size):
                    return x, h0, c0, False
            h0, c0 = self._states(hx, B, False)
            return x, h0, c0, False
        x, unbatched = self._sequence(x, batch_first)
        h0, c0 = self._states(hx, x.shape[1], unbatched)
        return x, h0, c0, unbatched

    def _sequence(self, x, batch_first):
        if type(x) is not ndarray:
            x = to_numpy(x)
        if x.ndim == 3:
            if batch_first:
                x = x.transpose(1, 0, 2)
            return sequence(x, "x", self.dtype, self.input_size), False
        if x.ndim == 2:
            return sequence(x[:, None, :], "x", self.dtype, self.input_size), True
        raise ValueError(
            f"x must be 3-D {'(B, T, I)' if batch_first else '(T, B, I)'} or 2-D (T, I) "
            f"with I={self.input_size}, got shape {x.shape}")

    def _states(self, hx, B, unbatched):
        zh, zc = self.zeros(B)
        if hx is None:
            return zh, zc
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h0, c0)")
        dtype = self.dtype
        if unbatched:
            return tuple(as_array(s, name, dtype, z.shape[::2],
                                  "(num_layers*num_directions, H) = ({}, {})")[:, None]
                         for s, name, z in zip(hx, _HX_NAMES, (zh, zc)))
        return (as_array(hx[0], _HX_NAMES[0], dtype, zh.shape, _HX_EXPECTED),
                as_array(hx[1], _HX_NAMES[1], dtype, zc.shape, _HX_EXPECTED))

    def backward(self, g, grad_hx, shape, unbatched, batch_first):
        """``(dout, dh_n, dc_n)`` for ``LSTM.backward``: grad_output as (T, B, D*R) = ``shape``
        (None: zeros), grad_hx (grad_h_n, grad_c_n) as (L*D, B, R), (L*D, B, H) (None: zeros)."""
        dtype, n = self.dtype, self.itemsize
        B = shape[1]
        self._batch(B)
        zh = self.zero_h
        zc = self.zero_c
        if g is None:
            dout = zeros(shape, dtype)
        elif not unbatched and not batch_first and _ready(g, dtype, n, shape[0], B, shape[2]):
            dout = g
        elif unbatched:
            dout = as_array(g, "grad_output", dtype, shape[::2])[:, None]
        elif batch_first:
            dout = as_array(g, "grad_output", dtype, (B, shape[0], shape[2])).transpose(1, 0, 2)
        else:
            dout = as_array(g, "grad_output", dtype, shape)
        if grad_hx is None:
            return dout, zh, zc
        return (dout,) + self._grad_states(grad_hx, zh, zc, unbatched)

    def _grad_states(self, grad_hx, zh, zc, unbatched):
        if not isinstance(grad_hx, (tuple, list)) or len(grad_hx) != 2:
            raise TypeError("grad_hx must be a tuple (grad_h_n, grad_c_n)")
        return tuple(as_array(s, f"grad_hx[{k}]", self.dtype,
                              z.shape[::2] if unbatched else z.shape).reshape(z.shape)
                     for k, (s, z) in enumerate(zip(grad_hx, (zh, zc))))


# --- threads -------------------------------------------------------------------------
# The thread setting and the one automatic rule (``lstm_fast.backends`` re-exports them):
# every call of every backend asks for its count, so the rule is compiled here with the
# other per-call work.

def _usable_cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


CPUS = _usable_cpus()
_cpus = CPUS           # (C ints in _validation.pxd: read on every call)
_num_threads = 0


def set_num_threads(n):
    """Threads used by the kernels: a positive count, or 0/None to choose per shape.

    The result does not depend on this setting: every backend gives the same bits for
    any thread count. A count above the CPUs this process may use is capped there.
    The setting is process-wide.

    Parameters
    ----------
    n : int or None
        Threads per call (>= 1), or 0/None for the per-shape rule (`threads_for`).

    Raises
    ------
    ValueError
        n negative or not an int.

    Examples
    --------
    >>> lstm_fast.set_num_threads(1)
    >>> lstm_fast.get_num_threads()
    1
    >>> lstm_fast.set_num_threads(0)          # back to the default: chosen per shape
    """
    global _num_threads
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"num_threads must be a non-negative int or None, got {n!r}")
    _num_threads = n


def get_num_threads():
    """The thread setting made with `set_num_threads`.

    Returns
    -------
    int
        The count set, or 0: chosen per shape (the default).

    Examples
    --------
    >>> lstm_fast.get_num_threads()
    0
    """
    return _num_threads


def threads_for(T, B, I, H):
    """Threads for one call of T steps of B rows (the one automatic rule, every backend).

    Parameters
    ----------
    T, B, I, H : int
        Steps, sequences, input size and hidden size of the call.

    Returns
    -------
    int
        The thread count to use, >= 1.

    Notes
    -----
    An explicit setting is honoured (capped at the usable CPUs). Otherwise a second
    thread only where it pays: every step ends in a synchronisation, and on 2-core
    machines a second thread won once a step does ~1e6 multiply-adds (B*4H*H; Intel
    Xeon, threads shared with torch's OpenMP team: 1.6-1.7x forward, 1.4x training at
    1.05e6, 1.85x at 2.1e6) and the call ~1e8 (a job wakes the other thread), and lost
    below; and not while the C kernel's pool reports that its recent 2-thread jobs mostly
    waited (another process holds the other core).

    Examples
    --------
    >>> from lstm_fast.backends import threads_for
    >>> threads_for(T=6, B=32, I=3, H=32)       # a small step: one thread
    1
    """
    n = _num_threads
    if n:
        return n if n < _cpus else _cpus
    if _cpus < 2 or B * 4 * H * H < 1.0e6 or T * B * 4 * H * (H + I) < 1.0e8:
        return 1
    c = sys.modules.get("lstm_fast.backends._c")    # the C backend, if it was loaded
    if c is not None and c.pool_contended():
        return 1
    return 2
