"""Benchmark suite configuration (see README.md).

* Three suites: bench_ceiling.py (the GEMM ceiling, and each model's step product), bench_lstm.py (the grid of
  shapes.SHAPES), bench_models.py (the models group, shapes.MODELS).
* Large grid shapes and the large float64 model cases (marked ``large``) are deselected
  unless the ``-m`` expression mentions ``large`` or shapes/models are named explicitly.
* Under ``--benchmark-disable`` (the normal test suite: pyproject's addopts) every
  benchmark runs once, untimed, on the ``SMOKE`` shapes, the ``MODELS_SMOKE`` models and
  a small GEMM; timed runs (``--benchmark-enable``) use the whole grid.
  ``--bench-shapes a,b`` / ``LSTM_FAST_BENCH_SHAPES=a,b`` and ``--bench-models a,b`` /
  ``LSTM_FAST_BENCH_MODELS=a,b`` (``all`` for every one, ``none`` for none) override both.
* The machine description (CPU, caches, our SIMD level, BLAS libraries and environment
  variables that steer them, versions, CPU time other processes used during the run)
  goes into the JSON's ``machine_info["lstm_fast"]``.
"""

import os
import time

import pytest

from . import harness, models, shapes

ENV_SHAPES = "LSTM_FAST_BENCH_SHAPES"
ENV_MODELS = "LSTM_FAST_BENCH_MODELS"

try:
    _LOAD_AT_START = " ".join(f"{v:.2f}" for v in os.getloadavg())
except OSError:
    _LOAD_AT_START = None
_BUSY_AT_START = (harness.cpu_busy_seconds(), harness.own_cpu_seconds(), time.time())


def pytest_addoption(parser):
    parser.addoption("--bench-shapes", default=None, metavar="NAMES",
                     help=f"comma-separated grid shape names from benchmarks/shapes.py, 'all' or "
                          f"'none' (default: all for timed runs, {','.join(shapes.SMOKE)} under "
                          f"--benchmark-disable); also ${ENV_SHAPES}")
    parser.addoption("--bench-models", default=None, metavar="NAMES",
                     help=f"comma-separated model names from benchmarks/shapes.py, 'all' or 'none' "
                          f"(default: all for timed runs, {','.join(shapes.MODELS_SMOKE)} under "
                          f"--benchmark-disable); also ${ENV_MODELS}")


def benchmark_disabled(config):
    try:
        return config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    except ValueError:
        return True


def _explicit(config, option, env, known):
    try:
        spec = config.getoption(option)
    except ValueError:
        spec = None
    spec = (spec or os.environ.get(env, "")).strip()
    if not spec:
        return None
    if spec == "all":
        return tuple(n for n in known if n not in shapes.MODEL_SMOKE_CONFIGS)
    if spec == "none":
        return ()
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [s for s in names if s not in known]
    if unknown:
        raise pytest.UsageError(f"unknown benchmark names {unknown} for {option}; known: {', '.join(known)}")
    return names


def explicit_shapes(config):
    """Grid shape names asked for on the command line or in the environment, or None."""
    return _explicit(config, "--bench-shapes", ENV_SHAPES, tuple(shapes.SHAPES))


def explicit_models(config):
    return _explicit(config, "--bench-models", ENV_MODELS,
                     tuple(shapes.MODELS) + tuple(shapes.MODEL_SMOKE_CONFIGS))


def selected_shapes(config):
    names = explicit_shapes(config)
    if names is not None:
        return names
    return shapes.SMOKE if benchmark_disabled(config) else tuple(shapes.SHAPES)


def selected_models(config):
    names = explicit_models(config)
    if names is not None:
        return names
    return shapes.MODELS_SMOKE if benchmark_disabled(config) else tuple(shapes.MODELS)


