"""Training throughput and peak memory: one process against a Dask cluster (contrib/opsloop-dask).

    python benchmarks/dask_scale.py                       # the defaults: about 5 minutes on 2 cores, 4 GB
    python benchmarks/dask_scale.py --sizes 500000,2000000 --workers 2 --memory-limit 600MiB

Rows: the 19 metrics and label of the embedded ASD data, tiled to each size with a little noise (float32),
written as Parquet files of `--file-rows` rows. Every measurement runs in a fresh process (a fresh cluster for
the Dask ones), so each peak is its own. Three ways to train the same XGBoost model (`--rounds` rounds, depth
6, hist, no early stopping):

- one process: opsloop's built-in `xgboost` trainer on the rows read into one pandas frame (what `opsloop run`
  does today). Peak: the process's maximum resident set.
- dask-xgboost: this package's trainer on the same pandas frame, which it splits and sends to the workers
  (what `opsloop run` with `[train] plugins = ["dask-xgboost"]` does today). Peaks: the client process and
  each worker.
- partitioned: the workers read the Parquet files themselves (`dask.dataframe.read_parquet`) and XGBoost's
  Dask interface trains from a `DaskQuantileDMatrix`; no process ever holds all rows. This is the path the
  core changes in docs/contrib/dask.md would open to `opsloop run`; it is measured here with XGBoost and
  Dask directly. Peaks: each worker, against its memory limit.

Throughput is rows x rounds per second of wall time, reading and fitting; starting a cluster (and importing
XGBoost on its workers) is shown apart, as `start s`: a real cluster is already running. The worker memory
limit is Dask's (`memory_limit`): a worker above 95% of it is restarted, and then the run fails and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEATURES = [f"m{i:02d}" for i in range(1, 20)]


def make_data(directory: Path, rows: int, file_rows: int, seed: int = 0) -> Path:
    """ASD's metrics and label tiled to `rows` rows with noise, as Parquet files of `file_rows` rows."""
    import numpy as np
    import pandas as pd

    from opsloop import datasets

    asd = datasets.load("asd")
    base = asd[FEATURES].to_numpy(dtype=np.float32)
    label = asd["label"].fillna(0).to_numpy(dtype=np.int8)
    out = directory / f"rows-{rows}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, start in enumerate(range(0, rows, file_rows)):
        n = min(file_rows, rows - start)
        pick = (np.arange(start, start + n) % len(base))
        values = base[pick] + rng.normal(0, 0.01, size=(n, len(FEATURES))).astype(np.float32)
        frame = pd.DataFrame(values, columns=FEATURES).assign(label=label[pick])
        frame.to_parquet(out / f"part-{index:05d}.parquet", index=False)
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _dataset(path: Path):
    import pandas as pd

    from opsloop.types import Dataset

    frame = pd.read_parquet(path)
    return Dataset.from_frame(frame, target="label", name=str(path))


def _run_context():
    from opsloop.config import read
    from opsloop.types import RunContext

    workdir = Path(tempfile.mkdtemp(prefix="dask-scale-"))
    return RunContext(run_id="bench", workdir=workdir, model_name="bench", seed=0, config=read(workdir=workdir))


def _worker_peaks(client) -> list[float]:
    import resource as res

    peaks = client.run(lambda: res.getrusage(res.RUSAGE_SELF).ru_maxrss / 1024)
    return [round(v, 1) for v in peaks.values()]


