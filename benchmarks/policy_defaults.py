"""What `threshold-policy`'s defaults decide, window by window, on real ASD and SMD data (issue 9, item 6).

Usage: python benchmarks/policy_defaults.py [--full] [--no-smd] [--window 1d] [--data-dir ../shared/data]

For each data set the script trains the default model the way
benchmarks/real_data_metrics.py does (the shipped default config:
schema-check, impute, rolling-features, xgboost, 5-fold kfold; registered
in a temporary store), with `quality-monitor` and `drift-monitor` both
selected at their defaults. It scores the whole monitored period once (as
`opsloop run` does, so rolling features keep their history), slices it into
windows (`--window`, default one day, from the period's first row), runs
the two monitors on each window through the plugin manager, and feeds each
window's reports to `threshold-policy` in time order, with its state in a
temporary working directory and the window's end as the decision time
(`now`). It prints each window's figures and decision, then how many
windows fire under the defaults and under a few alternatives (each replayed
from the same reports with a fresh state).

- ASD (embedded): train on the first week of omi-1..omi-6, monitor the
  second week of all 12 servers (core/default.toml).
- SMD machine-1-6 (../shared/data/smd): train on the labelled half's rows
  before row 11,844, monitor the rows after (1-minute steps).

`--full` also replays 6-hour windows, which shows the guards at work on
more, smaller windows (about 2 minutes more).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

MONITORS = '\n[monitor]\nplugins = ["quality-monitor", "drift-monitor"]\n'

#: Alternatives replayed beside the defaults, from the same reports.
ALTERNATIVES: dict[str, dict[str, Any]] = {
    "before issue 9 (min_f1 0.5, max_drift_psi 0.25, no guards)": dict(
        min_f1=0.5, max_drift_psi=0.25, min_positives=0, drift_windows=1, cooldown="0", max_retrains=None),
    "quality only (max_drift_psi unset)": dict(max_drift_psi=None),
    "drift only (max_drop unset)": dict(max_drop=None),
    "defaults, min_f1 0.5": dict(min_f1=0.5),
    "defaults, min_positives 0": dict(min_positives=0),
    "defaults, max_drift_psi 0.25": dict(max_drift_psi=0.25),
    "defaults, drift_windows 1": dict(drift_windows=1),
    "defaults, no cool-down or rate limit": dict(cooldown="0", max_retrains=None),
    "defaults, combine all": dict(combine="all"),
}


def build(toml: str, workdir: Path) -> dict[str, Any]:
    """Train and register the default model; score the monitored period once."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "opsloop.toml").write_text(toml, encoding="utf-8")
    cfg = config_mod.read(workdir=workdir)
    runner = Runner(Session.open(cfg))
    start = time.perf_counter()
    raw = data_mod.load(cfg)
    train_raw, monitor_raw = data_mod.periods(raw, cfg)
    built = runner.build(train_raw)
    model = runner.load(built.version)
    features, predictions = model.score(monitor_raw.frame)
    judged = monitor_raw
    target = monitor_raw.target
    if target and target in features.frame.columns:  # the labels as the model learned them, as the runner does
        judged = monitor_raw.derive(monitor_raw.frame.assign(**{target: features.frame[target].to_numpy()}))
    return {"runner": runner, "version": built.version, "train": train_raw, "monitored": judged,
            "predictions": predictions, "seconds": time.perf_counter() - start}


