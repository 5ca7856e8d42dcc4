"""The C kernel's thread pool (csrc/pool.c) under stress, on both runtimes it
runs jobs on: its own pthread pool and, when the process has loaded one (torch
does), the host's OpenMP runtime (the ``runtime`` fixture).

* thousands of short 2-thread calls in a row (every call posts a job, every
  step crosses a barrier: the places where a lost wake-up would hang);
* several Python threads calling 2-thread kernels at once (one job runs on the
  pool at a time, the others run single-threaded: same bits);
* calls after the idle workers went to sleep (the futex wake-up path);
* a forked child using the pool (no workers inherited).

Every result must equal the 1-thread result bit for bit. Each test body runs
under a watchdog, so a hang fails with the stacks of all threads instead of
stalling the suite. The machine may be loaded: that is the point.
"""
import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import lstm_fast
from lstm_fast import backends

ck = pytest.importorskip("lstm_fast.backends._c")

HANG_S = float(os.environ.get("LSTM_FAST_TEST_HANG_S", "300"))
TWO = backends.CPUS >= 2
needs_two = pytest.mark.skipif(not TWO, reason="needs 2 online CPUs for a 2-thread pool")


def _pool_stats():
    """[jobs on >1 thread, jobs run alone because the pool was busy, barrier waits
    that slept, worker wake-ups from sleep], or None if the symbol is not visible."""
    try:
        fn = ctypes.CDLL(ck.__file__).lstm_pool_stats
    except (OSError, AttributeError):
        return None
    out = (ctypes.c_long * 6)()
    fn(out)
    return list(out)


def _allow_host(allow):
    """lstm_pool_allow_host(allow) -> previous setting, or None if not exported."""
    try:
        fn = ctypes.CDLL(ck.__file__).lstm_pool_allow_host
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn(int(allow))


@pytest.fixture(params=["own", "host"])
def runtime(request):
    """Jobs on our own pool, or on the host's OpenMP runtime (torch loads libgomp)."""
    if request.param == "host":
        pytest.importorskip("torch")
        if not ck.build_info()["threading"].startswith("host OpenMP"):
            pytest.skip(f"no host OpenMP runtime: {ck.build_info()['threading']}")
    old = _allow_host(request.param == "host")
    if old is None:
        pytest.skip("lstm_pool_allow_host not exported")
    runtime_now = ck.build_info()["threading"]
    assert runtime_now.startswith("host OpenMP" if request.param == "host" else "own"), runtime_now
    yield request.param
    _allow_host(old)


def _delta(before):
    after = _pool_stats()
    return None if before is None or after is None else [a - b for a, b in zip(after, before)]


def _wait_child(pid, timeout=HANG_S + 10):
    """Wait for forked child pid (killed and failed after timeout) and assert it exited 0."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:             # pragma: no cover
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def _watchdog(body, timeout=HANG_S):
    """Run body() in a daemon thread; fail (with every thread's stack) if it hangs."""
    box = {}

    def run():
        try:
            box["value"] = body()
        except BaseException as e:   # re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"no progress in {timeout:.0f} s: thread pool hang?")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _problem(T, B, I, H, dtype, seed):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    w = (rng.uniform(-s, s, (4 * H, I)).astype(dtype), rng.uniform(-s, s, (4 * H, H)).astype(dtype),
         rng.uniform(-s, s, 4 * H).astype(dtype))
    d = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
             h0=rng.standard_normal((B, H)).astype(dtype), c0=rng.standard_normal((B, H)).astype(dtype),
             dy=rng.standard_normal((T, B, H)).astype(dtype),
             dh_n=rng.standard_normal((B, H)).astype(dtype), dc_n=rng.standard_normal((B, H)).astype(dtype))
    return ck.pack(*w), d


def _fwd_bwd(p, d, nth):
    fwd = ck.forward(p, d["x"], d["h0"], d["c0"], nth)
    y, _, _, gates, c = fwd
    bwd = ck.backward(p, d["x"], d["h0"], d["c0"], y, gates, c, d["dy"], d["dh_n"], d["dc_n"], nth)
    return tuple(fwd) + tuple(bwd)


def _same(got, want):
    return len(got) == len(want) and all(
        a is b if a is None or b is None else a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(got, want))


# Short problems: a few steps (few barriers per call) so that the calls, i.e.
# job posts and wake-ups, dominate. H spans 1 block (V=16/8) to several.
SHORT = [(1, 1, 1, 1, np.float32), (2, 3, 5, 17, np.float32), (3, 4, 8, 33, np.float64),
         (4, 8, 16, 64, np.float32), (1, 16, 7, 40, np.float64)]


@needs_two
def test_thousands_of_short_two_thread_calls(runtime):
    cases = [(_problem(*shape, seed=k), shape) for k, shape in enumerate(SHORT)]
    want = [_fwd_bwd(p, d, 1) for (p, d), _ in cases]
    before = _pool_stats()

    def body():
        bad = []
        for it in range(3000):
            k = it % len(cases)
            (p, d), shape = cases[k]
            if not _same(_fwd_bwd(p, d, 2), want[k]):
                bad.append((it, shape))
        return bad

    bad = _watchdog(body)
    assert not bad, f"2-thread results differ from 1 thread: {bad[:5]} ({len(bad)} calls)"
    delta = _delta(before)
    if delta is not None:
        assert delta[0] >= 1, delta     # the pool really ran jobs on 2 threads


