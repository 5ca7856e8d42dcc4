"""Low-precision weights for inference (issue 16): the tests whose body is the same for
bfloat16 and int8, run over both. The C kernel against the NumPy oracle of the same
arithmetic (backends/reference.py: lstm_forward_bf16, lstm_forward_int8) at every SIMD
level (bfloat16 also native vdpbf16ps and emulated), 1 and 2 threads; the error against
the float64 reference as a function of T; the layer, quantize and Stream; bad input.

Each weight dtype's tolerances, and why they are what they are, stand at the top of its
own file (tests/test_bf16.py, tests/test_int8.py), with the tests specific to it (the
rounding or quantization rule, the products on hard values, the info line).
"""
import pickle

import numpy as np
import pytest

import lstm_fast
from lstm_fast.backends import reference as ref

from _support import inference_problem as problem, same_bits

ck = pytest.importorskip("lstm_fast.backends._c")

import test_bf16 as bf16  # noqa: E402  (each dtype's tolerances and SIMD modes)
import test_int8 as int8  # noqa: E402
import test_int8_dynamic as int8d  # noqa: E402

WEIGHT_DTYPES = ("bfloat16", "int8", "int8_dynamic")
# what differs between the weight dtypes in the shared bodies; seq_atol(want): whole
# sequences against the oracle; step_share: at most this share of the outputs may differ
# from the oracle by more than STEP_ATOL (None: not asserted, SEQ_ATOL is already tighter)
SPECS = {
    "bfloat16": dict(pack=ck.pack_bf16, ref_pack=ref.pack_bf16, oracle=ref.lstm_forward_bf16,
                     tol=bf16, seq_atol=lambda w: bf16.SEQ_ATOL, step_share=0.01,
                     natives=[False, True] if bf16.NATIVE else [False], quantize_args=(),
                     hard_problem=bf16._hard_problem),
    "int8": dict(pack=ck.pack_int8, ref_pack=ref.pack_int8, oracle=ref.lstm_forward_int8,
                 tol=int8, seq_atol=lambda w: int8.SEQ_ATOL * max(1, np.abs(w).max()),
                 step_share=None, natives=[None], quantize_args=("int8",),
                 hard_problem=int8._hard_problem),
    # the products bit for bit: tests/test_int8_dynamic.py (test_products_are_the_oracles_bits)
    "int8_dynamic": dict(pack=ck.pack_int8_dynamic, ref_pack=ref.pack_int8_dynamic,
                         oracle=ref.lstm_forward_int8_dynamic, tol=int8d,
                         seq_atol=lambda w: int8d.SEQ_ATOL * max(1, np.abs(w).max()),
                         step_share=None, natives=[None, False],
                         quantize_args=("int8", ), quantize_kw=dict(activations="dynamic"),
                         hard_problem=None),
}
# (weight dtype, SIMD level, bf16 native or None): every kernel this CPU can run
KERNELS = ([("bfloat16", lv, native) for lv, native in bf16.MODES] +
           [("int8", lv, None) for lv in int8.LEVELS] +
           [("int8_dynamic", lv, native) for lv, native in int8d.MODES])


def _set_native(weight_dtype, native):
    """bfloat16: vdpbf16ps (True) or emulated (False); int8_dynamic: vpdpbusd where the CPU
    has it (None) or emulated (False); None everywhere: the default."""
    if weight_dtype == "int8_dynamic":
        if isinstance(native, str):   # a path: "vnni" (vpdpbusd where AMX would be used)
            ck.set_int8_dynamic_path(native)
        else:
            ck.set_int8_dynamic_native(native)
    else:
        ck.set_bf16_native(native)


def _kernel_id(k):
    dt, level, native = k
    return f"{dt}-{level}" + ("" if native is None else f"-{native}" if isinstance(native, str)
                              else "-native" if native else "-emulated")


def _with_kernel(param):
    """The weight dtype's SPECS entry, with the SIMD level (and bf16 mode) set."""
    dt, level, native = param
    before = ck.simd_level()
    ck.set_simd_level(level)
    if native is not None:
        _set_native(dt, native)
    yield SPECS[dt]
    _set_native(dt, None)
    ck.set_simd_level(before)


@pytest.fixture(params=KERNELS, ids=_kernel_id)
def kernel(request):
    """Every kernel: its SPECS entry, the SIMD level (and bf16 mode) set."""
    yield from _with_kernel(request.param)


@pytest.fixture(params=[k for k in KERNELS if SPECS[k[0]]["hard_problem"] is not None],
                ids=_kernel_id)
