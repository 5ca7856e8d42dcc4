# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Backend "c": the binding of the C kernel (csrc/lstm.h).

Arrays to pointers, the GIL released around every kernel call, status codes to
exceptions; the four functions of the backend contract (``lstm_fast.backends``):
``pack``, ``forward``, ``backward``, ``step``, and ``pack_bf16`` / ``pack_int8`` (bfloat16
or int8 weights for inference: ``forward`` without saving and ``step`` run on such a pack). Arguments arrive validated by the
callers (``_validation``); nothing is checked here. Outputs and the scratch space are
NumPy arrays allocated here (or given by the caller: ``forward(out=...)``); the kernel
never allocates. The workspace is kept with the packed weights and reused by the next
call that finds it free.
"""
import os

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.ref cimport Py_INCREF
from lstm_fast._validation cimport LayerInputs

cnp.import_array()

cdef extern from "_bufcache.h":
    object bc_capsule()
    bint bc_wanted(size_t nbytes)
    void bc_release()
    void bc_set_limit(size_t limit)
    void bc_stats(size_t *kept, size_t *blocks, size_t *limit, size_t *reused)
    void bc_advise_huge(void *p, size_t n)
    size_t BC_MIN, BC_SLOTS

try:   # NumPy's switch for advising huge pages to its large arrays, followed for the packs
    from numpy._core.multiarray import _get_madvise_hugepage
except ImportError:   # NumPy 1.x
    from numpy.core.multiarray import _get_madvise_hugepage

cdef cnp.npy_intp _HUGE_PACK = 4 << 20   # packs from 4 MiB get huge pages (bc_advise_huge)

# NEP 49 handler for the binding's large arrays (_bufcache.h), set only around them in _empty
_BUFCACHE = bc_capsule()


def buffer_cache_info():
    """The buffer cache's state (``lstm_fast.buffer_cache_info``)."""
    cdef size_t kept, blocks, limit, reused
    bc_stats(&kept, &blocks, &limit, &reused)
    return {"kept_bytes": kept, "kept_blocks": blocks, "limit_bytes": limit,
            "reused": reused, "min_block_bytes": BC_MIN, "max_blocks": BC_SLOTS}


def set_buffer_cache_limit(size_t limit):
    """Frees the kept blocks and sets the limit in bytes (validated by the caller)."""
    bc_set_limit(limit)


def release_buffer_cache():
    """Frees the kept blocks."""
    bc_release()


def _with_buffer_cache(fn):
    """``fn()`` with the buffer cache's handler as NumPy's allocator: for the tests of its
    calloc and realloc, which the binding itself never calls."""
    previous = cnp.PyDataMem_SetHandler(_BUFCACHE)
    try:
        return fn()
    finally:
        cnp.PyDataMem_SetHandler(previous)


cdef extern from "numpy/arrayobject.h":
    object _new_from_descr "PyArray_NewFromDescr" (
        void *subtype, void *descr, int nd, cnp.npy_intp *dims, cnp.npy_intp *strides,
        void *data, int flags, void *obj)
    void *_descr_from_type "PyArray_DescrFromType" (int typenum)   # a new reference

_LEVELS = {"portable": LSTM_SIMD_PORTABLE, "avx2": LSTM_SIMD_AVX2, "avx512": LSTM_SIMD_AVX512}
_ENV_SIMD = "LSTM_FAST_SIMD"
cdef object _level_error = None   # why LSTM_FAST_SIMD could not be honoured, if it could not


def cpu_simd_level():
    """Widest SIMD level this CPU supports: "avx512", "avx2" or "portable"."""
    return lstm_simd_name(lstm_cpu_simd_level()).decode()


def simd_level():
    """SIMD level the kernels use (the CPU's widest, or the one forced by LSTM_FAST_SIMD)."""
    return lstm_simd_name(<lstm_simd_level>lstm_get_simd_level()).decode()


def set_simd_level(name):
    """Use SIMD level ``name`` from now on (for tests). Weights packed before must be
    packed again. ValueError for an unknown name, RuntimeError if the CPU lacks it."""
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
    if want:
        try:
            set_simd_level(want)
        except (ValueError, RuntimeError) as e:
            _level_error = f"{_ENV_SIMD}={want!r}: {e}"


_init_from_env()


def build_info():
    """Dict: compiler, flags, SIMD levels compiled, threading library, levels in use, the
    running CPU (vendor, family, model) and its caches (bytes; logical CPUs sharing)."""
    info = dict(item.partition("=")[::2] for item in lstm_build_info().decode().split(";"))
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
        "instruction_rates": instruction_rates(),
        "amx_rates": amx_rates(),
        "bf16": bf16_path(),
        "int8": int8_path(),
        "int8_dynamic": int8_dynamic_path(),
    }


# a switch's Python value (None: automatic) and the C mode
_MODES = {None: -1, False: 0, True: 1}
_MODE_VALUES = {-1: None, 0: False, 1: True}


def set_bwd_interleave(interleave):
    """Whether the backward runs its whole-sequence products (dw_ih, dw_hh, and dx where
    the steps do not make it) interleaved with its steps, a block of 256 rows of the gate
    gradients as soon as the steps have written it: True wherever the call allows it
    (plain LSTM without a projection, float32 words, no recurrent dropout), False never
    (after the loop), None automatic (the default: where the gate gradients of the whole
    sequence exceed half the running CPU's L2 and a block of them fits in half of it).
    The same bits every way; for tests and benchmarks. Returns the previous setting."""
    if not (interleave is None or type(interleave) is bool):
        raise ValueError(f"interleave must be True, False or None, got {interleave!r}")
    prev = _MODE_VALUES[lstm_get_bwd_interleave()]
    lstm_set_bwd_interleave(_MODES[interleave])
    return prev


_CLAIMS = {None: -1, False: 0, True: 1, "others-first": 2}
_CLAIMS_VALUES = {v: k for k, v in _CLAIMS.items()}


def set_claims(mode):
    """Whether the steps' hidden blocks, where the threads split them, are claimed at run
    time (each thread its own part first, then what is left of the others', in chunks), so
    that a thread slowed by another process or by the hypervisor does less of each step
    instead of holding the others at the step's barrier: True wherever the threads split
    the units, False never (each thread its own part), None automatic (the default: where a
    step has B >= 8 rows and a chunk's products are >= 128K FLOPs), ``"others-first"`` as
    True with every thread claiming from the other threads' parts first (tests: blocks
    computed away from their part). The same bits every way; for tests and benchmarks.
    Returns the previous setting."""
    if not (mode is None or type(mode) is bool or mode == "others-first"):
        raise ValueError(f"mode must be True, False, None or 'others-first', got {mode!r}")
    prev = _CLAIMS_VALUES[lstm_get_claims()]
    lstm_set_claims(_CLAIMS[mode])
    return prev


def set_bf16_native(native):
    """How the bfloat16-weight forward computes its products: True with vdpbf16ps
    (RuntimeError if the CPU lacks AVX512_BF16), False always emulated with float32 FMAs,
    None automatic (the default). Both give the same bits; for tests and benchmarks."""
    if native not in _MODES:
        raise ValueError(f"native must be True, False or None, got {native!r}")
    if lstm_set_bf16_mode(_MODES[native]) != LSTM_OK:
        raise RuntimeError("this CPU has no AVX512_BF16 (vdpbf16ps): bfloat16 products "
                           "can only be emulated here")


def instruction_rates():
    """The running CPU's per-core throughput of the products' instructions, measured once
    per process (register-only, ~0.3 ms; csrc/cpu.c): dict with ``fp32_fma`` (GFLOP/s,
    vfmadd231ps), ``bf16_dot`` (GFLOP/s, vdpbf16ps), ``int8_dot`` (GOP/s, vpdpbusd), each
    None where the CPU lacks the instruction, ``fp32_bits`` / ``int8_bits`` (the vector
    width measured: 512 or 256) and ``seconds`` (what measuring took). A vdpbf16ps lane
    counts 4 FLOP (2 products, 2 adds), a vpdpbusd lane 8 OP."""
    cdef double f, b, i8, sec
    cdef int fb, ib
    lstm_instruction_rates(&f, &b, &i8, &fb, &ib, &sec)
    return {"fp32_fma": f or None, "bf16_dot": b or None, "int8_dot": i8 or None,
            "fp32_bits": fb, "int8_bits": ib, "seconds": sec}


