"""Numba backend "numba": the C kernel's design (csrc/lstm.template.c) in Numba, JIT-compiled on first use.

Why hand-written loops and not BLAS: the BLAS Numba can reach (SciPy's
OpenBLAS, the one ``np.dot`` uses) runs AVX2 kernels on this AVX-512 machine
(OPENBLAS_CORETYPE=Haswell; MKL also picks AVX2 on AMD), about half its
multiply-add rate; per-step BLAS calls also cost microseconds each at small
shapes, and cannot apply the gate activations while a tile of h.w_hh^T is
still in registers. The products here are register-tiled loops on explicit
64-byte SIMD vectors (``_Vec``: an LLVM ``<16 x float>`` / ``<8 x double>``
value, so LLVM keeps a tile's accumulators in zmm registers and emits
``vfmadd231ps zmm``; check with ``fn.inspect_asm(sig)``). Measured, one
thread, this module's ``_gemm`` against NumPy's matmul (OpenBLAS, 1 thread):
f32 2048x256 . 256x1024 253 vs 125 GFLOP/s, the transposed dW shape
(1024x2048 . 2048x256) 211 vs 120, 512x64 . 64x256 256 vs 122; f64 about
111 vs 60. No product was faster on BLAS, so none is left there.

Names mirror the C kernel (``lstm_forward``/``lstm_backward``, ``_gemm``,
``_fwd_dot``/``_fwd_cell``, ``_bwd_dot``/``_bwd_cell``, ``pack``); argument
order follows ``_reference`` (inputs, then outputs and workspace). One Python
function serves both dtypes (Numba specialises it per dtype).

* Packed weights (``pack``, built once per weight version; W lanes per
  vector, NR = 2W): ``wih_t`` panels [ceil(4H/NR)][I][NR] of w_ih^T (gates =
  x.w_ih^T), ``wih`` panels [ceil(I/NR)][4H][NR] of w_ih (dx = dgates.w_ih),
  ``whh_f`` [ceil(H/W)][R][4][W]: one forward tile holds the i, f, g, o
  columns of the same W hidden units (R = P with a projection, else H),
  ``whh_b`` [ceil(R/W)][4H][W] for dh = dgates.w_hh, ``b`` (4H,), and with a
  projection ``whr_t``/``whr`` panels of w_hr^T / w_hr.
* GEMM (``_gemm``): C = A.B (+ bias) with B in packed panels, A row-major or
  transposed, read in place; blocked KC x (MC rows) so that the B sliver
  (KC x NR) stays in L1 and the A block in L2; an 8-row x 2-vector register
  tile (a 1-row x 4-panel tile for one-row products).
* Forward step (``_fwd_blocks``): per hidden block (W units) and 6 rows, the
  24 accumulators of h_{t-1}.w_hh^T for the 4 gates are added to the input
  projection in ``gates`` (x.w_ih^T + b, one GEMM for all steps before the
  loop), then the elementwise pass of that tile (activations, c, h) while it
  is in L1. One row (B = 1): 1 row x 4 blocks.
* Backward step (``_bwd_blocks``): dh = dgates[t+1].w_hh for 4 rows x 4
  blocks (+ dy; 1 row x 8 blocks for one row), then the gate gradients of
  step t for the same units; dx, dw_ih, dw_hh, db (and dw_hr) are
  whole-sequence GEMMs after the loop.
* Lengths: one code path, the packed step-major layout (x (N, I), step t's
  rows at sum(batch_sizes[:t]), only the first batch_sizes[t] sequences
  advance); sizes never increase, so h_{t-1}/c_{t-1} are the first n rows of
  step t-1 in y/c. Padded (T, B, .) input is batch_sizes = [B] * T.
* Projection (w_hr (P, H)): forward writes m = o*tanh(c) to ``m`` and y_t =
  m.w_hr^T is a GEMM per step; backward forms dh (P wide), dm = dh.w_hr, then
  the cell; dw_hr = dh_all^T.m_all after the loop. Without one the arrays are
  None and Numba compiles a specialisation with those branches pruned.
* Threads: ``num_threads`` (``lstm_fast.set_num_threads``; 0 = per shape, the
  C kernel's rule) becomes ``numba.set_num_threads(n)`` for the call
  (thread-local, restored after) and ``nth`` in the kernels, over
  ``prange(nth)`` with a fixed partition: the GEMMs split output panels (or
  row tiles); the time loops split sequences (independent: one parallel
  region for all steps) when there are >= 8 per thread, else each step's
  hidden blocks; products and steps under 2^18 multiply-adds stay on the
  calling thread. K is never split and every output element is computed by
  the same sequence of operations (same tile kernel chain over k, the same
  elementwise code) whatever the partition, so the bits do not depend on the
  thread count. nth = 1 runs on the calling thread, no parallel region.
* Activations: branch-free polynomial exp/tanh (Cephes) on whole vectors; NaN
  propagates through explicit selects, +-inf saturate like the reference. No
  fastmath ('nnan'/'ninf' would break NaN/inf propagation; no contraction:
  FMAs only where written).
* Compilation is lazy (nothing compiles at import) and cached to disk
  (``cache=True``); the module imports Numba, so the registry imports it only
  when the backend is first used. Cold first use compiles for ~35 s per
  dtype (forward 17.5 s + backward 18.7 s, f32; benchmarks/numba_first_use.py);
  from the cache the first call takes ~0.45 s (importing Numba included).
"""

import operator
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

_JIT = dict(nogil=True, cache=True, error_model="numpy")
_PJIT = dict(_JIT, parallel=True)

# The kernels call parallel (prange) functions. Code loaded from the disk cache references
# the threading layer's entry points, which are only bound once the layer is launched; a
# kernel called first from the cache would jump to a null address (seen: a segfault in a
# fresh process calling a GEMM directly). get_num_threads() launches the layer (no compiling).
numba.get_num_threads()

# --- SIMD vectors ----------------------------------------------------------------


class _Vec(types.Type):
    """A 64-byte SIMD vector of ``dtype`` (16 float32 / 8 float64), an LLVM vector value."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.width = 64 // (dtype.bitwidth // 8)
        super().__init__(name=f"_Vec{self.width}x{dtype}")


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elt, fe_type.width))


def _sfx(vt):
    return "v%d%s" % (vt.width, "f32" if vt.dtype == types.float32 else "f64")


def _elem_ptr(context, builder, aryty, ary, idx, idxty):
    """Pointer to element ``idx`` of an array's data (counted flat from its first element) or
    of a raw pointer."""
    base = ary if isinstance(aryty, types.CPointer) else context.make_array(aryty)(context, builder, ary).data
    return builder.gep(base, [context.cast(builder, idx, idxty, types.intp)])


@intrinsic
def _ptr(typingctx, a):
    """Raw data pointer of a C-contiguous array. The tile kernels take pointers, not arrays:
    every array passed to a Numba function costs an atomic incref/decref pair of its meminfo
    that LLVM cannot always remove (measured: half the time of a GEMM with a bias)."""
    def cg(context, builder, sig, args):
        return context.make_array(a)(context, builder, args[0]).data
    return types.CPointer(a.dtype)(a), cg


@intrinsic
def _st(typingctx, a, i, v):
    """Store scalar v at flat element index i of a (array or pointer)."""
    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(context.cast(builder, args[2], sig.args[2], a.dtype), p)
        return context.get_dummy_value()
    return types.none(a, i, v), cg


def _lane_mask(context, builder, n, nty, width):
    """<width x i1>: lane < n."""
    i32 = ir.IntType(32)
    vi = ir.VectorType(i32, width)
    nn = context.cast(builder, n, nty, types.int32)
    splat = builder.insert_element(ir.Constant(vi, None), nn, ir.Constant(i32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(vi, [0] * width))
    return builder.icmp_signed("<", ir.Constant(vi, list(range(width))), splat)


@intrinsic
def _vzero(typingctx, a):
    """Zero vector of array ``a``'s dtype."""
    vt = _Vec(a.dtype)

    def cg(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(a), cg


@intrinsic
def _vload(typingctx, a, i):
    """Vector at flat element index i of C-contiguous array a (unaligned)."""
    vt = _Vec(a.dtype)

    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, vty.as_pointer()), align=a.dtype.bitwidth // 8)
    return vt(a, i), cg


@intrinsic
def _vload_n(typingctx, a, i, n):
    """The first n lanes from flat index i (0 < n <= width), other lanes 0 (masked: no access)."""
    vt = _Vec(a.dtype)

    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = context.get_value_type(vt)
        m = _lane_mask(context, builder, args[2], sig.args[2], vt.width)
        fnty = ir.FunctionType(vty, [p.type, ir.IntType(32), m.type, vty])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.{_sfx(vt)}.p0")
        return builder.call(fn, [p, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8), m,
                                 ir.Constant(vty, None)])
    return vt(a, i, n), cg


@intrinsic
def _vstore_n(typingctx, a, i, v, n):
    """Store the first n lanes of v at flat index i of a (masked)."""
    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = context.get_value_type(v)
        m = _lane_mask(context, builder, args[3], sig.args[3], v.width)
        fnty = ir.FunctionType(ir.VoidType(), [vty, p.type, ir.IntType(32), m.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.{_sfx(v)}.p0")
        builder.call(fn, [args[2], p, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8), m])
        return context.get_dummy_value()
    return types.none(a, i, v, n), cg


@intrinsic
def _ld(typingctx, a, i):
    """Scalar at flat element index i of a (C-contiguous array or pointer)."""
    def cg(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]))
    return a.dtype(a, i), cg


