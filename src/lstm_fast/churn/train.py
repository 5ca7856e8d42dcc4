"""Training, evaluation and the static baseline for the churn model.

``run(...)`` does the whole job: split (train/val/test, seeded), fit the
normalization on train, train the LSTM with Adam on mini-batches with early
stopping on the validation loss (best weights restored), fit the order-blind
baseline (logistic regression on per-customer averages) on the same train
split, evaluate both on the held-out test split, save the model and the
figure. Returns a dict with everything measured.

One algorithm for data in memory and for a file streamed from disk
---------------------------------------------------------------------
The data is a sequence of **chunks** of ``CHUNK`` (4096) whole customers in file order
(:class:`MemorySource`: slices of a :class:`~lstm_fast.churn.data.ChurnData`;
:class:`FileSource`: :func:`lstm_fast.churn.stream.iter_chunks` of a CSV/Parquet file,
read again at each pass, never loaded whole). Everything is defined per chunk, so the two
sources give the same numbers to the bit (same split, same normalization, same batches,
same weights; tested):

* split: in chunk ``k`` a permutation from ``default_rng([seed, k])``: 15 % test, 15 %
  validation, the rest train;
* normalization: log1p of the counts, then mean and standard deviation of the train
  months, accumulated chunk by chunk (Chan's parallel update);
* batches: the chunks go by **windows** of ``WINDOW`` (16) chunks = 65,536 customers; the
  train customers of a window (plus the ones left over from the previous window) are
  shuffled (``default_rng(seed)``, one stream for the whole run) and cut into mini-batches;
  the rest (fewer than a batch) go on to the next window, the last ones make the epoch's
  last, smaller batch. A file much larger than a window is thus shuffled within windows:
  shuffle its customers (keeping each one's rows together) if its order carries a trend;
* validation and test: per chunk, in blocks of 4096 customers; the baseline is fitted on
  the train customers' averages (3 numbers a customer, in memory), the gate figure uses
  the first 4,000 test customers with a full history.
"""

import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import data as D
from . import metrics
from .figures import gate_summary, save_figure
from ..optim import Adam
from .model import ChurnModel, bce_from_probs

CHUNK = 4096     # customers per chunk
WINDOW = 16      # chunks per shuffle window
TEST_FRAC = VAL_FRAC = 0.15
GATE_CUSTOMERS = 4000


def split_chunk(n, k, seed):
    """(train, val, test) indices of chunk ``k`` with ``n`` customers (seeded per chunk)."""
    perm = np.random.default_rng([seed, k]).permutation(n)
    n_test, n_val = int(round(n * TEST_FRAC)), int(round(n * VAL_FRAC))
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


class MemorySource:
    """Chunks of a ChurnData in memory (each trimmed to its own longest history)."""

    def __init__(self, data, chunk=CHUNK):
        self.data, self.chunk = data, chunk
        self.description = None

    def chunks(self):
        d = self.data
        for s in range(0, len(d), self.chunk):
            sub = d.subset(slice(s, s + self.chunk))
            T = int(sub.lengths.max())
            sub.X = sub.X[:, :T]
            yield sub


class FileSource:
    """Chunks of a CSV/Parquet file, read again at every pass: checked in full at the first
    pass, later passes skip the costly checks (duplicates, label consistency) of rows that
    passed them (the values are the same)."""

    def __init__(self, path, chunk=CHUNK):
        self.path, self.chunk = os.fspath(path), chunk
        self.checked = False

    def chunks(self):
        from .stream import chunk_data, iter_chunks
        check = not self.checked
        for c in iter_chunks(self.path, require_labels=True, chunk_customers=self.chunk):
            yield chunk_data(c, require_labels=True, check=check)
        self.checked = True


@dataclass
class Scan:
    """What the first pass over the chunks finds."""
    n: int = 0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    n_months: int = 0
    n_short: int = 0
    n_churned: float = 0.0
    n_features: int = len(D.FEATURES)
    train_avg: object = None
    train_y: object = None


def _chan(acc, vals):
    """Merge the count/mean/M2 of ``vals`` (m, F) into ``acc`` (Chan et al.)."""
    n_b = len(vals)
    if n_b == 0:
        return acc
    mean_b = vals.mean(axis=0)
    m2_b = ((vals - mean_b) ** 2).sum(axis=0)
    if acc is None:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = acc
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n)


