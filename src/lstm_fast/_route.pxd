# Types for compiling _route.py with Cython (an "augmenting .pxd", as _validation.pxd): the
# .py stays the one source and runs as plain Python where the extension is not built.
# cpdef: the layer's calls of run_forward/run_backward are C calls inside the module.
cimport cython
cimport numpy as cnp
from lstm_fast._validation cimport LayerInputs

cdef object _NOT_SAVED

cdef class LSTMCache:
    cdef readonly object impl, packed, saved, plan
    cdef readonly bint reverse

@cython.locals(cache=LSTMCache)
cdef LSTMCache _make_cache(object impl, object packed, object saved, object plan, bint reverse)
cdef tuple _FULL

cdef class LayerBase:
    # LSTM's fields read on every call (LSTM is a Python subclass: its other attributes
    # stay in its __dict__)
    cdef public LayerInputs _inputs
    cdef public object _cache, weight_dtype, grads
    cdef public bint training, batch_first

cpdef tuple run_forward(object impl, object packed, object x, object h0, object c0,
                        int num_threads, object plan=*, bint reverse=*, bint save=*,
                        object out=*, object rdrop=*, object zoneout=*, bint ln=*,
                        LayerInputs inputs=*)

@cython.locals(saved=tuple)
cpdef tuple run_backward(LSTMCache cache, object dy, object dh_n, object dc_n, int num_threads,
                         object out=*, object dpeephole=*, object dlayer_norm=*,
                         LayerInputs inputs=*, bint need_dx=*)

cpdef tuple bias_grads(object db, object db2=*)

@cython.locals(out=dict, k=int)
cpdef dict grads_by_name(tuple names, object dw_ih, object dw_hh, object db, object dw_hr,
                         object dpeephole=*, object dlayer_norm=*, object db2=*)

cpdef dict direction_grads(LayerInputs inputs, int k, object dw_ih, object dw_hh, object db,
                           object dw_hr, object dp, object dln=*, object db2=*)

@cython.locals(inputs=LayerInputs, T=Py_ssize_t, B=Py_ssize_t, num_threads=int, D=int, k=int, d=int, shape=tuple,
               k_layer=int, caches=list, masks=object, xa=cnp.ndarray)
cpdef tuple layer_forward(LayerBase layer, object x, object hx, object lengths, object save)

@cython.locals(inputs=LayerInputs, caches=list, shape=tuple, num_threads=int, D=int, k=int, d=int,
               k_layer=int, R=Py_ssize_t, H=Py_ssize_t)
cpdef tuple layer_backward(LayerBase layer, object grad_output, object grad_hx)
