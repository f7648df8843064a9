"""XGBoost classifier or regressor (`hist`, early stopping, class imbalance, any XGBoost parameter).

The `xgboost` trainer fits `xgboost.XGBClassifier` or `XGBRegressor` (the
scikit-learn API, so the estimator has `predict`, `predict_proba` and
`classes_`) on every feature column of the preprocessed rows.

- Early stopping: the last `validation_fraction` of the rows in time order
  (all series together) when the data has a time column, else a stratified
  random split, is held out; training stops after `early_stopping_rounds`
  rounds without improvement and the best iteration is kept (`predict` uses
  it, and it is saved with the model). When the held-out rows of a
  classifier hold one class only (a quiet last stretch without incidents),
  early stopping could only learn "always normal": it is switched off for
  that fit, with a warning, and all `n_estimators` rounds run on all rows.
  Training rows whose target holds one class only are refused (a DataError
  naming the column and the class): such a model could not be loaded back.
  k-fold validation reports a fold refused this way as NaN, with a note.
- Class imbalance: `scale_pos_weight = "auto"` weighs positives by
  negatives / positives of the rows the booster is fitted on (binary only).
- Any XGBoost parameter passes through `params` verbatim (`device = "cuda"`,
  `max_bin`, `subsample`...); `params` win over the named options.
- Reproducible: `random_state` is the run's seed, so the same data and config
  give the same model, byte for byte.
- Features must be numeric, boolean or pandas `category` (then
  `enable_categorical` is switched on); text or date columns are a DataError
  naming them: encode them in a preprocess step. Class labels must be
  0..k-1.

Flavor `xgboost`: `model.ubj` in XGBoost's own UBJSON format (never pickle)
plus `xgboost.json` (task, classes, features, best iteration) to rebuild the
scikit-learn wrapper. `opsloop serve` scores it with `compile_predict`: up to
`WALK_ROWS` rows by walking the booster's trees in NumPy (`tree_predict`,
used only once it gave the C predict's numbers bit for bit on probe rows),
more rows with the booster's `inplace_predict` on the request's float32
features (its C call made directly, `dense_predict`): the numbers
`predict_proba`/`predict` give, value for value.

Options (`[train.xgboost]`): task, n_estimators, learning_rate, max_depth,
tree_method, early_stopping_rounds, validation_fraction, scale_pos_weight,
n_jobs, params; see `Options`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import NoFastPath, SearchParam, SearchSpace, TrainedModel, hookimpl
from opsloop.errors import BundleError, ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import pandas as pd

    from opsloop.bundle import LoadedModel
    from opsloop.rowops import FastPredict
    from opsloop.types import Dataset, RunContext

FLAVOR = "xgboost"
MODEL_FILE = "model.ubj"
META_FILE = "xgboost.json"
META_FORMAT = "opsloop.xgboost/1"
log = logging.getLogger("opsloop")


def _scale_pos_weight(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = value in ("auto", "none") or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    if not ok:
        raise ValueError(f'{attribute.name}: expected "auto", "none" or a positive number, got {value!r}')


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `xgboost` trainer (`[train.xgboost]`).

    Attributes:
        task: `"classification"` (XGBClassifier) or `"regression"` (XGBRegressor).
        n_estimators: Boosting rounds at most.
        learning_rate: Shrinkage per round (XGBoost's `eta`).
        max_depth: Depth of each tree.
        tree_method: XGBoost's tree method; `"hist"` is the fast default.
        early_stopping_rounds: Stop after this many rounds without improvement
            on the held-out rows; 0 disables early stopping (and the hold-out).
        validation_fraction: Share of rows held out for early stopping: the
            last ones in time order when the data has a time column, else a
            stratified random sample.
        scale_pos_weight: `"auto"` (negatives / positives, binary
            classification only), `"none"`, or a positive number.
        n_jobs: Threads; 0 means all cores.
        params: Any other XGBoost parameter, passed verbatim (for example
            `device = "cuda"`, `max_bin = 128`, `subsample = 0.8`); these win
            over the options above.
    """

    task: str = attrs.field(default="classification", validator=attrs.validators.in_(["classification", "regression"]))
    n_estimators: int = attrs.field(default=300, validator=attrs.validators.ge(1))
    learning_rate: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0),
                                                                attrs.validators.lt(float("inf"))])  # NaN too
    max_depth: int = attrs.field(default=6, validator=attrs.validators.ge(0))
    tree_method: str = "hist"
    early_stopping_rounds: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    validation_fraction: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    scale_pos_weight: Any = attrs.field(default="auto", validator=_scale_pos_weight)
    n_jobs: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    params: dict[str, Any] = attrs.field(factory=dict)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def tune_space(options: Options) -> SearchSpace:
    """What `opsloop tune` searches by default: depth, rate, rounds and the row and column sampling that
    XGBoost's own tuning guides start with; every other XGBoost parameter may be named too (set in
    `params`)."""
    import xgboost as xgb

    fields = {f.name for f in attrs.fields(Options)}
    model = xgb.XGBClassifier if options is None or options.task == "classification" else xgb.XGBRegressor
    return SearchSpace(
        params={"max_depth": SearchParam(low=3, high=10),
                "learning_rate": SearchParam(low=0.01, high=0.3, log=True),
                "n_estimators": SearchParam(low=100, high=600, step=50),
                "min_child_weight": SearchParam(low=1.0, high=20.0, log=True),
                "subsample": SearchParam(low=0.5, high=1.0),
                "colsample_bytree": SearchParam(low=0.5, high=1.0)},
        passthrough=set(model().get_params()) - fields)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def features_of(dataset: Dataset, plugin: str = "xgboost") -> tuple[pd.DataFrame, bool]:
    """The feature frame, and whether it holds categorical columns; DataError on text or dates."""
    import pandas as pd

    X = dataset.X
    if X.shape[1] == 0:
        raise DataError(f"{plugin}: dataset {dataset.name or '?'} has no feature columns")
    dtypes = X.dtypes  # once: a column lookup per feature costs more than the checks (once per fold)
    categorical = [c for c, d in dtypes.items() if isinstance(d, pd.CategoricalDtype)]
    bad = [f"{c} ({d})" for c, d in dtypes.items()
           if c not in categorical and not (pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d))]
    if bad:
        raise DataError(f"{plugin}: feature column(s) of dataset {dataset.name or '?'} are neither numeric, "
                        f"boolean nor category: {', '.join(bad)}; encode them in a preprocess step "
                        "or leave them out with [data] features")
    return X, bool(categorical)


