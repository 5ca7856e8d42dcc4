"""What is specific to the C backend (lstm_fast.backends._c): SIMD levels, build info,
status codes, the GIL. The backend contract itself is tested for every backend in
test_contract.py; here its reference comparison runs again at every SIMD level the CPU
supports (set in-process with ``set_simd_level``; the environment variable
LSTM_FAST_SIMD is checked in a subprocess).
"""
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from _support import (BWD, FWD, assert_matches, c_claims, contract_problem, reference64,
                      run_contract, same_bits, simd_levels)

ck = pytest.importorskip("lstm_fast.backends._c")

LEVELS = simd_levels(ck)


@pytest.fixture(params=LEVELS)
def level(request):
    before = ck.simd_level()   # the level in force (LSTM_FAST_SIMD may have chosen it), not the CPU's
    ck.set_simd_level(request.param)
    yield request.param
    ck.set_simd_level(before)


# (T, B, I, H, P, lengths): tails in every dimension at every vector width, either side
# of the rule for doing x_t.w_ih^T inside the step (fwd_fuse_x: I <= 16 or B >= 16, unless
# at B >= 16 w_ih and w_hh exceed the L2 while w_hh fits in 3/4 of it: (2, 20, 200, 200)
# where the L2 is 1 MiB, float32; or exceed it with I > H: (2, 16, 1000, 150), 2.8 MB in
# float32, beyond every L2 of the project's CPUs), the dx-in-steps rule (I > 16), projection and variable
# lengths; a last hidden block of at most V/2 units (AVX-512: packed in pairs of gates,
# fwd_tile_pair) after B = 1's tiles of several blocks (72, 100) and in a step that
# walks K in chunks (weights beyond a 2 MiB L2: (2, 13, 1000, 196))
CASES = [
    (1, 1, 1, 1, 0, None), (3, 1, 1, 1, 0, None), (1, 4, 3, 5, 0, None),
    (5, 3, 7, 17, 0, None), (4, 7, 5, 33, 0, None), (3, 2, 40, 9, 0, None),
    (6, 32, 3, 32, 0, None), (9, 1, 16, 16, 0, None), (32, 16, 64, 64, 0, None),
    (5, 13, 100, 130, 0, None), (4, 15, 17, 19, 0, None), (4, 16, 17, 19, 0, None),
    (3, 17, 16, 18, 0, None), (3, 15, 16, 18, 0, None), (2, 16, 200, 9, 0, None),
    (5, 5, 8, 12, 4, [5, 5, 3, 1, 0]), (6, 18, 20, 40, 0, [6] * 10 + [4] * 6 + [2, 1]),
    (4, 3, 33, 50, 7, [4, 2, 2]), (3, 1, 9, 20, 5, None), (2, 20, 200, 200, 0, None),
    (3, 1, 30, 72, 0, None), (2, 1, 20, 100, 0, None), (2, 13, 1000, 196, 0, None),
    (2, 16, 1000, 150, 0, None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}B{}I{}H{}P{}{}".format(
    *c[:5], "" if c[5] is None else "-lengths"))
def test_every_simd_level_matches_reference(level, dtype, case):
    p = contract_problem(*case, dtype=dtype, seed=sum(case[:5]))
    fwd, bwd = run_contract(ck, p)
    want_fwd, want_bwd = reference64(p)
    assert_matches(fwd, want_fwd, FWD, dtype)
    assert_matches(bwd, want_bwd, BWD, dtype)


# Threads split each step's hidden blocks, or, for the plain LSTM whose pack fits the L2 and
# whose row tiles per thread are as full as the whole batch's, each step's rows
# (lstm.template.c fwd_rows_split, backward.template.c bwd_rows_split; here at 2 threads,
# the blocks at 3): with variable lengths the split of the rows moves between steps, so rows
# pass from one thread to the other; dx in the steps (B >= 32) and after the loop; db summed
# after the loop in the cells' order.
@pytest.mark.parametrize("case", [(12, 24, 48, 96, 0, None), (5, 7, 13, 45, 0, None),
                                  (5, 17, 33, 45, 0, None), (6, 9, 20, 40, 5, None),
                                  (7, 24, 20, 40, 0, [7] * 10 + [5] * 7 + [3] * 4 + [1] * 3),
                                  (9, 33, 40, 24, 0, [9] * 20 + [4] * 12 + [1]),
                                  (5, 32, 16, 23, 0, None), (4, 12, 9, 70, 0, None)],
                         ids=["even", "odd-hoisted-x", "odd-fused-x", "proj", "lengths",
                              "lengths-dx-in-steps", "B32", "B12"])
