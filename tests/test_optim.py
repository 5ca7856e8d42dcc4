"""lstm_fast.optim.Adam against torch.optim.Adam (float64, several steps, same
parameters and gradients), its use on the layer, and its argument checks."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast.optim import Adam

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kw", [{}, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
                                {"lr": 0.01, "weight_decay": 0.1}])
def test_adam_matches_torch_float64(kw):
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (4,), "s": (1,)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = Adam(**kw)
    topt = torch.optim.Adam(list(tparams.values()), foreach=False, **kw)
    for step in range(8):
        grads = {k: rng.normal(size=s) * 10.0 ** (step % 3 - 1) for k, s in shapes.items()}
        if step == 3:
            del grads["s"]  # a parameter without a gradient this step is left alone, as in torch
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k]) if k in grads else None
        topt.step()
        opt.step(params, grads)
        for k in shapes:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-13, atol=1e-15,
                                       err_msg=f"{k} after step {step + 1}")
    assert opt.t == 8


def test_adam_trains_the_layer_in_place_float32():
    rng = np.random.default_rng(1)
    layer = lstm_fast.LSTM(3, 8, seed=0)
    x = rng.normal(size=(5, 4, 3)).astype(np.float32)
    target, _ = lstm_fast.LSTM(3, 8, seed=1)(x)  # reachable: another LSTM's output
    opt = Adam(lr=2e-2)
    losses = []
    for _ in range(60):
        out, _ = layer(x)
        losses.append(float(np.mean((out - target) ** 2)))
        layer.backward(2 * (out - target) / out.size)
        with layer.unlocked_parameters() as p:
            opt.step(p, layer.grads)
    assert losses[-1] < 0.25 * losses[0]
    assert layer.weight_ih_l0.dtype == np.float32 and opt.m["weight_ih_l0"].dtype == np.float64


def test_adam_argument_errors():
    with pytest.raises(ValueError, match="lr must be"):
        Adam(lr=-1)
    with pytest.raises(ValueError, match="betas must be"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be"):
        Adam(betas=0.9)
    with pytest.raises(ValueError, match="eps must be"):
        Adam(eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay must be"):
        Adam(weight_decay=-0.1)
    opt = Adam()
    with pytest.raises(KeyError, match="grads has 'x', which params does not have"):
        opt.step({"w": np.zeros(2)}, {"x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"grads\['w'\] must have the shape of params\['w'\], \(2,\), got \(3,\)"):
        opt.step({"w": np.zeros(2)}, {"w": np.zeros(3)})
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['w'\] must be a writable NumPy array"):
        opt.step({"w": ro}, {"w": np.zeros(2)})
    assert opt.t == 0  # a failed step changes nothing
