"""Statistics over partitions that give the numbers pandas gives on one frame (docs/scale.md).

Each is computed from small partial results per partition (`PartitionedDataset.collect`), combined here:
counts, sums and centred sums of squares merged with Chan et al.'s update, value counts summed, and exact order
statistics (medians, quantiles) by narrowing a histogram of the values' bit patterns over a few rounds, never
sorting a partition whole. Preprocess steps' `fit_partitions` hooks use them (plugins/_partial.py); they are
re-exported by `opsloop.partitions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.partitions import PartitionedDataset

#: Buckets of the histogram each pass of `order_statistics` narrows.
BUCKETS = 4096
#: Below this many candidate values, a pass fetches them and selects exactly.
FETCH = 65_536
_SIGN = 1 << 63
_ALL = (1 << 64) - 1

# ---------------------------------------------------------------------------
# Statistics over partitions, the same numbers pandas gives on one frame
# ---------------------------------------------------------------------------

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


def _histograms(part: pd.DataFrame, jobs: Sequence[tuple[str, int, int, int, int]]) -> list[tuple[int, np.ndarray]]:
    """Per job (column, lo, hi, width, buckets): the values below `lo`, and a histogram of the keys in [lo, hi]."""
    import numpy as np

    out = []
    for column, lo, hi, width, buckets in jobs:
        keys = _keys(_numbers(part, column))
        below = int((keys < np.uint64(lo)).sum())
        inside = keys[(keys >= np.uint64(lo)) & (keys <= np.uint64(hi))]
        index = ((inside - np.uint64(lo)) // np.uint64(width)).astype(np.int64)
        out.append((below, np.bincount(index, minlength=buckets)[:buckets]))
    return out


def _fetch(part: pd.DataFrame, jobs: Sequence[tuple[str, int, int]]) -> list[np.ndarray]:
    """Per job (column, lo, hi): the keys in [lo, hi]."""
    import numpy as np

    out = []
    for column, lo, hi in jobs:
        keys = _keys(_numbers(part, column))
        out.append(keys[(keys >= np.uint64(lo)) & (keys <= np.uint64(hi))])
    return out


def order_statistics(data: PartitionedDataset, wanted: dict[str, Sequence[int]], *, buckets: int | None = None,
                     fetch: int | None = None) -> dict[str, dict[int, float]]:
    """The exact `rank`-th smallest non-missing value (0-based) of each column, for every rank asked.

    Each round computes, on every partition, a histogram of the values' order-preserving bit patterns within
    the interval still in question, and narrows each interval to the bucket that holds its rank; once an
    interval holds at most `FETCH` values they are fetched and the rank selected. No rank takes more than
    ceil(64 / log2(BUCKETS)) + 1 rounds (7 with 4,096 buckets); no partition is ever sorted whole.
    """
    import numpy as np

    buckets = buckets or BUCKETS
    fetch_limit = FETCH if fetch is None else fetch
    todo = {(c, r): (0, _ALL) for c, ranks in wanted.items() for r in ranks}
    found: dict[str, dict[int, float]] = {c: {} for c in wanted}
    while todo:
        pending = list(todo.items())
        jobs = [(c, lo, hi, (hi - lo) // buckets + 1, buckets) for (c, _), (lo, hi) in pending]
        counts = data.collect(_histograms, jobs)
        fetching: dict[tuple[str, int], tuple[int, int, int]] = {}
        for j, ((column, rank), (lo, hi)) in enumerate(pending):
            width = jobs[j][3]
            below = sum(p[j][0] for p in counts)
            cumulative = np.cumsum(np.sum([p[j][1] for p in counts], axis=0))
            bucket = int(np.searchsorted(cumulative, rank - below, side="right"))
            before = below + (int(cumulative[bucket - 1]) if bucket else 0)
            new_lo = lo + bucket * width
            new_hi = min(hi, new_lo + width - 1)
            todo[(column, rank)] = (new_lo, new_hi)
            if int(cumulative[bucket]) + below - before <= fetch_limit or new_lo == new_hi:
                fetching[(column, rank)] = (new_lo, new_hi, rank - before)
        if fetching:
            pairs = list(fetching.items())
            parts = data.collect(_fetch, [(c, lo, hi) for (c, _), (lo, hi, _) in pairs])
            for j, ((column, rank), (_, _, position)) in enumerate(pairs):
                keys = np.sort(np.concatenate([p[j] for p in parts]))
                found[column][rank] = _value(int(keys[position]))
                del todo[(column, rank)]
    return found


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation, as `quantile` does it."""
    import numpy as np

    a64, b64, t64 = np.float64(a), np.float64(b), np.float64(t)
    diff = b64 - a64
    return float(b64 - diff * (1 - t64)) if t64 >= 0.5 else float(a64 + diff * t64)


def quantiles(data: PartitionedDataset, columns: Sequence[str], probabilities: Sequence[float],
              counts: dict[str, int], **narrowing: Any) -> dict[str, dict[float, float]]:
    """Exact linear-interpolation quantiles (numpy's and pandas' default) of the non-missing values."""
    import numpy as np

    wanted: dict[str, set[int]] = {}
    plan: dict[tuple[str, float], tuple[int, int, float]] = {}
    for c in columns:
        n = counts[c]
        if not n:
            continue
        for p in probabilities:
            index = np.float64(n - 1) * np.float64(p)
            below = int(np.floor(index))
            above = min(below + 1, n - 1)
            plan[(c, p)] = (below, above, float(index - below))
            wanted.setdefault(c, set()).update((below, above))
    found = order_statistics(data, {c: sorted(r) for c, r in wanted.items()}, **narrowing)
    out: dict[str, dict[float, float]] = {c: {} for c in columns}
    for (c, p), (below, above, t) in plan.items():
        out[c][p] = _lerp(found[c][below], found[c][above], t)
    for c in columns:
        if not counts[c]:
            out[c] = dict.fromkeys(probabilities, math.nan)
    return out


