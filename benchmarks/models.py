"""The ``models`` group: LSTM stacks configured as real models use them (shapes.MODELS).

Cases (shapes.MODEL_CASES):

* ``model_train`` / ``model_eval``: the LSTM inside a small torch model, so torch's own
  ops run between our kernel calls, as in a user's training loop:

      x (T, B, I) -> Dropout(p) -> LSTM stack -> Dropout(p) -> Linear(D*H -> 16) -> out

  (p = the model's dropout, also torch.nn.LSTM's between-layer dropout; the hidden state
  is passed in as hx where the model carries it between batches). ``model_train`` is
  one training step: zero the gradients, forward, MSE loss against a fixed target,
  backward, ``optimizer.step()`` (SGD with lr = 0: every parameter is written in place,
  as a real step does, so a packed-weights cache sees a new version each step, yet the
  values stay put and the results can be checked after timing). ``model_eval`` is the
  forward under ``torch.inference_mode()`` in eval mode. The same model with
  ``lstm_fast.torch.LSTM`` (``lstm_fast.torch[<backend>]``) against ``torch.nn.LSTM``
  (``torch``), same weights; the embedding and the softmax decoder of a language model
  are left out on purpose (the decoder over a 33k vocabulary would dominate the time).
* ``layer_forward`` / ``layer_train``: the LSTM stack alone: the NumPy ``lstm_fast.LSTM``
  (``lstm_fast[<backend>]``), ``lstm_fast.torch.LSTM`` alone (``lstm_fast.torch[...]``),
  ``torch.nn.LSTM``, and for float32 inference ONNX Runtime on
  ``lstm_fast.adapters.to_onnx_model``. ``layer_train`` is forward, then backward of
  sum(output * fixed gradient) (gradients for the parameters and the input). Between
  layers, training applies the model's dropout. The NumPy layer draws its masks from its
  own generator, so its training step is checked against torch with dropout off and then
  timed with it on; the torch module draws torch's masks and is checked with it on.

FLOPs (shapes.model_flops): forward 2*T*B*4H*(I_l+H) per layer and direction, a training
step 3x that; the torch model's dropout, Linear and loss are not counted.
"""

import numpy as np

import lstm_fast

from . import harness, shapes
from .harness import Runner

OUT = 16         # the torch model's output features
BACKENDS_ENV = "LSTM_FAST_BENCH_MODEL_BACKENDS"


def model_backends():
    """Our backends in the models group: "auto"'s pick, or $LSTM_FAST_BENCH_MODEL_BACKENDS."""
    import os
    spec = os.environ.get(BACKENDS_ENV, "").strip()
    if not spec:
        return (harness.auto_backend(),)
    avail = lstm_fast.available_backends()
    return tuple(b for b in (s.strip() for s in spec.split(",")) if b in avail)


def competitors(case, dtype):
    """Competitor names for a models-group case, ours first."""
    torch_ok = harness.have("torch")
    names = []
    if case.startswith("layer_"):
        names += [f"lstm_fast[{b}]" for b in model_backends()]
    if torch_ok:
        names += [f"lstm_fast.torch[{b}]" for b in model_backends()]
        names.append("torch")
    if (case == "layer_forward" and np.dtype(dtype).name == "float32"
            and harness.have("onnx") and harness.have("onnxruntime")):
        names.append("onnxruntime")
    return names


def oracle(case, p):
    """Reference outputs of a models-group case: torch.nn.LSTM's (1 thread)."""
    r = make_runner("torch", case, p, 1)
    return {k: np.array(v, copy=True) for k, v in r.outputs().items()}


def make_problem(name, dtype="float32", seed=0):
    """Weights (torch names) of the whole stack and the head, input, state, targets."""
    m = shapes.model_config(name)
    dt = harness.DTYPES[np.dtype(dtype).name]
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(m.H)
    u = lambda lim, *s: rng.uniform(-lim, lim, size=s).astype(dt)  # noqa: E731
    D, n = m.directions, m.layers * m.directions
    sd = {}
    for layer, I in enumerate(m.layer_inputs()):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            sd["weight_ih" + sfx] = u(k, 4 * m.H, I)
            sd["weight_hh" + sfx] = u(k, 4 * m.H, m.H)
            sd["bias_ih" + sfx] = u(k, 4 * m.H)
            sd["bias_hh" + sfx] = u(k, 4 * m.H)
    kh = 1.0 / np.sqrt(D * m.H)
    return dict(
        name=name, model=m, dtype=np.dtype(dt).name, state_dict=sd,
        head={"weight": u(kh, OUT, D * m.H), "bias": u(kh, OUT)},
        x=u(1.0, m.T, m.B, m.I),
        hx=(u(0.5, n, m.B, m.H), u(0.5, n, m.B, m.H)) if m.stateful else None,
        dy=u(1.0, m.T, m.B, D * m.H), target=u(1.0, m.T, m.B, OUT))


def make_runner(name, case, p, threads):
    """Competitor ``name`` for models-group ``case`` on problem ``p`` (make_problem)."""
    if case not in shapes.MODEL_CASES:
        raise ValueError(f"case must be one of {shapes.MODEL_CASES}, got {case!r}")
    harness.set_threads(threads)
    backend = harness.backend_of(name)
    if case.startswith("model_"):
        if name == "torch" or name.startswith("lstm_fast.torch["):
            return _torch_model(name, case, p, backend)
    elif name.startswith("lstm_fast["):
        return _numpy_layer(name, case, p, backend)
    elif name == "torch" or name.startswith("lstm_fast.torch["):
        return _torch_layer(name, case, p, backend)
    elif name == "onnxruntime" and case == "layer_forward":
        return _ort(name, p, threads)
    raise ValueError(f"competitor {name!r} does not run case {case!r}")


