"""Markdown report, CSV and speedup plot from pytest-benchmark JSON files.

    python -m benchmarks.report results/latest.json [more.json ...] \\
        --markdown results/report.md --plot results/speedup.png --readme benchmarks/README.md

Several JSON files (runs at different times, or chunks of one run) are combined by
taking, per benchmark, the median of their medians. Sections:

* the machine (CPU model, vendor, caches, SIMD, BLAS libraries, environment, versions,
  the CPU time other processes took during the run);
* the GEMM ceiling (bench_ceiling.py): the best library per dtype and thread count;
* the issue-14 targets, each marked met or missed, with the cells that miss;
* the models group: ours vs torch vs ONNX Runtime, ratios, % of the ceiling;
* the grid: one table per dtype and thread count (median time, GFLOP/s and % of the
  ceiling per implementation, speedups of ours over torch and ONNX Runtime), then a
  geometric-mean summary;
* with ``--baseline before.json ...``: ours now vs the baseline, per grid cell.

FLOPs: forward 2*T*B*4H*(I+H) per layer and direction, a training step 3x that.
``--readme`` replaces the text between ``<!-- report:start -->`` and
``<!-- report:end -->`` of that file (``--marker NAME`` for other markers).
"""

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict

if __package__ in (None, ""):       # run as a script: python benchmarks/report.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"      # noqa: A001

from .harness import fmt_time  # noqa: E402
from .shapes import CASES, MODEL_CASES, MODELS, MODEL_SMOKE_CONFIGS, SHAPES  # noqa: E402

START, END = "<!-- report:start -->", "<!-- report:end -->"
NOISY, NOISE = "†", 0.5
BUSY, BUSY_SHARE = "‡", 0.10
# Issue 14's targets.
TRAIN_RATIO, INFER_RATIO, ORT_RATIO = 1.3, 1.15, 1.0
TRAIN_CEIL, INFER_CEIL, F64_CEIL = 0.92, 0.95, 0.90
SCALING_2T, MODULE_COST, STEP_RATIO = 1.7, 1.05, 3.0
REGRESSION = 0.10


def short(name):
    """Column label: "c" for lstm_fast[c], "c module" for lstm_fast.torch[c]."""
    if name.startswith("lstm_fast.torch[") and name.endswith("]"):
        return f"{name[len('lstm_fast.torch['):-1]} module"
    if name.startswith("lstm_fast[") and name.endswith("]"):
        return name[len("lstm_fast["):-1]
    if name.startswith("gemm:"):
        return name[len("gemm:"):]
    return {"onnxruntime": "ORT", "torch": "torch"}.get(name, name)


def is_ours(name):
    return name.startswith("lstm_fast")


def kind(case):
    return "ceiling" if case in ("gemm", "stepgemm") else ("models" if case in MODEL_CASES else "grid")


class Cell(tuple):
    """(median s, flops, dims, spread, foreign CPU share) of one benchmark."""
    __slots__ = ()
    median = property(lambda s: s[0])
    flops = property(lambda s: s[1])
    dims = property(lambda s: s[2])
    spread = property(lambda s: s[3])
    foreign = property(lambda s: s[4])


def load(paths):
    """({(case, shape, dtype, threads, competitor): Cell}, [metadata of each file])."""
    medians = defaultdict(list)
    metas = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        metas.append(dict(path=path, machine_info=data.get("machine_info", {}),
                          commit_info=data.get("commit_info", {}), datetime=data.get("datetime", "?")))
        for b in data["benchmarks"]:
            e = b.get("extra_info") or {}
            if "competitor" not in e:
                continue
            key = (e["case"], e["shape"], e["dtype"], int(e["threads"]), e["competitor"])
            st = b["stats"]
            spread = st.get("iqr", 0.0) / st["median"] if st["median"] else 0.0
            if e["case"] == "gemm":
                dims = (e["N"],)
            elif e["case"] == "stepgemm":
                dims = (e["M"], e["K"], e["N"])
            else:
                dims = (e["T"], e["B"], e["I"], e["H"])
            medians[key].append((st["median"], e["flops"], dims, spread, e.get("foreign_cpu", 0.0) or 0.0))
    table = {k: Cell((statistics.median(x[0] for x in v), v[0][1], v[0][2], max(x[3] for x in v),
                      max(x[4] for x in v)))
             for k, v in medians.items()}
    return table, metas


