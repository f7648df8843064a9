"""Telemetry features: rolling-window statistics of each metric, computed only from the past.

A window is a number of rows (`12`) or a duration (`"1h"`, `"15min"`). For
every selected numeric feature column and every window it adds
`<column>__<stat><window>` (for example `m01__mean12`, `m01__mean1h`), where
the statistic looks at the current row and the rows before it in the same
series, never at a later row, so that a feature at time t is known at time t.
A window of `w` rows holds the current row and the `w - 1` before it; a
duration `d` holds the rows whose time is in `(t - d, t]` (pandas' time-based
`rolling(d)`), however many there are: on 5-minute steps "1h" is 12 rows, on
1-minute steps 60, and a gap in the data holds fewer.
- `mean`, `min`, `max`: over the window; the first rows of a series use the
  rows there are (at least one);
- `std`: population standard deviation (ddof=0), so one row gives 0, not NaN;
- `rate`: rate of change. Rows: `(x[t] - x[t - w]) / w`, per row; where the
  series is younger than `w` rows, the change since its first row divided by
  the rows elapsed (0 on the first row). Durations: per second, as
  Prometheus' `rate()`: the change since the newest row at or before
  `t - d` (the first row of the series when it is younger) divided by the
  seconds between the two (0 on the first row).

A duration needs `[data] time` (datetime values, not numbers); without it the
window is a configuration error.

When the rows hold several machines (`[data] series`), each is computed on
its own rows alone, ordered by `[data] time` when there is one; the output
keeps the input's row order. Missing values are skipped by mean, std, min and
max and propagate into `rate`. float32 metrics give float32 features.

Serving replays the same columns, windows and statistics. A row's features
depend only on the values inside its windows (and the row `rate` looks back
to), never on older history, so the last `max(windows) + 1` steps of a
series (for durations: the rows of the longest window and the one before
it) give, bit for bit, the features training computed for the newest row.
`window_reach` tells `opsloop serve` how much of each series to keep, and
`compile_rows` computes the request's rows behind the kept ones on the fast
path.

Options (`[preprocess.rolling-features]`):
    windows: Window lengths: rows (12) or durations ("1h", "15min"; s, m or
        min, h, d, w) (default [6, 12]).
    stats: Any of "mean", "std", "min", "max", "rate" (default all five).
    columns: Columns to compute from (default: every numeric feature column).
    keep_original: Keep the source columns (default true).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl
from opsloop.errors import ConfigError
from opsloop.plugins.scale import numeric_features

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STATS = ("mean", "std", "min", "max", "rate")
NAME = "{column}__{stat}{window}"


def seconds(window: int | str) -> float | None:
    """A duration window's length in seconds; None for a window in rows."""
    if isinstance(window, str):
        from opsloop.monitoring import parse_duration

        return parse_duration(window, "window").total_seconds()
    return None