@intrinsic
def _vset1(typingctx, x):
    """Vector with every lane x."""
    vt = _Vec(x)

    def cg(context, builder, sig, args):
        vty = context.get_value_type(vt)
        i32 = ir.IntType(32)
        v = builder.insert_element(ir.Constant(vty, None), args[0], ir.Constant(i32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, vt.width), [0] * vt.width))
    return vt(x), cg


@intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c, one rounding (llvm.fma)."""
    def cg(context, builder, sig, args):
        vty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                            f"llvm.fma.{_sfx(a)}")
        return builder.call(fn, args)
    return a(a, b, c), cg


def _width(a):
    """Lanes of a 64-byte vector of array a's dtype (a compile-time constant)."""


@overload(_width, jit_options=_JIT)
def _width_impl(a):
    w = 64 // a.dtype.bitwidth * 8
    return lambda a: w


def _binop(op, doc):
    @intrinsic
    def vop(typingctx, a, b):
        def cg(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return a(a, b), cg
    vop.__doc__ = doc
    return vop


_vadd = _binop("fadd", "a + b")
_vsub = _binop("fsub", "a - b")
_vmul = _binop("fmul", "a * b")
_vdiv = _binop("fdiv", "a / b")


@intrinsic
def _vsplat(typingctx, v, x):
    """Vector like v with every lane x (cast to v's dtype)."""
    def cg(context, builder, sig, args):
        vty = context.get_value_type(v)
        i32 = ir.IntType(32)
        s = context.cast(builder, args[1], sig.args[1], v.dtype)
        s = builder.insert_element(ir.Constant(vty, None), s, ir.Constant(i32, 0))
        return builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(i32, v.width), [0] * v.width))
    return v(v, x), cg


def _vec_operator(vop):
    """Overload of a binary operator for ``_Vec`` (a scalar operand is broadcast)."""
    def typer(a, b):
        if isinstance(a, _Vec) and isinstance(b, _Vec):
            return lambda a, b: vop(a, b)
        if isinstance(a, _Vec) and isinstance(b, types.Number):
            return lambda a, b: vop(a, _vsplat(a, b))
        if isinstance(a, types.Number) and isinstance(b, _Vec):
            return lambda a, b: vop(_vsplat(b, a), b)
    return typer


for _op, _vop in ((operator.add, _vadd), (operator.sub, _vsub), (operator.mul, _vmul),
                  (operator.truediv, _vdiv)):
    overload(_op, jit_options=_JIT)(_vec_operator(_vop))


def _unary(name, doc):
    @intrinsic
    def vop(typingctx, a):
        def cg(context, builder, sig, args):
            vty = context.get_value_type(a)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                                f"llvm.{name}.{_sfx(a)}")
            return builder.call(fn, args)
        return a(a), cg
    vop.__doc__ = doc
    return vop


_vabs = _unary("fabs", "|a|")
_vfloor = _unary("floor", "floor(a)")


@intrinsic
def _vneg(typingctx, a):
    """-a (sign flip, also of 0 and NaN)."""
    def cg(context, builder, sig, args):
        return builder.fneg(args[0])
    return a(a), cg


def _select(pred, doc):
    @intrinsic
    def vsel(typingctx, a, b, x, y):
        def cg(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(pred, args[0], args[1]), args[2], args[3])
        return x(a, b, x, y), cg
    vsel.__doc__ = doc
    return vsel


_vsel_gt = _select(">", "a > b ? x : y per lane (false for NaN)")
_vsel_ge = _select(">=", "a >= b ? x : y per lane (false for NaN)")
_vsel_eq = _select("==", "a == b ? x : y per lane (false for NaN)")


@intrinsic
def _vpow2i(typingctx, n):
    """2**n per lane, n holding integers in the normal exponent range (bit construction)."""
    def cg(context, builder, sig, args):
        if n.dtype == types.float32:
            bits, bias, shift = 32, 127, 23
        else:
            bits, bias, shift = 64, 1023, 52
        ity = ir.VectorType(ir.IntType(bits), n.width)
        i = builder.fptosi(args[0], ity)
        i = builder.add(i, ir.Constant(ity, [bias] * n.width))
        i = builder.shl(i, ir.Constant(ity, [shift] * n.width))
        return builder.bitcast(i, context.get_value_type(n))
    return n(n), cg


# --- activations ---------------------------------------------------------------------
# Branch-free, on whole vectors: exp(x) for x <= 0 (Cephes), sigmoid from exp(-|x|), tanh from
# exp(-2|x|) (a polynomial below 0.625): nothing overflows for any |x|, NaN propagates through
# explicit selects, +-inf saturate to the reference's values.


def _vexp_neg(x):
    """exp(x) for x <= 0 per lane (NaN propagates, -inf and x below the normal range give 0)."""


def _vtanh(x):
    """tanh(x) per lane, any x."""


def _vsigmoid(x):
    """1 / (1 + exp(-x)) per lane from exp(-|x|): no overflow for any x."""


_f32 = np.float32


@overload(_vexp_neg, jit_options=_JIT)
def _vexp_neg_impl(x):
    if not isinstance(x, _Vec):
        return None
    if x.dtype == types.float32:
        # Cephes expf: n = round(x / ln2), r = x - n ln2, 2^n e^r.
        lo, log2e, c1, c2 = _f32(-87.33), _f32(1.44269504088896341), _f32(0.693359375), _f32(-2.12194440e-4)
        p0, p1, p2, p3, p4, p5 = (_f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3),
                                  _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1))
        half, one, zero = _f32(0.5), _f32(1.0), _f32(0.0)

        def impl(x):
            vlo = _vsplat(x, lo)
            xc = _vsel_gt(x, vlo, x, vlo)
            n = _vfloor(xc * log2e + half)
            r = xc - n * c1
            r = r - n * c2
            y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
            y = y * _vpow2i(n)
            y = _vsel_gt(x, vlo, y, _vsplat(x, zero))
            return _vsel_eq(x, x, y, x)
        return impl
    # Cephes exp: Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
    lo, log2e, c1, c2 = -708.39, 1.4426950408889634073599, 6.93145751953125e-1, 1.42860682030941723212e-6
    P0, P1, P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
    Q0, Q1, Q2, Q3 = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                      2.27265548208155028766e-1, 2.00000000000000000009e0)

    def impl(x):
        vlo = _vsplat(x, lo)
        xc = _vsel_gt(x, vlo, x, vlo)
        n = _vfloor(xc * log2e + 0.5)
        r = xc - n * c1
        r = r - n * c2
        rr = r * r
        px = r * ((P0 * rr + P1) * rr + P2)
        qx = ((Q0 * rr + Q1) * rr + Q2) * rr + Q3
        y = 1.0 + 2.0 * (px / (qx - px))
        y = y * _vpow2i(n)
        y = _vsel_gt(x, vlo, y, _vsplat(x, 0.0))
        return _vsel_eq(x, x, y, x)
    return impl


@overload(_vtanh, jit_options=_JIT)
def _vtanh_impl(x):
    # |x| < 0.625: odd polynomial / rational (Cephes), else (1 - e) / (1 + e), e = exp(-2|x|).
    if not isinstance(x, _Vec):
        return None
    if x.dtype == types.float32:
        q0, q1, q2, q3, q4 = (_f32(-5.70498872745e-3), _f32(2.06390887954e-2), _f32(-5.37397155531e-2),
                              _f32(1.33314422036e-1), _f32(-3.33332819422e-1))
        small, one, mtwo, zero = _f32(0.625), _f32(1.0), _f32(-2.0), _f32(0.0)

        def impl(x):
            a = _vabs(x)
            z = x * x
            ps = ((((q0 * z + q1) * z + q2) * z + q3) * z + q4) * z * x + x
            e = _vexp_neg(mtwo * a)
            pl = (one - e) / (one + e)
            pl = _vsel_ge(x, _vsplat(x, zero), pl, _vneg(pl))
            return _vsel_gt(_vsplat(x, small), a, ps, pl)
        return impl
    P0, P1, P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
    Q0, Q1, Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3

    def impl(x):
        a = _vabs(x)
        z = x * x
        ps = x + x * z * (((P0 * z + P1) * z + P2) / (((z + Q0) * z + Q1) * z + Q2))
        e = _vexp_neg(-2.0 * a)
        pl = (1.0 - e) / (1.0 + e)
        pl = _vsel_ge(x, _vsplat(x, 0.0), pl, _vneg(pl))
        return _vsel_gt(_vsplat(x, 0.625), a, ps, pl)
    return impl


@overload(_vsigmoid, jit_options=_JIT)
def _vsigmoid_impl(x):
    if not isinstance(x, _Vec):
        return None
    one = np.float32(1.0) if x.dtype == types.float32 else 1.0
    zero = np.float32(0.0) if x.dtype == types.float32 else 0.0

    def impl(x):
        e = _vexp_neg(_vneg(_vabs(x)))
        s = one / (one + e)
        return _vsel_ge(x, _vsplat(x, zero), s, e * s)
    return impl


# --- tile kernels (register tiles; generated once by hand-unrolling, see the docstrings) ------


