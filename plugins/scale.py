"""Scaling: centers and scales numeric features with statistics learned from the training rows.

`standard` subtracts the mean and divides by the standard deviation;
`minmax` maps the training range onto [0, 1]; `robust` subtracts the median
and divides by the interquartile range, so that the outliers telemetry is
full of do not set the scale. A column whose scale is zero (constant) or
unknown (entirely missing) is divided by 1. Only numeric, non-boolean
feature columns are scaled; float32 stays float32, integers become float64.
Missing values stay missing.

Options (`[preprocess.scale]`):
    method: "standard" (default), "minmax" or "robust".
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.rowops import RowContext, RowLayout, RowOp


def _one_of(*choices: str) -> Any:
    """An attrs validator with a one-line message (attrs' `in_` puts a tuple in its ValueError)."""
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return check


@attrs.frozen(kw_only=True)
class Options:
    """Options of `scale`.

    Attributes:
        method: "standard" (mean and standard deviation), "minmax" (minimum
            and range) or "robust" (median and interquartile range).
    """

    method: str = attrs.field(default="standard",
                              validator=_one_of("standard", "minmax", "robust"))


@hookimpl
def plugin_options() -> type:
    return Options


def numeric_features(dataset: Dataset) -> list[str]:
    """Feature columns holding numbers (booleans excluded)."""
    from pandas.api import types as pt

    frame = dataset.frame
    return [c for c in dataset.feature_columns
            if pt.is_numeric_dtype(frame[c].dtype) and not pt.is_bool_dtype(frame[c].dtype)]


def replace_columns(frame: pd.DataFrame, new: dict[str, np.ndarray], dtypes: dict[str, Any]) -> pd.DataFrame:
    """A new frame with some columns' values replaced (cast to `dtypes`), column order and index kept."""
    import pandas as pd

    data = {c: (pd.Series(new[c], index=frame.index, name=c).astype(dtypes[c]) if c in new else frame[c])
            for c in frame.columns}
    return pd.DataFrame(data, index=frame.index, columns=frame.columns)


def _clean(value: Any, default: float, *, zero_ok: bool = True) -> float:
    """A JSON-safe statistic: NaN/inf (entirely missing column) and, for scales, zero become `default`."""
    value = float(value)
    if not math.isfinite(value) or (value == 0.0 and not zero_ok):
        return default
    return value


def fit(frame: pd.DataFrame, columns: list[str], method: str) -> dict[str, Any]:
    """Center and scale per column."""
    values = frame[columns].astype("float64")  # statistics in double precision, whatever the storage
    if method == "standard":
        center, scale = values.mean(), values.std(ddof=0)
    elif method == "minmax":
        center = values.min()
        scale = values.max() - center
    else:
        q = values.quantile([0.25, 0.5, 0.75])
        center, scale = q.loc[0.5], q.loc[0.75] - q.loc[0.25]
    return {
        "method": method,
        "center": {c: _clean(center[c], 0.0) for c in columns},
        "scale": {c: _clean(scale[c], 1.0, zero_ok=False) for c in columns},
    }


def statistics(state: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The learned columns, and their centers and scales as float64 arrays in that order."""
    import numpy as np

    columns = list(state["center"])
    center = np.array([state["center"][c] for c in columns], dtype=np.float64)
    scale = np.array([state["scale"][c] for c in columns], dtype=np.float64)
    return columns, center, scale


def scaled(values: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - center) / scale in float64: the arithmetic of both `apply` and the server's row operation."""
    return (values - center) / scale


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """(x - center) / scale per learned column."""
    import numpy as np

    frame = dataset.frame
    columns, center, scale = statistics(state)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"scale: column(s) {', '.join(missing)} were scaled at training but are missing "
                        f"from {dataset.name or 'the rows'}")
    if not columns:
        return dataset
    values = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    out = scaled(values, center, scale)
    new = {c: out[:, j] for j, c in enumerate(columns)}
    dtypes = {c: frame[c].dtype if frame[c].dtype.kind == "f" else np.float64 for c in columns}
    return dataset.derive(replace_columns(frame, new, dtypes))


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn centers and scales (fit) or apply the stored ones (replay)."""
    options = options if options is not None else Options()
    if state is None:
        state = fit(dataset.frame, numeric_features(dataset), options.method)
    return Preprocessed(dataset=apply(dataset, state), state=state)


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> RowOp | None:
    """The server's fast path: `scaled` on the work matrix; float32 columns rounded after, integers widened to
    float64, as `apply` stores them."""
    columns, center, scale = statistics(state)
    if not columns:
        return None
    idx = layout.columns(columns)
    for c in columns:  # float columns keep their dtype, the others become float64
        if not layout.dtypes[c].startswith("float"):
            layout.dtypes[c] = "float64"
    round_ = layout.rounding(columns)

    def scale_(work: np.ndarray, rows: RowContext) -> None:
        work[:, idx] = scaled(work[:, idx], center, scale)
        if round_:
            round_(work, rows)
    return scale_


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.scale(data, options)
