"""The result figure: how well the model does, and what the LSTM keeps and discards.

One PNG, two rows of three panels, each with a title, axis units and a legend:

* top: held-out test metrics of the LSTM beside the order-blind baseline; the
  mean forget gate and the mean input gate per month, churners vs stayers.
* bottom: training curves (loss per epoch, the restored epoch marked); the mean
  predicted churn probability per synthetic pattern next to the true churn
  rate (or, on the user's data, the input gate per hidden unit); the forget
  gate per hidden unit, churners minus stayers.

matplotlib comes with the ``churn`` extra (``pip install "lstm-fast[churn]"``).
"""

import numpy as np

CHURN_COLOR, STAY_COLOR = "tab:red", "tab:blue"
LSTM_COLOR, BASE_COLOR, TRUE_COLOR = "tab:purple", "tab:gray", "black"
METRIC_NAMES = (("auc", "ROC AUC"), ("accuracy", "accuracy"), ("precision", "precision"),
                ("recall", "recall"))
SHORT_PATTERNS = {"inactive this month": "inactive this month",
                  "inactive 2+ months ago, active again": "inactive earlier, back now",
                  "satisfaction drop this month": "satisfaction drop this month",
                  "satisfaction drop earlier, recovered": "satisfaction drop earlier",
                  "days since login rising": "days since login rising",
                  "days since login falling": "days since login falling"}


def gate_summary(model, data, max_customers=4000):
    """Mean forget- and input-gate activation per month, churners vs stayers.

    Uses the customers of ``data`` (labeled) with a full history (aligned
    months), at most ``max_customers``; the gates come from the library's own
    forward cache (``lstm_forward(...).cache.gates``, activated i, f, g, o).
    Returns a dict of lists (JSON-friendly) or None if there is nothing to show.
    """
    if data.y is None:
        return None
    T = data.n_months
    full = np.flatnonzero(data.lengths == T)[:max_customers]
    y = data.y[full].astype(bool)
    if len(full) == 0 or y.all() or not y.any():
        return None
    Xn = model.normalizer.transform(data.X[full], data.lengths[full])
    gates = model.gates(Xn).astype(np.float64)  # (T, B, 4H)
    H = model.hidden_size
    i_gate, f_gate = gates[:, :, :H], gates[:, :, H:2 * H]
    out = {"months": list(range(1, T + 1)), "n_churners": int(y.sum()), "n_stayers": int((~y).sum())}
    for name, g in (("forget", f_gate), ("input", i_gate)):
        out[f"{name}_churners"] = g[:, y].mean(axis=(1, 2)).tolist()
        out[f"{name}_stayers"] = g[:, ~y].mean(axis=(1, 2)).tolist()
        # per hidden unit, churners minus stayers: (H, T)
        out[f"{name}_unit_diff"] = (g[:, y].mean(axis=1) - g[:, ~y].mean(axis=1)).T.tolist()
    return out


def _month_labels(months):
    T = len(months)
    return [f"{m}\n(now)" if m == T else (f"{m}\n({T - m} ago)" if m == 1 else str(m)) for m in months]


