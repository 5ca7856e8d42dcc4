"""The parameters of an LSTM under torch.nn.LSTM's names and shapes: the one place that knows them.

Layer k (0-based), direction d (1 = reverse) has ``weight_ih_l{k}`` (4H, I_k),
``weight_hh_l{k}`` (4H, R), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (4H,) with a bias,
``weight_hr_l{k}`` (P, H) with a projection, each with the suffix ``_reverse`` for
d = 1; I_0 = input_size, I_k = D*R above; R = P if P > 0 else H; torch's order.
With peepholes (issue 15; torch has none) also ``weight_ci_l{k}``, ``weight_cf_l{k}``,
``weight_co_l{k}`` (H,) each, after torch's names of the same layer-direction. With coupled
input and forget gates (cifg) the gate rows are 3H (i, g, o) instead of 4H. With layer norm
(haste's LayerNormLSTM; torch has none) also, after those of the same layer-direction,
``layer_norm_weight_ih_l{k}`` (4H,) and ``layer_norm_weight_hh_l{k}`` (4H,), the gains of the
LN of the input and of the recurrent product (no LN bias: the gates' biases follow), and
``layer_norm_weight_c_l{k}``, ``layer_norm_bias_c_l{k}`` (H,), the gain and bias of the LN of
c_t before the output tanh; initialised to ones (gains) and zeros (bias), as haste does.
"""

import numpy as np

from ._route import bias_grads, grads_by_name  # noqa: F401  (the gradients by name: defined
#                                                 on the compiled per-call route, used here too)

KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
PEEPHOLE_KINDS = ("weight_ci", "weight_cf", "weight_co")
LAYER_NORM_KINDS = ("layer_norm_weight_ih", "layer_norm_weight_hh", "layer_norm_weight_c",
                    "layer_norm_bias_c")


def suffix(layer, d):
    """``_l{layer}``, plus ``_reverse`` for the second direction."""
    return f"_l{layer}_reverse" if d else f"_l{layer}"


def direction_names(layer, d, bias, proj_size, peephole=False, layer_norm=False):
    """Names of one layer-direction's parameters, in torch's order (then the peephole
    weights, then the layer-norm parameters)."""
    s = suffix(layer, d)
    names = ["weight_ih" + s, "weight_hh" + s]
    if bias:
        names += ["bias_ih" + s, "bias_hh" + s]
    if proj_size:
        names.append("weight_hr" + s)
    if peephole:
        names += [kind + s for kind in PEEPHOLE_KINDS]
    if layer_norm:
        names += [kind + s for kind in LAYER_NORM_KINDS]
    return tuple(names)


def state_dict_names(num_layers, bidirectional, bias, proj_size, peephole=False,
                     layer_norm=False):
    """Every parameter name in the order of ``LSTM.state_dict()``: layer by layer, direction
    by direction, ``direction_names`` each (torch's order; the peephole weights, then the
    layer-norm parameters, after the torch names of their layer-direction)."""
    return [name for layer in range(num_layers) for d in range(2 if bidirectional else 1)
            for name in direction_names(layer, d, bias, proj_size, peephole, layer_norm)]


def shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size, peephole=False,
           cifg=False, layer_norm=False):
    """(name, shape) of every parameter: torch's in torch's order, then (with peepholes)
    the peephole weights of every layer-direction, so that torch's draw the same initial
    values from a seed with or without them; then (with layer norm) the layer-norm
    parameters of every layer-direction (not drawn: ones and zeros)."""
    H, P, D = hidden_size, proj_size, 2 if bidirectional else 1
    R = P or H
    G = (3 if cifg else 4) * H
    for layer in range(num_layers):
        I = input_size if layer == 0 else D * R
        for d in range(D):
            for name in direction_names(layer, d, bias, proj_size):
                kind = name.rsplit("_l", 1)[0]
                yield name, {"weight_ih": (G, I), "weight_hh": (G, R), "bias_ih": (G,),
                             "bias_hh": (G,), "weight_hr": (P, H)}[kind]
    if peephole:
        for layer in range(num_layers):
            for d in range(D):
                for kind in PEEPHOLE_KINDS:
                    yield kind + suffix(layer, d), (H,)
    if layer_norm:
        for layer in range(num_layers):
            for d in range(D):
                for kind, n in zip(LAYER_NORM_KINDS, (4 * H, 4 * H, H, H)):
                    yield kind + suffix(layer, d), (n,)


def layer_norm_init(name, shape, dtype):
    """The initial value of a layer-norm parameter: ones for the gains, zeros for the bias."""
    return (np.zeros if name.startswith("layer_norm_bias") else np.ones)(shape, dtype)


def cifg_expand(w):
    """Coupled gates: (3H, ...) rows i, g, o -> the kernels' (4H, ...) rows i, f, g, o with
    the f rows zero (the kernels compute f = 1 - i and never read them)."""
    if w is None:
        return None
    H = w.shape[0] // 3
    out = np.zeros((4 * H,) + w.shape[1:], w.dtype)
    out[:H] = w[:H]
    out[2 * H:] = w[H:]
    return out


def cifg_compress(g):
    """The kernels' (4H, ...) gradient rows i, f, g, o -> (3H, ...) rows i, g, o (f's are 0)."""
    if g is None:
        return None
    H = g.shape[0] // 4
    return np.concatenate([g[:H], g[2 * H:]])
