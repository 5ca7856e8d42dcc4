"""The benchmark grid and the models group, as data: every benchmark, the report and
``lstm-fast bench`` read them from here (the one place that lists them).

Grid shapes are (T, B, I, H): sequence length, batch, input size, hidden size, one
layer. ``LARGE`` shapes are marked ``large`` and left out of the default run
(``pytest benchmarks -m large`` runs them). ``STREAM`` shapes (B = 1) are also run
step by step (the ``stream`` case).

``MODELS`` are the configurations real models use (issue 14), with their layer
count, direction, dropout and whether the hidden state is carried between batches.
"""

from typing import NamedTuple

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
# ``lstm-fast bench`` without --shapes.
QUICK = ("tiny", "churn", "stream256", "medium")

CASES = ("forward", "train", "stream")
DTYPES = ("float32", "float64")
THREADS = (1, 2)


def case_shapes(case):
    """Shape names a case runs on: stream runs only the B = 1 shapes."""
    return STREAM if case == "stream" else tuple(SHAPES)


class Model(NamedTuple):
    """An LSTM stack as a real model configures it."""
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0     # before, between (torch.nn.LSTM's dropout) and after the LSTM layers
    stateful: bool = False   # the hidden state is carried between batches (passed as hx)
    what: str = ""

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def layer_inputs(self):
        """Input size of each layer: I, then directions * H."""
        return [self.I] + [self.directions * self.H] * (self.layers - 1)


MODELS = {
    "wlm_small": Model(35, 20, 200, 200, layers=2, dropout=0.2, stateful=True,
                       what="pytorch/examples word_language_model, small (emsize = nhid = 200, bptt 35, batch 20)"),
    "wlm_medium": Model(35, 20, 650, 650, layers=2, dropout=0.2, stateful=True,
                        what="word_language_model, medium (650)"),
    "timeseries": Model(100, 32, 16, 128, what="time-series forecaster (100 steps, 16 features)"),
    "speech": Model(200, 16, 80, 320, layers=3, bidirectional=True,
                    what="speech-style encoder (80 filterbank features, 3 bidirectional layers)"),
    "churn": Model(6, 32, 3, 32, what="the churn model (lstm-fast churn)"),
}
# Configurations only the smoke run uses: every feature of the group on tiny sizes.
MODEL_SMOKE_CONFIGS = {
    "tinystack": Model(5, 3, 4, 6, layers=2, bidirectional=True, dropout=0.2, stateful=True,
                       what="smoke test only: 2 bidirectional layers, dropout, carried state"),
}
# The models group's cases: ``model_train`` and ``model_eval`` run the LSTM inside a small
# torch model (see models.py); ``layer_forward`` and ``layer_train`` the LSTM stack alone.
MODEL_CASES = ("model_train", "model_eval", "layer_forward", "layer_train")
MODEL_DTYPES = {"model_train": ("float32",), "model_eval": ("float32",),
                "layer_forward": DTYPES, "layer_train": DTYPES}
# Smoke run of the models group (--benchmark-disable): the smallest model and tinystack.
MODELS_SMOKE = ("churn", "tinystack")
# Models whose float64 layer cases are left out of the default run (slow in torch's float64).
MODELS_LARGE64 = frozenset({"speech", "wlm_medium"})

# The GEMM ceiling: an N x N x N product (models.py, ceiling.py).
GEMM_N = 2048
GEMM_SMOKE_N = 64


def model_config(name):
    """A ``Model`` by name, from MODELS or MODEL_SMOKE_CONFIGS."""
    return MODELS[name] if name in MODELS else MODEL_SMOKE_CONFIGS[name]


def flops(case, T, B, I, H):
    """FLOPs of one call on one layer: 2*T*B*4H*(I+H) forward; a training step counts 3x."""
    f = 2 * T * B * 4 * H * (I + H)
    return 3 * f if case.endswith("train") else f


def model_flops(case, m):
    """FLOPs of one call of model ``m``: the forward formula per layer and direction."""
    return sum(m.directions * flops(case, m.T, m.B, i, m.H) for i in m.layer_inputs())
