"""Preprocessing states fitted over the partitions of a Dask DataFrame: a prototype (issue 10, item 3).

opsloop's runner hands a preprocess step one pandas frame. For rows beyond
one process's memory, a step's state must be fitted from partial results
computed partition by partition on the workers and combined on the client.
These functions do that for `impute`, `scale` and `clip`, and return the very
states the built-in steps return on the same rows as one frame (the tests
compare them key for key), so a bundle fitted this way replays in `opsloop
serve` unchanged:

- counts, missing flags, minimum and maximum: combined exactly;
- medians and quartiles: exact order statistics (`order_statistics`), found
  by narrowing a histogram of the values' bit patterns over a few passes,
  then interpolated as numpy does; no partition is ever sorted whole;
- most frequent values: value counts summed over partitions, ties broken as
  pandas' `mode` does (the smallest value);
- means and standard deviations: per-partition count, sum and centred sum of
  squares, merged with Chan et al.'s pairwise update; the same numbers up to
  the last bits of float64 (summation order differs).

Nothing here is wired into the runner yet: docs/contrib/dask.md says what
the core would need for that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Buckets of the histogram each pass of `order_statistics` narrows.
BUCKETS = 4096
#: Below this many candidate values, a pass fetches them and selects exactly.
FETCH = 65_536
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def _keys(values: np.ndarray) -> np.ndarray:
    """float64 values as uint64 keys in the same order (NaN left out by the caller)."""
    import numpy as np

    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(_SIGN))


def _value(key: int) -> float:
    import numpy as np

    bits = (key ^ _SIGN) if key & _SIGN else (~key & _ALL)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _numbers(part: pd.DataFrame, column: str) -> np.ndarray:
    import numpy as np

    values = part[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return values[~np.isnan(values)]


def _histograms(part: pd.DataFrame, jobs: Sequence[tuple[str, int, int, int]]) -> list[tuple[int, np.ndarray]]:
    """Per job (column, lo, hi, width): the values below `lo`, and a histogram of the keys in [lo, hi]."""
    import numpy as np

    out = []
    for column, lo, hi, width in jobs:
        keys = _keys(_numbers(part, column))
        below = int((keys < np.uint64(lo)).sum())
        inside = keys[(keys >= np.uint64(lo)) & (keys <= np.uint64(hi))]
        buckets = ((inside - np.uint64(lo)) // np.uint64(width)).astype(np.int64)
        out.append((below, np.bincount(buckets, minlength=BUCKETS)[:BUCKETS]))
    return out


def _fetch(part: pd.DataFrame, jobs: Sequence[tuple[str, int, int]]) -> list[np.ndarray]:
    """Per job (column, lo, hi): the keys in [lo, hi]."""
    import numpy as np

    out = []
    for column, lo, hi in jobs:
        keys = _keys(_numbers(part, column))
        out.append(keys[(keys >= np.uint64(lo)) & (keys <= np.uint64(hi))])
    return out


def _per_partition(frame: Any, function: Any, *args: Any) -> list[Any]:
    """`function(partition, *args)` on every partition, computed on the current cluster."""
    import dask

    return list(dask.compute(*[dask.delayed(function)(part, *args) for part in frame.to_delayed()]))


def order_statistics(frame: Any, wanted: dict[str, Sequence[int]]) -> dict[str, dict[int, float]]:
    """The exact `rank`-th smallest non-missing value (0-based) of each column, for every rank asked.

    Each pass computes, on every partition, a histogram of the values' order-preserving bit patterns within
    the interval still in question, and narrows each interval to the bucket that holds its rank; once an
    interval holds at most `FETCH` values, they are fetched and the rank selected. A float64 has 64 bits, so
    no rank takes more than ceil(64 / log2(BUCKETS)) + 1 passes (7 with 4,096 buckets).
    """
    import numpy as np

    todo = {(c, r): (0, _ALL) for c, ranks in wanted.items() for r in ranks}  # (column, rank) -> [lo, hi]
    found: dict[str, dict[int, float]] = {c: {} for c in wanted}
    while todo:
        pending = list(todo.items())
        jobs = [(c, lo, hi, (hi - lo) // BUCKETS + 1) for (c, _), (lo, hi) in pending]
        counts = _per_partition(frame, _histograms, jobs)
        fetch: dict[tuple[str, int], tuple[int, int, int]] = {}
        for j, ((column, rank), (lo, hi)) in enumerate(pending):
            width = jobs[j][3]
            below = sum(p[j][0] for p in counts)
            cumulative = np.cumsum(np.sum([p[j][1] for p in counts], axis=0))
            bucket = int(np.searchsorted(cumulative, rank - below, side="right"))
            before = below + (int(cumulative[bucket - 1]) if bucket else 0)  # values below the bucket
            new_lo = lo + bucket * width
            new_hi = min(hi, new_lo + width - 1)
            todo[(column, rank)] = (new_lo, new_hi)
            if int(cumulative[bucket]) + below - before <= FETCH or new_lo == new_hi:
                fetch[(column, rank)] = (new_lo, new_hi, rank - before)
        if fetch:
            pairs = list(fetch.items())
            parts = _per_partition(frame, _fetch, [(c, lo, hi) for (c, _), (lo, hi, _) in pairs])
            for j, ((column, rank), (_, _, position)) in enumerate(pairs):
                keys = np.sort(np.concatenate([p[j] for p in parts]))
                found[column][rank] = _value(int(keys[position]))
                del todo[(column, rank)]
    return found


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation (`numpy.lib._function_base_impl._lerp`), as `quantile` does it."""
    import numpy as np

    a64, b64, t64 = np.float64(a), np.float64(b), np.float64(t)
    diff = b64 - a64
    return float(b64 - diff * (1 - t64)) if t64 >= 0.5 else float(a64 + diff * t64)


