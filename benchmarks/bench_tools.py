"""Tests of the benchmark tooling itself: report.py and ``lstm-fast bench``."""

import json
import os
import sys

import pytest

from lstm_fast import _bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def fake_json(path, scale=1.0):
    benchmarks = []
    for comp, t in (("lstm_fast[c]", 1e-4), ("torch", 3e-4), ("onnxruntime", 2e-4)):
        for case in ("forward", "train"):
            if case == "train" and comp == "onnxruntime":
                continue
            benchmarks.append({
                "group": "g", "name": comp,
                "extra_info": dict(case=case, shape="tiny", T=3, B=1, I=1, H=1, dtype="float32",
                                   threads=1, competitor=comp, flops=_bench.flops(case, 3, 1, 1, 1)),
                "stats": {"median": t * scale}})
    data = {"benchmarks": benchmarks, "datetime": "now", "commit_info": {"id": "abc", "dirty": False},
            "machine_info": {"lstm_fast": _bench.machine_info()}}
    path.write_text(json.dumps(data))
    return path


def test_report_tables_plot_csv_readme(tmp_path):
    a, b = fake_json(tmp_path / "a.json"), fake_json(tmp_path / "b.json", scale=3.0)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\ntail\n")
    md, png, csv = tmp_path / "r.md", tmp_path / "s.png", tmp_path / "s.csv"
    assert report.main([str(a), str(b), "--markdown", str(md), "--plot", str(png),
                        "--csv", str(csv), "--readme", str(readme)]) == 0
    text = md.read_text()
    assert "### float32, 1 thread" in text
    # median of the two runs: c 2e-4, torch 6e-4, ORT 4e-4 -> 3x over torch, 2x over ORT
    row = next(line for line in text.splitlines() if line.startswith("| forward | tiny"))
    assert "**3.00**" in row and "**2.00**" in row
    assert png.stat().st_size > 1000
    assert csv.read_text().count("\n") == 6
    r = readme.read_text()
    assert r.startswith("intro\n") and r.endswith("tail\n") and "old" not in r and "(s.png)" in r


def test_ort_model_matches_torch_gate_order():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    p = _bench.make_problem(4, 3, 5, 7, "float32")
    want = _bench.oracle("forward", p)
    r = _bench.make_runner("onnxruntime", "forward", p, 1)
    _bench.check(r.extract(r.fn()), want, "float32", "onnxruntime")


def test_cli_quick_run(capsys):
    assert _bench.main(["--shapes", "tiny", "3,2,4,5", "--cases", "forward", "train", "stream",
                        "--repeat", "1", "--min-time", "0.0005", "--onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "3,2,4,5" in out and "lstm_fast[numpy]" in out and "WRONG" not in out


def test_cli_rejects_bad_shape():
    with pytest.raises(SystemExit):
        _bench.main(["--shapes", "1,2,3"])