def ceilings(table):
    """{(dtype, threads): (GFLOP/s, competitor, {competitor: GFLOP/s})} from the gemm cells."""
    per = defaultdict(dict)
    for (case, _, dtype, threads, comp), c in table.items():
        if case == "gemm":
            per[(dtype, threads)][comp] = c.flops / c.median / 1e9
    return {k: (max(v.values()), max(v, key=v.get), v) for k, v in per.items()}


def share(cell, ceil, dtype, threads):
    """Fraction of the GEMM ceiling a cell reaches, or None."""
    c = ceil.get((dtype, threads))
    return cell.flops / cell.median / 1e9 / c[0] if c and cell else None


def competitor_order(names):
    def key(n):
        order = ("c", "numba", "numpy")
        b = n[n.index("[") + 1:-1] if "[" in n else ""
        return (n.startswith("lstm_fast.torch"), order.index(b) if b in order else 9, n)
    ours = sorted((n for n in names if is_ours(n)), key=key)
    return ours + [n for n in ("torch", "onnxruntime") if n in names]


def fmt_gflops(g):
    return f"{g:.3g}" if g < 100 else f"{g:.0f}"


def fmt_cell(cell, ceil, dtype, threads):
    if not cell:
        return "—"
    s = share(cell, ceil, dtype, threads)
    pct = f", {100 * s:.0f} %" if s is not None else ""
    marks = (NOISY if cell.spread > NOISE else "") + (BUSY if cell.foreign > BUSY_SHARE else "")
    return f"{fmt_time(cell.median)} ({fmt_gflops(cell.flops / cell.median / 1e9)}{pct}){marks}"


def fmt_ratio(s, goal=1.0):
    if s is None:
        return "—"
    return f"**{s:.2f}**" if s >= goal else f"{s:.2f}"


def ratio(table, key_rest, ours, other):
    a, b = table.get(key_rest + (ours,)), table.get(key_rest + (other,))
    return b.median / a.median if a and b else None


# --- sections ----------------------------------------------------------------------

def _cpu_line(cpu, mi):
    model = cpu.get("model") or mi.get("cpu", {}).get("brand_raw", "?")
    bits = [f"{model}"]
    if cpu.get("vendor"):
        bits.append(f"vendor {cpu['vendor']}, family {cpu.get('family', '?')} model "
                    f"{cpu.get('model_number', '?')} stepping {cpu.get('stepping', '?')}"
                    + (" (virtual machine)" if cpu.get("hypervisor") else ""))
    bits.append(f"{cpu.get('usable_cpus', '?')} usable of {cpu.get('logical_cpus', '?')} logical CPUs")
    lines = ["- CPU: " + "; ".join(bits)]
    if cpu.get("caches"):
        lines.append("- Caches (CPU 0; the CPUs sharing each): "
                     + ", ".join(f"{k} {v}" for k, v in cpu["caches"].items()))
    lines.append(f"- CPU flags: {cpu.get('flags', '?')}")
    return lines


def commit_id(c):
    """A commit's short id (a non-git id such as "unversioned" in full), "(dirty work tree)" if so."""
    i = str(c.get("id", "?"))
    return (i[:10] if all(ch in "0123456789abcdef" for ch in i) else i) + \
        (" (dirty work tree)" if c.get("dirty") else "")


