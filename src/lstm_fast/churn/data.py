"""Churn data: the embedded synthetic generator, table (CSV/Parquet) loading and validation, padding.

A data set is a :class:`ChurnData`: per customer a history of monthly rows with
three features, left-aligned and zero-padded to ``T`` months:

    X        (N, T, 3) float64   movies_watched, satisfaction, days_since_login
    lengths  (N,)      int64     number of valid months (1..T); row k < length is
                                 the k-th month of the customer's history, the
                                 last valid row is the most recent month
    y        (N,)      float64   churned (0/1), or None for unlabeled data
    ids      (N,)      object    customer ids (strings), in first-appearance order

Table format (long: one row per customer and month; a CSV file, or a Parquet
file when the name ends in ``.parquet`` or ``.pq``)::

    customer_id,month,movies_watched,satisfaction,days_since_login,churned
    C00001,1,12,7.8,2,0
    C00001,2,9,7.5,4,0
    ...

``month`` is an integer; a customer's rows are ordered by it (rows may come in
any order in a file loaded whole by :func:`read_table`; the chunked readers of
:mod:`lstm_fast.churn.stream`, used by ``churn predict`` and streamed training, need
each customer's rows consecutive, in any month order; gaps in the numbering are
allowed and simply mean "the next recorded month"). ``churned`` is the customer's label, repeated on each of its
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
from ``seed``. ``lstm-fast churn --write-data customers.csv`` (or ``.parquet``)
writes the set in the table format above.

Tables are read with pyarrow (CSV: every column as text, so that messages can
quote what was written; Parquet: the stored types) and validated and reshaped
with pandas/NumPy, without a loop over rows; see :func:`read_table` for the
messages.
"""

import math
import os
from contextlib import contextmanager
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


# --- tables (CSV / Parquet) --------------------------------------------------------

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path):
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def to_frame(data, first_month=1):
    """The long table of ``data`` as a pandas DataFrame. Month numbers are calendar
    months: the current month is ``first_month + T - 1`` for everyone, so a
    customer with L < T months has months ``first_month + T - L`` .. ``first_month + T - 1``."""
    import pandas as pd
    T = data.n_months
    valid = np.arange(T)[None, :] < data.lengths[:, None]          # (N, T)
    cust, j = np.nonzero(valid)                                     # row-major: by customer, then month
    frame = {ID_COL: np.asarray(data.ids, dtype=object)[cust],
             MONTH_COL: (first_month + T - data.lengths[cust] + j).astype(np.int64)}
    for k, name in enumerate(FEATURES):
        v = data.X[cust, j, k]
        frame[name] = v.astype(np.int64) if np.all(v == np.round(v)) else v
    if data.y is not None:
        frame[LABEL_COL] = data.y[cust].astype(np.int64)
    return pd.DataFrame(frame)


def write_table(data, path, first_month=1):
    """Write ``data`` in the long table format: Parquet if ``path`` ends in
    .parquet/.pq, else CSV (integers without a decimal point, other values exact)."""
    frame = to_frame(data, first_month)
    if is_parquet(path):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def write_scores(ids, prob, path_or_buf):
    """customer_id, churn_probability: Parquet (float64) if the path ends in .parquet/.pq,
    else CSV with 6 decimals (``path_or_buf`` may be an open text stream)."""
    import pandas as pd
    frame = pd.DataFrame({ID_COL: np.asarray(ids, dtype=object), "churn_probability": prob})
    if isinstance(path_or_buf, str) and is_parquet(path_or_buf):
        frame.to_parquet(path_or_buf, index=False)
    else:
        frame.to_csv(path_or_buf, index=False, float_format="%.6f")


def _open_check(path):
    try:
        open(path, "rb").close()
    except OSError as e:
        raise DataError(f"cannot open {path}: {e.strerror or e}") from None


@contextmanager
def csv_errors(path):
    """pyarrow's CSV errors as DataError: an empty file, or malformed CSV."""
    import pyarrow as pa
    try:
        yield
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(f"{path} is empty: expected a header line with columns "
                            f"{', '.join(REQUIRED_COLUMNS + (LABEL_COL,))}") from None
        raise DataError(f"{path}: malformed CSV ({e})") from None


