"""Benchmark suite configuration (see README.md).

* Large shapes (marked ``large``) are deselected unless the ``-m`` expression
  mentions ``large`` or ``--bench-shapes`` names shapes explicitly.
* Under ``--benchmark-disable`` (the normal test suite: pyproject's addopts)
  every benchmark runs once, untimed, on the ``SMOKE`` shapes only; timed runs
  (``--benchmark-enable``) use the whole grid. ``--bench-shapes a,b`` or the
  environment variable ``LSTM_FAST_BENCH_SHAPES=a,b`` (``all`` for every shape)
  overrides both.
* The machine description (CPU, our SIMD level, environment variables that
  steer BLAS, versions) goes into the JSON's ``machine_info["lstm_fast"]``.
"""

import os

import pytest

from lstm_fast import _bench
from shapes import DTYPES, LARGE, SHAPES, SMOKE, THREADS, case_shapes

ENV_SHAPES = "LSTM_FAST_BENCH_SHAPES"

try:
    _LOAD_AT_START = " ".join(f"{v:.2f}" for v in os.getloadavg())
except OSError:
    _LOAD_AT_START = None


def pytest_addoption(parser):
    parser.addoption("--bench-shapes", default=None, metavar="NAMES",
                     help=f"comma-separated shape names from benchmarks/shapes.py, or 'all' "
                          f"(default: all for timed runs, {','.join(SMOKE)} under "
                          f"--benchmark-disable); also ${ENV_SHAPES}")


def benchmark_disabled(config):
    try:
        return config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    except ValueError:
        return True


def explicit_shapes(config):
    """Shape names asked for on the command line or in the environment, or None."""
    try:
        spec = config.getoption("--bench-shapes")
    except ValueError:
        spec = None
    spec = spec or os.environ.get(ENV_SHAPES, "").strip()
    if not spec:
        return None
    if spec == "all":
        return tuple(SHAPES)
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        raise pytest.UsageError(f"unknown benchmark shapes {unknown}; known: {', '.join(SHAPES)}")
    return names


def selected_shapes(config):
    names = explicit_shapes(config)
    if names is not None:
        return names
    return SMOKE if benchmark_disabled(config) else tuple(SHAPES)


def pytest_collection_modifyitems(config, items):
    if "large" in (config.option.markexpr or "") or explicit_shapes(config) is not None:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("large") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_generate_tests(metafunc):
    if "competitor" not in metafunc.fixturenames:
        return
    case = metafunc.function.__name__.removeprefix("test_")
    wanted = selected_shapes(metafunc.config)
    params = []
    for shape in case_shapes(case):
        if shape not in wanted:
            continue
        marks = [pytest.mark.large] if shape in LARGE else []
        for dtype in DTYPES:
            for threads in THREADS:
                for comp in _bench.competitors(case, dtype):
                    params.append(pytest.param(shape, dtype, threads, comp, marks=marks,
                                               id=f"{shape}-{dtype}-t{threads}-{comp}"))
    metafunc.parametrize(("shape", "dtype", "threads", "competitor"), params)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    _bench.reset_threads()


def pytest_benchmark_update_machine_info(config, machine_info):
    if _bench.have("torch"):
        import torch  # noqa: F401  (so machine_info records torch's CPU capability)
    info = _bench.machine_info()
    info["loadavg_at_start"] = _LOAD_AT_START
    info["threads"] = list(THREADS)
    info["dtypes"] = list(DTYPES)
    info["large_shapes"] = sorted(LARGE)
    machine_info["lstm_fast"] = info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # Keep the statistics, drop every round's raw time (megabytes for the grid).
    for b in output_json.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
