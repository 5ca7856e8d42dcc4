"""``LSTM``: a multi-layer, optionally bidirectional LSTM with torch.nn.LSTM's conventions.

Parameters live in a dict keyed by torch's names (``_params``) and are exposed
read-only: backends keep weights packed in their own layout between calls, and a
packed copy must never be used after the weights changed. Every route that changes
weights (``load_state_dict``, ``set_parameter``, the ``unlocked_parameters()``
context) drops the packed copies; writing into an exposed array outside those routes
raises numpy's read-only error.

One route for every configuration: validate once, then per layer and direction one
``run_forward`` (backward: ``run_backward``) on the backend's packed weights; the cache is
a list of ``LSTMCache``, one per layer and direction. ``forward`` (also ``layer(...)``) and
``backward`` are those of ``_route.LayerBase``, the class's base, whose bodies are
``_route.layer_forward`` and ``layer_backward`` (compiled with Cython: at tiny shapes a call
is mostly Python-level work, see benchmarks/README.md "Per-call cost, counted").
"""

import contextlib
import copy
import math
import warnings

import numpy as np

from . import _params, _philox, _route, _validation, backends

_FULL_PRECISION = _route.FULL_PRECISION
_inference_only = _route.inference_only


class LSTM(_route.LayerBase):
    """Multi-layer LSTM over NumPy arrays, numerically equal to torch.nn.LSTM.

    ``layer(x, hx=None, lengths=None)`` returns ``(output, (h_n, c_n))``: x is
    (T, B, I) ((B, T, I) if ``batch_first``, (T, I) unbatched); output (T, B, D*R);
    h_n (num_layers*D, B, R), c_n (num_layers*D, B, H) with D = 2 if bidirectional
    else 1 and R = proj_size or hidden_size.
    ``layer.backward(grad_output, grad_hx=None)`` returns ``(grad_x, (grad_h0, grad_c0))``
    for the last forward call and stores the parameter gradients in ``layer.grads``
    under the ``state_dict()`` names (overwritten by each backward call, not
    accumulated). A forward call in eval mode (``layer.eval()``) keeps nothing for
    backward unless called with ``save=True``; ``save=False`` keeps nothing in training
    mode either (inference without the memory of the saved activations).

    Parameters are read-only arrays: change them through `load_state_dict`,
    `set_parameter` or `unlocked_parameters`, which drop the backend's packed copy.

    Parameters
    ----------
    input_size : int
        I, the features of x.
    hidden_size : int
        H, the features of the cell state (and of h without a projection).
    num_layers : int, optional
        Stacked layers; layer k > 0 reads layer k-1's output.
    bias : bool, optional
        Whether there are bias_ih_l{k} and bias_hh_l{k}.
    batch_first : bool, optional
        x and output are (B, T, .) instead of (T, B, .); states are not affected.
    dropout : float, optional
        Inter-layer inverted dropout probability, in training mode only, as torch.
    bidirectional : bool, optional
        A second direction reading the sequence backwards (D = 2).
    proj_size : int, optional
        P > 0: an LSTM with projections (torch's weight_hr_l{k}, R = P < H).
    dtype : numpy dtype, keyword-only
        float32 (default) or float64; the parameters' and the computation's type.
    backend : {"auto", "c", "numba", "numpy"}, keyword-only
        The implementation; "auto" is the first available of c, numba, numpy
        (with ``layer_norm``: the same, but never numba: numpy instead).
    seed : int or None, keyword-only
        Seed of the initial weights (uniform in +-1/sqrt(H), as torch) and of
        the dropout masks (dropout, ``recurrent_dropout``, ``zoneout``): each mask is
        Philox4x32-10 (the counter-based generator of Random123 and cuRAND) under a key
        drawn from the layer's dropout stream at each call (``lstm_fast._philox``).
    peephole : bool, keyword-only
        Peephole connections (Gers & Schmidhuber 2000; ONNX's ``P``, TensorFlow's
        ``use_peepholes``): per layer-direction the parameters ``weight_ci_l{k}``,
        ``weight_cf_l{k}``, ``weight_co_l{k}`` (H,) each (``_reverse`` for the second
        direction; initialised like the others, drawn after them), with
        ``i = sigmoid(W_ii x + b_ii + W_hi h + b_hi + w_ci * c_{t-1})``,
        ``f = sigmoid(... + w_cf * c_{t-1})`` and ``o = sigmoid(... + w_co * c_t)``.
        Off by default: the parameters then do not exist.
    clip : float or None, keyword-only
        > 0: every gate pre-activation (peephole term included) is clamped to
        [-clip, clip] before its activation (ONNX LSTM's ``clip``); zero gradient
        where clamped. None (default): off.
    cell_clip : float or None, keyword-only
        > 0: the cell state c_t is clamped to [-cell_clip, cell_clip] after each
        update (the clamped value is carried and returned; TensorFlow's
        ``cell_clip``); zero gradient where clamped. None (default): off.
    recurrent_dropout : float, keyword-only
        Recurrent (variational) dropout probability p in [0, 1) (Gal & Ghahramani
        2016; Keras' ``recurrent_dropout``), training mode only: each forward call
        draws per layer-direction one inverted-dropout mask m (B, R) (0 or 1/(1-p),
        from the layer's dropout stream, `seed`), used at every step on h_{t-1} in
        the recurrent product only: ``W_hh (h_{t-1} * m)``; h_t itself (output,
        h_n) is not masked. 0 (default): off. See ``lstm_forward``'s ``rdrop``.
    zoneout : float, keyword-only
        Zoneout on h (Krueger et al. 2017), as haste's ``ZoneoutLSTM``
        (lmnt-com/haste, lib/lstm_forward_gpu.cu.cc), probability z in [0, 1): with
        h~_t = o * tanh(c_t), training ``h_t = h_{t-1} + m_t * (h~_t - h_{t-1})`` with a
        new Bernoulli mask m_t (1 with probability 1 - z: the unit takes its new value)
        at every step and sequence, drawn per layer-direction and call from the
        dropout stream (`seed`); eval ``h_t = z * h_{t-1} + (1 - z) * h~_t`` (the
        expectation; computed as m_t = 1 - z in the same formula). No projection.
        0 (default): off. See ``lstm_forward``'s ``zoneout``.
    cifg : bool, keyword-only
        Coupled input and forget gates (ONNX's ``input_forget``, as ONNX Runtime
        computes it): ``f = 1 - i``; ``weight_ih_l{k}``, ``weight_hh_l{k}`` and the
        biases then have 3H rows, gates i, g, o (``weight_cf_l{k}``, with
        peepholes, is unused: zero gradient).
    layer_norm : bool, keyword-only
        The layer-normalized LSTM of haste's ``LayerNormLSTM`` (lmnt-com/haste,
        frameworks/pytorch/layer_norm_lstm.py): per layer-direction the parameters
        ``layer_norm_weight_ih_l{k}`` and ``layer_norm_weight_hh_l{k}`` (4H,), the
        gains of the layer norms of the input and the recurrent products, and
        ``layer_norm_weight_c_l{k}``, ``layer_norm_bias_c_l{k}`` (H,), the gain and
        bias of the layer norm of c_t (``_reverse`` for the second direction;
        initialised to ones and zeros, after the others in the state_dict), with
        ``LN(z) = (z - mean) / sqrt(var + 1e-5)`` over the row:
        ``a = LN(W_ih x) * layer_norm_weight_ih + LN(W_hh h) * layer_norm_weight_hh
        + b_ih + b_hh`` (gates i, f, g, o), c_t carried un-normalized,
        ``h_t = o * tanh(LN(c_t) * layer_norm_weight_c + layer_norm_bias_c)``.
        Combines with the other variants, recurrent dropout and zoneout; not with
        proj_size or cifg. Runs on every backend ("auto" picks c where it is
        available, else numpy: never numba, whose kernels compile on first use). Equations in
        ``lstm_fast.backends.reference``.
    forget_bias : float or None, keyword-only
        Initialise the forget-gate part of every ``bias_ih_l{k}`` to this value and
        that of ``bias_hh_l{k}`` to 0 (Keras' ``unit_forget_bias``: 1.0), at
        construction only; needs ``bias=True``. None (default): torch's initialisation.
    weight_dtype : {None, "float32", "float64", "bfloat16", "int8", "int8_dynamic"}, keyword-only
        Precision of the weights in the products; None (default) is `dtype`.
        "bfloat16" (dtype float32, no projection, backends "c" and "numpy"): a
        layer (made in eval mode) whose w_ih and w_hh are rounded to bfloat16 when
        packed, as are x and h for the products, which accumulate in float32; bias,
        cell state, activations, inputs and outputs stay float32, and the parameters
        stay the float32 masters (``state_dict``). ``train()`` makes it a
        mixed-precision training layer on the backends ``backends.BF16_TRAINING``
        ("c" and "numpy"): the same forward, what is kept for backward (gates, cell
        states) rounded to bfloat16 (on "c" stored as bfloat16: half the bytes of
        float32 training's),
        bfloat16 products in backward too (the gate gradients, weights, x and h
        rounded), float32 accumulation, float32 gradients of the float32 masters
        (``grads``), which the optimizer updates; no recurrent_dropout. The exact
        arithmetic: ``lstm_fast.backends.reference`` (lstm_backward_bf16). "int8"
        (the same conditions): w_ih and w_hh quantized to
        int8 when packed, with a symmetric float32 scale per gate row of each; x and
        h stay float32 (weight-only: the int8 values are widened back to float32 for
        float32 products, scaled per row). "int8_dynamic" (the same conditions): the
        same int8 weights, and x_t and h_{t-1} quantized per row per step with a
        symmetric scale, products summed exactly in int32 (AMX's tdpbusd where the CPU
        has AMX-INT8, else vpdpbusd where it has AVX512-VNNI or AVX-VNNI; the same
        sums), dequantized per row and gate row. See `quantize` and
        the guide for the exact arithmetic and its error.

    Attributes
    ----------
    grads : dict of str to numpy.ndarray
        Parameter gradients of the last `backward` call, by `state_dict` name.
    training : bool
        Training mode (`train`, the default) or eval mode (`eval`).
    backend : str
        The backend in use, resolved from "auto"; assigning a name switches.
    num_directions : int
        2 if bidirectional, else 1.

    Raises
    ------
    ValueError
        A size that is not a positive int, dropout outside [0, 1], proj_size >= H,
        layer_norm with proj_size or cifg,
        a negative or non-finite clip, cell_clip or forget_bias, forget_bias without
        a bias, an unknown weight_dtype (the options are named) or one the layer
        cannot use.
    TypeError
        A flag that is not a bool, a dtype other than float32/float64.

    See Also
    --------
    lstm_fast.torch.LSTM : the same layer as a ``torch.nn.Module``.
    Stream : one step at a time with this layer's weights.

    Examples
    --------
    >>> layer = lstm_fast.LSTM(3, 8, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)  # (B, T, I)
    >>> out, (h_n, c_n) = layer(x)
    >>> out.shape, h_n.shape, c_n.shape
    ((4, 6, 16), (4, 4, 8), (4, 4, 8))
    >>> dx, (dh0, dc0) = layer.backward(np.ones_like(out))
    >>> dx.shape, layer.grads["weight_hh_l1_reverse"].shape
    ((4, 6, 3), (32, 8))

    An optimizer step on the layer's parameters:

    >>> opt = lstm_fast.optim.Adam(lr=1e-2)
    >>> with layer.unlocked_parameters() as params:
    ...     opt.step(params, layer.grads)

    Peepholes, clipping and a forget-gate bias of 1:

    >>> layer = lstm_fast.LSTM(3, 8, peephole=True, clip=3.0, cell_clip=10.0, forget_bias=1.0)
    >>> [n for n in layer.state_dict() if n.startswith("weight_c")]
    ['weight_ci_l0', 'weight_cf_l0', 'weight_co_l0']
    >>> out, _ = layer(np.ones((4, 2, 3), np.float32))
    >>> _ = layer.backward(np.ones_like(out))
    >>> layer.grads["weight_co_l0"].shape
    (8,)

    Layer normalization (haste's LayerNormLSTM; every backend):

    >>> layer = lstm_fast.LSTM(3, 8, layer_norm=True, zoneout=0.1, recurrent_dropout=0.2,
    ...                        backend="numpy")
    >>> layer.backend, [n for n in layer.state_dict() if n.startswith("layer_norm")]
    ('numpy', ['layer_norm_weight_ih_l0', 'layer_norm_weight_hh_l0', 'layer_norm_weight_c_l0', 'layer_norm_bias_c_l0'])
    >>> out, _ = layer(np.ones((4, 2, 3), np.float32))
    >>> _ = layer.backward(np.ones_like(out))
    >>> layer.grads["layer_norm_weight_ih_l0"].shape, layer.grads["layer_norm_bias_c_l0"].shape
    ((32,), (8,))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
                 backend="auto", seed=None, peephole=False, clip=None, cell_clip=None,
                 cifg=False, forget_bias=None, weight_dtype=None, recurrent_dropout=0.0,
                 zoneout=0.0, layer_norm=False):
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
        self.weight_dtype = self.dtype.name
        self.peephole = _check_bool(peephole, "peephole")
        self.clip = _validation.check_clip(clip, "clip")
        self.cell_clip = _validation.check_clip(cell_clip, "cell_clip")
        self.cifg = _check_bool(cifg, "cifg")
        self.recurrent_dropout = _validation.check_rate(recurrent_dropout, "recurrent_dropout")
        self.zoneout = _validation.check_zoneout(zoneout, self.proj_size)
        self.layer_norm = _check_bool(layer_norm, "layer_norm")
        _validation.check_layer_norm(self.layer_norm, self.proj_size, self.cifg)
        self.forget_bias = _validation.check_forget_bias(forget_bias, self.bias, self.cifg)
        self.training = True
        self.grads = {}
        self._cache = None
        # the parameter names of each layer-direction k = layer * D + d
        self._names = [_params.direction_names(layer, d, self.bias, self.proj_size, self.peephole,
                                               self.layer_norm)
                       for layer in range(self.num_layers) for d in range(self.num_directions)]
        self._make_inputs()
        self.backend = backend
        rng = np.random.default_rng(seed)
        # dropout masks: a stream of their own, reproducible from the same seed
        self._dropout_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        k = 1.0 / math.sqrt(self.hidden_size)
        self._params = {}
        for name, shape in _params.shapes(self.input_size, self.hidden_size, self.num_layers,
                                          self.bidirectional, self.bias, self.proj_size,
                                          self.peephole, self.cifg, self.layer_norm):
            if name.startswith("layer_norm_"):      # ones and zeros, nothing drawn
                arr = _params.layer_norm_init(name, shape, self.dtype)
                arr.flags.writeable = False
                self._params[name] = arr
                continue
            arr = rng.uniform(-k, k, size=shape).astype(self.dtype)
            if self.forget_bias is not None and name.startswith("bias_"):   # unit_forget_bias
                H = self.hidden_size
                arr[H:2 * H] = self.forget_bias if name.startswith("bias_ih") else 0.0
            arr.flags.writeable = False
            self._params[name] = arr
        # state_dict order (_params.state_dict_names): each direction's peepholes after its own
        self._params = {name: self._params[name] for names in self._names for name in names}
        self._set_weight_dtype(weight_dtype)

    def _set_weight_dtype(self, weight_dtype):
        """weight_dtype checked against the layer; a low-precision layer is inference only."""
        self.weight_dtype = _validation.check_weight_dtype(
            weight_dtype, self.dtype, self.proj_size, self._impl, self._backend)
        if self.weight_dtype != self.dtype.name:
            if self.peephole or self.clip or self.cell_clip or self.cifg \
                    or getattr(self, "zoneout", 0.0) or getattr(self, "layer_norm", False):
                self.weight_dtype = self.dtype.name
                raise ValueError(f"weight_dtype={weight_dtype!r} does not support the LSTM "
                                 f"variants (peephole, clip, cell_clip, cifg, zoneout, "
                                 f"layer_norm) yet")
            self.training = False
            self._cache = None
        self._drop_packed()

    # --- structure -------------------------------------------------------

    @property
    def num_directions(self):
        """D: 2 if bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def backend(self):
        """The backend this layer runs on (resolved from "auto" at assignment)."""
        return self._backend

    @backend.setter
    def backend(self, name):
        if getattr(self, "layer_norm", False):   # "auto" never numba
            backend = backends.resolve(backends.layer_norm_backend(name))
        else:
            backend = backends.resolve(name)
        impl = backends.get(backend)
        wd = getattr(self, "weight_dtype", None)
        if wd is not None:
            _validation.check_weight_dtype(wd, self.dtype, self.proj_size, impl, backend)
            if wd == "bfloat16" and getattr(self, "training", False) \
                    and not getattr(impl, "TRAINS_BF16", False):
                raise ValueError(f"weight_dtype='bfloat16' trains (mixed precision) on the "
                                 f"backends {backends.BF16_TRAINING}, not {backend!r}: call "
                                 f"eval() first to run it for inference there")
        self._backend, self._requested_backend, self._impl = backend, name, impl
        self._inputs.bind(impl)
        self._drop_packed()

    def __getstate__(self):
        state = self.__dict__.copy()
        # (the fields of _route.LayerBase, C fields when compiled: not in __dict__)
        state.update(training=self.training, batch_first=self.batch_first,
                     weight_dtype=self.weight_dtype, grads=self.grads)
        for key in ("_impl", "_packed", "_inputs"):   # rebuilt in __setstate__
            state.pop(key, None)
        state["_cache"] = None
        return state

    def __setstate__(self, state):
        for key, value in (("peephole", False), ("clip", 0.0), ("cell_clip", 0.0),
                           ("cifg", False), ("forget_bias", None),
                           ("recurrent_dropout", 0.0), ("zoneout", 0.0),
                           ("layer_norm", False)):   # older pickles
            setattr(self, key, value)
        for key, value in state.items():   # not __dict__.update: see _drop_packed
            setattr(self, key, value)
        for arr in self._params.values():
            arr.flags.writeable = False
        if getattr(self, "weight_dtype", None) is None:   # pickled before weight_dtype existed
            self.weight_dtype = self.dtype.name
        self._make_inputs()
        self.backend = self._requested_backend   # "auto" resolves on the new machine

    def _make_inputs(self):
        """The per-call state (``_validation.LayerInputs``): the checks of the arguments with
        their memo, and the names and options fixed at construction; the backend and the
        packed weights are set by the ``backend`` setter and ``_drop_packed``."""
        inputs = _validation.LayerInputs(self.dtype, self.input_size, self.hidden_size,
                                         self._out_size, len(self._names))
        inputs.names = self._names
        inputs.recurrent_dropout, inputs.zoneout = self.recurrent_dropout, self.zoneout
        inputs.layer_norm, inputs.peephole, inputs.cifg = self.layer_norm, self.peephole, self.cifg
        self._inputs = inputs

    @property
    def _out_size(self):
        """R: columns of h per direction, proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    # --- parameters ------------------------------------------------------

    def named_parameters(self):
        """The parameters with their names.

        Returns
        -------
        list of (str, numpy.ndarray)
            (name, array) pairs in torch's order; the arrays are read-only.
        """
        return list(self._params.items())

    def parameters(self):
        """The parameters.

        Returns
        -------
        list of numpy.ndarray
            The read-only parameter arrays in torch's order.
        """
        return list(self._params.values())

    def state_dict(self):
        """Copies of the parameters under torch's names.

        Returns
        -------
        dict of str to numpy.ndarray
            ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``
            (``weight_hr_l{k}``; ``_reverse`` for the second direction): loadable by
            ``torch.nn.LSTM.load_state_dict`` after ``torch.from_numpy``.

        Examples
        --------
        >>> sorted(lstm_fast.LSTM(2, 3).state_dict())
        ['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0']
        """
        return {name: arr.copy() for name, arr in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters (NumPy arrays or torch tensors) by torch's names.

        Parameters
        ----------
        state_dict : dict
            Arrays or tensors under `state_dict` names, e.g. a
            ``torch.nn.LSTM``'s ``state_dict()``; copied and cast to the layer's dtype.
        strict : bool, optional
            Require exactly the layer's names (default); False loads those present.

        Raises
        ------
        KeyError
            With `strict`, missing or unexpected names (all listed).
        ValueError
            An array of the wrong shape, naming it.
        TypeError
            An array that is not real-valued.
        """
        missing = [n for n in self._params if n not in state_dict]
        unexpected = [n for n in state_dict if n not in self._params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the layer: missing {missing}, "
                           f"unexpected {unexpected}")
        new = {name: self._checked_param(name, state_dict[name])
               for name in self._params if name in state_dict}
        self._params.update(new)
        self._drop_packed()

    def set_parameter(self, name, value):
        """Replace one parameter (copied, cast to the layer's dtype).

        Parameters
        ----------
        name : str
            A `state_dict` name, e.g. ``"weight_hh_l0"``.
        value : array_like
            The new values, of the parameter's shape.

        Raises
        ------
        KeyError
            No parameter of that name (the names are listed).
        ValueError
            `value` has the wrong shape.
        """
        if name not in self._params:
            raise KeyError(f"no parameter named {name!r}; parameters are {list(self._params)}")
        self._params[name] = self._checked_param(name, value)
        self._drop_packed()

    @contextlib.contextmanager
    def unlocked_parameters(self):
        """Context in which the parameter arrays are writable, e.g. for an optimizer step.

        Packed copies are dropped on exit, so the next call sees the new values.

        Yields
        ------
        dict of str to numpy.ndarray
            The parameters by `state_dict` name, writable until the context ends.

        Examples
        --------
        >>> layer = lstm_fast.LSTM(2, 3, seed=0)
        >>> out, _ = layer(np.ones((4, 1, 2), np.float32))
        >>> _ = layer.backward(np.ones_like(out))
        >>> with layer.unlocked_parameters() as params:
        ...     for name, g in layer.grads.items():
        ...         params[name] -= 0.1 * g
        """
        for arr in self._params.values():
            arr.flags.writeable = True
        try:
            yield self._params
        finally:
            for arr in self._params.values():
                arr.flags.writeable = False
            self._drop_packed()

    def _checked_param(self, name, value):
        shape = self._params[name].shape
        value = _validation.to_numpy(value)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real array, got dtype {value.dtype}")
        arr = np.array(value, dtype=self.dtype, order="C", copy=True)
        arr.flags.writeable = False
        return arr

    def _drop_packed(self):
        """After any change of the parameters (every route calls this): drop the packed
        copies, and expose the current arrays as attributes (``layer.weight_ih_l0``). They are
        plain instance attributes rather than a ``__getattr__``: a class with ``__getattr__``
        loses CPython's fast attribute lookup for every ``self.x`` in forward and backward.
        Set one by one: touching ``self.__dict__`` would lose it as well (CPython 3.11 no
        longer specializes the attribute loads of an instance whose dict was materialized)."""
        self._packed = self._inputs.packed = [None] * len(self._names)
        for name, arr in getattr(self, "_params", {}).items():
            setattr(self, name, arr)

    def _pack(self, k):
        """The backend's packed weights of layer-direction k (packed on first use)."""
        packed = self._packed[k]
        if packed is None:
            names, p = self._names[k], self._params
            b = p[names[2]] + p[names[3]] if self.bias else None
            packer = _validation.LOW_PRECISION_PACKERS.get(self.weight_dtype)
            if packer is not None:   # bfloat16, int8: no projection, no variant (checked)
                packed = self._packed[k] = getattr(self._impl, packer)(p[names[0]], p[names[1]], b)
                return packed
            w_hr = p[names[4 if self.bias else 2]] if self.proj_size else None
            variant = self._variant(k)
            w_ih, w_hh = p[names[0]], p[names[1]]
            if self.cifg:   # the kernels take 4H rows, f's zero
                w_ih, w_hh, b = map(_params.cifg_expand, (w_ih, w_hh, b))
            packed = self._packed[k] = (
                self._impl.pack(w_ih, w_hh, b, w_hr) if variant is None else
                self._impl.pack(w_ih, w_hh, b, w_hr, variant=variant))
        return packed

    def _variant(self, k):
        """The ``backends.Variant`` of layer-direction k, or None (a plain LSTM)."""
        if not (self.peephole or self.clip or self.cell_clip or self.cifg or self.layer_norm):
            return None
        names = self._names[k]
        ln = None
        if self.layer_norm:    # the last four names: gains ih, hh, c, bias c -> (10H,)
            ln = np.concatenate([self._params[n] for n in names[-4:]])
            names = names[:-4]
        peep = np.stack([self._params[n] for n in names[-3:]]) if self.peephole else None
        return backends.Variant(peep, self.clip, self.cell_clip, self.cifg, ln)

    # --- modes -----------------------------------------------------------

    def train(self, mode=True):
        """Set training mode (dropout active, forward keeps what backward needs).

        Parameters
        ----------
        mode : bool, optional
            True for training mode, False for eval mode.

        Returns
        -------
        LSTM
            The layer itself.

        Raises
        ------
        ValueError
            Training mode for a layer with low-precision weights (inference only).
        """
        if mode and self.weight_dtype not in _FULL_PRECISION:
            self._check_trainable()
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode: no dropout, forward keeps nothing for backward unless ``save=True``.

        Returns
        -------
        LSTM
            The layer itself.
        """
        return self.train(False)

    # --- forward / backward ----------------------------------------------

    # forward (also ``layer(...)``) and backward: ``_route.LayerBase``'s, compiled with the
    # route (named here so that they are the class's own members, as for a reader)
    forward = _route.LayerBase.forward


    # The masks below come from a counter-based generator (_philox: Philox4x32-10, in the C
    # kernel where built) under a key drawn from the dropout stream at each call: a seed
    # fixes them all, and a (T, B, H) mask costs ~1 ns per element instead of NumPy's ~2.

    def _dropout_mask(self, shape):
        """Inverted dropout as in torch: keep with probability 1-p, scale by 1/(1-p)."""
        p = self.dropout
        if p >= 1.0:
            return np.zeros(shape, self.dtype)
        return _philox.bernoulli(shape, _philox.key_from(self._dropout_rng), p,
                                 self.dtype.type(1.0 / (1.0 - p)), self.dtype)

    def _rdrop_mask(self, B):
        """A recurrent dropout mask (B, R) of one layer-direction: keep with probability
        1-p, scaled by 1/(1-p) (``recurrent_dropout`` = p), from the dropout stream."""
        p = self.recurrent_dropout
        return _philox.bernoulli((B, self._out_size), _philox.key_from(self._dropout_rng), p,
                                 self.dtype.type(1.0 / (1.0 - p)), self.dtype)

    def _zoneout_mask(self, T, B):
        """A zoneout mask (T, B, H) of one layer-direction: in training 1 with probability
        1 - zoneout (the new value) from the dropout stream, in eval 1 - zoneout."""
        z = self.zoneout
        if not self.training:
            return np.full((T, B, self.hidden_size), 1.0 - z, self.dtype)
        return _philox.bernoulli((T, B, self.hidden_size), _philox.key_from(self._dropout_rng),
                                 z, 1.0, self.dtype)

    backward = _route.LayerBase.backward


    def _trains_bf16(self):
        """Whether this layer can train with its weight_dtype (bfloat16, mixed precision)."""
        return (self.weight_dtype == "bfloat16" and not self.recurrent_dropout
                and getattr(self._impl, "TRAINS_BF16", False))

    def _check_trainable(self):
        """A ValueError unless this low-precision layer can train (bfloat16 on a backend
        with bfloat16 training, ``backends.BF16_TRAINING``)."""
        if self._trains_bf16():
            return
        if self.weight_dtype != "bfloat16":
            raise ValueError(_inference_only(self.weight_dtype))
        if self.recurrent_dropout:
            raise ValueError("weight_dtype='bfloat16' trains without recurrent_dropout "
                             f"(got recurrent_dropout={self.recurrent_dropout})")
        raise ValueError(f"weight_dtype='bfloat16' trains (mixed precision) on the backends "
                         f"{backends.BF16_TRAINING}, not {self.backend!r}; this backend runs "
                         f"bfloat16 for inference (eval mode) only")

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, default in
                        (("num_layers", 1), ("bias", True), ("batch_first", False),
                         ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0),
                         ("peephole", False), ("clip", 0.0), ("cell_clip", 0.0),
                         ("cifg", False), ("forget_bias", None), ("recurrent_dropout", 0.0),
                         ("zoneout", 0.0), ("layer_norm", False))
                        if getattr(self, k) != default)
        if self.weight_dtype != self.dtype.name:
            extra += f", weight_dtype={self.weight_dtype!r}"
        return (f"LSTM({self.input_size}, {self.hidden_size}{extra}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")


def quantize(layer, weight_dtype="bfloat16", *, activations=None):
    """An inference copy of `layer` whose weights are computed in `weight_dtype`.

    The float32 parameters are copied as they are (they stay the masters: ``state_dict``
    returns them); they are rounded when the copy packs them. The copy is in eval mode,
    as is the one of a ``LSTM(..., weight_dtype=...)`` layer, and `Stream` runs it.

    Parameters
    ----------
    layer : LSTM
        A trained layer (float32, no projection, backend "c" or "numpy").
    weight_dtype : {"bfloat16", "int8", "float32", "float64"}, optional
        "bfloat16": weights and the products' inputs x, h rounded to bfloat16,
        products accumulated in float32; "int8": weights quantized to int8 with a
        scale per gate row, x and h kept float32 (see ``LSTM``'s ``weight_dtype``);
        "int8_dynamic": the same int8 weights, and x and h quantized too, per row per
        step (int32 sums: AMX or vpdpbusd); the layer's own dtype gives back a plain layer.
    activations : {None, "float32", "dynamic"}, keyword-only
        With "int8": "float32" (the default, as None) keeps x and h float32
        (weight-only); "dynamic" quantizes them per row per step (the same as
        weight_dtype "int8_dynamic"): faster at large batches where the CPU has
        AVX512-VNNI or AVX-VNNI, with a larger error (see the guide). An explicit
        choice: the numerics never change with the batch size.

    Returns
    -------
    LSTM
        A new layer; `layer` is not changed.

    Raises
    ------
    ValueError
        An unknown weight_dtype or activations (the options are named), activations
        with a weight_dtype other than "int8", or a weight_dtype this layer cannot use
        (float64 layer, projection, the numba backend).

    Examples
    --------
    >>> layer = lstm_fast.LSTM(3, 8, seed=0)
    >>> q = lstm_fast.quantize(layer, "bfloat16")
    >>> q.weight_dtype, q.training
    ('bfloat16', False)
    >>> x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    >>> out, _ = q(x)
    >>> bool(np.abs(out - layer(x)[0]).max() < 1e-2)
    True
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"layer must be an lstm_fast.LSTM, got {type(layer).__name__}")
    weight_dtype = _validation.weight_dtype_with_activations(weight_dtype, activations)
    new = copy.deepcopy(layer)
    new.training = False
    new._set_weight_dtype(weight_dtype)
    return new


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)