def scan(source, model, seed):
    """First pass: split sizes, the normalizer (fitted on the train months), the baseline's
    train set (per-customer averages)."""
    sc = Scan()
    acc, avgs, ys = None, [], []
    hist = np.zeros(0, np.int64)  # customers per history length
    for k, ch in enumerate(source.chunks()):
        if ch.y is None:
            raise ValueError("training needs labels (the 'churned' column)")
        tr, va, te = split_chunk(len(ch), k, seed)
        sc.n += len(ch)
        sc.n_train, sc.n_val, sc.n_test = sc.n_train + len(tr), sc.n_val + len(va), sc.n_test + len(te)
        sc.n_months = max(sc.n_months, ch.n_months)
        sc.n_churned += float(ch.y.sum())
        h = np.bincount(ch.lengths)
        hist = np.concatenate([hist, np.zeros(max(len(h) - len(hist), 0), np.int64)])
        hist[:len(h)] += h
        sub = ch.subset(tr)
        Z = model.normalizer._pre(sub.X)
        mask = np.arange(sub.n_months)[None, :] < sub.lengths[:, None]
        acc = _chan(acc, Z[mask])
        avgs.append(sub.averages())
        ys.append(sub.y)
    sc.n_short = int(hist[:sc.n_months].sum())
    if sc.n_churned in (0, sc.n):
        raise ValueError("training needs both churners and stayers in the data (all labels are "
                         f"{int(sc.n_churned > 0)})")
    if sc.n_test < 1 or sc.n_val < 1 or sc.n_train < 2:
        raise ValueError(f"{sc.n} customers are too few to split into train/validation/test")
    sc.train_avg = np.concatenate(avgs)
    sc.train_y = np.concatenate(ys)
    n, mean, m2 = acc
    std = np.sqrt(m2 / n)
    std[std < 1e-8] = 1.0
    model.normalizer.mean, model.normalizer.std = mean, std
    return sc


def _pad(parts, T):
    """Concatenate (X, lengths, y) parts, X zero-padded to T months."""
    X = np.zeros((sum(len(p[1]) for p in parts), T, parts[0][0].shape[2]))
    s = 0
    for x, ln, _ in parts:
        X[s:s + len(ln), :x.shape[1]] = x
        s += len(ln)
    return X, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def train_epoch(model, opt, source, seed, rng, batch_size, bar=None):
    """One epoch over the train customers of ``source`` (windows, see the module
    docstring). Returns the mean training loss."""
    carry = None
    tot, seen = 0.0, 0

    def step(X, ln, y):
        nonlocal tot, seen
        loss, grads = model.loss_and_grads(X, ln, y)
        model.apply_step(opt, grads)
        tot += loss * len(y)
        seen += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{tot / seen:.4f}", refresh=False)

    def train_window(parts):
        nonlocal carry
        if carry is not None:
            parts = [carry] + parts
        parts = [p for p in parts if len(p[1])]
        if not parts:
            return
        X, ln, y = _pad(parts, max(p[0].shape[1] for p in parts))
        perm = rng.permutation(len(y))
        nb = len(y) // batch_size
        for b in range(nb):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            step(X[idx], ln[idx], y[idx])
        rest = perm[nb * batch_size:]
        carry = (X[rest], ln[rest], y[rest]) if len(rest) else None

    window = []
    for k, ch in enumerate(source.chunks()):
        tr, _, _ = split_chunk(len(ch), k, seed)
        sub = ch.subset(tr)
        window.append((model.normalizer.transform(sub.X, sub.lengths), sub.lengths, sub.y))
        if len(window) == WINDOW:
            train_window(window)
            window = []
    train_window(window)
    if carry is not None:
        X, ln, y = carry
        step(X[:, :int(ln.max())], ln, y)
    return tot / max(seen, 1)


def predict_split(model, source, seed, part):
    """(probabilities, labels) of the customers of split ``part`` (1 = val, 2 = test), chunk
    by chunk, in blocks of 4096; for test also the chunks' subsets (for the report)."""
    ps, ys, subs = [], [], []
    for k, ch in enumerate(source.chunks()):
        idx = split_chunk(len(ch), k, seed)[part]
        sub = ch.subset(idx)
        ps.append(model.predict_proba(sub, batch_size=4096))
        ys.append(sub.y)
        if part == 2:
            subs.append(sub)
    return np.concatenate(ps), np.concatenate(ys), subs


def _test_report_data(subs, T):
    """The test customers for the report: labels, averages, scenarios (synthetic data) and a
    ChurnData of the first GATE_CUSTOMERS with all T months (for the gate figure)."""
    Xs, ys, kept = [], [], 0
    for s in subs:
        f = np.flatnonzero(s.lengths == T)[:GATE_CUSTOMERS - kept]
        if len(f):
            Xs.append(s.X[f])
            ys.append(s.y[f])
            kept += len(f)
    Xf = np.concatenate(Xs) if Xs else np.zeros((0, T, len(D.FEATURES)))
    yf = np.concatenate(ys) if ys else np.zeros(0)
    gates_data = D.ChurnData(Xf, np.full(len(Xf), T, dtype=np.int64), yf, np.zeros(len(Xf), object))
    scen = None
    if subs and all(s.scenarios is not None for s in subs):
        scen = {name: np.concatenate([s.scenarios[name] for s in subs]) for name in subs[0].scenarios}
    return (np.concatenate([s.y for s in subs]), np.concatenate([s.averages() for s in subs]), scen,
            gates_data)


