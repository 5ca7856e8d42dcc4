"""Churn data: the embedded synthetic generator, CSV loading/validation, padding.

A data set is a :class:`ChurnData`: per customer a history of monthly rows with
three features, left-aligned and zero-padded to ``T`` months:

    X        (N, T, 3) float64   movies_watched, satisfaction, days_since_login
    lengths  (N,)      int64     number of valid months (1..T); row k < length is
                                 the k-th month of the customer's history, the
                                 last valid row is the most recent month
    y        (N,)      float64   churned (0/1), or None for unlabeled data
    ids      (N,)      object    customer ids (strings), in first-appearance order

CSV format (long: one row per customer and month)::

    customer_id,month,movies_watched,satisfaction,days_since_login,churned
    C00001,1,12,7.8,2,0
    C00001,2,9,7.5,4,0
    ...

``month`` is an integer; a customer's rows are ordered by it (rows may come in
any order; gaps in the numbering are allowed and simply mean "the next
recorded month"). ``churned`` is the customer's label, repeated on each of its
rows; it is required for training and optional for prediction. Customers may
have different numbers of months (ragged histories); they are kept, not
dropped, and handled as variable-length sequences.

Synthetic generator (:func:`generate`)
--------------------------------------
A seeded simulation of a streaming service, ``n_customers`` (default 20000)
customers over ``n_months`` = 6 months (month 6 = the current month). Per
customer:

* a habit level: movies per month ~ LogNormal(log 8, 0.5); a satisfaction
  level ~ N(7, 1) (score 0..10); a login-gap level, days ~ LogNormal(log 4, 0.4).
* **activity gap** (probability ``p_gap`` = 0.4): 1-3 consecutive inactive
  months (movies ~ 5 % of the habit, days since last login climbing by ~30 per
  inactive month) placed uniformly in the 6 months. A gap that reaches the
  current month is a strong churn signal; a gap three months ago followed by a
  return to activity carries *no* risk (the forget gate should drop it). Both
  have the same per-customer average.
* **satisfaction drop** (probability ``p_dip`` = 0.4): one month whose score
  falls by 2-5 points, then recovers. In the current month it is a strong
  signal; earlier (recovered) drops are only a weak one (the input gate should
  store the recent one). Same average either way.
* **engagement drift**: days since last login follow a log-linear trend with
  a random slope (rising or falling, equally likely); only the recent
  months count (recency weights 0, 0, .1, .2, .3, .4 over months 1..6),
  so rising days in the last months matter while the same values long ago do
  not - and the average is the same in both directions.
* churn ~ Bernoulli(sigmoid(logit)) with::

      logit = base + 3.5 * gap_now + 1.2 * gap_ended_last_month
                   + 3.5 * dip_now/3 + 0.3 * dip_earlier
                   + 1.8 * recent_drift
                   + 0.75 * (7 - satisfaction level) - 0.6 * z(log movie level)

  ``base`` is chosen so that a fraction ``churn_rate`` (default 0.25) of
  customers churn. The last two terms are static (visible in averages), the
  rest depend on order in time, so a logistic regression on per-customer
  averages reaches a ROC AUC of only about 0.68, while the Bayes AUC of the
  simulation (the true logit as score) is about 0.92 and the default LSTM
  reaches about 0.89.
* ragged histories: a fraction ``p_recent`` = 0.1 of customers joined
  recently and have only the last 2-5 months.

Parameters of ``generate(n_customers=20000, n_months=6, seed=0, p_gap=0.4,
p_dip=0.4, p_recent=0.1, churn_rate=0.25, return_logit=False)``: the
probabilities above, the target churn rate, and ``return_logit`` to also get
the true churn logit (for checking the Bayes AUC). Everything is reproducible
from ``seed``. ``lstm-fast churn --write-data customers.csv`` writes the set
in the CSV format below.
"""

import csv
import math
from dataclasses import dataclass

import numpy as np

FEATURES = ("movies_watched", "satisfaction", "days_since_login")
ID_COL, MONTH_COL, LABEL_COL = "customer_id", "month", "churned"
REQUIRED_COLUMNS = (ID_COL, MONTH_COL) + FEATURES


