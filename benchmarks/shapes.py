"""The benchmark grid, as data: every benchmark and the report read it from here.

Shapes are (T, B, I, H): sequence length, batch, input size, hidden size.
``LARGE`` shapes are marked ``large`` and left out of the default run
(``pytest benchmarks -m large`` runs them). ``STREAM`` shapes (B = 1) are also
run step by step (the ``stream`` case).
"""

SHAPES = {
    "tiny": (3, 1, 1, 1),           # per-call overhead floor
    "churn": (6, 32, 3, 32),        # the churn model (lstm-fast churn)
    "stream64": (32, 1, 64, 64),    # B = 1: matrix-vector per step
    "stream256": (32, 1, 256, 256),  # W_hh 1 MiB (float32): one core's L2
    "stream512": (32, 1, 512, 512),  # W_hh 4 MiB: L3-bandwidth bound
    "medium": (32, 16, 64, 64),
    "long": (128, 64, 64, 64),
    "large256": (32, 64, 256, 256),  # GEMM-bound
    "large512": (128, 64, 512, 512),
}
LARGE = frozenset({"large256", "large512"})
STREAM = tuple(name for name, (T, B, I, H) in SHAPES.items() if B == 1)
# The smoke run (the normal test suite, --benchmark-disable) runs these unless
# LSTM_FAST_BENCH_SHAPES or --bench-shapes says otherwise.
SMOKE = ("tiny", "churn", "stream64", "medium")

CASES = ("forward", "train", "stream")
DTYPES = ("float32", "float64")
THREADS = (1, 2)


def case_shapes(case):
    """Shape names a case runs on: stream runs only the B = 1 shapes."""
    return STREAM if case == "stream" else tuple(SHAPES)