def float_input_kernel(request):
    """The kernels whose products take x and h as float32 (bf16 rounds them, int8 keeps
    them): those a cancelling problem tests. int8_dynamic quantizes x and h, so no float
    problem cancels in its sums; its products are tested bit for bit instead
    (tests/test_int8_dynamic.py)."""
    yield from _with_kernel(request.param)


@pytest.fixture(params=WEIGHT_DTYPES)
def weight_dtype(request):
    return request.param


SHAPES = [(1, 1, 1, 1), (3, 1, 1, 1), (4, 1, 7, 19), (5, 3, 5, 1), (4, 2, 9, 37),
          (3, 5, 24, 40), (3, 13, 16, 33), (2, 7, 33, 17), (2, 16, 40, 64), (2, 3, 0, 5)]
IDS = ["T{}B{}I{}H{}".format(*s) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_every_step_matches_the_oracle(kernel, shape, num_threads):
    """Each step from the kernel's own state against the oracle's step from that state."""
    T, B, I, H = shape
    p = problem(*shape, seed=sum(shape))
    packed = kernel["pack"](p["w_ih"], p["w_hh"], p["b"])
    tol = kernel["tol"]
    h, c = p["h0"].copy(), p["c0"].copy()
    for t in range(T):
        want_y, _, want_c = kernel["oracle"](p["x"][t:t + 1], p["w_ih"], p["w_hh"], p["b"], h, c)
        y = ck.step(packed, p["x"][t], h, c, num_threads)
        np.testing.assert_allclose(y, want_y[0], rtol=0, atol=tol.STEP_ATOL)
        np.testing.assert_allclose(c, want_c, rtol=0,
                                   atol=tol.STEP_RTOL * max(1.0, float(np.abs(want_c).max())))
        assert same_bits(h, y)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_same_bits_for_threads_native_and_chunks(weight_dtype, shape):
    """Any thread count, (bfloat16) native or emulated at AVX-512, whole or streamed: same
    bits."""
    spec = SPECS[weight_dtype]
    T, B, I, H = shape
    p = problem(*shape, seed=3)
    packed = spec["pack"](p["w_ih"], p["w_hh"], p["b"])
    runs = []
    for native in spec["natives"]:
        _set_native(weight_dtype, native)
        try:
            for n in (1, 2, 3):
                runs.append(ck.forward(packed, p["x"], p["h0"], p["c0"], n, None, False)[:3])
        finally:
            _set_native(weight_dtype, None)
    h, c = p["h0"].copy(), p["c0"].copy()
    _set_native(weight_dtype, spec["natives"][0])   # (bfloat16: the AMX path's own bits are
    try:                                            # tests/test_bf16_amx.py's)
        runs.append((np.stack([ck.step(packed, xt, h, c, 1) for xt in p["x"]]), h, c))
    finally:
        _set_native(weight_dtype, None)
    for got in runs[1:]:
        assert all(same_bits(a, b) for a, b in zip(got, runs[0]))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sequences_match_the_oracle(kernel, shape):
    T, B, I, H = shape
    p = problem(*shape, seed=5)
    y, h_n, c_n, _, _ = ck.forward(kernel["pack"](p["w_ih"], p["w_hh"], p["b"]), p["x"],
                                   p["h0"], p["c0"], 2, None, False)
    want = kernel["oracle"](p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])
    for got, w in zip((y, h_n, c_n), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=kernel["seq_atol"](w))
        if kernel["step_share"] is not None:
            assert (np.mean(np.abs(got - w) > kernel["tol"].STEP_ATOL * max(1, np.abs(w).max()))
                    <= kernel["step_share"])


