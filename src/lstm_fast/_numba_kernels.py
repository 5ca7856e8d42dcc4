"""Numba backend "numba": fused LSTM kernels, JIT-compiled on first use.

Mirrors the C kernel (csrc/, ``lstm_forward_f32/_f64``, ``lstm_backward_...``)
and ``_reference`` by name, and ``_reference`` by the order of the inputs (then
outputs and workspace follow); one Python function serves both
dtypes (Numba specialises it per dtype).

Design:

* ``lstm_forward(x, w_ih, w_hh, b, h0, c0, batch_sizes, w_hr, y, h_n, c_n,
  gates, c, m)`` and ``lstm_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy,
  dh_n, dc_n, batch_sizes, w_hr, dgates, h_prev, dm, dh_all, m_all, dx, dw_ih,
  dw_hh, db, dh0, dc0, dw_hr)`` write into caller-provided arrays and never
  allocate (``dgates``, ``h_prev``, ``m``, ``dm``, ``dh_all``, ``m_all`` are
  workspace). ``forward`` and ``backward`` at the bottom are the backend
  contract of ``_backends``: they allocate outputs and workspace and call the
  kernels.
* One code path for fixed and variable lengths: the kernels only see the
  packed step-major layout, x (N, I), y/dy (N, P), gates/dgates (N, 4H),
  c (N, H), and ``batch_sizes`` (T,) int64, non-increasing; step t is rows
  [sum(batch_sizes[:t]), +batch_sizes[t]). The padded (T, B, .) case is a
  reshape plus batch_sizes = [B] * T. Since the sizes never increase, the n
  active rows of step t are the first n rows of step t-1: h_{t-1}/c_{t-1} are
  read straight from y/c (no state copies), and h_n/c_n are filled after the
  loop from each sequence's last step (h0/c0 for rows never active). The
  input projection, dx, dw_ih, dw_hh, db (and dw_hr) are products over all N
  rows; per step only the n active rows. dw_hh's h_{t-1} rows are y[:N-n0]
  itself when every step size but the last equals the first (always without
  lengths), else gathered into ``h_prev`` first.
* Projection (``w_hr`` (P, H), torch's proj_size): ``w_hr`` and its
  workspace/outputs are None without one, and Numba compiles a separate
  specialisation with the ``is None`` branches pruned, so the plain LSTM pays
  nothing. Forward writes m = o * tanh(c) of the step into ``m`` and projects
  it into y; backward forms dm = dh @ w_hr per step, keeps dh (``dh_all``) and
  m (``m_all``) for dw_hr = dh_all^T m_all after the loop, as ``_reference``.
* Matrix products go to BLAS (``sgemm``/``dgemm`` from SciPy's
  ``cython_blas``, the library Numba's own ``np.dot`` uses) through Numba's
  ``numba_xxgemm`` helper, called directly so that products accumulate into
  existing buffers (beta = 1) and row slices need no copies; one-row products
  (one active row) use gemv, ~3x faster than gemm there. Measured per-step product,
  1 thread: hand loops over a packed W^T are within 0.1 us of BLAS for
  H <= 16 and 1.3-2x slower from B*H = 32*32 up, so BLAS is used throughout.
  Its cost: numpy/scipy's OpenBLAS is pinned to AVX2 here (see
  performance.md), about half the machine's sgemm peak.
* Activations are branch-free polynomial ``exp``/``tanh`` (Cephes
  coefficients) written so that LLVM vectorises the fused gate loop: the libm
  calls Numba would otherwise emit are scalar and cost 7-17 ns per element,
  more than the matrix products at large shapes. Accuracy: float32 within a
  few ulp, float64 within ~2 ulp. Sigmoid takes ``exp(-|z|)``, tanh
  ``exp(-2|z|)``, so nothing overflows for any |z|; NaN propagates through
  explicit selects, +-inf saturate to the same values as the reference.
  No fastmath: 'nnan'/'ninf' would break NaN/inf propagation and the loops
  already vectorise without reassociation.
* Compilation is lazy (nothing is compiled or called at import) and cached
  to disk (``cache=True``): a second process loads machine code from
  ``__pycache__`` instead of recompiling. The module imports Numba, so the
  registry imports it only when the backend is first used.
* Threads: everything runs on the calling thread, BLAS included (its thread
  count is set to 1, thread-locally, for the duration of each call), whatever
  ``num_threads`` says. Measured: OpenBLAS's threaded sgemm is not bitwise
  equal to its single-threaded one (differences ~1e-6 relative from M ~ 512
  up), and the project promises the same bits for every thread count. A
  second thread would need products split at thread-count-independent
  boundaries; not done yet.
"""

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_JIT = dict(nogil=True, cache=True, error_model="numpy")

