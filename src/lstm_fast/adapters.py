"""Weight adapters: lstm_fast / torch state_dicts <-> Keras 3 and ONNX LSTM weights.

The hub format is the state_dict of ``lstm_fast.LSTM``, which is torch.nn.LSTM's:
``weight_ih_l{k}`` (4H, I_k), ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``,
``bias_hh_l{k}`` (4H,), ``_reverse`` for the second direction, gate order
i, f, g, o (and ``weight_hr_l{k}`` (P, H) with a projection).

=========  ====================================  ==========================  ===============================
format     per layer                             gate order                  bias
=========  ====================================  ==========================  ===============================
torch      the state_dict above                  i, f, g, o                  b_ih and b_hh
Keras 3    [kernel (I, 4H),                      i, f, c, o (= i, f, g, o)   one bias (4H,) = b_ih + b_hh;
           recurrent_kernel (H, 4H),                                         back as b_ih = bias, b_hh = 0
           bias (4H,)], forward then
           backward for Bidirectional
ONNX       {"W": (D, 4H, I), "R": (D, 4H, H),    i, o, f, c                  B (D, 8H) = [Wb, Rb] =
           "B": (D, 8H)}, D = 2 for                                          [b_ih, b_hh] reordered
           bidirectional: forward, reverse
=========  ====================================  ==========================  ===============================

Keras lists are what ``layer.get_weights()`` returns and ``layer.set_weights()``
takes (``keras.layers.Bidirectional(LSTM)`` concatenates the forward and the
backward layer's lists); one list per stacked layer. ONNX dicts are the
initializers of one ``LSTM`` node per layer with the default attributes
(activations sigmoid/tanh/tanh, input_forget = 0, layout = 0);
``to_onnx_model`` builds the whole stack as an ONNX model, ``from_onnx_model``
reads one back.

Peepholes (``LSTM(peephole=True)``: ``weight_ci_l{k}``, ``weight_cf_l{k}``,
``weight_co_l{k}`` (H,)) convert to and from ONNX's ``P`` (D, 3H) in ONNX's order
i, o, f; torch and Keras 3 have none. The gate clip (``LSTM(clip=...)``) is ONNX's
``clip`` attribute (``to_onnx_model(clip=...)``, ``from_onnx_model``); ONNX has no
cell clip.

All functions accept NumPy arrays or torch tensors, return NumPy arrays (copies,
dtype kept) and check the structure first: missing or unexpected keys are a
``KeyError``, inconsistent shapes a ``ValueError``, both naming the offender.
Projections (``proj_size > 0``) exist only in torch's format.
"""

import re
from typing import NamedTuple

import numpy as np

from . import _params, _validation

__all__ = ["LSTMConfig", "describe", "from_torch", "to_torch", "to_keras", "from_keras",
           "to_onnx", "from_onnx", "to_onnx_model", "from_onnx_model"]

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr|weight_ci|weight_cf|weight_co"
                  r"|layer_norm_weight_ih|layer_norm_weight_hh|layer_norm_weight_c"
                  r"|layer_norm_bias_c)_l(\d+)(_reverse)?$")

# Row blocks of a (4H, .) torch matrix in ONNX's order i, o, f, c, and back.
_TORCH_TO_ONNX = (0, 3, 1, 2)
_ONNX_TO_TORCH = (0, 2, 3, 1)


class LSTMConfig(NamedTuple):
    """The architecture a state_dict describes (torch.nn.LSTM's arguments).

    Attributes
    ----------
    input_size, hidden_size, num_layers : int
        I, H and the number of stacked layers.
    bidirectional, bias : bool
        Two directions; biases present.
    proj_size : int
        P, 0 without a projection.
    peephole : bool
        Peephole weights present (``LSTM(peephole=True)``).
    cifg : bool
        Coupled input and forget gates (``LSTM(cifg=True)``: 3H gate rows).
    layer_norm : bool
        Layer-norm parameters present (``LSTM(layer_norm=True)``).

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> cfg = adapters.describe(lstm_fast.LSTM(3, 4, proj_size=2).state_dict())
    >>> cfg.hidden_size, cfg.proj_size, cfg._asdict() == dict(
    ...     input_size=3, hidden_size=4, num_layers=1, bidirectional=False, bias=True, proj_size=2,
    ...     peephole=False, cifg=False, layer_norm=False)
    (4, 2, True)
    """
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool
    proj_size: int
    peephole: bool = False
    cifg: bool = False
    layer_norm: bool = False


def _array(value, name):
    if hasattr(value, "detach") and hasattr(value, "numpy"):     # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return a


