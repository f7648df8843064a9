"""Isolation Forest through PyOD: anomalies are the rows random trees isolate in few splits.

The `pyod-iforest` trainer fits PyOD's `IForest` (which wraps scikit-learn's
`IsolationForest`) on every feature column; a target column, if present, is
never read when fitting. Its anomaly score is PyOD's, minus scikit-learn's
`decision_function`, so it ranks rows as the built-in `isolation-forest`
does; having it here lets an ensemble combine PyOD detectors alike.

Flavor `pyod`: the forest goes into `forest.skops`, loaded with an explicit
list of trusted types (classes under `sklearn.` and `numpy.` only). Scoring
walks the loaded trees in NumPy, all at once, with scikit-learn's arithmetic:
the same numbers as `decision_function`, without its per-call cost.

Options (`[train.pyod-iforest]`): n_estimators, max_samples, max_features,
contamination, n_jobs; see `Options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import hookimpl
from opsloop.plugins.isolation_forest import check_max_samples

from opsloop_pyod import _train
from opsloop_pyod._flavor import compile_predict, load_model, save_model
from opsloop_pyod._scoring import ForestScorer

if TYPE_CHECKING:
    import numpy as np

    from opsloop import TrainedModel
    from opsloop.types import Dataset, RunContext

__all__ = ["Options", "compile_predict", "load_model", "plugin_options", "save_model", "train"]
PLUGIN = "pyod-iforest"


def _max_features(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = ((isinstance(value, int) and not isinstance(value, bool) and value >= 1)
          or (isinstance(value, float) and 0 < value <= 1))
    if not ok:
        raise ValueError(f"{attribute.name}: expected a feature count >= 1 or a fraction in (0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `pyod-iforest` trainer (`[train.pyod-iforest]`).

    Attributes:
        n_estimators: Trees in the forest.
        max_samples: Rows drawn per tree: `"auto"` (min(256, rows)), a
            count, or a fraction of the rows.
        max_features: Features drawn per tree: a count, or a fraction of
            the features (1.0: all).
        contamination: Expected share of anomalies in the training rows, in
            (0, 0.5]: sets the threshold between 1 and 0 (PyOD's
            `threshold_`), used when no validator chose an alert threshold.
        n_jobs: Threads for fitting and scoring; -1 means every core.
    """

    n_estimators: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    max_samples: Any = attrs.field(default="auto", validator=check_max_samples)
    max_features: Any = attrs.field(default=1.0, validator=_max_features)
    contamination: float = attrs.field(default=0.1, validator=_train.contamination)
    n_jobs: int = attrs.field(default=1, validator=attrs.validators.not_(attrs.validators.in_([0])))


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit PyOD's IForest on the feature columns, without labels, seeded with `[project] seed`."""
    options = options or Options()

    def build(X: np.ndarray) -> ForestScorer:
        from pyod.models.iforest import IForest

        detector = IForest(n_estimators=options.n_estimators, max_samples=options.max_samples,
                           max_features=options.max_features, contamination=options.contamination,
                           n_jobs=options.n_jobs, random_state=run.seed).fit(X)
        return ForestScorer(detector.detector_)

    return _train.fit(PLUGIN, dataset, run, estimator="pyod.models.iforest.IForest", options=options, build=build)
