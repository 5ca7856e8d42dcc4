# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Binding of the C kernel (csrc/): arrays to pointers, GIL released, status to exception.

Backend "c" of ``_backends``: ``pack``, ``forward``, ``backward`` with the
arguments of ``_reference``. Arrays arrive validated by the caller; the checks
here are only the cheap ones that keep a wrong call from touching memory it
does not own. All outputs and the scratch space are NumPy arrays allocated here;
the kernel itself never allocates.
"""
import os

cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

_LEVELS = {"portable": LSTM_SIMD_PORTABLE, "avx2": LSTM_SIMD_AVX2, "avx512": LSTM_SIMD_AVX512}
_ENV_SIMD = "LSTM_FAST_SIMD"
cdef object _level_error = None   # message if LSTM_FAST_SIMD asked for something unusable


def cpu_simd_level():
    """Widest SIMD level this CPU supports: "avx512", "avx2" or "portable"."""
    return lstm_simd_name(lstm_cpu_simd_level()).decode()


def simd_level():
    """SIMD level the kernels use (the CPU's widest, or the one forced by LSTM_FAST_SIMD)."""
    return lstm_simd_name(<lstm_simd_level>lstm_get_simd_level()).decode()


def _set_simd_level(name):
    """Use SIMD level ``name`` from now on (for tests). Weights packed before must be
    packed again. Raises ValueError for an unknown name, RuntimeError if the CPU lacks it."""
    global _level_error
    if name not in _LEVELS:
        raise ValueError(f"SIMD level must be one of {tuple(_LEVELS)}, got {name!r}")
    if lstm_set_simd_level(_LEVELS[name]) != LSTM_OK:
        raise RuntimeError(f"SIMD level {name!r} is not supported by this CPU "
                           f"(widest: {cpu_simd_level()!r})")
    _level_error = None


def _init_from_env():
    global _level_error
    want = os.environ.get(_ENV_SIMD, "").strip().lower()
    if not want:
        return
    try:
        _set_simd_level(want)
    except (ValueError, RuntimeError) as e:
        _level_error = f"{_ENV_SIMD}={want!r}: {e}"


_init_from_env()


def build_info():
    """Dict: compiler, flags, SIMD levels compiled, threading library, levels in use."""
    info = {}
    for item in lstm_build_info().decode().split(";"):
        key, _, value = item.partition("=")
        info[key] = value
    return {
        "compiler": info.get("compiler"),
        "flags": info.get("flags"),
        "simd_levels_compiled": tuple(info.get("levels", "").split(",")),
        "threading": info.get("threads"),
        "simd_level": simd_level(),
        "cpu_simd_level": cpu_simd_level(),
    }


def _threads_for(int64_t T, int64_t B, int64_t I, int64_t H, int num_threads, int itemsize=4):
    """Thread count the kernels use for this shape and ``num_threads`` setting."""
    return lstm_resolve_threads(T, B, I, H, num_threads, itemsize)


cdef inline int _check_level() except -1:
    if _level_error is not None:
        raise RuntimeError(f"lstm_fast C kernel: {_level_error}")
    return 0


cdef int _raise_status(int status) except -1:
    if status == LSTM_ERR_PACKED:
        raise ValueError("packed weights do not match this call (dtype, I, H) or were packed "
                         "for another SIMD level: pack them again")
    if status == LSTM_ERR_SIMD:
        raise RuntimeError("requested SIMD level is not supported by this CPU")
    raise ValueError(f"lstm_fast C kernel rejected its arguments (status {status})")


cdef class Packed:
    """Weights in the kernel's layout (tied to the SIMD level at packing time)."""
    cdef readonly object buf
    cdef readonly int64_t input_size, hidden_size
    cdef readonly int typenum
    cdef readonly bint has_bias
    cdef object _ws            # cached workspace, reused while not in use
    cdef bint _ws_busy

    def __repr__(self):
        dt = "float32" if self.typenum == cnp.NPY_FLOAT32 else "float64"
        return f"<lstm_fast._ckernel.Packed I={self.input_size} H={self.hidden_size} {dt}>"


cdef inline cnp.ndarray _empty(int nd, cnp.npy_intp *dims, int typenum):
    return <cnp.ndarray>cnp.PyArray_EMPTY(nd, dims, typenum, 0)


cdef inline int _check(cnp.ndarray a, int nd, int typenum, cnp.npy_intp d0, cnp.npy_intp d1,
                       cnp.npy_intp d2, str name) except -1:
    cdef cnp.npy_intp *s
    if (cnp.PyArray_NDIM(a) != nd or cnp.PyArray_TYPE(a) != typenum
            or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
        raise ValueError(f"{name}: expected a C-contiguous {nd}-d array of the weights' dtype")
    s = cnp.PyArray_DIMS(a)
    if s[0] != d0 or (nd > 1 and s[1] != d1) or (nd > 2 and s[2] != d2):
        raise ValueError(f"{name}: wrong shape {(<object>a).shape}")
    return 0


def pack(cnp.ndarray w_ih not None, cnp.ndarray w_hh not None, b):
    """Pack (w_ih (4H, I), w_hh (4H, H), b (4H,) or None) for the current SIMD level."""
    _check_level()
    cdef int typenum = cnp.PyArray_TYPE(w_ih)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError("weights must be float32 or float64")
    if cnp.PyArray_NDIM(w_hh) != 2:
        raise ValueError("w_hh must be 2-d (4H, H)")
    cdef int64_t H = cnp.PyArray_DIMS(w_hh)[1]
    if H < 1:
        raise ValueError("hidden size must be at least 1")
    if cnp.PyArray_NDIM(w_ih) != 2:
        raise ValueError("w_ih must be 2-d (4H, I)")
    cdef int64_t I = cnp.PyArray_DIMS(w_ih)[1]
    _check(w_ih, 2, typenum, 4 * H, I, 0, "w_ih")
    _check(w_hh, 2, typenum, 4 * H, H, 0, "w_hh")
    cdef cnp.ndarray barr = None
    cdef void *bp = NULL
    if b is not None:
        barr = <cnp.ndarray?>b
        _check(barr, 1, typenum, 4 * H, 0, 0, "b")
        bp = cnp.PyArray_DATA(barr)
    cdef Packed p = Packed.__new__(Packed)
    cdef size_t size
    if typenum == cnp.NPY_FLOAT32:
        size = lstm_packed_size_f32(I, H)
    else:
        size = lstm_packed_size_f64(I, H)
    cdef cnp.npy_intp n = <cnp.npy_intp>size
    p.buf = _empty(1, &n, cnp.NPY_UINT8)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>p.buf)
    cdef void *wi = cnp.PyArray_DATA(w_ih)
    cdef void *wh = cnp.PyArray_DATA(w_hh)
    cdef int status
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            status = lstm_pack_f32(I, H, <float *>wi, <float *>wh, <float *>bp, dst)
        else:
            status = lstm_pack_f64(I, H, <double *>wi, <double *>wh, <double *>bp, dst)
    if status != LSTM_OK:
        _raise_status(status)
    p.input_size = I
    p.hidden_size = H
    p.typenum = typenum
    p.has_bias = b is not None
    p._ws = None
    p._ws_busy = False
    return p


cdef cnp.ndarray _take_ws(Packed p, size_t size):
    cdef cnp.npy_intp n
    if not p._ws_busy and p._ws is not None and <size_t>cnp.PyArray_SIZE(<cnp.ndarray>p._ws) >= size:
        p._ws_busy = True
        return <cnp.ndarray>p._ws
    n = <cnp.npy_intp>size
    ws = _empty(1, &n, cnp.NPY_UINT8)
    if not p._ws_busy:
        p._ws = ws
        p._ws_busy = True
    return ws


cdef inline void _give_ws(Packed p, cnp.ndarray ws):
    if ws is p._ws:
        p._ws_busy = False


def forward(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h0 not None,
            cnp.ndarray c0 not None, int num_threads):
    """(y, h_n, c_n, gates, c) of one LSTM layer; see ``_reference.lstm_forward``."""
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("x must be 3-d (T, B, I)")
    cdef int64_t T = cnp.PyArray_DIMS(x)[0], B = cnp.PyArray_DIMS(x)[1]
    _check(x, 3, tn, T, B, I, "x")
    _check(h0, 2, tn, B, H, 0, "h0")
    _check(c0, 2, tn, B, H, 0, "c0")
    cdef int nth = lstm_resolve_threads(T, B, I, H, num_threads, 4 if tn == cnp.NPY_FLOAT32 else 8)
    cdef cnp.npy_intp d3[3]
    cdef cnp.npy_intp d2[2]
    d3[0] = T; d3[1] = B; d3[2] = H
    d2[0] = B; d2[1] = H
    cdef cnp.ndarray y = _empty(3, d3, tn)
    cdef cnp.ndarray c = _empty(3, d3, tn)
    cdef cnp.ndarray h_n = _empty(2, d2, tn)
    cdef cnp.ndarray c_n = _empty(2, d2, tn)
    d3[2] = 4 * H
    cdef cnp.ndarray gates = _empty(3, d3, tn)
    cdef size_t wsize
    if tn == cnp.NPY_FLOAT32:
        wsize = lstm_forward_workspace_size_f32(T, B, I, H, nth)
    else:
        wsize = lstm_forward_workspace_size_f64(T, B, I, H, nth)
    cdef cnp.ndarray ws = _take_ws(packed, wsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef void *xp = cnp.PyArray_DATA(x)
    cdef void *h0p = cnp.PyArray_DATA(h0)
    cdef void *c0p = cnp.PyArray_DATA(c0)
    cdef void *yp = cnp.PyArray_DATA(y)
    cdef void *hnp = cnp.PyArray_DATA(h_n)
    cdef void *cnp_ = cnp.PyArray_DATA(c_n)
    cdef void *gp = cnp.PyArray_DATA(gates)
    cdef void *cp = cnp.PyArray_DATA(c)
    cdef void *wp = cnp.PyArray_DATA(ws)
    cdef int status
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = lstm_forward_f32(T, B, I, H, pk, <float *>xp, <float *>h0p, <float *>c0p,
                                      <float *>yp, <float *>hnp, <float *>cnp_, <float *>gp,
                                      <float *>cp, wp, nth)
        else:
            status = lstm_forward_f64(T, B, I, H, pk, <double *>xp, <double *>h0p,
                                      <double *>c0p, <double *>yp, <double *>hnp,
                                      <double *>cnp_, <double *>gp, <double *>cp, wp, nth)
    _give_ws(packed, ws)
    if status != LSTM_OK:
        _raise_status(status)
    return y, h_n, c_n, gates, c


def backward(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h0 not None,
             cnp.ndarray c0 not None, cnp.ndarray y not None, cnp.ndarray gates not None,
             cnp.ndarray c not None, cnp.ndarray dy not None, cnp.ndarray dh_n not None,
             cnp.ndarray dc_n not None, int num_threads):
    """(dx, dw_ih, dw_hh, db, dh0, dc0); see ``_reference.lstm_backward``."""
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("x must be 3-d (T, B, I)")
    cdef int64_t T = cnp.PyArray_DIMS(x)[0], B = cnp.PyArray_DIMS(x)[1]
    _check(x, 3, tn, T, B, I, "x")
    _check(h0, 2, tn, B, H, 0, "h0")
    _check(c0, 2, tn, B, H, 0, "c0")
    _check(y, 3, tn, T, B, H, "y")
    _check(gates, 3, tn, T, B, 4 * H, "gates")
    _check(c, 3, tn, T, B, H, "c")
    _check(dy, 3, tn, T, B, H, "dy")
    _check(dh_n, 2, tn, B, H, 0, "dh_n")
    _check(dc_n, 2, tn, B, H, 0, "dc_n")
    cdef int nth = lstm_resolve_threads(T, B, I, H, num_threads, 4 if tn == cnp.NPY_FLOAT32 else 8)
    cdef cnp.npy_intp d[3]
    d[0] = T; d[1] = B; d[2] = I
    cdef cnp.ndarray dx = _empty(3, d, tn)
    d[0] = 4 * H; d[1] = I
    cdef cnp.ndarray dw_ih = _empty(2, d, tn)
    d[1] = H
    cdef cnp.ndarray dw_hh = _empty(2, d, tn)
    cdef cnp.ndarray db = _empty(1, d, tn)
    d[0] = B; d[1] = H
    cdef cnp.ndarray dh0 = _empty(2, d, tn)
    cdef cnp.ndarray dc0 = _empty(2, d, tn)
    cdef size_t wsize
    if tn == cnp.NPY_FLOAT32:
        wsize = lstm_backward_workspace_size_f32(T, B, I, H, nth)
    else:
        wsize = lstm_backward_workspace_size_f64(T, B, I, H, nth)
    cdef cnp.ndarray ws = _take_ws(packed, wsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef void *p_x = cnp.PyArray_DATA(x)
    cdef void *p_h0 = cnp.PyArray_DATA(h0)
    cdef void *p_c0 = cnp.PyArray_DATA(c0)
    cdef void *p_y = cnp.PyArray_DATA(y)
    cdef void *p_g = cnp.PyArray_DATA(gates)
    cdef void *p_c = cnp.PyArray_DATA(c)
    cdef void *p_dy = cnp.PyArray_DATA(dy)
    cdef void *p_dhn = cnp.PyArray_DATA(dh_n)
    cdef void *p_dcn = cnp.PyArray_DATA(dc_n)
    cdef void *p_dx = cnp.PyArray_DATA(dx)
    cdef void *p_dwi = cnp.PyArray_DATA(dw_ih)
    cdef void *p_dwh = cnp.PyArray_DATA(dw_hh)
    cdef void *p_db = cnp.PyArray_DATA(db)
    cdef void *p_dh0 = cnp.PyArray_DATA(dh0)
    cdef void *p_dc0 = cnp.PyArray_DATA(dc0)
    cdef void *p_ws = cnp.PyArray_DATA(ws)
    cdef int status
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = lstm_backward_f32(
                T, B, I, H, pk, <float *>p_x, <float *>p_h0, <float *>p_c0, <float *>p_y,
                <float *>p_g, <float *>p_c, <float *>p_dy, <float *>p_dhn, <float *>p_dcn,
                <float *>p_dx, <float *>p_dwi, <float *>p_dwh, <float *>p_db, <float *>p_dh0,
                <float *>p_dc0, p_ws, nth)
        else:
            status = lstm_backward_f64(
                T, B, I, H, pk, <double *>p_x, <double *>p_h0, <double *>p_c0, <double *>p_y,
                <double *>p_g, <double *>p_c, <double *>p_dy, <double *>p_dhn,
                <double *>p_dcn, <double *>p_dx, <double *>p_dwi, <double *>p_dwh,
                <double *>p_db, <double *>p_dh0, <double *>p_dc0, p_ws, nth)
    _give_ws(packed, ws)
    if status != LSTM_OK:
        _raise_status(status)
    return dx, dw_ih, dw_hh, db, dh0, dc0
