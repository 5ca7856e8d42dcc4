"""Weight adapters: exact round trips, and each format's layout checked by running it.

ONNX through onnxruntime (float32: its LSTM kernel has no float64); Keras, which
is not a dependency, through a NumPy re-implementation of its LSTM step
(z = x @ kernel + h @ recurrent_kernel + bias, split i, f, c, o; Bidirectional
runs a go_backwards copy and reverses its output back).
"""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import adapters

from _support import assert_close


def _layer(num_layers=2, bidirectional=True, bias=True, dtype=np.float64, I=3, H=4, seed=0):
    layer = lstm_fast.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                           dtype=dtype, backend="numpy", seed=seed)
    rng = np.random.default_rng(seed + 1)      # distinct b_ih and b_hh everywhere
    layer.load_state_dict({k: rng.uniform(-0.5, 0.5, v.shape) for k, v in layer.state_dict().items()})
    return layer


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


STRUCTURES = [(1, False, True), (2, True, True), (2, False, False), (3, True, False)]


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
def test_describe(num_layers, bidirectional, bias):
    sd = _layer(num_layers, bidirectional, bias, I=7, H=4).state_dict()
    assert adapters.describe(sd) == adapters.LSTMConfig(7, 4, num_layers, bidirectional, bias, 0)


# --- torch ----------------------------------------------------------------------

@pytest.mark.parametrize("proj_size", (0, 2))
def test_torch_round_trip(proj_size):
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=proj_size).double()
    sd = adapters.from_torch(ref.state_dict())
    assert list(sd) == list(ref.state_dict())
    assert all(type(v) is np.ndarray and v.dtype == np.float64 for v in sd.values())
    assert adapters.describe(sd).proj_size == proj_size
    back = adapters.to_torch(sd)
    for k, t in ref.state_dict().items():
        assert torch.equal(back[k], t), k
    other = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=proj_size).double()
    other.load_state_dict(back)
    assert adapters.to_torch(sd, dtype=torch.float32)["weight_ih_l0"].dtype == torch.float32
    if not proj_size:
        layer = lstm_fast.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float64)
        layer.load_state_dict(sd)
        _assert_same(layer.state_dict(), sd)


