"""The C kernel's threads inside a PyTorch process (issue 14, item 1).

torch's CPU wheel loads its own OpenMP runtime (libgomp.so.1). Once it is in
the process, csrc/pool.c runs multi-thread jobs on that runtime's team
(GOMP_parallel, found at run time) instead of a second pool of its own, so our
threads and torch's are the same threads. Checked here, with torch's own ops
running in the same process at 2 threads:

* the runtime in use is the host's (build info), and 2-thread jobs really ran;
* the torch module and the NumPy layer give the same bits at 1 and 2 threads;
* two Python threads, one training through the torch module and one running
  torch ops (and torch.nn.LSTM), give their serial results and never hang;
* a team smaller than asked (OMP_THREAD_LIMIT=1) still gives the same bits;
* a child forked after the parent ran jobs on the host runtime (whose team does
  not survive a fork) falls back to our own pool instead of hanging.

Every body that could hang runs under the watchdog of test_threads.py.
"""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ck = pytest.importorskip("lstm_fast.backends._c")

import lstm_fast  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from test_threads import HANG_S, TWO, _delta, _pool_stats, _wait_child, _watchdog  # noqa: E402

needs_two = pytest.mark.skipif(not TWO, reason="needs 2 online CPUs for 2-thread jobs")


def _host_gomp_loaded():
    with open("/proc/self/maps") as f:
        return any("libgomp" in line for line in f)


needs_gomp = pytest.mark.skipif(not os.path.exists("/proc/self/maps") or not _host_gomp_loaded(),
                                reason="torch did not load a libgomp (not a GNU OpenMP build)")


@pytest.fixture(autouse=True)
def _two_torch_threads():
    """torch's own ops at 2 threads too, so its OpenMP team is up and spinning."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
    lstm_fast.set_num_threads(0)


def _torch_ops(seed=0):
    """A little of everything torch runs between our kernels in a model."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 256, generator=g)
    w = torch.randn(256, 256, generator=g)
    y = torch.nn.functional.dropout(torch.tanh(a @ w), 0.2, training=False)
    return torch.cat([y, y.exp().sum(1, keepdim=True)], 1).sum()


def _module_step(module, x, seed):
    """One training step's outputs and gradients, plus an eval forward."""
    torch.manual_seed(seed)                  # same dropout masks at any thread count
    module.train()
    module.zero_grad()
    xx = x.clone().requires_grad_()
    out, (h, c) = module(xx)
    (out.square().sum() + h.sum() + 0.5 * c.sum()).backward()
    res = [out, h, c, xx.grad] + [p.grad for p in module.parameters()]
    module.eval()
    with torch.inference_mode():
        res += list(module(x)[0:1])
    return [t.detach().clone() for t in res]


def _same(got, want):
    return len(got) == len(want) and all(
        a.shape == b.shape and a.dtype == b.dtype and
        np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(got, want))


def _pair(T, B, I, H, layers, dropout, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, layers, dropout=dropout).to(dtype)
    ours = ltorch.LSTM(I, H, layers, dropout=dropout, backend="c").to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype)
    return ref, ours, x


@needs_two
@needs_gomp
def test_host_openmp_runtime_in_use():
    _torch_ops()
    assert ck.build_info()["threading"].startswith("host OpenMP"), ck.build_info()["threading"]


@needs_two
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(7, 20, 40, 72, 2, 0.2), (5, 32, 16, 128, 1, 0.0)])
def test_torch_module_bits_one_vs_two_threads(shape, dtype):
    T, B, I, H, layers, p = shape
    ref, ours, x = _pair(T, B, I, H, layers, p, dtype)

    def run(n):
        lstm_fast.set_num_threads(n)
        _torch_ops()
        ref(x)                                # torch's LSTM and ops between our kernels
        return _module_step(ours, x, seed=5)

    want = run(1)
    before = _pool_stats()

    def body():
        return [run(2) for _ in range(3)]

    for got in _watchdog(body):
        assert _same(got, want)
    delta = _delta(before)
    if delta is not None:
        assert delta[0] >= 1, delta          # jobs really ran on 2 threads


@needs_two
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numpy_layer_bits_one_vs_two_threads_after_torch_ops(dtype):
    layer = lstm_fast.LSTM(24, 80, 2, backend="c", dtype=dtype, seed=3)
    x = np.random.default_rng(4).standard_normal((9, 24, 24)).astype(dtype)

    def run(n):
        lstm_fast.set_num_threads(n)
        _torch_ops()
        layer.train()
        y, (h, c) = layer(x)
        dx, (dh0, dc0) = layer.backward(np.cos(y))
        return [y, h, c, dx, dh0, dc0] + [layer.grads[k] for k in sorted(layer.grads)]

    want = run(1)
    for got in _watchdog(lambda: [run(2) for _ in range(3)]):
        assert _same(got, want)


