"""Schema and data-quality check: learns what training rows look like, reports what differs.

Fitting records, for every feature column, its dtype, its missing rate, its
minimum and maximum (numeric columns) and its categories (text and boolean
columns, at most `max_categories` of them), and reports columns that are
constant or entirely missing. Replayed on new rows (validation folds, batch
scoring, serving) it reports missing columns, extra columns (a warning only),
a wrong kind of dtype, values outside the learned range, unseen categories,
and missing rates far above training's. Rows are never changed: with
`on_violation = "warn"` they pass through and the findings become issues in
the run summary; with `"reject"` a DataError lists every violation.

Options (`[preprocess.schema-check]`):
    on_violation: "warn" (default) or "reject".
    range_tolerance: Widening of the learned [min, max] on each side, as a
        fraction of max - min (default 0.1).
    missing_tolerance: How far (absolute) the missing rate may exceed
        training's before it is reported (default 0.1).
    max_categories: Most categories stored per text column (default 1000);
        a column with more is not checked for unseen categories.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl

if TYPE_CHECKING:
    import pandas as pd

#: dtype kinds that may replace each other: an integer column read back as float (NaN) is fine.
KINDS = ("numeric", "bool", "datetime", "timedelta", "text", "other")
#: How many unseen categories a message quotes.
EXAMPLES = 5


def _one_of(*choices: str) -> Any:
    """An attrs validator with a one-line message (attrs' `in_` puts a tuple in its ValueError)."""
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return check


def _number(low: float, high: float) -> Any:
    """A validator: a finite number in [low, high]."""
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            upper = "" if high == math.inf else f" and at most {high:g}"
            raise ValueError(f"'{attribute.name}' must be a number at least {low:g}{upper}, got {value!r}")
    return check


def _count(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `schema-check`.

    Attributes:
        on_violation: "warn" reports violations as issues and passes the rows
            through; "reject" raises a DataError listing them.
        range_tolerance: A numeric value is out of range when it lies beyond
            the learned [min, max] widened on each side by this fraction of
            (max - min).
        missing_tolerance: A column's missing rate is reported when it
            exceeds the training rate by more than this (absolute, 0-1).
        max_categories: Most categories stored per text column; a column
            with more distinct values is not checked for unseen ones.
    """

    on_violation: str = attrs.field(default="warn", validator=_one_of("warn", "reject"))
    range_tolerance: float = attrs.field(default=0.1, validator=_number(0.0, math.inf))
    missing_tolerance: float = attrs.field(default=0.1, validator=_number(0.0, 1.0))
    max_categories: int = attrs.field(default=1000, validator=_count)


@hookimpl
def plugin_options() -> type:
    return Options


def kind_of(dtype: Any) -> str:
    """The kind of a dtype, coarse enough that harmless changes (int -> float) pass."""
    import pandas as pd
    from pandas.api import types as pt

    if pt.is_bool_dtype(dtype):
        return "bool"
    if pt.is_numeric_dtype(dtype):
        return "numeric"
    if pt.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pt.is_timedelta64_dtype(dtype):
        return "timedelta"
    if isinstance(dtype, pd.CategoricalDtype) or pt.is_string_dtype(dtype) or pt.is_object_dtype(dtype):
        return "text"
    return "other"


def _number(value: Any) -> float | None:
    """A JSON-safe float: None for NaN, NA and infinities (no range can be checked against those)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _learn(frame: pd.DataFrame, columns: list[str], options: Options) -> tuple[dict[str, Any], list[str]]:
    """Per-column facts, and the fit-time issues (constant or empty columns)."""
    n = len(frame)
    kinds = {c: kind_of(frame[c].dtype) for c in columns}
    numeric = [c for c in columns if kinds[c] == "numeric"]
    missing = frame[columns].isna().sum() if columns else {}
    lows = frame[numeric].min() if numeric else {}
    highs = frame[numeric].max() if numeric else {}
    learned: dict[str, Any] = {}
    issues: list[str] = []
    for c in columns:
        info: dict[str, Any] = {"dtype": str(frame[c].dtype), "kind": kinds[c],
                                "missing_rate": float(missing[c]) / n if n else 0.0}
        distinct: int | None = None
        if kinds[c] == "numeric":
            info["min"], info["max"] = _number(lows[c]), _number(highs[c])
            if info["min"] is not None and info["min"] == info["max"]:
                distinct = 1
        elif kinds[c] in ("text", "bool"):
            values = frame[c].dropna().unique()
            distinct = len(values)
            cats = sorted({str(v) for v in values})
            info["categories"] = cats if len(cats) <= options.max_categories else None
            info["n_categories"] = len(cats)
        learned[c] = info
        if n and missing[c] == n:
            issues.append(f'column "{c}" is entirely missing in the training rows')
        elif distinct == 1:
            issues.append(f'column "{c}" is constant in the training rows: it carries no information')
    return learned, issues


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn the schema (fit) or check the rows against it (replay); rows pass through unchanged."""
    options = options if options is not None else Options()
    if state is None:
        columns = dataset.feature_columns
        learned, issues = _learn(dataset.frame, columns, options)
        state = {"columns": learned, "target": dataset.target, "time": dataset.time, "series": dataset.series,
                 "rows": len(dataset.frame)}
        return Preprocessed(dataset=dataset, state=state, issues=tuple(issues))
    violations, warnings = check(dataset, state, options)
    if violations and options.on_violation == "reject":
        raise DataError(f"schema-check rejected {dataset.name or 'the rows'}: {len(violations)} violation(s): "
                        + "; ".join(violations))
    return Preprocessed(dataset=dataset, state=state, issues=(*violations, *warnings))


def check(dataset: Dataset, state: dict[str, Any], options: Options) -> tuple[list[str], list[str]]:
    """Compare rows with a learned schema.

    Returns:
        The violations (each names its column) and the warnings (extra columns).
    """
    frame = dataset.frame
    learned: dict[str, Any] = state["columns"]
    violations: list[str] = []
    for meta in ("time", "series"):
        col = state.get(meta)
        if col and col not in frame.columns:
            violations.append(f'missing column "{col}" (the {meta} column at training)')
    missing = [c for c in learned if c not in frame.columns]
    violations.extend(f'missing column "{c}"' for c in missing)
    meta_cols = {dataset.target, dataset.time, dataset.series, state.get("target"), state.get("time"),
                 state.get("series")} - {None}
    extra = [c for c in frame.columns if c not in learned and c not in meta_cols]
    warnings = [f'extra column "{c}" was not seen at training (ignored by this check)' for c in extra]
    present = [c for c in learned if c in frame.columns]
    same_kind = []
    for c in present:
        now = kind_of(frame[c].dtype)
        if now != learned[c]["kind"]:
            violations.append(f'column "{c}" has dtype {frame[c].dtype} ({now}), '
                              f'expected {learned[c]["dtype"]} ({learned[c]["kind"]})')
        else:
            same_kind.append(c)
    n = len(frame)
    if n == 0:
        return violations, warnings
    violations.extend(_missing_rates(frame, same_kind, learned, options))
    violations.extend(_ranges(frame, [c for c in same_kind if learned[c]["kind"] == "numeric"], learned, options))
    for c in same_kind:
        cats = learned[c].get("categories")
        if cats is not None:
            violations.extend(_unseen(frame[c], c, cats))
    return violations, warnings


def _missing_rates(frame: pd.DataFrame, columns: list[str], learned: dict[str, Any], options: Options) -> list[str]:
    if not columns:
        return []
    rates = frame[columns].isna().mean()
    out = []
    for c in columns:
        was = learned[c]["missing_rate"]
        if rates[c] > was + options.missing_tolerance:
            out.append(f'column "{c}" is missing in {rates[c]:.1%} of rows, {was:.1%} at training '
                       f"(tolerance {options.missing_tolerance:.1%})")
    return out


def _ranges(frame: pd.DataFrame, columns: list[str], learned: dict[str, Any], options: Options) -> list[str]:
    """Values beyond the widened training range, counted per column."""
    import pandas as pd

    columns = [c for c in columns if learned[c]["min"] is not None and learned[c]["max"] is not None]
    if not columns:
        return []
    lo = pd.Series({c: float(learned[c]["min"]) for c in columns})
    hi = pd.Series({c: float(learned[c]["max"]) for c in columns})
    span = hi - lo
    lo, hi = lo - options.range_tolerance * span, hi + options.range_tolerance * span
    values = frame[columns]
    below, above = values.lt(lo, axis=1).sum(), values.gt(hi, axis=1).sum()
    bad = [c for c in columns if below[c] or above[c]]
    if not bad:
        return []
    seen_lo, seen_hi = values[bad].min(), values[bad].max()
    n = len(frame)
    out = []
    for c in bad:
        count = int(below[c] + above[c])
        out.append(f'column "{c}": {count:,} of {n:,} values ({count / n:.2%}) outside the training range '
                   f'[{learned[c]["min"]:.6g}, {learned[c]["max"]:.6g}] widened to [{lo[c]:.6g}, {hi[c]:.6g}] '
                   f"(seen {float(seen_lo[c]):.6g} to {float(seen_hi[c]):.6g})")
    return out


def _unseen(series: pd.Series, column: str, categories: list[str]) -> list[str]:
    """Values a text column never took at training."""
    known = set(categories)
    uniques = series.dropna().unique()
    unseen = [v for v in uniques if str(v) not in known]
    if not unseen:
        return []
    count = int(series.isin(unseen).sum())
    names = sorted(str(v) for v in unseen)
    shown = ", ".join(repr(v) for v in names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")
    noun = "category" if len(names) == 1 else "categories"
    return [f'column "{column}": {len(names)} unseen {noun} in {count:,} row(s): {shown}']
