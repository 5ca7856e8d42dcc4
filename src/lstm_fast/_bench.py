"""Competitors for the speed comparison, and ``lstm-fast bench`` (a quick subset).

One table of competitors feeds both the pytest-benchmark suite (benchmarks/)
and this command, so both time exactly the same callables:

* ``lstm_fast[<backend>]``: the ``LSTM`` layer (weights packed once, kept
  between calls), one per available backend, the NumPy reference included;
* ``torch``: ``torch.nn.LSTM`` with the same weights, ``torch.inference_mode()``
  for inference, autograd for training;
* ``onnxruntime``: a one-node ONNX model with the ``LSTM`` operator (float32
  inference only), weights reordered from torch's i, f, g, o to ONNX's i, o, f, c.

Cases: ``forward`` (inference over a whole sequence), ``train`` (forward, then
backward of sum(output * fixed gradient) with gradients for the parameters and
the input), ``stream`` (inference one step at a time, the state carried from
call to call, as in real-time use; T calls of T = 1; ours through
``lstm_fast.Stream``, which keeps the state and the packed weights).

``set_threads(n)`` gives every library the same thread budget: our kernels,
torch's intra-op pool and the OpenBLAS that NumPy (and so the reference
backend) calls. A competitor's first call is checked against an oracle
(torch, or the NumPy reference without torch) before anything is timed.
"""

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time

import numpy as np

import lstm_fast
from lstm_fast import backends

CASES = ("forward", "train", "stream")
DTYPES = {"float32": np.float32, "float64": np.float64}
# Relative to the largest magnitude of each compared array.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}

# The quick subset for ``lstm-fast bench`` (the full grid is benchmarks/shapes.py).
QUICK_SHAPES = {
    "tiny": (3, 1, 1, 1),
    "churn": (6, 32, 3, 32),
    "stream256": (32, 1, 256, 256),
    "medium": (32, 16, 64, 64),
}


def flops(case, T, B, I, H):
    """FLOPs of one call: 2*T*B*4H*(I+H) forward; a training step counts 3x that."""
    f = 2 * T * B * 4 * H * (I + H)
    return 3 * f if case == "train" else f


# --- the problem ---------------------------------------------------------

def make_problem(T, B, I, H, dtype="float32", seed=0):
    """Weights in torch's layout and names, input, initial state, output gradient."""
    dt = DTYPES[np.dtype(dtype).name]
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    u = lambda lim, *s: rng.uniform(-lim, lim, size=s).astype(dt)
    return dict(
        T=T, B=B, I=I, H=H, dtype=np.dtype(dt).name,
        state_dict={"weight_ih_l0": u(k, 4 * H, I), "weight_hh_l0": u(k, 4 * H, H),
                    "bias_ih_l0": u(k, 4 * H), "bias_hh_l0": u(k, 4 * H)},
        x=u(1.0, T, B, I), h0=u(0.5, B, H), c0=u(0.5, B, H), dy=u(1.0, T, B, H))


# --- threads -------------------------------------------------------------

def _openblas_setters():
    """``set_num_threads`` functions of every OpenBLAS loaded in this process."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({path for path in (line.split()[-1] for line in f)
                           if "openblas" in os.path.basename(path).lower() and ".so" in path})
    except OSError:
        return found
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                found.append(fn)
                break
    return found


_blas_setters = None
_torch_default_threads = None


def set_threads(n):
    """The same thread count for our kernels, torch and NumPy's OpenBLAS."""
    global _blas_setters, _torch_default_threads
    if "torch" in sys.modules and _torch_default_threads is None:
        _torch_default_threads = sys.modules["torch"].get_num_threads()
    lstm_fast.set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if _blas_setters is None:
            _blas_setters = _openblas_setters()
        for fn in _blas_setters:
            fn(n)
    else:
        threadpool_limits(n, user_api="blas")