def _keys(cfg):
    """The state_dict keys of ``cfg`` in torch's order."""
    return [name for name, _ in _shapes(cfg)]


def _shapes(cfg):
    """(name, shape) of every parameter of ``cfg`` in the order of ``LSTM.state_dict()``."""
    shapes = dict(_params.shapes(cfg.input_size, cfg.hidden_size, cfg.num_layers,
                                 cfg.bidirectional, cfg.bias, cfg.proj_size, cfg.peephole,
                                 cfg.cifg, cfg.layer_norm))
    return [(name, shapes[name]) for name in _params.state_dict_names(
        cfg.num_layers, cfg.bidirectional, cfg.bias, cfg.proj_size, cfg.peephole,
        cfg.layer_norm)]


def describe(state_dict):
    """The `LSTMConfig` of a torch-named state_dict, after checking every key and shape.

    Parameters
    ----------
    state_dict : dict
        Arrays or tensors by torch's names.

    Returns
    -------
    LSTMConfig
        The layer configuration these weights belong to.

    Raises
    ------
    KeyError
        An unknown, missing or unexpected key, named.
    ValueError
        An array of the wrong shape for the configuration, named.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> adapters.describe(lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict())
    LSTMConfig(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, bias=True, proj_size=0, peephole=False, cifg=False, layer_norm=False)
    >>> adapters.describe({"weight_ih_l0": np.zeros((16, 3)), "weight_hh_l0": np.zeros((16, 5))})
    Traceback (most recent call last):
    ...
    ValueError: weight_hh_l0 must have shape (16, 4) for LSTMConfig(...), got (16, 5)
    """
    parsed = {}
    for key in state_dict:
        m = _KEY.match(key) if isinstance(key, str) else None
        if m is None:
            raise KeyError(f"unexpected key {key!r}: LSTM state_dict keys are weight_ih_l{{k}}, "
                           f"weight_hh_l{{k}}, bias_ih_l{{k}}, bias_hh_l{{k}} (weight_hr_l{{k}}; "
                           f"peepholes weight_ci_l{{k}}, weight_cf_l{{k}}, weight_co_l{{k}}; "
                           f"layer norm layer_norm_weight_ih_l{{k}}, layer_norm_weight_hh_l{{k}}, "
                           f"layer_norm_weight_c_l{{k}}, layer_norm_bias_c_l{{k}}), "
                           f"with _reverse for the second direction")
        parsed[key] = m
    if "weight_hh_l0" not in state_dict or "weight_ih_l0" not in state_dict:
        raise KeyError("state_dict has no weight_ih_l0 / weight_hh_l0: not an LSTM state_dict")
    w_hh = _array(state_dict["weight_hh_l0"], "weight_hh_l0")
    w_ih = _array(state_dict["weight_ih_l0"], "weight_ih_l0")
    hr = _array(state_dict["weight_hr_l0"], "weight_hr_l0") if "weight_hr_l0" in state_dict else None
    width = hr.shape[-1] if hr is not None and hr.ndim else (w_hh.shape[-1] if w_hh.ndim else 0)
    cifg = w_hh.ndim == 2 and width > 0 and w_hh.shape[0] == 3 * width   # gates i, g, o
    if not cifg and (w_hh.ndim != 2 or w_hh.shape[0] % 4 or w_hh.shape[0] == 0):
        raise ValueError(f"weight_hh_l0 must have shape (4*hidden_size, hidden_size or proj_size), "
                         f"got {w_hh.shape}")
    if w_ih.ndim != 2:
        raise ValueError(f"weight_ih_l0 must have shape (4*hidden_size, input_size), got {w_ih.shape}")
    H = w_hh.shape[0] // (3 if cifg else 4)
    P = 0
    if "weight_hr_l0" in state_dict:
        P = _array(state_dict["weight_hr_l0"], "weight_hr_l0").shape[0]
    cfg = LSTMConfig(
        input_size=w_ih.shape[1], hidden_size=H,
        num_layers=1 + max(int(m.group(2)) for m in parsed.values()),
        bidirectional=any(m.group(3) for m in parsed.values()),
        bias="bias_ih_l0" in state_dict or "bias_hh_l0" in state_dict, proj_size=P,
        peephole=any(m.group(1) in _params.PEEPHOLE_KINDS for m in parsed.values()), cifg=cifg,
        layer_norm=any(m.group(1) in _params.LAYER_NORM_KINDS for m in parsed.values()))
    expected = dict(_shapes(cfg))
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise KeyError(f"state_dict is not a consistent LSTM ({cfg}): missing {missing}, "
                       f"unexpected {unexpected}")
    for key, shape in expected.items():
        got = _array(state_dict[key], key).shape
        if got != shape:
            raise ValueError(f"{key} must have shape {shape} for {cfg}, got {got}")
    return cfg


