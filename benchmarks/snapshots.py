"""Data snapshots (issue 14, item 4): 1,000,000 rows x 40 features, against plain pandas and pyarrow Parquet.

Usage: python benchmarks/snapshots.py [--rows 1000000] [--runs 5]

Issue 14 asks that "a snapshot of 1M rows x 40 features takes at most 2 s and
at most the data's Parquet size on disk". The frame is the embedded ASD rows
made 40 float32 features wide (the 19 metrics, the 19 reversed in time, the
squares of two) and repeated with seeded noise to `--rows` rows, with the
server, the time and the label beside them (as benchmarks/monitor.py builds
it). Timed in interleaved rounds, each writing into a fresh directory:

- `pandas to_parquet`: `DataFrame.to_parquet(path)`, pandas' defaults (pyarrow, snappy);
- `pyarrow write_table`: `pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)`;
- `snapshot (new)`: `opsloop.snapshots.write`, what `[data] snapshot = "store"`
  does at registration: zstd Parquet to a temporary file, its sha256, fsync,
  read-only, renamed to `<sha256>.parquet`;
- `snapshot (deduplicated)`: the same rows once more into a directory that
  has them: what a second version on the same rows pays (written, hashed,
  found, discarded);
- `snapshot, hashed entity`: `[data] sensitive = ["entity"]`,
  `sensitive_mode = "hash"` applied first (`opsloop.sensitive.Sensitive.frame`).

Wall and CPU time (this process, all threads) are medians of `--runs`
rounds; ratios are against `pandas to_parquet` in the same run. Sizes are
the files' bytes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from opsloop import datasets, snapshots
from opsloop.sensitive import Sensitive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitor import wide  # noqa: E402 - the same 40-feature rows as benchmarks/monitor.py


def timed(work: Callable[[], Path]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    path = work()
    return time.perf_counter() - wall, time.process_time() - cpu, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    frame = wide(datasets.load("asd"), args.rows, seed=7)
    print(f"{len(frame):,} rows x {frame.shape[1] - 3} float32 features + entity, timestamp, label "
          f"({frame.memory_usage(deep=True).sum() / 1e6:,.0f} MB in memory)")
    hashed = Sensitive(columns=("entity",), mode="hash", key=b"k" * 32)
    root = Path(tempfile.mkdtemp(prefix="opsloop-snapshots-bench-"))
    kept = root / "kept"
    snapshots.write(frame, kept)  # what the deduplicated case finds

    def fresh() -> Path:
        path = Path(tempfile.mkdtemp(dir=root))
        return path

    cases: dict[str, Callable[[], Path]] = {
        "pandas to_parquet": lambda: _pandas(frame, fresh() / "f.parquet"),
        "pyarrow write_table": lambda: _pyarrow(frame, fresh() / "f.parquet"),
        "snapshot (new)": lambda: snapshots.write(frame, fresh())[1],
        "snapshot (deduplicated)": lambda: snapshots.write(frame, kept)[1],
        "snapshot, hashed entity": lambda: snapshots.write(hashed.frame(frame), fresh())[1],
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
    try:
        for _ in range(args.runs):
            for name, work in cases.items():
                results[name].append(timed(work))
            for child in root.iterdir():
                if child != kept:
                    shutil.rmtree(child, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med: dict[str, Any] = {name: tuple(statistics.median(r[i] for r in runs) for i in range(3))
                           for name, runs in results.items()}
    base_wall, base_cpu, base_size = med["pandas to_parquet"]
    print(f"medians of {args.runs} interleaved rounds; ratios against pandas to_parquet in this run\n")
    print(f"{'':28} {'wall s':>7} {'CPU s':>7} {'wall x':>7} {'CPU x':>7} {'MB':>8} {'size x':>7}")
    for name, (wall, cpu, size) in med.items():
        print(f"{name:28} {wall:7.2f} {cpu:7.2f} {wall / base_wall:6.2f}x {cpu / base_cpu:6.2f}x "
              f"{size / 1e6:8.1f} {size / base_size:6.2f}x")
    wall, _, size = med["snapshot (new)"]
    print(f"\nissue 14: a new snapshot took {wall:.2f} s (limit 2 s) and {size / base_size:.2f}x the data's "
          f"Parquet size (limit 1x)")


def _pandas(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path)
    return path


def _pyarrow(frame: pd.DataFrame, path: Path) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


if __name__ == "__main__":
    main()
