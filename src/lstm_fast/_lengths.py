"""Variable-length batches: from padded (T, B, .) arrays plus per-sequence
lengths (any order) to the packed step-major layout the backends take, and back.

Sequences are sorted by length, longest first (stable), and the rows of step t
are the first ``batch_sizes[t]`` of them, as in torch's PackedSequence. The
reverse direction of a bidirectional layer reads each sequence backwards from
its own last valid step. Padded output positions are exactly zero.
"""

import numpy as np


class LengthPlan:
    """Index arrays for one (T, B, lengths) combination, computed once per call."""

    __slots__ = ("T", "B", "lengths", "order", "batch_sizes", "N", "_rows")

    def __init__(self, lengths, T, B):
        self.T, self.B = T, B
        self.lengths = lengths
        self.order = np.argsort(-lengths, kind="stable")
        # batch_sizes[t] = number of sequences longer than t (lengths in [0, T])
        self.batch_sizes = (B - np.cumsum(np.bincount(lengths, minlength=T + 1))[:T]).astype(np.int64)
        self.N = int(self.batch_sizes.sum())
        self._rows = {}

    def rows(self, reverse):
        """Index into the flattened (T*B) padded array of each packed row."""
        idx = self._rows.get(reverse)
        if idx is None:
            steps = np.repeat(np.arange(self.T), self.batch_sizes)
            offsets = np.concatenate(([0], np.cumsum(self.batch_sizes)[:-1]))
            b = self.order[np.arange(self.N) - offsets[steps]]
            src_t = self.lengths[b] - 1 - steps if reverse else steps
            idx = self._rows[reverse] = src_t * self.B + b
        return idx

    def gather(self, a, reverse=False):
        """Padded (T, B, F) -> packed (N, F)."""
        return a.reshape(self.T * self.B, a.shape[2])[self.rows(reverse)]

    def scatter(self, packed, reverse=False):
        """Packed (N, F) -> padded (T, B, F), zero at padded positions."""
        out = np.zeros((self.T * self.B, packed.shape[1]), packed.dtype)
        out[self.rows(reverse)] = packed
        return out.reshape(self.T, self.B, packed.shape[1])

    def sort(self, state):
        """(B, H) state in the caller's order -> in length order."""
        return state[self.order]

    def unsort(self, state):
        out = np.empty_like(state)
        out[self.order] = state
        return out
