"""`dask-xgboost`: the `xgboost` trainer, fitted on a Dask cluster with XGBoost's own Dask interface.

Its options are the built-in `xgboost` trainer's (same names, same defaults,
same meaning), plus where to run (`ClusterOptions`): switching `[train]
plugins` from `xgboost` to `dask-xgboost` changes nothing else in the config.
The rows the runner hands over are split into `partitions` Dask partitions,
spread over the workers, and fitted with `xgboost.dask.DaskXGBClassifier` (or
`DaskXGBRegressor`): every worker builds histograms on its partitions and
XGBoost's collective all-reduces them, so each tree is the one a single
process would grow from the same histograms.

The fitted booster comes back as an ordinary `xgboost.XGBClassifier` /
`XGBRegressor` in the built-in trainer's flavor, `xgboost`: the built-in
plugin saves it (XGBoost's UBJSON, never pickle), `opsloop serve` loads and
scores it (its fast path included) and `opsloop models` shows it like any
other version. The cluster is needed for training only.

As in the built-in trainer: early stopping holds out the last
`validation_fraction` of the time steps (a stratified random sample without
a time column), switched off with a warning when the held-out rows of a
classifier hold one class; `scale_pos_weight = "auto"` weighs positives by
negatives / positives; `params` pass any XGBoost parameter verbatim and win;
`random_state` is the run's seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from opsloop import SearchSpace, TrainedModel, hookimpl
from opsloop.errors import ConfigError, DataError

from opsloop_dask.cluster import ClusterOptions, client_for, documented, where

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.types import Dataset, RunContext

PLUGIN = "dask-xgboost"
#: The flavor of the built-in `xgboost` trainer, whose plugin saves and loads the model.
FLAVOR = "xgboost"
#: Option names of the built-in `xgboost` trainer (the ones this trainer mirrors).
XGBOOST_OPTIONS = ("task", "n_estimators", "learning_rate", "max_depth", "tree_method", "early_stopping_rounds",
                   "validation_fraction", "scale_pos_weight", "n_jobs", "params")


def _scale_pos_weight(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = value in ("auto", "none") or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    if not ok:
        raise ValueError(f'{attribute.name}: expected "auto", "none" or a positive number, got {value!r}')


@documented
@attrs.frozen(kw_only=True)
class Options(ClusterOptions):
    """Options of `dask-xgboost` (`[train.dask-xgboost]`): the `xgboost` trainer's, and the cluster's.

    Attributes:
        task: `"classification"` or `"regression"`.
        n_estimators: Boosting rounds at most.
        learning_rate: Shrinkage per round.
        max_depth: Depth of each tree.
        tree_method: `"hist"` (or `"approx"`; XGBoost's Dask interface has no `"exact"`).
        early_stopping_rounds: Stop after this many rounds without improvement on the held-out rows; 0: off.
        validation_fraction: Share of rows held out for early stopping (the last time steps).
        scale_pos_weight: `"auto"`, `"none"` or a positive number.
        n_jobs: Threads per worker; 0: each worker's own thread count.
        params: Any other XGBoost parameter, verbatim; wins over the above.
        partitions: Dask partitions the rows are split into; 0: two per
            worker thread of the cluster.
    """

    task: str = attrs.field(default="classification", validator=attrs.validators.in_(["classification", "regression"]))
    n_estimators: int = attrs.field(default=300, validator=attrs.validators.ge(1))
    learning_rate: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0),
                                                                attrs.validators.lt(float("inf"))])
    max_depth: int = attrs.field(default=6, validator=attrs.validators.ge(0))
    tree_method: str = attrs.field(default="hist", validator=attrs.validators.in_(["hist", "approx"]))
    early_stopping_rounds: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    validation_fraction: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    scale_pos_weight: Any = attrs.field(default="auto", validator=_scale_pos_weight)
    n_jobs: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    params: dict[str, Any] = attrs.field(factory=dict)
    partitions: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: Takes partitioned training rows (a `[data] source` read by `dask-parquet`; opsloop_dask.partitioned_train).
    partitioned: ClassVar[bool] = True


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def tune_space(options: Options | None) -> SearchSpace | None:
    """The built-in `xgboost` trainer's space (asked through the plugin system: plugins do not import each
    other), less the names that are this trainer's own options."""
    from opsloop.manager import PluginManager

    plugins = PluginManager()
    if "xgboost" not in plugins.known:
        return None
    plugins.load("xgboost", where=f"{PLUGIN} tune_space")
    cls = plugins.options_class("xgboost")
    mirrored = {} if options is None else {k: getattr(options, k) for k in XGBOOST_OPTIONS}
    base = plugins.call("xgboost", "tune_space", options=cls(**mirrored) if cls is not None else None)
    if base is None:
        return None
    own = {f.name for f in attrs.fields(Options)}
    return SearchSpace(params=dict(base.params), passthrough=set(base.passthrough) - own)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _features(dataset: Dataset) -> pd.DataFrame:
    import pandas as pd

    X = dataset.X
    if X.shape[1] == 0:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no feature columns")
    bad = [f"{c} ({d})" for c, d in X.dtypes.items()
           if not (pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d))]
    if bad:  # categorical columns too: XGBoost's Dask interface needs their categories known on every partition
        raise DataError(f"{PLUGIN}: feature column(s) of dataset {dataset.name or '?'} are neither numeric nor "
                        f"boolean: {', '.join(bad)}; encode them in a preprocess step or leave them out with "
                        "[data] features")
    return X