def test_threads_bitwise_identical_at_every_level(level, dtype, case):
    """Tails in every dimension, hidden blocks split unevenly, rows split."""
    p = contract_problem(*case, dtype=dtype, seed=9)
    one = run_contract(ck, p, 1)
    for n in (2, 3):
        got = run_contract(ck, p, n)
        assert same_bits(got[0], one[0]) and same_bits(got[1], one[1]), n


# Split by units, the steps' blocks are claimed at run time (pool.h lstm_claim): in every
# claims mode, and with every thread starting on the other threads' parts (so a block, its
# running c or dc, db and c0's copy are computed away from the thread whose part it is), the
# bits of 1 thread: forward saving and not, backward; lengths with rows that end early or
# never start, dx in the steps, a projection (its steps' blocks stay static), B = 1.
CLAIM_CASES = [(12, 24, 48, 96, 0, None), (5, 17, 33, 45, 0, None), (6, 9, 20, 40, 5, None),
               (7, 24, 20, 40, 0, [7] * 10 + [5] * 7 + [3] * 4 + [1] * 3),
               (9, 33, 40, 24, 0, [9] * 20 + [4] * 12 + [1]), (4, 7, 12, 9, 0, [4, 3, 1, 1, 0, 0, 0]),
               (5, 1, 64, 40, 0, None), (3, 20, 200, 200, 0, None), (3, 16, 1000, 150, 0, None)]


@pytest.mark.parametrize("mode", [None, False, True, "others-first"], ids=str)
@pytest.mark.parametrize("case", CLAIM_CASES, ids=lambda c: "T{}B{}I{}H{}P{}{}".format(
    *c[:5], "" if c[5] is None else "-lengths"))
def test_claimed_blocks_give_the_bits_of_one_thread(dtype, case, mode):
    p = contract_problem(*case, dtype=dtype, seed=sum(case[:5]))
    packed = ck.pack(*p["w"])
    args = (p["x"], p["h0"], p["c0"])
    one = run_contract(ck, p, 1)
    with c_claims(mode):
        for n in (2, 3):
            got = run_contract(ck, p, n)
            assert same_bits(got[0], one[0]) and same_bits(got[1], one[1]), n
            y, h_n, c_n, *_ = ck.forward(packed, *args, n, p["batch_sizes"], False)
            assert same_bits((y, h_n, c_n), one[0][:3]), n


# Split by rows, the steps wait for each other only where a step's row count changes (the
# split moves), before the backward's interleaved products and after the last step: a
# thread may run steps ahead of the other in between. Repeated, so that a missing wait
# shows as a difference from the 1-thread bits.
@pytest.mark.parametrize("case", [(12, 24, 48, 96, None), (64, 24, 16, 64, None),
                                  (64, 24, 16, 64, [64] * 16 + [50] * 5 + [3] * 3),
                                  (9, 33, 40, 24, [9] * 20 + [4] * 12 + [1]),
                                  (12, 24, 6, 16, [t for t in range(12, 0, -1) for _ in range(2)])],
                         ids=["even", "interleaved", "interleaved-lengths", "lengths-dx",
                              "moves-every-step"])
def test_rows_split_threads_wait_only_where_the_split_moves(dtype, case):
    p = contract_problem(*case[:4], 0, case[4], dtype=dtype, seed=sum(case[:4]))
    one = run_contract(ck, p, 1)
    for _ in range(15):
        got = run_contract(ck, p, 2)
        assert same_bits(got[0], one[0]) and same_bits(got[1], one[1])


# dx's three routes: in the steps (B >= 32, or B >= MR with w_ih and w_hh in half the L2),
# the steps' tiles over all rows after the loop, the GEMM (w_ih and w_hh beyond the L2)
@pytest.mark.parametrize("shape", [(4, 33, 40, 24), (3, 5, 40, 24), (3, 13, 40, 24),
                                   (2, 3, 300, 300)],
                         ids=["dx-in-steps", "dx-rows", "dx-rows-B13", "dx-gemm"])
