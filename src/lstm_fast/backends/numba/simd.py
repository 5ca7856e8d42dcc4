"""Vector layer and activations of the Numba backend (csrc/simd.template.h in C), and the
compilation settings every kernel module shares.

* ``Vec``: a 64-byte SIMD vector (V = 16 float32 / 8 float64 lanes), an LLVM vector value, so
  LLVM keeps a tile's accumulators in zmm registers and emits ``vfmadd231ps zmm`` (check with
  ``fn.inspect_asm(sig)``). Intrinsics: ``vload``/``vload_n``/``vstore``/``vstore_n`` (``_n``:
  the first n lanes, masked: no access past them), ``vset1``, ``vfma`` (one rounding), the
  arithmetic operators (a scalar operand is broadcast), selects, ``lanes`` (V), ``vhsum``
  (the lanes' sum).
* Pointers: ``ptr(a)`` is an array's data pointer (``ptr(None)`` is None) and ``ld``/``st``
  scalar access; the tile kernels take pointers, not arrays (see ``ptr``).
* Activations: ``vsigmoid``, ``vtanh`` from ``vexp_neg`` (exp of x <= 0). C builds both from
  ``vexp_parts`` (2^n and expm1(r) apart); Numba uses the Cephes polynomials below.
* ``nl``: a constant or prange index as a plain int (see there).
* Compilation, for every kernel module: ``JIT``/``PJIT`` options, the threading layer launched
  at import, and one disk-cache stamp over all kernel files (``KernelSourcesLocator``).
"""

import ctypes
import hashlib
import operator
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import caching, cgutils
from numba.extending import intrinsic, models, overload, register_model

# No fastmath ('nnan'/'ninf' would break NaN/inf propagation; no contraction: FMAs only where
# written). cache=True: compiled once per dtype, then loaded from disk.
JIT = dict(nogil=True, cache=True, error_model="numpy")
PJIT = dict(JIT, parallel=True)



def _launch_threading_layer():
    """Start Numba's threading layer now (no compiling): code loaded from the disk cache
    references the layer's entry points, which are only bound once it is launched, and a
    kernel called first from the cache would jump to a null address (seen: a segfault in a
    fresh process calling a GEMM directly). Numba's OpenMP layer sets the thread count of the
    process's OpenMP runtime on the way, which torch shares (numba/numba#9387: a process at
    torch.set_num_threads(1) ran torch's ops on 2 threads afterwards): the count the process
    had is put back."""
    try:
        omp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:      # no OpenMP runtime loaded yet: nobody's count to keep
        omp = None
    before = omp.omp_get_max_threads() if omp is not None else None
    numba.get_num_threads()
    if omp is not None and omp.omp_get_max_threads() != before:
        omp.omp_set_num_threads(before)


_launch_threading_layer()

# --- the disk cache covers all kernel files ------------------------------------------
# Numba keys a cached function by the source of its own file only: after an edit of simd.py,
# lstm.py's cached lstm_forward (which has simd.py's code compiled in) would still load. The
# locator below gives every function of these modules one stamp, the hash of all of them.

_HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_FILES = ("simd.py", "gemm.py", "cell.py", "lstm.py", "lnorm.py")