def train_model(model, source, *, epochs=30, batch_size=128, lr=1e-2, patience=5, seed=0, progress=None,
                n_batches=None):
    """Train ``model`` (normalizer already fitted, see :func:`scan`) on the train customers
    of ``source``; early stopping on the validation loss. Returns the history."""
    progress = progress or Progress(quiet=True)
    rng = np.random.default_rng(seed)
    opt = Adam(lr=lr)
    best, best_loss, bad = None, np.inf, 0
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with progress.bar(epoch, epochs, n_batches) as bar:
            train_loss = train_epoch(model, opt, source, seed, rng, batch_size, bar)
        p_val, y_val, _ = predict_split(model, source, seed, 1)
        val_loss = bce_from_probs(p_val, y_val)
        val_auc = metrics.roc_auc(y_val, p_val)
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
    """Train + evaluate + save (see the module docstring). ``data``: a ChurnData (in memory)
    or a source (:class:`FileSource`: a file streamed from disk). Returns a results dict."""
    out = stream or sys.stdout
    say = (lambda *a: None) if quiet else (lambda s: print(s, file=out, flush=True))
    t_start = time.perf_counter()
    if isinstance(data, D.ChurnData):
        if data.y is None:
            raise ValueError("training needs labels (the 'churned' column)")
        source = MemorySource(data)
    else:
        source = data
    model = ChurnModel(hidden_size, backend=backend, seed=seed)
    sc = scan(source, model, seed)
    say(f"data: {sc.n} customers ({data_source}), up to {sc.n_months} months x "
        f"{sc.n_features} features, {sc.n_short} with shorter histories, "
        f"{100 * sc.n_churned / sc.n:.1f}% churned")
    say(f"split: train {sc.n_train} / validation {sc.n_val} / test {sc.n_test}  (seed {seed})")
    say(f"model: LSTM(3 -> {hidden_size}) + logistic head, backend {model.backend!r}, "
        f"Adam lr {lr}, batch {batch_size}, up to {epochs} epochs (early stopping patience {patience})"
        + ("; mini-batches streamed from disk" if isinstance(source, FileSource) else ""))
    t0 = time.perf_counter()
    history = train_model(model, source, epochs=epochs, batch_size=batch_size, lr=lr,
                          patience=patience, seed=seed, progress=Progress(out, quiet),
                          n_batches=-(-sc.n_train // batch_size))
    train_seconds = time.perf_counter() - t0

    p_lstm, y_test, subs = predict_split(model, source, seed, 2)
    y_test, test_avg, test_scen, gates_data = _test_report_data(subs, sc.n_months)
    m_lstm = metrics.classification_metrics(y_test, p_lstm)
    base = metrics.baseline().fit(sc.train_avg, sc.train_y)
    p_base = metrics.baseline_proba(base, test_avg)
    m_base = metrics.classification_metrics(y_test, p_base)
    test = D.ChurnData(None, None, y_test, None, test_scen)  # for the scenario table

    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "churn_model.npz")
    model.save(model_path, {"trained_on": data_source, "n_months": sc.n_months, "seed": seed,
                            "test_auc": m_lstm["auc"], "baseline_test_auc": m_base["auc"]})
    summary = gate_summary(model, gates_data)
    scen = scenario_table(test, p_lstm, p_base)
    fig_path = None
    if figure:
        fig_path = save_figure(os.path.join(out_dir, "churn_figure.png"), history, summary,
                               metrics={"lstm": m_lstm, "baseline": m_base}, n_test=sc.n_test,
                               churn_rate=float(y_test.mean()), scenarios=scen,
                               subtitle=f"data: {data_source}; LSTM(3 -> {hidden_size}), backend "
                                        f"{model.backend!r}, {len(history)} epochs in "
                                        f"{train_seconds:.1f}s")
    total = time.perf_counter() - t_start
    results = {
        "n_customers": sc.n, "n_train": sc.n_train, "n_val": sc.n_val, "n_test": sc.n_test,
        "backend": model.backend, "hidden_size": hidden_size, "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
        "train_seconds": train_seconds, "total_seconds": total,
        "lstm": m_lstm, "baseline": m_base, "history": history, "gates": summary,
        "model_path": model_path, "figure_path": fig_path,
        "scenarios": scen,
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)

    print(f"\ntest set: {sc.n_test} customers ({100 * y_test.mean():.1f}% churned), threshold 0.5", file=out)
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