def amx_rates():
    """The AMX tiles' per-core throughput, measured at the first call (tile-only loops,
    ~1 ms; csrc/cpu.c; the kernels never ask for it): dict with ``bf16`` (GFLOP/s,
    tdpbf16ps: 16 x 16 outputs x 32 products, 16384 FLOP each) and ``int8`` (GOP/s,
    tdpbusd: 32768 OP each), each None where the CPU or the OS lacks AMX-BF16 / AMX-INT8,
    and ``seconds``. The peak of the AMX paths in the benchmarks' rooflines."""
    cdef double b, i8, sec
    lstm_amx_instruction_rates(&b, &i8, &sec)
    return {"bf16": b or None, "int8": i8 or None, "seconds": sec}


def bf16_native_rule(fp32_rate, bf16_rate, B):
    """The automatic bf16 choice as a function of per-core rates (GFLOP/s; 0 or None:
    the instruction is missing) and the rows B: True (vdpbf16ps) at B = 1 and at every B
    where the bf16 dot runs at >= 1.5x the fp32 FMA rate (csrc/lstm.c)."""
    return bool(lstm_bf16_native_rule(fp32_rate or 0.0, bf16_rate or 0.0, B))


def cpu_has_amx_bf16():
    """Whether AMX-TILE and AMX-BF16 (tdpbf16ps) are usable here (csrc/cpu.c)."""
    return bool(lstm_cpu_has_amx_bf16())


def set_bf16_amx(on):
    """AMX (tdpbf16ps) for the bfloat16-weight forward and bfloat16 training's backward
    products, where the CPU has AMX-BF16: None
    automatic (the default: at every B, unless ``set_bf16_native`` forced a path), True
    always (RuntimeError where the CPU or the OS lacks AMX-BF16), False never. Its
    sums differ from the other paths' in the last bits (csrc/bf16.template.c); within
    bfloat16's own error of the float64 reference (tests/test_bf16_amx.py,
    tests/test_bf16_training.py)."""
    if not (on is None or type(on) is bool):
        raise ValueError(f"on must be True, False or None, got {on!r}")
    if lstm_set_bf16_amx(_MODES[on]) != LSTM_OK:
        raise RuntimeError("this CPU (or its OS) has no usable AMX-BF16 (tdpbf16ps)")


def bf16_path(B=1, I=1, H=1):
    """What a bfloat16-weight forward of this shape uses at the SIMD level in force:
    "AMX (tdpbf16ps)", "native (vdpbf16ps)" or "emulated (...)"."""
    if lstm_bf16_path(B) == 2:
        return ("AMX (tdpbf16ps, AMX-BF16" +
                ("; set_bf16_amx(True))" if lstm_get_bf16_amx() == 1 else
                 "; any batch split gives the same bits)"))
    if lstm_bf16_native(B, I, H):
        return "native (vdpbf16ps, AVX512_BF16)"
    why = ("the CPU has no AVX512_BF16; " if not lstm_cpu_has_avx512bf16() else
           "emulation forced (set_bf16_native(False)); " if lstm_get_bf16_mode() == 0 else
           f"SIMD level {simd_level()} in force; " if simd_level() != "avx512" else
           _bf16_rates_reason())
    return f"emulated ({why}float32 FMAs in vdpbf16ps's order and rounding, same bits)"


def _bf16_rates_reason():
    r = instruction_rates()
    return (f"B > 1 and vdpbf16ps measured at {r['bf16_dot'] or 0:.0f} GFLOP/s per core, "
            f"below 1.5x the fp32 FMA's {r['fp32_fma'] or 0:.0f}; ")


def rates_summary():
    """One line: the measured per-core rates (instruction_rates) and the bf16 choice."""
    r = instruction_rates()
    parts = [f"fp32 FMA {r['fp32_fma']:.0f} GFLOP/s ({r['fp32_bits']}-bit)"
             if r["fp32_fma"] else "fp32 FMA: no AVX2/AVX-512"]
    if r["bf16_dot"]:
        ratio = r["bf16_dot"] / r["fp32_fma"] if r["fp32_fma"] else float("inf")
        parts.append(f"vdpbf16ps {r['bf16_dot']:.0f} GFLOP/s ({ratio:.2f}x fp32: bf16 "
                     f"native {'at every B' if lstm_bf16_native_rule(r['fp32_fma'], r['bf16_dot'], 2) else 'at B = 1 only'})")
    else:
        parts.append("vdpbf16ps: none")
    parts.append(f"vpdpbusd {r['int8_dot']:.0f} GOP/s ({r['int8_bits']}-bit)"
                 if r["int8_dot"] else "vpdpbusd: none")
    line = ", ".join(parts) + f" (1 core, register-only, measured in {r['seconds'] * 1e3:.2f} ms)"
    if cpu_has_amx_bf16() or lstm_cpu_has_amx_int8():
        a = amx_rates()
        tiles = [f"tdpbf16ps {a['bf16']:.0f} GFLOP/s" if a["bf16"] else "tdpbf16ps: none",
                 f"tdpbusd {a['int8']:.0f} GOP/s" if a["int8"] else "tdpbusd: none"]
        line += f"; AMX tiles: {', '.join(tiles)} (1 core, tile-only)"
    return line


def int8_path():
    """What an int8-weight forward uses at the SIMD level in force."""
    lv = simd_level()
    if lv == "portable":
        return ("weight-only int8, widened to float32 (portable level: each FMA computed "
                "exactly in float64, slow; same bits as AVX2/AVX-512)")
    return (f"weight-only int8, widened to float32 in registers, float32 FMAs ({lv}; "
            f"B > {2 if lv == 'avx2' else 6}: the pack's float32 copy of the int8 values)")


def set_int8_dynamic_native(native):
    """How the int8_dynamic forward computes its int32 sums: None (the default) with
    AMX or vpdpbusd where the CPU has them (see set_int8_dynamic_path), False always
    emulated (vpmaddwd; portable C at the portable level). The same sums either way; for
    tests and benchmarks."""
    if native not in (None, False):
        raise ValueError(f"native must be None or False, got {native!r}")
    lstm_set_i8d_mode(-1 if native is None else 0)


def cpu_has_avx512bf16():
    """True if the CPU has AVX512_BF16 (vdpbf16ps): ``set_bf16_native(True)`` is possible."""
    return bool(lstm_cpu_has_avx512bf16())


def cpu_has_amx_int8():
    """True if AMX-INT8 can be used here: the CPU has AMX-TILE and AMX-INT8 (cpuid leaf 7),
    the OS saves the tile state and (Linux) granted it to this process."""
    return bool(lstm_cpu_has_amx_int8())


_I8D_PATHS = {"auto": -1, "emulated": 0, "vnni": 1, "amx": 2}


def set_int8_dynamic_path(path):
    """How the int8_dynamic forward computes its int32 sums: "auto" (the default: AMX's
    tdpbusd where the CPU has AMX-INT8 and the OS grants the tile state, at the AVX-512
    level; else vpdpbusd where the CPU has AVX512_VNNI or AVX-VNNI; else the emulation),
    "vnni" (vpdpbusd where the CPU has it, never AMX), "emulated", or "amx" (RuntimeError
    where AMX cannot be used; at the AVX2 and portable levels as "vnni"). The same int32
    sums every way, so the same outputs bit for bit; for tests and benchmarks."""
    if path not in _I8D_PATHS:
        raise ValueError(f"path must be one of {', '.join(map(repr, _I8D_PATHS))}, "
                         f"got {path!r}")
    if lstm_set_i8d_mode(_I8D_PATHS[path]) != LSTM_OK:
        raise RuntimeError("AMX-INT8 cannot be used here (the CPU lacks AMX-TILE or AMX-INT8, "
                           "or the OS did not grant the tile state)")


