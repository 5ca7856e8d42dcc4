"""The layer-normalized LSTM of issue 15 (haste's LayerNormLSTM; the NumPy, Numba and C backends).

The reference's gradients equal central finite differences in float64 for every argument
(the layer-norm gains and c bias included), alone and with the other variants and the masks,
at odd shapes (T = 1, B = 1, H = 1, I != H) and with lengths; float32 agrees with float64;
the outside oracle is a transcription of haste's ``LayerNormLSTMScript``
(lmnt-com/haste, frameworks/pytorch/layer_norm_lstm.py) in torch with ``F.layer_norm``
(eps 1e-5, as haste's CUDA kernel lib/layer_norm_forward_gpu.cu.cc), forward and autograd
gradients, for one layer with training masks and for a 2-layer bidirectional layer with
lengths in eval mode; the options, names, initial values and errors of the API.

The Numba and C backends equal the reference (float64 on the same values) for outputs, final
states, the saved statistics and every gradient (the layer-norm parameters' included), in
float32 and float64, alone and with the variants and masks, at odd shapes and with lengths;
their float64 gradients equal finite differences too; the layer (2 layers, bidirectional,
lengths) equals the NumPy layer; their bits do not depend on the thread count. The C
kernel's tests run at the SIMD level in force (LSTM_FAST_SIMD forces one: run this file once
per level).
"""

import pickle

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _philox
from lstm_fast import adapters, backends
from lstm_fast.backends import reference as ref

from _support import BACKENDS, TOL, assert_close, assert_functional_gradients, same_bits

try:    # torch only for the haste transcription (its TorchScript equations)
    import torch
    F = torch.nn.functional
except ImportError:
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="the haste transcription runs on torch")

LN_NAMES = ("ln_w_ih", "ln_w_hh", "ln_w_c", "ln_b_c")
GRAD_NAMES = dict(x="dx", w_ih="dw_ih", w_hh="dw_hh", b_ih="db_ih", b_hh="db_hh", h0="dh0",
                  c0="dc0", w_ci="dw_ci", w_cf="dw_cf", w_co="dw_co", ln_w_ih="dln_w_ih",
                  ln_w_hh="dln_w_hh", ln_w_c="dln_w_c", ln_b_c="dln_b_c")


def problem(T, B, I, H, seed, dtype=np.float64, peephole=False):
    """Arguments of lstm_forward with layer norm (gains around 1, c bias around 0) and the
    output gradients."""
    rng = np.random.default_rng(seed)
    u = lambda lim, *s: rng.uniform(-lim, lim, s).astype(dtype)    # noqa: E731
    s = 1 / np.sqrt(H)
    a = dict(x=u(1, T, B, I), w_ih=u(s, 4 * H, I), w_hh=u(s, 4 * H, H), b_ih=u(s, 4 * H),
             b_hh=u(s, 4 * H), h0=u(1, B, H), c0=u(1, B, H), ln_w_ih=1 + u(0.5, 4 * H),
             ln_w_hh=1 + u(0.5, 4 * H), ln_w_c=1 + u(0.5, H), ln_b_c=u(0.5, H))
    if peephole:
        a.update(w_ci=u(1, H), w_cf=u(1, H), w_co=u(1, H))
    g = dict(dy=u(1, T, B, H), dh_n=u(1, B, H), dc_n=u(1, B, H))
    return a, g


def masks(T, B, H, seed, z=0.3, p=0.3, eval_mode=False, rdrop=True, dtype=np.float64):
    rng = np.random.default_rng(seed + 7)
    zm = np.full((T, B, H), 1 - z) if eval_mode else (rng.random((T, B, H)) >= z) * 1.0
    rd = (rng.random((B, H)) >= p) / (1 - p) if rdrop else None
    return zm.astype(dtype), None if rd is None else rd.astype(dtype)


def grads_of(g):
    return {k: getattr(g, v) for k, v in GRAD_NAMES.items()}


# --- finite differences (float64) ---------------------------------------------------------

COMBOS = {   # (variant options, zoneout mask, recurrent dropout mask, lengths)
    "alone": ({}, False, False, False),
    "lengths": ({}, False, False, True),
    "zoneout_rdrop": ({}, True, True, True),
    "zoneout_eval": ({}, "eval", False, False),
    "everything": (dict(peephole=True, clip=0.6, cell_clip=0.4), True, True, True),
}
SHAPES = [(4, 3, 2, 3), (1, 1, 1, 1), (3, 1, 2, 1), (1, 3, 4, 2), (3, 2, 5, 3)]


LN_BACKENDS = [b for b in backends.LAYER_NORM_BACKENDS if b in BACKENDS]
FAST_LN = [b for b in LN_BACKENDS if b != "numpy"]   # the kernels: against the reference
AUTO_LN = backends.resolve(backends.layer_norm_backend("auto"))   # never numba
needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["T{}B{}I{}H{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("combo", list(COMBOS))
def test_gradients_match_finite_differences(combo, shape, backend):
    """Every gradient of the functional API by central differences in float64: x, the
    weights, biases, states, peepholes and the four layer-norm parameters."""
    opts, zo, rd, ragged = COMBOS[combo]
    T, B, I, H = shape
    a, g = problem(T, B, I, H, seed=sum(shape), peephole=opts.get("peephole", False))
    kw = dict(clip=opts.get("clip"), cell_clip=opts.get("cell_clip"), backend=backend)
    if zo or rd:
        zm, rdm = masks(T, B, H, 1, eval_mode=zo == "eval", rdrop=rd)
        kw.update(zoneout=zm if zo else None, rdrop=rdm)
    if ragged and B > 1:
        lengths = [T] + [max(1, T - 1 - k) for k in range(B - 1)][::-1]
        kw["lengths"] = lengths
        for b, n in enumerate(lengths):
            g["dy"][n:, b] = 0
    assert_functional_gradients(a, kw, g["dy"], g["dh_n"], g["dc_n"], atol=1e-8)


# --- the Numba backend against the reference ----------------------------------------------

NB_SHAPES = SHAPES + [(5, 7, 9, 13), (6, 20, 3, 37), (3, 4, 40, 70)]


def run_functional(a, g, kw, dtype, backend):
    """Outputs, saved statistics and every gradient of the functional API, ``a``, ``g`` and
    the masks cast to dtype."""
    a = {k: v.astype(dtype) for k, v in a.items()}
    g = {k: v.astype(dtype) for k, v in g.items()}
    kw = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**a, **kw, backend=backend)
    return dict(y=y, h_n=h_n, c_n=c_n, **grads_of(lstm_fast.lstm_backward(cache, **g)))


