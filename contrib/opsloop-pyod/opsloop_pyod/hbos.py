"""HBOS: histogram-based outlier scores, one histogram per feature; fast, no labels needed.

The `pyod-hbos` trainer fits PyOD's `HBOS` on every feature column (a target
column, if present, is never read when fitting): a row's anomaly score is
minus the sum over features of log2(density of its bin + alpha). Goldstein
and Dengel, Histogram-based Outlier Score (KI 2012).

HBOS scores each row on its own in PyOD too; the histograms are stored as
NumPy arrays (flavor `pyod`, no pickle) and scored by a vectorised copy of
PyOD's lookup, so serving needs neither PyOD nor numba.

Options (`[train.pyod-hbos]`): n_bins, alpha, tol, contamination; see `Options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import hookimpl

from opsloop_pyod import _train
from opsloop_pyod._flavor import compile_predict, load_model, save_model
from opsloop_pyod._scoring import HbosScorer

if TYPE_CHECKING:
    import numpy as np

    from opsloop import TrainedModel
    from opsloop.types import Dataset, RunContext

__all__ = ["Options", "compile_predict", "load_model", "plugin_options", "save_model", "train"]
PLUGIN = "pyod-hbos"


def _n_bins(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 2)):
        raise ValueError(f'{attribute.name}: expected a bin count >= 2 or "auto", got {value!r}')


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `pyod-hbos` trainer (`[train.pyod-hbos]`).

    Attributes:
        n_bins: Bins per feature histogram, >= 2, or `"auto"` (Birgé and
            Rozenholc's rule, per feature).
        alpha: Added to each density before the log, in (0, 1): keeps an
            empty bin's score finite.
        tol: A value at most `tol` bin widths outside the histogram takes
            the edge bin's density, in (0, 1); farther out, the lowest.
        contamination: Expected share of anomalies in the training rows, in
            (0, 0.5]: sets the threshold between 1 and 0 (PyOD's
            `threshold_`), used when no validator chose an alert threshold.
    """

    n_bins: Any = attrs.field(default=10, validator=_n_bins)
    alpha: float = attrs.field(default=0.1, validator=_train.open_fraction)
    tol: float = attrs.field(default=0.5, validator=_train.open_fraction)
    contamination: float = attrs.field(default=0.1, validator=_train.contamination)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit PyOD's HBOS on the feature columns, without labels, and keep its histograms."""
    options = options or Options()

    def build(X: np.ndarray) -> HbosScorer:
        from pyod.models.hbos import HBOS

        detector = HBOS(n_bins=options.n_bins, alpha=options.alpha, tol=options.tol,
                        contamination=options.contamination).fit(X)
        return HbosScorer.from_pyod(detector)

    return _train.fit(PLUGIN, dataset, run, estimator="pyod.models.hbos.HBOS", options=options, build=build)
