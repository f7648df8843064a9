"""A typed trainer that is also its own flavor: logistic regression stored as JSON coefficients (no pickle).

Checked by mypy against `kinds.Trainer`, `kinds.Flavor` and `kinds.Configurable` (tests/core/test_kinds.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import hookimpl
from opsloop.types import Dataset, RunContext, TrainedModel

if TYPE_CHECKING:
    from opsloop.bundle import ModelFiles

FLAVOR = "typed-logistic"


@attrs.frozen(kw_only=True)
class Options:
    """`[train.typed-trainer]`: the inverse regularisation strength."""

    c: float = 1.0


class Logistic:
    """Scores rows with stored centres, scales and coefficients: what `load_model` rebuilds from `model.json`."""

    def __init__(self, columns: list[str], centre: list[float], scale: list[float], coef: list[float],
                 intercept: float) -> None:
        self.columns, self.centre, self.scale, self.coef, self.intercept = columns, centre, scale, coef, intercept

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "centre": self.centre, "scale": self.scale, "coef": self.coef,
                "intercept": self.intercept}

    def predict_proba(self, frame: Any) -> Any:
        import numpy as np

        x = (frame[self.columns].to_numpy("float64") - np.array(self.centre)) / np.array(self.scale)
        p = 1.0 / (1.0 + np.exp(-(x @ np.array(self.coef) + self.intercept)))
        return np.column_stack([1.0 - p, p])

    def predict(self, frame: Any) -> Any:
        return (self.predict_proba(frame)[:, 1] >= 0.5).astype("int64")


@hookimpl
def plugin_options() -> type[Options]:
    return Options


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    from sklearn.linear_model import LogisticRegression

    columns = list(dataset.feature_columns)
    x = dataset.X.to_numpy("float64")
    centre, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    fitted = LogisticRegression(C=options.c, class_weight="balanced", max_iter=1000)
    fitted.fit((x - centre) / scale, dataset.y.to_numpy())
    estimator = Logistic(columns, [float(v) for v in centre], [float(v) for v in scale],
                         [float(v) for v in fitted.coef_[0]], float(fitted.intercept_[0]))
    return TrainedModel(estimator=estimator, flavor=FLAVOR, task="classification", params={"c": options.c},
                        features=tuple(columns))


@hookimpl
def save_model(model: TrainedModel, path: Path, models: ModelFiles) -> list[str] | None:
    if model.flavor != FLAVOR:
        return None
    (path / "model.json").write_text(json.dumps(model.estimator.to_json()))
    return ["model.json"]


@hookimpl
def load_model(flavor: str, path: Path, manifest: dict[str, Any], models: ModelFiles) -> Logistic | None:
    if flavor != FLAVOR:
        return None
    saved = json.loads((path / "model.json").read_text())
    numbers = [*saved["centre"], *saved["scale"], *saved["coef"], saved["intercept"]]
    if not all(isinstance(v, float) and math.isfinite(v) for v in numbers):
        raise ValueError(f"{path / 'model.json'}: a coefficient is not a finite number")
    return Logistic(list(saved["columns"]), saved["centre"], saved["scale"], saved["coef"], saved["intercept"])


if TYPE_CHECKING:
    import typed_trainer

    from opsloop import kinds

    _trainer: kinds.Trainer = typed_trainer
    _flavor: kinds.Flavor = typed_trainer
    _configurable: kinds.Configurable = typed_trainer
