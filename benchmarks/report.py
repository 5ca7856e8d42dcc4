"""Markdown report and speedup plot from pytest-benchmark JSON files.

    python benchmarks/report.py results/latest.json [more.json ...] \
        --markdown results/report.md --plot results/speedup.png --readme benchmarks/README.md

Several JSON files (runs at different times) are combined by taking, per
benchmark, the median of their medians. One table per dtype and thread count:
median time and GFLOP/s per implementation (FLOPs = 2*T*B*4H*(I+H) forward,
3x for a training step), then the speedup of each of our backends over torch
and, for float32 inference, over ONNX Runtime. ``--readme`` replaces the text
between the report markers of that file with the report.
"""

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shapes import CASES, SHAPES  # noqa: E402

START, END = "<!-- report:start -->", "<!-- report:end -->"
SHORT = {"onnxruntime": "ORT", "torch": "torch"}
NOISY, NOISE = "†", 0.5


def short(name):
    if name.startswith("lstm_fast[") and name.endswith("]"):
        return name[len("lstm_fast["):-1]
    return SHORT.get(name, name)


def load(paths):
    """(medians by key, machine_info, commit_info, datetime) from the JSON files."""
    medians = defaultdict(list)
    meta = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = meta or data
        for b in data["benchmarks"]:
            e = b.get("extra_info") or {}
            if "competitor" not in e:
                continue
            key = (e["case"], e["shape"], e["dtype"], int(e["threads"]), e["competitor"])
            st = b["stats"]
            spread = st.get("iqr", 0.0) / st["median"] if st["median"] else 0.0
            medians[key].append((st["median"], e["flops"], (e["T"], e["B"], e["I"], e["H"]), spread))
    table = {k: (statistics.median(x[0] for x in v), v[0][1], v[0][2], max(x[3] for x in v))
             for k, v in medians.items()}
    return table, meta.get("machine_info", {}), meta.get("commit_info", {}), meta.get("datetime", "?")


def competitor_order(names):
    ours = sorted((n for n in names if n.startswith("lstm_fast[")),
                  key=lambda n: ("c", "numba", "numpy").index(short(n)) if short(n) in ("c", "numba", "numpy") else 9)
    return ours + [n for n in ("torch", "onnxruntime") if n in names]


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_gflops(g):
    return f"{g:.3g}" if g < 100 else f"{g:.0f}"


