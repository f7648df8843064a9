"""`opsloop run` on rows beyond one worker's memory: a partitioned source on Dask against one process.

    python benchmarks/partitioned_scale.py                    # the default: a few minutes on 2 cores
    python benchmarks/partitioned_scale.py --rows 12000000 --memory-limit 1GiB --single-sizes 2000000,1000000

Rows: ASD's 12 servers tiled into more servers (each copy with a little noise, float32 metrics), written as
one Parquet file per 6 hours (every file holds every server's rows of those hours). Both runs are whole `opsloop run`s
in their own processes with opsloop's default preprocessing (schema-check, impute, rolling-features 1h
mean and std), `holdout` validation, XGBoost (`--rounds`, no early stopping) and registration; they differ
only in `[data] source` and `[train] plugins`, as docs/scale.md says:

- partitioned: `source = "dask-parquet:<folder>"`, `dask-xgboost`, on a `LocalCluster` of `--workers` worker
  processes with Dask's `memory_limit` (a worker above 95% of it is restarted, and the run fails). The cluster
  is started by this script (a running cluster is the normal case), so the workers' own peak resident memory
  (`getrusage` in each worker) and CPU time can be read after the run.
- one process: `source = "<folder>"` (pandas reads it whole), the built-in `xgboost`, under the same limit:
  the process is killed as Dask's nanny kills a worker, when its resident memory passes 95% of the limit
  (polled every 50 ms). Sizes from `--single-sizes` are tried largest first until one fits; its
  throughput is compared with the partitioned run's.

Throughput is training rows per second of the whole run (load to registration), wall and CPU (user +
system: the opsloop process and, for the partitioned run, its workers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FEATURES = [f"m{i:02d}" for i in range(1, 20)]
#: Seconds a run may take before it is killed and reported as failed.
TIMEOUT = 1200


def make_data(directory: Path, rows: int, seed: int = 0) -> tuple[Path, int]:
    """ASD's servers tiled to about `rows` rows (whole copies of the 12 servers), one Parquet file per 6 hours of
    every server (file names in time order)."""
    import numpy as np
    import pandas as pd

    from opsloop import datasets

    asd = datasets.load("asd").sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    copies = max(1, round(rows / len(asd)))
    out = directory / f"rows-{copies * len(asd)}-6h"
    if out.exists():
        return out, copies * len(asd)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    days = asd["timestamp"].dt.floor("6h")  # a file per 6 hours: partitions small enough to replay in a worker
    for day in sorted(days.unique()):
        base = asd[days == day]
        pieces = []
        for k in range(copies):
            noise = rng.normal(0, 0.01, size=(len(base), len(FEATURES))).astype(np.float32)
            piece = base.assign(entity=base["entity"] + f"#{k}", **{c: base[c].to_numpy() + noise[:, j]
                                                                     for j, c in enumerate(FEATURES)})
            pieces.append(piece)
        frame = pd.concat(pieces, ignore_index=True).sort_values(["timestamp", "entity"], kind="stable")
        frame.reset_index(drop=True).to_parquet(out / f"{day:%Y-%m-%dT%H}.parquet", index=False)
    return out, copies * len(asd)


def config_text(source: str, trainer: str, rounds: int, cluster: str = "") -> str:
    """The config both runs share, but for the source and the trainer."""
    return f"""[project]
name = "scale"
[data]
source = "{source}"
target = "label"
time = "timestamp"
series = "entity"
monitor_fraction = 0
{cluster and f'[data.dask-parquet]{chr(10)}scheduler = "{cluster}"'}
[preprocess]
plugins = ["schema-check", "impute", "rolling-features"]
[preprocess.rolling-features]
windows = ["1h"]
stats = ["mean", "std"]
[train]
plugins = ["{trainer}"]
[train.{trainer}]
n_estimators = {rounds}
early_stopping_rounds = 0
{cluster and f'scheduler = "{cluster}"'}
[validate]
plugins = ["holdout"]
[deploy]
plugins = []
[monitor]
plugins = []
"""


#: `opsloop run --json --quiet`, which reports its own peak resident memory on its last stderr line (a
#: forked child's `ru_maxrss` seen from the parent counts the parent's pages before the exec).
CHILD = ("import atexit, resource, sys\n"
         "atexit.register(lambda: sys.stderr.write('\\nPEAK_KIB %d\\n' % "
         "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
         "sys.argv = ['opsloop', 'run', '--json', '--quiet']\n"
         "from opsloop.cli import main\n"
         "main()\n")


def opsloop_run(workdir: Path, limit: int | None) -> dict:
    """`opsloop run` in a child process: wall and CPU seconds, peak resident memory, whether it finished;
    killed when its resident memory passes 95% of `limit` bytes (Dask's rule for a worker)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", CHILD], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = threading.Event()
    peak = [0]

    def watch() -> None:
        try:
            watched = psutil.Process(process.pid)
            while process.poll() is None:
                rss = watched.memory_info().rss
                peak[0] = max(peak[0], rss)
                if limit and rss > 0.95 * limit:
                    killed.set()
                    process.kill()
                    return
                time.sleep(0.05)
        except psutil.NoSuchProcess:
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = threading.Timer(TIMEOUT, process.kill)  # a run that hangs (a worker lost mid-fit) ends
    deadline.start()
    _, status, usage = os.wait4(process.pid, 0)
    deadline.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = process.communicate()
    watcher.join()
    wall = time.perf_counter() - start
    reported = [line for line in err.splitlines() if line.startswith("PEAK_KIB ")]
    own = int(reported[-1].split()[1]) / 1024 if reported else 0.0
    result = {"ok": process.returncode == 0 and not killed.is_set(), "wall_s": wall,
              "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": max(own, peak[0] / 2**20),
              "killed": killed.is_set()}
    if not result["ok"] and not killed.is_set():
        lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("PEAK_KIB")]
        result["error"] = (lines or ["?"])[-1][:300]
    if result["ok"]:
        result["run"] = json.loads(out)
    return result


