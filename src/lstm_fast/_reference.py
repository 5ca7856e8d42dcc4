"""NumPy reference LSTM: the oracle every backend is tested against.

Written for clarity, with the structure of the fused kernels (csrc/lstm.h and
_numba_kernels.py mirror these names and arguments):

* forward: one product ``x @ w_ih.T`` for all T*B rows (hoisted out of the time
  loop); per step the recurrent product ``h @ w_hh.T`` accumulated into the same
  buffer, then one elementwise pass: gate activations, cell and hidden update.
* backward (BPTT): per step only the elementwise gate gradients and
  ``dh = dgates @ w_hh``; ``dw_ih``, ``dw_hh``, ``db`` and ``dx`` are whole-sequence
  products after the loop.

Shapes (time-major, PyTorch conventions, gate order i, f, g, o)::

    x      (T, B, I)      w_ih (4H, I)     w_hh (4H, H)     b (4H,) = b_ih + b_hh
    h0, c0 (B, H)         y    (T, B, H)   h_n, c_n (B, H)
    gates  (T, B, 4H)     activated gates i, f, g, o, saved for backward
    c      (T, B, H)      cell state after every step, saved for backward

Backward takes derivatives from the saved activations (sigmoid' = s(1-s),
tanh' = 1-t^2) and recomputes only tanh(c_t).
"""

import numpy as np

GATE_ORDER = ("i", "f", "g", "o")


def sigmoid(z):
    """Logistic function without overflow for any |z| (no warnings at 1e30)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def lstm_forward(x, w_ih, w_hh, b, h0, c0):
    """Returns ``(y, h_n, c_n, gates, c)``; see the module docstring for shapes."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    gates = (x.reshape(T * B, x.shape[2]) @ w_ih.T).reshape(T, B, 4 * H)
    if b is not None:
        gates += b
    y = np.empty((T, B, H), dtype)
    c = np.empty((T, B, H), dtype)
    h_prev, c_prev = h0, c0
    for t in range(T):
        a = gates[t]
        a += h_prev @ w_hh.T
        a[:, 0 * H:2 * H] = sigmoid(a[:, 0 * H:2 * H])   # i, f
        a[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])   # g
        a[:, 3 * H:4 * H] = sigmoid(a[:, 3 * H:4 * H])   # o
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c[t] = f * c_prev + i * g
        y[t] = o * np.tanh(c[t])
        h_prev, c_prev = y[t], c[t]
    h_n = h_prev.copy()
    c_n = c_prev.copy()
    return y, h_n, c_n, gates, c


def lstm_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n):
    """Returns ``(dx, dw_ih, dw_hh, db, dh0, dc0)``.

    ``dy`` (T, B, H) is the gradient of the loss with respect to ``y``;
    ``dh_n`` and ``dc_n`` (B, H) with respect to the final states.
    """
    T, B, I = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    dgates = np.empty((T, B, 4 * H), dtype)
    dh = dh_n.copy()
    dc = dc_n.copy()
    for t in range(T - 1, -1, -1):
        i, f, g, o = (gates[t, :, k * H:(k + 1) * H] for k in range(4))
        c_prev = c[t - 1] if t > 0 else c0
        dh = dh + dy[t]
        tanh_c = np.tanh(c[t])
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        dgates[t, :, 0 * H:1 * H] = dc * g * i * (1 - i)
        dgates[t, :, 1 * H:2 * H] = dc * c_prev * f * (1 - f)
        dgates[t, :, 2 * H:3 * H] = dc * i * (1 - g * g)
        dgates[t, :, 3 * H:4 * H] = dh * tanh_c * o * (1 - o)
        dc = dc * f
        dh = dgates[t] @ w_hh
    h_prev = np.concatenate([h0[None], y[:-1]], axis=0) if T > 0 else h0[None]
    dg2 = dgates.reshape(T * B, 4 * H)
    dx = (dg2 @ w_ih).reshape(T, B, I)
    dw_ih = dg2.T @ x.reshape(T * B, I)
    dw_hh = dg2.T @ h_prev[:T].reshape(T * B, H)
    db = dg2.sum(axis=0)
    return dx, dw_ih, dw_hh, db, dh, dc


# --- backend contract (see _backends.py) -----------------------------------

def pack(w_ih, w_hh, b):
    return (w_ih, w_hh, b)


def forward(packed, x, h0, c0, num_threads):
    w_ih, w_hh, b = packed
    return lstm_forward(x, w_ih, w_hh, b, h0, c0)


def backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads):
    w_ih, w_hh, _ = packed
    return lstm_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n)