@njit(inline="always", **_JIT)
def _ukr_store(c, ci, v0, v1, nn, first, bias, bo):
    """Store a 2-vector row of a GEMM tile at flat index ci: acc (+ bias) if first, else C + acc."""
    W = _width(c)
    n0 = min(nn, W)
    if first:
        if bias is not None:
            v0 = _vadd(v0, _vload_n(bias, bo, n0))
    else:
        v0 = _vadd(v0, _vload_n(c, ci, n0))
    _vstore_n(c, ci, v0, n0)
    if nn > W:
        n1 = min(nn - W, W)
        if first:
            if bias is not None:
                v1 = _vadd(v1, _vload_n(bias, bo + W, n1))
        else:
            v1 = _vadd(v1, _vload_n(c, ci + W, n1))
        _vstore_n(c, ci + W, v1, n1)


@njit(inline="always", **_JIT)
def _add_gates(gates, gi, H, nv, a0, a1, a2, a3):
    """gates[gi + g*H:][:nv] += a_g for the 4 gates (pre-activation = input projection + h.w_hh^T)."""
    _vstore_n(gates, gi, _vadd(_vload_n(gates, gi, nv), a0), nv)
    _vstore_n(gates, gi + H, _vadd(_vload_n(gates, gi + H, nv), a1), nv)
    _vstore_n(gates, gi + 2 * H, _vadd(_vload_n(gates, gi + 2 * H, nv), a2), nv)
    _vstore_n(gates, gi + 3 * H, _vadd(_vload_n(gates, gi + 3 * H, nv), a3), nv)


@njit(inline="always", **_JIT)
def _store_dh(out, oi, col, R, v, dy, dyi):
    """out[oi + col:][:n] = v (+ dy[dyi + col:][:n]), n = min(W, R - col)."""
    n = min(_width(out), R - col)
    if dy is not None:
        v = _vadd(v, _vload_n(dy, dyi + col, n))
    _vstore_n(out, oi + col, v, n)


@njit(inline="always", **_JIT)
def _ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
                c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71):
    """Store the first mr rows (ldc apart from ci) of an 8-row GEMM tile with ``_ukr_store``."""
    _ukr_store(c, ci + 0 * ldc, c00, c01, nn, first, bias, bo)
    if mr > 1:
        _ukr_store(c, ci + 1 * ldc, c10, c11, nn, first, bias, bo)
    if mr > 2:
        _ukr_store(c, ci + 2 * ldc, c20, c21, nn, first, bias, bo)
    if mr > 3:
        _ukr_store(c, ci + 3 * ldc, c30, c31, nn, first, bias, bo)
    if mr > 4:
        _ukr_store(c, ci + 4 * ldc, c40, c41, nn, first, bias, bo)
    if mr > 5:
        _ukr_store(c, ci + 5 * ldc, c50, c51, nn, first, bias, bo)
    if mr > 6:
        _ukr_store(c, ci + 6 * ldc, c60, c61, nn, first, bias, bo)
    if mr > 7:
        _ukr_store(c, ci + 7 * ldc, c70, c71, nn, first, bias, bo)


@njit(**_JIT)
def _gemm_ukr_n(kc, a, ai, lda, bp, bi, c, ci, ldc, mr, nn, first, bias, bo):
    """MR x NR register tile (MR = 8 rows, NR = 2 vectors) over kc steps of k, row-major A:
    A(r, k) = a.flat[ai + r*lda + k]; B(k, :) = bp.flat[bi + k*NR:][:NR] (packed panel);
    C rows ci + r*ldc get acc (+ bias[bo:] if bias is not None) if first, else C += acc.
    Rows past mr re-read row mr - 1 and are dropped; columns past nn are masked. Each element
    of C is the k-ordered FMA chain, whatever the tile (same bits for any partition)."""
    W = _width(c)
    NR = 2 * W
    a0 = ai + min(0, mr - 1) * lda
    a1 = ai + min(1, mr - 1) * lda
    a2 = ai + min(2, mr - 1) * lda
    a3 = ai + min(3, mr - 1) * lda
    a4 = ai + min(4, mr - 1) * lda
    a5 = ai + min(5, mr - 1) * lda
    a6 = ai + min(6, mr - 1) * lda
    a7 = ai + min(7, mr - 1) * lda
    z = _vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = z
    for k in range(kc):
        b0 = _vload(bp, bi + k * NR)
        b1 = _vload(bp, bi + k * NR + W)
        o = k
        s = _vset1(_ld(a, a0 + o))
        c00 = _vfma(s, b0, c00)
        c01 = _vfma(s, b1, c01)
        s = _vset1(_ld(a, a1 + o))
        c10 = _vfma(s, b0, c10)
        c11 = _vfma(s, b1, c11)
        s = _vset1(_ld(a, a2 + o))
        c20 = _vfma(s, b0, c20)
        c21 = _vfma(s, b1, c21)
        s = _vset1(_ld(a, a3 + o))
        c30 = _vfma(s, b0, c30)
        c31 = _vfma(s, b1, c31)
        s = _vset1(_ld(a, a4 + o))
        c40 = _vfma(s, b0, c40)
        c41 = _vfma(s, b1, c41)
        s = _vset1(_ld(a, a5 + o))
        c50 = _vfma(s, b0, c50)
        c51 = _vfma(s, b1, c51)
        s = _vset1(_ld(a, a6 + o))
        c60 = _vfma(s, b0, c60)
        c61 = _vfma(s, b1, c61)
        s = _vset1(_ld(a, a7 + o))
        c70 = _vfma(s, b0, c70)
        c71 = _vfma(s, b1, c71)
    _ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
                c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71)


@njit(**_JIT)
def _gemm_ukr_t(kc, a, ai, lda, bp, bi, c, ci, ldc, mr, nn, first, bias, bo):
    """``_gemm_ukr_n`` for transposed A (the dW products): A(r, k) = a.flat[ai + r + k*lda];
    B(k, :) = bp.flat[bi + k*NR:][:NR] (packed panel);
    C rows ci + r*ldc get acc (+ bias[bo:] if bias is not None) if first, else C += acc.
    Rows past mr re-read row mr - 1 and are dropped; columns past nn are masked. Each element
    of C is the k-ordered FMA chain, whatever the tile (same bits for any partition)."""
    W = _width(c)
    NR = 2 * W
    a0 = ai + min(0, mr - 1)
    a1 = ai + min(1, mr - 1)
    a2 = ai + min(2, mr - 1)
    a3 = ai + min(3, mr - 1)
    a4 = ai + min(4, mr - 1)
    a5 = ai + min(5, mr - 1)
    a6 = ai + min(6, mr - 1)
    a7 = ai + min(7, mr - 1)
    z = _vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = z
    for k in range(kc):
        b0 = _vload(bp, bi + k * NR)
        b1 = _vload(bp, bi + k * NR + W)
        o = k * lda
        s = _vset1(_ld(a, a0 + o))
        c00 = _vfma(s, b0, c00)
        c01 = _vfma(s, b1, c01)
        s = _vset1(_ld(a, a1 + o))
        c10 = _vfma(s, b0, c10)
        c11 = _vfma(s, b1, c11)
        s = _vset1(_ld(a, a2 + o))
        c20 = _vfma(s, b0, c20)
        c21 = _vfma(s, b1, c21)
        s = _vset1(_ld(a, a3 + o))
        c30 = _vfma(s, b0, c30)
        c31 = _vfma(s, b1, c31)
        s = _vset1(_ld(a, a4 + o))
        c40 = _vfma(s, b0, c40)
        c41 = _vfma(s, b1, c41)
        s = _vset1(_ld(a, a5 + o))
        c50 = _vfma(s, b0, c50)
        c51 = _vfma(s, b1, c51)
        s = _vset1(_ld(a, a6 + o))
        c60 = _vfma(s, b0, c60)
        c61 = _vfma(s, b1, c61)
        s = _vset1(_ld(a, a7 + o))
        c70 = _vfma(s, b0, c70)
        c71 = _vfma(s, b1, c71)
    _ukr_store8(c, ci, ldc, mr, nn, first, bias, bo,
                c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71)