def _kernel_sources_stamp():
    h = hashlib.sha256()
    for name in KERNEL_FILES:
        with open(os.path.join(_HERE, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


class KernelSourcesLocator(caching._CacheLocator):
    """Numba's own cache directory for a kernel-module function, with the stamp of all
    ``KERNEL_FILES``."""

    stamp = _kernel_sources_stamp()

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return self.stamp

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _HERE:
            return None
        for other in _LOCATORS:
            inner = None if other is cls else other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


_LOCATORS = (getattr(caching, "CacheImpl", None) or caching._CacheImpl)._locator_classes  # renamed in 0.6x
if KernelSourcesLocator not in _LOCATORS:
    _LOCATORS.insert(0, KernelSourcesLocator)

# --- SIMD vectors ----------------------------------------------------------------


class Vec(types.Type):
    """A 64-byte SIMD vector of ``dtype`` (16 float32 / 8 float64), an LLVM vector value."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.width = 64 // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec{self.width}x{dtype}")


@register_model(Vec)
class VecModel(models.PrimitiveModel):
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
def ptr(typingctx, a):
    """Raw data pointer of a C-contiguous array; None stays None (an optional operand). The
    tile kernels take pointers, not arrays: every array passed to a Numba function costs an
    atomic incref/decref pair of its meminfo that LLVM cannot always remove (measured: half
    the time of a GEMM with a bias)."""
    if isinstance(a, types.NoneType):
        return types.none(a), lambda context, builder, sig, args: context.get_dummy_value()

    def cg(context, builder, sig, args):
        return context.make_array(a)(context, builder, args[0]).data
    return types.CPointer(a.dtype)(a), cg


@intrinsic
def padd(typingctx, a, k):
    """Pointer to flat element k of a (C-contiguous array or pointer): a row's operand passed
    without an array view (see ``ptr``)."""
    def cg(context, builder, sig, args):
        return _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
    return types.CPointer(a.dtype)(a, k), cg


@intrinsic
def st(typingctx, a, i, v):
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
def vzero(typingctx, a):
    """Zero vector of array ``a``'s dtype."""
    vt = Vec(a.dtype)

    def cg(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(a), cg


@intrinsic
def vload(typingctx, a, i):
    """Vector at flat element index i of C-contiguous array a (unaligned)."""
    vt = Vec(a.dtype)

    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, vty.as_pointer()), align=a.dtype.bitwidth // 8)
    return vt(a, i), cg


@intrinsic
def vload_n(typingctx, a, i, n):
    """The first n lanes from flat index i (0 < n <= width), other lanes 0 (masked: no access)."""
    vt = Vec(a.dtype)

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
def vstore(typingctx, a, i, v):
    """Store vector v at flat index i of a (unaligned)."""
    def cg(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = context.get_value_type(v)
        builder.store(args[2], builder.bitcast(p, vty.as_pointer()), align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, i, v), cg


@intrinsic
def vstore_n(typingctx, a, i, v, n):
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
def ld(typingctx, a, i):
    """Scalar at flat element index i of a (C-contiguous array or pointer)."""
    def cg(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]))
    return a.dtype(a, i), cg


@intrinsic
def vset1(typingctx, x):
    """Vector with every lane x."""
    vt = Vec(x)

    def cg(context, builder, sig, args):
        vty = context.get_value_type(vt)
        i32 = ir.IntType(32)
        v = builder.insert_element(ir.Constant(vty, None), args[0], ir.Constant(i32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, vt.width), [0] * vt.width))
    return vt(x), cg


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, one rounding (llvm.fma)."""
    def cg(context, builder, sig, args):
        vty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                            f"llvm.fma.{_sfx(a)}")
        return builder.call(fn, args)
    return a(a, b, c), cg


@intrinsic
def vhsum(typingctx, v):
    """The sum of v's lanes, a scalar of its dtype: halves added pairwise (lanes k and
    k + width/2, then again), a fixed order."""
    def cg(context, builder, sig, args):
        i32 = ir.IntType(32)
        x, w = args[0], v.width
        while w > 1:
            w //= 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, w), list(range(w))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, w), list(range(w, 2 * w))))
            x = builder.fadd(lo, hi)
        return builder.extract_element(x, ir.Constant(i32, 0))
    return v.dtype(v), cg


def lanes(a):
    """V: lanes of a 64-byte vector of array (or pointer) a's dtype, a compile-time constant."""


@overload(lanes, jit_options=JIT)
def _lanes_impl(a):
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


vadd = _binop("fadd", "a + b")
vsub = _binop("fsub", "a - b")
vmul = _binop("fmul", "a * b")
vdiv = _binop("fdiv", "a / b")


@intrinsic
def vsplat(typingctx, v, x):
    """Vector like v with every lane x (cast to v's dtype)."""
    def cg(context, builder, sig, args):
        vty = context.get_value_type(v)
        i32 = ir.IntType(32)
        s = context.cast(builder, args[1], sig.args[1], v.dtype)
        s = builder.insert_element(ir.Constant(vty, None), s, ir.Constant(i32, 0))
        return builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(i32, v.width), [0] * v.width))
    return v(v, x), cg


def _vec_operator(vop):
    """Overload of a binary operator for ``Vec`` (a scalar operand is broadcast)."""
    def typer(a, b):
        if isinstance(a, Vec) and isinstance(b, Vec):
            return lambda a, b: vop(a, b)
        if isinstance(a, Vec) and isinstance(b, types.Number):
            return lambda a, b: vop(a, vsplat(a, b))
        if isinstance(a, types.Number) and isinstance(b, Vec):
            return lambda a, b: vop(vsplat(b, a), b)
    return typer


for _op, _vop in ((operator.add, vadd), (operator.sub, vsub), (operator.mul, vmul),
                  (operator.truediv, vdiv)):
    overload(_op, jit_options=JIT)(_vec_operator(_vop))


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


vabs = _unary("fabs", "|a|")
vfloor = _unary("floor", "floor(a)")


@intrinsic
def vneg(typingctx, a):
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


vsel_gt = _select(">", "a > b ? x : y per lane (false for NaN)")
vsel_ge = _select(">=", "a >= b ? x : y per lane (false for NaN)")
vsel_eq = _select("==", "a == b ? x : y per lane (false for NaN)")


@intrinsic
def vpow2i(typingctx, n):
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


