"""The backend contract (``lstm_fast.backends``), one test body for every backend.

Each backend module's pack/forward/backward/step is called directly, over backend x
dtype x projection x lengths x thread count, against the NumPy reference evaluated in
float64 on the same values; gradients are also checked by finite differences in
float64. Backend-specific behaviour lives in test_ckernel.py (SIMD levels, build
info), test_numba.py (compilation, cache, Numba's threads) and test_threads.py (the C
thread pool).
"""

import numpy as np
import pytest

from lstm_fast import backends

from _support import (BACKENDS, BITWISE_BACKENDS, BWD, FWD, assert_close, assert_matches,
                      central_difference, contract_problem, reference64, run_contract, same_bits)

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 1, 1, 1),
    (1, 4, 3, 5),
    (6, 32, 3, 32),     # churn
    (5, 3, 7, 17),      # odd H, I != H
    (4, 2, 33, 33),
    (3, 5, 64, 1),      # H = 1
    (2, 1, 1, 40),
    (64, 2, 3, 4),      # longer T
    (9, 16, 40, 24),    # B = 16: the C step does x_t.w_ih^T itself
    (8, 7, 96, 129),    # I > 16 and H past a multiple of the vector width
]
# (shape, P): no projection, and P = H // 3 where H allows one (P < H)
CASES = [(s, 0) for s in SHAPES] + [(s, max(1, s[3] // 3)) for s in SHAPES if s[3] > 1]
IDS = ["T{}B{}I{}H{}P{}".format(*s, P) for s, P in CASES]


def _lengths(T, B):
    """Ragged lengths for B sequences, longest first: one full, one of 1, zeros if B > 2."""
    if B == 1:
        return [T]
    return sorted([T, 1] + [max(0, T - 2 - 3 * k) for k in range(B - 2)], reverse=True)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("shape,P", CASES, ids=IDS)
def test_matches_reference(impl, dtype, shape, P, ragged, num_threads):
    T, B, I, H = shape
    p = contract_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype,
                         seed=hash(shape) % 1000)
    fwd, bwd = run_contract(impl, p, num_threads)
    want_fwd, want_bwd = reference64(p)
    assert_matches(fwd, want_fwd, FWD, dtype)
    assert_matches(bwd, want_bwd, BWD, dtype)


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 3])
@pytest.mark.parametrize("name", [b for b in BACKENDS if b in BITWISE_BACKENDS])
def test_bits_do_not_depend_on_num_threads(name, dtype, P, ragged):
    """(The reference hands its products to BLAS, whose bits may depend on threads.)"""
    impl = backends.get(name)
    T, B, I, H = 9, 20, 24, 40
    p = contract_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype, seed=5)
    want = run_contract(impl, p, 1)
    for n in (2, 3):
        got = run_contract(impl, p, n)
        assert same_bits(got[0], want[0]) and same_bits(got[1], want[1]), n


@pytest.mark.parametrize("P", [0, 2])
def test_pack_returns_a_typed_object(impl, dtype, P):
    p = contract_problem(2, 3, 5, 7, P, None, dtype)
    packed = impl.pack(*p["w"])
    assert (packed.input_size, packed.hidden_size, packed.proj_size) == (5, 7, P)
    assert packed.dtype == dtype and packed.has_bias
    assert not impl.pack(p["w"][0], p["w"][1], None, p["w"][3]).has_bias


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 3])
def test_save_false_keeps_nothing_and_gives_the_same_outputs(impl, dtype, P, ragged):
    T, B, I, H = 7, 5, 6, 11
    p = contract_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype, seed=2)
    packed = impl.pack(*p["w"])
    args = (packed, p["x"], p["h0"], p["c0"], 1, p["batch_sizes"])
    y, h_n, c_n, gates, c = impl.forward(*args, save=True)
    y2, h2, c2, gates2, cs2 = impl.forward(*args, save=False)
    assert gates2 is None and cs2 is None and gates is not None and c is not None
    assert same_bits((y2, h2, c2), (y, h_n, c_n))


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 3])
def test_need_dx_false_gives_no_dx_and_the_same_other_gradients(impl, dtype, P, ragged):
    """need_dx=False (the input needs no gradient): dx is None, every other output has the
    bits of need_dx=True."""
    T, B, I, H = 7, 5, 6, 11
    p = contract_problem(T, B, I, H, P, _lengths(T, B) if ragged else None, dtype, seed=3)
    packed = impl.pack(*p["w"])
    y, _, _, gates, c = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, p["batch_sizes"])
    args = (packed, p["x"], p["h0"], p["c0"], y, gates, c, p["dy"], p["dh_n"], p["dc_n"], 1,
            p["batch_sizes"])
    want = impl.backward(*args)
    got = impl.backward(*args, need_dx=False)
    assert got[0] is None and want[0] is not None
    assert same_bits(got[1:], want[1:])


