"""Batch scoring with and without the prediction log: what logging 1,000,000 rows adds (issue 9, item 2).

Usage: python benchmarks/predlog.py [--quick] [--rows 1000000] [--runs 3] [--chunk-rows 100000]
                                    [--model raw|shipped|both] [--workdir DIR] [--keep-log]

Trains (or reuses, with --workdir) the models of benchmarks/serving.py through
`opsloop run`: the raw-metrics model (`schema-check`, `impute`, XGBoost 300
trees on the 19 ASD metrics) and the shipped default's (`rolling-features`
too). Builds ROWS rows from the real ASD data by repetition (each copy of the
12 servers renamed, so every (series, time) key is new), writes them to a
Parquet file, and scores that file through the `batch` deploy target, in
process, alternating logging off and on (`log_predictions`), a fresh log file
for every logged run. It prints, per model, the median wall and CPU seconds
(CPU: this process's user + system time, all threads: XGBoost's, Arrow's and
SQLite's), and their ratios on/off: the issue's target is that logging adds at
most 20% (ratio <= 1.20). Then where the logging time goes, timed apart on the
same rows: building the `inputs` JSON (Arrow) and the key columns, and the
SQLite insert (executemany, two indexes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "serving"))

TARGET = 1.20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 2 runs each")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs with and without the log, interleaved")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="the batch target's chunk_rows")
    parser.add_argument("--model", choices=["raw", "shipped", "both"], default="both")
    parser.add_argument("--workdir", type=Path, help="kept, and its trained models reused; default: a temp dir")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.runs = 200_000, 2
    return args


def build_rows(path: Path, rows: int) -> None:
    import pandas as pd
    from opsloop import datasets

    asd = datasets.load("asd")
    copies = -(-rows // len(asd))
    big = pd.concat([asd.assign(entity=asd["entity"] + f"-c{k}") for k in range(copies)], ignore_index=True)
    big.iloc[:rows].to_parquet(path, row_group_size=100_000)


def timed(work) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    work()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    args = parse_args()
    import legs  # benchmarks/serving/legs.py
    import opsloop.config
    import pandas as pd
    from opsloop import RunContext
    from opsloop.manager import PluginManager
    from opsloop.plugins.batch_deploy import Options
    from opsloop.session import Session

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="opsloop-predlog-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.rows:,} rows, "
          f"{args.runs} run(s) each way, chunk_rows {args.chunk_rows:,}; workdir {workdir}")
    data = workdir / f"asd-{args.rows}.parquet"
    if not data.exists():
        build_rows(data, args.rows)
    models = {"raw": ("asd-serving", workdir, False), "shipped": ("asd-serving-default", workdir / "shipped-default",
                                                                 True)}
    wanted = ["raw", "shipped"] if args.model == "both" else [args.model]
    scratch = workdir / "scoring"
    try:
        for key in wanted:
            name, where, shipped = models[key]
            model = legs.trained_model(where, name, shipped=shipped)
            cfg = opsloop.config.read(where / "opsloop.toml")
            with Session.open(cfg, sections=("store",)).open_store() as store:
                version = store.resolve(f"{name}@production")
            pm = PluginManager()
            pm.load("batch")
            scratch.mkdir(exist_ok=True)
            run = RunContext(run_id="bench", workdir=scratch, model_name=name,
                             config=opsloop.config.read(workdir=scratch))
            log = scratch / "predictions.db"

            def score(logging: bool) -> None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{log}{suffix}").unlink(missing_ok=True)
                pm.call("batch", "deploy", version=version, model=model.loaded, dataset=None, run=run,
                        options=Options(input=str(data), chunk_rows=args.chunk_rows, log_predictions=logging,
                                        log_path=str(log)))

            print(f"\n{key} model: {model.ref}, {len(model.features)} features; warm-up run ...", flush=True)
            score(False)
            figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            size = 0
            for i in range(args.runs):
                for logging in ((False, True) if i % 2 == 0 else (True, False)):
                    figures[logging].append(timed(lambda: score(logging)))  # noqa: B023 - called at once
                    wall, cpu = figures[logging][-1]
                    if logging:
                        size = sum(Path(f"{log}{x}").stat().st_size for x in ("", "-wal") if Path(f"{log}{x}").exists())
                    print(f"  run {i + 1} log {'on ' if logging else 'off'}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
            off = [statistics.median(x[k] for x in figures[False]) for k in (0, 1)]
            on = [statistics.median(x[k] for x in figures[True]) for k in (0, 1)]
            print(f"  medians: off wall {off[0]:.2f} s cpu {off[1]:.2f} s; on wall {on[0]:.2f} s cpu {on[1]:.2f} s; "
                  f"log {size / 1e6:,.0f} MB")
            for label, k in (("wall", 0), ("CPU", 1)):
                ratio = on[k] / off[k]
                print(f"  {key} model, {args.rows:,} rows, {label} ratio on/off: x{ratio:.2f} "
                      f"({'MEETS' if ratio <= TARGET else 'MISSES'} the <= x{TARGET:.2f} target)")
            parts(data, args, scratch, model.loaded.manifest, pd)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parts(data: Path, args: argparse.Namespace, scratch: Path, manifest: dict, pd) -> None:
    """Where the logging time goes: the formatting and the insert, timed apart on the same chunks (CPU s)."""
    import numpy as np
    import pyarrow.parquet as pq
    from opsloop.serving.batchlog import BatchLog, _times, json_objects

    columns = [c["name"] for c in manifest["input_schema"]]
    frames = [b.to_pandas() for b in pq.ParquetFile(data).iter_batches(batch_size=args.chunk_rows, columns=columns)]
    fmt = timed(lambda: [(json_objects(f, columns).to_pylist(), _times(f["timestamp"])) for f in frames])
    log = scratch / "parts.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log}{suffix}").unlink(missing_ok=True)
    writer = BatchLog(log, request_id="bench", model="m", version=1, columns=columns, series="entity",
                      time="timestamp")
    preds = [np.zeros(len(f), dtype=np.int64) for f in frames]
    whole = timed(lambda: [writer.add(f, p, p.astype(float)) for f, p in zip(frames, preds, strict=True)])
    writer.close()
    print(f"  logging alone, {sum(map(len, frames)):,} rows: wall {whole[0]:.2f} s cpu {whole[1]:.2f} s, of which "
          f"formatting (inputs JSON, keys) wall {fmt[0]:.2f} s cpu {fmt[1]:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
