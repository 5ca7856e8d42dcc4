"""Competitors, threads, checks, timing and the machine description: the one copy that
the pytest-benchmark suites (bench_*.py), the report and ``lstm-fast bench`` share.

Competitors on one LSTM layer (the grid of shapes.py):

* ``lstm_fast[<backend>]``: the NumPy ``lstm_fast.LSTM`` layer (weights packed once,
  kept between calls), one per available backend, the NumPy reference included;
* ``lstm_fast.torch[<backend>]``: ``lstm_fast.torch.LSTM``, the drop-in torch module,
  on the backend "auto" picks (one competitor: the module's own cost is what it adds);
* ``torch``: ``torch.nn.LSTM`` with the same weights, ``torch.inference_mode()`` for
  inference, autograd for training;
* ``onnxruntime``: the ONNX model of ``lstm_fast.adapters.to_onnx_model`` (float32
  inference only), default graph optimization.

Cases: ``forward`` (inference over a whole sequence), ``train`` (forward, then backward
of sum(output * fixed gradient) with gradients for the parameters and the input),
``stream`` (inference one step at a time, the state carried from call to call, as in
real-time use; T calls of T = 1; the NumPy layer through ``lstm_fast.Stream``).

``set_threads(n)`` gives every library the same thread budget: our kernels
(``lstm_fast.set_num_threads``), torch's intra-op pool, and every BLAS loaded in the
process (through threadpoolctl; NumPy's OpenBLAS is what the reference backend calls).
A competitor's first call is checked against an oracle (torch, or the NumPy reference
without torch) before anything is timed.

Only lstm_fast's public API is used here (``LSTM``, ``Stream``, ``set_num_threads``,
``available_backends``, ``backend_status``, ``lstm_fast.torch``, ``lstm_fast.adapters``).
"""

import os
import platform
import re
import resource
import statistics
import sys
import time
import warnings

import numpy as np

import lstm_fast

from . import shapes

DTYPES = {"float32": np.float32, "float64": np.float64}
# Relative to the largest magnitude of each compared array.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def last_only(make):
    """make(*key), remembering only the latest key's result: the suites run one problem after
    another, and a large one (hundreds of MB at the large shapes) is freed when the next
    begins."""
    memo = {}

    def get(*key):
        if key not in memo:
            memo.clear()
            memo[key] = make(*key)
        return memo[key]
    return get


def fmt_time(s):
    """Seconds as µs / ms / s with 3-4 significant digits."""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def auto_backend():
    """The backend lstm_fast's "auto" picks here (a layer resolves it at construction)."""
    return lstm_fast.LSTM(1, 1).backend


# --- threads ---------------------------------------------------------------

_torch_default_threads = None
_blas_limiter = None
_warned = False


def set_threads(n):
    """The same thread count for our kernels, torch and every BLAS in the process."""
    global _torch_default_threads, _blas_limiter
    torch = sys.modules.get("torch")
    if torch is not None and _torch_default_threads is None:
        _torch_default_threads = torch.get_num_threads()
    lstm_fast.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        global _warned
        if not _warned:
            _warned = True
            warnings.warn("threadpoolctl is not installed: NumPy's BLAS keeps its own thread count "
                          "(pip install threadpoolctl, or lstm-fast[bench])", stacklevel=2)
        return
    limiter = threadpool_limits(n, user_api="blas")
    if _blas_limiter is None:
        _blas_limiter = limiter     # remembers the original limits


def reset_threads():
    """Undo ``set_threads``: our default (0, per shape), torch's and the BLAS defaults."""
    global _blas_limiter
    lstm_fast.set_num_threads(0)
    torch = sys.modules.get("torch")
    if torch is not None and _torch_default_threads is not None:
        torch.set_num_threads(_torch_default_threads)
    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
        _blas_limiter = None


def _lib_owner(path):
    """The package a shared library came with: numpy for .../numpy.libs/x.so, torch for .../torch/lib/x.so."""
    d = os.path.dirname(path)
    name = os.path.basename(d)
    if name in ("lib", "lib64", "libs"):
        name = os.path.basename(os.path.dirname(d))
    return name.removesuffix(".libs")


