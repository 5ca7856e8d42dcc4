"""Metrics and the order-blind baseline, in plain NumPy (no scikit-learn).

* ``roc_auc(y, score)``: area under the ROC curve via the Mann-Whitney U
  statistic with average ranks for ties (equal to sklearn's ``roc_auc_score``).
* ``classification_metrics(y, prob, threshold=0.5)``: accuracy, ROC AUC,
  precision, recall.
* ``LogisticRegression``: L2-regularized logistic regression fitted by Newton's
  method (IRLS), used as the static baseline on per-customer feature averages.
"""

import numpy as np


def _average_ranks(a):
    """Ranks 1..n of ``a`` with ties given their average rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    # boundaries of runs of equal values
    edges = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(a)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y, score):
    """ROC AUC of ``score`` for binary labels ``y`` (nan if only one class is present)."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(score)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y, prob, threshold=0.5):
    """Dict of accuracy, auc, precision, recall (precision is nan without positive predictions)."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(prob) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    return {
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "auc": roc_auc(y, prob),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def sigmoid(z):
    """Logistic function without overflow."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class LogisticRegression:
    """Binary logistic regression with an L2 penalty, fitted by Newton's method.

    Features are standardized with the training mean/std inside ``fit``.
    """

    def __init__(self, l2=1e-3, max_iter=50, tol=1e-10):
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        self.std_ = X.std(axis=0)
        self.std_[self.std_ == 0] = 1.0
        Z = np.hstack([(X - self.mean_) / self.std_, np.ones((len(X), 1))])
        n, d = Z.shape
        w = np.zeros(d)
        reg = np.full(d, self.l2 * n)
        reg[-1] = 0.0  # no penalty on the intercept
        for _ in range(self.max_iter):
            p = sigmoid(Z @ w)
            grad = Z.T @ (p - y) + reg * w
            hess = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg) + 1e-9 * np.eye(d)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < self.tol:
                break
        self.coef_ = w[:-1]
        self.intercept_ = w[-1]
        return self

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float64)
        return sigmoid(((X - self.mean_) / self.std_) @ self.coef_ + self.intercept_)
