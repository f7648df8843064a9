"""Label horizon: turns "incident now" into "incident within the next N steps", for early warning.

A model trained on the per-step label learns to recognise an incident that is
already happening. With a horizon of N steps the target of a row becomes 1
when the row itself or any of the next N rows of the same series (ordered by
`[data] time`) is positive, so the model learns to raise the alarm up to N
steps ahead. Only the target changes; features are untouched.

At the end of a series the future is unknown: the last N rows look only at
the rows that exist, so a row whose incident would begin just after the data
ends stays 0. A row whose own label is missing (NaN) stays missing unless a
known positive lies within its horizon. When scoring rows that carry no
target, the rows pass through unchanged; when they carry one (validation,
monitoring on a labelled period), it is transformed with the stored horizon.

Options (`[preprocess.label-horizon]`):
    horizon: Steps to look ahead, at least 1 (default 12: an hour of
        5-minute steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl
from opsloop.plugins.rolling_features import series_order

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.rowops import RowLayout


def _horizon(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an integer >= 1 (steps ahead), got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `label-horizon`.

    Attributes:
        horizon: A row's target becomes 1 when it or any of the next
            `horizon` rows of its series is positive.
    """

    horizon: int = attrs.field(default=12, validator=_horizon)


@hookimpl
def plugin_options() -> type:
    return Options


def _positives(target: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Which rows are positive (> 0 or True) and which are unknown (missing)."""
    import numpy as np
    from pandas.api import types as pt

    if not (pt.is_numeric_dtype(target.dtype) or pt.is_bool_dtype(target.dtype)):
        raise DataError(f"label-horizon: target {name!r} must be 0/1 (numeric or boolean), "
                        f"got dtype {target.dtype}")
    unknown = target.isna().to_numpy()
    values = target.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.nan_to_num(values, nan=0.0) > 0, unknown


def look_ahead(frame: pd.DataFrame, target: str, horizon: int, series: str | None, time: str | None) -> pd.Series:
    """The target with each row set to 1 when a positive lies within `horizon` rows ahead in its series."""
    import numpy as np
    import pandas as pd
    from pandas.api import types as pt

    y = frame[target]
    positive, unknown = _positives(y, target)
    n = len(frame)
    order, starts = series_order(frame, series, time)
    if order is not None:
        positive, unknown = positive[order], unknown[order]
    pos = np.arange(n)
    # The first positive at or after each row (n when none), found by a backward running minimum;
    # it counts only when it lies in the row's own series (same series start) and within the horizon.
    nxt = np.minimum.accumulate(np.where(positive, pos, n)[::-1])[::-1]
    inside = nxt < n
    same = np.zeros(n, dtype=bool)
    same[inside] = starts[nxt[inside]] == starts[inside]
    hit = inside & same & (nxt - pos <= horizon)
    result = np.where(hit, 1.0, np.where(unknown, np.nan, 0.0))
    if order is not None:
        back = np.empty(n, dtype=np.float64)
        back[order] = result
        result = back
    if np.isnan(result).any():
        dtype = y.dtype if pt.is_float_dtype(y.dtype) else np.float64
    else:
        dtype = y.dtype
    return pd.Series(result, index=frame.index, name=target).astype(dtype)


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """Transform the target with the stored horizon; rows without a target pass through."""
    frame = dataset.frame
    if not dataset.target or dataset.target not in frame.columns:
        return dataset
    for meta in ("series", "time"):
        col = getattr(dataset, meta)
        if col and col not in frame.columns:
            raise DataError(f"label-horizon: the {meta} column {col!r} is missing from {dataset.name or 'the rows'}")
    target = look_ahead(frame, dataset.target, int(state["horizon"]), dataset.series, dataset.time)
    return dataset.derive(frame.assign(**{dataset.target: target}))


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn nothing but the horizon (fit); look ahead with the stored horizon (replay)."""
    options = options if options is not None else Options()
    if state is None:
        if not dataset.target or dataset.target not in dataset.frame.columns:
            raise DataError(f"label-horizon needs a target column to fit; {dataset.name or 'the rows'} "
                            "have none (set [data] target)")
        state = {"horizon": options.horizon}
    return Preprocessed(dataset=apply(dataset, state), state=state)


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> None:
    """No row operation for the server's fast path: requests carry no target, the only column this step changes."""
    return None


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.label_horizon(data, options)