def blas_info():
    """threadpoolctl's view of the BLAS and OpenMP libraries loaded in this process."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "user_api", "version", "architecture", "threading_layer", "num_threads",
            "prefix")
    out = []
    for lib in threadpool_info():
        d = {k: v for k, v in lib.items() if k in keep}
        d["owner"] = _lib_owner(lib.get("filepath") or "")
        out.append(d)
    return out


# --- the problem -------------------------------------------------------------

def make_problem(T, B, I, H, dtype="float32", seed=0):
    """Weights in torch's layout and names, input, initial state, output gradient."""
    dt = DTYPES[np.dtype(dtype).name]
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    u = lambda lim, *s: rng.uniform(-lim, lim, size=s).astype(dt)  # noqa: E731
    return dict(
        T=T, B=B, I=I, H=H, dtype=np.dtype(dt).name,
        state_dict={"weight_ih_l0": u(k, 4 * H, I), "weight_hh_l0": u(k, 4 * H, H),
                    "bias_ih_l0": u(k, 4 * H), "bias_hh_l0": u(k, 4 * H)},
        x=u(1.0, T, B, I), h0=u(0.5, B, H), c0=u(0.5, B, H), dy=u(1.0, T, B, H))


# --- competitors -------------------------------------------------------------

def competitors(case, dtype):
    """Names of the competitors available here for ``case`` and ``dtype``, ours first."""
    names = [f"lstm_fast[{b}]" for b in lstm_fast.available_backends()]
    if have("torch"):
        names.append(f"lstm_fast.torch[{auto_backend()}]")
        names.append("torch")
    if case != "train" and np.dtype(dtype).name == "float32" and have("onnx") and have("onnxruntime"):
        names.append("onnxruntime")
    return names


def backend_of(name):
    """"c" for "lstm_fast[c]" or "lstm_fast.torch[c]", else None."""
    return name[name.index("[") + 1:-1] if name.startswith("lstm_fast") and name.endswith("]") else None


class Runner:
    """``fn()`` runs one timed call; ``outputs()`` runs one call and returns its results as
    NumPy arrays for ``check``. ``before_check`` (if given) runs first in ``outputs()``
    (e.g. seeding, so random draws repeat), ``arm()`` once before timing (e.g. turning on
    what the check had to leave off)."""

    def __init__(self, name, fn, extract, before_check=None, before_timing=None):
        self.name, self.fn, self.extract = name, fn, extract
        self.before_check, self.before_timing = before_check, before_timing

    def outputs(self):
        if self.before_check is not None:
            self.before_check()
        return self.extract(self.fn())

    def arm(self):
        if self.before_timing is not None:
            self.before_timing()
        return self.fn

    def close(self):
        """Nothing to release (a ChildRunner ends its process)."""


def make_runner(name, case, p, threads):
    """Build competitor ``name`` for ``case`` on problem ``p`` with ``threads`` threads.

    Everything that can be prepared once (weights, tensors, sessions, the per-step
    slices of a stream) is prepared here, outside the timed call.
    """
    if case not in shapes.CASES:
        raise ValueError(f"case must be one of {shapes.CASES}, got {case!r}")
    set_threads(threads)
    if name.startswith("lstm_fast["):
        return _ours(name, backend_of(name), case, p)
    if name.startswith("lstm_fast.torch["):
        return _torch(name, case, p, backend_of(name))
    if name == "torch":
        return _torch(name, case, p, None)
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
        fn = lambda: layer(x, hx)  # noqa: E731
        return Runner(name, fn, lambda r: dict(y=r[0], h_n=r[1][0][0], c_n=r[1][1][0]))
    if case == "stream":
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
    layer.train()

    def fn():
        y, _ = layer(x, hx)
        dx, _ = layer.backward(dy)
        return y, dx, layer.grads

    def extract(r):
        y, dx, g = r
        return dict(y=y, dx=dx, dw_ih=g["weight_ih_l0"], dw_hh=g["weight_hh_l0"], db_ih=g["bias_ih_l0"])
    return Runner(name, fn, extract)