def csv_header(path):
    """(names, header) of a CSV file, from its first line alone: the column names as
    pyarrow reads them, and the same stripped of spaces and a byte-order mark (the names
    the checks and messages use). DataError for an empty or malformed file."""
    import pyarrow.csv as pcsv
    with csv_errors(path):
        head = pcsv.open_csv(path, read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 16),
                             parse_options=pcsv.ParseOptions(invalid_row_handler=lambda r: "skip"))
        names = head.schema.names
        head.close()
    return names, [str(c).strip().lstrip("\ufeff") for c in names]


def csv_as_text(names):
    """pyarrow ConvertOptions reading every column ``names`` as text, empty fields as ""."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    return pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                               strings_can_be_null=False, quoted_strings_can_be_null=False)


def _read_csv_text(path):
    """(DataFrame of text columns, line number of each row, first invalid row or None)."""
    import pyarrow.csv as pcsv
    bad = []

    def invalid(row):  # a row with more or fewer fields than the header: remember the first
        bad.append(row)
        return "skip"

    # every column as text: the header names first (a one-row read), then the whole file
    names, header = csv_header(path)
    with csv_errors(path):
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=csv_as_text(names))
    frame = table.to_pandas()
    frame.columns = header
    first_bad = BadRow(bad[0].number, bad[0].expected_columns, bad[0].actual_columns) if bad else None
    line = np.arange(len(frame), dtype=np.int64) + 2
    if first_bad is not None:  # rows after the first invalid one are never looked at
        keep = first_bad.number - 2
        frame, line = frame.iloc[:keep], line[:keep]
    text = frame.astype(str).apply(lambda c: c.str.strip())
    blank = (text == "").all(axis=1).to_numpy()
    return text[~blank].reset_index(drop=True), line[~blank], first_bad


def _read_parquet_frame(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    return table, np.arange(table.num_rows, dtype=np.int64) + 1


class _Text:
    """The text of a numeric (Parquet) column's value, made only for a message."""

    def __init__(self, values):
        self.values = values

    def __getitem__(self, r):
        return repr(float(self.values[r]))


