"""Telemetry features: rolling-window statistics of each metric, computed only from the past.

For every selected numeric feature column and every window of `w` rows it
adds `<column>__<stat><w>` (for example `m01__mean12`), where the statistic
looks at the current row and the `w - 1` rows before it in the same series,
never at a later row, so that a feature at time t is known at time t:
- `mean`, `min`, `max`: over the window; the first rows of a series use the
  rows there are (at least one);
- `std`: population standard deviation (ddof=0), so one row gives 0, not NaN;
- `rate`: rate of change, `(x[t] - x[t - w]) / w`; where the series is
  younger than `w` rows, the change since its first row divided by the rows
  elapsed (0 on the first row).

When the rows hold several machines (`[data] series`), each is computed on
its own rows alone, ordered by `[data] time` when there is one; the output
keeps the input's row order. Missing values are skipped by mean, std, min and
max and propagate into `rate`. float32 metrics give float32 features.

Serving replays the same columns, windows and statistics. A row's features
depend only on the values inside its windows, never on older history, so a
request that carries the last `max(windows) + 1` steps of a series gets, bit
for bit, the features training computed for its newest row.

Options (`[preprocess.rolling-features]`):
    windows: Window lengths in rows (default [6, 12]).
    stats: Any of "mean", "std", "min", "max", "rate" (default all five).
    columns: Columns to compute from (default: every numeric feature column).
    keep_original: Keep the source columns (default true).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl
from opsloop.plugins.scale import numeric_features

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STATS = ("mean", "std", "min", "max", "rate")
NAME = "{column}__{stat}{window}"


def _windows(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"'{attribute.name}' must be a non-empty list of window lengths in rows, got {value!r}")
    for w in value:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"'{attribute.name}' must hold integers >= 1 (rows), got {w!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"'{attribute.name}' lists a window twice: {list(value)}")


def _stats(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"'{attribute.name}' must be a non-empty list of {', '.join(STATS)}, got {value!r}")
    for s in value:
        if s not in STATS:
            raise ValueError(f"'{attribute.name}': unknown statistic {s!r}; choose from {', '.join(STATS)}")
    if len(set(value)) != len(value):
        raise ValueError(f"'{attribute.name}' lists a statistic twice: {list(value)}")


def _columns(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
        raise TypeError(f"'{attribute.name}' must be a non-empty list of column names (or left out for all "
                        f"numeric features), got {value!r}")


def _boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{attribute.name}' must be true or false, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `rolling-features`.

    Attributes:
        windows: Window lengths, in rows (steps) of one series.
        stats: Statistics to compute: "mean", "std", "min", "max", "rate".
        columns: Numeric feature columns to compute from; None means every
            numeric feature column.
        keep_original: Keep the source columns next to their features.
    """

    windows: list[int] = attrs.field(factory=lambda: [6, 12], validator=_windows)
    stats: list[str] = attrs.field(factory=lambda: list(STATS), validator=_stats)
    columns: list[str] | None = attrs.field(default=None, validator=_columns)
    keep_original: bool = attrs.field(default=True, validator=_boolean)


@hookimpl
def plugin_options() -> type:
    return Options


def fit(dataset: Dataset, options: Options) -> dict[str, Any]:
    """Resolve the columns; the state is everything replay needs to build the same columns."""
    numeric = numeric_features(dataset)
    if options.columns is None:
        columns = numeric
    else:
        columns = list(options.columns)
        wrong = [c for c in columns if c not in numeric]
        if wrong:
            raise DataError(f"rolling-features: column(s) {', '.join(wrong)} are not numeric feature columns "
                            f"of {dataset.name or 'the rows'} (numeric features: {', '.join(numeric) or 'none'})")
    return {"columns": columns, "windows": list(options.windows), "stats": list(options.stats),
            "keep_original": options.keep_original, "series": dataset.series, "time": dataset.time}


def feature_names(state: dict[str, Any]) -> list[str]:
    """The added columns, in output order: by column, then window, then statistic."""
    return [NAME.format(column=c, stat=s, window=w)
            for c in state["columns"] for w in state["windows"] for s in state["stats"]]