@pytest.mark.parametrize("backend", FAST_LN)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", NB_SHAPES, ids=["T{}B{}I{}H{}".format(*s) for s in NB_SHAPES])
@pytest.mark.parametrize("combo", list(COMBOS))
def test_backend_equals_the_reference(combo, shape, dtype, backend):
    """backend="numba" / "c" against the reference in float64 on the same values: y, h_n, c_n and
    the gradients of x, the weights, biases, states, peepholes and the four layer-norm
    parameters, with the variants and masks of ``COMBOS`` and lengths."""
    opts, zo, rd, ragged = COMBOS[combo]
    T, B, I, H = shape
    a, g = problem(T, B, I, H, seed=sum(shape) + 1, dtype=dtype,
                   peephole=opts.get("peephole", False))
    kw = dict(clip=opts.get("clip"), cell_clip=opts.get("cell_clip"))
    if zo or rd:
        zm, rdm = masks(T, B, H, 1, eval_mode=zo == "eval", rdrop=rd, dtype=dtype)
        kw.update(zoneout=zm if zo else None, rdrop=rdm)
    if ragged and B > 1:
        kw["lengths"] = [max(1, T - (k * T) // B) for k in range(B)][::-1]   # any order
    want = run_functional(a, g, kw, np.float64, "numpy")
    got = run_functional(a, g, kw, dtype, backend)
    assert want.keys() == got.keys()
    for name, w in want.items():
        if w is None:
            assert got[name] is None, name
            continue
        assert got[name].dtype == dtype and got[name].shape == w.shape, name
        assert_close(got[name], w, dtype, name)


@pytest.mark.parametrize("backend", FAST_LN)
@pytest.mark.parametrize("lengths", [[3, 0, 2], [0, 0], [1]], ids=["one_empty", "all_empty", "T1B1"])
def test_backend_equals_the_reference_with_empty_sequences(lengths, backend):
    """Sequences of length 0 keep h0, c0 (and pass dh_n, dc_n back); float64, all options."""
    T, B, I, H = max(lengths + [1]), len(lengths), 3, 5
    a, g = problem(T, B, I, H, seed=5, peephole=True)
    zm, rdm = masks(T, B, H, 2)
    kw = dict(clip=0.8, cell_clip=0.5, zoneout=zm, rdrop=rdm, lengths=lengths)
    for k, n in enumerate(lengths):
        g["dy"][n:, k] = 0
    want = run_functional(a, g, kw, np.float64, "numpy")
    got = run_functional(a, g, kw, np.float64, backend)
    for name, w in want.items():
        assert_close(got[name], w, np.float64, name)


@pytest.mark.parametrize("backend", FAST_LN)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
def test_backend_contract_statistics_and_inference(ragged, dtype, backend):
    """The backend contract called directly: the saved statistics equal the reference's;
    save=False gives the same bits of y, h_n, c_n as save=True; ``step`` (h, c in place)
    the bits of a sequence of one step."""
    nb = backends.get(backend)
    T, B, I, H = 5, 4, 3, 6
    a, _ = problem(T, B, I, H, seed=8, dtype=dtype, peephole=True)
    zm, rd = masks(T, B, H, 3, dtype=dtype)
    v = backends.Variant(peephole=np.stack([a["w_ci"], a["w_cf"], a["w_co"]]), clip=1.2,
                         layer_norm=np.concatenate([a[n] for n in LN_NAMES]))
    x, zmp, bs = a["x"], zm, None
    if ragged:
        bs = np.array([4, 4, 2, 1, 1])
        x = np.concatenate([a["x"][t, :n] for t, n in enumerate(bs)])
        zmp = np.concatenate([zm[t, :n] for t, n in enumerate(bs)])
    N = x.shape[0] if ragged else T * B
    stats = {}
    outs = {}
    for name, impl in (("numpy", ref), ("numba", nb)):   # "numba": the backend tested
        packed = impl.pack(a["w_ih"], a["w_hh"], a["b_ih"] + a["b_hh"], variant=v)
        S = backends.ln_stats_width(H)
        stats[name] = np.full((N, S) if ragged else (T, B, S), np.nan, dtype)
        outs[name] = impl.forward(packed, x, a["h0"], a["c0"], 1, bs, rdrop=rd, zoneout=zmp,
                                  stats=stats[name])
    assert_close(stats["numba"], stats["numpy"], dtype, "stats")
    for k, name in enumerate(("y", "h_n", "c_n", "gates", "c")):
        assert_close(outs["numba"][k], outs["numpy"][k], dtype, name)
    packed = nb.pack(a["w_ih"], a["w_hh"], a["b_ih"] + a["b_hh"], variant=v)
    inf = nb.forward(packed, x, a["h0"], a["c0"], 1, bs, save=False, rdrop=rd, zoneout=zmp)
    assert inf[3] is None and inf[4] is None
    assert same_bits(inf[:3], outs["numba"][:3])
    one = nb.forward(packed, a["x"][:1], a["h0"], a["c0"], 1)   # no masks
    h, c = a["h0"].copy(), a["c0"].copy()
    y0 = nb.step(packed, a["x"][0], h, c, 1)
    assert same_bits((y0, h, c), (one[0][0], one[1], one[2]))


@pytest.mark.parametrize("name", LN_BACKENDS)
def test_backward_reads_stats_only(name):
    """Backward takes the forward's normalized products from ``stats`` without writing them:
    a second backward from the same saved values (torch's retain_graph) gives the same bits,
    and ``stats`` is unchanged."""
    impl = backends.get(name)
    T, B, I, H = 3, 5, 4, 7
    a, g = problem(T, B, I, H, seed=9, peephole=True)
    v = backends.Variant(peephole=np.stack([a["w_ci"], a["w_cf"], a["w_co"]]), clip=1.0,
                         layer_norm=np.concatenate([a[n] for n in LN_NAMES]))
    packed = impl.pack(a["w_ih"], a["w_hh"], a["b_ih"] + a["b_hh"], variant=v)
    st = np.empty((T, B, backends.ln_stats_width(H)))
    y, _, _, gates, c = impl.forward(packed, a["x"], a["h0"], a["c0"], 1, stats=st)
    kept = st.copy()
    res = []
    for _ in range(2):
        dp, dln = np.empty((3, H)), np.empty(10 * H)
        bwd = impl.backward(packed, a["x"], a["h0"], a["c0"], y, gates, c, g["dy"], g["dh_n"],
                            g["dc_n"], 1, dpeephole=dp, stats=st, dlayer_norm=dln)
        res.append(tuple(r for r in bwd if r is not None) + (dp, dln))
    assert same_bits(res[0], res[1])
    assert same_bits(st, kept)


@pytest.mark.parametrize("backend", FAST_LN)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(4, 40, 5, 24), (3, 4, 6, 130), (3, 6, 6, 370), (2, 1, 3, 300),
                                   (3, 3, 5, 40)],
                         ids=["rows_split", "rows_split_few", "blocks_split", "one_row",
                              "blocks_split_small"])
