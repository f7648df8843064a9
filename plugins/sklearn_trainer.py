"""Any scikit-learn estimator, named by import path, with its parameters; saved with skops.

The `sklearn` trainer imports the class `estimator` names (for example
`sklearn.ensemble.RandomForestClassifier`), builds it with `params` and fits
it on every feature column. Only classes under `sklearn.` may be named,
unless `allow_modules` admits more; the seed goes to `random_state` when the
estimator takes one and `params` does not set it, so runs are reproducible.

Tasks: `classification` (the estimator needs `predict_proba`), `regression`,
and `anomaly` for an unsupervised outlier detector (fitted without labels;
`predict` then says 1 for an anomaly and 0 for normal, see
`_skops_flavor.AnomalyLabels`).

Features must be numeric, boolean or pandas `category`; text or date columns
are a DataError naming them. For classification, training rows whose target
holds one class only are a DataError naming the column and the class.

Flavor `sklearn`: `model.skops`, loaded with an explicit list of trusted
types (see `opsloop.plugins._skops_flavor`); a bundle carrying any other
type is refused.

Options (`[train.sklearn]`): estimator, params, task, allow_modules; see `Options`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import SearchSpace, TrainedModel, hookimpl
from opsloop.errors import ConfigError, DataError, closest
from opsloop.plugins._skops_flavor import FLAVOR, AnomalyLabels, compile_predict, load_model, save_model
from opsloop.plugins._skops_flavor import refusal as skops_refusal
from opsloop.plugins._skops_flavor import split_types as skops_types

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.types import Dataset, RunContext

__all__ = ["Options", "compile_predict", "load_model", "plugin_options", "save_model", "skops_refusal", "skops_types",
           "train", "tune_space"]

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
TASKS = ("classification", "regression", "anomaly")


def module_allowed(module: str, allow_modules: list[str] | tuple[str, ...]) -> bool:
    """Whether `module` is `sklearn`, one of `allow_modules`, or under one of them."""
    return any(module == m or module.startswith(m + ".") for m in ("sklearn", *allow_modules))


def _estimator_path(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _DOTTED.match(value):
        raise ValueError(f"{attribute.name}: expected an import path such as "
                         f"\"sklearn.ensemble.RandomForestClassifier\", got {value!r}")
    module = value.rpartition(".")[0]
    if not module_allowed(module, inst.allow_modules):
        raise ValueError(f"{attribute.name}: {value!r} is not under sklearn; add {module.split('.')[0]!r} "
                         "to allow_modules to use it")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `sklearn` trainer (`[train.sklearn]`).

    Attributes:
        estimator: Import path of the estimator class.
        params: Keyword arguments for the class, passed verbatim.
        task: `"classification"`, `"regression"` or `"anomaly"`.
        allow_modules: Top-level modules besides `sklearn` whose estimators
            may be named (for example `["lightgbm"]`). Loading their models
            also needs `OPSLOOP_TRUSTED_MODULES` to name them.
    """

    estimator: str = attrs.field(default="sklearn.ensemble.RandomForestClassifier", validator=_estimator_path)
    params: dict[str, Any] = attrs.field(factory=dict)
    task: str = attrs.field(default="classification", validator=attrs.validators.in_(TASKS))
    allow_modules: list[str] = attrs.field(factory=list)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def tune_space(options: Options) -> SearchSpace:
    """The estimator's keyword arguments may be searched (set in `params`); no default range, since the
    estimator is any class: name them in `[tune.params]`."""
    options = options or Options()
    cls = estimator_class(options.estimator, section="train.sklearn")
    try:
        names = set(cls().get_params()) if hasattr(cls, "get_params") else set(inspect.signature(cls).parameters)
    except TypeError:
        names = set(inspect.signature(cls).parameters)
    return SearchSpace(passthrough=names)


def numeric_features(dataset: Dataset, plugin: str) -> pd.DataFrame:
    """The feature frame; DataError naming the columns that are not numeric, boolean or category."""
    import pandas as pd

    X = dataset.X
    if X.shape[1] == 0:
        raise DataError(f"{plugin}: dataset {dataset.name or '?'} has no feature columns")
    bad = [f"{c} ({X[c].dtype})" for c in X.columns
           if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])
                   or isinstance(X[c].dtype, pd.CategoricalDtype))]
    if bad:
        raise DataError(f"{plugin}: feature column(s) of dataset {dataset.name or '?'} are not numeric: "
                        f"{', '.join(bad)}; encode them in a preprocess step or leave them out with [data] features")
    return X