@pytest.mark.parametrize("T", [1, 64, 512])
def test_error_against_float64_as_a_function_of_T(weight_dtype, T):
    """The low-precision forward's distance to the exact (float64) LSTM of the same float32
    weights, and that the oracle has the same error (it is the same arithmetic)."""
    spec = SPECS[weight_dtype]
    B, I, H = 4, 48, 64
    p = problem(T, B, I, H, seed=11)
    exact = ref.lstm_forward(*(p[k].astype(np.float64) for k in ("x", "w_ih", "w_hh", "b",
                                                                 "h0", "c0")))[0]
    got = ck.forward(spec["pack"](p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                     None, False)[0]
    oracle = spec["oracle"](p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    err, err_oracle = np.abs(got - exact).max(), np.abs(oracle - exact).max()
    f32 = ck.forward(ck.pack(p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1, None,
                     False)[0]
    print(f"T={T}: {weight_dtype} {err:.2e}, oracle {err_oracle:.2e}, "
          f"float32 {np.abs(f32 - exact).max():.2e}")
    bound = spec["tol"].ERR_BOUND[T]
    assert err <= bound and err_oracle <= bound
    assert err > 10 * np.abs(f32 - exact).max()   # it is low-precision arithmetic, not float32
    np.testing.assert_allclose(got, oracle, rtol=0, atol=spec["seq_atol"](oracle))


def test_nan_and_inf_propagate(weight_dtype):
    spec = SPECS[weight_dtype]
    p = problem(3, 2, 4, 5)
    p["x"][1, 0, 2] = np.nan
    p["x"][1, 1, 0] = np.inf
    y = ck.forward(spec["pack"](p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1,
                   None, False)[0]
    want = spec["oracle"](p["x"], p["w_ih"], p["w_hh"], p["b"], p["h0"], p["c0"])[0]
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(y[1:, 0]).all()


@pytest.mark.parametrize("B", [1, 3, 8], ids=["B1-tile", "B3", "B8-widened"])
def test_products_at_every_level_are_the_oracles(float_input_kernel, B):
    """Weights and a bias that cancels the exact products (tests/_support.py:
    cancelling_problem), at every level: the outputs, a few times the rounding error of
    each product sum, agree with the oracle's to a few float32 ulp relative (one ulp of
    difference in a sum would change them by about 100 %): bf16 emulated and native; int8
    widened in registers (B <= 6 at AVX-512), the pack's float32 copy (B > FR) and the
    portable level's exact FMA give the oracle's sums."""
    kernel = float_input_kernel
    w_ih, w_hh, b, x, h0, c0 = kernel["hard_problem"](B, B + 10)
    y = ck.forward(kernel["pack"](w_ih, w_hh, b), x, h0, c0, 2, None, False)[0]
    want = kernel["oracle"](x, w_ih, w_hh, b, h0, c0)[0]
    np.testing.assert_allclose(y, want, rtol=2.0 ** -19, atol=1e-37)
    assert np.count_nonzero(y) >= y.size // 4


# --- the layer, quantize, Stream ---------------------------------------------------------

LAYERS = [dict(num_layers=1), dict(num_layers=2), dict(bidirectional=True),
          dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False)]


@pytest.mark.parametrize("kw", LAYERS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("lengths", [None, [6, 2, 5]])
def test_layer_against_float64_and_the_numpy_backend(weight_dtype, kw, lengths):
    spec = SPECS[weight_dtype]
    layer = lstm_fast.LSTM(5, 11, seed=1, **kw)
    q = lstm_fast.quantize(layer, weight_dtype)
    qn = lstm_fast.quantize(layer, weight_dtype)
    qn.backend = "numpy"
    exact = lstm_fast.LSTM(5, 11, seed=1, dtype=np.float64, backend="numpy", **kw)
    exact.load_state_dict(layer.state_dict())
    x = np.random.default_rng(2).standard_normal((6, 3, 5)).astype(np.float32)
    if kw.get("batch_first"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    out, (h, c) = q(x, lengths=lengths)
    out_n, (h_n, c_n) = qn(x, lengths=lengths)
    out64, (h64, c64) = exact(x.astype(np.float64), lengths=lengths)
    for a, b, e in ((out, out_n, out64), (h, h_n, h64), (c, c_n, c64)):
        assert a.dtype == np.float32 and a.shape == e.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=spec["seq_atol"](b))
        # H = 11: weights up to 1/sqrt(11), three times those of the ERR_BOUND problem; a
        # plumbing error (a wrong weight, direction or length) would be off by O(0.1)
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-2)
    assert np.abs(out - out64).max() > 1e-5   # the weights really are low-precision
    if lengths is not None:
        assert np.all((out[1, 2:] if kw.get("batch_first") else out[2:, 1]) == 0)


def test_quantize_keeps_the_masters_and_the_original(weight_dtype):
    """quantize (bfloat16 by default) keeps float32 masters and leaves the layer as it was."""
    layer = lstm_fast.LSTM(4, 6, num_layers=2, seed=0)
    before = layer.state_dict()
    q = lstm_fast.quantize(layer, *SPECS[weight_dtype]["quantize_args"],
                           **SPECS[weight_dtype].get("quantize_kw", {}))
    assert q.weight_dtype == weight_dtype and not q.training and layer.weight_dtype == "float32"
    assert layer.training
    for k, v in q.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])
    back = lstm_fast.quantize(q, "float32")
    x = np.ones((3, 2, 4), np.float32)
    assert same_bits(back(x)[0], layer(x)[0])
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.weight_dtype == weight_dtype and same_bits(q2(x)[0], q(x)[0])
    assert f"weight_dtype='{weight_dtype}'" in repr(q)
    for other in WEIGHT_DTYPES:
        if other != weight_dtype:
            assert not same_bits(lstm_fast.quantize(layer, other)(x)[0], q(x)[0])


def test_constructor_option_equals_quantize(weight_dtype):
    a = lstm_fast.LSTM(3, 9, num_layers=2, seed=4, weight_dtype=weight_dtype)
    b = lstm_fast.quantize(lstm_fast.LSTM(3, 9, num_layers=2, seed=4),
                           *SPECS[weight_dtype]["quantize_args"],
                           **SPECS[weight_dtype].get("quantize_kw", {}))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    assert same_bits(a(x)[0], b(x)[0]) and not a.training


@pytest.mark.parametrize("B", [1, 3, 8])
def test_stream_gives_the_layers_bits(weight_dtype, B):
    layer = lstm_fast.LSTM(6, 21, num_layers=2, seed=3, weight_dtype=weight_dtype)
    x = np.random.default_rng(1).standard_normal((7, B, 6)).astype(np.float32)
    want, (h, c) = layer(x)
    s = lstm_fast.Stream(layer, batch_size=B)
    steps = np.stack([s.step(xt) for xt in x[:4]])
    rest = s.run(x[4:])
    assert same_bits(np.concatenate([steps, rest]), want)
    assert same_bits(s.state[0], h) and same_bits(s.state[1], c)


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(weight_dtype="int4"), r"weight_dtype must be one of \('float32', 'float64', 'bfloat16', 'int8', 'int8_dynamic'\)"),
    (dict(weight_dtype=3), "weight_dtype must be one of"),
    (dict(weight_dtype="float64"), "must be the layer's dtype"),
    (dict(weight_dtype="bfloat16", dtype=np.float64), "needs dtype float32"),
    (dict(weight_dtype="bfloat16", proj_size=2), "proj_size"),
    (dict(weight_dtype="bfloat16", peephole=True), "variants"),
    (dict(weight_dtype="bfloat16", clip=3.0), "variants"),
    (dict(weight_dtype="bfloat16", backend="numba"), "'c' and 'numpy' backends"),
    (dict(weight_dtype="int8", dtype=np.float64), "needs dtype float32"),
    (dict(weight_dtype="int8", proj_size=2), "proj_size"),
    (dict(weight_dtype="int8", peephole=True), "variants"),
    (dict(weight_dtype="int8", cifg=True), "variants"),
    (dict(weight_dtype="int8", cell_clip=1.0), "variants"),
    (dict(weight_dtype="int8", backend="numba"), "'c' and 'numpy' backends"),
    (dict(weight_dtype="int8_dynamic", dtype=np.float64), "needs dtype float32"),
    (dict(weight_dtype="int8_dynamic", proj_size=2), "proj_size"),
    (dict(weight_dtype="int8_dynamic", peephole=True), "variants"),
    (dict(weight_dtype="int8_dynamic", backend="numba"), "'c' and 'numpy' backends"),
])
def test_bad_weight_dtype(kw, match):
    if kw.get("backend") == "numba" and "numba" not in lstm_fast.available_backends():
        pytest.skip("numba not installed")
    with pytest.raises(ValueError, match=match):
        lstm_fast.LSTM(3, 4, **kw)