def _torch(name, case, p, backend):
    """torch.nn.LSTM (backend None) or lstm_fast.torch.LSTM on ``backend``."""
    import torch
    dt = getattr(torch, p["dtype"])
    if backend is None:
        m = torch.nn.LSTM(p["I"], p["H"], dtype=dt)
    else:
        import lstm_fast.torch
        m = lstm_fast.torch.LSTM(p["I"], p["H"], dtype=dt, backend=backend)
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


def ort_session(state_dict, threads, initial_state=True, quantize=False):
    """An ONNX Runtime session of ``lstm_fast.adapters.to_onnx_model(state_dict)`` (float32),
    ``threads`` intra-op threads, default graph optimization. ``quantize``: the model as
    ONNX Runtime's own tool converts it for int8 (``onnxruntime.quantization.quantize_dynamic``,
    int8 weights: the LSTM node becomes com.microsoft's DynamicQuantizeLSTM, which quantizes
    x and h per step), as its users run it: with ``reduce_range=True`` (7-bit weights) on a CPU
    without VNNI, as ``quantize_dynamic``'s documentation advises there (its u8s8 products
    then go through 16-bit pair sums that saturate: on an AMD EPYC Zen 3, AVX2 only, the
    8-bit weights' outputs were 0.04-0.10 off the float32 layer's, beyond the 3e-2 the int8
    benchmarks allow)."""
    import onnxruntime as ort

    from lstm_fast.adapters import to_onnx_model
    model = to_onnx_model(state_dict, initial_state=initial_state, lengths=False)
    if quantize:
        import tempfile

        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        with tempfile.TemporaryDirectory() as d:
            flags = cpu_info().get("flags", "").split()
            vnni = "avx512_vnni" in flags or "avx_vnni" in flags
            quantize_dynamic(model, os.path.join(d, "q.onnx"), weight_type=QuantType.QInt8,
                             reduce_range=not vnni)
            model = onnx.load(os.path.join(d, "q.onnx"))
        if not any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node):
            raise RuntimeError("quantize_dynamic did not produce a DynamicQuantizeLSTM node")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ort(name, case, p, threads, quantize=False):
    """ONNX Runtime's LSTM operator on problem ``p`` (``quantize``: its DynamicQuantizeLSTM,
    see ``ort_session``); outputs as the oracle's."""
    if p["dtype"] != "float32":
        raise ValueError("the ONNX Runtime competitor is float32 only")
    sess = ort_session(p["state_dict"], threads, quantize=quantize)
    x, h0, c0 = p["x"], p["h0"][None], p["c0"][None]
    if case == "forward":
        feed = {"X": x, "initial_h": h0, "initial_c": c0}
        fn = lambda: sess.run(None, feed)  # noqa: E731
        return Runner(name, fn, lambda r: dict(y=r[0], h_n=r[1][0], c_n=r[2][0]))
    if case == "stream":
        steps = [x[t:t + 1] for t in range(p["T"])]

        def fn():
            h, c = h0, c0
            ys = []
            for xt in steps:
                y, h, c = sess.run(None, {"X": xt, "initial_h": h, "initial_c": c})
                ys.append(y)
            return ys, h, c
        return Runner(name, fn, lambda r: dict(y=np.concatenate(r[0]), h_n=r[1][0], c_n=r[2][0]))
    raise ValueError("the ONNX Runtime competitor does inference only (forward, stream)")


def oracle(case, p):
    """Reference outputs: torch.nn.LSTM if installed, else the NumPy reference backend."""
    name = "torch" if have("torch") else "lstm_fast[numpy]"
    r = make_runner(name, case, p, 1)
    return {k: np.array(v, copy=True) for k, v in r.outputs().items()}


def check(outputs, expected, dtype, who=""):
    """assert_allclose on every array in ``expected``, tolerance relative to its magnitude."""
    tol = TOLERANCE[np.dtype(dtype).name]
    for k, want in expected.items():
        got = np.asarray(outputs[k])
        want = np.asarray(want)
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"{who}: {k} differs from the oracle")