def target_of(dataset: Dataset, task: str, plugin: str = "xgboost", unlabelled: str = "error") -> pd.Series:
    """The target column, checked for the task; DataError naming what is wrong (rows without a label: with what
    `[data] unlabelled`, whose value is `unlabelled`, can do about them)."""
    import numpy as np
    import pandas as pd

    if not dataset.target or dataset.target not in dataset.frame.columns:
        raise DataError(f"{plugin}: dataset {dataset.name or '?'} has no target column "
                        f"{dataset.target!r}; set [data] target to the label column")
    y = dataset.frame[dataset.target]
    if y.isna().any():
        from opsloop.data import missing_labels_error

        raise missing_labels_error(plugin, dataset, mode=unlabelled, supervised=True)
    if pd.api.types.is_bool_dtype(y):
        y = y.astype("int8")
    if not pd.api.types.is_numeric_dtype(y):
        raise DataError(f"{plugin}: target column {dataset.target!r} is {y.dtype}, not numeric")
    if task == "classification":
        classes = np.unique(y.to_numpy())
        if len(classes) < 2:  # a one-class model cannot be loaded back (issue 8): refuse it here
            from opsloop.data import one_class_error

            raise one_class_error(plugin, dataset, classes)
        if len(classes) > 50 or not np.array_equal(classes, np.arange(len(classes))):
            shown = ", ".join(map(str, classes[:10])) + (" ..." if len(classes) > 10 else "")
            raise DataError(f"{plugin}: classification needs class labels 0..k-1 in {dataset.target!r}, "
                            f"found {shown}; encode them, or use task = \"regression\"")
    return y


def holdout_mask(dataset: Dataset, fraction: float, seed: int, stratify: pd.Series | None) -> np.ndarray:
    """Boolean mask of the rows held out for early stopping (`Dataset.held_out`)."""
    return dataset.held_out(fraction, seed, stratify)


