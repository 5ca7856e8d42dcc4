"""bfloat16 and int8 weights (and int8_dynamic) on a real model (issue 16): the churn model, trained in
float32 as the churn job trains it (``lstm_fast.churn.train.run`` with the CLI's defaults:
20,000 synthetic customers of 6 months, LSTM(3 -> 32), Adam, early stopping), then its test
split scored with the LSTM layer quantized (``lstm_fast.quantize(layer, weight_dtype)``):
the ROC AUC (the job's own ``metrics.roc_auc``) stays within 0.005 of float32, and the
churn probabilities move by little. One body for both weight dtypes; each seed's model is
trained once and quantized both ways.

Measured on this data (test splits of 2,998 customers, Intel Xeon family 6 model 167):
float32 AUC 0.887-0.903 (seeds 0-7);
bfloat16 (seeds 0-7): |AUC - AUC(float32)| <= 3.0e-5, max |p - p(float32)| <= 9.0e-3, mean <= 4.1e-4;
int8 (seeds 0-3): |AUC - AUC(float32)| <= 3.9e-5, max |p - p(float32)| <= 8.8e-3, mean <= 4.3e-4;
int8_dynamic (x and h quantized per step too; seeds 0-1, I = 3: x's rows have three values):
|AUC - AUC(float32)| <= 6.9e-5, max |p - p(float32)| <= 1.27e-2, mean <= 7.6e-4.
The test asserts the issue's 0.005 on the AUC and about twice the measured on the
probabilities of bfloat16 and int8 (as tests/test_low_precision.py does for the layer's
outputs); int8_dynamic is within those same bounds, with less margin (1.6x and 1.3x).
"""

import io

import numpy as np
import pytest

import lstm_fast
from lstm_fast.churn import data as D, metrics, train
from lstm_fast.churn.model import ChurnModel

pytest.importorskip("lstm_fast.backends._c")  # low-precision weights need the C backend

AUC_TOL = 0.005     # the bound
P_MAX_TOL = 0.02    # max |p(quantized) - p(float32)| over the test customers (measured <= 9.0e-3)
P_MEAN_TOL = 1e-3   # mean of the same (measured <= 4.3e-4)


@pytest.fixture(scope="module", params=[0, 1], ids=lambda s: f"seed{s}")
def trained(request, tmp_path_factory):
    """The churn job's float32 model of one seed and its test split's float32 scores."""
    seed = request.param
    ds = D.generate(20000, seed=seed)  # the churn job's default data (``lstm-fast churn``)
    res = train.run(ds, str(tmp_path_factory.mktemp(f"churn{seed}")), seed=seed, backend="c",
                    quiet=True, figure=False, stream=io.StringIO())
    source = train.MemorySource(ds)
    model = ChurnModel.load(res["model_path"], backend="c")
    p32, y, _ = train.predict_split(model, source, seed, 2)  # the test split, as the job scores it
    return dict(seed=seed, res=res, source=source, p32=p32, y=y)


@pytest.mark.parametrize("weight_dtype", ["bfloat16", "int8", "int8_dynamic"])
def test_churn_model_test_auc_with_low_precision_weights(trained, weight_dtype):
    seed, source, p32, y = trained["seed"], trained["source"], trained["p32"], trained["y"]
    model = ChurnModel.load(trained["res"]["model_path"], backend="c")
    auc32 = metrics.roc_auc(y, p32)
    assert auc32 == pytest.approx(trained["res"]["lstm"]["auc"], abs=1e-12)  # the saved model is the job's
    assert auc32 > 0.85  # a trained model: the comparison means something

    model.lstm = lstm_fast.quantize(model.lstm, weight_dtype)
    assert model.lstm.weight_dtype == weight_dtype
    pq, yq, subs = train.predict_split(model, source, seed, 2)
    np.testing.assert_array_equal(yq, y)
    auc_q = metrics.roc_auc(y, pq)

    dp = np.abs(pq - p32)
    assert abs(auc_q - auc32) <= AUC_TOL, (auc32, auc_q)
    assert dp.max() <= P_MAX_TOL and dp.mean() <= P_MEAN_TOL, (dp.max(), dp.mean())
    assert dp.max() > 0  # the low-precision path did run

    # smaller blocks, as the streaming scorer may run them (``churn.stream.score_chunk(model,
    # chunk, block)``, each block trimmed to its own longest history): the same quantized
    # probabilities, bit for bit
    sub = subs[0]
    blocked = model.predict_proba(sub, batch_size=32)
    np.testing.assert_array_equal(blocked, pq[:len(sub)])
    # and one customer at a time (B = 1, the kernel's other route: bf16's B = 1 tile, int8
    # widened in registers rather than the pack's float32 copy): the same last hidden
    # states, bit for bit (the probabilities are compared through h: NumPy's float64 head
    # rounds a (1, H) @ (H,) product differently from a batched one, in float32 too)
    Xn = model.normalizer.transform(sub.X, sub.lengths)[:64]
    ln = sub.lengths[:64]
    h_all = model._hlast(model._time_major(Xn, ln, np.float32), ln)
    h_one = np.concatenate([model._hlast(model._time_major(Xn[i:i + 1], ln[i:i + 1], np.float32),
                                         ln[i:i + 1]) for i in range(len(ln))])
    np.testing.assert_array_equal(h_one, h_all)