def median(data: PartitionedDataset, columns: Sequence[str], counts: dict[str, int],
           **narrowing: Any) -> dict[str, float]:
    """Exact medians as pandas' `median` gives them: the middle value, or (a + b) / 2 of the two middle."""
    ranks = {c: sorted({(counts[c] - 1) // 2, counts[c] // 2}) for c in columns if counts[c]}
    found = order_statistics(data, ranks, **narrowing)
    out = {}
    for c in columns:
        n = counts[c]
        out[c] = math.nan if not n else found[c][n // 2] if n % 2 else (found[c][n // 2 - 1] + found[c][n // 2]) / 2
    return out


def _moments(part: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[int, float, float, float, float, int]]:
    import numpy as np

    out = {}
    for c in columns:
        values = part[c].to_numpy(dtype=np.float64, na_value=np.nan)
        present = values[~np.isnan(values)]
        n = len(present)
        mean = float(present.mean()) if n else 0.0
        out[c] = (n, mean, float(((present - mean) ** 2).sum()) if n else 0.0,
                  float(present.min()) if n else math.inf, float(present.max()) if n else -math.inf,
                  int(len(values) - n))
    return out


def moments(data: PartitionedDataset, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Count, mean, population variance, min, max and missing count per numeric column, merged over
    partitions with Chan et al.'s pairwise update of (count, mean, M2): the same numbers as pandas up to
    the last bits of float64 for mean and variance (summation order), exactly for the rest."""
    merged: dict[str, list[Any]] = {c: [0, 0.0, 0.0, math.inf, -math.inf, 0] for c in columns}
    for part in data.collect(_moments, list(columns)) if columns else []:
        for c, (n, mean, m2, low, high, gaps) in part.items():
            total = merged[c]
            if n:
                count = total[0] + n
                delta = mean - total[1]
                total[1] += delta * n / count
                total[2] += m2 + delta * delta * total[0] * n / count
                total[0] = count
            total[3], total[4] = min(total[3], low), max(total[4], high)
            total[5] += gaps
    return {c: {"count": n, "mean": mean if n else math.nan, "var": m2 / n if n else math.nan,
                "min": low if n else math.nan, "max": high if n else math.nan, "missing": gaps}
            for c, (n, mean, m2, low, high, gaps) in merged.items()}


def _value_counts(part: pd.DataFrame, columns: Sequence[str]) -> dict[str, pd.Series]:
    return {c: part[c].value_counts(dropna=True) for c in columns}


def value_counts(data: PartitionedDataset, columns: Sequence[str]) -> dict[str, pd.Series]:
    """Each column's value counts (missing values left out), summed over partitions."""
    totals: dict[str, pd.Series] = {}
    for part in data.collect(_value_counts, list(columns)) if columns else []:
        for c, counts in part.items():
            totals[c] = counts if c not in totals else totals[c].add(counts, fill_value=0)
    return totals


def mode(counts: pd.Series | None) -> Any:
    """pandas' `mode(dropna=True).iloc[0]` from summed value counts: the most frequent, the smallest of ties;
    None when there is no value."""
    import pandas as pd

    if counts is None or not len(counts):
        return None
    top = counts[counts == counts.max()].index
    return pd.Series(top).sort_values(kind="stable").iloc[0]


def _facts(part: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Rows, and per column: missing count, min and max (numbers), distinct values (others)."""
    from pandas.api import types as pt

    out: dict[str, Any] = {"rows": len(part), "columns": {}}
    for c in columns:
        column = part[c]
        fact: dict[str, Any] = {"missing": int(column.isna().sum())}
        if pt.is_numeric_dtype(column.dtype) and not pt.is_bool_dtype(column.dtype):
            fact["min"], fact["max"] = column.min(), column.max()
        else:
            fact["values"] = column.dropna().unique()
        out["columns"][c] = fact
    return out


def column_facts(data: PartitionedDataset, columns: Sequence[str]) -> dict[str, Any]:
    """Rows; per column: missing count, min and max of numbers (NaN when none), distinct non-missing values of
    the others (a list, in first-seen order), combined over partitions."""
    import numpy as np
    import pandas as pd

    rows = 0
    merged: dict[str, dict[str, Any]] = {}
    for part in data.collect(_facts, list(columns)):
        rows += part["rows"]
        for c, fact in part["columns"].items():
            into = merged.setdefault(c, {"missing": 0})
            into["missing"] += fact["missing"]
            if "values" in fact:
                into["values"] = pd.unique(np.concatenate([into.get("values", np.array([], dtype=object)),
                                                           np.asarray(fact["values"], dtype=object)]))
            else:
                for key, pick in (("min", min), ("max", max)):
                    value = fact[key]
                    if value is None or pd.isna(value):
                        continue
                    into[key] = value if key not in into else pick(into[key], value)
    for c in columns:
        into = merged.setdefault(c, {"missing": 0})
        if "values" not in into:
            into.setdefault("min", math.nan)
            into.setdefault("max", math.nan)
    return {"rows": rows, "columns": merged}
