"""lstm_fast.torch.LSTM against torch.nn.LSTM with the same weights: outputs, final
states, every gradient, PackedSequence, gradcheck, training, state_dict, dropout, fallback."""

import io
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import lstm_fast  # noqa: E402
from lstm_fast import backends  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from _support import assert_close, assert_raises_as, torch_bf16_lstm_error  # noqa: E402

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny shapes: torch's intra-op threads only add spin-waiting (seconds on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls that went through our kernels (not torch's fallback)."""
    calls = []
    run_forward = ltorch.run_forward

    def counting(impl, *args):
        calls.append(backends.name_of(impl))
        return run_forward(impl, *args)

    monkeypatch.setattr(ltorch, "run_forward", counting)
    return calls


def _pair(dtype, backend="auto", seed=0, ref_cls=torch.nn.LSTM, cls=ltorch.LSTM, **kw):
    """torch's module and ours (``cls``, e.g. ltorch.LSTMCell) with the same weights."""
    torch.manual_seed(seed)
    ref = ref_cls(**kw).to(dtype)
    ours = cls(**kw, backend=backend).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _forward_backward(module, x, hx, lengths, batch_first, enforce_sorted, grads):
    """Run module, backprop a fixed random functional of all outputs; return values and grads."""
    x = x.clone().requires_grad_(True)
    hx = tuple(s.clone().requires_grad_(True) for s in hx)
    inp = x if lengths is None else pack_padded_sequence(
        x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    out, (h, c) = module(inp, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    loss = (data * grads[0]).sum() + (h * grads[1]).sum() + (c * grads[2]).sum()
    module.zero_grad()
    loss.backward()
    res = {"output": data, "h_n": h, "c_n": c, "grad_x": x.grad, "grad_h0": hx[0].grad,
           "grad_c0": hx[1].grad}
    res.update({"grad_" + n: p.grad for n, p in module.named_parameters()})
    return out, {k: v.detach().numpy() for k, v in res.items()}


CONFIGS = list(itertools.product((1, 2), (False, True), (False, True), ("tensor", "sorted", "unsorted")))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,kind", CONFIGS, ids=[
    f"L{a}-{'bi' if b else 'uni'}-{'bf' if c else 'tm'}-{d}" for a, b, c, d in CONFIGS])
def test_matches_torch(backend, dtype, num_layers, bidirectional, batch_first, kind, kernel_calls):
    T, B, I, H = 6, 4, 3, 5
    D = 2 if bidirectional else 1
    tdt = TORCH_DTYPE[dtype]
    ref, ours = _pair(tdt, backend, input_size=I, hidden_size=H, num_layers=num_layers,
                      bidirectional=bidirectional, batch_first=batch_first)
    g = torch.Generator().manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=tdt)  # noqa: E731
    x = rnd(*((B, T, I) if batch_first else (T, B, I)))
    hx = (rnd(num_layers * D, B, H), rnd(num_layers * D, B, H))
    lengths = None
    if kind == "sorted":
        lengths = torch.tensor([T, 5, 3, 1])
    elif kind == "unsorted":
        lengths = torch.tensor([3, T, 1, 5])
    n_out = T * B if lengths is None else int(lengths.sum())
    out_shape = (n_out, D * H) if lengths is not None else x.shape[:2] + (D * H,)
    grads = (rnd(*out_shape), rnd(num_layers * D, B, H), rnd(num_layers * D, B, H))
    args = (x, hx, lengths, batch_first, kind == "sorted", grads)
    t_out, expected = _forward_backward(ref, *args)
    o_out, actual = _forward_backward(ours, *args)
    assert len(kernel_calls) == num_layers * D and set(kernel_calls) == {backends.resolve(backend)}
    if lengths is not None:
        assert isinstance(o_out, PackedSequence)
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, e = getattr(o_out, field), getattr(t_out, field)
            assert (a is None and e is None) or torch.equal(a, e), field
    assert expected.keys() == actual.keys()
    for name, e in expected.items():
        assert actual[name].shape == e.shape, name
        assert actual[name].dtype == e.dtype, name
        assert_close(actual[name], e, dtype, name)


