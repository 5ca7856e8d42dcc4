"""lstm_fast's benchmark harness (see README.md in this directory).

One copy: the repository's ``benchmarks/``, shipped in the wheel as
``lstm_fast.benchmarks`` (pyproject's wheel.packages) so that ``lstm-fast bench``
(quick.py) runs from an installed wheel too. Only lstm_fast's public API is used.

    shapes.py     the grid, the models group and the GEMM size (data)
    harness.py    competitors on one layer, threads, checks, timing, the machine
    models.py     the models group's competitors (torch model, layer, ONNX Runtime)
    ceiling.py    the GEMM ceiling's competitors (oneDNN, torch.mm, NumPy's BLAS)
    bench_*.py    the pytest-benchmark suites (and bench_tools.py: tests of the tooling)
    report.py     JSON -> markdown report, CSV, plot
    quick.py      ``lstm-fast bench``
    run.sh        the timed run and the report
"""
