"""Validation over partitions: time-ordered folds selected per partition, fitted on the engine, the held-out rows
scored on the workers; only label, score, series and time come back (docs/scale.md). `kfold` and `holdout` call
these when their dataset is a `PartitionedDataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from opsloop.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.partitions import PartitionedDataset
    from opsloop.types import Dataset

# ---------------------------------------------------------------------------
# Validation: time-ordered folds over partitions, scored on the workers
# ---------------------------------------------------------------------------

def _between(part: pd.DataFrame, job: tuple[str, Any, Any]) -> pd.DataFrame:
    time, low, high = job
    times = part[time]
    keep = times.notna()
    if low is not None:
        keep &= times >= low
    if high is not None:
        keep &= times <= high
    return part[keep]


def _times(part: pd.DataFrame, time: str) -> np.ndarray:
    return part[time].dropna().unique()


def check_time_order(data: PartitionedDataset, method: str, plugin: str) -> None:
    """DataError unless partitioned rows can be validated in time order (the only order over partitions)."""
    if method not in ("auto", "time") or not data.time or data.time not in data.meta.columns:
        raise DataError(f'{plugin}: partitioned rows are validated in time order only (method "auto" or "time", '
                        f"with [data] time set); method is {method!r}, time column {data.time!r}")
    if not data.target or data.target not in data.meta.columns:
        raise DataError(f"{plugin}: validation needs labels to score against, and {data.name} has no target "
                        f"column ({data.target!r}); set [data] target, or select no validator")


def time_folds(data: PartitionedDataset, folds: int, gap: int, plugin: str
               ) -> list[tuple[PartitionedDataset, PartitionedDataset]]:
    """`kfold`'s time-ordered forward chaining, over the distinct time steps of all partitions: fold i
    trains on blocks 0..i and tests on block i+1 (scikit-learn's `TimeSeriesSplit`); each fold's rows are
    selected per partition by time, never gathered. (The distinct time steps come to the client: one value
    per step, not per row.)"""
    import numpy as np
    from sklearn.model_selection import TimeSeriesSplit

    steps = np.unique(np.concatenate([np.asarray(t) for t in data.collect(_times, data.time)] or [np.array([])]))
    if len(steps) < folds + 1 + gap:
        raise DataError(f"{plugin}: {len(steps)} distinct time step(s) are too few for {folds} time-ordered "
                        f"folds with gap {gap}")
    out = []
    for i, (train_steps, test_steps) in enumerate(TimeSeriesSplit(n_splits=folds, gap=gap).split(range(len(steps)))):
        train = data.transform(_between, (data.time, None, steps[train_steps[-1]]), data.meta,
                               name=f"{data.name} [fold {i + 1}/{folds} train]").describe()
        test = data.transform(_between, (data.time, steps[test_steps[0]], steps[test_steps[-1]]), data.meta,
                              name=f"{data.name} [fold {i + 1}/{folds} test]")
        out.append((train, test))
    return out


def holdout_split(data: PartitionedDataset, fraction: float, plugin: str
                  ) -> tuple[PartitionedDataset, PartitionedDataset]:
    """`holdout`'s time-ordered split: the last `fraction` of the distinct time steps are held out."""
    import numpy as np

    steps = np.unique(np.concatenate([np.asarray(t) for t in data.collect(_times, data.time)] or [np.array([])]))
    cut = int(round(len(steps) * (1 - fraction)))
    if cut < 1 or cut >= len(steps):
        raise DataError(f"{plugin}: {len(steps)} distinct time step(s) are too few to hold out {fraction:g} of them")
    train = data.transform(_between, (data.time, None, steps[cut - 1]), data.meta,
                           name=f"{data.name} [holdout train]").describe()
    test = data.transform(_between, (data.time, steps[cut], None), data.meta, name=f"{data.name} [holdout test]")
    return train, test


def _score(part: pd.DataFrame, job: tuple[Any, str, list[str], str, str | None, str | None]) -> pd.DataFrame:
    """Label, score, prediction, series and time of a partition's labelled rows, scored by the fold model."""
    import numpy as np
    import pandas as pd

    from opsloop.bundle import predictions_frame

    estimator, task, features, target, series, time = job
    part = part[part[target].notna()]
    out = pd.DataFrame({"label": part[target].to_numpy()})
    if len(part):
        predictions = predictions_frame(estimator, task, part[features])
        out["prediction"] = pd.to_numeric(predictions["prediction"], errors="coerce").to_numpy(dtype=float)
        if "score" in predictions.columns:
            out["score"] = predictions["score"].to_numpy(dtype=float)
    else:
        out["prediction"] = np.array([], dtype=float)
        out["score"] = np.array([], dtype=float)
    if series:
        out["series"] = part[series].to_numpy()
    if time:
        out["time"] = part[time].to_numpy()
    return out


def _counts(part: pd.DataFrame, target: str) -> tuple[int, int, set[Any]]:
    y = part[target]
    labels = set(y.dropna().unique().tolist())
    return len(part), int(y.sum()) if labels <= {0, 1} else 0, labels


def _label_counts(data: PartitionedDataset) -> tuple[int, int, set[Any]]:
    """Rows, positives (0/1 labels) and the labels seen, over the partitions."""
    rows, positives, labels = 0, 0, set()
    for n, p, seen in data.collect(_counts, data.target):
        rows, positives, labels = rows + n, positives + p, labels | seen
    return rows, positives, labels


def _labels(part: pd.DataFrame, target: str) -> set[Any]:
    return set(part[target].dropna().unique().tolist())


def score_rows(model: Any, test: PartitionedDataset, features: Sequence[str]) -> pd.DataFrame:
    """`model` scored on the held-out partitions, on the workers; only label, score, prediction, series and
    time come back (in partition order)."""
    import pandas as pd

    parts = test.collect(_score, (model.estimator, model.task, list(features), test.target, test.series, test.time))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def validate_partitioned(data: PartitionedDataset, fit: Callable[[Any], Any], splits: list[tuple[Any, Any]],
                         method: str, run: Any) -> Any:
    """Fit each split's training partitions (`fit`: the trainer, on the cluster) and score its held-out rows
    on the workers: a `ValidationReport` (per-fold metrics; the out-of-fold scores numbered in the order they
    come, with their series and time as `_series` and `_time`, which `split_oof` takes off)."""
    import math

    import numpy as np

    from opsloop.metrics import CLASSIFICATION, for_task
    from opsloop.plugins.kfold import make_report, out_of_fold

    folds, oof = [], []
    offset = 0
    total = len(splits)
    for i, (train, test) in enumerate(splits):
        label = f"fold {i + 1}/{total}" if total > 1 else "holdout"
        seen_train, seen_test = _label_counts(train), _label_counts(test)
        counts = {"rows_train": seen_train[0], "rows_test": seen_test[0]}
        if seen_train[2] | seen_test[2] <= {0, 1}:  # "positives" means something
            counts.update(positives_train=seen_train[1], positives_test=seen_test[1])
        try:
            model = fit(train)
        except Exception as exc:
            classes = set().union(*train.collect(_labels, train.target))
            if len(classes) > 1:
                raise
            message = (f"{label}: the trainer cannot fit a training block of one class only ({exc}); metrics are "
                       "NaN")
            run.log.warning(message)
            run.reporter.note(message)
            folds.append({**dict.fromkeys(CLASSIFICATION, math.nan), **counts})
            continue
        features = list(model.features) or train.feature_columns
        rows = score_rows(model, test, features)
        if not len(rows):
            run.reporter.note(f"{label}: no labelled test row; metrics are NaN")
            folds.append({**dict.fromkeys(CLASSIFICATION, math.nan), **counts})
            continue
        y = rows["label"].to_numpy()
        predictions = rows[[c for c in ("prediction", "score") if c in rows.columns]]
        figures = {**for_task(model.task, y, predictions, undefined=math.nan), **counts}
        positions = np.arange(offset, offset + len(rows))
        piece = out_of_fold(model.task, positions, i, y, predictions)
        if piece is not None:  # with the series and time the threshold counts by (`split_oof`)
            oof.append(piece.assign(**{f"_{c}": rows[c].to_numpy() for c in ("series", "time") if c in rows}))
        offset += len(rows)
        folds.append(figures)
        run.fold_scored(i, figures)
    return make_report(method, folds, oof)


def split_oof(report: Any, data: PartitionedDataset) -> tuple[Any, Dataset]:
    """A partitioned validation's report without the series and time of its out-of-fold rows, and those rows
    as the small pandas `Dataset` the alert threshold reads (`opsloop.alerting.oof_frame`)."""
    import attrs as _attrs
    import pandas as pd

    from opsloop.types import Dataset

    oof = report.oof
    extra = [c for c in ("_series", "_time") if oof is not None and c in oof.columns]
    if oof is None:
        return report, Dataset(frame=pd.DataFrame(), target=data.target, fingerprint=data.fingerprint)
    frame = pd.DataFrame(index=range(int(oof["row"].max()) + 1 if len(oof) else 0))
    names = {"_series": data.series, "_time": data.time}
    for c in extra:
        column = pd.Series(oof[c].to_numpy(), index=oof["row"].to_numpy())
        frame[names[c]] = column.reindex(frame.index).to_numpy()
    frame[data.target] = pd.Series(oof["label"].to_numpy(), index=oof["row"].to_numpy()).reindex(frame.index).to_numpy()
    validated = Dataset(frame=frame, target=data.target, time=data.time if "_time" in extra else None,
                        series=data.series if "_series" in extra else None, fingerprint=data.fingerprint,
                        name=f"{data.name} (out-of-fold rows)")
    return _attrs.evolve(report, oof=oof.drop(columns=extra)), validated
