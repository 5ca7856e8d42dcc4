"""The Bernoulli masks of dropout, recurrent dropout and zoneout (lstm_fast._philox,
csrc/mask.template.c): Philox4x32-10 against Random123's known-answer vectors, the C
generator bit for bit against the NumPy one at every SIMD level, the drop rate, and the
layer's masks fixed by its seed."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _philox

from _support import simd_levels

# Random123 (DEShawResearch/random123, tests/kat_vectors): "philox4x32 10", counter (4
# words), key (2 words), the expected words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, want", KAT)
def test_philox4x32_10_known_answers(counter, key, want):
    got = _philox.philox4x32(np.array([counter], np.uint32), key)
    assert got.dtype == np.uint32 and got[0].tolist() == list(want)


def _c():
    return pytest.importorskip("lstm_fast.backends._c")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_masks_equal_the_numpy_generator_bit_for_bit(dtype):
    c = _c()
    start = c.simd_level()
    try:
        for level in simd_levels(c):
            c.set_simd_level(level)
            for shape in [(0,), (1,), (3,), (31,), (32,), (33,), (3, 5, 7), (4097,), (32, 16, 64)]:
                for p, on in [(0.0, 1.0), (0.1, 1.0), (0.5, 2.0), (0.25, 1 / 0.75), (0.999, 1.0)]:
                    key = (0x9E3779B9, 12345) if len(shape) > 1 else (7, 0xFFFFFFFF)
                    t = _philox.threshold(p)
                    got = c.bernoulli_mask(shape, key[0], key[1], t, float(dtype(on)), dtype)
                    want = _philox.mask_numpy(shape, key, t, dtype(on), np.dtype(dtype))
                    assert got.shape == want.shape and got.dtype == want.dtype
                    assert got.tobytes() == want.tobytes(), (level, shape, p)
    finally:
        c.set_simd_level(start)


def test_the_c_generator_is_used_where_built():
    c = _c()
    assert _philox._c_mask() is c.bernoulli_mask


def test_the_elements_follow_the_documented_counter_layout():
    """Element 32 g + 8 w + l is word w of the counter 8 g + l (csrc/lstm.h)."""
    key, n = (3, 4), 70
    words = _philox.philox4x32(np.array([[i, 0, 0, 0] for i in range(24)], np.uint32), key)
    t = _philox.threshold(0.5)
    got = _philox.bernoulli((n,), key, 0.5, 1.0, np.float64)
    want = [float(words[8 * (i // 32) + i % 8, (i % 32) // 8] >= t) for i in range(n)]
    assert got.tolist() == want


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_drop_rate(p):
    n = 1 << 20
    m = _philox.bernoulli((n,), (11, 22), p, 1.0, np.float32)
    kept = float(m.sum())
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(kept - n * (1 - p)) <= 6 * sd + 1
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}


def test_threshold_edges():
    assert _philox.threshold(0.0) == 0          # every word kept
    assert _philox.threshold(1.0) == 1 << 32    # none
    assert not _philox.bernoulli((100,), (1, 2), 1.0, 1.0, np.float32).any()
    assert _philox.bernoulli((100,), (1, 2), 0.0, 1.0, np.float32).all()


def test_keys_matter_and_fix_the_mask():
    a = _philox.bernoulli((8, 9), (1, 2), 0.5, 1.0, np.float64)
    assert np.array_equal(a, _philox.bernoulli((8, 9), (1, 2), 0.5, 1.0, np.float64))
    assert not np.array_equal(a, _philox.bernoulli((8, 9), (1, 3), 0.5, 1.0, np.float64))
    assert not np.array_equal(a, _philox.bernoulli((8, 9), (2, 2), 0.5, 1.0, np.float64))


def test_bad_arguments_are_value_errors_naming_them():
    c = _c()
    with pytest.raises(ValueError, match="dtype"):
        c.bernoulli_mask((3,), 1, 2, 0, 1.0, np.int32)
    with pytest.raises(ValueError, match="shape"):
        c.bernoulli_mask((-1,), 1, 2, 0, 1.0, np.float32)


def test_layer_masks_are_fixed_by_the_seed_and_new_at_every_call():
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    make = lambda: lstm_fast.LSTM(3, 8, num_layers=2, dropout=0.3, zoneout=0.2,
                                  recurrent_dropout=0.25, seed=5).train()
    a, b = make(), make()
    ya1, yb1 = a(x)[0], b(x)[0]
    assert np.array_equal(ya1, yb1)              # the same seed: the same masks
    assert not np.array_equal(ya1, a(x)[0])      # a new draw at every call