def _windows(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"'{attribute.name}' must be a non-empty list of window lengths (rows such as 12, "
                        f"durations such as \"1h\"), got {value!r}")
    seen: dict[Any, Any] = {}
    for w in value:
        if isinstance(w, str):
            if not re.fullmatch(r"\d+(min|[smhdw])", w) or not int(re.sub(r"\D", "", w)):
                raise ValueError(f"'{attribute.name}': {w!r} is not a duration; write a whole number > 0 and a "
                                 "unit, s, m or min, h, d or w, with no space (\"15min\", \"1h\"), or a number "
                                 "of rows (12)")
            key: Any = ("s", seconds(w))
        elif isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"'{attribute.name}' must hold integers >= 1 (rows) or durations (\"1h\"), got {w!r}")
        else:
            key = ("rows", w)
        if key in seen:
            raise ValueError(f"'{attribute.name}' lists a window twice ({seen[key]!r} and {w!r}): {list(value)}")
        seen[key] = w


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
        windows: Window lengths: rows (steps) of one series, such as 12, or
            durations on `[data] time`, such as "1h" or "15min".
        stats: Statistics to compute: "mean", "std", "min", "max", "rate".
        columns: Numeric feature columns to compute from; None means every
            numeric feature column.
        keep_original: Keep the source columns next to their features.
    """

    windows: list[int | str] = attrs.field(factory=lambda: [6, 12], validator=_windows)
    stats: list[str] = attrs.field(factory=lambda: list(STATS), validator=_stats)
    columns: list[str] | None = attrs.field(default=None, validator=_columns)
    keep_original: bool = attrs.field(default=True, validator=_boolean)

    def check_config(self, config: Any) -> None:
        """Durations need `[data] time` (`opsloop config check` and every command that loads the plugins)."""
        durations = [w for w in self.windows if isinstance(w, str)]
        if durations and not config.data.time:
            raise ConfigError(f"window(s) {', '.join(map(repr, durations))} are durations, measured on the time "
                              "column, and [data] sets no time: set [data] time, or give the windows in rows (12)",
                              section="preprocess.rolling-features", key="windows", source=config.source)


@hookimpl
def plugin_options() -> type:
    return Options


def fit(dataset: Dataset, options: Options) -> dict[str, Any]:
    """Resolve the columns; the state is everything replay needs to build the same columns."""
    durations = [w for w in options.windows if isinstance(w, str)]
    if durations and dataset.time is None:
        raise ConfigError(f"window(s) {', '.join(map(repr, durations))} are durations, measured on the time "
                          f"column, and {dataset.name or 'the rows'} have none: set [data] time, or give the "
                          "windows in rows (12)", section="preprocess.rolling-features", key="windows")
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


def order_of(codes: np.ndarray, time_keys: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
    """Row order grouping each series' code together, in time order (stable), and each row's group start.

    Returns:
        The permutation (None when the rows are already in that order) and,
        for each row in that order, the position where its series begins.
    """
    import numpy as np

    n = len(codes)
    keys = [time_keys] if time_keys is not None else []
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


def series_order(frame: pd.DataFrame, series: str | None, time: str | None) -> tuple[np.ndarray | None, np.ndarray]:
    """`order_of` the frame's series and time columns."""
    import numpy as np
    import pandas as pd

    time_keys = pd.factorize(frame[time], sort=True)[0] if time is not None else None
    codes = pd.factorize(frame[series], sort=False)[0] if series is not None else np.zeros(len(frame), dtype=np.int64)
    return order_of(codes, time_keys)


#: Values (rows x window x columns) gathered at a time by `_gathered`: bounds memory on long windows.
GATHER = 2_000_000


