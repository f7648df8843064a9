"""$title: a validator that holds out the last days of the training rows and scores the model on them.

Cuts the rows by time, all series together: the last `days` days are held
out, the trainer is fitted once on everything before them (through the `fit`
opsloop passes), and the held-out rows are scored with the columns the model
names, as serving scores them. A model is judged on a period later than
everything it learned from, as in production; a shuffled split would let it
learn from the future of the rows it is judged on. The report has one fold:
the task's figures (accuracy, precision, recall, f1, roc_auc, pr_auc for a
classifier; mae, rmse, r2 for a regressor) and the rows and incidents on
each side; for a binary classifier it keeps the held-out rows' scores
(`ValidationReport.oof`), on which opsloop chooses the alert threshold.

Rows without a time column, without labels, or too few days to hold out
`days` and keep some to train on are a one-line DataError. Replace `split`
with your own scheme.

Options (`[validate.$name]`): see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

from opsloop import DataError, Dataset, RunContext, ValidationReport, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.types import FitFunction

PLUGIN = "$name"
#: Counts, not metrics: reported per fold, left out of the mean.
COUNTS = ("rows_train", "rows_test", "positives_train", "positives_test")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[validate.$name]`).

    Attributes:
        days: Days at the end of the training rows held out and scored (fractions allowed: 0.5 is 12 hours).
    """

    days: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))


@hookimpl
def plugin_options() -> type:
    return Options


def split(dataset: Dataset, days: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows to train on (before the cut) and to score (the last `days` days)."""
    import numpy as np
    import pandas as pd

    if not dataset.time or dataset.time not in dataset.frame.columns:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no time column ({dataset.time!r}) to hold "
                        "the last days out by; set [data] time")
    times = pd.to_datetime(dataset.frame[dataset.time])
    if times.isna().any():
        raise DataError(f"{PLUGIN}: {int(times.isna().sum()):,} rows of dataset {dataset.name or '?'} have no "
                        f"time in column {dataset.time!r}")
    cut = times.max() - pd.Timedelta(days=days)
    held = (times > cut).to_numpy()
    if held.all():
        first, last = times.min(), times.max()
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} spans {first} to {last}, not more than the "
                        f"{days:g} day(s) to hold out: nothing is left to train on; lower [validate.{PLUGIN}] days")
    return np.flatnonzero(~held), np.flatnonzero(held)


def labels(dataset: Dataset) -> pd.Series:
    """The target of every row: present, without gaps."""
    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{PLUGIN}: validation needs labels to score against; dataset {dataset.name or '?'} has "
                        f"no target column ({dataset.target!r}); set [data] target")
    y = dataset.frame[dataset.target]
    if y.isna().any():
        raise DataError(f"{PLUGIN}: {int(y.isna().sum()):,} rows of dataset {dataset.name or '?'} have no label "
                        f"(target column {dataset.target!r})")
    return y


@hookimpl
def validate(dataset: Dataset, fit: FitFunction, options: Options | None, run: RunContext) -> ValidationReport:
    """Fit on the rows before the last `days` days, score those days."""
    import numpy as np
    import pandas as pd

    from opsloop.bundle import predictions_frame
    from opsloop.metrics import for_task

    options = options or Options()
    y = labels(dataset)
    train, test = split(dataset, options.days)
    model = fit(dataset.derive(dataset.frame.iloc[train], name=f"{dataset.name} [{PLUGIN} train]"))
    rows = dataset.frame.iloc[test]
    predictions = predictions_frame(model.estimator, model.task, rows[list(model.features) or dataset.feature_columns])
    y_test = y.iloc[test].to_numpy()
    # precision, recall and F1 of a period without an incident are undefined, not 0: NaN
    figures: dict[str, float] = {**for_task(model.task, y_test, predictions, undefined=math.nan),
                                 "rows_train": len(train), "rows_test": len(test)}
    binary = set(pd.unique(y).tolist()) <= {0, 1}
    if binary:
        figures["positives_train"] = int(y.iloc[train].sum())
        figures["positives_test"] = int(y_test.sum())
    oof = None
    if binary and model.task in ("classification", "anomaly") and "score" in predictions.columns:
        oof = pd.DataFrame({"row": test.astype(np.int64), "fold": np.zeros(len(test), dtype=np.int16),
                            "label": y_test.astype(np.int8), "score": predictions["score"].to_numpy(dtype=float),
                            "prediction": predictions["prediction"].to_numpy(dtype=float)})
    run.log.info("%s: trained on %d rows, scored the last %g day(s): %d rows", PLUGIN, len(train), options.days,
                 len(test))
    mean = {k: v for k, v in figures.items() if k not in COUNTS}
    return ValidationReport(method=f"last {options.days:g} day(s) held out", folds=(figures,), mean=mean,
                            std=dict.fromkeys(mean, 0.0), oof=oof)


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _validator: kinds.Validator = $module
    _configurable: kinds.Configurable = $module