def _worker_stats(client) -> dict:
    def stats() -> tuple[float, float]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime

    return client.run(stats)


def partitioned(folder: Path, rows: int, args: argparse.Namespace, limit: int) -> dict:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                      dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("xgboost") and __import__("opsloop.plugins.rolling_features"))
        before = _worker_stats(client)
        with tempfile.TemporaryDirectory(prefix="scale-dask-") as tmp:
            work = Path(tmp)
            (work / "opsloop.toml").write_text(config_text(f"dask-parquet:{folder}", "dask-xgboost", args.rounds,
                                                           cluster.scheduler_address), encoding="utf-8")
            result = opsloop_run(work, None)
        after = _worker_stats(client)
        restarts = set(after) != set(before)  # a worker restarted at its limit comes back at a new address
    result["worker_peak_mib"] = [round(after[w][0]) for w in sorted(after)]
    result["worker_cpu_s"] = sum(after[w][1] - before.get(w, (0, 0))[1] for w in after)
    result["cpu_s"] += result["worker_cpu_s"]
    result["restarts"] = restarts
    result["rows"] = rows
    return result


def single(folder: Path, rows: int, args: argparse.Namespace, limit: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale-one-") as tmp:
        work = Path(tmp)
        (work / "opsloop.toml").write_text(config_text(str(folder), "xgboost", args.rounds), encoding="utf-8")
        result = opsloop_run(work, limit)
    result["rows"] = rows
    return result


def parse_size(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3_500_000, help="rows of the partitioned run")
    parser.add_argument("--single-sizes", default="2000000,1000000,500000",
                        help="sizes tried in one process, largest first, until one fits the limit")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker, and for the one process")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--data", default=None, help="folder for the generated Parquet (default: a temporary one)")
    args = parser.parse_args()
    limit = parse_size(args.memory_limit)
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="opsloop-scale-"))
    folder, rows = make_data(root, args.rows)

    import pandas as pd

    in_memory = pd.read_parquet(next(folder.iterdir())).memory_usage(deep=True).sum() * len(list(folder.iterdir()))
    features_bytes = rows * (len(FEATURES) * 3) * 8  # the trainer's matrix: 57 float64 features per row
    print(f"partitioned rows: {rows:,} in {len(list(folder.iterdir()))} Parquet files; in memory about "
          f"{in_memory / 2**20:,.0f} MiB raw and {features_bytes / 2**20:,.0f} MiB of features, against a worker "
          f"memory limit of {args.memory_limit} ({features_bytes / limit:.1f}x)")

    dask_result = partitioned(folder, rows, args, limit)
    print(json.dumps({k: v for k, v in dask_result.items() if k != "run"}, default=str))
    held = None
    attempts = []
    for size in sorted((int(s) for s in args.single_sizes.split(",")), reverse=True):
        sub, sub_rows = make_data(root, size)
        outcome = single(sub, sub_rows, args, limit)
        attempts.append(outcome)
        print(json.dumps({k: v for k, v in outcome.items() if k != "run"}, default=str))
        if outcome["ok"]:
            held = outcome
            break
    print()
    print(f"{'run':42} {'rows':>11} {'wall s':>8} {'CPU s':>8} {'rows/s wall':>12} {'rows/s CPU':>11} peak MiB")
    for name, r in [(f"partitioned ({args.workers} workers x {args.memory_limit})", dask_result),
                    *[(f"one process, limit {args.memory_limit}", a) for a in attempts]]:
        status = "" if r["ok"] else (" KILLED at the limit" if r["killed"] else f" FAILED: {r.get('error', '')}")
        peaks = (f"workers {r['worker_peak_mib']}, opsloop process {r['peak_mib']:.0f}" if "worker_peak_mib" in r
                 else f"{r['peak_mib']:.0f}")
        print(f"{name:42} {r['rows']:>11,} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{r['rows'] / r['wall_s'] if r['ok'] else float('nan'):>12,.0f} "
              f"{r['rows'] / r['cpu_s'] if r['ok'] else float('nan'):>11,.0f} {peaks}{status}")
    if held and dask_result["ok"]:
        wall = (dask_result["rows"] / dask_result["wall_s"]) / (held["rows"] / held["wall_s"])
        cpu = (dask_result["rows"] / dask_result["cpu_s"]) / (held["rows"] / held["cpu_s"])
        print(f"\nthroughput, partitioned / one process (largest size it holds, {held['rows']:,} rows): "
              f"wall {wall:.2f}x, CPU {cpu:.2f}x; partitioned rows {dask_result['rows'] / held['rows']:.1f}x")
    if dask_result["ok"]:
        version = dask_result["run"]["versions"][0]
        print(f"partitioned run registered {version['ref']}: {json.dumps(version['metrics'])}")


if __name__ == "__main__":
    main()
