"""K-fold validation: time-ordered forward chaining for telemetry, stratified or random otherwise.

The `kfold` validator fits the selected trainer once per fold (through the
`fit` it is given) and scores the held-out rows with the same code that
serves predictions. Methods:

- `time` (what `auto` picks when the data has a time column): rows are
  ordered by time, all series together, and the distinct time steps are cut
  into `folds + 1` consecutive blocks; fold i trains on blocks 0..i and tests
  on block i+1 (scikit-learn's `TimeSeriesSplit` over time steps), so a
  model never trains on a moment later than the ones it is tested on.
  Shuffled folds would leak the future into training.
- `stratified` (`auto` without a time column and with class labels): every
  fold keeps the class ratio of the whole.
- `random` (`auto` for a continuous target): plain `KFold`.

Metrics per fold: accuracy, precision, recall, f1, roc_auc, pr_auc for
classifiers and anomaly detectors (scored against the labels); mae, rmse, r2
for regressors; plus `rows_train`, `rows_test` and, for 0/1 labels,
`positives_train`, `positives_test`. A fold whose test block holds one class
reports NaN for the AUCs, and precision, recall and F1 are NaN where they
divide by zero (no incident in the block, or none predicted); a fold whose
training block holds one class and that the trainer refuses reports NaN
metrics (with a note); the mean and standard deviation skip NaN.

Rows without a label (`[data] unlabelled = "keep"`, for an unsupervised
trainer) are fitted on and never judged: only labelled test rows are scored
and kept out-of-fold, and each fold counts `unlabelled_train` and
`unlabelled_test`. Under any other value they are a DataError naming the key.

The report keeps the out-of-fold scores of a binary classifier or anomaly
detector (`ValidationReport.oof`: each tested row's score from the fold
model that did not train on it; in time order, the first block is never
tested), which register calibrates the scores on (`estimate-monitor`).

Options (`[validate.kfold]`): folds, method, shuffle, n_jobs, gap; see `Options`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import ValidationReport, hookimpl
from opsloop.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.types import Dataset, FitFunction, RunContext

METHODS = ("auto", "time", "stratified", "random")
COUNTS = ("rows_train", "rows_test", "positives_train", "positives_test", "unlabelled_train", "unlabelled_test")
Split = tuple["np.ndarray", "np.ndarray"]


def _jobs(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if value != -1 and value < 1:
        raise ValueError(f"{attribute.name}: expected a number of workers >= 1, or -1 for all cores, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `kfold` validator (`[validate.kfold]`).

    Attributes:
        folds: Number of folds (test blocks).
        method: `"auto"`, `"time"`, `"stratified"` or `"random"`; `auto`
            is `time` when the data has a time column, else `stratified` for
            class labels and `random` for a continuous target.
        shuffle: Shuffle rows (with the run's seed) before cutting stratified
            or random folds; time folds are never shuffled.
        n_jobs: Folds fitted at once, in threads; -1 for one per core.
            XGBoost already uses every core, so 1 (sequential) is the default.
        gap: Time steps left out between each training block and its test
            block in `time` mode (rows, when there is one row per step), so
            that windowed features or late labels cannot leak across.
    """

    folds: int = attrs.field(default=5, validator=attrs.validators.ge(2))
    method: str = attrs.field(default="auto", validator=attrs.validators.in_(METHODS))
    shuffle: bool = True
    n_jobs: int = attrs.field(default=1, validator=_jobs)
    gap: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@hookimpl
def plugin_options() -> type:
    return Options


# ---------------------------------------------------------------------------
# Shared with `holdout`
# ---------------------------------------------------------------------------