def _check(cfg, num_layers, bidirectional, fmt):
    if num_layers is not None and num_layers != cfg.num_layers:
        raise ValueError(f"num_layers={num_layers} given, but the state_dict has {cfg.num_layers} layers")
    if bidirectional is not None and bool(bidirectional) != cfg.bidirectional:
        raise ValueError(f"bidirectional={bidirectional} given, but the state_dict is "
                         f"{'bi' if cfg.bidirectional else 'uni'}directional")
    if cfg.proj_size:
        raise ValueError(f"proj_size={cfg.proj_size}: {fmt} LSTMs have no projection")
    if cfg.cifg and fmt != "ONNX":
        raise ValueError(f"the state_dict has coupled input and forget gates (3H gate rows): "
                         f"{fmt} LSTMs have none")
    if cfg.layer_norm:
        raise ValueError(f"the state_dict has layer-norm parameters (layer_norm_weight_ih_l0, "
                         f"...): {fmt} LSTMs have none")
    if cfg.peephole and fmt != "ONNX":
        raise ValueError(f"the state_dict has peephole weights (weight_ci_l0, ...): {fmt} LSTMs "
                         f"have none")


# --- torch --------------------------------------------------------------------

def from_torch(state_dict):
    """A torch.nn.LSTM state_dict (tensors) as NumPy copies, in torch's key order.

    Projection keys ``weight_hr_l{k}`` pass through, and so do the variants' parameters of
    an ``lstm_fast.torch.LSTM`` (peepholes, coupled gates, layer norm: the names and shapes
    of ``lstm_fast.LSTM`` with the same options).

    Parameters
    ----------
    state_dict : dict
        A ``torch.nn.LSTM``'s or ``lstm_fast.torch.LSTM``'s ``state_dict()`` (tensors or
        arrays).

    Returns
    -------
    dict of str to numpy.ndarray
        C-ordered copies, dtype kept.

    Raises
    ------
    KeyError, ValueError
        As `describe`.

    Examples
    --------
    >>> import torch
    >>> from lstm_fast import adapters
    >>> sd = adapters.from_torch(torch.nn.LSTM(3, 4).state_dict())
    >>> layer = lstm_fast.LSTM(3, 4)
    >>> layer.load_state_dict(sd)
    >>> sd["weight_ih_l0"].shape, sd["weight_ih_l0"].dtype
    ((16, 3), dtype('float32'))
    """
    cfg = describe(state_dict)
    return {k: np.array(_array(state_dict[k], k), order="C", copy=True) for k in _keys(cfg)}


_TARGETS = ("torch.nn.LSTM", "lstm_fast.torch.LSTM")


def _variant_options(cfg):
    """The options of ``lstm_fast.LSTM`` a state_dict needs that torch.nn.LSTM lacks."""
    return [name for name, on in (("peephole=True", cfg.peephole), ("cifg=True", cfg.cifg),
                                  ("layer_norm=True", cfg.layer_norm)) if on]


