"""The outside oracle for the LSTM variants: ONNX Runtime's LSTM operator, with peepholes
(input P, ONNX's gate order i, o, f) and ``clip``, through ``adapters.to_onnx_model`` (which
exports them) and back through ``adapters.from_onnx`` / ``from_onnx_model``. Float32 (ONNX
Runtime's LSTM kernel has no float64). ONNX has no cell clip.
"""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import adapters

from _support import BACKENDS, assert_close

pytest.importorskip("onnx")


def _session(model):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


STRUCTURES = [(1, False), (1, True), (2, False), (2, True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("peephole,clip,cifg", [
    (True, None, False), (False, 0.7, False), (False, None, True), (True, 0.7, False),
    (True, 0.7, True)], ids=["peephole", "clip", "cifg", "peephole+clip", "peephole+clip+cifg"])
@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
def test_onnx_runtime_equals_our_layer(num_layers, bidirectional, peephole, clip, cifg, backend):
    """(The plain LSTM: test_adapters.py.)"""
    T, B, I, H = 6, 4, 3, 5
    D = 2 if bidirectional else 1
    layer = lstm_fast.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                           peephole=peephole, clip=clip, cifg=cifg, seed=3, backend=backend)
    if peephole:   # peephole weights of order 1, so that they matter
        with layer.unlocked_parameters() as params:
            for name in params:
                if name.startswith("weight_c"):
                    params[name][:] = np.random.default_rng(len(name)).uniform(-1, 1, H)
    model = adapters.to_onnx_model(layer.state_dict(), clip=clip)
    lstm_nodes = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == num_layers
    assert all((len(n.input) == 8) == peephole for n in lstm_nodes)
    assert all(any(a.name == "clip" for a in n.attribute) == (clip is not None) for n in lstm_nodes)
    assert all(any(a.name == "input_forget" and a.i == 1 for a in n.attribute) == cifg
               for n in lstm_nodes)
    rng = np.random.default_rng(4)
    x = (2 * rng.standard_normal((T, B, I))).astype(np.float32)
    h0, c0 = (rng.standard_normal((num_layers * D, B, H)).astype(np.float32) for _ in range(2))
    lengths = np.array([3, T, 1, 5])
    Y, Y_h, Y_c = _session(model).run(None, {"X": x, "sequence_lens": lengths.astype(np.int32),
                                             "initial_h": h0, "initial_c": c0})
    out, (h, c) = layer(x, (h0, c0), lengths=lengths)
    for name, a, e in (("Y", Y, out), ("Y_h", Y_h, h), ("Y_c", Y_c, c)):
        assert a.shape == e.shape, name
        assert_close(a, e, np.float32, name)
    if clip is not None:   # the clip changed something: without it ONNX Runtime differs
        plain = adapters.to_onnx_model(layer.state_dict())
        Y2 = _session(plain).run(["Y"], {"X": x, "sequence_lens": lengths.astype(np.int32),
                                         "initial_h": h0, "initial_c": c0})[0]
        assert np.abs(Y2 - Y).max() > 1e-3
    if peephole:
        nopeep = {k: v for k, v in layer.state_dict().items() if not k.startswith("weight_c")}
        Y3 = _session(adapters.to_onnx_model(nopeep, clip=clip)).run(
            ["Y"], {"X": x, "sequence_lens": lengths.astype(np.int32), "initial_h": h0,
                    "initial_c": c0})[0]
        assert np.abs(Y3 - Y).max() > 1e-3


@pytest.mark.parametrize("cifg", [False, True])
@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
def test_peepholes_and_clip_round_trip_through_onnx(num_layers, bidirectional, cifg):
    layer = lstm_fast.LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional,
                           peephole=True, clip=1.5, cifg=cifg, seed=0)
    sd = layer.state_dict()
    nodes = adapters.to_onnx(sd)
    assert all(n["P"].shape == (2 if bidirectional else 1, 12) for n in nodes)
    back = adapters.from_onnx(nodes, input_forget=cifg)
    assert list(back) == list(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    sd2, options = adapters.from_onnx_model(adapters.to_onnx_model(sd, clip=1.5))
    assert options == {"clip": 1.5}
    assert list(sd2) == list(sd) and all(np.array_equal(sd2[k], sd[k]) for k in sd)
    cfg = adapters.describe(sd2)
    assert cfg.peephole and cfg.cifg == cifg
    again = lstm_fast.LSTM(**cfg._asdict(), **options)
    again.load_state_dict(sd2)
    x = np.ones((2, 1, 3), np.float32)
    assert np.array_equal(again(x)[0], layer(x)[0])


def test_onnx_peephole_order_is_i_o_f():
    """P = [P_i, P_o, P_f] (ONNX's order) maps to weight_ci, weight_co, weight_cf."""
    sd = lstm_fast.LSTM(2, 3, peephole=True, seed=0).state_dict()
    P = adapters.to_onnx(sd)[0]["P"][0]
    np.testing.assert_array_equal(P, np.concatenate([sd["weight_ci_l0"], sd["weight_co_l0"],
                                                     sd["weight_cf_l0"]]))
    node = {k: v for k, v in adapters.to_onnx(lstm_fast.LSTM(2, 3).state_dict())[0].items()}
    node["P"] = np.arange(9, dtype=np.float32)[None]
    back = adapters.from_onnx([node])
    assert back["weight_ci_l0"].tolist() == [0, 1, 2]
    assert back["weight_co_l0"].tolist() == [3, 4, 5]
    assert back["weight_cf_l0"].tolist() == [6, 7, 8]
    node["P"] = np.zeros((1, 9), np.float32)        # zero peepholes: the plain LSTM
    assert not adapters.describe(adapters.from_onnx([node])).peephole


def test_errors_name_the_variant():
    sd = lstm_fast.LSTM(2, 3, num_layers=2, peephole=True, seed=0).state_dict()
    del sd["weight_cf_l1"]
    with pytest.raises(KeyError, match=r"missing \['weight_cf_l1'\]"):
        adapters.describe(sd)
    full = lstm_fast.LSTM(2, 3, peephole=True, seed=0).state_dict()
    with pytest.raises(ValueError, match="peephole weights.*Keras LSTMs have none"):
        adapters.to_keras(full)
    with pytest.raises(ValueError, match="clip must be None or 0"):
        adapters.to_onnx_model(full, clip=-1.0)
    from onnx import helper
    model = adapters.to_onnx_model(full)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute("input_forget", 1))
    lstm.attribute.append(helper.make_attribute("layout", 1))
    with pytest.raises(ValueError, match="layout=1 is not implemented"):
        adapters.from_onnx_model(model)
    cifg = lstm_fast.LSTM(2, 3, cifg=True).state_dict()
    with pytest.raises(ValueError, match="coupled input and forget gates.*Keras LSTMs have none"):
        adapters.to_keras(cifg)
