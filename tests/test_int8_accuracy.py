"""int8 weights on a real model (issue 16): the churn model, trained in float32 as the
churn job trains it (``lstm_fast.churn.train.run`` with the CLI's defaults: 20,000 synthetic
customers of 6 months, LSTM(3 -> 32), Adam, early stopping), then its test split scored with
the LSTM layer quantized to int8 (``lstm_fast.quantize(layer, "int8")``): the ROC AUC (the
job's own ``metrics.roc_auc``) stays within 0.005 of float32, and the churn probabilities
move by little.

Measured on this data (seeds 0-3, test splits of 2,998 customers, Intel Xeon family 6 model
167): float32 AUC 0.887-0.900, |AUC(int8) - AUC(float32)| <= 3.9e-5, max |p(int8) -
p(float32)| <= 8.8e-3, mean <= 4.3e-4 (bfloat16 on the same models: <= 3.0e-5, 6.8e-3,
4.1e-4). The test asserts the issue's 0.005 on the AUC and about twice the measured on the
probabilities (as tests/test_bf16_accuracy.py does)."""

import io

import numpy as np
import pytest

import lstm_fast
from lstm_fast.churn import data as D, metrics, train
from lstm_fast.churn.model import ChurnModel

pytest.importorskip("lstm_fast.backends._c")  # the float32 model is trained on the C backend

AUC_TOL = 0.005     # the bound
P_MAX_TOL = 0.02    # max |p(int8) - p(float32)| over the test customers (measured <= 8.8e-3)
P_MEAN_TOL = 1e-3   # mean of the same (measured <= 4.3e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_churn_model_test_auc_with_int8_weights(tmp_path, seed):
    ds = D.generate(20000, seed=seed)  # the churn job's default data (``lstm-fast churn``)
    res = train.run(ds, str(tmp_path), seed=seed, backend="c", quiet=True, figure=False,
                    stream=io.StringIO())
    model = ChurnModel.load(res["model_path"], backend="c")
    source = train.MemorySource(ds)

    p32, y, _ = train.predict_split(model, source, seed, 2)  # the test split, as the job scores it
    auc32 = metrics.roc_auc(y, p32)
    assert auc32 == pytest.approx(res["lstm"]["auc"], abs=1e-12)  # the saved model is the job's
    assert auc32 > 0.85  # a trained model: the comparison means something

    model.lstm = lstm_fast.quantize(model.lstm, "int8")
    assert model.lstm.weight_dtype == "int8"
    p8, y8, subs = train.predict_split(model, source, seed, 2)
    np.testing.assert_array_equal(y8, y)
    auc8 = metrics.roc_auc(y, p8)

    dp = np.abs(p8 - p32)
    assert abs(auc8 - auc32) <= AUC_TOL, (auc32, auc8)
    assert dp.max() <= P_MAX_TOL and dp.mean() <= P_MEAN_TOL, (dp.max(), dp.mean())
    assert dp.max() > 0  # the int8 path did run

    # smaller blocks (the streaming scorer's), and one customer at a time (B = 1: the int8
    # widened in registers rather than the pack's float32 copy): the same last hidden
    # states, bit for bit (compared through h, as in test_bf16_accuracy.py)
    sub = subs[0]
    np.testing.assert_array_equal(model.predict_proba(sub, batch_size=32), p8[:len(sub)])
    Xn = model.normalizer.transform(sub.X, sub.lengths)[:64]
    ln = sub.lengths[:64]
    h_all = model._hlast(model._time_major(Xn, ln, np.float32), ln)
    h_one = np.concatenate([model._hlast(model._time_major(Xn[i:i + 1], ln[i:i + 1], np.float32),
                                         ln[i:i + 1]) for i in range(len(ln))])
    np.testing.assert_array_equal(h_one, h_all)