def window_reports(built: dict[str, Any], window: str) -> list[tuple[pd.Timestamp, int, list[Any]]]:
    """(window end, rows, [quality report, drift report]) per window of the monitored period."""
    runner, version = built["runner"], built["version"]
    current, predictions = built["monitored"], built["predictions"]
    times = pd.to_datetime(current.frame[current.time])
    from opsloop.plugins.threshold_policy import parse_duration

    start, step = times.min(), pd.Timedelta(parse_duration(window)) if window != "all" else times.max() - times.min()
    step = step + pd.Timedelta("1s") if window == "all" else step
    index = ((times - start) // step).to_numpy()
    out = []
    for k in sorted(set(index)):
        rows = index == k
        ds = current.derive(current.frame[rows].reset_index(drop=True), name=f"window {k + 1}")
        preds = predictions[rows].reset_index(drop=True)
        reports = []
        for n in runner.config.selected("monitor"):
            report = runner.plugins.call(n, "monitor", version=version, current=ds, predictions=preds,
                                         reference=built["train"], options=runner.session.options_for("monitor", n),
                                         run=runner.run)
            reports.append(attrs.evolve(report, monitor=report.monitor or n, model=report.model or version.ref))
        out.append((min(start + (k + 1) * step, times.max() + pd.Timedelta("1s")), int(rows.sum()), reports))
    return out


def replay(version: Any, windows: list[tuple[pd.Timestamp, int, list[Any]]], workdir: Path,
           **changes: Any) -> list[Any]:
    """The policy's decision on each window in turn, its state in `workdir` (fresh)."""
    from opsloop import RunContext
    from opsloop.config import read
    from opsloop.plugins import threshold_policy

    workdir.mkdir(parents=True, exist_ok=True)
    run = RunContext(run_id="policy-defaults", workdir=workdir, model_name=version.name, config=read(workdir=workdir))
    base = threshold_policy.Options(**changes)
    return [threshold_policy.decide_retrain(version=version, reports=reports, run=run,
                                            options=attrs.evolve(base, now=end.isoformat()))
            for end, _, reports in windows]


def show(label: str, built: dict[str, Any], windows: list[tuple[pd.Timestamp, int, list[Any]]], tmp: Path) -> None:
    version = built["version"]
    print(f"\n== {label}: {version.ref}, trained and scored in {built['seconds']:.0f} s; validation "
          f"F1 {version.metrics.get('f1', float('nan')):.3f}, recall {version.metrics.get('recall', float('nan')):.3f},"
          f" ROC AUC {version.metrics.get('roc_auc', float('nan')):.3f}; {len(windows)} windows ==")
    decisions = replay(version, windows, tmp / "defaults")
    print(f"  {'window end':<19} {'rows':>6} {'pos':>5} {'f1':>5} {'rec':>5} {'roc':>5} {'maxPSI':>7} {'maxKS':>5} "
          f"{'drifted':>7}  decision (defaults)")
    for (end, rows, reports), decision in zip(windows, decisions, strict=True):
        q = next((r.metrics for r in reports if r.monitor == "quality-monitor"), {})
        d = next((r.metrics for r in reports if r.monitor == "drift-monitor"), {})
        verdict = "RETRAIN" if decision.retrain else "keep"
        print(f"  {end:%Y-%m-%d %H:%M} {rows:>6,} {q.get('positives', 0):>5.0f} {q.get('f1', float('nan')):>5.2f} "
              f"{q.get('recall', float('nan')):>5.2f} {q.get('roc_auc', float('nan')):>5.2f} "
              f"{d.get('drift_max_psi', float('nan')):>7.2f} {d.get('drift_max_ks', float('nan')):>5.2f} "
              f"{d.get('drifted', float('nan')):>7.0f}  {verdict}: {decision.reasons[0]}")
    fired = [i + 1 for i, d in enumerate(decisions) if d.retrain]
    print(f"  defaults: {len(fired)} of {len(windows)} windows fire (windows {fired or 'none'})")
    for name, changes in ALTERNATIVES.items():
        alt = replay(version, windows, tmp / f"alt{len(name)}-{hash(name) & 0xffff}", **changes)
        fired = [i + 1 for i, d in enumerate(alt) if d.retrain]
        print(f"  {name}: {len(fired)} of {len(windows)} windows fire (windows {fired or 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also replay 6-hour windows")
    parser.add_argument("--no-smd", action="store_true", help="skip the SMD machine-1-6 data")
    parser.add_argument("--window", default="1d", help="window length: 30m, 6h, 1d, ... (default 1d)")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.getLogger("opsloop").setLevel(logging.ERROR)
    from opsloop.plugins import threshold_policy
    from real_data_metrics import load_smd

    defaults = threshold_policy.Options()
    print("threshold-policy defaults: " + ", ".join(f"{f.name}={getattr(defaults, f.name)!r}"
                                                    for f in attrs.fields(type(defaults)) if f.name != "now"))
    windows = [args.window] + (["6h"] if args.full and args.window != "6h" else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = [("ASD (default config)", MONITORS)]
        if not args.no_smd:
            frame = load_smd(args.data_dir)
            split = frame["timestamp"].iloc[11_844]
            frame.to_parquet(root / "smd.parquet", index=False)
            cases.append((f"SMD machine-1-6 (train rows < 11,844, monitor from {split})",
                          f'[project]\nname = "smd-1-6"\n\n[data]\nsource = "{root / "smd.parquet"}"\n'
                          f'target = "label"\ntime = "timestamp"\nseries = "entity"\n'
                          f"train = \"timestamp < '{split}'\"\nmonitor = \"timestamp >= '{split}'\"\n" + MONITORS))
        for i, (label, toml) in enumerate(cases):
            built = build(toml, root / f"case{i}")
            try:
                whole = window_reports(built, "all")
                (_, rows, reports), = whole
                decision = replay(built["version"], whole, root / f"case{i}-all")[0]
                print(f"\n{label}: the whole monitored period as one window ({rows:,} rows), as one `opsloop run` "
                      f"judges it: {'RETRAIN' if decision.retrain else 'keep'}: {'; '.join(decision.reasons)}")
                for window in windows:
                    show(f"{label}, {window} windows", built, window_reports(built, window), root / f"case{i}-{window}")
            finally:
                built["runner"].close()
        for parent, dirs, _ in os.walk(tmp):  # registered bundles are sealed read-only
            for d in dirs:
                os.chmod(os.path.join(parent, d), 0o755)


if __name__ == "__main__":
    main()