@njit(**_JIT)
def _fwd_dot(K, hp, hi, w, wi, gates, gi, G, H, mr, nv):
    """gates[rows, g*H + off:][:nv] += h_prev[rows] . w_hh^T for one block of W hidden units and
    its 4 gates, up to 6 rows (24 accumulators): h rows at hp.flat[hi + r*K], w_hh block at
    w.flat[wi:] as [k][4][W], gates rows at gates.flat[gi + r*G]. Rows past mr re-read row
    mr - 1 and are dropped."""
    h0 = hi + min(0, mr - 1) * K
    h1 = hi + min(1, mr - 1) * K
    h2 = hi + min(2, mr - 1) * K
    h3 = hi + min(3, mr - 1) * K
    h4 = hi + min(4, mr - 1) * K
    h5 = hi + min(5, mr - 1) * K
    z = _vzero(gates)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = z
    for k in range(K):
        o = wi + k * 4 * _width(gates)
        w0 = _vload(w, o + 0 * _width(gates))
        w1 = _vload(w, o + 1 * _width(gates))
        w2 = _vload(w, o + 2 * _width(gates))
        w3 = _vload(w, o + 3 * _width(gates))
        s = _vset1(_ld(hp, h0 + k))
        a00 = _vfma(s, w0, a00)
        a01 = _vfma(s, w1, a01)
        a02 = _vfma(s, w2, a02)
        a03 = _vfma(s, w3, a03)
        s = _vset1(_ld(hp, h1 + k))
        a10 = _vfma(s, w0, a10)
        a11 = _vfma(s, w1, a11)
        a12 = _vfma(s, w2, a12)
        a13 = _vfma(s, w3, a13)
        s = _vset1(_ld(hp, h2 + k))
        a20 = _vfma(s, w0, a20)
        a21 = _vfma(s, w1, a21)
        a22 = _vfma(s, w2, a22)
        a23 = _vfma(s, w3, a23)
        s = _vset1(_ld(hp, h3 + k))
        a30 = _vfma(s, w0, a30)
        a31 = _vfma(s, w1, a31)
        a32 = _vfma(s, w2, a32)
        a33 = _vfma(s, w3, a33)
        s = _vset1(_ld(hp, h4 + k))
        a40 = _vfma(s, w0, a40)
        a41 = _vfma(s, w1, a41)
        a42 = _vfma(s, w2, a42)
        a43 = _vfma(s, w3, a43)
        s = _vset1(_ld(hp, h5 + k))
        a50 = _vfma(s, w0, a50)
        a51 = _vfma(s, w1, a51)
        a52 = _vfma(s, w2, a52)
        a53 = _vfma(s, w3, a53)
    _add_gates(gates, gi + 0 * G, H, nv, a00, a01, a02, a03)
    if mr > 1:
        _add_gates(gates, gi + 1 * G, H, nv, a10, a11, a12, a13)
    if mr > 2:
        _add_gates(gates, gi + 2 * G, H, nv, a20, a21, a22, a23)
    if mr > 3:
        _add_gates(gates, gi + 3 * G, H, nv, a30, a31, a32, a33)
    if mr > 4:
        _add_gates(gates, gi + 4 * G, H, nv, a40, a41, a42, a43)
    if mr > 5:
        _add_gates(gates, gi + 5 * G, H, nv, a50, a51, a52, a53)


@njit(**_JIT)
def _fwd_dot1(K, hp, hi, w, wi, nb, gates, gi, H, off):
    """One row (B = 1 or a tail row): gates[g*H + off + q*W:] += h . w_hh^T for nb <= 4 blocks of
    W units from block offset wi (blocks K*4*W apart) and unit offset off. Blocks past nb
    re-read block nb - 1 and are dropped."""
    W = _width(gates)
    bs = K * 4 * W
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    z = _vzero(gates)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for k in range(K):
        s = _vset1(_ld(hp, hi + k))
        o = k * 4 * W
        a00 = _vfma(s, _vload(w, q0 + o + 0 * W), a00)
        a01 = _vfma(s, _vload(w, q0 + o + 1 * W), a01)
        a02 = _vfma(s, _vload(w, q0 + o + 2 * W), a02)
        a03 = _vfma(s, _vload(w, q0 + o + 3 * W), a03)
        a10 = _vfma(s, _vload(w, q1 + o + 0 * W), a10)
        a11 = _vfma(s, _vload(w, q1 + o + 1 * W), a11)
        a12 = _vfma(s, _vload(w, q1 + o + 2 * W), a12)
        a13 = _vfma(s, _vload(w, q1 + o + 3 * W), a13)
        a20 = _vfma(s, _vload(w, q2 + o + 0 * W), a20)
        a21 = _vfma(s, _vload(w, q2 + o + 1 * W), a21)
        a22 = _vfma(s, _vload(w, q2 + o + 2 * W), a22)
        a23 = _vfma(s, _vload(w, q2 + o + 3 * W), a23)
        a30 = _vfma(s, _vload(w, q3 + o + 0 * W), a30)
        a31 = _vfma(s, _vload(w, q3 + o + 1 * W), a31)
        a32 = _vfma(s, _vload(w, q3 + o + 2 * W), a32)
        a33 = _vfma(s, _vload(w, q3 + o + 3 * W), a33)
    _add_gates(gates, gi + off + 0 * W, H, min(W, H - off - 0 * W), a00, a01, a02, a03)
    if nb > 1:
        _add_gates(gates, gi + off + 1 * W, H, min(W, H - off - 1 * W), a10, a11, a12, a13)
    if nb > 2:
        _add_gates(gates, gi + off + 2 * W, H, min(W, H - off - 2 * W), a20, a21, a22, a23)
    if nb > 3:
        _add_gates(gates, gi + off + 3 * W, H, min(W, H - off - 3 * W), a30, a31, a32, a33)


