# Types for compiling _validation.py with Cython (an "augmenting .pxd"): the .py stays the
# one source of the checks and runs as plain Python where the extension is not built.
# Only the per-call fast path of LSTM is typed; everything else compiles as Python.
cimport cython
cimport numpy as cnp

ctypedef cnp.npy_intp *intp_p

@cython.locals(arr=cnp.ndarray, shape=intp_p, strides=intp_p, step=Py_ssize_t)
cdef bint _ready(object a, object dtype, Py_ssize_t itemsize, Py_ssize_t d0, Py_ssize_t d1,
                 Py_ssize_t d2) except -1

cdef class LayerInputs:
    cdef readonly object dtype
    cdef readonly Py_ssize_t itemsize, input_size, hidden_size, out_size, num_states, batch
    cdef readonly object zero_h, zero_c

    cpdef tuple zeros(self, Py_ssize_t B)

    cpdef int threads(self, Py_ssize_t T, Py_ssize_t B) except -1

    @cython.locals(n=Py_ssize_t, B=Py_ssize_t, xa=cnp.ndarray)
    cpdef tuple forward(self, object x, object hx, bint batch_first)

    @cython.locals(n=Py_ssize_t, B=Py_ssize_t)
    cpdef tuple backward(self, object g, object grad_hx, tuple shape, bint unbatched,
                         bint batch_first)

cdef int _cpus, _num_threads

cpdef int threads_for(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) except -1