def test_backend_same_bits_for_one_and_two_threads(shape, dtype, backend):
    """Outputs, statistics and every gradient bit for bit with 1 and 2 threads, at shapes
    where the C steps' threads split the rows (w_hh in half the L2, >= 2 rows a thread:
    lnorm.template.c, ln_split_rows; 370 exceeds that on any CPU of the project's) or the
    hidden blocks, and the GEMMs, with peepholes, the clips, both masks and lengths."""
    if backend == "numba":
        import numba
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("Numba's pool has one thread")
    nb = backends.get(backend)
    T, B, I, H = shape
    a, g = problem(T, B, I, H, seed=4, dtype=dtype, peephole=True)
    zm, rd = masks(T, B, H, 6, dtype=dtype)
    v = backends.Variant(peephole=np.stack([a["w_ci"], a["w_cf"], a["w_co"]]), clip=2.0,
                         cell_clip=1.5, layer_norm=np.concatenate([a[n] for n in LN_NAMES]))
    lengths = np.maximum(1, T - np.arange(B) % T)
    bs = np.array([(lengths > t).sum() for t in range(T)])
    x = np.concatenate([a["x"][t, :n] for t, n in enumerate(bs)])
    zmp = np.concatenate([zm[t, :n] for t, n in enumerate(bs)])
    dy = np.concatenate([g["dy"][t, :n] for t, n in enumerate(bs)])
    packed = nb.pack(a["w_ih"], a["w_hh"], a["b_ih"] + a["b_hh"], variant=v)
    res = []
    for nt in (1, 2):
        # NaN in the padding columns, which no backend writes (ln_zhat_columns)
        st = np.full((x.shape[0], backends.ln_stats_width(H)), np.nan, dtype)
        y, h_n, c_n, gates, c = nb.forward(packed, x, a["h0"], a["c0"], nt, bs, rdrop=rd,
                                           zoneout=zmp, stats=st)
        dp, dln = np.empty((3, H), dtype), np.empty(10 * H, dtype)
        bwd = nb.backward(packed, x, a["h0"], a["c0"], y, gates, c, dy, g["dh_n"], g["dc_n"], nt,
                          bs, dpeephole=dp, rdrop=rd, zoneout=zmp, stats=st, dlayer_norm=dln)
        res.append((y, h_n, c_n, gates, c, st, dp, dln) + tuple(bwd))
        # inference (nothing saved: the C steps may make x.w_ih^T themselves,
        # lnorm.template.c ln_fuse_x) gives the training forward's bits
        inf = nb.forward(packed, x, a["h0"], a["c0"], nt, bs, save=False, rdrop=rd, zoneout=zmp)
        assert same_bits(inf[:3], (y, h_n, c_n))
    assert same_bits(res[0], res[1])


