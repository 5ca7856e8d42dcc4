"""lstm_fast: a fast, complete LSTM for Python on the CPU.

Backends: "c" (fused C kernel), "numba" (JIT), "numpy" (reference); "auto"
picks the fastest available, or the one named by LSTM_FAST_BACKEND.
"""

__version__ = "0.1.0"

from .backends import (BackendUnavailableError, available_backends, backend_status,
                        buffer_cache_info, get_num_threads, release_buffer_cache,
                        set_buffer_cache_limit, set_num_threads)
from .functional import LSTMCache, LSTMGrads, LSTMResult, lstm_backward, lstm_forward
from .layer import LSTM, quantize
from .streaming import Stream
from . import optim  # noqa: E402  (lstm_fast.optim.Adam: NumPy training utility)

__all__ = [
    "LSTM", "quantize", "Stream", "lstm_forward", "lstm_backward", "LSTMResult", "LSTMGrads", "LSTMCache",
    "available_backends", "backend_status", "set_num_threads", "get_num_threads",
    "buffer_cache_info", "set_buffer_cache_limit", "release_buffer_cache",
    "BackendUnavailableError", "optim", "__version__",
]
