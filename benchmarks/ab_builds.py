"""Two builds of the C extension in one process, alternated round by round: the before/after
measurement of a kernel change on a noisy machine (separate processes differ by more than
the change: on the AMD EPYC Zen 3 of session 21 the same forward took 29-55 ms from one
process to the next). Each build is loaded from its own file under the extension's name
(``importlib``; the two ``dlopen`` handles keep their own symbols), and the backend contract's
``pack``/``forward``/``backward`` are called directly: "fwd" is the saving forward, "eval"
the forward that saves nothing (inference), "train" the saving forward plus the backward, one layer, float32. Prints each build's median and the median of the
per-round ratios (B/A); with ``--seconds S`` it alternates for S seconds per shape and case
and prints ``long_summary`` (total-time ratio, and the ratio in the machine's fast and slow
rounds). Not part of the package or the suites:

    cp build/dev/_c.abi3.so /tmp/after.so    # and the build before the change as /tmp/before.so
    flock -x /tmp/lstm_cpu.lock python -m benchmarks.ab_builds /tmp/before.so /tmp/after.so \\
        --threads 1 --shapes wlm_small,timeseries,large256

Shapes (T, B, I, H): the grid's (shapes.SHAPES) and each model's first layer (shapes.MODELS),
plus ``<model>/upper`` for its later layers where their input size differs (I = directions x H).

Figures: benchmarks/README.md ("Report of 2026-12-02 (AMD EPYC family 25 model 1, Zen 3)").
"""
import argparse
import importlib.util
import time

import numpy as np

from . import shapes


def layer_shapes():
    """{name: (T, B, I, H)}: the grid's shapes, the models' first layers and their upper ones."""
    out = dict(shapes.SHAPES)
    for name, m in shapes.MODELS.items():
        out[name] = (m.T, m.B, m.I, m.H)
        upper = m.layer_inputs()[1:]
        if upper and upper[0] != m.I:
            out[f"{name}/upper"] = (m.T, m.B, upper[0], m.H)
    return out


def load(path):
    spec = importlib.util.spec_from_file_location("lstm_fast.backends._c", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="the first build (before)")
    ap.add_argument("b", help="the second build (after)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default=",".join(layer_shapes()),
                    help="comma-separated names of layer_shapes()")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--cases", default="fwd,eval,train", help="comma-separated: fwd, eval, train")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="alternate for this long per shape and case instead of --rounds, "
                         "and summarize as long_summary does")
    args = ap.parse_args(argv)
    builds = {"A": load(args.a), "B": load(args.b)}
    rng = np.random.default_rng(0)
    table = layer_shapes()
    for name in args.shapes.split(","):
        T, B, I, H = table[name]
        s = 1 / np.sqrt(H)
        u = lambda *shape: rng.uniform(-s, s, shape).astype(np.float32)
        w = (u(4 * H, I), u(4 * H, H), u(4 * H))
        x, h0, c0, dy = u(T, B, I), u(B, H), u(B, H), u(T, B, H)
        runs = {}
        for tag, mod in builds.items():
            p = mod.pack(*w)

            def fwd(mod=mod, p=p):
                return mod.forward(p, x, h0, c0, args.threads, None)

            def ev(mod=mod, p=p):
                return mod.forward(p, x, h0, c0, args.threads, None, save=False)

            def train(mod=mod, p=p):
                y, hn, cn, g, c = mod.forward(p, x, h0, c0, args.threads, None)
                return mod.backward(p, x, h0, c0, y, g, c, dy, hn * 0, cn * 0, args.threads, None)
            runs[tag] = (fwd, ev, train)
        for k, label in enumerate(("fwd", "eval", "train")):
            if label not in args.cases.split(","):
                continue
            ts = {"A": [], "B": []}
            for tag in ts:
                runs[tag][k]()
            end, r = time.time() + args.seconds, 0
            while r < args.rounds if not args.seconds else time.time() < end:
                for tag in ("A", "B") if r % 2 else ("B", "A"):
                    t0 = time.perf_counter()
                    runs[tag][k]()
                    ts[tag].append(time.perf_counter() - t0)
                r += 1
            a, b = np.array(ts["A"]), np.array(ts["B"])
            if args.seconds:
                print(f"{name:12s} {label:5s} {args.threads}T  A/B " + long_summary(a, b),
                      flush=True)
                continue
            print(f"{name:11s} {label:5s} {args.threads}T  A {np.median(a) * 1e3:9.3f} ms  "
                  f"B {np.median(b) * 1e3:9.3f} ms  B/A {np.median(b / a):.3f}", flush=True)


def long_summary(a, b):
    """Alternated times a, b (s) of many rounds, as one line: each median, the ratio of
    total times b/a, and the median per-round ratio over the rounds whose pair ran within 15 %
    of the fastest pair ("fast": the machine at speed) and over the others ("slow")."""
    pair = (a + b) / 2
    fast = pair <= 1.15 * pair.min()
    ratio = b / a
    med = lambda v: f"{np.median(v):.3f}" if v.size else "-"
    return (f"rounds {len(a):5d}  {np.median(a) * 1e3:8.3f} / {np.median(b) * 1e3:8.3f} ms  "
            f"total {b.sum() / a.sum():.3f}  fast rounds {fast.sum()}: {med(ratio[fast])}  "
            f"slow rounds {(~fast).sum()}: {med(ratio[~fast])}")


if __name__ == "__main__":
    main()
