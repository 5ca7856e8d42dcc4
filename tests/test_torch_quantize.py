"""lstm_fast.torch.quantize (issue 16, the torch side): every torch.nn.LSTM of a torch model
(lstm_fast.torch.LSTM included), found recursively, replaced by an inference-only
QuantizedLSTM running the NumPy layer quantized with lstm_fast.quantize: the same bits as
that layer with the same bf16 weights, within the documented bf16 bound of torch's float64
LSTM (docs/guides/numpy.md; ERR_BOUND of tests/test_bf16.py), every layout; gradients and
train() rejected; bad input named."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lstm_fast.backends._c")

import lstm_fast  # noqa: E402
from lstm_fast import torch as ltorch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from _support import same_bits  # noqa: E402
from test_bf16 import ERR_BOUND  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self, cls=ltorch.LSTM, **kw):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 5))
        self.body.rnn = cls(5, 11, **kw)
        self.head = torch.nn.Linear(11 * (2 if kw.get("bidirectional") else 1), 1)

    def forward(self, x):
        y, _ = self.body.rnn(self.body[0](x))
        return self.head(y)


LAYOUTS = [dict(), dict(num_layers=2), dict(bidirectional=True),
           dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False)]


def _numpy_layer(lstm, weight_dtype="bfloat16"):
    layer = lstm_fast.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                           lstm.batch_first, 0.0, lstm.bidirectional, backend="c")
    layer.load_state_dict({k: v.detach().numpy() for k, v in lstm.state_dict().items()})
    return lstm_fast.quantize(layer, weight_dtype)


@pytest.mark.parametrize("kw", LAYOUTS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items())
                         or "default")
@pytest.mark.parametrize("cls", [ltorch.LSTM, torch.nn.LSTM], ids=["ours", "torch"])
@pytest.mark.parametrize("wd", ["bfloat16", "int8"])
def test_model_lstms_replaced_same_bits_as_the_numpy_layer(cls, kw, wd):
    torch.manual_seed(0)
    model = Model(cls, dropout=0.2 if kw.get("num_layers", 1) > 1 else 0.0, **kw)
    q = ltorch.quantize(model, wd)
    assert isinstance(q.body.rnn, ltorch.QuantizedLSTM) and q.body.rnn.weight_dtype == wd
    assert type(model.body.rnn) is cls and model.training        # the original is unchanged
    assert not q.training and not any(m.training for m in q.modules())
    assert q.head.weight is not model.head.weight and torch.equal(q.head.weight, model.head.weight)
    layer = _numpy_layer(model.body.rnn, wd)
    x = torch.randn(3, 6, 5) if kw.get("batch_first") else torch.randn(6, 3, 5)
    D, L = 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1)
    hx = (torch.randn(L * D, 3, 11), torch.randn(L * D, 3, 11))
    for h in (None, hx):
        got, (h_n, c_n) = q.body.rnn(x, h)
        want, (wh, wc) = layer(x.numpy(), None if h is None else tuple(t.numpy() for t in h))
        assert same_bits((got.numpy(), h_n.numpy(), c_n.numpy()), (want, wh, wc))
    with torch.no_grad():      # the whole model: its other layers as before
        y = q.body[0](x)
        assert torch.equal(q(x), q.head(torch.from_numpy(layer(y.numpy())[0])))


@pytest.mark.parametrize("T", [1, 64])
def test_within_the_documented_bf16_bound_of_torch(T):
    """The documented case of the bound (B, I, H = 4, 48, 64, weights at torch's scale,
    inputs and c0 of order 1): max |y - y_float64| within ERR_BOUND[T], against torch's own
    LSTM in float64 of the same float32 weights; and clearly bf16 (not float32)."""
    torch.manual_seed(11)
    lstm = torch.nn.LSTM(48, 64)
    q = ltorch.quantize(lstm)
    assert isinstance(q, ltorch.QuantizedLSTM)
    exact = torch.nn.LSTM(48, 64).double()
    exact.load_state_dict(lstm.state_dict())
    x = torch.rand(T, 4, 48) * 2 - 1
    hx = (torch.rand(1, 4, 64) - 0.5, torch.rand(1, 4, 64) * 2 - 1)
    got = q(x, hx)
    with torch.no_grad():
        want = exact(x.double(), tuple(t.double() for t in hx))
        f32 = lstm(x, hx)
    for g, e, f in zip((got[0],) + got[1], (want[0],) + want[1], (f32[0],) + f32[1]):
        err = (g.double() - e).abs().max().item()
        assert g.dtype == torch.float32 and err <= ERR_BOUND[T]
    assert (got[0].double() - want[0]).abs().max() > 10 * (f32[0].double() - want[0]).abs().max()


def test_unbatched_packed_and_pickle():
    torch.manual_seed(1)
    lstm = ltorch.LSTM(5, 11, num_layers=2, bidirectional=True)
    q = ltorch.quantize(lstm)
    layer = _numpy_layer(lstm)
    x = torch.randn(6, 5)
    got = q(x)
    want = layer(x.numpy())
    assert same_bits((got[0].numpy(), got[1][0].numpy()), (want[0], want[1][0]))
    # PackedSequence, unsorted: the layer's lengths, in the input's order
    xs, lengths = torch.randn(6, 3, 5), torch.tensor([2, 6, 4])
    out, (h, c) = q(pack_padded_sequence(xs, lengths, enforce_sorted=False))
    w_out, (w_h, w_c) = layer(xs.numpy(), None, lengths.numpy())
    from torch.nn.utils.rnn import pad_packed_sequence
    padded, _ = pad_packed_sequence(out, total_length=6)
    assert same_bits((padded.numpy(), h.numpy(), c.numpy()), (w_out, w_h, w_c))
    q2 = pickle.loads(pickle.dumps(q))
    assert same_bits((q2(x)[0].numpy(),), (got[0].numpy(),))


def test_inference_only_and_bad_input():
    torch.manual_seed(2)
    model = Model()
    q = ltorch.quantize(model)
    x = torch.randn(4, 2, 5)
    with pytest.raises(RuntimeError, match="inference only.*input requires grad"):
        q.body.rnn(x.requires_grad_(True))      # (the Linear before it made it require grad)
    with pytest.raises(RuntimeError, match="inference only"):
        q(x)
    with torch.no_grad():
        q(x)
    with pytest.raises(ValueError, match="inference only"):
        q.train()
    with pytest.raises(ValueError, match="inference only"):
        q.body.rnn.train()
    q.eval()
    rnn = q.body.rnn
    with pytest.raises(TypeError, match="input must be a CPU tensor of dtype torch.float32"):
        rnn(torch.randn(4, 2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"hx\[1\] must be a CPU tensor"):
        rnn(torch.randn(4, 2, 5), (torch.zeros(1, 2, 11), torch.zeros(1, 2, 11).double()))
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        ltorch.quantize(model, "int4")
    with pytest.raises(ValueError, match="proj_size"):
        ltorch.quantize(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="variants"):
        ltorch.quantize(ltorch.LSTM(3, 4, peephole=True))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ltorch.quantize(object())
    # the layer's own dtype gives a float32 inference module with the float32 layer's bits
    f = ltorch.quantize(model.body.rnn, "float32")
    with torch.no_grad():
        assert torch.equal(f(x)[0], model.body.rnn(x)[0])
    inplace = ltorch.quantize(model, inplace=True)
    assert inplace is model and isinstance(model.body.rnn, ltorch.QuantizedLSTM)
