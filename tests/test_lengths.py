"""Variable-length batches against torch's pack_padded_sequence(enforce_sorted=False)."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstm_fast  # noqa: E402

from _support import assert_close, make_problem, torch_nn_pair  # noqa: E402

LENGTHS = np.array([3, 7, 1, 7, 5])       # any order, a length-1 row, two full rows
CONFIGS = list(itertools.product((1, 2), (False, True), (False, True)))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS,
                         ids=[f"L{a}-{'bi' if b else 'uni'}-{'bf' if c else 'tm'}" for a, b, c in CONFIGS])
def test_layer_with_lengths_matches_torch_packed(backend, dtype, num_layers, bidirectional, batch_first):
    T, B, I, H = 7, 5, 3, 4
    D = 2 if bidirectional else 1
    ref, ours = torch_nn_pair(backend, dtype, num_layers, bidirectional, batch_first, I=I, H=H)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    hx = tuple(rng.standard_normal((num_layers * D, B, H)).astype(dtype) for _ in range(2))

    out, (h, c) = ours(x, hx, lengths=LENGTHS)
    gout = rng.standard_normal(out.shape).astype(dtype)
    ghx = tuple(rng.standard_normal(h.shape).astype(dtype) for _ in range(2))
    dx, (dh0, dc0) = ours.backward(gout, ghx)

    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(s, requires_grad=True) for s in hx)
    packed = pack_padded_sequence(xt, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False)
    out_p, (ht, ct) = ref(packed, hxt)
    outt, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    loss = (outt * torch.tensor(gout)).sum() + (ht * torch.tensor(ghx[0])).sum() + (ct * torch.tensor(ghx[1])).sum()
    loss.backward()

    for name, a, e in (("output", out, outt.detach().numpy()), ("h_n", h, ht.detach().numpy()),
                       ("c_n", c, ct.detach().numpy()), ("grad_x", dx, xt.grad.numpy()),
                       ("grad_h0", dh0, hxt[0].grad.numpy()), ("grad_c0", dc0, hxt[1].grad.numpy())):
        assert_close(a, e, dtype, name)
    for name, p in ref.named_parameters():
        assert_close(ours.grads[name], p.grad.numpy(), dtype, name)
    # padded positions: output exactly zero, input gradient exactly zero
    t_idx = np.arange(T)[:, None]
    pad = t_idx >= LENGTHS[None, :]              # (T, B)
    if batch_first:
        pad = pad.T
    assert np.all(out[pad] == 0)
    assert np.all(dx[pad] == 0)


def test_functional_lengths_equal_separate_runs(backend, dtype):
    T, B, I, H = 6, 4, 3, 5
    p, g = make_problem(T, B, I, H, dtype=dtype, seed=11)
    lengths = np.array([2, 6, 0, 4])
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**p, lengths=lengths, backend=backend)
    grads = lstm_fast.lstm_backward(cache, **g)
    dw_sum = 0
    for b, L in enumerate(lengths):
        pb = dict(p, x=p["x"][:L, b:b + 1], h0=p["h0"][b:b + 1], c0=p["c0"][b:b + 1])
        yb, hb, cb, cb_cache = lstm_fast.lstm_forward(**pb, backend="numpy")
        gb = lstm_fast.lstm_backward(cb_cache, g["dy"][:L, b:b + 1], g["dh_n"][b:b + 1], g["dc_n"][b:b + 1])
        assert_close(y[:L, b], yb[:, 0], dtype, f"y[{b}]")
        assert np.all(y[L:, b] == 0)
        assert_close(h_n[b], hb[0], dtype, f"h_n[{b}]")
        assert_close(c_n[b], cb[0], dtype, f"c_n[{b}]")
        assert_close(grads.dx[:L, b], gb.dx[:, 0], dtype, f"dx[{b}]")
        assert np.all(grads.dx[L:, b] == 0)
        assert_close(grads.dh0[b], gb.dh0[0], dtype, f"dh0[{b}]")
        dw_sum = dw_sum + gb.dw_hh
    assert_close(grads.dw_hh, dw_sum, dtype, "dw_hh")
    # length 0: state passes through untouched
    np.testing.assert_array_equal(h_n[2], p["h0"][2])
    np.testing.assert_array_equal(grads.dc0[2], g["dc_n"][2])


def test_work_scales_with_sum_of_lengths(monkeypatch):
    """The backend sees only sum(lengths) rows, never B * T."""
    from lstm_fast.backends import reference as _reference
    seen = []
    real = _reference.forward

    def spy(packed, x, h0, c0, num_threads, batch_sizes=None, *args):
        seen.append((x.shape, None if batch_sizes is None else list(batch_sizes)))
        return real(packed, x, h0, c0, num_threads, batch_sizes, *args)

    monkeypatch.setattr(_reference, "forward", spy)
    p, _ = make_problem(10, 3, 2, 4)
    lstm_fast.lstm_forward(**p, lengths=[1, 10, 2], backend="numpy")
    assert seen == [((13, 2), [3, 2] + [1] * 8)]


def test_lengths_validation():
    p, _ = make_problem(4, 3, 2, 5)
    for bad, exc, pattern in (([1, 2], ValueError, r"lengths must have shape \(B,\) = \(3,\), got \(2,\)"),
                              ([1, 2, 5], ValueError, r"lengths must lie in \[0, T=4\], got values from 1 to 5"),
                              ([1, -1, 2], ValueError, r"lengths must lie in \[0, T=4\]"),
                              ([1.0, 2.0, 3.0], TypeError, "lengths must be integers, got dtype float64")):
        with pytest.raises(exc, match=pattern):
            lstm_fast.lstm_forward(**p, lengths=bad)
    layer = lstm_fast.LSTM(2, 5, dtype=np.float64)
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer(p["x"], lengths=[4, 4])
