"""The LSTM variants of issue 15 (peepholes, gate clip, cell clip, coupled gates), float32,
one thread, c backend, at (32, 16, 64, 64) and (32, 64, 256, 256):

* ``test_layer_norm_cost``: the layer-normalized LSTM vs the plain LSTM on the same backend
  (c, numba), forward and training step.

* ``test_variant_cost``: each variant on vs the plain LSTM, forward and training step
  (lstm_fast.LSTM, the NumPy-array layer); target <= 1.25x the plain LSTM's time.
* ``test_variant_vs_users``: a peephole LSTM with gate and cell clip, training step, our
  ``lstm_fast.torch.LSTM`` vs what users run today: an eager loop over LSTMCell-style torch
  ops and its TorchScript version (benchmarks/competitors/peephole_lstm.py); targets >= 5x at
  (32, 16, 64, 64) and >= 2x at (32, 64, 256, 256).

Every runner is checked against the NumPy reference layer (same weights) before and after
timing (tests/test_variant_competitor.py checks the competitor's gradients too).
The (32, 64, 256, 256) cases are marked ``large`` (left out unless ``-m`` names ``large``).
Run: ``python -m pytest benchmarks/bench_variants.py --benchmark-enable -m "large or not large"``.
"""

import numpy as np
import pytest

import lstm_fast

from . import harness

SHAPES = {"medium": (32, 16, 64, 64), "large256": (32, 64, 256, 256)}
CLIP = 3.0          # reached by some gate pre-activations of the problem below
CELL_CLIP = 1.0     # reached by some cells
VARIANTS = {
    "plain": {},
    "peephole": dict(peephole=True),
    "clip": dict(clip=CLIP),
    "cell_clip": dict(cell_clip=CELL_CLIP),
    "cifg": dict(cifg=True),
    "peephole+clip+cifg": dict(peephole=True, clip=CLIP, cifg=True),
    "all": dict(peephole=True, clip=CLIP, cell_clip=CELL_CLIP, cifg=True),
    "zoneout": dict(zoneout=0.1),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "layer_norm": dict(layer_norm=True),
    "layer_norm+zoneout+rdrop": dict(layer_norm=True, zoneout=0.1, recurrent_dropout=0.25),
}
MASKS = ("zoneout", "recurrent_dropout")   # drawn per call in training: the stream restarts
USERS_VARIANT = dict(peephole=True, clip=CLIP, cell_clip=CELL_CLIP)
USERS = ("lstm_fast.torch[c]", "torch eager loop", "torchscript loop")
DTYPE = "float32"
THREADS = 1


def _marks(shape):
    return [pytest.mark.large] if shape == "large256" else []


def _problem(shape, kw):
    """(state_dict, x, hx, dy) for one layer with ``kw``'s parameters: torch's scale, weights
    times 2 so that the clamps bind at some steps (with layer norm times 1, gains and c bias
    at their initial values: times 2 makes the recurrence chaotic, float32 and float64
    differ by 0.05 after 32 steps, beyond any tolerance)."""
    T, B, I, H = SHAPES[shape]
    layer = lstm_fast.LSTM(I, H, dtype=DTYPE, seed=0, backend="numpy", **kw)
    f = 1 if "layer_norm" in kw else 2   # test_layer_norm_cost: both of its cases
    sd = {k: (f * v).astype(DTYPE) for k, v in layer.state_dict().items()}
    p = harness.make_problem(T, B, I, H, DTYPE)
    return sd, p["x"], (p["h0"][None], p["c0"][None]), p["dy"]


def _expected(case, shape, kw):
    """The NumPy reference layer's outputs (and gradients for a training step)."""
    sd, x, hx, dy = _problem(shape, kw)
    ref = lstm_fast.LSTM(SHAPES[shape][2], SHAPES[shape][3], dtype=DTYPE, backend="numpy",
                         seed=0, **kw)
    ref.load_state_dict(sd)
    if case == "forward":
        ref.eval()
        y, _ = ref(x, hx)
        return dict(y=y)
    ref.train()
    y, _ = ref(x, hx)
    dx, _ = ref.backward(dy)
    return dict(y=y, dx=dx, **{k: ref.grads[k] for k in ("weight_hh_l0", "bias_ih_l0")},
                **({"weight_ci_l0": ref.grads["weight_ci_l0"]} if kw.get("peephole") else {}))


