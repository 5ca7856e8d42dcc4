"""A/B of the C kernel's threads inside a PyTorch process (issue 14, item 1).

In one process, interleaved rounds: torch.nn.LSTM, lstm_fast.torch.LSTM (backend
"c") and the NumPy ``lstm_fast.LSTM`` (backend "c"), train step and eval, per
model; with ``--runtimes host,own`` each round runs once with the C kernel's
jobs on torch's OpenMP team and once on the kernel's own pthread pool (switched
with the exported C function ``lstm_pool_allow_host``). Prints medians (ms) and
ratios to torch. Run under the CPU lock; name the CPU (lscpu) with the figures.

    flock -x /tmp/lstm_cpu.lock python benchmarks/threads_in_torch.py --threads 2
"""
import argparse
import ctypes
import time

import numpy as np
import torch

import lstm_fast
import lstm_fast.backends._c as ck
from lstm_fast.torch import LSTM as FastLSTM

MODELS = {  # (T, B, I, H), layers, dropout
    "wlm-small": ((35, 20, 200, 200), 2, 0.2),
    "wlm-medium": ((35, 20, 650, 650), 2, 0.2),
    "seq128": ((100, 32, 128, 128), 1, 0.0),
    "seq512": ((50, 64, 512, 512), 1, 0.0),
}


def median_s(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def cases(name):
    (T, B, I, H), layers, p = MODELS[name]
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, layers, dropout=p)
    ours = FastLSTM(I, H, layers, dropout=p, backend="c")
    ours.load_state_dict(ref.state_dict())
    layer = lstm_fast.LSTM(I, H, layers, dropout=p, backend="c")
    layer.load_state_dict({k: v.detach().numpy().copy() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I)
    xn = x.numpy().copy()

    def train(m):
        def f():
            m.train()
            m.zero_grad()
            out, _ = m(x.clone().requires_grad_())
            out.sum().backward()
        return f

    def ev(m):
        def f():
            m.eval()
            with torch.inference_mode():
                m(x)
        return f

    def np_train():
        layer.train()
        y, _ = layer(xn)
        layer.backward(np.ones_like(y))

    def np_eval():
        layer.eval()
        layer(xn)

    return {"torch train": train(ref), "ours train": train(ours), "numpy train": np_train,
            "torch eval": ev(ref), "ours eval": ev(ours), "numpy eval": np_eval}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="wlm-small,wlm-medium,seq128")
    ap.add_argument("--runtimes", default="host,own", help="host: torch's OpenMP team; own: our pool")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lstm_fast.set_num_threads(args.threads)
    allow_host = ctypes.CDLL(ck.__file__).lstm_pool_allow_host
    allow_host.argtypes = [ctypes.c_int]
    models = {m: cases(m) for m in args.models.split(",")}
    runtimes = args.runtimes.split(",")
    times = {}
    for _ in range(args.rounds):
        for rt in runtimes:
            allow_host(rt == "host")
            for m, fns in models.items():
                for case, fn in fns.items():
                    times.setdefault((m, rt, case), []).append(median_s(fn, args.reps))
    allow_host(1)
    print(f"{args.threads} thread(s), median of {args.rounds} rounds, ms; C kernel threads: "
          f"{ck.build_info()['threading']}")
    for m in models:
        for rt in runtimes:
            t = {c: 1e3 * float(np.median(times[(m, rt, c)])) for c in models[m]}
            print(f"{m:11} {rt:4} train torch {t['torch train']:7.2f} ours {t['ours train']:7.2f} "
                  f"({t['torch train'] / t['ours train']:.2f}x) numpy {t['numpy train']:7.2f} | "
                  f"eval torch {t['torch eval']:6.2f} ours {t['ours eval']:6.2f} "
                  f"({t['torch eval'] / t['ours eval']:.2f}x) numpy {t['numpy eval']:6.2f}")


if __name__ == "__main__":
    main()
