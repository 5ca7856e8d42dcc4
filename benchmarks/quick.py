"""``lstm-fast bench``: a quick speed comparison with interleaved rounds (no pytest).

The same competitors, checks and shapes as the pytest-benchmark suites (harness.py,
models.py, ceiling.py, shapes.py): by default the grid shapes ``shapes.QUICK`` (forward
and train, float32, 1 thread); ``--models`` runs the models group, ``--ceiling`` first
measures the machine's GEMM ceiling and prints every figure's share of it.
"""

import argparse
import sys

import lstm_fast

from . import ceiling, harness, models, shapes


def parse_shape(text):
    if text in shapes.SHAPES:
        return text, shapes.SHAPES[text]
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"a shape is T,B,I,H or one of {', '.join(shapes.SHAPES)}; got {text!r}")
    try:
        shape = tuple(int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"T,B,I,H must be integers, got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"T,B,I,H must be positive, got {text!r}")
    return text, shape


def parse_model(text):
    if text not in shapes.MODELS and text not in shapes.MODEL_SMOKE_CONFIGS:
        raise argparse.ArgumentTypeError(f"a model is one of {', '.join(shapes.MODELS)}; got {text!r}")
    return text


def measure_ceiling(dtype, threads, n, repeat, shape=None, label=None):
    """(GFLOP/s, library) of the best GEMM here: n^3, or ``shape`` = (M, K, N) (printed as
    ``label``)."""
    p = ceiling.make_problem(n, dtype, shape=shape)
    m, k, nn = p["shape"]
    runners = []
    for name in ceiling.competitors(dtype):
        r = ceiling.make_runner(name, p, threads)
        ceiling.check(r.outputs(), p, name)
        runners.append(r)
    harness.set_threads(threads)
    med = harness.measure(runners, repeat=max(3, repeat // 2), min_time=0.05)
    best = min(med, key=med.get)
    labels = ceiling.library_labels(harness.machine_info())
    what = label or f"GEMM {n}^3"
    for name, t in med.items():
        print(f"  {what} {dtype} {threads}T {labels.get(name, name):<58} "
              f"{ceiling.flops(m, k, nn) / t / 1e9:8.1f} GFLOP/s")
    return ceiling.flops(m, k, nn) / med[best] / 1e9, labels.get(best, best)


def _row(case, label, name, t, f, base, peak):
    speed = f"{base / t:.2f}x" if base else "-"
    pct = f"{100 * f / t / 1e9 / peak:5.1f}%" if peak else "-"
    print(f"{case:<14} {label:<22} {name:<22} {harness.fmt_time(t):>10} {f / t / 1e9:>8.2f} {pct:>7} {speed:>8}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="lstm-fast bench",
        description="Quick speed comparison: lstm_fast (the NumPy LSTM layer on every available "
                    "backend, and the torch module), torch.nn.LSTM if installed and optionally "
                    "ONNX Runtime; outputs checked against an oracle first, then medians of "
                    "interleaved rounds. The full suite: benchmarks/README.md.")
    ap.add_argument("--shapes", nargs="+", type=parse_shape, metavar="SHAPE",
                    default=[(k, shapes.SHAPES[k]) for k in shapes.QUICK],
                    help=f"T,B,I,H or a grid name ({', '.join(shapes.SHAPES)}); default: "
                         f"{', '.join(shapes.QUICK)}")
    ap.add_argument("--cases", nargs="+", choices=shapes.CASES, default=["forward", "train"])
    ap.add_argument("--models", nargs="*", type=parse_model, metavar="MODEL", default=None,
                    help=f"run the models group instead of the grid ({', '.join(shapes.MODELS)}; "
                         "no name: all); needs torch")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--min-time", type=float, default=0.01,
                    help="seconds per timed batch (default 0.01)")
    ap.add_argument("--onnxruntime", action="store_true", help="include ONNX Runtime (float32 inference)")
    ap.add_argument("--ceiling", action="store_true",
                    help=f"measure the GEMM ceiling ({shapes.GEMM_N}^3) first and show each figure's share")
    ap.add_argument("--gemm-n", type=int, default=shapes.GEMM_N, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        ap.error("--threads and --repeat must be positive")
    if args.models is not None and not harness.have("torch"):
        ap.error("--models needs torch")

    info = harness.machine_info()
    cpu, simd = info["cpu"], info["lstm_fast_simd"]
    print(f"lstm_fast {lstm_fast.__version__}, backends {', '.join(lstm_fast.available_backends())}; "
          f"CPU {cpu.get('model', '?')} ({cpu.get('vendor', '?')}); "
          f"SIMD {simd.get('simd_level', simd.get('cpu_simd_level', '?'))}; "
          f"{args.dtype}, {args.threads} thread(s); median of {args.repeat} interleaved rounds")
    peak = None
    if args.ceiling:
        peak, lib = measure_ceiling(args.dtype, args.threads, args.gemm_n, args.repeat)
        print(f"ceiling: {peak:.1f} GFLOP/s ({lib})")
        if args.models is not None:     # the measured limit of a per-step library GEMM
            for name in args.models or shapes.MODELS:
                sh = ceiling.step_shape(shapes.model_config(name))
                g, lib = measure_ceiling(args.dtype, args.threads, 0, args.repeat, shape=sh,
                                         label=f"step product {name} {','.join(map(str, sh))}")
                print(f"step product {name}: best {g:.1f} GFLOP/s ({lib}), {100 * g / peak:.0f}% of the ceiling")
    if not harness.have("torch"):
        print("torch is not installed: speedups are shown over the NumPy reference instead")
    header = (f"{'case':<14} {'shape':<22} {'implementation':<22} {'median':>10} {'GFLOP/s':>8} "
              f"{'%ceil':>7} {'vs base':>8}")
    print(header)
    print("-" * len(header))
    status = 0
    if args.models is not None:
        jobs = [(case, name) for case in shapes.MODEL_CASES for name in (args.models or shapes.MODELS)
                if args.dtype in shapes.MODEL_DTYPES[case]]
    else:
        jobs = [(case, shape) for case in args.cases for shape in args.shapes]
    for case, what in jobs:
        if args.models is not None:
            p = models.make_problem(what, args.dtype)
            names = models.competitors(case, args.dtype)
            expected = models.oracle(case, p)
            spec = ("models", case, what, args.dtype, args.threads)
            make = lambda n: models.make_runner(n, case, p, args.threads)  # noqa: E731
            f, label = shapes.model_flops(case, p["model"]), what
        else:
            label, (T, B, I, H) = what
            p = harness.make_problem(T, B, I, H, args.dtype)
            names = harness.competitors(case, args.dtype)
            expected = harness.oracle(case, p)
            spec = ("grid", case, (T, B, I, H), args.dtype, args.threads)
            make = lambda n: harness.make_runner(n, case, p, args.threads)  # noqa: E731
            f, label = shapes.flops(case, T, B, I, H), f"{T},{B},{I},{H}"
        names = [n for n in names if n != "onnxruntime" or args.onnxruntime]
        runners = []
        for n in names:
            # ONNX Runtime at 2+ threads in a process of its own (see harness.ChildRunner)
            r = (harness.ChildRunner((spec[0], n) + spec[1:]) if n == "onnxruntime" and args.threads > 1
                 else make(n))
            try:
                harness.check(r.outputs(), expected, args.dtype, n)
            except AssertionError as e:
                print(f"{case:<14} {label:<22} {n:<22} WRONG RESULT, not timed: "
                      f"{str(e).strip().splitlines()[0]}")
                status = 1
                r.close()
                continue
            r.arm()
            runners.append(r)
        harness.set_threads(args.threads)
        try:
            med = harness.measure(runners, args.repeat, args.min_time)
        finally:
            for r in runners:
                r.close()
        base = med.get("torch", med.get("lstm_fast[numpy]"))
        for n, t in med.items():
            _row(case, label, n, t, f, base, peak)
    harness.reset_threads()
    print("vs base: speedup over torch.nn.LSTM (over the NumPy reference without torch); "
          "GFLOP/s with forward = 2*T*B*4H*(I+H) per layer and direction, a training step 3x that.")
    return status


if __name__ == "__main__":
    sys.exit(main())
