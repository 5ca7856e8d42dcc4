# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""``lstm_fast.torch.LSTM``'s eval route, compiled (issue 14, "module cost").

A call that needs no gradient (``torch.no_grad``/``torch.inference_mode``, or nothing
requiring grad) on CPU float32/float64 tensors whose packed weights are still valid runs
here in one C function: the checks of ``LSTM.forward`` (``_kernel_backend``, the packed
weights' identity/version/storage check, torch's ``check_forward_args`` on shapes that
pass it), the kernel on the tensors' memory (``_route.run_forward`` with the module's
``LayerInputs``: a C call into the C backend) and the results as tensors sharing the
kernel's arrays. Anything else, and any input torch would reject, returns None: the
Python ``forward`` then runs as before (torch's errors and messages, the autograd path,
packing after a weight change, PackedSequence, masks, dropout in training).

torch is never imported here (lstm_fast imports without it, and this builds without its
headers): ``lstm_fast.torch`` hands its objects over with ``setup``; tensors are read
through their Python attributes (``is_cpu``, ``requires_grad``, ``_version``,
``data_ptr()``) and ``numpy()``.
"""
import os

import numpy as np

cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from lstm_fast._validation cimport LayerInputs, threads_for
from lstm_fast._route cimport run_forward
from lstm_fast import _route

cnp.import_array()

# torch's objects (setup): Tensor, from_numpy and the global switches read at every call
cdef object _Tensor = None
cdef object _from_numpy = None
cdef object _is_grad_enabled = None
cdef object _is_tracing = None
cdef object _any_autocast = None
cdef object _wrapped = None
cdef dict _torch_globals = None     # lstm_fast.torch's namespace: its ``run_forward``
cdef object _route_run_forward = _route.run_forward

# LSTM_FAST_BACKEND as the backend registry reads it (os.environ), without the Mapping's
# Python methods: os.environ's own store (bytes keys on POSIX), when it is still there
cdef object _os = os
cdef object _environ = os.environ
cdef object _env_data = getattr(os.environ, "_data", None)
cdef object _env_key = None
cdef object _UNKNOWN = object()     # the environment could not be read: never a match


def setup(Tensor, from_numpy, is_grad_enabled, is_tracing, any_autocast, wrapped,
          torch_globals, env_var):
    """Called once by ``lstm_fast.torch`` (which imports torch) with torch's objects."""
    global _Tensor, _from_numpy, _is_grad_enabled, _is_tracing, _any_autocast, _wrapped
    global _torch_globals, _env_key
    _Tensor, _from_numpy, _is_grad_enabled = Tensor, from_numpy, is_grad_enabled
    _is_tracing, _any_autocast, _wrapped = is_tracing, any_autocast, wrapped
    _torch_globals = torch_globals
    _env_key = os.fsencode(env_var) if type(_env_data) is dict else None


cdef inline object _env_value():
    if _env_key is None or _os.environ is not _environ:
        return _UNKNOWN
    return (<dict>_env_data).get(_env_key)


cdef inline bint _int_attr(dict d, str name, Py_ssize_t *out) except -1:
    """d[name] as a C integer when it is exactly an int (torch's settings are)."""
    v = d.get(name)
    if type(v) is not int:
        return False
    out[0] = <Py_ssize_t>v
    return True


