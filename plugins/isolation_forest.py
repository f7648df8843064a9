"""Isolation Forest: unsupervised anomaly detection that needs no labels to train.

The `isolation-forest` trainer fits scikit-learn's `IsolationForest` on every
feature column (a target column, if present, is ignored when fitting and
used only by validation and monitoring to judge the detector). Its task is
`"anomaly"`:

- `predict` returns 1 for an anomaly and 0 for normal (scikit-learn says -1
  and +1; `_skops_flavor.AnomalyLabels` converts);
- `score_samples` is scikit-learn's (lower = more abnormal), so the score in
  predictions, `-score_samples`, ranks anomalies first (ROC AUC, PR AUC).

With a validator, the version alerts at the threshold `[alerting]` chooses
from the out-of-fold scores (opsloop.alerting), as every binary model does,
and monitoring reports incident figures at it; `contamination` only sets the
forest's own decision, used without a validator. Labels are never read when
fitting, so `[data] unlabelled = "keep"` lets the forest train on history
nobody labelled while validation and the threshold judge the labelled rows
(issue 13, item 6).

Category columns are left out (with a warning): a forest splits on numbers.

Saved with the `sklearn` flavor: the plain `IsolationForest` goes into
`model.skops` (only scikit-learn and NumPy types, all trusted), and the 0/1
wrapper is rebuilt at load because the manifest's task is `"anomaly"`, so no
class of opsloop's has to be trusted by skops.

Served, the forest takes the fast path: `compile_forest(forest)` walks its
trees in NumPy with scikit-learn's arithmetic (the same scores bit for bit);
other plugins holding a fitted `IsolationForest` (opsloop-pyod's
`pyod-iforest`) use it too.

Options (`[train.isolation-forest]`): n_estimators, contamination,
max_samples; see `Options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import SearchParam, SearchSpace, TrainedModel, hookimpl
from opsloop.errors import DataError
from opsloop.plugins import sklearn_trainer as _sk
from opsloop.plugins._skops_flavor import FLAVOR, compile_predict, load_model, save_model
from opsloop.plugins._skops_flavor import isolation_forest_predict as compile_forest

if TYPE_CHECKING:
    from opsloop.types import Dataset, RunContext

__all__ = ["Options", "check_max_samples", "compile_forest", "compile_predict", "load_model", "plugin_options",
           "save_model", "train", "tune_space"]


def _contamination(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (value == "auto" or (number and 0 < value <= 0.5)):
        raise ValueError(f'{attribute.name}: expected "auto" or a number in (0, 0.5], got {value!r}')


def check_max_samples(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator of a forest's `max_samples`: `"auto"`, a row count >= 1, or a fraction in (0, 1]. Public
    for other plugins that fit a scikit-learn forest (opsloop-pyod's `pyod-iforest`)."""
    ok = (value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
          or (isinstance(value, float) and 0 < value <= 1))
    if not ok:
        raise ValueError(f'{attribute.name}: expected "auto", a row count >= 1 or a fraction in (0, 1], '
                         f"got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `isolation-forest` trainer (`[train.isolation-forest]`).

    Attributes:
        n_estimators: Trees in the forest.
        contamination: Expected share of anomalies, which sets the threshold
            between 1 and 0: `"auto"` (scikit-learn's default offset) or a
            number in (0, 0.5].
        max_samples: Rows drawn per tree: `"auto"` (min(256, rows)), a
            count, or a fraction of the rows.
    """

    n_estimators: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    contamination: Any = attrs.field(default="auto", validator=_contamination)
    max_samples: Any = attrs.field(default="auto", validator=check_max_samples)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def tune_space(options: Options) -> SearchSpace:
    """What `opsloop tune` searches by default: the number of trees and the rows each one draws."""
    return SearchSpace(params={"n_estimators": SearchParam(low=50, high=400, step=50),
                               "max_samples": SearchParam(choices=("auto", 512, 1024, 0.5))})


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit an Isolation Forest on the feature columns, without labels."""
    from sklearn.ensemble import IsolationForest

    options = options or Options()
    section = "train.isolation-forest"
    X = _sk.numeric_features(dataset, "isolation-forest")
    categories = [str(c) for c in X.columns if X[c].dtype == "category"]
    if categories:  # a forest splits on numbers; as an ensemble member it still takes the rest
        if len(categories) == X.shape[1]:
            raise DataError(f"isolation-forest: every feature column is a category ({', '.join(categories)}); a "
                            "forest splits on numbers: encode them in a preprocess step")
        run.log.warning("isolation-forest: left out category column(s) %s: a forest splits on numbers (encode "
                        "them in a preprocess step to use them)", ", ".join(categories))
        X = X.drop(columns=categories)
    forest = IsolationForest(n_estimators=options.n_estimators, contamination=options.contamination,
                             max_samples=options.max_samples, random_state=run.seed)
    detector = _sk.fit(forest, X, None, "anomaly", section=section, plugin="isolation-forest")
    run.log.info("isolation-forest: %d trees on %d rows x %d features", options.n_estimators, len(X), X.shape[1])
    return TrainedModel(estimator=detector, flavor=FLAVOR, task="anomaly",
                        params=_sk.lineage_params(detector, "sklearn.ensemble.IsolationForest"),
                        features=tuple(map(str, X.columns)))