def test_backward_without_dx_is_bitwise_equal_at_every_level(level, dtype, shape):
    """dx NULL in the kernel (need_dx=False): every other gradient has the bits of the call
    with dx, at 1 and 2 threads."""
    p = contract_problem(*shape, dtype=dtype, seed=5)
    packed = ck.pack(*p["w"])
    y, _, _, gates, c = ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    args = (packed, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"], p["dh_n"], p["dc_n"])
    want = ck.backward(*args, 1)
    for n in (1, 2):
        got = ck.backward(*args, n, need_dx=False)
        assert got[0] is None and same_bits(got[1:], want[1:]), n


# The backward's whole-sequence products (dw, and dx after the loop) interleaved with the
# steps, a block of 256 rows of the gate gradients as soon as it is written
# (backward.template.c, bwd_interleave), or after the loop: one block, blocks that end
# inside a step, many; dw as two products (small) or one; dx after the loop (I <= 16) or
# in the steps (B >= 32); padded and ragged (sequences ending early, steps of no rows).
INTERLEAVE_CASES = [
    (3, 5, 7, 17, None), (40, 9, 16, 33, None), (40, 9, 16, 32, [40, 40, 33, 20, 9, 9, 2, 1, 0]),
    (30, 20, 24, 40, None), (70, 32, 20, 16, None), (90, 13, 16, 20, [90] * 5 + [60] * 4 + [7] * 4),
    # where the automatic rule (bwd_long_narrow) takes both the interleave and the cells'
    # prefetch of the next step: 1280 rows of dgates (1.4 MB) over half an L2 of up to
    # 2.7 MB, a block of them (0.28 MB) in half of one of 0.56 MB or more
    (64, 20, 16, 64, None), (64, 24, 16, 64, [64] * 16 + [50] * 5 + [3] * 3),
]


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("case", INTERLEAVE_CASES, ids=lambda c: "T{}B{}I{}H{}{}".format(
    *c[:4], "" if c[4] is None else "-lengths"))
def test_backward_interleaved_with_the_steps_has_the_bits_of_after_the_loop(level, dtype, case,
                                                                           num_threads):
    p = contract_problem(*case[:4], 0, case[4], dtype=dtype, seed=sum(case[:4]))
    prev = ck.set_bwd_interleave(False)
    try:
        after = run_contract(ck, p, num_threads)
        ck.set_bwd_interleave(True)
        interleaved = run_contract(ck, p, num_threads)
        ck.set_bwd_interleave(None)
        auto = run_contract(ck, p, num_threads)
    finally:
        ck.set_bwd_interleave(prev)
    for got in (interleaved, auto):
        assert same_bits(got[0], after[0]) and same_bits(got[1], after[1])
    assert_matches(interleaved[1], reference64(p)[1], BWD, dtype)


def test_backward_interleave_setting():
    prev = ck.set_bwd_interleave(True)
    try:
        assert ck.set_bwd_interleave(False) is True
        assert ck.set_bwd_interleave(None) is False
        with pytest.raises(ValueError, match="interleave must be True, False or None"):
            ck.set_bwd_interleave(1)
        assert ck.set_bwd_interleave(None) is None
    finally:
        ck.set_bwd_interleave(prev)


def test_claims_setting():
    with c_claims(True):
        assert ck.set_claims("others-first") is True
        assert ck.set_claims(False) == "others-first"
        assert ck.set_claims(None) is False
        for bad in (1, "others", 0.5):
            with pytest.raises(ValueError, match="mode must be True, False, None or 'others-first'"):
                ck.set_claims(bad)
        assert ck.set_claims(None) is None


def test_huge_preactivations_saturate(level, dtype):
    p = contract_problem(6, 3, 5, 19, dtype=dtype, seed=2)
    p["w"] = tuple(None if w is None else w * dtype(1e30) for w in p["w"])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        fwd, bwd = run_contract(ck, p)
    for a in fwd + (bwd[0], bwd[4], bwd[5]):
        assert np.all(np.isfinite(a))
    gates = fwd[3]
    assert np.all((gates >= -1) & (gates <= 1))
    assert np.isin(gates, [-1, 0, 1]).mean() > 0.9


def test_activations_accuracy(level, dtype):
    """Gates of a 1-unit LSTM with w_ih = 1: the activations themselves, to a few ulp."""
    z = np.concatenate([np.linspace(-30, 30, 4001), np.geomspace(1e-30, 1, 200),
                        -np.geomspace(1e-30, 1, 200), [0.0, -0.0, 1e30, -1e30, 88.0, -88.0,
                                                       700.0, -700.0, 1e-300]]).astype(dtype)
    T = z.size
    p = ck.pack(np.ones((4, 1), dtype), np.zeros((4, 1), dtype), None)
    zeros = np.zeros((1, 1), dtype)
    gates = ck.forward(p, z.reshape(T, 1, 1), zeros, zeros, 1)[3]
    zz = z.astype(np.float64)
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-zz))
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    for k, want in ((0, sig), (1, sig), (2, np.tanh(zz)), (3, sig)):
        got = gates[:, 0, k].astype(np.float64)
        err = np.abs(got - want) / np.maximum(np.abs(want), tiny)
        assert np.all(err[np.abs(want) > 1e3 * tiny] < 8 * eps), (k, np.max(err))


