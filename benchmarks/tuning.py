"""`opsloop tune` against the same search written by hand with Optuna, and what tuning buys on both real sets.

Usage: python benchmarks/tuning.py [--part overhead,value] [--trials 12] [--repeats 3] [--data-dir ../shared/data]

Parts (both by default):

- `overhead` (issue 14, item 5: "tuning adds at most 5% over the same
  trials' fits written by hand with Optuna"). ASD, the default config's
  training period (first week of omi-1..6), the default preprocessing
  (schema-check, impute, 1h rolling mean and std), XGBoost alone with the
  shipped options (300 rounds, no early stopping), 5 time-ordered folds, PR
  AUC, the issue's example space (`max_depth` 3..10, `learning_rate`
  0.01..0.3 on a log scale, `grow_policy` depthwise or lossguide), TPE
  seeded alike and `[tune]`'s median pruner in both, the hand-written one
  reporting each fold's running mean as opsloop does, so that both prune
  the same trials at the same folds. (a) opsloop: `plan`,
  `open_study` and `study.optimize(Objective)`, what `opsloop tune` runs for
  its trials, with the study in a SQLite `tuning.db` as the local store keeps
  it, after preprocessing once; (b) by hand: the same features, an in-memory
  Optuna study, an objective that cuts the distinct time steps with
  scikit-learn's `TimeSeriesSplit`, fits `xgboost.XGBClassifier` with the
  same arguments the `xgboost` plugin passes (scale_pos_weight =
  negatives / positives, `hist`, the seed) and scores
  `average_precision_score` per fold: a training block of one class is
  not fitted (the plugin refuses it), a test block of one class is fitted
  and its PR AUC is NaN, as `kfold` does. The
  trials' states and values are compared (they must be equal: same params,
  same fits, same pruning).
  The two searches advance in lockstep, one trial each in turn, the order
  swapped every trial, so that the shared machine's drift falls on both;
  prints per repeat the totals and the ratio, then the median ratio of wall
  and of CPU (process time, all threads).
- `value`: does tuning on time-ordered folds carry to the later period?
  For ASD (train on the first week of omi-1..6, monitor the second week of
  all 12 servers, the default config's periods) and SMD machine-1-6 (first
  half / second half): `opsloop tune` on XGBoost alone with its default
  space (`tune_space`: depth, rate, rounds, child weight, row and column
  sampling), `--trials` trials, then the untuned and the tuned XGBoost each
  run through `opsloop run`'s stages and monitored: validation PR AUC, and
  monitored PR AUC, incidents caught and alerts per server-day at each
  version's calibrated threshold.

Every figure is a ratio within one run or a median of repeats in one run.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import real_data_metrics as rdm  # noqa: E402 - the benchmarks' shared runners

#: The issue's example space.
SPACE = {"max_depth": {"low": 3, "high": 10}, "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
         "grow_policy": {"choices": ["depthwise", "lossguide"]}}
#: XGBoost alone, with the shipped options (core/default.toml: 300 rounds, no early stopping); [tune]'s defaults.
OVERHEAD_CONFIG = {"train": {"plugins": ["xgboost"]}, "tune": {"params": SPACE}}


def clock(work: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def overhead(trials: int, repeats: int) -> None:
    import numpy as np
    import optuna
    import xgboost as xgb
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import TimeSeriesSplit

    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.tuning import Objective, open_study, plan

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"\n== overhead: {trials} trials, XGBoost 300 rounds, 5 time-ordered folds on ASD's training period; "
          f"{repeats} repeats ==")
    ratios_wall, ratios_cpu = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            table = config_mod._merge(config_mod.default_table(), OVERHEAD_CONFIG)
            table["tune"]["study"] = f"bench-{repeat}"
            cfg = config_mod.Config.from_table(table, workdir=Path(tmp))
            session = Session.open(cfg)
            train, _ = data_mod.periods(data_mod.load(cfg), cfg)
            features = Runner(session).preprocess(train)[0]
            seed = cfg.project.seed

            search = plan(session, train, trials=trials, store_url=f"sqlite:///{Path(tmp) / 'tuning.db'}")
            ours = open_study(search)  # what `opsloop tune` opens: the study in tuning.db
            objective = Objective(search, session, train)
            objective.prime(cfg, features)  # preprocessed once, before the clock, as by hand
            X, y = features.X, features.y.to_numpy()
            codes = np.unique(features.frame[features.time].to_numpy(), return_inverse=True)[1].reshape(-1)
            splits = [(np.flatnonzero(codes <= tr[-1]), np.flatnonzero((codes >= te[0]) & (codes <= te[-1])))
                      for tr, te in TimeSeriesSplit(n_splits=5).split(range(codes.max() + 1))]

            def by_hand(trial: optuna.Trial) -> float:
                depth = trial.suggest_int("max_depth", 3, 10)
                rate = trial.suggest_float("learning_rate", 0.01, 0.3, log=True)
                grow = trial.suggest_categorical("grow_policy", ["depthwise", "lossguide"])
                scores = []
                for step, (tr, te) in enumerate(splits):
                    if len(np.unique(y[tr])) < 2:  # the trainer refuses one class: no fit, NaN
                        scores.append(math.nan)
                        continue
                    pos = int(y[tr].sum())
                    model = xgb.XGBClassifier(n_estimators=300, learning_rate=rate, max_depth=depth,
                                              grow_policy=grow, tree_method="hist", n_jobs=None,
                                              random_state=seed, scale_pos_weight=(len(tr) - pos) / pos)
                    model.fit(X.iloc[tr], y[tr], verbose=False)
                    # a test block without an incident is fitted and scored (the other figures are
                    # defined), its PR AUC is NaN, as kfold's
                    scores.append(average_precision_score(y[te], model.predict_proba(X.iloc[te])[:, 1])
                                  if len(np.unique(y[te])) == 2 else math.nan)
                    finite = [s for s in scores if not math.isnan(s)]
                    if finite:
                        trial.report(float(np.mean(finite)), step)
                        if trial.should_prune():
                            raise optuna.TrialPruned()
                return float(np.mean([s for s in scores if not math.isnan(s)]))

            hand = optuna.create_study(direction="maximize",
                                       sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
                                       pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
            # The two searches advance in lockstep, one trial each in turn (the order swapped every trial), so
            # that the shared machine's drift falls on both alike.
            totals = {"opsloop": [0.0, 0.0], "by hand": [0.0, 0.0]}
            legs = [("opsloop", lambda: ours.optimize(objective, n_trials=1)),
                    ("by hand", lambda: hand.optimize(by_hand, n_trials=1))]
            for number in range(trials):
                for name, work in (legs if (number + repeat) % 2 == 0 else legs[::-1]):
                    _, wall, cpu = clock(work)
                    totals[name][0] += wall
                    totals[name][1] += cpu
            a = [(t.state.name, t.value) for t in ours.trials]
            b = [(t.state.name, t.value) for t in hand.trials]
            states = [x[0] for x in a] == [x[0] for x in b]
            same = max(abs(x[1] - z[1]) for x, z in zip(a, b) if x[1] is not None and z[1] is not None)
            pruned = sum(x[0] == "PRUNED" for x in a)
            (ow, oc), (hw, hc) = totals["opsloop"], totals["by hand"]
            ratios_wall.append(ow / hw)
            ratios_cpu.append(oc / hc)
            print(f"  repeat {repeat + 1}: opsloop {ow:6.1f} s wall {oc:6.1f} s CPU | by hand {hw:6.1f} s "
                  f"wall {hc:6.1f} s CPU | ratio x{ratios_wall[-1]:.3f} wall, x{ratios_cpu[-1]:.3f} CPU | "
                  f"largest difference of the trials' values {same:.1e}, states {'equal' if states else 'DIFFER'} "
                  f"({pruned} pruned)", flush=True)
    wall, cpu = statistics.median(ratios_wall), statistics.median(ratios_cpu)
    print(f"  median: opsloop tune takes x{wall:.3f} wall, x{cpu:.3f} CPU of the hand-written search "
          f"({'MEETS' if wall <= 1.05 and cpu <= 1.05 else 'MISSES'} the issue's 5%)")


def value(trials: int, data_dir: Path) -> None:
    from opsloop import config as config_mod
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.tuning import tune

    xgb_only = '[train]\nplugins = ["xgboost"]\n'
    sets = {"ASD": '[project]\nname = "asd-tune"\n' + rdm.ASD_DATA.format(train=rdm.SIX)}
    with tempfile.TemporaryDirectory() as tmp:
        smd_pkl = data_dir / "smd" / "processed" / "machine-1-6_test.pkl"
        if smd_pkl.is_file():
            sets["SMD"] = rdm.smd_setup(Path(tmp) / "smd", data_dir)[2]
        for name, data in sets.items():
            root = Path(tmp) / name
            root.mkdir(parents=True, exist_ok=True)
            (root / "opsloop.toml").write_text(data + xgb_only + f"\n[tune]\ntrials = {trials}\n", encoding="utf-8")
            cfg = config_mod.read(root / "opsloop.toml")
            runner = Runner(Session.open(cfg))
            (result, wall, cpu) = clock(lambda: tune(runner))
            runner.close()
            print(f"\n== {name}: opsloop tune, XGBoost's default space, {trials} trials: {wall:.0f} s wall, "
                  f"{cpu:.0f} s CPU; study {result.search.study} ==")
            data_json = result.to_json()
            print(f"  trials: {data_json['counts']}; best validation PR AUC {data_json['best_value']:.3f} (trial "
                  f"{data_json['best_trial']}), refit {'reproduced' if data_json['refit']['reproduced'] else 'DIFFERS'}")
            print(f"  best params: {data_json['best_params']}")
            print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in data_json["importances"].items()))
            tuned = result.toml()
            print(f"  {'':<10} {'val pr':>6}  {'roc':>5}  {'pr':>5}  {'caught':>7}  {'al/d':>5}")
            for label, extra in (("untuned", xgb_only), ("tuned", xgb_only + tuned)):
                got = rdm.run_monitored(data + extra, root / label)
                m = got["monitor"]
                print(f"  {label:<10} {got['validation'].get('pr_auc', math.nan):6.3f}  {m['roc_auc']:5.3f}  "
                      f"{m['pr_auc']:5.3f}  {m['incidents_caught']:3.0f}/{m['incidents']:<3.0f}  "
                      f"{m['alerts_per_day']:5.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="overhead,value")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.getLogger("opsloop").setLevel(logging.ERROR)
    import optuna
    import xgboost

    print(f"optuna {optuna.__version__}, xgboost {xgboost.__version__}")
    parts = [p.strip() for p in args.part.split(",")]
    if "overhead" in parts:
        overhead(args.trials, args.repeats)
    if "value" in parts:
        value(args.trials, args.data_dir)


if __name__ == "__main__":
    main()