def labels(dataset: Dataset, task: str, plugin: str, run: RunContext | None = None) -> pd.Series:
    """The target column; DataError when it is absent or has gaps (naming `[data] unlabelled`)."""
    import pandas as pd

    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{plugin}: task {task!r} needs a target column, dataset {dataset.name or '?'} has "
                        f"none ({dataset.target!r}); set [data] target")
    y = dataset.frame[dataset.target]
    if y.isna().any():
        from opsloop.data import missing_labels_error

        mode = run.config.data.unlabelled if run is not None and run.config is not None else "error"
        raise missing_labels_error(plugin, dataset, mode=mode, supervised=True)
    if task == "regression" and not pd.api.types.is_numeric_dtype(y):
        raise DataError(f"{plugin}: regression needs a numeric target, {dataset.target!r} is {y.dtype}")
    if task == "classification" and y.nunique() == 1:  # issue 8: a one-class "classifier" learns nothing
        from opsloop.data import one_class_error

        raise one_class_error(plugin, dataset, y.unique())
    return y


def estimator_class(path: str, *, section: str) -> type:
    """Import the class an `estimator` option names; ConfigError with the closest name otherwise."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", section=section, key="estimator") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        public = [n for n in dir(module) if not n.startswith("_") and isinstance(getattr(module, n), type)]
        raise ConfigError(f"{module_name} has no class {name!r}", section=section, key="estimator",
                          suggestion=closest(name, public) and f"{module_name}.{closest(name, public)}")
    if not callable(getattr(cls, "fit", None)):
        raise ConfigError(f"{path} is not an estimator (it has no fit method)", section=section, key="estimator")
    return cls


def build(cls: type, params: dict[str, Any], seed: int, *, section: str) -> Any:
    """An estimator instance; the seed fills `random_state` unless `params` sets it."""
    kwargs = dict(params)
    try:
        takes_seed = "random_state" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_seed = False
    if takes_seed and "random_state" not in kwargs:
        kwargs["random_state"] = seed
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__} rejected its parameters: {exc}", section=section, key="params") from None


def fit(estimator: Any, X: Any, y: Any, task: str, *, section: str, plugin: str) -> Any:
    """Fit for the task, turning parameter and data errors into clear ones; anomaly detectors come wrapped."""
    from sklearn.utils._param_validation import InvalidParameterError

    name = type(estimator).__name__
    try:
        if task == "anomaly":
            estimator.fit(X)
        else:
            estimator.fit(X, y)
    except InvalidParameterError as exc:
        raise ConfigError(f"{name}: {exc}", section=section, key="params") from None
    except ValueError as exc:
        raise DataError(f"{plugin}: {name} cannot fit these rows: {exc}") from exc
    if task == "classification" and not hasattr(estimator, "predict_proba"):
        raise ConfigError(f"{name} has no predict_proba, which classification needs for scores; choose a "
                          "probabilistic classifier (or its probability option)", section=section, key="estimator")
    if task == "anomaly":
        if not hasattr(estimator, "predict") or not hasattr(estimator, "decision_function"):
            raise ConfigError(f"{name} cannot score new rows as an outlier detector (no predict/decision_function;"
                              " LocalOutlierFactor needs novelty = true)", section=section, key="estimator")
        return AnomalyLabels(estimator)
    return estimator


def lineage_params(estimator: Any, path: str) -> dict[str, Any]:
    """The estimator's parameters, JSON-able, for lineage and `models show`."""
    inner = estimator.estimator if isinstance(estimator, AnomalyLabels) else estimator
    out: dict[str, Any] = {"estimator": path}
    for key, value in inner.get_params(deep=False).items():
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list)) else repr(value)
    return out


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Build the named estimator and fit it on the rows."""
    options = options or Options()
    section = "train.sklearn"
    X = numeric_features(dataset, "sklearn")
    y = None if options.task == "anomaly" else labels(dataset, options.task, "sklearn", run)
    cls = estimator_class(options.estimator, section=section)
    estimator = fit(build(cls, options.params, run.seed, section=section), X, y, options.task,
                    section=section, plugin="sklearn")
    run.log.info("sklearn: %s (%s) on %d rows x %d features", cls.__name__, options.task, len(X), X.shape[1])
    return TrainedModel(estimator=estimator, flavor=FLAVOR, task=options.task,
                        params=lineage_params(estimator, options.estimator), features=tuple(map(str, X.columns)))
