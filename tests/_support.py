"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import contextlib
import functools
import os

import numpy as np
import pytest

import lstm_fast
from lstm_fast import backends
from lstm_fast.backends import reference as ref

# Every backend that is registered and available here joins the shared test
# bodies by registration alone. In CI all of them must be present (see
# test_api.py::test_all_backends_present_in_ci), so nothing is skipped there.
BACKENDS = lstm_fast.available_backends()
FAST_BACKENDS = tuple(b for b in BACKENDS if b != "numpy")
BITWISE_BACKENDS = {"c", "numba"}   # same bits for any thread count and any chunking
DTYPES = (np.float32, np.float64)

# Tolerances for comparing a backend with the NumPy reference (relative to the
# magnitude of each array); float64 near round-off, float32 a few ulp accumulated.
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def make_problem(T, B, I, H, dtype=np.float64, seed=0, bias=True, scale=0.5):
    """Random weights, input, states and output gradients for one layer."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.uniform(-scale, scale, size=s)).astype(dtype)
    p = dict(x=r(T, B, I), w_ih=r(4 * H, I), w_hh=r(4 * H, H),
             b_ih=r(4 * H) if bias else None, b_hh=r(4 * H) if bias else None,
             h0=r(B, H), c0=r(B, H))
    g = dict(dy=r(T, B, H), dh_n=r(B, H), dc_n=r(B, H))
    return p, g


def assert_close(actual, expected, dtype, name=""):
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=name)


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- the backend contract (lstm_fast.backends), called directly ------------------------

FWD = ("y", "h_n", "c_n", "gates", "c")
BWD = ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dw_hr")


def contract_problem(T, B, I, H, P=0, lengths=None, dtype=np.float64, seed=0, bias=True):
    """Arguments of the contract's pack/forward/backward: weights at torch's scale
    (1/sqrt(H)), inputs and gradients of order 1. ``lengths`` (B,) sorted longest
    first gives batch_sizes and the packed (N, .) layout; None the padded one."""
    rng = np.random.default_rng(seed)
    R = P or H
    s = 1 / np.sqrt(H)
    u = lambda lim, *shape: rng.uniform(-lim, lim, shape).astype(dtype)
    bs = None
    rows = (T, B)
    if lengths is not None:
        lengths = np.asarray(lengths)
        assert len(lengths) == B and np.all(np.diff(lengths) <= 0) and lengths.max(initial=0) <= T
        bs = np.array([(lengths > t).sum() for t in range(T)], np.int64)
        rows = (int(bs.sum()),)
    return dict(
        w=(u(s, 4 * H, I), u(s, 4 * H, R), u(s, 4 * H) if bias else None,
           u(s, P, H) if P else None),
        x=u(1, *rows, I), h0=u(1, B, R), c0=u(1, B, H), batch_sizes=bs,
        dy=u(1, *rows, R), dh_n=u(1, B, R), dc_n=u(1, B, H))


def run_contract(impl, p, num_threads=1):
    """(forward outputs, backward outputs) of a backend module for a contract_problem."""
    packed = impl.pack(*p["w"])
    fwd = impl.forward(packed, p["x"], p["h0"], p["c0"], num_threads, p["batch_sizes"])
    y, _, _, gates, c = fwd
    bwd = impl.backward(packed, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"], p["dh_n"],
                        p["dc_n"], num_threads, p["batch_sizes"])
    return tuple(fwd), tuple(bwd)


def run_variant(impl, p, num_threads=1):
    """(forward outputs, backward outputs + (dpeephole,)) of a backend for a variant_problem
    (tests/test_variants.py), with its recurrent dropout and zoneout masks where it has them
    (p["rdrop"], p["zoneout"])."""
    masks = dict(rdrop=p.get("rdrop"), zoneout=p.get("zoneout"))
    packed = impl.pack(*p["w"], variant=p["variant"])
    fwd = impl.forward(packed, p["x"], p["h0"], p["c0"], num_threads, p["batch_sizes"], **masks)
    y, _, _, gates, c = fwd
    H = packed.hidden_size
    dpeep = None if p["variant"].peephole is None else np.full((3, H), np.nan, packed.dtype)
    bwd = impl.backward(packed, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"], p["dh_n"],
                        p["dc_n"], num_threads, p["batch_sizes"], dpeephole=dpeep, **masks)
    return tuple(fwd), tuple(bwd) + (dpeep,)


def reference64(p):
    """The NumPy reference's forward and backward in float64 on the same values: of a
    contract_problem (run_contract), or of a variant_problem (run_variant)."""
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)
    q = {k: (tuple(map(f64, v)) if k == "w" else v if k == "batch_sizes" else f64(v))
         for k, v in p.items() if k != "variant"}
    if "variant" not in p:
        return run_contract(ref, q)
    q["variant"] = p["variant"]._replace(peephole=f64(p["variant"].peephole))
    return run_variant(ref, q)


SIMD_ORDER = ("portable", "avx2", "avx512")


def simd_levels(ck):
    """The C kernel's SIMD levels this CPU can run, narrowest first."""
    return SIMD_ORDER[:SIMD_ORDER.index(ck.cpu_simd_level()) + 1]