def _ort_multithread(item):
    """An ONNX Runtime case at 2+ threads (grid, models, int8)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    ort = params.get("competitor") == "onnxruntime" or params.get("weights") == "ort-dynamic-int8"
    return ort and (params.get("threads") or 1) > 1


def pytest_collection_modifyitems(config, items):
    # ONNX Runtime's multi-thread cases run after all the others of the session: once its
    # 2-thread pool has run in the process, the other libraries' 2-thread calls measured
    # slower for the rest of it (benchmarks/README.md, "Session 13": the wlm_medium forward
    # of our layer 45.3 ms in the suite against 31.6-32.8 ms in `lstm-fast bench`, which
    # times ORT in a child process). Each case is timed on its own, so the order changes
    # no comparison but the minutes between them.
    items[:] = [i for i in items if not _ort_multithread(i)] + [i for i in items if _ort_multithread(i)]
    if "large" in (config.option.markexpr or ""):
        return
    keep, drop = [], []
    explicit = {"shape": explicit_shapes(config) is not None, "model": explicit_models(config) is not None}
    for item in items:
        callspec = getattr(item, "callspec", None)
        named = callspec is not None and any(explicit[k] for k in explicit if k in callspec.params)
        (drop if item.get_closest_marker("large") and not named else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "competitor" not in names:
        return
    case = metafunc.function.__name__.removeprefix("test_")
    params = []
    if "shape" in names:            # bench_lstm.py: the grid
        wanted = selected_shapes(metafunc.config)
        for shape in shapes.case_shapes(case):
            if shape not in wanted:
                continue
            marks = [pytest.mark.large] if shape in shapes.LARGE else []
            for dtype in shapes.DTYPES:
                for threads in shapes.THREADS:
                    for comp in harness.competitors(case, dtype):
                        params.append(pytest.param(shape, dtype, threads, comp, marks=marks,
                                                   id=f"{shape}-{dtype}-t{threads}-{comp}"))
        metafunc.parametrize(("shape", "dtype", "threads", "competitor"), params)
    elif "model" in names:          # bench_models.py: the models group
        if not harness.have("torch"):
            metafunc.parametrize(("model", "dtype", "threads", "competitor"),
                                 [pytest.param(None, None, None, None, marks=pytest.mark.skip(
                                     reason="the models group needs torch"))])
            return
        for model in selected_models(metafunc.config):
            for dtype in shapes.MODEL_DTYPES[case]:
                large = dtype == "float64" and model in shapes.MODELS_LARGE64
                marks = [pytest.mark.large] if large else []
                for threads in shapes.THREADS:
                    for comp in models.competitors(case, dtype):
                        params.append(pytest.param(model, dtype, threads, comp, marks=marks,
                                                   id=f"{model}-{dtype}-t{threads}-{comp}"))
        metafunc.parametrize(("model", "dtype", "threads", "competitor"), params)
    elif "gemm_n" in names:         # bench_ceiling.py
        n = shapes.GEMM_SMOKE_N if benchmark_disabled(metafunc.config) else shapes.GEMM_N
        from . import ceiling
        for dtype in shapes.DTYPES:
            for threads in shapes.THREADS:
                for comp in ceiling.competitors(dtype):
                    params.append(pytest.param(n, dtype, threads, comp, id=f"{n}-{dtype}-t{threads}-{comp}"))
        metafunc.parametrize(("gemm_n", "dtype", "threads", "competitor"), params)
    elif "step_model" in names:     # bench_ceiling.py: one recurrent step's product per model
        from . import ceiling
        for model in selected_models(metafunc.config):
            for dtype in shapes.DTYPES:
                for threads in shapes.THREADS:
                    for comp in ceiling.competitors(dtype):
                        params.append(pytest.param(model, dtype, threads, comp,
                                                   id=f"{model}-{dtype}-t{threads}-{comp}"))
        metafunc.parametrize(("step_model", "dtype", "threads", "competitor"), params)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    harness.reset_threads()


def pytest_benchmark_update_machine_info(config, machine_info):
    if harness.have("torch"):
        import torch  # noqa: F401  (so machine_info records torch's CPU capability and BLAS)
    info = harness.machine_info()
    info["loadavg_at_start"] = _LOAD_AT_START
    busy0, own0, t0 = _BUSY_AT_START
    busy1 = harness.cpu_busy_seconds()
    if busy0 is not None and busy1 is not None:
        wall = time.time() - t0
        foreign = (busy1 - busy0) - (harness.own_cpu_seconds() - own0)
        info["foreign_cpu"] = {"seconds": round(foreign, 2), "wall": round(wall, 2),
                               "share": round(foreign / wall, 4) if wall > 0 else None}
    from .low_precision import rates
    info["instruction_rates"] = rates()
    info["threads"] = list(shapes.THREADS)
    info["dtypes"] = list(shapes.DTYPES)
    info["large_shapes"] = sorted(shapes.LARGE)
    machine_info["lstm_fast"] = info


def pytest_report_header(config):
    """The CPU's measured per-core instruction rates first (issue 16: the low-precision
    benchmarks' roofline is against these); measured here, before anything is timed."""
    try:
        from lstm_fast.backends import _c
    except ImportError:
        return None
    return f"instruction rates: {_c.rates_summary()}"


def pytest_terminal_summary(terminalreporter):
    from .low_precision import ROOFLINE_LINES
    if ROOFLINE_LINES:
        from lstm_fast.backends import _c
        terminalreporter.section("roofline (fraction of the measured per-core peak x threads)")
        terminalreporter.write_line(f"instruction rates: {_c.rates_summary()}")
        for line in ROOFLINE_LINES:
            terminalreporter.write_line(line)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # Keep the statistics, drop every round's raw time (megabytes for the grid).
    for b in output_json.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