# --- timing -------------------------------------------------------------------

# Calls slower than this (seconds, as the check's call took) are timed SLOW_ROUNDS times.
SLOW_CALL, SLOW_ROUNDS = 0.25, 5


def settle(quiet=0.002, step=0.02, limit=1.0):
    """Wait until no thread of this process is using the CPU (at most ``limit`` seconds):
    the process's CPU time grows by under ``quiet`` s over a ``step`` s sleep.

    A library's worker threads can spin after its last call: OpenBLAS's spin for ~50 ms
    (measured on the Xeon of benchmarks/README.md, "Harness: idle pools before timing"),
    so a 2-thread competitor timed right after the NumPy reference shared the CPUs with
    them. The returned seconds waited go to ``extra_info["settle_s"]``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        c0 = time.process_time()
        time.sleep(step)
        if time.process_time() - c0 < quiet:
            break
    return time.perf_counter() - t0


def warm(fn):
    """One untimed call of ``fn``, right before it is timed (after ``settle``).

    While ``settle`` waits, every thread of the process goes to sleep, and on a virtual
    machine a sleeping vCPU can take a host scheduler tick to run again: on the Intel Xeon
    KVM machine of benchmarks/README.md ("Session 13") the first 2-thread call after the
    wait took 2-9 ms for every library (churn forward: ours 1.7-7.9 ms, torch 7.5-8.7 ms,
    against 22 and 130 us for the calls after it). That wake-up is not the call's cost;
    this call pays it."""
    fn()


def run_benchmark(benchmark, runner, threads, check_outputs, group, extra, rounds=None):
    """The suites' one timed-benchmark routine (pytest-benchmark's ``benchmark`` fixture).

    Checks ``runner``'s outputs (``check_outputs(outputs)`` raises if wrong), sets the
    threads, waits until the process's own threads are idle (``settle``), times
    ``runner.arm()`` after one untimed call (``warm``) (``rounds`` single calls if given;
    pytest-benchmark's calibrated rounds for calls under SLOW_CALL seconds, else
    SLOW_ROUNDS single calls), records the CPU
    share other processes used meanwhile (``extra_info["foreign_cpu"]``, of one CPU), then
    checks the outputs again.
    """
    t0 = time.perf_counter()
    check_outputs(runner.outputs())
    if rounds is None and time.perf_counter() - t0 > SLOW_CALL:
        rounds = SLOW_ROUNDS
    fn = runner.arm()
    set_threads(threads)
    waited = 0.0 if getattr(benchmark, "disabled", False) else settle()
    warm(fn)
    benchmark.group = group
    benchmark.extra_info.update(extra)
    benchmark.extra_info["settle_s"] = round(waited, 3)
    busy0, own0, t0 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    if rounds:
        benchmark.pedantic(fn, rounds=rounds, iterations=1)
    else:
        benchmark(fn)
    busy1, own1, wall = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter() - t0
    if busy0 is not None and busy1 is not None and wall > 0:
        benchmark.extra_info["foreign_cpu"] = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 4)
    check_outputs(runner.outputs())


def run_checked(benchmark, runner, want, dtype, threads, group, extra, rounds=None):
    """run_benchmark with the outputs checked against ``want`` (the oracle's, ``check``)."""
    run_benchmark(benchmark, runner, threads,
                  lambda got: check(got, want, dtype, runner.name), group, extra, rounds)


# lstm-fast bench times with interleaved rounds instead:

def _time(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


class ChildRunner:
    """A competitor built and timed in a child process of its own (``spawn``): ``spec`` =
    ``(kind, name, case, what, dtype, threads)``, kind "models" (``what`` a model name)
    or "grid" (``what`` = (T, B, I, H)), as ``models.make_runner`` / ``make_runner``
    build it. ``measure`` asks it for whole timed batches (``time_batch``: the child
    settles, warms and times them itself), so no pipe round trip is timed; it answers
    each command once its own threads are idle again (``settle`` in the parent sees only
    the parent's threads).

    Why: a server runs ONNX Runtime in a process of its own, and there its 2-thread
    intra-op pool does not share the process's CPUs and scheduler state with the other
    competitors' batches. In process it set off a spiral in our pool's barrier on the
    Intel Xeon KVM machine (benchmarks/README.md, "Session 13"; fixed in the pool), and
    torch and ORT measured 5-20 % slower there than with ORT in its child. (The pytest
    suites keep ORT in process and run its 2-thread cases last instead: conftest.py.)"""

    def __init__(self, spec):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.name = spec[1]
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, spec), daemon=True)
        self._proc.start()
        child.close()
        self._reply()   # the child's report that it built the runner

    def _call(self, *msg):
        self._conn.send(msg)
        return self._reply()

    def _reply(self):
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"{self.name}, in its child process: {value}")
        return value

    def outputs(self):
        return self._call("outputs")

    def arm(self):
        self._call("arm")
        return self.fn

    def fn(self):
        self._call("call")

    def time_batch(self, number):
        return self._call("time", number)

    def close(self):
        if self._proc.is_alive():
            try:
                self._conn.send(("exit",))
            except OSError:
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()


