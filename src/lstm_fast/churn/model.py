"""The churn model: the library's LSTM, a logistic head on the last valid hidden
state, binary cross-entropy; trained with ``lstm_fast.optim.Adam``.

    logit_b = h_last_b . w + b          h_last_b = hidden state at customer b's last month
    p_b     = sigmoid(logit_b)
    loss    = mean_b BCE(p_b, y_b)      (computed from logits, numerically stable)

Ragged histories (customers with fewer months) are handled with variable
lengths, never dropped: one ``layer(x, lengths=...)`` call, whose ``h_n``
holds each customer's last valid month, and backward through
``layer.backward(None, (dh_n, 0))``.

Features are normalized with statistics fitted on the training split:
``movies_watched`` and ``days_since_login`` (counts, skewed) go through
``log1p`` first, then every feature is z-scored over the valid months.
"""

import json

import numpy as np

import lstm_fast

from .data import FEATURES

FORMAT_VERSION = 1
LOG_FEATURES = ("movies_watched", "days_since_login")


# --- head + loss ----------------------------------------------------------

def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def head_bce(h, w, b, y):
    """Logistic head and mean binary cross-entropy with its gradients.

    h (B, H), w (H,), b scalar, y (B,) in {0, 1}. Returns
    ``(loss, logits, dh, dw, db)`` with dh (B, H) = dloss/dh etc.
    """
    z = h @ w + b
    loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    dz = (_sigmoid(z) - y) / len(y)
    dh = dz[:, None] * w[None, :]
    dw = h.T @ dz
    db = float(dz.sum())
    return loss, z, dh, dw, db


def bce_from_probs(p, y, eps=1e-7):
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# --- normalization --------------------------------------------------------

class Normalizer:
    """log1p on the count features, then z-score per feature over valid months."""

    def __init__(self, mean=None, std=None, log_mask=None):
        self.mean = mean
        self.std = std
        self.log_mask = (np.array([f in LOG_FEATURES for f in FEATURES]) if log_mask is None
                         else np.asarray(log_mask, bool))

    def _pre(self, X):
        X = np.array(X, dtype=np.float64, copy=True)
        X[..., self.log_mask] = np.log1p(np.maximum(X[..., self.log_mask], 0.0))
        return X

    def fit(self, X, lengths):
        Z = self._pre(X)
        mask = np.arange(X.shape[1])[None, :] < lengths[:, None]
        vals = Z[mask]
        self.mean = vals.mean(axis=0)
        self.std = vals.std(axis=0)
        self.std[self.std < 1e-8] = 1.0
        return self

    def transform(self, X, lengths):
        Z = (self._pre(X) - self.mean) / self.std
        mask = np.arange(X.shape[1])[None, :] < lengths[:, None]
        Z[~mask] = 0.0  # padding stays zero
        return Z


# --- model ----------------------------------------------------------------