cdef class EvalState:
    """What a cached packing was made from, for the compiled check that it still holds:
    the module's backend setting and LSTM_FAST_BACKEND then, the backend module, the
    dtype, the variant settings, the parameter tensors (identity, version, storage) and
    where they live in the module (names, ``_parameters``); plus a ``LayerInputs`` bound to
    the backend (the zero states' memo and the direct C call of the C backend)."""
    cdef object impl
    cdef list packed
    cdef list tensors
    cdef list names
    cdef object flat_names
    cdef object parameters
    cdef object backend
    cdef object env
    cdef bint env_matters
    cdef int typenum
    cdef object variants
    cdef Py_ssize_t count
    cdef long long *versions
    cdef long long *pointers
    cdef LayerInputs inputs

    def __cinit__(self):
        self.versions = self.pointers = NULL

    def __dealloc__(self):
        PyMem_Free(self.versions)
        PyMem_Free(self.pointers)

    def __init__(self, module, impl, dtype, list packed, list tensors, list names, variants):
        """``packed`` per layer-direction, as ``LSTM._packed_weights`` made it from
        ``tensors`` (the module's ``names``, torch's order then the peepholes) for
        ``dtype`` (NumPy) on the backend module ``impl``; ``variants`` the module's
        (peephole, clip, cell_clip, cifg) then. The versions and storage are read now."""
        cdef Py_ssize_t k
        d = module.__dict__
        self.impl, self.packed, self.tensors, self.names = impl, packed, tensors, names
        self.flat_names = d.get("_flat_weights_names")
        self.parameters = d.get("_parameters")
        self.backend = d.get("backend")
        self.env_matters = self.backend is None or self.backend == "auto"
        self.env = _env_value()
        self.typenum = np.dtype(dtype).num
        self.variants = variants
        self.count = len(tensors)
        self.versions = <long long *>PyMem_Malloc(max(self.count, 1) * sizeof(long long))
        self.pointers = <long long *>PyMem_Malloc(max(self.count, 1) * sizeof(long long))
        if self.versions == NULL or self.pointers == NULL:
            raise MemoryError()
        for k in range(self.count):
            t = tensors[k]
            self.versions[k] = t._version
            self.pointers[k] = t.data_ptr()
        H, R = d["hidden_size"], d["proj_size"] or d["hidden_size"]
        D = 2 if d["bidirectional"] else 1
        self.inputs = LayerInputs(np.dtype(dtype), d["input_size"], H, R, d["num_layers"] * D)
        self.inputs.bind(impl)

    cdef bint valid(self, dict d, bint grad) except -1:
        """The packing still holds for module ``d`` (its ``__dict__``): same backend (and
        environment for "auto"), variants, tensors, versions and storage; with ``grad``
        on, none of the tensors requires grad."""
        cdef Py_ssize_t k
        backend = d.get("backend")
        if backend is not self.backend and backend != self.backend:
            return False
        if self.env_matters:
            env = _env_value()
            if env is _UNKNOWN or (env is not self.env and env != self.env):
                return False
        if d.get("_flat_weights_names") is not self.flat_names:
            return False
        params = d.get("_parameters")
        if params is not self.parameters or type(params) is not dict:
            return False
        v = self.variants
        if (d.get("peephole") != v[0] or d.get("clip") != v[1] or d.get("cell_clip") != v[2]
                or d.get("cifg") != v[3]):
            return False
        names = self.names
        tensors = self.tensors
        for k in range(self.count):
            t = tensors[k]
            if (<dict>params).get(names[k]) is not t:
                return False
            if t._version != self.versions[k] or t.data_ptr() != self.pointers[k]:
                return False
            if grad and t.requires_grad:
                return False
        return True


def make_state(module, impl, dtype, packed, tensors, names, variants):
    """An ``EvalState`` for ``LSTM._packed_weights`` to keep with its packing."""
    return EvalState(module, impl, dtype, list(packed), list(tensors), list(names), variants)


cdef inline object _array(object t, int typenum):
    """t's memory as an ndarray of ``typenum`` when t is a plain CPU tensor that needs no
    gradient and is not functorch-wrapped, else None."""
    if type(t) is not _Tensor or not t.is_cpu or t.requires_grad or _wrapped(t):
        return None
    try:
        a = t.numpy()
    except Exception:   # a layout or bit NumPy cannot view: the Python route says why
        return None
    if cnp.PyArray_TYPE(<cnp.ndarray>a) != typenum:
        return None
    return a


cdef inline object _contiguous(object a):
    return a if cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a) else np.ascontiguousarray(a)


cdef inline bint _shape3(object a, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2):
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(arr)
    return cnp.PyArray_NDIM(arr) == 3 and s[0] == d0 and s[1] == d1 and s[2] == d2


cdef inline bint _shape2(object a, Py_ssize_t d0, Py_ssize_t d1):
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(arr)
    return cnp.PyArray_NDIM(arr) == 2 and s[0] == d0 and s[1] == d1


