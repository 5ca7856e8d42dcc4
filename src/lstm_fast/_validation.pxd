# Types for compiling _validation.py with Cython (an "augmenting .pxd"): the .py stays the
# one source of the checks and runs as plain Python where the extension is not built.
# Only the per-call fast path of LSTM is typed; everything else compiles as Python.
cimport cython
cimport numpy as cnp

ctypedef cnp.npy_intp *intp_p

@cython.locals(arr=cnp.ndarray, shape=intp_p, strides=intp_p, step=Py_ssize_t)
cdef bint _ready(object a, object dtype, Py_ssize_t itemsize, Py_ssize_t d0, Py_ssize_t d1,
                 Py_ssize_t d2) except -1

# The C backend's direct entry points (backends/_c.pyx ``bind_layer`` sets them): the
# results go to the LayerInputs' slots, no tuples; ``object`` arguments (the types are _c's).
ctypedef int (*kernel_forward_t)(object inputs, object packed, object x, object h0,
                                 object c0, int num_threads, bint save, object out) except -1
ctypedef int (*kernel_backward_t)(object inputs, object packed, object x, object h0,
                                  object c0, object y, object gates, object c, object dy,
                                  object dh_n, object dc_n, int num_threads) except -1

cdef class LayerInputs:
    cdef readonly object dtype
    cdef readonly Py_ssize_t itemsize, input_size, hidden_size, out_size, num_states, batch
    cdef readonly object zero_h, zero_c
    # the layer's backend, packed weights (list per layer-direction), names and options
    cdef public object impl
    cdef public list packed
    cdef public list names
    cdef public double recurrent_dropout, zoneout
    cdef public bint layer_norm, peephole, cifg
    # set by the C backend's bind_layer: call it as C functions
    cdef public bint direct
    cdef kernel_forward_t c_forward
    cdef kernel_backward_t c_backward
    # the last call's results (call_forward / call_backward), taken by the route
    cdef public object y, h_n, c_n, gates, c
    cdef public object dx, dw_ih, dw_hh, db, db2, dh0, dc0, dw_hr

    cpdef tuple zeros(self, Py_ssize_t B)

    cpdef int _batch(self, Py_ssize_t B) except -1

    cpdef bint c_order(self, object a) except -1

    cpdef int threads(self, Py_ssize_t T, Py_ssize_t B) except -1

    cpdef int call_forward(self, object packed, object x, object h0, object c0, int num_threads,
                           bint save, object out) except -1

    cpdef int call_backward(self, object packed, object x, object h0, object c0, object y,
                            object gates, object c, object dy, object dh_n, object dc_n,
                            int num_threads) except -1

    @cython.locals(n=Py_ssize_t, B=Py_ssize_t, xa=cnp.ndarray)
    cpdef tuple forward(self, object x, object hx, bint batch_first)

    @cython.locals(n=Py_ssize_t, B=Py_ssize_t)
    cpdef tuple backward(self, object g, object grad_hx, tuple shape, bint unbatched,
                         bint batch_first)

cdef int _cpus, _num_threads

cpdef int threads_for(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) except -1