class DataError(ValueError):
    """A problem with the input data, with a message meant for the user."""


@dataclass
class ChurnData:
    X: np.ndarray
    lengths: np.ndarray
    y: object  # np.ndarray or None
    ids: np.ndarray
    scenarios: object = None  # synthetic data only: dict name -> (N,) bool, see SCENARIOS

    def __len__(self):
        return len(self.lengths)

    @property
    def n_months(self):
        return self.X.shape[1]

    def subset(self, idx):
        return ChurnData(self.X[idx], self.lengths[idx],
                         None if self.y is None else self.y[idx], self.ids[idx],
                         None if self.scenarios is None
                         else {k: v[idx] for k, v in self.scenarios.items()})

    def averages(self):
        """(N, 3) per-customer averages over the valid months (the static baseline's input)."""
        mask = np.arange(self.n_months)[None, :] < self.lengths[:, None]
        return (self.X * mask[:, :, None]).sum(axis=1) / self.lengths[:, None]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def generate(n_customers=20000, n_months=6, seed=0, p_gap=0.4, p_dip=0.4, p_recent=0.1,
             churn_rate=0.25, return_logit=False):
    """Synthetic customers (see the module docstring). Returns :class:`ChurnData`
    (and the true churn logit if ``return_logit``)."""
    if n_customers < 1:
        raise ValueError("n_customers must be >= 1")
    if n_months < 2:
        raise ValueError("n_months must be >= 2")
    rng = np.random.default_rng(seed)
    N, T = int(n_customers), int(n_months)
    t = np.arange(T)
    last = T - 1

    movie_level = np.exp(rng.normal(math.log(8.0), 0.5, N))
    sat_level = np.clip(rng.normal(7.0, 1.0, N), 1.0, 9.5)
    days_level = np.exp(rng.normal(math.log(4.0), 0.4, N))

    # activity gap: [start, start+len) inactive
    has_gap = rng.random(N) < p_gap
    gap_len = rng.integers(1, 4, N)
    gap_start = rng.integers(0, T, N)
    gap_end = np.minimum(gap_start + gap_len, T)  # exclusive
    inactive = has_gap[:, None] & (t[None, :] >= gap_start[:, None]) & (t[None, :] < gap_end[:, None])

    # satisfaction drop in one month
    has_dip = rng.random(N) < p_dip
    dip_month = rng.integers(0, T, N)
    dip_size = rng.uniform(2.0, 5.0, N)
    dip = np.where(has_dip[:, None] & (t[None, :] == dip_month[:, None]), dip_size[:, None], 0.0)

    # engagement drift of days since last login
    slope = rng.normal(0.0, 1.0, N)
    tc = (t - last / 2.0) / (last / 2.0)  # -1 .. 1

    movies = rng.poisson(movie_level[:, None] * np.where(inactive, 0.05, 1.0)
                         * np.exp(rng.normal(0.0, 0.15, (N, T)))).astype(np.float64)
    satisfaction = np.clip(sat_level[:, None] - dip + rng.normal(0.0, 0.5, (N, T)), 0.0, 10.0)
    satisfaction = np.round(satisfaction, 1)
    days = days_level[:, None] * np.exp(0.5 * slope[:, None] * tc[None, :] + rng.normal(0.0, 0.2, (N, T)))
    # inactive months: days since last login keep climbing
    run = np.zeros((N, T))
    for k in range(T):
        prev = run[:, k - 1] if k else 0.0
        run[:, k] = np.where(inactive[:, k], prev + 1.0, 0.0)
    days = np.where(inactive, days + 30.0 * run - 15.0 + rng.uniform(0, 5, (N, T)), days)
    days = np.clip(np.round(days), 0, None)

    gap_now = (has_gap & (gap_end == T)).astype(np.float64)
    gap_ended_last_month = np.zeros(N)  # back this month after a gap that ended last month
    gap_ended_last_month[has_gap & (gap_end == T - 1)] = 1.0
    dip_now = np.where(has_dip & (dip_month == last), dip_size, 0.0)
    dip_earlier = (has_dip & (dip_month < last)).astype(np.float64)
    w = np.clip((t - (T - 5)) / 10.0, 0.0, None)  # 0, 0, .1, .2, .3, .4 for T = 6
    w = w / w.sum() if w.sum() else w
    recent_drift = slope * (w * tc).sum() / max(np.abs(tc[w > 0]).mean(), 1e-9)
    static = 0.75 * (7.0 - sat_level) - 0.6 * (np.log(movie_level) - math.log(8.0)) / 0.5
    dyn = (3.5 * gap_now + 1.2 * gap_ended_last_month + 3.5 * dip_now / 3.0 + 0.3 * dip_earlier
           + 1.8 * recent_drift)
    z = dyn + static
    # base so that the mean churn probability is churn_rate (bisection, deterministic)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(z + mid).mean() < churn_rate:
            lo = mid
        else:
            hi = mid
    logit = z + (lo + hi) / 2
    y = (rng.random(N) < _sigmoid(logit)).astype(np.float64)

    X = np.stack([movies, satisfaction, days], axis=2)
    lengths = np.full(N, T, dtype=np.int64)
    recent = rng.random(N) < p_recent
    lengths[recent] = rng.integers(2, T, int(recent.sum()))  # 2 .. T-1 months
    # recent joiners: keep the last `length` months, left-aligned, zero-padded
    for L in range(2, T):
        sel = np.flatnonzero(lengths == L)
        if len(sel):
            Xs = X[sel, T - L:].copy()
            X[sel] = 0.0
            X[sel, :L] = Xs
    width = max(5, len(str(N)))
    ids = np.array([f"C{k + 1:0{width}d}" for k in range(N)], dtype=object)
    full = lengths == T
    scenarios = {
        "inactive this month": full & (gap_now > 0),
        "inactive 2+ months ago, active again": full & has_gap & (gap_end <= T - 2),
        "satisfaction drop this month": full & (dip_now > 0),
        "satisfaction drop earlier, recovered": full & (dip_earlier > 0),
        "days since login rising": full & (slope > 1.0),
        "days since login falling": full & (slope < -1.0),
    }
    data = ChurnData(X, lengths, y, ids, scenarios)
    return (data, logit) if return_logit else data