def to_torch(state_dict, dtype=None, target="torch.nn.LSTM"):
    """A torch-loadable state_dict (CPU tensors, copies) from arrays by torch's names.

    The variants' parameters (peepholes ``weight_c*_l{k}``, coupled gates' 3H rows, layer
    norm ``layer_norm_*_l{k}``) keep their names: ``lstm_fast.torch.LSTM`` with the same
    options loads them, torch.nn.LSTM has none of them (``target`` says which is meant).

    Parameters
    ----------
    state_dict : dict
        Arrays by torch's names, e.g. ``LSTM.state_dict()``.
    dtype : torch.dtype or None, optional
        Converts every tensor; None keeps each array's dtype.
    target : {"torch.nn.LSTM", "lstm_fast.torch.LSTM"}, optional
        The module that will load the result. "torch.nn.LSTM" (default) refuses the
        variants' parameters; "lstm_fast.torch.LSTM" carries them (build the module with
        the options `describe` reports: ``peephole``, ``cifg``, ``layer_norm``).

    Returns
    -------
    dict of str to torch.Tensor
        For ``torch.nn.LSTM.load_state_dict`` (or ``lstm_fast.torch.LSTM``'s).

    Raises
    ------
    KeyError, ValueError
        As `describe`; ValueError also for an unknown ``target``, and for a state_dict
        with a variant's parameters when the target is torch.nn.LSTM (naming the option).

    Examples
    --------
    >>> import torch
    >>> from lstm_fast import adapters
    >>> layer = lstm_fast.LSTM(3, 4, num_layers=2, seed=0)
    >>> module = torch.nn.LSTM(3, 4, num_layers=2)
    >>> module.load_state_dict(adapters.to_torch(layer.state_dict()))
    <All keys matched successfully>
    >>> import lstm_fast.torch
    >>> ln = lstm_fast.LSTM(3, 4, layer_norm=True, seed=0)
    >>> module = lstm_fast.torch.LSTM(3, 4, layer_norm=True)
    >>> module.load_state_dict(adapters.to_torch(ln.state_dict(), target="lstm_fast.torch.LSTM"))
    <All keys matched successfully>
    """
    import torch

    if target not in _TARGETS:
        raise ValueError(f"target must be one of {_TARGETS}, got {target!r}")
    cfg = describe(state_dict)
    options = _variant_options(cfg)
    if options and target == "torch.nn.LSTM":
        raise ValueError(f"the state_dict is of an LSTM with {', '.join(options)} (parameters "
                         f"torch.nn.LSTM does not have): use lstm_fast.torch.LSTM("
                         f"{', '.join(options)}) and to_torch(..., "
                         f"target=\"lstm_fast.torch.LSTM\")")
    out = {}
    for k in _keys(cfg):
        t = torch.from_numpy(np.array(_array(state_dict[k], k), order="C", copy=True))
        out[k] = t if dtype is None else t.to(dtype)
    return out


# --- Keras 3 ----------------------------------------------------------------------

def to_keras(state_dict, num_layers=None, bidirectional=None):
    """Keras LSTM weights, one ``get_weights()``-style list per layer.

    Per direction: kernel = weight_ih.T (I, 4H), recurrent_kernel = weight_hh.T
    (H, 4H), bias = bias_ih + bias_hh (4H,) (omitted when the LSTM has no bias);
    a bidirectional layer lists the forward direction, then the backward one.
    ``num_layers`` and ``bidirectional``, when given, are checked against the state_dict.

    Parameters
    ----------
    state_dict : dict
        Arrays or tensors by torch's names (no projection).
    num_layers : int or None, optional
        Checked against the state_dict when given.
    bidirectional : bool or None, optional
        Checked against the state_dict when given.

    Returns
    -------
    list of list of numpy.ndarray
        For each layer, what ``keras.layers.LSTM.set_weights`` takes (for a
        bidirectional layer, what ``keras.layers.Bidirectional.set_weights`` takes).

    Raises
    ------
    ValueError
        A mismatch with `num_layers` or `bidirectional`, or a projection.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> sd = lstm_fast.LSTM(3, 4, seed=0).state_dict()
    >>> [w.shape for w in adapters.to_keras(sd)[0]]      # kernel, recurrent_kernel, bias
    [(3, 16), (4, 16), (16,)]
    >>> back = adapters.from_keras(adapters.to_keras(sd))
    >>> bool(np.allclose(back["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]))
    True
    """
    cfg = describe(state_dict)
    _check(cfg, num_layers, bidirectional, "Keras")
    layers = []
    for layer in range(cfg.num_layers):
        weights = []
        for d in range(2 if cfg.bidirectional else 1):
            s = _params.suffix(layer, d)
            weights.append(np.ascontiguousarray(_array(state_dict["weight_ih" + s], "weight_ih" + s).T))
            weights.append(np.ascontiguousarray(_array(state_dict["weight_hh" + s], "weight_hh" + s).T))
            if cfg.bias:
                weights.append(_array(state_dict["bias_ih" + s], "bias_ih" + s)
                               + _array(state_dict["bias_hh" + s], "bias_hh" + s))
        layers.append(weights)
    return layers


