"""bfloat16 weights on a real model (issue 16): the churn model, trained in float32 as the
churn job trains it (``lstm_fast.churn.train.run`` with the CLI's defaults: 20,000 synthetic
customers of 6 months, LSTM(3 -> 32), Adam, early stopping), then its test split scored with
the LSTM layer quantized to bfloat16 (``lstm_fast.quantize``): the ROC AUC (the job's own
``metrics.roc_auc``) stays within 0.005 of float32, and the churn probabilities move by
little.

Measured on this data (seeds 0-7, test splits of 2,998 customers, Intel Xeon family 6 model
167): float32 AUC 0.887-0.903, |AUC(bf16) - AUC(float32)| <= 3.0e-5, max |p(bf16) - p(float32)|
<= 9.0e-3, mean <= 4.1e-4. The test asserts the issue's 0.005 on the AUC and about twice the measured on the
probabilities (as tests/test_bf16.py does for the layer's outputs)."""

import io

import numpy as np
import pytest

import lstm_fast
from lstm_fast.churn import data as D, metrics, train
from lstm_fast.churn.model import ChurnModel

pytest.importorskip("lstm_fast.backends._c")  # bfloat16 weights need the C backend

AUC_TOL = 0.005     # the bound
P_MAX_TOL = 0.02    # max |p(bf16) - p(float32)| over the test customers (measured <= 9.0e-3)
P_MEAN_TOL = 1e-3   # mean of the same (measured <= 4.1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_churn_model_test_auc_with_bfloat16_weights(tmp_path, seed):
    ds = D.generate(20000, seed=seed)  # the churn job's default data (``lstm-fast churn``)
    res = train.run(ds, str(tmp_path), seed=seed, backend="c", quiet=True, figure=False,
                    stream=io.StringIO())
    model = ChurnModel.load(res["model_path"], backend="c")
    source = train.MemorySource(ds)

    p32, y, _ = train.predict_split(model, source, seed, 2)  # the test split, as the job scores it
    auc32 = metrics.roc_auc(y, p32)
    assert auc32 == pytest.approx(res["lstm"]["auc"], abs=1e-12)  # the saved model is the job's
    assert auc32 > 0.85  # a trained model: the comparison means something

    model.lstm = lstm_fast.quantize(model.lstm, "bfloat16")
    assert model.lstm.weight_dtype == "bfloat16"
    pbf, ybf, subs = train.predict_split(model, source, seed, 2)
    np.testing.assert_array_equal(ybf, y)
    auc_bf = metrics.roc_auc(y, pbf)

    dp = np.abs(pbf - p32)
    assert abs(auc_bf - auc32) <= AUC_TOL, (auc32, auc_bf)
    assert dp.max() <= P_MAX_TOL and dp.mean() <= P_MEAN_TOL, (dp.max(), dp.mean())
    assert dp.max() > 0  # the bfloat16 path did run

    # smaller blocks, as the streaming scorer may run them (``churn.stream.score_chunk(model,
    # chunk, block)``, each block trimmed to its own longest history): the same bfloat16
    # probabilities, bit for bit
    sub = subs[0]
    blocked = model.predict_proba(sub, batch_size=32)
    np.testing.assert_array_equal(blocked, pbf[:len(sub)])
    # and one customer at a time (B = 1, the kernel's other bf16 route): the same last hidden
    # states, bit for bit (the probabilities are compared through h: NumPy's float64 head
    # rounds a (1, H) @ (H,) product differently from a batched one, in float32 too)
    Xn = model.normalizer.transform(sub.X, sub.lengths)[:64]
    ln = sub.lengths[:64]
    h_all = model._hlast(model._time_major(Xn, ln, np.float32), ln)
    h_one = np.concatenate([model._hlast(model._time_major(Xn[i:i + 1], ln[i:i + 1], np.float32),
                                         ln[i:i + 1]) for i in range(len(ln))])
    np.testing.assert_array_equal(h_one, h_all)