@pytest.mark.parametrize("P", [0, 3])
def test_out_writes_the_callers_arrays_and_updates_state_in_place(impl, dtype, P):
    T, B, I, H = 6, 4, 5, 9
    R = P or H
    p = contract_problem(T, B, I, H, P, None, dtype, seed=3)
    packed = impl.pack(*p["w"])
    y, h_n, c_n, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1)
    out = (np.empty((T, B, R), dtype), np.empty((B, R), dtype), np.empty((B, H), dtype))
    got = impl.forward(packed, p["x"], p["h0"], p["c0"], 1, None, False, out)
    assert all(g is o for g, o in zip(got[:3], out)) and same_bits(out, (y, h_n, c_n))
    h, c = p["h0"].copy(), p["c0"].copy()         # h_n is h0, c_n is c0: in place
    got = impl.forward(packed, p["x"], h, c, 1, None, False, (None, h, c))
    assert got[1] is h and got[2] is c
    assert same_bits((got[0], h, c), (y, h_n, c_n))


@pytest.mark.parametrize("B", [1, 5, 16])    # 16: the C step does x_t.w_ih^T itself
@pytest.mark.parametrize("P", [0, 3])
def test_steps_and_chunks_equal_the_whole_sequence(impl, dtype, B, P):
    T, I, H = 7, 6, 10
    R = P or H
    p = contract_problem(T, B, I, H, P, None, dtype, seed=4)
    packed = impl.pack(*p["w"])
    y, h_n, c_n, _, _ = impl.forward(packed, p["x"], p["h0"], p["c0"], 1)
    h, c = p["h0"].copy(), p["c0"].copy()
    ys = [impl.step(packed, p["x"][t], h, c, 1) for t in range(3)]
    yt = np.empty((B, R), dtype)
    ys.append(impl.step(packed, p["x"][3], h, c, 1, yt))
    assert ys[-1] is yt
    chunk = impl.forward(packed, p["x"][4:], h, c, 1, None, False, (None, h, c))[0]
    got = (np.concatenate([np.stack(ys), chunk]), h, c)
    if backends.name_of(impl) in BITWISE_BACKENDS:
        assert same_bits(got, (y, h_n, c_n))
    else:
        for name, a, e in zip(("y", "h_n", "c_n"), got, (y, h_n, c_n)):
            assert_close(a, e, dtype, name)


def test_padded_is_full_batch_sizes(impl, dtype):
    T, B, I, H = 5, 3, 4, 6
    p = contract_problem(T, B, I, H, 0, None, dtype, seed=6)
    q = dict(p, batch_sizes=np.full(T, B, np.int64))
    q.update({k: p[k].reshape(T * B, -1) for k in ("x", "dy")})
    fwd, bwd = run_contract(impl, p)
    fwd2, bwd2 = run_contract(impl, q)
    for name, a, e in zip(FWD + BWD, fwd + bwd, fwd2 + bwd2):
        if e is not None:
            np.testing.assert_array_equal(a.reshape(e.shape), e, err_msg=name)


def test_empty_sequence(impl, dtype):
    p = contract_problem(0, 3, 4, 5, 0, None, dtype)
    (y, h_n, c_n, gates, c), (dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr) = run_contract(impl, p)
    assert y.shape == (0, 3, 5) and gates.shape == (0, 3, 20) and c.shape == (0, 3, 5)
    assert np.array_equal(h_n, p["h0"]) and np.array_equal(c_n, p["c0"])
    assert not np.shares_memory(h_n, p["h0"])
    assert dx.shape == (0, 3, 4) and dw_hr is None
    assert not dw_ih.any() and not dw_hh.any() and not db.any() and db.shape == (20,)
    assert np.array_equal(dh0, p["dh_n"]) and np.array_equal(dc0, p["dc_n"])


def test_without_bias_db_is_none(impl, dtype):
    p = contract_problem(4, 3, 5, 6, 0, None, dtype, bias=False)
    fwd, bwd = run_contract(impl, p)
    assert bwd[3] is None
    want_fwd, want_bwd = reference64(p)
    assert_matches(fwd, want_fwd, FWD, dtype)
    assert_matches(bwd, want_bwd, BWD, dtype)