def from_keras(layers, bidirectional=False):
    """A torch-named state_dict from Keras LSTM weights (one list per layer, as
    ``to_keras`` returns). bias_ih = the Keras bias, bias_hh = 0; a list of 2
    arrays per direction (``use_bias=False``) gives a state_dict without biases.

    Parameters
    ----------
    layers : list of list of array_like
        One ``get_weights()`` list per stacked layer.
    bidirectional : bool, optional
        Each list holds the forward, then the backward direction's weights.

    Returns
    -------
    dict of str to numpy.ndarray
        A state_dict by torch's names.

    Raises
    ------
    TypeError
        `layers` not a non-empty list.
    ValueError
        A wrong number of arrays or a misshapen one, naming the layer and the array.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> H, I = 4, 3
    >>> kernel, recurrent, bias = np.ones((I, 4 * H)), np.ones((H, 4 * H)), np.zeros(4 * H)
    >>> sd = adapters.from_keras([[kernel, recurrent, bias]])
    >>> adapters.describe(sd).hidden_size, sd["weight_ih_l0"].shape
    (4, (16, 3))
    """
    if isinstance(layers, dict) or not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError("layers must be a non-empty list with one list of Keras weights per layer")
    D = 2 if bidirectional else 1
    out = {}
    for layer, weights in enumerate(layers):
        if not isinstance(weights, (list, tuple)) or len(weights) not in (2 * D, 3 * D):
            n = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise ValueError(
                f"layer {layer}: expected {3 * D} arrays ([kernel, recurrent_kernel, bias]"
                f"{' for the forward then the backward direction' if D == 2 else ''}) "
                f"or {2 * D} without bias, got {n}")
        per = len(weights) // D
        for d in range(D):
            s = _params.suffix(layer, d)
            where = f"layer {layer}{' backward' if d else ''}"
            kernel = _array(weights[d * per], f"{where} kernel")
            recurrent = _array(weights[d * per + 1], f"{where} recurrent_kernel")
            if recurrent.ndim != 2 or recurrent.shape[1] != 4 * recurrent.shape[0]:
                raise ValueError(f"{where} recurrent_kernel must have shape (H, 4H), got {recurrent.shape}")
            H = recurrent.shape[0]
            if kernel.ndim != 2 or kernel.shape[1] != 4 * H:
                raise ValueError(f"{where} kernel must have shape (input_size, 4H={4 * H}), got {kernel.shape}")
            out["weight_ih" + s] = np.ascontiguousarray(kernel.T)
            out["weight_hh" + s] = np.ascontiguousarray(recurrent.T)
            if per == 3:
                bias = _array(weights[d * per + 2], f"{where} bias")
                if bias.shape != (4 * H,):
                    raise ValueError(f"{where} bias must have shape ({4 * H},), got {bias.shape}")
                out["bias_ih" + s] = bias.copy()
                out["bias_hh" + s] = np.zeros_like(bias)
    describe(out)
    return out


# --- ONNX ---------------------------------------------------------------------------

def _gates(a, order):
    """Reorder the four H-row blocks of a (4H, ...) array."""
    H = a.shape[0] // 4
    return np.concatenate([a[k * H:(k + 1) * H] for k in order])


def to_onnx(state_dict, num_layers=None, bidirectional=None):
    """ONNX LSTM initializers, one dict {"W", "R", "B"} per layer (one node per layer).

    W (D, 4H, I), R (D, 4H, H), B (D, 8H) = [input biases, recurrent biases],
    gates in ONNX's order i, o, f, c; D = 2 (forward, reverse) if bidirectional.
    Without biases there is no "B" (ONNX then uses zeros). With peepholes also
    P (D, 3H) = [weight_ci, weight_co, weight_cf] (ONNX's order i, o, f). Coupled
    gates (3H rows) are written as ONNX's 4H with zero f rows, for a node with
    ``input_forget=1`` (ONNX Runtime does not use them).

    Parameters
    ----------
    state_dict : dict
        Arrays or tensors by torch's names (no projection).
    num_layers : int or None, optional
        Checked against the state_dict when given.
    bidirectional : bool or None, optional
        Checked against the state_dict when given.

    Returns
    -------
    list of dict of str to numpy.ndarray
        One ``{"W", "R", "B"}`` dict per layer (plus "P" with peepholes).

    Raises
    ------
    ValueError
        A mismatch with `num_layers` or `bidirectional`, or a projection.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> sd = lstm_fast.LSTM(3, 4, bidirectional=True, seed=0).state_dict()
    >>> {k: v.shape for k, v in adapters.to_onnx(sd)[0].items()}
    {'W': (2, 16, 3), 'R': (2, 16, 4), 'B': (2, 32)}
    >>> back = adapters.from_onnx(adapters.to_onnx(sd))
    >>> all(np.array_equal(back[k], sd[k]) for k in sd)
    True
    """
    cfg = describe(state_dict)
    _check(cfg, num_layers, bidirectional, "ONNX")
    layers = []
    for layer in range(cfg.num_layers):
        W, R, B = [], [], []
        for d in range(2 if cfg.bidirectional else 1):
            s = _params.suffix(layer, d)
            get = (lambda k: _params.cifg_expand(_array(state_dict[k], k))) if cfg.cifg else \
                (lambda k: _array(state_dict[k], k))
            W.append(_gates(get("weight_ih" + s), _TORCH_TO_ONNX))
            R.append(_gates(get("weight_hh" + s), _TORCH_TO_ONNX))
            if cfg.bias:
                B.append(np.concatenate(
                    [_gates(get(k + s), _TORCH_TO_ONNX) for k in ("bias_ih", "bias_hh")]))
        node = {"W": np.stack(W), "R": np.stack(R)}
        if cfg.bias:
            node["B"] = np.stack(B)
        if cfg.peephole:
            node["P"] = np.stack([np.concatenate([
                _array(state_dict[k + _params.suffix(layer, d)], k + _params.suffix(layer, d))
                for k in ("weight_ci", "weight_co", "weight_cf")])
                for d in range(2 if cfg.bidirectional else 1)])
        layers.append(node)
    return layers


