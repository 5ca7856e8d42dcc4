"""``lstm-fast churn``: train/evaluate the churn model, or score new customers.

    lstm-fast churn [--data customers.csv] [--customers N] [--hidden-size H] ...
    lstm-fast churn --write-data customers.csv [--customers N] [--seed S]
    lstm-fast churn predict --model churn_out/churn_model.npz --data new.csv [--out probs.csv]
                            [--workers N | --dask ADDRESS]

(also ``python -m lstm_fast.churn ...``). Tables are CSV, or Parquet when the
name ends in .parquet/.pq. See ``lstm_fast.churn.data`` for the table format and
the synthetic generator.
"""

import argparse
import sys
import time

TRAIN_EPILOG = """\
data: without --data, a seeded synthetic data set is generated (see
lstm_fast.churn.data); --write-data PATH writes it as a table, CSV or Parquet
(.parquet/.pq), in the format --data reads (columns customer_id, month,
movies_watched, satisfaction, days_since_login, churned) and exits.

outputs (in --out-dir): churn_model.npz (weights + normalization + config),
churn_figure.png (test metrics beside the baseline, forget/input gates per
month for churners vs stayers, training curves), metrics.json.

score new customers:
  lstm-fast churn predict --model churn_out/churn_model.npz --data new.csv --out probs.csv
"""


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _train_parser():
    p = argparse.ArgumentParser(
        prog="lstm-fast churn", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a customer-churn LSTM on monthly histories, evaluate it on a held-out "
                    "test split beside an order-blind baseline, save the model and a figure.",
        epilog=TRAIN_EPILOG)
    p.add_argument("--data", metavar="TABLE", help="customer history, CSV or Parquet (long format, with "
                   "'churned'); "
                   "default: synthetic data")
    p.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="with --data: train on mini-batches streamed from the file (read in chunks of "
                        "4096 customers at each pass, never loaded whole: 'on'), or load it once "
                        "('off'); the results are the same either way. 'auto' (default) streams a "
                        "file whose in-memory tables would take more than a quarter of the "
                        "available memory")
    p.add_argument("--write-data", metavar="TABLE",
                   help="write the synthetic data set as CSV or Parquet (.parquet/.pq) and exit")
    p.add_argument("--customers", type=_positive_int, default=20000,
                   help="number of synthetic customers (default 20000)")
    p.add_argument("--months", type=_positive_int, default=6,
                   help="months of synthetic history (default 6)")
    p.add_argument("--hidden-size", type=_positive_int, default=32, help="LSTM hidden size (default 32)")
    p.add_argument("--epochs", type=_positive_int, default=30,
                   help="maximum epochs (default 30; early stopping usually ends sooner)")
    p.add_argument("--patience", type=_positive_int, default=5,
                   help="early stopping: epochs without validation-loss improvement (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, split, init and shuffling (default 0)")
    p.add_argument("--backend", default="auto", help="LSTM backend: auto, c, numba, numpy (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the LSTM kernels of the c/numba backends (default: the library's "
                   "choice); NumPy's BLAS runs on 1 thread in this job (small matrices)")
    p.add_argument("--out-dir", default="churn_out", help="where model, figure and metrics go (default ./churn_out)")
    p.add_argument("--no-figure", action="store_true", help="do not write the PNG figure")
    p.add_argument("--quiet", action="store_true", help="no progress output; print only the results")
    return p


