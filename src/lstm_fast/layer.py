"""``LSTM``: a multi-layer, optionally bidirectional LSTM with torch.nn.LSTM's conventions.

Parameters live in a dict keyed by torch's names (``weight_ih_l0``,
``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``) and are
exposed read-only: backends keep weights packed in their own layout between
calls, and a packed copy must never be used after the weights changed. Every
route that changes weights (``load_state_dict``, ``set_parameter``, the
``unlocked_parameters()`` context) drops the packed copies; writing into an
exposed array outside those routes raises numpy's read-only error.
"""

import contextlib
import math
import warnings

import numpy as np

from . import _validation, backends
from .functional import _backward_direction, _forward_direction, make_plan, pack_weights


class LSTM:
    """Multi-layer LSTM over NumPy arrays, numerically equal to torch.nn.LSTM.

    ``layer(x, hx=None)`` returns ``(output, (h_n, c_n))``: x is (T, B, I)
    ((B, T, I) if ``batch_first``, (T, I) unbatched); output (T, B, D*H);
    h_n, c_n (num_layers*D, B, H) with D = 2 if bidirectional else 1.
    ``layer.backward(grad_output, grad_hx=None)`` returns
    ``(grad_x, (grad_h0, grad_c0))`` for the last forward call and stores the
    parameter gradients in ``layer.grads`` under the ``state_dict()`` names
    (overwritten by each backward call, not accumulated).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
                 backend="auto", seed=None):
        self.input_size = _validation.check_size(input_size, "input_size")
        self.hidden_size = _validation.check_size(hidden_size, "hidden_size")
        self.num_layers = _validation.check_size(num_layers, "num_layers")
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.bidirectional = _check_bool(bidirectional, "bidirectional")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0.0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={self.dropout} and num_layers=1", UserWarning, stacklevel=2)
        self.proj_size = _validation.check_size(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size={self.hidden_size}, "
                             f"got {self.proj_size}")
        self.dtype = _validation.check_dtype(dtype)
        self.backend = backend
        self.training = True
        self.grads = {}
        self._cache = None
        self._params = {}
        rng = np.random.default_rng(seed)
        # dropout masks: a stream of their own, reproducible from the same seed
        self._dropout_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in self._param_shapes():
            arr = rng.uniform(-k, k, size=shape).astype(self.dtype)
            arr.flags.writeable = False
            self._params[name] = arr

    # --- structure -------------------------------------------------------

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def backend(self):
        """The backend this layer runs on (resolved from "auto" at assignment)."""
        return self._backend

    @backend.setter
    def backend(self, name):
        self._backend = backends.resolve(name)
        self._requested_backend = name
        self._packed = {}
        # The C backend's one-call path for a single layer and direction (see forward).
        impl = backends.get("c") if self._backend == "c" else None
        self._fast = (impl.layer_forward, impl.layer_backward) \
            if hasattr(impl, "layer_forward") else None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = {}        # packed weights are rebuilt, not pickled
        state["_cache"] = None
        state.pop("_fast", None)     # set again by the backend setter in __setstate__
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for arr in self._params.values():
            arr.flags.writeable = False
        self.backend = self._requested_backend   # "auto" resolves on the new machine

    @property
    def _out_size(self):
        """Columns of h per direction: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _param_shapes(self):
        H, P, D = self.hidden_size, self._out_size, self.num_directions
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else P * D
            for d in range(D):
                sfx = self._suffix(layer, d)
                yield "weight_ih" + sfx, (4 * H, I)
                yield "weight_hh" + sfx, (4 * H, P)
                if self.bias:
                    yield "bias_ih" + sfx, (4 * H,)
                    yield "bias_hh" + sfx, (4 * H,)
                if self.proj_size:
                    yield "weight_hr" + sfx, (P, H)

    @staticmethod
    def _suffix(layer, d):
        return f"_l{layer}" + ("_reverse" if d else "")

    # --- parameters ------------------------------------------------------

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def named_parameters(self):
        """(name, array) pairs in torch's order; the arrays are read-only views."""
        return list(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def state_dict(self):
        """Copies of the parameters under torch's names."""
        return {name: arr.copy() for name, arr in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters (NumPy arrays or torch tensors) by torch's names."""
        missing = [n for n in self._params if n not in state_dict]
        unexpected = [n for n in state_dict if n not in self._params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the layer: missing {missing}, unexpected {unexpected}")
        new = {}
        for name, arr in self._params.items():
            if name in state_dict:
                new[name] = self._checked_param(name, state_dict[name])
        for name, value in new.items():
            self._params[name] = value
        self._packed = {}

    def set_parameter(self, name, value):
        """Replace one parameter (copied, cast to the layer's dtype)."""
        if name not in self._params:
            raise KeyError(f"no parameter named {name!r}; parameters are {list(self._params)}")
        self._params[name] = self._checked_param(name, value)
        self._packed = {}

    @contextlib.contextmanager
    def unlocked_parameters(self):
        """Context in which the parameter arrays are writable, e.g. for an optimizer step::

            with layer.unlocked_parameters() as params:
                for name, g in layer.grads.items():
                    params[name] -= lr * g

        Packed copies are dropped on exit, so the next call sees the new values.
        """
        for arr in self._params.values():
            arr.flags.writeable = True
        try:
            yield self._params
        finally:
            for arr in self._params.values():
                arr.flags.writeable = False
            self._packed = {}

    def _checked_param(self, name, value):
        shape = self._params[name].shape
        value = _validation._to_numpy(value)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real array, got dtype {value.dtype}")
        arr = np.array(value, dtype=self.dtype, order="C", copy=True)
        arr.flags.writeable = False
        return arr

    def _weights(self, layer, d):
        key = (layer, d)
        packed = self._packed.get(key)
        if packed is None:
            sfx = self._suffix(layer, d)
            p = self._params
            b = p["bias_ih" + sfx] + p["bias_hh" + sfx] if self.bias else None
            packed = pack_weights(backends.get(self._backend), self._backend, p["weight_ih" + sfx],
                                  p["weight_hh" + sfx], b, p.get("weight_hr" + sfx))
            self._packed[key] = packed
        return packed

    # --- modes -----------------------------------------------------------

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- forward / backward ----------------------------------------------

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """``(output, (h_n, c_n))`` for x; ``lengths`` (B,) in any order gives each
        sequence's valid steps: h_n, c_n come from each sequence's own last valid
        step (the reverse direction starts there), padded outputs are zero."""
        fast = self._fast
        if (fast is not None and lengths is None and self.num_layers == 1
                and not self.bidirectional and not self.batch_first):
            # One call into the C backend when x and hx need no conversion; it
            # returns None for anything else (the general path below converts
            # or raises).
            packed = self._packed.get((0, 0))
            if packed is None:
                try:
                    packed = self._weights(0, 0)
                except Exception:       # raised again by the general path, after x's checks
                    packed = None
            if packed is not None:
                r = fast[0](packed, x, hx, backends.get_num_threads())
                if r is not None:
                    self._cache = r[1]      # (packed, saved)
                    return r[0]
        dtype, H, D, L = self.dtype, self.hidden_size, self.num_directions, self.num_layers
        P = self._out_size
        x = _validation._to_numpy(x) if type(x) is not np.ndarray else x
        if x.ndim not in (2, 3):
            raise ValueError(
                f"x must be 3-D {'(B, T, I)' if self.batch_first else '(T, B, I)'} or 2-D (T, I) "
                f"with I={self.input_size}, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        x = _validation.sequence(x, "x", dtype, self.input_size)
        T, B, _ = x.shape
        plan = make_plan(_validation.lengths(lengths, B, T), T, B)
        h0, c0 = self._initial_state(hx, B, unbatched)
        impl = backends.get(self._backend)
        nthreads = backends.get_num_threads()
        h_n = np.empty((L * D, B, P), dtype)
        c_n = np.empty((L * D, B, H), dtype)
        caches = []
        masks = []
        inp = x
        for layer in range(L):
            if layer and self.training and self.dropout > 0.0:
                masks.append(self._dropout_mask(inp.shape))
                inp = inp * masks[-1]
            outs = []
            for d in range(D):
                idx = layer * D + d
                packed = self._weights(layer, d)
                y, h_n[idx], c_n[idx], saved = _forward_direction(
                    impl, packed, inp, h0[idx], c0[idx], nthreads, plan, reverse=d == 1)
                caches.append((packed, saved))
                outs.append(y)
            inp = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        self._cache = (caches, masks, T, B, unbatched, plan)
        out = inp
        if unbatched:
            return out[:, 0], (h_n[:, 0], c_n[:, 0])
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, (h_n, c_n)

    def _dropout_mask(self, shape):
        """Inverted dropout as in torch: keep with probability 1-p, scale by 1/(1-p)."""
        p = self.dropout
        if p >= 1.0:
            return np.zeros(shape, self.dtype)
        keep = self._dropout_rng.random(shape) >= p
        return keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p))

    def _initial_state(self, hx, B, unbatched):
        n, dtype = self.num_layers * self.num_directions, self.dtype
        if hx is None:
            return np.zeros((n, B, self._out_size), dtype), np.zeros((n, B, self.hidden_size), dtype)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h0, c0)")
        out = []
        for name, s, H in zip(("h0", "c0"), hx, (self._out_size, self.hidden_size)):
            if unbatched:
                s = _validation.as_array(s, f"hx[{len(out)}] ({name})", dtype, (n, H),
                                         "(num_layers*num_directions, H) = ({}, {})")[:, None]
            else:
                s = _validation.as_array(s, f"hx[{len(out)}] ({name})", dtype, (n, B, H),
                                         "(num_layers*num_directions, B, H) = ({}, {}, {})")
            out.append(s)
        return out

    def backward(self, grad_output=None, grad_hx=None):
        """Gradients for the last forward call.

        ``grad_output`` has the shape of ``output`` (None = zeros); ``grad_hx`` is
        ``(grad_h_n, grad_c_n)`` shaped like ``(h_n, c_n)``, or None. Returns
        ``(grad_x, (grad_h0, grad_c0))`` shaped like ``x`` and ``hx``.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() called before a forward call")
        if len(cache) == 2:
            # From forward's one-call path: one layer, one direction, time-major.
            fast = self._fast
            if fast is not None and not self.batch_first:
                r = fast[1](cache, grad_output, grad_hx, backends.get_num_threads())
                if r is not None:
                    self.grads = r[1]       # the names and order of _params
                    return r[0]
            packed, saved = cache
            x, h0, c0 = saved[:3]
            if h0 is None:          # hx was None
                h0 = np.zeros((x.shape[1], self._out_size), self.dtype)
                c0 = np.zeros((x.shape[1], self.hidden_size), self.dtype)
            saved = (x, h0.reshape(h0.shape[-2:]), c0.reshape(c0.shape[-2:])) + saved[3:]
            cache = ([(packed, saved)], [], x.shape[0], x.shape[1], False, None)
        caches, masks, T, B, unbatched, plan = cache
        dtype, H, D, L = self.dtype, self.hidden_size, self.num_directions, self.num_layers
        P = self._out_size
        n = L * D
        out_shape = (T, B, D * P)
        if grad_output is None:
            dout = np.zeros(out_shape, dtype)
        else:
            g = _validation._to_numpy(grad_output)
            if unbatched:
                g = _validation.as_array(g, "grad_output", dtype, (T, D * P))[:, None]
            elif self.batch_first:
                g = _validation.as_array(g, "grad_output", dtype, (B, T, D * P)).transpose(1, 0, 2)
            else:
                g = _validation.as_array(g, "grad_output", dtype, out_shape)
            dout = g
        if grad_hx is None:
            dh_n, dc_n = np.zeros((n, B, P), dtype), np.zeros((n, B, H), dtype)
        else:
            if not isinstance(grad_hx, (tuple, list)) or len(grad_hx) != 2:
                raise TypeError("grad_hx must be a tuple (grad_h_n, grad_c_n)")
            dh_n, dc_n = (_validation.as_array(s, f"grad_hx[{k}]", dtype,
                                               (n, C) if unbatched else (n, B, C)).reshape(n, B, C)
                          for k, (s, C) in enumerate(zip(grad_hx, (P, H))))
        impl = backends.get(self._backend)
        nthreads = backends.get_num_threads()
        dh0 = np.empty((n, B, P), dtype)
        dc0 = np.empty((n, B, H), dtype)
        grads = {}
        for layer in reversed(range(L)):
            dinp = None
            for d in range(D):
                idx = layer * D + d
                packed, saved = caches[idx]
                dy = dout[:, :, d * P:(d + 1) * P] if D == 2 else dout
                dx, dw_ih, dw_hh, db, dh0[idx], dc0[idx], dw_hr = _backward_direction(
                    impl, packed, saved, dy, dh_n[idx], dc_n[idx], nthreads, plan, reverse=d == 1)
                sfx = self._suffix(layer, d)
                grads["weight_ih" + sfx] = dw_ih
                grads["weight_hh" + sfx] = dw_hh
                if self.bias:
                    grads["bias_ih" + sfx] = db
                    grads["bias_hh" + sfx] = db.copy()
                if self.proj_size:
                    grads["weight_hr" + sfx] = dw_hr
                dinp = dx if dinp is None else dinp + dx
            dout = dinp * masks[layer - 1] if layer and masks else dinp
        self.grads = {name: grads[name] for name in self._params}
        dx = dout
        if unbatched:
            return dx[:, 0], (dh0[:, 0], dc0[:, 0])
        if self.batch_first:
            dx = dx.transpose(1, 0, 2)
        return dx, (dh0, dc0)

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, default in
                        (("num_layers", 1), ("bias", True), ("batch_first", False),
                         ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0))
                        if getattr(self, k) != default)
        return (f"LSTM({self.input_size}, {self.hidden_size}{extra}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)