@pytest.mark.parametrize("backend", FAST_LN)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_backend_layer_equals_the_numpy_layer(dtype, backend):
    """LSTM(layer_norm=True, backend="numba"), 2 layers, bidirectional, lengths, peepholes,
    zoneout and recurrent dropout in training: outputs, final states and every parameter's
    gradient equal the NumPy layer's; eval mode too. The oracle is the NumPy layer in float64
    on the same values (the masks are the same: their keys come from the seed, not the
    dtype). In float32 this two-layer problem amplifies roundings (|dx| up to 16): the
    float32 NumPy layer itself is 2.7e-5 (of the largest element) from the float64 values in
    layer_norm_weight_c_l1, beyond the float32 tolerance; the backend must then be within
    the tolerance or within twice the float32 NumPy layer's own distance, per array (C:
    2.0e-5, Numba: 2.1e-6 there)."""
    T, B, I, H = 5, 3, 4, 7
    kw = dict(num_layers=2, bidirectional=True, layer_norm=True, peephole=True, zoneout=0.2,
              recurrent_dropout=0.3, seed=3)
    runs = (("numpy", "numpy", np.float64), ("numba", backend, dtype))   # "numba": the one tested
    if dtype == np.float32:
        runs += (("numpy32", "numpy", np.float32),)
    layers = {name: lstm_fast.LSTM(I, H, backend=b, dtype=dt, **kw) for name, b, dt in runs}
    rng = np.random.default_rng(0)
    sd = layers["numba"].state_dict()
    for name in sd:
        if name.startswith("layer_norm_"):
            sd[name] = (sd[name] + rng.uniform(-0.5, 0.5, sd[name].shape)).astype(dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dout = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    res = {}
    for name, layer in layers.items():
        layer.load_state_dict({k: v.astype(layer.dtype) for k, v in sd.items()})
        out, (h_n, c_n) = layer(x.astype(layer.dtype), lengths=[5, 2, 4])
        dx, _ = layer.backward(dout.astype(layer.dtype))
        layer.eval()
        ev, _ = layer(x.astype(layer.dtype), lengths=[5, 2, 4])
        res[name] = dict(out=out, h_n=h_n, c_n=c_n, dx=dx, eval=ev, **layer.grads)
    assert res["numba"].keys() == res["numpy"].keys()
    for name, want in res["numpy"].items():
        if dtype == np.float32:
            scale = max(1.0, float(np.abs(want).max()))
            own = float(np.abs(res["numpy32"][name] - want).max()) / scale
            err = float(np.abs(res["numba"][name] - want).max()) / scale
            if err <= 2 * own:
                continue
        assert_close(res["numba"][name], want, dtype, name)
    assert layers["numba"].backend == backend


def test_the_clamps_are_exercised():
    """The "everything" combination clamps some gates and cell states and leaves others."""
    a, _ = problem(4, 3, 2, 3, seed=12, peephole=True)
    res = lstm_fast.lstm_forward(**a, clip=0.6, cell_clip=0.4, backend="numpy")
    assert 0.05 < np.mean(np.abs(res.cache.c) >= 0.4 - 1e-15) < 0.95
    lo, hi = ref.sigmoid(np.array([-0.6, 0.6]))
    i = res.cache.gates[..., :3]
    assert 0.05 < np.mean((i <= lo + 1e-15) | (i >= hi - 1e-15)) < 0.95


# --- float32 against float64 ----------------------------------------------------------------


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("shape", [(7, 5, 9, 17), (1, 1, 1, 1), (5, 3, 64, 1), (6, 32, 3, 32)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_float32_agrees_with_float64(shape, ragged):
    """The reference in float32 against itself in float64 on the same values, with peepholes,
    both masks and lengths: outputs, final states and every gradient within the tolerances
    every float32 backend meets."""
    T, B, I, H = shape
    a32, g32 = problem(T, B, I, H, seed=3, dtype=np.float32, peephole=True)
    zm, rd = masks(T, B, H, 2, dtype=np.float32)
    kw = dict(zoneout=zm, rdrop=rd, backend="numpy",
              lengths=[max(1, T - 2 * b) for b in range(B)] if ragged else None)
    res = {}
    for dtype in (np.float32, np.float64):
        a = {k: v.astype(dtype) for k, v in a32.items()}
        g = {k: v.astype(dtype) for k, v in g32.items()}
        k2 = dict(kw, zoneout=zm.astype(dtype), rdrop=rd.astype(dtype))
        y, h_n, c_n, cache = lstm_fast.lstm_forward(**a, **k2)
        res[dtype] = dict(y=y, h_n=h_n, c_n=c_n, **grads_of(lstm_fast.lstm_backward(cache, **g)))
    for name, want in res[np.float64].items():
        got = res[np.float32][name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert_close(got, want, np.float32, name)


# --- the outside oracle: haste's LayerNormLSTMScript transcribed to torch ----------------------


def haste_layer_norm_lstm_script(training, zoneout_prob, input, h0, c0, kernel, recurrent_kernel,
                                 bias, gamma, gamma_h, beta_h, zoneout_mask, rdrop=None):
    """lmnt-com/haste frameworks/pytorch/layer_norm_lstm.py ``LayerNormLSTMScript``, line for
    line (F.layer_norm's default eps 1e-5 is haste's CUDA eps too); gates i, g, f, o. One
    addition of ours: ``rdrop`` (B, H), the recurrent dropout mask on h in the recurrent
    product (haste's own dropout is DropConnect on the recurrent kernel); None: haste's code."""
    time_steps = input.shape[0]
    hidden_size = recurrent_kernel.shape[0]

    h = [h0]
    c = [c0]
    Wx = F.layer_norm(input @ kernel, (hidden_size * 4,), weight=gamma[0])
    for t in range(time_steps):
        h_in = h[t] if rdrop is None else h[t] * rdrop
        v = F.layer_norm(h_in @ recurrent_kernel, (hidden_size * 4,), weight=gamma[1]) + Wx[t] + bias
        i, g, f, o = torch.chunk(v, 4, 1)
        i = torch.sigmoid(i)
        g = torch.tanh(g)
        f = torch.sigmoid(f)
        o = torch.sigmoid(o)
        c.append(f * c[t] + i * g)
        h.append(o * torch.tanh(F.layer_norm(c[-1], (hidden_size,), weight=gamma_h, bias=beta_h)))
        if zoneout_prob:
            if training:
                h[-1] = (h[-1] - h[-2]) * zoneout_mask[t] + h[-2]
            else:
                h[-1] = zoneout_prob * h[-2] + (1 - zoneout_prob) * h[-1]
    h = torch.stack(h)
    c = torch.stack(c)
    return h, c


def to_haste(w_ih, w_hh, b, g_ih, g_hh, g_c, b_c):
    """Our parameters (torch's gate order i, f, g, o; (4H, I) weights) as haste's arguments
    (i, g, f, o; kernel (I, 4H), recurrent_kernel (H, 4H), gamma (2, 4H)); differentiable."""
    H = w_hh.shape[1]
    idx = torch.cat([torch.arange(k * H, (k + 1) * H) for k in (0, 2, 1, 3)])
    return (w_ih[idx].T, w_hh[idx].T, b[idx], torch.stack([g_ih[idx], g_hh[idx]]), g_c, b_c)


@needs_torch
@pytest.mark.parametrize("mode", ["train", "eval", "no_zoneout", "train_rdrop"])
def test_equals_haste_script_forward_and_gradients(mode):
    """One layer, float64: y, h_n, c_n and the gradients of every input and parameter equal
    those of haste's LayerNormLSTMScript under torch's autograd."""
    T, B, I, H, Z = 6, 4, 5, 7, 0.3
    a, g = problem(T, B, I, H, seed=21)
    zm, rd = masks(T, B, H, 5, z=Z, eval_mode=mode == "eval")
    kw = dict(backend="numpy")
    if mode != "no_zoneout":
        kw["zoneout"] = zm
    if mode == "train_rdrop":
        kw["rdrop"] = rd
    y, h_n, c_n, cache = lstm_fast.lstm_forward(**a, **kw)
    ours = grads_of(lstm_fast.lstm_backward(cache, **g))

    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    args = to_haste(t["w_ih"], t["w_hh"], t["b_ih"] + t["b_hh"], t["ln_w_ih"], t["ln_w_hh"],
                    t["ln_w_c"], t["ln_b_c"])
    hs, cs = haste_layer_norm_lstm_script(
        mode != "eval", 0.0 if mode == "no_zoneout" else Z, t["x"], t["h0"], t["c0"], *args,
        torch.tensor(zm), torch.tensor(rd) if mode == "train_rdrop" else None)
    loss = (hs[1:] * torch.tensor(g["dy"])).sum() + (hs[-1] * torch.tensor(g["dh_n"])).sum() \
        + (cs[-1] * torch.tensor(g["dc_n"])).sum()
    loss.backward()
    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, hs[1:].detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, hs[-1].detach().numpy(), **tol)
    np.testing.assert_allclose(c_n, cs[-1].detach().numpy(), **tol)
    for name, tensor in t.items():
        np.testing.assert_allclose(ours[name], tensor.grad.numpy(), **tol, err_msg=name)


def _torch_params(layer):
    return {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}


def haste_stack(x, lengths, h0, c0, p, num_layers, D, z):
    """Our multi-layer (bidirectional) layer in eval mode composed of haste's script: every
    layer-direction and sequence run on its own valid steps (the reverse direction on them
    reversed), padded outputs zero; returns (output, h_n, c_n)."""
    T, B = x.shape[:2]
    H = h0.shape[-1]
    inp, hn, cn = x, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k, s = layer * D + d, f"_l{layer}" + ("_reverse" if d else "")
            args = to_haste(p["weight_ih" + s], p["weight_hh" + s],
                            p["bias_ih" + s] + p["bias_hh" + s], p["layer_norm_weight_ih" + s],
                            p["layer_norm_weight_hh" + s], p["layer_norm_weight_c" + s],
                            p["layer_norm_bias_c" + s])
            cols, hk, ck = [], [], []
            for b in range(B):
                n = int(lengths[b])
                xb = inp[:n, b:b + 1]
                hs, cs = haste_layer_norm_lstm_script(False, z, xb.flip(0) if d else xb,
                                                      h0[k, b:b + 1], c0[k, b:b + 1], *args,
                                                      None)
                yb = hs[1:].flip(0) if d else hs[1:]
                cols.append(torch.cat([yb, torch.zeros(T - n, 1, H, dtype=yb.dtype)]))
                hk.append(hs[-1])
                ck.append(cs[-1])
            outs.append(torch.cat(cols, 1))
            hn.append(torch.cat(hk))
            cn.append(torch.cat(ck))
        inp = torch.cat(outs, 2)
    return inp, torch.stack(hn), torch.stack(cn)


@needs_torch
def test_two_layer_bidirectional_with_lengths_equals_haste_script():
    """LSTM(num_layers=2, bidirectional=True, layer_norm=True, zoneout=z) in eval mode with
    lengths and initial states, float64: output, h_n, c_n, the input and state gradients and
    every parameter gradient by name equal haste's script per sequence under autograd."""
    T, B, I, H, Z = 5, 4, 3, 6, 0.25
    layer = lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, zoneout=Z,
                           dtype=np.float64, seed=3)
    rng = np.random.default_rng(8)
    with layer.unlocked_parameters() as params:       # gains and c biases away from 1 and 0
        for name, arr in params.items():
            if name.startswith("layer_norm_"):
                arr += rng.uniform(-0.5, 0.5, arr.shape)
    layer.eval()
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((4, B, H)), \
        rng.standard_normal((4, B, H))
    dout, dh_n, dc_n = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((4, B, H)), \
        rng.standard_normal((4, B, H))
    lengths = np.array([3, 5, 1, 4])
    for b, n in enumerate(lengths):
        dout[n:, b] = 0
    out, (h_n, c_n) = layer(x, (h0, c0), lengths=lengths, save=True)
    dx, (dh0, dc0) = layer.backward(dout, (dh_n, dc_n))

    p = _torch_params(layer)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    w_out, w_h, w_c = haste_stack(tx, lengths, th0, tc0, p, 2, 2, Z)
    ((w_out * torch.tensor(dout)).sum() + (w_h * torch.tensor(dh_n)).sum()
     + (w_c * torch.tensor(dc_n)).sum()).backward()
    tol = dict(rtol=1e-10, atol=1e-12)
    for got, want in ((out, w_out), (h_n, w_h), (c_n, w_c), (dx, tx.grad), (dh0, th0.grad),
                      (dc0, tc0.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), **tol)
    assert sorted(layer.grads) == sorted(p)
    for name, tensor in p.items():
        np.testing.assert_allclose(layer.grads[name], tensor.grad.numpy(), **tol, err_msg=name)


def test_training_layer_with_masks_equals_the_functional_api():
    """A 2-layer bidirectional layer in training mode with zoneout and recurrent dropout and
    lengths: each layer-direction is lstm_forward with the layer's masks (Philox4x32-10 under
    keys drawn from its dropout stream in the order the layer draws them: per
    layer-direction, rdrop then zoneout; lstm_fast._philox in NumPy)."""
    T, B, I, H = 5, 3, 4, 5
    layer = lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.2,
                           recurrent_dropout=0.3, dtype=np.float64, seed=4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    lengths = [5, 2, 4]
    out, (h_n, c_n) = layer(x, lengths=lengths)
    dr = np.random.default_rng(np.random.SeedSequence(4).spawn(1)[0])
    sd = layer.state_dict()
    inp, hs = x, []
    for k_layer in range(2):
        outs = []
        for d in range(2):
            s = f"_l{k_layer}" + ("_reverse" if d else "")
            rd = _philox.mask_numpy((B, H), _philox.key_from(dr), _philox.threshold(0.3),
                                    1 / 0.7, np.float64)
            zm = _philox.mask_numpy((T, B, H), _philox.key_from(dr), _philox.threshold(0.2),
                                    1.0, np.float64)
            xin = inp
            res = []
            for b, n in enumerate(lengths):       # each sequence on its own valid steps
                xb = xin[:n, b:b + 1][::-1] if d else xin[:n, b:b + 1]
                zb = zm[:n, b:b + 1]
                if d:   # the layer hands the reverse direction its mask in x's time order
                    zb = zb[::-1]
                r = lstm_fast.lstm_forward(
                    xb, sd["weight_ih" + s], sd["weight_hh" + s], sd["bias_ih" + s],
                    sd["bias_hh" + s], ln_w_ih=sd["layer_norm_weight_ih" + s],
                    ln_w_hh=sd["layer_norm_weight_hh" + s], ln_w_c=sd["layer_norm_weight_c" + s],
                    ln_b_c=sd["layer_norm_bias_c" + s], rdrop=rd[b:b + 1], zoneout=zb,
                    backend="numpy")
                y = r.y[::-1] if d else r.y
                res.append(np.concatenate([y, np.zeros((T - n, 1, H))]))
                hs.append(r.h_n)
            outs.append(np.concatenate(res, 1))
        inp = np.concatenate(outs, 2)
    np.testing.assert_allclose(out, inp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_n, np.stack(hs).reshape(4, B, H), rtol=1e-12, atol=1e-13)


# --- the saved statistics (what the kernels will fill) -----------------------------------------


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "lengths"])
def test_saved_statistics(ragged):
    """The contract's ``stats``: per row mean and 1/sqrt(var + 1e-5) of x @ w_ih.T, of
    (h_{t-1} * rdrop) @ w_hh.T and of c_t, then the first two normalized, in the rows'
    order as the backend saw them."""
    T, B, I, H = 4, 3, 5, 6
    a, _ = problem(T, B, I, H, seed=2)
    zm, rd = masks(T, B, H, 3)
    v = backends.Variant(layer_norm=np.concatenate([a[n] for n in LN_NAMES]))
    packed = ref.pack(a["w_ih"], a["w_hh"], a["b_ih"] + a["b_hh"], variant=v)
    x, zmp = a["x"], zm
    bs = None
    if ragged:
        bs = np.array([3, 3, 2, 1])
        x = np.concatenate([a["x"][t, :n] for t, n in enumerate(bs)])
        zmp = np.concatenate([zm[t, :n] for t, n in enumerate(bs)])
    N = x.shape[0] if ragged else T * B
    S = backends.ln_stats_width(H)
    zx, zh = backends.ln_zhat_columns(H)
    assert (zx, zh, S) == (16, 16 + 32, 16 + 2 * 32)   # H = 6: 4H = 24 columns, padded to 32
    stats = np.full((N, S) if ragged else (T, B, S), np.nan)
    y, _, _, _, c = ref.forward(packed, x, a["h0"], a["c0"], 1, bs, rdrop=rd, zoneout=zmp,
                                stats=stats)
    xs, ys, cs = x.reshape(N, I), y.reshape(N, H), c.reshape(N, H)
    steps = bs if ragged else [B] * T
    h_prev, off = [], 0
    for t, n in enumerate(steps):
        h_prev.append((a["h0"][:n] if t == 0 else ys[off - steps[t - 1]:off - steps[t - 1] + n])
                      * rd[:n])
        off += n
    h_prev = np.concatenate(h_prev)
    st = stats.reshape(N, S)
    for k, z in enumerate((xs @ a["w_ih"].T, h_prev @ a["w_hh"].T, cs)):
        mean, rstd = z.mean(axis=1), 1 / np.sqrt(z.var(axis=1) + 1e-5)
        np.testing.assert_allclose(st[:, 2 * k], mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(st[:, 2 * k + 1], rstd, rtol=1e-12)
        if k < 2:   # zhat_x, zhat_h (4H each) from the columns ln_zhat_columns
            zhat = st[:, (zx, zh)[k]:(zx, zh)[k] + 4 * H]
            np.testing.assert_allclose(zhat, (z - mean[:, None]) * rstd[:, None], rtol=1e-10,
                                       atol=1e-12)
    # the padding columns are never written
    assert np.isnan(st[:, 6:zx]).all() and np.isnan(st[:, zx + 4 * H:zh]).all()
    assert np.isnan(st[:, zh + 4 * H:]).all()
    assert ref.LN_EPS == 1e-5 and ref.LN_STATS[5] == "rstd_c"


# --- the layer's API --------------------------------------------------------------------------


def test_parameters_names_initial_values_and_describe():
    plain = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    layer = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True, seed=0)
    sd = layer.state_dict()
    for name, arr in plain.state_dict().items():     # torch's draw the same values
        np.testing.assert_array_equal(sd[name], arr)
    for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert sd["layer_norm_weight_ih" + s].shape == (16,)
        assert sd["layer_norm_weight_hh" + s].shape == (16,)
        np.testing.assert_array_equal(sd["layer_norm_weight_ih" + s], np.ones(16))
        np.testing.assert_array_equal(sd["layer_norm_weight_hh" + s], np.ones(16))
        np.testing.assert_array_equal(sd["layer_norm_weight_c" + s], np.ones(4))
        np.testing.assert_array_equal(sd["layer_norm_bias_c" + s], np.zeros(4))
    names = list(sd)
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "layer_norm_weight_ih_l0", "layer_norm_weight_hh_l0",
                         "layer_norm_weight_c_l0", "layer_norm_bias_c_l0"]
    cfg = adapters.describe(sd)
    assert cfg.layer_norm and not cfg.peephole
    again = lstm_fast.LSTM(**cfg._asdict(), seed=1)
    again.load_state_dict(sd)
    assert again.layer_norm and again.backend == AUTO_LN
    both = lstm_fast.LSTM(3, 4, peephole=True, layer_norm=True)
    assert list(both.state_dict())[4:] == ["weight_ci_l0", "weight_cf_l0", "weight_co_l0",
                                           "layer_norm_weight_ih_l0", "layer_norm_weight_hh_l0",
                                           "layer_norm_weight_c_l0", "layer_norm_bias_c_l0"]
    assert adapters.describe(both.state_dict()).peephole


