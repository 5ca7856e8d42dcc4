"""lstm_fast.torch.LSTM(layer_norm=True) (issue 15, haste's LayerNormLSTM): the NumPy layer's
parameters (names, shapes, order, initial values; torch's seeded values kept), the same
outputs, states and every gradient (the layer-norm gains and c bias included) as the NumPy
layer on the numpy, numba and c backends, float32 and float64, alone, with the other variants
and with the recurrent dropout and zoneout masks, with lengths, in training and eval;
finite differences (gradcheck) in float64; optimizer steps on the layer-norm parameters are
seen; errors naming the option (proj_size, cifg, torch's fallback,
torch.compile)."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lstm_fast  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from _support import (assert_close, assert_state_dict_and_pickle_round_trip,  # noqa: E402
                      assert_torch_matches_layer, torch_and_layer, torch_inputs)
from test_torch_module import _one_torch_thread  # noqa: E402,F401
from test_torch_recurrent import _record, _replay  # noqa: E402

LN_BACKENDS = tuple(b for b in lstm_fast.available_backends() if b in ("numpy", "numba", "c"))
COMBOS = {
    "ln": dict(layer_norm=True),
    "ln_variants": dict(layer_norm=True, peephole=True, clip=0.8, cell_clip=0.6),
    "ln_masks": dict(layer_norm=True, recurrent_dropout=0.4, zoneout=0.3),
}
_SHAPES = {"T6B4I3H5": (6, 4, 3, 5), "T1B1I2H1": (1, 1, 2, 1), "T5B3I7H9": (5, 3, 7, 9)}


def _pair(kw, backend, dtype, I=3, H=5, layers=2, bidirectional=True, seed=0):
    """(torch module, NumPy layer) with the same parameters; the layer-norm ones moved off
    their ones and zeros (so that their gradients and the gains' effect are tested). The
    layer runs the reference (backend "numpy") in float64, and the module's own backend in
    float32: float32's rounding differs between the NumPy and Numba backends by more than
    float32's test tolerance where the clamps and the layer norms' column sums amplify it
    (each backend's float32 against the float64 reference: test_layer_norm)."""
    m, _ = torch_and_layer(kw, backend, dtype, I, H, layers, bidirectional, 0, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.5 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 0.25)
    layer = lstm_fast.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                           backend="numpy" if dtype == np.float64 else backend, **kw)
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    return m, layer


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("shape", list(_SHAPES))
def test_module_equals_the_layer(backend, dtype, combo, shape, _one_torch_thread):
    T, B, I, H = _SHAPES[shape]
    m, layer = _pair(COMBOS[combo], backend, dtype, I, H)
    assert m.backend == backend
    assert list(m.state_dict()) == list(layer.state_dict())
    for name, p in m.named_parameters():
        assert tuple(p.shape) == layer.state_dict()[name].shape, name
    seen = _record(m)
    rng = np.random.default_rng(1)
    (x, h0, c0), tensors = torch_inputs(rng, T, B, I, H, 0, dtype)
    y, (h_n, c_n) = m(tensors[0], (tensors[1], tensors[2]))
    _replay(layer, seen)
    ey, (eh, ec) = layer.forward(x, (h0, c0))
    assert_torch_matches_layer(m, layer, tensors, (y, (h_n, c_n)), (ey, (eh, ec)), dtype, rng)
    assert all(n in layer.grads for n, _ in m.named_parameters() if n.startswith("layer_norm"))


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)], ids=["1", "2bi"])
def test_eval_no_grad_and_lengths(backend, layers, bidirectional, _one_torch_thread):
    """Eval (zoneout's expectation) with and without a gradient, torch.no_grad, and a
    PackedSequence (lengths): the layer's outputs and states."""
    kw = dict(layer_norm=True, zoneout=0.3)
    m, layer = _pair(kw, backend, np.float64, layers=layers, bidirectional=bidirectional)
    m.eval()
    layer.eval()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 3))
    ey, (eh, ec) = layer.forward(x)
    xt = torch.from_numpy(x)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            y, (h, c) = m(xt.clone().requires_grad_(grad))
        for name, a, e in (("y", y, ey), ("h_n", h, eh), ("c_n", c, ec)):
            assert_close(a.detach().numpy(), e, np.float64, name)
    lengths = np.array([5, 3, 2])
    ey, (eh, ec) = layer.forward(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths))
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out, (h, c) = m(packed)
        y = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        for name, a, e in (("y", y, ey), ("h_n", h, eh), ("c_n", c, ec)):
            assert_close(a.detach().numpy(), e, np.float64, name)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_training_with_lengths_gradients(backend, _one_torch_thread):
    m, layer = _pair(COMBOS["ln_variants"], backend, np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 2, 4])
    xt = torch.from_numpy(x).requires_grad_(True)
    out, (h, c) = m(torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                            enforce_sorted=False))
    y = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=5)[0]
    ey, (eh, ec) = layer.forward(x, lengths=lengths)
    assert_close(y.detach().numpy(), ey, np.float64, "y")
    assert_close(c.detach().numpy(), ec, np.float64, "c_n")
    gy, gh, gc = (rng.standard_normal(a.shape) for a in (ey, eh, ec))
    torch.autograd.backward((y, h, c), tuple(map(torch.from_numpy, (gy, gh, gc))))
    dx, _ = layer.backward(gy, (gh, gc))
    assert_close(xt.grad.numpy(), dx, np.float64, "dx")
    for name, p in m.named_parameters():
        assert_close(p.grad.numpy(), layer.grads[name], np.float64, name)


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("combo", ["ln", "ln_variants"])
def test_gradcheck_float64(backend, combo, _one_torch_thread):
    torch.manual_seed(0)
    m, _ = _pair(COMBOS[combo], backend, np.float64, I=2, H=3, layers=1, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        return out[0], out[1][0], out[1][1]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    assert torch.autograd.gradcheck(f, (x, h0, c0) + params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_parameters_names_initial_values_and_state_dict():
    torch.manual_seed(0)
    m = ltorch.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True, peephole=True)
    layer = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True,
                           peephole=True)
    assert list(m.state_dict()) == list(layer.state_dict())
    torch.manual_seed(0)
    plain = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    for k, v in plain.state_dict().items():     # nothing drawn for the layer norm
        assert torch.equal(m.state_dict()[k], v), k
    for k, v in layer.state_dict().items():
        if k.startswith("layer_norm"):
            assert torch.equal(m.state_dict()[k], torch.from_numpy(v)), k
            assert m.state_dict()[k].dtype == torch.float32
    with torch.no_grad():
        m.layer_norm_weight_c_l1.mul_(3.0)
    m.reset_parameters()
    assert torch.equal(m.layer_norm_weight_c_l1, torch.ones(4))
    assert torch.equal(m.layer_norm_bias_c_l0_reverse, torch.zeros(4))
    assert "layer_norm=True" in repr(m)
    # off: torch's state_dict (no layer-norm names)
    assert not any(k.startswith("layer_norm") for k in ltorch.LSTM(3, 4).state_dict())
    with pytest.raises(RuntimeError, match="layer_norm_weight_ih_l0"):
        m.load_state_dict(ltorch.LSTM(3, 4, num_layers=2, bidirectional=True,
                                      peephole=True).state_dict())