def build_params(options: Options, seed: int) -> dict[str, Any]:
    """Constructor arguments from the options; `params` win."""
    merged: dict[str, Any] = {
        "n_estimators": options.n_estimators,
        "learning_rate": options.learning_rate,
        "max_depth": options.max_depth,
        "tree_method": options.tree_method,
        "n_jobs": options.n_jobs or None,  # None: XGBoost uses every core
        "random_state": seed,
        "early_stopping_rounds": options.early_stopping_rounds or None,
    }
    if isinstance(options.scale_pos_weight, (int, float)):
        merged["scale_pos_weight"] = float(options.scale_pos_weight)
    merged.update(options.params)
    if merged.get("n_jobs") == 0:
        merged["n_jobs"] = None
    return merged


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit XGBoost on the rows, with early stopping on a held-out split."""
    import numpy as np
    import xgboost as xgb

    options = options or Options()
    X, categorical = features_of(dataset)
    config = getattr(run, "config", None)
    y = target_of(dataset, options.task, unlabelled=config.data.unlabelled if config is not None else "error")
    kwargs = build_params(options, run.seed)
    rounds = kwargs.get("early_stopping_rounds") or 0
    held = np.zeros(len(X), dtype=bool)
    if rounds:
        stratify = y if options.task == "classification" else None
        held = holdout_mask(dataset, options.validation_fraction, run.seed, stratify)
        if held.all() or not held.any():
            held[:] = False
            kwargs["early_stopping_rounds"] = rounds = None
        elif options.task == "classification" and len(np.unique(y[held])) < 2:
            # a quiet last stretch (no incident) would stop training on "always predict normal"
            run.log.warning("xgboost: the %d rows held out for early stopping hold one class only; "
                            "fitting %d rounds on all rows instead", int(held.sum()), options.n_estimators)
            held[:] = False
            kwargs["early_stopping_rounds"] = rounds = None
    fit_X, fit_y = (X[~held], y[~held]) if held.any() else (X, y)
    binary = options.task == "classification" and int(y.max()) <= 1
    if options.scale_pos_weight == "auto" and binary and "scale_pos_weight" not in options.params:
        positives = int(fit_y.sum())
        kwargs["scale_pos_weight"] = (len(fit_y) - positives) / positives if positives else 1.0
    cls = xgb.XGBClassifier if options.task == "classification" else xgb.XGBRegressor
    try:
        estimator = cls(enable_categorical=categorical, **kwargs)
        eval_set = [(X[held], y[held])] if held.any() else None
        estimator.fit(fit_X, fit_y, eval_set=eval_set, verbose=False)
    except TypeError as exc:  # an argument XGBoost's constructor or fit does not take
        raise ConfigError(f"XGBoost rejected a parameter: {exc}", section="train.xgboost", key="params") from exc
    effective = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
    effective.update(n_estimators=int(estimator.n_estimators), early_stopping_rounds=rounds or 0,
                     rows_fit=len(fit_y), rows_early_stopping=int(held.sum()))
    if rounds:
        effective.update(best_iteration=int(estimator.best_iteration), validation_fraction=options.validation_fraction)
    run.log.info("xgboost: %s on %d rows x %d features%s", options.task, len(fit_y), X.shape[1],
                 f", best iteration {effective['best_iteration']}" if rounds else "")
    return TrainedModel(estimator=estimator, flavor=FLAVOR, task=options.task, params=effective,
                        features=tuple(map(str, X.columns)))


# ---------------------------------------------------------------------------
# The `xgboost` flavor: UBJSON, never pickle
# ---------------------------------------------------------------------------


@hookimpl
def save_model(model: TrainedModel, path: Path) -> list[str] | None:
    """Write `model.ubj` (XGBoost's own format) and `xgboost.json`."""
    if model.flavor != FLAVOR:
        return None
    import xgboost as xgb

    estimator = model.estimator
    try:
        estimator.save_model(str(Path(path) / MODEL_FILE))
    except xgb.core.XGBoostError as exc:
        raise _write_failure(Path(path) / MODEL_FILE, exc) from None
    best = getattr(estimator.get_booster(), "best_iteration", None)
    meta = {
        "format": META_FORMAT,
        "task": model.task,
        "classes": [int(c) for c in estimator.classes_] if model.task == "classification" else None,
        "features": list(model.features),
        "n_features": int(estimator.n_features_in_),
        "best_iteration": None if best is None else int(best),
        "xgboost": xgb.__version__,
    }
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return [MODEL_FILE, META_FILE]


def _write_failure(file: Path, exc: Exception) -> Exception:
    """XGBoost's writer says only "FileStream.Write incomplete": an OSError with the system's reason if
    there is one to see (a full disk, no permission), else a BundleError with XGBoost's first line."""
    import errno
    import os

    with contextlib.suppress(OSError):
        if os.statvfs(file.parent).f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    if not os.access(file.parent, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BundleError(f"XGBoost could not write the model: {first}", file=str(file))


@hookimpl
def load_model(flavor: str, path: Path, manifest: dict[str, Any]) -> Any | None:
    """Rebuild XGBClassifier/XGBRegressor from `model.ubj`; BundleError on anything odd."""
    if flavor != FLAVOR:
        return None
    import xgboost as xgb

    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("the xgboost flavor needs xgboost.json, which is missing", file=str(path / META_FILE)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"xgboost.json is not valid JSON: {exc}", file=str(path / META_FILE)) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise BundleError(f"xgboost.json: unsupported format (expected {META_FORMAT})", file=str(path / META_FILE))
    task = meta.get("task", manifest.get("task"))
    estimator = xgb.XGBClassifier() if task == "classification" else xgb.XGBRegressor()
    try:
        estimator.load_model(str(path / MODEL_FILE))
    except (xgb.core.XGBoostError, TypeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"not a valid XGBoost model: {first}", file=str(path / MODEL_FILE)) from None
    if int(estimator.n_features_in_) != int(meta.get("n_features", -1)):
        raise BundleError(f"model has {estimator.n_features_in_} features, xgboost.json says {meta.get('n_features')}",
                          file=str(path / MODEL_FILE))
    classes = meta.get("classes")
    if task == "classification" and classes is not None and len(estimator.classes_) != len(classes):
        raise BundleError(f"model has {len(estimator.classes_)} classes, xgboost.json says {len(classes)}",
                          file=str(path / MODEL_FILE))
    best = meta.get("best_iteration")
    if best is not None and estimator.best_iteration != best:
        raise BundleError(f"model's best iteration {estimator.best_iteration} differs from xgboost.json's {best}",
                          file=str(path / MODEL_FILE))
    return estimator


# ---------------------------------------------------------------------------
# The server's fast predict
# ---------------------------------------------------------------------------


def binary_labels(p: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels from P(class 1) as `classes[predict_proba(X).argmax(axis=1)]` gives them, without the stacking.

    XGBClassifier.predict_proba stacks (1 - p, p) in float32; argmax takes
    class 1 only when its column is strictly larger (a tie goes to class 0).
    """
    import numpy as np

    return classes[(p > (1.0 - p)).astype(np.intp)]


def dense_predict(booster: Any, rounds: tuple[int, int], missing: float) -> Callable[[np.ndarray], np.ndarray]:
    """`booster.inplace_predict(x, iteration_range=rounds, missing=missing, validate_features=False)` for a
    C-contiguous float32 matrix, as one call of the C function it makes (`XGBoosterPredictFromDense`, with the
    arguments it builds, made once here) and a copy of the output: the same numbers, without the per-call
    Python of xgboost 3's wrapper (a class built per call, JSON encoding, type checks), about half of a
    one-row predict's time (issue 13, item 5). Any other matrix, or an xgboost without these pieces, takes
    `inplace_predict` itself."""
    import ctypes

    import numpy as np

    def inplace(x: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(x, iteration_range=rounds, missing=missing, validate_features=False)

    try:
        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

        call = _LIB.XGBoosterPredictFromDense
    except (ImportError, AttributeError):
        return inplace
    # what inplace_predict passes for predict_type "value", no base margin, strict_shape False
    args = make_jcargs(type=0, training=False, iteration_begin=int(rounds[0]), iteration_end=int(rounds[1]),
                       missing=missing, strict_shape=False, cache_id=0)
    handle, no_proxy = booster.handle, ctypes.c_void_p()
    interface = b'{"data": [%d, false], "strides": null, "descr": [["", "<f4"]], "typestr": "<f4", ' \
                b'"shape": [%d, %d], "version": 3}'  # x.__array_interface__, as xgboost encodes it
    float_p, ulong_p, byref = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(c_bst_ulong), ctypes.byref
    memmove, float32 = ctypes.memmove, np.float32

    def predict(x: np.ndarray) -> np.ndarray:
        if x.dtype != float32 or x.ndim != 2 or not x.flags.c_contiguous or not x.size:
            return inplace(x)
        preds, shape, dims = float_p(), ulong_p(), c_bst_ulong()
        _check_call(call(handle, interface % (x.ctypes.data, x.shape[0], x.shape[1]), args, no_proxy,
                         byref(shape), byref(dims), byref(preds)))
        out = np.empty(tuple(shape[i] for i in range(dims.value)), dtype=float32)
        if out.size:
            memmove(out.ctypes.data, preds, out.nbytes)
        return out
    return predict


#: Up to this many rows, the fast predict walks the trees in NumPy (`tree_predict`); more rows take the C predict,
#: which is faster on a batch.
WALK_ROWS = 16
#: Objectives `tree_predict` knows how to finish: the margin's transform, as XGBoost's C++ code computes it.
SIGMOID_OBJECTIVES = frozenset({"binary:logistic", "reg:logistic"})
IDENTITY_OBJECTIVES = frozenset({"binary:logitraw", "reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"})


def _libm() -> Any:
    """The C library's `expf` and `logf` (what XGBoost's transforms call), or None where ctypes cannot find them."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("m")
    if not name:
        return None
    try:
        libm = ctypes.CDLL(name)
    except OSError:
        return None
    for fn in (libm.expf, libm.logf):
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return libm


def tree_predict(booster: Any, rounds: tuple[int, int]) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """`booster.inplace_predict(x, iteration_range=rounds)` for a few float32 rows, computed in NumPy from the
    booster's own trees (`_trees.Forest`): about a fifth of the C predict's time on one row, where XGBoost's
    per-call set-up dominates (issue 13, item 5). Returns `(predict, "")`, or `(None, reason)` for a model it
    does not cover: a booster other than gbtree, categorical splits, several outputs or parallel trees, an
    objective outside `SIGMOID_OBJECTIVES` and `IDENTITY_OBJECTIVES`.

    As XGBoost computes it: a row goes left where its feature is < the split (float32), a missing value where
    the node says (`default_left`); the margin is the base score's margin plus the leaves, added tree after tree
    in float32; the transform is XGBoost's `common::Sigmoid` with the C library's `expf`. `walked_predict`
    checks the result against the C predict before the server uses it."""
    import numpy as np

    from opsloop.plugins._trees import Forest

    model = json.loads(booster.save_raw(raw_format="json"))
    learner = model["learner"]
    gbm = learner["gradient_booster"]
    if gbm.get("name") != "gbtree":
        return None, f"booster {gbm.get('name')!r}"
    objective = learner["objective"]["name"]
    if objective not in SIGMOID_OBJECTIVES | IDENTITY_OBJECTIVES:
        return None, f"objective {objective!r}"
    param = learner["learner_model_param"]
    if int(param.get("num_class", 0)) > 1 or int(param.get("num_target", 1)) != 1:
        return None, "several outputs"
    if int(gbm["model"]["gbtree_model_param"].get("num_parallel_tree", 1)) != 1:
        return None, "parallel trees"
    trees = gbm["model"]["trees"]
    begin, end = int(rounds[0]), int(rounds[1]) or len(trees)
    trees = trees[begin:end]
    if not trees or any(any(tree["split_type"]) for tree in trees):
        return None, "categorical splits" if trees else "no trees"
    libm = _libm() if objective in SIGMOID_OBJECTIVES else None
    if objective in SIGMOID_OBJECTIVES and libm is None:
        return None, "no C library expf"

    def depth(tree: dict[str, Any]) -> int:
        left, right, deepest, level = tree["left_children"], tree["right_children"], 0, [0]
        while level:
            level = [c for k in level if left[k] >= 0 for c in (left[k], right[k])]
            deepest += bool(level)
        return deepest

    conditions = np.concatenate([np.asarray(t["split_conditions"], dtype=np.float32) for t in trees])
    forest = Forest(
        feature=np.concatenate([t["split_indices"] for t in trees]),
        threshold=conditions,
        left=np.concatenate([t["left_children"] for t in trees]),
        right=np.concatenate([t["right_children"] for t in trees]),
        missing_left=np.concatenate([np.asarray(t["default_left"], dtype=bool) for t in trees]),
        value=conditions,  # a leaf's split condition is its value
        sizes=np.array([int(t["tree_param"]["num_nodes"]) for t in trees]),
        depth=max(depth(t) for t in trees),
        goes_right=np.greater_equal,  # left where x < split, both float32
    )
    f32 = np.float32
    score = json.loads(param["base_score"]) if param["base_score"].startswith("[") else [param["base_score"]]
    base = f32(float(score[0]))
    if libm is not None:  # ProbToMargin of the logistic objectives: -logf(1.0f / base_score - 1.0f)
        base = f32(-libm.logf(float(f32(f32(1.0) / base - f32(1.0)))))
    count = forest.trees

    def predict(x: np.ndarray) -> np.ndarray:
        leaves = forest.leaves(x)
        terms = np.empty((len(leaves), count + 1), dtype=f32)
        terms[:, 0], terms[:, 1:] = base, leaves
        margin = np.cumsum(terms, axis=1, dtype=f32)[:, -1]  # tree after tree, in float32
        if libm is None:
            return margin
        expf, cap = libm.expf, f32(88.7)  # common::Sigmoid: 1 / (expf(min(-x, 88.7)) + 1 + 1e-16), float32
        e = np.array([expf(v) for v in np.minimum(-margin, cap).tolist()], dtype=f32)
        return f32(1.0) / (e + f32(1.0) + f32(1e-16))

    predict.forest = forest  # type: ignore[attr-defined]  # for its probe rows
    return predict, ""


def walked_predict(booster: Any, rounds: tuple[int, int], missing: float,
                   dense: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`dense`, with up to `WALK_ROWS` float32 rows of the model's width answered by `tree_predict` instead,
    when `tree_predict` covers the model and gives the C predict's numbers bit for bit on the forest's probe
    rows (`_trees.Forest.probe_rows`; each alone and all together). Otherwise `dense` itself, with the reason
    logged at debug level. Only NaN is a missing value to the walk: another `missing` takes `dense`."""
    import math

    import numpy as np

    walk, reason = tree_predict(booster, rounds) if math.isnan(missing) else (None, f"missing = {missing!r}")
    if walk is not None:
        probes = walk.forest.probe_rows(booster.num_features())
        want = dense(probes)
        alone = np.concatenate([walk(probes[i:i + 1]) for i in range(len(probes))])
        if not (np.array_equal(walk(probes), want) and np.array_equal(alone, want)):
            walk, reason = None, "its numbers differ from the C predict's on probe rows"
    if walk is None:
        log.debug("xgboost fast predict: the C predict for every batch (%s)", reason)
        return dense
    width, float32 = booster.num_features(), np.float32

    def predict(x: np.ndarray) -> np.ndarray:
        if (x.ndim != 2 or x.shape[0] > WALK_ROWS or not x.shape[0] or x.shape[1] != width or x.dtype != float32
                or not x.flags.c_contiguous):
            return dense(x)
        return walk(x)
    return predict


@hookimpl
def compile_predict(model: LoadedModel, threads: int) -> FastPredict | None:
    """What `predictions_frame` computes from `predict_proba`/`predict`, on the float32 feature matrix (no
    DMatrix, no frame): a few rows by `walked_predict`'s walk of the trees, more by the booster's
    `inplace_predict`; the same numbers with any thread count."""
    if model.manifest.get("flavor") != FLAVOR:
        return None
    import numpy as np

    estimator = model.estimator
    booster = estimator.get_booster()
    if threads:
        booster.set_param({"nthread": threads})
    rounds = estimator._get_iteration_range(None)  # XGBoost's own rule: best_iteration + 1 when early-stopped
    missing = estimator.missing
    task = model.task
    objective = estimator.objective if isinstance(estimator.objective, str) else ""
    dense = walked_predict(booster, rounds, missing, dense_predict(booster, rounds, missing))
    if task == "regression":
        def regress(x: np.ndarray) -> tuple[np.ndarray, None]:
            return dense(x), None
        return regress
    if task != "classification":
        raise NoFastPath(f"task {task!r} of an xgboost bundle")
    classes = np.asarray(estimator.classes_)
    raw = objective.startswith(("binary:logistic", "multi:softprob"))

    def classify(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if raw:
            p = dense(x)
            if p.ndim == 1 and len(classes) == 2:
                return binary_labels(p, classes), p
            proba = p if p.ndim == 2 else np.vstack((1.0 - p, p)).transpose()
        else:
            proba = np.asarray(estimator.predict_proba(x))
        score = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
        return classes[proba.argmax(axis=1)], score
    return classify