@pytest.mark.parametrize("P", [0, 2])
def test_gradients_match_finite_differences(impl, P):
    """Every gradient of L = sum(dy*y) + sum(dh_n*h_n) + sum(dc_n*c_n), in float64."""
    T, B, I, H = 3, 2, 3, 4
    p = contract_problem(T, B, I, H, P, [3, 2], np.float64, seed=7)

    def loss(q):
        packed = impl.pack(*q["w"])
        y, h_n, c_n, _, _ = impl.forward(packed, q["x"], q["h0"], q["c0"], 1, q["batch_sizes"])
        return float((q["dy"] * y).sum() + (q["dh_n"] * h_n).sum() + (q["dc_n"] * c_n).sum())

    _, (dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr) = run_contract(impl, p)
    grads = {("x",): dx, ("h0",): dh0, ("c0",): dc0, ("w", 0): dw_ih, ("w", 1): dw_hh,
             ("w", 2): db}
    if P:
        grads[("w", 3)] = dw_hr
    for key, g in grads.items():
        arr = p[key[0]] if len(key) == 1 else p["w"][key[1]]
        fd = central_difference(lambda: loss(p), arr)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8, err_msg=str(key))


@pytest.mark.parametrize("value", [1e30, -1e30, 1e4])
def test_huge_preactivations_saturate_without_warnings(impl, dtype, value):
    p = contract_problem(3, 2, 3, 4, 0, None, dtype, seed=8)
    p["w"] = (p["w"][0], p["w"][1], np.full(16, value, dtype), None)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        fwd, bwd = run_contract(impl, p)
    for name, a in zip(FWD + BWD, fwd + bwd):
        if a is not None:
            assert np.all(np.isfinite(a)), name
    want_fwd, _ = reference64(p)
    assert_matches(fwd, want_fwd, FWD, dtype)


@pytest.mark.parametrize("where", ["x", "h0", "c0", "dy"])
def test_nan_and_inf_propagate_like_the_reference(impl, dtype, where):
    p = contract_problem(4, 3, 3, 5, 0, None, dtype, seed=9)
    p[where][(0,) * p[where].ndim] = np.nan
    p[where].flat[-1] = np.inf
    with np.errstate(all="ignore"):
        got = run_contract(impl, p)
        want = reference64(p)
    for name, a, e in zip(FWD + BWD, got[0] + got[1], want[0] + want[1]):
        if e is None:
            continue
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=name)
        np.testing.assert_array_equal(np.isinf(a), np.isinf(e), err_msg=name)
        fin = np.isfinite(e)
        assert_close(a[fin], e[fin], dtype, name)


def test_backends_agree_with_each_other(dtype):
    p = contract_problem(6, 5, 7, 9, 2, [6, 4, 4, 1, 0], dtype, seed=10)
    results = {name: run_contract(backends.get(name), p) for name in BACKENDS}
    first, *others = results
    for name in others:
        for names, a, b in ((FWD, results[first][0], results[name][0]),
                            (BWD, results[first][1], results[name][1])):
            assert_matches(a, b, names, dtype)


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("P", [0, 2])
def test_states_with_a_leading_axis(impl, dtype, P, ragged):
    """States (1, B, R), (1, B, H) (a layer's states of one layer-direction, no view): the
    same bits as (B, R), (B, H), and h_n, c_n, dh0, dc0 come back in the states' shapes."""
    T, B, I, H = 5, 3, 4, 6
    p = contract_problem(T, B, I, H, P, [5, 3, 1] if ragged else None, dtype, seed=7)
    fwd2, bwd2 = run_contract(impl, p, 1)
    q = dict(p, **{k: p[k][None] for k in ("h0", "c0", "dh_n", "dc_n")})
    fwd3, bwd3 = run_contract(impl, q, 1)
    for got, want, k in ((fwd3[1], fwd2[1], "h_n"), (fwd3[2], fwd2[2], "c_n"),
                         (bwd3[4], bwd2[4], "dh0"), (bwd3[5], bwd2[5], "dc0")):
        assert got.shape == (1,) + want.shape, k
        np.testing.assert_array_equal(got[0], want, err_msg=k)
    for got, want in zip(fwd3[:1] + fwd3[3:] + bwd3[:4] + bwd3[6:],
                         fwd2[:1] + fwd2[3:] + bwd2[:4] + bwd2[6:]):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)