@contextlib.contextmanager
def c_claims(mode):
    """The C kernel's claims mode (``lstm_fast.backends._c.set_claims``: how the steps'
    hidden blocks are given to the threads) within the block; restored after it."""
    from lstm_fast.backends import _c
    prev = _c.set_claims(mode)
    try:
        yield
    finally:
        _c.set_claims(prev)


def assert_same_bits_for_any_threads(run, impl, p):
    """run(impl, p, n) (forward and backward outputs) gives the same bits for 1, 2 and 3
    threads."""
    want = run(impl, p, 1)
    for n in (2, 3):
        got = run(impl, p, n)
        assert same_bits(got[0], want[0]) and same_bits(got[1], want[1]), n


def assert_variant_matches_reference(impl, p, dtype, num_threads=1, want=None):
    """run_variant of a backend against the float64 reference (``want``: reference64(p),
    computed when not given)."""
    want_fwd, want_bwd = want or reference64(p)
    fwd, bwd = run_variant(impl, p, num_threads)
    assert_matches(fwd, want_fwd, FWD, dtype)
    assert_matches(bwd, want_bwd, BWD + ("dpeephole",), dtype)


def assert_every_simd_level_matches_reference(p, dtype, threads=(1, 2)):
    """The C backend's run_variant of p at every SIMD level this CPU has and each thread
    count against the float64 reference."""
    ck = backends.get("c")
    want = reference64(p)
    before = ck.simd_level()
    try:
        for level in simd_levels(ck):
            ck.set_simd_level(level)
            for n in threads:
                assert_variant_matches_reference(ck, p, dtype, n, want)
    finally:
        ck.set_simd_level(before)


def assert_layer_agrees_on_every_backend(make_layer, dtype, width, **call):
    """make_layer(backend) (input size 3, outputs ``width`` wide) on every backend, called
    on the same (6, 5, 3) input with lengths (and ``call``), then backward: outputs,
    states and every gradient as on the numpy backend."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5, 3)).astype(dtype)
    dout = rng.standard_normal((6, 5, width)).astype(dtype)
    lengths = [6, 2, 5, 1, 6]
    results = {}
    for name in BACKENDS:
        layer = make_layer(name)
        out, (h, c) = layer(x, lengths=lengths, **call)
        dx, (dh0, dc0) = layer.backward(dout)
        results[name] = (out, h, c, dx, dh0, dc0, layer.grads)
    want = results["numpy"]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    for name, got in results.items():
        for a, b in zip(got[:6], want[:6]):
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
        for k in want[6]:
            np.testing.assert_allclose(got[6][k], want[6][k], **tol, err_msg=f"{name} {k}")


def assert_matches(got, want, names, dtype):
    """Each array of ``got`` has ``dtype`` and the shape of ``want`` and is close to it;
    None where ``want`` is None."""
    for name, a, e in zip(names, got, want):
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == e.shape, (name, a.dtype, a.shape, e.shape)
        assert_close(a, e, dtype, name)


def same_bits(got, want):
    """Tuples of arrays (or None) identical bit for bit."""
    return len(got) == len(want) and all(
        a is b if a is None or b is None else
        a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        for a, b in zip(got, want))


# --- low-precision weights (bfloat16, int8): tests/test_low_precision.py and the files of each

def inference_problem(T, B, I, H, seed=0, bias=True):
    """float32 weights at torch's scale (1/sqrt(H)), x and c0 of order 1, h0 within 0.5:
    the arguments of a low-precision pack and inference forward."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    u = lambda lim, *shape: rng.uniform(-lim, lim, shape).astype(np.float32)
    return dict(x=u(1, T, B, I), w_ih=u(s, 4 * H, I), w_hh=u(s, 4 * H, H),
                b=u(s, 4 * H) if bias else None, h0=u(0.5, B, H), c0=u(1, B, H))


