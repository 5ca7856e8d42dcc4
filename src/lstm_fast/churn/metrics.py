"""Metrics and the order-blind baseline, from scikit-learn.

* ``roc_auc(y, score)``: ``sklearn.metrics.roc_auc_score``, or nan when only one
  class is present (a tiny test split), so that the printed table shows n/a
  instead of stopping the job.
* ``classification_metrics(y, prob, threshold=0.5)``: accuracy, ROC AUC,
  precision, recall (``accuracy_score``, ``precision_score``, ``recall_score``;
  nan where undefined, e.g. precision without positive predictions).
* ``baseline()``: the static baseline, a standardized L2 logistic regression
  (``StandardScaler`` + ``LogisticRegression``) on per-customer feature averages.
"""

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def roc_auc(y, score):
    """ROC AUC of ``score`` for binary labels ``y`` (nan if only one class is present)."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


def classification_metrics(y, prob, threshold=0.5):
    """Dict of accuracy, auc, precision, recall (nan where undefined)."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(prob) >= threshold
    if not len(y):
        return {k: float("nan") for k in ("accuracy", "auc", "precision", "recall")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division=nan is the answer we want, not a warning
        return {
            "accuracy": float(accuracy_score(y, pred)),
            "auc": roc_auc(y, prob),
            "precision": float(precision_score(y, pred, zero_division=np.nan)),
            "recall": float(recall_score(y, pred, zero_division=np.nan)),
        }


def baseline():
    """The order-blind baseline: an unfitted scikit-learn pipeline, standardized
    features then an L2 logistic regression (lbfgs)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def baseline_proba(model, X):
    """Churn probability (class 1) of a fitted :func:`baseline` model."""
    return model.predict_proba(X)[:, 1]