def test_layer_equals_functional_and_pickles():
    layer = lstm_fast.LSTM(3, 5, layer_norm=True, peephole=True, clip=1.5, dtype=np.float64,
                           seed=2)
    rng = np.random.default_rng(0)
    with layer.unlocked_parameters() as params:
        for name, arr in params.items():
            if name.startswith("layer_norm_"):
                arr += rng.uniform(-0.5, 0.5, arr.shape)
    x = rng.standard_normal((6, 2, 3))
    out, (h_n, c_n) = layer(x)
    dx, _ = layer.backward(np.ones_like(out))
    sd = layer.state_dict()
    res = lstm_fast.lstm_forward(x, *(sd[k] for k in ("weight_ih_l0", "weight_hh_l0",
                                                      "bias_ih_l0", "bias_hh_l0")),
                                 w_ci=sd["weight_ci_l0"], w_cf=sd["weight_cf_l0"],
                                 w_co=sd["weight_co_l0"], clip=1.5,
                                 ln_w_ih=sd["layer_norm_weight_ih_l0"],
                                 ln_w_hh=sd["layer_norm_weight_hh_l0"],
                                 ln_w_c=sd["layer_norm_weight_c_l0"],
                                 ln_b_c=sd["layer_norm_bias_c_l0"])
    np.testing.assert_array_equal(out, res.y)
    g = lstm_fast.lstm_backward(res.cache, np.ones_like(out))
    np.testing.assert_array_equal(layer.grads["layer_norm_weight_hh_l0"], g.dln_w_hh)
    np.testing.assert_array_equal(layer.grads["layer_norm_bias_c_l0"], g.dln_b_c)
    np.testing.assert_array_equal(layer.grads["weight_cf_l0"], g.dw_cf)
    np.testing.assert_array_equal(dx, g.dx)
    assert "layer_norm=True" in repr(layer)
    again = pickle.loads(pickle.dumps(layer))
    assert again.layer_norm and again.backend == layer.backend == AUTO_LN
    np.testing.assert_array_equal(again(x)[0], out)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_stream_equals_the_layer(backend):
    layer = lstm_fast.LSTM(3, 4, num_layers=2, layer_norm=True, dtype=np.float64, seed=5,
                           backend=backend)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    out, _ = layer(x)
    stream = lstm_fast.Stream(layer, batch_size=2)
    hs = [stream.step(x_t) for x_t in x[:3]]
    np.testing.assert_allclose(np.concatenate([np.stack(hs), stream.run(x[3:])]), out,
                               rtol=1e-12, atol=1e-13)