def _target(dataset: Dataset, task: str, run: RunContext) -> pd.Series:
    import numpy as np
    import pandas as pd

    from opsloop.data import missing_labels_error, one_class_error

    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no target column {dataset.target!r}; "
                        "set [data] target to the label column")
    y = dataset.frame[dataset.target]
    if y.isna().any():
        config = getattr(run, "config", None)
        raise missing_labels_error(PLUGIN, dataset, mode=config.data.unlabelled if config else "error",
                                   supervised=True)
    if pd.api.types.is_bool_dtype(y):
        y = y.astype("int8")
    if not pd.api.types.is_numeric_dtype(y):
        raise DataError(f"{PLUGIN}: target column {dataset.target!r} is {y.dtype}, not numeric")
    if task == "classification":
        classes = np.unique(y.to_numpy())
        if len(classes) < 2:
            raise one_class_error(PLUGIN, dataset, classes)
        if not np.array_equal(classes, np.arange(len(classes))):
            raise DataError(f"{PLUGIN}: classification needs class labels 0..k-1 in {dataset.target!r}, found "
                            f"{', '.join(map(str, classes[:10]))}; encode them, or use task = \"regression\"")
    return y


def _params(options: Options, seed: int) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "n_estimators": options.n_estimators, "learning_rate": options.learning_rate,
        "max_depth": options.max_depth, "tree_method": options.tree_method,
        "n_jobs": options.n_jobs or None, "random_state": seed,
        "early_stopping_rounds": options.early_stopping_rounds or None,
    }
    if isinstance(options.scale_pos_weight, (int, float)):
        merged["scale_pos_weight"] = float(options.scale_pos_weight)
    merged.update(options.params)
    if merged.get("n_jobs") == 0:
        merged["n_jobs"] = None
    return merged


def _partitions(options: Options, client: Any, rows: int) -> int:
    if options.partitions:
        wanted = options.partitions
    else:
        threads = sum(client.nthreads().values()) or 1
        wanted = 2 * threads
    return max(1, min(wanted, rows))