def eval_forward(module, input, hx):
    """``(output, (h_n, c_n))`` of ``LSTM.forward(input, hx)`` when it needs no gradient
    and runs on our kernels with valid packed weights, else None (the Python route)."""
    cdef EvalState st
    cdef Py_ssize_t I, H, R, L, D, n, T, B, k, layer, dd
    cdef cnp.ndarray xa
    cdef cnp.npy_intp *dims
    cdef bint batch_first, unbatched, grad
    d = module.__dict__
    entry = d.get("_packed")
    if type(entry) is not tuple or len(<tuple>entry) < 4:
        return None
    state = (<tuple>entry)[3]
    if type(state) is not EvalState:
        return None
    st = <EvalState>state
    if _is_tracing() or _any_autocast():
        return None
    # module settings: anything unusual goes the Python way
    if (not _int_attr(d, "input_size", &I) or not _int_attr(d, "hidden_size", &H)
            or not _int_attr(d, "proj_size", &R) or not _int_attr(d, "num_layers", &L)):
        return None
    bidirectional = d.get("bidirectional")
    batch_first_v = d.get("batch_first")
    if type(bidirectional) is not bool or type(batch_first_v) is not bool:
        return None
    D = 2 if bidirectional else 1
    batch_first = batch_first_v
    if R == 0:
        R = H
    n = L * D
    if d.get("recurrent_dropout") or d.get("zoneout"):
        return None
    if L > 1 and d.get("training") and d.get("dropout"):
        return None
    # the input
    x = _array(input, st.typenum)
    if x is None:
        return None
    xa = <cnp.ndarray>x
    dims = cnp.PyArray_DIMS(xa)
    unbatched = cnp.PyArray_NDIM(xa) == 2
    if unbatched:
        T, B = dims[0], 1
        if dims[1] != I:
            return None
    elif cnp.PyArray_NDIM(xa) == 3:
        if dims[2] != I:
            return None
        T, B = (dims[1], dims[0]) if batch_first else (dims[0], dims[1])
    else:
        return None
    if T == 0 or B == 0 or I == 0:
        return None
    # the states
    if hx is None:
        h0, c0 = st.inputs.zeros(B)
    else:
        if (type(hx) is not tuple and type(hx) is not list) or len(hx) != 2:
            return None
        h0 = _array(hx[0], st.typenum)
        if h0 is None:
            return None
        c0 = _array(hx[1], st.typenum)
        if c0 is None:
            return None
        if unbatched:
            if not _shape2(h0, n, R) or not _shape2(c0, n, H):
                return None
            h0 = _contiguous(h0).reshape(n, 1, R)
            c0 = _contiguous(c0).reshape(n, 1, H)
        else:
            if not _shape3(h0, n, B, R) or not _shape3(c0, n, B, H):
                return None
            h0 = _contiguous(h0)
            c0 = _contiguous(c0)
    grad = _is_grad_enabled()
    if not st.valid(d, grad):
        return None
    # the run: as LSTM._run without a gradient
    if unbatched:
        x = _contiguous(xa).reshape(T, 1, I)
    elif batch_first:
        x = np.ascontiguousarray(xa.transpose(1, 0, 2))
    else:
        x = _contiguous(xa)
    impl = st.impl
    packed = st.packed
    num_threads = threads_for(T, B, I, H)
    rf = _torch_globals.get("run_forward")
    direct = rf is _route_run_forward
    if n == 1:
        if direct:
            y, h_n, c_n, _ = run_forward(impl, packed[0], x, h0, c0, num_threads, None, False,
                                         False, None, None, None, False, st.inputs)
        else:       # lstm_fast.torch.run_forward replaced (a test's spy): called as the
            y, h_n, c_n, _ = rf(impl, packed[0], x, h0, c0, num_threads, None, False, False)
    else:
        dtype = st.inputs.dtype
        h_n, c_n = np.empty((n, B, R), dtype), np.empty((n, B, H), dtype)
        inp = x
        for layer in range(L):
            outs = []
            for dd in range(D):
                k = layer * D + dd
                out = (h_n[k], c_n[k])
                if direct:
                    outs.append(run_forward(impl, packed[k], inp, h0[k], c0[k], num_threads,
                                            None, dd == 1, False, out, None, None, False,
                                            st.inputs)[0])
                else:
                    outs.append(rf(impl, packed[k], inp, h0[k], c0[k], num_threads, None,
                                   dd == 1, False, out)[0])
            inp = outs[0] if D == 1 else np.concatenate(outs, 2)
        y = inp
    # the results as tensors, shaped as torch's (views of the kernel's arrays)
    if unbatched:
        return (_from_numpy(y.reshape(T, R)),
                (_from_numpy(h_n.reshape(n, R)), _from_numpy(c_n.reshape(n, H))))
    if batch_first:
        y = y.transpose(1, 0, 2)
    return _from_numpy(y), (_from_numpy(h_n), _from_numpy(c_n))