def int8_dynamic_path(B=64):
    """What an int8_dynamic forward (x and h quantized per step) with B rows per step
    uses at the SIMD level in force."""
    lv = simd_level()
    p = lstm_i8d_path(B)
    if p == 2:
        b0 = next(b for b in range(1, 65) if lstm_i8d_path(b) == 2)
        below = f"; B < {b0}: vpdpbusd" if b0 > 1 else ""
        return ("int8 weights, x and h quantized per row per step, int32 sums by AMX "
                f"(tdpbusd, AMX-INT8; tiles of 16 rows{below})")
    if p == 1:
        why = ("; AMX not used: forced (set_int8_dynamic_path('vnni'))"
               if lstm_get_i8d_mode() == 1 and lstm_cpu_has_amx_int8() else "")
        return (f"int8 weights, x and h quantized per row per step, int32 sums by vpdpbusd "
                f"({'AVX512_VNNI' if lv == 'avx512' else 'AVX-VNNI'}{why})")
    why = ("portable level" if lv == "portable" else
           "emulation forced (set_int8_dynamic_native(False))" if lstm_get_i8d_mode() == 0
           else f"the CPU has no {'AVX512_VNNI' if lv == 'avx512' else 'AVX-VNNI'}")
    return (f"int8 weights, x and h quantized per row per step, int32 sums emulated "
            f"({why}; same sums)")


def pool_contended():
    """True while the thread pool's recent 2-thread jobs mostly waited (see pool.h)."""
    return lstm_pool_contended() != 0


cdef int _raise_status(int status) except -1:
    if status == LSTM_ERR_PACKED:
        raise ValueError("packed weights do not match this call (dtype, I, H) or were packed "
                         "for another SIMD level: pack them again")
    if status == LSTM_ERR_SIMD:
        raise RuntimeError("requested SIMD level is not supported by this CPU")
    raise ValueError(f"lstm_fast C kernel rejected its arguments (status {status})")


cdef class Packed:
    """Weights in the kernel's layout, for the SIMD level in use when packed."""
    cdef readonly object buf
    cdef readonly int64_t input_size, hidden_size, proj_size   # proj_size 0: no projection
    cdef readonly object dtype
    cdef readonly object weight_dtype   # "bfloat16" / "int8" for a pack_bf16 / pack_int8 pack,
                                        # else dtype's name
    cdef readonly bint has_bias
    cdef int typenum
    cdef int wkind             # weight_dtype as a C value: _FULL, _BF16, _INT8
    cdef readonly int64_t generation   # times written over by pack(..., out=this)
    cdef object _ws            # workspace, reused by the next call that finds it free
    cdef bint _ws_busy
    cdef readonly object variant   # backends.Variant or None (plain)
    cdef lstm_variant _var         # its C form (peephole points into variant.peephole)
    cdef const lstm_variant *_varp # &_var, or NULL for the plain LSTM
    cdef object _bf16_src          # pack_bf16: (w_ih, w_hh) as given (bfloat16 training)
    cdef object _bf16_f32          # ... and the float32 pack of them rounded, made by the
                                   # first backward (None until then)

    def __repr__(self):
        return (f"<lstm_fast.backends._c.Packed I={self.input_size} H={self.hidden_size} "
                f"P={self.proj_size} {self.dtype} weights {self.weight_dtype}>")


cdef inline cnp.ndarray _empty(int nd, cnp.npy_intp *dims, int typenum, bint lines=False):
    """A new C-contiguous array whose data start on a cache line (64 bytes) once it is
    a page or more. NumPy's allocator gives large arrays 16-byte alignment (glibc's mmap
    chunk header), so every 64-byte vector load or store of the kernel's saved gates, c
    and outputs would span two cache lines: measured at (100,32,16,128) f32 (Intel Xeon,
    1 thread), the backward's cell spent a third of its time on those loads. The array's
    base is the byte buffer it views; from BC_MIN bytes that buffer comes from the buffer
    cache (_bufcache.h) while its limit is not 0. lines: on its own cache lines whatever
    its size (an array the kernel's threads update in place, each its own columns, step
    after step: db, dc0, the running c_n; at 2 threads, a line holding both threads'
    columns of a 16-byte aligned db went back and forth between the cores at every row of
    every step)."""
    cdef cnp.npy_intp n = 1, nbytes, off
    cdef int i
    for i in range(nd):
        n *= dims[i]
    if typenum == cnp.NPY_FLOAT32:
        nbytes = n * 4
    elif typenum == cnp.NPY_FLOAT64:
        nbytes = n * 8
    elif typenum == cnp.NPY_UINT16:   # bfloat16 training's saved gates and c (bf16 bits)
        nbytes = n * 2
    elif typenum == cnp.NPY_UINT8:
        nbytes = n
    else:                  # no other element type is made here; NumPy's own alignment
        nbytes = 0
    if nbytes < 4096 and not lines:
        return <cnp.ndarray>cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    nbytes += 64
    cdef cnp.ndarray raw
    cdef object previous
    if bc_wanted(<size_t>nbytes):   # large: through the buffer cache (_bufcache.h)
        previous = cnp.PyDataMem_SetHandler(_BUFCACHE)
        try:
            raw = <cnp.ndarray>cnp.PyArray_EMPTY(1, &nbytes, cnp.NPY_UINT8, 0)
        finally:
            cnp.PyDataMem_SetHandler(previous)
    else:
        raw = <cnp.ndarray>cnp.PyArray_EMPTY(1, &nbytes, cnp.NPY_UINT8, 0)
    cdef char *data = <char *>cnp.PyArray_DATA(raw)
    off = (64 - <size_t>data % 64) % 64
    cdef cnp.ndarray a = <cnp.ndarray>_new_from_descr(
        <void *>cnp.ndarray, _descr_from_type(typenum), nd, dims, NULL,
        data + off, cnp.NPY_ARRAY_CARRAY, NULL)   # steals the new descr reference
    Py_INCREF(raw)     # PyArray_SetBaseObject steals a reference
    cnp.PyArray_SetBaseObject(a, raw)
    return a


def bernoulli_mask(tuple shape, uint32_t k0, uint32_t k1, uint64_t t, double on, dtype):
    """A new (shape) array of ``dtype`` (float32 or float64): ``on`` where the Philox4x32-10
    word of the element (key (k0, k1); csrc/lstm.h lstm_bernoulli_mask_X) is >= t, else 0.
    lstm_fast._philox.bernoulli's fast path (the same bits as its NumPy generator)."""
    dt = np.dtype(dtype)
    if dt != np.float32 and dt != np.float64:
        raise ValueError(f"dtype: float32 or float64, got {dt}")
    cdef int tn = cnp.NPY_FLOAT64 if dt == np.float64 else cnp.NPY_FLOAT32
    cdef cnp.npy_intp d[8]
    cdef int nd = len(shape), i
    if nd > 8:
        raise ValueError(f"shape: at most 8 dimensions, got {shape}")
    for i in range(nd):
        if shape[i] < 0:
            raise ValueError(f"shape: sizes >= 0, got {shape}")
        d[i] = shape[i]
    cdef cnp.ndarray out = _empty(nd, d, tn)
    cdef int64_t n = cnp.PyArray_SIZE(out)
    cdef void *p = cnp.PyArray_DATA(out)
    cdef float onf = <float>on
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            lstm_bernoulli_mask_f32(n, k0, k1, t, onf, <float *>p)
        else:
            lstm_bernoulli_mask_f64(n, k0, k1, t, on, <double *>p)
    return out


cdef inline cnp.ndarray _rows(bint padded, int64_t T, int64_t B, int64_t N, int64_t F, int tn):
    """(T, B, F) padded, else (N, F)."""
    cdef cnp.npy_intp d[3]
    if padded:
        d[0] = T; d[1] = B; d[2] = F
        return _empty(3, d, tn)
    d[0] = N; d[1] = F
    return _empty(2, d, tn)


cdef inline cnp.ndarray _mat(int64_t rows, int64_t cols, int tn):
    cdef cnp.npy_intp d[2]
    d[0] = rows; d[1] = cols
    return _empty(2, d, tn)


