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
from tqdm.auto import tqdm

from . import metrics
from .figures import gate_summary, save_figure
from ..optim import Adam
from .model import ChurnModel, bce_from_probs


def split_indices(n, val_frac=0.15, test_frac=0.15, seed=0):
    """Random train/val/test index arrays (seeded)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_frac)))
    n_val = max(1, int(round(n * val_frac)))
    if n - n_test - n_val < 2:
        raise ValueError(f"{n} customers are too few to split into train/validation/test")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


class Progress:
    """Progress of training: a tqdm bar over the mini-batches of each epoch (on a terminal
    only; it clears itself) and one line per epoch (unless ``quiet``)."""

    def __init__(self, stream=None, quiet=False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def bar(self, epoch, epochs, total):
        """A tqdm bar for one epoch of ``total`` mini-batches (disabled when quiet or not a terminal)."""
        return tqdm(total=total, desc=f"epoch {epoch:>3}/{epochs}", unit="batch", leave=False,
                    file=self.stream, disable=self.quiet or not self.tty, dynamic_ncols=True)

    def line(self, text):
        if not self.quiet:
            print(text, file=self.stream, flush=True)


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
        with progress.bar(epoch, epochs, nb) as bar:
            for k in range(nb):
                idx = perm[k * batch_size:(k + 1) * batch_size]
                loss, grads = model.loss_and_grads(Xtr[idx], train.lengths[idx], train.y[idx])
                model.apply_step(opt, grads)
                tot += loss * len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{tot / ((k * batch_size) + len(idx)):.4f}", refresh=False)
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


def scenario_table(data, p_lstm, p_base):
    """Per synthetic pattern: count, actual churn rate, mean LSTM and baseline probability."""
    if data.scenarios is None or data.y is None:
        return None
    table = {}
    for name, sel in data.scenarios.items():
        if sel.sum() >= 5:
            table[name] = {"n": int(sel.sum()), "churn_rate": float(data.y[sel].mean()),
                           "lstm": float(p_lstm[sel].mean()), "baseline": float(p_base[sel].mean())}
    return table or None


def _fmt_metric(v):
    return "   n/a" if v != v else f"{v:6.3f}"


def run(data, out_dir="churn_out", *, hidden_size=32, epochs=30, batch_size=128, lr=1e-2,
        patience=5, seed=0, backend="auto", quiet=False, figure=True, data_source="synthetic",
        stream=None):
    """Train + evaluate + save (see the module docstring). Returns a results dict."""
    out = stream or sys.stdout
    say = (lambda *a: None) if quiet else (lambda s: print(s, file=out, flush=True))
    t_start = time.perf_counter()
    if data.y is None:
        raise ValueError("training needs labels (the 'churned' column)")
    if len(np.unique(data.y)) < 2:
        raise ValueError("training needs both churners and stayers in the data (all labels are "
                         f"{int(data.y[0])})")
    tr_idx, va_idx, te_idx = split_indices(len(data), seed=seed)
    train, val, test = data.subset(tr_idx), data.subset(va_idx), data.subset(te_idx)
    model = ChurnModel(hidden_size, backend=backend, seed=seed)
    model.normalizer.fit(train.X, train.lengths)
    ragged = int(np.sum(data.lengths < data.n_months))
    say(f"data: {len(data)} customers ({data_source}), up to {data.n_months} months x "
        f"{data.X.shape[2]} features, {ragged} with shorter histories, "
        f"{100 * data.y.mean():.1f}% churned")
    say(f"split: train {len(train)} / validation {len(val)} / test {len(test)}  (seed {seed})")
    say(f"model: LSTM(3 -> {hidden_size}) + logistic head, backend {model.backend!r}, "
        f"Adam lr {lr}, batch {batch_size}, up to {epochs} epochs (early stopping patience {patience})")
    t0 = time.perf_counter()
    history = train_model(model, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                          patience=patience, seed=seed, progress=Progress(out, quiet))
    train_seconds = time.perf_counter() - t0

    p_lstm = model.predict_proba(test)
    m_lstm = metrics.classification_metrics(test.y, p_lstm)
    base = metrics.baseline().fit(train.averages(), train.y)
    p_base = metrics.baseline_proba(base, test.averages())
    m_base = metrics.classification_metrics(test.y, p_base)

    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "churn_model.npz")
    model.save(model_path, {"trained_on": data_source, "n_months": data.n_months, "seed": seed,
                            "test_auc": m_lstm["auc"], "baseline_test_auc": m_base["auc"]})
    summary = gate_summary(model, test)
    scen = scenario_table(test, p_lstm, p_base)
    fig_path = None
    if figure:
        fig_path = save_figure(os.path.join(out_dir, "churn_figure.png"), history, summary,
                               metrics={"lstm": m_lstm, "baseline": m_base}, n_test=len(test),
                               churn_rate=float(test.y.mean()), scenarios=scen,
                               subtitle=f"data: {data_source}; LSTM(3 -> {hidden_size}), backend "
                                        f"{model.backend!r}, {len(history)} epochs in "
                                        f"{train_seconds:.1f}s")
    total = time.perf_counter() - t_start
    results = {
        "n_customers": len(data), "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "backend": model.backend, "hidden_size": hidden_size, "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
        "train_seconds": train_seconds, "total_seconds": total,
        "lstm": m_lstm, "baseline": m_base, "history": history, "gates": summary,
        "model_path": model_path, "figure_path": fig_path,
        "scenarios": scen,
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)

    print(f"\ntest set: {len(test)} customers ({100 * test.y.mean():.1f}% churned), threshold 0.5", file=out)
    print(f"{'':22}{'accuracy':>9}{'ROC AUC':>9}{'precision':>10}{'recall':>8}", file=out)
    for name, m in (("LSTM (order in time)", m_lstm), ("baseline (averages)", m_base)):
        print(f"{name:22}{_fmt_metric(m['accuracy']):>9}{_fmt_metric(m['auc']):>9}"
              f"{_fmt_metric(m['precision']):>10}{_fmt_metric(m['recall']):>8}", file=out)
    if m_lstm["auc"] == m_lstm["auc"]:
        print(f"ROC AUC gain of the sequence model over the order-blind baseline: "
              f"{m_lstm['auc'] - m_base['auc']:+.3f}", file=out)
    else:
        print("ROC AUC undefined: the test split has only churners or only stayers "
              "(use more customers)", file=out)
    print(f"time: training {train_seconds:.1f}s ({len(history)} epochs, "
          f"{train_seconds / max(len(history), 1):.2f}s/epoch), total {total:.1f}s, "
          f"backend {model.backend!r}", file=out)
    if scen:
        print("order in time (synthetic test customers with full history; mean predicted churn "
              "probability):", file=out)
        print(f"  {'pattern':38}{'n':>5}{'churned':>9}{'LSTM':>7}{'baseline':>10}", file=out)
        for name, r in scen.items():
            print(f"  {name:38}{r['n']:>5}{r['churn_rate']:>9.2f}{r['lstm']:>7.2f}"
                  f"{r['baseline']:>10.2f}", file=out)
    if summary is not None:
        T = len(summary["months"])
        print(f"gates (test customers with all {T} months; mean activation per month 1..{T}):", file=out)
        for gate in ("forget", "input"):
            for grp in ("churners", "stayers"):
                vals = " ".join(f"{v:.3f}" for v in summary[f"{gate}_{grp}"])
                print(f"  {gate:6} gate  {grp:8}  {vals}", file=out)
    print(f"model:   {model_path}", file=out)
    print(f"figure:  {fig_path}" if fig_path else "figure:  not written (--no-figure)", file=out)
    print(f"metrics: {os.path.join(out_dir, 'metrics.json')}", file=out)
    return results
