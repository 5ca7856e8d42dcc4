"""lstm_fast.torch.LSTMCell against torch.nn.LSTMCell with the same weights: outputs, every
gradient (one step and steps chained by hand), gradcheck, no_grad, packed weights following
changes, torch's own errors for bad input, fallbacks, double backward."""

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_fast import backends  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from _support import assert_close  # noqa: E402
# kernel_calls: the calls that ran on our kernels (``lstm_fast.torch.run_forward``, which
# every cell route calls once per step, the compiled one included), not torch's
from test_torch_module import (MUTATIONS, TORCH_DTYPE, _one_torch_thread, _pair,  # noqa: E402,F401
                               kernel_calls)


def _cells(dtype, backend="auto", **kw):
    return _pair(dtype, backend, ref_cls=torch.nn.LSTMCell, cls=ltorch.LSTMCell, **kw)


def _steps(cell, xs, hx, grads):
    """Chain the cell over xs[t] by hand (as generation loops do), backprop a fixed random
    functional of every h and the last c; values and gradients as NumPy arrays."""
    xs = xs.clone().requires_grad_(True)
    hx = None if hx is None else tuple(s.clone().requires_grad_(True) for s in hx)
    state, hs = hx, []
    for t in range(xs.shape[0]):
        state = cell(xs[t], state)
        hs.append(state[0])
    h = torch.stack(hs)
    loss = (h * grads[0]).sum() + (state[1] * grads[1]).sum()
    cell.zero_grad()
    loss.backward()
    res = {"h": h, "c": state[1], "grad_x": xs.grad}
    if hx is not None:
        res.update(grad_h0=hx[0].grad, grad_c0=hx[1].grad)
    res.update({"grad_" + n: p.grad for n, p in cell.named_parameters()})
    return {k: v.detach().numpy() for k, v in res.items()}


@pytest.mark.parametrize("batched", (True, False), ids=("batched", "unbatched"))
@pytest.mark.parametrize("with_hx", (True, False), ids=("hx", "no_hx"))
@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
def test_matches_torch(backend, dtype, batched, with_hx, bias, kernel_calls):
    T, B, I, H = 3, 4, 3, 5
    tdt = TORCH_DTYPE[dtype]
    ref, ours = _cells(tdt, backend, input_size=I, hidden_size=H, bias=bias)
    g = torch.Generator().manual_seed(1)
    lead = (B,) if batched else ()
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=tdt)  # noqa: E731
    xs = rnd(T, *lead, I)
    hx = (rnd(*lead, H), rnd(*lead, H)) if with_hx else None
    grads = (rnd(T, *lead, H), rnd(*lead, H))
    expected = _steps(ref, xs, hx, grads)
    actual = _steps(ours, xs, hx, grads)
    assert kernel_calls == [backends.resolve(backend)] * T
    assert expected.keys() == actual.keys()
    for name, e in expected.items():
        assert actual[name].shape == e.shape and actual[name].dtype == e.dtype, name
        assert_close(actual[name], e, dtype, name)


def test_gradcheck_all_inputs_and_parameters(kernel_calls):
    torch.manual_seed(0)
    m = ltorch.LSTMCell(3, 2).double()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]

    def f(x, h0, c0, *params):
        h, c = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        h2, c2 = torch.func.functional_call(m, dict(zip(names, params)), (x * 0.5, (h, c)))
        return h2, c2

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    assert kernel_calls


def test_no_grad_keeps_nothing_and_matches(kernel_calls):
    ref, ours = _cells(torch.float32, input_size=3, hidden_size=4)
    x, hx = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            for args in ((x, hx), (x,), (x[0], (hx[0][0], hx[1][0]))):
                got, want = ours(*args), ref(*args)
                for a, e in zip(got, want):
                    assert a.grad_fn is None and not a.requires_grad and a.shape == e.shape
                    assert_close(a.numpy(), e.numpy(), np.float32)
    assert len(kernel_calls) == 6
    ours.requires_grad_(False)            # nothing requires grad: no graph either
    assert ours(x, hx)[0].grad_fn is None


@pytest.mark.parametrize("route", list(MUTATIONS))
def test_every_weight_change_is_seen(route, monkeypatch):
    packs = []
    real = backends.get("numpy").pack
    monkeypatch.setattr(backends.get("numpy"), "pack", lambda *a, **k: packs.append(1) or real(*a, **k))
    ref, ours = _cells(torch.float32, "numpy", input_size=3, hidden_size=5)
    x = torch.randn(2, 3)

    def agree():
        with torch.no_grad():
            for a, e in zip(ours(x), ref(x)):
                assert_close(a.numpy(), e.numpy(), np.float32)
    agree()
    agree()
    assert len(packs) == 1                                 # packed once, then kept
    for m in (ref, ours):
        if route == "optimizer_step":
            for p in m.parameters():
                p.grad = torch.full_like(p, 0.1)
        MUTATIONS[route](_CellNames(m))
    agree()
    assert len(packs) > 1