def _ours(case, shape, kw, backend="c"):
    sd, x, hx, dy = _problem(shape, kw)
    layer = lstm_fast.LSTM(SHAPES[shape][2], SHAPES[shape][3], dtype=DTYPE, backend=backend,
                           seed=0, **kw)
    layer.load_state_dict(sd)
    if case == "forward":   # eval: zoneout's expectation, no recurrent dropout
        layer.eval()
        return harness.Runner(f"lstm_fast[{backend}]", lambda: layer(x, hx), lambda r: dict(y=r[0]))
    layer.train()
    state = layer._dropout_rng.bit_generator.state
    masks = any(kw.get(m) for m in MASKS)

    def fn():
        if masks:   # the same masks every call (as _masked_layer), checked against the reference's
            layer._dropout_rng.bit_generator.state = state
        y, _ = layer(x, hx)
        dx, _ = layer.backward(dy)
        return y, dx, layer.grads
    return harness.Runner(f"lstm_fast[{backend}]", fn, lambda r: dict(y=r[0], dx=r[1], **r[2]))


def _user(who, shape, kw):
    """A training step of ``who`` (USERS) on the peephole LSTM with clipping."""
    import torch
    sd, x, hx, dy = _problem(shape, kw)
    I, H = SHAPES[shape][2], SHAPES[shape][3]
    if who == "lstm_fast.torch[c]":
        import lstm_fast.torch
        m = lstm_fast.torch.LSTM(I, H, backend="c", **kw)
    else:
        from .competitors.peephole_lstm import PeepholeLSTM
        m = PeepholeLSTM(I, H, clip=kw.get("clip", 0.0), cell_clip=kw.get("cell_clip", 0.0),
                         script=who == "torchscript loop")
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    m.train()
    x = torch.from_numpy(x).requires_grad_(True)
    hx = tuple(map(torch.from_numpy, hx))
    dy = torch.from_numpy(dy)
    params = dict(m.named_parameters())

    def fn():
        for q in params.values():
            q.grad = None
        x.grad = None
        y, _ = m(x, hx)
        y.backward(dy)
        return y

    fn()    # first-call costs (torch's autograd, TorchScript's profiling runs) not in the check's
    fn()    # time, which would otherwise switch the harness to 5 single rounds

    def extract(y):
        return dict(y=y.detach().numpy(), dx=x.grad.numpy(),
                    **{k: params[k].grad.numpy() for k in ("weight_hh_l0", "bias_ih_l0",
                                                           "weight_ci_l0")})
    return harness.Runner(who, fn, extract)


def _bench(benchmark, runner, want, group, extra):
    harness.run_checked(benchmark, runner, want, DTYPE, extra["threads"], group, extra,
                        rounds=5 if extra["shape"] == "large256" else None)