def labels_for_validation(dataset: Dataset, plugin: str, run: RunContext | None = None) -> pd.Series:
    """The target; DataError when there is none (unsupervised detectors are scored against labels too).

    Rows without a label are a DataError naming `[data] unlabelled`, unless it
    is `"keep"` (`run.config`): then they stay in, NaN, for the trainer, and
    only the labelled rows are judged (`score_fold`); a DataError when none is.
    """
    from opsloop.data import missing_labels_error

    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{plugin}: validation needs labels to score against, and dataset {dataset.name or '?'} "
                        f"has no target column ({dataset.target!r}); set [data] target (an unsupervised "
                        "detector is judged against labels as well), or select no validator")
    y = dataset.frame[dataset.target]
    missing = int(y.isna().sum())
    if not missing:
        return y
    mode = run.config.data.unlabelled if run is not None and run.config is not None else "error"
    if mode != "keep":
        raise missing_labels_error(plugin, dataset, mode=mode)
    if missing == len(y):
        raise DataError(f'{plugin}: none of the {len(y):,} rows of dataset {dataset.name or "?"} has a label '
                        f'(target column {dataset.target!r}); with [data] unlabelled = "keep" validation judges '
                        "the labelled rows only, and there are none: add a labelled period to [data] train, or "
                        "select no validator (the version then alerts at the model's own decision)")
    return y


def target_type(y: pd.Series) -> str:
    """scikit-learn's name for the target: "binary", "multiclass", "continuous"... (of the labelled rows)"""
    from sklearn.utils.multiclass import type_of_target

    return type_of_target(y.dropna().to_numpy())


def strata(y: pd.Series) -> pd.Series:
    """What stratified splits keep the ratio of: the labels, with rows without one as a class of their own."""
    return y.astype("float64").fillna(-1.0) if y.isna().any() else y


def resolve_method(method: str, dataset: Dataset, kind: str, plugin: str) -> str:
    """The concrete method for `auto`, and DataError for a method the data cannot support."""
    has_time = bool(dataset.time) and dataset.time in dataset.frame.columns
    classes = kind in ("binary", "multiclass")
    if method == "auto":
        return "time" if has_time else ("stratified" if classes else "random")
    if method == "time" and not has_time:
        raise DataError(f"{plugin}: method \"time\" needs a time column; set [data] time")
    if method == "stratified" and not classes:
        raise DataError(f"{plugin}: method \"stratified\" needs class labels, the target is {kind}; "
                        "use \"random\" or \"time\"")
    return method


def time_steps(dataset: Dataset) -> tuple[np.ndarray, int]:
    """Per row, the index of its time step among the sorted distinct times; and how many steps there are."""
    import numpy as np

    steps, codes = np.unique(dataset.frame[dataset.time].to_numpy(), return_inverse=True)
    return codes.reshape(-1), len(steps)


def positions(mask: np.ndarray) -> np.ndarray:
    """Row positions where `mask` is true, in row order."""
    import numpy as np

    return np.flatnonzero(mask)


def score_fold(dataset: Dataset, fit: FitFunction, train: np.ndarray, test: np.ndarray, label: str,
               run: RunContext, *, keep: list[pd.DataFrame] | None = None, fold: int = 0) -> dict[str, float]:
    """Fit on the `train` rows, score the `test` rows as serving would, and count what was seen.

    A training block with a single class (a quiet first period in time
    order) cannot teach most classifiers anything: when the trainer refuses
    it, the fold reports NaN metrics and its counts, and a note says why,
    instead of stopping validation. Any other failure propagates.

    With `keep`, the test rows' out-of-fold scores (`out_of_fold`) are
    appended to it, for a binary classifier or anomaly detector with scores.
    """
    import math

    from opsloop.bundle import predictions_frame
    from opsloop.metrics import CLASSIFICATION, for_task

    frame = dataset.frame
    y_all = frame[dataset.target]
    y_train, y_test = y_all.iloc[train], y_all.iloc[test]
    counts: dict[str, float] = {"rows_train": len(train), "rows_test": len(test)}
    if set(y_all.dropna().unique().tolist()) <= {0, 1}:  # "positives" means something
        counts["positives_train"] = int(y_train.sum())
        counts["positives_test"] = int(y_test.sum())
    unknown = y_test.isna().to_numpy()
    if y_all.isna().any():  # [data] unlabelled = "keep": the trainer gets every row, only labelled ones are judged
        counts["unlabelled_train"] = int(y_train.isna().sum())
        counts["unlabelled_test"] = int(unknown.sum())
        test, y_test = test[~unknown], y_test[~unknown]
        if not len(test):
            message = f"{label}: no test row has a label; metrics are NaN"
            run.log.info(message)
            return {**dict.fromkeys(CLASSIFICATION, math.nan), **counts}
    try:
        model = fit(dataset.derive(frame.iloc[train], name=f"{dataset.name} [{label} train]"))
    except Exception as exc:
        if y_train.nunique() > 1 or y_train.isna().any():  # rows without a label: the trainer's own words
            raise
        message = f"{label}: the trainer cannot fit a training block of one class only ({exc}); metrics are NaN"
        run.log.warning(message)
        run.reporter.note(message)
        return {**dict.fromkeys(CLASSIFICATION, math.nan), **counts}
    test_frame = frame.iloc[test]
    features = list(model.features) or dataset.feature_columns
    predictions = predictions_frame(model.estimator, model.task, test_frame[features])
    if keep is not None:
        oof = out_of_fold(model.task, test, fold, y_test.to_numpy(), predictions)
        if oof is not None:
            keep.append(oof)
    # precision/recall/F1 of a block without an incident are undefined, not 0: NaN, which the means skip
    return {**for_task(model.task, y_test.to_numpy(), predictions, undefined=math.nan), **counts}