@hookimpl
def train(dataset: Dataset, options: Options | None, run: RunContext) -> TrainedModel:
    """Fit XGBoost on the cluster; return the model as the built-in `xgboost` trainer would."""
    import dask.dataframe as dd
    import numpy as np
    import xgboost.dask as dxgb

    options = options or Options()
    if not isinstance(dataset.frame, pd_frame_type()):  # partitioned rows, kept on the workers
        from opsloop_dask import partitioned_train

        return partitioned_train.train(dataset, options, run)
    client = client_for(options, PLUGIN)  # first: an unreachable scheduler fails before any work
    X = _features(dataset)
    y = _target(dataset, options.task, run)
    kwargs = _params(options, run.seed)
    rounds = kwargs.get("early_stopping_rounds") or 0
    held = np.zeros(len(X), dtype=bool)
    if rounds:
        held = dataset.held_out(options.validation_fraction, run.seed,
                         y if options.task == "classification" else None)
        if held.all() or not held.any():
            held[:] = False
            kwargs["early_stopping_rounds"] = rounds = None
        elif options.task == "classification" and len(np.unique(y[held])) < 2:
            run.log.warning("%s: the %d rows held out for early stopping hold one class only; fitting %d rounds "
                            "on all rows instead", PLUGIN, int(held.sum()), options.n_estimators)
            held[:] = False
            kwargs["early_stopping_rounds"] = rounds = None
    fit_X, fit_y = (X[~held], y[~held]) if held.any() else (X, y)
    if options.scale_pos_weight == "auto" and options.task == "classification" and int(y.max()) <= 1 \
            and "scale_pos_weight" not in options.params:
        positives = int(fit_y.sum())
        kwargs["scale_pos_weight"] = (len(fit_y) - positives) / positives if positives else 1.0

    parts = _partitions(options, client, len(fit_X))

    def scattered(features: pd.DataFrame, target: pd.Series, npartitions: int) -> tuple[Any, Any]:
        # One frame, then its columns: X and y share partitions, so nothing needs aligning on the cluster.
        frame = features.assign(**{"__target__": target.to_numpy()}).reset_index(drop=True)
        whole = client.persist(dd.from_pandas(frame, npartitions=npartitions, sort=False))
        return whole[list(features.columns)], whole["__target__"]

    cls = dxgb.DaskXGBClassifier if options.task == "classification" else dxgb.DaskXGBRegressor
    try:
        # the Dask collections below compute on this cluster, whatever client is the process' default
        with client.as_current():
            estimator = cls(**kwargs)
            estimator.client = client
            dX, dy = scattered(fit_X, fit_y, parts)
            eval_set = [scattered(X[held], y[held], max(1, min(parts, int(held.sum()))))] if held.any() else None
            estimator.fit(dX, dy, eval_set=eval_set, verbose=False)
    except TypeError as exc:  # an argument XGBoost does not take
        raise ConfigError(f"XGBoost rejected a parameter: {exc}", section=f"train.{PLUGIN}", key="params") from exc
    model = _local(estimator, options.task)
    effective = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
    effective.update(n_estimators=options.params.get("n_estimators", options.n_estimators),
                     early_stopping_rounds=rounds or 0, rows_fit=len(fit_y), rows_early_stopping=int(held.sum()),
                     dask_partitions=parts, dask_workers=len(client.nthreads()))
    if rounds:
        effective.update(best_iteration=int(model.best_iteration), validation_fraction=options.validation_fraction)
    run.log.info("%s: %s on %d rows x %d features, %d partitions on %s%s", PLUGIN, options.task, len(fit_y),
                 X.shape[1], parts, where(options),
                 f", best iteration {effective['best_iteration']}" if rounds else "")
    return TrainedModel(estimator=model, flavor=FLAVOR, task=options.task, params=effective,
                        features=tuple(map(str, X.columns)))


def pd_frame_type() -> type:
    import pandas as pd

    return pd.DataFrame


def _local(estimator: Any, task: str) -> Any:
    """The Dask estimator's booster as a plain `XGBClassifier`/`XGBRegressor`: written by the Dask wrapper in
    XGBoost's own format (with its scikit-learn attributes: classes, best iteration) and read back by the
    plain wrapper, which is what the built-in flavor saves and `opsloop serve` loads."""
    import xgboost as xgb

    model = xgb.XGBClassifier() if task == "classification" else xgb.XGBRegressor()
    with tempfile.TemporaryDirectory(prefix="opsloop-dask-") as tmp:
        path = Path(tmp) / "model.ubj"
        estimator.save_model(str(path))
        model.load_model(str(path))
    return model
