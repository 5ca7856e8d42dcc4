# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""``lstm_fast.torch``'s compiled routes: ``LSTM``'s eval call (issue 14, "module cost") and
``LSTMCell``'s step with or without a gradient (issue 17).

``eval_forward``: an ``LSTM`` call that needs no gradient (``torch.no_grad``/
``torch.inference_mode``, or nothing requiring grad) on CPU float32/float64 tensors whose
packed weights are still valid runs here in one C function: the checks of ``LSTM.forward``
(``_kernel_backend``, the packed weights' identity/version/storage check, torch's
``check_forward_args`` on shapes that pass it), the kernel on the tensors' memory
(``_route.run_forward`` with the module's ``LayerInputs``: a C call into the C backend) and
the results as tensors sharing the kernel's arrays.

``cell_forward``: an ``LSTMCell`` call, the same checks (the packed-weights check is the one
class ``Packing``; ``EvalState``, the LSTM's, adds its variants), the step's kernel call;
without a gradient its arrays are returned as tensors, with one the forward saving for
backward runs here and ``lstm_fast.torch._CompiledCell``'s ``apply`` puts the results in
the graph: that Function's forward and backward are ``cell_function_forward`` and
``cell_function_backward`` (the kernel's backward, the gradients as tensors).

Anything else, and any input torch would reject, returns None: the Python ``forward`` then
runs as before (torch's errors and messages, the Python autograd path, packing after a
weight change, PackedSequence, masks, dropout in training).

torch is never imported here (lstm_fast imports without it, and this builds without its
headers): ``lstm_fast.torch`` hands its objects over with ``setup`` and ``setup_cell``;
tensors are read through their Python attributes (``is_cpu``, ``requires_grad``,
``_version``, ``data_ptr()``) and ``numpy()``.
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


cdef class Packing:
    """What a cached packing was made from, for the compiled check that it still holds (the
    part an ``LSTM`` and an ``LSTMCell`` share): the module's backend setting and
    LSTM_FAST_BACKEND then, the backend module, the dtype, the parameter tensors (identity,
    version, storage) and where they live in the module (names, ``_parameters``; a name
    whose parameter is None, as a cell's absent biases, must still be None); plus a
    ``LayerInputs`` bound to the backend (the zero states' memo and the direct C call of the
    C backend)."""
    cdef object impl
    cdef list packed
    cdef list tensors
    cdef list names
    cdef object parameters
    cdef object backend
    cdef object env
    cdef bint env_matters
    cdef int typenum
    cdef Py_ssize_t count
    cdef long long *versions
    cdef long long *pointers
    cdef LayerInputs inputs

    def __cinit__(self):
        self.versions = self.pointers = NULL

    def __dealloc__(self):
        PyMem_Free(self.versions)
        PyMem_Free(self.pointers)

    def __init__(self, module, impl, dtype, list packed, list tensors, list names,
                 LayerInputs inputs):
        """``packed`` (per layer-direction) made from ``tensors`` (the module's parameters
        ``names``, None where absent) for ``dtype`` (NumPy) on the backend module ``impl``;
        ``inputs`` the module's shapes, bound here to ``impl``. The versions and storage are
        read now."""
        cdef Py_ssize_t k
        d = module.__dict__
        self.impl, self.packed, self.tensors, self.names = impl, packed, tensors, names
        self.parameters = d.get("_parameters")
        self.backend = d.get("backend")
        self.env_matters = self.backend is None or self.backend == "auto"
        self.env = _env_value()
        self.typenum = np.dtype(dtype).num
        self.count = len(tensors)
        self.versions = <long long *>PyMem_Malloc(max(self.count, 1) * sizeof(long long))
        self.pointers = <long long *>PyMem_Malloc(max(self.count, 1) * sizeof(long long))
        if self.versions == NULL or self.pointers == NULL:
            raise MemoryError()
        for k in range(self.count):
            t = tensors[k]
            self.versions[k] = 0 if t is None else t._version
            self.pointers[k] = 0 if t is None else t.data_ptr()
        self.inputs = inputs
        self.inputs.bind(impl)

    cdef bint valid(self, dict d, bint grad) except -1:
        """The packing still holds for module ``d`` (its ``__dict__``): same backend (and
        environment for "auto"), tensors, versions and storage; with ``grad`` on, none of
        the tensors requires grad."""
        cdef Py_ssize_t k
        backend = d.get("backend")
        if backend is not self.backend and backend != self.backend:
            return False
        if self.env_matters:
            env = _env_value()
            if env is _UNKNOWN or (env is not self.env and env != self.env):
                return False
        params = d.get("_parameters")
        if params is not self.parameters or type(params) is not dict:
            return False
        names = self.names
        tensors = self.tensors
        for k in range(self.count):
            t = tensors[k]
            if (<dict>params).get(names[k]) is not t:
                return False
            if t is None:
                continue
            if t._version != self.versions[k] or t.data_ptr() != self.pointers[k]:
                return False
            if grad and t.requires_grad:
                return False
        return True

    cdef bint requires_grad(self) except -1:
        """Whether one of the tensors requires grad."""
        cdef Py_ssize_t k
        for k in range(self.count):
            t = self.tensors[k]
            if t is not None and t.requires_grad:
                return True
        return False


cdef class EvalState(Packing):
    """An ``LSTM``'s ``Packing``, plus what else the packing depends on: the variant
    settings and the list of the layer-directions' weight names."""
    cdef object flat_names
    cdef object variants

    def __init__(self, module, impl, dtype, list packed, list tensors, list names, variants):
        """As ``Packing``; ``tensors`` in torch's order then the peepholes; ``variants`` the
        module's (peephole, clip, cell_clip, cifg) then."""
        d = module.__dict__
        H, R = d["hidden_size"], d["proj_size"] or d["hidden_size"]
        D = 2 if d["bidirectional"] else 1
        Packing.__init__(self, module, impl, dtype, packed, tensors, names,
                         LayerInputs(np.dtype(dtype), d["input_size"], H, R,
                                     d["num_layers"] * D))
        self.flat_names = d.get("_flat_weights_names")
        self.variants = variants

    cdef bint valid(self, dict d, bint grad) except -1:
        if d.get("_flat_weights_names") is not self.flat_names:
            return False
        v = self.variants
        if (d.get("peephole") != v[0] or d.get("clip") != v[1] or d.get("cell_clip") != v[2]
                or d.get("cifg") != v[3]):
            return False
        return Packing.valid(self, d, grad)


def make_state(module, impl, dtype, packed, tensors, names, variants):
    """An ``EvalState`` for ``LSTM._packed_weights`` to keep with its packing."""
    return EvalState(module, impl, dtype, list(packed), list(tensors), list(names), variants)


cdef inline object _array(object t, int typenum, bint *requires=NULL):
    """t's memory as an ndarray of ``typenum`` when t is a plain CPU tensor that is not
    functorch-wrapped, else None. A tensor that requires grad gives None, or, where the
    caller asks (``requires``), its detached memory, and ``requires[0]`` is set."""
    if type(t) is not _Tensor or not t.is_cpu or _wrapped(t):
        return None
    if t.requires_grad:
        if requires == NULL:
            return None
        requires[0] = True
        t = t.detach()
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


cdef inline bint _shape1(object a, Py_ssize_t d0):
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_DIMS(arr)[0] == d0


cdef inline bint _shape2(object a, Py_ssize_t d0, Py_ssize_t d1):
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp *s = cnp.PyArray_DIMS(arr)
    return cnp.PyArray_NDIM(arr) == 2 and s[0] == d0 and s[1] == d1


cdef inline object _view(object a, int nd, Py_ssize_t d0, Py_ssize_t d1=0, Py_ssize_t d2=0):
    """The C-contiguous array ``a`` as shape (d0,), (d0, d1) or (d0, d1, d2) (``nd`` axes): a
    view, without ``reshape``'s Python call."""
    cdef cnp.npy_intp dims[3]
    cdef cnp.PyArray_Dims shape
    dims[0], dims[1], dims[2] = d0, d1, d2
    shape.ptr = dims
    shape.len = nd
    return cnp.PyArray_Newshape(<cnp.ndarray>a, &shape, cnp.NPY_CORDER)


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


# --- LSTMCell: one step, without a gradient or through the compiled autograd Function ----

_CELL_NAMES = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]

# lstm_fast.torch's objects for the cell (setup_cell)
cdef object _cell_apply = None          # _CompiledCell's Function.apply (no Python prologue)
cdef object _functorch_active = None
cdef object _first_order_backward = None    # cell_backward under lstm_fast.torch._first_order
cdef object _pack_cell = None           # (impl, w_ih, w_hh, b_ih, b_hh) -> packed weights


def setup_cell(apply, functorch_active, first_order_backward, pack_cell):
    """Called once by ``lstm_fast.torch`` with its compiled cell Function's ``apply``, torch's
    functorch switch, ``cell_backward`` wrapped by its ``_first_order`` and its cell packer."""
    global _cell_apply, _functorch_active, _first_order_backward, _pack_cell
    _cell_apply, _functorch_active = apply, functorch_active
    _first_order_backward, _pack_cell = first_order_backward, pack_cell


def make_cell_state(module, impl, dtype, packed, tensors):
    """A ``Packing`` for ``LSTMCell._packed_weights`` to keep with its packing: ``tensors``
    (w_ih, w_hh, b_ih, b_hh), the biases None without them, ``packed`` made from them."""
    tensors = list(tensors)
    I, H = tensors[0].shape[1], tensors[1].shape[1]
    return Packing(module, impl, dtype, [packed], tensors, list(_CELL_NAMES),
                   LayerInputs(np.dtype(dtype), I, H, H, 1))


cdef class CellRun:
    """One step's forward with gradients, done before ``Function.apply`` and handed to the
    Function as its ``run`` argument (kept on ctx for backward): the packing it ran with,
    the kernel's inputs (x (1, B, I), h0 and c0 (B, H), B = 1 unbatched) and saved
    arrays (y, gates, c), and the outputs as tensors until the Function's forward returns
    them."""
    cdef Packing st
    cdef object packed
    cdef object generation
    cdef int num_threads
    cdef Py_ssize_t B
    cdef bint unbatched
    cdef object x, h0, c0, y, gates, c
    cdef object h_out, c_out


cdef inline object _caller_state(object a, Py_ssize_t B, Py_ssize_t H, bint unbatched):
    """A state array (B, H) for the kernels as the caller's: (B, H), or (H,) unbatched."""
    return _view(a, 1, H) if unbatched else a


def cell_forward(module, input, hx):
    """``(h, c)`` of ``LSTMCell.forward(input, hx)`` when it runs on our kernels with valid
    packed weights (entry 8 of the module's ``_packed``): without a gradient, the kernel's
    arrays as tensors; with one, the kernel run here and handed to the compiled Function.
    Else None (the Python route: torch's errors, fallbacks, packing after a change)."""
    cdef Packing st
    cdef CellRun run
    cdef Py_ssize_t I, H, B
    cdef cnp.ndarray xa
    cdef cnp.npy_intp *dims
    cdef int nd
    cdef bint unbatched, need = False
    d = module.__dict__
    entry = d.get("_packed")
    if type(entry) is not tuple or len(<tuple>entry) < 9:
        return None
    state = (<tuple>entry)[8]
    if type(state) is not Packing:
        return None
    st = <Packing>state
    if _is_tracing() or _any_autocast():
        return None
    grad = _is_grad_enabled()
    if not st.valid(d, False):
        return None
    I, H = st.inputs.input_size, st.inputs.hidden_size
    # the input: (B, I) or unbatched (I,)
    x = _array(input, st.typenum, &need)
    if x is None:
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    dims = cnp.PyArray_DIMS(xa)
    if nd != 1 and nd != 2:
        return None
    unbatched = nd == 1
    B = 1 if unbatched else dims[0]
    if dims[nd - 1] != I or B == 0 or I == 0 or H == 0:
        return None
    x = _view(_contiguous(x), 3, 1, B, I)
    # the states: hx's shaped as the input, or zeros
    if hx is None:
        h0 = c0 = None
        zh, zc = st.inputs.zeros(B)
        h0s, c0s = _view(zh, 2, B, H), _view(zc, 2, B, H)
    else:
        if (type(hx) is not tuple and type(hx) is not list) or len(hx) != 2:
            return None
        h0, c0 = hx[0], hx[1]
        h0s = _array(h0, st.typenum, &need)
        if h0s is None:
            return None
        c0s = _array(c0, st.typenum, &need)
        if c0s is None:
            return None
        if unbatched:
            if not _shape1(h0s, H) or not _shape1(c0s, H):
                return None
        elif not _shape2(h0s, B, H) or not _shape2(c0s, B, H):
            return None
        h0s, c0s = _contiguous(h0s), _contiguous(c0s)
        if unbatched:
            h0s, c0s = _view(h0s, 2, 1, H), _view(c0s, 2, 1, H)
    need = grad and (need or st.requires_grad())
    if need and _functorch_active():
        return None     # the Python route's full Function.apply
    impl = st.impl
    packed = st.packed[0]
    inputs = st.inputs
    num_threads = threads_for(1, B, I, H)
    rf = _torch_globals.get("run_forward")
    direct = rf is _route_run_forward
    if not need:
        if direct:
            inputs.call_forward(packed, x, h0s, c0s, num_threads, False, None)
            h_n, c_n = inputs.h_n, inputs.c_n
            inputs.y = inputs.h_n = inputs.c_n = None
        else:       # lstm_fast.torch.run_forward replaced (a test's spy): called as the
            _, h_n, c_n, _ = rf(impl, packed, x, h0s, c0s, num_threads, None, False, False)
        return (_from_numpy(_caller_state(h_n, B, H, unbatched)),
                _from_numpy(_caller_state(c_n, B, H, unbatched)))
    # with a gradient: the kernel's forward, saving, then the Function around its results
    run = CellRun.__new__(CellRun)
    if direct:
        inputs.call_forward(packed, x, h0s, c0s, num_threads, True, None)
        run.y, h_n, c_n, run.gates, run.c = inputs.y, inputs.h_n, inputs.c_n, inputs.gates, \
            inputs.c
        inputs.y = inputs.h_n = inputs.c_n = inputs.gates = inputs.c = None
    else:
        run.y, h_n, c_n, cache = rf(impl, packed, x, h0s, c0s, num_threads, None, False, True)
        run.gates, run.c = cache.saved[4], cache.saved[5]
    run.st, run.packed, run.num_threads = st, packed, num_threads
    run.generation = getattr(packed, "generation", 0)
    run.B, run.unbatched = B, unbatched
    run.x, run.h0, run.c0 = x, h0s, c0s
    run.h_out = _from_numpy(_caller_state(h_n, B, H, unbatched))
    run.c_out = _from_numpy(_caller_state(c_n, B, H, unbatched))
    t = st.tensors
    return _cell_apply(input, h0, c0, t[0], t[1], t[2], t[3], run)


def cell_function_forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, CellRun run):
    """``forward`` of lstm_fast.torch's compiled cell Function: the step already ran
    (``cell_forward``); its inputs are saved for autograd's in-place check (backward reads
    their memory, and repacks from the weights if the packing was written over)."""
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    ctx.set_materialize_grads(False)
    ctx.run = run
    h, c = run.h_out, run.c_out
    run.h_out = run.c_out = None    # (kept on ctx, they would hold their own graph: a cycle)
    return h, c


cdef inline object _grad_rows(object g, Py_ssize_t B, Py_ssize_t H):
    """An incoming gradient (B, H) or (H,) (any strides) as a C-contiguous (1, B, H) array."""
    if g.requires_grad:
        g = g.detach()
    return _view(_contiguous(g.numpy()), 3, 1, B, H)


cdef inline object _grad(object need, object a):
    return _from_numpy(a) if need else None


def cell_function_backward(ctx, dh, dc):
    """``backward`` of the compiled cell Function: the kernel's backward of the step. Under
    ``create_graph`` (grad mode on here), through lstm_fast.torch's ``_first_order``."""
    cdef CellRun run
    cdef Packing st
    cdef LayerInputs inputs
    cdef Py_ssize_t B, H, I
    if _is_grad_enabled():
        return _first_order_backward(ctx, dh, dc)
    run = <CellRun?>ctx.run
    st = run.st
    inputs = st.inputs
    saved = ctx.saved_tensors       # autograd's check: no input changed in place
    packed = run.packed
    if getattr(packed, "generation", 0) != run.generation:  # written over since: pack again
        packed = _pack_cell(st.impl, saved[3], saved[4], saved[5], saved[6])
    B, H, I = run.B, inputs.hidden_size, inputs.input_size
    zh, zc = inputs.zeros(B)
    dy = zh if dh is None else _grad_rows(dh, B, H)
    dc_n = zc if dc is None else _grad_rows(dc, B, H)
    inputs.call_backward(packed, run.x, run.h0, run.c0, run.y, run.gates, run.c, dy, zh, dc_n,
                         run.num_threads)
    dx, dw_ih, dw_hh, db, db2, dh0, dc0 = (inputs.dx, inputs.dw_ih, inputs.dw_hh, inputs.db,
                                           inputs.db2, inputs.dh0, inputs.dc0)
    inputs.dx = inputs.dw_ih = inputs.dw_hh = inputs.db = inputs.db2 = None
    inputs.dh0 = inputs.dc0 = inputs.dw_hr = None
    if db is not None and db2 is None:
        db2 = db.copy()
    if run.unbatched:
        dx, dh0, dc0 = _view(dx, 1, I), _view(dh0, 1, H), _view(dc0, 1, H)
    else:
        dx = _view(dx, 2, B, I)
    need = ctx.needs_input_grad
    return (_grad(need[0], dx), _grad(need[1], dh0), _grad(need[2], dc0),
            _grad(need[3], dw_ih), _grad(need[4], dw_hh), _grad(need[5], db),
            _grad(need[6], db2), None)