@pytest.mark.parametrize("batch_first", (False, True))
@pytest.mark.parametrize("with_hx", (False, True))
def test_unbatched_matches_torch(batch_first, with_hx, kernel_calls):
    ref, ours = _pair(torch.float64, input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                      batch_first=batch_first)
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = tuple(torch.randn(4, 4, dtype=torch.float64) for _ in range(2)) if with_hx else None
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x, hx), ours(x, hx)
    assert kernel_calls
    for a, e in ((o2, o1), (h2, h1), (c2, c1)):
        assert a.shape == e.shape
        assert_close(a.detach().numpy(), e.detach().numpy(), np.float64)


def test_no_bias_and_hx_none(kernel_calls):
    ref, ours = _pair(torch.float64, input_size=3, hidden_size=4, num_layers=2, bias=False)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    for m in (ref, ours):
        out, (h, c) = m(x)
        (out.sum() + c.sum()).backward()
    assert kernel_calls
    assert_close(ours.weight_hh_l1.grad.numpy(), ref.weight_hh_l1.grad.numpy(), np.float64)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_gradcheck_all_inputs_and_parameters(kernel_calls):
    torch.manual_seed(0)
    m = ltorch.LSTM(2, 2, num_layers=2, bidirectional=True).double()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]

    def f(x, h0, c0, *params):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    assert kernel_calls


def test_gradcheck_packed(kernel_calls):
    torch.manual_seed(0)
    m = ltorch.LSTM(2, 3, bidirectional=True, backend=backends.resolve("auto")).double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 4, 1])

    def f(x, h0):
        out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, h0 * 0.5))
        return out.data, h, c

    assert torch.autograd.gradcheck(f, (x, h0))
    assert kernel_calls


@pytest.mark.parametrize("optimizer", ("sgd", "adam"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=("f32", "f64"))
def test_training_losses_match_torch(optimizer, dtype):
    def model(cls):
        torch.manual_seed(0)
        lstm = cls(3, 8, num_layers=2, batch_first=True).to(dtype)
        return lstm, torch.nn.Linear(8, 1).to(dtype)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 7, 3, generator=g, dtype=dtype)
    target = torch.randn(16, 1, generator=g, dtype=dtype)
    losses = {}
    for cls in (torch.nn.LSTM, ltorch.LSTM):
        lstm, head = model(cls)
        params = list(lstm.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.5) if optimizer == "sgd" else torch.optim.Adam(params, lr=0.05)
        run = []
        for _ in range(5):
            opt.zero_grad()
            out, _ = lstm(x)
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), target)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses[cls] = run
    ref, ours = losses[torch.nn.LSTM], losses[ltorch.LSTM]
    assert ref[-1] < ref[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-11 if dtype == torch.float64 else 1e-5)