def machine_section(mi, commit, when, paths):
    li = mi.get("lstm_fast", {})
    cpu = li.get("cpu", {})
    simd = li.get("lstm_fast_simd", {})
    v = li.get("versions", {})
    lines = ["### Machine and software", ""]
    lines.append(f"- Run: {when}, commit {commit.get('id', '?')[:10]}"
                 f"{' (dirty work tree)' if commit.get('dirty') else ''}; "
                 f"from {', '.join(os.path.basename(p) for p in paths)}")
    lines.append(f"- CPU: {cpu.get('model') or mi.get('cpu', {}).get('brand_raw', '?')}, "
                 f"{cpu.get('usable_cpus', '?')} usable of {cpu.get('logical_cpus', '?')} logical CPUs; "
                 f"flags {cpu.get('flags', '?')}")
    level = simd.get("simd_level")
    lines.append(f"- SIMD: CPU supports {simd.get('cpu_simd_level', '?')}; C kernel uses "
                 f"{level if level else 'n/a (the C kernel does not report one yet)'}")
    if isinstance(simd.get("build_info"), dict):
        lines.append("- C kernel build: " + ", ".join(f"{k}={v}" for k, v in simd["build_info"].items()))
    lines.append("- Backends: " + ", ".join(f"{k}: {s}" for k, s in li.get("backends", {}).items()))
    lines.append(f"- Threads: {li.get('threads', '?')} (the same count for our kernels, "
                 "torch.set_num_threads, NumPy's OpenBLAS and ORT's intra_op_num_threads)")
    env = li.get("env", {})
    lines.append("- Environment: " + (", ".join(f"{k}={x}" for k, x in env.items()) or "none of the BLAS/OpenMP variables set"))
    lines.append("- Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x))
    extra = []
    if li.get("numpy_blas"):
        extra.append(f"NumPy BLAS {li['numpy_blas']}")
    if li.get("torch_cpu_capability"):
        extra.append(f"torch CPU capability {li['torch_cpu_capability']}, mkldnn {li.get('torch_mkldnn')}")
    if extra:
        lines.append("- " + "; ".join(extra))
    lines.append(f"- Load average at start / end: {li.get('loadavg_at_start', '?')} / {li.get('loadavg', '?')} "
                 "(a shared machine: figures drift ±15–40 % between runs)")
    try:
        load = max(float(str(li.get(k)).split()[0]) for k in ("loadavg_at_start", "loadavg"))
        ncpu = int(cpu.get("usable_cpus") or cpu.get("logical_cpus"))
    except (TypeError, ValueError):
        load = ncpu = None
    if load is not None and load > ncpu - 0.5:
        lines += ["", f"**Warning: the machine was busy with other work during this run (load {load:.1f} on "
                      f"{ncpu} CPUs).** Multi-threaded figures then measure how each library's threads "
                      "wait for a CPU (spin barriers stall for whole scheduler time slices), not the "
                      "code; single-thread figures are slowed too. Re-run on a quiet machine before "
                      "drawing conclusions."]
    return lines


def speedups(table, ours, other, key_rest):
    t_o = table.get(key_rest + (ours,))
    t_x = table.get(key_rest + (other,))
    if t_o and t_x:
        return t_x[0] / t_o[0]
    return None


def tables(table):
    """Markdown lines: one table per (dtype, threads), then a geometric-mean summary."""
    lines = []
    groups = sorted({(k[2], k[3]) for k in table})
    for dtype, threads in groups:
        keys = [k for k in table if k[2] == dtype and k[3] == threads]
        names = competitor_order({k[4] for k in keys})
        ours = [n for n in names if n.startswith("lstm_fast[")]
        has_ort = "onnxruntime" in names
        head = ["case", "shape", "T,B,I,H"] + [short(n) for n in names]
        for n in ours:
            head.append(f"{short(n)} ×torch")
            if has_ort:
                head.append(f"{short(n)} ×ORT")
        lines += [f"### {dtype}, {threads} thread{'s' if threads > 1 else ''}", "",
                  f"Median time per call (GFLOP/s); {NOISY} = interquartile range over {NOISE:.0%} of the "
                  "median (noisy); ×torch, ×ORT = speedup of our backend (> 1: ours is faster).", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for case in CASES:
            for shape in SHAPES:
                rest = (case, shape, dtype, threads)
                if not any(rest + (n,) in table for n in names):
                    continue
                dims = next(table[rest + (n,)][2] for n in names if rest + (n,) in table)
                row = [case, shape, ",".join(map(str, dims))]
                for n in names:
                    v = table.get(rest + (n,))
                    row.append(f"{fmt_time(v[0])} ({fmt_gflops(v[1] / v[0] / 1e9)}){NOISY if v[3] > NOISE else ''}"
                               if v else "—")
                for n in ours:
                    for other in (("torch", "onnxruntime") if has_ort else ("torch",)):
                        s = speedups(table, n, other, rest)
                        row.append(f"**{s:.2f}**" if s and s >= 1 else (f"{s:.2f}" if s else "—"))
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    # summary: geometric mean speedup over torch per backend, case, dtype, threads
    summary = defaultdict(list)
    for k, v in table.items():
        case, shape, dtype, threads, comp = k
        if comp == "torch":
            continue
        t = table.get((case, shape, dtype, threads, "torch"))
        if t:
            summary[(comp, case, dtype, threads)].append(t[0] / v[0])
    if summary:
        cols = sorted({(d, t) for _, _, d, t in summary})
        lines += ["### Summary: geometric mean of the speedup over torch.nn.LSTM across shapes", "",
                  "| implementation | case | " + " | ".join(f"{d} {t}T" for d, t in cols) + " |",
                  "|" + "---|" * (2 + len(cols))]
        comps = competitor_order({c for c, _, _, _ in summary})
        for comp in comps:
            for case in CASES:
                if not any((comp, case, d, t) in summary for d, t in cols):
                    continue
                cells = []
                for d, t in cols:
                    xs = summary.get((comp, case, d, t))
                    cells.append(f"{math.exp(statistics.fmean(math.log(x) for x in xs)):.2f} "
                                 f"({min(xs):.2f}–{max(xs):.2f})" if xs else "—")
                lines.append(f"| {short(comp)} | {case} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: geometric mean (min–max) over the shapes of that case.", ""]
    return lines


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(k[2], k[3]) for k in table})
    fig, axes = plt.subplots(len(groups), 1, figsize=(14, 3.6 * len(groups)), squeeze=False)
    for ax, (dtype, threads) in zip(axes[:, 0], groups):
        names = [n for n in competitor_order({k[4] for k in table if k[2] == dtype and k[3] == threads})
                 if n != "torch"]
        rows = [(case, shape) for case in CASES for shape in SHAPES
                if (case, shape, dtype, threads, "torch") in table]
        width = 0.8 / max(1, len(names))
        for j, n in enumerate(names):
            xs, ys = [], []
            for i, (case, shape) in enumerate(rows):
                s = speedups(table, n, "torch", (case, shape, dtype, threads))
                if s:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ys.append(s)
            ax.bar(xs, ys, width, label=short(n) if n != "onnxruntime" else "ONNX Runtime")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{c}\n{s}" for c, s in rows], fontsize=7)
        ax.set_ylabel("speedup over torch")
        ax.set_title(f"{dtype}, {threads} thread{'s' if threads > 1 else ''}", fontsize=10)
        ax.legend(fontsize=8, ncol=len(names))
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    ap.add_argument("--markdown", help="write the report here (default: stdout)")
    ap.add_argument("--plot", help="write the speedup plot (PNG) here")
    ap.add_argument("--readme", help="replace the report between the markers of this file")
    ap.add_argument("--csv", help="write one line per benchmark (median seconds, GFLOP/s) here")
    args = ap.parse_args(argv)
    table, mi, commit, when = load(args.json)
    if not table:
        print("no lstm_fast benchmarks in the input", file=sys.stderr)
        return 1
    lines = machine_section(mi, commit, when, args.json) + [""] + tables(table)
    if args.plot:
        plot(table, args.plot)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("case,shape,T,B,I,H,dtype,threads,competitor,median_s,gflops\n")
            for (case, shape, dtype, threads, comp), (med, fl, dims, _) in sorted(table.items()):
                f.write(f"{case},{shape},{','.join(map(str, dims))},{dtype},{threads},{comp},"
                        f"{med:.6e},{fl / med / 1e9:.4g}\n")

    def render(dest):
        out = list(lines)
        if args.plot:
            rel = os.path.relpath(os.path.abspath(args.plot), os.path.dirname(os.path.abspath(dest)))
            out += [f"![speedup over torch.nn.LSTM per shape]({rel})", ""]
        return "\n".join(out)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render(args.markdown))
    if args.readme:
        text = render(args.readme)
        with open(args.readme) as f:
            readme = f.read()
        if START not in readme or END not in readme:
            raise SystemExit(f"{args.readme} has no {START} ... {END} markers")
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        with open(args.readme, "w") as f:
            f.write(head + START + "\n" + text + "\n" + END + tail)
    if not args.markdown and not args.readme:
        print(render("x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
