"""Reading churn tables in chunks of whole customers, and scoring them at scale.

A file larger than memory is read in pieces (Parquet: ``ParquetFile.iter_batches``;
CSV: pyarrow's streaming CSV reader) and cut into **chunks of exactly
``chunk_customers`` whole customers** (the last one smaller), in file order: the
rows of a customer that may continue in the next piece are carried over, so a
customer's months never split between chunks. This needs each customer's rows to
be consecutive in the file (in any month order); a customer whose rows resume
after other customers' rows is reported (:func:`lstm_fast.churn.data.interleaved_message`),
also across chunks (a sorted array of 64-bit hashes of the customers already seen).

Each chunk is validated by :func:`lstm_fast.churn.data.validate_rows`, the function
behind :func:`~lstm_fast.churn.data.read_table`, so every message (with the file's own
row/line numbers) is the in-memory reader's.

Scoring (:func:`predict_file`) runs the model on blocks of ``block`` customers
(4096, the batch of :meth:`ChurnModel.predict_proba`); chunks are whole numbers of
blocks, so the batches are the same whether a file is scored in memory, streamed in
one process, or spread over a Dask cluster (the kernels' results for a customer depend
on the batch it is in, by rounding: a BLAS product takes other paths for other batch
sizes), and the scores are bitwise identical. With a Dask ``client``, the process that
reads the file sends the chunks to the workers (at most a few per worker in flight),
the workers validate and score them with the model, which is sent to each worker once
and loaded once per worker process (:func:`_worker_model`), and the results are written
in file order.
"""

import hashlib
import io
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import data as D

CHUNK_CUSTOMERS = 16384   # customers per chunk (a multiple of BLOCK)
BLOCK = 4096              # customers per model batch when scoring
ROWS_PER_READ = 1 << 16   # rows per piece read from the file


@dataclass
class Chunk:
    """Whole customers' rows (:class:`~lstm_fast.churn.data.Rows`), the chunk's number
    and first customer's number in the file; ``error``: a problem found by the reader
    right after these rows (raised once the rows themselves are checked)."""
    rows: D.Rows
    index: int
    first_customer: int
    error: object = None


# --- reading pieces --------------------------------------------------------------------------

def _parquet_pieces(path, rows_per_read):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise D.DataError(f"{path}: not a readable Parquet file ({e})") from None
    header = [str(n) for n in f.schema_arrow.names]
    total = f.metadata.num_rows

    def pieces():
        offset = 0
        try:
            for batch in f.iter_batches(batch_size=rows_per_read):
                t = pa.Table.from_batches([batch])
                yield D.Rows(path, "row", t, np.arange(offset, offset + t.num_rows, dtype=np.int64) + 1)
                offset += t.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise D.DataError(f"{path}: not a readable Parquet file ({e})") from None
    return header, total, pieces()


def _csv_pieces(path, rows_per_read):
    import pyarrow.csv as pcsv
    bad = []

    def invalid(row):
        bad.append(D.BadRow(row.number, row.expected_columns, row.actual_columns))
        return "skip"

    names, header = D.csv_header(path)
    with D.csv_errors(path):
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(use_threads=False, block_size=64 * rows_per_read),
            parse_options=pcsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=D.csv_as_text(names))

    def pieces():
        offset = 0
        while True:
            try:
                with D.csv_errors(path):
                    batch = reader.read_next_batch()
            except StopIteration:
                return
            frame = batch.to_pandas()
            frame.columns = header
            line = np.arange(offset, offset + len(frame), dtype=np.int64) + 2
            offset += len(frame)
            first_bad = bad[0] if bad else None
            if first_bad is not None:  # rows after the first invalid one are never looked at
                keep = line < first_bad.number
                frame, line = frame[keep], line[keep]
            text = frame.astype(str).apply(lambda c: c.str.strip())
            blank = (text == "").all(axis=1).to_numpy()
            yield D.Rows(path, "line", text[~blank].reset_index(drop=True), line[~blank], first_bad)
            if first_bad is not None:
                return
    return header, None, pieces()


def open_pieces(path, require_labels, rows_per_read=ROWS_PER_READ):
    """(total rows or None, iterator of Rows pieces) of a table; the header is checked."""
    path = os.fspath(path)
    D._open_check(path)
    header, total, pieces = (_parquet_pieces if D.is_parquet(path) else _csv_pieces)(path, rows_per_read)
    D.check_header(path, header, require_labels)
    return total, pieces


