"""lstm_fast.torch.LSTM(recurrent_dropout=p, zoneout=z) (issue 15): the masks drawn from
torch's generator per layer-direction and call (recurrent dropout (B, R) in training only,
zoneout (T, B, H), the expectation 1 - z in eval); with the same masks, the same outputs,
states and every gradient as the NumPy layer on every backend, float32 and float64 (with
lengths, with the other variants); finite differences (gradcheck) in float64 with fixed
masks; torch.manual_seed repeats a call; errors naming the option where torch's fallback or
torch.compile would run."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_fast import torch as ltorch  # noqa: E402

from _support import (BACKENDS, assert_close, assert_torch_matches_layer,  # noqa: E402
                      torch_and_layer, torch_inputs)
from test_torch_module import _one_torch_thread  # noqa: E402,F401

KINDS = {
    "rdrop": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout=0.3),
    "both": dict(recurrent_dropout=0.4, zoneout=0.3),
    "both_all_variants": dict(recurrent_dropout=0.4, zoneout=0.3, peephole=True, clip=0.4,
                              cell_clip=0.3, cifg=True),
}


def _pair(kw, backend, dtype, I=3, H=5, layers=2, bidirectional=True, proj_size=0):
    """(torch module, NumPy layer) with the same parameters (no inter-layer dropout: it comes
    from torch's generator in the module, from the layer's own in the layer)."""
    return torch_and_layer(kw, backend, dtype, I, H, layers, bidirectional, proj_size)


def _record(m):
    """Spy on the module's mask draws: the list of (rdrop, zoneout) per layer-direction."""
    seen = []
    draw = m._masks

    def spy(T, B, dtype):
        masks = draw(T, B, dtype)
        seen.append(masks)
        return masks
    m._masks = spy
    return seen


def _replay(layer, seen):
    """The layer draws the recorded masks, in its order (per layer-direction: rdrop, zoneout)."""
    rd = [r for r, _ in seen if r is not None]
    zo = [z for _, z in seen if z is not None]
    layer._rdrop_mask = lambda B: rd.pop(0)
    layer._zoneout_mask = lambda T, B: zo.pop(0)
    return rd, zo


