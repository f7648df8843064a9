"""`dask-xgboost` on partitioned training rows (a `[data] source` read by `dask-parquet`).

The preprocessed partitions stay on the workers (the runner persisted them there); they are handed to
`xgboost.dask.DaskXGBClassifier` as they are. Early stopping holds out the last `validation_fraction` of
the distinct time steps, selected per partition; `scale_pos_weight = "auto"` counts classes per partition.
Only counts, the distinct time steps and the booster come back to this process.
"""

from __future__ import annotations

from typing import Any

from opsloop import TrainedModel
from opsloop.errors import ConfigError, DataError


def _times(part: Any, time: str) -> Any:
    return part[time].dropna().unique()


def _classes(part: Any, target: str) -> dict[Any, int]:
    counts = part[target].value_counts(dropna=False)
    return {(None if k != k else k): int(v) for k, v in counts.items()}


def _pick(part: Any, columns: Any) -> Any:
    return part[columns]


def _features32(part: Any, columns: Any) -> Any:
    return part[columns].astype("float32")


def _xy(frame: Any, features: list[str], target: str) -> tuple[Any, Any]:
    """X and y from whole partitions (a column projection pushed into the Parquet reader could otherwise fuse
    the label's partitions differently from the features', which XGBoost refuses); X as float32, which is
    what XGBoost turns every value into anyway, so that a worker holds half the bytes while it builds its
    matrix (the same model: XGBoost's own float64 -> float32 conversion)."""
    return (frame.map_partitions(_features32, features, meta=frame._meta[features].astype("float32")),
            frame.map_partitions(_pick, target, meta=frame._meta[target]))


def _balanced(client: Any, X: Any, y: Any) -> tuple[Any, Any]:
    """X and y computed on the workers in turn, partition i preferably on worker i mod n: XGBoost builds each worker's
    matrix from the partitions that worker holds, and the carried windows tie neighbouring partitions
    together, which would otherwise draw most of them to one worker."""
    import dask.dataframe as dd

    workers = sorted(client.scheduler_info()["workers"])
    xs, ys = [], []
    for i, (px, py) in enumerate(zip(X.to_delayed(), y.to_delayed(), strict=True)):
        fx, fy = client.compute([px, py], workers=[workers[i % len(workers)]], allow_other_workers=True)
        xs.append(fx)
        ys.append(fy)
    return (dd.from_delayed(xs, meta=X._meta, verify_meta=False),
            dd.from_delayed(ys, meta=y._meta, verify_meta=False))


def train(dataset: Any, options: Any, run: Any) -> TrainedModel:
    import numpy as np
    import pandas as pd
    import xgboost.dask as dxgb

    from opsloop_dask.cluster import client_for, where
    from opsloop_dask.trainer import FLAVOR, PLUGIN, _local, _params

    client = client_for(options, PLUGIN)
    meta = dataset.meta
    features = dataset.feature_columns
    target, time = dataset.target, dataset.time
    if not features:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no feature columns")
    bad = [f"{c} ({d})" for c, d in meta[features].dtypes.items()
           if not (pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d))]
    if bad:
        raise DataError(f"{PLUGIN}: feature column(s) of dataset {dataset.name or '?'} are neither numeric nor "
                        f"boolean: {', '.join(bad)}; encode them in a preprocess step or leave them out with "
                        "[data] features")
    if not target or target not in meta.columns:
        raise DataError(f"{PLUGIN}: dataset {dataset.name or '?'} has no target column {target!r}; set [data] "
                        "target to the label column")
    counts: dict[Any, int] = {}
    for part in dataset.collect(_classes, target):
        for k, v in part.items():
            counts[k] = counts.get(k, 0) + v
    if None in counts:
        raise DataError(f"{PLUGIN}: {counts[None]:,} rows of dataset {dataset.name or '?'} have no label (target "
                        f"column {target!r}); set [data] unlabelled to \"normal\" or \"drop\"")
    classes = sorted(counts)
    if options.task == "classification":
        if len(classes) < 2:
            raise DataError(f"{PLUGIN}: target column {target!r} holds one class only ({classes[0] if classes else '-'!r}"
                            f") in the {sum(counts.values()):,} training rows of dataset {dataset.name or '?'}; "
                            "a classifier needs at least two")
        if classes != list(range(len(classes))):
            raise DataError(f"{PLUGIN}: classification needs class labels 0..k-1 in {target!r}, found "
                            f"{', '.join(map(str, classes[:10]))}")
    kwargs = _params(options, run.seed)
    rounds = kwargs.get("early_stopping_rounds") or 0
    frame = dataset.frame
    fit_frame, held_frame = frame, None
    if rounds and time and time in meta.columns:
        steps = np.unique(np.concatenate([np.asarray(t) for t in dataset.collect(_times, time)]))
        cut = min(max(round(len(steps) * (1 - options.validation_fraction)), 1), len(steps) - 1) if len(steps) > 1 else 0
        if cut:
            held_frame = frame[frame[time] >= steps[cut]]
            fit_frame = frame[frame[time] < steps[cut]]
            held_classes = client.compute(held_frame[target].nunique()).result() if options.task == "classification" else 2
            if held_classes < 2:
                run.log.warning("%s: the rows held out for early stopping hold one class only; fitting %d "
                                "rounds on all rows instead", PLUGIN, options.n_estimators)
                fit_frame, held_frame = frame, None
    if held_frame is None:
        kwargs["early_stopping_rounds"] = rounds = None
    fit_counts = dict(counts) if held_frame is None else \
        {k: int(v) for k, v in client.compute(fit_frame[target].value_counts()).result().items()}
    rows_fit = sum(fit_counts.values())
    if options.scale_pos_weight == "auto" and options.task == "classification" and max(classes) <= 1 \
            and "scale_pos_weight" not in options.params:
        positives = fit_counts.get(1, 0)
        kwargs["scale_pos_weight"] = (rows_fit - positives) / positives if positives else 1.0
    cls = dxgb.DaskXGBClassifier if options.task == "classification" else dxgb.DaskXGBRegressor
    try:
        with client.as_current():
            estimator = cls(**kwargs)
            estimator.client = client
            eval_set = [_balanced(client, *_xy(held_frame, features, target))] if held_frame is not None else None
            estimator.fit(*_balanced(client, *_xy(fit_frame, features, target)), eval_set=eval_set, verbose=False)
    except TypeError as exc:
        raise ConfigError(f"XGBoost rejected a parameter: {exc}", section=f"train.{PLUGIN}", key="params") from exc
    model = _local(estimator, options.task)
    effective = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
    effective.update(n_estimators=options.params.get("n_estimators", options.n_estimators),
                     early_stopping_rounds=rounds or 0, rows_fit=rows_fit,
                     rows_early_stopping=sum(counts.values()) - rows_fit,
                     dask_partitions=frame.npartitions, dask_workers=len(client.nthreads()), partitioned=True)
    if rounds:
        effective.update(best_iteration=int(model.best_iteration), validation_fraction=options.validation_fraction)
    run.log.info("%s: %s on %d partitioned rows x %d features, %d partitions on %s", PLUGIN, options.task,
                 rows_fit, len(features), frame.npartitions, where(options))
    return TrainedModel(estimator=model, flavor=FLAVOR, task=options.task, params=effective,
                        features=tuple(map(str, features)))
