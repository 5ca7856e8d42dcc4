"""Training, evaluation and the static baseline for the churn model.

``run(...)`` does the whole job: split (train/val/test, seeded), fit the
normalization on train, train the LSTM with Adam on mini-batches with early
stopping on the validation loss (best weights restored), fit the order-blind
baseline (logistic regression on per-customer averages) on the same train
split, evaluate both on the held-out test split, save the model and the
figure. Returns a dict with everything measured.
"""

import json
import os
import sys
import time

import numpy as np

from . import metrics
from .model import Adam, ChurnModel, bce_from_probs


def split_indices(n, val_frac=0.15, test_frac=0.15, seed=0):
    """Random train/val/test index arrays (seeded)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_frac)))
    n_val = max(1, int(round(n * val_frac)))
    if n - n_test - n_val < 2:
        raise ValueError(f"{n} customers are too few to split into train/validation/test")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


class Progress:
    """One line per epoch; within an epoch a carriage-return bar when the stream is a terminal."""

    def __init__(self, stream=None, quiet=False, width=24):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def bar(self, epoch, epochs, done, total, loss):
        if self.quiet or not self.tty:
            return
        k = int(self.width * done / max(total, 1))
        self.stream.write(f"\repoch {epoch:>3}/{epochs} [{'#' * k}{'.' * (self.width - k)}] "
                          f"{done}/{total} loss {loss:.4f}")
        self.stream.flush()

    def line(self, text):
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def train_model(model, train, val, *, epochs=30, batch_size=128, lr=1e-2, patience=5,
                seed=0, progress=None):
    """Train ``model`` (normalizer already fitted) on ChurnData ``train``; early
    stopping on ``val`` loss. Returns the history (list of per-epoch dicts)."""
    progress = progress or Progress(quiet=True)
    rng = np.random.default_rng(seed)
    Xtr = model.normalizer.transform(train.X, train.lengths)
    Xva = model.normalizer.transform(val.X, val.lengths)
    opt = Adam(lr=lr)
    n = len(train)
    nb = (n + batch_size - 1) // batch_size
    best, best_loss, bad = None, np.inf, 0
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        tot = 0.0
        for k in range(nb):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            loss, grads = model.loss_and_grads(Xtr[idx], train.lengths[idx], train.y[idx])
            model.apply_step(opt, grads)
            tot += loss * len(idx)
            progress.bar(epoch, epochs, k + 1, nb, tot / ((k * batch_size) + len(idx)))
        train_loss = tot / n
        p_val = 1.0 / (1.0 + np.exp(-model.logits_normalized(Xva, val.lengths)))
        val_loss = bce_from_probs(p_val, val.y)
        val_auc = metrics.roc_auc(val.y, p_val)
        dt = time.perf_counter() - t0
        improved = val_loss < best_loss - 1e-5
        if improved:
            best, best_loss, bad = model.get_state(), val_loss, 0
        else:
            bad += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_auc": val_auc, "seconds": dt})
        progress.line(f"epoch {epoch:>3}/{epochs}  loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                      f"val_auc {val_auc:.4f}  {dt:.2f}s{'  *' if improved else ''}")
        if bad >= patience:
            progress.line(f"early stopping: no validation improvement for {patience} epochs; "
                          f"restoring epoch {epoch - bad}")
            break
    if best is not None:
        model.set_state(best)
    return history
