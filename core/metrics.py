"""Metrics shared by validators and monitors (scikit-learn imported lazily)."""

from __future__ import annotations

from typing import Any

import math

CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
REGRESSION = ("mae", "rmse", "r2")


def classification(y_true: Any, y_pred: Any, y_score: Any | None = None, undefined: float = 0.0) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (binary: of class 1; else macro), plus ROC AUC and PR AUC
    when scores are given and both classes occur (NaN otherwise).

    `undefined` is what precision, recall and F1 report when they divide by
    zero (no predicted, no actual positives): 0 as scikit-learn does, or NaN
    where a mean over folds should skip a block that holds no incident."""
    import numpy as np
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    binary = set(labels.tolist()) <= {0, 1}
    average = "binary" if binary else "macro"
    # one pass for the three (what precision_score, recall_score and f1_score each compute alone)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average,
                                                                   zero_division=undefined)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
    if y_score is not None and binary:
        both = len(np.unique(y_true)) == 2
        out["roc_auc"] = float(skm.roc_auc_score(y_true, y_score)) if both else math.nan
        out["pr_auc"] = float(skm.average_precision_score(y_true, y_score)) if both else math.nan
    return out


def regression(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAE, RMSE and R2."""
    import numpy as np
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else math.nan,
    }


def for_task(task: str, y_true: Any, predictions: Any, undefined: float = 0.0) -> dict[str, float]:
    """Metrics for a task from a predictions frame (`prediction`, optional `score`); `undefined` as in
    `classification`."""
    if task == "regression":
        return regression(y_true, predictions["prediction"])
    score = predictions["score"] if "score" in predictions else None
    return classification(y_true, predictions["prediction"], score, undefined)


def summarize(folds: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation of each metric over folds, ignoring NaN."""
    import numpy as np

    keys = list(dict.fromkeys(k for f in folds for k in f))
    mean, std = {}, {}
    for k in keys:
        values = np.array([f.get(k, math.nan) for f in folds], dtype=float)
        finite = values[~np.isnan(values)]
        mean[k] = float(finite.mean()) if finite.size else math.nan
        std[k] = float(finite.std()) if finite.size else math.nan
    return mean, std