VARIANTS = {"ln": dict(layer_norm=True), "ln_peephole": dict(layer_norm=True, peephole=True),
            "cifg_peephole": dict(cifg=True, peephole=True)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torch_round_trip_variants(variant, dtype):
    """A NumPy LSTM with layer norm (or another variant) -> to_torch(target=
    "lstm_fast.torch.LSTM") -> lstm_fast.torch.LSTM with the same options -> from_torch ->
    a NumPy LSTM: the same names in the same order, every parameter equal (dtype kept), the
    module's and both layers' outputs and final states equal (the same numpy backend)."""
    torch = pytest.importorskip("torch")
    from lstm_fast import torch as ltorch

    kw, (T, B, I, H) = VARIANTS[variant], (5, 3, 4, 6)
    shape = dict(num_layers=2, bidirectional=True)
    layer = lstm_fast.LSTM(I, H, **shape, dtype=dtype, backend="numpy", seed=0, **kw)
    rng = np.random.default_rng(1)     # gains around 1, every other parameter around 0
    layer.load_state_dict({k: (rng.uniform(-0.5, 0.5, v.shape)
                               + k.startswith("layer_norm_weight")).astype(dtype)
                           for k, v in layer.state_dict().items()})
    sd = layer.state_dict()
    ts = adapters.to_torch(sd, target="lstm_fast.torch.LSTM")
    assert list(ts) == list(sd)
    for k, t in ts.items():
        np.testing.assert_array_equal(t.numpy(), sd[k], err_msg=k)
        assert t.numpy().dtype == dtype, k
    m = ltorch.LSTM(I, H, **shape, backend="numpy", dtype=ts["weight_ih_l0"].dtype, **kw)
    m.load_state_dict(ts)
    assert list(m.state_dict()) == list(sd)

    back = adapters.from_torch(m.state_dict())
    _assert_same(back, sd)
    assert adapters.describe(back)._asdict() == dict(
        input_size=I, hidden_size=H, **shape, bias=True, proj_size=0, peephole="peephole" in kw,
        cifg="cifg" in kw, layer_norm="layer_norm" in kw)
    twin = lstm_fast.LSTM(I, H, **shape, dtype=dtype, backend="numpy", **kw)
    twin.load_state_dict(back)
    _assert_same(twin.state_dict(), sd)

    x, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((T, B, I), (4, B, H), (4, B, H)))
    y, (h_n, c_n) = layer(x, (h0, c0))
    with torch.no_grad():
        ty, (th, tc) = m(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    y2, (h2, c2) = twin(x, (h0, c0))
    for name, want in (("y", y), ("h_n", h_n), ("c_n", c_n)):
        for got in ({"y": ty, "h_n": th, "c_n": tc}[name].numpy(),
                    {"y": y2, "h_n": h2, "c_n": c2}[name]):
            assert got.dtype == dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("variant", ["peephole", "cifg", "layer_norm"])
def test_to_torch_refuses_variants_for_torch_nn_lstm(variant):
    """torch.nn.LSTM has none of the variants: the default target is an error naming the
    option and lstm_fast.torch.LSTM; an unknown target is an error naming ``target``."""
    pytest.importorskip("torch")
    sd = lstm_fast.LSTM(3, 4, **{variant: True}).state_dict()
    for call in (lambda: adapters.to_torch(sd), lambda: adapters.to_torch(sd, target="torch.nn.LSTM")):
        with pytest.raises(ValueError, match=rf"{variant}=True.*use lstm_fast\.torch\.LSTM\("
                                             rf"{variant}=True\).*target=\"lstm_fast\.torch\.LSTM\""):
            call()
    with pytest.raises(ValueError, match="target must be one of"):
        adapters.to_torch(sd, target="keras")


# --- Keras ----------------------------------------------------------------------

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _keras_lstm(x, kernel, recurrent_kernel, bias=None, go_backwards=False):
    """Keras 3 LSTM (activation tanh, recurrent_activation sigmoid), return_sequences=True,
    batch-major x (B, T, I); zero initial state."""
    B, T, _ = x.shape
    H = recurrent_kernel.shape[0]
    h = np.zeros((B, H), x.dtype)
    c = np.zeros((B, H), x.dtype)
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    ys = []
    for t in steps:
        z = x[:, t] @ kernel + h @ recurrent_kernel
        if bias is not None:
            z = z + bias
        i, f, cc, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(cc)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1)          # in processing order, like Keras


def _keras_stack(x, layers, bidirectional):
    """Stacked Keras LSTM / Bidirectional(LSTM) layers (merge_mode="concat")."""
    for weights in layers:
        per = len(weights) // (2 if bidirectional else 1)
        y = _keras_lstm(x, *weights[:per])
        if bidirectional:
            y_back = _keras_lstm(x, *weights[per:], go_backwards=True)[:, ::-1]
            y = np.concatenate([y, y_back], axis=2)
        x = y
    return x


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
def test_keras_layout_runs_like_our_layer(num_layers, bidirectional, bias):
    layer = _layer(num_layers, bidirectional, bias)
    keras = adapters.to_keras(layer.state_dict(), num_layers, bidirectional)
    assert len(keras) == num_layers
    D = 2 if bidirectional else 1
    assert len(keras[0]) == D * (3 if bias else 2)
    assert keras[0][0].shape == (3, 16) and keras[0][1].shape == (4, 16)
    x = np.random.default_rng(5).standard_normal((2, 6, 3))        # Keras is batch-major
    expected = _keras_stack(x, keras, bidirectional)
    out, _ = layer(x.transpose(1, 0, 2))
    assert_close(out.transpose(1, 0, 2), expected, np.float64)


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
def test_keras_round_trips(num_layers, bidirectional, bias):
    layer = _layer(num_layers, bidirectional, bias, dtype=np.float32)
    sd = layer.state_dict()
    keras = adapters.to_keras(sd)
    # Keras -> ours -> Keras is exact
    sd2 = adapters.from_keras(keras, bidirectional=bidirectional)
    back = adapters.to_keras(sd2)
    for a, b in zip(sum(keras, []), sum(back, [])):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    # ours -> Keras -> ours: the same weights, the two biases merged into bias_ih
    assert list(sd2) == list(sd)
    for k in sd:
        if k.startswith("bias_ih"):
            np.testing.assert_array_equal(sd2[k], sd[k] + sd[k.replace("_ih", "_hh")])
        elif k.startswith("bias_hh"):
            assert not sd2[k].any()
        else:
            np.testing.assert_array_equal(sd2[k], sd[k])
    # ... which the layer computes with the same bits
    other = _layer(num_layers, bidirectional, bias, dtype=np.float32, seed=9)
    other.load_state_dict(sd2)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(other(x)[0], layer(x)[0])


