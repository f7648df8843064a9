"""How the default's rolling windows and early stopping were chosen: variants on ASD and SMD (issue 13, item 3).

Usage: python benchmarks/window_defaults.py [--data-dir ../shared/data] [VARIANT ...]

Each variant changes only `[preprocess.rolling-features]` (and, where named,
`[train.xgboost]`) of the shipped defaults, and is built, validated and
monitored as `opsloop run` does (benchmarks/real_data_metrics.py's
`run_opsloop`) on:

- ASD: core/default.toml's periods (first week of omi-1..6 trained, second
  week of all 12 servers monitored; 5-minute steps);
- SMD machine-1-6: first half of its labelled period trained, second half
  monitored (1-minute steps, a strong shift in the second half).

Printed per variant and data set: validation (5 time-ordered folds) ROC AUC
and PR AUC, monitored ROC AUC and PR AUC, and what the version's calibrated
alert threshold (the default `[alerting]`: budget, 1 alert per series-day)
gives on the monitored period: F1, incidents caught of all, alerts per
series-day. The issue's bar: on SMD, monitored PR AUC no worse than
XGBoost's own defaults on the raw metrics (0.931, real_data_metrics.py).
Every figure comes from one run; nothing is timed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data_metrics as rdm  # noqa: E402

NO_ES = "[train.xgboost]\nearly_stopping_rounds = 0\n"
ES = "[train.xgboost]\nearly_stopping_rounds = 20\n"


def rolling(windows: str, stats: str) -> str:
    return f"[preprocess.rolling-features]\nwindows = {windows}\nstats = {stats}\n"


MSR = '["mean", "std", "rate"]'
MS = '["mean", "std"]'
#: label -> the config's changes; "(default)" marks the shipped one.
VARIANTS = {
    "12 rows, mean/std/rate, early stopping (old default)": rolling("[12]", MSR) + ES,
    "1h, mean/std/rate, early stopping": rolling('["1h"]', MSR) + ES,
    "15min, mean/std/rate, early stopping": rolling('["15min"]', MSR) + ES,
    "15min+1h, mean/std/rate, early stopping": rolling('["15min", "1h"]', MSR) + ES,
    "1h, mean/std, early stopping": rolling('["1h"]', MS) + ES,
    "2h, mean/std, early stopping": rolling('["2h"]', MS) + ES,
    "1h, mean, early stopping": rolling('["1h"]', '["mean"]') + ES,
    "1h, mean/std/rate, no early stopping": rolling('["1h"]', MSR) + NO_ES,
    "1h, mean/std, no early stopping (default)": rolling('["1h"]', MS) + NO_ES,
    "1h, mean/std, no early stopping, 100 rounds": rolling('["1h"]', MS) + NO_ES + "n_estimators = 100\n",
    "without rolling-features, no early stopping": rdm.RAW + NO_ES,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=rdm.REPO.parent / "shared" / "data")
    parser.add_argument("variants", nargs="*", help="labels to run (default: all)")
    args = parser.parse_args()
    logging.getLogger("opsloop").setLevel(logging.ERROR)
    chosen = args.variants or list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, _, smd_data = rdm.smd_setup(root, args.data_dir)
        print(f"{'variant':<52} {'data':<4} | val ROC   PR | mon ROC   PR |   F1 incidents alerts/day")
        for n, label in enumerate(chosen):
            for name, data in (("ASD", ""), ("SMD", smd_data)):
                r = rdm.run_opsloop(data + VARIANTS[label], root / f"{name}{n}")
                v, m = r["mean"], r["monitor"]
                print(f"{label:<52} {name:<4} | {v['roc_auc']:7.3f} {v['pr_auc']:.3f} | {m['roc_auc']:7.3f} "
                      f"{m['pr_auc']:.3f} | {m['f1']:.3f} {int(m['incidents_caught']):>4} of {int(m['incidents']):<3} "
                      f"{m['alerts_per_day']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
