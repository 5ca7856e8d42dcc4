"""Scoring at scale: customers scored per second by ``lstm-fast churn predict``, one process
vs a local Dask cluster of 2 worker processes (``lstm_fast.churn.stream.predict_file``).

The whole path is timed: reading the Parquet file in chunks of whole customers, the checks,
the model (LSTM(3 -> 32), C backend when available, 1 kernel thread per process) and writing
the scores (Parquet). The cluster is started once, outside the timing; the model is loaded
once per worker (in the warm-up round).

    python -m pytest benchmarks/bench_churn_scoring.py --benchmark-enable \\
        --benchmark-columns=median,iqr,rounds -q        # 200,000 customers (~1.15 M rows)

Under ``--benchmark-disable`` (the normal test suite) each case runs once on 20,000
customers. ``LSTM_FAST_BENCH_CUSTOMERS`` sets the number of customers.
"""

import os

import numpy as np
import pytest

from .harness import cpu_info

pytest.importorskip("pandas")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def churn_files(tmp_path_factory, request):
    from lstm_fast.churn import data as D
    from lstm_fast.churn.model import ChurnModel
    cfg = request.config
    timed = bool(cfg.getoption("benchmark_enable", False)) or not cfg.getoption("benchmark_disable", False)
    n = int(os.environ.get("LSTM_FAST_BENCH_CUSTOMERS", 200_000 if timed else 20_000))
    d = tmp_path_factory.mktemp("churn_scoring")
    ds = D.generate(n, seed=3)
    path = str(d / "customers.parquet")
    D.write_table(ds, path)
    m = ChurnModel(32, seed=0)
    m.normalizer.fit(ds.X[:5000], ds.lengths[:5000])
    m.save(str(d / "model.npz"))
    return n, str(d / "model.npz"), path, d


@pytest.fixture(scope="module")
def two_workers():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _run(benchmark, churn_files, workers, client):
    import lstm_fast
    from lstm_fast.churn.stream import predict_file
    n, model, data, d = churn_files
    out = str(d / f"scores{workers}.parquet")
    before = lstm_fast.get_num_threads()
    lstm_fast.set_num_threads(1)
    try:
        res = benchmark.pedantic(predict_file, args=(model, data, out),
                                 kwargs={"client": client, "threads": 1}, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        lstm_fast.set_num_threads(before)
    assert res["customers"] == n
    benchmark.group = "churn scoring"
    benchmark.extra_info.update(customers=n, rows=res["rows"], workers=workers, backend=res["backend"],
                                cpu=cpu_info().get("model"), case="churn_scoring")
    if benchmark.stats is not None and getattr(benchmark.stats, "stats", None) is not None:
        med = benchmark.stats.stats.median
        benchmark.extra_info["customers_per_second"] = n / med
        print(f"\nchurn scoring, {workers or 1} {'worker' if workers else 'process'}"
              f"{'s' if workers > 1 else ''}: {n / med:,.0f} customers/s (median {med:.2f} s, {n} customers)")
    return out


def test_churn_scoring_one_process(benchmark, churn_files):
    _run(benchmark, churn_files, 0, None)


def test_churn_scoring_two_dask_workers(benchmark, churn_files, two_workers):
    import pandas as pd
    out = _run(benchmark, churn_files, 2, two_workers)
    one = churn_files[3] / "scores0.parquet"
    if one.exists():  # the same bits as the single process
        np.testing.assert_array_equal(pd.read_parquet(out).churn_probability.to_numpy(),
                                      pd.read_parquet(one).churn_probability.to_numpy())