def quantiles(frame: Any, columns: Sequence[str], probabilities: Sequence[float],
              counts: dict[str, int]) -> dict[str, dict[float, float]]:
    """Exact linear-interpolation quantiles (numpy's and pandas' default) of the non-missing values."""
    import numpy as np

    wanted: dict[str, set[int]] = {}
    plan: dict[tuple[str, float], tuple[int, int, float]] = {}
    for c in columns:
        n = counts[c]
        if not n:
            continue
        for p in probabilities:
            index = np.float64(n - 1) * np.float64(p)  # numpy's virtual index of the linear method
            below = int(np.floor(index))
            above = min(below + 1, n - 1)
            plan[(c, p)] = (below, above, float(index - below))
            wanted.setdefault(c, set()).update((below, above))
    found = order_statistics(frame, {c: sorted(r) for c, r in wanted.items()})
    out: dict[str, dict[float, float]] = {c: {} for c in columns}
    for (c, p), (below, above, t) in plan.items():
        out[c][p] = _lerp(found[c][below], found[c][above], t)
    for c in columns:
        if not counts[c]:
            out[c] = dict.fromkeys(probabilities, math.nan)
    return out


def median(frame: Any, columns: Sequence[str], counts: dict[str, int]) -> dict[str, float]:
    """Exact medians of the non-missing values as pandas' `median` gives them: the middle value, or the mean
    of the two middle values, (a + b) / 2 in float64 as numpy's `median` computes it."""
    ranks = {c: sorted({(counts[c] - 1) // 2, counts[c] // 2}) for c in columns if counts[c]}
    found = order_statistics(frame, ranks)
    out = {}
    for c in columns:
        n = counts[c]
        out[c] = math.nan if not n else found[c][n // 2] if n % 2 else (found[c][n // 2 - 1] + found[c][n // 2]) / 2
    return out


def _moments(part: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[int, float, float, float, float, bool]]:
    """Per column: count, mean, centred sum of squares, min, max of the non-missing values; any missing."""
    import numpy as np

    out = {}
    for c in columns:
        values = part[c].to_numpy(dtype=np.float64, na_value=np.nan)
        present = values[~np.isnan(values)]
        n = len(present)
        mean = float(present.mean()) if n else 0.0
        out[c] = (n, mean, float(((present - mean) ** 2).sum()) if n else 0.0,
                  float(present.min()) if n else math.inf, float(present.max()) if n else -math.inf,
                  bool(n < len(values)))
    return out


def moments(frame: Any, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Count, mean, population variance, min, max and whether any value is missing, per column, merged
    over partitions with Chan et al.'s pairwise update of (count, mean, M2)."""
    merged: dict[str, list[Any]] = {c: [0, 0.0, 0.0, math.inf, -math.inf, False] for c in columns}
    for part in _per_partition(frame, _moments, list(columns)):
        for c, (n, mean, m2, low, high, gap) in part.items():
            total = merged[c]
            if n:
                count = total[0] + n
                delta = mean - total[1]
                total[1] += delta * n / count
                total[2] += m2 + delta * delta * total[0] * n / count
                total[0] = count
            total[3], total[4] = min(total[3], low), max(total[4], high)
            total[5] = total[5] or gap
    return {c: {"count": n, "mean": mean if n else math.nan, "var": m2 / n if n else math.nan,
                "min": low if n else math.nan, "max": high if n else math.nan, "missing": gap}
            for c, (n, mean, m2, low, high, gap) in merged.items()}


def _is_number(dtype: Any) -> bool:
    from pandas.api import types as pt

    return pt.is_numeric_dtype(dtype) and not pt.is_bool_dtype(dtype)


def _value_counts(part: pd.DataFrame, columns: Sequence[str]) -> dict[str, pd.Series]:
    return {c: part[c].value_counts(dropna=True) for c in columns}


def fit_impute(frame: Any, features: Sequence[str], *, strategy: str = "median", fill_value: float = 0.0,
               add_indicator: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The `impute` step's state and issues, from the partitions of `frame` (a Dask DataFrame)."""
    import numpy as np
    import pandas as pd
    from pandas.api import types as pt

    dtypes = frame.dtypes
    numeric = [c for c in features if _is_number(dtypes[c])]
    other = [c for c in features if c not in numeric]
    stats = moments(frame, features if add_indicator else numeric) if features else {}
    if add_indicator and other:  # missing flags of non-numeric columns
        gaps = frame[other].isna().any().compute()
        for c in other:
            stats[c]["missing"] = bool(gaps[c])
    medians = median(frame, numeric, {c: stats[c]["count"] for c in numeric}) if strategy == "median" else {}
    modes: dict[str, Any] = {}
    if other:
        totals: dict[str, pd.Series] = {}
        for part in _per_partition(frame, _value_counts, other):
            for c, counts in part.items():
                totals[c] = counts if c not in totals else totals[c].add(counts, fill_value=0)
        for c in other:
            counts = totals.get(c)
            if counts is None or not len(counts):
                modes[c] = None
                continue
            top = counts[counts == counts.max()].index
            modes[c] = pd.Series(top).sort_values(kind="stable").iloc[0]  # pandas' mode: the smallest of the ties
    fill: dict[str, Any] = {}
    tags: dict[str, str] = {}
    issues = []
    for c in features:
        if c in numeric:
            if strategy == "constant":
                value: Any = float(fill_value)
            elif stats[c]["count"]:
                value = medians[c] if strategy == "median" else stats[c]["mean"]
            else:
                value = None
            if value is not None and pt.is_integer_dtype(dtypes[c]):
                value = round(value)
            elif value is not None and dtypes[c] == np.float32:
                value = float(np.float32(value))
        else:
            value = modes[c]
            if isinstance(value, pd.Timestamp):
                value, tags[c] = value.isoformat(), "datetime"
            elif isinstance(value, pd.Timedelta):
                value, tags[c] = value.isoformat(), "timedelta"
            elif hasattr(value, "item"):
                value = value.item()
            if value is not None and not isinstance(value, (bool, int, float, str)):
                value = str(value)
        if value is None:
            issues.append(f'column "{c}" is entirely missing in the training rows: left unfilled')
        fill[c] = value
    indicators = [c for c in features if stats[c]["missing"]] if add_indicator else []
    return {"strategy": strategy, "fill": fill, "tags": tags, "indicators": indicators}, issues


def fit_scale(frame: Any, columns: Sequence[str], method: str = "standard") -> dict[str, Any]:
    """The `scale` step's state, from the partitions of `frame` (a Dask DataFrame)."""
    stats = moments(frame, columns)
    if method == "standard":
        center = {c: stats[c]["mean"] for c in columns}
        scale = {c: math.sqrt(stats[c]["var"]) if stats[c]["count"] else math.nan for c in columns}
    elif method == "minmax":
        center = {c: stats[c]["min"] for c in columns}
        scale = {c: stats[c]["max"] - stats[c]["min"] for c in columns}
    else:
        q = quantiles(frame, columns, [0.25, 0.5, 0.75], {c: stats[c]["count"] for c in columns})
        center = {c: q[c][0.5] for c in columns}
        scale = {c: q[c][0.75] - q[c][0.25] for c in columns}

    def clean(value: float, default: float, zero_ok: bool = True) -> float:
        return default if not math.isfinite(value) or (value == 0.0 and not zero_ok) else float(value)

    return {"method": method, "center": {c: clean(center[c], 0.0) for c in columns},
            "scale": {c: clean(scale[c], 1.0, zero_ok=False) for c in columns}}


def fit_clip(frame: Any, columns: Sequence[str], *, lower_quantile: float = 0.001,
             upper_quantile: float = 0.999) -> dict[str, Any]:
    """The `clip` step's state, from the partitions of `frame`: exact quantiles, integer columns' bounds
    rounded outwards, no bound for a column without a value."""
    from pandas.api import types as pt

    if not columns:
        return {"lower": {}, "upper": {}}
    counts = {c: n for c, n in frame[list(columns)].count().compute().items()}
    q = quantiles(frame, columns, [lower_quantile, upper_quantile], counts)
    dtypes = frame.dtypes

    def bound(value: float, integer: bool, rounding: Any) -> float | int | None:
        return None if not math.isfinite(value) else int(rounding(value)) if integer else float(value)

    ints = {c: pt.is_integer_dtype(dtypes[c]) for c in columns}
    return {"lower": {c: bound(q[c][lower_quantile], ints[c], math.floor) for c in columns},
            "upper": {c: bound(q[c][upper_quantile], ints[c], math.ceil) for c in columns}}