def test_state_dict_and_save_load_both_ways(tmp_path):
    kw = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(**kw)
    ours = ltorch.LSTM(**kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf))
    x = torch.randn(5, 2, 3)
    assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-6)
    ours2 = ltorch.LSTM(**kw)
    ref2 = torch.nn.LSTM(**kw)
    buf = io.BytesIO()
    torch.save(ours2.state_dict(), buf)
    buf.seek(0)
    ref2.load_state_dict(torch.load(buf))
    for (n1, p1), (n2, p2) in zip(ours2.state_dict().items(), ref2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    # the whole module pickles, keeping its backend
    path = tmp_path / "m.pt"
    ours3 = ltorch.LSTM(**kw, backend="numpy")
    torch.save(ours3, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, ltorch.LSTM) and loaded.backend == "numpy"
    assert torch.equal(loaded(x)[0], ours3(x)[0])


@pytest.mark.parametrize("kind", ("tensor", "packed"))
def test_dropout_seeded_like_torch_and_off_in_eval(kind, kernel_calls):
    ref, ours = _pair(torch.float64, backends.resolve("auto"), input_size=3, hidden_size=5, num_layers=3, dropout=0.5,
                      bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    data = lambda out: out.data if kind == "packed" else out  # noqa: E731

    def run(m, seed):
        inp = x if kind == "tensor" else pack_padded_sequence(x, torch.tensor([3, 6, 1, 5]),
                                                               enforce_sorted=False)
        torch.manual_seed(seed)
        out, (h, c) = m(inp)
        gx, = torch.autograd.grad(data(out).sum() + h.sum(), x)
        return data(out).detach(), gx

    o1, g1 = run(ours, 7)
    o2, g2 = run(ours, 7)
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    o3, _ = run(ours, 8)
    assert not torch.allclose(o1, o3)
    o_ref, g_ref = run(ref, 7)                  # same masks as torch.nn.LSTM under the same seed
    assert_close(o1.numpy(), o_ref.numpy(), np.float64)
    assert_close(g1.numpy(), g_ref.numpy(), np.float64)
    ours.eval()
    ref.eval()
    e1, _ = run(ours, 7)
    e2, _ = run(ours, 8)
    assert torch.equal(e1, e2)
    assert_close(e1.numpy(), run(ref, 9)[0].numpy(), np.float64)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind", ("tensor", "unsorted"))
def test_projection_runs_on_our_kernels(backend, dtype, kind, kernel_calls):
    """proj_size > 0 runs on our kernels, every backend."""
    T, B, I, H, P, L = 5, 3, 3, 6, 2, 2
    tdt = TORCH_DTYPE[dtype]
    ref, ours = _pair(tdt, backend, input_size=I, hidden_size=H, proj_size=P, num_layers=L,
                      bidirectional=True)
    g = torch.Generator().manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=tdt)  # noqa: E731
    x, hx = rnd(T, B, I), (rnd(2 * L, B, P), rnd(2 * L, B, H))
    lengths = None if kind == "tensor" else torch.tensor([3, T, 1])
    n_out = T * B if lengths is None else int(lengths.sum())
    grads = (rnd(*((n_out, 2 * P) if lengths is not None else (T, B, 2 * P))),
             rnd(2 * L, B, P), rnd(2 * L, B, H))
    args = (x, hx, lengths, False, False, grads)
    _, expected = _forward_backward(ref, *args)
    _, actual = _forward_backward(ours, *args)
    assert len(kernel_calls) == 2 * L
    for name, e in expected.items():
        assert actual[name].shape == e.shape, name
        assert_close(actual[name], e, dtype, name)


def test_other_fallbacks_and_errors(kernel_calls):
    ref, ours = _pair(torch.float32, input_size=3, hidden_size=4)
    # dtype mismatch between input and weights: torch's own error
    x64 = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(Exception) as e_ref:
        ref(x64)
    with pytest.raises(Exception) as e_ours:
        ours(x64)
    assert type(e_ours.value) is type(e_ref.value) and str(e_ours.value) == str(e_ref.value)
    # backend="torch": torch's implementation, bit for bit
    ours.backend = "torch"
    x = torch.randn(5, 2, 3)
    assert torch.equal(ours(x)[0], ref(x)[0])
    assert kernel_calls == []
    ours.backend = "auto"
    # wrong hx shape: torch's message
    bad = (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(RuntimeError) as e_ref:
        ref(x, bad)
    with pytest.raises(RuntimeError) as e_ours:
        ours(x, bad)
    assert str(e_ours.value) == str(e_ref.value)
    for wrong in (torch.randn(5, 2, 7), torch.randn(5, 7)):
        with pytest.raises(RuntimeError) as e_ref:
            ref(wrong)
        with pytest.raises(RuntimeError) as e_ours:
            ours(wrong)
        assert str(e_ours.value) == str(e_ref.value)
    # (torch itself fails later here, in a matrix product; we check first)
    with pytest.raises(RuntimeError, match="must be equal to input_size. Expected 3, got 7"):
        ours(pack_padded_sequence(torch.randn(5, 2, 7), torch.tensor([5, 2])))
    assert kernel_calls == []
    # bfloat16 autocast: torch's path with bf16_autocast=False (oneDNN, AMX where the CPU
    # has it); by default our bf16 kernels (tests/test_bf16_training.py), bf16 out as torch's
    # (where torch has no bf16 LSTM on this CPU, torch's error for the first and the float32
    # result in bf16 as the oracle for the second)
    ours.bf16_autocast = False
    torch_error = torch_bf16_lstm_error()
    if torch_error is None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ours, y_ref = ours(x)[0], ref(x)[0]
        assert y_ours.dtype == y_ref.dtype == torch.bfloat16 and kernel_calls == []
        assert torch.equal(y_ours, y_ref)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert_raises_as(torch_error, ours, x)
        assert kernel_calls == []
        with torch.no_grad():
            y_ref = ref(x)[0].bfloat16()
    ours.bf16_autocast = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours = ours(x)[0]
    assert y_ours.dtype == torch.bfloat16 and len(kernel_calls) == 1
    assert torch.allclose(y_ours.float(), y_ref.float(), atol=2 ** -7)   # bf16's precision
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
        ours(torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        ltorch.LSTM(3, 4, backend="fortran")


def test_inplace_change_of_output_is_caught(kernel_calls):
    m = ltorch.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, _ = m(x)
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    out, _ = m(x)                    # an optimizer step between forward and backward
    with torch.no_grad():
        m.weight_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    with torch.inference_mode():     # no graph: runs, no saved state needed
        assert m(x)[0].shape == (5, 2, 4)


@pytest.mark.parametrize("kind", ("LSTM", "LSTMCell"))
def test_retain_graph_twice_and_double_backward_error(kind):
    """First-order gradients with retain_graph and create_graph work; differentiating them
    (a gradient penalty, w.r.t. the input or the weights) is a clear error naming
    backend="torch", which then computes it."""
    torch.manual_seed(0)
    m = getattr(ltorch, kind)(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    run = (lambda: m(x)[0]) if kind == "LSTM" else (lambda: m(x[0])[0])  # noqa: E731
    out = run()
    g1, = torch.autograd.grad(out.sum(), x, retain_graph=True)
    g2, = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert torch.equal(g1, g2)
    for wrt in ("input", "weights"):
        out = run()
        grads = torch.autograd.grad(out.pow(2).sum(), x if wrt == "input" else list(m.parameters()),
                                    create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        with pytest.raises(RuntimeError, match='double backward.*backend="torch"'):
            penalty.backward()
    m.backend = "torch"          # the documented route for double backward
    out = run()
    g, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert m.weight_hh_l0.grad is not None if kind == "LSTM" else m.weight_hh.grad is not None


def test_module_is_a_torch_lstm_and_imports_real_torch():
    assert issubclass(ltorch.LSTM, torch.nn.LSTM)
    assert ltorch.torch is torch
    assert lstm_fast.torch is ltorch


# --- packed weights kept between calls, packed again after every kind of change -----

@pytest.fixture
def pack_calls(monkeypatch):
    """Counts the layer-directions the module packs."""
    calls = []
    real = ltorch.LSTM._packed_weights

    def counting(self, impl, dtype):
        before = self._packed
        packed = real(self, impl, dtype)
        if before is None or before[1] is not packed:
            calls.extend(range(len(packed)))
        return packed

    monkeypatch.setattr(ltorch.LSTM, "_packed_weights", counting)
    return calls


def _eval_pair(**kw):
    ref, ours = _pair(torch.float32, input_size=3, hidden_size=5, **kw)
    ref.eval()
    ours.eval()
    return ref, ours


def _agree(ref, ours, x):
    with torch.no_grad():
        a, (ha, ca) = ref(x)
        b, (hb, cb) = ours(x)
    for e, g in ((a, b), (ha, hb), (ca, cb)):
        assert_close(g.numpy(), e.numpy(), np.float32)


MUTATIONS = {
    "optimizer_step": lambda m: torch.optim.SGD(m.parameters(), lr=0.1).step(),
    "data_write": lambda m: m.weight_hh_l0.data.mul_(0.5),
    "data_element": lambda m: m.weight_ih_l0.data.__setitem__((2, 1), 3.0),
    "data_assign": lambda m: setattr(m.weight_hh_l0, "data", m.weight_hh_l0.detach() * 2),
    "no_grad_inplace": lambda m: torch.no_grad()(lambda: m.bias_ih_l0.add_(1.0))(),
    "load_state_dict": lambda m: m.load_state_dict(
        {k: v * 0.9 for k, v in m.state_dict().items()}),
    "to_double_and_back": lambda m: m.double().float(),
    "parameter_replaced": lambda m: setattr(m, "weight_ih_l0", torch.nn.Parameter(
        m.weight_ih_l0.detach() + 1)),
}


@pytest.mark.parametrize("route", list(MUTATIONS))
def test_every_weight_change_is_seen(route, pack_calls):
    ref, ours = _eval_pair(num_layers=2)
    x = torch.randn(4, 3, 3)
    _agree(ref, ours, x)
    _agree(ref, ours, x)
    assert sorted(pack_calls) == [0, 1]          # packed once per layer, then kept
    for m in (ref, ours):
        if route == "optimizer_step":
            for p in m.parameters():
                p.grad = torch.full_like(p, 0.1)
        MUTATIONS[route](m)
    _agree(ref, ours, x)                         # the packed copy followed the change
    assert len(pack_calls) > 2


def test_training_step_with_data_updates_like_word_language_model(pack_calls):
    """pytorch/examples word_language_model updates with p.data.add_(p.grad, alpha=-lr)."""
    ref, ours = _pair(torch.float32, input_size=3, hidden_size=5, num_layers=2)
    x = torch.randn(6, 2, 3)
    for _ in range(3):
        outs = []
        for m in (ref, ours):
            m.train()
            m.zero_grad()
            out, _ = m(x)
            out.pow(2).sum().backward()
            for p in m.parameters():
                p.data.add_(p.grad, alpha=-0.1)
            m.eval()
            with torch.no_grad():
                outs.append(m(x)[0].numpy())
        assert_close(outs[1], outs[0], np.float32)


def test_no_grad_keeps_nothing_for_backward(monkeypatch, kernel_calls):
    ref, ours = _pair(torch.float32, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    saves = []
    real = ltorch.run_forward

    def spy(impl, packed, x, h0, c0, num_threads, plan=None, reverse=False, save=True, out=None):
        saves.append(save)
        return real(impl, packed, x, h0, c0, num_threads, plan, reverse, save, out)

    monkeypatch.setattr(ltorch, "run_forward", spy)
    x = torch.randn(5, 2, 3)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            out, (h, c) = ours(x)
            want, (hw, cw) = ref(x)
        assert not out.requires_grad and out.grad_fn is None
        for a, e in ((out, want), (h, hw), (c, cw)):
            assert_close(a.numpy(), e.numpy(), np.float32)
    assert saves == [False] * 8
    ours.requires_grad_(False)                    # nothing requires grad: nothing saved either
    ours(x)
    assert saves == [False] * 12
    ours.requires_grad_(True)
    out, _ = ours(x)
    assert saves[-4:] == [True] * 4 and out.requires_grad


def test_parameters_are_tracked_parameters_and_survive_pickling(tmp_path):
    ours = ltorch.LSTM(3, 4, num_layers=2)
    assert all(type(p) is ltorch._Parameter for p in ours.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in ours.parameters())
    path = tmp_path / "m.pt"
    torch.save(ours, path)
    loaded = torch.load(path, weights_only=False)
    assert all(type(p) is ltorch._Parameter for p in loaded.parameters())
    import copy
    clone = copy.deepcopy(ours)
    assert all(type(p) is ltorch._Parameter for p in clone.parameters())
    v = ours.weight_hh_l0._version
    ours.weight_hh_l0.data.add_(1)
    assert ours.weight_hh_l0._version > v


@pytest.mark.skipif("c" not in lstm_fast.available_backends(), reason="needs the C backend")
def test_repack_reuses_memory_and_a_graph_whose_pack_was_reused_packs_again():
    """After a weight change the module packs into the previous packing's memory (no fresh
    pages per optimizer step). A graph built before the change, whose weights were replaced
    by new Parameter objects (so autograd allows its backward), packs its saved weights
    again instead of using the overwritten packing: its gradients are torch's."""
    ref, ours = _pair(torch.float32, backend="c", input_size=3, hidden_size=5, num_layers=2)
    x = torch.randn(4, 2, 3, requires_grad=True)
    xs = x.detach().clone().requires_grad_(True)
    outs = [m(xi)[0] for m, xi in ((ref, xs), (ours, x))]             # graph A, old weights
    first = ours._packed[1][:]
    gens = [p.generation for p in first]
    old_params = [dict(m.named_parameters()) for m in (ref, ours)]
    for m, kind in ((ref, torch.nn.Parameter), (ours, type(ours.weight_hh_l1))):
        m.weight_hh_l1 = kind(m.weight_hh_l1.detach() * 0.5)
    with torch.no_grad():                        # packs the new weights into the old memory
        now = [m(x.detach())[0] for m in (ref, ours)]
    assert_close(now[1].numpy(), now[0].numpy(), np.float32)
    second = ours._packed[1]
    assert all(a is b for a, b in zip(first, second))
    assert [p.generation for p in second] == [g + 1 for g in gens]
    for out in outs:
        out.pow(2).sum().backward()
    assert_close(x.grad.numpy(), xs.grad.numpy(), np.float32)
    for name, p in old_params[0].items():
        assert_close(old_params[1][name].grad.numpy(), p.grad.numpy(), np.float32, name)


def test_functional_call_and_parametrizations_use_the_weights_given(kernel_calls):
    """torch.func.functional_call swaps ``_parameters`` and a parametrization replaces the
    attribute: neither goes through torch's ``__setattr__``, so ``_flat_weights`` goes stale
    (it did here: functional_call ran on the module's own weights, silently)."""
    torch.manual_seed(0)
    ref, ours = _pair(torch.float64, input_size=3, hidden_size=5, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = {k: torch.randn_like(v).requires_grad_(True) for k, v in ref.named_parameters()}
    outs = []
    for m in (ref, ours):
        out, (h, c) = torch.func.functional_call(m, params, (x,))
        (out.sum() + h.sum() + c.sum()).backward()
        outs.append([out, h, c] + [params[k].grad.clone() for k in params])
        for p in params.values():
            p.grad = None
    assert kernel_calls
    for e, g in zip(*outs):
        assert_close(g.detach().numpy(), e.detach().numpy(), np.float64)

    class Twice(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    kernel_calls.clear()
    for m in (ref, ours):
        torch.nn.utils.parametrize.register_parametrization(m, "weight_hh_l1", Twice())
    with torch.no_grad():
        a, b = ref(x)[0], ours(x)[0]
    assert kernel_calls
    assert_close(b.numpy(), a.numpy(), np.float64)


@pytest.mark.parametrize("backend", backends.available_backends())
@pytest.mark.parametrize("lengths", [None, [6, 4, 4, 1]], ids=["padded", "lengths"])
def test_an_input_without_gradient_skips_dx_and_keeps_every_other_gradient(monkeypatch, backend,
                                                                           lengths):
    """A model's first layer (its input needs no gradient): the backend is asked for no dx
    (need_dx=False, which the C kernel skips), x.grad stays None, and every parameter and
    state gradient has the bits of the same call with an input that needs one, and torch's
    values."""
    ref, ours = _pair(torch.float32, backend, input_size=7, hidden_size=9, num_layers=2,
                      bidirectional=True)
    asked = []
    real = ltorch.run_backward

    def spy(*args, need_dx=True, **kw):
        asked.append(need_dx)
        return real(*args, need_dx=need_dx, **kw)

    monkeypatch.setattr(ltorch, "run_backward", spy)
    torch.manual_seed(1)
    x, hx = torch.randn(6, 4, 7), (torch.randn(4, 4, 9), torch.randn(4, 4, 9))
    w = torch.randn(6, 4, 18)

    def grads(module, need):
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(need)
        h = tuple(s.clone().requires_grad_(True) for s in hx)
        inp = xi if lengths is None else pack_padded_sequence(xi, torch.tensor(lengths))
        out = module(inp, h)[0]
        out = out if lengths is None else torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        (out * w[:out.shape[0]]).sum().backward()
        return xi.grad, [s.grad for s in h] + [p.grad for p in module.parameters()]

    dx_none, got = grads(ours, False)
    assert dx_none is None
    assert asked == [True, True, False, False]     # layer 1 (both directions) then layer 0
    dx, want = grads(ours, True)
    assert dx is not None and asked[4:] == [True] * 4
    for a, b in zip(got, want):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    _, ref_grads = grads(ref, False)
    for a, b in zip(got, ref_grads):
        assert_close(a.numpy(), b.numpy(), np.float32)
