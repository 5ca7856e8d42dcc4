"""NumPy reference LSTM: the oracle every backend is tested against.

Written for clarity, with the structure of the fused kernels (csrc/lstm.h and
backends/numba/ use these names and arguments):

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

Projection (LSTMP, torch's ``proj_size`` = P): with ``w_hr`` (P, H) the
hidden state is projected, h_t = (o * tanh(c_t)) @ w_hr.T, so h0, h_n and y
have P columns and ``w_hh`` is (4H, P). Backward then also returns
``dw_hr`` (P, H), a whole-sequence product after the loop.

Variants (issue 15; each off by default, any combination), with
``a_* = x_t @ w_ih_*.T + b_* + h_{t-1} @ w_hh_*.T`` the gate's product part::

    i   = sigmoid(clip(a_i + w_ci * c_{t-1}))        peepholes: w_ci, w_cf, w_co (H,) each,
    f   = sigmoid(clip(a_f + w_cf * c_{t-1}))        diagonal (Gers & Schmidhuber 2000;
    g   = tanh(clip(a_g))                            ONNX's P, TensorFlow's use_peepholes)
    c_t = cell_clip(f * c_{t-1} + i * g)
    o   = sigmoid(clip(a_o + w_co * c_t))            o sees the new (clipped) c_t
    h_t = o * tanh(c_t)

Coupled input and forget gates (``cifg``; ONNX's ``input_forget``, computed as ONNX
Runtime does): ``f = 1 - i`` replaces the forget gate (its rows of the weights, zeros
here, and w_cf are not used; they get zero gradients), so ``da_f = 0`` and
``da_i = dc~ (g - c_{t-1}) i (1 - i) [..]`` below. TFLite's CIFG couples the other
way, ``i = 1 - f`` with f = sigmoid(z_f): its weights convert by taking its forget
gate's rows (weights, biases, and its peephole w_cf as our w_ci), negated, as our input
gate's: our i = sigmoid(-z_f) = 1 - f_TFLite = i_TFLite, and our f = 1 - i = f_TFLite.

``clip(z)`` clamps to [-clip, clip] (ONNX LSTM ``clip``), ``cell_clip(z)`` to
[-cell_clip, cell_clip] (TensorFlow's ``cell_clip``); the carried state is the clamped
c_t. Both have zero gradient where they clamp (|z| > clip) and 1 elsewhere. The
reference tells where they clamped by recomputing the pre-activations in backward
(plain and exact); the fused kernels recognise a clamped gate by its saved value
act(+-clip), so they differ from this only for a pre-activation within rounding of
+-clip. Backward then also returns ``dpeephole`` (3, H) (rows ci, cf, co)::

    da_o = dm * tanh(c_t) * o (1 - o) * [|pre_o| <= clip]
    dc_t = dc_{t+1 path} + dm * o * (1 - tanh^2 c_t) + w_co * da_o
    dc~  = dc_t * [|f c_{t-1} + i g| <= cell_clip]
    da_i = dc~ g i (1 - i) [..]   da_f = dc~ c_{t-1} f (1 - f) [..]   da_g = dc~ i (1 - g^2) [..]
    dc_{t-1} = dc~ f + w_ci da_i + w_cf da_f
    dw_ci = sum da_i c_{t-1}      dw_cf = sum da_f c_{t-1}      dw_co = sum da_o c_t

Recurrent (variational) dropout (``rdrop``, Gal & Ghahramani 2016; Keras'
``recurrent_dropout``): a mask ``m`` (B, R) per sequence, the same at every step, already
scaled (inverted dropout: 0 or 1 / (1 - p)), multiplies h_{t-1} in the recurrent product
only: ``a_* = x_t @ w_ih_*.T + b_* + (h_{t-1} * m) @ w_hh_*.T``. Backward:
``dw_hh = sum dgates_t.T @ (h_{t-1} * m)`` and the gradient reaching h_{t-1} through the
product is ``(dgates_t @ w_hh) * m`` (dh0 too). h_t itself (y, h_n) is not masked.

Zoneout on h (Krueger et al. 2017), as haste's ZoneoutLSTM (lmnt-com/haste,
lib/lstm_forward_gpu.cu.cc: ``cur_h_value = (cur_h_value - h) * zoneout_mask + h`` in
training, ``zoneout_prob * h + (1 - zoneout_prob) * cur_h_value`` in eval): a mask ``zm``
shaped like y, one row per row of x (a new mask every step), with
``h~_t = o * tanh(c_t)`` and ``h_t = h_{t-1} + zm_t * (h~_t - h_{t-1})``: in training zm is
Bernoulli(1 - zoneout) (1 keeps the new value), in eval zm = 1 - zoneout everywhere (the
expectation, haste's eval formula up to rounding). The carried and returned h is h_t. No
projection. Backward, with dh_t the whole gradient reaching h_t:
``dh~_t = zm_t * dh_t`` goes into the cell, ``(1 - zm_t) * dh_t`` is added to dh_{t-1}.

Layer-normalized LSTM (``layer_norm``), as haste's LayerNormLSTM (lmnt-com/haste,
frameworks/pytorch/layer_norm_lstm.py ``LayerNormLSTMScript``, the CUDA kernels
lib/layer_norm_lstm_forward_gpu.cu.cc and lib/layer_norm_forward_gpu.cu.cc). With
``LN(z; g, b) = (z - mean(z)) * rstd(z) * g + b`` over the last axis of one row,
``rstd = 1 / sqrt(var + eps)``, the biased variance (divided by the row's length) and
``eps = LN_EPS = 1e-5`` (lib/layer_norm_forward_gpu.cu.cc: ``rsqrt(sum / hidden_size +
1e-5)``; torch's F.layer_norm default, which haste's LayerNormLSTMScript uses)::

    a_t  = LN(x_t @ w_ih.T; g_ih) + LN((h_{t-1} [* m]) @ w_hh.T; g_hh) + b     (4H, no LN bias)
    i, f, g, o and c_t from a_t as above (the other variants apply unchanged: peepholes
          see the un-normalized c, clip clamps a_t + peephole terms, c_t = cell_clip(..))
    h~_t = o * tanh(LN(c_t; g_c, b_c))                                          (H)
    h_t  = h~_t, or zoneout's h_{t-1} + zm_t (h~_t - h_{t-1})

c_t is carried (and saved, and returned as c_n) un-normalized. Each LN is over the whole
4H row of its product, so the order of the gates does not matter to it, only to the gains:
haste's gate order is i, g, f, o (kernel (I, 4H), recurrent_kernel (H, 4H), bias, gamma
(2, 4H) in that column order); ours is torch's i, f, g, o, so its blocks 1 and 2 swap:
``w_ih = kernel.T[[i, f, g, o] blocks]``, ``g_ih = gamma[0]``, ``g_hh = gamma[1]`` with the
same block swap, ``b = bias`` swapped (our b_ih + b_hh), ``g_c = gamma_h``,
``b_c = beta_h``. ``layer_norm`` is the (10H,) concatenation [g_ih (4H), g_hh (4H),
g_c (H), b_c (H)] (``ln_split``). No projection, no cifg (LN over 3 gates is not defined
by haste).

What backward needs of the layer norms is saved in ``stats`` (N, S) (padded: (T, B, S);
S = ``ln_stats_width(H)``): per row the statistics, columns
``LN_STATS = (mean_x, rstd_x, mean_h, rstd_h, mean_c, rstd_c)``, then from the columns
``ln_zhat_columns(H)`` (16, and 16 + 4H rounded up to 16: each part on its own cache
lines for the C kernel's vector loads; the padding is never written) the normalized
products ``zhat_x = (x_t @ w_ih.T - mean_x) * rstd_x`` (4H) and ``zhat_h`` (4H, of the
recurrent product) as the forward computed them: backward recomputes neither product (it
did until issue 15's training-cost work: two products of the forward's size again) and
normalizes only c_t again (from c and the saved mean_c, rstd_c). With
``zhat = (z - mean) * rstd`` and ``dzhat = dout * g``, the LN backward of one row is
``dz = rstd * (dzhat - mean(dzhat) - zhat * mean(dzhat * zhat))`` and ``dg = sum dout * zhat``
(``db_c = sum dout``)::

    dn_t  = dm * o * (1 - tanh^2 n_t)          n_t = LN(c_t; g_c, b_c), dm the gradient of h~_t
    dc_t  = dc_{t+1 path} + LN_back(dn_t) [+ peephole term]   (replaces dm * o * (1 - tanh^2 c_t))
    da_o  = dm * tanh(n_t) * o (1 - o) [..];   da_i, da_f, da_g, dc_{t-1} as above
    dz_h  = LN_back_hh(da_t)  ->  dh_{t-1} = dz_h @ w_hh [* m],
                                  dw_hh = sum dz_h.T @ (h_{t-1} [* m])
    dz_x  = LN_back_ih(da)    ->  dx = dz_x @ w_ih,  dw_ih = dz_x.T @ x   (after the loop)
    db    = sum da;  dg_ih = sum da * zhat_x;  dg_hh = sum da * zhat_h;  dg_c = sum dn * chat;
    db_c  = sum dn

For the fused kernels (Numba's: backends/numba/lnorm.py, which follows this note with the
statistics and both normalized products saved; C's not written yet), where the row
statistics must be computed:
forward, the input product's statistics for all rows at once after the hoisted
``x @ w_ih.T`` (one pass per row over its 4H values; then normalize, times g_ih, plus b:
the buffer holds what the plain kernel's holds after its bias). Per step the recurrent
product goes into a buffer of its own (not accumulated into the gates as in the plain
kernel): a row's 4H statistics are needed before any of its gates is activated; then the
elementwise pass up to c_t, then c_t's statistics over H, then h~_t. Where a step's
threads split the units (C), each row's statistics span every thread's columns: two
more synchronisations per step (or per-thread partial sums reduced in a fixed order, so
the bits do not depend on the thread count); where they split the rows (Numba) the
statistics stay in the thread; the forward writes ``zhat_x`` and ``zhat_h`` (the values it
multiplies by the gains) into ``stats`` as it computes them. Backward: the saved
statistics and normalized products; per step two row reductions over H (c's LN) and two over 4H (the recurrent LN) before
``dh_{t-1} = dz_h @ w_hh``; the input LN's backward for all rows after the loop; the gains'
and c bias's gradients are column sums, as db.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import Variant, as_matrix, ln_stats_width, ln_zhat_columns

GATE_ORDER = ("i", "f", "g", "o")


def sigmoid(z):
    """Logistic function without overflow for any |z| (no warnings at 1e30)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _steps(x, batch_sizes):
    """Packed (N, F) view of x and the per-step (offset, active rows) list."""
    if batch_sizes is None:
        T, B = x.shape[:2]
        batch_sizes = [B] * T
        x = x.reshape(T * B, x.shape[2])
    steps, offset = [], 0
    for n in batch_sizes:
        steps.append((offset, int(n)))
        offset += int(n)
    return x, steps