def _metrics_panel(ax, metrics, n_test, churn_rate):
    x = np.arange(len(METRIC_NAMES))
    w = 0.38
    for k, (name, color, label) in enumerate((("lstm", LSTM_COLOR, "LSTM (order in time)"),
                                              ("baseline", BASE_COLOR, "baseline: averages (order-blind)"))):
        vals = [metrics[name][m] for m, _ in METRIC_NAMES]
        bars = ax.bar(x + (k - 0.5) * w, np.nan_to_num(vals), w, color=color, label=label)
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v != v else f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([lab for _, lab in METRIC_NAMES])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("score (0 to 1, higher is better)")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_title(f"Held-out test set: {n_test} customers, {100 * churn_rate:.0f}% churned\n"
                 "(threshold 0.5 for accuracy, precision, recall)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def _gate_panel(ax, summary, name, title, ylabel):
    months = summary["months"]
    ax.plot(months, summary[f"{name}_churners"], "o-", color=CHURN_COLOR,
            label=f"churners (n={summary['n_churners']})")
    ax.plot(months, summary[f"{name}_stayers"], "s-", color=STAY_COLOR,
            label=f"stayers (n={summary['n_stayers']})")
    ax.set_xticks(months)
    ax.set_xticklabels(_month_labels(months))
    ax.set_xlabel("month of the customer's history")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _training_panel(ax, history):
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", ms=4, label="training loss")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", ms=4, label="validation loss")
    if history:
        best = min(history, key=lambda h: h["val_loss"])
        ax.axvline(best["epoch"], color="gray", ls=":",
                   label=f"best epoch {best['epoch']} (restored),\nvalidation AUC {best['val_auc']:.3f}")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy (nats per customer)")
    ax.set_title("Training: loss per epoch (early stopping)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _patterns_panel(ax, scenarios):
    names = list(scenarios)
    y = np.arange(len(names))
    h = 0.26
    for k, (key, color, label) in enumerate((("churn_rate", TRUE_COLOR, "actual churn rate"),
                                             ("lstm", LSTM_COLOR, "LSTM"),
                                             ("baseline", BASE_COLOR, "baseline (averages)"))):
        ax.barh(y + (k - 1) * h, [scenarios[n][key] for n in names], h, color=color, label=label,
                alpha=0.85 if k else 0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{SHORT_PATTERNS.get(n, n)}\n(n={scenarios[n]['n']})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("churn probability (mean over the pattern's test customers)")
    ax.set_title("Order in time: predicted churn per history pattern\n"
                 "(the averages cannot tell these pairs apart)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")


def _unit_panel(fig, ax, summary, name):
    d = np.asarray(summary[f"{name}_unit_diff"])
    order = np.argsort(d[:, -1])  # units sorted by their difference in the current month
    d = d[order]
    months = summary["months"]
    T = len(months)
    lim = max(float(np.abs(d).max()), 1e-6)
    im = ax.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                   extent=(0.5, T + 0.5, d.shape[0] - 0.5, -0.5))
    ax.set_xticks(months)
    ax.set_xticklabels(_month_labels(months))
    ax.set_xlabel("month of the customer's history")
    ax.set_ylabel("hidden unit (sorted by the current month)")
    verb = ("keep more", "keep less") if name == "forget" else ("store more", "store less")
    ax.set_title(f"{name.capitalize()} gate per hidden unit: churners minus stayers\n"
                 f"(red: churners {verb[0]}, blue: churners {verb[1]})", fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.046)
    cb.set_label("difference of mean activation")


def save_figure(path, history, summary, *, metrics, n_test, churn_rate, scenarios=None,
                subtitle=""):
    """Write the PNG described in the module docstring; returns ``path``.

    ``metrics``: {"lstm": {...}, "baseline": {...}} with accuracy, auc,
    precision, recall; ``summary`` from :func:`gate_summary` (or None);
    ``scenarios`` the per-pattern table of synthetic data (or None).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    _metrics_panel(axes[0, 0], metrics, n_test, churn_rate)
    _training_panel(axes[1, 0], history)
    if summary is None:
        for a in (axes[0, 1], axes[0, 2], axes[1, 2]):
            a.text(0.5, 0.5, "no labeled full-length customers\nof both classes to summarize",
                   ha="center", va="center", transform=a.transAxes)
            a.set_axis_off()
    else:
        _gate_panel(axes[0, 1], summary, "forget",
                    "Forget gate f, mean per month:\n"
                    "how much of its memory the LSTM keeps",
                    "mean forget-gate activation\n(0 = discard memory, 1 = keep it)")
        _gate_panel(axes[0, 2], summary, "input",
                    "Input gate i, mean per month:\n"
                    "how much of the new month the LSTM stores",
                    "mean input-gate activation\n(0 = ignore the month, 1 = store it)")
        _unit_panel(fig, axes[1, 2], summary, "forget")
    if scenarios:
        _patterns_panel(axes[1, 1], scenarios)
    elif summary is not None:
        _unit_panel(fig, axes[1, 1], summary, "input")
    else:
        axes[1, 1].set_axis_off()
    auc_l, auc_b = metrics["lstm"]["auc"], metrics["baseline"]["auc"]
    head = "LSTM churn model"
    if auc_l == auc_l and auc_b == auc_b:
        head += f": test ROC AUC {auc_l:.3f} with the order of months, {auc_b:.3f} from averages alone"
    fig.suptitle(head + (f"\n{subtitle}" if subtitle else ""), fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
