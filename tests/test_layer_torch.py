"""The layer against torch.nn.LSTM with the same weights: outputs, final states, every gradient."""

import itertools
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # CI installs torch; test_api asserts it is importable there

import lstm_fast

from _support import assert_close, torch_dtype, torch_nn_pair



_pair = torch_nn_pair


def _run_torch(ref, x, hx, gout, ghx):
    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(s, requires_grad=True) for s in hx)
    out, (h, c) = ref(xt, hxt)
    loss = (out * torch.tensor(gout)).sum() + (h * torch.tensor(ghx[0])).sum() + (c * torch.tensor(ghx[1])).sum()
    ref.zero_grad()
    loss.backward()
    return (out.detach().numpy(), h.detach().numpy(), c.detach().numpy(), xt.grad.numpy(),
            hxt[0].grad.numpy(), hxt[1].grad.numpy(),
            {n: p.grad.numpy() for n, p in ref.named_parameters()})


CONFIGS = list(itertools.product((1, 2, 3), (False, True), (False, True)))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS,
                         ids=[f"L{a}-{'bi' if b else 'uni'}-{'bf' if c else 'tm'}" for a, b, c in CONFIGS])
def test_layer_matches_torch(backend, dtype, num_layers, bidirectional, batch_first):
    T, B, I, H = 6, 3, 4, 5
    ref, ours = _pair(backend, dtype, num_layers, bidirectional, batch_first, I=I, H=H)
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    hx = tuple(rng.standard_normal((num_layers * D, B, H)).astype(dtype) for _ in range(2))
    out, (h, c) = ours(x, hx)
    gout = rng.standard_normal(out.shape).astype(dtype)
    ghx = tuple(rng.standard_normal(h.shape).astype(dtype) for _ in range(2))
    dx, (dh0, dc0) = ours.backward(gout, ghx)
    t_out, t_h, t_c, t_dx, t_dh0, t_dc0, t_grads = _run_torch(ref, x, hx, gout, ghx)
    for name, a, e in (("output", out, t_out), ("h_n", h, t_h), ("c_n", c, t_c),
                       ("grad_x", dx, t_dx), ("grad_h0", dh0, t_dh0), ("grad_c0", dc0, t_dc0)):
        assert a.shape == e.shape, name
        assert_close(a, e, dtype, name)
    assert list(ours.grads) == list(t_grads)
    for name in t_grads:
        assert_close(ours.grads[name], t_grads[name], dtype, name)


def test_unbatched_input_and_no_bias(backend, dtype):
    ref, ours = _pair(backend, dtype, 2, True, False, bias=False)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 3)).astype(dtype)
    out, (h, c) = ours(x)
    with torch.no_grad():
        t_out, (t_h, t_c) = ref(torch.tensor(x))
    assert out.shape == (7, 10) and h.shape == (4, 5)
    assert_close(out, t_out.numpy(), dtype, "output")
    assert_close(h, t_h.numpy(), dtype, "h_n")
    dx, (dh0, dc0) = ours.backward(np.ones_like(out))
    assert dx.shape == x.shape and dh0.shape == (4, 5)


def test_default_initialization_like_torch():
    """uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, reproducible from the seed."""
    a = lstm_fast.LSTM(3, 16, num_layers=2, seed=7)
    b = lstm_fast.LSTM(3, 16, num_layers=2, seed=7)
    c = lstm_fast.LSTM(3, 16, num_layers=2, seed=8)
    bound = 1 / np.sqrt(16)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa, pb)
        assert not np.array_equal(pa, pc)
        assert np.all(np.abs(pa) <= bound) and np.abs(pa).max() > 0.8 * bound
    t = torch.nn.LSTM(3, 16, num_layers=2)
    assert [(n, tuple(p.shape)) for n, p in t.named_parameters()] == \
        [(n, p.shape) for n, p in a.named_parameters()]


def test_state_dict_round_trip_both_ways(dtype):
    ref = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).to(torch_dtype(dtype))
    ours = lstm_fast.LSTM(4, 6, num_layers=2, bidirectional=True, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).to(torch_dtype(dtype))
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for (n, p), (_, q) in zip(ref.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), n


def test_pickle_preserves_results(backend):
    layer = lstm_fast.LSTM(3, 4, num_layers=2, seed=0, backend=backend)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out, _ = layer(x)
    clone = pickle.loads(pickle.dumps(layer))
    out2, _ = clone(x)
    np.testing.assert_array_equal(out, out2)


PROJ_CONFIGS = [(1, False, False), (2, True, False), (2, False, True)]


@pytest.mark.parametrize("num_layers,bidirectional,with_lengths", PROJ_CONFIGS)
def test_projection_matches_torch(dtype, num_layers, bidirectional, with_lengths):
    """proj_size (LSTMP) on every backend."""
    backends = lstm_fast.available_backends()
    T, B, I, H, P = 5, 3, 4, 6, 3
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=P).to(torch_dtype(dtype))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = (rng.standard_normal((num_layers * D, B, P)).astype(dtype),
          rng.standard_normal((num_layers * D, B, H)).astype(dtype))
    lengths = np.array([5, 2, 4]) if with_lengths else None
    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(s, requires_grad=True) for s in hx)
    if with_lengths:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        out_p, (ht, ct) = ref(pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False), hxt)
        outt = pad_packed_sequence(out_p, total_length=T)[0]
    else:
        outt, (ht, ct) = ref(xt, hxt)
    gout = rng.standard_normal(outt.shape).astype(dtype)
    ghx = (rng.standard_normal(ht.shape).astype(dtype), rng.standard_normal(ct.shape).astype(dtype))
    ((outt * torch.tensor(gout)).sum() + (ht * torch.tensor(ghx[0])).sum() + (ct * torch.tensor(ghx[1])).sum()).backward()
    for backend in backends:
        ours = lstm_fast.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=P,
                              dtype=dtype, backend=backend)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        ours.load_state_dict(ref.state_dict())
        out, (h, c) = ours(x, hx, lengths=lengths)
        dx, (dh0, dc0) = ours.backward(gout, ghx)
        for name, a, e in (("output", out, outt), ("h_n", h, ht), ("c_n", c, ct), ("grad_x", dx, xt.grad),
                           ("grad_h0", dh0, hxt[0].grad), ("grad_c0", dc0, hxt[1].grad)):
            assert_close(a, e.detach().numpy(), dtype, f"{backend} {name}")
        for name, p in ref.named_parameters():
            assert_close(ours.grads[name], p.grad.numpy(), dtype, f"{backend} {name}")