# NaN and inf in the inputs propagate as in torch.nn.LSTM, silently: NumPy's
# "invalid value" / "overflow" warnings for them (inf - inf, 0 * inf) are off.
_QUIET = dict(invalid="ignore", over="ignore")


@np.errstate(**_QUIET)
def lstm_forward(x, w_ih, w_hh, b, h0, c0, batch_sizes=None, w_hr=None, peephole=None,
                 clip=0.0, cell_clip=0.0, cifg=False, rdrop=None, zoneout=None, layer_norm=None,
                 stats=None):
    """Returns ``(y, h_n, c_n, gates, c)``; see the module docstring for shapes.

    ``layer_norm`` (10H,) [g_ih, g_hh, g_c, b_c]: the layer-normalized LSTM (module
    docstring); ``stats`` then an array (N, S) (padded (T, B, S), S =
    ``ln_stats_width``) that receives what backward needs (the rows' statistics
    ``LN_STATS``, then the normalized input and recurrent products), or None (not kept).

    ``peephole`` (3, H) rows w_ci, w_cf, w_co, ``clip`` and ``cell_clip`` (> 0: on) are
    the variants of the module docstring; gates are then the activated clamped gates and
    c the clamped cell states. ``rdrop`` (B, R) the recurrent dropout mask (scaled), or
    None; ``zoneout`` the zoneout mask shaped like y (no projection), or None.

    With ``batch_sizes`` (T,) non-increasing, ``x`` is packed step-major like
    torch's PackedSequence.data: (N, I) with N = sum(batch_sizes), the rows of
    step t at offset sum(batch_sizes[:t]); only the first batch_sizes[t]
    sequences advance at step t, the others keep their state. y, gates and c
    are then packed the same way.
    """
    if layer_norm is not None:
        if cifg or w_hr is not None:
            raise ValueError("layer_norm: no projection (w_hr) and no cifg")
        return _ln_forward(x, w_ih, w_hh, b, h0, c0, batch_sizes, peephole, clip, cell_clip,
                           rdrop, zoneout, layer_norm, stats)
    xp, steps = _steps(x, batch_sizes)
    H = w_ih.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    zm = None if zoneout is None else zoneout.reshape(xp.shape[0], P)
    gates = xp @ w_ih.T                       # hoisted input projection, all steps at once
    if b is not None:
        gates += b
    y = np.empty((xp.shape[0], P), x.dtype)
    c = np.empty((xp.shape[0], H), x.dtype)
    h_state, c_state = h0.copy(), c0.copy()
    variant = peephole is not None or clip > 0 or cell_clip > 0 or cifg
    for off, n in steps:
        a = gates[off:off + n]
        h_in = h_state[:n] if rdrop is None else h_state[:n] * rdrop[:n]
        a += h_in @ w_hh.T                    # recurrent product, accumulated
        if variant:
            c_state[:n] = _variant_cell(a, c_state[:n], H, peephole, clip, cell_clip, cifg)
            o, c_t = a[:, 3 * H:], c_state[:n]
            h_new = o * np.tanh(c_t) if w_hr is None else (o * np.tanh(c_t)) @ w_hr.T
            if zm is not None:
                h_new = h_state[:n] + zm[off:off + n] * (h_new - h_state[:n])
            h_state[:n] = h_new
            c[off:off + n] = c_state[:n]
            y[off:off + n] = h_state[:n]
            continue
        a[:, 0 * H:2 * H] = sigmoid(a[:, 0 * H:2 * H])   # i, f
        a[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])   # g
        a[:, 3 * H:4 * H] = sigmoid(a[:, 3 * H:4 * H])   # o
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c_state[:n] = f * c_state[:n] + i * g
        h_new = o * np.tanh(c_state[:n]) if w_hr is None else (o * np.tanh(c_state[:n])) @ w_hr.T
        if zm is not None:
            h_new = h_state[:n] + zm[off:off + n] * (h_new - h_state[:n])
        h_state[:n] = h_new
        c[off:off + n] = c_state[:n]
        y[off:off + n] = h_state[:n]
    if batch_sizes is None:
        T, B = x.shape[:2]
        y, gates, c = y.reshape(T, B, P), gates.reshape(T, B, 4 * H), c.reshape(T, B, H)
    return y, h_state, c_state, gates, c