def cancelling_problem(B, seed, products, wide_inputs):
    """Weights over 2^-40..2^12 in magnitude (long exponent gaps: absorption,
    cancellation) and a bias that cancels ``products(w_ih, w_hh, x1, h1)`` (the exact
    float64 products of the weight dtype's arithmetic), so that each pre-activation is the
    accumulation's rounding error itself and the outputs carry its bits. x and h of the
    same wide range (wide_inputs) or standard normal. Returns w_ih, w_hh, b, x, h0, c0."""
    rng = np.random.default_rng(seed)
    I, H = 37, 21
    e = lambda *s: (rng.standard_normal(s) * 2.0 ** rng.integers(-40, 12, s)).astype(np.float32)
    w_ih, w_hh = e(4 * H, I), e(4 * H, H)
    if wide_inputs:
        x1, h1 = e(I), e(H)
    else:
        x1, h1 = rng.standard_normal(I).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    x, h0 = np.tile(x1, (1, B, 1)), np.tile(h1, (B, 1))
    c0 = np.zeros((B, H), np.float32)
    b = (-products(w_ih, w_hh, x1, h1)).astype(np.float32)
    return w_ih, w_hh, b, x, h0, c0


# --- gradients by finite differences (float64) ---------------------------------------------

def central_difference(loss, arr, eps=1e-6):
    """d loss() / d arr by central differences, element by element (arr is changed in
    place and restored)."""
    num = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        lp = loss()
        arr[idx] = old - eps
        lm = loss()
        arr[idx] = old
        num[idx] = (lp - lm) / (2 * eps)
    return num


def assert_functional_gradients(a, kw, dy, dh_n, dc_n, atol=1e-7):
    """The functional API's gradient of every argument in ``a`` (float64 arrays, by name:
    x -> dx, w_ih -> dw_ih, ...) against central differences of loss = sum(y dy) +
    sum(h_n dh_n) + sum(c_n dc_n), y, h_n, c_n = lstm_forward(**a, **kw); rtol 1e-6.
    Returns lstm_backward's gradients."""

    def loss():
        y, h_n, c_n, _ = lstm_fast.lstm_forward(**a, **kw)
        return (y * dy).sum() + (h_n * dh_n).sum() + (c_n * dc_n).sum()

    g = lstm_fast.lstm_backward(lstm_fast.lstm_forward(**a, **kw).cache, dy, dh_n, dc_n)
    for name, arr in a.items():
        got = getattr(g, "d" + name)
        assert got.shape == arr.shape, name
        np.testing.assert_allclose(got, central_difference(loss, arr), rtol=1e-6, atol=atol,
                                   err_msg=name)
    return g


# --- lstm_fast.torch against the NumPy layer (torch imported only when called) ------------

def torch_dtype(dtype):
    import torch
    return getattr(torch, np.dtype(dtype).name)


def torch_and_layer(kw, backend, dtype, I=3, H=5, layers=2, bidirectional=True, proj_size=0,
                    seed=0, scale=None):
    """(lstm_fast.torch.LSTM, lstm_fast.LSTM on the numpy backend) with the same
    parameters: the module's, drawn after torch.manual_seed(seed) and multiplied by
    scale(name) where scale is given. kw: the options both take."""
    import torch
    from lstm_fast import torch as ltorch
    torch.manual_seed(seed)
    m = ltorch.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, proj_size=proj_size,
                    backend=backend, dtype=torch_dtype(dtype), **kw)
    if scale is not None:
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.mul_(scale(name))
    layer = lstm_fast.LSTM(I, H, num_layers=layers, bidirectional=bidirectional,
                           proj_size=proj_size, backend="numpy", dtype=dtype, **kw)
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    return m, layer