def series_order(frame: pd.DataFrame, series: str | None, time: str | None) -> tuple[np.ndarray | None, np.ndarray]:
    """Row order grouping each series together, in time order (stable), and group starts.

    Returns:
        The permutation (None when the rows are already in that order) and,
        for each row in that order, the position where its series begins.
    """
    import numpy as np
    import pandas as pd

    n = len(frame)
    keys = []
    if time is not None:
        keys.append(pd.factorize(frame[time], sort=True)[0])
    codes = pd.factorize(frame[series], sort=False)[0] if series is not None else np.zeros(n, dtype=np.int64)
    keys.append(codes)
    order = np.lexsort(keys)  # stable; the last key (the series) is the primary one
    if (order == np.arange(n)).all():
        order = None
    else:
        codes = codes[order]
    pos = np.arange(n)
    first = np.ones(n, dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    starts = np.maximum.accumulate(np.where(first, pos, 0))
    return order, starts


def _exact(x: np.ndarray, starts: np.ndarray, rows: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Statistics of a few rows' windows, cut at the series start and skipping missing values."""
    import numpy as np

    idx = rows[:, None] - np.arange(window)[None, :]
    values = np.where(idx >= starts[rows][:, None], x[np.maximum(idx, 0)], np.nan)
    seen = ~np.isnan(values)
    count = seen.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(seen, values, 0.0).sum(axis=1) / count
        var = np.where(seen, (values - mean[:, None]) ** 2, 0.0).sum(axis=1) / count
    return {"mean": mean, "std": np.sqrt(var), "min": np.fmin.reduce(values, axis=1),
            "max": np.fmax.reduce(values, axis=1)}


def window_stats(x: np.ndarray, starts: np.ndarray, windows: list[int],
                 stats: list[str]) -> dict[tuple[int, str], np.ndarray]:
    """Every (window, statistic) of one column whose rows are grouped by series, in time order.

    A row's value depends only on the values inside its own window, added in
    a fixed order (newest first), never on how much history came before: a
    scorer that sends the last `max(windows) + 1` steps gets, bit for bit,
    the features training saw. The fast path adds shifted copies of the
    column; rows whose window is cut by the start of their series or holds a
    missing value are recomputed one window at a time.
    """
    import numpy as np

    n = len(x)
    pos = np.arange(n)
    rank = pos - starts
    out: dict[tuple[int, str], np.ndarray] = {}
    widest = max(w for w in windows) if set(stats) - {"rate"} else 0
    total, low, high = x.copy(), x.copy(), x.copy()
    snapshots: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for length in range(1, widest + 1):
        if 1 < length <= n:
            j = length - 1
            total[j:] += x[:n - j]
            np.minimum(low[j:], x[:n - j], out=low[j:])
            np.maximum(high[j:], x[:n - j], out=high[j:])
        if length in windows:
            snapshots[length] = (total / length, low.copy(), high.copy())
    scratch = np.empty(n)
    for w in windows:
        if "rate" in stats:
            back = np.maximum(pos - w, starts)
            out[w, "rate"] = (x - x[back]) / np.maximum(pos - back, 1)
        if w not in snapshots:
            continue
        mean, low, high = snapshots[w]
        out[w, "mean"], out[w, "min"], out[w, "max"] = mean, low, high
        if "std" in stats:
            squares = np.zeros(n)
            for j in range(min(w, n)):
                np.subtract(x[:n - j], mean[j:], out=scratch[j:])
                np.square(scratch[j:], out=scratch[j:])
                squares[j:] += scratch[j:]
            out[w, "std"] = np.sqrt(squares / w)
        fix = np.flatnonzero((rank < w - 1) | np.isnan(mean))
        if len(fix):
            for stat, values in _exact(x, starts, fix, w).items():
                if (w, stat) in out:
                    out[w, stat][fix] = values
    return out


def compute(frame: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
    """The features as one (rows x features) array, in input row order."""
    import numpy as np

    columns, windows, stats = state["columns"], state["windows"], state["stats"]
    n, k = len(frame), len(columns)
    float32 = all(frame[c].dtype == np.float32 for c in columns)
    out = np.empty((n, k * len(windows) * len(stats)), dtype=np.float32 if float32 else np.float64, order="F")
    if n == 0 or k == 0:
        return out
    order, starts = series_order(frame, state["series"], state["time"])
    j = 0
    for c in columns:
        x = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if order is not None:
            x = x[order]
        features = window_stats(x, starts, windows, stats)
        for w in windows:
            for stat in stats:
                if order is None:
                    out[:, j] = features[w, stat]
                else:
                    out[order, j] = features[w, stat]
                j += 1
    return out


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """Add the features the state names (and drop the sources unless kept)."""
    import pandas as pd

    frame = dataset.frame
    needed = [*state["columns"], *(c for c in (state["series"], state["time"]) if c)]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"rolling-features: column(s) {', '.join(missing)} are missing from "
                        f"{dataset.name or 'the rows'}")
    names = feature_names(state)
    base = frame if state["keep_original"] else frame.drop(columns=state["columns"])
    clash = [c for c in names if c in base.columns]
    if clash:
        raise DataError(f"rolling-features: the rows already have column(s) {', '.join(clash[:5])}")
    features = pd.DataFrame(compute(frame, state), index=frame.index, columns=names, copy=False)
    return dataset.derive(pd.concat([base, features], axis=1))


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Resolve columns and windows (fit) or rebuild exactly the stored ones (replay)."""
    options = options if options is not None else Options()
    if state is None:
        state = fit(dataset, options)
    return Preprocessed(dataset=apply(dataset, state), state=state)