@np.errstate(**_QUIET)
def lstm_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes=None, w_hr=None,
                  b=None, peephole=None, clip=0.0, cell_clip=0.0, cifg=False, rdrop=None,
                  zoneout=None, layer_norm=None, stats=None):
    """Returns ``(dx, dw_ih, dw_hh, db, dh0, dc0)``, plus ``dw_hr`` with a projection,
    plus ``dpeephole`` (3, H) with any variant (None without peepholes).

    ``dy`` (shaped like ``y``) is the gradient of the loss with respect to
    ``y``; ``dh_n`` and ``dc_n`` with respect to the final states.
    ``batch_sizes``, ``w_hr`` and the variants as in ``lstm_forward``; ``b`` (the
    forward's bias) is needed with ``clip`` only, to recompute the pre-activations.
    With ``layer_norm`` (and the forward's ``stats``): ``(dx, dw_ih, dw_hh, db, dh0, dc0,
    dpeephole, dlayer_norm)``, dpeephole None without peepholes, dlayer_norm (10H,) laid out
    as ``layer_norm``.
    """
    if layer_norm is not None:
        return _ln_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes, b,
                            peephole, clip, cell_clip, rdrop, zoneout, layer_norm, stats)
    variant = peephole is not None or clip > 0 or cell_clip > 0 or cifg
    xp, steps = _steps(x, batch_sizes)
    H = w_ih.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    N = xp.shape[0]
    y, gates, c, dy = (a.reshape(N, a.shape[-1]) for a in (y, gates, c, dy))
    zm = None if zoneout is None else zoneout.reshape(N, P)
    dgates = np.empty((N, 4 * H), x.dtype)
    h_prev = np.empty((N, P), x.dtype)
    if w_hr is not None:
        dh_all = np.empty((N, P), x.dtype)    # gradient reaching each projected h_t
        m_all = np.empty((N, H), x.dtype)     # the unprojected o * tanh(c_t)
    dh = dh_n.copy()
    dc = dc_n.copy()
    if variant:
        dpeep = np.zeros((3, H), x.dtype)
        keep = _clip_keep(xp, w_ih, w_hh, b, h0, c0, y, gates, c, steps, peephole, clip, rdrop)
    for t in range(len(steps) - 1, -1, -1):
        off, n = steps[t]
        if t > 0:
            prev = steps[t - 1][0]
            c_prev = c[prev:prev + n]
            h_prev[off:off + n] = y[prev:prev + n]
        else:
            c_prev = c0[:n]
            h_prev[off:off + n] = h0[:n]
        if rdrop is not None:
            h_prev[off:off + n] *= rdrop[:n]
        i, f, g, o = (gates[off:off + n, k * H:(k + 1) * H] for k in range(4))
        dh[:n] += dy[off:off + n]                 # the whole gradient reaching h_t
        carry = 0
        if zm is not None:                        # h_t = h_{t-1} + zm (h~_t - h_{t-1})
            carry = (1 - zm[off:off + n]) * dh[:n]
            dh[:n] *= zm[off:off + n]
        tanh_c = np.tanh(c[off:off + n])
        if w_hr is None:
            dm = dh[:n]
        else:
            dh_all[off:off + n] = dh[:n]
            m_all[off:off + n] = o * tanh_c
            dm = dh[:n] @ w_hr
        if variant:
            dgates[off:off + n] = _variant_cell_grad(dm, dc[:n], i, f, g, o, c_prev,
                                                     c[off:off + n], tanh_c, keep[off:off + n],
                                                     peephole, cell_clip, dpeep, cifg)
            dh[:n] = dgates[off:off + n] @ w_hh
            if rdrop is not None:
                dh[:n] *= rdrop[:n]
            dh[:n] += carry
            continue
        dc[:n] += dm * o * (1 - tanh_c * tanh_c)
        d = dgates[off:off + n]
        d[:, 0 * H:1 * H] = dc[:n] * g * i * (1 - i)
        d[:, 1 * H:2 * H] = dc[:n] * c_prev * f * (1 - f)
        d[:, 2 * H:3 * H] = dc[:n] * i * (1 - g * g)
        d[:, 3 * H:4 * H] = dm * tanh_c * o * (1 - o)
        dc[:n] *= f
        dh[:n] = d @ w_hh
        if rdrop is not None:
            dh[:n] *= rdrop[:n]
        dh[:n] += carry
    # whole-sequence products, after the loop
    dx = dgates @ w_ih
    dw_ih = dgates.T @ xp
    dw_hh = dgates.T @ h_prev
    db = dgates.sum(axis=0)
    if batch_sizes is None:
        dx = dx.reshape(x.shape)
    out = (dx, dw_ih, dw_hh, db, dh, dc)
    if w_hr is not None:
        out += (dh_all.T @ m_all,)
    if variant:
        out += (dpeep if peephole is not None else None,)
    return out


def _variant_cell(a, c_prev, H, peephole, clip, cell_clip, cifg=False):
    """One step's cell with the variants: activates the pre-activations ``a`` (n, 4H) in
    place (the products and bias; the peephole terms are added here) and returns c_t."""
    def clamp(z, bound):
        return np.clip(z, -bound, bound) if bound > 0 else z
    if peephole is not None:
        a[:, 0 * H:1 * H] += peephole[0] * c_prev
        a[:, 1 * H:2 * H] += peephole[1] * c_prev
    a[:, 0 * H:2 * H] = sigmoid(clamp(a[:, 0 * H:2 * H], clip))   # i, f
    if cifg:
        a[:, 1 * H:2 * H] = 1 - a[:, 0 * H:1 * H]                    # coupled: f = 1 - i
    a[:, 2 * H:3 * H] = np.tanh(clamp(a[:, 2 * H:3 * H], clip))   # g
    i, f, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H]
    c_t = clamp(f * c_prev + i * g, cell_clip)
    if peephole is not None:
        a[:, 3 * H:] += peephole[2] * c_t
    a[:, 3 * H:] = sigmoid(clamp(a[:, 3 * H:], clip))              # o
    return c_t