def _numbers(col, name):
    """A column as float64 with masks (empty, non_numeric, nan, infinite) and its text.

    ``col``: a pandas Series of stripped text (CSV), or a pyarrow array (Parquet)."""
    import pandas as pd
    if not isinstance(col, pd.Series):
        import pyarrow as pa
        import pyarrow.compute as pc
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            empty = col.is_null().to_numpy(zero_copy_only=False)
            v = pc.cast(col, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
            nan = np.isnan(v) & ~empty
            no = np.zeros(len(v), bool)
            return v, empty, no, nan, np.isinf(v), _Text(v)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataError(f"column '{name}' has type {col.type}; numbers are expected")
        col = pd.Series(col.to_pandas()).fillna("").astype(str).str.strip()
    empty = (col == "").to_numpy()
    v = pd.to_numeric(col.where(~empty, "0"), errors="coerce").to_numpy(np.float64)
    nan_text = col.str.lower().isin(("nan", "+nan", "-nan")).to_numpy()
    return v, empty, np.isnan(v) & ~nan_text, nan_text, np.isinf(v), col


def read_table(path, require_labels=True, max_months=None):
    """Load and validate a long-format churn table (CSV, or Parquet for
    .parquet/.pq) into :class:`ChurnData`.

    Raises :class:`DataError` with a message naming the problem and where it is
    (``line N`` of a CSV file, ``row N`` of a Parquet file) for: a missing or
    empty file, missing columns, a wrong number of fields, empty/non-numeric/
    NaN/infinite values, a non-integer month, duplicate (customer_id, month)
    rows, labels other than 0/1, labels that differ between a customer's rows,
    and (if ``require_labels``) a missing ``churned`` column. When a file has
    several problems, the first row with one is reported. Customers with fewer
    months are kept (variable lengths); rows may come in any order.
    ``max_months`` keeps only each customer's most recent months if given.

    The streaming readers (:mod:`lstm_fast.churn.stream`) check each chunk of rows
    with the same function (:func:`validate_rows`), so their messages are these.
    """
    path = os.fspath(path)
    _open_check(path)
    if is_parquet(path):
        table, line = _read_parquet_frame(path)
        rows = Rows(path, "row", table, line)
    else:
        frame, line, first_bad = _read_csv_text(path)
        rows = Rows(path, "line", frame, line, first_bad)
    check_header(path, rows.header, require_labels)
    if len(line) == 0 and rows.first_bad is None:
        raise DataError(no_rows_message(path))
    return validate_rows(rows, require_labels, max_months)


def read_header(path, require_labels=True):
    """Check that ``path`` can be opened and has the required columns (DataError if not)."""
    from .stream import open_pieces
    open_pieces(path, require_labels)


@dataclass
class Rows:
    """Rows of a table before validation: a pyarrow Table (Parquet, stored types) or a
    pandas DataFrame of stripped text (CSV), with each row's place in the file
    (``where`` = "row" or "line", numbers in ``line``) and, for CSV, the first row with
    a wrong number of fields (the rows end before it). Picklable (sent to Dask workers)."""
    path: str
    where: str
    table: object
    line: np.ndarray
    first_bad: object = None  # BadRow or None

    @property
    def header(self):
        cols = self.table.column_names if self.where == "row" else self.table.columns
        return [str(c) for c in cols]

    def column(self, name):
        return self.table.column(name) if self.where == "row" else self.table[name]

    def __len__(self):
        return len(self.line)

    def ids(self):
        """Customer ids as stripped text (object array; "" for a missing one)."""
        if self.where == "row":
            return self.ids_arrow().to_numpy(zero_copy_only=False).astype(object)
        return self.column(ID_COL).to_numpy(dtype=object)

    def ids_arrow(self):
        """Customer ids as stripped text, a pyarrow string array."""
        import pyarrow as pa
        import pyarrow.compute as pc
        col = self.column(ID_COL)
        if self.where == "row":
            col = pc.utf8_trim_whitespace(pc.cast(col, "string").fill_null(""))
            return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return pa.array(col.to_numpy(dtype=object), pa.string())

    def slice(self, start, stop):
        t = (self.table.slice(start, stop - start) if self.where == "row"
             else self.table.iloc[start:stop].reset_index(drop=True))
        return Rows(self.path, self.where, t, self.line[start:stop])


@dataclass(frozen=True)
class BadRow:
    """A CSV row with a wrong number of fields (from pyarrow's invalid-row handler)."""
    number: int
    expected_columns: int
    actual_columns: int


def check_header(path, header, require_labels):
    """DataError if a required column (or, for training, the label) is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing required column(s): {', '.join(missing)} "
                        f"(found: {', '.join(header) or 'none'}; required: "
                        f"{', '.join(REQUIRED_COLUMNS)}" + (f", {LABEL_COL}" if require_labels else "")
                        + ")")
    if require_labels and LABEL_COL not in header:
        raise DataError(f"{path}: column '{LABEL_COL}' (0/1 label per customer) is required "
                        f"for training; it is optional only for 'churn predict'")


def no_rows_message(path):
    return f"{path} has a header but no data rows"


def partly_labeled_message(path, example_id):
    return (f"{path}: column '{LABEL_COL}' is empty for some customers "
            f"(e.g. {example_id!r}) but set for others")


def interleaved_message(where, line, customer_id, last_line):
    """A customer's rows resume after other customers' rows (streaming needs them together)."""
    return (f"{where} {line}: the rows of customer_id {customer_id!r} are not together: its "
            f"earlier rows end on {where} {last_line}, other customers' rows come in between "
            f"(reading in chunks needs each customer's rows consecutive, in any month order; "
            f"sort the file by customer_id)")


def validate_rows(rows, require_labels=True, max_months=None, check=True):
    """Validate ``rows`` (:class:`Rows`, header already checked) and reshape them into
    :class:`ChurnData` (customers in first-appearance order). Raises :class:`DataError`
    naming the first row with a problem (see :func:`read_table`). ``check=False`` skips
    the duplicate and label-consistency checks (the costly ones), for rows that passed
    them before (a file read again at every epoch); the values are the same."""
    path, where, line, first_bad = rows.path, rows.where, rows.line, rows.first_bad
    column = rows.column
    has_label = LABEL_COL in rows.header
    n = len(line)
    if n == 0:
        if first_bad is not None:
            raise DataError(_bad_row_message(first_bad))
        raise DataError(no_rows_message(path))

    # every check: (mask of offending rows, message for row r); the first row with a
    # problem is reported, and within a row the first check in this order
    checks = []
    ids = rows.ids()
    empty_id = ids == ""
    checks.append((empty_id, lambda r: f"column '{ID_COL}' is empty"))

    def number_checks(name, v, empty, nonnum, nan, inf, text, allow_empty=False):
        if not allow_empty:
            checks.append((empty, lambda r: f"column '{name}' is empty (missing value)"))
        checks.append((nonnum, lambda r: f"column '{name}' has a non-numeric value {text[r]!r}"))
        checks.append((nan, lambda r: f"column '{name}' is NaN (missing value)"))
        checks.append((inf, lambda r: f"column '{name}' is infinite ({text[r]!r})"))

    mv, m_empty, m_nonnum, m_nan, m_inf, m_text = _numbers(column(MONTH_COL), MONTH_COL)
    number_checks(MONTH_COL, mv, m_empty, m_nonnum, m_nan, m_inf, m_text)
    m_ok = ~(m_empty | m_nonnum | m_nan | m_inf)
    checks.append((m_ok & (mv != np.round(mv)),
                   lambda r: f"column '{MONTH_COL}' must be an integer, got {m_text[r]!r}"))
    month = np.where(m_ok, mv, 0).astype(np.int64)
    feats = np.empty((n, len(FEATURES)))
    for k, name in enumerate(FEATURES):
        v, *masks = _numbers(column(name), name)
        number_checks(name, v, *masks)
        feats[:, k] = v
    # duplicates among rows whose id and month are valid
    import pandas as pd
    key = pd.DataFrame({"id": ids, "month": month}) if check else None
    if check:
        dup = key.duplicated(keep="first").to_numpy() & m_ok & ~empty_id
        first_of_key = pd.Series(np.arange(n)).groupby([key["id"], key["month"]], sort=False).transform("min")
        checks.append((dup, lambda r: f"duplicate row for customer_id {ids[r]!r} month {month[r]} "
                                      f"(first seen on {where} {line[first_of_key.iloc[r]]})"))
        first_row = pd.Series(np.arange(n)).groupby(key["id"], sort=False).transform("min").to_numpy()
    lab = None
    if has_label:
        lv, l_empty, l_nonnum, l_nan, l_inf, l_text = _numbers(column(LABEL_COL), LABEL_COL)
        number_checks(LABEL_COL, lv, l_empty, l_nonnum, l_nan, l_inf, l_text,
                      allow_empty=not require_labels)
        l_ok = ~(l_empty | l_nonnum | l_nan | l_inf)
        checks.append((l_ok & (lv != 0) & (lv != 1),
                       lambda r: f"column '{LABEL_COL}' must be 0 or 1, got {l_text[r]!r}"))
        lab = np.where(l_empty, np.nan, lv)
        if check:
            first_lab = lab[first_row]
            differ = (lab != first_lab) & ~(np.isnan(lab) & np.isnan(first_lab))
            checks.append((differ, lambda r: f"inconsistent '{LABEL_COL}' labels for customer_id "
                                             f"{ids[r]!r}: {_lab(first_lab[r])} on {where} "
                                             f"{line[first_row[r]]} but {_lab(lab[r])} here "
                                             f"(one label per customer)"))
    first = [(int(np.argmax(mask)), k) for k, (mask, _) in enumerate(checks) if np.any(mask)]
    if first:
        r, k = min(first)
        raise DataError(f"{where} {line[r]}: {checks[k][1](r)}")
    if first_bad is not None:
        raise DataError(_bad_row_message(first_bad))

    codes, order = pd.factorize(pd.Series(ids, dtype=object), sort=False)  # first-appearance order
    n_cust = len(order)
    lengths = np.bincount(codes, minlength=n_cust).astype(np.int64)
    rows = np.lexsort((month, codes))                   # by customer, then month
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(n) - start[codes[rows]]             # k-th month of the customer
    kept = lengths if not max_months else np.minimum(lengths, max_months)
    shift = (lengths - kept)[codes[rows]]
    keep = pos >= shift
    T = int(kept.max())
    X = np.zeros((n_cust, T, len(FEATURES)))
    X[codes[rows][keep], (pos - shift)[keep]] = feats[rows][keep]
    y = None
    if has_label:
        labs = lab[_first_rows(codes, n_cust)]
        if not np.isnan(labs).any():
            y = labs.astype(np.float64)
        elif not np.isnan(labs).all():
            raise DataError(partly_labeled_message(path, order[int(np.argmax(np.isnan(labs)))]))
    return ChurnData(X, kept, y, np.asarray(order, dtype=object))


def _bad_row_message(bad):
    return (f"line {bad.number}: expected {bad.expected_columns} fields like "
            f"the header, got {bad.actual_columns}")


def _first_rows(codes, n_cust):
    """Index of each customer's first row (codes from pd.factorize: first-appearance order)."""
    first = np.full(n_cust, -1, dtype=np.int64)
    idx = np.arange(len(codes))[::-1]
    first[codes[::-1]] = idx
    return first


def _lab(v):
    return "empty" if v != v else str(int(v))