@njit(**_JIT)
def _bwd_dot(G, dg, di, w, wi, mr, nb, out, oi, ldo, R, off, dy, dyi):
    """out[rows, off + q*W:] = dg[rows] . w_hh (+ dy) for up to 4 rows x 4 blocks of W columns of
    h (width R): dg rows at dg.flat[di + r*G], w_hh blocks [k][W] at w.flat[wi + q*G*W:], out rows
    at out.flat[oi + r*ldo], dy (None or same layout as out) at dy.flat[dyi + r*ldo]. Rows past
    mr and blocks past nb re-read the last one and are dropped."""
    W = _width(out)
    bs = G * W
    d0 = di + min(0, mr - 1) * G
    d1 = di + min(1, mr - 1) * G
    d2 = di + min(2, mr - 1) * G
    d3 = di + min(3, mr - 1) * G
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    z = _vzero(out)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for k in range(G):
        o = k * W
        w0 = _vload(w, q0 + o)
        w1 = _vload(w, q1 + o)
        w2 = _vload(w, q2 + o)
        w3 = _vload(w, q3 + o)
        s = _vset1(_ld(dg, d0 + k))
        a00 = _vfma(s, w0, a00)
        a01 = _vfma(s, w1, a01)
        a02 = _vfma(s, w2, a02)
        a03 = _vfma(s, w3, a03)
        s = _vset1(_ld(dg, d1 + k))
        a10 = _vfma(s, w0, a10)
        a11 = _vfma(s, w1, a11)
        a12 = _vfma(s, w2, a12)
        a13 = _vfma(s, w3, a13)
        s = _vset1(_ld(dg, d2 + k))
        a20 = _vfma(s, w0, a20)
        a21 = _vfma(s, w1, a21)
        a22 = _vfma(s, w2, a22)
        a23 = _vfma(s, w3, a23)
        s = _vset1(_ld(dg, d3 + k))
        a30 = _vfma(s, w0, a30)
        a31 = _vfma(s, w1, a31)
        a32 = _vfma(s, w2, a32)
        a33 = _vfma(s, w3, a33)
    _store_dh(out, oi + 0 * ldo, off + 0 * W, R, a00, dy, dyi + 0 * ldo)
    if nb > 1:
        _store_dh(out, oi + 0 * ldo, off + 1 * W, R, a01, dy, dyi + 0 * ldo)
    if nb > 2:
        _store_dh(out, oi + 0 * ldo, off + 2 * W, R, a02, dy, dyi + 0 * ldo)
    if nb > 3:
        _store_dh(out, oi + 0 * ldo, off + 3 * W, R, a03, dy, dyi + 0 * ldo)
    if mr > 1:
        _store_dh(out, oi + 1 * ldo, off + 0 * W, R, a10, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 1:
        _store_dh(out, oi + 1 * ldo, off + 1 * W, R, a11, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 2:
        _store_dh(out, oi + 1 * ldo, off + 2 * W, R, a12, dy, dyi + 1 * ldo)
    if mr > 1 and nb > 3:
        _store_dh(out, oi + 1 * ldo, off + 3 * W, R, a13, dy, dyi + 1 * ldo)
    if mr > 2:
        _store_dh(out, oi + 2 * ldo, off + 0 * W, R, a20, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 1:
        _store_dh(out, oi + 2 * ldo, off + 1 * W, R, a21, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 2:
        _store_dh(out, oi + 2 * ldo, off + 2 * W, R, a22, dy, dyi + 2 * ldo)
    if mr > 2 and nb > 3:
        _store_dh(out, oi + 2 * ldo, off + 3 * W, R, a23, dy, dyi + 2 * ldo)
    if mr > 3:
        _store_dh(out, oi + 3 * ldo, off + 0 * W, R, a30, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 1:
        _store_dh(out, oi + 3 * ldo, off + 1 * W, R, a31, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 2:
        _store_dh(out, oi + 3 * ldo, off + 2 * W, R, a32, dy, dyi + 3 * ldo)
    if mr > 3 and nb > 3:
        _store_dh(out, oi + 3 * ldo, off + 3 * W, R, a33, dy, dyi + 3 * ldo)


@njit(**_JIT)
def _gemm_ukr1(kc, a, ai, sk, bp, bi, ps, npan, c, ci, nn, first, bias, bo):
    """One-row GEMM tile over up to 4 panels (8 vectors): A(0, k) = a.flat[ai + k*sk], panel q
    of B at bp.flat[bi + q*ps:] ([k][NR]), C at c.flat[ci + q*NR:], nn columns left from the first
    panel. Panels past npan re-read the last one and are dropped. Each element gets the same
    FMA chain as in the 8-row tile (a single row, e.g. B = 1 streaming, pays for one row)."""
    W = _width(c)
    NR = 2 * W
    b0 = bi + min(0, npan - 1) * ps
    b1 = bi + min(1, npan - 1) * ps
    b2 = bi + min(2, npan - 1) * ps
    b3 = bi + min(3, npan - 1) * ps
    z = _vzero(c)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for k in range(kc):
        s = _vset1(_ld(a, ai + k * sk))
        o = k * NR
        c00 = _vfma(s, _vload(bp, b0 + o), c00)
        c01 = _vfma(s, _vload(bp, b0 + o + W), c01)
        c10 = _vfma(s, _vload(bp, b1 + o), c10)
        c11 = _vfma(s, _vload(bp, b1 + o + W), c11)
        c20 = _vfma(s, _vload(bp, b2 + o), c20)
        c21 = _vfma(s, _vload(bp, b2 + o + W), c21)
        c30 = _vfma(s, _vload(bp, b3 + o), c30)
        c31 = _vfma(s, _vload(bp, b3 + o + W), c31)
    _ukr_store(c, ci + 0 * NR, c00, c01, nn - 0 * NR, first, bias, bo + 0 * NR)
    if npan > 1:
        _ukr_store(c, ci + 1 * NR, c10, c11, nn - 1 * NR, first, bias, bo + 1 * NR)
    if npan > 2:
        _ukr_store(c, ci + 2 * NR, c20, c21, nn - 2 * NR, first, bias, bo + 2 * NR)
    if npan > 3:
        _ukr_store(c, ci + 3 * NR, c30, c31, nn - 3 * NR, first, bias, bo + 3 * NR)


@njit(**_JIT)
def _bwd_dot1(G, dg, di, w, wi, nb, out, oi, R, off, dy, dyi):
    """One row of ``_bwd_dot`` over up to 8 blocks (8 accumulators; the 4 x 4 tile would
    compute 3 dropped rows for B = 1). Blocks past nb re-read the last one and are dropped."""
    W = _width(out)
    bs = G * W
    q0 = wi + min(0, nb - 1) * bs
    q1 = wi + min(1, nb - 1) * bs
    q2 = wi + min(2, nb - 1) * bs
    q3 = wi + min(3, nb - 1) * bs
    q4 = wi + min(4, nb - 1) * bs
    q5 = wi + min(5, nb - 1) * bs
    q6 = wi + min(6, nb - 1) * bs
    q7 = wi + min(7, nb - 1) * bs
    z = _vzero(out)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    for k in range(G):
        s = _vset1(_ld(dg, di + k))
        o = k * W
        a0 = _vfma(s, _vload(w, q0 + o), a0)
        a1 = _vfma(s, _vload(w, q1 + o), a1)
        a2 = _vfma(s, _vload(w, q2 + o), a2)
        a3 = _vfma(s, _vload(w, q3 + o), a3)
        a4 = _vfma(s, _vload(w, q4 + o), a4)
        a5 = _vfma(s, _vload(w, q5 + o), a5)
        a6 = _vfma(s, _vload(w, q6 + o), a6)
        a7 = _vfma(s, _vload(w, q7 + o), a7)
    _store_dh(out, oi, off + 0 * W, R, a0, dy, dyi)
    if nb > 1:
        _store_dh(out, oi, off + 1 * W, R, a1, dy, dyi)
    if nb > 2:
        _store_dh(out, oi, off + 2 * W, R, a2, dy, dyi)
    if nb > 3:
        _store_dh(out, oi, off + 3 * W, R, a3, dy, dyi)
    if nb > 4:
        _store_dh(out, oi, off + 4 * W, R, a4, dy, dyi)
    if nb > 5:
        _store_dh(out, oi, off + 5 * W, R, a5, dy, dyi)
    if nb > 6:
        _store_dh(out, oi, off + 6 * W, R, a6, dy, dyi)
    if nb > 7:
        _store_dh(out, oi, off + 7 * W, R, a7, dy, dyi)


# --- GEMM ----------------------------------------------------------------------------

_MR = 8       # rows of the GEMM register tile (columns: NR = 2 vectors)
_KC = 256     # k block: the B sliver KC x NR (32 KiB) stays in L1
_MCT = 12     # row tiles per A block (96 rows x KC: ~96 KiB f32, in L2)
_PAR_MIN = 1 << 18   # multiply-adds below which a product or step stays on one thread (~20 us)


@intrinsic
def _nl(typingctx, x):
    """x as a plain (non-literal) intp. Numba compiles a callee once more for every literal
    argument (``f(..., 0)`` and ``f(..., j0)`` are two specialisations, each with the tiles
    inlined; an njit identity keeps the literal type): constants handed to the kernels, and
    prange's unsigned index, go through this."""
    def cg(context, builder, sig, args):
        return context.cast(builder, args[0], sig.args[0], types.intp)
    return types.intp(x), cg


@njit(**_JIT)
def _split(n, q, nth):
    """Start of part q of n items cut into nth contiguous parts."""
    return n * q // nth


@njit(**_JIT)
def _gemm_part(M, N, K, a, sr, sk, bp, c, bias, p0, p1, mt0, mt1):
    """C = A.B (+ bias[n]) for row tiles mt0..mt1 (of _MR rows) and column panels p0..p1.

    A(m, k) = a.flat[m*sr + k*sk] (row-major: sr = lda, sk = 1; transposed: sr = 1, sk = lda);
    B packed panels bp [ceil(N/NR)][K][NR]; C = c (M, N) C-contiguous; bias (N,) or None.
    Each element of C: the k-ordered FMA chain of each KC block, blocks added in k order.
    """
    W = _width(c)
    NR = 2 * W
    ldc = c.shape[1]
    if K == 0:
        for m in range(mt0 * _MR, min(M, mt1 * _MR)):
            for n in range(p0 * NR, min(N, p1 * NR)):
                c[m, n] = 0 if bias is None else bias[n]
        return
    ap, bpp, cp = _ptr(a), _ptr(bp), _ptr(c)
    if M == 1:   # one row (B = 1): 1 x 4-panel tiles
        for kb in range(0, K, _KC):
            kc = min(_KC, K - kb)
            for p in range(p0, p1, 4):
                npn = min(4, p1 - p)
                if bias is None:
                    _gemm_ukr1(kc, ap, kb * sk, sk, bpp, (p * K + kb) * NR, K * NR, npn, cp, p * NR, N - p * NR,
                               kb == 0, None, p * NR)
                else:
                    _gemm_ukr1(kc, ap, kb * sk, sk, bpp, (p * K + kb) * NR, K * NR, npn, cp, p * NR, N - p * NR,
                               kb == 0, _ptr(bias), p * NR)
        return
    for kb in range(0, K, _KC):
        kc = min(_KC, K - kb)
        for mb in range(mt0, mt1, _MCT):
            me = min(mb + _MCT, mt1)
            for p in range(p0, p1):
                bi = (p * K + kb) * NR
                nn = min(NR, N - p * NR)
                for mt in range(mb, me):
                    m0 = mt * _MR
                    ai = m0 * sr + kb * sk
                    ci = m0 * ldc + p * NR
                    mr = min(_MR, M - m0)
                    # one tile per A layout, unit stride literal (transposed A, the dW products:
                    # 120 -> 240 GFLOP/s f32 against a generic-stride tile)
                    if sk == 1:
                        if bias is None:
                            _gemm_ukr_n(kc, ap, ai, sr, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, None, p * NR)
                        else:
                            _gemm_ukr_n(kc, ap, ai, sr, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, _ptr(bias), p * NR)
                    elif bias is None:
                        _gemm_ukr_t(kc, ap, ai, sk, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, None, p * NR)
                    else:
                        _gemm_ukr_t(kc, ap, ai, sk, bpp, bi, cp, ci, ldc, mr, nn, kb == 0, _ptr(bias), p * NR)


@njit(**_JIT)
def _gemm_share(M, N, K, a, a_trans, bp, c, bias, q, nth):
    """Part q of nth of ``_gemm``: output panels (or row tiles, whichever are more) split."""
    NR = 2 * _width(c)
    ld = a.shape[1]
    sr, sk = (1, ld) if a_trans else (ld, 1)
    mtiles = (M + _MR - 1) // _MR
    npan = (N + NR - 1) // NR
    if npan >= mtiles:
        _gemm_part(M, N, K, a, sr, sk, bp, c, bias, _split(npan, q, nth), _split(npan, q + 1, nth),
                   _nl(0), mtiles)
    else:
        _gemm_part(M, N, K, a, sr, sk, bp, c, bias, _nl(0), npan, _split(mtiles, q, nth),
                   _split(mtiles, q + 1, nth))


@njit(**_PJIT)
def _gemm_par(M, N, K, a, a_trans, bp, c, bias, nth):
    for q in prange(nth):
        _gemm_share(M, N, K, a, a_trans, bp, c, bias, _nl(q), nth)


@njit(**_JIT)
def _gemm(M, N, K, a, a_trans, bp, c, bias, nth):
    """c[:M, :N] = op(a) @ B (+ bias): op(a) = a (M, K) or a^T (a (K, M)); B panels bp; nth threads."""
    if M == 0 or N == 0:
        return
    if nth > 1 and M * N * K >= _PAR_MIN:
        _gemm_par(M, N, K, a, a_trans, bp, c, bias, nth)
    else:
        _gemm_share(M, N, K, a, a_trans, bp, c, bias, _nl(0), _nl(1))


@njit(**_JIT)
def _pack_rows(src, r0, nrows, dst, k0):
    """Rows r0.. of src (., Nc) into packed panels dst [ceil(Nc/NR)][K][NR] at rows k0.. (zero padded)."""
    NR = dst.shape[2]
    Nc = src.shape[1]
    for p in range(dst.shape[0]):
        n0 = p * NR
        nn = min(NR, Nc - n0)
        for r in range(nrows):
            s = src[r0 + r]
            d = dst[p, k0 + r]
            for l in range(nn):
                d[l] = s[n0 + l]
            for l in range(nn, NR):
                d[l] = 0


def _panels(w, NR):
    """Packed B panels [ceil(N/NR)][K][NR] of the K x N matrix w (NumPy, at pack time)."""
    K, N = w.shape
    npan = (N + NR - 1) // NR
    pad = np.zeros((K, npan * NR), w.dtype)
    pad[:, :N] = w
    return np.ascontiguousarray(pad.reshape(K, npan, NR).transpose(1, 0, 2))


# --- forward -------------------------------------------------------------------------


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
def _fwd_cell(gates_t, cp, c_t, h_t, r0, mr, H, u0, nu):
    """Elementwise update of rows r0..r0+mr, units u0..u0+nu, one vector at a time: activate
    the pre-activations in gates_t in place, c_t = f*c_prev + i*g, h_t = o*tanh(c_t)."""
    W = _width(gates_t)
    G = 4 * H
    for r in range(r0, r0 + mr):
        for u in range(u0, u0 + nu, W):
            k = min(W, u0 + nu - u)
            gi = r * G + u
            i = _vsigmoid(_vload_n(gates_t, gi, k))
            f = _vsigmoid(_vload_n(gates_t, gi + H, k))
            g = _vtanh(_vload_n(gates_t, gi + 2 * H, k))
            o = _vsigmoid(_vload_n(gates_t, gi + 3 * H, k))
            _vstore_n(gates_t, gi, i, k)
            _vstore_n(gates_t, gi + H, f, k)
            _vstore_n(gates_t, gi + 2 * H, g, k)
            _vstore_n(gates_t, gi + 3 * H, o, k)
            ci = r * H + u
            cv = f * _vload_n(cp, ci, k) + i * g
            _vstore_n(c_t, ci, cv, k)
            _vstore_n(h_t, ci, o * _vtanh(cv), k)


_FR = 6   # rows of the forward step tile (x 4 gates: 24 accumulators)


@njit(**_JIT)
def _fwd_blocks(n, H, R, w, hp, cp, gates_t, c_t, h_t, j0, j1, rev):
    """One step for rows 0..n, hidden blocks j0..j1 (W units each): h_prev hp (n, R), c_prev cp,
    gates_t (n, 4H) holding the input projection, c_t, h_t (n, H) written. ``rev`` sweeps the
    blocks last to first (odd steps: the next step starts on the w_hh lines last used, as the
    C kernel); blocks are independent, so the values do not change."""
    W = _width(gates_t)
    G = 4 * H
    bs = R * 4 * W
    hp, w, cp, gates_t, c_t, h_t = _ptr(hp), _ptr(w), _ptr(cp), _ptr(gates_t), _ptr(c_t), _ptr(h_t)
    if n == 1:   # one row: 1 x 4-block tiles (16 accumulators)
        for j in range(j0, j1, 4):
            nb = min(4, j1 - j)
            off = j * W
            _fwd_dot1(R, hp, 0, w, j * bs, nb, gates_t, 0, H, off)
            _fwd_cell(gates_t, cp, c_t, h_t, _nl(0), _nl(1), H, off, min(nb * W, H - off))
        return
    nblk = j1 - j0
    for it in range(nblk):
        j = j0 + (nblk - 1 - it if rev else it)
        off = j * W
        nv = min(W, H - off)
        for r0 in range(0, n, _FR):
            mr = min(_FR, n - r0)
            _fwd_dot(R, hp, r0 * R, w, j * bs, gates_t, r0 * G + off, G, H, mr, nv)
            _fwd_cell(gates_t, cp, c_t, h_t, r0, mr, H, off, nv)


@njit(**_PJIT)
def _fwd_step_par(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, nth):
    nblk = (H + _width(gates_t) - 1) // _width(gates_t)
    for q in prange(nth):
        _fwd_blocks(n, H, R, w, hp, cp, gates_t, c_t, h_t, _split(nblk, _nl(q), nth), _split(nblk, _nl(q) + 1, nth), rev)


@njit(**_JIT)
def _fwd_step(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, nth):
    """Step t on nth threads (hidden blocks split) if it is worth a parallel region."""
    if nth > 1 and n * 4 * H * R >= _PAR_MIN:
        _fwd_step_par(n, H, R, w, hp, cp, gates_t, c_t, h_t, rev, nth)
    else:
        _fwd_blocks(n, H, R, w, hp, cp, gates_t, c_t, h_t, _nl(0), (H + _width(gates_t) - 1) // _width(gates_t), rev)


@njit(**_JIT)
def _rsplit(n, q, nth):
    """Start of part q of n batch rows cut into nth contiguous parts of whole 4-row tiles."""
    return n if q >= nth else min(n, (n * q // nth + 3) // 4 * 4)


_ROWS_PER_THREAD = 8   # below this many sequences per thread the steps split hidden blocks instead


@njit(**_JIT)
def _fwd_seq(x, wih_t, b, inproj, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, r0, r1, nth):
    """The time loop for sequences r0..r1 (rows r0.. of every step). Sequences are
    independent, so a thread can run its own range through all steps without waiting for
    the others; ``nth`` > 1 instead splits each step's hidden blocks (small batches). With
    ``inproj`` each step first computes its rows of the input projection (same bits as the
    whole GEMM: row tiles never change an element's operations), so that a thread's whole
    forward is one parallel region."""
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    I = x.shape[1]
    off = 0
    prev = 0
    for t in range(batch_sizes.shape[0]):
        nt = batch_sizes[t]
        n = min(nt, r1) - r0
        if n <= 0:
            break
        # the n active sequences were all active at t - 1 (non-increasing sizes)
        a = off + r0
        p = prev + r0
        hp = h0[r0:r0 + n] if t == 0 else y[p:p + n]
        cp = c0[r0:r0 + n] if t == 0 else c[p:p + n]
        if inproj:
            _gemm(n, G, I, x[a:a + n], False, wih_t, gates[a:a + n], b, _nl(1))
        if whr_t is None:
            _fwd_step(n, H, R, whh_f, hp, cp, gates[a:a + n], c[a:a + n], y[a:a + n], t & 1, nth)
        else:
            _fwd_step(n, H, R, whh_f, hp, cp, gates[a:a + n], c[a:a + n], m[r0:r0 + n], t & 1, nth)
            _gemm(n, R, H, m[r0:r0 + n], False, whr_t, y[a:a + n], None, nth)
        prev = off
        off += nt


@njit(**_PJIT)
def _fwd_seq_par(x, wih_t, b, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, n0, nth):
    for q in prange(nth):
        r0 = _rsplit(n0, _nl(q), nth)
        r1 = _rsplit(n0, _nl(q) + 1, nth)
        if r1 > r0:
            _fwd_seq(x, wih_t, b, True, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, r0, r1, _nl(1))


@njit(**_JIT)
def lstm_forward(x, wih_t, whh_f, b, whr_t, h0, c0, batch_sizes, y, h_n, c_n, gates, c, m, nth):
    """Forward pass into caller-provided outputs, packed layout (see module docstring).

    x (N, I), y (N, R), gates (N, 4H), c (N, H) with N = sum(batch_sizes); step t's rows
    start at sum(batch_sizes[:t]) and only its first batch_sizes[t] sequences advance.
    Weights as ``pack`` makes them: ``wih_t`` panels, ``whh_f``, ``b`` (4H,), ``whr_t``
    panels or None; ``m`` (B, H) workspace with a projection, else None. ``nth`` threads:
    with >= 8 sequences per thread each thread runs its sequences through all steps, input
    projection included (one parallel region per pass: on a shared machine every region can
    wait a scheduler tick for the second thread); else the input projection splits output
    tiles and each step its hidden blocks.
    """
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    _check_steps(batch_sizes, N, B)
    n0 = batch_sizes[0] if T > 0 else 0
    if nth > 1 and n0 >= _ROWS_PER_THREAD * nth:   # one parallel region for the whole pass
        _fwd_seq_par(x, wih_t, b, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, n0, nth)
    else:
        _gemm(N, G, I, x, False, wih_t, gates, b, nth)   # hoisted input projection + bias
        _fwd_seq(x, wih_t, b, False, whh_f, whr_t, h0, c0, batch_sizes, y, gates, c, m, _nl(0), n0, nth)
    # final states: sequence r's last step is the last t with batch_sizes[t] > r
    h_n[n0:] = h0[n0:]
    c_n[n0:] = c0[n0:]
    off = 0
    for t in range(T):
        n = batch_sizes[t]
        nn = batch_sizes[t + 1] if t + 1 < T else 0
        h_n[nn:n] = y[off + nn:off + n]
        c_n[nn:n] = c[off + nn:off + n]
        off += n


# --- backward ------------------------------------------------------------------------


@njit(**_JIT)
def _bwd_cell_p(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu):
    """Gate gradients of rows 0..n, units u0..u0+nu, of one step, one vector at a time. ``dm``
    (., H) is the gradient reaching m_t = o*tanh(c_t) (dh without a projection, dy included).
    Writes dg_t, turns ``dc`` into the gradient reaching c_{t-1}, and stores m_t into
    ``m_out`` unless None."""
    W = _width(dm)
    G = 4 * H
    for r in range(n):
        for u in range(u0, u0 + nu, W):
            k = min(W, u0 + nu - u)
            gi = r * G + u
            ci = r * H + u
            i = _vload_n(gates_t, gi, k)
            f = _vload_n(gates_t, gi + H, k)
            g = _vload_n(gates_t, gi + 2 * H, k)
            o = _vload_n(gates_t, gi + 3 * H, k)
            tc = _vtanh(_vload_n(c_t, ci, k))
            d = _vload_n(dm, ci, k)
            dcv = _vload_n(dc, ci, k) + d * o * (1.0 - tc * tc)
            _vstore_n(dg_t, gi + 3 * H, d * tc * o * (1.0 - o), k)
            if m_out is not None:
                _vstore_n(m_out, ci, o * tc, k)
            _vstore_n(dg_t, gi, dcv * g * i * (1.0 - i), k)
            _vstore_n(dg_t, gi + H, dcv * _vload_n(cprev, ci, k) * f * (1.0 - f), k)
            _vstore_n(dg_t, gi + 2 * H, dcv * i * (1.0 - g * g), k)
            _vstore_n(dc, ci, dcv * f, k)


@njit(**_JIT)
def _bwd_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, nu):
    """``_bwd_cell_p`` on arrays."""
    if m_out is None:
        _bwd_cell_p(n, H, _ptr(dm), _ptr(gates_t), _ptr(c_t), _ptr(cprev), _ptr(dc), _ptr(dg_t), None, u0, nu)
    else:
        _bwd_cell_p(n, H, _ptr(dm), _ptr(gates_t), _ptr(c_t), _ptr(cprev), _ptr(dc), _ptr(dg_t), _ptr(m_out),
                    u0, nu)


@njit(**_JIT)
def _bwd_dh_p(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, q0, q1):
    """dh of rows 0..n, column blocks q0..q1 (W wide) of h (width R), into out (., R): rows
    below nn (active at t+1) get dg_next . w_hh, rows nn..n (last step t) dh_n; plus dy_t
    unless None. Pointers (row strides 4H for dg_next, R for the others)."""
    W = _width(out)
    jstep = 8 if nn == 1 else 4
    for j in range(q0, q1, jstep):
        nb = min(jstep, q1 - j)
        if nn == 1:
            _bwd_dot1(G, dg_next, _nl(0), whh_b, j * G * W, nb, out, _nl(0), R, j * W, dy_t, _nl(0))
        for r0 in range(0, nn if nn > 1 else 0, 4):
            _bwd_dot(G, dg_next, r0 * G, whh_b, j * G * W, min(4, nn - r0), nb, out, r0 * R, R, R, j * W,
                     dy_t, r0 * R)
        u1 = min(R, (j + nb) * W)
        for r in range(nn, n):
            for u in range(j * W, u1):
                if dy_t is None:
                    _st(out, r * R + u, _ld(dh_n, r * R + u))
                else:
                    _st(out, r * R + u, _ld(dh_n, r * R + u) + _ld(dy_t, r * R + u))


@njit(**_JIT)
def _bwd_dh(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, q0, q1):
    """``_bwd_dh_p`` on arrays."""
    if dy_t is None:
        _bwd_dh_p(G, _ptr(dg_next), nn, n, _ptr(whh_b), _ptr(dh_n), None, _ptr(out), R, q0, q1)
    else:
        _bwd_dh_p(G, _ptr(dg_next), nn, n, _ptr(whh_b), _ptr(dh_n), _ptr(dy_t), _ptr(out), R, q0, q1)


@njit(**_PJIT)
def _bwd_dh_par(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, nth):
    nblk = (R + _width(out) - 1) // _width(out)
    for q in prange(nth):
        _bwd_dh(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, _split(nblk, _nl(q), nth), _split(nblk, _nl(q) + 1, nth))


@njit(**_JIT)
def _bwd_dh_step(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, nth):
    if nth > 1:
        _bwd_dh_par(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, nth)
    else:
        _bwd_dh(G, dg_next, nn, n, whh_b, dh_n, dy_t, out, R, _nl(0), (R + _width(out) - 1) // _width(out))


@njit(**_JIT)
def _bwd_blocks(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t, j0, j1):
    """One backward step without a projection, hidden blocks j0..j1, fused per 4 blocks: the dh
    tile (dg_next . w_hh + dy) into dhs, then the gate gradients of the same units."""
    W = _width(dhs)
    dg_next, whh_b, dh_n, dy_t, dhs = _ptr(dg_next), _ptr(whh_b), _ptr(dh_n), _ptr(dy_t), _ptr(dhs)
    gates_t, c_t, cprev, dc, dg_t = _ptr(gates_t), _ptr(c_t), _ptr(cprev), _ptr(dc), _ptr(dg_t)
    for j in range(j0, j1, 4):
        j2 = min(j + 4, j1)
        _bwd_dh_p(G, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, H, j, j2)
        _bwd_cell_p(n, H, dhs, gates_t, c_t, cprev, dc, dg_t, None, j * W, min(H, j2 * W) - j * W)


@njit(**_PJIT)
def _bwd_step_par(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t, nth):
    nblk = (H + _width(dhs) - 1) // _width(dhs)
    for q in prange(nth):
        _bwd_blocks(G, H, dg_next, nn, n, whh_b, dh_n, dy_t, dhs, gates_t, c_t, cprev, dc, dg_t,
                    _split(nblk, _nl(q), nth), _split(nblk, _nl(q) + 1, nth))


@njit(**_PJIT)
def _bwd_cell_par(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, nth):
    W = _width(dm)
    nblk = (H + W - 1) // W
    for q in prange(nth):
        u0 = _split(nblk, _nl(q), nth) * W
        u1 = min(H, _split(nblk, _nl(q) + 1, nth) * W)
        if u1 > u0:
            _bwd_cell(n, H, dm, gates_t, c_t, cprev, dc, dg_t, m_out, u0, u1 - u0)


@njit(**_JIT)
def _bwd_seq(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
             dc0, r0, r1, nth):
    """The backward time loop for sequences r0..r1 (see ``_fwd_seq``); ``dc0`` rows hold the
    running dc."""
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    N = dgates.shape[0]
    off = N
    for t in range(T - 1, -1, -1):
        nt = batch_sizes[t]
        off -= nt
        n = min(nt, r1) - r0
        if n <= 0:
            continue
        nn = max(0, min(batch_sizes[t + 1], r1) - r0) if t + 1 < T else 0
        a = off + r0
        p = off - batch_sizes[t - 1] + r0 if t > 0 else 0
        cprev = c0[r0:r0 + n] if t == 0 else c[p:p + n]
        dg_next = dgates[off + nt + r0:off + nt + r0 + nn]
        g_t = gates[a:a + n]
        c_t = c[a:a + n]
        dg_t = dgates[a:a + n]
        dy_t = dy[a:a + n]
        dhn = dh_n[r0:r0 + n]
        dc = dc0[r0:r0 + n]
        par = nth > 1 and n * G * R >= _PAR_MIN
        if whr is None:
            if par:
                _bwd_step_par(G, H, dg_next, nn, n, whh_b, dhn, dy_t, dhs[r0:r0 + n], g_t, c_t, cprev, dc,
                              dg_t, nth)
            else:
                _bwd_blocks(G, H, dg_next, nn, n, whh_b, dhn, dy_t, dhs[r0:r0 + n], g_t, c_t, cprev, dc, dg_t,
                            _nl(0), (H + _width(dhs) - 1) // _width(dhs))
        else:
            dha = dh_all[a:a + n]
            _bwd_dh_step(G, dg_next, nn, n, whh_b, dhn, dy_t, dha, R, nth if par else 1)
            _gemm(n, H, R, dha, False, whr, dm[r0:r0 + n], None, nth)
            if par:
                _bwd_cell_par(n, H, dm[r0:r0 + n], g_t, c_t, cprev, dc, dg_t, m_all[a:a + n], nth)
            else:
                _bwd_cell(n, H, dm[r0:r0 + n], g_t, c_t, cprev, dc, dg_t, m_all[a:a + n], _nl(0), H)


@njit(**_PJIT)
def _bwd_seq_par(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                 dc0, dh0, n0, nth):
    for q in prange(nth):
        r0 = _rsplit(n0, _nl(q), nth)
        r1 = _rsplit(n0, _nl(q) + 1, nth)
        if r1 > r0:
            _bwd_seq(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                     dc0, r0, r1, _nl(1))
            # dh0 of these sequences (all active at t = 0): dgates[0] . w_hh
            _bwd_dh(4 * c0.shape[1], dgates[r0:r1], r1 - r0, r1 - r0, whh_b, dh_n[r0:r1], None, dh0[r0:r1],
                    h0.shape[1], _nl(0), (h0.shape[1] + _width(dh0) - 1) // _width(dh0))


@njit(**_JIT)
def _bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, q, nth):
    """Part q of nth of the whole-sequence products: dx = dgates.w_ih, dw_ih = dgates^T.x,
    dw_hh = dgates^T.h_prev, with a projection dw_hr = dh_all^T.m_all."""
    N, G = dgates.shape
    I = dx.shape[1]
    R = dw_hh.shape[1]
    _gemm_share(N, I, G, dgates, False, wih, dx, None, q, nth)
    _gemm_share(G, I, N, dgates, True, xpan, dw_ih, None, q, nth)
    _gemm_share(G, R, N, dgates, True, hpan, dw_hh, None, q, nth)
    if dw_hr is not None:
        _gemm_share(R, dw_hr.shape[1], N, dh_all, True, mpan, dw_hr, None, q, nth)


@njit(**_PJIT)
def _bwd_gemms_par(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, nth):
    for q in prange(nth):
        _bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, _nl(q), nth)


@njit(**_JIT)
def lstm_backward(x, wih, whh_b, whr, h0, c0, y, gates, c, dy, dh_n, dc_n, batch_sizes,
                  dgates, dhs, xpan, hpan, dm, dh_all, m_all, mpan,
                  dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, nth):
    """Backpropagation through time into caller-provided outputs, packed layout.

    Weights as ``pack`` makes them (``wih``, ``whh_b`` and ``whr`` or None). Workspace:
    ``dgates`` (N, 4H), ``dhs`` (B, H) the dh of a step, ``xpan``/``hpan`` panels
    [ceil(I/NR)][N][NR] / [ceil(R/NR)][N][NR] for x and the h_{t-1} rows; with a
    projection ``dm`` (B, H), ``dh_all`` (N, R), ``m_all`` (N, H), ``mpan``
    [ceil(H/NR)][N][NR] and output ``dw_hr`` (R, H), all None without. ``dc0`` doubles
    as the running dc (rows of inactive sequences pass through). ``nth`` threads, split
    as in ``lstm_forward``; the whole-sequence GEMMs split output tiles.
    """
    N, I = x.shape
    B, R = h0.shape
    H = c0.shape[1]
    G = 4 * H
    T = batch_sizes.shape[0]
    _check_steps(batch_sizes, N, B)
    dc0[:] = dc_n
    n0 = batch_sizes[0] if T > 0 else 0
    if nth > 1 and n0 >= _ROWS_PER_THREAD * nth:   # one parallel region for the time loop and dh0
        _bwd_seq_par(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                     dc0, dh0, n0, nth)
        dh0[n0:] = dh_n[n0:]
    else:
        _bwd_seq(whh_b, whr, h0, c0, gates, c, dy, dh_n, batch_sizes, dgates, dhs, dm, dh_all, m_all,
                 dc0, _nl(0), n0, nth)
        _bwd_dh_step(G, dgates[:n0], n0, B, whh_b, dh_n, None, dh0, R, nth if B * G * R >= _PAR_MIN else 1)
    # whole-sequence products over all N rows, after the loop
    _pack_rows(x, _nl(0), N, xpan, _nl(0))
    _pack_rows(h0, _nl(0), n0, hpan, _nl(0))            # h_{t-1} of row k: h0 at t = 0, else y of step t-1
    off = n0
    prev = 0
    for t in range(1, T):
        n = batch_sizes[t]
        _pack_rows(y, prev, n, hpan, off)
        prev = off
        off += n
    if whr is not None:
        _pack_rows(m_all, _nl(0), N, mpan, _nl(0))
    if nth > 1 and N * G * (I + R) >= _PAR_MIN:   # dx, dw_ih, dw_hh (dw_hr) in one parallel region
        _bwd_gemms_par(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, nth)
    else:
        _bwd_gemms(dgates, wih, dx, xpan, dw_ih, hpan, dw_hh, dh_all, mpan, dw_hr, _nl(0), _nl(1))
    db[:] = 0
    for r in range(N):
        dr = dgates[r]
        for j in range(G):
            db[j] += dr[j]


# --- threads -------------------------------------------------------------------------


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(T, B, I, H, num_threads):
    """Threads the kernels use: ``num_threads`` clamped to the usable CPUs (and Numba's pool),
    or for 0 the C kernel's per-shape rule (lstm_resolve_threads): a second thread only once a
    step does >= 4e6 multiply-adds and the whole pass >= 1e8."""
    cap = max(1, min(_usable_cpus(), numba.config.NUMBA_NUM_THREADS))
    if num_threads and num_threads > 0:
        return min(int(num_threads), cap)
    step = B * 4 * H * H
    total = T * B * 4 * H * (H + I)
    return 2 if cap >= 2 and step >= 4.0e6 and total >= 1.0e8 else 1


class _numba_threads:
    """``numba.set_num_threads(n)`` for the duration of a call (thread-local), then restored."""

    __slots__ = ("n", "old")

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = numba.get_num_threads()
        if self.old != self.n:
            numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old != self.n:
            numba.set_num_threads(self.old)


# --- backend contract (see backends.py) -----------------------------------------------

SUPPORTS_PROJECTION = True


def pack(w_ih, w_hh, b, w_hr=None):
    """Weights in the kernels' layout (module docstring): a tuple
    (wih_t, wih, whh_f, whh_b, b, whr_t, whr), the last two None without a projection."""
    dt = w_hh.dtype
    W = 64 // dt.itemsize
    NR = 2 * W
    G, R = w_hh.shape
    H = G // 4
    nblk = (H + W - 1) // W
    wf = np.zeros((4, nblk * W, R), dt)
    wf[:, :H] = w_hh.reshape(4, H, R)
    whh_f = np.ascontiguousarray(wf.reshape(4, nblk, W, R).transpose(1, 3, 0, 2))   # [blk][k][g][W]
    rblk = (R + W - 1) // W
    wb = np.zeros((G, rblk * W), dt)
    wb[:, :R] = w_hh
    whh_b = np.ascontiguousarray(wb.reshape(G, rblk, W).transpose(1, 0, 2))         # [blk][k][W]
    b = np.zeros(G, dt) if b is None else np.ascontiguousarray(b, dt)
    whr_t = whr = None
    if w_hr is not None:
        whr_t, whr = _panels(w_hr.T, NR), _panels(w_hr, NR)
    return (_panels(w_ih.T, NR), _panels(w_ih, NR), whh_f, whh_b, b, whr_t, whr)


def _packed_steps(x, batch_sizes):
    """(N, I) view of x, int64 batch_sizes ([B] * T for the padded layout) and
    the padded (T, B) to reshape outputs to, or None."""
    if batch_sizes is None:
        T, B, I = x.shape
        return x.reshape(T * B, I), np.full(T, B, np.int64), (T, B)
    return x, np.ascontiguousarray(batch_sizes, dtype=np.int64), None


def _nth(num_threads, bs, I, H):
    return threads_for(len(bs), int(bs[0]) if len(bs) else 0, I, H, num_threads)


def forward(packed, x, h0, c0, num_threads, batch_sizes=None):
    wih_t, _, whh_f, _, b, whr_t, _ = packed
    xp, bs, padded = _packed_steps(x, batch_sizes)
    N, I = xp.shape
    B, R = h0.shape
    H = c0.shape[1]
    dt = x.dtype
    y = np.empty((N, R), dt)
    h_n = np.empty((B, R), dt)
    c_n = np.empty((B, H), dt)
    gates = np.empty((N, 4 * H), dt)
    c = np.empty((N, H), dt)
    m = None if whr_t is None else np.empty((B, H), dt)
    nth = _nth(num_threads, bs, I, H)
    with _numba_threads(nth):
        lstm_forward(xp, wih_t, whh_f, b, whr_t, h0, c0, bs, y, h_n, c_n, gates, c, m, nth)
    if padded is not None:
        T, B = padded
        y, gates, c = y.reshape(T, B, R), gates.reshape(T, B, 4 * H), c.reshape(T, B, H)
    return y, h_n, c_n, gates, c


def backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads, batch_sizes=None):
    _, wih, _, whh_b, _, _, whr = packed
    xp, bs, padded = _packed_steps(x, batch_sizes)
    N, I = xp.shape
    B, R = h0.shape
    H = c0.shape[1]
    dt = x.dtype
    NR = 2 * (64 // dt.itemsize)
    y, gates, c, dy = (a.reshape(N, a.shape[-1]) for a in (y, gates, c, dy))
    pan = lambda cols: np.empty(((cols + NR - 1) // NR, N, NR), dt)
    dgates = np.empty((N, 4 * H), dt)
    dx = np.empty((N, I), dt)
    dw_ih = np.empty((4 * H, I), dt)
    dw_hh = np.empty((4 * H, R), dt)
    db = np.empty(4 * H, dt)
    dh0 = np.empty((B, R), dt)
    dc0 = np.empty((B, H), dt)
    if whr is None:
        dhs = np.empty((B, H), dt)
        dm = dh_all = m_all = mpan = dw_hr = None
    else:
        dhs = np.empty((0, H), dt)
        dm, dh_all, m_all = np.empty((B, H), dt), np.empty((N, R), dt), np.empty((N, H), dt)
        mpan, dw_hr = pan(H), np.empty((R, H), dt)
    nth = _nth(num_threads, bs, I, H)
    with _numba_threads(nth):
        lstm_backward(xp, wih, whh_b, whr, h0, c0, y, gates, c, dy, dh_n, dc_n, bs,
                      dgates, dhs, pan(I), pan(R), dm, dh_all, m_all, mpan,
                      dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, nth)
    if padded is not None:
        dx = dx.reshape(x.shape)
    if whr is None:
        return dx, dw_ih, dw_hh, db, dh0, dc0
    return dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr
