"""Tests of the churn job (lstm_fast.churn): end to end through main(), CSV
validation (one test per message), gradients of head + BCE and of the whole
model on ragged batches, metrics. Small sizes: the whole file runs in seconds."""

import csv
import json

import numpy as np
import pytest

import lstm_fast
from lstm_fast.churn import cli, data as D, metrics
from lstm_fast.churn.model import ChurnModel, head_bce

from _support import central_difference

HEADER = "customer_id,month,movies_watched,satisfaction,days_since_login,churned\n"


def _write(tmp_path, text, name="c.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- end to end -------------------------------------------------------------

def test_end_to_end_train_save_figure_predict(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--customers", "1500", "--epochs", "12", "--hidden-size", "16",
                   "--batch-size", "64", "--seed", "1", "--out-dir", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "LSTM (order in time)" in text and "baseline (averages)" in text
    res = json.loads((out / "metrics.json").read_text())
    assert res["n_train"] + res["n_val"] + res["n_test"] == 1500
    for m in ("lstm", "baseline"):
        assert set(res[m]) == {"accuracy", "auc", "precision", "recall"}
    # learnable at this size: the order-aware model beats the order-blind baseline clearly
    assert res["lstm"]["auc"] > res["baseline"]["auc"] + 0.1, res
    assert res["lstm"]["auc"] > 0.8
    assert (out / "churn_model.npz").is_file()
    sc = res["scenarios"]  # synthetic patterns: the LSTM separates what the averages cannot
    assert sc["inactive this month"]["lstm"] > sc["inactive 2+ months ago, active again"]["lstm"] + 0.2
    assert sc["satisfaction drop this month"]["lstm"] > sc["satisfaction drop earlier, recovered"]["lstm"]
    g = res["gates"]
    assert len(g["forget_churners"]) == 6 and len(g["input_stayers"]) == 6
    assert all(0 < v < 1 for v in g["forget_churners"] + g["input_stayers"])
    png = out / "churn_figure.png"
    assert res["figure_path"] == str(png) and f"figure:  {png}" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    assert matplotlib.image.imread(str(png)).shape[:2] == (1000, 1800)  # the 2 x 3 panels at 100 dpi

    # --write-data writes the format --data and predict read
    new = tmp_path / "new.csv"
    assert cli.main(["--write-data", str(new), "--customers", "300", "--seed", "7"]) == 0
    with open(new) as f:
        assert f.readline() == HEADER
    probs = tmp_path / "probs.csv"
    rc = cli.main(["predict", "--model", str(out / "churn_model.npz"), "--data", str(new),
                   "--out", str(probs)])
    assert rc == 0
    assert "ROC AUC" in capsys.readouterr().err  # labels present in new.csv
    with open(probs) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["customer_id", "churn_probability"]
    assert len(rows) == 301
    p = np.array([float(r[1]) for r in rows[1:]])
    assert np.all((p >= 0) & (p <= 1))
    ref = D.read_table(str(new))
    assert [r[0] for r in rows[1:]] == list(ref.ids)
    # the saved model reproduces the probabilities, and predict works without labels
    model = ChurnModel.load(str(out / "churn_model.npz"))
    np.testing.assert_allclose(model.predict_proba(ref), p, atol=1e-6)
    nolab = tmp_path / "nolab.csv"
    with open(new) as f, open(nolab, "w") as g_:
        for line in f:
            g_.write(line.rsplit(",", 1)[0] + "\n")
    assert cli.main(["predict", "--model", str(out / "churn_model.npz"), "--data", str(nolab)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [",".join(r) for r in rows[1:]]


def test_train_on_csv_with_ragged_histories(tmp_path, capsys):
    ds = D.generate(600, seed=3)
    path = str(tmp_path / "c.csv")
    D.write_table(ds, path)
    out = tmp_path / "o"
    before = lstm_fast.get_num_threads()
    assert cli.main(["--data", path, "--epochs", "2", "--hidden-size", "8", "--out-dir", str(out),
                     "--no-figure", "--threads", "1"]) == 0
    assert lstm_fast.get_num_threads() == before  # --threads does not leak out of main()
    text = capsys.readouterr().out
    assert f"{int(np.sum(ds.lengths < 6))} with shorter histories" in text
    assert "epoch   1/2" in text  # per-epoch line
    res = json.loads((out / "metrics.json").read_text())
    assert res["n_customers"] == 600 and res["figure_path"] is None


def test_missing_churn_extra_is_named(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pandas", "matplotlib") else real(name, *a))
    assert cli.missing_dependencies() == ["pandas", "matplotlib"]
    assert cli.main(["--customers", "50"]) == 2
    assert cli.main(["predict", "--model", "m.npz", "--data", "d.csv"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["lstm-fast churn: error: the churn job needs pandas, matplotlib, not installed here: "
                   'pip install "lstm-fast[churn]" (or, in a checkout, pip install ".[churn]")'] * 2


def test_cli_reports_bad_backend_and_data_errors(tmp_path, capsys):
    assert cli.main(["--backend", "nope", "--customers", "50"]) == 2
    assert "error" in capsys.readouterr().err
    bad = _write(tmp_path, "customer_id,month\nA,1\n")
    assert cli.main(["--data", bad]) == 2
    err = capsys.readouterr().err
    assert "missing required column(s): movies_watched, satisfaction, days_since_login" in err
    assert cli.main(["predict", "--model", str(tmp_path / "none.npz"), "--data", bad]) == 2
    assert "cannot read model file" in capsys.readouterr().err


# --- CSV validation: one test per message ---------------------------------------

GOOD = HEADER + "A,1,3,7.5,2,0\nA,2,4,7.0,3,0\nB,1,0,5.0,30,1\n"


def _err(tmp_path, text, require_labels=True):
    with pytest.raises(D.DataError) as e:
        D.read_table(_write(tmp_path, text), require_labels=require_labels)
    return str(e.value)


def test_csv_good_and_ragged(tmp_path):
    text = HEADER + "A,3,4,7.0,3,0\nB,5,0,5.0,30,1\nA,1,3,7.5,2,0\nA,2,5,6.5,1,0\n"
    ds = D.read_table(_write(tmp_path, text))
    assert list(ds.ids) == ["A", "B"]
    assert list(ds.lengths) == [3, 1]           # ragged: B kept with one month
    np.testing.assert_array_equal(ds.X[0, :, 0], [3, 5, 4])  # ordered by month
    np.testing.assert_array_equal(ds.X[1], [[0, 5, 30], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ds.y, [0, 1])


def test_csv_missing_file(tmp_path):
    with pytest.raises(D.DataError, match="cannot open"):
        D.read_table(str(tmp_path / "nope.csv"))


def test_csv_empty_file(tmp_path):
    assert "is empty" in _err(tmp_path, "")


def test_csv_header_only(tmp_path):
    assert "no data rows" in _err(tmp_path, HEADER)


def test_csv_missing_columns(tmp_path):
    msg = _err(tmp_path, "customer_id,month,movies_watched,churned\nA,1,3,0\n")
    assert "missing required column(s): satisfaction, days_since_login" in msg


def test_csv_label_required_for_training(tmp_path):
    text = GOOD.replace(",churned", "").replace(",0\n", "\n").replace(",1\n", "\n")
    assert "'churned' (0/1 label per customer) is required for training" in _err(tmp_path, text)
    ds = D.read_table(_write(tmp_path, text), require_labels=False)  # fine for predict
    assert ds.y is None and len(ds) == 2


def test_csv_non_numeric(tmp_path):
    msg = _err(tmp_path, GOOD + "C,1,three,7,2,0\n")
    assert msg == "line 5: column 'movies_watched' has a non-numeric value 'three'"


def test_csv_nan(tmp_path):
    assert "line 5: column 'satisfaction' is NaN" in _err(tmp_path, GOOD + "C,1,3,nan,2,0\n")


def test_csv_empty_value(tmp_path):
    assert "line 5: column 'days_since_login' is empty" in _err(tmp_path, GOOD + "C,1,3,7,,0\n")


def test_csv_infinite(tmp_path):
    assert "infinite" in _err(tmp_path, GOOD + "C,1,inf,7,2,0\n")


def test_csv_non_integer_month(tmp_path):
    assert "'month' must be an integer" in _err(tmp_path, GOOD + "C,1.5,3,7,2,0\n")


def test_csv_wrong_field_count(tmp_path):
    assert "line 5: expected 6 fields" in _err(tmp_path, GOOD + "C,1,3,7,2\n")


def test_csv_duplicate_customer_month(tmp_path):
    msg = _err(tmp_path, GOOD + "A,2,9,9,9,0\n")
    assert msg == "line 5: duplicate row for customer_id 'A' month 2 (first seen on line 3)"


def test_csv_inconsistent_labels(tmp_path):
    msg = _err(tmp_path, GOOD + "B,2,0,5,31,0\n")
    assert "inconsistent 'churned' labels for customer_id 'B': 1 on line 4 but 0 here" in msg


def test_csv_label_not_binary(tmp_path):
    assert "'churned' must be 0 or 1, got '2'" in _err(tmp_path, GOOD + "C,1,3,7,2,2\n")


def test_csv_partly_missing_labels(tmp_path):
    msg = _err(tmp_path, GOOD + "C,1,3,7,2,\n", require_labels=False)
    assert "'churned' is empty for some customers" in msg


def test_training_needs_both_classes(tmp_path, capsys):
    path = _write(tmp_path, HEADER + "".join(f"C{k},1,3,7,2,0\n" for k in range(40)))
    assert cli.main(["--data", path, "--out-dir", str(tmp_path / "o")]) == 2
    assert "both churners and stayers" in capsys.readouterr().err


def test_write_read_roundtrip(tmp_path):
    ds = D.generate(200, seed=5)
    path = str(tmp_path / "rt.csv")
    D.write_table(ds, path)
    back = D.read_table(path)
    np.testing.assert_array_equal(back.X, ds.X)
    np.testing.assert_array_equal(back.lengths, ds.lengths)
    np.testing.assert_array_equal(back.y, ds.y)
    assert list(back.ids) == list(ds.ids)


# --- generator --------------------------------------------------------------------

def test_generator_seeded_ragged_and_order_dependent():
    a, logit = D.generate(6000, seed=11, return_logit=True)
    b = D.generate(6000, seed=11)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    frac = np.mean(a.lengths < 6)
    assert 0.07 < frac < 0.13 and a.lengths.min() >= 2
    assert 0.2 < a.y.mean() < 0.3
    # padding is zero
    mask = np.arange(6)[None, :] >= a.lengths[:, None]
    assert np.all(a.X[mask] == 0)
    # order matters: the averages leave much of the (Bayes) signal unused
    n = 4000
    base = metrics.baseline().fit(a.averages()[:n], a.y[:n])
    auc_base = metrics.roc_auc(a.y[n:], metrics.baseline_proba(base, a.averages()[n:]))
    auc_bayes = metrics.roc_auc(a.y[n:], logit[n:])
    assert auc_bayes > 0.88 and auc_base < 0.75 and auc_bayes - auc_base > 0.15


# --- gradients ----------------------------------------------------------------------

def test_head_bce_gradient_finite_differences():
    rng = np.random.default_rng(0)
    B, H = 7, 5
    h = rng.normal(size=(B, H))
    w = rng.normal(size=H)
    b = 0.3
    y = (rng.random(B) < 0.5).astype(np.float64)
    loss, z, dh, dw, db = head_bce(h, w, b, y)
    p = 1 / (1 + np.exp(-z))
    assert np.isclose(loss, -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    num = central_difference   # (loss, arr)
    np.testing.assert_allclose(dh, num(lambda: head_bce(h, w, b, y)[0], h), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dw, num(lambda: head_bce(h, w, b, y)[0], w), rtol=1e-6, atol=1e-9)
    bb = np.array([b])
    np.testing.assert_allclose(db, num(lambda: head_bce(h, w, bb[0], y)[0], bb)[0], rtol=1e-6)
    # extreme logits: finite loss, gradient in [-1/B, 1/B]
    loss, _, _, dw2, db2 = head_bce(np.full((2, 1), 1e3), np.ones(1), 0.0, np.array([0.0, 1.0]))
    assert np.isfinite(loss) and abs(db2) <= 1.0


def test_model_gradient_ragged_batch_finite_differences():
    """Whole model (LSTM + head + BCE) on a ragged batch, float64, numpy backend."""
    rng = np.random.default_rng(1)
    B, T, I, H = 5, 4, 3, 3
    lengths = np.array([4, 2, 3, 4, 1])
    X = rng.normal(size=(B, T, I))
    X[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    m = ChurnModel(H, backend="numpy", seed=0, dtype=np.float64)
    loss, grads = m.loss_and_grads(X, lengths, y)
    eps = 1e-6
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
        num = np.zeros_like(grads["lstm." + name])
        for i in np.ndindex(num.shape):
            vals = []
            for s in (eps, -eps):
                with m.lstm.unlocked_parameters() as p:
                    p[name][i] += s
                vals.append(m.loss_and_grads(X, lengths, y)[0])
                with m.lstm.unlocked_parameters() as p:
                    p[name][i] -= s
            num[i] = (vals[0] - vals[1]) / (2 * eps)
        np.testing.assert_allclose(grads["lstm." + name], num, rtol=1e-5, atol=1e-8, err_msg=name)
    # the ragged result equals running each customer alone on its own months
    logits = m.logits_normalized(X, lengths)
    for k in range(B):
        alone = m.logits_normalized(X[k:k + 1, :lengths[k]], lengths[k:k + 1])
        np.testing.assert_allclose(logits[k], alone[0], rtol=1e-12)


@pytest.mark.parametrize("backend", lstm_fast.available_backends())
def test_ragged_model_same_on_every_backend(backend):
    """Loss and gradients of the ragged model equal the NumPy reference's on every backend."""
    rng = np.random.default_rng(2)
    B, T = 9, 6
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    X = rng.normal(size=(B, T, 3))
    X[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = (rng.random(B) < 0.5).astype(float)
    a = ChurnModel(4, backend=backend, seed=0, dtype=np.float64)
    b = ChurnModel(4, backend="numpy", seed=0, dtype=np.float64)
    la, ga = a.loss_and_grads(X, lengths, y)
    lb, gb = b.loss_and_grads(X, lengths, y)
    assert np.isclose(la, lb, rtol=1e-12)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_adam_step_decreases_loss_and_keeps_params_readonly():
    ds = D.generate(400, seed=4)
    m = ChurnModel(8, backend="numpy", seed=0)
    m.normalizer.fit(ds.X, ds.lengths)
    Xn = m.normalizer.transform(ds.X, ds.lengths)
    opt = lstm_fast.optim.Adam(lr=1e-2)
    first, _ = m.loss_and_grads(Xn, ds.lengths, ds.y)
    for _ in range(30):
        _, g = m.loss_and_grads(Xn, ds.lengths, ds.y)
        m.apply_step(opt, g)
    last, _ = m.loss_and_grads(Xn, ds.lengths, ds.y)
    assert last < first - 0.05
    assert not m.lstm.weight_ih_l0.flags.writeable


# --- metrics ------------------------------------------------------------------------

def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)  # many ties
    pos, neg = s[y], s[~y]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert np.isclose(metrics.roc_auc(y, s), brute)
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    m = metrics.classification_metrics([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1])
    assert m == {"accuracy": 0.5, "auc": 0.75, "precision": 0.5, "recall": 0.5}


def test_metrics_undefined_cases_are_nan():
    m = metrics.classification_metrics([1, 0, 1], [0.1, 0.2, 0.3])  # no positive prediction
    assert np.isnan(m["precision"]) and m["recall"] == 0.0 and np.isclose(m["accuracy"], 1 / 3)
    assert all(np.isnan(v) for v in metrics.classification_metrics([], []).values())


def test_baseline_recovers_direction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3)) * [1.0, 3.0, 0.5] + [0.0, 10.0, -2.0]
    z = 2 * X[:, 0] - (X[:, 2] + 2.0) / 0.5
    y = (rng.random(2000) < 1 / (1 + np.exp(-z))).astype(float)
    model = metrics.baseline().fit(X, y)
    scaler, lr = model[0], model[-1]
    np.testing.assert_allclose(lr.coef_[0] / scaler.scale_, [2, 0, -2], atol=0.35)
    p = metrics.baseline_proba(model, X)
    assert p.shape == (2000,) and np.all((p > 0) & (p < 1))
    assert metrics.roc_auc(y, p) > 0.85


# --- Parquet, and CSV details --------------------------------------------------------

def test_parquet_roundtrip_train_and_predict(tmp_path, capsys):
    import pandas as pd
    ds = D.generate(300, seed=6)
    pq_path, csv_path = str(tmp_path / "c.parquet"), str(tmp_path / "c.csv")
    D.write_table(ds, pq_path)
    D.write_table(ds, csv_path)
    frame = pd.read_parquet(pq_path)
    assert list(frame.columns) == list(HEADER.strip().split(","))
    assert frame["month"].dtype == np.int64 and frame["movies_watched"].dtype == np.int64
    for path in (pq_path, csv_path):
        back = D.read_table(path)
        np.testing.assert_array_equal(back.X, ds.X)
        np.testing.assert_array_equal(back.lengths, ds.lengths)
        np.testing.assert_array_equal(back.y, ds.y)
        assert list(back.ids) == list(ds.ids)
    out = tmp_path / "o"
    assert cli.main(["--data", pq_path, "--epochs", "1", "--hidden-size", "4", "--out-dir", str(out),
                     "--no-figure", "--quiet"]) == 0
    scores = tmp_path / "s.parquet"
    assert cli.main(["predict", "--model", str(out / "churn_model.npz"), "--data", pq_path,
                     "--out", str(scores), "--quiet"]) == 0
    got = pd.read_parquet(scores)
    assert list(got.columns) == ["customer_id", "churn_probability"] and list(got.customer_id) == list(ds.ids)
    model = ChurnModel.load(str(out / "churn_model.npz"))
    np.testing.assert_array_equal(got.churn_probability.to_numpy(), model.predict_proba(ds))


def _parquet_err(tmp_path, frame, require_labels=True):
    path = str(tmp_path / "bad.parquet")
    frame.to_parquet(path, index=False)
    with pytest.raises(D.DataError) as e:
        D.read_table(path, require_labels=require_labels)
    return str(e.value)


def test_parquet_validation_messages(tmp_path):
    import pandas as pd
    good = pd.DataFrame({"customer_id": ["A", "A", "B"], "month": [1, 2, 1],
                         "movies_watched": [3.0, 4.0, 0.0], "satisfaction": [7.5, 7.0, 5.0],
                         "days_since_login": [2, 3, 30], "churned": [0, 0, 1]})
    msg = _parquet_err(tmp_path, good.drop(columns=["satisfaction"]))
    assert "missing required column(s): satisfaction" in msg
    bad = good.copy()
    bad.loc[2, "satisfaction"] = np.nan  # pandas stores a NaN as a Parquet null
    assert _parquet_err(tmp_path, bad) == "row 3: column 'satisfaction' is empty (missing value)"
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pandas(good, preserve_index=False)
    nan_sat = pa.array([7.5, float("nan"), 5.0], pa.float64(), from_pandas=False)  # a NaN, not a null
    pq.write_table(table.set_column(3, "satisfaction", nan_sat), str(tmp_path / "nan.parquet"))
    with pytest.raises(D.DataError, match=r"^row 2: column 'satisfaction' is NaN \(missing value\)$"):
        D.read_table(str(tmp_path / "nan.parquet"))
    bad = good.astype({"days_since_login": "Int64"})
    bad.loc[1, "days_since_login"] = pd.NA
    assert _parquet_err(tmp_path, bad) == "row 2: column 'days_since_login' is empty (missing value)"
    bad = good.copy()
    bad.loc[1, "month"] = 1
    assert _parquet_err(tmp_path, bad) == ("row 2: duplicate row for customer_id 'A' month 1 "
                                           "(first seen on row 1)")
    bad = good.copy()
    bad.loc[1, "churned"] = 1
    assert "row 2: inconsistent 'churned' labels for customer_id 'A': 0 on row 1 but 1 here" in \
        _parquet_err(tmp_path, bad)
    bad = good.astype({"month": float})
    bad.loc[0, "month"] = 1.5
    assert _parquet_err(tmp_path, bad) == "row 1: column 'month' must be an integer, got '1.5'"
    bad = good.astype({"movies_watched": str})
    bad.loc[0, "movies_watched"] = "three"
    assert _parquet_err(tmp_path, bad) == "row 1: column 'movies_watched' has a non-numeric value 'three'"
    assert "has a header but no data rows" in _parquet_err(tmp_path, good.iloc[:0])
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("a,b\n")
    with pytest.raises(D.DataError, match="not a readable Parquet file"):
        D.read_table(str(not_parquet))


def test_csv_blank_lines_keep_line_numbers(tmp_path):
    text = HEADER + "A,1,3,7.5,2,0\n\n , , , , , \nA,2,4,x,3,0\n"
    assert _err(tmp_path, text) == "line 5: column 'satisfaction' has a non-numeric value 'x'"
    ds = D.read_table(_write(tmp_path, HEADER + "A,1,3,7.5,2,0\n\nA,2,4,7,3,0\n"))
    assert list(ds.lengths) == [2]


def test_csv_first_problem_in_file_order_is_reported(tmp_path):
    # a bad value on line 3 comes before the wrong field count on line 5
    text = HEADER + "A,1,3,7.5,2,0\nA,2,3,nan,2,0\nB,1,3,7,2,1\nC,1,3,7,2,1,9\n"
    assert _err(tmp_path, text) == "line 3: column 'satisfaction' is NaN (missing value)"
    assert _err(tmp_path, GOOD + "C,1,3,7,2,1,9\n") == "line 5: expected 6 fields like the header, got 7"


def test_max_months_keeps_the_most_recent(tmp_path):
    text = HEADER + "A,3,4,7.0,3,0\nB,5,0,5.0,30,1\nA,1,3,7.5,2,0\nA,2,5,6.5,1,0\n"
    ds = D.read_table(_write(tmp_path, text), max_months=2)
    assert list(ds.lengths) == [2, 1]
    np.testing.assert_array_equal(ds.X[0, :, 0], [5, 4])


def test_progress_bar_on_a_terminal():
    import io

    from lstm_fast.churn.train import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = Progress(out)
    with p.bar(1, 3, 10) as bar:
        for _ in range(10):
            bar.update(1)
        bar.refresh()  # tqdm redraws at most every 0.1 s
    p.line("epoch   1/3  done")
    text = out.getvalue()
    assert "epoch   1/3:" in text and "10/10" in text and "batch/s" in text
    assert text.endswith("\repoch   1/3  done\n")  # the bar cleared itself before the epoch line
    quiet = Tty()
    with Progress(quiet, quiet=True).bar(1, 3, 10) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
    plain = io.StringIO()  # not a terminal: per-epoch lines only, no bar
    with Progress(plain).bar(1, 3, 10) as bar:
        bar.update(10)
    assert plain.getvalue() == ""


# --- streaming: chunks of whole customers, scoring at scale (lstm_fast.churn.stream) -----------

def _untrained_model(path, seed=0, hidden=16):
    """A model with a fitted normalizer and random weights: enough to compare scores."""
    ds = D.generate(500, seed=seed)
    m = ChurnModel(hidden, seed=seed)
    m.normalizer.fit(ds.X, ds.lengths)
    m.save(str(path))
    return ChurnModel.load(str(path))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_stream_chunks_hold_whole_customers_and_score_like_in_memory(tmp_path, suffix):
    from lstm_fast.churn import stream
    ds = D.generate(700, seed=8)  # ragged: some customers have 2-5 months
    path = str(tmp_path / f"c{suffix}")
    D.write_table(ds, path)
    model = _untrained_model(tmp_path / "m.npz")
    for rows_per_read in (7, 50, 100000):  # the reads cut customers anywhere; the chunks never do
        chunks = list(stream.iter_chunks(path, chunk_customers=64, rows_per_read=rows_per_read))
        sizes = [len(stream.chunk_data(c)) for c in chunks]
        assert sizes == [64] * 10 + [60]
        got = np.concatenate([stream.chunk_data(c).ids for c in chunks])
        assert list(got) == list(ds.ids)  # file order, each customer once
        assert [c.first_customer for c in chunks] == list(range(0, 700, 64))
        out = str(tmp_path / f"s{rows_per_read}{suffix}")
        res = stream.predict_file(str(tmp_path / "m.npz"), path, out, chunk_customers=64, block=32,
                                  rows_per_read=rows_per_read)
        assert res["customers"] == 700 and res["rows"] == int(ds.lengths.sum()) and res["auc"] == res["auc"]
        import pandas as pd
        scores = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
        assert list(scores.customer_id) == list(ds.ids)
        expect = model.predict_proba(D.read_table(path), batch_size=32)  # the same blocks of 32
        if suffix == ".parquet":
            np.testing.assert_array_equal(scores.churn_probability.to_numpy(), expect)
        else:
            np.testing.assert_allclose(scores.churn_probability.to_numpy(), expect, atol=5e-7, rtol=0)
    with pytest.raises(ValueError, match="multiple of block"):
        stream.predict_file(str(tmp_path / "m.npz"), path, out, chunk_customers=100, block=64)
    # progress: rows read (the total known for Parquet), customers scored
    import io

    from tqdm import tqdm
    text = io.StringIO()
    bar = tqdm(desc="scoring", unit="row", file=text, mininterval=0, ncols=100)
    stream.predict_file(str(tmp_path / "m.npz"), path, out, chunk_customers=64, block=32, progress=bar)
    bar.close()
    rows = int(ds.lengths.sum())
    assert (f"{rows}/{rows}" if suffix == ".parquet" else f"{rows}row") in text.getvalue()
    assert "customers=700" in text.getvalue()


def test_stream_messages_are_the_readers(tmp_path):
    """Each chunk is checked by the in-memory reader's function: the same messages, with the
    file's own line numbers, also in a later chunk."""
    from lstm_fast.churn import stream

    def err(text, **kw):
        p = _write(tmp_path, text)
        with pytest.raises(D.DataError) as e:
            for c in stream.iter_chunks(p, **kw):
                stream.chunk_data(c)
        return str(e.value)

    rows = "".join(f"C{k},{m},3,7,2,0\n" for k in range(20) for m in (1, 2))
    for kw in ({}, {"chunk_customers": 4, "rows_per_read": 3}):
        for bad in ("C20,1,3,nan,2,0\n", "C20,1,3,7,2\n", "C20,1,3,7,2,0\nC20,1,3,7,2,0\n",
                    "C20,1,3,7,2,0\nC20,2,3,7,2,1\n"):
            assert err(HEADER + rows + bad, **kw) == _err(tmp_path, HEADER + rows + bad)
        assert err(HEADER, **kw) == _err(tmp_path, HEADER)
    assert "missing required column(s): satisfaction" in err("customer_id,month,movies_watched,"
                                                               "days_since_login\nA,1,3,2\n")


def test_stream_interleaved_customer_is_reported(tmp_path, capsys):
    from lstm_fast.churn import stream
    model = tmp_path / "m.npz"
    _untrained_model(model)
    text = HEADER + "A,1,3,7.5,2,0\nA,2,4,7.0,3,0\nB,1,0,5.0,30,1\nA,3,4,7.0,3,0\n"
    expect = ("line 5: the rows of customer_id 'A' are not together: its earlier rows end on line 3, "
              "other customers' rows come in between (reading in chunks needs each customer's rows "
              "consecutive, in any month order; sort the file by customer_id)")
    path = _write(tmp_path, text)
    assert cli.main(["predict", "--model", str(model), "--data", path]) == 2
    assert capsys.readouterr().err == f"lstm-fast churn: error: {expect}\n"
    assert not list(tmp_path.glob(".scores-*"))  # no partial output left behind
    good = _write(tmp_path, GOOD, "good.csv")
    assert cli.main(["predict", "--model", str(model), "--data", good, "--out",
                     str(tmp_path / "no" / "s.csv")]) == 2
    assert capsys.readouterr().err.startswith(f"lstm-fast churn: error: cannot write {tmp_path / 'no' / 's.csv'}: "
                                              "No such file or directory")
    # across chunks: the customer's earlier rows were in a chunk already scored
    rows = "".join(f"C{k:02d},{m},3,7,2,0\n" for k in range(30) for m in (1, 2))
    path = _write(tmp_path, HEADER + rows + "C03,3,3,7,2,0\n", "late.csv")
    with pytest.raises(D.DataError) as e:
        stream.predict_file(str(model), path, str(tmp_path / "s.csv"), chunk_customers=8, block=8,
                            rows_per_read=5)
    assert str(e.value).startswith("line 62: the rows of customer_id 'C03' are not together: its earlier "
                                   "rows end on line 9,")
    assert not (tmp_path / "s.csv").exists()
    # a problem in an earlier row is reported first (file order), as by the in-memory reader
    path = _write(tmp_path, text.replace("B,1,0,5.0,30,1", "B,1,0,x,30,1"), "first.csv")
    with pytest.raises(D.DataError, match="^line 4: column 'satisfaction' has a non-numeric value 'x'$"):
        stream.predict_file(str(model), path, str(tmp_path / "s.csv"))
    # Parquet: row numbers
    import pandas as pd
    pq_path = str(tmp_path / "i.parquet")
    pd.read_csv(path.replace("first.csv", "c.csv")).to_parquet(pq_path, index=False)
    with pytest.raises(D.DataError, match="^row 4: the rows of customer_id 'A' are not together: its "
                                          "earlier rows end on row 2,"):
        stream.predict_file(str(model), pq_path, str(tmp_path / "s.parquet"))


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_scores_200k_customers_bitwise_like_one_process(tmp_path, dask_client, capsys):
    """200,000 synthetic customers on a local cluster of 2 worker processes: the same bits as
    single-process scoring, file order, the model loaded once per worker."""
    import pandas as pd

    from lstm_fast.churn import stream
    ds = D.generate(200_000, seed=9)
    path = str(tmp_path / "big.parquet")
    D.write_table(ds, path)
    model = tmp_path / "m.npz"
    _untrained_model(model, hidden=32)
    one = str(tmp_path / "one.parquet")
    assert cli.main(["predict", "--model", str(model), "--data", path, "--out", one]) == 0
    assert "scored 200000 customers" in capsys.readouterr().err
    res = stream.predict_file(str(model), path, str(tmp_path / "dask.parquet"), client=dask_client)
    assert res["workers"] == 2 and res["customers"] == 200_000
    a, b = pd.read_parquet(one), pd.read_parquet(tmp_path / "dask.parquet")
    assert list(b.customer_id) == list(ds.ids)
    np.testing.assert_array_equal(b.churn_probability.to_numpy(), a.churn_probability.to_numpy())
    loads = dask_client.run(lambda: list(stream.LOADS))
    assert len(loads) == 2 and all(len(v) == 1 for v in loads.values()), loads  # once per worker
    # the CLI's --dask path (an existing scheduler): the same file
    out = str(tmp_path / "cli.parquet")
    assert cli.main(["predict", "--model", str(model), "--data", path, "--out", out, "--quiet",
                     "--dask", dask_client.scheduler.address]) == 0
    np.testing.assert_array_equal(pd.read_parquet(out).churn_probability.to_numpy(),
                                  a.churn_probability.to_numpy())
    assert all(len(v) == 1 for v in dask_client.run(lambda: list(stream.LOADS)).values())


def test_dask_bad_input_same_message_as_one_process(tmp_path, dask_client, capsys):
    model = tmp_path / "m.npz"
    _untrained_model(model)
    rows = "".join(f"C{k:03d},{m},3,7,2,0\n" for k in range(100) for m in (1, 2))
    cases = {"missing.csv": "customer_id,month,movies_watched,days_since_login\nA,1,3,2\n",
             "inter.csv": HEADER + rows + "C007,3,3,7,2,0\n",
             "inter_local.csv": HEADER + "A,1,3,7.5,2,0\nB,1,0,5.0,30,1\nA,2,4,7.0,3,0\n" + rows,
             "nan.csv": HEADER + rows + "C200,1,3,nan,2,0\n"}
    for name, text in cases.items():
        path = _write(tmp_path, text, name)
        for part in ("parquet", "csv"):
            if part == "parquet":
                import pandas as pd
                if name == "missing.csv" or name == "nan.csv":
                    continue  # covered by the CSV file (a Parquet NaN is a null: another message)
                pd.read_csv(path, dtype={"customer_id": str}).to_parquet(path + ".parquet", index=False)
                data = path + ".parquet"
            else:
                data = path
            msgs = []
            for extra in ([], ["--dask", dask_client.scheduler.address]):
                assert cli.main(["predict", "--model", str(model), "--data", data, "--quiet"] + extra) == 2
                msgs.append(capsys.readouterr().err)
            assert msgs[0] == msgs[1] and msgs[0].startswith("lstm-fast churn: error: "), (name, msgs)
            if "inter" in name:
                assert "are not together" in msgs[0]
            if name == "missing.csv":
                assert "missing required column(s): satisfaction" in msgs[0]


def test_cli_workers_starts_a_local_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    ds = D.generate(3000, seed=2)
    path = str(tmp_path / "c.csv")
    D.write_table(ds, path)
    model = _untrained_model(tmp_path / "m.npz")
    assert cli.main(["predict", "--model", str(tmp_path / "m.npz"), "--data", path, "--out",
                     str(tmp_path / "s.csv"), "--workers", "2"]) == 0
    assert "on 2 Dask worker(s)" in capsys.readouterr().err
    import pandas as pd
    got = pd.read_csv(tmp_path / "s.csv")
    np.testing.assert_allclose(got.churn_probability.to_numpy(), model.predict_proba(ds), atol=5e-7, rtol=0)
    with pytest.raises(SystemExit):
        cli.main(["predict", "--model", "m", "--data", path, "--workers", "2", "--dask", "tcp://x:1"])


# --- out-of-core training: the same numbers streamed from disk as in memory ---------------------

def _same_results(a, b):
    ra, rb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for k in ("n_customers", "n_train", "n_val", "n_test", "epochs_run", "best_epoch", "lstm", "baseline",
              "gates", "scenarios"):
        assert ra[k] == rb[k], k
    for ha, hb in zip(ra["history"], rb["history"]):
        assert {k: v for k, v in ha.items() if k != "seconds"} == {k: v for k, v in hb.items() if k != "seconds"}
    with np.load(a / "churn_model.npz") as za, np.load(b / "churn_model.npz") as zb:
        for k in za.files:
            if k != "config":
                np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_streamed_training_equals_in_memory(tmp_path, monkeypatch, suffix):
    """Chunks of 64 customers, windows of 3 chunks (several windows, a carried remainder):
    the file streamed from disk and the same data in memory give the same weights and metrics."""
    from lstm_fast.churn import train
    monkeypatch.setattr(train, "WINDOW", 3)
    ds = D.generate(900, seed=12)
    path = tmp_path / f"c{suffix}"
    D.write_table(ds, str(path))
    kw = dict(hidden_size=8, epochs=4, batch_size=50, patience=2, seed=3, quiet=True, figure=False)
    mem = train.run(train.MemorySource(D.read_table(str(path)), chunk=64), tmp_path / "mem", **kw)
    seen = []

    class Counting(train.FileSource):  # the file is read again at each pass, in chunks
        def chunks(self):
            seen.append(0)
            for ch in super().chunks():
                assert len(ch) <= 64
                seen[-1] += len(ch)
                yield ch

    disk = train.run(Counting(str(path), chunk=64), tmp_path / "disk", **kw)
    assert disk["epochs_run"] == 4 and len(seen) == 1 + 2 * 4 + 1 and set(seen) == {900}
    assert mem["lstm"] == disk["lstm"] and mem["n_train"] == disk["n_train"]
    _same_results(tmp_path / "mem", tmp_path / "disk")


def test_cli_stream_on_and_off_give_the_same_model(tmp_path, capsys):
    ds = D.generate(1500, seed=13)
    path = str(tmp_path / "c.parquet")
    D.write_table(ds, path)
    args = ["--data", path, "--epochs", "3", "--hidden-size", "8", "--no-figure", "--seed", "2"]
    assert cli.main(args + ["--stream", "on", "--out-dir", str(tmp_path / "on")]) == 0
    text = capsys.readouterr().out
    assert "streamed" in text and "mini-batches streamed from disk" in text
    assert cli.main(args + ["--stream", "off", "--out-dir", str(tmp_path / "off")]) == 0
    assert "loaded in" in capsys.readouterr().out
    _same_results(tmp_path / "on", tmp_path / "off")
    # bad input: the reader's messages, before any training
    bad = _write(tmp_path, "customer_id,month\nA,1\n")
    assert cli.main(["--data", bad, "--stream", "on"]) == 2
    assert "missing required column(s): movies_watched" in capsys.readouterr().err
    bad = _write(tmp_path, GOOD + "C,1,3,nan,2,0\n", "nan.csv")
    assert cli.main(["--data", bad, "--stream", "on", "--out-dir", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "lstm-fast churn: error: line 5: column 'satisfaction' is NaN (missing value)\n"
