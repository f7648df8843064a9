"""What `pyod-ecod` and `pyod-copod` share: one option, and a trainer that keeps the training rows' ECDFs.

Both detectors score a row from each feature's empirical CDF of the training
rows (`opsloop_pyod._scoring.EcdfScorer`); they differ in the formula, which
`EcdfScorer` takes by name. Each plugin module (ecod.py, copod.py) is the
entry point and names its PyOD class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from opsloop_pyod import _train
from opsloop_pyod._scoring import EcdfScorer

if TYPE_CHECKING:
    import numpy as np

    from opsloop import TrainedModel
    from opsloop.types import Dataset, RunContext


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `pyod-ecod` and `pyod-copod` trainers (`[train.pyod-ecod]`, `[train.pyod-copod]`).

    Attributes:
        contamination: Expected share of anomalies in the training rows, in
            (0, 0.5]: sets the threshold between 1 and 0 (PyOD's
            `threshold_`), used when no validator chose an alert threshold.
    """

    contamination: float = attrs.field(default=0.1, validator=_train.contamination)


def trainer(plugin: str, kind: str, estimator: str) -> Callable[[Dataset, Options, RunContext], TrainedModel]:
    """The `train` hook of `plugin`: fit PyOD's `estimator` (a dotted class name, e.g.
    `"pyod.models.ecod.ECOD"`) on the feature columns, without labels, and keep its training ECDFs."""

    def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
        options = options or Options()

        def build(X: np.ndarray) -> EcdfScorer:
            module, name = estimator.rsplit(".", 1)
            detector = getattr(importlib.import_module(module), name)(contamination=options.contamination).fit(X)
            return EcdfScorer.fit(kind, detector.X_train)

        return _train.fit(plugin, dataset, run, estimator=estimator, options=options, build=build)

    train.__doc__ = f"Fit PyOD's {estimator.rsplit('.', 1)[1]} on the feature columns, without labels."
    return train
