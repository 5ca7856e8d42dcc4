"""lstm_fast.torch.LSTM with the LSTM variants of issue 15 (peepholes, gate clip, cell clip,
coupled gates, forget-gate bias): the same parameters as the NumPy layer (names, shapes),
the same outputs, states and every gradient (peepholes included) on every backend, float32
and float64; finite differences (gradcheck) in float64; torch.compile(fullgraph=True) with
the options carried by the custom operators; state_dict round trips; errors naming the
option where torch's fallback would run (torch has no such variant)."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_fast import _torch_ops  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from _support import (BACKENDS, assert_close, assert_state_dict_and_pickle_round_trip,  # noqa: E402
                      assert_torch_matches_layer,
                      torch_and_layer, torch_inputs)
from test_torch_module import _one_torch_thread  # noqa: E402,F401

VARIANTS = {
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.4),
    "cell_clip": dict(cell_clip=0.3),
    "cifg": dict(cifg=True),
    "forget_bias": dict(forget_bias=1.0),
    "onnx": dict(peephole=True, clip=0.4, cifg=True),
    "all": dict(peephole=True, clip=0.4, cell_clip=0.3, cifg=True),
}


def _pair(kw, backend, dtype, I=3, H=5, layers=2, bidirectional=True, proj_size=0, seed=0):
    """(torch module, NumPy layer) with the same parameters, scaled up so that the clamps
    are reached."""
    return torch_and_layer(kw, backend, dtype, I, H, layers, bidirectional, proj_size, seed,
                           scale=lambda name: (1.0 if name.startswith("bias") and "forget_bias"
                                               in kw else 3.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(6, 4, 3, 5, 0), (1, 1, 2, 1, 0), (5, 3, 7, 9, 4)],
                         ids=["T6B4I3H5", "T1B1I2H1", "T5B3I7H9P4"])
def test_module_equals_the_layer(backend, dtype, variant, shape, _one_torch_thread):
    T, B, I, H, P = shape
    kw = VARIANTS[variant]
    m, layer = _pair(kw, backend, dtype, I, H, proj_size=P)
    assert list(m.state_dict()) == list(layer.state_dict())
    for name, p in m.named_parameters():
        assert tuple(p.shape) == layer.state_dict()[name].shape, name
    rng = np.random.default_rng(1)
    (x, h0, c0), tensors = torch_inputs(rng, T, B, I, H, P, dtype)
    xt, h0t, c0t = tensors
    y, (h_n, c_n) = m(xt, (h0t, c0t))
    ey, (eh, ec) = layer.forward(x, (h0, c0))
    assert_torch_matches_layer(m, layer, tensors, (y, (h_n, c_n)), (ey, (eh, ec)), dtype, rng)


def test_the_clamps_are_reached():
    """The scaled weights of ``_pair`` make the clip and cell clip bind (so the tests above
    test the clamped paths)."""
    m, layer = _pair(VARIANTS["all"], "numpy", np.float64)
    x = np.random.default_rng(1).standard_normal((6, 4, 3))
    _, (_, c_n) = layer.forward(x)
    assert np.isclose(np.abs(c_n), 0.3).mean() > 0.2
    plain, _ = _pair({}, "numpy", np.float64)
    y = plain(torch.from_numpy(x))[0]
    assert not np.allclose(y.detach().numpy(), layer.forward(x)[0])


def test_packed_sequence_and_batch_first_with_variants(_one_torch_thread):
    kw = VARIANTS["all"]
    m, layer = _pair(kw, "c", np.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 3, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths))
    out, (h_n, c_n) = m(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    ey, (eh, ec) = layer.forward(x, lengths=lengths)
    assert_close(y.detach().numpy(), ey, np.float64, "y")
    assert_close(c_n.detach().numpy(), ec, np.float64, "c_n")


@pytest.mark.parametrize("variant", ["peephole", "clip", "cell_clip", "cifg", "all"])
def test_gradcheck_float64(variant, _one_torch_thread):
    torch.manual_seed(0)
    kw = VARIANTS[variant]
    m = ltorch.LSTM(2, 3, num_layers=1, backend="c", dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return out[0], out[1][1]
    # functional_call swaps in plain tensors (no _Parameter): packed at every call, as is right
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    assert torch.autograd.gradcheck(f, (x,) + params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_compile_fullgraph_carries_the_options(_one_torch_thread):
    kw = VARIANTS["all"]
    m, layer = _pair(kw, "c", np.float64, layers=1, bidirectional=False)
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    before = dict(_torch_ops.calls)
    xg = x.clone().requires_grad_(True)
    y, (h, c) = compiled(xg)
    (y.sum() + c.pow(2).sum()).backward()
    assert _torch_ops.calls["forward"] - before["forward"] == 1
    assert _torch_ops.calls["backward"] - before["backward"] == 1
    compiled_grads = {n.removeprefix("_orig_mod."): p.grad.clone()
                      for n, p in compiled.named_parameters()}
    ey, (_, ec) = layer.forward(x.numpy())
    assert_close(y.detach().numpy(), ey, np.float64, "y")
    assert_close(c.detach().numpy(), ec, np.float64, "c")
    m.zero_grad()
    xe = x.clone().requires_grad_(True)
    y2, (_, c2) = m(xe)
    (y2.sum() + c2.pow(2).sum()).backward()
    assert_close(xg.grad.numpy(), xe.grad.numpy(), np.float64, "dx")
    for n, p in m.named_parameters():
        assert_close(compiled_grads[n].numpy(), p.grad.numpy(), np.float64, n)
    with torch.no_grad():      # a peephole change after compiling is seen
        m.weight_co_l0.mul_(0.5)
        assert_close(compiled(x)[0].numpy(), m(x)[0].numpy(), np.float64, "after change")


def test_default_state_dict_is_torchs():
    torch.manual_seed(0)
    a = ltorch.LSTM(3, 4, num_layers=2)
    torch.manual_seed(0)
    b = torch.nn.LSTM(3, 4, num_layers=2)
    assert list(a.state_dict()) == list(b.state_dict())
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v)
    assert repr(a) == repr(b)


def test_peepholes_keep_torchs_seeded_values_and_forget_bias_inits():
    torch.manual_seed(0)
    a = ltorch.LSTM(3, 4, peephole=True, forget_bias=1.0)
    torch.manual_seed(0)
    b = torch.nn.LSTM(3, 4)
    for k, v in b.state_dict().items():
        if k.startswith("bias"):
            v = v.clone()
            v[4:8] = 1.0 if k.startswith("bias_ih") else 0.0
        assert torch.equal(a.state_dict()[k], v), k
    assert a.weight_ci_l0.shape == (4,) and a.weight_ih_l0.shape == (16, 3)
    c = ltorch.LSTM(3, 4, cifg=True, proj_size=2)
    assert c.weight_ih_l0.shape == (12, 3) and c.weight_hh_l0.shape == (12, 2)
    assert c.weight_hr_l0.shape == (2, 4) and c.bias_ih_l0.shape == (12,)
    assert "cifg=True" in repr(c) and "peephole=True" in repr(a) and "forget_bias=1.0" in repr(a)


def test_state_dict_round_trip_and_pickle():
    kw = VARIANTS["all"]
    m, _ = _pair(kw, "c", np.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    n = assert_state_dict_and_pickle_round_trip(m, lambda: ltorch.LSTM(
        3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, backend="c", **kw), x)
    # a plain module's state_dict does not fit a peephole or cifg one: torch names the keys
    plain = ltorch.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="weight_ci_l0"):
        n.load_state_dict(plain.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ltorch.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64,
                    cifg=True).load_state_dict(plain.state_dict())


def test_optimizer_steps_on_peepholes_are_seen(_one_torch_thread):
    m, layer = _pair(VARIANTS["peephole"], "c", np.float64, layers=1, bidirectional=False)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        m(x)[0].pow(2).sum().backward()
        opt.step()
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    with torch.no_grad():
        assert_close(m(x)[0].numpy(), layer.forward(x.numpy())[0], np.float64)


@pytest.mark.parametrize("kw, match", [
    (dict(clip=-1.0), "clip"), (dict(cell_clip=float("nan")), "cell_clip"),
    (dict(forget_bias=1.0, cifg=True), "forget_bias"), (dict(forget_bias=1.0, bias=False),
                                                        "forget_bias"),
    (dict(forget_bias="1"), "forget_bias"), (dict(peephole=True, backend="torch"), "peephole"),
    (dict(clip=1.0, backend="torch"), "clip"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        ltorch.LSTM(3, 4, **kw)


def test_bad_option_types():
    with pytest.raises(TypeError, match="peephole"):
        ltorch.LSTM(3, 4, peephole=1)
    with pytest.raises(TypeError, match="cifg"):
        ltorch.LSTM(3, 4, cifg="yes")


def test_no_torch_fallback_with_a_variant():
    m = ltorch.LSTM(3, 4, peephole=True, clip=1.0)
    with pytest.raises(RuntimeError, match="peephole=True, clip=1.0"):
        m(torch.randn(2, 1, 3, dtype=torch.float64))          # dtype other than the weights'
    with pytest.raises(RuntimeError, match="peephole"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.randn(2, 1, 3))
    m.backend = "torch"
    with pytest.raises(RuntimeError, match="peephole"):
        m(torch.randn(2, 1, 3))
    c = ltorch.LSTM(3, 4, cifg=True)
    with pytest.raises(RuntimeError, match="cifg"):
        torch.func.vmap(lambda x: c(x)[0])(torch.randn(2, 2, 1, 3))
    x = torch.randn(2, 1, 3, requires_grad=True)
    g, = torch.autograd.grad(c(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="cifg=True: .*double backward"):
        g.sum().backward()
    # off: torch's fallback as before
    plain = ltorch.LSTM(3, 4)
    with pytest.raises(ValueError, match="dtype"):
        plain(torch.randn(2, 1, 3, dtype=torch.float64))


@pytest.mark.parametrize("kw", [{}, VARIANTS["all"]], ids=["plain", "all"])
def test_bidirectional_t1_b1_h1(kw, _one_torch_thread):
    """A reversed (1, 1, 1) output keeps a negative stride through np.ascontiguousarray:
    torch.from_numpy refused it (eager and compiled)."""
    m, layer = _pair(kw, "c", np.float64, I=2, H=1, layers=1)
    x = torch.randn(1, 1, 2, dtype=torch.float64, requires_grad=True)
    y = m(x)[0]
    assert_close(y.detach().numpy(), layer.forward(x.detach().numpy())[0], np.float64)
    y.sum().backward()
    torch._dynamo.reset()
    assert_close(torch.compile(m, fullgraph=True)(x)[0].detach().numpy(), y.detach().numpy(),
                 np.float64)


def test_modules_pickle_after_a_forward():
    """The packed-weights cache (which holds the backend module) is not pickled."""
    for m, x in ((ltorch.LSTM(2, 3, backend="c"), torch.randn(2, 1, 2)),
                 (ltorch.LSTMCell(2, 3, backend="c"), torch.randn(1, 2))):
        out = m(x)[0]
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=False)(x)[0], out)
