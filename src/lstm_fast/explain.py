"""``lstm-fast explain``: the classic hand-worked LSTM example, every number shown.

One input, one hidden unit, three steps (x = 1, 2, 3), h0 = c0 = 0, a linear
head y = v * h_3 predicting the next number (target 4), loss = (y - target)^2 / 2.

All numbers come from the library: the forward trace from ``lstm_forward``
(its cache holds the activated gates and the cell states), the totals from
``lstm_backward``, and the step-by-step backward trace from one-step calls of
``lstm_backward``: with B = 1, a one-step call at step t, given the gradients
flowing in from step t+1, returns in ``db`` exactly that step's gate
gradients and in ``dh0``/``dc0`` what flows on to step t-1.
"""

import argparse

import numpy as np

from . import backends
from .functional import lstm_backward, lstm_forward

GATES = ("i (input)", "f (forget)", "g (candidate)", "o (output)")
DEFAULTS = dict(x=(1.0, 2.0, 3.0), w_ih=(0.6, 0.5, 0.7, 0.8), w_hh=(0.2, 0.1, 0.3, 0.4),
                bias=(0.0, 0.0, 0.0, 0.0), head=4.0, target=4.0)


def worked_example(x=DEFAULTS["x"], w_ih=DEFAULTS["w_ih"], w_hh=DEFAULTS["w_hh"],
                   bias=DEFAULTS["bias"], head=DEFAULTS["head"], target=DEFAULTS["target"],
                   backend="auto"):
    """Run the example; returns a dict of every number the trace prints."""
    xs = np.asarray(x, np.float64).reshape(-1, 1, 1)
    T = xs.shape[0]
    if T == 0:
        raise ValueError("x must hold at least one number")
    w_ih = np.asarray(w_ih, np.float64).reshape(4, 1)
    w_hh = np.asarray(w_hh, np.float64).reshape(4, 1)
    b = np.asarray(bias, np.float64).reshape(4)
    zeros = np.zeros(4)
    y, h_n, c_n, cache = lstm_forward(xs, w_ih, w_hh, b, zeros, backend=backend)
    h = y[:, 0, 0]
    c = cache.c[:, 0, 0]
    gates = cache.gates[:, 0, :]
    pred = head * h[-1]
    loss = 0.5 * (pred - target) ** 2
    dpred = pred - target
    dhead = dpred * h[-1]
    dh_T = np.array([[dpred * head]])
    total = lstm_backward(cache, None, dh_T, None)

    # Step-by-step: one-step backward calls, from the last step to the first.
    steps = []
    dh, dc = dh_T, np.zeros((1, 1))
    for t in range(T - 1, -1, -1):
        h_prev = np.array([[h[t - 1] if t else 0.0]])
        c_prev = np.array([[c[t - 1] if t else 0.0]])
        one = lstm_forward(xs[t:t + 1], w_ih, w_hh, b, zeros, h_prev, c_prev, backend=cache.backend)
        g = lstm_backward(one.cache, None, dh, dc)
        steps.append(dict(t=t, dh=float(dh[0, 0]), dc=float(dc[0, 0]), dgates=g.db_ih.copy(),
                          dw_ih=g.dw_ih[:, 0].copy(), dw_hh=g.dw_hh[:, 0].copy(),
                          dx=float(g.dx[0, 0, 0]), dh_prev=float(g.dh0[0, 0]),
                          dc_prev=float(g.dc0[0, 0])))
        dh, dc = g.dh0, g.dc0
    return dict(backend=cache.backend, x=xs[:, 0, 0], w_ih=w_ih[:, 0], w_hh=w_hh[:, 0], b=b,
                head=head, target=target, gates=gates, c=c, h=h, pred=pred, loss=loss,
                dpred=dpred, dhead=dhead, steps=steps[::-1],
                grads=dict(dx=total.dx[:, 0, 0], dw_ih=total.dw_ih[:, 0], dw_hh=total.dw_hh[:, 0],
                           db=total.db_ih, dh0=float(total.dh0[0, 0]), dc0=float(total.dc0[0, 0])))


def _vec(v):
    return "[" + ", ".join(f"{a:+.6f}" for a in v) + "]"