@needs_two
@pytest.mark.parametrize("runtime", ["own"], indirect=True)
def test_wake_from_sleep(runtime):
    """Calls spaced out so the idle worker of our own pool is asleep (futex) when
    the job is posted."""
    (p, d) = _problem(5, 8, 8, 32, np.float32, seed=7)
    want = _fwd_bwd(p, d, 1)
    before = _pool_stats()

    def body():
        for _ in range(30):
            time.sleep(0.01)
            assert _same(_fwd_bwd(p, d, 2), want)

    _watchdog(body)
    delta = _delta(before)
    if delta is not None:
        assert delta[3] >= 1, delta     # at least one wake-up from sleep


@needs_two
@pytest.mark.parametrize("n_callers", [2, 4])
def test_concurrent_python_threads_two_thread_kernels(n_callers, runtime):
    """Python threads call 2-thread kernels at once through the public API: one
    job at a time runs on the pool, the others alone; all give the serial bits."""
    shapes = [(6, 16, 16, 64), (3, 5, 4, 24), (9, 2, 3, 8)]
    rng = np.random.default_rng(3)
    probs = []
    for T, B, I, H in shapes:
        r = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)
        probs.append(dict(x=r(T, B, I), w_ih=r(4 * H, I), w_hh=r(4 * H, H), b_ih=r(4 * H),
                          b_hh=r(4 * H), h0=r(B, H), c0=r(B, H)))

    def run(q):
        f = lstm_fast.lstm_forward(q["x"], q["w_ih"], q["w_hh"], q["b_ih"], q["b_hh"], q["h0"],
                                   q["c0"], backend="c")
        g = lstm_fast.lstm_backward(f.cache, np.ones_like(f.y))
        return (f.y, f.h_n, f.c_n, g.dx, g.dw_ih, g.dw_hh, g.db_ih, g.dh0, g.dc0)

    lstm_fast.set_num_threads(1)
    want = [run(q) for q in probs]
    lstm_fast.set_num_threads(2)
    assert all(backends.threads_for(T, B, I, H) == 2 for T, B, I, H in shapes)
    before = _pool_stats()
    start = threading.Barrier(n_callers)
    errors = []

    def caller(n):
        try:
            start.wait()
            for it in range(150):
                k = (n + it) % len(probs)
                if not _same(run(probs[k]), want[k]):
                    errors.append((n, it, k))
        except Exception as e:       # pragma: no cover - reported below
            errors.append(e)

    def body():
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(n_callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        _watchdog(body)
    finally:
        lstm_fast.set_num_threads(0)
    assert not errors, errors[:5]
    delta = _delta(before)
    if delta is not None:
        assert delta[0] >= 1, delta
        print(f"pool: {delta[0]} jobs on 2 threads, {delta[1]} alone (pool busy), "
              f"{delta[2]} barrier sleeps, {delta[3]} worker wake-ups")


@needs_two
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_in_forked_child(runtime):
    """A child forked after the pool (or the host's OpenMP team) started has no
    workers: it makes its own."""
    p, d = _problem(4, 8, 8, 32, np.float32, seed=11)
    want = _fwd_bwd(p, d, 1)
    assert _same(_fwd_bwd(p, d, 2), want)          # parent's pool is up
    pid = os.fork()
    if pid == 0:                                    # pragma: no cover - child
        code = 1
        try:
            signal.alarm(int(HANG_S))
            code = 0 if all(_same(_fwd_bwd(p, d, 2), want) for _ in range(50)) else 2
        finally:
            os._exit(code)
    _wait_child(pid)
    assert _same(_fwd_bwd(p, d, 2), want)           # and the parent's pool still works


def test_auto_threads_conservative():
    """Auto (0) never picks 2 threads for small per-step work (< 1e6 multiply-adds: at
    (32,16,64,64) 0.2 ms on 1 thread and 4.2 ms on 2 on a loaded 2-core machine) or a
    short call (< 1e8)."""
    assert backends.get_num_threads() == 0
    for shape in [(32, 16, 64, 64), (6, 32, 3, 32), (512, 16, 512, 64), (3, 1, 1, 1),
                  (32, 16, 128, 128), (32, 1, 512, 512)]:     # the last two: short calls
        assert backends.threads_for(*shape) == 1, shape
    # 2 on a 2-CPU machine, 1 while the pool sees contention
    for shape in [(32, 64, 256, 256), (32, 8, 256, 256), (100, 32, 128, 128), (35, 20, 200, 200)]:
        assert backends.threads_for(*shape) in ((1, 2) if backends.CPUS > 1 else (1,)), shape


def _line(a):
    return a.__array_interface__["data"][0] % 64 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_updated_by_several_threads_start_on_a_cache_line(dtype):
    """What the kernel's threads update in place step after step, each its own columns
    (the running c_n of the forward, db and dc0 of the backward, the peephole and
    layer-norm gradients), starts on a cache line whatever its size when more than one
    thread runs: a line shared by both threads' columns would move between the cores at
    every row of every step. (Small arrays are NumPy's own, 16-byte aligned, at 1 thread.)"""
    from lstm_fast import _validation
    T, B, I, H = 5, 3, 4, 7          # db: 4H floats = 112 bytes, c_n 84: NumPy's size class
    rng = np.random.default_rng(0)
    pk = ck.pack(*(rng.standard_normal(s).astype(dtype) for s in ((4 * H, I), (4 * H, H))),
                 np.zeros(4 * H, dtype))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    for _ in range(8):               # several allocations: not one lucky address
        y, h_n, c_n, gates, c = ck.forward(pk, x, h0, h0, 2, None, True)
        assert _line(c_n)
        out = ck.backward(pk, x, h0, h0, y, gates, c, np.ones_like(y), h0, h0, 2)
        for a in out[3:6]:           # db, dh0, dc0
            assert _line(a)
    for shape in ((3, H), (10 * H,), (3, 64)):
        a = _validation.empty_lines(shape, dtype)
        assert _line(a) and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