def _concat(a, b):
    if a is None:
        return b
    if a.where == "row":
        import pyarrow as pa
        table = pa.concat_tables([a.table, b.table])
    else:
        import pandas as pd
        table = pd.concat([a.table, b.table], ignore_index=True)
    return D.Rows(a.path, a.where, table, np.concatenate([a.line, b.line]), b.first_bad)


def hash_ids(ids):
    """64-bit hashes of customer ids (FNV-1a over the code points and the length, vectorized)."""
    u = np.asarray(ids, dtype=str)
    h = np.full(len(u), 0xcbf29ce484222325, dtype=np.uint64)
    if len(u) and u.dtype.itemsize:
        codes = u.view(np.uint32).reshape(len(u), -1)
        prime = np.uint64(0x100000001b3)
        with np.errstate(over="ignore"):
            for col in codes.T:
                h = (h ^ col.astype(np.uint64)) * prime
            h = (h ^ np.char.str_len(u).astype(np.uint64)) * prime
    return h


class _SeenIds:
    """Customers already cut into chunks: 64-bit hashes of their ids (sorted arrays merged
    like a log-structured merge tree; 16 bytes a customer) and the number of each one's last
    row. Two different ids with the same hash (odds about n**2 / 2**65 for n customers: 1e-9
    for 200,000) would be reported as one customer whose rows are not together."""

    def __init__(self):
        self.levels = []  # [(sorted hashes, last line)]

    def add(self, h, last_line):
        o = np.argsort(h, kind="stable")
        self.levels.append((h[o], np.asarray(last_line)[o]))
        while len(self.levels) > 1 and len(self.levels[-2][0]) <= 2 * len(self.levels[-1][0]):
            (h1, l1), (h2, l2) = self.levels.pop(), self.levels.pop()
            h, ll = np.concatenate([h2, h1]), np.concatenate([l2, l1])
            o = np.argsort(h, kind="stable")
            self.levels.append((h[o], ll[o]))

    def last_line(self, h):
        """Last line of each hashed id if seen, else -1."""
        out = np.full(len(h), -1, dtype=np.int64)
        for hs, ls in self.levels:
            pos = np.minimum(np.searchsorted(hs, h), len(hs) - 1)
            hit = hs[pos] == h
            out[hit] = ls[pos[hit]]
        return out


def _repeated(run_ids, h):
    """Mask of runs whose id appeared in an earlier run (hashes, then the ids compared)."""
    o = np.argsort(h, kind="stable")
    hs = h[o]
    same = np.flatnonzero(hs[1:] == hs[:-1]) + 1
    out = np.zeros(len(h), bool)
    for k in same:  # rare: check the ids themselves
        j = o[k]
        out[j] = bool(np.any(run_ids[o[:k]][hs[:k] == hs[k]] == run_ids[j]))
    return out


