"""torch.compile, torch.export and ONNX export of models holding lstm_fast.torch.LSTM and
LSTMCell: compiled without a graph break (fullgraph=True) with our kernels running inside the
compiled graph (the custom operators of lstm_fast._torch_ops), the same outputs and gradients
as eager; torch.export (non-strict and strict) records the operators; ONNX export (TorchScript)
takes torch's path, so the file runs in ONNX Runtime."""

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_fast import _torch_ops  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402

from _support import assert_close  # noqa: E402
from test_torch_module import _one_torch_thread  # noqa: E402,F401

COMPILE_SECONDS = 90     # generous: ~4 s warm on 2 loaded cores, more on a cold inductor cache


class Net(torch.nn.Module):
    def __init__(self, I=3, H=6):
        super().__init__()
        self.lstm = ltorch.LSTM(I, H, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = ltorch.LSTMCell(2 * H, H)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        state = None
        for t in range(y.shape[1]):
            state = self.cell(y[:, t], state)
        return self.head(state[0])


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return Net().to(dtype)


def _run(model, x):
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    out.pow(2).sum().backward()
    grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), xg.grad, grads


def test_compile_fullgraph_runs_our_kernels_and_matches_eager():
    net = _net()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    before = dict(_torch_ops.calls)
    t0 = time.perf_counter()
    compiled = torch.compile(net, fullgraph=True)      # fullgraph: a graph break is an error
    out, gx, grads = _run(compiled, x)
    seconds = time.perf_counter() - t0
    # 2 layers x 2 directions + 5 cell steps, forward and backward, inside the compiled graph
    assert _torch_ops.calls["forward"] - before["forward"] == 9
    assert _torch_ops.calls["backward"] - before["backward"] == 9
    assert seconds < COMPILE_SECONDS
    e_out, e_gx, e_grads = _run(net, x)
    assert_close(out.numpy(), e_out.numpy(), np.float64, "output")
    assert_close(gx.numpy(), e_gx.numpy(), np.float64, "grad x")
    for name, g in e_grads.items():
        assert_close(grads[name].numpy(), g.numpy(), np.float64, name)
    # a weight change after compiling is seen (no stale packing inside the graph)
    with torch.no_grad():
        net.lstm.weight_hh_l1.mul_(0.5)
        net.cell.bias_ih.add_(0.1)
    assert_close(compiled(x).detach().numpy(), net(x).detach().numpy(), np.float64, "after change")


def test_compiled_first_layer_skips_the_input_gradient(monkeypatch):
    """As the eager module (need_dx): a compiled model's first layer, whose input needs no
    gradient, makes no dx product; the parameters' gradients are eager's."""
    torch.manual_seed(0)
    lstm = ltorch.LSTM(3, 5, num_layers=2).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    seen = []
    real = _torch_ops.run_backward

    def spy(*args, **kw):
        seen.append(kw["need_dx"])
        out = real(*args, **kw)
        assert (out[0] is None) == (not kw["need_dx"])
        return out
    monkeypatch.setattr(_torch_ops, "run_backward", spy)

    def grads(model):
        lstm.zero_grad()
        model(x)[0].pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in lstm.named_parameters()}
    got = grads(torch.compile(lstm, fullgraph=True))
    assert seen == [True, False]     # layer 1, then layer 0
    for name, g in grads(lstm).items():
        assert_close(got[name].numpy(), g.numpy(), np.float64, name)


OURS = (torch.ops.lstm_fast.direction.default, torch.ops.lstm_fast.direction_inference.default,
        torch.ops.lstm_fast.stack_inference.default)


def _our_ops(ep):
    return [n.target for n in ep.graph.nodes if n.target in OURS]


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_export_records_our_operators_and_module_matches_eager(strict):
    """torch.export.export, non-strict (torch's default) and strict: our operators in the
    graph, the weights as the program's parameters (not constants), and the program's module
    gives eager's outputs and gradients."""
    net = _net().eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    ep = torch.export.export(net, (x,), strict=strict)
    assert len(_our_ops(ep)) == 4 + 4        # 2 layers x 2 directions, 4 cell steps
    assert set(ep.graph_signature.parameters) == {n for n, _ in net.named_parameters()}
    assert not ep.graph_signature.lifted_tensor_constants and not ep.constants
    module = ep.module()
    with torch.no_grad():
        assert_close(module(x).numpy(), net(x).numpy(), np.float64)
    out, gx, grads = _run(module, x)
    e_out, e_gx, e_grads = _run(net, x)
    assert_close(out.numpy(), e_out.numpy(), np.float64, "output")
    assert_close(gx.numpy(), e_gx.numpy(), np.float64, "grad x")
    assert grads.keys() == e_grads.keys()
    for name, g in e_grads.items():
        assert_close(grads[name].numpy(), g.numpy(), np.float64, name)
    # new weights loaded into the program's module are the ones it runs on
    state = {k: v * 0.5 for k, v in net.state_dict().items()}
    module.load_state_dict(state)
    net.load_state_dict(state)
    with torch.no_grad():
        assert_close(module(x).numpy(), net(x).numpy(), np.float64, "after load_state_dict")