def _clip_keep(xp, w_ih, w_hh, b, h0, c0, y, gates, c, steps, peephole, clip, rdrop=None):
    """(N, 4H) bool: where the gate clip let the gradient through (|pre-activation| <=
    clip; all True without a clip). Recomputes every pre-activation from the forward's
    inputs and saved states."""
    N, H = c.shape[0], w_ih.shape[0] // 4
    if not clip > 0:
        return np.ones((N, 4 * H), bool)
    pre = xp @ w_ih.T
    if b is not None:
        pre += b
    for t, (off, n) in enumerate(steps):
        prev = steps[t - 1][0] if t else None
        h_prev = y[prev:prev + n] if t else h0[:n]
        if rdrop is not None:
            h_prev = h_prev * rdrop[:n]
        c_prev = c[prev:prev + n] if t else c0[:n]
        pre[off:off + n] += h_prev @ w_hh.T
        if peephole is not None:
            pre[off:off + n, 0 * H:1 * H] += peephole[0] * c_prev
            pre[off:off + n, 1 * H:2 * H] += peephole[1] * c_prev
            pre[off:off + n, 3 * H:4 * H] += peephole[2] * c[off:off + n]
    with np.errstate(invalid="ignore"):
        return ~(np.abs(pre) > clip)         # NaN lets it through (and propagates)


def _variant_cell_grad(dm, dc, i, f, g, o, c_prev, c_t, tanh_c, keep, peephole, cell_clip,
                       dpeep, cifg=False, dc_h=None):
    """One step's gate gradients (n, 4H) with the variants (equations in the module
    docstring); ``dc`` becomes the gradient reaching c_{t-1}, ``dpeep`` accumulates.
    Layer norm: ``tanh_c`` is tanh(LN(c_t)) and ``dc_h`` the gradient reaching c_t through
    h~_t (through the LN), instead of ``dm * o * (1 - tanh_c^2)``."""
    H = c_t.shape[1]
    d_o = dm * tanh_c * o * (1 - o) * keep[:, 3 * H:]
    dc += dm * o * (1 - tanh_c * tanh_c) if dc_h is None else dc_h
    if peephole is not None:
        dc += peephole[2] * d_o
    if cell_clip > 0:
        with np.errstate(invalid="ignore"):
            dc *= ~(np.abs(f * c_prev + i * g) > cell_clip)
    if cifg:   # f = 1 - i: dL/di = dc g - dc c_{t-1}
        d_i = dc * (g - c_prev) * i * (1 - i) * keep[:, :H]
        d_f = np.zeros_like(d_i)
    else:
        d_i = dc * g * i * (1 - i) * keep[:, :H]
        d_f = dc * c_prev * f * (1 - f) * keep[:, H:2 * H]
    d_g = dc * i * (1 - g * g) * keep[:, 2 * H:3 * H]
    dc *= f
    if peephole is not None:
        dc += peephole[0] * d_i + peephole[1] * d_f
        dpeep[0] += (d_i * c_prev).sum(axis=0)
        dpeep[1] += (d_f * c_prev).sum(axis=0)
        dpeep[2] += (d_o * c_t).sum(axis=0)
    return np.concatenate([d_i, d_f, d_g, d_o], axis=1)


# --- the layer-normalized LSTM (haste's LayerNormLSTM; equations in the module docstring) ---

LN_EPS = 1e-5   # haste lib/layer_norm_forward_gpu.cu.cc: rsqrt(var + 1e-5); F.layer_norm's default
LN_STATS = ("mean_x", "rstd_x", "mean_h", "rstd_h", "mean_c", "rstd_c")   # columns of stats


# ln_stats_width(H): the columns of ``stats``, LN_STATS then zhat_x (4H) then zhat_h (4H),
# each from a multiple of 16 columns (ln_zhat_columns)


def ln_split(layer_norm):
    """(g_ih (4H,), g_hh (4H,), g_c (H,), b_c (H,)): views of the (10H,) ``layer_norm``."""
    H = layer_norm.shape[0] // 10
    return (layer_norm[:4 * H], layer_norm[4 * H:8 * H], layer_norm[8 * H:9 * H],
            layer_norm[9 * H:])


def layer_norm_rows(z, gain, bias=None):
    """``(LN(z) * gain [+ bias], zhat, mean, rstd)`` over the last axis of each row of z
    (n, F): ``zhat = (z - mean) * rstd``, the biased variance, ``rstd = 1 / sqrt(var +
    LN_EPS)``; mean and rstd (n,)."""
    mean = z.mean(axis=1)
    d = z - mean[:, None]
    rstd = 1 / np.sqrt((d * d).mean(axis=1) + z.dtype.type(LN_EPS))
    zhat = d * rstd[:, None]
    out = zhat * gain
    if bias is not None:
        out += bias
    return out, zhat, mean, rstd


def layer_norm_rows_grad(dout, zhat, rstd, gain):
    """Backward of ``out = zhat * gain (+ bias)``, ``zhat = (z - mean) * rstd`` row by row:
    ``(dz, dgain)`` (dbias is ``dout.sum(0)``)."""
    dzhat = dout * gain
    dz = rstd[:, None] * (dzhat - dzhat.mean(axis=1, keepdims=True)
                          - zhat * (dzhat * zhat).mean(axis=1, keepdims=True))
    return dz, (dout * zhat).sum(axis=0)


@np.errstate(**_QUIET)
def _ln_forward(x, w_ih, w_hh, b, h0, c0, batch_sizes, peephole, clip, cell_clip, rdrop,
                zoneout, layer_norm, stats):
    xp, steps = _steps(x, batch_sizes)
    N, H = xp.shape[0], w_ih.shape[0] // 4
    g_ih, g_hh, g_c, b_c = ln_split(layer_norm)
    zm = None if zoneout is None else zoneout.reshape(N, H)
    G, S = 4 * H, len(LN_STATS)
    zx, zh = ln_zhat_columns(H)
    st = np.empty((N, ln_stats_width(H)), x.dtype)
    # the input product and its LN, all steps at once; then the bias
    gates, st[:, zx:zx + G], st[:, 0], st[:, 1] = layer_norm_rows(xp @ w_ih.T, g_ih)
    if b is not None:
        gates += b
    y = np.empty((N, H), x.dtype)
    c = np.empty((N, H), x.dtype)
    h_state, c_state = h0.copy(), c0.copy()
    for off, n in steps:
        a = gates[off:off + n]
        h_in = h_state[:n] if rdrop is None else h_state[:n] * rdrop[:n]
        rows = st[off:off + n]
        a_h, rows[:, zh:zh + G], rows[:, 2], rows[:, 3] = layer_norm_rows(h_in @ w_hh.T, g_hh)
        a += a_h
        c_state[:n] = _variant_cell(a, c_state[:n], H, peephole, clip, cell_clip)
        n_c, _, rows[:, 4], rows[:, 5] = layer_norm_rows(c_state[:n], g_c, b_c)
        h_new = a[:, 3 * H:] * np.tanh(n_c)
        if zm is not None:
            h_new = h_state[:n] + zm[off:off + n] * (h_new - h_state[:n])
        h_state[:n] = h_new
        c[off:off + n] = c_state[:n]
        y[off:off + n] = h_state[:n]
    if stats is not None:   # the defined columns (the padding is never written)
        out = stats.reshape(N, st.shape[1])
        for a, e in ((0, S), (zx, zx + G), (zh, zh + G)):
            out[:, a:e] = st[:, a:e]
    if batch_sizes is None:
        T, B = x.shape[:2]
        y, gates, c = y.reshape(T, B, H), gates.reshape(T, B, 4 * H), c.reshape(T, B, H)
    return y, h_state, c_state, gates, c