cdef inline cnp.ndarray _like(cnp.ndarray a, int tn, bint lines=False):
    """A new array of a's shape (states: (B, C) or (1, B, C))."""
    return _empty(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), tn, lines)


cdef inline void *_p(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


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


cdef enum:
    _FULL = 0
    _BF16 = 1
    _INT8 = 2
    _INT8D = 3


cdef Packed _pack_target(object out, cnp.npy_intp n, int64_t I, int64_t H, int64_t P,
                         str weight_dtype):
    """out when it is a Packed of these shapes and weight dtype (n bytes) that nobody uses
    any more (its generation bumped: it is written over), else a new Packed of n bytes."""
    cdef Packed p
    if isinstance(out, Packed):
        p = <Packed>out
        if (p.weight_dtype == weight_dtype and p.input_size == I and p.hidden_size == H
                and p.proj_size == P and not p._ws_busy
                and cnp.PyArray_SIZE(<cnp.ndarray>p.buf) == n):
            p.generation += 1
            return p
    p = Packed.__new__(Packed)
    p.buf = _empty(1, &n, cnp.NPY_UINT8)
    if n >= _HUGE_PACK and _get_madvise_hugepage():   # streamed at every step
        bc_advise_huge(cnp.PyArray_DATA(<cnp.ndarray>p.buf), <size_t>n)
    p.wkind = (_BF16 if weight_dtype == "bfloat16" else _INT8 if weight_dtype == "int8" else
               _INT8D if weight_dtype == "int8_dynamic" else _FULL)
    return p


def pack(cnp.ndarray w_ih, cnp.ndarray w_hh, b, w_hr=None, out=None, variant=None):
    """Packed weights of (w_ih (4H, I), w_hh (4H, R), b (4H,) or None, w_hr (P, H) or None);
    variant a backends.Variant (its peephole (3, H) C-contiguous, of w_ih's dtype) or None.
    out: a Packed of the same shapes and dtype that nobody uses any more; its memory (and
    workspace) is written over and it is returned. A repack of large weights otherwise
    spends about as long having the kernel zero fresh pages as packing."""
    if _level_error is not None:
        raise RuntimeError(f"lstm_fast C kernel: {_level_error}")
    cdef int tn = cnp.PyArray_TYPE(w_ih)
    cdef int64_t H = cnp.PyArray_DIMS(w_ih)[0] // 4, I = cnp.PyArray_DIMS(w_ih)[1]
    cdef int64_t P = 0 if w_hr is None else cnp.PyArray_DIMS(<cnp.ndarray>w_hr)[0]
    cdef Packed p
    cdef cnp.npy_intp n = <cnp.npy_intp>(lstm_packed_size_f32(I, H, P) if tn == cnp.NPY_FLOAT32
                                         else lstm_packed_size_f64(I, H, P))
    p = _pack_target(out, n, I, H, P, w_ih.dtype.name)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>p.buf)
    cdef void *wi = cnp.PyArray_DATA(w_ih)
    cdef void *wh = cnp.PyArray_DATA(w_hh)
    cdef void *bp = _p(b)
    cdef void *hr = _p(w_hr)
    cdef int status
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = lstm_pack_f32(I, H, P, <float *>wi, <float *>wh, <float *>bp, <float *>hr, dst)
        else:
            status = lstm_pack_f64(I, H, P, <double *>wi, <double *>wh, <double *>bp,
                                   <double *>hr, dst)
    if status != LSTM_OK:
        _raise_status(status)
    p.input_size, p.hidden_size, p.proj_size = I, H, P
    p.typenum = tn
    p.dtype = w_ih.dtype
    p.weight_dtype = w_ih.dtype.name
    p.has_bias = b is not None
    p.variant = variant
    p._varp = NULL
    if variant is not None:
        p._var.peephole = _p(variant.peephole)
        p._var.clip = variant.clip
        p._var.cell_clip = variant.cell_clip
        p._var.cifg = 1 if variant.cifg else 0
        p._var.layer_norm = _p(variant.layer_norm)   # kept alive by p.variant
        p._var.ln_stats = p._var.ln_grad = p._var.ln_ws = NULL
        p._var.ln_stats_cols = 0
        p._varp = &p._var
    return p


ctypedef size_t (*_low_size_fn)(int64_t, int64_t) noexcept nogil
ctypedef int (*_low_pack_fn)(int64_t, int64_t, const float *, const float *, const float *,
                             void *) noexcept nogil


cdef Packed _pack_low(cnp.ndarray w_ih, cnp.ndarray w_hh, b, out, str weight_dtype,
                      _low_size_fn size_fn, _low_pack_fn pack_fn):
    """The low-precision packers' one body: float32 weights into a weight_dtype pack by the
    kernel's size_fn and pack_fn (inference only, no projection)."""
    if _level_error is not None:
        raise RuntimeError(f"lstm_fast C kernel: {_level_error}")
    cdef int64_t H = cnp.PyArray_DIMS(w_ih)[0] // 4, I = cnp.PyArray_DIMS(w_ih)[1]
    cdef Packed p
    cdef cnp.npy_intp n = <cnp.npy_intp>size_fn(I, H)
    p = _pack_target(out, n, I, H, 0, weight_dtype)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>p.buf)
    cdef void *wi = cnp.PyArray_DATA(w_ih)
    cdef void *wh = cnp.PyArray_DATA(w_hh)
    cdef void *bp = _p(b)
    cdef int status
    with nogil:
        status = pack_fn(I, H, <float *>wi, <float *>wh, <float *>bp, dst)
    if status != LSTM_OK:
        _raise_status(status)
    p.input_size, p.hidden_size, p.proj_size = I, H, 0
    p.typenum = cnp.NPY_FLOAT32
    p.dtype = np.dtype(np.float32)
    p.weight_dtype = weight_dtype
    p.has_bias = b is not None
    return p


def pack_bf16(cnp.ndarray w_ih, cnp.ndarray w_hh, b, out=None):
    """Packed bfloat16 weights of float32 (w_ih (4H, I), w_hh (4H, H), b (4H,) or None),
    rounded to nearest even (csrc/bf16.template.c), for ``forward`` (save=False: inference;
    save=True: bfloat16 training), ``backward`` (bfloat16 training) and ``step``. The pack
    keeps w_ih and w_hh (not copied): the first backward packs them rounded to bfloat16 in
    the float32 layout (``_bf16_train_pack``), so they must not change in between (the
    layer and lstm_fast.torch pack again after every change). out as in ``pack``."""
    cdef Packed p = _pack_low(w_ih, w_hh, b, out, "bfloat16", lstm_packed_size_bf16,
                              lstm_pack_bf16)
    p._bf16_src = (w_ih, w_hh)
    p._bf16_f32 = None
    return p


TRAINS_BF16 = True   # bfloat16 training (backends.BF16_TRAINING): forward with save=True
#                      and backward on a pack_bf16 pack


cdef void _round_bf16(uint32_t *u, Py_ssize_t n) noexcept nogil:
    """float32 bits rounded to bfloat16 in place (the low 16 bits cleared): nearest even,
    zero and denormals a signed zero, NaN quiet; bf16_round of csrc/bf16.template.c."""
    cdef Py_ssize_t k
    cdef uint32_t v, r, tiny, nan
    for k in range(n):      # selects by masks, no branches: the loop vectorizes
        v = u[k]
        r = (v + 0x7fffu + ((v >> 16) & 1u)) & 0xffff0000u
        tiny = <uint32_t>0 - <uint32_t>((v & 0x7f800000u) == 0)
        nan = <uint32_t>0 - <uint32_t>((v & 0x7fffffffu) > 0x7f800000u)
        r = (r & ~tiny) | (v & 0x80000000u & tiny)
        u[k] = (r & ~nan) | ((v | 0x00400000u) & 0xffff0000u & nan)


cdef object _bf16_scratch = None     # the scratch bfloat16 training's backwards share
cdef bint _bf16_scratch_busy = False


