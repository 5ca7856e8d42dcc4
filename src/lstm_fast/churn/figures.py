"""The "looking inside" figure: training curves and gate activations per month.

matplotlib is optional (extras "bench"/"test"); it is imported lazily and
``save_figure`` returns None with a message when it is missing.
"""

import numpy as np


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


def save_figure(path, history, summary, title="LSTM churn model", results_text=None):
    """Write the PNG; returns ``(path, None)``, or ``(None, reason)`` if it cannot."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None, ("matplotlib is not installed, so the figure was skipped "
                      "(pip install 'lstm-fast[bench]' or pip install matplotlib)")
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    ax = axes[0, 0]
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation loss")
    if history:
        best = min(history, key=lambda h: h["val_loss"])["epoch"]
        ax.axvline(best, color="gray", ls=":", label=f"best epoch ({best}, restored)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_auc"] for h in history], "^--", color="tab:green", alpha=0.7,
             label="validation AUC")
    ax2.set_ylabel("validation ROC AUC")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper center")
    ax.set_title("Training curves")

    txt = axes[1, 2]
    txt.set_axis_off()
    if results_text:
        txt.text(0.0, 1.0, results_text, va="top", ha="left", family="monospace", fontsize=9,
                 transform=txt.transAxes)

    if summary is None:
        for a in (axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]):
            a.text(0.5, 0.5, "no labeled full-length customers\nto summarize", ha="center",
                   va="center", transform=a.transAxes)
            a.set_axis_off()
    else:
        months = summary["months"]
        T = len(months)
        lab = [f"{m}" if m < T else f"{m}\n(now)" for m in months]
        for a, name, desc in ((axes[0, 1], "forget", "forget gate f: share of the memory kept"),
                              (axes[0, 2], "input", "input gate i: share of the new month stored")):
            a.plot(months, summary[f"{name}_churners"], "o-", color="tab:red",
                   label=f"churners (n={summary['n_churners']})")
            a.plot(months, summary[f"{name}_stayers"], "o-", color="tab:blue",
                   label=f"stayers (n={summary['n_stayers']})")
            a.set_xticks(months)
            a.set_xticklabels(lab)
            a.set_xlabel("month")
            a.set_ylabel(f"mean {name}-gate activation (all units)")
            a.set_title(desc, fontsize=10)
            a.legend(fontsize=8)
            a.grid(alpha=0.3)
        for a, name in ((axes[1, 0], "forget"), (axes[1, 1], "input")):
            d = np.asarray(summary[f"{name}_unit_diff"])
            lim = max(float(np.abs(d).max()), 1e-6)
            im = a.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                          extent=(0.5, T + 0.5, d.shape[0] - 0.5, -0.5))
            a.set_xticks(months)
            a.set_xticklabels(lab)
            a.set_xlabel("month")
            a.set_ylabel("hidden unit")
            verb = ("keep more", "forget more") if name == "forget" else ("store more", "store less")
            a.set_title(f"{name} gate per unit: churners minus stayers\n"
                        f"(red: churners {verb[0]}, blue: churners {verb[1]})", fontsize=10)
            fig.colorbar(im, ax=a, fraction=0.046)
    fig.suptitle(f"{title}: what does the LSTM keep and what does it discard?")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, None
