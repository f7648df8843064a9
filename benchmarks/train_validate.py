"""Training and 5-fold validation through opsloop, against the same work written by hand.

Usage: python benchmarks/train_validate.py [--quick] [--runs 7] [--threads N] [--profile]

Issue 3 asks that training through opsloop cost at most 1.10x the same
XGBoost training written by hand, and 5-fold validation at most 1.10x the
hand-written loop, both measured in one run on at least 200,000 rows x 40
features. This script measures both pairs, interleaved (opsloop first on even
repetitions, hand-written first on odd ones, so that load on a shared machine
hits both alike), and prints medians and the ratio opsloop / hand-written.

The data is the real embedded ASD data (`opsloop.datasets.load("asd")`:
12 servers x 4,320 five-minute steps x 19 metrics in [0, 1], labelled
anomalies), grown to 207,360 rows x 40 features:

- tiled 4 times along time: copy k of every server's 15 days follows copy
  k - 1 (timestamps shifted by k x 15 days), so each server has 60 days of
  17,280 steps and the time-ordered folds see a longer history; labels are
  kept as they are;
- copies 1..3 are jittered with Gaussian noise (sd 0.01, seeded, clipped to
  [0, 1]) so that the booster does not see the same rows four times;
- 21 derived columns are added to the 19 metrics: the first difference of
  each metric within its server (`mNN__diff1`, 0 on a server's first row),
  and the mean and the maximum of the 19 metrics of the row.

Rows stay in the embedded file's order (server by server, then by time), with
`entity` (series), `timestamp` (time) and `label` (target) as meta columns.
`--quick` uses one untouched copy (51,840 rows) and 3 repetitions.

Both sides do the same work with the same effective parameters: XGBClassifier
with tree_method hist, the plugin's defaults (300 rounds at most, learning rate
0.1, depth 6), scale_pos_weight = negatives / positives of the fitted rows,
early stopping after 20 rounds on the last 10% of the time steps, the same
`n_jobs` (set explicitly: XGBoost would take every core) and the same seed.
Validation uses the same forward-chaining splits over time steps
(scikit-learn's TimeSeriesSplit) and the same scikit-learn metrics; the script
checks that both sides reach the same best iterations and the same metrics,
so that the timings compare the same models.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import opsloop.config
from opsloop import Dataset, RunContext, datasets
from opsloop.config import structure
from opsloop.manager import PluginManager
from opsloop.types import fingerprint_frame

FOLDS = 5
JITTER = 0.01
ROUNDS, LEARNING_RATE, DEPTH, EARLY_STOP, HOLDOUT = 300, 0.1, 6, 20, 0.1
TARGET = 1.10


# ---------------------------------------------------------------------------
# Data: the real ASD rows, tiled in time, jittered, with derived columns
# ---------------------------------------------------------------------------


def build_frame(copies: int, seed: int) -> pd.DataFrame:
    """ASD tiled `copies` times along time, jittered, with 21 derived columns (40 features)."""
    base = datasets.load("asd")
    metrics = [c for c in base.columns if c.startswith("m") and c[1:].isdigit()]
    span = base["timestamp"].max() - base["timestamp"].min() + pd.Timedelta(minutes=5)
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(copies):
        part = base.copy()
        if k:
            values = part[metrics].to_numpy() + rng.normal(0.0, JITTER, size=(len(part), len(metrics)))
            part[metrics] = np.clip(values, 0.0, 1.0).astype("float32")
        part["timestamp"] = part["timestamp"] + k * span
        part["_copy"] = k
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    # Server by server (in the embedded order), then by time: each server's copies follow each other.
    order = pd.Categorical(frame["entity"], categories=list(dict.fromkeys(base["entity"])), ordered=True)
    frame = frame.assign(_order=order.codes).sort_values(["_order", "timestamp"], kind="stable")
    frame = frame.drop(columns=["_order", "_copy"]).reset_index(drop=True)
    diffs = frame.groupby("entity", sort=False)[metrics].diff().fillna(0.0).astype("float32")
    diffs.columns = [f"{c}__diff1" for c in metrics]
    block = frame[metrics].to_numpy()
    extra = pd.DataFrame({"row_mean": block.mean(axis=1), "row_max": block.max(axis=1)}, index=frame.index,
                         dtype="float32")
    meta = frame[["entity", "timestamp"]]
    return pd.concat([meta, frame[metrics], diffs, extra, frame[["label"]]], axis=1)


# ---------------------------------------------------------------------------
# The hand-written side: what a team would write without opsloop
# ---------------------------------------------------------------------------


def hand_fit(frame: pd.DataFrame, features: list[str], threads: int, seed: int) -> Any:
    """XGBoost with early stopping on the last 10% of the time steps; negatives/positives weighting."""
    import xgboost as xgb

    times = frame["timestamp"].to_numpy()
    steps = np.unique(times)
    held = times >= steps[min(max(round(len(steps) * (1 - HOLDOUT)), 1), len(steps) - 1)]
    X, y = frame[features], frame["label"]
    if y[held].nunique() < 2:  # a quiet last stretch: early stopping would learn "always normal"
        held[:] = False
    X_fit, y_fit = X[~held], y[~held]
    positives = int(y_fit.sum())
    model = xgb.XGBClassifier(n_estimators=ROUNDS, learning_rate=LEARNING_RATE, max_depth=DEPTH, tree_method="hist",
                              n_jobs=threads, random_state=seed,
                              early_stopping_rounds=EARLY_STOP if held.any() else None,
                              scale_pos_weight=(len(y_fit) - positives) / positives if positives else 1.0)
    model.fit(X_fit, y_fit, eval_set=[(X[held], y[held])] if held.any() else None, verbose=False)
    return model


def best_iteration(model: Any) -> int | None:
    """The early-stopping round, or None when early stopping was off."""
    try:
        return int(model.best_iteration) if model.early_stopping_rounds else None
    except AttributeError:
        return None


def hand_splits(frame: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward chaining over the distinct time steps, all servers together."""
    from sklearn.model_selection import TimeSeriesSplit

    _, codes = np.unique(frame["timestamp"].to_numpy(), return_inverse=True)
    splits = []
    for tr, te in TimeSeriesSplit(n_splits=FOLDS).split(np.arange(codes.max() + 1)):
        splits.append((np.flatnonzero(codes <= tr[-1]), np.flatnonzero((codes >= te[0]) & (codes <= te[-1]))))
    return splits


