"""What the four trainers share: the feature matrix, option checks, fitting PyOD and the threshold."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, TrainedModel

from opsloop_pyod._flavor import FLAVOR
from opsloop_pyod._scoring import Detector, as_matrix

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from opsloop.types import Dataset, RunContext


def contamination(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """PyOD's rule: a share of anomalies in (0, 0.5]."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 < value <= 0.5):
        raise ValueError(f"{attribute.name}: expected a number in (0, 0.5], got {value!r}")


def open_fraction(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A number strictly between 0 and 1."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 < value < 1):
        raise ValueError(f"{attribute.name}: expected a number in (0, 1), got {value!r}")


def feature_matrix(dataset: Dataset, plugin: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The feature columns as float32-rounded float64 (labels are never read); DataError naming bad columns."""
    import pandas as pd

    X = dataset.X
    if X.shape[1] == 0:
        raise DataError(f"{plugin}: dataset {dataset.name or '?'} has no feature columns")
    bad = [f"{c} ({X[c].dtype})" for c in X.columns
           if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
    if bad:
        raise DataError(f"{plugin}: feature column(s) of dataset {dataset.name or '?'} are not numeric: "
                        f"{', '.join(bad)}; encode them in a preprocess step or leave them out with [data] features")
    gaps = [str(c) for c in X.columns if X[c].isna().any()]
    if gaps:
        raise DataError(f"{plugin}: feature column(s) with missing values: {', '.join(gaps)}; PyOD's detectors "
                        "need complete rows (add the impute preprocess step)")
    if len(X) < 2:
        raise DataError(f"{plugin}: needs at least 2 training rows, dataset {dataset.name or '?'} has {len(X)}")
    try:
        return as_matrix(X), tuple(map(str, X.columns))
    except ValueError as exc:
        raise DataError(f"{plugin}: {exc}") from None


def fit(plugin: str, dataset: Dataset, run: RunContext, *, estimator: str, options: Any,
        build: Callable[[np.ndarray], Any]) -> TrainedModel:
    """Fit with `build(X)` (returns the scorer), set PyOD's threshold, wrap as an anomaly `TrainedModel`."""
    import numpy as np
    from importlib.metadata import version

    X, features = feature_matrix(dataset, plugin)
    try:
        with warnings.catch_warnings():
            # scipy's skew (ECOD, COPOD) on a feature that is constant in these rows: its sign is then 0,
            # as PyOD's nan_to_num makes it, and the warning says nothing the operator can act on.
            warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation")
            scorer = build(X)
    except ValueError as exc:
        raise DataError(f"{plugin}: {estimator.rpartition('.')[2]} cannot fit these rows: {exc}") from exc
    # PyOD's `_process_decision_scores`: the (1 - contamination) quantile of the training rows' scores, here
    # by the scorer that serves, so predict flags the share `contamination` of the training rows.
    threshold = float(np.percentile(scorer.anomaly_scores(X), 100 * (1 - options.contamination)))
    params: dict[str, Any] = {"estimator": estimator, **attrs.asdict(options), "rows_fit": len(X),
                              "pyod": version("pyod")}
    detector = Detector(plugin.removeprefix("pyod-"), scorer, threshold, params, features)
    run.log.info("%s: %s on %d rows x %d features", plugin, estimator.rpartition(".")[2], len(X), X.shape[1])
    return TrainedModel(estimator=detector, flavor=FLAVOR, task="anomaly", params=params, features=features)
