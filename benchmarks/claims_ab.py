"""The steps' hidden blocks claimed at run time (``_c.set_claims``, csrc/pool.h lstm_claim)
against each thread keeping its own part, alternated call by call in one process for a
while per shape: the measurement of that choice on a shared machine, whose 2 vCPUs are not
always equally fast (on the AMD EPYC Zen 3 KVM guest of session 22, one of them ran 30-100 %
slower than the other for seconds at a time while both were busy; a single thread on either
ran at the same speed). One layer, float32, contract calls: "eval" the forward that saves
nothing, "train" the saving forward plus the backward. Prints, per shape and case,
ab_builds.long_summary: each mode's median, the ratio of total times (claimed / static) and
the median per-pair ratio over the rounds where the pair ran near its fastest ("fast",
within 15 % of the best pair) and over the others ("slow"). Not part of the suites:

    flock -x /tmp/lstm_cpu.lock python -m benchmarks.claims_ab --threads 2 --seconds 40 \\
        --shapes timeseries,wlm_small,wlm_medium,speech,large256

Figures: benchmarks/README.md ("Steps' blocks claimed at run time").
"""
import argparse
import time

import numpy as np

from lstm_fast.backends import _c

from .ab_builds import layer_shapes, long_summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0, help="per shape and case")
    ap.add_argument("--shapes", default="timeseries,wlm_small,wlm_medium,speech,large256")
    ap.add_argument("--cases", default="eval,train")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    table = layer_shapes()
    prev = _c.set_claims(None)
    try:
        for name in args.shapes.split(","):
            T, B, I, H = table[name]
            s = 1 / np.sqrt(H)
            u = lambda *shape: rng.uniform(-s, s, shape).astype(np.float32)
            p = _c.pack(u(4 * H, I), u(4 * H, H), u(4 * H))
            x, h0, c0, dy = u(T, B, I), u(B, H), u(B, H), u(T, B, H)
            nt = args.threads

            def ev():
                return _c.forward(p, x, h0, c0, nt, None, save=False)

            def train():
                y, hn, cn, g, c = _c.forward(p, x, h0, c0, nt, None)
                return _c.backward(p, x, h0, c0, y, g, c, dy, hn * 0, cn * 0, nt, None)

            for label, f in (("eval", ev), ("train", train)):
                if label not in args.cases.split(","):
                    continue
                ts = {False: [], None: []}
                for mode in ts:
                    _c.set_claims(mode)
                    f()
                end, r = time.time() + args.seconds, 0
                while time.time() < end:
                    for mode in (False, None) if r % 2 else (None, False):
                        _c.set_claims(mode)
                        t0 = time.perf_counter()
                        f()
                        ts[mode].append(time.perf_counter() - t0)
                    r += 1
                print(f"{name:12s} {label:5s} {nt}T  static/claimed "
                      + long_summary(np.array(ts[False]), np.array(ts[None])), flush=True)
    finally:
        _c.set_claims(prev)


if __name__ == "__main__":
    main()