# --- ONNX -----------------------------------------------------------------------

def _one_node_model(node_weights, I, H, bidirectional):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    D = 2 if bidirectional else 1
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "B", "seq", "h0", "c0"], ["Y", "Y_h", "Y_c"],
                          hidden_size=H, direction="bidirectional" if bidirectional else "forward")],
        "one_lstm",
        [helper.make_tensor_value_info("X", f32, ["T", "B", I]),
         helper.make_tensor_value_info("seq", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("h0", f32, [D, "B", H]),
         helper.make_tensor_value_info("c0", f32, [D, "B", H])],
        [helper.make_tensor_value_info("Y", f32, ["T", D, "B", H]),
         helper.make_tensor_value_info("Y_h", f32, [D, "B", H]),
         helper.make_tensor_value_info("Y_c", f32, [D, "B", H])],
        initializer=[numpy_helper.from_array(v, k) for k, v in node_weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _session(model):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
def test_onnx_one_node_matches_our_layer(bidirectional):
    T, B, I, H = 6, 4, 3, 5
    D = 2 if bidirectional else 1
    layer = _layer(1, bidirectional, True, dtype=np.float32, I=I, H=H)
    (node,) = adapters.to_onnx(layer.state_dict(), num_layers=1, bidirectional=bidirectional)
    assert node["W"].shape == (D, 4 * H, I) and node["R"].shape == (D, 4 * H, H)
    assert node["B"].shape == (D, 8 * H)
    sess = _session(_one_node_model(node, I, H, bidirectional))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = (rng.standard_normal((D, B, H)).astype(np.float32) for _ in range(2))
    for lengths in (np.full(B, T), np.array([3, T, 1, 5])):
        Y, Y_h, Y_c = sess.run(None, {"X": x, "seq": lengths.astype(np.int32), "h0": h0, "c0": c0})
        out, (h, c) = layer(x, (h0, c0), lengths=lengths)
        assert_close(Y.transpose(0, 2, 1, 3).reshape(T, B, D * H), out, np.float32, "Y")
        assert_close(Y_h, h, np.float32, "Y_h")
        assert_close(Y_c, c, np.float32, "Y_c")


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
def test_onnx_model_matches_our_layer(num_layers, bidirectional, bias):
    T, B = 5, 3
    D = 2 if bidirectional else 1
    layer = _layer(num_layers, bidirectional, bias, dtype=np.float32)
    sess = _session(adapters.to_onnx_model(layer.state_dict()))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, 3)).astype(np.float32)
    h0, c0 = (rng.standard_normal((num_layers * D, B, 4)).astype(np.float32) for _ in range(2))
    lengths = np.array([2, T, 1])
    Y, Y_h, Y_c = sess.run(None, {"X": x, "sequence_lens": lengths.astype(np.int32),
                                  "initial_h": h0, "initial_c": c0})
    out, (h, c) = layer(x, (h0, c0), lengths=lengths)
    for name, a, e in (("Y", Y, out), ("Y_h", Y_h, h), ("Y_c", Y_c, c)):
        assert a.shape == e.shape, name
        assert_close(a, e, np.float32, name)
    bare = _session(adapters.to_onnx_model(layer.state_dict(), initial_state=False, lengths=False))
    (Y,) = bare.run(["Y"], {"X": x})
    assert_close(Y, layer(x)[0], np.float32, "Y without state and lengths")


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
def test_onnx_round_trips(num_layers, bidirectional, bias):
    sd = _layer(num_layers, bidirectional, bias).state_dict()
    onnx_layers = adapters.to_onnx(sd)
    _assert_same(adapters.from_onnx(onnx_layers), sd)
    again = adapters.to_onnx(adapters.from_onnx(onnx_layers))
    for a, b in zip(onnx_layers, again):
        _assert_same(a, b)
    as_tuples = [tuple(n[k] for k in ("W", "R", "B") if k in n) for n in onnx_layers]
    _assert_same(adapters.from_onnx(as_tuples), sd)