@np.errstate(**_QUIET)
def _ln_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes, b, peephole,
                 clip, cell_clip, rdrop, zoneout, layer_norm, stats):
    xp, steps = _steps(x, batch_sizes)
    N, H = xp.shape[0], w_ih.shape[0] // 4
    g_ih, g_hh, g_c, b_c = ln_split(layer_norm)
    y, gates, c, dy = (a.reshape(N, a.shape[-1]) for a in (y, gates, c, dy))
    G = 4 * H
    zx, zh = ln_zhat_columns(H)
    st = stats.reshape(N, ln_stats_width(H))
    zm = None if zoneout is None else zoneout.reshape(N, H)
    # the forward's normalized products; h_{t-1} of every row (masked as the recurrent
    # product saw it) for dw_hh
    xhat, hhat = st[:, zx:zx + G], st[:, zh:zh + G]
    h_prev = np.empty((N, H), x.dtype)
    for t, (off, n) in enumerate(steps):
        if t:
            prev = steps[t - 1][0]
            h_prev[off:off + n] = y[prev:prev + n]
        else:
            h_prev[off:off + n] = h0[:n]
        if rdrop is not None:
            h_prev[off:off + n] *= rdrop[:n]
    chat = (c - st[:, 4:5]) * st[:, 5:6]
    if clip > 0:    # where the clip let the gradient through: the pre-activations again
        pre = xhat * g_ih + hhat * g_hh
        if b is not None:
            pre += b
    dgates = np.empty((N, 4 * H), x.dtype)
    dz_h = np.empty((N, 4 * H), x.dtype)
    dpeep = np.zeros((3, H), x.dtype)
    dln = np.zeros(10 * H, x.dtype)
    dg_ih, dg_hh, dg_c, db_c = ln_split(dln)
    dh, dc = dh_n.copy(), dc_n.copy()
    for t in range(len(steps) - 1, -1, -1):
        off, n = steps[t]
        rows = slice(off, off + n)
        c_prev = c[steps[t - 1][0]:steps[t - 1][0] + n] if t else c0[:n]
        i, f, g, o = (gates[rows, k * H:(k + 1) * H] for k in range(4))
        dh[:n] += dy[rows]                        # the whole gradient reaching h_t
        carry = 0
        if zm is not None:                        # h_t = h_{t-1} + zm (h~_t - h_{t-1})
            carry = (1 - zm[rows]) * dh[:n]
            dh[:n] *= zm[rows]
        tanh_n = np.tanh(chat[rows] * g_c + b_c)  # tanh(LN(c_t))
        dn = dh[:n] * o * (1 - tanh_n * tanh_n)   # gradient of LN(c_t)
        dc_h, dg = layer_norm_rows_grad(dn, chat[rows], st[rows, 5], g_c)
        dg_c += dg
        db_c += dn.sum(axis=0)
        if clip > 0:
            p = pre[rows].copy()
            if peephole is not None:
                p[:, 0 * H:1 * H] += peephole[0] * c_prev
                p[:, 1 * H:2 * H] += peephole[1] * c_prev
                p[:, 3 * H:4 * H] += peephole[2] * c[rows]
            keep = ~(np.abs(p) > clip)            # NaN lets it through (and propagates)
        else:
            keep = np.ones((n, 4 * H), bool)
        dgates[rows] = _variant_cell_grad(dh[:n], dc[:n], i, f, g, o, c_prev, c[rows], tanh_n,
                                          keep, peephole, cell_clip, dpeep, dc_h=dc_h)
        # through the recurrent product's LN to h_{t-1}
        dz_h[rows], dg = layer_norm_rows_grad(dgates[rows], hhat[rows], st[rows, 3], g_hh)
        dg_hh += dg
        dh[:n] = dz_h[rows] @ w_hh
        if rdrop is not None:
            dh[:n] *= rdrop[:n]
        dh[:n] += carry
    # whole-sequence products, after the loop; the input product's LN for all rows at once
    dz_x, dg_ih[...] = layer_norm_rows_grad(dgates, xhat, st[:, 1], g_ih)
    dx = dz_x @ w_ih
    dw_ih = dz_x.T @ xp
    dw_hh = dz_h.T @ h_prev
    db = dgates.sum(axis=0)
    if batch_sizes is None:
        dx = dx.reshape(x.shape)
    return dx, dw_ih, dw_hh, db, dh, dc, (dpeep if peephole is not None else None), dln


# --- bfloat16 weights (inference): the oracle of csrc/bf16.template.c -------------------
#
# The same arithmetic as the C kernel, spelled out: weights and the step's inputs
# [x_t | h_{t-1}] rounded to bfloat16; each pre-activation accumulated in float32 over
# the pairs (2p, 2p+1) of [x | h] (each part padded to an even length with zeros), the
# odd element first, every accumulation one fused multiply-add rounded to float32 with
# results below 2^-126 flushed to zero (VDPBF16PS). A bf16 x bf16 product is exact in
# float64, and float64 holds acc + product exactly, or close enough that rounding it
# to float32 once more gives the correctly rounded sum (see bf16.template.c), so the
# fused multiply-add is float32(float64(acc) + float64(x) * float64(w)). The products
# are bitwise those of the C kernel; the cell is this module's float32 cell.

_TINY = 2.0 ** -126


def round_bf16(a):
    """float32 values rounded to bfloat16, returned as float32: to nearest even; zeros
    and denormals give a zero of their sign; NaN stays NaN; overflow gives inf."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    r = np.where((u & np.uint32(0x7F800000)) == 0, u & np.uint32(0x80000000), r)
    r = np.where((u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000),
                 (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), r)
    return r.astype(np.uint32).view(np.float32)


def bf16_values(a):
    """float32 values of bfloat16 bit patterns (a uint16 array: what the C backend's
    bfloat16 training forward saves for backward), exact; any other array as it is."""
    a = np.asarray(a)
    if a.dtype != np.uint16:
        return a
    return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _pad_even(a):
    """a (n, K) with a zero column appended when K is odd."""
    return a if a.shape[1] % 2 == 0 else np.concatenate([a, np.zeros((a.shape[0], 1), a.dtype)], 1)


def bf16_products(a, w):
    """float32 (n, G) = a (n, K) . w (G, K)^T in VDPBF16PS's order and rounding, for
    a and w already rounded to bfloat16 and K even (pairs of columns)."""
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    acc = np.zeros((a.shape[0], w.shape[0]), np.float32)
    for p in range(a.shape[1] // 2):
        for k in (2 * p + 1, 2 * p):
            acc = (acc + a64[:, k, None] * w64[None, :, k]).astype(np.float32)
            acc = np.where(np.abs(acc) < _TINY, np.copysign(np.float32(0), acc), acc)
    return acc


@np.errstate(**_QUIET)
def lstm_forward_bf16(x, w_ih, w_hh, b, h0, c0, batch_sizes=None, save=False):
    """``(y, h_n, c_n)`` of the layer with bfloat16 weights (float32 x, states and
    outputs; no projection); arguments as ``lstm_forward``. ``save=True`` (bfloat16
    training, below): ``(y, h_n, c_n, gates, c)``, the activated gates and the cell states
    as ``lstm_forward``'s, rounded to bfloat16 (float32 arrays holding bfloat16 values)."""
    w = np.concatenate([_pad_even(round_bf16(w_ih)), _pad_even(round_bf16(w_hh))], axis=1)

    def products(xr, hr):
        return bf16_products(np.concatenate([_pad_even(round_bf16(xr)),
                                             _pad_even(round_bf16(hr))], axis=1), w)
    out = _float32_steps(products, x, b, h0, c0, batch_sizes, save)
    if save:
        y, h_n, c_n, gates, c = out
        return y, h_n, c_n, round_bf16(gates), round_bf16(c)
    return out