def _child_main(conn, spec):
    """ChildRunner's process: build the runner, then serve its commands."""
    kind, name, case, what, dtype, threads = spec
    try:
        if kind == "models":
            from . import models
            runner = models.make_runner(name, case, models.make_problem(what, dtype), threads)
        else:
            runner = make_runner(name, case, make_problem(*what, dtype), threads)
        set_threads(threads)
        conn.send((True, None))
    except Exception:  # noqa: BLE001 (reported to the parent)
        import traceback
        conn.send((False, traceback.format_exc()))
        return
    fn = runner.fn
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "exit":
                return
            if msg[0] == "outputs":
                value = runner.outputs()
            elif msg[0] == "arm":
                fn, value = runner.arm(), None
            elif msg[0] == "call":
                fn()
                value = None
            elif msg[0] == "time":
                settle()
                warm(fn)
                value = _time(fn, msg[1])
            else:
                raise ValueError(f"unknown command {msg[0]!r}")
            settle()    # reply once this process's threads are idle: the parent's
            # settle sees only its own threads, and ORT's spin after a call
            conn.send((True, value))
        except Exception:  # noqa: BLE001
            import traceback
            conn.send((False, traceback.format_exc()))


def _time_batch(r, number):
    """Seconds per call of a batch of ``number`` calls of runner ``r``, after ``settle``
    and ``warm`` (a ChildRunner does both in its own process)."""
    if hasattr(r, "time_batch"):
        return r.time_batch(number)
    settle()
    warm(r.fn)
    return _time(r.fn, number)


def measure(runners, repeat=7, min_time=0.01):
    """Median seconds per call of each runner, the runners interleaved round by round.

    Each round times a batch of calls of every runner in turn, the batch size chosen so
    one batch lasts about ``min_time``; interleaving spreads the slow drift of a shared
    machine over all competitors alike. Before each batch the process's own threads are let
    go idle (``settle``): ONNX Runtime's and OpenBLAS's workers spin after a call, and a
    2-thread batch timed right after them shared the two CPUs with them (AMD EPYC Zen 4,
    ``lstm-fast bench --models wlm_small --threads 2 --onnxruntime``: our layer's forward
    24.4 ms right after ONNX Runtime's, 4.9 ms without it in the run). Then one untimed
    call (``warm``) wakes the runner's own threads, and the batch size comes from a warm
    call too: a cold first call (several ms at 2 threads on a virtual machine) gave
    batches of one or two calls, each paying the wake-up again. A ChildRunner times its
    batches in its own process.
    """
    number = {}
    for r in runners:                           # the batch size from a warm call
        t = _time_batch(r, 1)
        number[r.name] = max(1, min(10000, int(min_time / max(t, 1e-7))))
    times = {r.name: [] for r in runners}
    for _ in range(repeat):
        for r in runners:
            times[r.name].append(_time_batch(r, number[r.name]))
    return {k: statistics.median(v) for k, v in times.items()}