def run_folds(dataset: Dataset, fit: FitFunction, splits: Sequence[Split], n_jobs: int, run: RunContext,
              description: str, *, keep: list[pd.DataFrame] | None = None) -> list[dict[str, float]]:
    """Score every split, in fold order, sequentially or in threads, with progress over folds; with
    `keep`, collect the out-of-fold scores there (`score_fold`). Each fold's figures are reported
    through `run.fold_scored` as they come, in fold order."""
    total = len(splits)
    labels = [f"fold {i + 1}/{total}" if total > 1 else "holdout" for i in range(total)]
    if n_jobs == 1 or total == 1:
        work: Any = (score_fold(dataset, fit, tr, te, lab, run, keep=keep, fold=i)
                     for i, ((tr, te), lab) in enumerate(zip(splits, labels)))
    else:
        from joblib import Parallel, delayed

        # Threads: the estimators release the GIL while fitting, and `fit` needs no pickling.
        work = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
            delayed(score_fold)(dataset, fit, tr, te, lab, run, keep=keep, fold=i)
            for i, ((tr, te), lab) in enumerate(zip(splits, labels)))
    folds = []
    for i, figures in enumerate(run.reporter.track(work, description, total=total)):
        folds.append(figures)
        run.fold_scored(i, figures)  # `opsloop tune` may end a hopeless trial here
    return folds


def out_of_fold(task: str, test: np.ndarray, fold: int, y: np.ndarray, predictions: pd.DataFrame
                ) -> pd.DataFrame | None:
    """The test rows' scores from the fold model that did not train on them (`ValidationReport.oof`);
    None unless the model is a binary classifier or anomaly detector with scores and the labels are 0/1."""
    import numpy as np
    import pandas as pd

    if task not in ("classification", "anomaly") or "score" not in predictions.columns:
        return None
    labels = np.asarray(y, dtype=float)
    prediction = pd.to_numeric(predictions["prediction"], errors="coerce").to_numpy(dtype=float)
    if not np.isin(labels, (0.0, 1.0)).all() or not np.isin(prediction[~np.isnan(prediction)], (0.0, 1.0)).all():
        return None  # several classes: a score is no probability of one positive class
    return pd.DataFrame({"row": np.asarray(test, dtype=np.int64), "fold": np.full(len(test), fold, dtype=np.int16),
                         "label": labels.astype(np.int8),
                         "score": predictions["score"].to_numpy(dtype=float), "prediction": prediction})