def test_auto_is_autos_choice_but_never_numba(monkeypatch):
    """With layer_norm, "auto" is the plain LSTM's "auto" (the environment's choice
    included), except numba (its kernels compile on first use): numpy instead."""
    for env, want in (("c", "c"), ("numpy", "numpy"), ("numba", "numpy")):
        if want not in BACKENDS or env not in BACKENDS:
            continue
        monkeypatch.setenv(backends.ENV_VAR, env)
        assert lstm_fast.LSTM(3, 4).backend == env
        assert lstm_fast.LSTM(3, 4, layer_norm=True).backend == want
        a, _ = problem(3, 2, 3, 4, seed=0)
        assert lstm_fast.lstm_forward(**a).cache.backend == want
    monkeypatch.delenv(backends.ENV_VAR)
    assert lstm_fast.LSTM(3, 4, layer_norm=True).backend == ("c" if "c" in BACKENDS else "numpy")


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.skipif("c" not in BACKENDS, reason="the C backend is not available")
def test_c_backend_is_accepted_and_refuses_what_the_reference_refuses():
    layer = lstm_fast.LSTM(3, 4, layer_norm=True, backend="numpy")
    layer.backend = "c"
    assert layer.backend == "c"
    a, _ = problem(3, 2, 3, 4, seed=0)
    assert lstm_fast.lstm_forward(**a, backend="c").cache.backend == "c"
    assert backends.LAYER_NORM_BACKENDS == ("c", "numba", "numpy")
    ck = backends.get("c")
    v = backends.Variant(cifg=True, layer_norm=np.ones(40))
    packed = ck.pack(np.ones((16, 3)), np.ones((16, 4)), None, variant=v)
    with pytest.raises(ValueError, match="layer_norm: no projection .*and no cifg"):
        ck.forward(packed, np.ones((2, 1, 3)), np.zeros((1, 4)), np.zeros((1, 4)), 1)
    v = backends.Variant(layer_norm=np.ones(40))
    packed = ck.pack(np.ones((16, 3)), np.ones((16, 4)), None, variant=v)
    y, _, _, gates, c = ck.forward(packed, np.ones((2, 1, 3)), np.zeros((1, 4)), np.zeros((1, 4)), 1)
    with pytest.raises(ValueError, match="stats and dlayer_norm"):   # backward without them
        ck.backward(packed, np.ones((2, 1, 3)), np.zeros((1, 4)), np.zeros((1, 4)), y, gates, c,
                    np.ones_like(y), np.zeros((1, 4)), np.zeros((1, 4)), 1)


