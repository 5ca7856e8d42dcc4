"""The ``lstm-fast`` command: explain, churn, bench, info."""

import sys

USAGE = """usage: lstm-fast COMMAND [options]

commands:
  churn     train and evaluate the customer-churn model (the main job); 'churn predict' scores new data
  explain   the hand-worked example x = 1, 2, 3: forward, loss and backpropagation, every number shown
  bench     a quick speed comparison of the backends and torch.nn.LSTM
  info      version, backends, SIMD level, threads, build configuration

'lstm-fast COMMAND --help' describes each command."""


def info(argv=None):
    import platform

    import numpy as np

    import lstm_fast
    from lstm_fast import _backends

    print(f"lstm_fast {lstm_fast.__version__}  (Python {platform.python_version()}, numpy {np.__version__})")
    print("backends (auto prefers them in this order):")
    for name, reason in _backends.backend_status().items():
        print(f"  {name:<6} {'available' if reason is None else 'missing: ' + reason}")
    print(f"auto resolves to: {_backends.resolve('auto')}")
    n = _backends.get_num_threads()
    print(f"threads: {n if n else 'chosen per shape'} (set with lstm_fast.set_num_threads)")
    try:
        from lstm_fast import _ckernel
    except ImportError:
        pass
    else:
        print(f"CPU SIMD level: {_ckernel.cpu_simd_level()}")
        if hasattr(_ckernel, "simd_level"):
            print(f"SIMD level used: {_ckernel.simd_level()}")
        if hasattr(_ckernel, "build_info"):
            for k, v in _ckernel.build_info().items():
                print(f"build {k}: {v}")
    return 0


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
        from ._bench import main as run
    elif cmd == "churn":
        from .churn.cli import main as run
    else:
        print(f"lstm-fast: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