def _float32_steps(products, x, b, h0, c0, batch_sizes, save=False):
    """``(y, h_n, c_n)`` of the low-precision forwards: per step the float32 cell (gate order
    i, f, g, o) on ``products(x_rows, h_rows) + b``, the gate pre-activations (n, 4H) that
    each weight precision computes its own way; float32 states and outputs. ``save``: also
    the float32 activated gates and cell states, ``(y, h_n, c_n, gates, c)``."""
    xp, steps = _steps(x, batch_sizes)
    H = h0.shape[-1]
    bias = np.zeros(4 * H, np.float32) if b is None else b.astype(np.float32)
    y = np.empty((xp.shape[0], H), np.float32)
    if save:
        gates = np.empty((xp.shape[0], 4 * H), np.float32)
        c = np.empty((xp.shape[0], H), np.float32)
    h_state, c_state = h0.astype(np.float32), c0.astype(np.float32)
    for off, n in steps:
        pre = products(xp[off:off + n], h_state[:n]) + bias
        i, f, o = (sigmoid(pre[:, k * H:(k + 1) * H]) for k in (0, 1, 3))
        g = np.tanh(pre[:, 2 * H:3 * H])
        c_state[:n] = f * c_state[:n] + i * g
        h_state[:n] = o * np.tanh(c_state[:n])
        y[off:off + n] = h_state[:n]
        if save:
            gates[off:off + n] = np.concatenate([i, f, g, o], axis=1)
            c[off:off + n] = c_state[:n]
    if batch_sizes is None:
        T, B = x.shape[:2]
        y = y.reshape(T, B, H)
        if save:
            gates, c = gates.reshape(T, B, 4 * H), c.reshape(T, B, H)
    return (y, h_state, c_state, gates, c) if save else (y, h_state, c_state)


# --- bfloat16 training (mixed precision) ------------------------------------------------
#
# A layer with weight_dtype "bfloat16" trains with float32 master weights (the layer's
# parameters; the optimizer updates them in float32) and bfloat16 products:
#
# forward   exactly lstm_forward_bf16 above (weights, x_t, h_{t-1} rounded to bfloat16,
#           VDPBF16PS pairs and order, float32 cell state and activations), so a model
#           trained so and evaluated with its bfloat16 inference path gives the same bits.
#           Saved for backward: the activated gates (N, 4H) and cell states (N, H)
#           rounded to bfloat16 (stored as bfloat16 by the C backend: half the float32
#           layer's saved bytes; x and y are the layer's own input and output, kept
#           anyway).
# backward  the float32 cell gradient of lstm_backward on the saved (rounded) gates and
#           cell states (c_{t-1} at t = 0 is c0 as given), giving the gate gradients da_t
#           (n, 4H) in float32; da_t is rounded to bfloat16 (r(da)) for every product:
#               dh_{t-1} = r(da_t) . r(w_hh)          (the recurrence, per step)
#               dx       = r(da) . r(w_ih)            dw_ih = r(da)^T . r(x)
#               dw_hh    = r(da)^T . r(h_{t-1})        (h_{t-1} rounded as in forward)
#               db       = sum over rows of da        (unrounded)
#           A product of two bfloat16 values is exact in float32, so each of these is a
#           float32 sum of exact products; here every sum is taken in float64 and rounded
#           once to float32 (``bf16_sums``: within an ulp or so of the exact sum). A kernel
#           that accumulates in float32 in its own order differs from it by at most
#           gamma_K sum_k |a_k b_k| (K the summed length, gamma_K ~ K 2^-24) per element.
#           No flush to zero in backward where the sums are float32 FMAs. Where the C
#           backend uses VDPBF16PS (csrc/lstm.template.c, bwdb_tile and dwb_product:
#           AVX512_BF16 at a bf16 dot rate >= 1.5x the fp32 FMA rate), dh_{t-1} and the
#           in-step dx are the same exact products summed as FMAs in pairs along the 4H
#           gate gradients, dw_ih and dw_hh in pairs of rows (the odd element of a pair
#           first), results below 2^-126 flushed to zero: the same bound, plus K 2^-126
#           for the flushes; that path and the float32 one differ by at most twice the
#           sum (tests/test_bf16_training.py).
# Master weights float32 only (the layer's dtype; bfloat16 needs dtype float32); no
# projection, no variant, no recurrent dropout or zoneout (ValueErrors at the layer).
# This reference keeps the saved gates and c as float32 arrays holding bfloat16 values (the
# readable form); lstm_backward_bf16 also takes them as uint16 bit patterns (bf16_values).
# The C backend (backends/_c.pyx, csrc/lstm.h lstm_forward_bf16_ex): the forward is the
# bf16 inference kernel whose cell also stores the gates and c_t rounded to bf16 as their
# bit patterns (uint16 arrays, 2 bytes an element: half the float32 layer's saved bytes);
# the backward is the float32 kernel on a float32 pack of the rounded weights, reading
# those bits widened to float32 in its cell (exact: lstm_variant.bf16_gates, bf16_c), with
# x, h0, y rounded and the
# gate gradients rounded in its cell (lstm_variant.bf16_grads), so its products are
# float32 sums of exact products in the kernel's order (tests/test_bf16_training.py);
# dh_{t-1}, the in-step dx, dw_ih and dw_hh with VDPBF16PS where the CPU's rates favour
# it (above); dx where not in the steps the float32 GEMM.


def bf16_sums(a, b):
    """float32 (m, n) = a (m, K) . b (K, n) for float32 a, b holding bfloat16 values: the
    products exact, their sum taken in float64 and rounded once to float32."""
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