# --- CSV --------------------------------------------------------------------

def write_csv(data, path, first_month=1):
    """Write ``data`` in the long CSV format. Month numbers are calendar months:
    the current month is ``first_month + T - 1`` for everyone, so a customer
    with L < T months has months ``first_month + T - L`` .. ``first_month + T - 1``."""
    T = data.n_months
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(REQUIRED_COLUMNS) + ([LABEL_COL] if data.y is not None else []))
        for k in range(len(data)):
            L = int(data.lengths[k])
            for j in range(L):
                m, s, d = data.X[k, j]
                row = [data.ids[k], first_month + T - L + j, _fmt(m), _fmt(s), _fmt(d)]
                if data.y is not None:
                    row.append(int(data.y[k]))
                w.writerow(row)


def _fmt(v):
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(round(v, 6))


def _parse_float(text, col, line):
    t = text.strip()
    if t == "":
        raise DataError(f"line {line}: column '{col}' is empty (missing value)")
    try:
        v = float(t)
    except ValueError:
        raise DataError(f"line {line}: column '{col}' has a non-numeric value {text!r}") from None
    if math.isnan(v):
        raise DataError(f"line {line}: column '{col}' is NaN (missing value)")
    if math.isinf(v):
        raise DataError(f"line {line}: column '{col}' is infinite ({text!r})")
    return v