@needs_two
def test_concurrent_torch_module_and_torch_ops_from_two_python_threads():
    """Thread A trains through the torch module at 2 threads while thread B runs
    torch ops and torch.nn.LSTM at 2 threads (its own OpenMP team): both get
    their serial results, nobody hangs."""
    ref, ours, x = _pair(8, 24, 32, 96, 2, 0.0)
    lstm_fast.set_num_threads(2)
    want_ours = _module_step(ours, x, seed=1)
    want_ops = [_torch_ops(seed=k) for k in range(3)]
    with torch.no_grad():
        want_ref = ref(x)[0].clone()
    errors = []
    start = threading.Barrier(2)

    def module_user():
        start.wait()
        for it in range(25):
            if not _same(_module_step(ours, x, seed=1), want_ours):
                errors.append(("module", it))

    def torch_user():
        torch.set_num_threads(2)              # per-thread OpenMP setting
        start.wait()
        for it in range(40):
            if not all(bool(_torch_ops(seed=k) == want_ops[k]) for k in range(3)):
                errors.append(("ops", it))
            with torch.no_grad():
                if not torch.equal(ref(x)[0], want_ref):
                    errors.append(("torch.nn.LSTM", it))

    def body():
        ts = [threading.Thread(target=f) for f in (module_user, torch_user)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    _watchdog(body)
    assert not errors, errors[:5]


_SMALL_TEAM = r"""
import ctypes, numpy as np, torch, lstm_fast, lstm_fast.backends._c as ck
torch.set_num_threads(2)
torch.randn(1000, 1000).exp().sum()
stats = lambda: (lambda o: (ctypes.CDLL(ck.__file__).lstm_pool_stats(o), list(o))[1])((ctypes.c_long * 6)())
rng = np.random.default_rng(0)
T, B, I, H = 6, 16, 24, 64
r = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)
p = ck.pack(r(4 * H, I), r(4 * H, H), r(4 * H))
x, h0, c0, dy = r(T, B, I), r(B, H), r(B, H), r(T, B, H)
def run(n):
    f = ck.forward(p, x, h0, c0, n)
    g = ck.backward(p, x, h0, c0, f[0], f[3], f[4], dy, h0, c0, n)
    return b"".join(a.tobytes() for a in tuple(f) + tuple(g) if a is not None)
want = run(1)
before = stats()
assert all(run(2) == want for _ in range(20)), "bits differ"
after = stats()
print(ck.build_info()["threading"], "| multi-thread jobs:", after[0] - before[0])
"""


@needs_two
@needs_gomp
def test_team_smaller_than_asked():
    """OMP_THREAD_LIMIT=1: the runtime gives 1 thread where 2 were asked; the job
    partitions by the team it got (same bits, no barrier waits for a thread that
    never comes)."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run([sys.executable, "-c", _SMALL_TEAM], env=env, capture_output=True,
                         text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]   # (an editable install may log a rebuild first)
    assert last.startswith("host OpenMP"), out.stdout
    assert last.endswith("multi-thread jobs: 0"), out.stdout


_FORK_BEFORE_FIRST_JOB = r"""
import os, signal, numpy as np, torch, lstm_fast, lstm_fast.backends._c as ck
torch.set_num_threads(2)
torch.randn(2000, 2000).exp().sum()        # torch's OpenMP team is up; ours never ran a job
layer = lstm_fast.LSTM(16, 64, 1, backend="c", seed=2)
x = np.random.default_rng(1).standard_normal((6, 16, 16)).astype(np.float32)
lstm_fast.set_num_threads(1)
want = layer(x)[0].tobytes()
pid = os.fork()
if pid == 0:
    signal.alarm(60)
    lstm_fast.set_num_threads(2)
    ok = layer(x)[0].tobytes() == want
    os._exit(0 if ok and ck.build_info()["threading"].startswith("own pthread pool") else 2)
_, status = os.waitpid(pid, 0)
print("child status", status)
"""


@needs_two
@needs_gomp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_before_our_first_job_uses_own_pool():
    """torch used its team, we had not run a job yet, then fork: the child must
    not use the parent's (dead) team either."""
    out = subprocess.run([sys.executable, "-c", _FORK_BEFORE_FIRST_JOB], capture_output=True,
                         text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "child status 0", out.stdout


@needs_two
@needs_gomp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_after_host_runtime_uses_own_pool():
    """libgomp's team does not survive fork (torch's own ops at 2 threads hang in
    such a child); our jobs in the child run on our own pool instead."""
    layer = lstm_fast.LSTM(16, 64, 1, backend="c", seed=2)
    x = np.random.default_rng(1).standard_normal((6, 16, 16)).astype(np.float32)
    lstm_fast.set_num_threads(1)
    want = layer(x)[0].tobytes()
    lstm_fast.set_num_threads(2)
    _torch_ops()
    assert layer(x)[0].tobytes() == want      # parent: on the host runtime's team
    assert ck.build_info()["threading"].startswith("host OpenMP")
    pid = os.fork()
    if pid == 0:                              # pragma: no cover - child
        code = 1
        try:
            signal.alarm(int(HANG_S))
            ok = all(layer(x)[0].tobytes() == want for _ in range(20))
            own = ck.build_info()["threading"].startswith("own pthread pool")
            code = 0 if ok and own else (2 if not ok else 3)
        finally:
            os._exit(code)
    _wait_child(pid)
    assert layer(x)[0].tobytes() == want      # and the parent still runs on the host team


_NUMBA_KEEPS_TORCH_THREADS = r"""
import numpy as np, torch, lstm_fast
torch.set_num_threads(1)
layer = lstm_fast.LSTM(4, 8, backend="numba", seed=0)   # imports Numba, starts its OpenMP layer
x = np.ones((3, 2, 4), np.float32)
layer(x)
lstm_fast.set_num_threads(2)
layer.backward(layer(x)[0])
print(torch.get_num_threads())
"""


def test_numba_backend_keeps_torchs_thread_count():
    """Numba's OpenMP threading layer sets the thread count of the runtime torch shares
    (numba/numba#9387); the backend puts the process's count back."""
    out = subprocess.run([sys.executable, "-c", _NUMBA_KEEPS_TORCH_THREADS], capture_output=True,
                         text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1", out.stdout