@needs_numba
def test_numba_backend_is_accepted_and_refuses_what_the_reference_refuses():
    layer = lstm_fast.LSTM(3, 4, layer_norm=True)
    layer.backend = "numba"
    assert layer.backend == "numba"
    a, _ = problem(3, 2, 3, 4, seed=0)
    assert lstm_fast.lstm_forward(**a, backend="numba").cache.backend == "numba"
    nb = backends.get("numba")
    v = backends.Variant(cifg=True, layer_norm=np.ones(40))
    packed = nb.pack(np.ones((16, 3)), np.ones((16, 4)), None, variant=v)
    with pytest.raises(ValueError, match="layer_norm: no projection .*and no cifg"):
        nb.forward(packed, np.ones((2, 1, 3)), np.zeros((1, 4)), np.zeros((1, 4)), 1)


def test_wrong_shaped_parameters_are_named():
    layer = lstm_fast.LSTM(3, 4, layer_norm=True)
    sd = layer.state_dict()
    sd["layer_norm_weight_c_l0"] = np.ones(5)
    with pytest.raises(ValueError, match=r"layer_norm_weight_c_l0 must have shape \(4,\)"):
        layer.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"layer_norm_weight_c_l0 must have shape \(4,\)"):
        adapters.describe(sd)
    sd = layer.state_dict()
    sd["layer_norm_weight_hh_l0"] = np.ones(4)
    with pytest.raises(ValueError, match=r"layer_norm_weight_hh_l0 must have shape \(16,\)"):
        layer.set_parameter("layer_norm_weight_hh_l0", np.ones(4))
    with pytest.raises(ValueError, match=r"layer_norm_weight_hh_l0 must have shape \(16,\)"):
        adapters.describe(sd)
    sd = layer.state_dict()
    del sd["layer_norm_bias_c_l0"]
    with pytest.raises(KeyError, match="missing .*layer_norm_bias_c_l0"):
        adapters.describe(sd)
    with pytest.raises(KeyError, match="missing .*layer_norm_bias_c_l0"):
        layer.load_state_dict(sd)
    with pytest.raises(KeyError, match="unexpected .*layer_norm_weight_ih_l0"):
        lstm_fast.LSTM(3, 4).load_state_dict(layer.state_dict())