def hand_kfold(frame: pd.DataFrame, features: list[str], threads: int, seed: int) -> list[dict[str, float]]:
    """Five time-ordered folds: fit on the past block, score the next one with scikit-learn's metrics."""
    from sklearn import metrics as skm

    folds = []
    for train, test in hand_splits(frame):
        model = hand_fit(frame.iloc[train], features, threads, seed)
        test_rows = frame.iloc[test]
        y = test_rows["label"].to_numpy()
        score = model.predict_proba(test_rows[features])[:, 1]
        pred = (score > 0.5).astype(int)
        folds.append({
            "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred, zero_division=np.nan),  # undefined: NaN, as opsloop
            "recall": skm.recall_score(y, pred, zero_division=np.nan),
            "f1": skm.f1_score(y, pred, zero_division=np.nan),
            "roc_auc": skm.roc_auc_score(y, score),
            "pr_auc": skm.average_precision_score(y, score),
            "best_iteration": best_iteration(model),
        })
    return folds


# ---------------------------------------------------------------------------
# The opsloop side: the plugins' hooks through the plugin manager
# ---------------------------------------------------------------------------


class Opsloop:
    """The `xgboost` and `kfold` plugins, loaded and called as the runner calls them."""

    def __init__(self, threads: int, seed: int, workdir: Path) -> None:
        self.pm = PluginManager()
        self.pm.load("xgboost")
        self.pm.load("kfold")
        self.train_options = structure({"n_estimators": ROUNDS, "learning_rate": LEARNING_RATE, "max_depth": DEPTH,
                                        "tree_method": "hist", "early_stopping_rounds": EARLY_STOP,
                                        "validation_fraction": HOLDOUT, "scale_pos_weight": "auto",
                                        "n_jobs": threads},
                                       self.pm.options_class("xgboost"), section="train.xgboost", source=None)
        self.kfold_options = structure({"folds": FOLDS, "method": "time", "n_jobs": 1},
                                       self.pm.options_class("kfold"), section="validate.kfold", source=None)
        self.run = RunContext(run_id="bench", workdir=workdir, model_name="bench", seed=seed,
                              config=opsloop.config.read(workdir=workdir))

    def fit(self, dataset: Dataset) -> Any:
        return self.pm.call("xgboost", "train", dataset=dataset, options=self.train_options, run=self.run)

    def validate(self, dataset: Dataset) -> Any:
        return self.pm.call("kfold", "validate", dataset=dataset, fit=self.fit, options=self.kfold_options,
                            run=self.run)


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


Times = dict[str, list[tuple[float, float]]]