cdef cnp.ndarray _take_bf16_scratch(size_t size):
    """At least size bytes of scratch for a bfloat16 training backward: the shared one
    (grown when too small), or a fresh array while another call holds it."""
    global _bf16_scratch, _bf16_scratch_busy
    cdef cnp.npy_intp n
    if not _bf16_scratch_busy and _bf16_scratch is not None and \
            <size_t>cnp.PyArray_SIZE(<cnp.ndarray>_bf16_scratch) >= size:
        _bf16_scratch_busy = True
        return <cnp.ndarray>_bf16_scratch
    n = <cnp.npy_intp>size
    a = _empty(1, &n, cnp.NPY_UINT8)
    if not _bf16_scratch_busy:
        _bf16_scratch = a
        _bf16_scratch_busy = True
    return a


cdef inline void _give_bf16_scratch(cnp.ndarray a):
    global _bf16_scratch_busy
    if a is _bf16_scratch:
        _bf16_scratch_busy = False


cdef inline size_t _al64(size_t n) noexcept nogil:
    return (n + 63) & ~(<size_t>63)


cdef void _bf16_round_into(const float *src, float *dst, size_t n) noexcept nogil:
    """n float32 values of src rounded to bfloat16 into dst (float32 words)."""
    memcpy(dst, src, n * 4)
    _round_bf16(<uint32_t *>dst, <Py_ssize_t>n)


cdef cnp.ndarray _bf16_copy(cnp.ndarray a):
    """A float32 C-contiguous copy of a rounded to bfloat16 (the kernel's alignment)."""
    cdef cnp.ndarray out = _like(a, cnp.NPY_FLOAT32)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_SIZE(a) * 4)
    cdef uint32_t *u = <uint32_t *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(out)
    with nogil:
        _round_bf16(u, n)
    return out


cdef bint _check_bf16_saved(str name, cnp.ndarray a, int64_t size) except -1:
    """The backward of bfloat16 training reads the forward's saved ``gates`` / ``c``: as
    the forward returns them, bfloat16 bit patterns (C-contiguous uint16; True), or as
    float32 words holding bfloat16 values (the reference's form; False: the kernel reads
    them as they are, the same bits). Anything else is a ValueError naming the argument."""
    cdef int tn = cnp.PyArray_TYPE(a)
    if (tn != cnp.NPY_UINT16 and tn != cnp.NPY_FLOAT32) or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
            or cnp.PyArray_SIZE(a) != size:
        o = <object>a
        raise ValueError(f"{name}: bfloat16 training's backward takes the forward's saved "
                         f"{name} ({size} elements, C-contiguous: uint16 bfloat16 bit "
                         f"patterns as forward returns them, or float32 holding bfloat16 "
                         f"values), got {o.dtype} {o.shape}"
                         f"{'' if o.flags.c_contiguous else ' (not C-contiguous)'}")
    return tn == cnp.NPY_UINT16


cdef Packed _bf16_train_pack(Packed packed):
    """The float32 pack of a pack_bf16 pack's weights rounded to bfloat16 (made once)."""
    if packed._bf16_f32 is None:
        w_ih, w_hh = packed._bf16_src
        packed._bf16_f32 = pack(_bf16_copy(np.ascontiguousarray(w_ih, np.float32)),
                                _bf16_copy(np.ascontiguousarray(w_hh, np.float32)), None)
    return packed._bf16_f32


def pack_int8(cnp.ndarray w_ih, cnp.ndarray w_hh, b, out=None):
    """Packed int8 weights of float32 (w_ih (4H, I), w_hh (4H, H), b (4H,) or None), a
    symmetric scale per gate row of each (csrc/int8.template.c); inference only
    (``forward`` with save=False, ``step``). out as in ``pack``."""
    return _pack_low(w_ih, w_hh, b, out, "int8", lstm_packed_size_i8, lstm_pack_i8)


def pack_int8_dynamic(cnp.ndarray w_ih, cnp.ndarray w_hh, b, out=None):
    """Packed int8 weights (as ``pack_int8``) for a forward that quantizes x and h per row
    per step and sums in int32 (vpdpbusd; csrc/int8d.template.c); inference only."""
    if w_ih.shape[1] > 66311 or w_hh.shape[1] > 66311:
        raise ValueError(f"int8_dynamic weights need input_size and hidden_size <= 66311 (the "
                         f"int32 sums' bound), got {w_ih.shape[1]} and {w_hh.shape[1]}")
    return _pack_low(w_ih, w_hh, b, out, "int8_dynamic", lstm_packed_size_i8d, lstm_pack_i8d)


def int8_dynamic_products(Packed packed, cnp.ndarray x, cnp.ndarray h):
    """For tests: the products z (B, 4H) of one int8_dynamic step (before the bias and the
    cell) of float32 C-contiguous rows x (B, I), h (B, H), as the forward computes them."""
    if packed.wkind != _INT8D:
        raise ValueError(f"an int8_dynamic pack is needed, got {packed.weight_dtype}")
    cdef int64_t B = cnp.PyArray_DIMS(x)[0], I = packed.input_size, H = packed.hidden_size
    if (x.dtype != np.float32 or h.dtype != np.float32 or not x.flags.c_contiguous
            or not h.flags.c_contiguous or x.ndim != 2 or h.ndim != 2
            or cnp.PyArray_DIMS(x)[1] != I or cnp.PyArray_DIMS(h)[0] != B
            or cnp.PyArray_DIMS(h)[1] != H):
        raise ValueError("x (B, I) and h (B, H) must be C-contiguous float32 of the pack's sizes")
    z = np.empty((B, 4 * H), np.float32)
    ws = np.empty(lstm_forward_workspace_size_i8d(1, B, I, H, 1), np.uint8)
    cdef int status = lstm_products_i8d(B, I, H, cnp.PyArray_DATA(<cnp.ndarray>packed.buf),
                                        <float *>cnp.PyArray_DATA(x),
                                        <float *>cnp.PyArray_DATA(h),
                                        <float *>cnp.PyArray_DATA(<cnp.ndarray>z),
                                        cnp.PyArray_DATA(<cnp.ndarray>ws))
    if status != LSTM_OK:
        _raise_status(status)
    return z


cdef int _inference_only(Packed packed) except -1:
    raise ValueError(f"{packed.weight_dtype} weights are for inference only: nothing can be "
                     f"saved for backward (use float32 weights to train)")


cdef const lstm_variant *_with_rdrop(Packed packed, lstm_variant *lv, object rdrop,
                                    object zoneout, cnp.ndarray ws):
    """lv: the pack's variants (or none) plus the per-call masks (recurrent dropout,
    zoneout; None: off) and their scratch."""
    if packed._varp != NULL:
        lv[0] = packed._var
    else:
        memset(lv, 0, sizeof(lstm_variant))
    lv.rdrop = _p(rdrop)
    lv.zoneout = _p(zoneout)
    lv.var_ws = cnp.PyArray_DATA(ws)
    return lv


