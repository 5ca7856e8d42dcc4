"""What bench_bf16.py and bench_int8.py share: the shapes (B = 1 streaming with
``Stream.step`` at H = 512 and 1024, where every step re-reads the weights, and the large
forward (32, 64, 256, 256) and (128, 64, 512, 512), compute bound), our layer quantized to a weight dtype, and the
benchmark body (outputs checked against the float32 layer's first; under
``--benchmark-disable``, the test suite, one untimed call on small shapes).

Roofline (issue 16: "what fraction of the measured bf16/int8/fp32 peak it reaches"): each
timed benchmark records in extra_info the CPU's measured per-core instruction rates
(``_c.instruction_rates()``: register-only fp32 FMA, vdpbf16ps, vpdpbusd; ``_c.amx_rates()``:
tile-only tdpbf16ps and tdpbusd where the CPU has AMX) and
``roofline``: the instruction its products run on, that peak times the threads, the
GFLOP/s reached (forward 2*T*B*4H*(I+H), a training step 3x) and the fraction; the
terminal summary prints the rates first and one line per case (conftest.py)."""

import numpy as np

import lstm_fast

from . import harness
from .conftest import benchmark_disabled

# filled by record_roofline, printed by conftest.pytest_terminal_summary
ROOFLINE_LINES = []


def rates():
    """The running CPU's measured per-core instruction rates (None without the c backend):
    ``_c.instruction_rates()`` and, where the CPU has AMX, ``amx_bf16`` (tdpbf16ps) and
    ``amx_int8`` (tdpbusd) from ``_c.amx_rates()``."""
    try:
        from lstm_fast.backends import _c
    except ImportError:
        return None
    r = dict(_c.instruction_rates())
    a = _c.amx_rates()
    r["amx_bf16"], r["amx_int8"] = a["bf16"], a["int8"]
    return r


def peak_of(weights, B):
    """The instruction the products of ``weights`` run on at B rows: "fp32_fma",
    "bf16_dot", "int8_dot", "amx_bf16", "amx_int8", or None (no measured rate)."""
    from lstm_fast.backends import _c
    w, _, mode = weights.partition("-")
    if weights in ("torch-dynamic-int8", "ort-dynamic-int8"):
        return "int8_dot"        # fbgemm / MLAS: vpdpbusd where the CPU has it
    if w == "bfloat16":
        if mode == "amx" or (not mode and _c.bf16_path(B).startswith("AMX")):
            return "amx_bf16"
        native = {"native": True, "emulated": False}.get(mode, _c.bf16_path(B).startswith("native"))
        return "bf16_dot" if native else "fp32_fma"
    if w == "int8_dynamic":
        path = _c.int8_dynamic_path(B)
        return ("amx_int8" if "by AMX" in path else "int8_dot" if "vpdpbusd" in path
                else None)
    return "fp32_fma"            # float32, int8 weight-only (widened to float32)


def record_roofline(benchmark, label, weights, T, B, I, H, threads, train=False):
    """extra_info["rates"] and ["roofline"] of a timed benchmark, and its summary line."""
    r = rates()
    stats = getattr(benchmark, "stats", None)
    if r is None or stats is None or getattr(benchmark, "disabled", False):
        return
    median = stats.stats.median
    flops = 2 * T * B * 4 * H * (I + H) * (3 if train else 1)
    gflops = flops / median / 1e9
    peak = peak_of(weights, B)
    rate = r.get(peak) if peak else None
    benchmark.extra_info["rates"] = r
    benchmark.extra_info["roofline"] = dict(
        peak=peak, peak_gflops=rate * threads if rate else None, gflops=round(gflops, 2),
        fraction=round(gflops / (rate * threads), 4) if rate else None)
    where = (f"{gflops / (rate * threads):6.1%} of {peak} {rate * threads:.0f}"
             if rate else "no measured peak")
    ROOFLINE_LINES.append(
        f"{label} T,B,I,H={T},{B},{I},{H} threads={threads} {weights}: median "
        f"{median * 1e3:.3f} ms, {gflops:.1f} GFLOP/s = {where}")

# name: (case, T, B, I, H); stream: T steps of Stream.step per timed call
CASES = {"stream512": ("stream", 32, 1, 512, 512), "stream1024": ("stream", 32, 1, 1024, 1024),
         "large256": ("forward", 32, 64, 256, 256), "large512": ("forward", 128, 64, 512, 512)}
SMOKE = {"stream512": ("stream", 3, 1, 16, 16), "stream1024": ("stream", 3, 1, 9, 33),
         "large256": ("forward", 3, 8, 16, 20), "large512": ("forward", 2, 3, 7, 12)}
ROUNDS = {"forward": 7, "stream": None}


def layer_runner(case, T, B, I, H, weights):
    """Our c-backend layer with ``weights`` ("float32", a weight dtype, or a weight dtype
    and a mode after a dash, "bfloat16-native": the mode is the caller's to set)."""
    p = harness.make_problem(T, B, I, H, "float32")
    layer = lstm_fast.LSTM(I, H, backend="c").eval()
    layer.load_state_dict(p["state_dict"])
    if weights != "float32":
        layer = lstm_fast.quantize(layer, weights.partition("-")[0])
    x, hx = p["x"], (p["h0"][None], p["c0"][None])
    if case == "forward":
        return harness.Runner(weights, lambda: layer(x, hx), lambda r: r[0])
    stream = lstm_fast.Stream(layer, B, hx)
    steps = list(x)

    def fn():
        stream.reset(hx)
        return [stream.step(xt) for xt in steps]
    return harness.Runner(weights, fn, np.stack)


def run(benchmark, request, name, weights, threads, label, tol, extra, runner=layer_runner):
    """One benchmark of CASES[name]: ``runner(case, T, B, I, H, weights)`` timed after its
    outputs are checked against the float32 layer's (within 1e-5 for float32, ``tol``
    otherwise); ``extra(B, I, H)``: what to record besides the shape."""
    case, T, B, I, H = (SMOKE if benchmark_disabled(request.config) else CASES)[name]
    want = layer_runner(case, T, B, I, H, "float32").outputs()

    def check(got):
        err = np.abs(got - want).max()
        assert err < (1e-5 if weights == "float32" else tol), (weights, err)

    try:
        harness.run_benchmark(
            benchmark, runner(case, T, B, I, H, weights), threads, check,
            group=f"{label} {case} T,B,I,H={T},{B},{I},{H} threads={threads}",
            extra=dict(case=case, shape=name, T=T, B=B, I=I, H=H, threads=threads,
                       weights=weights, **extra(B, I, H)),
            rounds=ROUNDS[case])
        record_roofline(benchmark, label, weights, T, B, I, H, threads)
    finally:
        harness.reset_threads()