def from_onnx(layers, input_forget=False):
    """A torch-named state_dict from ONNX LSTM initializers (as ``to_onnx`` returns).

    Each layer is a dict with "W", "R" and optionally "B" and "P" (peepholes
    (D, 3H), ONNX's order i, o, f), or a sequence (W, R[, B]). D = W.shape[0]
    must be the same for every layer. Without "B" the state_dict has no biases;
    a nonzero "P" in any layer gives every layer ``weight_ci_l{k}``,
    ``weight_cf_l{k}``, ``weight_co_l{k}`` (an absent or zero one: zeros, the
    plain LSTM), none otherwise.

    Parameters
    ----------
    layers : list of dict or list of tuple
        One node's initializers per layer, as `to_onnx` returns.
    input_forget : bool, optional
        The nodes' ``input_forget`` attribute: coupled gates (f = 1 - i); the f rows
        (unused) are dropped, giving 3H gate rows (``LSTM(cifg=True)``).

    Returns
    -------
    dict of str to numpy.ndarray
        A state_dict by torch's names.

    Raises
    ------
    TypeError
        `layers` not a non-empty list of dicts or tuples.
    KeyError
        A dict without W or R, or with other keys.
    ValueError
        A misshapen array, naming the layer.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> W, R = np.zeros((1, 16, 3)), np.zeros((1, 16, 4))
    >>> sorted(adapters.from_onnx([{"W": W, "R": R}]))
    ['weight_hh_l0', 'weight_ih_l0']
    """
    if isinstance(layers, dict) or not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError("layers must be a non-empty list with one {'W', 'R', 'B'} dict per layer")
    out = {}
    peeps = {}
    D0 = None
    for layer, node in enumerate(layers):
        if isinstance(node, dict):
            unknown = set(node) - {"W", "R", "B", "P"}
            if unknown or "W" not in node or "R" not in node:
                raise KeyError(f"layer {layer}: expected keys W, R and optionally B, P, got {sorted(node)}")
            W, R, B = node["W"], node["R"], node.get("B")
            if node.get("P") is not None:
                peeps[layer] = _array(node["P"], f"layer {layer} P")
        elif isinstance(node, (list, tuple)) and len(node) in (2, 3):
            W, R, B = (tuple(node) + (None,))[:3]
        else:
            raise TypeError(f"layer {layer}: expected a dict {{'W', 'R', 'B'}} or a tuple (W, R[, B])")
        W, R = _array(W, f"layer {layer} W"), _array(R, f"layer {layer} R")
        if R.ndim != 3 or R.shape[0] not in (1, 2) or R.shape[1] != 4 * R.shape[2]:
            raise ValueError(f"layer {layer}: R must have shape (D, 4H, H) with D in (1, 2), got {R.shape}")
        D, H = R.shape[0], R.shape[2]
        if D0 is None:
            D0 = D
        elif D != D0:
            raise ValueError(f"layer {layer}: {D} directions, layer 0 has {D0}")
        if W.ndim != 3 or W.shape[:2] != (D, 4 * H):
            raise ValueError(f"layer {layer}: W must have shape (D={D}, 4H={4 * H}, input_size), got {W.shape}")
        if B is not None:
            B = _array(B, f"layer {layer} B")
            if B.shape != (D, 8 * H):
                raise ValueError(f"layer {layer}: B must have shape ({D}, {8 * H}), got {B.shape}")
        for d in range(D):
            s = _params.suffix(layer, d)
            out["weight_ih" + s] = _gates(W[d], _ONNX_TO_TORCH)
            out["weight_hh" + s] = _gates(R[d], _ONNX_TO_TORCH)
            if B is not None:
                out["bias_ih" + s] = _gates(B[d, :4 * H], _ONNX_TO_TORCH)
                out["bias_hh" + s] = _gates(B[d, 4 * H:], _ONNX_TO_TORCH)
        if layer in peeps and peeps[layer].shape != (D, 3 * H):
            raise ValueError(f"layer {layer}: P must have shape ({D}, {3 * H}), got {peeps[layer].shape}")
    if any(np.any(P) for P in peeps.values()):
        for layer in range(len(layers)):
            H = out[f"weight_hh_l{layer}"].shape[1]
            for d in range(D0):
                s = _params.suffix(layer, d)
                P = peeps.get(layer, np.zeros((D0, 3 * H), out["weight_hh" + s].dtype))[d]
                for k, kind in enumerate(("weight_ci", "weight_co", "weight_cf")):
                    out[kind + s] = np.array(P[k * H:(k + 1) * H])
        out = {name: out[name] for name, _ in _shapes(describe(out))}   # torch's order
    if input_forget:
        out = {k: _params.cifg_compress(v) if k.split("_l")[0] in KINDS_GATES else v
               for k, v in out.items()}
    describe(out)
    return out