def test_nan_propagates_at_every_level(level, dtype):
    p = contract_problem(4, 3, 5, 6, dtype=dtype)
    p["x"][1, 1, 2] = np.nan
    y, h_n, c_n = run_contract(ck, p)[0][:3]
    assert not np.isnan(y[0]).any() and not np.isnan(y[:, [0, 2]]).any()
    assert np.isnan(y[1:, 1]).all()
    assert np.isnan(h_n[1]).all() and np.isnan(c_n[1]).all()


# (T, B, I, H, lengths): both sides of fwd_fuse_x (B = 1 with I = 64 hoists x.w_ih^T, into
# the workspace when nothing is saved; B = 16 or I <= 16 fuse it into the step), tails,
# lengths with rows that end early or never start
SAVE_CASES = [
    (5, 1, 64, 40, None), (5, 16, 24, 33, None), (5, 5, 3, 17, None), (5, 7, 70, 70, None),
    (5, 6, 40, 45, [5, 4, 2, 2, 1, 1]), (4, 7, 12, 9, [4, 3, 1, 1, 0, 0, 0]),
    (3, 2, 64, 20, [3, 1]), (0, 3, 4, 5, None),
]


@pytest.mark.parametrize("P", (0, 4), ids=lambda p: f"P{p}")
@pytest.mark.parametrize("case", SAVE_CASES, ids=lambda c: "T{}B{}I{}H{}{}".format(
    *c[:4], "" if c[4] is None else "-lengths"))
def test_forward_without_saving_is_bitwise_equal_at_every_level(level, dtype, case, P):
    """save=False (gates and c NULL in the kernel, hoisted products in the workspace):
    y, h_n, c_n are the bits of save=True at 1 and 2 threads; the inputs are untouched."""
    p = contract_problem(*case[:4], P, case[4], dtype, seed=sum(case[:4]) + P)
    packed = ck.pack(*p["w"])
    args = (p["x"], p["h0"], p["c0"])
    want = ck.forward(packed, *args, 1, p["batch_sizes"])
    copies = [a.copy() for a in args]
    for n in (1, 2):
        got = ck.forward(packed, *args, n, p["batch_sizes"], False)
        assert got[3] is None and got[4] is None
        assert same_bits(got[:3], want[:3])
    assert same_bits(args, copies)


def test_a_pack_keeps_its_level_and_status_codes_become_exceptions():
    p = contract_problem(2, 2, 3, 4)
    packed = ck.pack(*p["w"])
    with pytest.raises(ValueError):
        ck.set_simd_level("sse9")
    before = ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    level_before = ck.simd_level()
    ck.set_simd_level(LEVELS[0])
    try:
        after = ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    finally:
        ck.set_simd_level(level_before)
    assert same_bits(before, after)
    # the kernel's own check of batch_sizes (non-increasing, <= B) is a status code
    x = np.zeros((3, 3))
    for bad in ([1, 2], [4, 0]):
        with pytest.raises(ValueError, match="rejected its arguments"):
            ck.forward(packed, x, p["h0"], p["c0"], 1, np.array(bad, np.int64))