def reset_threads():
    """Undo ``set_threads``: our default (0, per shape), torch's and OpenBLAS's defaults."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    set_threads(n)
    lstm_fast.set_num_threads(0)
    if "torch" in sys.modules and _torch_default_threads is not None:
        sys.modules["torch"].set_num_threads(_torch_default_threads)


# --- competitors -----------------------------------------------------------

def have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def competitors(case, dtype):
    """Names of the competitors available here for ``case`` and ``dtype``, ours first."""
    names = [f"lstm_fast[{b}]" for b in lstm_fast.available_backends()]
    if have("torch"):
        names.append("torch")
    if case != "train" and np.dtype(dtype).name == "float32" and have("onnx") and have("onnxruntime"):
        names.append("onnxruntime")
    return names


class Runner:
    """``fn()`` runs one call, ``extract(fn())`` gives its outputs as NumPy arrays."""

    def __init__(self, name, fn, extract):
        self.name, self.fn, self.extract = name, fn, extract


def make_runner(name, case, p, threads):
    """Build competitor ``name`` for ``case`` on problem ``p`` with ``threads`` threads.

    Everything that can be prepared once (weights, tensors, sessions, the
    per-step slices of a stream) is prepared here, outside the timed call.
    """
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    set_threads(threads)
    if name.startswith("lstm_fast["):
        return _ours(name, name[len("lstm_fast["):-1], case, p)
    if name == "torch":
        return _torch(name, case, p)
    if name == "onnxruntime":
        return _ort(name, case, p, threads)
    raise ValueError(f"unknown competitor {name!r}")


def _ours(name, backend, case, p):
    layer = lstm_fast.LSTM(p["I"], p["H"], dtype=p["dtype"], backend=backend)
    layer.load_state_dict(p["state_dict"])
    x, dy = p["x"], p["dy"]
    hx = (p["h0"][None], p["c0"][None])
    if case == "forward":
        layer.eval()
        fn = lambda: layer(x, hx)
        return Runner(name, fn, lambda r: dict(y=r[0], h_n=r[1][0][0], c_n=r[1][1][0]))
    if case == "stream" and hasattr(lstm_fast, "Stream"):
        layer.eval()
        stream = lstm_fast.Stream(layer, p["B"], hx)
        steps = list(x)

        def fn():
            stream.reset(hx)
            return [stream.step(xt) for xt in steps]

        def extract(ys):
            h, c = stream.state
            return dict(y=np.stack(ys), h_n=h[0], c_n=c[0])
        return Runner(name, fn, extract)
    if case == "stream":
        layer.eval()
        steps = [x[t:t + 1] for t in range(p["T"])]

        def fn():
            h = hx
            ys = []
            for xt in steps:
                y, h = layer(xt, h)
                ys.append(y)
            return ys, h
        return Runner(name, fn, lambda r: dict(y=np.concatenate(r[0]), h_n=r[1][0][0], c_n=r[1][1][0]))
    layer.train()

    def fn():
        y, _ = layer(x, hx)
        dx, _ = layer.backward(dy)
        return y, dx, layer.grads

    def extract(r):
        y, dx, g = r
        return dict(y=y, dx=dx, dw_ih=g["weight_ih_l0"], dw_hh=g["weight_hh_l0"], db_ih=g["bias_ih_l0"])
    return Runner(name, fn, extract)


def _torch(name, case, p):
    import torch
    dt = getattr(torch, p["dtype"])
    m = torch.nn.LSTM(p["I"], p["H"], dtype=dt)
    with torch.no_grad():
        for k, v in p["state_dict"].items():
            getattr(m, k).copy_(torch.from_numpy(v))
    x = torch.from_numpy(p["x"])
    hx = (torch.from_numpy(p["h0"])[None], torch.from_numpy(p["c0"])[None])
    if case == "forward":
        m.eval()

        def fn():
            with torch.inference_mode():
                return m(x, hx)
        return Runner(name, fn, lambda r: dict(y=r[0].numpy(), h_n=r[1][0][0].numpy(), c_n=r[1][1][0].numpy()))
    if case == "stream":
        m.eval()
        steps = [x[t:t + 1] for t in range(p["T"])]

        def fn():
            with torch.inference_mode():
                h = hx
                ys = []
                for xt in steps:
                    y, h = m(xt, h)
                    ys.append(y)
                return ys, h
        return Runner(name, fn, lambda r: dict(y=torch.cat(r[0]).numpy(), h_n=r[1][0][0].numpy(),
                                               c_n=r[1][1][0].numpy()))
    m.train()
    x = x.clone().requires_grad_(True)
    dy = torch.from_numpy(p["dy"])
    params = list(m.parameters())

    def fn():
        for q in params:
            q.grad = None
        x.grad = None
        y, _ = m(x, hx)
        y.backward(dy)   # = d/d(params, x) of sum(y * dy)
        return y

    def extract(y):
        return dict(y=y.detach().numpy(), dx=x.grad.numpy(), dw_ih=m.weight_ih_l0.grad.numpy(),
                    dw_hh=m.weight_hh_l0.grad.numpy(), db_ih=m.bias_ih_l0.grad.numpy())
    return Runner(name, fn, extract)


def onnx_lstm_model(T, B, I, H, state_dict):
    """A one-node ONNX model computing torch.nn.LSTM with ``state_dict`` (float32).

    Inputs X (T, B, I), initial_h and initial_c (1, B, H); outputs Y (T, 1, B, H),
    Y_h and Y_c (1, B, H). ONNX orders the gates i, o, f, c; torch i, f, g, o.
    """
    from onnx import TensorProto, helper, numpy_helper

    def reorder(w):
        i, f, g, o = np.split(np.asarray(w, np.float32), 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)
    W = reorder(state_dict["weight_ih_l0"])[None]
    R = reorder(state_dict["weight_hh_l0"])[None]
    Bias = np.concatenate([reorder(state_dict["bias_ih_l0"]), reorder(state_dict["bias_hh_l0"])])[None]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c"],
                            ["Y", "Y_h", "Y_c"], hidden_size=H)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info("X", f32, [T, B, I]),
         helper.make_tensor_value_info("initial_h", f32, [1, B, H]),
         helper.make_tensor_value_info("initial_c", f32, [1, B, H])],
        [helper.make_tensor_value_info("Y", f32, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", f32, [1, B, H]),
         helper.make_tensor_value_info("Y_c", f32, [1, B, H])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                     numpy_helper.from_array(Bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _ort(name, case, p, threads):
    import onnxruntime as ort
    if p["dtype"] != "float32":
        raise ValueError("the ONNX Runtime competitor is float32 only")
    T, B, I, H = p["T"], p["B"], p["I"], p["H"]
    model = onnx_lstm_model(1 if case == "stream" else T, B, I, H, p["state_dict"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x, h0, c0 = p["x"], p["h0"][None], p["c0"][None]
    if case == "forward":
        feed = {"X": x, "initial_h": h0, "initial_c": c0}
        fn = lambda: sess.run(None, feed)
        return Runner(name, fn, lambda r: dict(y=r[0][:, 0], h_n=r[1][0], c_n=r[2][0]))
    if case == "stream":
        steps = [x[t:t + 1] for t in range(T)]

        def fn():
            h, c = h0, c0
            ys = []
            for xt in steps:
                y, h, c = sess.run(None, {"X": xt, "initial_h": h, "initial_c": c})
                ys.append(y)
            return ys, h, c
        return Runner(name, fn, lambda r: dict(y=np.concatenate(r[0])[:, 0], h_n=r[1][0], c_n=r[2][0]))
    raise ValueError("the ONNX Runtime competitor does inference only (forward, stream)")


def oracle(case, p):
    """Reference outputs: torch.nn.LSTM if installed, else the NumPy reference backend."""
    name = "torch" if have("torch") else "lstm_fast[numpy]"
    r = make_runner(name, case, p, 1)
    return {k: np.array(v, copy=True) for k, v in r.extract(r.fn()).items()}


def check(outputs, expected, dtype, who=""):
    """assert_allclose on every array in ``expected``, tolerance relative to its magnitude."""
    tol = TOLERANCE[np.dtype(dtype).name]
    for k, want in expected.items():
        got = np.asarray(outputs[k])
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"{who}: {k} differs from the oracle")


# --- the machine ---------------------------------------------------------

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "LSTM_FAST_BACKEND", "LSTM_FAST_NUM_THREADS")


def _version(module):
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def machine_info():
    """What a benchmark result depends on: CPU, SIMD level, environment, versions."""
    cpu = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "model name" and "model" not in cpu:
                    cpu["model"] = v
                elif k == "flags" and "flags" not in cpu:
                    flags = set(v.split())
                    cpu["flags"] = " ".join(s for s in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                                         "avx512_bf16", "amx_tile") if s in flags)
    except OSError:
        pass
    cpu["logical_cpus"] = os.cpu_count()
    try:
        cpu["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    info = {"cpu": cpu, "platform": platform.platform()}
    try:
        info["loadavg"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    simd = {}
    try:
        from lstm_fast.backends import _c as _ckernel
    except ImportError as e:
        simd["error"] = str(e)
    else:
        for fn in ("cpu_simd_level", "simd_level"):
            if hasattr(_ckernel, fn):
                try:
                    simd[fn] = getattr(_ckernel, fn)()
                except Exception as e:   # a half-built kernel must not break the report
                    simd[fn] = f"error: {e}"
        if hasattr(_ckernel, "build_info"):
            try:
                simd["build_info"] = {str(k): str(v) for k, v in dict(_ckernel.build_info()).items()}
            except Exception as e:
                simd["build_info"] = f"error: {e}"
    info["lstm_fast_simd"] = simd
    info["backends"] = {k: ("available" if v is None else v) for k, v in backends.backend_status().items()}
    info["env"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    info["versions"] = {"python": platform.python_version(), "numpy": np.__version__,
                        "lstm_fast": lstm_fast.__version__}
    for mod in ("torch", "onnxruntime", "onnx", "numba"):
        info["versions"][mod] = _version(mod)
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        pass
    if "torch" in sys.modules:
        import torch
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    return info


# --- lstm-fast bench -------------------------------------------------------

def _time(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def measure(runners, repeat=7, min_time=0.01):
    """Median seconds per call of each runner, the runners interleaved round by round.

    Each round times a batch of calls of every runner in turn, the batch size
    chosen so one batch lasts about ``min_time``; interleaving spreads the slow
    drift of a shared machine over all competitors alike.
    """
    number = {}
    for r in runners:
        t = _time(r.fn, 1)
        number[r.name] = max(1, min(10000, int(min_time / max(t, 1e-7))))
    times = {r.name: [] for r in runners}
    for _ in range(repeat):
        for r in runners:
            times[r.name].append(_time(r.fn, number[r.name]))
    return {k: statistics.median(v) for k, v in times.items()}


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def parse_shape(text):
    if text in QUICK_SHAPES:
        return text, QUICK_SHAPES[text]
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"a shape is T,B,I,H or one of {', '.join(QUICK_SHAPES)}; got {text!r}")
    try:
        shape = tuple(int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"T,B,I,H must be integers, got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"T,B,I,H must be positive, got {text!r}")
    return text, shape


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="lstm-fast bench",
        description="Quick speed comparison: every available backend of lstm_fast (the LSTM "
                    "layer, weights packed once), torch.nn.LSTM if installed and optionally "
                    "ONNX Runtime; outputs checked against an oracle first, then medians of "
                    "interleaved rounds. The full suite is benchmarks/ (see benchmarks/README.md).")
    ap.add_argument("--shapes", nargs="+", type=parse_shape, metavar="SHAPE",
                    default=[(k, v) for k, v in QUICK_SHAPES.items()],
                    help=f"T,B,I,H or a name ({', '.join(QUICK_SHAPES)}); default: all of those")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=["forward", "train"])
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--min-time", type=float, default=0.01,
                    help="seconds per timed batch (default 0.01)")
    ap.add_argument("--onnxruntime", action="store_true", help="include ONNX Runtime (float32 inference)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        ap.error("--threads and --repeat must be positive")

    info = machine_info()
    print(f"lstm_fast {lstm_fast.__version__}, backends {', '.join(lstm_fast.available_backends())}; "
          f"CPU {info['cpu'].get('model', '?')}; SIMD {info['lstm_fast_simd'].get('simd_level', info['lstm_fast_simd'].get('cpu_simd_level', '?'))}; "
          f"{args.dtype}, {args.threads} thread(s); median of {args.repeat} interleaved rounds")
    if not have("torch"):
        print("torch is not installed: speedups are shown over the NumPy reference instead")
    header = f"{'case':<8} {'T,B,I,H':<16} {'implementation':<20} {'median':>10} {'GFLOP/s':>8} {'vs base':>8}"
    print(header)
    print("-" * len(header))
    status = 0
    for case in args.cases:
        for label, (T, B, I, H) in args.shapes:
            p = make_problem(T, B, I, H, args.dtype)
            names = [n for n in competitors(case, args.dtype) if n != "onnxruntime" or args.onnxruntime]
            expected = oracle(case, p)
            runners = []
            for n in names:
                r = make_runner(n, case, p, args.threads)
                try:
                    check(r.extract(r.fn()), expected, args.dtype, n)
                except AssertionError as e:
                    print(f"{case:<8} {T},{B},{I},{H:<9} {n:<20} WRONG RESULT, not timed: "
                          f"{str(e).strip().splitlines()[0]}")
                    status = 1
                    continue
                runners.append(r)
            set_threads(args.threads)
            med = measure(runners, args.repeat, args.min_time)
            base = med.get("torch", med.get("lstm_fast[numpy]"))
            f = flops(case, T, B, I, H)
            for n, t in med.items():
                shape = f"{T},{B},{I},{H}"
                speed = f"{base / t:.2f}x" if base else "-"
                print(f"{case:<8} {shape:<16} {n:<20} {fmt_time(t):>10} {f / t / 1e9:>8.2f} {speed:>8}")
    print("vs base: speedup over torch.nn.LSTM (over the NumPy reference without torch); "
          "GFLOP/s with forward = 2*T*B*4H*(I+H), a training step 3x that.")
    return status


if __name__ == "__main__":
    sys.exit(main())