_SHAPES = {"T6B4I3H5": (6, 4, 3, 5, 0), "T1B1I2H1": (1, 1, 2, 1, 0), "T5B3I7H9P4": (5, 3, 7, 9, 4)}
# zoneout needs no projection (test_bad_options): zoneout alone is not run with one
_CASES = [(kind, shape) for kind in KINDS for shape in _SHAPES
          if not (kind == "zoneout" and _SHAPES[shape][4])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,shape", _CASES, ids=[f"{k}-{s}" for k, s in _CASES])
def test_module_equals_the_layer(backend, dtype, kind, shape, _one_torch_thread):
    T, B, I, H, P = _SHAPES[shape]
    kw = dict(KINDS[kind])
    if P:
        kw.pop("zoneout", None)
    m, layer = _pair(kw, backend, dtype, I, H, proj_size=P)
    seen = _record(m)
    rng = np.random.default_rng(1)
    R = P or H
    (x, h0, c0), tensors = torch_inputs(rng, T, B, I, H, P, dtype)
    xt, h0t, c0t = tensors
    y, (h_n, c_n) = m(xt, (h0t, c0t))
    assert len(seen) == 4
    for rd, zo in seen:
        assert (rd is not None) == ("recurrent_dropout" in kw)
        assert (zo is not None) == ("zoneout" in kw)
        if rd is not None:
            assert rd.shape == (B, R) and rd.dtype == dtype
            assert set(np.unique(rd)) <= {0, dtype(1 / 0.6)}
        if zo is not None:
            assert zo.shape == (T, B, H) and zo.dtype == dtype and set(np.unique(zo)) <= {0, 1}
    rd, zo = _replay(layer, seen)
    ey, (eh, ec) = layer.forward(x, (h0, c0))
    assert rd == [] and zo == []
    assert_torch_matches_layer(m, layer, tensors, (y, (h_n, c_n)), (ey, (eh, ec)), dtype, rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_sequence_and_no_grad(backend, _one_torch_thread):
    """Lengths (PackedSequence): the same as the layer with lengths; without a gradient
    (torch.no_grad) the same masks from the same seed and the same outputs."""
    m, layer = _pair(KINDS["both"], backend, np.float64)
    seen = _record(m)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 3, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x).requires_grad_(True),
                                                     torch.tensor(lengths))
    torch.manual_seed(7)
    out, (h_n, c_n) = m(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    _replay(layer, seen)
    ey, (eh, ec) = layer.forward(x, lengths=lengths)
    assert_close(y.detach().numpy(), ey, np.float64, "y")
    assert_close(h_n.detach().numpy(), eh, np.float64, "h_n")
    assert_close(c_n.detach().numpy(), ec, np.float64, "c_n")
    torch.manual_seed(7)
    with torch.no_grad():
        out2, (h2, c2) = m(packed)
    assert torch.equal(out2.data, out.data.detach()) and torch.equal(h2, h_n) and torch.equal(c2, c_n)


def test_seeded_and_drawn_per_call(_one_torch_thread):
    """torch.manual_seed repeats a training call's masks (and outputs); the next call draws
    new ones; the masks change the output."""
    m, _ = _pair(KINDS["both"], "c", np.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(3)
    a = m(x)[0]
    b = m(x)[0]
    torch.manual_seed(3)
    assert torch.equal(m(x)[0], a)
    assert not torch.equal(a, b)
    plain, _ = _pair({}, "c", np.float64)
    assert not torch.allclose(a, plain(x)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval(backend, _one_torch_thread):
    """Eval: no recurrent dropout (the plain module's output), zoneout's expectation (the
    layer's eval output); nothing drawn from torch's generator."""
    rd, _ = _pair(KINDS["rdrop"], backend, np.float64)
    plain, _ = _pair({}, backend, np.float64)
    zo, layer = _pair(KINDS["both"], backend, np.float64)
    for mod in (rd, plain, zo):
        mod.eval()
    layer.eval()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    state = torch.get_rng_state()
    assert torch.equal(rd(x)[0], plain(x)[0])
    y, (h, c) = zo(x)
    assert torch.equal(torch.get_rng_state(), state)
    ey, (eh, ec) = layer.forward(x.numpy())
    assert_close(y.detach().numpy(), ey, np.float64, "y")
    assert_close(h.detach().numpy(), eh, np.float64, "h_n")
    assert_close(c.detach().numpy(), ec, np.float64, "c_n")
    with torch.no_grad():
        assert torch.equal(zo(x)[0], y.detach())


@pytest.mark.parametrize("kind", ["rdrop", "zoneout", "both"])
def test_gradcheck_float64(kind, _one_torch_thread):
    """Finite differences with the masks of one draw held fixed."""
    torch.manual_seed(0)
    m = ltorch.LSTM(2, 3, num_layers=2, bidirectional=True, backend="c", dtype=torch.float64,
                    **KINDS[kind])
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    fixed = itertools.cycle([m._masks(3, 2, np.dtype(np.float64)) for _ in range(4)])
    m._masks = lambda T, B, dtype: next(fixed)   # 4 layer-directions a call: the same masks
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return out[0], out[1][0], out[1][1]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    assert torch.autograd.gradcheck(f, (x,) + params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw, match", [
    (dict(recurrent_dropout=1.0), "recurrent_dropout"), (dict(recurrent_dropout=-0.1), "recurrent_dropout"),
    (dict(recurrent_dropout=True), "recurrent_dropout"), (dict(recurrent_dropout="0.1"), "recurrent_dropout"),
    (dict(zoneout=float("nan")), "zoneout"), (dict(zoneout=0.1, proj_size=2), "zoneout"),
    (dict(zoneout=0.1, backend="torch"), "zoneout"),
    (dict(recurrent_dropout=0.1, backend="torch"), "recurrent_dropout"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        ltorch.LSTM(3, 4, **kw)


def test_no_torch_fallback_and_no_compile():
    m = ltorch.LSTM(3, 4, recurrent_dropout=0.2, zoneout=0.1)
    assert "recurrent_dropout=0.2, zoneout=0.1" in repr(m)
    with pytest.raises(RuntimeError, match="recurrent_dropout=0.2, zoneout=0.1"):
        m(torch.randn(2, 1, 3, dtype=torch.float64))          # dtype other than the weights'
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.compile and torch.export do not carry"):
        torch.compile(m, fullgraph=True)(torch.randn(2, 1, 3))
    torch._dynamo.reset()