@pytest.mark.parametrize("weight_dtype", ["int8", "int8_dynamic"])
def test_inference_only(weight_dtype):
    """int8 layers are inference only; bfloat16 ones train (mixed precision,
    tests/test_bf16_training.py)."""
    spec = SPECS[weight_dtype]
    only = f"{weight_dtype} weights are for inference only"
    q = lstm_fast.LSTM(3, 4, weight_dtype=weight_dtype)
    x = np.ones((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="inference only"):
        q.train()
    with pytest.raises(ValueError, match="inference only"):
        q(x, save=True)
    q(x)
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((2, 1, 4), np.float32))
    if "numba" in lstm_fast.available_backends():
        with pytest.raises(ValueError, match="'c' and 'numpy' backends"):
            q.backend = "numba"
    p = problem(2, 1, 3, 4)
    packed = spec["pack"](p["w_ih"], p["w_hh"], p["b"])
    with pytest.raises(ValueError, match=only):
        ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    with pytest.raises(ValueError, match=only):
        ref.forward(spec["ref_pack"](p["w_ih"], p["w_hh"], p["b"]), p["x"], p["h0"], p["c0"], 1)
    y, h_n, c_n, _, _ = ck.forward(packed, p["x"], p["h0"], p["c0"], 1, None, False)
    with pytest.raises(ValueError, match=only):
        ck.backward(packed, p["x"], p["h0"], p["c0"], y, y, y, y, h_n, c_n, 1)
    with pytest.raises(TypeError, match="lstm_fast.LSTM"):
        lstm_fast.quantize(object())
