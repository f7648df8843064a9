"""Holdout validation: one split, the latest rows in time or a stratified sample, scored once.

The `holdout` validator fits the selected trainer once on all rows but a
held-out `fraction` and scores those rows with the same code that serves
predictions. Methods:

- `time` (what `auto` picks when the data has a time column): the last
  `fraction` of the distinct time steps, all series together, is held out,
  so the model is tested on a period later than all it trained on.
- `stratified` (`auto` without a time column and with class labels): a
  random sample with the class ratio of the whole (seeded with the run's seed).
- `random` (`auto` for a continuous target): a plain random sample.

Its report has the same shape as `kfold`'s, with one fold: accuracy,
precision, recall, f1, roc_auc, pr_auc (or mae, rmse, r2), `rows_train`,
`rows_test`, and for 0/1 labels `positives_train` and `positives_test`.

Like `kfold`'s, it keeps the held-out rows' scores (`ValidationReport.oof`)
for a binary classifier or anomaly detector.

Options (`[validate.holdout]`): fraction, method; see `Options`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import ValidationReport, hookimpl
from opsloop.errors import DataError
from opsloop.plugins import kfold as _kfold

if TYPE_CHECKING:
    from opsloop.types import Dataset, RunContext


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `holdout` validator (`[validate.holdout]`).

    Attributes:
        fraction: Share of the rows (of the time steps, in `time` mode) held out.
        method: `"auto"`, `"time"`, `"stratified"` or `"random"`; `auto` is
            `time` when the data has a time column, else `stratified` for
            class labels and `random` for a continuous target.
    """

    fraction: float = attrs.field(default=0.2, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    method: str = attrs.field(default="auto", validator=attrs.validators.in_(_kfold.METHODS))


@hookimpl
def plugin_options() -> type:
    return Options


def time_split(dataset: Dataset, fraction: float) -> _kfold.Split:
    """Train on the earlier time steps, test on the last `fraction` of them."""
    codes, n_steps = _kfold.time_steps(dataset)
    if n_steps < 2:
        raise DataError(f"holdout: dataset {dataset.name or '?'} has {n_steps} time step(s), too few to split")
    cut = min(max(round(n_steps * (1 - fraction)), 1), n_steps - 1)
    return _kfold.positions(codes < cut), _kfold.positions(codes >= cut)


def sample_split(y: Any, fraction: float, stratified: bool, seed: int) -> _kfold.Split:
    """A (stratified) random split of row positions, sorted."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    try:
        train, test = train_test_split(rows, test_size=fraction, random_state=seed,
                                       stratify=y.to_numpy() if stratified else None)
    except ValueError as exc:
        raise DataError(f"holdout: cannot split {len(rows)} rows with fraction {fraction}: {exc}") from None
    return np.sort(train), np.sort(test)


@hookimpl
def validate(dataset: Dataset, fit: Callable[[Dataset], Any], options: Options, run: RunContext) -> ValidationReport:
    """Fit on all but the held-out rows and score those."""
    options = options or Options()
    from opsloop import partition_folds, partitions

    if partitions.is_partitioned(dataset):  # the held-out time steps selected per partition (docs/scale.md)
        partition_folds.check_time_order(dataset, options.method, "holdout")
        split = partition_folds.holdout_split(dataset, options.fraction, "holdout")
        return partition_folds.validate_partitioned(dataset, fit, [split],
                                                    f"holdout {options.fraction:.0%} time-ordered", run)
    y = _kfold.labels_for_validation(dataset, "holdout", run)
    method = _kfold.resolve_method(options.method, dataset, _kfold.target_type(y), "holdout")
    if method == "time":
        split = time_split(dataset, options.fraction)
        name = f"holdout {options.fraction:.0%} time-ordered"
    else:
        split = sample_split(_kfold.strata(y), options.fraction, method == "stratified", run.seed)
        name = f"holdout {options.fraction:.0%} {method}"
    oof: list[Any] = []
    folds = _kfold.run_folds(dataset, fit, [split], 1, run, f"holdout: {name}", keep=oof)
    _kfold.note_unlabelled(folds, run, "holdout")
    return _kfold.make_report(name, folds, oof)