def _predict_parser():
    p = argparse.ArgumentParser(
        prog="lstm-fast churn predict",
        description="Churn probability per customer from a saved model. Writes a table "
                    "customer_id,churn_probability (to --out, or standard output), in file order. "
                    "The file is read in chunks of 16384 whole customers (any size; each "
                    "customer's rows must be consecutive, in any month order), scored in one "
                    "process or, with --workers/--dask, on a Dask cluster; the scores are the "
                    "same to the bit either way.")
    p.add_argument("--model", required=True, help="model file written by 'lstm-fast churn' (churn_model.npz)")
    p.add_argument("--data", required=True, help="customer history, CSV or Parquet ('churned' optional; if present, "
                   "the ROC AUC is reported)")
    p.add_argument("--out", help="output table: Parquet if it ends in .parquet/.pq, else CSV "
                   "(default: CSV on standard output)")
    p.add_argument("--backend", default="auto", help="LSTM backend (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the LSTM kernels (default: the library's choice)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                       help="score on a local Dask cluster of N worker processes (one thread each)")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="score on an existing Dask cluster (scheduler address, e.g. tcp://host:8786)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on standard error")
    return p


# What the job needs beside the kernels: the `churn` extra of pyproject.toml (import names).
NEEDS = ("pandas", "pyarrow", "sklearn", "matplotlib", "tqdm", "dask", "distributed")
INSTALL_HINT = 'pip install "lstm-fast[churn]" (or, in a checkout, pip install ".[churn]")'


def missing_dependencies():
    """Import names of the churn extra that are not installed."""
    from importlib.util import find_spec
    return [name for name in NEEDS if find_spec(name) is None]


def _err(msg):
    print(f"lstm-fast churn: error: {msg}", file=sys.stderr)
    return 2


def _setup(args):
    import lstm_fast
    if args.threads is not None:
        lstm_fast.set_num_threads(args.threads)
    lstm_fast.LSTM(1, 1, backend=args.backend)  # fail early with the library's message


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        args = _predict_parser().parse_args(argv[1:])
        run_job = _predict
    else:
        args = _train_parser().parse_args(argv)
        run_job = _train
    missing = missing_dependencies()
    if missing:
        return _err(f"the churn job needs {', '.join(missing)}, not installed here: {INSTALL_HINT}")
    from threadpoolctl import threadpool_limits

    import lstm_fast
    threads_before = lstm_fast.get_num_threads()
    # The churn model's NumPy products are small (a batch of 128 customers x 4*32 gate
    # units): BLAS threads cost more than they give (on a busy machine OpenBLAS's spinning
    # threads made the numpy backend 10-20x slower, 3.7 s vs 0.3 s per epoch), so NumPy's
    # BLAS runs on one thread; --threads is for the kernels.
    try:
        with threadpool_limits(1, user_api="blas"):
            return run_job(args)
    finally:
        lstm_fast.set_num_threads(threads_before)


def _train(args):
    from lstm_fast import BackendUnavailableError

    from . import data as D
    from .train import run
    try:
        _setup(args)
        if args.data and args.write_data:
            return _err("--data and --write-data do not go together (--write-data writes the synthetic set)")
        if args.data and (args.stream == "on" or args.stream == "auto" and _too_big(args.data)):
            from .train import FileSource
            D.read_header(args.data, require_labels=True)
            ds = FileSource(args.data)
            source = f"{args.data}, streamed"
        elif args.data:
            t0 = time.perf_counter()
            ds = D.read_table(args.data, require_labels=True)
            source = f"{args.data}, loaded in {time.perf_counter() - t0:.1f}s"
        else:
            t0 = time.perf_counter()
            ds = D.generate(args.customers, n_months=args.months, seed=args.seed)
            source = f"synthetic, seed {args.seed}, generated in {time.perf_counter() - t0:.1f}s"
            if args.write_data:
                D.write_table(ds, args.write_data)
                print(f"wrote {len(ds)} customers ({int(ds.lengths.sum())} rows) to {args.write_data}; "
                      f"train on it with: lstm-fast churn --data {args.write_data}")
                return 0
        run(ds, args.out_dir, hidden_size=args.hidden_size, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed,
            backend=args.backend, quiet=args.quiet, figure=not args.no_figure, data_source=source)
    except (D.DataError, BackendUnavailableError, ValueError, OSError) as e:
        return _err(str(e))
    return 0


def _too_big(path, share=0.25):
    """Whether loading ``path`` would take more than ``share`` of the available memory
    (about 400 bytes a row at the peak of read_table; rows from the Parquet metadata, or
    about 30 bytes a CSV row)."""
    import os
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    from . import data as D
    try:
        if D.is_parquet(path):
            import pyarrow.parquet as pq
            rows = pq.ParquetFile(path).metadata.num_rows
        else:
            rows = os.path.getsize(path) / 30
    except Exception:  # unreadable: read_table gives the message
        return False
    return rows * 400 > share * avail


def predict_main(argv):
    return main(["predict"] + list(argv))


def _predict(args):
    from lstm_fast import BackendUnavailableError
    from tqdm.auto import tqdm

    from . import data as D
    from .stream import predict_file
    cluster = client = None
    bar = tqdm(desc="scoring", unit="row", file=sys.stderr, dynamic_ncols=True, leave=False,
               disable=args.quiet or not sys.stderr.isatty())
    try:
        _setup(args)
        if args.workers or args.dask:
            D.read_header(args.data, require_labels=False)  # a bad file fails before the cluster starts
            from .model import ChurnModel
            ChurnModel.load(args.model, backend=args.backend)
            from dask.distributed import Client, LocalCluster
            if args.workers:
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
                client = Client(cluster)
            else:
                client = Client(args.dask)
        res = predict_file(args.model, args.data, args.out if args.out else sys.stdout,
                           backend=args.backend, threads=args.threads, client=client, progress=bar)
    except BrokenPipeError:  # e.g. `... predict ... | head`: the reader left; not an error
        try:
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except (D.DataError, BackendUnavailableError, ValueError, OSError) as e:
        return _err(str(e))
    finally:
        bar.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        where = (f"{res['workers']} Dask worker(s)" if client is not None else "1 process")
        msg = (f"scored {res['customers']} customers in {res['seconds']:.2f}s on {where} "
               f"({res['customers'] / max(res['seconds'], 1e-9):,.0f}/s, backend {res['backend']!r})"
               + (f"; wrote {args.out}" if args.out else ""))
        if res["auc"] == res["auc"]:
            msg += f"; labels present: ROC AUC {res['auc']:.3f}"
        print(msg, file=sys.stderr)
    return 0
