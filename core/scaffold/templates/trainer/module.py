"""$title: a logistic-regression trainer for opsloop, on standardised features.

Fits scikit-learn's `LogisticRegression` behind a `StandardScaler` on every
feature column and returns it with the `sklearn` flavor, so opsloop's own
`sklearn` plugin saves it with skops and loads it back without running code
from the file (no pickle). Replace the estimator in `train` with yours; a
model scikit-learn cannot hold needs its own flavor (`save_model` and
`load_model`, docs/hooks.md in opsloop).

Options (`[train.$name]`): see `Options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, RunContext, TrainedModel, hookimpl

if TYPE_CHECKING:
    import pandas as pd

#: Saved and loaded by opsloop's `sklearn` plugin (skops, a list of trusted types: never pickle).
FLAVOR = "sklearn"
PLUGIN = "$name"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[train.$name]`).

    Attributes:
        c: Inverse regularisation strength (scikit-learn's `C`): smaller is simpler.
        max_iter: Iterations the solver may take.
        balanced: Weigh the classes by their inverse frequency (incidents are rare).
    """

    c: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    max_iter: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    balanced: bool = True


@hookimpl
def plugin_options() -> type:
    return Options


def features(dataset: Dataset) -> pd.DataFrame:
    """The feature columns; a DataError naming any that are not numeric."""
    import pandas as pd

    X = dataset.X
    if X.shape[1] == 0:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no feature columns")
    bad = [f"{c} ({X[c].dtype})" for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if bad:
        raise DataError(f"{PLUGIN}: feature column(s) of dataset {dataset.name or '?'} are not numeric: "
                        f"{', '.join(bad)}; encode them in a preprocess step or leave them out with [data] features")
    return X


def labels(dataset: Dataset) -> pd.Series:
    """The target: present, without gaps, with two classes (a one-class classifier learns nothing)."""
    from opsloop.data import missing_labels_error, one_class_error

    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no target column ({dataset.target!r}); "
                        "set [data] target")
    y = dataset.frame[dataset.target]
    if y.isna().any():
        raise missing_labels_error(PLUGIN, dataset, supervised=True)
    if y.nunique() < 2:
        raise one_class_error(PLUGIN, dataset, y.unique())
    return y


@hookimpl
def train(dataset: Dataset, options: Options | None, run: RunContext) -> TrainedModel:
    """Fit the scaler and the logistic regression on the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    options = options or Options()
    X, y = features(dataset), labels(dataset)
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=options.c, max_iter=options.max_iter, class_weight="balanced" if options.balanced else None,
        random_state=run.seed))
    try:
        model.fit(X, y)
    except ValueError as exc:  # scikit-learn's word on rows it cannot take (infinities, say)
        raise DataError(f"{PLUGIN}: cannot fit dataset {dataset.name or '?'}: {exc}") from exc
    run.log.info("%s: logistic regression on %d rows x %d features", PLUGIN, len(X), X.shape[1])
    params: dict[str, Any] = {"c": options.c, "max_iter": options.max_iter, "balanced": options.balanced}
    return TrainedModel(estimator=model, flavor=FLAVOR, task="classification", params=params,
                        features=tuple(map(str, X.columns)))


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _trainer: kinds.Trainer = $module
    _configurable: kinds.Configurable = $module
