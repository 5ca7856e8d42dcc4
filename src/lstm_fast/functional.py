"""Functional API: one LSTM layer, one direction, time-major.

    y, h_n, c_n, cache = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    grads = lstm_backward(cache, dy, dh_n, dc_n)

Arguments are validated once here (see ``_validation``) and handed to the backend
chosen by ``backend`` ("auto", "c", "numba", "numpy"). ``run_forward`` /
``run_backward`` are the one route from padded, time-major arrays to a backend call
(reversal for the second direction, lengths through a ``LengthPlan``); ``LSTM`` and
``lstm_fast.torch`` use them too, and ``LSTMCache`` is the one cache format. They live in
``_route`` (compiled with Cython, with ``LSTM``'s per-call work) and are re-exported here.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _params, _validation, backends
from ._route import LSTMCache, make_plan, run_backward, run_forward

LSTMCache.__module__ = __name__     # documented (and its example run) as functional's


class LSTMResult(NamedTuple):
    """Output of `lstm_forward`: unpacks as ``y, h_n, c_n, cache``.

    Attributes
    ----------
    y : numpy.ndarray
        (T, B, R) hidden state at every step.
    h_n : numpy.ndarray
        (B, R) final hidden state.
    c_n : numpy.ndarray
        (B, H) final cell state.
    cache : LSTMCache or None
        Input for `lstm_backward` (None with ``save=False``).

    Examples
    --------
    >>> x, w_ih, w_hh = np.ones((4, 2, 3)), np.full((8, 3), 0.1), np.full((8, 2), 0.1)
    >>> res = lstm_fast.lstm_forward(x, w_ih, w_hh, save=False)
    >>> res.y.shape, res.h_n.shape, res.cache is None
    ((4, 2, 2), (2, 2), True)
    """
    y: np.ndarray        #: (T, B, R) hidden state at every step
    h_n: np.ndarray      #: (B, R) final hidden state
    c_n: np.ndarray      #: (B, H) final cell state
    cache: LSTMCache     #: input for lstm_backward (None with save=False)


class LSTMGrads(NamedTuple):
    """Gradients returned by `lstm_backward`, named after the arguments of `lstm_forward`.

    Attributes
    ----------
    dx : numpy.ndarray
        (T, B, I); zero at padded positions.
    dw_ih : numpy.ndarray
        (4H, I) (3H with cifg).
    dw_hh : numpy.ndarray
        (4H, R) (3H with cifg).
    db_ih, db_hh : numpy.ndarray or None
        (4H,) each (3H with cifg), equal to each other; None if the forward call had
        no bias.
    dh0 : numpy.ndarray
        (B, R).
    dc0 : numpy.ndarray
        (B, H).
    dw_hr : numpy.ndarray or None
        (P, H) with a projection, else None.
    dw_ci, dw_cf, dw_co : numpy.ndarray or None
        (H,) each with peepholes, else None.
    dln_w_ih, dln_w_hh, dln_w_c, dln_b_c : numpy.ndarray or None
        (4H,), (4H,), (H,), (H,) with layer norm, else None.

    Examples
    --------
    >>> x, w_ih, w_hh = np.ones((4, 2, 3)), np.full((8, 3), 0.1), np.full((8, 2), 0.1)
    >>> g = lstm_fast.lstm_backward(lstm_fast.lstm_forward(x, w_ih, w_hh).cache, np.ones((4, 2, 2)))
    >>> g.dx.shape, g.dw_hh.shape, g.db_ih is None, g.dw_hr is None
    ((4, 2, 3), (8, 2), True, True)
    """
    dx: np.ndarray                #: (T, B, I)
    dw_ih: np.ndarray             #: (4H, I)
    dw_hh: np.ndarray             #: (4H, R)
    db_ih: Optional[np.ndarray]   #: (4H,), None if the forward call had no bias
    db_hh: Optional[np.ndarray]   #: (4H,), equal to db_ih
    dh0: np.ndarray               #: (B, R)
    dc0: np.ndarray               #: (B, H)
    dw_hr: Optional[np.ndarray] = None   #: (P, H) with a projection, else None
    dw_ci: Optional[np.ndarray] = None   #: (H,) with peepholes, else None
    dw_cf: Optional[np.ndarray] = None   #: (H,) with peepholes, else None
    dw_co: Optional[np.ndarray] = None   #: (H,) with peepholes, else None
    dln_w_ih: Optional[np.ndarray] = None   #: (4H,) with layer norm, else None
    dln_w_hh: Optional[np.ndarray] = None   #: (4H,) with layer norm, else None
    dln_w_c: Optional[np.ndarray] = None    #: (H,) with layer norm, else None
    dln_b_c: Optional[np.ndarray] = None    #: (H,) with layer norm, else None


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None,
                 lengths=None, backend="auto", save=True, w_ci=None, w_cf=None, w_co=None,
                 clip=None, cell_clip=None, cifg=False, rdrop=None, zoneout=None,
                 ln_w_ih=None, ln_w_hh=None, ln_w_c=None, ln_b_c=None):
    """Run one LSTM layer over a sequence (one direction, time-major).

    Shapes and names follow ``torch.nn.LSTM``, gate order i, f, g, o. The dtype
    (float32 or float64) is that of `w_ih`: integer and bool inputs are converted
    to it, a float array of the other precision is an error. Any memory layout is
    accepted (copied to C order first). T = 0 is allowed: y is empty and h_n, c_n
    equal h0, c0.

    Parameters
    ----------
    x : array_like
        (T, B, I) input sequence.
    w_ih : array_like
        (4H, I) input weights, float32 or float64.
    w_hh : array_like
        (4H, R) recurrent weights (R = P with a projection, else H).
    b_ih, b_hh : array_like or None, optional
        (4H,) biases, both given or both None (no bias).
    h0 : array_like or None, optional
        (B, R) initial hidden state; None for zeros.
    c0 : array_like or None, optional
        (B, H) initial cell state; None for zeros.
    w_hr : array_like or None, optional
        (P, H) projection (torch's ``proj_size = P``): h, y and h_n then have P
        columns and the gradients include ``dw_hr``.
    lengths : array_like of int or None, optional
        (B,) valid steps per sequence, in [0, T], any order: sequence b is
        ``x[:lengths[b], b]``; its h_n, c_n come from its own last valid step and y
        is exactly zero past it. Work scales with the sum of lengths.
    backend : {"auto", "c", "numba", "numpy"}, optional
        Which implementation runs; "auto" picks the first available of c, numba,
        numpy, or the one named by the environment variable ``LSTM_FAST_BACKEND``;
        with layer norm "auto" is "numpy" ("numba" runs it too, "c" not yet).
    save : bool, optional
        Keep what `lstm_backward` needs (default). False keeps nothing (cache None):
        inference without the memory of the saved gates and cell states.
    w_ci, w_cf, w_co : array_like or None, optional
        (H,) each, all three or none: peephole weights (Gers & Schmidhuber; ONNX's
        ``P``, TensorFlow's ``use_peepholes``). The input and forget gates see
        c_{t-1}, the output gate sees c_t: ``i = sigmoid(... + w_ci * c_{t-1})``,
        ``f = sigmoid(... + w_cf * c_{t-1})``, ``o = sigmoid(... + w_co * c_t)``. The
        gradients then include ``dw_ci``, ``dw_cf``, ``dw_co``.
    clip : float or None, optional
        > 0: every gate pre-activation (peephole term included) is clamped to
        [-clip, clip] before its activation, as ONNX's LSTM ``clip``; zero gradient
        where clamped. None or 0: off.
    cell_clip : float or None, optional
        > 0: the cell state c_t is clamped to [-cell_clip, cell_clip] (the clamped
        value is carried, saved and returned as c_n), as TensorFlow's ``cell_clip``;
        zero gradient where clamped. None or 0: off.
    cifg : bool, optional
        Coupled input and forget gates (ONNX's ``input_forget``, as ONNX Runtime
        computes it): ``f = 1 - i``. The weights and biases then have 3H rows,
        gates i, g, o (and w_cf, if given, is unused). The cache's gates still
        hold four (f = 1 - i). TFLite's CIFG couples ``i = 1 - f`` instead: see
        ``lstm_fast.backends.reference`` for the conversion.
    rdrop : array_like or None, optional
        (B, R) recurrent (variational) dropout mask (Gal & Ghahramani 2016; Keras'
        ``recurrent_dropout``), already scaled (inverted dropout: 0 or 1/(1-p)),
        the same at every step: the recurrent product uses ``h_{t-1} * rdrop``
        (h_t itself, y and h_n, is not masked); the gradients flow through it.
        None: off. Given explicitly so that any mask (and the same one on every
        backend) can be used; ``LSTM(recurrent_dropout=p)`` draws one per call.
    zoneout : array_like or None, optional
        (T, B, H) zoneout mask on h (haste's ``ZoneoutLSTM``, lmnt-com/haste
        lib/lstm_forward_gpu.cu.cc), a new one every step: with h~_t = o * tanh(c_t),
        ``h_t = h_{t-1} + zoneout_t * (h~_t - h_{t-1})``, computed as
        ``(h~_t - h_{t-1}) * zoneout_t + h_{t-1}``. Training: Bernoulli(1 - z) values
        (1: the new value); eval: ``1 - z`` everywhere (haste's
        ``z h_{t-1} + (1 - z) h~_t``). The gradients flow through it. No projection.
        None: off. ``LSTM(zoneout=z)`` draws them per call.
    ln_w_ih, ln_w_hh, ln_w_c, ln_b_c : array_like or None, optional
        (4H,), (4H,), (H,), (H,), all four or none: the layer-normalized LSTM of
        haste's ``LayerNormLSTM`` (lmnt-com/haste,
        frameworks/pytorch/layer_norm_lstm.py): with ``LN(z)`` the row's
        ``(z - mean) / sqrt(var + 1e-5)`` over its 4H (or H) values,
        ``a_t = LN(x_t @ w_ih.T) * ln_w_ih + LN(h_{t-1} @ w_hh.T) * ln_w_hh + b_ih + b_hh``
        gives the gates (torch's order i, f, g, o), c_t is carried un-normalized and
        ``h_t = o * tanh(LN(c_t) * ln_w_c + ln_b_c)``. Combines with the peepholes,
        clips, rdrop and zoneout; not with a projection or cifg. Runs on the
        "c", "numba" and "numpy" backends. The gradients then include ``dln_w_ih``,
        ``dln_w_hh``, ``dln_w_c``, ``dln_b_c``. Equations (and haste's gate order
        i, g, f, o mapped to ours) in ``lstm_fast.backends.reference``.

    Returns
    -------
    LSTMResult
        ``(y, h_n, c_n, cache)``: y (T, B, R), h_n (B, R), c_n (B, H), and the
        `LSTMCache` to pass to `lstm_backward`.

    Raises
    ------
    ValueError
        A shape that does not fit, naming the argument, the shape received and
        the one expected; lengths outside [0, T]; an unknown backend name; a
        negative or non-finite clip or cell_clip; only some of w_ci, w_cf, w_co (or of
        the layer-norm parameters); layer norm with a projection, cifg or the "c" or
        "numba" backend.
    TypeError
        An input of the other float precision than the weights, or not numeric.
    BackendUnavailableError
        The backend asked for is not available here.

    Notes
    -----
    The variants (peepholes, clip, cell_clip) combine freely; the equations are
    in ``lstm_fast.backends.reference``. The backward of the fused backends ("c",
    "numba") tells a clamped gate by its saved activation (equal to the
    activation of +-clip), so a pre-activation within rounding of +-clip also
    counts as clamped there.

    See Also
    --------
    lstm_backward : gradients of this call.
    LSTM : several layers, both directions, torch.nn.LSTM's interface.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> T, B, I, H = 5, 2, 3, 4
    >>> x = rng.standard_normal((T, B, I))
    >>> w_ih, w_hh = rng.uniform(-0.5, 0.5, (4 * H, I)), rng.uniform(-0.5, 0.5, (4 * H, H))
    >>> y, h_n, c_n, cache = lstm_fast.lstm_forward(x, w_ih, w_hh)
    >>> y.shape, h_n.shape, c_n.shape
    ((5, 2, 4), (2, 4), (2, 4))
    >>> bool(np.array_equal(y[-1], h_n))
    True

    With lengths, each sequence stops at its own last step:

    >>> res = lstm_fast.lstm_forward(x, w_ih, w_hh, lengths=[5, 2])
    >>> bool(np.all(res.y[2:, 1] == 0)), bool(np.allclose(res.h_n[1], res.y[1, 1]))
    (True, True)

    Peepholes and a cell clip:

    >>> w_c = rng.uniform(-0.5, 0.5, (3, H))
    >>> res = lstm_fast.lstm_forward(x, w_ih, w_hh, w_ci=w_c[0], w_cf=w_c[1], w_co=w_c[2],
    ...                              cell_clip=0.5)
    >>> bool(np.abs(res.c_n).max() <= 0.5)
    True
    """
    ln_given = not (ln_w_ih is None and ln_w_hh is None and ln_w_c is None and ln_b_c is None)
    name = backends.resolve(backends.layer_norm_backend(backend) if ln_given else backend)
    if not isinstance(cifg, (bool, np.bool_)):
        raise TypeError(f"cifg must be a bool, got {cifg!r}")
    w_ih, w_hh, b, w_hr, dtype, I, H, R = (_validation.cifg_weights if cifg else
                                           _validation.weights)(w_ih, w_hh, b_ih, b_hh, w_hr)
    ln = None
    if ln_given:
        if w_hr is not None:
            raise ValueError("layer norm (ln_w_ih, ...) needs no projection (w_hr None), as "
                             "in haste")
        if cifg:
            raise ValueError("layer norm (ln_w_ih, ...) does not combine with cifg=True (the LN "
                             "of three gates is not defined by haste's LayerNormLSTM)")
        ln = _validation.layer_norm(dtype, H, ln_w_ih, ln_w_hh, ln_w_c, ln_b_c)
    x = _validation.sequence(x, "x", dtype, I)
    T, B = x.shape[0], x.shape[1]
    h0 = _validation.state(h0, "h0", dtype, B, R)
    c0 = _validation.state(c0, "c0", dtype, B, H)
    plan = make_plan(_validation.lengths(lengths, B, T), T, B)
    variant = _validation.variant(dtype, H, w_ci, w_cf, w_co, clip, cell_clip, cifg, ln)
    if rdrop is not None:
        rdrop = _validation.as_array(rdrop, "rdrop", dtype, (B, R))
    if zoneout is not None:
        if w_hr is not None:
            raise ValueError("zoneout needs no projection (w_hr None), as in haste")
        zoneout = _validation.as_array(zoneout, "zoneout", dtype, (T, B, H))
    impl = backends.get(name)
    packed = impl.pack(w_ih, w_hh, b, w_hr) if variant is None else \
        impl.pack(w_ih, w_hh, b, w_hr, variant=variant)
    y, h_n, c_n, cache = run_forward(impl, packed, x, h0, c0, backends.threads_for(T, B, I, H),
                                     plan, False, bool(save), None, rdrop, zoneout,
                                     ln is not None)
    return LSTMResult(y, h_n, c_n, cache)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for a forward call.

    Parameters
    ----------
    cache : LSTMCache
        ``cache`` of the `lstm_forward` call (made with ``save=True``).
    dy : array_like or None, optional
        (T, B, R) gradient of the loss with respect to ``y``; None means zero.
    dh_n : array_like or None, optional
        (B, R) gradient with respect to ``h_n``; None means zero.
    dc_n : array_like or None, optional
        (B, H) gradient with respect to ``c_n``; None means zero.

    Returns
    -------
    LSTMGrads
        ``(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr, dw_ci, dw_cf, dw_co)``,
        the gradients with respect to the arguments of `lstm_forward` of the same
        names (dw_hr and the peephole gradients None when those are not used).

    Raises
    ------
    TypeError
        `cache` is not an `LSTMCache` (e.g. None from a call with ``save=False``).
    ValueError
        A gradient whose shape does not match its output, naming it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((5, 2, 3))
    >>> w_ih, w_hh = rng.uniform(-0.5, 0.5, (16, 3)), rng.uniform(-0.5, 0.5, (16, 4))
    >>> b_ih, b_hh = np.zeros(16), np.zeros(16)
    >>> y, h_n, c_n, cache = lstm_fast.lstm_forward(x, w_ih, w_hh, b_ih, b_hh)
    >>> grads = lstm_fast.lstm_backward(cache, dy=np.ones_like(y))    # loss = y.sum()
    >>> grads.dx.shape, grads.dw_ih.shape, grads.dw_hh.shape, grads.db_ih.shape
    ((5, 2, 3), (16, 3), (16, 4), (16,))

    The gradient agrees with a finite difference of the loss:

    >>> eps, w2 = 1e-6, w_hh.copy()
    >>> w2[0, 0] += eps
    >>> y2 = lstm_fast.lstm_forward(x, w_ih, w2, b_ih, b_hh).y
    >>> bool(abs((y2.sum() - y.sum()) / eps - grads.dw_hh[0, 0]) < 1e-5)
    True
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError(f"cache must be the LSTMCache returned by lstm_forward, "
                        f"got {type(cache).__name__}")
    packed, x = cache.packed, cache.saved[0]
    dtype, I, H = packed.dtype, packed.input_size, packed.hidden_size
    R = packed.proj_size or H
    T, B = (x.shape[0], x.shape[1]) if cache.plan is None else (cache.plan.T, cache.plan.B)
    dy = _validation.zeros((T, B, R), dtype) if dy is None else \
        _validation.as_array(dy, "dy", dtype, (T, B, R))
    dh_n = _validation.state(dh_n, "dh_n", dtype, B, R)
    dc_n = _validation.state(dc_n, "dc_n", dtype, B, H)
    variant = getattr(packed, "variant", None)
    dpeep = None if variant is None or variant.peephole is None else np.empty((3, H), dtype)
    dln = None if variant is None or variant.layer_norm is None else np.empty(10 * H, dtype)
    dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr = run_backward(cache, dy, dh_n, dc_n,
                                                         backends.threads_for(T, B, I, H),
                                                         None, dpeep, dln)
    if variant is not None and variant.cifg:    # the kernels' 4H rows -> i, g, o
        dw_ih, dw_hh, db = map(_params.cifg_compress, (dw_ih, dw_hh, db))
    return LSTMGrads(dx, dw_ih, dw_hh, *_params.bias_grads(db), dh0, dc0, dw_hr,
                     *((None,) * 3 if dpeep is None else dpeep),
                     *((None,) * 4 if dln is None else
                       (dln[:4 * H], dln[4 * H:8 * H], dln[8 * H:9 * H], dln[9 * H:])))
