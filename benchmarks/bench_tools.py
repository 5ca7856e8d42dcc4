"""Tests of the benchmark tooling itself (untimed, part of the normal suite): the report,
the ceiling, the thread control, the ONNX competitor, ``lstm-fast bench``."""

import json

import numpy as np
import pytest

from . import ceiling, harness, models, quick, report, shapes


def _bench(case, shape, dtype, threads, comp, t, flops, dims, **extra):
    e = dict(case=case, shape=shape, dtype=dtype, threads=threads, competitor=comp, flops=flops, **extra)
    if case == "gemm":
        e["N"] = dims[0]
    elif case == "stepgemm":
        e.update(M=dims[0], K=dims[1], N=dims[2])
    else:
        e.update(T=dims[0], B=dims[1], I=dims[2], H=dims[3])
    return {"group": "g", "name": comp, "extra_info": e, "stats": {"median": t, "iqr": t / 10}}


def fake_json(path, scale=1.0, commit="abc"):
    """A run with a ceiling (100 GFLOP/s float32, 1 thread), grid cells and model cells."""
    b = []
    n = 2048
    for comp, gf in (("gemm:onednn", 100.0), ("gemm:numpy", 80.0)):
        b.append(_bench("gemm", f"gemm{n}", "float32", 1, comp, 2 * n ** 3 / (gf * 1e9), 2 * n ** 3, (n,)))
    for comp, t in (("lstm_fast[c]", 1e-4), ("lstm_fast[numba]", 2e-4), ("lstm_fast.torch[c]", 1.2e-4),
                    ("torch", 3e-4), ("onnxruntime", 2e-4)):
        for case in ("forward", "train"):
            if case == "train" and comp == "onnxruntime":
                continue
            b.append(_bench(case, "tiny", "float32", 1, comp, t * scale, shapes.flops(case, 3, 1, 1, 1),
                            (3, 1, 1, 1), foreign_cpu=0.2 if comp == "torch" else 0.0))
    m = shapes.MODELS["wlm_small"]
    for case, comps in (("model_train", {"lstm_fast.torch[c]": 0.02, "torch": 0.03}),
                        ("layer_forward", {"lstm_fast[c]": 0.004, "lstm_fast.torch[c]": 0.005,
                                           "torch": 0.006, "onnxruntime": 0.005})):
        for comp, t in comps.items():
            b.append(_bench(case, "wlm_small", "float32", 1, comp, t * scale, shapes.model_flops(case, m),
                            (m.T, m.B, m.I, m.H), group="models"))
    data = {"benchmarks": b, "datetime": "now", "commit_info": {"id": commit, "dirty": False},
            "machine_info": {"lstm_fast": harness.machine_info()}}
    path.write_text(json.dumps(data))
    return path


def test_report_sections_plot_csv_readme(tmp_path):
    a, b = fake_json(tmp_path / "a.json"), fake_json(tmp_path / "b.json", scale=3.0)
    base = fake_json(tmp_path / "base.json", scale=1.0, commit="before")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\ntail\n")
    md, png, csv = tmp_path / "r.md", tmp_path / "s.png", tmp_path / "s.csv"
    assert report.main([str(a), str(b), "--markdown", str(md), "--plot", str(png), "--csv", str(csv),
                        "--readme", str(readme), "--baseline", str(base)]) == 0
    text = md.read_text()
    for section in ("### Machine and software", "### GEMM ceiling", "### Targets (issue 14)",
                    "### Models group", "#### Grid, float32, 1 thread", "### Compared with the baseline"):
        assert section in text
    # the ceiling: the best library, named
    row = next(line for line in text.splitlines() if line.startswith("| float32 | 1 |"))
    assert "**100.0**" in row and "100.0 (onednn)" in row
    # median of the two runs: c 2e-4, torch 6e-4, ORT 4e-4 -> 3x over torch, 2x over ORT
    row = next(line for line in text.splitlines() if line.startswith("| forward | tiny"))
    assert "**3.00**" in row and "**2.00**" in row and "‡" in row   # torch was timed while busy
    # % of the ceiling: layer_forward wlm_small, 2 ms (the median of 4 and 12 ms is 8 ms)
    f = shapes.model_flops("layer_forward", shapes.MODELS["wlm_small"])
    pct = f"{100 * f / 8e-3 / 1e9 / 100.0:.0f} %"
    row = next(line for line in text.splitlines() if line.startswith("| wlm_small |") and "forward" in line)
    assert pct in row
    # targets: wlm_small train through the module is 1.5x torch -> met; forward 1.5x torch, 1.25x ORT -> met
    assert "| 1T float32 training" in text and "module cost" in text
    cost = next(line for line in text.splitlines() if line.startswith("| module cost"))
    assert "missed" in cost and "forward tiny float32 1T: 1.20×" in cost
    # baseline: now (median of 1x and 3x = 2x) / then (1x)
    row = next(line for line in text.splitlines() if line.startswith("| forward | tiny | float32 | 1 | c |"))
    assert "**2.00**" in row
    assert png.stat().st_size > 1000
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("case,shape") and len(lines) == 1 + 2 + 9 + 6
    r = readme.read_text()
    assert r.startswith("intro\n") and r.endswith("tail\n") and "\nold\n" not in r and "(s.png)" in r