def _gathered(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, std: bool = True) -> dict[str, np.ndarray]:
    """Mean, min, max (and std) of some rows' windows `[lo, hi]` of columns x (rows x columns), skipping
    missing values.

    Each window's values are laid out newest first and summed with a
    cumulative sum, which adds them one at a time in that order from the
    first: the order in which `window_stats` and `_sums` add full windows
    with shifted slices. A row gets the same bits on either path, alone or
    with others, so the server, which computes only its requests' rows,
    gives what batch scoring gives.
    """
    import numpy as np

    m, k = len(hi), x.shape[1]
    count = hi - lo + 1
    out = {"mean": np.empty((m, k)), "min": np.empty((m, k)), "max": np.empty((m, k))}
    if std:
        out["std"] = np.empty((m, k))
    if m == 0:
        return out
    width = int(count.max())
    step = max(1, GATHER // max(width * k, 1))
    offsets = np.arange(width)
    for a in range(0, m, step):
        rows = slice(a, a + step)
        valid = offsets[None, :] < count[rows, None]  # (rows, width)
        idx = np.where(valid, hi[rows, None] - offsets[None, :], 0)
        values = x[idx]  # (rows, width, columns)
        known = valid[:, :, None] & ~np.isnan(values)
        seen = known.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.cumsum(np.where(known, values, 0.0), axis=1)[:, -1] / seen
            out["mean"][rows] = mean
            present = np.where(known, values, np.nan)
            out["min"][rows] = np.fmin.reduce(present, axis=1)
            out["max"][rows] = np.fmax.reduce(present, axis=1)
            if std:
                squares = np.cumsum(np.where(known, (values - mean[:, None, :]) ** 2, 0.0), axis=1)[:, -1]
                out["std"][rows] = np.sqrt(squares / seen)
    return out


def _exact(x: np.ndarray, starts: np.ndarray, rows: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Statistics of some rows' windows of `window` rows, cut at the start of their series."""
    import numpy as np

    return _gathered(x, np.maximum(rows - window + 1, starts[rows]), rows)


def window_stats(x: np.ndarray, starts: np.ndarray, windows: list[int],
                 stats: list[str]) -> dict[tuple[int, str], np.ndarray]:
    """Every (window in rows, statistic) of columns (x: rows x columns) whose rows are grouped by series, in
    time order.

    A row's value depends only on the values inside its own window, added in
    a fixed order (newest first), never on how much history came before: a
    scorer that sends the last `max(windows) + 1` steps gets, bit for bit,
    the features training saw, and so does the server, which computes the
    same windows over its per-series history. The fast path adds shifted
    copies of the columns; rows whose window is cut by the start of their
    series or holds a missing value are recomputed one window at a time, in
    the same order.
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
    scratch = np.empty_like(x)
    for w in windows:
        if "rate" in stats:
            back = np.maximum(pos - w, starts)
            out[w, "rate"] = (x - x[back]) / np.maximum(pos - back, 1)[:, None]
        if w not in snapshots:
            continue
        mean, low, high = snapshots[w]
        out[w, "mean"], out[w, "min"], out[w, "max"] = mean, low, high
        if "std" in stats:
            squares = np.zeros_like(x)
            for j in range(min(w, n)):
                np.subtract(x[:n - j], mean[j:], out=scratch[j:])
                np.square(scratch[j:], out=scratch[j:])
                squares[j:] += scratch[j:]
            out[w, "std"] = np.sqrt(squares / w)
        fix = np.flatnonzero((rank < w - 1) | np.isnan(mean).any(axis=1))
        if len(fix):
            for stat, values in _exact(x, starts, fix, w).items():
                if (w, stat) in out:
                    out[w, stat][fix] = values
    return out


def times(frame: pd.DataFrame, time: str, order: np.ndarray | None, series: str | None) -> np.ndarray:
    """The time column as int64 nanoseconds, in `order`; DataError for numbers or missing times."""
    import numpy as np
    import pandas as pd

    column = frame[time]
    if not pd.api.types.is_datetime64_any_dtype(column):
        raise DataError(f"rolling-features: duration windows are measured on the time column {time!r}, which "
                        f"holds {column.dtype} values, not dates and times; convert it, or give windows in rows")
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = column.to_numpy().astype("datetime64[ns]").view(np.int64)
    if order is not None:
        ns = ns[order]
    missing = ns == np.iinfo(np.int64).min  # NaT
    if missing.any():
        where = (f" (series {frame[series].iloc[(order if order is not None else np.arange(len(ns)))[missing][0]]!r})"
                 if series else "")
        raise DataError(f"rolling-features: {int(missing.sum())} row(s) have no time in {time!r}{where}; "
                        "duration windows need every row's time")
    return ns


def duration_stats(x: np.ndarray, t: np.ndarray, starts: np.ndarray, windows: list[str],
                   stats: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """Every (duration window, statistic) of columns (x: rows x columns) whose rows are grouped by series, in
    time order (t: int64 nanoseconds).

    A row's window holds the rows of its series with a time in `(t - d, t]`
    (rows sharing its time included). As with windows in rows, its value
    depends only on the values inside the window, added newest first, so
    the server's per-series history gives the bits batch scoring gives.
    """
    import numpy as np

    n = len(x)
    out: dict[tuple[str, str], np.ndarray] = {}
    if n == 0:
        return out
    bounds = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1], True])
    for label in windows:
        d = int(round(seconds(label) * 1e9))
        lo, hi = np.empty(n, dtype=np.intp), np.empty(n, dtype=np.intp)
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            tt = t[s:e]
            lo[s:e] = np.searchsorted(tt, tt - d, side="right") + s
            hi[s:e] = np.searchsorted(tt, tt, side="right") - 1 + s
        if "rate" in stats:
            back = np.where(lo > starts, lo - 1, starts)
            elapsed = (t - t[back]) / 1e9
            out[label, "rate"] = (x - x[back]) / np.where(elapsed > 0, elapsed, 1.0)[:, None]
        if not set(stats) - {"rate"}:
            continue
        sums = _sums(x, lo, hi, "std" in stats)
        out[label, "mean"], out[label, "min"], out[label, "max"] = sums["mean"], sums["min"], sums["max"]
        if "std" in stats:
            out[label, "std"] = sums["std"]
    return out


def _sums(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, std: bool) -> dict[str, np.ndarray]:
    """Mean, min, max (and std) of each row's window `[lo, hi]`, its values added newest first.

    Most rows of regular data hold the widest window and end at themselves:
    those are summed with shifted slices of the columns, as windows in rows
    are; the others (the first rows of a series, rows after a gap, rows
    sharing a time, windows with a missing value) are summed one row of
    their window at a time (`_gathered`). Both add in the same order, so a
    row gets the same bits either way, whatever else the array holds.
    """
    import numpy as np

    n = len(x)
    pos = np.arange(n)
    span = hi - lo
    width = int(span.max()) + 1
    total, low, high = x.copy(), x.copy(), x.copy()
    for j in range(1, min(width, n)):
        total[j:] += x[:n - j]
        np.minimum(low[j:], x[:n - j], out=low[j:])
        np.maximum(high[j:], x[:n - j], out=high[j:])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / width
        squares = np.zeros_like(x)
        if std:
            scratch = np.empty_like(x)
            for j in range(min(width, n)):
                np.subtract(x[:n - j], mean[j:], out=scratch[j:])
                np.square(scratch[j:], out=scratch[j:])
                squares[j:] += scratch[j:]
        out = {"mean": mean, "min": low, "max": high}
        if std:
            out["std"] = np.sqrt(squares / width)
    fix = np.flatnonzero((span != width - 1) | (hi != pos) | np.isnan(mean).any(axis=1))
    if len(fix):
        for stat, values in _gathered(x, lo[fix], hi[fix], std).items():
            out[stat][fix] = values
    return out


def features(x: np.ndarray, starts: np.ndarray, t: np.ndarray | None, state: dict[str, Any]) -> list[np.ndarray]:
    """The features of columns x (rows x columns, grouped by series in time order), one rows x columns array
    per (window, statistic) in output order within a column."""
    windows, stats = state["windows"], state["stats"]
    rows = [w for w in windows if not isinstance(w, str)]
    durations = [w for w in windows if isinstance(w, str)]
    found: dict[tuple[Any, str], np.ndarray] = window_stats(x, starts, rows, stats) if rows else {}
    if durations:
        found.update(duration_stats(x, t, starts, durations, stats))
    return [found[w, stat] for w in windows for stat in stats]


def features_at(x: np.ndarray, starts: np.ndarray, t: np.ndarray | None, state: dict[str, Any],
                at: np.ndarray) -> list[np.ndarray]:
    """`features` of the rows `at` only (positions in x's order), the same bits: what the server computes for
    a request's rows behind their series' kept history (one window per row, `_gathered`)."""
    import numpy as np

    windows, stats = state["windows"], state["stats"]
    spread = bool(set(stats) - {"rate"})
    found: dict[tuple[Any, str], np.ndarray] = {}
    first = starts[at]
    if any(isinstance(w, str) for w in windows):
        bounds = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1], True])
        last = bounds[np.searchsorted(bounds, first, side="right")]  # each row's series ends before this
    for w in windows:
        if isinstance(w, str):
            d = int(round(seconds(w) * 1e9))
            lo, hi = np.empty(len(at), dtype=np.intp), np.empty(len(at), dtype=np.intp)
            for i, (p, s, e) in enumerate(zip(at, first, last, strict=True)):
                tt = t[s:e]
                lo[i] = np.searchsorted(tt, t[p] - d, side="right") + s
                hi[i] = np.searchsorted(tt, t[p], side="right") - 1 + s
            if "rate" in stats:
                back = np.where(lo > first, lo - 1, first)
                elapsed = (t[at] - t[back]) / 1e9
                found[w, "rate"] = (x[at] - x[back]) / np.where(elapsed > 0, elapsed, 1.0)[:, None]
        else:
            lo, hi = np.maximum(at - w + 1, first), at
            if "rate" in stats:
                back = np.maximum(at - w, first)
                found[w, "rate"] = (x[at] - x[back]) / np.maximum(at - back, 1)[:, None]
        if spread:
            for stat, values in _gathered(x, lo, hi, "std" in stats).items():
                found[w, stat] = values
    return [found[w, stat] for w in windows for stat in stats]


def compute(frame: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
    """The features as one (rows x features) array, in input row order (one column at a time: memory)."""
    import numpy as np

    columns, windows, stats = state["columns"], state["windows"], state["stats"]
    n, k = len(frame), len(columns)
    float32 = all(frame[c].dtype == np.float32 for c in columns)
    out = np.empty((n, k * len(windows) * len(stats)), dtype=np.float32 if float32 else np.float64, order="F")
    if n == 0 or k == 0:
        return out
    order, starts = series_order(frame, state["series"], state["time"])
    durations = any(isinstance(w, str) for w in windows)
    t = times(frame, state["time"], order, state["series"]) if durations else None
    j = 0
    for c in columns:
        x = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if order is not None:
            x = x[order]
        for values in features(x[:, None], starts, t, state):
            if order is None:
                out[:, j] = values[:, 0]
            else:
                out[order, j] = values[:, 0]
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


def reach(state: dict[str, Any]) -> Any:
    """The previous rows and the time a row's features read: the widest window in rows (the rate looks `w`
    rows back) and the longest duration."""
    from opsloop.rowops import Reach

    windows = state.get("windows") or []
    rows = max((w for w in windows if not isinstance(w, str)), default=0)
    longest = max((seconds(w) for w in windows if isinstance(w, str)), default=0.0)
    return Reach(rows=rows, seconds=longest)


@hookimpl
def window_reach(state: dict[str, Any], options: Options | None) -> Any:
    """How far back a row's windows read (`opsloop serve` keeps that much of each series)."""
    return reach(state)


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: Any) -> Any:
    """The features of every row of the server's work matrix, from the rows of its series in the matrix.

    The server puts each series' kept history (`window_reach`) before the
    request's rows, so the windows see what batch scoring of the whole series
    sees; the arithmetic is batch's own (`features`), on all columns at once.
    """
    import numpy as np

    from opsloop.rowops import NoFastPath

    if not state["keep_original"]:
        raise NoFastPath("rolling-features with keep_original = false drops its source columns, which the fast "
                         "path keeps")
    if state["series"] != layout.series or state["time"] != layout.time:
        raise NoFastPath("rolling-features was fitted on other series or time columns than the bundle names")
    src = layout.columns(state["columns"])
    float32 = all(layout.dtypes[c] == "float32" for c in state["columns"])
    names = feature_names(state)
    dst = [layout.add(name, "float32" if float32 else "float64") for name in names]
    dst_idx = np.array(dst, dtype=np.intp)
    width, per_column = len(state["columns"]), len(state["windows"]) * len(state["stats"])
    # feature j of column c lands in output column c * per_column + j, as `compute` orders them
    layout_order = np.arange(width * per_column).reshape(per_column, width).T.reshape(-1)
    durations = any(isinstance(w, str) for w in state["windows"])
    series, time = state["series"], state["time"]

    spans = [(w, int(round(seconds(w) * 1e9)) if isinstance(w, str) else w) for w in state["windows"]]
    stats = state["stats"]
    rate, spread, std = "rate" in stats, bool(set(stats) - {"rate"}), "std" in stats
    no_time = np.iinfo(np.int64).min  # NaT's nanoseconds

    def newest(work: np.ndarray, t: np.ndarray | None) -> np.ndarray | None:
        """The features of the last row alone, when the rows are one series in strictly increasing time (the
        server's stream: a series' kept history, then its next row); None where a window holds a missing value
        (the general path decides). Each window's values newest first, summed with `cumsum`: the order and
        the bits of `_gathered` and `_sums`. Only the statistics asked for are computed (issue 13, item 5)."""
        x = work[:, src]
        p = len(x) - 1
        parts = []
        for w, span in spans:
            found = {}
            if isinstance(w, str):
                lo = int(t.searchsorted(t[p] - span, side="right"))
                if rate:
                    back = lo - 1 if lo > 0 else 0
                    elapsed = (t[p] - t[back]) / 1e9
                    found["rate"] = (x[p] - x[back]) / (elapsed if elapsed > 0 else 1.0)
            else:
                lo = max(p - span + 1, 0)
                if rate:
                    back = max(p - span, 0)
                    found["rate"] = (x[p] - x[back]) / max(p - back, 1)
            if spread:
                window = x[lo:p + 1][::-1]
                if np.isnan(window).any():
                    return None
                count = p - lo + 1
                mean = found["mean"] = window.cumsum(axis=0)[-1] / count
                if "min" in stats:
                    found["min"] = window.min(axis=0)
                if "max" in stats:
                    found["max"] = window.max(axis=0)
                if std:
                    found["std"] = np.sqrt(((window - mean) ** 2).cumsum(axis=0)[-1] / count)
            elif np.isnan(x[lo:p + 1]).any():
                return None
            parts.extend(found[stat] for stat in stats)
        return np.concatenate(parts)[layout_order]

    def rolling(work: np.ndarray, rows: Any) -> None:
        n = rows.count
        if n == 0:
            return
        keys = rows.series if series is not None else None
        needed = getattr(rows, "first", 0)  # rows before it are kept history: their features go unused
        if needed == n - 1 and (keys is None or n == 1 or all(k == keys[0] for k in keys)):
            t = rows.times if time is not None else None
            ns = t.view(np.int64) if t is not None and t.dtype.kind == "M" else None
            if (ns is not None and (n == 1 or (ns[1:] > ns[:-1]).all()) and ns[-1] != no_time) or \
                    (t is None and not durations):
                values = newest(work, ns)
                if values is not None:
                    work[n - 1, dst_idx] = values.astype(np.float32) if float32 else values
                    return
        codes = np.zeros(n, dtype=np.int64)
        if keys is not None and n > 1 and any(k != keys[0] for k in keys):
            import pandas as pd

            codes = pd.factorize(pd.Series(list(keys), dtype=object), sort=False)[0]
        t = rows.times if time is not None else None
        time_keys = None
        if t is not None and n > 1:
            if np.issubdtype(t.dtype, np.datetime64):
                time_keys = t.view(np.int64)
            else:
                import pandas as pd

                time_keys = pd.factorize(t, sort=True)[0]
        order, starts = order_of(codes, time_keys)
        x = work[:, src]
        if order is not None:
            x = x[order]
        ns = None
        if durations:
            if t is None or not np.issubdtype(t.dtype, np.datetime64):
                raise DataError(f"rolling-features: duration windows are measured on the time column {time!r}, "
                                "which the rows do not carry as dates and times")
            ns = t.view(np.int64) if order is None else t.view(np.int64)[order]
            if (ns == np.iinfo(np.int64).min).any():
                raise DataError(f"rolling-features: a row has no time in {time!r}; duration windows need "
                                "every row's time")
        if needed:
            at = np.flatnonzero((order if order is not None else np.arange(n)) >= needed)
            values = np.concatenate(features_at(x, starts, ns, state, at), axis=1)[:, layout_order]
            targets = order[at] if order is not None else at
        else:
            values = np.concatenate(features(x, starts, ns, state), axis=1)[:, layout_order]
            targets = order if order is not None else slice(None)
        if float32:
            values = values.astype(np.float32)
        if isinstance(targets, slice):
            work[:, dst_idx] = values
        else:
            work[np.ix_(targets, dst_idx)] = values
    return rolling


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.rolling_features(data, options)