def test_onnx_gate_order_is_i_o_f_c():
    sd = _layer(1, False, True, H=1).state_dict()
    w = sd["weight_hh_l0"][:, 0]                   # torch rows i, f, g, o
    onnx_r = adapters.to_onnx(sd)[0]["R"][0, :, 0]
    np.testing.assert_array_equal(onnx_r, w[[0, 3, 1, 2]])


# --- errors ---------------------------------------------------------------------

def test_errors_name_the_problem():
    sd = _layer(2, True, True).state_dict()
    missing = dict(sd)
    del missing["bias_hh_l1_reverse"]
    with pytest.raises(KeyError, match="missing.*bias_hh_l1_reverse"):
        adapters.to_onnx(missing)
    with pytest.raises(KeyError, match="unexpected key 'weight_xx_l0'"):
        adapters.to_keras({**sd, "weight_xx_l0": sd["weight_ih_l0"]})
    with pytest.raises(KeyError, match="num_layers=3.*missing.*weight_hh_l2"):
        adapters.from_torch({**sd, "weight_ih_l2": sd["weight_ih_l1"]})
    bad = dict(sd, weight_hh_l1=sd["weight_hh_l1"][:, :3])
    with pytest.raises(ValueError, match=r"weight_hh_l1 must have shape \(16, 4\).*got \(16, 3\)"):
        adapters.to_keras(bad)
    with pytest.raises(KeyError, match="weight_ih_l0"):
        adapters.describe({})
    with pytest.raises(ValueError, match="num_layers=3 given"):
        adapters.to_keras(sd, num_layers=3)
    with pytest.raises(ValueError, match="unidirectional"):
        adapters.to_onnx(_layer(1, False).state_dict(), bidirectional=True)
    keras = adapters.to_keras(sd)
    with pytest.raises(ValueError, match="expected 6 arrays"):
        adapters.from_keras([keras[0][:3]], bidirectional=True)
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(H, 4H\)"):
        adapters.from_keras([[keras[0][0], keras[0][1].T, keras[0][2]]])
    with pytest.raises(ValueError, match=r"layer 1.*kernel must have shape \(input_size, 4H=16\)"):
        adapters.from_keras([keras[0][:3], [keras[1][0][:, :8], keras[1][1], keras[1][2]]])
    node = adapters.to_onnx(sd)[0]
    with pytest.raises(ValueError, match=r"B must have shape \(2, 32\)"):
        adapters.from_onnx([dict(node, B=node["B"][:, :16])])
    with pytest.raises(ValueError, match=r"layer 0: P must have shape \(2, 12\)"):
        adapters.from_onnx([dict(node, P=np.ones((2, 8)))])     # peepholes: test_variants_onnx.py
    with pytest.raises(KeyError, match="expected keys W, R"):
        adapters.from_onnx([{"W": node["W"]}])
    with pytest.raises(TypeError, match="one list of Keras weights per layer"):
        adapters.from_keras(sd)


def test_projection_only_in_torch_format():
    torch = pytest.importorskip("torch")
    sd = adapters.from_torch(torch.nn.LSTM(3, 5, proj_size=2).state_dict())
    for convert in (adapters.to_keras, adapters.to_onnx):
        with pytest.raises(ValueError, match="proj_size=2"):
            convert(sd)