class ChurnModel:
    """LSTM(3 -> hidden_size) + logistic head; NumPy arrays in, probabilities out."""

    def __init__(self, hidden_size=32, backend="auto", seed=0, input_size=len(FEATURES),
                 dtype=np.float32, weight_dtype=None):
        """``weight_dtype="bfloat16"``: mixed-precision training (``lstm_fast.LSTM``'s
        weight_dtype, put in training mode; float32 masters), on a backend that trains in
        bfloat16 (``lstm_fast.backends.BF16_TRAINING``)."""
        self.hidden_size = int(hidden_size)
        self.input_size = int(input_size)
        self.lstm = lstm_fast.LSTM(self.input_size, self.hidden_size, backend=backend, seed=seed,
                                   dtype=dtype, weight_dtype=weight_dtype)
        if weight_dtype is not None:
            self.lstm.train()
        # forget-gate bias 1 (a common LSTM initialization; helps keep memory early on)
        H = self.hidden_size
        with self.lstm.unlocked_parameters() as p:
            p["bias_ih_l0"][H:2 * H] += 0.5
            p["bias_hh_l0"][H:2 * H] += 0.5
        rng = np.random.default_rng(None if seed is None else seed + 1)
        self.head = {"w": rng.normal(0, 1 / np.sqrt(H), H), "b": np.zeros(1)}
        self.normalizer = Normalizer()

    @property
    def backend(self):
        return self.lstm.backend

    # --- LSTM part: h at each customer's last valid month ----------------

    def _hlast(self, x, lengths):
        """x (T, B, I) time-major. Returns h_last (B, H) float64."""
        _, (h_n, _) = self.lstm(x, lengths=lengths)
        return h_n[0].astype(np.float64)

    def _lstm_backward(self, dh):
        dh_n = dh[None].astype(self.lstm.dtype)
        self.lstm.backward(None, (dh_n, np.zeros_like(dh_n)))
        return dict(self.lstm.grads)

    @staticmethod
    def _time_major(Xn, lengths, dtype):
        T = int(lengths.max())
        return np.ascontiguousarray(Xn[:, :T].transpose(1, 0, 2), dtype=dtype)

    # --- training step ----------------------------------------------------

    def loss_and_grads(self, Xn, lengths, y):
        """Mean BCE and gradients for a normalized batch Xn (B, T, I)."""
        x = self._time_major(Xn, lengths, self.lstm.dtype)
        h = self._hlast(x, lengths)
        loss, _, dh, dw, db = head_bce(h, self.head["w"], self.head["b"][0], y)
        grads = {"lstm." + k: v for k, v in self._lstm_backward(dh).items()}
        grads["head.w"] = dw
        grads["head.b"] = np.array([db])
        return loss, grads

    def apply_step(self, opt, grads, clip=5.0):
        """One step of ``opt`` (e.g. ``lstm_fast.optim.Adam``) over the LSTM's and the
        head's parameters (global-norm gradient clipping at ``clip``)."""
        norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
        if clip and norm > clip:
            grads = {k: g * (clip / norm) for k, g in grads.items()}
        with self.lstm.unlocked_parameters() as params:
            allp = {"lstm." + k: v for k, v in params.items()}
            allp["head.w"] = self.head["w"]
            allp["head.b"] = self.head["b"]
            opt.step(allp, grads)
        return norm

    # --- inference --------------------------------------------------------

    def logits_normalized(self, Xn, lengths, batch_size=4096):
        out = np.empty(len(lengths))
        for s in range(0, len(lengths), batch_size):
            sl = slice(s, s + batch_size)
            x = self._time_major(Xn[sl], lengths[sl], self.lstm.dtype)
            h = self._hlast(x, lengths[sl])
            out[sl] = h @ self.head["w"] + self.head["b"][0]
        return out

    def predict_proba(self, data, batch_size=4096):
        """Churn probability per customer of a :class:`ChurnData` (raw features)."""
        Xn = self.normalizer.transform(data.X, data.lengths)
        return _sigmoid(self.logits_normalized(Xn, data.lengths, batch_size))

    def gates(self, Xn_full):
        """Activated gates (T, B, 4H) (i, f, g, o) for full-length normalized
        histories Xn_full (B, T, I), from the library's own forward cache."""
        x = np.ascontiguousarray(Xn_full.transpose(1, 0, 2), dtype=self.lstm.dtype)
        p = self.lstm
        res = lstm_fast.lstm_forward(x, p.weight_ih_l0, p.weight_hh_l0, p.bias_ih_l0,
                                     p.bias_hh_l0, backend=p.backend)
        return res.cache.gates

    # --- weights ------------------------------------------------------------

    def get_state(self):
        return ({k: v.copy() for k, v in self.lstm.state_dict().items()},
                {k: v.copy() for k, v in self.head.items()})

    def set_state(self, state):
        lstm_sd, head = state
        self.lstm.load_state_dict(lstm_sd)
        self.head = {k: v.copy() for k, v in head.items()}

    def save(self, path, extra_config=None):
        config = {"format_version": FORMAT_VERSION, "hidden_size": self.hidden_size,
                  "input_size": self.input_size, "features": list(FEATURES),
                  "log_features": [f for f, m in zip(FEATURES, self.normalizer.log_mask) if m],
                  "dtype": np.dtype(self.lstm.dtype).name}
        config.update(extra_config or {})
        arrays = {"lstm." + k: v for k, v in self.lstm.state_dict().items()}
        arrays.update({"head.w": self.head["w"], "head.b": self.head["b"],
                       "norm.mean": self.normalizer.mean, "norm.std": self.normalizer.std,
                       "norm.log_mask": self.normalizer.log_mask,
                       "config": np.array(json.dumps(config))})
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path, backend="auto"):
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read model file {path}: {e}") from e
        with z:
            if "config" not in z.files:
                raise ValueError(f"{path} is not a churn model file (no config entry)")
            config = json.loads(str(z["config"]))
            if config.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported model format version {config.get('format_version')}")
            model = cls(config["hidden_size"], backend=backend, seed=0,
                        input_size=config["input_size"], dtype=np.dtype(config.get("dtype", "float32")))
            model.lstm.load_state_dict({k[5:]: z[k] for k in z.files if k.startswith("lstm.")})
            model.head = {"w": z["head.w"].astype(np.float64), "b": z["head.b"].astype(np.float64)}
            model.normalizer = Normalizer(z["norm.mean"], z["norm.std"], z["norm.log_mask"])
        model.config = config
        return model
