"""A small, deterministic, real telemetry set for plugin tests (`opsloop.testing`).

Three servers of the embedded ASD data (omi-1, omi-9, omi-10; 19 metrics every
5 minutes, labelled incidents) over ten days: 8,640 rows, every server with
incidents on both sides of the split, so a trainer fits and a monitor judges in
seconds. It is a slice of real data, not a simulation: what passes here has
seen real gaps between incidents, real scales and real label imbalance.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: The servers and the period of the small set.
SERIES = ("omi-1", "omi-9", "omi-10")
START, END, SPLIT = "2024-01-03", "2024-01-13", "2024-01-09"

#: A config for the small set written as `telemetry.csv` in a project: XGBoost alone and small, 3 time folds,
#: the built-in monitors and policy; train before SPLIT, monitor after it.
SMALL_CONFIG: dict[str, Any] = {
    "project": {"name": "small-telemetry", "seed": 7},
    "data": {"source": "telemetry.csv", "target": "label", "time": "timestamp", "series": "entity",
             "train": f"timestamp < '{SPLIT}'", "monitor": f"timestamp >= '{SPLIT}'"},
    "preprocess": {"plugins": ["schema-check", "impute"]},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30, "n_jobs": 1}},
    "validate": {"plugins": ["kfold"], "kfold": {"folds": 3}},
    "deploy": {"plugins": ["batch"]},
    "monitor": {"plugins": ["quality-monitor"]},
}


def small_telemetry() -> pd.DataFrame:
    """The small set as a fresh frame: `entity`, `timestamp`, `m01`..`m19`, `label` (0/1), time-ordered per server."""
    from opsloop import datasets

    frame = datasets.load("asd")
    keep = frame["entity"].isin(SERIES) & (frame["timestamp"] >= START) & (frame["timestamp"] < END)
    return frame.loc[keep].sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)


def small_config(**overrides: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy of SMALL_CONFIG; each keyword replaces (merges into) one top-level table."""
    config = copy.deepcopy(SMALL_CONFIG)
    for table, values in overrides.items():
        config.setdefault(table, {}).update(copy.deepcopy(values))
    return config
