"""The C backend's buffer cache (backends/_bufcache.h, a NumPy data-memory handler):
large output arrays come from it and go back to it, results are the same bits with it on or
off, and its allocator keeps NumPy's contract (calloc zeroes, realloc keeps the data), its
limit, its eviction order and its release."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import lstm_fast

pytestmark = pytest.mark.skipif("c" not in lstm_fast.available_backends(),
                                reason="the buffer cache is the C backend's")

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:   # NumPy < 2
    from numpy.core.multiarray import get_handler_name

MiB = 1 << 20
NAME = "lstm_fast_bufcache"


@pytest.fixture(autouse=True)
def fresh_cache():
    """Every test starts with an empty cache at the default limit and leaves it so."""
    default = 1 << 30
    lstm_fast.set_buffer_cache_limit(default)
    yield
    lstm_fast.set_buffer_cache_limit(default)


def _c():
    from lstm_fast.backends import _c
    return _c


def _under_cache(fn):
    return _c()._with_buffer_cache(fn)


def _layer(T=16, B=32, I=96, H=128, dtype="float32"):   # gates: 16*32*512*4 = 1 MiB
    layer = lstm_fast.LSTM(I, H, backend="c", dtype=dtype)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    return layer, x


def _step(layer, x):
    y, (h, c) = layer(x)
    dx, _ = layer.backward(np.ones_like(y))
    return y.copy(), h.copy(), c.copy(), dx.copy(), {k: v.copy() for k, v in layer.grads.items()}


def test_large_outputs_come_from_the_cache_and_small_ones_do_not():
    layer, x = _layer()
    y, (h, c) = layer(x)
    big = np.random.default_rng(1).standard_normal((64, 64, 128)).astype(np.float32)  # 2 MiB
    y2, _ = lstm_fast.LSTM(128, 512, backend="c")(big)                                  # 8 MiB
    assert get_handler_name(y2.base) == NAME
    assert get_handler_name(h) != NAME        # (1, 32, 128) float32: below a page
    assert get_handler_name(np.empty(4 * MiB)) == "default_allocator"   # NumPy's own arrays


def test_freed_blocks_are_reused_and_the_results_are_the_same_bits():
    layer, x = _layer(T=32, B=64, I=128, H=256)
    lstm_fast.set_buffer_cache_limit(0)
    off = _step(layer, x)
    assert lstm_fast.buffer_cache_info()["kept_bytes"] == 0
    lstm_fast.set_buffer_cache_limit(1 << 30)
    first = _step(layer, x)
    info = lstm_fast.buffer_cache_info()
    assert info["kept_blocks"] >= 1 and info["kept_bytes"] >= MiB
    second = _step(layer, x)
    assert lstm_fast.buffer_cache_info()["reused"] > info["reused"]
    for run in (first, second):
        for a, b in zip(off[:4], run[:4]):
            np.testing.assert_array_equal(a, b)
        for k in off[4]:
            np.testing.assert_array_equal(off[4][k], run[4][k])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_reused_block_does_not_leak_old_values_into_outputs(dtype):
    # the kernel writes every element of its outputs: a dirty reused block must not show
    layer, x = _layer(dtype=dtype)
    y0, _ = layer(x)
    want = y0.copy()
    del y0
    dirty = _under_cache(lambda: np.full(4 * MiB // 8, np.nan))
    del dirty
    y1, _ = layer(x)
    np.testing.assert_array_equal(y1, want)


def test_calloc_zeroes_a_reused_block():
    n = 3 * MiB // 8
    a = _under_cache(lambda: np.full(n, 7.0))
    assert get_handler_name(a) == NAME
    del a
    before = lstm_fast.buffer_cache_info()
    assert before["kept_blocks"] == 1
    z = _under_cache(lambda: np.zeros(n))          # calloc: takes the dirty block
    assert lstm_fast.buffer_cache_info()["reused"] == before["reused"] + 1
    assert not z.any()


def test_realloc_keeps_the_data():
    n = 2 * MiB // 8
    a = _under_cache(lambda: np.arange(n, dtype=np.float64))
    _under_cache(lambda: a.resize(3 * n, refcheck=False))    # grows: a new block, data moved
    np.testing.assert_array_equal(a[:n], np.arange(n))
    assert not a[n:].any()
    _under_cache(lambda: a.resize(n // 2, refcheck=False))   # shrinks: in place
    np.testing.assert_array_equal(a, np.arange(n // 2))


def test_the_limit_is_kept_and_the_smallest_blocks_go_first():
    lstm_fast.set_buffer_cache_limit(5 * MiB - 1)
    for k in range(4):                            # 1, 2, 3, 4 MiB freed in that order
        _under_cache(lambda k=k: np.empty((k + 1) * MiB, np.uint8))
    info = lstm_fast.buffer_cache_info()
    assert info["kept_blocks"] == 1 and info["kept_bytes"] == 4 * MiB   # the largest only
    big = _under_cache(lambda: np.empty(6 * MiB, np.uint8))   # above the limit: not kept
    del big
    assert lstm_fast.buffer_cache_info()["kept_bytes"] < 6 * MiB


def test_at_most_max_blocks_are_kept():
    info = lstm_fast.buffer_cache_info()
    n = info["max_blocks"] + 3
    for k in range(n):                            # 1 .. n MiB freed in that order
        _under_cache(lambda k=k: np.empty((k + 1) * MiB, np.uint8))
    info = lstm_fast.buffer_cache_info()
    assert info["kept_blocks"] == info["max_blocks"]
    assert info["kept_bytes"] == sum(range(4, n + 1)) * MiB   # the largest ones: 4 .. n MiB


def test_a_block_is_reused_only_for_sizes_it_fits_up_to_twice():
    a = _under_cache(lambda: np.empty(8 * MiB, np.uint8))
    del a
    r = lstm_fast.buffer_cache_info()["reused"]
    small = _under_cache(lambda: np.empty(3 * MiB, np.uint8))   # 8 > 2 x 3: a new block
    assert lstm_fast.buffer_cache_info()["reused"] == r
    big = _under_cache(lambda: np.empty(9 * MiB, np.uint8))     # does not fit: a new block
    assert lstm_fast.buffer_cache_info()["reused"] == r
    fits = _under_cache(lambda: np.empty(5 * MiB, np.uint8))    # 5 <= 8 <= 10: reused
    assert lstm_fast.buffer_cache_info()["reused"] == r + 1
    del small, big, fits


def test_release_frees_what_is_kept_and_the_limit_stays():
    lstm_fast.set_buffer_cache_limit(64 * MiB)
    a = _under_cache(lambda: np.empty(2 * MiB, np.uint8))
    del a
    assert lstm_fast.buffer_cache_info()["kept_bytes"] >= 2 * MiB
    lstm_fast.release_buffer_cache()
    info = lstm_fast.buffer_cache_info()
    assert info["kept_bytes"] == info["kept_blocks"] == 0
    assert info["limit_bytes"] == 64 * MiB


def test_limit_zero_turns_the_cache_off():
    lstm_fast.set_buffer_cache_limit(0)
    y, _ = lstm_fast.LSTM(128, 512, backend="c")(np.ones((64, 64, 128), np.float32))
    assert get_handler_name(y.base) == "default_allocator"
    del y
    assert lstm_fast.buffer_cache_info()["kept_bytes"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1G", None])
def test_a_bad_limit_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="nbytes must be a non-negative int"):
        lstm_fast.set_buffer_cache_limit(bad)
    assert lstm_fast.buffer_cache_info()["limit_bytes"] == 1 << 30


@pytest.mark.parametrize("value, limit, warns", [("0", 0, False), ("1048576", MiB, False),
                                                 ("-5", 1 << 30, True), ("lots", 1 << 30, True)])
def test_the_environment_variable_sets_the_limit(value, limit, warns):
    code = ("import warnings, lstm_fast\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    info = lstm_fast.buffer_cache_info()\n"
            "print(info['limit_bytes'], any('LSTM_FAST_BUFFER_CACHE' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, LSTM_FAST_BUFFER_CACHE=value)).stdout.split()
    assert out == [str(limit), str(warns)]


def test_threads_share_the_cache_and_get_the_serial_results():
    layer, x = _layer(T=8, B=64, I=128, H=256)
    want = layer(x)[0].copy()
    got, errors = [], []

    def run():
        try:
            for _ in range(10):
                got.append(np.array_equal(layer(x)[0], want))
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 40 and all(got)


def _vm_flags(addr):
    """The VmFlags of the mapping holding address addr (/proc/self/smaps)."""
    inside = False   # in the mapping that holds addr
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.mark.skipif(not (os.path.exists("/proc/self/smaps") and os.path.exists(_THP)),
                    reason="Linux with transparent huge pages")
@pytest.mark.parametrize("numpy_advises", [True, False])
def test_packs_of_4_mib_are_advised_huge_pages_as_numpy_advises_its_arrays(numpy_advises):
    """NumPy advises MADV_HUGEPAGE for its arrays of 4 MiB or more (its switch:
    _set_madvise_hugepage); a pack of 4 MiB or more follows it ("hg" in its mapping's
    VmFlags), a smaller pack and the per-call arrays do not. In a fresh process, so that
    no earlier block shares the mappings."""
    code = f"""
import numpy as np, lstm_fast
from lstm_fast.backends import _c
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:
    from numpy.core.multiarray import _set_madvise_hugepage
import test_buffer_cache as t
_set_madvise_hugepage({numpy_advises})
def hg(a):   # a page past the first one: madvise covers whole pages only
    return "hg" in t._vm_flags(a.ctypes.data + a.nbytes // 2)
rng = np.random.default_rng(0)
small = _c.pack(*(rng.standard_normal(s).astype(np.float32) for s in ((256, 64), (256, 64), (256,))))
layer = lstm_fast.LSTM(8, 512, backend="c")
y, _ = layer(np.ones((64, 40, 8), np.float32))   # 5 MiB
# last: the heap grows into an advised mapping's flags, so what is made after may share them
big = _c.pack(*(rng.standard_normal(s).astype(np.float32) for s in ((2048, 512), (2048, 512), (2048,))))
print(big.buf.nbytes >= 4 << 20, hg(big.buf), small.buf.nbytes >= 4096, hg(small.buf),
      y.nbytes >= 4 << 20, hg(y))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", str(numpy_advises), "True", "False", "True", "False"]