class _CellNames:
    """The LSTM's parameter names (used by MUTATIONS) mapped onto a cell's."""

    def __init__(self, cell):
        object.__setattr__(self, "cell", cell)

    def __getattr__(self, name):
        if name in ("parameters", "load_state_dict", "state_dict", "double", "float"):
            return getattr(self.cell, name)
        return getattr(self.cell, name.removesuffix("_l0"))

    def __setattr__(self, name, value):
        setattr(self.cell, name.removesuffix("_l0"), value)


def test_training_loop_with_optimizer_matches_torch(kernel_calls):
    """Steps chained by hand, an optimizer step after each backward: the weights are packed
    again after every step, and the losses are torch's."""
    losses = {}
    g = torch.Generator().manual_seed(3)
    xs, target = torch.randn(6, 2, 3, generator=g), torch.randn(2, 4, generator=g)
    for cls in (torch.nn.LSTMCell, ltorch.LSTMCell):
        torch.manual_seed(0)
        cell = cls(3, 4)
        opt = torch.optim.Adam(cell.parameters(), lr=0.05)
        run = []
        for _ in range(4):
            opt.zero_grad()
            state = None
            for t in range(6):
                state = cell(xs[t], state)
            loss = torch.nn.functional.mse_loss(state[0], target)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses[cls] = run
    assert losses[torch.nn.LSTMCell][-1] < losses[torch.nn.LSTMCell][0]
    np.testing.assert_allclose(losses[ltorch.LSTMCell], losses[torch.nn.LSTMCell], rtol=1e-5)
    assert len(kernel_calls) == 24


# --- bad input: torch's own error type and message, before any kernel runs ----------

def _bad(i=3, h=4):
    r = torch.randn
    return {
        "input_size": (r(2, 5), None),
        "input_size_unbatched": (r(5), None),
        "input_3d": (r(1, 2, i), None),
        "input_0d": (torch.tensor(1.0), None),
        "h_batch": (r(2, i), (r(3, h), r(2, h))),
        "c_batch": (r(2, i), (r(2, h), r(3, h))),
        "h_size": (r(2, i), (r(2, h + 1), r(2, h))),
        "c_size": (r(2, i), (r(2, h), r(2, h + 1))),
        "h_3d": (r(2, i), (r(1, 2, h), r(2, h))),
        "unbatched_hx_2d": (r(i), (r(1, h), r(1, h))),
        "batched_hx_1d": (r(2, i), (r(h), r(h))),
        "mixed_hx_dims": (r(2, i), (r(2, h), r(h))),
        "input_dtype": (r(2, i, dtype=torch.float64), None),
        "h_dtype": (r(2, i), (r(2, h, dtype=torch.float64), r(2, h))),
        "c_dtype": (r(2, i), (r(2, h), r(2, h, dtype=torch.float64))),
        "int_input": (torch.ones(2, i, dtype=torch.int64), None),
        "one_state": (r(2, i), (r(2, h),)),
        "three_states": (r(2, i), (r(2, h),) * 3),
        "hx_tensor": (r(2, i), r(2, h)),
        "input_list": ([1.0, 2.0, 3.0], None),
        "meta_input": (r(2, i, device="meta"), None),
    }


@pytest.mark.parametrize("case", list(_bad()))
def test_bad_input_gets_torchs_error(case, kernel_calls):
    """Wrong shapes, dtypes, devices, hx of the wrong size or kind: torch's exception, same
    type and message, and no kernel call. (torch accepts a float64 c with float32 h and
    input: then ours gives torch's result, from torch's implementation.)"""
    ref, ours = _cells(torch.float32, input_size=3, hidden_size=4)
    x, hx = _bad()[case]
    try:
        want = ref(x, hx)
    except Exception as e:
        want = e
    for m in (ours, ltorch.LSTMCell(3, 4, backend="numpy")):
        m.load_state_dict(ref.state_dict())
        if isinstance(want, Exception):
            with pytest.raises(type(want)) as got:
                m(x, hx)
            assert type(got.value) is type(want) and str(got.value) == str(want)
        else:
            for a, e in zip(m(x, hx), want):
                assert torch.equal(a, e)
    assert kernel_calls == []