# --- the machine ---------------------------------------------------------------

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
            "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "LSTM_FAST_BACKEND", "LSTM_FAST_NUM_THREADS",
            "LSTM_FAST_SIMD", "LSTM_FAST_THREADING")
FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
         "avx512_fp16", "amx_tile", "amx_bf16")


def _version(module):
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def _caches():
    """Per-level caches of CPU 0 from sysfs: {"L1d": "48K (per 1 CPU)", ...}."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(e for e in os.listdir(base) if e.startswith("index"))
    except OSError:
        return out
    for e in entries:
        def read(f):
            with open(os.path.join(base, e, f)) as fh:
                return fh.read().strip()
        try:
            level, kind, size = read("level"), read("type"), read("size")
        except OSError:
            continue
        try:
            shared = read("shared_cpu_list")
        except OSError:
            shared = "?"
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[name] = f"{size} (CPUs {shared})"
    return out


def cpu_info():
    """Model name, vendor, family/model/stepping, SIMD flags, caches, CPU counts."""
    cpu = {}
    keys = {"model name": "model", "vendor_id": "vendor", "cpu family": "family", "model": "model_number",
            "stepping": "stepping", "cpu MHz": "mhz"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if not k and cpu:
                    break       # first processor only
                if k in keys and keys[k] not in cpu:
                    cpu[keys[k]] = v
                elif k == "flags" and "flags" not in cpu:
                    flags = set(v.split())
                    cpu["flags"] = " ".join(s for s in FLAGS if s in flags)
                    cpu["hypervisor"] = "hypervisor" in flags
    except OSError:
        pass
    cpu["caches"] = _caches()
    cpu["logical_cpus"] = os.cpu_count()
    try:
        cpu["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return cpu


def cpu_busy_seconds():
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU time of this process and of its waited-for children (``lstm-fast info``, the
    subprocess checks): theirs is not another process's load."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def lstm_fast_info():
    """SIMD levels and C build of this installation, parsed from ``lstm-fast info``'s output
    (the command stays put while the modules behind it move)."""
    import contextlib
    import io

    from lstm_fast import cli
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            cli.info([])
    except Exception as e:       # a half-built kernel must not break the report
        return {"error": f"{type(e).__name__}: {e}"}
    simd, build = {}, {}
    for line in buf.getvalue().splitlines():
        k, _, v = line.partition(":")
        if k == "CPU SIMD level":
            simd["cpu_simd_level"] = v.strip()
        elif k == "SIMD level used":
            simd["simd_level"] = v.strip()
        elif k.startswith("build "):
            build[k[len("build "):]] = v.strip()
    if build:
        simd["build_info"] = build
    return simd


def machine_info():
    """What a benchmark result depends on: CPU, SIMD level, BLAS, environment, versions."""
    info = {"cpu": cpu_info(), "platform": platform.platform()}
    try:
        info["loadavg"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    simd = lstm_fast_info()
    info["lstm_fast_simd"] = simd
    info["backends"] = {k: ("available" if v is None else v) for k, v in lstm_fast.backend_status().items()}
    info["env"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    info["versions"] = {"python": platform.python_version(), "numpy": np.__version__,
                        "lstm_fast": lstm_fast.__version__}
    for mod in ("torch", "onnxruntime", "onnx", "numba", "threadpoolctl"):
        info["versions"][mod] = _version(mod)
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        pass
    info["blas_libraries"] = blas_info()
    if "torch" in sys.modules:
        import torch
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_mkl"] = bool(torch.backends.mkl.is_available())
        config = torch.__config__.show()
        blas = re.search(r"BLAS_INFO=(\w+)", config)
        if blas:
            info["torch_blas"] = blas.group(1)
        for line in config.splitlines():
            if "Math Kernel Library Version" in line or "MKL-DNN v" in line:
                info.setdefault("torch_libraries", []).append(line.strip(" -"))
    return info