@pytest.mark.parametrize("case", ["forward", "train"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [pytest.param(s, marks=_marks(s)) for s in SHAPES])
def test_variant_cost(benchmark, shape, variant, case):
    kw = VARIANTS[variant]
    T, B, I, H = SHAPES[shape]
    _bench(benchmark, _ours(case, shape, kw), _expected(case, shape, kw),
           f"variants {case} {DTYPE} T,B,I,H={T},{B},{I},{H} threads={THREADS}",
           dict(case=case, shape=shape, variant=variant, T=T, B=B, I=I, H=H, dtype=DTYPE,
                threads=THREADS, competitor=f"lstm_fast[c] {variant}"))


@pytest.mark.parametrize("who", USERS)
@pytest.mark.parametrize("shape", [pytest.param(s, marks=_marks(s)) for s in SHAPES])
def test_variant_vs_users(benchmark, shape, who):
    pytest.importorskip("torch")
    T, B, I, H = SHAPES[shape]
    _bench(benchmark, _user(who, shape, USERS_VARIANT), _expected("train", shape, USERS_VARIANT),
           f"peephole+clip+cell_clip train {DTYPE} T,B,I,H={T},{B},{I},{H} threads={THREADS}",
           dict(case="train", shape=shape, variant="peephole+clip+cell_clip", T=T, B=B, I=I,
                H=H, dtype=DTYPE, threads=THREADS, competitor=who))


RDROP = 0.25


def _masked_layer(shape, backend, **masks):
    """A layer with ``masks`` (recurrent_dropout=p, zoneout=z) in training mode whose
    dropout stream restarts at every call (the same masks every call, so that the result
    can be checked); the restart is a bit-generator state assignment (~1 us) inside the
    timed step."""
    sd, x, hx, dy = _problem(shape, {})
    layer = lstm_fast.LSTM(SHAPES[shape][2], SHAPES[shape][3], dtype=DTYPE, backend=backend,
                           seed=0, **masks)
    layer.load_state_dict(sd)
    layer.train()
    state = layer._dropout_rng.bit_generator.state

    def fn():
        layer._dropout_rng.bit_generator.state = state
        y, _ = layer(x, hx)
        dx, _ = layer.backward(dy)
        return y, dx, layer.grads
    return fn


def _masked_cost(benchmark, shape, **masks):
    """A training step of _masked_layer on the c backend, checked against the numpy one's."""
    T, B, I, H = SHAPES[shape]
    variant = "+".join(masks)
    want = _masked_layer(shape, "numpy", **masks)()
    runner = harness.Runner("lstm_fast[c]", _masked_layer(shape, "c", **masks),
                            lambda r: dict(y=r[0], dx=r[1], **r[2]))
    _bench(benchmark, runner, dict(y=want[0], dx=want[1], **want[2]),
           f"variants train {DTYPE} T,B,I,H={T},{B},{I},{H} threads={THREADS}",
           dict(case="train", shape=shape, variant=variant, T=T, B=B, I=I, H=H,
                dtype=DTYPE, threads=THREADS, competitor=f"lstm_fast[c] {variant}"))


@pytest.mark.parametrize("shape", [pytest.param(s, marks=_marks(s)) for s in SHAPES])
def test_recurrent_dropout_cost(benchmark, shape):
    """Training step with recurrent_dropout=0.25 (compare with test_variant_cost's plain
    train in the same run): the C forward masks a per-thread copy of h_{t-1} every step (B*R
    multiplies), the backward multiplies the dh tiles by the mask and builds h_{t-1} * mask
    of every row (N*R) for dw_hh."""
    _masked_cost(benchmark, shape, recurrent_dropout=RDROP)


@pytest.mark.parametrize("shape", [pytest.param(s, marks=_marks(s)) for s in SHAPES])
def test_zoneout_cost(benchmark, shape):
    """Training step with zoneout=0.1 (compare with test_variant_cost's plain train in the
    same run): drawing the (T, B, H) mask, the zoned h in the forward cell, the carried
    gradient in the backward cell."""
    _masked_cost(benchmark, shape, zoneout=0.1)


LN_CASES = {"c plain": ("c", dict(layer_norm=False)), "c layer_norm": ("c", dict(layer_norm=True)),
            "numba plain": ("numba", dict(layer_norm=False)),
            "numba layer_norm": ("numba", dict(layer_norm=True))}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["forward", "train"])
@pytest.mark.parametrize("variant", list(LN_CASES))
@pytest.mark.parametrize("shape", [pytest.param(s, marks=_marks(s)) for s in SHAPES])
def test_layer_norm_cost(benchmark, shape, variant, case, threads):
    """The layer-normalized LSTM (csrc/lnorm.template.c, backends/numba/lnorm.py) against the
    plain LSTM on the same backend, on 1 and 2 threads; gains and c bias at their initial
    values (ones, zeros)."""
    backend, kw = LN_CASES[variant]
    if backend not in lstm_fast.available_backends():
        pytest.skip(f"{backend} is not available")
    T, B, I, H = SHAPES[shape]
    _bench(benchmark, _ours(case, shape, kw, backend), _expected(case, shape, kw),
           f"layer norm {case} {DTYPE} T,B,I,H={T},{B},{I},{H} threads={threads}",
           dict(case=case, shape=shape, variant=variant, T=T, B=B, I=I, H=H, dtype=DTYPE,
                threads=threads, competitor=f"lstm_fast[{variant}]"))