def test_report_reads_the_old_harness_json(tmp_path):
    """JSON from before the move (no ceiling, no models, no foreign CPU share) still reports."""
    b = [_bench(case, "tiny", "float32", 1, comp, t, shapes.flops(case, 3, 1, 1, 1), (3, 1, 1, 1))
         for case in ("forward", "train") for comp, t in (("lstm_fast[c]", 1e-5), ("torch", 1e-4))]
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"benchmarks": b, "datetime": "then", "commit_info": {"id": "6c7ae61"},
                             "machine_info": {"lstm_fast": {"cpu": {"model": "Some CPU"}}}}))
    assert report.main([str(p), "--markdown", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "Some CPU" in text and "**10.00**" in text and "### GEMM ceiling" not in text


def test_ceiling_picks_the_best_library_and_names_it():
    p = ceiling.make_problem(64, "float64")
    for name in ceiling.competitors("float64"):
        r = ceiling.make_runner(name, p, 1)
        ceiling.check(r.outputs(), p, name)
    harness.reset_threads()
    with pytest.raises(AssertionError):
        ceiling.check({"c": p["want"] + 1.0}, p, "wrong")
    labels = ceiling.library_labels(harness.machine_info())
    assert set(ceiling.competitors("float32")) <= set(labels)
    table = {("gemm", "gemm64", "float32", 1, "gemm:numpy"): report.Cell((2.0, 100.0, (64,), 0, 0)),
             ("gemm", "gemm64", "float32", 1, "gemm:onednn"): report.Cell((1.0, 100.0, (64,), 0, 0))}
    best, who, per = report.ceilings(table)[("float32", 1)]
    assert who == "gemm:onednn" and best == pytest.approx(100e-9) and per["gemm:numpy"] == pytest.approx(50e-9)


def test_step_product_problem_and_report(tmp_path):
    """A model's step product (B x H by H x 4H) is checked like the ceiling's and reported
    with each library's GFLOP/s, the best one and its share of the 2048^3 ceiling."""
    m = shapes.MODELS["wlm_small"]
    assert ceiling.step_shape(m) == (20, 200, 800)
    assert ceiling.flops(20, 200, 800) == 2 * 20 * 200 * 800 and ceiling.flops(4) == 128
    p = ceiling.make_problem(0, "float32", shape=(5, 7, 12))
    for name in ceiling.competitors("float32"):
        r = ceiling.make_runner(name, p, 1)
        assert r.outputs()["c"].shape == (5, 12)
        ceiling.check(r.outputs(), p, name)
    harness.reset_threads()
    n, f = 2048, ceiling.flops(20, 200, 800)
    b = [_bench("gemm", f"gemm{n}", "float32", 1, "gemm:onednn", 2 * n ** 3 / 100e9, 2 * n ** 3, (n,)),
         _bench("stepgemm", "wlm_small", "float32", 1, "gemm:onednn", f / 60e9, f, (20, 200, 800)),
         _bench("stepgemm", "wlm_small", "float32", 1, "gemm:numpy", f / 80e9, f, (20, 200, 800))]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"benchmarks": b, "datetime": "now", "commit_info": {"id": "x"},
                                "machine_info": {"lstm_fast": harness.machine_info()}}))
    assert report.main([str(path), "--markdown", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| wlm_small | float32 | 1 |"))
    assert "20,200,800" in row and "**80.0**" in row and "80.0 (numpy), 80%" in row


def test_set_threads_limits_every_blas_and_reset_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas"}
    harness.set_threads(1)
    try:
        assert all(lib["num_threads"] == 1 for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas")
        import lstm_fast
        assert lstm_fast.get_num_threads() == 1
    finally:
        harness.reset_threads()
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
             if lib["user_api"] == "blas"}
    assert {k: after[k] for k in before} == before


def test_ort_model_matches_torch_one_layer_and_a_stack():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    p = harness.make_problem(4, 3, 5, 7, "float32")
    want = harness.oracle("forward", p)
    r = harness.make_runner("onnxruntime", "forward", p, 1)
    harness.check(r.outputs(), want, "float32", "onnxruntime")
    p = models.make_problem("tinystack", "float32")
    want = models.oracle("layer_forward", p)
    r = models.make_runner("onnxruntime", "layer_forward", p, 1)
    harness.check(r.outputs(), want, "float32", "onnxruntime")
    harness.reset_threads()


def test_model_flops_count_every_layer_and_direction():
    m = shapes.Model(10, 2, 3, 4, layers=2, bidirectional=True)
    one = lambda I: 2 * 10 * 2 * 16 * (I + 4)  # noqa: E731
    assert shapes.model_flops("layer_forward", m) == 2 * (one(3) + one(8))
    assert shapes.model_flops("model_train", m) == 3 * shapes.model_flops("model_eval", m)


def test_quick_grid_models_and_ceiling(capsys):
    assert quick.main(["--shapes", "tiny", "3,2,4,5", "--cases", "forward", "train", "stream",
                       "--repeat", "1", "--min-time", "0.0005", "--onnxruntime",
                       "--ceiling", "--gemm-n", "32"]) == 0
    out = capsys.readouterr().out
    assert "3,2,4,5" in out and "lstm_fast[numpy]" in out and "WRONG" not in out and "ceiling:" in out
    if harness.have("torch"):
        assert quick.main(["--models", "tinystack", "--repeat", "1", "--min-time", "0.0005",
                           "--onnxruntime", "--ceiling", "--gemm-n", "32"]) == 0
        out = capsys.readouterr().out
        assert "layer_train" in out and "model_eval" in out and "WRONG" not in out
        assert "step product tinystack: best" in out      # its B x H by H x 4H = 3,6,24


def test_quick_rejects_bad_shape_and_model():
    with pytest.raises(SystemExit):
        quick.main(["--shapes", "1,2,3"])
    with pytest.raises(SystemExit):
        quick.main(["--models", "nosuchmodel"])


def test_lstm_fast_bench_command_runs_the_harness(capsys):
    from lstm_fast import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    assert "--models" in capsys.readouterr().out


def test_model_runners_check_against_torch_with_dropout():
    """The models group's tinystack: ours inside a torch model (same dropout masks as torch)
    and alone agree with torch.nn.LSTM; timing turns the layer's dropout on."""
    pytest.importorskip("torch")
    p = models.make_problem("tinystack", "float32")
    for case in ("model_train", "layer_train"):
        want = models.oracle(case, p)
        for name in models.competitors(case, "float32"):
            r = models.make_runner(name, case, p, 2)
            harness.check(r.outputs(), want, "float32", name)
            r.arm()
            if name.startswith("lstm_fast[") and case == "layer_train":
                out = r.extract(r.fn())
                assert not np.allclose(out["y"], want["y"])    # dropout on between the layers
            harness.check(r.outputs(), want, "float32", name)
    harness.reset_threads()


def test_settle_waits_for_a_busy_thread_of_this_process():
    """``settle`` returns at once in a quiet process and waits out a thread of ours that
    still uses the CPU (as OpenBLAS's workers spin after a call), up to its limit."""
    import threading
    import time

    assert harness.settle() < 0.2
    stop = time.perf_counter() + 0.3

    def spin():
        while time.perf_counter() < stop:
            pass
    t = threading.Thread(target=spin)
    t.start()
    try:
        waited = harness.settle()
    finally:
        t.join()
    assert 0.2 <= waited < 1.0


def test_measure_settles_before_every_batch(monkeypatch):
    """The quick comparison (``lstm-fast bench``) lets this process's threads go idle
    before each timed batch of each competitor, as the pytest suite does before each
    benchmark: ``settle`` is called once per runner per round (and for the calibration
    batch), then one untimed call (``warm``) wakes the runner's own threads, then its
    batch."""
    order = []
    monkeypatch.setattr(harness, "settle", lambda: order.append("settle") or 0.0)
    runners = [harness.Runner(name, (lambda n=name: order.append(n)), lambda r: r)
               for name in ("a", "b")]
    harness.measure(runners, repeat=3, min_time=0.0)
    # the calibration batch (one call) and then each round's batch (one call at min_time
    # 0), each after settle and one untimed warm call
    assert order == ["settle", "a", "a", "settle", "b", "b"] * (1 + 3)


def test_child_runner_times_a_competitor_in_its_own_process():
    """``ChildRunner`` (ONNX Runtime at 2+ threads in ``lstm-fast bench``) builds the
    competitor in a spawned process: the same outputs as in this process, whole batches
    timed there, a clear error for a competitor that cannot be built, and the child gone
    after ``close``."""
    import pytest

    T, B, I, H = 3, 2, 3, 4
    p = harness.make_problem(T, B, I, H, "float64")
    want = harness.make_runner("lstm_fast[numpy]", "forward", p, 1).outputs()
    r = harness.ChildRunner(("grid", "lstm_fast[numpy]", "forward", (T, B, I, H), "float64", 1))
    try:
        got = r.outputs()
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        r.arm()
        t = r.time_batch(3)
        assert 0 < t < 1.0
        med = harness.measure([r], repeat=2, min_time=0.0)
        assert set(med) == {"lstm_fast[numpy]"} and med["lstm_fast[numpy]"] > 0
    finally:
        r.close()
    assert not r._proc.is_alive()
    with pytest.raises(RuntimeError, match="in its child process"):
        harness.ChildRunner(("grid", "no-such-competitor", "forward", (T, B, I, H), "float64", 1))


def test_run_benchmark_warms_after_settling(monkeypatch):
    """The pytest suites' routine calls the runner once, untimed, after ``settle`` and
    before timing (a cold first call after the wait is a wake-up, not the call's cost)."""
    order = []
    monkeypatch.setattr(harness, "settle", lambda: order.append("settle") or 0.0)

    class Bench:
        disabled = False
        extra_info = {}

        def __call__(self, fn):
            order.append("timed")
            fn()

    runner = harness.Runner("a", lambda: order.append("call") or 1, lambda r: r)
    harness.run_benchmark(Bench(), runner, 1, lambda out: None, "g", {})
    assert order == ["call", "settle", "call", "timed", "call", "call"]


def test_pack_pages_compares_a_4k_and_a_huge_page_pack_and_restores_numpys_switch(capsys):
    pytest.importorskip("lstm_fast.backends._c")
    from . import pack_pages
    try:
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:   # NumPy 1.x
        from numpy.core.multiarray import _get_madvise_hugepage
    before = _get_madvise_hugepage()
    pack_pages.main(["3,2,5,7;2,1,3,4", "1", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("4 KiB" in ln and "huge" in ln for ln in lines)
    assert lines[0].startswith("3,2,5,7 1T inference forward") and "training step" in lines[3]
    assert _get_madvise_hugepage() == before