KINDS_GATES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")   # gate rows: 3H with cifg


def to_onnx_model(state_dict, initial_state=True, lengths=True, opset=17, name="lstm", clip=None):
    """An ``onnx.ModelProto`` computing the whole (multi-layer) LSTM like torch.nn.LSTM.

    Inputs: X (T, B, I) time-major; with ``lengths``, sequence_lens (B,) int32;
    with ``initial_state``, initial_h and initial_c (num_layers*D, B, H) in
    torch's layout (zeros otherwise). Outputs: Y (T, B, D*H), Y_h and Y_c
    (num_layers*D, B, H). One LSTM node per layer; its Y (T, D, B, H) is squeezed
    (one direction) or transposed and reshaped (two) to (T, B, D*H). Needs the
    ``onnx`` package.

    Parameters
    ----------
    state_dict : dict
        Arrays or tensors by torch's names (no projection).
    initial_state : bool, optional
        Whether the model takes initial_h and initial_c.
    lengths : bool, optional
        Whether the model takes sequence_lens.
    opset : int, optional
        The ONNX opset to declare.
    name : str, optional
        The graph's name.
    clip : float or None, optional
        The gate pre-activation clip of ``LSTM(clip=...)``: every LSTM node's
        ``clip`` attribute. None: no clip. Peephole weights in the state_dict
        become each node's ``P`` input, coupled gates (3H rows) its
        ``input_forget=1``.

    Returns
    -------
    onnx.ModelProto
        A model that passed ``onnx.checker.check_model``.

    Raises
    ------
    ValueError
        A projection (ONNX's LSTM has none), or an inconsistent state_dict.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> model = adapters.to_onnx_model(lstm_fast.LSTM(3, 4, num_layers=2).state_dict())
    >>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    (['X', 'sequence_lens', 'initial_h', 'initial_c'], ['Y', 'Y_h', 'Y_c'])
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = describe(state_dict)
    layers = to_onnx(state_dict)
    clip = _validation.check_clip(clip, "clip")
    D = 2 if cfg.bidirectional else 1
    n, H = cfg.num_layers * D, cfg.hidden_size
    elem = helper.np_dtype_to_tensor_dtype(_array(state_dict["weight_ih_l0"], "weight_ih_l0").dtype)
    const = lambda a, nm: numpy_helper.from_array(np.asarray(a, np.int64), nm)  # noqa: E731
    # One layer needs no Slice of the state nor Concat of the outputs, one direction no
    # Transpose: Squeeze drops Y's direction axis (each extra node costs ONNX Runtime a copy).
    single = cfg.num_layers == 1
    inits = [const([0, 0, -1], "TB_shape")] if D == 2 else [const([1], "axis1")]
    if initial_state and not single:
        inits.append(const([0], "axis0"))
    inputs = [helper.make_tensor_value_info("X", elem, ["T", "B", cfg.input_size])]
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
    if initial_state:
        inputs += [helper.make_tensor_value_info(s, elem, [n, "B", H]) for s in ("initial_h", "initial_c")]
    nodes, hs, cs = [], [], []
    x = "X"
    for layer, node in enumerate(layers):
        p = f"l{layer}_"
        inits += [numpy_helper.from_array(np.ascontiguousarray(v), p + k) for k, v in node.items()]
        states = ["", ""]
        if initial_state and single:
            states = ["initial_h", "initial_c"]
        elif initial_state:
            inits += [const([layer * D], p + "start"), const([layer * D + D], p + "end")]
            states = [p + "initial_h", p + "initial_c"]
            for state in ("initial_h", "initial_c"):
                nodes.append(helper.make_node(
                    "Slice", [state, p + "start", p + "end", "axis0"], [p + state]))
        nodes.append(helper.make_node(
            "LSTM", [x, p + "W", p + "R", p + "B" if "B" in node else "",
                     "sequence_lens" if lengths else ""] + states + ([p + "P"] if "P" in node else []),
            [p + "Y"] + (["Y_h", "Y_c"] if single else [p + "Y_h", p + "Y_c"]), hidden_size=H,
            direction="bidirectional" if D == 2 else "forward", name=p + "lstm",
            **({"clip": clip} if clip else {}), **({"input_forget": 1} if cfg.cifg else {})))
        x = "Y" if layer == cfg.num_layers - 1 else p + "out"
        if D == 1:
            nodes.append(helper.make_node("Squeeze", [p + "Y", "axis1"], [x]))
        else:
            nodes.append(helper.make_node("Transpose", [p + "Y"], [p + "Yt"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [p + "Yt", "TB_shape"], [x]))
        hs.append(p + "Y_h")
        cs.append(p + "Y_c")
    if not single:
        nodes.append(helper.make_node("Concat", hs, ["Y_h"], axis=0))
        nodes.append(helper.make_node("Concat", cs, ["Y_c"], axis=0))
    outputs = [helper.make_tensor_value_info("Y", elem, ["T", "B", D * H]),
               helper.make_tensor_value_info("Y_h", elem, [n, "B", H]),
               helper.make_tensor_value_info("Y_c", elem, [n, "B", H])]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def from_onnx_model(model):
    """The state_dict and the options of the LSTM in an ONNX model (a stack of ``LSTM``
    nodes, as `to_onnx_model` builds).

    The LSTM nodes are taken in graph order, one per layer; their W, R, B and P must be
    initializers. The attributes this library has are imported (``clip``;
    ``input_forget``: coupled gates, the state_dict then has 3H gate rows); any other
    than the defaults (activations sigmoid/tanh/tanh, layout 0, direction forward or
    bidirectional) is an error.

    Parameters
    ----------
    model : onnx.ModelProto or str
        The model, or the path of a ``.onnx`` file.

    Returns
    -------
    state_dict : dict of str to numpy.ndarray
        As `from_onnx` (peepholes from P).
    options : dict
        ``{"clip": float or None}``: with ``describe(state_dict)``, the arguments of
        `LSTM` (``LSTM(**cfg._asdict(), **options)``).

    Raises
    ------
    ValueError
        No LSTM node, an attribute this library does not implement, clips that differ
        between layers, or weights that are not initializers.

    Examples
    --------
    >>> from lstm_fast import adapters
    >>> layer = lstm_fast.LSTM(3, 4, peephole=True, clip=2.0, seed=0)
    >>> sd, options = adapters.from_onnx_model(adapters.to_onnx_model(layer.state_dict(), clip=2.0))
    >>> options, all(np.array_equal(sd[k], v) for k, v in layer.state_dict().items())
    ({'clip': 2.0}, True)
    """
    import onnx
    from onnx import helper, numpy_helper

    if isinstance(model, str):
        model = onnx.load(model)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "LSTM"]
    if not nodes:
        raise ValueError("the model has no LSTM node")
    layers, clips, forgets = [], set(), set()
    for layer, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        if acts and [a.lower() for a in acts] not in (["sigmoid", "tanh", "tanh"],
                                                       ["sigmoid", "tanh", "tanh"] * 2):
            raise ValueError(f"layer {layer}: activations {acts} are not implemented "
                             f"(only sigmoid, tanh, tanh)")
        if attrs.get("layout", 0) != 0:
            raise ValueError(f"layer {layer}: layout={attrs['layout']} is not implemented")
        forgets.add(bool(attrs.get("input_forget", 0)))
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in ("forward", "bidirectional"):
            raise ValueError(f"layer {layer}: direction={direction!r} is not implemented")
        clips.add(float(attrs["clip"]) if "clip" in attrs else None)
        names = list(node.input) + [""] * 8
        entry = {}
        for key, idx in (("W", 1), ("R", 2), ("B", 3), ("P", 7)):
            if names[idx]:
                if names[idx] not in inits:
                    raise ValueError(f"layer {layer}: {key} ({names[idx]!r}) is not an initializer")
                entry[key] = inits[names[idx]]
        layers.append(entry)
    if len(clips) > 1:
        raise ValueError(f"the LSTM nodes have different clips {sorted(clips, key=str)}: "
                         f"one LSTM has one clip")
    if len(forgets) > 1:
        raise ValueError("the LSTM nodes differ in input_forget: one LSTM couples its gates or not")
    return from_onnx(layers, input_forget=forgets.pop()), {"clip": clips.pop()}