def read_csv(path, require_labels=True, max_months=None):
    """Load and validate a long-format churn CSV into :class:`ChurnData`.

    Raises :class:`DataError` with a message naming the problem (and the line)
    for: a missing file or header, missing columns, empty/non-numeric/NaN/
    infinite values, a non-integer month, duplicate (customer_id, month) rows,
    labels other than 0/1, labels that differ between a customer's rows, and
    (if ``require_labels``) a missing ``churned`` column. Customers with fewer
    months are kept (variable lengths). ``max_months`` keeps only each
    customer's most recent months if given.
    """
    try:
        f = open(path, newline="")
    except OSError as e:
        raise DataError(f"cannot open {path}: {e.strerror or e}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path} is empty: expected a header line with columns "
                            f"{', '.join(REQUIRED_COLUMNS + (LABEL_COL,))}") from None
        except csv.Error as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing required column(s): {', '.join(missing)} "
                            f"(found: {', '.join(header) or 'none'}; required: "
                            f"{', '.join(REQUIRED_COLUMNS)}" + (f", {LABEL_COL}" if require_labels else "")
                            + ")")
        has_label = LABEL_COL in header
        if require_labels and not has_label:
            raise DataError(f"{path}: column '{LABEL_COL}' (0/1 label per customer) is required "
                            f"for training; it is optional only for 'churn predict'")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS + ((LABEL_COL,) if has_label else ())}
        ncols = len(header)
        rows = {}      # customer -> {month: (features, line)}
        labels = {}    # customer -> (label, line)
        order = []
        try:
            for line, rec in enumerate(reader, start=2):
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) != ncols:
                    raise DataError(f"line {line}: expected {ncols} fields like the header, got {len(rec)}")
                cid = rec[col[ID_COL]].strip()
                if not cid:
                    raise DataError(f"line {line}: column '{ID_COL}' is empty")
                mv = _parse_float(rec[col[MONTH_COL]], MONTH_COL, line)
                if not mv.is_integer():
                    raise DataError(f"line {line}: column '{MONTH_COL}' must be an integer, got "
                                    f"{rec[col[MONTH_COL]]!r}")
                month = int(mv)
                feats = tuple(_parse_float(rec[col[c]], c, line) for c in FEATURES)
                if cid not in rows:
                    rows[cid] = {}
                    order.append(cid)
                elif month in rows[cid]:
                    raise DataError(f"line {line}: duplicate row for customer_id {cid!r} month {month} "
                                    f"(first seen on line {rows[cid][month][1]})")
                rows[cid][month] = (feats, line)
                if has_label:
                    lt = rec[col[LABEL_COL]].strip()
                    if lt == "" and not require_labels:
                        lab = None
                    else:
                        lv = _parse_float(lt, LABEL_COL, line)
                        if lv not in (0.0, 1.0):
                            raise DataError(f"line {line}: column '{LABEL_COL}' must be 0 or 1, got {lt!r}")
                        lab = lv
                    if cid in labels and labels[cid][0] != lab:
                        raise DataError(f"line {line}: inconsistent '{LABEL_COL}' labels for customer_id "
                                        f"{cid!r}: {_lab(labels[cid][0])} on line {labels[cid][1]} but "
                                        f"{_lab(lab)} here (one label per customer)")
                    labels.setdefault(cid, (lab, line))
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV ({e})") from None
    if not order:
        raise DataError(f"{path} has a header but no data rows")
    lengths = np.array([len(rows[c]) for c in order], dtype=np.int64)
    if max_months:
        lengths = np.minimum(lengths, max_months)
    T = int(lengths.max())
    X = np.zeros((len(order), T, len(FEATURES)))
    for k, cid in enumerate(order):
        months = sorted(rows[cid])[-lengths[k]:]
        X[k, :lengths[k]] = [rows[cid][m][0] for m in months]
    y = None
    if has_label:
        labs = [labels[c][0] for c in order]
        if all(v is not None for v in labs):
            y = np.array(labs, dtype=np.float64)
        elif any(v is not None for v in labs):
            missing = [c for c, v in zip(order, labs) if v is None]
            raise DataError(f"{path}: column '{LABEL_COL}' is empty for some customers "
                            f"(e.g. {missing[0]!r}) but set for others")
    return ChurnData(X, lengths, y, np.array(order, dtype=object))


def _lab(v):
    return "empty" if v is None else str(int(v))
