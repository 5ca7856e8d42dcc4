# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Binding of the C kernel (csrc/): arrays to pointers, GIL released, status to exception.

Backend "c" of ``_backends``: ``pack``, ``forward``, ``backward`` with the
arguments of ``_reference``, including variable lengths (``batch_sizes``) and a
projection (``w_hr``). Arrays arrive validated by the caller; the checks here
are only the cheap ones that keep a wrong call from touching memory it does not
own (shapes, dtypes, contiguity, ``batch_sizes``). Outputs and the scratch space
are NumPy arrays allocated here; the kernel itself never allocates.

``forward_into`` is the allocation-free entry point for streaming: the caller
provides every output and may update its state (h, c) in place.
"""
import os

import numpy as np

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
    """Dict: compiler, flags, SIMD levels compiled, threading library, levels in use, the
    running CPU (vendor, family, model) and its caches (bytes; logical CPUs sharing)."""
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
        "cpu": info.get("cpu"),
        "caches": {k: int(info[k]) for k in ("l1d", "l2", "l3", "l2_shared_by", "l3_shared_by")
                   if k in info},
        "caches_from": info.get("caches_from"),
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
    cdef readonly int64_t input_size, hidden_size, proj_size   # proj_size 0: no projection
    cdef readonly int typenum
    cdef readonly bint has_bias
    cdef object _ws            # cached workspace, reused while not in use
    cdef bint _ws_busy

    @property
    def out_size(self):
        """Width of h: proj_size with a projection, else hidden_size."""
        return self.proj_size if self.proj_size else self.hidden_size

    def __repr__(self):
        dt = "float32" if self.typenum == cnp.NPY_FLOAT32 else "float64"
        return (f"<lstm_fast._ckernel.Packed I={self.input_size} H={self.hidden_size} "
                f"P={self.proj_size} {dt}>")


SUPPORTS_PROJECTION = True


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


cdef inline int _check_rows(cnp.ndarray a, bint padded, int typenum, int64_t T, int64_t B,
                            int64_t N, int64_t F, str name) except -1:
    """(T, B, F) in the padded layout, else packed (N, F)."""
    if padded:
        return _check(a, 3, typenum, T, B, F, name)
    return _check(a, 2, typenum, N, F, 0, name)


cdef inline cnp.ndarray _rows(bint padded, int64_t T, int64_t B, int64_t N, int64_t F, int tn):
    cdef cnp.npy_intp d[3]
    if padded:
        d[0] = T; d[1] = B; d[2] = F
        return _empty(3, d, tn)
    d[0] = N; d[1] = F
    return _empty(2, d, tn)


def pack(cnp.ndarray w_ih not None, cnp.ndarray w_hh not None, b, w_hr=None):
    """Pack (w_ih (4H, I), w_hh (4H, R), b (4H,) or None, w_hr (P, H) or None) for the
    current SIMD level; R = P with a projection, else H."""
    _check_level()
    cdef int typenum = cnp.PyArray_TYPE(w_ih)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError("weights must be float32 or float64")
    if cnp.PyArray_NDIM(w_ih) != 2 or cnp.PyArray_DIMS(w_ih)[0] % 4:
        raise ValueError("w_ih must be 2-d (4H, I)")
    cdef int64_t H = cnp.PyArray_DIMS(w_ih)[0] // 4
    cdef int64_t I = cnp.PyArray_DIMS(w_ih)[1]
    if H < 1:
        raise ValueError("hidden size must be at least 1")
    cdef int64_t P = 0
    cdef cnp.ndarray hr = None
    cdef void *hrp = NULL
    if w_hr is not None:
        hr = <cnp.ndarray?>w_hr
        if cnp.PyArray_NDIM(hr) != 2 or cnp.PyArray_DIMS(hr)[0] < 1:
            raise ValueError("w_hr must be 2-d (P, H) with P >= 1")
        P = cnp.PyArray_DIMS(hr)[0]
        _check(hr, 2, typenum, P, H, 0, "w_hr")
        hrp = cnp.PyArray_DATA(hr)
    _check(w_ih, 2, typenum, 4 * H, I, 0, "w_ih")
    _check(w_hh, 2, typenum, 4 * H, P if P else H, 0, "w_hh")
    cdef cnp.ndarray barr = None
    cdef void *bp = NULL
    if b is not None:
        barr = <cnp.ndarray?>b
        _check(barr, 1, typenum, 4 * H, 0, 0, "b")
        bp = cnp.PyArray_DATA(barr)
    cdef Packed p = Packed.__new__(Packed)
    cdef size_t size
    if typenum == cnp.NPY_FLOAT32:
        size = lstm_packed_size_f32(I, H, P)
    else:
        size = lstm_packed_size_f64(I, H, P)
    cdef cnp.npy_intp n = <cnp.npy_intp>size
    p.buf = _empty(1, &n, cnp.NPY_UINT8)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>p.buf)
    cdef void *wi = cnp.PyArray_DATA(w_ih)
    cdef void *wh = cnp.PyArray_DATA(w_hh)
    cdef int status
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            status = lstm_pack_f32(I, H, P, <float *>wi, <float *>wh, <float *>bp,
                                   <float *>hrp, dst)
        else:
            status = lstm_pack_f64(I, H, P, <double *>wi, <double *>wh, <double *>bp,
                                   <double *>hrp, dst)
    if status != LSTM_OK:
        _raise_status(status)
    p.input_size = I
    p.hidden_size = H
    p.proj_size = P
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


cdef cnp.ndarray _steps(object batch_sizes, int64_t N, int64_t B):
    """batch_sizes as a contiguous int64 array, checked: 1-d, integers,
    non-increasing, in [0, B], summing to N (the rows of x)."""
    arr = np.asarray(batch_sizes)
    if arr.ndim != 1:
        raise ValueError(f"batch_sizes must be 1-d (T,), got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"batch_sizes must hold integers, got dtype {arr.dtype}")
    cdef cnp.ndarray bs = np.ascontiguousarray(arr, dtype=np.int64)
    cdef const int64_t *v = <const int64_t *>cnp.PyArray_DATA(bs)
    cdef int64_t T = cnp.PyArray_DIMS(bs)[0], t, total = 0, prev = B
    for t in range(T):
        if v[t] < 0:
            raise ValueError(f"batch_sizes must be >= 0, got {v[t]} at step {t}")
        if v[t] > prev:
            if t == 0:
                raise ValueError(f"batch_sizes[0] = {v[0]} exceeds the batch size B = {B} "
                                 f"(rows of h0)")
            raise ValueError(f"batch_sizes must be non-increasing, got {v[t - 1]} then {v[t]} "
                             f"at step {t}")
        total += v[t]
        prev = v[t]
    if total != N:
        raise ValueError(f"sum(batch_sizes) = {total} does not match the {N} packed rows of x")
    return bs


cdef cnp.ndarray _layout(cnp.ndarray x, cnp.ndarray h0, object batch_sizes,
                         int64_t *T, int64_t *B, int64_t *N):
    """The sizes of a forward/backward call: B from h0; T and N from x, padded
    (T, B, I), or from the checked batch_sizes, packed (N, I). Returns the
    checked batch_sizes, or None for the padded layout."""
    if cnp.PyArray_NDIM(h0) != 2:
        raise ValueError("h0 must be 2-d (B, R)")
    B[0] = cnp.PyArray_DIMS(h0)[0]
    if batch_sizes is None:
        if cnp.PyArray_NDIM(x) != 3:
            raise ValueError("x must be 3-d (T, B, I) (or 2-d (N, I) with batch_sizes)")
        T[0] = cnp.PyArray_DIMS(x)[0]
        N[0] = T[0] * B[0]
        return None
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError("with batch_sizes, x must be packed 2-d (N, I)")
    N[0] = cnp.PyArray_DIMS(x)[0]
    cdef cnp.ndarray bs = _steps(batch_sizes, N[0], B[0])
    T[0] = cnp.PyArray_DIMS(bs)[0]
    return bs


cdef inline int _nthreads(int64_t T, int64_t N, int64_t B, int64_t I, int64_t H, int num_threads,
                          int tn):
    cdef int64_t rows = N // T if T > 0 else B
    return lstm_resolve_threads(T, rows, I, H, num_threads, 4 if tn == cnp.NPY_FLOAT32 else 8)


cdef int _forward_call(Packed packed, int64_t T, int64_t B, cnp.ndarray bs, cnp.ndarray x,
                       cnp.ndarray h0, cnp.ndarray c0, cnp.ndarray y, cnp.ndarray h_n,
                       cnp.ndarray c_n, cnp.ndarray gates, cnp.ndarray c, int nth) except -1:
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef size_t wsize
    if tn == cnp.NPY_FLOAT32:
        wsize = lstm_forward_workspace_size_f32(T, B, I, H, P, nth, gates is not None)
    else:
        wsize = lstm_forward_workspace_size_f64(T, B, I, H, P, nth, gates is not None)
    cdef cnp.ndarray ws = _take_ws(packed, wsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef const int64_t *bsp = NULL if bs is None else <const int64_t *>cnp.PyArray_DATA(bs)
    cdef void *xp = cnp.PyArray_DATA(x)
    cdef void *h0p = cnp.PyArray_DATA(h0)
    cdef void *c0p = cnp.PyArray_DATA(c0)
    cdef void *yp = cnp.PyArray_DATA(y)
    cdef void *hnp = cnp.PyArray_DATA(h_n)
    cdef void *cnp_ = cnp.PyArray_DATA(c_n)
    cdef void *gp = NULL if gates is None else cnp.PyArray_DATA(gates)
    cdef void *cp = NULL if c is None else cnp.PyArray_DATA(c)
    cdef void *wp = cnp.PyArray_DATA(ws)
    cdef int status
    # The GIL is released even around sub-microsecond calls (about 40 ns of a
    # 300 ns call at (3,1,1,1)): another Python thread never waits on a kernel.
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = lstm_forward_f32(T, B, I, H, P, pk, bsp, <float *>xp, <float *>h0p,
                                      <float *>c0p, <float *>yp, <float *>hnp, <float *>cnp_,
                                      <float *>gp, <float *>cp, wp, nth)
        else:
            status = lstm_forward_f64(T, B, I, H, P, pk, bsp, <double *>xp, <double *>h0p,
                                      <double *>c0p, <double *>yp, <double *>hnp,
                                      <double *>cnp_, <double *>gp, <double *>cp, wp, nth)
    _give_ws(packed, ws)
    if status != LSTM_OK:
        _raise_status(status)
    return 0


cdef int _backward_call(Packed packed, int64_t T, int64_t N, int64_t B, cnp.ndarray bs,
                        cnp.ndarray x, cnp.ndarray h0, cnp.ndarray c0, cnp.ndarray y,
                        cnp.ndarray gates, cnp.ndarray c, cnp.ndarray dy, cnp.ndarray dh_n,
                        cnp.ndarray dc_n, cnp.ndarray dx, cnp.ndarray dw_ih, cnp.ndarray dw_hh,
                        cnp.ndarray db, cnp.ndarray dh0, cnp.ndarray dc0, cnp.ndarray dw_hr,
                        int nth) except -1:
    """The kernel's backward on checked arrays (dw_hr None without a projection)."""
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef size_t wsize
    if tn == cnp.NPY_FLOAT32:
        wsize = lstm_backward_workspace_size_f32(T, N, B, I, H, P, nth)
    else:
        wsize = lstm_backward_workspace_size_f64(T, N, B, I, H, P, nth)
    cdef cnp.ndarray ws = _take_ws(packed, wsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef const int64_t *bsp = NULL if bs is None else <const int64_t *>cnp.PyArray_DATA(bs)
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
    cdef void *p_dwr = NULL if dw_hr is None else cnp.PyArray_DATA(dw_hr)
    cdef void *p_ws = cnp.PyArray_DATA(ws)
    cdef int status
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = lstm_backward_f32(
                T, B, I, H, P, pk, bsp, <float *>p_x, <float *>p_h0, <float *>p_c0,
                <float *>p_y, <float *>p_g, <float *>p_c, <float *>p_dy, <float *>p_dhn,
                <float *>p_dcn, <float *>p_dx, <float *>p_dwi, <float *>p_dwh, <float *>p_db,
                <float *>p_dh0, <float *>p_dc0, <float *>p_dwr, p_ws, nth)
        else:
            status = lstm_backward_f64(
                T, B, I, H, P, pk, bsp, <double *>p_x, <double *>p_h0, <double *>p_c0,
                <double *>p_y, <double *>p_g, <double *>p_c, <double *>p_dy, <double *>p_dhn,
                <double *>p_dcn, <double *>p_dx, <double *>p_dwi, <double *>p_dwh,
                <double *>p_db, <double *>p_dh0, <double *>p_dc0, <double *>p_dwr, p_ws, nth)
    _give_ws(packed, ws)
    if status != LSTM_OK:
        _raise_status(status)
    return 0



def forward(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h0 not None,
            cnp.ndarray c0 not None, int num_threads, batch_sizes=None, save=True):
    """(y, h_n, c_n, gates, c) of one LSTM layer; see ``_reference.lstm_forward``.
    save=False: nothing is kept for backward, gates and c are returned as None.

    Padded: x (T, B, I) -> y (T, B, R), gates (T, B, 4H), c (T, B, H). With
    ``batch_sizes`` (T,): x (N, I) packed step-major -> y (N, R), gates (N, 4H),
    c (N, H). R = P with a projection, else H; h0, h_n (B, R); c0, c_n (B, H).
    """
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    cdef int64_t R = packed.proj_size if packed.proj_size else H
    cdef int64_t T, B, N
    cdef cnp.ndarray bs = _layout(x, h0, batch_sizes, &T, &B, &N)
    cdef bint padded = bs is None
    _check_rows(x, padded, tn, T, B, N, I, "x")
    _check(h0, 2, tn, B, R, 0, "h0")
    _check(c0, 2, tn, B, H, 0, "c0")
    cdef int nth = _nthreads(T, N, B, I, H, num_threads, tn)
    cdef cnp.ndarray y = _rows(padded, T, B, N, R, tn)
    cdef cnp.ndarray c = _rows(padded, T, B, N, H, tn) if save else None
    cdef cnp.ndarray gates = _rows(padded, T, B, N, 4 * H, tn) if save else None
    cdef cnp.npy_intp d2[2]
    d2[0] = B; d2[1] = R
    cdef cnp.ndarray h_n = _empty(2, d2, tn)
    d2[1] = H
    cdef cnp.ndarray c_n = _empty(2, d2, tn)
    _forward_call(packed, T, B, bs, x, h0, c0, y, h_n, c_n, gates, c, nth)
    return y, h_n, c_n, gates, c


def backward(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h0 not None,
             cnp.ndarray c0 not None, cnp.ndarray y not None, cnp.ndarray gates not None,
             cnp.ndarray c not None, cnp.ndarray dy not None, cnp.ndarray dh_n not None,
             cnp.ndarray dc_n not None, int num_threads, batch_sizes=None):
    """(dx, dw_ih, dw_hh, db, dh0, dc0), plus dw_hr (P, H) with a projection; see
    ``_reference.lstm_backward``. Layouts as in ``forward``."""
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef int64_t R = P if P else H
    cdef int64_t T, B, N
    cdef cnp.ndarray bs = _layout(x, h0, batch_sizes, &T, &B, &N)
    cdef bint padded = bs is None
    _check_rows(x, padded, tn, T, B, N, I, "x")
    _check(h0, 2, tn, B, R, 0, "h0")
    _check(c0, 2, tn, B, H, 0, "c0")
    _check_rows(y, padded, tn, T, B, N, R, "y")
    _check_rows(gates, padded, tn, T, B, N, 4 * H, "gates")
    _check_rows(c, padded, tn, T, B, N, H, "c")
    _check_rows(dy, padded, tn, T, B, N, R, "dy")
    _check(dh_n, 2, tn, B, R, 0, "dh_n")
    _check(dc_n, 2, tn, B, H, 0, "dc_n")
    cdef int nth = _nthreads(T, N, B, I, H, num_threads, tn)
    cdef cnp.ndarray dx = _rows(padded, T, B, N, I, tn)
    cdef cnp.npy_intp d[2]
    d[0] = 4 * H; d[1] = I
    cdef cnp.ndarray dw_ih = _empty(2, d, tn)
    d[1] = R
    cdef cnp.ndarray dw_hh = _empty(2, d, tn)
    cdef cnp.ndarray db = _empty(1, d, tn)
    d[0] = B; d[1] = R
    cdef cnp.ndarray dh0 = _empty(2, d, tn)
    d[1] = H
    cdef cnp.ndarray dc0 = _empty(2, d, tn)
    cdef cnp.ndarray dw_hr = None
    if P:
        d[0] = P; d[1] = H
        dw_hr = _empty(2, d, tn)
    _backward_call(packed, T, N, B, bs, x, h0, c0, y, gates, c, dy, dh_n, dc_n, dx, dw_ih,
                   dw_hh, db, dh0, dc0, dw_hr, nth)
    if P:
        return dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr
    return dx, dw_ih, dw_hh, db, dh0, dc0


cdef inline void _span(cnp.ndarray a, char **lo, char **hi):
    lo[0] = <char *>cnp.PyArray_DATA(a)
    hi[0] = lo[0] + cnp.PyArray_NBYTES(a)


cdef inline bint _overlap_hc(cnp.ndarray a, cnp.ndarray b):
    cdef char *la
    cdef char *ha
    cdef char *lb
    cdef char *hb
    _span(a, &la, &ha)
    _span(b, &lb, &hb)
    return la < ha and lb < hb and la < hb and lb < ha


def forward_into(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h0 not None,
                 cnp.ndarray c0 not None, cnp.ndarray y not None, cnp.ndarray h_n not None,
                 cnp.ndarray c_n not None, cnp.ndarray gates not None, cnp.ndarray c not None,
                 int num_threads):
    """``forward`` (padded layout) into caller-provided arrays; allocates nothing.

    x (T, B, I), h0 (B, R), c0 (B, H) in; y (T, B, R), h_n (B, R), c_n (B, H),
    gates (T, B, 4H), c (T, B, H) out, all C-contiguous of the weights' dtype.
    For streaming: ``h_n`` may be ``h0`` and ``c_n`` may be ``c0`` (the state is
    then updated in place); no other output may share memory with another
    output or an input (ValueError). Returns None. Running a sequence in chunks,
    each call's h_n, c_n feeding the next, gives the same bits as one call.
    """
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    cdef int64_t R = packed.proj_size if packed.proj_size else H
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("x must be 3-d (T, B, I)")
    cdef int64_t T = cnp.PyArray_DIMS(x)[0], B = cnp.PyArray_DIMS(x)[1]
    _check(x, 3, tn, T, B, I, "x")
    _check(h0, 2, tn, B, R, 0, "h0")
    _check(c0, 2, tn, B, H, 0, "c0")
    _check(y, 3, tn, T, B, R, "y")
    _check(h_n, 2, tn, B, R, 0, "h_n")
    _check(c_n, 2, tn, B, H, 0, "c_n")
    _check(gates, 3, tn, T, B, 4 * H, "gates")
    _check(c, 3, tn, T, B, H, "c")
    # byte spans: outputs y, gates, c, h_n, c_n (0..4), inputs x, h0, c0 (5..7)
    cdef char *lo[8]
    cdef char *hi[8]
    _span(y, &lo[0], &hi[0]); _span(gates, &lo[1], &hi[1]); _span(c, &lo[2], &hi[2])
    _span(h_n, &lo[3], &hi[3]); _span(c_n, &lo[4], &hi[4])
    _span(x, &lo[5], &hi[5]); _span(h0, &lo[6], &hi[6]); _span(c0, &lo[7], &hi[7])
    cdef int i, j
    for i in range(5):
        for j in range(i + 1, 8):
            if lo[i] < hi[i] and lo[j] < hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                if (i == 3 and j == 6 or i == 4 and j == 7) and lo[i] == lo[j]:
                    continue   # h_n is h0, c_n is c0: in-place state
                raise ValueError("forward_into: outputs must not overlap each other or an "
                                 "input, except h_n is h0 and c_n is c0")
    cdef int nth = _nthreads(T, T * B, B, I, H, num_threads, tn)
    _forward_call(packed, T, B, None, x, h0, c0, y, h_n, c_n, gates, c, nth)


def step(Packed packed not None, cnp.ndarray x not None, cnp.ndarray h not None,
         cnp.ndarray c not None, cnp.ndarray gates_ws not None, cnp.ndarray c_ws not None,
         int num_threads, y=None):
    """One step for streaming: x (B, I) -> y (B, R), state (h (B, R), c (B, H)) updated
    in place; allocates at most y.

    ``gates_ws`` (B, 4H) and ``c_ws`` (B, H) are scratch the caller keeps between
    calls; ``y`` (B, R) is written and returned if given, else a new array is.
    All C-contiguous of the weights' dtype; y, gates_ws, c_ws must not overlap
    each other, x, h or c (ValueError). Same bits as ``forward`` over the whole
    sequence (see ``forward_into``).
    """
    _check_level()
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    cdef int64_t R = packed.proj_size if packed.proj_size else H
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError("x must be 2-d (B, I)")
    cdef int64_t B = cnp.PyArray_DIMS(x)[0]
    _check(x, 2, tn, B, I, 0, "x")
    _check(h, 2, tn, B, R, 0, "h")
    _check(c, 2, tn, B, H, 0, "c")
    _check(gates_ws, 2, tn, B, 4 * H, 0, "gates_ws")
    _check(c_ws, 2, tn, B, H, 0, "c_ws")
    cdef cnp.ndarray yarr
    cdef cnp.npy_intp d2[2]
    if y is None:
        d2[0] = B; d2[1] = R
        yarr = _empty(2, d2, tn)
    else:
        yarr = <cnp.ndarray?>y
        _check(yarr, 2, tn, B, R, 0, "y")
    # byte spans: outputs y, gates_ws, c_ws (0..2), then x, h, c (3..5)
    cdef char *lo[6]
    cdef char *hi[6]
    _span(yarr, &lo[0], &hi[0]); _span(gates_ws, &lo[1], &hi[1]); _span(c_ws, &lo[2], &hi[2])
    _span(x, &lo[3], &hi[3]); _span(h, &lo[4], &hi[4]); _span(c, &lo[5], &hi[5])
    cdef int i, j
    for i in range(3):
        for j in range(i + 1, 6):
            if lo[i] < hi[i] and lo[j] < hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                raise ValueError("step: y, gates_ws, c_ws must not overlap each other, x, h or c")
    if _overlap_hc(h, c):
        raise ValueError("step: h and c must not overlap")
    cdef int nth = _nthreads(1, B, B, I, H, num_threads, tn)
    _forward_call(packed, 1, B, None, x, h, c, yarr, h, c, gates_ws, c_ws, nth)
    return yarr


# --- the fast path of LSTM.forward / LSTM.backward -------------------------------
# One layer, one direction, padded and time-major: the whole call in one C
# function. It only takes arguments that need nothing from ``_validation``
# (exact ndarrays of the weights' dtype, native byte order, C-contiguous, of the
# expected shape) and returns None for anything else, so that the general path
# converts the argument or raises its error message. It never raises for an
# argument the general path would accept.

cdef inline bint _fits(object o, int tn, int nd, cnp.npy_intp d0, cnp.npy_intp d1,
                       cnp.npy_intp d2) noexcept:
    """``o`` is exactly an ndarray: nd-d, of type ``tn`` in native byte order,
    C-contiguous, shape (d0, d1, d2)[:nd]."""
    if not cnp.PyArray_CheckExact(o):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>o
    if (cnp.PyArray_NDIM(a) != nd or cnp.PyArray_TYPE(a) != tn
            or not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
        return False
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(a)
    return s[0] == d0 and (nd < 2 or s[1] == d1) and (nd < 3 or s[2] == d2)


cdef inline bint _fits_state(object o, int tn, cnp.npy_intp B, cnp.npy_intp F) noexcept:
    """A state (B, F), or (1, B, F) as the layer takes it."""
    return _fits(o, tn, 3, 1, B, F) or _fits(o, tn, 2, B, F, 0)


cdef cnp.ndarray _zero_buf = None     # read-only zeros shared by calls (inputs only)
cdef enum:
    _ZERO_BUF_MAX = 65536


cdef cnp.ndarray _zeros(size_t nbytes):
    """At least ``nbytes`` zero bytes for an input the kernel only reads (a gradient
    given as None): small ones from a shared read-only buffer, no allocation."""
    global _zero_buf
    cdef cnp.npy_intp n = <cnp.npy_intp>nbytes
    if nbytes > _ZERO_BUF_MAX:
        return <cnp.ndarray>cnp.PyArray_ZEROS(1, &n, cnp.NPY_UINT8, 0)
    if _zero_buf is None:
        n = _ZERO_BUF_MAX
        _zero_buf = <cnp.ndarray>cnp.PyArray_ZEROS(1, &n, cnp.NPY_UINT8, 0)
        cnp.PyArray_CLEARFLAGS(_zero_buf, cnp.NPY_ARRAY_WRITEABLE)
    return _zero_buf


cdef inline bint _pair(object o) noexcept:
    return (type(o) is tuple or type(o) is list) and len(o) == 2


cdef tuple _layer_states(object pair, int tn, int64_t B, int64_t R, int64_t H):
    """(h, c), (1, B, R) and (1, B, H), from ``pair``, or the shared zeros for None;
    None if ``pair`` needs the general path."""
    cdef size_t itemsize = 4 if tn == cnp.NPY_FLOAT32 else 8
    if pair is None:
        z = _zeros(B * (R if R > H else H) * itemsize)
        return (z, z)
    if _pair(pair) and _fits(pair[0], tn, 3, 1, B, R) and _fits(pair[1], tn, 3, 1, B, H):
        return (pair[0], pair[1])
    return None


def layer_forward(Packed packed not None, x, hx, int num_threads):
    """``LSTM.forward`` for one layer and direction: x (T, B, I) with T, B >= 1,
    hx None or (h0 (1, B, R), c0 (1, B, H)).

    Returns ((y (T, B, R), (h_n (1, B, R), c_n (1, B, H))), cache), cache =
    (packed, (x, h0, c0, y, gates, c)) for ``layer_backward`` (h0, c0 as given,
    or both None for zeros); or None when an argument needs the general path.
    """
    if _level_error is not None:
        return None                     # the general path raises it
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size
    cdef int64_t R = packed.proj_size if packed.proj_size else H
    if not cnp.PyArray_CheckExact(x) or cnp.PyArray_NDIM(<cnp.ndarray>x) != 3:
        return None
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef int64_t T = s[0], B = s[1]
    if T < 1 or B < 1 or not _fits(x, tn, 3, T, B, I):
        return None
    cdef cnp.npy_intp d[3]
    cdef tuple states = _layer_states(hx, tn, B, R, H)
    if states is None:
        return None
    h0, c0 = states
    cdef int nth = _nthreads(T, T * B, B, I, H, num_threads, tn)
    d[0] = T; d[1] = B; d[2] = R
    cdef cnp.ndarray y = _empty(3, d, tn)
    d[2] = H
    cdef cnp.ndarray c = _empty(3, d, tn)
    d[2] = 4 * H
    cdef cnp.ndarray gates = _empty(3, d, tn)
    d[0] = 1; d[2] = R
    cdef cnp.ndarray h_n = _empty(3, d, tn)
    d[2] = H
    cdef cnp.ndarray c_n = _empty(3, d, tn)
    _forward_call(packed, T, B, None, <cnp.ndarray>x, <cnp.ndarray>h0, <cnp.ndarray>c0, y, h_n,
                  c_n, gates, c, nth)
    if hx is None:
        h0 = c0 = None
    return (y, (h_n, c_n)), (packed, (x, h0, c0, y, gates, c))


def layer_backward(tuple cache not None, dy, grad_hx, int num_threads):
    """Backward of ``layer_forward`` for its ``cache``: dy (T, B, R) or None
    (zeros), grad_hx None (zeros) or (dh_n (1, B, R), dc_n (1, B, H)).

    Returns ((dx (T, B, I), (dh0 (1, B, R), dc0 (1, B, H))), grads), grads the
    parameter gradients under torch's names for layer 0 in its order
    (weight_ih_l0, weight_hh_l0, bias_ih_l0 and bias_hh_l0 (equal, separate
    arrays) with a bias, weight_hr_l0 with a projection); or None when an
    argument needs the general path.
    """
    if _level_error is not None or len(cache) != 2:
        return None
    cdef Packed packed = cache[0]
    cdef tuple saved = cache[1]
    if len(saved) != 6:
        return None
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef int64_t R = P if P else H
    x, h0, c0, y, gates, c = saved
    if not cnp.PyArray_CheckExact(x) or cnp.PyArray_NDIM(<cnp.ndarray>x) != 3:
        return None
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef int64_t T = s[0], B = s[1]
    cdef size_t itemsize = 4 if tn == cnp.NPY_FLOAT32 else 8
    if h0 is None and c0 is None:       # zeros
        h0 = c0 = _zeros(B * (R if R > H else H) * itemsize)
    elif not _fits_state(h0, tn, B, R) or not _fits_state(c0, tn, B, H):
        return None
    if (T < 1 or B < 1 or not _fits(x, tn, 3, T, B, I) or not _fits(y, tn, 3, T, B, R)
            or not _fits(gates, tn, 3, T, B, 4 * H) or not _fits(c, tn, 3, T, B, H)):
        return None
    cdef cnp.npy_intp d[3]
    if dy is None:
        dy = _zeros(T * B * R * itemsize)
    elif not _fits(dy, tn, 3, T, B, R):
        return None
    cdef tuple states = _layer_states(grad_hx, tn, B, R, H)
    if states is None:
        return None
    dh_n, dc_n = states
    cdef int nth = _nthreads(T, T * B, B, I, H, num_threads, tn)
    d[0] = T; d[1] = B; d[2] = I
    cdef cnp.ndarray dx = _empty(3, d, tn)
    d[0] = 1; d[2] = R
    cdef cnp.ndarray dh0 = _empty(3, d, tn)
    d[2] = H
    cdef cnp.ndarray dc0 = _empty(3, d, tn)
    d[0] = 4 * H; d[1] = I
    cdef cnp.ndarray dw_ih = _empty(2, d, tn)
    d[1] = R
    cdef cnp.ndarray dw_hh = _empty(2, d, tn)
    cdef cnp.ndarray db = _empty(1, d, tn)
    cdef cnp.ndarray dw_hr = None
    if P:
        d[0] = P; d[1] = H
        dw_hr = _empty(2, d, tn)
    _backward_call(packed, T, T * B, B, None, <cnp.ndarray>x, <cnp.ndarray>h0, <cnp.ndarray>c0,
                   <cnp.ndarray>y, <cnp.ndarray>gates, <cnp.ndarray>c, <cnp.ndarray>dy,
                   <cnp.ndarray>dh_n, <cnp.ndarray>dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr,
                   nth)
    grads = {"weight_ih_l0": dw_ih, "weight_hh_l0": dw_hh}
    if packed.has_bias:
        grads["bias_ih_l0"] = db
        grads["bias_hh_l0"] = cnp.PyArray_NewCopy(db, cnp.NPY_CORDER)
    if P:
        grads["weight_hr_l0"] = dw_hr
    return (dx, (dh0, dc0)), grads
