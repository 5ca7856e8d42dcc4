"""Every combination the layer offers, against torch.nn.LSTM with identical weights:
num_layers in {1, 2, 3} x bidirectional x batch_first x proj_size x lengths x
float32/float64 x every backend; outputs, final states and all gradients."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from _support import assert_close, torch_nn_pair  # noqa: E402

T, B, I, H, P = 5, 3, 4, 5, 3
LENGTHS = np.array([2, 5, 1])          # any order, a full row and a length-1 row
MATRIX = list(itertools.product((1, 2, 3), (False, True), (False, True), (0, P), (False, True)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,proj_size,with_lengths", MATRIX, ids=[
    f"L{a}-{'bi' if b else 'uni'}-{'bf' if c else 'tm'}-P{d}-{'len' if e else 'full'}" for a, b, c, d, e in MATRIX])
def test_layer_matches_torch(backend, dtype, num_layers, bidirectional, batch_first, proj_size, with_lengths):
    D = 2 if bidirectional else 1
    R = proj_size or H
    ref, ours = torch_nn_pair(backend, dtype, num_layers, bidirectional, batch_first, I=I, H=H,
                              seed=num_layers, proj_size=proj_size)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    hx = (rng.standard_normal((num_layers * D, B, R)).astype(dtype),
          rng.standard_normal((num_layers * D, B, H)).astype(dtype))
    lengths = LENGTHS if with_lengths else None

    out, (h, c) = ours(x, hx, lengths=lengths)
    gout = rng.standard_normal(out.shape).astype(dtype)
    ghx = (rng.standard_normal(h.shape).astype(dtype), rng.standard_normal(c.shape).astype(dtype))
    dx, (dh0, dc0) = ours.backward(gout, ghx)

    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(s, requires_grad=True) for s in hx)
    if with_lengths:
        packed = pack_padded_sequence(xt, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False)
        out_p, (ht, ct) = ref(packed, hxt)
        outt = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)[0]
    else:
        outt, (ht, ct) = ref(xt, hxt)
    loss = (outt * torch.tensor(gout)).sum() + (ht * torch.tensor(ghx[0])).sum() + (ct * torch.tensor(ghx[1])).sum()
    loss.backward()

    for name, a, e in (("output", out, outt), ("h_n", h, ht), ("c_n", c, ct), ("grad_x", dx, xt.grad),
                       ("grad_h0", dh0, hxt[0].grad), ("grad_c0", dc0, hxt[1].grad)):
        assert a.shape == tuple(e.shape), name
        assert_close(a, e.detach().numpy(), dtype, name)
    assert list(ours.grads) == [n for n, _ in ref.named_parameters()]
    for name, p in ref.named_parameters():
        assert_close(ours.grads[name], p.grad.numpy(), dtype, name)