def machine_section(metas):
    first = metas[0]
    mi = first["machine_info"]
    li = mi.get("lstm_fast", {})
    cpu = li.get("cpu", {})
    simd = li.get("lstm_fast_simd", {})
    v = li.get("versions", {})
    commit = first["commit_info"]
    commits = sorted({commit_id(m["commit_info"]) for m in metas})
    lines = ["### Machine and software", ""]
    lines.append(f"- Run: {first['datetime']}, commit {', '.join(commits) if commit else '?'}; "
                 f"from {', '.join(os.path.basename(m['path']) for m in metas)}")
    models = sorted({m["machine_info"].get("lstm_fast", {}).get("cpu", {}).get("model", "?") for m in metas})
    if len(models) > 1:
        lines.append(f"- **Warning: these files come from different CPUs: {', '.join(models)}**")
    lines += _cpu_line(cpu, mi)
    level = simd.get("simd_level")
    lines.append(f"- SIMD: CPU supports {simd.get('cpu_simd_level', '?')}; C kernel uses "
                 f"{level if level else 'n/a (the C kernel does not report one)'}")
    if isinstance(simd.get("build_info"), dict):
        lines.append("- C kernel build: " + ", ".join(f"{k}={x}" for k, x in simd["build_info"].items()))
    lines.append("- Backends: " + ", ".join(f"{k}: {s}" for k, s in li.get("backends", {}).items()))
    lines.append(f"- Threads: {li.get('threads', '?')} (the same count for our kernels, "
                 "torch.set_num_threads, every BLAS in the process (threadpoolctl) and ORT's intra_op_num_threads)")
    env = li.get("env", {})
    lines.append("- Environment: " + (", ".join(f"{k}={x}" for k, x in env.items())
                                      or "none of the BLAS/OpenMP/lstm_fast variables set"))
    lines.append("- Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x))
    extra = []
    if li.get("numpy_blas"):
        extra.append(f"NumPy BLAS {li['numpy_blas']}")
    for lib in li.get("blas_libraries", []):
        if lib.get("user_api") == "blas":
            extra.append(f"{lib.get('internal_api')} {lib.get('version', '')} ({lib.get('prefix', '')}"
                         f"{', loaded by ' + lib['owner'] if lib.get('owner') else ''}): "
                         f"{lib.get('architecture', '?')} kernels, threading {lib.get('threading_layer', '?')}")
    if li.get("torch_cpu_capability"):
        extra.append(f"torch CPU capability {li['torch_cpu_capability']}, BLAS {li.get('torch_blas', '?')}, "
                     f"mkldnn {li.get('torch_mkldnn')}")
    if li.get("torch_libraries"):
        extra.append("torch built with " + "; ".join(li["torch_libraries"]))
    if extra:
        lines.append("- " + "; ".join(extra))
    if "OPENBLAS_CORETYPE" in env:
        lines.append(f"- Note: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} pins OpenBLAS's kernels "
                     "(e.g. Haswell = AVX2): NumPy's GEMM may be below the machine's AVX-512 ceiling; "
                     "oneDNN is not affected.")
    loads = [(m["machine_info"].get("lstm_fast", {}).get("loadavg_at_start", "?"),
              m["machine_info"].get("lstm_fast", {}).get("loadavg", "?")) for m in metas]
    lines.append("- Load average at start / end: " + "; ".join(f"{a} / {b}" for a, b in loads)
                 + " (a shared machine: figures drift ±15–40 % between runs)")
    shares = [m["machine_info"].get("lstm_fast", {}).get("foreign_cpu") for m in metas]
    shares = [s for s in shares if s]
    if shares:
        lines.append("- CPU time other processes used during the run (share of one CPU, per file): "
                     + ", ".join(f"{100 * s['share']:.1f} %" for s in shares if s.get("share") is not None)
                     + f"; cells marked {BUSY} had over {BUSY_SHARE:.0%} while they were timed.")
    worst = max((s["share"] for s in shares if s.get("share") is not None), default=None)
    if worst is not None:       # measured: CPU time other processes took during the run
        if worst > BUSY_SHARE:
            lines += ["", f"**Warning: other processes took up to {worst:.0%} of a CPU during this run.** "
                          "Multi-threaded figures then measure how each library's threads wait for a CPU "
                          "(spin barriers stall for whole scheduler time slices), not the code; "
                          f"single-thread figures are slowed too. See the cells marked {BUSY}."]
        return lines
    try:        # older JSON: only the load average (its 1-minute average also counts earlier work)
        load_max = max(float(str(x).split()[0]) for pair in loads for x in pair)
        ncpu = int(cpu.get("usable_cpus") or cpu.get("logical_cpus"))
    except (TypeError, ValueError):
        load_max = ncpu = None
    if load_max is not None and load_max > ncpu - 0.5:
        lines += ["", f"Note: the 1-minute load average reached {load_max:.1f} on {ncpu} CPUs around this "
                      "run (it also counts work before the run started; these files do not record "
                      "what other processes took during it). Multi-threaded figures suffer most when "
                      "other processes run."]
    return lines


def ceiling_section(table, metas):
    ceil = ceilings(table)
    if not ceil:
        return [], ceil
    from .ceiling import library_labels
    labels = library_labels(metas[0]["machine_info"].get("lstm_fast", {}))
    comps = sorted({c for v in ceil.values() for c in v[2]})
    n = next(c.dims[0] for k, c in table.items() if k[0] == "gemm")
    lines = ["### GEMM ceiling", "",
             f"GFLOP/s of an {n}×{n}×{n} product (median), 1 and 2 threads; the ceiling of a cell is the "
             "best library (bold). Every other table gives each figure's % of the ceiling for its dtype and "
             "thread count.", "",
             "| dtype | threads | " + " | ".join(labels.get(c, c) for c in comps) + " | ceiling |",
             "|" + "---|" * (3 + len(comps))]
    for (dtype, threads), (best, who, per) in sorted(ceil.items()):
        cells = [(f"**{per[c]:.1f}**" if c == who else f"{per[c]:.1f}") if c in per else "—" for c in comps]
        lines.append(f"| {dtype} | {threads} | " + " | ".join(cells) + f" | {best:.1f} ({short(who)}) |")
    return lines + [""] + step_section(table, ceil, labels), ceil


def step_section(table, ceil, labels):
    """The recurrent step's product of each model through the same libraries (bench_ceiling's
    test_step_gemm): the measured limit of a per-step library GEMM at the model's batch."""
    steps = {k: v for k, v in table.items() if k[0] == "stepgemm"}
    if not steps:
        return []
    comps = sorted({k[4] for k in steps})
    lines = ["#### The recurrent step's product", "",
             "GFLOP/s of one step's product of each model, h_{t-1} (B×H) by w_hh^T (H×4H), called "
             "repeatedly on the same operands, and the best library's % of the 2048³ ceiling: what a "
             "per-step library GEMM reaches at the models' batch sizes.", "",
             "| model | dtype | threads | M,K,N | " + " | ".join(labels.get(c, c) for c in comps) +
             " | best, % of ceiling |", "|" + "---|" * (5 + len(comps))]
    for model, dtype, threads in sorted({(k[1], k[2], k[3]) for k in steps}):
        per = {c: steps[k] for c in comps if (k := ("stepgemm", model, dtype, threads, c)) in steps}
        g = {c: cell.flops / cell.median / 1e9 for c, cell in per.items()}
        best = max(g, key=g.get)
        sh = share(per[best], ceil, dtype, threads)
        dims = ",".join(map(str, per[best].dims))
        cells = [(f"**{g[c]:.1f}**" if c == best else f"{g[c]:.1f}") if c in g else "—" for c in comps]
        lines.append(f"| {model} | {dtype} | {threads} | {dims} | " + " | ".join(cells) +
                     f" | {g[best]:.1f} ({short(best)}), {'—' if sh is None else f'{sh:.0%}'} |")
    return lines + [""]


def _dims(cell, shape, model=False):
    if model:
        m = MODELS.get(shape) or MODEL_SMOKE_CONFIGS[shape]
        return f"{m.T},{m.B},{m.I},{m.H} ×{m.layers}{' bi' if m.bidirectional else ''}" + \
            (f", dropout {m.dropout}" if m.dropout else "")
    return ",".join(map(str, cell.dims))


def grid_tables(table, ceil):
    """One table per (dtype, threads), then a geometric-mean summary."""
    lines = []
    grid = {k: v for k, v in table.items() if kind(k[0]) == "grid"}
    for dtype, threads in sorted({(k[2], k[3]) for k in grid}):
        keys = [k for k in grid if k[2] == dtype and k[3] == threads]
        names = competitor_order({k[4] for k in keys})
        ours = [n for n in names if is_ours(n)]
        has_ort = "onnxruntime" in names
        head = ["case", "shape", "T,B,I,H"] + [short(n) for n in names]
        for n in ours:
            head.append(f"{short(n)} ×torch")
            if has_ort and not n.startswith("lstm_fast[numpy"):
                head.append(f"{short(n)} ×ORT")
        lines += [f"#### Grid, {dtype}, {threads} thread{'s' if threads > 1 else ''}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for case in CASES:
            for shape in SHAPES:
                rest = (case, shape, dtype, threads)
                present = [n for n in names if rest + (n,) in grid]
                if not present:
                    continue
                row = [case, shape, _dims(grid[rest + (present[0],)], shape)]
                row += [fmt_cell(grid.get(rest + (n,)), ceil, dtype, threads) for n in names]
                for n in ours:
                    row.append(fmt_ratio(ratio(grid, rest, n, "torch")))
                    if has_ort and not n.startswith("lstm_fast[numpy"):
                        row.append(fmt_ratio(ratio(grid, rest, n, "onnxruntime")))
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    summary = defaultdict(list)
    for (case, shape, dtype, threads, comp), v in grid.items():
        t = grid.get((case, shape, dtype, threads, "torch"))
        if comp != "torch" and t:
            summary[(comp, case, dtype, threads)].append(t.median / v.median)
    if summary:
        cols = sorted({(d, t) for _, _, d, t in summary})
        lines += ["#### Grid summary: geometric mean of the speedup over torch.nn.LSTM across shapes", "",
                  "| implementation | case | " + " | ".join(f"{d} {t}T" for d, t in cols) + " |",
                  "|" + "---|" * (2 + len(cols))]
        for comp in competitor_order({c for c, _, _, _ in summary}):
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


MODEL_CASE_TEXT = {
    "model_train": "train step, in a torch model",
    "model_eval": "eval, in a torch model",
    "layer_forward": "LSTM alone, forward",
    "layer_train": "LSTM alone, forward+backward",
}


def models_tables(table, ceil):
    mt = {k: v for k, v in table.items() if kind(k[0]) == "models"}
    if not mt:
        return []
    lines = []
    model_names = [m for m in list(MODELS) + list(MODEL_SMOKE_CONFIGS) if any(k[1] == m for k in mt)]
    for dtype, threads in sorted({(k[2], k[3]) for k in mt}):
        names = competitor_order({k[4] for k in mt if k[2] == dtype and k[3] == threads})
        layer = [n for n in names if n.startswith("lstm_fast[")]
        module = [n for n in names if n.startswith("lstm_fast.torch[")]
        ours = layer + module
        has_ort = "onnxruntime" in names
        head = ["model", "T,B,I,H ×layers", "case"]
        head += [("NumPy layer " + short(n)) if n in layer else
                 ("torch module " + short(n).replace(" module", "")) if n in module else short(n) for n in names]
        for n in ours:
            head.append(f"{short(n) if n in module else short(n) + ' layer'} ×torch")
        if has_ort:
            head += [f"{short(n) if n in module else short(n) + ' layer'} ×ORT" for n in ours]
        if layer and module:
            head.append("module / layer time")
        lines += [f"#### Models, {dtype}, {threads} thread{'s' if threads > 1 else ''}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in model_names:
            for case in MODEL_CASES:
                rest = (case, model, dtype, threads)
                present = [n for n in names if rest + (n,) in mt]
                if not present:
                    continue
                row = [model, _dims(mt[rest + (present[0],)], model, model=True), MODEL_CASE_TEXT[case]]
                row += [fmt_cell(mt.get(rest + (n,)), ceil, dtype, threads) for n in names]
                row += [fmt_ratio(ratio(mt, rest, n, "torch")) for n in ours]
                if has_ort:
                    row += [fmt_ratio(ratio(mt, rest, n, "onnxruntime")) for n in ours]
                if layer and module:
                    a, b = mt.get(rest + (layer[0],)), mt.get(rest + (module[0],))
                    row.append(f"{b.median / a.median:.2f}" if a and b else "—")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _target(label, checks):
    """checks: list of (cell label, ok, detail). Returns a table row and the misses."""
    if not checks:
        return f"| {label} | not measured | — |", []
    missed = [c for c in checks if not c[1]]
    status = "**met**" if not missed else "missed"
    detail = ", ".join(f"{c[0]}: {c[2]}" for c in missed[:6]) + (f", … ({len(missed) - 6} more)" if len(missed) > 6 else "")
    return f"| {label} | {status} ({len(checks) - len(missed)}/{len(checks)}) | {detail or '—'} |", missed


def targets_section(table, ceil, auto="c"):
    """Issue 14's targets, each met or missed, from the cells of this report."""
    rows = []
    layer, module = f"lstm_fast[{auto}]", f"lstm_fast.torch[{auto}]"
    for threads in (1, 2):
        train, infer = [], []
        for (case, shape, dtype, th, comp), cell in table.items():
            if dtype != "float32" or th != threads:
                continue
            rest = (case, shape, dtype, th)
            if (kind(case) == "grid" and comp == layer and case in ("forward", "train")) or \
                    (case in ("model_train", "model_eval") and comp == module) or \
                    (case in ("layer_forward", "layer_train") and comp in (layer, module)):
                is_train = case.endswith("train")
                r = ratio(table, rest, comp, "torch")
                if r is None:
                    continue
                s = share(cell, ceil, dtype, th)
                goal, ceil_goal = (TRAIN_RATIO, TRAIN_CEIL) if is_train else (INFER_RATIO, INFER_CEIL)
                ok = r >= goal or (s is not None and s >= ceil_goal)
                detail = f"{r:.2f}×" + (f", {100 * s:.0f} %" if s is not None else "")
                if not is_train:
                    o = ratio(table, rest, comp, "onnxruntime")
                    if o is not None:
                        ok = ok and (o >= ORT_RATIO or (s is not None and s >= ceil_goal))
                        detail += f", {o:.2f}× ORT"
                label = f"{case} {shape}" + (" (module)" if comp == module and kind(case) == "models"
                                              and case.startswith("layer") else "")
                (train if is_train else infer).append((label, ok, detail))
        rows.append(_target(f"{threads}T float32 training ≥ {TRAIN_RATIO}× torch (or ≥ {TRAIN_CEIL:.0%} of the "
                            "ceiling): grid (NumPy layer), models (torch model; LSTM alone: layer and module)",
                            sorted(train))[0])
        rows.append(_target(f"{threads}T float32 inference ≥ {INFER_RATIO}× torch and ≥ {ORT_RATIO}× ORT (or ≥ "
                            f"{INFER_CEIL:.0%} of the ceiling): grid forward, models eval and LSTM alone",
                            sorted(infer))[0])
    scaling = []
    for shape in sorted(s for s in SHAPES if s.startswith("large")):
        a, b = table.get(("forward", shape, "float32", 1, layer)), table.get(("forward", shape, "float32", 2, layer))
        if a and b:
            scaling.append((shape, a.median / b.median >= SCALING_2T, f"{a.median / b.median:.2f}×"))
    rows.append(_target(f"large forward, 2 threads ≥ {SCALING_2T}× our 1 thread (float32)", scaling)[0])
    f64 = []
    for (case, shape, dtype, th, comp), cell in table.items():
        if dtype == "float64" and comp == layer and shape.startswith("large") and case in ("forward", "train"):
            s = share(cell, ceil, dtype, th)
            if s is not None:
                f64.append((f"{case} {shape} {th}T", s >= F64_CEIL, f"{100 * s:.0f} %"))
    rows.append(_target(f"float64 large shapes ≥ {F64_CEIL:.0%} of the dgemm ceiling", sorted(f64))[0])
    b1 = []
    for (case, shape, dtype, th, comp), cell in table.items():
        if comp == "lstm_fast[c]" and kind(case) == "grid" and SHAPES.get(shape, (0, 0))[1] == 1:
            n = table.get((case, shape, dtype, th, "lstm_fast[numba]"))
            if n:
                b1.append((f"{case} {shape} {dtype} {th}T", cell.median <= n.median,
                           f"c {fmt_time(cell.median)} vs numba {fmt_time(n.median)}"))
    rows.append(_target("B = 1: C ≥ Numba (forward, train, stream; both dtypes and thread counts)", sorted(b1))[0])
    cost = []
    for (case, shape, dtype, th, comp), cell in table.items():
        if comp == module and case in ("forward", "layer_forward"):
            a = table.get((case, shape, dtype, th, layer))
            if a:
                cost.append((f"{case} {shape} {dtype} {th}T", cell.median <= MODULE_COST * a.median,
                             f"{cell.median / a.median:.2f}×"))
    rows.append(_target(f"module cost: eval through the torch module ≤ {MODULE_COST}× the NumPy layer's time",
                        sorted(cost))[0])
    step = []
    for th in (1, 2):
        r = ratio(table, ("stream", "stream256", "float32", th), module, "torch")
        if r is not None:
            step.append((f"stream256 {th}T", r >= STEP_RATIO, f"{r:.2f}×"))
    rows.append(_target(f"one step at a time through the module (T = 1, B = 1, H = 256, hx carried) ≥ "
                        f"{STEP_RATIO}× torch.nn.LSTM", step)[0])
    return ["### Targets (issue 14)", "",
            "Each target over the cells of this report that it covers (met/total); the cells that miss, "
            "with the speedup over torch (and ORT) and the share of the GEMM ceiling. Ours = the "
            f"`{auto}` backend (NumPy layer and torch module).", "",
            "| target | status | cells that miss |", "|---|---|---|"] + rows + [""]


def baseline_section(table, base, base_metas):
    """Ours now vs a baseline run, per grid/model cell present in both."""
    lines = []
    keys = sorted((k for k in table if is_ours(k[4]) and k in base and kind(k[0]) != "ceiling"),
                  key=lambda k: (k[2], k[3], (CASES + MODEL_CASES).index(k[0]) if k[0] in CASES + MODEL_CASES else 9,
                                 list(SHAPES).index(k[1]) if k[1] in SHAPES else 99, k[1], k[4]))
    if not keys:
        return lines
    bmi = base_metas[0]
    commit = commit_id(bmi["commit_info"])
    cpu = bmi["machine_info"].get("lstm_fast", {}).get("cpu", {}).get("model", "?")
    lines += [f"### Compared with the baseline (commit {commit}, {cpu}, "
              f"{', '.join(os.path.basename(m['path']) for m in base_metas)})", "",
              f"Time now / time then (< 1: faster now); cells more than {REGRESSION:.0%} slower are bold. "
              "Torch's own ratio (its time now / then) shows how much the machine itself drifted.", "",
              "| case | shape | dtype | threads | implementation | then | now | now / then | torch now / then |",
              "|---|---|---|---|---|---|---|---|---|"]
    slower = 0
    for k in keys:
        a, b = base[k], table[k]
        r = b.median / a.median
        t0, t1 = base.get(k[:4] + ("torch",)), table.get(k[:4] + ("torch",))
        drift = f"{t1.median / t0.median:.2f}" if t0 and t1 else "—"
        slow = r > 1 + REGRESSION
        slower += slow
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {short(k[4])} | {fmt_time(a.median)} | "
                     f"{fmt_time(b.median)} | {'**' if slow else ''}{r:.2f}{'**' if slow else ''} | {drift} |")
    lines += ["", f"{slower} of {len(keys)} cells more than {REGRESSION:.0%} slower than the baseline.", ""]
    return lines


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {k: v for k, v in table.items() if kind(k[0]) != "ceiling"}
    groups = sorted({(k[2], k[3]) for k in cells})
    fig, axes = plt.subplots(len(groups), 1, figsize=(16, 3.8 * len(groups)), squeeze=False)
    for ax, (dtype, threads) in zip(axes[:, 0], groups):
        names = [n for n in competitor_order({k[4] for k in cells if k[2] == dtype and k[3] == threads})
                 if n != "torch"]
        rows = [(case, shape) for case in CASES + MODEL_CASES
                for shape in list(SHAPES) + list(MODELS) + list(MODEL_SMOKE_CONFIGS)
                if (case, shape, dtype, threads, "torch") in cells]
        width = 0.8 / max(1, len(names))
        for j, n in enumerate(names):
            xs, ys = [], []
            for i, (case, shape) in enumerate(rows):
                s = ratio(cells, (case, shape, dtype, threads), n, "torch")
                if s:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ys.append(s)
            ax.bar(xs, ys, width, label=short(n) if n != "onnxruntime" else "ONNX Runtime")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{c.replace('_', ' ')}\n{s}" for c, s in rows], fontsize=6)
        ax.set_ylabel("speedup over torch")
        ax.set_title(f"{dtype}, {threads} thread{'s' if threads > 1 else ''}", fontsize=10)
        ax.legend(fontsize=8, ncol=len(names))
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render_lines(table, metas, base=None, base_metas=None):
    lines = machine_section(metas) + [""]
    ceil_lines, ceil = ceiling_section(table, metas)
    lines += ceil_lines
    auto = "c" if any(k[4] == "lstm_fast[c]" for k in table) else next(
        (k[4][len("lstm_fast["):-1] for k in table if k[4].startswith("lstm_fast[")), "c")
    if any(kind(k[0]) != "ceiling" for k in table):
        lines += targets_section(table, ceil, auto)
    legend = (f"Cells: median time per call (GFLOP/s, % of the GEMM ceiling for that dtype and thread count); "
              f"{NOISY} = interquartile range over {NOISE:.0%} of the median, {BUSY} = other processes took over "
              f"{BUSY_SHARE:.0%} of a CPU while it was timed; ×torch, ×ORT = speedup of ours (> 1: ours is "
              "faster). `c` = the NumPy `lstm_fast.LSTM` on backend c, `c module` = `lstm_fast.torch.LSTM`.")
    m = models_tables(table, ceil)
    if m:
        lines += ["### Models group", "", legend, ""] + m
    g = grid_tables(table, ceil)
    if g:
        lines += ["### Grid (one layer)", "", legend, ""] + g
    if base:
        lines += baseline_section(table, base, base_metas)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    ap.add_argument("--baseline", nargs="+", default=None, metavar="JSON",
                    help="JSON files of an earlier run: a table of ours now vs then")
    ap.add_argument("--markdown", help="write the report here (default: stdout)")
    ap.add_argument("--plot", help="write the speedup plot (PNG) here")
    ap.add_argument("--readme", help="replace the report between the markers of this file")
    ap.add_argument("--marker", default="report", help="the markers' name (default: report)")
    ap.add_argument("--csv", help="write one line per benchmark (median seconds, GFLOP/s) here")
    args = ap.parse_args(argv)
    table, metas = load(args.json)
    if not table:
        print("no lstm_fast benchmarks in the input", file=sys.stderr)
        return 1
    base = base_metas = None
    if args.baseline:
        base, base_metas = load(args.baseline)
    lines = render_lines(table, metas, base, base_metas)
    if args.plot:
        plot(table, args.plot)
    if args.csv:
        ceil = ceilings(table)
        with open(args.csv, "w") as f:
            f.write("case,shape,dims,dtype,threads,competitor,median_s,gflops,ceiling_share\n")
            for (case, shape, dtype, threads, comp), cell in sorted(table.items()):
                s = share(cell, ceil, dtype, threads)
                f.write(f"{case},{shape},{'x'.join(map(str, cell.dims))},{dtype},{threads},{comp},"
                        f"{cell.median:.6e},{cell.flops / cell.median / 1e9:.4g},"
                        f"{'' if s is None else f'{s:.3f}'}\n")

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
        start, end = f"<!-- {args.marker}:start -->", f"<!-- {args.marker}:end -->"
        text = render(args.readme)
        with open(args.readme) as f:
            readme = f.read()
        if start not in readme or end not in readme:
            raise SystemExit(f"{args.readme} has no {start} ... {end} markers")
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        with open(args.readme, "w") as f:
            f.write(head + start + "\n" + text + "\n" + end + tail)
    if not args.markdown and not args.readme:
        print(render("x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