def measure(kind: str, path: Path, rows: int, args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process: the cluster's start apart, then reading and fitting."""
    out: dict = {"kind": kind, "rows": rows}
    if kind == "one process":
        from opsloop.manager import PluginManager

        start = time.perf_counter()
        plugins = PluginManager()
        plugins.load("xgboost")
        options = plugins.options_class("xgboost")(n_estimators=args.rounds, early_stopping_rounds=0, n_jobs=0)
        plugins.call("xgboost", "train", dataset=_dataset(path), options=options, run=_run_context())
    elif kind == "dask-xgboost":
        from opsloop.manager import PluginManager
        from opsloop_dask.cluster import client_for

        plugins = PluginManager()
        plugins.load("dask-xgboost")
        options = plugins.options_class("dask-xgboost")(
            n_estimators=args.rounds, early_stopping_rounds=0, workers=args.workers, threads_per_worker=1,
            memory_limit=args.memory_limit)
        begin = time.perf_counter()
        client = client_for(options, "dask-xgboost")
        client.run(lambda: __import__("xgboost"))  # the workers' imports belong to the start, not the fit
        start = time.perf_counter()
        out["cluster_start"] = round(start - begin, 1)
        plugins.call("dask-xgboost", "train", dataset=_dataset(path), options=options, run=_run_context())
        out["worker_peak_mib"] = _worker_peaks(client)
    else:
        import dask.dataframe as dd
        import xgboost as xgb
        import xgboost.dask as dxgb
        from distributed import Client, LocalCluster

        begin = time.perf_counter()
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                          dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster) as client:
            client.run(lambda: __import__("xgboost"))
            start = time.perf_counter()
            out["cluster_start"] = round(start - begin, 1)
            # X and y from whole partitions: a column projection pushed into the reader lets dask fuse the label
            # column's small files into fewer partitions than the features', which XGBoost refuses.
            frame = dd.read_parquet(str(path), blocksize=None)
            X = frame.map_partitions(lambda part: part[FEATURES], meta=frame._meta[FEATURES])
            y = frame.map_partitions(lambda part: part["label"], meta=frame._meta["label"])
            matrix = dxgb.DaskQuantileDMatrix(client, X, y)
            params = {"tree_method": "hist", "max_depth": 6, "learning_rate": 0.1, "objective": "binary:logistic",
                      "nthread": 1}
            with xgb.config_context(verbosity=0):
                dxgb.train(client, params, matrix, num_boost_round=args.rounds)
            seconds = time.perf_counter() - start
            out["worker_peak_mib"] = _worker_peaks(client)
    seconds = time.perf_counter() - start if kind != "partitioned" else seconds
    out.update(seconds=round(seconds, 2), throughput=round(rows * args.rounds / seconds),
               process_peak_mib=round(_peak_mib(), 1))
    return out


def child(kind: str, path: Path, rows: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter; its JSON, or the error it ended with."""
    command = [sys.executable, __file__, "--measure", kind, "--path", str(path), "--rows", str(rows),
               "--rounds", str(args.rounds), "--workers", str(args.workers), "--memory-limit", args.memory_limit]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        restarts = sum("exceeded 95% memory budget" in line for line in lines)
        last = next((line for line in reversed(lines) if "Error" in line and "[bt]" not in line), lines[-1])
        why = f"{restarts} worker restart(s) over the memory limit; " if restarts else ""
        return {"kind": kind, "rows": rows, "error": (why + last.strip())[:200]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000000,4000000,8000000", help="row counts, comma-separated")
    parser.add_argument("--single-max", type=int, default=8_000_000,
                        help="largest size the one-process path is measured at")
    parser.add_argument("--plugin-max", type=int, default=4_000_000,
                        help="largest size the dask-xgboost path (all rows in its client first) is measured at")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--memory-limit", default="800MiB")
    parser.add_argument("--file-rows", type=int, default=100_000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.path), args.rows, args)))
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{os.cpu_count()} cores; {args.workers} workers x 1 thread, memory_limit {args.memory_limit} each; "
          f"{args.rounds} rounds, depth 6, hist; {len(FEATURES)} float32 features")
    header = (f"{'path':<14}{'rows':>11}{'start s':>9}{'fit s':>8}{'rows x rounds/s':>17}{'process MiB':>13}"
              "  worker peaks MiB")
    print(header)
    with tempfile.TemporaryDirectory(prefix="dask-scale-") as tmp:
        for rows in sizes:
            path = make_data(Path(tmp), rows, args.file_rows)
            size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            kinds = ((["one process"] if rows <= args.single_max else [])
                     + (["dask-xgboost"] if rows <= args.plugin_max else []) + ["partitioned"])
            for kind in kinds:
                r = child(kind, path, rows, args)
                if "error" in r:
                    print(f"{kind:<14}{rows:>11,}  failed: {r['error']}")
                    continue
                workers = ", ".join(f"{v:.0f}" for v in r.get("worker_peak_mib", [])) or "-"
                begin = f"{r['cluster_start']:.1f}" if "cluster_start" in r else "-"
                print(f"{kind:<14}{rows:>11,}{begin:>9}{r['seconds']:>8.1f}{r['throughput']:>17,}"
                      f"{r['process_peak_mib']:>13.0f}  {workers}")
            raw = rows * len(FEATURES) * 4 / 2**20
            print(f"{'':<14}{'':>11}  (Parquet {size:.0f} MiB; the rows as float32 {raw:.0f} MiB)")


if __name__ == "__main__":
    main()