def torch_inputs(rng, T, B, I, H, P, dtype, states=4):
    """x (T, B, I) and h0, c0 of ``states`` layer-directions, standard normal: the arrays
    and leaf tensors of them that require grad, ((x, h0, c0), (xt, h0t, c0t))."""
    import torch
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((states, B, P or H)).astype(dtype)
    c0 = rng.standard_normal((states, B, H)).astype(dtype)
    return (x, h0, c0), tuple(torch.from_numpy(a).requires_grad_(True) for a in (x, h0, c0))


def assert_torch_matches_layer(m, layer, tensors, outputs, expected, dtype, rng):
    """A module's ``outputs`` (y, (h_n, c_n)) on the leaf ``tensors`` (xt, h0t, c0t)
    against the layer's ``expected`` forward (y, (h_n, c_n)); then torch's gradients of
    random upstream gradients (from rng) against the layer's backward: x, h0, c0 and every
    parameter."""
    import torch
    xt, h0t, c0t = tensors
    y, (h_n, c_n) = outputs
    ey, (eh, ec) = expected
    for name, a, e in (("y", y, ey), ("h_n", h_n, eh), ("c_n", c_n, ec)):
        assert a.dtype == torch_dtype(dtype)
        assert_close(a.detach().numpy(), e, dtype, name)
    gy, gh, gc = (rng.standard_normal(a.shape).astype(dtype) for a in (ey, eh, ec))
    torch.autograd.backward((y, h_n, c_n), tuple(map(torch.from_numpy, (gy, gh, gc))))
    dx, (dh0, dc0) = layer.backward(gy, (gh, gc))
    assert_close(xt.grad.numpy(), dx, dtype, "dx")
    assert_close(h0t.grad.numpy(), dh0, dtype, "dh0")
    assert_close(c0t.grad.numpy(), dc0, dtype, "dc0")
    for name, p in m.named_parameters():
        assert_close(p.grad.numpy(), layer.grads[name], dtype, name)


def torch_nn_pair(backend, dtype, num_layers, bidirectional, batch_first, bias=True, I=3, H=5,
                  seed=0, proj_size=0):
    """(torch.nn.LSTM drawn after torch.manual_seed(seed), lstm_fast.LSTM on ``backend``
    with its weights)."""
    import torch
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                        batch_first=batch_first, proj_size=proj_size).to(torch_dtype(dtype))
    ours = lstm_fast.LSTM(I, H, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                          batch_first=batch_first, proj_size=proj_size, dtype=dtype,
                          backend=backend)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def assert_state_dict_and_pickle_round_trip(m, fresh, x):
    """A torch module ``m``: ``fresh()`` (a new module of the same options) loaded with m's
    state_dict, and m through torch.save/torch.load, give m's output on ``x`` bitwise."""
    import io

    import torch
    n = fresh()
    n.load_state_dict(m.state_dict())
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    k = torch.load(buf, weights_only=False)
    with torch.no_grad():
        want = m(x)[0]
        assert torch.equal(want, n(x)[0])
        assert torch.equal(want, k(x)[0])
    return n


@functools.lru_cache(maxsize=None)
def torch_bf16_lstm_error():
    """The exception torch.nn.LSTM raises under bfloat16 autocast on this CPU, or None
    where it runs. oneDNN has no bfloat16 LSTM primitive without AVX-512 (seen on an AMD
    EPYC Zen 3, AVX2 only: "could not create a primitive descriptor for the LSTM forward
    propagation primitive"); there a module that delegates to torch must raise torch's
    own error, and our bf16 kernels (emulated on such a CPU) are the only bf16 path."""
    import torch
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(3, 5)(torch.zeros(2, 1, 3))
    except RuntimeError as e:
        return e
    return None


def assert_raises_as(error, fn, *args):
    """fn(*args) raises what ``error`` is: its type and its message (a drop-in module on
    torch's path fails as torch does)."""
    with pytest.raises(type(error)) as got:
        fn(*args)
    assert str(got.value) == str(error)
