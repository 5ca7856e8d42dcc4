"""``Stream``: advance an LSTM one step (or one chunk of steps) per call.

For data that arrives over time, e.g. scoring every customer each month as the
month's numbers come in. The stream keeps the state (h, c) for a fixed batch size
between calls and uses the layer's packed weights, so a call does no validation of
the weights and no repacking; the backend updates the state in place (``step`` and
``forward(out=...)`` of the backend contract) and keeps nothing for backward. On the
"c" and "numba" backends chunked calls give the same bits as one call over the whole
sequence: their products compute every row with the same instruction sequence
whatever the number of rows. The "numpy" reference hands the input projection to
BLAS, whose last bit can depend on the number of rows, so there a chunk agrees with
the full call to rounding. Streaming is inference: dropout is not applied, whatever
the layer's mode. Bidirectional layers cannot stream (the reverse direction needs the
future) and are rejected.
"""

import numpy as np

from . import _validation, backends


class Stream:
    """Streaming state for ``layer`` and a fixed ``batch_size``.

    ``stream.step(x_t)`` takes x_t (B, I) and returns the top layer's h (B, R);
    ``stream.run(x)`` takes a chunk (T, B, I) and returns (T, B, R).
    ``stream.state`` is ``(h, c)``, (num_layers, B, R) and (num_layers, B, H) (copies);
    ``stream.reset(hx=None)`` starts over from ``hx`` or zeros. The stream reads the
    layer's current weights at every call.

    Parameters
    ----------
    layer : LSTM
        A unidirectional layer (any number of layers, projection, dtype, backend).
    batch_size : int, optional
        B, the sequences advanced together.
    hx : tuple of array_like or None, optional
        Initial ``(h0, c0)``, (num_layers, B, R) and (num_layers, B, H); None for zeros.

    Attributes
    ----------
    state : tuple of numpy.ndarray
        Copies of the current ``(h, c)``.

    Raises
    ------
    ValueError
        A bidirectional layer (its reverse direction needs the whole sequence), a
        batch_size that is not a positive int, or hx of the wrong shape.

    Examples
    --------
    >>> layer = lstm_fast.LSTM(3, 8, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((6, 1, 3)).astype(np.float32)
    >>> stream = lstm_fast.Stream(layer, batch_size=1)
    >>> hs = [stream.step(x_t) for x_t in x]        # one step as each x_t arrives
    >>> hs[-1].shape
    (1, 8)
    >>> out, _ = layer(x)                             # the whole sequence at once
    >>> bool(np.allclose(np.stack(hs), out, atol=1e-6))
    True
    """

    def __init__(self, layer, batch_size=1, hx=None):
        if layer.bidirectional:
            raise ValueError("a bidirectional layer cannot stream: its reverse direction "
                             "needs the whole sequence")
        if getattr(layer, "zoneout", 0.0):
            raise ValueError("a layer with zoneout cannot stream yet (its eval step is "
                             "h_{t-1} + (1 - zoneout) (h~_t - h_{t-1}), which Stream does not "
                             "compute): run layer(x) in eval mode instead")
        self.layer = layer
        self.batch_size = _validation.check_size(batch_size, "batch_size")
        self.reset(hx)

    def reset(self, hx=None):
        """Start over from ``hx`` or zeros.

        Parameters
        ----------
        hx : tuple of array_like or None, optional
            ``(h0, c0)``, (num_layers, B, R) and (num_layers, B, H); None for zeros.

        Raises
        ------
        TypeError
            hx not a pair.
        ValueError
            A state of the wrong shape, naming it.
        """
        layer, L, B = self.layer, self.layer.num_layers, self.batch_size
        sizes = (layer.proj_size or layer.hidden_size, layer.hidden_size)
        self._xshape = (B, layer.input_size)
        if hx is None:
            self._h, self._c = (np.zeros((L, B, C), layer.dtype) for C in sizes)
            return
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h0, c0)")
        self._h, self._c = (_validation.as_array(s, name, layer.dtype, (L, B, C),
                                                 "(num_layers, B, H) = ({}, {}, {})").copy()
                            for name, s, C in zip(("h0", "c0"), hx, sizes))

    @property
    def state(self):
        """Copies of ``(h, c)``, (num_layers, B, R) and (num_layers, B, H)."""
        return self._h.copy(), self._c.copy()

    def step(self, x_t):
        """Advance one step; the state is updated in place.

        Parameters
        ----------
        x_t : array_like
            (B, I) the input of this step.

        Returns
        -------
        numpy.ndarray
            (B, R) the top layer's hidden state after the step.

        Raises
        ------
        ValueError
            x_t of the wrong shape.
        """
        layer = self.layer
        x = _validation.as_array(x_t, "x_t", layer.dtype, self._xshape, "(B, I) = ({}, {})")
        step, num_threads = layer._impl.step, backends.threads_for(1, self.batch_size,
                                                                   layer.input_size,
                                                                   layer.hidden_size)
        for k in range(layer.num_layers):
            x = step(layer._pack(k), x, self._h[k], self._c[k], num_threads)
        return x

    def run(self, x):
        """Advance a chunk of steps; the state is updated in place.

        Parameters
        ----------
        x : array_like
            (T, B, I) the inputs of T steps.

        Returns
        -------
        numpy.ndarray
            (T, B, R) the top layer's hidden state after every step.

        Raises
        ------
        ValueError
            x of the wrong shape.
        """
        layer = self.layer
        x = _validation.as_array(x, "x", layer.dtype, (None, self.batch_size, layer.input_size),
                                 "(T, B, I) = (T, {1}, {2})")
        forward = layer._impl.forward
        num_threads = backends.threads_for(x.shape[0], self.batch_size, layer.input_size,
                                           layer.hidden_size)
        for k in range(layer.num_layers):
            h, c = self._h[k], self._c[k]
            x = forward(layer._pack(k), x, h, c, num_threads, None, False, (None, h, c))[0]
        return x