def _lstm_module(p, backend, dropout):
    """torch.nn.LSTM (backend None) or lstm_fast.torch.LSTM with the problem's weights."""
    import torch
    m = p["model"]
    kw = dict(num_layers=m.layers, bidirectional=m.bidirectional, dropout=dropout if m.layers > 1 else 0.0,
              dtype=getattr(torch, p["dtype"]))
    if backend is None:
        lstm = torch.nn.LSTM(m.I, m.H, **kw)
    else:
        import lstm_fast.torch
        lstm = lstm_fast.torch.LSTM(m.I, m.H, backend=backend, **kw)
    with torch.no_grad():
        for k, v in p["state_dict"].items():
            getattr(lstm, k).copy_(torch.from_numpy(v))
    return lstm


def _hx_tensors(p):
    import torch
    return None if p["hx"] is None else tuple(torch.from_numpy(s) for s in p["hx"])


def _torch_model(name, case, p, backend):
    import torch
    m = p["model"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(m.dropout)
            self.lstm = _lstm_module(p, backend, m.dropout)
            self.head = torch.nn.Linear(m.directions * m.H, OUT, dtype=getattr(torch, p["dtype"]))

        def forward(self, x, hx=None):
            y, _ = self.lstm(self.drop(x), hx)
            return self.head(self.drop(y))

    net = Net()
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(p["head"]["weight"]))
        net.head.bias.copy_(torch.from_numpy(p["head"]["bias"]))
    x, hx = torch.from_numpy(p["x"]), _hx_tensors(p)
    reseed = lambda: torch.manual_seed(0)  # noqa: E731   (the same dropout masks for ours and torch)
    if case == "model_eval":
        net.eval()

        def fn():
            with torch.inference_mode():
                return net(x, hx)
        return Runner(name, fn, lambda out: dict(out=out.numpy()), before_check=reseed)
    net.train()
    target = torch.from_numpy(p["target"])
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss_fn = torch.nn.MSELoss()

    def fn():
        opt.zero_grad(set_to_none=True)
        out = net(x, hx)
        loss = loss_fn(out, target)
        loss.backward()
        opt.step()
        return out, loss

    def extract(r):
        out, loss = r
        got = {"out": out.detach().numpy(), "loss": loss.detach().numpy()}
        for k, q in net.named_parameters():
            got["grad " + k] = q.grad.numpy()
        return got
    return Runner(name, fn, extract, before_check=reseed)


def _numpy_layer(name, case, p, backend):
    m = p["model"]
    layer = lstm_fast.LSTM(m.I, m.H, num_layers=m.layers, bidirectional=m.bidirectional,
                           dtype=p["dtype"], backend=backend, seed=0)
    layer.load_state_dict(p["state_dict"])
    x, hx, dy = p["x"], p["hx"], p["dy"]
    if case == "layer_forward":
        layer.eval()
        return Runner(name, lambda: layer(x, hx), _layer_outputs)
    layer.train()

    def fn():
        y, state = layer(x, hx)
        dx, _ = layer.backward(dy)
        return y, state, dx, layer.grads

    def extract(r):
        y, state, dx, g = r
        return dict(_layer_outputs((y, state)), dx=dx, **{"grad " + k: v for k, v in g.items()})

    # Checked without dropout (the layer's masks are not torch's), timed with it.
    def set_dropout(value):
        layer.dropout = value if m.layers > 1 else 0.0
    return Runner(name, fn, extract, before_check=lambda: set_dropout(0.0),
                  before_timing=lambda: set_dropout(m.dropout))


def _layer_outputs(r):
    y, (h_n, c_n) = r
    return dict(y=np.asarray(y), h_n=np.asarray(h_n), c_n=np.asarray(c_n))


def _torch_layer(name, case, p, backend):
    import torch
    m = p["model"]
    lstm = _lstm_module(p, backend, m.dropout)
    x, hx = torch.from_numpy(p["x"]), _hx_tensors(p)
    if case == "layer_forward":
        lstm.eval()

        def fn():
            with torch.inference_mode():
                return lstm(x, hx)
        return Runner(name, fn, lambda r: _layer_outputs((r[0].numpy(), (r[1][0].numpy(), r[1][1].numpy()))))
    lstm.train()
    x = x.clone().requires_grad_(True)
    dy = torch.from_numpy(p["dy"])
    params = list(lstm.named_parameters())

    def fn():
        for _, q in params:
            q.grad = None
        x.grad = None
        y, (h_n, c_n) = lstm(x, hx)
        y.backward(dy)
        return y, h_n, c_n

    def extract(r):
        y, h_n, c_n = (t.detach().numpy() for t in r)
        return dict(y=y, h_n=h_n, c_n=c_n, dx=x.grad.numpy(), **{"grad " + k: q.grad.numpy() for k, q in params})

    # Checked with dropout off (to compare with the NumPy layer), timed with it.
    def set_dropout(value):
        lstm.dropout = value if m.layers > 1 else 0.0
    return Runner(name, fn, extract, before_check=lambda: set_dropout(0.0),
                  before_timing=lambda: set_dropout(m.dropout))


def _ort(name, p, threads):
    if p["dtype"] != "float32":
        raise ValueError("the ONNX Runtime competitor is float32 only")
    sess = harness.ort_session(p["state_dict"], threads, initial_state=p["hx"] is not None)
    feed = {"X": p["x"]}
    if p["hx"] is not None:
        feed.update(initial_h=p["hx"][0], initial_c=p["hx"][1])
    return Runner(name, lambda: sess.run(None, feed), lambda r: _layer_outputs((r[0], (r[1], r[2]))))
