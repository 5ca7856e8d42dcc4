"""The ``lstm-fast`` command: explain, churn, bench, info."""

import sys

USAGE = """usage: lstm-fast COMMAND [options]

commands:
  churn     train and evaluate the customer-churn model (the main job); 'churn predict' scores new data
  explain   the hand-worked example x = 1, 2, 3: forward, loss and backpropagation, every number shown
  bench     a quick speed comparison of the backends and torch.nn.LSTM
  info      version, backends, SIMD level, threads, build configuration

'lstm-fast COMMAND --help' describes each command."""


def _self_check(name):
    """A tiny forward+backward on backend ``name`` against the NumPy reference."""
    import numpy as np

    from lstm_fast import lstm_backward, lstm_forward

    rng = np.random.default_rng(0)
    args = [rng.uniform(-0.5, 0.5, s) for s in ((3, 2, 3), (16, 3), (16, 4), (16,), (16,))]
    try:
        ours = lstm_forward(*args, backend=name)
        ref = lstm_forward(*args, backend="numpy")
        g_ours = lstm_backward(ours.cache, np.ones_like(ours.y))
        g_ref = lstm_backward(ref.cache, np.ones_like(ref.y))
    except Exception as e:      # report, don't crash: this is a diagnostic
        return f"error: {type(e).__name__}: {e}"
    ok = np.allclose(ours.y, ref.y, rtol=1e-12, atol=1e-13) and \
        np.allclose(g_ours.dw_hh, g_ref.dw_hh, rtol=1e-12, atol=1e-13)
    return "ok (float64 forward+backward match the reference)" if ok else "MISMATCH with the reference"


def info(argv=None):
    import argparse
    import os
    import platform

    import numpy as np

    import lstm_fast
    from lstm_fast import backends

    ap = argparse.ArgumentParser(prog="lstm-fast info", description="What this installation has.")
    ap.add_argument("--check", action="store_true",
                    help="also self-check the numba backend (compiles it on first use, "
                         "~35 s per dtype; cached on disk after that)")
    args = ap.parse_args(argv)
    print(f"lstm_fast {lstm_fast.__version__}  (Python {platform.python_version()}, numpy {np.__version__})")
    for var in (backends.ENV_VAR, "LSTM_FAST_SIMD", "LSTM_FAST_THREADING"):
        print(f"{var}={os.environ.get(var, '(unset)')}")
    print("backends (auto prefers them in this order):")
    for name, reason in backends.backend_status().items():
        if reason is not None:
            state = "missing: " + reason
        elif name == "numba" and not args.check:
            state = "available (self-check with --check: compiles on first use)"
        else:
            state = f"available, self-check {_self_check(name)}"
        print(f"  {name:<6} {state}")
    print(f"auto resolves to: {backends.resolve('auto')}")
    n = backends.get_num_threads()
    print(f"threads: {n if n else 'chosen per shape'} (set with lstm_fast.set_num_threads); "
          f"{backends.CPUS} CPUs usable by this process")
    if backends.backend_status()["c"] is None:
        c = backends.get("c")
        print(f"CPU SIMD level: {c.cpu_simd_level()}")
        print(f"SIMD level used: {c.simd_level()}")
        print(f"instruction rates: {c.rates_summary()}")
        print(f"bfloat16 weights (weight_dtype='bfloat16'): B = 1 {c.bf16_path(1)}; "
              f"B = 64 {c.bf16_path(64)}")
        print(f"int8 weights (weight_dtype='int8'): {c.int8_path()}")
        print(f"int8 weights, x and h quantized per step (weight_dtype='int8_dynamic'): "
              f"{c.int8_dynamic_path()}")
        for k, v in c.build_info().items():
            if k not in ("simd_level", "cpu_simd_level", "bf16", "int8", "int8_dynamic",
                         "instruction_rates"):
                print(f"build {k}: {v}")
    return 0


def _bench_main():
    """``lstm-fast bench`` is the harness's quick.py: ``lstm_fast.benchmarks`` in a wheel (the
    repository's benchmarks/, mapped in pyproject's wheel.packages), else a checkout's benchmarks/."""
    try:
        from .benchmarks.quick import main
    except ModuleNotFoundError as e:
        if e.name not in (__package__ + ".benchmarks", __package__ + ".benchmarks.quick"):
            raise
        import os
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if not os.path.isfile(os.path.join(root, "benchmarks", "quick.py")):
            raise SystemExit("lstm-fast bench: the benchmark harness (lstm_fast.benchmarks) is not "
                             "installed") from None
        sys.path.insert(0, root)
        from benchmarks.quick import main
    return main


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "explain":
        from .explain import main as run
    elif cmd == "info":
        run = info
    elif cmd == "bench":
        run = _bench_main()
    elif cmd == "churn":
        from .churn.cli import main as run
    else:
        print(f"lstm-fast: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