def _with_last(it):
    """(item, is_last) pairs."""
    it = iter(it)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def iter_chunks(path, require_labels=False, chunk_customers=CHUNK_CUSTOMERS, rows_per_read=ROWS_PER_READ,
                total_rows=None):
    """Chunks (:class:`Chunk`) of ``chunk_customers`` whole customers of a table, in file
    order (the last one smaller). ``total_rows``: a list that receives the number of rows
    if the file tells it (Parquet). The header is checked at once; the rows by
    :func:`chunk_data`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    total, pieces = open_pieces(path, require_labels, rows_per_read)
    if total_rows is not None:
        total_rows.append(total)
    seen = _SeenIds()
    buf, buf_ids, k, customers = None, None, 0, 0
    for piece, last in _with_last(pieces):
        buf = _concat(buf, piece)
        piece_ids = piece.ids_arrow()
        buf_ids = piece_ids if buf_ids is None else pa.concat_arrays([buf_ids, piece_ids])
        first_bad = buf.first_bad  # a CSV row with a wrong field count: the rows end there
        last = last or first_bad is not None
        if len(buf) == 0 and not last:
            continue
        ids = buf_ids
        n = len(ids)
        change = pc.not_equal(ids.slice(1), ids.slice(0, max(n - 1, 0))).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64) if n else \
            np.zeros(0, np.int64)
        ends = np.append(starts[1:], n).astype(np.int64)
        run_ids = ids.take(pa.array(starts)).to_numpy(zero_copy_only=False).astype(object)
        run_h = hash_ids(run_ids)
        # a customer whose rows resume after others': its id in an earlier run here or in an earlier chunk
        named = run_ids != ""  # an empty id is reported by the validation
        dup = _repeated(run_ids, run_h) & named
        before = seen.last_line(run_h)
        bad = np.flatnonzero(dup | ((before >= 0) & named))
        error = None
        complete = len(starts) if last else len(starts) - 1  # the last customer may go on
        if len(bad):
            j = int(bad[0])
            prev = buf.line[ends[int(np.flatnonzero(run_ids[:j] == run_ids[j])[-1])] - 1] if dup[j] \
                else before[j]
            error = D.interleaved_message(buf.where, int(buf.line[starts[j]]), run_ids[j], int(prev))
            complete, first_bad = j, None
        flush = last or error is not None
        done = 0
        while complete - done >= chunk_customers or (flush and done < complete):
            stop = min(done + chunk_customers, complete)
            rows = buf.slice(int(starts[done]), int(ends[stop - 1]))
            seen.add(run_h[done:stop], buf.line[ends[done:stop] - 1])
            end = flush and stop == complete
            if end:
                rows.first_bad = first_bad
            yield Chunk(rows, k, customers, error if end else None)
            k, customers, done = k + 1, customers + stop - done, stop
        if flush:
            if done == 0 and (error is not None or first_bad is not None or k == 0):
                rows = buf.slice(0, 0)
                rows.first_bad = first_bad
                yield Chunk(rows, k, customers, error)  # no rows before the problem (or none at all)
            return
        buf, buf_ids = buf.slice(int(starts[done]), len(buf)), buf_ids.slice(int(starts[done]))
    if buf is None:  # no piece at all: a header without rows
        raise D.DataError(D.no_rows_message(os.fspath(path)))


def chunk_data(chunk, require_labels=False, max_months=None, check=True):
    """The chunk's customers as ChurnData, checked with the in-memory reader's checks;
    DataError with its message (or the reader's, for a customer whose rows resume).
    ``check=False``: see :func:`lstm_fast.churn.data.validate_rows`."""
    if len(chunk.rows) == 0 and chunk.error is not None:
        raise D.DataError(chunk.error)
    ds = D.validate_rows(chunk.rows, require_labels, max_months, check=check)
    if chunk.error is not None:
        raise D.DataError(chunk.error)
    return ds


# --- scoring ---------------------------------------------------------------------------------

class ScoreWriter:
    """customer_id, churn_probability, chunk by chunk: Parquet (float64) if the path ends in
    .parquet/.pq, else CSV with 6 decimals (a path, or an open text stream such as stdout),
    the format of :func:`lstm_fast.churn.data.write_scores`. A file is written under a
    temporary name and renamed when complete (:meth:`close`); :meth:`abort` removes it."""

    def __init__(self, path_or_buf):
        self.target = path_or_buf
        self.parquet = isinstance(path_or_buf, str) and D.is_parquet(path_or_buf)
        self.tmp = None
        self.writer = None
        self.header = True
        if isinstance(path_or_buf, str):
            d = os.path.dirname(os.path.abspath(path_or_buf))
            try:
                fd, self.tmp = tempfile.mkstemp(prefix=".scores-", suffix=".partial", dir=d)
            except OSError as e:
                raise OSError(f"cannot write {path_or_buf}: {e.strerror or e} ({d})") from None
            os.close(fd)
            self.buf = None if self.parquet else open(self.tmp, "w", newline="")
        else:
            self.buf = path_or_buf

    def write(self, ids, prob):
        import pandas as pd
        frame = pd.DataFrame({D.ID_COL: np.asarray(ids, dtype=object), "churn_probability": prob})
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table)
        else:
            frame.to_csv(self.buf, index=False, header=self.header, float_format="%.6f")
            self.header = False

    def close(self):
        if self.parquet:
            if self.writer is None:
                self.write([], np.zeros(0))
            self.writer.close()
        elif self.tmp is not None:
            if self.header:
                self.write([], np.zeros(0))
            self.buf.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.target)
            self.tmp = None

    def abort(self):
        if self.tmp is not None:
            try:
                if self.writer is not None:
                    self.writer.close()
                elif self.buf is not None:
                    self.buf.close()
            finally:
                os.unlink(self.tmp)
                self.tmp = None


def score_chunk(model, chunk, block=BLOCK):
    """(ids, churn probability, labels or None) of a chunk's customers; the model runs on
    blocks of ``block`` customers from the chunk's start."""
    ds = chunk_data(chunk, require_labels=False)
    return ds.ids, model.predict_proba(ds, batch_size=block), ds.y


# the worker side of the Dask path: the model, loaded once per worker process
_MODELS = {}
LOADS = []  # (token, backend) of each load in this process (the tests count them)


def _worker_model(token, payload, backend):
    key = (token, backend)
    model = _MODELS.get(key)
    if model is None:
        from .model import ChurnModel
        model = _MODELS[key] = ChurnModel.load(io.BytesIO(payload), backend=backend)
        LOADS.append(key)
    return model


def _score_on_worker(token, payload, backend, threads, block, chunk):
    import lstm_fast
    from threadpoolctl import threadpool_limits
    model = _worker_model(token, payload, backend)
    before = lstm_fast.get_num_threads()
    lstm_fast.set_num_threads(threads)
    try:
        with threadpool_limits(1, user_api="blas"):
            return score_chunk(model, chunk, block)
    finally:
        lstm_fast.set_num_threads(before)


def predict_file(model_path, data_path, out, *, backend="auto", threads=None, client=None,
                 chunk_customers=CHUNK_CUSTOMERS, block=BLOCK, rows_per_read=ROWS_PER_READ,
                 in_flight=None, progress=None):
    """Score every customer of a table (any size) with a saved model; write
    customer_id, churn_probability to ``out`` (a path or a text stream) in file order.

    ``client``: a ``dask.distributed.Client``; the chunks are then validated and scored on
    its workers (``threads`` kernel threads each, default 1), at most ``in_flight`` chunks
    at a time (default 2 per worker + 1). ``progress``: a tqdm bar (or None).
    Returns a dict: customers, rows, seconds, auc (nan if unlabeled), backend, workers."""
    from .metrics import roc_auc
    from .model import ChurnModel
    if chunk_customers % block:
        raise ValueError(f"chunk_customers ({chunk_customers}) must be a multiple of block ({block})")
    t0 = time.perf_counter()
    model = ChurnModel.load(model_path, backend=backend)  # checks the file here, once
    if client is not None:
        with open(model_path, "rb") as f:
            payload = f.read()
    total = []
    chunks = iter_chunks(data_path, False, chunk_customers, rows_per_read, total_rows=total)
    writer = None
    ys, ps, labeled = [], [], None
    n_customers = n_rows = 0
    first_unlabeled = None

    def collect(chunk_rows, result):
        nonlocal n_customers, n_rows, labeled, first_unlabeled
        ids, prob, y = result
        has = y is not None
        if labeled is None:
            labeled = has
        if not has and first_unlabeled is None and len(ids):
            first_unlabeled = ids[0]
        if has != labeled:
            raise D.DataError(D.partly_labeled_message(os.fspath(data_path), first_unlabeled))
        writer.write(ids, prob)
        ps.append(prob)
        if has:
            ys.append(y)
        n_customers += len(ids)
        n_rows += chunk_rows
        if progress is not None:
            progress.update(chunk_rows)
            progress.set_postfix(customers=n_customers, refresh=False)

    try:
        first = next(chunks)  # header checks before anything is written or started
        if progress is not None and total and total[0] is not None:
            progress.reset(total=total[0])
        writer = ScoreWriter(out)
        todo = _chain(first, chunks)
        if client is None:
            for chunk in todo:
                collect(len(chunk.rows), score_chunk(model, chunk, block))
            workers = 0
        else:
            addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
            workers = len(addresses)
            if not workers:
                raise ValueError("the Dask cluster has no workers")
            in_flight = in_flight or 2 * workers + 1
            busy = dict.fromkeys(addresses, 0)  # chunks in flight per worker
            token = hashlib.sha1(payload).hexdigest()
            remote_model = client.scatter(payload, broadcast=True, hash=False)
            pending = deque()
            try:
                try:
                    for chunk in todo:
                        while len(pending) >= in_flight:
                            rows, fut, w = pending.popleft()
                            busy[w] -= 1
                            collect(rows, fut.result())
                        # the rows go straight to the least busy worker, which scores them there
                        # (not through the scheduler's graph, nor from worker to worker)
                        w = min(addresses, key=busy.__getitem__)
                        [data] = client.scatter([chunk], workers=[w], direct=True, hash=False)
                        fut = client.submit(_score_on_worker, token, remote_model, model.backend,
                                            threads or 1, block, data, pure=False, workers=[w],
                                            allow_other_workers=False)
                        del data
                        busy[w] += 1
                        pending.append((len(chunk.rows), fut, w))
                finally:  # in file order (also before a reading error): the first problem is reported
                    while pending:
                        rows, fut, _ = pending.popleft()
                        collect(rows, fut.result())
            except BaseException:
                for _, fut, _ in pending:
                    fut.cancel()
                raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    prob = np.concatenate(ps) if ps else np.zeros(0)
    auc = roc_auc(np.concatenate(ys), prob) if labeled and ys else float("nan")
    return {"customers": n_customers, "rows": n_rows, "seconds": time.perf_counter() - t0, "auc": auc,
            "backend": model.backend, "workers": workers}


def _chain(first, rest):
    yield first
    yield from rest
