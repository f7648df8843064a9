"""COPOD: copula-based outlier scores from each feature's empirical CDF; parameter-free, no labels needed.

The `pyod-copod` trainer fits PyOD's `COPOD` on every feature column (a target
column, if present, is never read when fitting). Li et al., COPOD: Copula-Based Outlier Detection (ICDM 2020). PyOD recommends ECOD, its refined successor.

Scoring is inductive (see `opsloop_pyod._scoring`): PyOD's own COPOD
`decision_function` ranks new rows together with the training rows, so a
row's score would depend on the rest of its batch; here each row is placed in
the training rows' per-feature ECDFs with PyOD's formulas, as PyOD scores a
row that comes alone. Flavor `pyod` (`opsloop_pyod._flavor`): JSON and
NumPy arrays, no pickle.

Options (`[train.pyod-copod]`): contamination; see `Options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from opsloop import hookimpl

from opsloop_pyod import _train
from opsloop_pyod._flavor import compile_predict, load_model, save_model
from opsloop_pyod._scoring import EcdfScorer

if TYPE_CHECKING:
    import numpy as np

    from opsloop import TrainedModel
    from opsloop.types import Dataset, RunContext

__all__ = ["Options", "compile_predict", "load_model", "plugin_options", "save_model", "train"]
PLUGIN = "pyod-copod"


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `pyod-copod` trainer (`[train.pyod-copod]`).

    Attributes:
        contamination: Expected share of anomalies in the training rows, in
            (0, 0.5]: sets the threshold between 1 and 0 (PyOD's
            `threshold_`), used when no validator chose an alert threshold.
    """

    contamination: float = attrs.field(default=0.1, validator=_train.contamination)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit PyOD's COPOD on the feature columns, without labels, and keep its training ECDFs."""
    options = options or Options()

    def build(X: np.ndarray) -> EcdfScorer:
        from pyod.models.copod import COPOD

        detector = COPOD(contamination=options.contamination).fit(X)
        return EcdfScorer.fit("copod", detector.X_train)

    return _train.fit(PLUGIN, dataset, run, estimator="pyod.models.copod.COPOD", options=options, build=build)
