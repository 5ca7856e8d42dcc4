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


def flops(n):
    return 2 * n ** 3


def make_problem(n, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    dt = harness.DTYPES[np.dtype(dtype).name]
    a = rng.uniform(-1, 1, (n, n)).astype(dt)
    b = rng.uniform(-1, 1, (n, n)).astype(dt)
    rows = min(n, 64)
    return dict(n=n, dtype=np.dtype(dt).name, a=a, b=b, rows=rows,
                want=(a[:rows].astype(np.float64) @ b.astype(np.float64)))


def make_runner(name, p, threads):
    """Competitor ``name`` computing C = A.B for problem ``p`` on ``threads`` threads."""
    harness.set_threads(threads)
    a, b, rows = p["a"], p["b"], p["rows"]
    lib = name.removeprefix("gemm:")
    if lib == "numpy":
        c = np.empty_like(a)
        return harness.Runner(name, lambda: np.matmul(a, b, out=c), lambda r: {"c": r[:rows]})
    import torch
    if lib == "torch.mm":
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty_like(ta)
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
