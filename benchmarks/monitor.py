"""drift-monitor (and quality-monitor) on 1,000,000 rows x 40 float32 features, against plain scipy + numpy.

Usage: python benchmarks/monitor.py [--quick] [--rows 1000000] [--runs 5] [--no-before] [--limits]
                                    [--data-dir ../shared/data]

Issue 9, item 7: monitoring 1M logged rows x 40 features must take at most
5 s median on this 2-core machine with peak memory at most 2x the data,
compared in the same run with scipy's per-column KS and a numpy PSI on the
same data, giving the same numbers.

The data: the embedded ASD rows (12 servers x 4,320 five-minute steps, 19
metrics) made 40 float32 features wide (the 19 metrics, the 19 reversed in
time, the squares of two) and repeated with seeded noise (+-0.005) to
`--rows` rows: the monitored rows, with the server as series and the labels.
A version is registered through the real runner and store on ASD's first
week made the same way, twice (51,840 training rows): its bundle holds the
reference profile.

Timed in `--runs` interleaved rounds (each case once per round), medians of
wall and CPU time (the process's CPU time, all threads), CPU-time ratios
beside wall ratios:

- `drift-monitor` on the profile (the default): features, series, scores;
- `drift-monitor` on the reference rows (`use_profile = false`, the fallback
  for bundles without a profile): exact figures;
- `quality-monitor` on the same rows and predictions;
- the plain loop: per column `scipy.stats.ks_2samp` and a numpy PSI
  (`np.quantile` edges, `np.searchsorted` + `np.bincount` on the unsorted
  values, as the plugin did before), on the reference rows;
- `--before` (on unless `--no-before`): the drift-monitor of commit
  18b71a3, before this work, loaded from git, one run.

Checked in the same run: the exact drift-monitor's PSI and KS equal the
plain loop's (1e-12), the profile's KS is within 2/1,000 + 2/rows of them,
its PSI within 1% (+0.01).

Peak memory: each monitor call once more under tracemalloc (numpy reports
its buffers to it): the largest memory the call held at once beyond what
was allocated before it, beside the size of the data (the float32 feature
columns).

Then `opsloop monitor` end to end, as a user runs it: the monitored rows
logged as a batch run logs them (segments of 100,000 rows, 1 row in 10
labelled by request and row), and `opsloop monitor --json` with
drift-monitor, quality-monitor and estimate-monitor in a process of its
own, `--runs` times, beside the same command on a 1,000-row log (start-up
and imports): wall, CPU (os.wait4) and peak RSS (the child's VmHWM), the
rows' memory as the difference of the two peaks against the data.

`--limits` prints, instead, what the defaults of drift-monitor give on the
real data, per day: ASD as the default config splits it (train on the first
week of omi-1..6, monitor the second week of all 12) and SMD machine-1-6
(train before row 11,844, monitor after); the figures behind the defaults
in docs/stages/deploy-monitor-retrain.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BEFORE = "18b71a3"  # the last commit before the reference profile (issue 9)
QUICK = {"preprocess": {"plugins": ["schema-check", "impute"]}, "train": {"xgboost": {"n_estimators": 40}},
         "validate": {"kfold": {"folds": 2}}}


# ---------------------------------------------------------------------------
# Data and a registered version
# ---------------------------------------------------------------------------


def wide(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """ASD rows as 40 float32 features, repeated with seeded noise to `rows` rows."""
    metrics = [c for c in frame.columns if c.startswith("m") and c[1:].isdigit()]
    base = frame[metrics].to_numpy(np.float32)
    x = np.hstack([base, base[::-1], base[:, :2] ** 2])
    reps = -(-rows // len(x))
    rng = np.random.default_rng(seed)
    values = np.tile(x, (reps, 1))[:rows]
    values += rng.uniform(-0.005, 0.005, size=values.shape).astype(np.float32)
    out = pd.DataFrame(values, columns=[f"f{i:02d}" for i in range(values.shape[1])])
    out.insert(0, "entity", np.tile(frame["entity"].to_numpy(), reps)[:rows])
    step = pd.Timedelta(minutes=5)
    out.insert(1, "timestamp", np.tile(frame["timestamp"].to_numpy(), reps)[:rows]
               + np.repeat(np.arange(reps) * step * 4320, len(x))[:rows])
    out["label"] = np.tile(frame["label"].to_numpy(), reps)[:rows].astype("int8")
    return out


def register(workdir: Path, frame: pd.DataFrame) -> tuple[Any, Any]:
    """A version trained on `frame` through the real runner and store (its bundle has the profile)."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.testing import to_toml

    workdir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(workdir / "train.parquet", index=False)
    config = {"project": {"name": "wide"},
              "data": {"source": str(workdir / "train.parquet"), "target": "label", "time": "timestamp",
                       "series": "entity"}, **QUICK}
    (workdir / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    cfg = config_mod.read(workdir=workdir)
    runner = Runner(Session.open(cfg))
    try:
        train = data_mod.load(cfg)
        version = runner.build(train).version
        return version, runner.load(version), train
    finally:
        runner.close()


# ---------------------------------------------------------------------------
# The plain loop: what a five-line script does
# ---------------------------------------------------------------------------


def plain_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI on the reference's quantile bins (float64, unsorted values binned), shares floored at 1e-4."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def plain_loop(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    from scipy.stats import ks_2samp

    out = {}
    for column in columns:
        ref = reference[column].to_numpy(np.float64)
        cur = current[column].to_numpy(np.float64)
        out[f"psi[{column}]"] = plain_psi(ref, cur)
        out[f"ks[{column}]"] = float(ks_2samp(ref, cur).statistic)
    return out


# ---------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------


def interleaved(cases: dict[str, Callable[[], Any]], runs: int) -> dict[str, tuple[float, float, Any]]:
    """Each case once per round, `runs` rounds: median wall and CPU seconds per case, and its last result."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, work in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = work()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name]), results[name]) for name in cases}


def peak_bytes(work: Callable[[], Any]) -> int:
    """The most memory `work` held at once beyond what existed before it (tracemalloc)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def before_module() -> Any:
    """plugins/drift_monitor.py as it was at BEFORE, imported from `git show`."""
    source = subprocess.run(["git", "show", f"{BEFORE}:plugins/drift_monitor.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "drift_monitor_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("drift_monitor_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(args: argparse.Namespace) -> None:
    from opsloop import datasets
    from opsloop.plugins import drift_monitor, quality_monitor
    from opsloop.types import Dataset

    asd = datasets.load("asd")
    first_week = asd[asd["timestamp"] < "2024-01-08 12:00"].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        version, model, train = register(Path(tmp) / "work", wide(first_week, 2 * len(first_week), seed=1))
        registered = time.perf_counter() - started
        frame = wide(asd, args.rows, seed=2)
        current = Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="wide")
        predictions = model.predict(frame)
        columns = [c for c in frame.columns if c.startswith("f")]
        data_bytes = int(frame[columns].memory_usage(index=False).sum())
        print(f"numpy {np.__version__}, pandas {pd.__version__}, scipy {__import__('scipy').__version__}; "
              f"{os.cpu_count()} cores; monitored {len(frame):,} rows x {len(columns)} float32 features "
              f"({data_bytes / 1e6:.0f} MB) + series, labels, predictions; reference: a version registered on "
              f"{len(train.frame):,} rows ({registered:.1f} s to build and register, profile included); "
              f"medians of {args.runs} runs\n")

        def drift(**options: Any) -> Any:
            return drift_monitor.monitor(version=version, current=current, reference=train,
                                         options=drift_monitor.Options(**options), predictions=predictions)

        def quality() -> Any:
            return quality_monitor.monitor(version=version, current=current, predictions=predictions,
                                           options=quality_monitor.Options())

        cases: dict[str, Callable[[], Any]] = {
            "drift-monitor (profile)": drift,
            "drift-monitor (reference rows)": lambda: drift(use_profile=False),
            "quality-monitor": quality,
            "drift (profile) + quality": lambda: (drift(), quality()),
            "plain scipy KS + numpy PSI loop": lambda: plain_loop(train.frame, frame, columns),
        }
        results = interleaved(cases, args.runs)
        if args.before:
            old = before_module()
            results.update(interleaved({f"drift-monitor before ({BEFORE}), 1 run": lambda: old.monitor(
                version=version, current=current, reference=train, options=None)}, 1))

        plain = results["plain scipy KS + numpy PSI loop"][2]
        exact = results["drift-monitor (reference rows)"][2].metrics
        approx = results["drift-monitor (profile)"][2].metrics
        worst_exact = max(abs(exact[k] - v) for k, v in plain.items())
        worst_ks = max(abs(approx[k] - v) for k, v in plain.items() if k.startswith("ks["))
        worst_psi = max(abs(approx[k] - v) / (0.01 + 0.01 * v) for k, v in plain.items() if k.startswith("psi["))
        assert worst_exact < 1e-12, f"exact drift-monitor differs from the plain loop by {worst_exact}"
        assert worst_ks <= 2 / 1000 + 2 / len(train.frame), f"profile KS off by {worst_ks}"
        assert worst_psi <= 1, "profile PSI off by more than 1% + 0.01"
        if args.before:
            before = results[f"drift-monitor before ({BEFORE}), 1 run"][2].metrics
            assert max(abs(before[k] - v) for k, v in plain.items()) < 1e-12

        base_wall, base_cpu, _ = results["plain scipy KS + numpy PSI loop"]
        print(f"{'':<40} {'wall s':>8} {'CPU s':>8} {'wall x plain':>13} {'CPU x plain':>12} {'peak extra MB':>14}")
        for name, (wall, cpu, _) in results.items():
            extra = peak_bytes(cases[name]) if name in cases and name != "drift (profile) + quality" else None
            memory = f"{extra / 1e6:>9.0f} ({(data_bytes + extra) / data_bytes:.2f}x data)" if extra is not None else ""
            print(f"{name:<40} {wall:>8.2f} {cpu:>8.2f} {wall / base_wall:>12.2f}x {cpu / base_cpu:>11.2f}x {memory}")
        print(f"\nsame numbers: exact drift-monitor vs plain loop max |diff| {worst_exact:.1e}; profile KS within "
              f"{worst_ks:.4f} (bound {2 / 1000 + 2 / len(train.frame):.4f}); profile PSI within "
              f"{worst_psi:.2f} of its tolerance (1% + 0.01)")
        print(f"drift-monitor (profile): {int(approx['drifted'])} drifted feature(s), "
              f"{int(approx.get('series_drifted', 0))} drifted series, score PSI {approx.get('score_psi', float('nan')):.3f}")
        end_to_end(args, Path(tmp) / "work", version, frame, predictions, columns, data_bytes)
        for parent, dirs, _ in os.walk(tmp):  # registered bundles are sealed read-only
            for d in dirs:
                os.chmod(os.path.join(parent, d), 0o755)


# ---------------------------------------------------------------------------
# opsloop monitor, end to end, on a logged batch
# ---------------------------------------------------------------------------


def log_rows(db: Path, version: Any, frame: pd.DataFrame, predictions: pd.DataFrame, labelled_every: int) -> None:
    """`frame` logged as a batch run logs it (segments of 100,000 rows), every `labelled_every`-th row labelled."""
    from opsloop.serving.batchlog import BatchLog
    from opsloop.serving.predlog import Feedback, add_feedback, connect

    columns = [c for c in frame.columns if c != "label"]
    log = BatchLog(db, request_id="bench", model=version.name, version=version.version, columns=columns,
                   series="entity", time="timestamp")
    for start in range(0, len(frame), 100_000):
        part = slice(start, start + 100_000)
        log.add(frame.iloc[part], predictions["prediction"].to_numpy()[part], predictions["score"].to_numpy()[part])
    log.close()
    con = connect(db)
    try:
        labels = frame["label"].to_numpy()
        add_feedback(con, [Feedback(label=float(labels[i]), request_id="bench", row=i)
                           for i in range(0, len(frame), labelled_every)])
    finally:
        con.close()


def timed_cli(args: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall s, CPU s (os.wait4's user + system) and peak RSS (bytes: VmHWM, polled from /proc every 10 ms, the last
    value read before it exits) of `opsloop ARGS` in a child process. (The child's own ru_maxrss would count this
    process's memory at the fork.)"""
    opsloop = Path(sys.executable).parent / "opsloop"
    started = time.perf_counter()
    proc = subprocess.Popen([str(opsloop), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while True:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.01)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: --check found alerts, which is fine here
        raise SystemExit(f"opsloop {' '.join(args)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, peak


def end_to_end(args: argparse.Namespace, workdir: Path, version: Any, frame: pd.DataFrame,
               predictions: pd.DataFrame, columns: list[str], data_bytes: int) -> None:
    """`opsloop monitor --json` on the rows logged as a batch run logs them, against the same monitors called on
    the frame in memory, and the same command on a 1,000-row log (imports and start-up: its peak RSS is the
    baseline that the data's memory is measured above)."""
    from opsloop.manager import PluginManager

    pm = PluginManager()
    known = pm.known
    monitors = ["drift-monitor", "quality-monitor"] + (["estimate-monitor"] if "estimate-monitor" in known else [])
    big, small = workdir / "big.db", workdir / "small.db"
    log_rows(big, version, frame, predictions, labelled_every=10)
    log_rows(small, version, frame.iloc[:1000], predictions.iloc[:1000], labelled_every=10)
    command = ["monitor", "--version", str(version.version), "--json", "--set",
               "monitor.plugins=[" + ", ".join(f'"{m}"' for m in monitors) + "]"]
    figures: dict[str, list[tuple[float, float, int]]] = {"big": [], "small": []}
    for _ in range(args.runs):
        for name, db in (("big", big), ("small", small)):
            figures[name].append(timed_cli([*command, "--log-path", str(db)], workdir))
    med = {name: [statistics.median(x[k] for x in runs) for k in range(3)] for name, runs in figures.items()}
    print(f"\nopsloop monitor end to end ({', '.join(monitors)}), a process of its own, medians of {args.runs} runs:")
    print(f"  {len(frame):,}-row log ({big.stat().st_size / 1e6:.0f} MB, batch segments, 1 in 10 rows labelled): "
          f"wall {med['big'][0]:.2f} s, CPU {med['big'][1]:.2f} s, peak RSS {med['big'][2] / 1e6:.0f} MB "
          f"({'MEETS' if med['big'][0] <= 5 else 'MISSES'} the 5 s target)")
    print(f"  1,000-row log (start-up, imports): wall {med['small'][0]:.2f} s, CPU {med['small'][1]:.2f} s, "
          f"peak RSS {med['small'][2] / 1e6:.0f} MB")
    extra = med["big"][2] - med["small"][2]
    print(f"  memory for the rows: {extra / 1e6:.0f} MB above start-up = {extra / data_bytes:.2f}x the data "
          f"({data_bytes / 1e6:.0f} MB of float32 features; {'MEETS' if extra <= 2 * data_bytes else 'MISSES'} the "
          f"2x target)")


# ---------------------------------------------------------------------------
# --limits: the defaults on the real data
# ---------------------------------------------------------------------------


def limits(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import real_data_metrics
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.plugins import drift_monitor
    from opsloop.runner import Runner
    from opsloop.session import Session

    def build(toml: str, workdir: Path) -> tuple[Any, Any, Any, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "opsloop.toml").write_text(toml, encoding="utf-8")
        cfg = config_mod.read(workdir=workdir)
        runner = Runner(Session.open(cfg))
        try:
            train, monitored = data_mod.periods(data_mod.load(cfg), cfg)
            version = runner.build(train).version
            return version, runner.load(version), train, monitored
        finally:
            runner.close()

    def show(label: str, version: Any, model: Any, train: Any, monitored: Any) -> None:
        opts = drift_monitor.Options()
        print(f"== {label}: defaults psi_threshold {opts.psi_threshold:g}, ks_threshold {opts.ks_threshold:g}, "
              f"series_ks_threshold {opts.series_ks_threshold:g}, score_psi_threshold {opts.score_psi_threshold:g}, "
              f"alert_rate_ratio {opts.alert_rate_ratio:g}")
        print(f"{'window':<18} {'rows':>6} {'max PSI':>8} {'max KS':>7} {'drifted':>8} {'series KS':>10} "
              f"{'series':>7} {'score PSI':>10} {'score KS':>9} {'alert rate':>11} {'ratio':>6} {'alerts':>7}")
        frame = monitored.frame
        windows = [("whole period", np.arange(len(frame)))]
        windows += [(str(day)[:10], rows) for day, rows in frame.groupby(frame[monitored.time].dt.floor("1D")).indices.items()]
        for name, rows in windows:
            window = monitored.derive(frame.iloc[rows])
            report = drift_monitor.monitor(version=version, current=window, reference=train, options=opts,
                                           predictions=model.predict(window.frame))
            x = report.metrics
            print(f"{name:<18} {len(rows):>6} {x['drift_max_psi']:>8.2f} {x['drift_max_ks']:>7.3f} "
                  f"{int(x['drifted']):>8} {x.get('series_max_ks', float('nan')):>10.3f} "
                  f"{int(x.get('series_drifted', 0)):>7} {x.get('score_psi', float('nan')):>10.3f} "
                  f"{x.get('score_ks', float('nan')):>9.3f} {x.get('alert_rate', float('nan')):>11.4f} "
                  f"{x.get('alert_rate_ratio', float('nan')):>6.2f} {len(report.alerts):>7}")
        print()

    with tempfile.TemporaryDirectory() as tmp:
        show("ASD, the default config", *build("", Path(tmp) / "asd"))
        smd = real_data_metrics.load_smd(args.data_dir)
        (Path(tmp) / "smd").mkdir()
        smd.to_parquet(Path(tmp) / "smd" / "smd.parquet", index=False)
        split = smd["timestamp"].iloc[11844]
        toml = (f'[project]\nname = "smd"\n[data]\nsource = "{Path(tmp) / "smd" / "smd.parquet"}"\n'
                f'target = "label"\ntime = "timestamp"\nseries = "entity"\n'
                f'train = "timestamp < \'{split}\'"\nmonitor = "timestamp >= \'{split}\'"\n')
        show("SMD machine-1-6, the default config's steps, trained before row 11,844", *build(toml, Path(tmp) / "smdw"))
        for parent, dirs, _ in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(parent, d), 0o755)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 2 runs, no --before")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-before", dest="before", action="store_false",
                        help=f"skip the drift-monitor of {BEFORE} (about 13 s a run at 1M rows)")
    parser.add_argument("--limits", action="store_true", help="the defaults on ASD and SMD, per day")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.getLogger("opsloop").setLevel(logging.ERROR)
    if args.quick:
        args.rows, args.runs, args.before = min(args.rows, 100_000), min(args.runs, 2), False
    if args.limits:
        limits(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
