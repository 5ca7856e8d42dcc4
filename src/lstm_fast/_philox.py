"""Bernoulli masks for dropout, recurrent dropout and zoneout from a counter-based
generator, Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC'11; Random123's ``philox4x32_R`` with R = 10, the generator of cuRAND and
of PyTorch's CUDA dropout).

A mask of n elements under the key (k0, k1), in groups of 32: element 32 g + 8 w + l
takes word w of Philox4x32-10 applied to the counter 8 g + l (a 64-bit number: low 32
bits, high 32 bits, 0, 0; the C loop then compares and stores 8 counters' word w as one
vector); it is ``on`` where that word is >= t = ceil(p 2^32) (dropped with probability p
to within 2^-32), else 0. Each call draws its key from the layer's own seeded stream, so
a seed still fixes every mask.

Why not ``rng.random(shape) >= p``: NumPy draws those doubles at ~2 ns each (72 us for a
(32, 16, 64) zoneout mask on the Intel Xeon of benchmarks/README, 10 % of that shape's
training step); the C kernel's generator (csrc/mask.template.c) fills the same mask in a
few microseconds. ``philox4x32`` below is the same generator in plain NumPy, bit for bit
(tests/test_masks.py: Random123's known-answer vectors, and the C path against it): the
reference, and the path wherever the C extension is not built.
"""

import math

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)      # the round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85                             # the key's bumps (Weyl)
LOW = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)


def philox4x32(counters, key, rounds=10):
    """The (n, 4) uint32 words of Philox4x32 for n counters ((n, 4) uint32) under ``key``
    (two uint32): Random123's ``philox4x32_R``."""
    c = np.asarray(counters, np.uint64)
    c0, c1, c2, c3 = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    k0, k1 = int(key[0]), int(key[1])
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
        p0, p1 = c0 * M0, c2 * M1    # products of two 32-bit numbers: exact in 64 bits
        c0, c1, c2, c3 = ((p1 >> S32) ^ c1 ^ np.uint64(k0), p1 & LOW,
                          (p0 >> S32) ^ c3 ^ np.uint64(k1), p0 & LOW)
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def threshold(p):
    """t = ceil(p 2^32) for a drop probability p in [0, 1]: a word is kept where >= t."""
    return math.ceil(p * 4294967296.0)


def mask_numpy(shape, key, t, on, dtype):
    """The mask (``shape``, ``dtype``) under ``key`` and threshold ``t``, in NumPy."""
    n = math.prod(shape)
    groups = (n + 31) // 32
    i = np.arange(8 * groups, dtype=np.uint64)      # counter 8 g + l
    counters = np.stack([i & LOW, i >> S32, np.zeros_like(i), np.zeros_like(i)], axis=1)
    # (g, l, w) -> element 32 g + 8 w + l
    words = philox4x32(counters, key).reshape(groups, 8, 4).transpose(0, 2, 1).reshape(-1)[:n]
    return np.where(words >= t, np.asarray(on, dtype), np.asarray(0, dtype)).reshape(shape)


_C_MASK = None   # _c.bernoulli_mask, looked up at the first mask (not at import), or False


def _c_mask():
    global _C_MASK
    if _C_MASK is None:
        try:
            from .backends import _c
            _C_MASK = getattr(_c, "bernoulli_mask", False)
        except ImportError:    # a build without the C extension
            _C_MASK = False
    return _C_MASK


def key_from(rng):
    """A key (two uint32) from a NumPy Generator: the two halves of one raw 64-bit draw of
    its bit generator (0.2 us; ``rng.integers`` takes 4)."""
    v = int(rng.bit_generator.random_raw())
    return v & 0xFFFFFFFF, v >> 32


def bernoulli(shape, key, p, on, dtype):
    """A new mask (``shape``, ``dtype`` float32/float64): ``on`` with probability 1 - p,
    else 0, under ``key`` (``key_from``); the C generator where built, else NumPy's (the
    same bits)."""
    shape = tuple(int(s) for s in shape)
    t = threshold(p)
    c_mask = _c_mask()
    if c_mask:
        return c_mask(shape, key[0], key[1], t, float(on), dtype)
    return mask_numpy(shape, key, t, on, np.dtype(dtype))