def make_report(method: str, folds: list[dict[str, float]], oof: Sequence[pd.DataFrame] | None = None
                ) -> ValidationReport:
    """Per-fold figures, and mean and standard deviation of the metrics (not of the counts); with `oof`,
    the folds' out-of-fold scores as one frame sorted by row."""
    from opsloop.metrics import summarize

    mean, std = summarize([{k: v for k, v in f.items() if k not in COUNTS} for f in folds])
    rows = None
    if oof:
        import pandas as pd

        rows = pd.concat(oof, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)
    return ValidationReport(method=method, folds=tuple(folds), mean=mean, std=std, oof=rows)


# ---------------------------------------------------------------------------
# K folds
# ---------------------------------------------------------------------------


def time_splits(dataset: Dataset, folds: int, gap: int, plugin: str = "kfold") -> list[Split]:
    """Forward chaining over time steps: fold i trains on blocks 0..i, tests on block i+1."""
    from sklearn.model_selection import TimeSeriesSplit

    codes, n_steps = time_steps(dataset)
    if n_steps < folds + 1 + gap:
        raise DataError(f"{plugin}: {n_steps} distinct time step(s) are too few for {folds} time-ordered "
                        f"folds with gap {gap}")
    splits = []
    for train_steps, test_steps in TimeSeriesSplit(n_splits=folds, gap=gap).split(range(n_steps)):
        # Both are contiguous ranges of steps: training ends before testing starts.
        train = positions(codes <= train_steps[-1])
        test = positions((codes >= test_steps[0]) & (codes <= test_steps[-1]))
        splits.append((train, test))
    return splits


def shuffled_splits(y: pd.Series, folds: int, method: str, shuffle: bool, seed: int,
                    plugin: str = "kfold") -> list[Split]:
    """Stratified or plain k-fold splits of row positions."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(y) < folds:
        raise DataError(f"{plugin}: {len(y)} rows are too few for {folds} folds")
    cls = StratifiedKFold if method == "stratified" else KFold
    splitter = cls(n_splits=folds, shuffle=shuffle, random_state=seed if shuffle else None)
    return list(splitter.split(np.zeros(len(y)), y.to_numpy()))


@hookimpl
def validate(dataset: Dataset, fit: Callable[[Dataset], Any], options: Options, run: RunContext) -> ValidationReport:
    """Fit and score the trainer on each fold."""
    options = options or Options()
    from opsloop import partition_folds, partitions

    if partitions.is_partitioned(dataset):  # folds selected per partition, fitted on the cluster (docs/scale.md)
        partition_folds.check_time_order(dataset, options.method, "kfold")
        splits = partition_folds.time_folds(dataset, options.folds, options.gap, "kfold")
        name = f"{options.folds}-fold time-ordered" + (f", gap {options.gap}" if options.gap else "")
        return partition_folds.validate_partitioned(dataset, fit, splits, name, run)
    y = labels_for_validation(dataset, "kfold", run)
    method = resolve_method(options.method, dataset, target_type(y), "kfold")
    if method == "time":
        splits = time_splits(dataset, options.folds, options.gap)
        name = f"{options.folds}-fold time-ordered" + (f", gap {options.gap}" if options.gap else "")
    else:
        splits = shuffled_splits(strata(y), options.folds, method, options.shuffle, run.seed)
        name = f"{options.folds}-fold {method}"
    oof: list[pd.DataFrame] = []
    folds = run_folds(dataset, fit, splits, options.n_jobs, run, f"kfold: {name}", keep=oof)
    note_unlabelled(folds, run, "kfold")
    return make_report(name, folds, oof)


def note_unlabelled(folds: list[dict[str, float]], run: RunContext, plugin: str) -> None:
    """A note when rows without a label were trained on and not judged (`[data] unlabelled = "keep"`)."""
    if not any("unlabelled_test" in f for f in folds):
        return
    left = sum(int(f["unlabelled_test"]) for f in folds)
    empty = sum(1 for f in folds if f["rows_test"] == f["unlabelled_test"])
    text = (f'{plugin}: [data] unlabelled = "keep": rows without a label are trained on and not judged '
            f"({left:,} test rows left out")
    text += f"; {empty} of {len(folds)} test blocks hold no labelled row, their metrics are NaN)" if empty else ")"
    run.reporter.note(text)