def test_functional_parameters_are_checked():
    a, _ = problem(3, 2, 3, 4, seed=0)
    bad = dict(a, ln_w_c=np.ones(5))
    with pytest.raises(ValueError, match=r"ln_w_c must have shape \(H,\) = \(4,\), got \(5,\)"):
        lstm_fast.lstm_forward(**bad)
    bad = dict(a, ln_w_ih=np.ones(4))
    with pytest.raises(ValueError, match=r"ln_w_ih must have shape \(4\*H,\) = \(16,\)"):
        lstm_fast.lstm_forward(**bad)
    partial = {k: v for k, v in a.items() if k != "ln_b_c"}
    with pytest.raises(ValueError, match="ln_w_ih, ln_w_hh, ln_w_c, ln_b_c must all be given"):
        lstm_fast.lstm_forward(**partial)
    with pytest.raises(TypeError, match="ln_w_hh must have dtype float64"):
        lstm_fast.lstm_forward(**dict(a, ln_w_hh=a["ln_w_hh"].astype(np.float32)))


def test_unsupported_combinations_are_errors():
    with pytest.raises(ValueError, match="layer_norm needs proj_size=0"):
        lstm_fast.LSTM(3, 4, proj_size=2, layer_norm=True)
    with pytest.raises(ValueError, match="layer_norm does not combine with cifg"):
        lstm_fast.LSTM(3, 4, cifg=True, layer_norm=True)
    with pytest.raises(TypeError, match="layer_norm must be a bool"):
        lstm_fast.LSTM(3, 4, layer_norm=1)
    with pytest.raises(ValueError, match="layer_norm"):
        lstm_fast.LSTM(3, 4, layer_norm=True, weight_dtype="bfloat16")
    a, _ = problem(3, 2, 3, 4, seed=0)
    with pytest.raises(ValueError, match=r"needs no projection \(w_hr None\)"):
        lstm_fast.lstm_forward(**dict(a, w_hh=np.ones((16, 2)), h0=None), w_hr=np.ones((2, 4)))
    a3 = dict(a, w_ih=a["w_ih"][:12], w_hh=a["w_hh"][:12], b_ih=a["b_ih"][:12],
              b_hh=a["b_hh"][:12])
    with pytest.raises(ValueError, match="does not combine with cifg"):
        lstm_fast.lstm_forward(**a3, cifg=True)


@pytest.mark.parametrize("convert", ["to_keras", "to_onnx"])
def test_keras_and_onnx_converters_refuse_layer_norm(convert):
    """Keras's and ONNX's LSTMs have no layer norm (to_torch carries it to
    lstm_fast.torch.LSTM and refuses it for torch.nn.LSTM: test_adapters.py)."""
    sd = lstm_fast.LSTM(3, 4, layer_norm=True).state_dict()
    with pytest.raises(ValueError, match="layer-norm parameters"):
        getattr(adapters, convert)(sd)