@pytest.mark.parametrize("P", [0, 3])
def test_pack_into_an_earlier_pack(P):
    """pack(..., out=old) writes over old's memory when the shapes and dtype match (and says
    so in .generation); otherwise it leaves old alone and returns a new pack."""
    p = contract_problem(5, 3, 7, 9, P, dtype=np.float32, seed=11)
    q = contract_problem(5, 3, 7, 9, P, dtype=np.float32, seed=12)
    old = ck.pack(*p["w"])
    assert old.generation == 0
    want = ck.forward(ck.pack(*q["w"]), q["x"], q["h0"], q["c0"], 1)
    again = ck.pack(*q["w"], out=old)
    assert again is old and old.generation == 1
    assert same_bits(ck.forward(old, q["x"], q["h0"], q["c0"], 1), want)
    w64 = [None if w is None else w.astype(np.float64) for w in q["w"]]
    other = contract_problem(5, 3, 7, 10, P, dtype=np.float32)
    for w in (w64, other["w"]):                 # another dtype, another shape: a new pack
        fresh = ck.pack(*w, out=old)
        assert fresh is not old and old.generation == 1
    assert same_bits(ck.forward(old, q["x"], q["h0"], q["c0"], 1), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_the_binding_makes_start_on_a_cache_line(dtype):
    """Every array of a page or more that forward/backward return starts on 64 bytes
    (NumPy alone gives large arrays 16, and the kernel's vector loads and stores would
    each span two cache lines), is C-contiguous, writeable and outlives the call."""
    p = contract_problem(9, 13, 40, 50, 0, dtype=dtype, seed=3)
    pk = ck.pack(*p["w"])
    y, h_n, c_n, gates, c = ck.forward(pk, p["x"], p["h0"], p["c0"], 1)
    grads = ck.backward(pk, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"], p["dh_n"],
                        p["dc_n"], 1)
    big = [a for a in (y, gates, c) + grads if a is not None and a.nbytes >= 4096]
    assert len(big) >= 5
    for a in big:
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
        assert a.dtype == dtype
    want = gates.copy()
    del y, grads, big
    assert same_bits(gates, want)                  # the buffer lives as long as the view


def test_info():
    info = ck.build_info()
    assert {"compiler", "flags", "simd_levels_compiled", "threading"} <= set(info)
    assert "-march=native" not in info["flags"]
    assert ck.simd_level() in info["simd_levels_compiled"]
    assert ck.cpu_simd_level() in info["simd_levels_compiled"]
    caches = info["caches"]
    assert caches["l1d"] >= 4096 and caches["l2"] >= caches["l1d"] and caches["l3"] >= 0
    assert caches["l2_shared_by"] >= 1 and caches["l3_shared_by"] >= 1
    assert info["caches_from"] in ("cpuid", "sysfs", "cpuid+sysfs", "cpuid (sysfs differs)",
                                   "default")


def _in_subprocess(level, code):
    env = dict(os.environ, LSTM_FAST_SIMD=level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def test_env_var_forces_level():
    code = ("import numpy as np, lstm_fast.backends._c as ck;"
            "w=np.ones((4,1)); p=ck.pack(w,w,None); z=np.zeros((1,1));"
            "y=ck.forward(p, np.ones((2,1,1)), z, z, 1)[0].ravel(); print(ck.simd_level())")
    for level in LEVELS:
        r = _in_subprocess(level, code)
        assert r.returncode == 0, r.stderr
        # the last line: an editable install that rebuilds on import may log to stdout first
        assert r.stdout.split()[-1] == level
    r = _in_subprocess("avx1024", code)
    assert r.returncode != 0
    assert "RuntimeError" in r.stderr and "LSTM_FAST_SIMD" in r.stderr


def test_gil_released_during_kernel_calls():
    """Another Python thread runs while a kernel call is in progress (forward and
    backward): the binding releases the GIL around every call."""
    p = contract_problem(200, 64, 128, 128, dtype=np.float32, seed=4)   # ~10-20 ms per call
    packed = ck.pack(*p["w"])
    y, _, _, gates, c = ck.forward(packed, p["x"], p["h0"], p["c0"], 1)
    calls = {
        "forward": lambda: ck.forward(packed, p["x"], p["h0"], p["c0"], 1),
        "backward": lambda: ck.backward(packed, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"],
                                        p["dh_n"], p["dc_n"], 1),
    }
    for name, call in calls.items():
        started, done = threading.Event(), threading.Event()

        def worker():
            started.set()
            call()
            done.set()

        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        ticks = 0
        while not done.is_set():
            ticks += 1
        t.join()
        # with the GIL held, this loop could not run until the call returned
        assert ticks > 1000, (name, ticks)


def test_the_level_fixtures_restore_the_level_in_force(level):
    """A test that switches the level in-process gives back the one in force before it, not
    the CPU's widest: with LSTM_FAST_SIMD=avx2 the rest of the suite must go on at avx2 (a
    Dask worker started later picks avx2 from the environment, and its bits must match)."""
    assert ck.simd_level() == level


def test_the_level_is_back_after_the_level_tests():
    """(Runs after this file's level-parametrized tests.)"""
    import os
    want = os.environ.get("LSTM_FAST_SIMD", "").strip().lower() or ck.cpu_simd_level()
    assert ck.simd_level() == want