def test_state_dict_round_trip_and_pickle():
    m, _ = _pair(COMBOS["ln"], "numpy", np.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    assert_state_dict_and_pickle_round_trip(m, lambda: ltorch.LSTM(
        3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, layer_norm=True,
        backend="numpy"), x)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_optimizer_steps_on_the_layer_norm_parameters_are_seen(backend, _one_torch_thread):
    m, layer = _pair(COMBOS["ln"], backend, np.float64, layers=1, bidirectional=False)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    opt = torch.optim.SGD([p for n, p in m.named_parameters() if n.startswith("layer_norm")],
                          lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        m(x)[0].pow(2).sum().backward()
        opt.step()
    state = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    assert not np.allclose(state["layer_norm_bias_c_l0"], layer.state_dict()["layer_norm_bias_c_l0"])
    layer.load_state_dict(state)
    with torch.no_grad():
        assert_close(m(x)[0].numpy(), layer.forward(x.numpy())[0], np.float64)
    with torch.no_grad():   # a .data write is seen too
        m.layer_norm_weight_hh_l0.data.mul_(0.5)
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    with torch.no_grad():
        assert_close(m(x)[0].numpy(), layer.forward(x.numpy())[0], np.float64)


def test_auto_is_the_layers_choice_and_c_runs_it(monkeypatch):
    """"auto" resolves as the layer's ("c" where available, never "numba"); backend="c" runs
    layer norm, set at construction or after it, with the reference's outputs."""
    assert ltorch.LSTM(3, 4, layer_norm=True).backend == "auto"
    m = ltorch.LSTM(3, 4, layer_norm=True)
    want = "c" if "c" in lstm_fast.available_backends() else "numpy"
    assert m._resolve("auto") == want
    monkeypatch.setenv("LSTM_FAST_BACKEND", "numba")
    assert m._resolve("auto") == "numpy"
    monkeypatch.delenv("LSTM_FAST_BACKEND")
    if "c" not in lstm_fast.available_backends():
        pytest.skip("the C backend is not available")
    x = torch.randn(2, 1, 3)
    with torch.no_grad():
        m.backend = "numpy"
        want = m(x)[0].numpy()
        m.backend = "c"                                   # changed after construction
        assert_close(m(x)[0].numpy(), want, np.float32)
        m2 = ltorch.LSTM(3, 4, layer_norm=True, backend="c")
        m2.load_state_dict(m.state_dict())
        assert_close(m2(x)[0].numpy(), want, np.float32)


@pytest.mark.parametrize("kw, match", [
    (dict(proj_size=2), "layer_norm needs proj_size=0"),
    (dict(cifg=True), "layer_norm does not combine with cifg"),
    (dict(backend="torch"), "torch.nn.LSTM has no layer_norm=True"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        ltorch.LSTM(3, 4, layer_norm=True, **kw)


def test_bad_option_type():
    with pytest.raises(TypeError, match="layer_norm must be a bool"):
        ltorch.LSTM(3, 4, layer_norm=1)


def test_no_torch_fallback_no_compile_no_quantize():
    m = ltorch.LSTM(3, 4, layer_norm=True)
    with pytest.raises(RuntimeError, match="layer_norm=True"):
        m(torch.randn(2, 1, 3, dtype=torch.float64))          # dtype other than the weights'
    x = torch.randn(2, 1, 3, requires_grad=True)
    g, = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="layer_norm=True: .*double backward"):
        g.sum().backward()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.compile and torch.export do not carry"):
        torch.compile(m, fullgraph=True)(torch.randn(2, 1, 3))
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="layer_norm"):
        ltorch.quantize(m)