def vexp_neg(x):
    """exp(x) for x <= 0 per lane (NaN propagates, -inf and x below the normal range give 0)."""


def vtanh(x):
    """tanh(x) per lane, any x."""


def vsigmoid(x):
    """1 / (1 + exp(-x)) per lane from exp(-|x|): no overflow for any x."""


_f32 = np.float32


@overload(vexp_neg, jit_options=JIT)
def _vexp_neg_impl(x):
    if not isinstance(x, Vec):
        return None
    if x.dtype == types.float32:
        # Cephes expf: n = round(x / ln2), r = x - n ln2, 2^n e^r.
        lo, log2e, c1, c2 = _f32(-87.33), _f32(1.44269504088896341), _f32(0.693359375), _f32(-2.12194440e-4)
        p0, p1, p2, p3, p4, p5 = (_f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3),
                                  _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1))
        half, one, zero = _f32(0.5), _f32(1.0), _f32(0.0)

        def impl(x):
            vlo = vsplat(x, lo)
            xc = vsel_gt(x, vlo, x, vlo)
            n = vfloor(xc * log2e + half)
            r = xc - n * c1
            r = r - n * c2
            y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
            y = y * vpow2i(n)
            y = vsel_gt(x, vlo, y, vsplat(x, zero))
            return vsel_eq(x, x, y, x)
        return impl
    # Cephes exp: Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
    lo, log2e, c1, c2 = -708.39, 1.4426950408889634073599, 6.93145751953125e-1, 1.42860682030941723212e-6
    P0, P1, P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
    Q0, Q1, Q2, Q3 = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                      2.27265548208155028766e-1, 2.00000000000000000009e0)

    def impl(x):
        vlo = vsplat(x, lo)
        xc = vsel_gt(x, vlo, x, vlo)
        n = vfloor(xc * log2e + 0.5)
        r = xc - n * c1
        r = r - n * c2
        rr = r * r
        px = r * ((P0 * rr + P1) * rr + P2)
        qx = ((Q0 * rr + Q1) * rr + Q2) * rr + Q3
        y = 1.0 + 2.0 * (px / (qx - px))
        y = y * vpow2i(n)
        y = vsel_gt(x, vlo, y, vsplat(x, 0.0))
        return vsel_eq(x, x, y, x)
    return impl


@overload(vtanh, jit_options=JIT)
def _vtanh_impl(x):
    # |x| < 0.625: odd polynomial / rational (Cephes), else (1 - e) / (1 + e), e = exp(-2|x|).
    if not isinstance(x, Vec):
        return None
    if x.dtype == types.float32:
        q0, q1, q2, q3, q4 = (_f32(-5.70498872745e-3), _f32(2.06390887954e-2), _f32(-5.37397155531e-2),
                              _f32(1.33314422036e-1), _f32(-3.33332819422e-1))
        small, one, mtwo, zero = _f32(0.625), _f32(1.0), _f32(-2.0), _f32(0.0)

        def impl(x):
            a = vabs(x)
            z = x * x
            ps = ((((q0 * z + q1) * z + q2) * z + q3) * z + q4) * z * x + x
            e = vexp_neg(mtwo * a)
            pl = (one - e) / (one + e)
            pl = vsel_ge(x, vsplat(x, zero), pl, vneg(pl))
            return vsel_gt(vsplat(x, small), a, ps, pl)
        return impl
    P0, P1, P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
    Q0, Q1, Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3

    def impl(x):
        a = vabs(x)
        z = x * x
        ps = x + x * z * (((P0 * z + P1) * z + P2) / (((z + Q0) * z + Q1) * z + Q2))
        e = vexp_neg(-2.0 * a)
        pl = (1.0 - e) / (1.0 + e)
        pl = vsel_ge(x, vsplat(x, 0.0), pl, vneg(pl))
        return vsel_gt(vsplat(x, 0.625), a, ps, pl)
    return impl


@overload(vsigmoid, jit_options=JIT)
def _vsigmoid_impl(x):
    if not isinstance(x, Vec):
        return None
    one = np.float32(1.0) if x.dtype == types.float32 else 1.0
    zero = np.float32(0.0) if x.dtype == types.float32 else 0.0

    def impl(x):
        e = vexp_neg(vneg(vabs(x)))
        s = one / (one + e)
        return vsel_ge(x, vsplat(x, zero), s, e * s)
    return impl


@intrinsic
def nl(typingctx, x):
    """x as a plain (non-literal) intp. Numba compiles a callee once more for every literal
    argument (``f(..., 0)`` and ``f(..., j0)`` are two specialisations, each with the tiles
    inlined; an njit identity keeps the literal type): constants handed to the kernels, and
    prange's unsigned index, go through this."""
    def cg(context, builder, sig, args):
        return context.cast(builder, args[0], sig.args[0], types.intp)
    return types.intp(x), cg
