"""``Stream``: advance an LSTM one step (or one chunk of steps) per call.

For data that arrives over time, e.g. scoring every customer each month as the
month's numbers come in. The stream keeps the state (h, c) for a fixed batch
size between calls and uses the layer's packed weights, so a call does no
validation of the weights and no repacking. On the "c" and "numba" backends
chunked calls give the same bits as one call over the whole sequence: their
products compute every row with the same instruction sequence whatever the
number of rows. The "numpy" reference hands the input projection to BLAS, whose
last bit can depend on the number of rows, so there a chunk agrees with the
full call to rounding (for a single layer, whose first product sees the same
rows, they are usually equal too). Streaming is inference: dropout is not applied,
whatever the layer's mode. Bidirectional layers cannot stream (the reverse
direction needs the future) and are rejected.
"""

import numpy as np

from . import _validation, backends


class Stream:
    """Streaming state for ``layer`` and a fixed ``batch_size``.

    ``stream.step(x_t)`` takes x_t (B, I) and returns the top layer's h (B, H);
    ``stream.run(x)`` takes a chunk (T, B, I) and returns (T, B, H).
    ``stream.state`` is ``(h, c)``, each (num_layers, B, H) (copies);
    ``stream.reset(hx=None)`` starts over from ``hx`` or zeros.
    """

    def __init__(self, layer, batch_size=1, hx=None):
        if layer.bidirectional:
            raise ValueError("a bidirectional layer cannot stream: its reverse direction needs the whole sequence")
        self.layer = layer
        self.batch_size = _validation.check_size(batch_size, "batch_size")
        self.reset(hx)

    def reset(self, hx=None):
        """Start over from hx = (h0, c0), each (num_layers, B, H), or from zeros."""
        L, B, dtype = self.layer.num_layers, self.batch_size, self.layer.dtype
        sizes = (self.layer.proj_size or self.layer.hidden_size, self.layer.hidden_size)
        if hx is None:
            self._h = [np.zeros((B, sizes[0]), dtype) for _ in range(L)]
            self._c = [np.zeros((B, sizes[1]), dtype) for _ in range(L)]
            self._workspaces()
            return
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h0, c0)")
        h0, c0 = (_validation.as_array(s, name, dtype, (L, B, H), "(num_layers, B, H) = ({}, {}, {})")
                  for name, s, H in zip(("h0", "c0"), hx, sizes))
        self._h = [h0[k].copy() for k in range(L)]
        self._c = [c0[k].copy() for k in range(L)]
        self._workspaces()

    def _workspaces(self):
        """Buffers for a backend's allocation-free ``step``: (B, 4H) gates, (B, H)
        cell scratch per layer, and the outputs of every layer but the top one
        (the top layer's output is a fresh array the caller may keep)."""
        L, B, dt = self.layer.num_layers, self.batch_size, self.layer.dtype
        H = self.layer.hidden_size
        R = self.layer.proj_size or H
        self._xshape = (B, self.layer.input_size)
        self._gates_ws = [np.empty((B, 4 * H), dt) for _ in range(L)]
        self._c_ws = [np.empty((B, H), dt) for _ in range(L)]
        self._y = [np.empty((B, R), dt) for _ in range(L - 1)] + [None]

    @property
    def state(self):
        return np.stack(self._h), np.stack(self._c)

    def step(self, x_t):
        """One step: x_t (B, I) -> h (B, H) of the top layer."""
        layer = self.layer
        x = _validation.as_array(x_t, "x_t", layer.dtype, self._xshape, "(B, I) = ({}, {})")
        impl = backends.get(layer.backend)
        step = getattr(impl, "step", None)      # allocation-free single step (the C backend)
        if step is None:
            return self._advance(x[None])[0]
        nthreads = backends.get_num_threads()
        for k in range(layer.num_layers):
            x = step(layer._weights(k, 0), x, self._h[k], self._c[k],
                     self._gates_ws[k], self._c_ws[k], nthreads, self._y[k])
        return x

    def run(self, x):
        """A chunk of steps: x (T, B, I) -> (T, B, H)."""
        x = _validation.as_array(x, "x", self.layer.dtype, (None, self.batch_size, self.layer.input_size),
                                 "(T, B, I) = (T, {1}, {2})")
        return self._advance(x)

    def _advance(self, x):
        layer = self.layer
        impl = backends.get(layer.backend)
        nthreads = backends.get_num_threads()
        inp = x
        for k in range(layer.num_layers):
            y, self._h[k], self._c[k], _, _ = impl.forward(
                layer._weights(k, 0), inp, self._h[k], self._c[k], nthreads)
            inp = y
        return inp