cdef int _forward_call(Packed packed, int64_t T, int64_t B, object bs, cnp.ndarray x,
                       cnp.ndarray h0, cnp.ndarray c0, object y, object h_n, object c_n,
                       object gates, object c, int num_threads, object rdrop=None,
                       object zoneout=None, object stats=None) except -1:
    """The kernel's forward on these arrays (gates and c None: nothing saved; rdrop the
    recurrent dropout mask (B, R) or None; stats the layer norm's (N, S), with
    packed.variant.layer_norm: None makes an (N, 6) scratch)."""
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef int save = gates is not None
    cdef bint bf16 = packed.wkind == _BF16
    cdef bint i8 = packed.wkind == _INT8
    cdef bint i8d = packed.wkind == _INT8D
    if (i8 or i8d) and save:
        _inference_only(packed)
    cdef size_t wsize = (lstm_forward_workspace_size_bf16(T, B, I, H, num_threads) if bf16 else
                         lstm_forward_workspace_size_i8(T, B, I, H, num_threads) if i8 else
                         lstm_forward_workspace_size_i8d(T, B, I, H, num_threads) if i8d else
                         lstm_forward_workspace_size_f32(T, B, I, H, P, num_threads, save)
                         if tn == cnp.NPY_FLOAT32 else
                         lstm_forward_workspace_size_f64(T, B, I, H, P, num_threads, save))
    cdef bint ln = packed._varp != NULL and packed._var.layer_norm != NULL
    cdef int64_t N = 0
    cdef size_t lnsize = 0
    if ln:   # the layer norm's scratch after the workspace (the pack keeps both: no page
             # faults of a fresh [N,4H] scratch per call)
        N = cnp.PyArray_SIZE(x) // I if I else (T * B if bs is None else int(np.sum(bs)))
        lnsize = (lstm_ln_workspace_size_f32(N, B, H, save, 0) if tn == cnp.NPY_FLOAT32
                  else lstm_ln_workspace_size_f64(N, B, H, save, 0))
    cdef cnp.ndarray ws = _take_ws(packed, wsize + lnsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef const int64_t *bsp = <const int64_t *>_p(bs)
    cdef void *xp = cnp.PyArray_DATA(x)
    cdef void *h0p = cnp.PyArray_DATA(h0)
    cdef void *c0p = cnp.PyArray_DATA(c0)
    cdef void *yp = _p(y)
    cdef void *hnp = _p(h_n)
    cdef void *cnp_ = _p(c_n)
    cdef void *gp = _p(gates)
    cdef void *cp = _p(c)
    cdef void *wp = cnp.PyArray_DATA(ws)
    cdef const lstm_variant *var = packed._varp
    cdef lstm_variant lv
    memset(&lv, 0, sizeof(lstm_variant))
    cdef int64_t R = P if P else H
    rws = None
    if rdrop is not None or zoneout is not None:
        if bf16:
            _inference_only(packed)
        rws = np.empty((lstm_variant_workspace_size_f32(0, B, R, num_threads, 0)
                        if tn == cnp.NPY_FLOAT32 else
                        lstm_variant_workspace_size_f64(0, B, R, num_threads, 0)), np.uint8)
        var = _with_rdrop(packed, &lv, rdrop, zoneout, rws)
    if ln:   # the layer-normalized LSTM
        if P or var.cifg:
            _give_ws(packed, ws)
            raise ValueError("layer_norm: no projection (w_hr) and no cifg")
        if var != &lv:
            lv = packed._var
            var = &lv
        if stats is None:   # a scratch (what backward needs is then not kept)
            stats = np.empty((N, LSTM_LN_STATS_COLS(H) if save else 6), packed.dtype)
        lv.ln_stats = cnp.PyArray_DATA(<cnp.ndarray>stats)
        lv.ln_stats_cols = cnp.PyArray_DIMS(<cnp.ndarray>stats)[cnp.PyArray_NDIM(<cnp.ndarray>stats) - 1]
        lv.ln_ws = <char *>wp + wsize
    cdef int status
    with nogil:
        if bf16:
            status = lstm_forward_bf16_ex(T, B, I, H, pk, bsp, <float *>xp, <float *>h0p,
                                          <float *>c0p, <float *>yp, <float *>hnp,
                                          <float *>cnp_, <uint16_t *>gp, <uint16_t *>cp, wp,
                                          num_threads)
        elif i8d:
            status = lstm_forward_i8d(T, B, I, H, pk, bsp, <float *>xp, <float *>h0p,
                                      <float *>c0p, <float *>yp, <float *>hnp, <float *>cnp_,
                                      wp, num_threads)
        elif i8:
            status = lstm_forward_i8(T, B, I, H, pk, bsp, <float *>xp, <float *>h0p,
                                     <float *>c0p, <float *>yp, <float *>hnp, <float *>cnp_,
                                     wp, num_threads)
        elif var != NULL and tn == cnp.NPY_FLOAT32:
            status = lstm_forward_ex_f32(T, B, I, H, P, pk, bsp, <float *>xp, <float *>h0p,
                                         <float *>c0p, <float *>yp, <float *>hnp, <float *>cnp_,
                                         <float *>gp, <float *>cp, wp, num_threads, var)
        elif var != NULL:
            status = lstm_forward_ex_f64(T, B, I, H, P, pk, bsp, <double *>xp, <double *>h0p,
                                         <double *>c0p, <double *>yp, <double *>hnp,
                                         <double *>cnp_, <double *>gp, <double *>cp, wp,
                                         num_threads, var)
        elif tn == cnp.NPY_FLOAT32:
            status = lstm_forward_f32(T, B, I, H, P, pk, bsp, <float *>xp, <float *>h0p,
                                      <float *>c0p, <float *>yp, <float *>hnp, <float *>cnp_,
                                      <float *>gp, <float *>cp, wp, num_threads)
        else:
            status = lstm_forward_f64(T, B, I, H, P, pk, bsp, <double *>xp, <double *>h0p,
                                      <double *>c0p, <double *>yp, <double *>hnp,
                                      <double *>cnp_, <double *>gp, <double *>cp, wp,
                                      num_threads)
    _give_ws(packed, ws)
    if status != LSTM_OK:
        _raise_status(status)
    return 0


def forward(Packed packed, cnp.ndarray x, cnp.ndarray h0, cnp.ndarray c0, int num_threads,
            batch_sizes=None, bint save=True, out=None, rdrop=None, zoneout=None, stats=None):
    """(y, h_n, c_n, gates, c); see the contract in ``lstm_fast.backends``."""
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, P = packed.proj_size
    cdef int64_t R = P if P else H
    cdef bint padded = batch_sizes is None
    cdef int64_t B = cnp.PyArray_SIZE(c0) // H
    cdef int64_t T = cnp.PyArray_DIMS(x)[0] if padded else \
        cnp.PyArray_DIMS(<cnp.ndarray>batch_sizes)[0]
    cdef int64_t N = T * B if padded else cnp.PyArray_DIMS(x)[0]
    y = h_n = c_n = None
    if out is not None:
        y, h_n, c_n = out
    if y is None:
        y = _rows(padded, T, B, N, R, tn)
    if h_n is None:
        h_n = _like(h0, tn)
    if c_n is None:   # the running state, updated in place step after step
        c_n = _like(c0, tn, num_threads > 1)
    gates = c = None
    if save:   # bfloat16 training keeps them as bf16 bit patterns (uint16: half the bytes)
        st = cnp.NPY_UINT16 if packed.wkind == _BF16 else tn
        gates = _rows(padded, T, B, N, 4 * H, st)
        c = _rows(padded, T, B, N, H, st)
    _forward_call(packed, T, B, batch_sizes, x, h0, c0, y, h_n, c_n, gates, c, num_threads,
                  rdrop, zoneout, stats)
    return y, h_n, c_n, gates, c


cdef int _backward_call(Packed packed, int64_t T, int64_t B, int64_t N, object batch_sizes,
                        cnp.ndarray x, cnp.ndarray h0, cnp.ndarray c0, cnp.ndarray y,
                        cnp.ndarray gates, cnp.ndarray c, cnp.ndarray dy, cnp.ndarray dh_n,
                        cnp.ndarray dc_n, object dx, cnp.ndarray dw_ih, cnp.ndarray dw_hh,
                        cnp.ndarray db, cnp.ndarray dh0, cnp.ndarray dc0, object dw_hr,
                        int num_threads, object dpeephole=None, object rdrop=None,
                        object zoneout=None, object stats=None,
                        object dlayer_norm=None) except -1:
    """The kernel's backward on these arrays (allocated by the caller). A pack_bf16 pack:
    bfloat16 training (backends/reference.py): the float32 backward on the weights, x, h0
    and y rounded to bfloat16, the gate gradients rounded in the kernel (bf16_grads)."""
    cdef bint bf16 = packed.wkind == _BF16
    cdef int64_t Hb = packed.hidden_size
    cdef bint bits = False   # bfloat16 training: gates and c given as bf16 bit patterns
    if bf16:
        if rdrop is not None or zoneout is not None:
            _inference_only(packed)
        bits = _check_bf16_saved("gates", gates, N * 4 * Hb)
        if _check_bf16_saved("c", c, N * Hb) != bits:
            raise ValueError(f"gates and c: both uint16 (bfloat16 bit patterns) or both "
                             f"float32, got {gates.dtype} and {c.dtype}")
        packed = _bf16_train_pack(packed)
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef int64_t R = P if P else H
    cdef size_t wsize = (lstm_backward_workspace_size_f32(T, N, B, I, H, P, num_threads)
                         if tn == cnp.NPY_FLOAT32 else
                         lstm_backward_workspace_size_f64(T, N, B, I, H, P, num_threads))
    cdef bint ln = packed._varp != NULL and packed._var.layer_norm != NULL
    cdef size_t lnsize = 0
    if ln:   # the layer norm's scratch after the workspace, as the forward's
        lnsize = (lstm_ln_workspace_size_f32(N, B, H, 1, 1) if tn == cnp.NPY_FLOAT32
                  else lstm_ln_workspace_size_f64(N, B, H, 1, 1))
    # bfloat16 training: x, h0 and y rounded to bfloat16 (float32 words) and the scratch of
    # the products with vdpbf16ps, in one scratch that every bfloat16 backward shares
    # (_take_bf16_scratch: no page faults of fresh arrays per call, and one buffer for a
    # model's layers, not one per layer)
    cdef size_t nx = 0, nh = 0, ny = 0, bfsize = 0
    cdef cnp.ndarray bscr = None
    if bf16:
        nx, nh, ny = cnp.PyArray_SIZE(x), cnp.PyArray_SIZE(h0), cnp.PyArray_SIZE(y)
        bfsize = (64 + _al64(nx * 4) + _al64(nh * 4) + _al64(ny * 4) +
                  lstm_bf16_grads_workspace_size(N, B, I, H, num_threads))
        bscr = _take_bf16_scratch(bfsize)
    cdef cnp.ndarray ws = _take_ws(packed, wsize + lnsize)
    cdef void *pk = cnp.PyArray_DATA(<cnp.ndarray>packed.buf)
    cdef const int64_t *bsp = <const int64_t *>_p(batch_sizes)
    cdef void *p_x = cnp.PyArray_DATA(x)
    cdef void *p_h0 = cnp.PyArray_DATA(h0)
    cdef void *p_c0 = cnp.PyArray_DATA(c0)
    cdef void *p_y = cnp.PyArray_DATA(y)
    cdef char *bfs = NULL
    if bf16:
        bfs = <char *>cnp.PyArray_DATA(bscr)
        bfs += (64 - <size_t>bfs % 64) % 64
        with nogil:
            _bf16_round_into(<const float *>p_x, <float *>bfs, nx)
            _bf16_round_into(<const float *>p_h0, <float *>(bfs + _al64(nx * 4)), nh)
            _bf16_round_into(<const float *>p_y,
                             <float *>(bfs + _al64(nx * 4) + _al64(nh * 4)), ny)
        p_x = bfs
        p_h0 = bfs + _al64(nx * 4)
        p_y = bfs + _al64(nx * 4) + _al64(nh * 4)
        bfs += _al64(nx * 4) + _al64(nh * 4) + _al64(ny * 4)
    cdef void *p_g = cnp.PyArray_DATA(gates)
    cdef void *p_c = cnp.PyArray_DATA(c)
    cdef void *p_dy = cnp.PyArray_DATA(dy)
    cdef void *p_dhn = cnp.PyArray_DATA(dh_n)
    cdef void *p_dcn = cnp.PyArray_DATA(dc_n)
    cdef void *p_dx = _p(dx)   # None: dx not computed
    cdef void *p_dwi = cnp.PyArray_DATA(dw_ih)
    cdef void *p_dwh = cnp.PyArray_DATA(dw_hh)
    cdef void *p_db = cnp.PyArray_DATA(db)
    cdef void *p_dh0 = cnp.PyArray_DATA(dh0)
    cdef void *p_dc0 = cnp.PyArray_DATA(dc0)
    cdef void *p_dwr = _p(dw_hr)
    cdef void *p_ws = cnp.PyArray_DATA(ws)
    cdef void *p_dp = _p(dpeephole)
    cdef const lstm_variant *var = packed._varp
    cdef lstm_variant lv
    memset(&lv, 0, sizeof(lstm_variant))
    rws = None
    if rdrop is not None or zoneout is not None:
        rws = np.empty((lstm_variant_workspace_size_f32(N, B, R, num_threads, 1)
                        if tn == cnp.NPY_FLOAT32 else
                        lstm_variant_workspace_size_f64(N, B, R, num_threads, 1)), np.uint8)
        var = _with_rdrop(packed, &lv, rdrop, zoneout, rws)
    if ln:   # the layer-normalized LSTM
        if stats is None or dlayer_norm is None:
            _give_ws(packed, ws)
            raise ValueError("stats and dlayer_norm: a layer-normalized backward needs the "
                             f"forward's stats (N, {LSTM_LN_STATS_COLS(H)}) and a (10H,) dlayer_norm")
        if var != &lv:
            lv = packed._var
            var = &lv
        lv.ln_stats = cnp.PyArray_DATA(<cnp.ndarray>stats)
        lv.ln_stats_cols = cnp.PyArray_DIMS(<cnp.ndarray>stats)[cnp.PyArray_NDIM(<cnp.ndarray>stats) - 1]
        lv.ln_grad = cnp.PyArray_DATA(<cnp.ndarray>dlayer_norm)
        lv.ln_ws = <char *>p_ws + wsize
    if bf16:
        lv.peephole = lv.rdrop = lv.zoneout = lv.var_ws = NULL
        lv.clip = lv.cell_clip = 0
        lv.cifg = 0
        lv.bf16_grads = 1
        # scratch of the per-step products with vdpbf16ps (used where lstm.c chooses it)
        lv.bf16_ws = bfs
        if bits:   # the forward's saved gates and c: bf16 bits, widened in the step's cell
            lv.bf16_gates = <const uint16_t *>p_g
            lv.bf16_c = <const uint16_t *>p_c
            p_g = p_c = NULL
        var = &lv
    cdef int status
    with nogil:
        if var != NULL and tn == cnp.NPY_FLOAT32:
            status = lstm_backward_ex_f32(
                T, B, I, H, P, pk, bsp, <float *>p_x, <float *>p_h0, <float *>p_c0,
                <float *>p_y, <float *>p_g, <float *>p_c, <float *>p_dy, <float *>p_dhn,
                <float *>p_dcn, <float *>p_dx, <float *>p_dwi, <float *>p_dwh, <float *>p_db,
                <float *>p_dh0, <float *>p_dc0, <float *>p_dwr, p_ws, num_threads, var,
                <float *>p_dp)
        elif var != NULL:
            status = lstm_backward_ex_f64(
                T, B, I, H, P, pk, bsp, <double *>p_x, <double *>p_h0, <double *>p_c0,
                <double *>p_y, <double *>p_g, <double *>p_c, <double *>p_dy, <double *>p_dhn,
                <double *>p_dcn, <double *>p_dx, <double *>p_dwi, <double *>p_dwh,
                <double *>p_db, <double *>p_dh0, <double *>p_dc0, <double *>p_dwr, p_ws,
                num_threads, var, <double *>p_dp)
        elif tn == cnp.NPY_FLOAT32:
            status = lstm_backward_f32(
                T, B, I, H, P, pk, bsp, <float *>p_x, <float *>p_h0, <float *>p_c0,
                <float *>p_y, <float *>p_g, <float *>p_c, <float *>p_dy, <float *>p_dhn,
                <float *>p_dcn, <float *>p_dx, <float *>p_dwi, <float *>p_dwh, <float *>p_db,
                <float *>p_dh0, <float *>p_dc0, <float *>p_dwr, p_ws, num_threads)
        else:
            status = lstm_backward_f64(
                T, B, I, H, P, pk, bsp, <double *>p_x, <double *>p_h0, <double *>p_c0,
                <double *>p_y, <double *>p_g, <double *>p_c, <double *>p_dy, <double *>p_dhn,
                <double *>p_dcn, <double *>p_dx, <double *>p_dwi, <double *>p_dwh,
                <double *>p_db, <double *>p_dh0, <double *>p_dc0, <double *>p_dwr, p_ws,
                num_threads)
    _give_ws(packed, ws)
    if bf16:
        _give_bf16_scratch(bscr)
    if status != LSTM_OK:
        _raise_status(status)
    return 0




def backward(Packed packed, cnp.ndarray x, cnp.ndarray h0, cnp.ndarray c0, cnp.ndarray y,
             cnp.ndarray gates, cnp.ndarray c, cnp.ndarray dy, cnp.ndarray dh_n,
             cnp.ndarray dc_n, int num_threads, batch_sizes=None, dpeephole=None, rdrop=None,
             zoneout=None, stats=None, dlayer_norm=None, need_dx=True):
    """(dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr); see the contract in ``lstm_fast.backends``
    (dpeephole: the (3, H) output for the peephole gradients, with peepholes; need_dx
    False: dx is None and not computed)."""
    if packed.wkind != _FULL and packed.wkind != _BF16:
        _inference_only(packed)
    cdef int tn = packed.typenum
    cdef int64_t H = packed.hidden_size, I = packed.input_size, P = packed.proj_size
    cdef int64_t R = P if P else H
    cdef bint padded = batch_sizes is None
    cdef int64_t B = cnp.PyArray_SIZE(c0) // H
    cdef int64_t T = cnp.PyArray_DIMS(x)[0] if padded else \
        cnp.PyArray_DIMS(<cnp.ndarray>batch_sizes)[0]
    cdef int64_t N = T * B if padded else cnp.PyArray_DIMS(x)[0]
    dx = _rows(padded, T, B, N, I, tn) if need_dx else None
    cdef cnp.ndarray dw_ih = _mat(4 * H, I, tn)
    cdef cnp.ndarray dw_hh = _mat(4 * H, R, tn)
    cdef cnp.npy_intp G = 4 * H
    cdef cnp.ndarray db = _empty(1, &G, tn, num_threads > 1)
    cdef cnp.ndarray dh0 = _like(h0, tn, num_threads > 1)
    cdef cnp.ndarray dc0 = _like(c0, tn, num_threads > 1)
    dw_hr = _mat(P, H, tn) if P else None
    _backward_call(packed, T, B, N, batch_sizes, x, h0, c0, y, gates, c, dy, dh_n, dc_n, dx,
                   dw_ih, dw_hh, db, dh0, dc0, dw_hr, num_threads, dpeephole, rdrop, zoneout,
                   stats, dlayer_norm)
    return dx, dw_ih, dw_hh, (db if packed.has_bias else None), dh0, dc0, dw_hr


def step(Packed packed, cnp.ndarray x, cnp.ndarray h, cnp.ndarray c, int num_threads, y=None):
    """One step: x (B, I) -> y (B, R); h and c updated in place (same bits as ``forward``)."""
    cdef int64_t B = cnp.PyArray_DIMS(x)[0], H = packed.hidden_size
    if y is None:
        y = _mat(B, packed.proj_size if packed.proj_size else H, packed.typenum)
    _forward_call(packed, 1, B, None, x, h, c, y, h, c, None, None, num_threads)
    return y


# --- a layer's direct entry points ------------------------------------------------------
# ``LSTM`` calls the backend through its ``_validation.LayerInputs``; ``bind_layer`` gives it
# these two C functions, which its ``call_forward``/``call_backward`` call without a Python
# call (no argument tuple, no keyword parsing) and which leave the results in its slots (no
# result tuple). The same kernel calls as ``forward``/``backward`` (padded, no per-call masks).

def bind_layer(inputs):
    """Make a ``_validation.LayerInputs`` call this backend as C functions
    (``LayerInputs.bind``); anything else is left alone."""
    cdef LayerInputs li
    if isinstance(inputs, LayerInputs):
        li = <LayerInputs>inputs
        li.c_forward = _layer_forward
        li.c_backward = _layer_backward
        li.direct = True


cdef int _layer_forward(object inputs, object packed, object x, object h0, object c0,
                        int num_threads, bint save, object out) except -1:
    """``forward(packed, x, h0, c0, num_threads, None, save, out)`` into the slots
    y, h_n, c_n, gates, c of ``inputs``."""
    cdef LayerInputs res = <LayerInputs>inputs
    cdef Packed p = <Packed?>packed
    cdef cnp.ndarray xa = <cnp.ndarray?>x, h0a = <cnp.ndarray?>h0, c0a = <cnp.ndarray?>c0
    cdef int tn = p.typenum
    cdef int64_t H = p.hidden_size, P = p.proj_size
    cdef int64_t R = P if P else H
    cdef int64_t T = cnp.PyArray_DIMS(xa)[0], B = cnp.PyArray_SIZE(c0a) // H
    y = h_n = c_n = None
    if out is not None:
        y, h_n, c_n = out
    if y is None:
        y = _rows(True, T, B, T * B, R, tn)
    if h_n is None:
        h_n = _like(h0a, tn)
    if c_n is None:   # the running state, updated in place step after step
        c_n = _like(c0a, tn, num_threads > 1)
    gates = c = None
    if save:   # bfloat16 training: bf16 bit patterns, as forward's
        st = cnp.NPY_UINT16 if p.wkind == _BF16 else tn
        gates = _rows(True, T, B, T * B, 4 * H, st)
        c = _rows(True, T, B, T * B, H, st)
    _forward_call(p, T, B, None, xa, h0a, c0a, y, h_n, c_n, gates, c, num_threads)
    res.y = y
    res.h_n = h_n
    res.c_n = c_n
    res.gates = gates
    res.c = c
    return 0


cdef int _layer_backward(object inputs, object packed, object x, object h0, object c0,
                         object y, object gates, object c, object dy, object dh_n,
                         object dc_n, int num_threads) except -1:
    """``backward(packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n, num_threads)`` into the
    slots dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr of ``inputs``, and db2: a copy of db (the
    second bias gradient, a separate array), None without a bias."""
    cdef LayerInputs res = <LayerInputs>inputs
    cdef Packed p = <Packed?>packed
    if p.wkind != _FULL and p.wkind != _BF16:
        _inference_only(p)
    cdef cnp.ndarray xa = <cnp.ndarray?>x, h0a = <cnp.ndarray?>h0, c0a = <cnp.ndarray?>c0
    cdef int tn = p.typenum
    cdef int64_t H = p.hidden_size, I = p.input_size, P = p.proj_size
    cdef int64_t R = P if P else H
    cdef int64_t T = cnp.PyArray_DIMS(xa)[0], B = cnp.PyArray_SIZE(c0a) // H
    cdef cnp.ndarray dx = _rows(True, T, B, T * B, I, tn)
    cdef cnp.ndarray dw_ih = _mat(4 * H, I, tn)
    cdef cnp.ndarray dw_hh = _mat(4 * H, R, tn)
    cdef cnp.npy_intp G = 4 * H
    cdef cnp.ndarray db = _empty(1, &G, tn, num_threads > 1)
    cdef cnp.ndarray dh0 = _like(h0a, tn, num_threads > 1)
    cdef cnp.ndarray dc0 = _like(c0a, tn, num_threads > 1)
    dw_hr = _mat(P, H, tn) if P else None
    _backward_call(p, T, B, T * B, None, xa, h0a, c0a, <cnp.ndarray?>y, <cnp.ndarray?>gates,
                   <cnp.ndarray?>c, <cnp.ndarray?>dy, <cnp.ndarray?>dh_n, <cnp.ndarray?>dc_n,
                   dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, num_threads)
    cdef cnp.ndarray db2
    if p.has_bias:
        db2 = _empty(1, &G, tn)
        memcpy(cnp.PyArray_DATA(db2), cnp.PyArray_DATA(db), G * cnp.PyArray_ITEMSIZE(db))
        res.db = db
        res.db2 = db2
    else:
        res.db = res.db2 = None
    res.dx = dx
    res.dw_ih = dw_ih
    res.dw_hh = dw_hh
    res.dh0 = dh0
    res.dc0 = dc0
    res.dw_hr = dw_hr
    return 0
