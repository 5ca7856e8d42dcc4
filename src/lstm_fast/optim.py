"""Optimizers for NumPy parameters: :class:`~lstm_fast.optim.Adam`.

The layer computes gradients and never updates its own weights (no optimizer
steps inside backward); this module is the training utility for NumPy users of
the layer, and what ``lstm-fast churn`` trains with. An optimizer updates a
dict of arrays in place from a dict of gradients with the same names, e.g. the
layer's parameters, opened for writing::

    opt = lstm_fast.optim.Adam(lr=1e-3)
    out, _ = layer(x)
    layer.backward(dy)
    with layer.unlocked_parameters() as params:
        opt.step(params, layer.grads)

Any other arrays can join the same dict (a head's weights, under names of your
choice); names are how the optimizer keeps each array's state.
"""

import math

import numpy as np

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba, 2015) with the update of ``torch.optim.Adam``.

    The update is torch's (``amsgrad=False``, ``maximize=False``; ``weight_decay`` adds
    ``weight_decay * param`` to the gradient, as torch's Adam does, not AdamW)::

        g  = grad + weight_decay * param
        m  = m + (1 - beta1) * (g - m)
        v  = beta2 * v + (1 - beta2) * g * g
        param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    where ``t`` counts the steps that name has had a gradient in (per parameter,
    as in torch: a name left out of ``grads`` for a step keeps its state).
    The moments ``m``, ``v`` are kept per name in float64 whatever the parameter
    dtype (float32 parameters get the float64 step rounded once); in float64 the
    parameters equal torch.optim.Adam's to rounding (tested).

    ``step(params, grads)``: ``params`` maps names to writable arrays, updated in
    place; ``grads`` maps (some of) the same names to arrays of the same shapes.
    ``t`` counts the calls of ``step``; ``m``, ``v`` and ``steps`` hold the
    moments and the step count by name.

    Parameters
    ----------
    lr : float, optional
        Learning rate, >= 0.
    betas : tuple of float, optional
        (beta1, beta2), each in [0, 1).
    eps : float, optional
        Added to the denominator, >= 0.
    weight_decay : float, optional
        L2 penalty added to the gradient, >= 0.

    Attributes
    ----------
    t : int
        Calls of `step` so far.
    m, v : dict of str to numpy.ndarray
        First and second moments by name (float64).
    steps : dict of str to int
        Steps each name has had.

    Raises
    ------
    ValueError
        A hyperparameter out of its range, naming it.

    Examples
    --------
    Minimize ``(w - 3)**2`` for a one-element parameter:

    >>> params = {"w": np.zeros(1)}
    >>> opt = lstm_fast.optim.Adam(lr=0.1)
    >>> for _ in range(200):
    ...     opt.step(params, {"w": 2 * (params["w"] - 3)})
    >>> bool(abs(params["w"][0] - 3) < 0.05), opt.t
    (True, 200)
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not (isinstance(lr, (int, float)) and lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), (b1, b2), float(eps), float(weight_decay)
        self.t = 0
        self.m, self.v, self.steps = {}, {}, {}

    def step(self, params, grads):
        """One Adam step over every name in ``grads`` (see the class docstring).

        Parameters
        ----------
        params : dict of str to numpy.ndarray
            Writable arrays, updated in place (a layer's parameters: open them with
            ``LSTM.unlocked_parameters()``).
        grads : dict of str to array_like
            Gradients for (some of) the names in `params`, of the same shapes.

        Raises
        ------
        KeyError
            A name in `grads` that `params` does not have.
        ValueError
            A read-only parameter, or a gradient of another shape (checked for every
            name before anything is updated).
        """
        for name, g in grads.items():
            if name not in params:
                raise KeyError(f"grads has {name!r}, which params does not have "
                               f"(params: {', '.join(map(str, params)) or 'none'})")
            p = params[name]
            if not isinstance(p, np.ndarray) or not p.flags.writeable:
                raise ValueError(f"params[{name!r}] must be a writable NumPy array (the step is "
                                 f"in place; open a layer's parameters with unlocked_parameters())")
            if np.shape(g) != p.shape:
                raise ValueError(f"grads[{name!r}] must have the shape of params[{name!r}], "
                                 f"{p.shape}, got {np.shape(g)}")
        self.t += 1
        b1, b2 = self.betas
        for name, g in grads.items():
            p = params[name]
            g = np.asarray(g, dtype=np.float64)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if name not in self.m:
                self.m[name] = np.zeros(p.shape)
                self.v[name] = np.zeros(p.shape)
                self.steps[name] = 0
            self.steps[name] += 1
            k = self.steps[name]
            step_size = self.lr / (1.0 - b1 ** k)
            c2_sqrt = (1.0 - b2 ** k) ** 0.5
            m, v = self.m[name], self.v[name]
            m += (1.0 - b1) * (g - m)
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= (step_size * (m / (np.sqrt(v) / c2_sqrt + self.eps))).astype(p.dtype, copy=False)