def test_fallbacks_run_torchs_implementation(kernel_calls):
    ref, ours = _cells(torch.float32, input_size=3, hidden_size=4)
    x = torch.randn(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for a, e in zip(ours(x), ref(x)):
            assert torch.equal(a, e)
    for a, e in zip(ours(x[:0]), ref(x[:0])):                # B = 0
        assert a.shape == e.shape == (0, 4)
    assert kernel_calls == []
    ours.backend = "torch"
    assert torch.equal(ours(x)[1], ref(x)[1]) and kernel_calls == []
    ours.backend = "auto"
    ours(x)
    assert kernel_calls == [backends.resolve("auto")]
    with pytest.raises(ValueError, match="backend must be one of"):
        ltorch.LSTMCell(3, 4, backend="fortran")


def test_a_torch_lstmcell_state_dict_repr_pickle():
    torch.manual_seed(0)
    ref, ours = torch.nn.LSTMCell(3, 4, bias=False), ltorch.LSTMCell(3, 4, bias=False)
    assert isinstance(ours, torch.nn.LSTMCell) and repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert all(type(p) is ltorch._Parameter for p in ours.parameters())
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for loaded in (torch.load(buf, weights_only=False), copy.deepcopy(ours)):
        assert all(type(p) is ltorch._Parameter for p in loaded.parameters())
        x = torch.randn(2, 3)
        assert torch.equal(loaded(x)[0], ours(x)[0])


def test_inplace_change_of_input_between_forward_and_backward_is_caught(kernel_calls):
    cell = ltorch.LSTMCell(3, 4)
    x = torch.randn(2, 3)
    h, c = cell(x)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()
    h, c = cell(torch.randn(2, 3))
    with torch.no_grad():
        cell.weight_hh.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


@pytest.mark.skipif(ltorch._torch_eval is None, reason="needs the compiled route")
@pytest.mark.parametrize("batched", (True, False), ids=("batched", "unbatched"))
@pytest.mark.parametrize("with_hx", (True, False), ids=("hx", "no_hx"))
def test_the_compiled_route_serves_every_call_once_packed(batched, with_hx, monkeypatch):
    """Once packed, a call (with or without a gradient) runs in _torch_eval: no Python
    packing check, the compiled Function in the graph; its values and gradients are torch's."""
    ref, ours = _cells(torch.float64, "auto", input_size=3, hidden_size=5)
    python_route = []
    real = ltorch.LSTMCell._packed_weights
    monkeypatch.setattr(ltorch.LSTMCell, "_packed_weights",
                        lambda self, *a: python_route.append(1) or real(self, *a))
    lead = (2,) if batched else ()
    x = torch.randn(*lead, 3, dtype=torch.float64)
    hx = (torch.randn(*lead, 5, dtype=torch.float64),
          torch.randn(*lead, 5, dtype=torch.float64)) if with_hx else None
    with torch.inference_mode():
        for _ in range(3):
            got, want = ours(x, hx), ref(x, hx)
            for a, e in zip(got, want):
                assert a.shape == e.shape and not a.requires_grad
                assert_close(a.numpy(), e.numpy(), np.float64)
    assert python_route == [1]          # packed at the first call only
    grads = []
    for m in (ref, ours):
        m.zero_grad()
        xg = x.clone().requires_grad_(True)
        hg = None if hx is None else tuple(s.clone().requires_grad_(True) for s in hx)
        h, c = m(xg, hg)
        if m is ours:
            assert type(h.grad_fn).__name__ == "_CompiledCellBackward"
        (h.pow(2).sum() + (c * 0.5).sum()).backward()
        grads.append([xg.grad] + ([] if hg is None else [s.grad for s in hg])
                     + [p.grad for p in m.parameters()])
    assert python_route == [1]
    for a, e in zip(grads[1], grads[0]):
        assert a.shape == e.shape
        assert_close(a.numpy(), e.numpy(), np.float64)


@pytest.mark.skipif("c" not in backends.available_backends(), reason="needs the C backend")
def test_a_graph_whose_pack_was_reused_packs_again():
    """As for LSTM: a graph built before its weights were replaced by new Parameter objects
    (so autograd allows its backward), whose packing was then written over by the new
    weights' packing, packs its saved weights again in backward: its gradients are torch's."""
    ref, ours = _cells(torch.float32, "c", input_size=3, hidden_size=5)
    x = torch.randn(2, 3, requires_grad=True)
    xs = x.detach().clone().requires_grad_(True)
    outs = [m(xi)[1] for m, xi in ((ref, xs), (ours, x))]             # old weights
    packed, generation = ours._packed[7], ours._packed[7].generation
    old_params = [dict(m.named_parameters()) for m in (ref, ours)]
    for m, kind in ((ref, torch.nn.Parameter), (ours, ltorch._Parameter)):
        m.weight_hh = kind(m.weight_hh.detach() * 0.5)
    with torch.no_grad():                        # packs the new weights into the old memory
        for a, e in zip(ours(x.detach()), ref(x.detach())):
            assert_close(a.numpy(), e.numpy(), np.float32)
    assert ours._packed[7] is packed and packed.generation == generation + 1
    for out in outs:
        out.pow(2).sum().backward()
    assert_close(x.grad.numpy(), xs.grad.numpy(), np.float32)
    for name, p in old_params[0].items():
        assert_close(old_params[1][name].grad.numpy(), p.grad.numpy(), np.float32, name)