# --- BLAS --------------------------------------------------------------------


def _arg_helpers(context, builder, dtype):
    """Codegen helpers for the BLAS calls: ``slot`` passes a scalar by pointer
    (BLAS takes alpha/beta by reference), ``data`` an array's data pointer."""
    ll_voidp = ir.IntType(8).as_pointer()
    lltype = context.get_value_type(dtype)

    def slot(val, ty):
        p = cgutils.alloca_once(builder, lltype)
        builder.store(context.cast(builder, val, ty, dtype), p)
        return builder.bitcast(p, ll_voidp)

    def data(val, ty):
        return builder.bitcast(context.make_array(ty)(context, builder, val).data, ll_voidp)

    return slot, data


@intrinsic
def _xxgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major ``c = alpha * op(a) @ op(b) + beta * c`` (Numba's BLAS helper)."""
    dtype = c.dtype
    kind = {types.float32: "s", types.float64: "d"}[dtype]
    sig = types.int32(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        (ta, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_) = args
        ll_char = ir.IntType(8)
        ll_voidp = ir.IntType(8).as_pointer()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [
            ll_char, ll_char, ll_char, intp, intp, intp,
            ll_voidp, ll_voidp, intp, ll_voidp, intp, ll_voidp, ll_voidp, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        slot, data = _arg_helpers(context, builder, dtype)

        def as_intp(val, ty):
            return context.cast(builder, val, ty, types.intp)

        sty = signature.args
        return builder.call(fn, [
            ir.Constant(ll_char, ord(kind)),
            builder.trunc(as_intp(ta, sty[0]), ll_char), builder.trunc(as_intp(tb, sty[1]), ll_char),
            as_intp(m_, sty[2]), as_intp(n_, sty[3]), as_intp(k_, sty[4]),
            slot(al, sty[5]), data(a_, sty[6]), as_intp(lda_, sty[7]),
            data(b_, sty[8]), as_intp(ldb_, sty[9]), slot(be, sty[10]),
            data(c_, sty[11]), as_intp(ldc_, sty[12])])

    return sig, codegen


@intrinsic
def _xxgemv(typingctx, trans, m, n, alpha, a, x, beta, y):
    """Column-major ``y = alpha * op(a) @ x + beta * y`` with lda = m, unit strides."""
    dtype = y.dtype
    kind = {types.float32: "s", types.float64: "d"}[dtype]
    sig = types.int32(trans, m, n, alpha, a, x, beta, y)

    def codegen(context, builder, signature, args):
        (tr, m_, n_, al, a_, x_, be, y_) = args
        ll_char = ir.IntType(8)
        ll_voidp = ir.IntType(8).as_pointer()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [
            ll_char, ll_char, intp, intp, ll_voidp, ll_voidp, intp, ll_voidp, ll_voidp, ll_voidp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemv")
        sty = signature.args
        slot, data = _arg_helpers(context, builder, dtype)

        mm = context.cast(builder, m_, sty[1], types.intp)
        return builder.call(fn, [
            ir.Constant(ll_char, ord(kind)),
            builder.trunc(context.cast(builder, tr, sty[0], types.intp), ll_char),
            mm, context.cast(builder, n_, sty[2], types.intp),
            slot(al, sty[3]), data(a_, sty[4]), mm, data(x_, sty[5]), slot(be, sty[6]), data(y_, sty[7])])

    return sig, codegen


_N = ord("n")
_T = ord("t")


@njit(**_JIT)
def _gemm(ta, tb, m, n, k, alpha, a, b, beta, c):
    """Row-major ``c[:m, :n] = alpha * op(a) @ op(b) + beta * c`` on C-contiguous 2-D arrays.

    ``ta``/``tb`` are ord('n') or ord('t'); ``op(a)`` is (m, k), ``op(b)`` (k, n).
    Row-major C = A B is column-major C^T = B^T A^T, hence the swapped operands.
    """
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0:
            c[:m, :n] = 0
        else:
            c[:m, :n] *= beta
        return
    if m == 1 and ta == _N:
        # one row: a matrix-vector product, c^T = op(b)^T a^T (gemm is ~3x slower here)
        _xxgemv(tb, b.shape[1], b.shape[0], alpha, b, a, beta, c)
        return
    _xxgemm(tb, ta, n, m, k, alpha, b, max(b.shape[1], 1), a, max(a.shape[1], 1),
            beta, c, max(c.shape[1], 1))


# --- activations -------------------------------------------------------------


@intrinsic
def _pow2i(typingctx, n):
    """2**n for a float holding an integer in the normal exponent range (bit construction)."""
    sig = n(n)

    def codegen(context, builder, signature, args):
        (v,) = args
        if signature.args[0] == types.float32:
            ity, bias, shift, fty = ir.IntType(32), 127, 23, ir.FloatType()
        else:
            ity, bias, shift, fty = ir.IntType(64), 1023, 52, ir.DoubleType()
        i = builder.fptosi(v, ity)
        i = builder.add(i, ir.Constant(ity, bias))
        i = builder.shl(i, ir.Constant(ity, shift))
        return builder.bitcast(i, fty)

    return sig, codegen


def _exp_neg(x):
    """exp(x) for x <= 0 (NaN propagates, -inf and x below the normal range give 0)."""


def _tanh(x):
    """tanh(x), branch-free, for any x."""


_f32 = np.float32
_f64 = np.float64


@overload(_exp_neg, jit_options=_JIT)
def _exp_neg_impl(x):
    if x == types.float32:
        # Cephes expf: n = round(x / ln2), r = x - n ln2, 2^n e^r.
        lo, log2e, c1, c2 = _f32(-87.33), _f32(1.44269504088896341), _f32(0.693359375), _f32(-2.12194440e-4)
        p0, p1, p2, p3, p4, p5 = (_f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3),
                                  _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1))
        half, one, zero = _f32(0.5), _f32(1.0), _f32(0.0)

        def impl(x):
            xc = x if x > lo else lo
            n = np.floor(xc * log2e + half)
            r = xc - n * c1
            r = r - n * c2
            y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
            y = y * _pow2i(n)
            y = y if x > lo else zero
            return y if x == x else x
        return impl
    if x == types.float64:
        # Cephes exp: Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
        lo, log2e, c1, c2 = -708.39, 1.4426950408889634073599, 6.93145751953125e-1, 1.42860682030941723212e-6
        P0, P1, P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
        Q0, Q1, Q2, Q3 = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                          2.27265548208155028766e-1, 2.00000000000000000009e0)

        def impl(x):
            xc = x if x > lo else lo
            n = np.floor(xc * log2e + 0.5)
            r = xc - n * c1
            r = r - n * c2
            rr = r * r
            px = r * ((P0 * rr + P1) * rr + P2)
            qx = ((Q0 * rr + Q1) * rr + Q2) * rr + Q3
            y = 1.0 + 2.0 * (px / (qx - px))
            y = y * _pow2i(n)
            y = y if x > lo else 0.0
            return y if x == x else x
        return impl


@overload(_tanh, jit_options=_JIT)
def _tanh_impl(x):
    # |x| < 0.625: odd polynomial / rational (Cephes), else (1 - e) / (1 + e), e = exp(-2|x|).
    if x == types.float32:
        q0, q1, q2, q3, q4 = (_f32(-5.70498872745e-3), _f32(2.06390887954e-2), _f32(-5.37397155531e-2),
                              _f32(1.33314422036e-1), _f32(-3.33332819422e-1))
        small, one, mtwo = _f32(0.625), _f32(1.0), _f32(-2.0)

        def impl(x):
            a = abs(x)
            z = x * x
            ps = ((((q0 * z + q1) * z + q2) * z + q3) * z + q4) * z * x + x
            e = _exp_neg(mtwo * a)
            pl = (one - e) / (one + e)
            pl = pl if x >= 0 else -pl
            return ps if a < small else pl
        return impl
    if x == types.float64:
        P0, P1, P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
        Q0, Q1, Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3

        def impl(x):
            a = abs(x)
            z = x * x
            ps = x + x * z * (((P0 * z + P1) * z + P2) / (((z + Q0) * z + Q1) * z + Q2))
            e = _exp_neg(-2.0 * a)
            pl = (1.0 - e) / (1.0 + e)
            pl = pl if x >= 0 else -pl
            return ps if a < 0.625 else pl
        return impl


def _one(a):
    """1 in the dtype of array ``a``."""


@overload(_one, jit_options=_JIT)
def _one_impl(a):
    one = np.float32(1.0) if a.dtype == types.float32 else 1.0
    return lambda a: one


def _sigmoid(x):
    """Logistic function from exp(-|x|): no overflow for any x."""


@overload(_sigmoid, jit_options=_JIT)
def _sigmoid_impl(x):
    if isinstance(x, types.Float):
        one = np.float32(1.0) if x == types.float32 else 1.0

        def impl(x):
            e = _exp_neg(-abs(x))
            s = one / (one + e)
            return s if x >= 0 else e * s
        return impl


# --- kernels -----------------------------------------------------------------


@njit(**_JIT)
def _gate_step(a, b, c_prev, c_t, h_t):
    """Gate pass for one step; a (n, 4H) pre-activations -> activated gates in place.

    Writes c_t and h_t = o * tanh(c_t) (the unprojected hidden state m_t with
    a projection). Separate sweeps per gate, then one for cell and hidden, all
    over ``range(H)``: a single sweep that reads and writes ``a`` at offsets H
    apart, or a loop over ``range(2H, 3H)``, is not vectorised by LLVM and
    runs 5-15x slower.
    """
    B, H = c_t.shape
    for r in range(B):
        for j in range(H):
            a[r, j] = _sigmoid(a[r, j] + b[j])
        for j in range(H):
            a[r, H + j] = _sigmoid(a[r, H + j] + b[H + j])
        for j in range(H):
            a[r, 2 * H + j] = _tanh(a[r, 2 * H + j] + b[2 * H + j])
        for j in range(H):
            a[r, 3 * H + j] = _sigmoid(a[r, 3 * H + j] + b[3 * H + j])
        for j in range(H):
            cv = a[r, H + j] * c_prev[r, j] + a[r, j] * a[r, 2 * H + j]
            c_t[r, j] = cv
            h_t[r, j] = a[r, 3 * H + j] * _tanh(cv)


@njit(**_JIT)
def _check_steps(batch_sizes, N, B):
    """batch_sizes must be non-increasing in [0, B] and sum to N (a wrong one would
    index out of bounds: Numba does not check)."""
    total = 0
    prev = B
    for t in range(batch_sizes.shape[0]):
        n = batch_sizes[t]
        if n < 0 or n > prev:
            raise ValueError("batch_sizes must be non-increasing, in [0, B]")
        total += n
        prev = n
    if total != N:
        raise ValueError("sum(batch_sizes) must equal the number of packed rows")


@njit(**_JIT)
def lstm_forward(x, w_ih, w_hh, b, h0, c0, batch_sizes, w_hr, y, h_n, c_n, gates, c, m):
    """Forward pass into caller-provided outputs, packed layout (see module docstring).

    x (N, I), y (N, P), gates (N, 4H), c (N, H) with N = sum(batch_sizes);
    step t's rows start at sum(batch_sizes[:t]) and only its first
    batch_sizes[t] sequences advance. ``b`` is (4H,) (zeros when the layer has
    no bias). ``w_hr`` (P, H) or None; ``m`` (B, H) is workspace for the
    unprojected hidden state when ``w_hr`` is given, else None. Returns nothing.
    """
    N, I = x.shape
    B, P = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    _check_steps(batch_sizes, N, B)
    _gemm(_N, _T, N, G, I, 1.0, x, w_ih, 0.0, gates)   # hoisted input projection
    off = 0
    prev = 0
    for t in range(T):
        n = batch_sizes[t]
        a = gates[off:off + n]
        # the n active sequences were all active at t - 1 (non-increasing sizes)
        h_prev = h0[:n] if t == 0 else y[prev:prev + n]
        c_prev = c0[:n] if t == 0 else c[prev:prev + n]
        _gemm(_N, _T, n, G, P, 1.0, h_prev, w_hh, 1.0, a)
        if w_hr is None:
            _gate_step(a, b, c_prev, c[off:off + n], y[off:off + n])
        else:
            _gate_step(a, b, c_prev, c[off:off + n], m[:n])
            _gemm(_N, _T, n, P, H, 1.0, m[:n], w_hr, 0.0, y[off:off + n])
        prev = off
        off += n
    # final states: sequence r's last step is the last t with batch_sizes[t] > r
    n0 = batch_sizes[0] if T > 0 else 0
    h_n[n0:] = h0[n0:]
    c_n[n0:] = c0[n0:]
    off = 0
    for t in range(T):
        n = batch_sizes[t]
        nn = batch_sizes[t + 1] if t + 1 < T else 0
        h_n[nn:n] = y[off + nn:off + n]
        c_n[nn:n] = c[off + nn:off + n]
        off += n


@njit(**_JIT)
def _gate_grad_step(g, c_prev, c_t, dy_t, dm, dc, dg, m):
    """Elementwise backward for one step (n active rows).

    ``dm`` is the gradient reaching m_t = o * tanh(c_t): without a projection
    that is dh, and ``dy_t`` is added to it here first; with one the caller
    has formed it (dh @ w_hr) and passes ``dy_t`` None. Writes dgates ``dg``,
    turns ``dc`` into the gradient reaching c_{t-1}, and stores m_t into ``m``
    unless it is None. One short sweep per output segment, for the same
    vectorisation reason as ``_gate_step``.
    """
    B, H = c_t.shape
    one = _one(c_t)
    for r in range(B):
        if dy_t is not None:
            for j in range(H):
                dm[r, j] += dy_t[r, j]
        for j in range(H):
            tc = _tanh(c_t[r, j])
            og = g[r, 3 * H + j]
            dc[r, j] += dm[r, j] * og * (one - tc * tc)
            dg[r, 3 * H + j] = dm[r, j] * tc * og * (one - og)
        if m is not None:
            for j in range(H):
                m[r, j] = g[r, 3 * H + j] * _tanh(c_t[r, j])
        for j in range(H):
            ig = g[r, j]
            dg[r, j] = dc[r, j] * g[r, 2 * H + j] * ig * (one - ig)
        for j in range(H):
            fg = g[r, H + j]
            dg[r, H + j] = dc[r, j] * c_prev[r, j] * fg * (one - fg)
        for j in range(H):
            gg = g[r, 2 * H + j]
            dg[r, 2 * H + j] = dc[r, j] * g[r, j] * (one - gg * gg)
        for j in range(H):
            dc[r, j] *= g[r, H + j]


@njit(**_JIT)
def _aligned(batch_sizes):
    """True if the rows of steps 1..T-1 follow those of their previous steps
    contiguously (row r of step t <-> row r of step t-1), so that the h_{t-1}
    rows for dw_hh are y[:N - batch_sizes[0]] itself: every size but the last
    equals the first (always so without variable lengths)."""
    T = batch_sizes.shape[0]
    for t in range(1, T - 1):
        if batch_sizes[t] != batch_sizes[0]:
            return False
    return True


@njit(**_JIT)
def lstm_backward(x, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes, w_hr,
                  dgates, h_prev, dm, dh_all, m_all, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr):
    """Backpropagation through time into caller-provided outputs, packed layout.

    Workspace: ``dgates`` (N, 4H); ``h_prev`` (N - batch_sizes[0], P), the
    gathered h_{t-1} rows for dw_hh, used only when the steps are not
    ``_aligned`` (else it may have 0 rows); with ``w_hr`` (P, H): ``dm``
    (B, H), ``dh_all`` (N, P), ``m_all`` (N, H) and output ``dw_hr`` (P, H),
    all None without. ``dh0``/``dc0`` double as the running dh/dc (rows of
    inactive sequences pass through). Returns nothing.
    """
    N, I = x.shape
    B, P = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    _check_steps(batch_sizes, N, B)
    dh0[:] = dh_n
    dc0[:] = dc_n
    off = N
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        off -= n
        prev = off - batch_sizes[t - 1] if t > 0 else 0
        c_prev = c0[:n] if t == 0 else c[prev:prev + n]
        g = gates[off:off + n]
        dg = dgates[off:off + n]
        if w_hr is None:
            _gate_grad_step(g, c_prev, c[off:off + n], dy[off:off + n], dh0[:n], dc0[:n], dg, None)
        else:
            dha = dh_all[off:off + n]
            for r in range(n):
                for j in range(P):
                    dha[r, j] = dh0[r, j] + dy[off + r, j]
            _gemm(_N, _N, n, H, P, 1.0, dha, w_hr, 0.0, dm[:n])
            _gate_grad_step(g, c_prev, c[off:off + n], None, dm[:n], dc0[:n], dg, m_all[off:off + n])
        _gemm(_N, _N, n, P, G, 1.0, dg, w_hh, 0.0, dh0[:n])
    # whole-sequence products over all N rows, after the loop
    _gemm(_N, _N, N, I, G, 1.0, dgates, w_ih, 0.0, dx)
    _gemm(_T, _N, G, I, N, 1.0, dgates, x, 0.0, dw_ih)
    n0 = batch_sizes[0] if T > 0 else 0
    _gemm(_T, _N, G, P, n0, 1.0, dgates[:n0], h0[:n0], 0.0, dw_hh)   # zeros when n0 = 0
    N1 = N - n0
    if N1 > 0:
        if _aligned(batch_sizes):
            src = y[:N1]
        else:
            if h_prev.shape[0] < N1:
                raise ValueError("h_prev workspace too small for these batch_sizes")
            off = n0
            prev = 0
            for t in range(1, T):
                n = batch_sizes[t]
                h_prev[off - n0:off - n0 + n] = y[prev:prev + n]
                prev = off
                off += n
            src = h_prev[:N1]
        _gemm(_T, _N, G, P, N1, 1.0, dgates[n0:], src, 1.0, dw_hh)
    db[:] = 0
    for r in range(N):
        dr = dgates[r]
        for j in range(G):
            db[j] += dr[j]
    if w_hr is not None:
        _gemm(_T, _N, P, H, N, 1.0, dh_all, m_all, 0.0, dw_hr)


# --- threads -------------------------------------------------------------------


def _find_blas_threads_setter():
    """OpenBLAS's thread-local ``openblas_set_num_threads_local`` from SciPy's BLAS, or None.

    Thread-local, so setting it around a kernel call (and restoring it) leaves
    other threads' BLAS settings alone.
    """
    import ctypes
    import glob

    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
    except ImportError:
        return None
    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*.so*")
    for path in sorted(glob.glob(pattern)):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int]
        return fn
    return None