def interleaved(pair: dict[str, Callable[[], Any]], runs: int) -> tuple[Times, dict[str, Any]]:
    """(wall, CPU) seconds of each callable, `runs` times, alternating which goes first; and the last results.

    CPU time (all threads of this process) is reported next to wall time:
    on a shared, loaded machine it moves less with other people's work.
    """
    times: Times = {k: [] for k in pair}
    last: dict[str, Any] = {}
    names = list(pair)
    for i in range(runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            last[name] = pair[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            print(f"  {name:<8} run {i + 1}/{runs}: wall {times[name][-1][0]:7.2f} s, cpu {times[name][-1][1]:7.2f} s",
                  file=sys.stderr, flush=True)
    return times, last


def report(title: str, times: Times) -> float:
    """Print medians and ratios of wall and CPU time; return the larger of the two median ratios."""
    print(title)
    ratios = []
    for col, what in ((0, "wall"), (1, "cpu ")):
        ops = [t[col] for t in times["opsloop"]]
        hand = [t[col] for t in times["hand"]]
        pairs = [o / h for o, h in zip(ops, hand, strict=True)]
        ratios.append(statistics.median(ops) / statistics.median(hand))
        print(f"  {what} opsloop median {statistics.median(ops):7.3f} s, hand-written median "
              f"{statistics.median(hand):7.3f} s: ratio {ratios[-1]:.3f} (median of per-pair ratios "
              f"{statistics.median(pairs):.3f}, range {min(pairs):.3f}..{max(pairs):.3f})")
        print(f"       opsloop runs {', '.join(f'{t:.2f}' for t in ops)}; hand-written runs "
              f"{', '.join(f'{t:.2f}' for t in hand)}")
    verdict = ", ".join(f"{what} {r:.3f} {'meets' if r <= TARGET else 'MISSES'}"
                        for what, r in zip(("wall", "cpu"), ratios, strict=True))
    print(f"  ratio of medians: {verdict} the {TARGET:.2f}x target")
    return max(ratios)


def check_same(ops_report: Any, hand_folds: list[dict[str, float]], ops_model: Any, hand_model: Any) -> None:
    """The two sides must have fitted the same models, or the timings compare different work."""
    assert ops_model.params.get("best_iteration") == best_iteration(hand_model), "train: best iterations differ"
    for i, (o, h) in enumerate(zip(ops_report.folds, hand_folds, strict=True)):
        for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"):
            if not (np.isclose(o[key], h[key], atol=1e-9) or (np.isnan(o[key]) and np.isnan(h[key]))):
                raise AssertionError(f"fold {i + 1}: {key} differs: opsloop {o[key]} vs hand-written {h[key]}")


def overhead(ops: Opsloop, dataset: Dataset, splits: list[tuple[np.ndarray, np.ndarray]], repeat: int = 5) -> None:
    """What opsloop does that the hand-written loop does not, timed on its own (medians)."""
    from opsloop.plugins import kfold, xgboost_trainer

    frame = dataset.frame

    def med(fn: Callable[[], Any]) -> float:
        values = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            values.append(time.perf_counter() - start)
        return statistics.median(values)

    fold_frames = [frame.iloc[tr] for tr, _ in splits]
    fp_folds = sum(med(lambda f=f: fingerprint_frame(f)) for f in fold_frames)
    fp_numeric = sum(med(lambda f=f: fingerprint_frame(f.drop(columns=["entity"]))) for f in fold_frames)
    fp_whole = med(lambda: fingerprint_frame(frame))
    derive = sum(med(lambda tr=tr: dataset.derive(frame.iloc[tr])) for tr, _ in splits)
    checks = med(lambda: (xgboost_trainer.features_of(dataset), xgboost_trainer.target_of(dataset, "classification")))
    splits_t = med(lambda: kfold.time_splits(dataset, FOLDS, 0))
    hand_splits_t = med(lambda: hand_splits(frame))
    print("overhead, timed alone (medians):")
    print(f"  Dataset.derive per fold (frame.iloc + fingerprint), 5 folds:  {derive * 1000:8.1f} ms")
    print(f"    of which fingerprint_frame of the 5 training blocks:        {fp_folds * 1000:8.1f} ms "
          f"({fp_folds / len(splits) * 1000:.1f} ms per fold; {fp_numeric * 1000:.1f} ms without the "
          f"text column `entity`)")
    print(f"  fingerprint_frame of all {len(frame):,} rows:                   {fp_whole * 1000:8.1f} ms")
    print(f"  xgboost plugin's feature/target checks, per fit:              {checks * 1000:8.1f} ms")
    print(f"  kfold.time_splits vs hand_splits:                             {splits_t * 1000:8.1f} ms vs "
          f"{hand_splits_t * 1000:.1f} ms")


PROFILED = {  # (file suffix, function): label
    ("xgboost/sklearn.py", "fit"): "XGBClassifier.fit (the booster)",
    ("xgboost/sklearn.py", "predict_proba"): "XGBClassifier.predict_proba",
    ("core/types.py", "derive"): "Dataset.derive (fold datasets)",
    ("core/types.py", "fingerprint_frame"): "  of which fingerprint_frame",
    ("plugins/xgboost_trainer.py", "features_of"): "xgboost plugin: features_of",
    ("plugins/xgboost_trainer.py", "target_of"): "xgboost plugin: target_of",
    ("plugins/xgboost_trainer.py", "holdout_mask"): "xgboost plugin: holdout_mask",
    ("plugins/kfold.py", "time_splits"): "kfold: time_splits",
    ("core/bundle.py", "predictions_frame"): "predictions_frame (incl. predict_proba)",
    ("core/metrics.py", "for_task"): "opsloop.metrics.for_task",
    ("plugins/kfold.py", "validate"): "kfold validate hook (total)",
}


def profile(ops: Opsloop, dataset: Dataset) -> None:
    """cProfile of one opsloop validation: where its time goes, booster and opsloop-side."""
    profiler = cProfile.Profile()
    profiler.enable()
    ops.validate(dataset)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    print("cProfile of one opsloop 5-fold validation (cumulative seconds, calls):")
    for (path, _, func), (_, calls, _, cumulative, _) in sorted(stats.items(), key=lambda kv: -kv[1][3]):
        label = next((lab for (suffix, name), lab in PROFILED.items() if path.endswith(suffix) and func == name), None)
        if label:
            print(f"  {label:<42} {cumulative:8.3f} s  x{calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="51,840 rows (one copy), 3 repetitions")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of each side (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="XGBoost n_jobs on both sides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="also cProfile one opsloop validation")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    copies = 1 if args.quick else 4

    frame = build_frame(copies, args.seed)
    features = [c for c in frame.columns if c not in ("entity", "timestamp", "label")]
    dataset = Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="asd x4 jittered")
    import sklearn
    import xgboost

    print(f"data: {len(frame):,} rows x {len(features)} features ({copies} cop{'y' if copies == 1 else 'ies'} of "
          f"ASD), prevalence {frame['label'].mean():.4f}, {frame['timestamp'].nunique():,} time steps")
    print(f"xgboost {xgboost.__version__}, scikit-learn {sklearn.__version__}, pandas {pd.__version__}; "
          f"n_jobs {args.threads} on both sides; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    with tempfile.TemporaryDirectory() as tmp:
        ops = Opsloop(args.threads, args.seed, Path(tmp))
        # Warm up both paths once on a quarter of the rows, untimed: the first validation in a process
        # pays for importing scikit-learn (seconds), whichever side runs first.
        small = frame.iloc[: len(frame) // 4].reset_index(drop=True)
        ops.validate(dataset.derive(small))
        hand_kfold(small, features, args.threads, args.seed)

        print(f"\n[1] training, {runs} runs each, interleaved", file=sys.stderr)
        t_train, last_train = interleaved({"opsloop": lambda: ops.fit(dataset),
                                           "hand": lambda: hand_fit(frame, features, args.threads, args.seed)}, runs)
        print(f"[2] {FOLDS}-fold time-ordered validation, {runs} runs each, interleaved", file=sys.stderr)
        t_kfold, last_kfold = interleaved({"opsloop": lambda: ops.validate(dataset),
                                           "hand": lambda: hand_kfold(frame, features, args.threads, args.seed)}, runs)
        check_same(last_kfold["opsloop"], last_kfold["hand"], last_train["opsloop"], last_train["hand"])
        print(f"\nsame models on both sides: train best iteration {best_iteration(last_train['hand'])}; fold best "
              f"iterations {[f['best_iteration'] for f in last_kfold['hand']]}; fold metrics equal")
        print(f"validation ({last_kfold['opsloop'].method}; tiled copies repeat the same incidents, so this is "
              "a workload, not a model-quality figure): " + ", ".join(
            f"{k} {last_kfold['opsloop'].mean[k]:.3f}" for k in ("f1", "roc_auc", "pr_auc")))
        print()
        r_train = report("[1] training (xgboost train hook vs XGBClassifier.fit)", t_train)
        r_kfold = report(f"[2] {FOLDS}-fold validation (kfold validate hook vs hand-written loop)", t_kfold)
        print()
        overhead(ops, dataset, hand_splits(frame))
        if args.profile or max(r_train, r_kfold) > TARGET:
            print()
            profile(ops, dataset)


if __name__ == "__main__":
    main()