@np.errstate(**_QUIET)
def lstm_backward_bf16(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes=None):
    """``(dx, dw_ih, dw_hh, db, dh0, dc0)`` of bfloat16 training (the note above), all
    float32; arguments as ``lstm_backward``, gates and c those of
    ``lstm_forward_bf16(..., save=True)``."""
    xp, steps = _steps(x, batch_sizes)
    H = h0.shape[-1]
    N = xp.shape[0]
    y, gates, c, dy = (np.asarray(bf16_values(a), np.float32).reshape(N, a.shape[-1])
                       for a in (y, gates, c, dy))
    da = np.empty((N, 4 * H), np.float32)       # the float32 gate gradients
    dar = np.empty((N, 4 * H), np.float32)      # ... rounded to bfloat16
    h_prev = np.empty((N, H), np.float32)
    wh = round_bf16(w_hh)
    dh = dh_n.astype(np.float32)
    dc = dc_n.astype(np.float32)
    for t in range(len(steps) - 1, -1, -1):
        off, n = steps[t]
        if t > 0:
            prev = steps[t - 1][0]
            c_prev = c[prev:prev + n]
            h_prev[off:off + n] = y[prev:prev + n]
        else:
            c_prev = c0[:n].astype(np.float32)
            h_prev[off:off + n] = h0[:n]
        i, f, g, o = (gates[off:off + n, k * H:(k + 1) * H] for k in range(4))
        dh[:n] += dy[off:off + n]
        tanh_c = np.tanh(c[off:off + n])
        dc[:n] += dh[:n] * o * (1 - tanh_c * tanh_c)
        d = da[off:off + n]
        d[:, 0 * H:1 * H] = dc[:n] * g * i * (1 - i)
        d[:, 1 * H:2 * H] = dc[:n] * c_prev * f * (1 - f)
        d[:, 2 * H:3 * H] = dc[:n] * i * (1 - g * g)
        d[:, 3 * H:4 * H] = dh[:n] * tanh_c * o * (1 - o)
        dc[:n] *= f
        dar[off:off + n] = round_bf16(d)
        dh[:n] = bf16_sums(dar[off:off + n], wh)
    dx = bf16_sums(dar, round_bf16(w_ih))
    dw_ih = bf16_sums(dar.T, round_bf16(xp))
    dw_hh = bf16_sums(dar.T, round_bf16(h_prev))
    db = da.sum(axis=0, dtype=np.float64).astype(np.float32)
    if batch_sizes is None:
        dx = dx.reshape(x.shape)
    return dx, dw_ih, dw_hh, db, dh, dc


# --- int8 weights (inference): the oracle of csrc/int8.template.c ------------------------
#
# Weight-only quantization: per gate row n, separately for w_ih and w_hh, a symmetric
# scale s = max|w[n,:]| / 127 and q = rint(w / s) clamped to [-127, 127] (all float32;
# q = 0 where s = 0 or the quotient is NaN). Per step the float32 inputs as they are: each
# pre-activation's products are z = fl(fl(s_ih ax) + fl(s_hh ah)), ax = x . q_ih and
# ah = h . q_hh each accumulated in float32 in k order by fused multiply-adds
# (fma_f32), then the float32 cell of lstm_forward_bf16.