def format_trace(r):
    """The printed trace, as a string."""
    out = []
    p = out.append
    p("LSTM worked example: 1 input, 1 hidden unit, gate order i, f, g, o "
      f"(backend {r['backend']!r}, float64)")
    p(f"  x = {', '.join(f'{v:g}' for v in r['x'])};  h0 = c0 = 0")
    p(f"  input weights     w_ih = {_vec(r['w_ih'])}")
    p(f"  recurrent weights w_hh = {_vec(r['w_hh'])}")
    p(f"  biases            b    = {_vec(r['b'])}")
    p(f"  head: y = {r['head']:g} * h_T, target {r['target']:g}, loss = (y - target)^2 / 2")
    p("")
    p("Forward pass: z = w_ih*x_t + w_hh*h_(t-1) + b for each gate;")
    p("  i, f, o = sigmoid(z), g = tanh(z); c_t = f*c_(t-1) + i*g; h_t = o*tanh(c_t)")
    h_prev = c_prev = 0.0
    for t in range(len(r["x"])):
        x = r["x"][t]
        p(f"  step {t + 1}: x = {x:g}, h_prev = {h_prev:.6f}, c_prev = {c_prev:.6f}")
        for k, name in enumerate(GATES):
            z = r["w_ih"][k] * x + r["w_hh"][k] * h_prev + r["b"][k]
            fn = "tanh" if k == 2 else "sigmoid"
            p(f"    {name:<14} z = {r['w_ih'][k]:g}*{x:g} + {r['w_hh'][k]:g}*{h_prev:.6f}"
              f" + {r['b'][k]:g} = {z:+.6f}  ->  {fn}(z) = {r['gates'][t, k]:.6f}")
        i, f, g, o = r["gates"][t]
        p(f"    cell    c = {f:.6f}*{c_prev:.6f} + {i:.6f}*{g:.6f} = {r['c'][t]:.6f}")
        p(f"    hidden  h = {o:.6f}*tanh({r['c'][t]:.6f}) = {r['h'][t]:.6f}")
        h_prev, c_prev = r["h"][t], r["c"][t]
    p("")
    p(f"Prediction: y = {r['head']:g} * {r['h'][-1]:.6f} = {r['pred']:.6f}")
    p(f"Loss: ({r['pred']:.6f} - {r['target']:g})^2 / 2 = {r['loss']:.6f}")
    p("")
    p("Backward pass (through time, last step first):")
    p(f"  dL/dy = y - target = {r['dpred']:.6f}")
    p(f"  dL/dv (head weight) = dL/dy * h_T = {r['dhead']:.6f}")
    p(f"  dL/dh_T = dL/dy * v = {r['dpred'] * r['head']:.6f}")
    T = len(r["x"])
    for s in reversed(r["steps"]):
        t = s["t"]
        i, f, g, o = r["gates"][t]
        c_prev = r["c"][t - 1] if t else 0.0
        tc = np.tanh(r["c"][t])
        src = "the head" if t == T - 1 else f"step {t + 2}"
        dc = s["dc"] + s["dh"] * o * (1 - tc * tc)
        p(f"  step {t + 1}: dh = {s['dh']:+.6f} (from {src}), dc_in = {s['dc']:+.6f}"
          f"{' (from step ' + str(t + 2) + ')' if t < T - 1 else ''}")
        p(f"    do = dh*tanh(c) = {s['dh'] * tc:+.6f}            -> dz_o = do*o*(1-o) = {s['dgates'][3]:+.6f}")
        p(f"    dc = dc_in + dh*o*(1-tanh(c)^2) = {dc:+.6f}")
        p(f"    di = dc*g = {dc * g:+.6f}                  -> dz_i = di*i*(1-i) = {s['dgates'][0]:+.6f}")
        p(f"    df = dc*c_prev = {dc * c_prev:+.6f}             -> dz_f = df*f*(1-f) = {s['dgates'][1]:+.6f}")
        p(f"    dg = dc*i = {dc * i:+.6f}                  -> dz_g = dg*(1-g^2) = {s['dgates'][2]:+.6f}")
        p(f"    this step's share of dL/dw_ih = dz*x_t    = {_vec(s['dw_ih'])}")
        p(f"    this step's share of dL/dw_hh = dz*h_prev = {_vec(s['dw_hh'])}")
        p(f"    dL/dx_t = sum(dz*w_ih) = {s['dx']:+.6f}")
        p(f"    passed back: dh_prev = sum(dz*w_hh) = {s['dh_prev']:+.6f}, "
          f"dc_prev = dc*f = {s['dc_prev']:+.6f}")
    gr = r["grads"]
    p("")
    p("Parameter gradients (sums over the steps; gate order i, f, g, o):")
    p(f"  dL/dw_ih = {_vec(gr['dw_ih'])}")
    p(f"  dL/dw_hh = {_vec(gr['dw_hh'])}")
    p(f"  dL/db    = {_vec(gr['db'])}")
    p(f"  dL/dv    = {r['dhead']:+.6f}  (head weight)")
    p(f"  dL/dx    = {_vec(gr['dx'])}")
    p(f"  dL/dh0 = {gr['dh0']:+.6f}, dL/dc0 = {gr['dc0']:+.6f}")
    return "\n".join(out)


def _floats(n):
    def parse(text):
        try:
            vals = tuple(float(v) for v in text.replace(",", " ").split())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
        if n and len(vals) != n:
            raise argparse.ArgumentTypeError(f"expected {n} numbers (gates i, f, g, o), got {len(vals)}")
        return vals
    return parse


def main(argv=None):
    ap = argparse.ArgumentParser(prog="lstm-fast explain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--x", type=_floats(0), default=DEFAULTS["x"], help="input sequence (default 1,2,3)")
    ap.add_argument("--w-ih", type=_floats(4), default=DEFAULTS["w_ih"], help="input weights i,f,g,o")
    ap.add_argument("--w-hh", type=_floats(4), default=DEFAULTS["w_hh"], help="recurrent weights i,f,g,o")
    ap.add_argument("--bias", type=_floats(4), default=DEFAULTS["bias"], help="biases i,f,g,o")
    ap.add_argument("--head", type=float, default=DEFAULTS["head"], help="head weight v in y = v*h_T")
    ap.add_argument("--target", type=float, default=DEFAULTS["target"], help="target (default 4)")
    ap.add_argument("--backend", default="auto", choices=("auto",) + tuple(backends.REGISTRY))
    args = ap.parse_args(argv)
    if not args.x:
        ap.error("--x must hold at least one number")
    r = worked_example(args.x, args.w_ih, args.w_hh, args.bias, args.head, args.target, args.backend)
    print(format_trace(r))
    return 0