def test_export_non_strict_dynamic_shapes_no_grad_and_save_load(tmp_path):
    """Batch and time as dynamic dimensions; under no_grad the whole stack is one inference
    operator (nothing kept for backward); torch.export.save/load round trip (the operators are
    registered by importing lstm_fast.torch)."""
    torch.manual_seed(1)
    lstm = ltorch.LSTM(3, 5, num_layers=2, batch_first=True, proj_size=2).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("time", max=1024)},)
    with torch.no_grad():
        ep = torch.export.export(lstm, (x,), dynamic_shapes=dims)
    assert _our_ops(ep) == [torch.ops.lstm_fast.stack_inference.default]
    path = tmp_path / "lstm.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for shape in ((2, 4), (5, 7), (1, 1)):
        x = torch.randn(*shape, 3, dtype=torch.float64)
        with torch.no_grad():
            want = lstm(x)
            for got in (ep.module()(x), loaded(x)):
                for g, e in zip((got[0],) + tuple(got[1]), (want[0],) + tuple(want[1])):
                    assert_close(g.numpy(), e.numpy(), np.float64, str(shape))


def test_export_non_strict_cell_unbatched():
    torch.manual_seed(2)
    cell = ltorch.LSTMCell(3, 5)
    x, hx = torch.randn(3), (torch.randn(5), torch.randn(5))
    ep = torch.export.export(cell, (x, hx))
    assert _our_ops(ep) == [torch.ops.lstm_fast.direction.default]
    got, want = ep.module()(x, hx), cell(x, hx)
    for g, e in zip(got, want):
        assert_close(g.detach().numpy(), e.detach().numpy(), np.float32)


def test_onnx_export_is_torchs_lstm_and_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _net(torch.float32).eval()
    x = torch.randn(2, 4, 3)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"])
    import onnx
    kinds = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "LSTM" in kinds and not any("lstm_fast" in k for k in kinds)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert_close(got, net(x).numpy(), np.float32)


STACKS = [dict(num_layers=2), dict(num_layers=2, bidirectional=True, batch_first=True),
          dict(num_layers=3, proj_size=2), dict(bias=False, bidirectional=True),
          dict(num_layers=2, peephole=True, cell_clip=0.5), dict(num_layers=2, cifg=True)]


@pytest.mark.parametrize("kw", STACKS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batched", [True, False])
def test_compiled_without_gradient_is_one_operator_call_equal_to_eager(kw, with_hx, batched):
    """Without a gradient the compiled module runs the whole stack as one operator call
    (``stack_inference``): the same bits as the eager module (the same kernels, calls and
    thread counts), for every layout; eval mode with dropout too."""
    torch.manual_seed(3)
    lstm = ltorch.LSTM(3, 5, dropout=0.3 if kw.get("num_layers", 1) > 1 else 0.0, **kw).eval()
    D, L = 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1)
    R = kw.get("proj_size", 0) or 5
    x = torch.randn(4, 2, 3) if batched else torch.randn(4, 3)
    if batched and kw.get("batch_first"):
        x = x.transpose(0, 1)       # (B, T, I), not contiguous
    hx = None
    if with_hx:
        shape = (L * D, 2) if batched else (L * D,)
        hx = (torch.randn(*shape, R), torch.randn(*shape, 5))
    torch._dynamo.reset()       # a new module per case: not Dynamo's recompile limit
    compiled = torch.compile(lstm, fullgraph=True)
    before = dict(_torch_ops.calls)
    with torch.no_grad():
        got, want = compiled(x, hx), lstm(x, hx)
    assert _torch_ops.calls["forward"] - before["forward"] == L * D
    for g, e in zip((got[0],) + tuple(got[1]), (want[0],) + tuple(want[1])):
        assert g.shape == e.shape and torch.equal(g, e)