def quantize_int8(w):
    """(q, s): the int8 values (as int8) and float32 scale of each row of float32 w."""
    w = np.ascontiguousarray(w, np.float32)
    a = np.max(np.where(np.isnan(w), np.float32(0), np.abs(w)), axis=1, initial=np.float32(0))
    s = (a / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.rint(w / s[:, None])
    v = np.where(np.isnan(v) | (s[:, None] == 0), np.float32(0), np.clip(v, -127, 127))
    return v.astype(np.int8), s


def fma_f32(a, b, c):
    """float32 fl(a*b + c) rounded once, for float32 a, c and b with a*b exact in
    float64 (b an int8 value): the float64 sum rounded to odd (its TwoSum error moves it
    to the odd neighbour), then to float32 (exact since 53 >= 24 + 2; Boldo and
    Melquiond 2008), as csrc/int8.template.c does at its portable level."""
    p = a.astype(np.float64) * b.astype(np.float64)
    cd = c.astype(np.float64)
    s = p + cd
    bb = s - p
    e = (p - (s - bb)) + (cd - bb)
    u = s.view(np.int64)
    move = (e != 0) & ~np.isnan(e) & np.isfinite(s.astype(np.float32)) & ((u & 1) == 0)
    u = np.where(move, u + np.where((e > 0) == (s > 0), 1, -1), u)
    return u.view(np.float64).astype(np.float32)


def _int8_sums(a, q):
    """float32 (n, G): a (n, K) . q (G, K)^T, each sum from +0 in k order by fma_f32."""
    qf = q.astype(np.float32)
    acc = np.zeros((a.shape[0], q.shape[0]), np.float32)
    for k in range(a.shape[1]):
        acc = fma_f32(a[:, k, None], qf[None, :, k], acc)
    return acc


@np.errstate(**_QUIET)
def lstm_forward_int8(x, w_ih, w_hh, b, h0, c0, batch_sizes=None):
    """``(y, h_n, c_n)`` of the layer with int8 weights (float32 x, states and outputs;
    no projection); arguments as ``lstm_forward``."""
    (qi, si), (qh, sh) = quantize_int8(w_ih), quantize_int8(w_hh)
    return _float32_steps(lambda xr, hr: si * _int8_sums(xr.astype(np.float32), qi)
                          + sh * _int8_sums(hr, qh), x, b, h0, c0, batch_sizes)


# --- int8 weights, x and h quantized per step: the oracle of csrc/int8d.template.c -------
#
# The weights as lstm_forward_int8 (quantize_int8). Per step, each row of x_t and of
# h_{t-1} separately: s = max|v| / 127 (NaN if the row holds a NaN or an inf), p =
# rint(v / s) in [-127, 127] (all float32; p = 0 where s is 0 or NaN). The sums are
# exact integers: dx = p_x . q_ih, dh = p_h . q_hh (the kernel's u8 = p + 128 and its
# compensation 128 sum q cancel exactly), then, float32 and rounded at each operation,
# z = fl(fl(s_x s_ih) dx) + fl(fl(s_h s_hh) dh) and the float32 cell of lstm_forward_bf16.


def quantize_rows_dynamic(v):
    """(p, s): each row of float32 v (n, K) as int32 values in [-127, 127] and its float32
    scale, as the int8_dynamic forward quantizes x_t and h_{t-1}."""
    v = np.ascontiguousarray(v, np.float32)
    a = np.max(np.abs(v), axis=1, initial=np.float32(0))   # inf or NaN where one is
    s = np.where(np.isfinite(a), a / np.float32(127), np.float32(np.nan)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.rint(v / s[:, None])
    p = np.where(~(s[:, None] > 0), np.float32(0), np.clip(p, -127, 127))
    return p.astype(np.int32), s


def int8_dynamic_preactivations(x, h, qi, si, qh, sh):
    """float32 (n, 4H) products of rows x (n, I), h (n, H) by the int8 weights (qi, si),
    (qh, sh) of quantize_int8, the int8_dynamic way (without the bias)."""
    px, sx = quantize_rows_dynamic(x)
    ph, s_h = quantize_rows_dynamic(h)
    dx = (px.astype(np.int64) @ qi.astype(np.int64).T).astype(np.float32)   # exact integers
    dh = (ph.astype(np.int64) @ qh.astype(np.int64).T).astype(np.float32)
    return (sx[:, None] * si[None, :]) * dx + (s_h[:, None] * sh[None, :]) * dh


@np.errstate(**_QUIET)
def lstm_forward_int8_dynamic(x, w_ih, w_hh, b, h0, c0, batch_sizes=None):
    """``(y, h_n, c_n)`` of the layer with int8 weights and x, h quantized per row per step
    (float32 inputs, states and outputs; no projection); arguments as ``lstm_forward``."""
    (qi, si), (qh, sh) = quantize_int8(w_ih), quantize_int8(w_hh)
    return _float32_steps(lambda xr, hr: int8_dynamic_preactivations(xr, hr, qi, si, qh, sh),
                          x, b, h0, c0, batch_sizes)


# --- the backend contract (lstm_fast.backends) --------------------------------------


class Packed(NamedTuple):
    """The reference keeps the weights as they are (b = b_ih + b_hh or None)."""
    w_ih: np.ndarray
    w_hh: np.ndarray
    b: Optional[np.ndarray]
    w_hr: Optional[np.ndarray]
    variant: Optional[Variant] = None

    input_size = property(lambda self: self.w_ih.shape[1])
    hidden_size = property(lambda self: self.w_ih.shape[0] // 4)
    proj_size = property(lambda self: 0 if self.w_hr is None else self.w_hr.shape[0])
    dtype = property(lambda self: self.w_ih.dtype)
    has_bias = property(lambda self: self.b is not None)
    weight_dtype = property(lambda self: self.w_ih.dtype.name)


class PackedBF16(NamedTuple):
    """bfloat16 weights: the float32 arrays as given (the master weights of bfloat16
    training), rounded by lstm_forward_bf16 and lstm_backward_bf16."""
    w_ih: np.ndarray
    w_hh: np.ndarray
    b: Optional[np.ndarray]

    input_size = property(lambda self: self.w_ih.shape[1])
    hidden_size = property(lambda self: self.w_ih.shape[0] // 4)
    proj_size = 0
    dtype = np.dtype(np.float32)
    weight_dtype = "bfloat16"
    has_bias = property(lambda self: self.b is not None)


class PackedInt8(PackedBF16):
    """int8 weights: the float32 arrays as given, quantized by lstm_forward_int8."""
    weight_dtype = "int8"


class PackedInt8Dynamic(PackedBF16):
    """int8 weights, x and h quantized per step: lstm_forward_int8_dynamic."""
    weight_dtype = "int8_dynamic"


_INFERENCE_ONLY = ("{} weights are for inference only: nothing can be saved for "
                   "backward (use float32 weights to train)")
TRAINS_BF16 = True    # backward with bfloat16 weights: mixed-precision training (above)


def pack(w_ih, w_hh, b, w_hr=None, out=None, variant=None):
    return Packed(w_ih, w_hh, b, w_hr, variant)   # out: nothing to reuse (the arrays themselves)


def _variant_kw(packed):
    v = packed.variant
    return {} if v is None else dict(peephole=v.peephole, clip=v.clip, cell_clip=v.cell_clip,
                                     cifg=v.cifg, layer_norm=v.layer_norm)


def pack_bf16(w_ih, w_hh, b, out=None):
    return PackedBF16(w_ih, w_hh, b)


def pack_int8(w_ih, w_hh, b, out=None):
    return PackedInt8(w_ih, w_hh, b)


def pack_int8_dynamic(w_ih, w_hh, b, out=None):
    return PackedInt8Dynamic(w_ih, w_hh, b)


def forward(packed, x, h0, c0, num_threads, batch_sizes=None, save=True, out=None, rdrop=None,
            zoneout=None, stats=None):
    if isinstance(packed, PackedBF16):   # and PackedInt8
        bf16 = type(packed) is PackedBF16    # bfloat16 trains (mixed precision), int8 does not
        if (save and not bf16) or rdrop is not None or zoneout is not None:
            raise ValueError(_INFERENCE_ONLY.format(packed.weight_dtype))
        if save:
            y, h_n, c_n, gates, c = lstm_forward_bf16(x, *packed, as_matrix(h0), as_matrix(c0),
                                                      batch_sizes, save=True)
        else:
            run = (lstm_forward_int8_dynamic if isinstance(packed, PackedInt8Dynamic) else
                   lstm_forward_int8 if isinstance(packed, PackedInt8) else lstm_forward_bf16)
            y, h_n, c_n = run(x, *packed, as_matrix(h0), as_matrix(c0), batch_sizes)
            gates = c = None
    else:
        y, h_n, c_n, gates, c = lstm_forward(x, *packed[:3], as_matrix(h0), as_matrix(c0),
                                             batch_sizes, packed.w_hr, rdrop=rdrop,
                                             zoneout=zoneout, stats=stats if save else None,
                                             **_variant_kw(packed))
    h_n, c_n = h_n.reshape(h0.shape), c_n.reshape(c0.shape)
    if out is not None:
        for dst, src in zip(out, (y, h_n, c_n)):
            if dst is not None:
                dst[...] = src
        y, h_n, c_n = (src if dst is None else dst for dst, src in zip(out, (y, h_n, c_n)))
    return (y, h_n, c_n, gates, c) if save else (y, h_n, c_n, None, None)


def backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None,
             dpeephole=None, rdrop=None, zoneout=None, stats=None, dlayer_norm=None, need_dx=True):
    if type(packed) is PackedBF16:      # bfloat16 training
        if rdrop is not None or zoneout is not None:
            raise ValueError(_INFERENCE_ONLY.format(packed.weight_dtype))
        dx, dw_ih, dw_hh, db, dh0, dc0 = lstm_backward_bf16(
            x, packed.w_ih, packed.w_hh, as_matrix(h0), as_matrix(c0), y, gates, c, dy,
            as_matrix(dh_n), as_matrix(dc_n), batch_sizes)
        return (dx if need_dx else None, dw_ih, dw_hh, db if packed.has_bias else None,
                dh0.reshape(h0.shape), dc0.reshape(c0.shape), None)
    if isinstance(packed, PackedBF16):   # PackedInt8
        raise ValueError(_INFERENCE_ONLY.format(packed.weight_dtype))
    dx, dw_ih, dw_hh, db, dh0, dc0, *rest = lstm_backward(
        x, packed.w_ih, packed.w_hh, as_matrix(h0), as_matrix(c0), y, gates, c, dy,
        as_matrix(dh_n), as_matrix(dc_n), batch_sizes, packed.w_hr, packed.b, rdrop=rdrop,
        zoneout=zoneout, stats=stats, **_variant_kw(packed))
    if packed.variant is not None and packed.variant.layer_norm is not None:
        dlayer_norm[...] = rest.pop()               # (10H,): dg_ih, dg_hh, dg_c, db_c
    if len(rest) > (packed.w_hr is not None):    # a variant is on: dpeephole at the end
        dp = rest.pop()
        if dp is not None:
            dpeephole[...] = dp
    dw_hr = rest
    return (dx if need_dx else None, dw_ih, dw_hh, db if packed.has_bias else None, dh0.reshape(h0.shape),
            dc0.reshape(c0.shape),
            dw_hr[0] if dw_hr else None)


def step(packed, x, h, c, num_threads, y=None):
    out = (None if y is None else y[None], h, c)
    y_t = forward(packed, x[None], h, c, num_threads, None, False, out)[0][0]
    return y_t if y is None else y
