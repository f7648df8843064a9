"""Outlier clipping: bounds numeric features by quantiles learned from the training rows.

A counter that wraps, a sensor that spikes or a metric reported in the wrong
unit can put a value far outside anything seen in training; clipping holds
each numeric feature within its training quantiles (0.1% and 99.9% by
default), so one wild value cannot dominate a scaler or a distance. The
bounds are the state: scoring clips with training's bounds. Integer columns
get integer bounds (rounded outwards) and stay integer; float32 stays
float32; missing values stay missing.

Options (`[preprocess.clip]`):
    lower_quantile: Quantile of the lower bound (default 0.001).
    upper_quantile: Quantile of the upper bound (default 0.999).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl
from opsloop.plugins.scale import numeric_features, replace_columns

if TYPE_CHECKING:
    import numpy as np

    from opsloop.rowops import RowContext, RowLayout, RowOp


def _quantile(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"'{attribute.name}' must be a number between 0 and 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `clip`.

    Attributes:
        lower_quantile: Values below this training quantile are raised to it
            (0 = the training minimum).
        upper_quantile: Values above this training quantile are lowered to
            it (1 = the training maximum). Must exceed `lower_quantile`.
    """

    lower_quantile: float = attrs.field(default=0.001, validator=_quantile)
    upper_quantile: float = attrs.field(default=0.999, validator=_quantile)

    def __attrs_post_init__(self) -> None:
        if self.lower_quantile >= self.upper_quantile:
            raise ValueError(f"'lower_quantile' ({self.lower_quantile}) must be below "
                             f"'upper_quantile' ({self.upper_quantile})")


@hookimpl
def plugin_options() -> type:
    return Options


def _bound(value: Any, integer: bool, rounding: Any) -> float | int | None:
    value = float(value)
    if not math.isfinite(value):
        return None  # entirely missing at training: no bound
    return int(rounding(value)) if integer else value


def fit(dataset: Dataset, options: Options) -> dict[str, Any]:
    """Lower and upper bound per numeric feature column."""
    from pandas.api import types as pt

    frame = dataset.frame
    columns = numeric_features(dataset)
    if not columns:
        return {"lower": {}, "upper": {}}
    q = frame[columns].astype("float64").quantile([options.lower_quantile, options.upper_quantile])
    lo, hi = q.iloc[0], q.iloc[1]
    ints = {c: pt.is_integer_dtype(frame[c].dtype) for c in columns}
    return {
        "lower": {c: _bound(lo[c], ints[c], math.floor) for c in columns},
        "upper": {c: _bound(hi[c], ints[c], math.ceil) for c in columns},
    }


def bounds(state: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The columns with both bounds, and their lower and upper bounds as float64 arrays in that order."""
    import numpy as np

    lower, upper = state["lower"], state["upper"]
    columns = [c for c in lower if lower[c] is not None and upper[c] is not None]
    lo = np.array([lower[c] for c in columns], dtype=np.float64)
    hi = np.array([upper[c] for c in columns], dtype=np.float64)
    return columns, lo, hi


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """Clip each learned column to its bounds."""
    import numpy as np

    frame = dataset.frame
    missing = [c for c in state["lower"] if c not in frame.columns]
    if missing:
        raise DataError(f"clip: column(s) {', '.join(missing)} were clipped at training but are missing "
                        f"from {dataset.name or 'the rows'}")
    columns, lo, hi = bounds(state)
    if not columns:
        return dataset
    values = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    outside = ((values < lo) | (values > hi)).any(axis=0)
    if not outside.any():
        return dataset  # nothing to clip: the same rows
    clipped = np.clip(values, lo, hi)
    new = {c: clipped[:, j] for j, c in enumerate(columns) if outside[j]}
    dtypes = {c: frame[c].dtype if frame[c].dtype.kind in "fiu" else np.float64 for c in new}
    return dataset.derive(replace_columns(frame, new, dtypes))


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn bounds (fit) or clip with the stored ones (replay)."""
    options = options if options is not None else Options()
    if state is None:
        state = fit(dataset, options)
    return Preprocessed(dataset=apply(dataset, state), state=state)


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> RowOp | None:
    """The server's fast path: `np.clip` with the stored `bounds` on the work matrix, as `apply` clips (integer
    columns stay whole: their bounds are whole; float32 columns are rounded after)."""
    import numpy as np

    columns, lo, hi = bounds(state)
    if not columns:
        return None
    idx = layout.columns(columns)
    for c in columns:
        if layout.dtypes[c][:1] not in ("f", "i", "u"):
            layout.dtypes[c] = "float64"
    round_ = layout.rounding(columns)

    def clip(work: np.ndarray, rows: RowContext) -> None:
        work[:, idx] = np.clip(work[:, idx], lo, hi)
        if round_:
            round_(work, rows)
    return clip


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.clip(data, options)
