"""Instructions per call of the layer at tiny shapes, counted by Valgrind's callgrind.

Not a timing: the count does not depend on the machine's load or clock, which on a shared
2-CPU machine move per-call timings by 15-40 % (benchmarks/README.md). Use it to see
where the per-call cost of ``LSTM.forward``/``backward`` goes (by shared library and by
function) and whether a change to the route or the binding removed work; the speed
claims stay with the pytest-benchmark suite.

The program is run twice under callgrind, with N and 3N calls, and the difference is
divided by 2N, so that start-up (imports, the first call) cancels out. Valgrind emulates
the CPU without AVX-512: the C kernel runs its AVX2 level there, and its own share of the
count is that level's.

    python benchmarks/callcount.py                  # forward+backward at (3, 1, 1, 1)
    python benchmarks/callcount.py --mode forward --shape 6,32,3,32 --top 30
    python benchmarks/callcount.py --target module --shape 6,32,3,32 --calls 2000
    python benchmarks/callcount.py --shape 32,16,64,64 --calls 3 --layer-norm

``--target module`` counts ``lstm_fast.torch.LSTM`` instead (forward: under
``torch.inference_mode()`` in eval mode; train: forward with x requiring grad, then
``y.backward(dy)``, the parameters' gradients set to None first, as the models group's
``layer_forward``/``layer_train`` run it); ``--target torch`` counts ``torch.nn.LSTM``
the same way.

Needs ``valgrind`` (Debian: ``apt-get install valgrind``) on the PATH.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

_CHILD = """
import sys, numpy as np
from lstm_fast import LSTM
T, B, I, H = map(int, sys.argv[1].split(","))
mode, n = sys.argv[2], int(sys.argv[3])
layer = LSTM(I, H, backend=sys.argv[4], seed=0, layer_norm=sys.argv[5] == "1")
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
dy = np.ones((T, B, H), np.float32)
layer(x)
layer.backward(dy)
if mode == "forward":
    for _ in range(n):
        layer(x)
else:
    for _ in range(n):
        layer(x)
        layer.backward(dy)
"""

_TORCH_CHILD = """
import sys, torch
torch.set_num_threads(1)
T, B, I, H = map(int, sys.argv[1].split(","))
mode, n, backend = sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if backend == "torch":
    lstm = torch.nn.LSTM(I, H)
else:
    import lstm_fast.torch
    lstm = lstm_fast.torch.LSTM(I, H, backend=backend)
x = torch.randn(T, B, I)
dy = torch.ones(T, B, H)
params = list(lstm.parameters())
if mode == "forward":
    lstm.eval()
    def step():
        with torch.inference_mode():
            return lstm(x)
else:
    x.requires_grad_(True)
    def step():
        for q in params:
            q.grad = None
        x.grad = None
        lstm(x)[0].backward(dy)
for _ in range(3):
    step()
for _ in range(n):
    step()
"""

_LINE = re.compile(r"\s*([\d,]+)\s+\(.*?\)\s+(\S.*)")


def _run(args, n, out):
    # one OpenBLAS (and OpenMP) thread: idle pool threads spin for as long as Valgrind
    # schedules them, a count that moves by ~1,000 a call with nothing to do with the layer
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    child = _CHILD if args.target == "layer" else _TORCH_CHILD
    backend = "torch" if args.target == "torch" else args.backend
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-c", child, args.shape, args.mode, str(n), backend,
                    str(int(args.layer_norm))],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = subprocess.run(["callgrind_annotate", "--threshold=100", out], check=True,
                          capture_output=True, text=True).stdout
    by_fn, by_obj = collections.Counter(), collections.Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or "PROGRAM TOTALS" in m.group(2):
            continue
        count, where = int(m.group(1).replace(",", "")), m.group(2)
        obj = re.search(r"\[([^\]]*)\]\s*$", where)
        fn = where.split(" [")[0].rsplit(":", 1)[-1]
        by_fn[fn] += count
        by_obj[os.path.basename(obj.group(1)) if obj else "?"] += count
    return by_fn, by_obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3,1,1,1", help="T,B,I,H (default 3,1,1,1)")
    ap.add_argument("--mode", choices=("forward", "train"), default="train")
    ap.add_argument("--backend", default="c")
    ap.add_argument("--target", choices=("layer", "module", "torch"), default="layer",
                    help="the NumPy lstm_fast.LSTM (default), lstm_fast.torch.LSTM or "
                         "torch.nn.LSTM")
    ap.add_argument("--layer-norm", action="store_true",
                    help="the layer-normalized LSTM (layer_norm=True; --target layer only)")
    ap.add_argument("--calls", type=int, default=10000, help="N (default 10000)")
    ap.add_argument("--top", type=int, default=20, help="functions to list")
    args = ap.parse_args(argv)
    if args.layer_norm and args.target != "layer":
        ap.error("--layer-norm: with --target layer only")
    with tempfile.TemporaryDirectory() as tmp:
        (f1, o1), (f3, o3) = (_run(args, k * args.calls, os.path.join(tmp, f"cg{k}"))
                              for k in (1, 3))
    per = 2.0 * args.calls
    objs = {k: (o3[k] - o1[k]) / per for k in set(o1) | set(o3)}
    fns = {k: (f3[k] - f1[k]) / per for k in set(f1) | set(f3)}
    what = {"layer": f"lstm_fast.LSTM{'(layer_norm=True)' if args.layer_norm else ''}, "
                     f"backend {args.backend}",
            "module": f"lstm_fast.torch.LSTM, backend {args.backend}",
            "torch": "torch.nn.LSTM"}[args.target]
    print(f"{args.mode} at (T, B, I, H) = ({args.shape}), {what}: "
          f"{sum(objs.values()):,.0f} instructions per call")
    print("by library:")
    for k, v in sorted(objs.items(), key=lambda kv: -kv[1]):
        if abs(v) >= 50:
            print(f"  {v:9,.0f}  {k}")
    print(f"top {args.top} functions (self):")
    for k, v in sorted(fns.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v:9,.0f}  {k}")


if __name__ == "__main__":
    main()
