"""The machine's GEMM ceiling: an N x N x N product (N = shapes.GEMM_N = 2048) through the
best libraries in this process, so every LSTM figure can be read as a share of it.

Competitors (``gemm:<library>``):

* ``gemm:onednn``: oneDNN's inner product through torch (``torch._C._nn.mkldnn_linear``
  on mkldnn tensors: C = A.B^T), float32 only (oneDNN has no float64). oneDNN picks its
  ISA from the CPU (AVX-512 where present), whatever the BLAS environment says.
* ``gemm:torch.mm``: ``torch.mm`` with ``out=``, i.e. the BLAS torch was built with (MKL
  in the x86 wheels; MKL takes AVX-512 on Intel but only AVX2 on AMD).
* ``gemm:numpy``: ``np.matmul`` with ``out=``, NumPy's BLAS (scipy-openblas in the
  wheels; its kernel family, e.g. SkylakeX or SapphireRapids, is in the report; the
  variable OPENBLAS_CORETYPE can pin it to an older one, e.g. Haswell = AVX2).

Threads: the same ``harness.set_threads(n)`` as every other benchmark. FLOPs 2*N^3.
The ceiling of a (dtype, threads) cell is the best library's median.

**The step's product** (``step_shape``): the same libraries on the product one recurrent
step of a model makes, h_{t-1} (B x H) times w_hh^T (H x 4H), called again and again on
the same operands as the steps are (w_hh stays in cache where it fits). At the models'
batch sizes (B = 16-32) that product is far from the 2048^3 ceiling in every library: it
is what a per-step GEMM (torch's ATen loop, or our kernel split into library calls) can
reach there, and so the measured limit beside the ceiling.
"""

import numpy as np

from . import harness

LIBRARIES = ("onednn", "torch.mm", "numpy")


def competitors(dtype):
    names = []
    if harness.have("torch"):
        import torch
        if np.dtype(dtype).name == "float32" and torch.backends.mkldnn.is_available():
            names.append("gemm:onednn")
        names.append("gemm:torch.mm")
    names.append("gemm:numpy")
    return names


def flops(m, k=None, n=None):
    """FLOPs of an m x k by k x n product (k and n default to m: the N^3 ceiling)."""
    return 2 * m * (m if k is None else k) * (m if n is None else n)


def step_shape(model):
    """(M, K, N) of one recurrent step's product of ``model`` (a shapes.Model): B x H by
    H x 4H."""
    return (model.B, model.H, 4 * model.H)


def make_problem(n, dtype="float32", seed=0, shape=None):
    """C = A.B with A (m, k) and B (k, n): ``shape`` = (m, k, n), or n x n x n."""
    m, k, nn = shape or (n, n, n)
    rng = np.random.default_rng(seed)
    dt = harness.DTYPES[np.dtype(dtype).name]
    a = rng.uniform(-1, 1, (m, k)).astype(dt)
    b = rng.uniform(-1, 1, (k, nn)).astype(dt)
    rows = min(m, 64)
    return dict(n=n, shape=(m, k, nn), dtype=np.dtype(dt).name, a=a, b=b, rows=rows,
                want=(a[:rows].astype(np.float64) @ b.astype(np.float64)))


def make_runner(name, p, threads):
    """Competitor ``name`` computing C = A.B for problem ``p`` on ``threads`` threads."""
    harness.set_threads(threads)
    a, b, rows = p["a"], p["b"], p["rows"]
    m, nn = a.shape[0], b.shape[1]
    lib = name.removeprefix("gemm:")
    if lib == "numpy":
        c = np.empty((m, nn), a.dtype)
        return harness.Runner(name, lambda: np.matmul(a, b, out=c), lambda r: {"c": r[:rows]})
    import torch
    if lib == "torch.mm":
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty((m, nn), dtype=ta.dtype)
        return harness.Runner(name, lambda: torch.mm(ta, tb, out=tc), lambda r: {"c": r[:rows].numpy()})
    if lib == "onednn":
        if p["dtype"] != "float32":
            raise ValueError("oneDNN has no float64 GEMM")
        ma = torch.from_numpy(a).to_mkldnn()
        mbt = torch.from_numpy(np.ascontiguousarray(b.T)).to_mkldnn()   # weight (N_out, K)
        linear = torch._C._nn.mkldnn_linear

        def fn():
            with torch.no_grad():
                return linear(ma, mbt, None)
        return harness.Runner(name, fn, lambda r: {"c": r.to_dense()[:rows].numpy()})
    raise ValueError(f"unknown GEMM competitor {name!r}")


def check(outputs, p, who=""):
    """The first rows of C against a float64 product (tolerance relative to its magnitude)."""
    harness.check(outputs, {"c": p["want"]}, p["dtype"], who)


def library_labels(info):
    """Which library each competitor is, from machine_info(): {"gemm:numpy": "NumPy ..."}."""
    labels = {"gemm:onednn": "oneDNN (torch.mkldnn_linear)", "gemm:torch.mm": "torch.mm"}
    libs = info.get("blas_libraries") or []
    openblas = sorted((lib for lib in libs if lib.get("internal_api") == "openblas"),
                      key=lambda lib: lib.get("owner") != "numpy")     # NumPy's first
    if openblas:
        lib = openblas[0]
        labels["gemm:numpy"] = (f"NumPy ({lib.get('prefix', 'openblas')} {lib.get('version', '')}, "
                                f"{lib.get('architecture', '?')} kernels)")
    else:
        labels["gemm:numpy"] = f"NumPy ({info.get('numpy_blas', 'BLAS')})"
    blas = info.get("torch_blas")
    if blas:
        labels["gemm:torch.mm"] = f"torch.mm ({blas})"
    return labels