_set_blas_threads = _find_blas_threads_setter()


class _blas_threads:
    """Context manager: BLAS threads of the calling thread set to ``n`` for the duration."""

    __slots__ = ("n", "old")

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        if _set_blas_threads is not None:
            self.old = _set_blas_threads(self.n)

    def __exit__(self, *exc):
        if _set_blas_threads is not None:
            _set_blas_threads(self.old)


# --- backend contract (see _backends.py) ---------------------------------------

SUPPORTS_PROJECTION = True


def pack(w_ih, w_hh, b, w_hr=None):
    if b is None:
        b = np.zeros(w_hh.shape[0], w_hh.dtype)
    return (w_ih, w_hh, b, w_hr)


def _packed_steps(x, batch_sizes):
    """(N, I) view of x, int64 batch_sizes ([B] * T for the padded layout) and
    the padded (T, B) to reshape outputs to, or None."""
    if batch_sizes is None:
        T, B, I = x.shape
        return x.reshape(T * B, I), np.full(T, B, np.int64), (T, B)
    return x, np.ascontiguousarray(batch_sizes, dtype=np.int64), None


def forward(packed, x, h0, c0, num_threads, batch_sizes=None):
    w_ih, w_hh, b, w_hr = packed
    xp, bs, padded = _packed_steps(x, batch_sizes)
    N = xp.shape[0]
    B, P = h0.shape
    H = w_hh.shape[0] // 4
    dt = x.dtype
    y = np.empty((N, P), dt)
    h_n = np.empty((B, P), dt)
    c_n = np.empty((B, H), dt)
    gates = np.empty((N, 4 * H), dt)
    c = np.empty((N, H), dt)
    m = None if w_hr is None else np.empty((B, H), dt)
    with _blas_threads(1):
        lstm_forward(xp, w_ih, w_hh, b, h0, c0, bs, w_hr, y, h_n, c_n, gates, c, m)
    if padded is not None:
        T, B = padded
        y, gates, c = y.reshape(T, B, P), gates.reshape(T, B, 4 * H), c.reshape(T, B, H)
    return y, h_n, c_n, gates, c


def backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None):
    w_ih, w_hh, _, w_hr = packed
    xp, bs, padded = _packed_steps(x, batch_sizes)
    N, I = xp.shape
    B, P = h0.shape
    H = w_hh.shape[0] // 4
    dt = x.dtype
    y, gates, c, dy = (a.reshape(N, a.shape[-1]) for a in (y, gates, c, dy))
    dgates = np.empty((N, 4 * H), dt)
    n0 = int(bs[0]) if len(bs) else 0
    aligned = len(bs) < 3 or bool(np.all(bs[1:-1] == bs[0]))   # as _aligned
    h_prev = np.empty((0 if aligned else max(N - n0, 0), P), dt)
    dx = np.empty((N, I), dt)
    dw_ih = np.empty((4 * H, I), dt)
    dw_hh = np.empty((4 * H, P), dt)
    db = np.empty(4 * H, dt)
    dh0 = np.empty((B, P), dt)
    dc0 = np.empty((B, H), dt)
    if w_hr is None:
        dm = dh_all = m_all = dw_hr = None
    else:
        dm, dh_all, m_all = np.empty((B, H), dt), np.empty((N, P), dt), np.empty((N, H), dt)
        dw_hr = np.empty((P, H), dt)
    with _blas_threads(1):
        lstm_backward(xp, w_ih, w_hh, h0, c0, y, gates, c, dy, dh_n, dc_n, bs, w_hr,
                      dgates, h_prev, dm, dh_all, m_all, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr)
    if padded is not None:
        dx = dx.reshape(x.shape)
    if w_hr is None:
        return dx, dw_ih, dw_hh, db, dh0, dc0
    return dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr
