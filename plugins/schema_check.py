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

The same check on scored rows (issue 9, item 5): selected as a monitor
(`[monitor] plugins = ["schema-check"]`), it judges the rows `opsloop run`
monitors, and each window of `opsloop monitor`, with the state and options the
version stored, as a report (`schema_findings`, `out_of_range[m03]`, ...,
every violation an alert); and `opsloop serve` checks every request with
`compile_row_check`, counting what it finds on `/metrics`
(`opsloop_schema_findings_total`).

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

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, MonitorReport, NoFastPath, Preprocessed, RunContext, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.rowops import RowLayout
    from opsloop.types import ModelVersion

#: This plugin's entry-point name: how a bundle's manifest names its steps.
NAME = "schema-check"

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


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> None:
    """The server's fast path: with `on_violation = "warn"` rows pass unchanged, so there is nothing to do (the
    server counts the findings with `compile_row_check`); `"reject"` needs this plugin to judge every request."""
    options = options if options is not None else Options()
    if options.on_violation != "warn":
        raise NoFastPath('schema-check with on_violation = "reject" judges every request through the plugin')
    return None


#: What `findings` can report, as the `check` of a `Finding` (and the `check` label on `/metrics`).
CHECKS = ("missing_column", "dtype", "missing_rate", "out_of_range", "unseen_category", "extra_column")


@attrs.frozen(kw_only=True)
class Finding:
    """One thing the scored rows do that the training rows did not.

    Attributes:
        check: One of `CHECKS`.
        column: The column it is about (from the learned schema, or an extra column of the rows).
        share: The fraction of rows concerned (`out_of_range`, `unseen_category`), the missing rate
            (`missing_rate`), or 1.0 (a missing, mistyped or extra column).
        baseline: The same figure on the training rows (the missing rate then; 0 otherwise).
        message: The sentence the run summary and the reports show.
    """

    check: str
    column: str
    share: float
    baseline: float = 0.0
    message: str

    @property
    def violation(self) -> bool:
        """Everything but an extra column, which is only a warning (and never rejects)."""
        return self.check != "extra_column"


def check(dataset: Dataset, state: dict[str, Any], options: Options) -> tuple[list[str], list[str]]:
    """Compare rows with a learned schema.

    Returns:
        The violations (each names its column) and the warnings (extra columns).
    """
    found = findings(dataset, state, options)
    return [f.message for f in found if f.violation], [f.message for f in found if not f.violation]


def findings(dataset: Dataset, state: dict[str, Any], options: Options) -> list[Finding]:
    """Compare rows with a learned schema: each difference as a `Finding`, violations first, in column order."""
    frame = dataset.frame
    learned: dict[str, Any] = state["columns"]
    found: list[Finding] = []
    for meta in ("time", "series"):
        col = state.get(meta)
        if col and col not in frame.columns:
            found.append(Finding(check="missing_column", column=col, share=1.0,
                                 message=f'missing column "{col}" (the {meta} column at training)'))
    found.extend(Finding(check="missing_column", column=c, share=1.0, message=f'missing column "{c}"')
                 for c in learned if c not in frame.columns)
    meta_cols = {dataset.target, dataset.time, dataset.series, state.get("target"), state.get("time"),
                 state.get("series")} - {None}
    extra = [Finding(check="extra_column", column=str(c), share=1.0,
                     message=f'extra column "{c}" was not seen at training (ignored by this check)')
             for c in frame.columns if c not in learned and c not in meta_cols]
    present = [c for c in learned if c in frame.columns]
    same_kind = []
    for c in present:
        now = kind_of(frame[c].dtype)
        if now != learned[c]["kind"]:
            found.append(Finding(check="dtype", column=c, share=1.0,
                                 message=f'column "{c}" has dtype {frame[c].dtype} ({now}), '
                                         f'expected {learned[c]["dtype"]} ({learned[c]["kind"]})'))
        else:
            same_kind.append(c)
    if len(frame):
        found.extend(_missing_rates(frame, same_kind, learned, options))
        found.extend(_ranges(frame, [c for c in same_kind if learned[c]["kind"] == "numeric"], learned, options))
        for c in same_kind:
            cats = learned[c].get("categories")
            if cats is not None:
                found.extend(_unseen(frame[c], c, cats))
    return [*found, *extra]


def _missing_rates(frame: pd.DataFrame, columns: list[str], learned: dict[str, Any],
                   options: Options) -> list[Finding]:
    if not columns:
        return []
    rates = frame[columns].isna().mean()
    out = []
    for c in columns:
        was = learned[c]["missing_rate"]
        if rates[c] > was + options.missing_tolerance:
            out.append(Finding(check="missing_rate", column=c, share=float(rates[c]), baseline=float(was),
                               message=f'column "{c}" is missing in {rates[c]:.1%} of rows, {was:.1%} at training '
                                       f"(tolerance {options.missing_tolerance:.1%})"))
    return out


def _ranges(frame: pd.DataFrame, columns: list[str], learned: dict[str, Any], options: Options) -> list[Finding]:
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
        out.append(Finding(check="out_of_range", column=c, share=count / n,
                           message=f'column "{c}": {count:,} of {n:,} values ({count / n:.2%}) outside the training '
                                   f'range [{learned[c]["min"]:.6g}, {learned[c]["max"]:.6g}] widened to '
                                   f"[{lo[c]:.6g}, {hi[c]:.6g}] (seen {float(seen_lo[c]):.6g} to "
                                   f"{float(seen_hi[c]):.6g})"))
    return out


def _unseen(series: pd.Series, column: str, categories: list[str]) -> list[Finding]:
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
    return [Finding(check="unseen_category", column=column, share=count / len(series),
                    message=f'column "{column}": {len(names)} unseen {noun} in {count:,} row(s): {shown}')]


# ---------------------------------------------------------------------------
# Scored rows (issue 9, item 5): the learned schema as a monitor, and as a per-request check for the server
# ---------------------------------------------------------------------------

#: Alerts a report lists one by one; the rest are named in one more.
MAX_ALERTS = 10


@hookimpl
def monitor(version: ModelVersion, current: Dataset, run: RunContext) -> MonitorReport:
    """The version's own schema-check steps (state and options as stored in its bundle) on the scored rows.

    Figures: `schema_findings` (violations found) and one per finding,
    `<check>[<column>]`, with training's figure as the baseline: the share of
    values out of range or of unseen categories (0 at training), the missing
    rate (training's), 1 for a missing or mistyped column. Every violation is
    an alert. A version trained without the step gets a report without
    figures (and a warning in the log). Options in `[monitor.schema-check]`
    are not read: the rows are judged with the tolerances the version was
    trained with, as serving does.
    """
    steps = stored_steps(version)
    if not steps:  # no figures rather than a 0 that would read as "all clear"
        run.log.warning("schema-check: %s was trained without a schema-check step: nothing to check the rows "
                        "against", version.ref)
        return MonitorReport(model=version.ref, rows=len(current))
    metrics: dict[str, float] = {"schema_findings": 0.0}
    baseline: dict[str, float] = {"schema_findings": 0.0}
    alerts: list[str] = []
    for state, options in steps:
        for f in findings(current, state, options):
            if not f.violation:
                continue  # extra columns (the labels' column, say) are not a finding about the scored inputs
            metrics["schema_findings"] += 1
            metrics[f"{f.check}[{f.column}]"] = f.share
            baseline[f"{f.check}[{f.column}]"] = f.baseline
            alerts.append(f.message)
    if len(alerts) > MAX_ALERTS:
        alerts[MAX_ALERTS:] = [f"{len(alerts) - MAX_ALERTS} more schema finding(s) (every one is a figure)"]
    return MonitorReport(model=version.ref, rows=len(current), metrics=metrics, baseline=baseline,
                         alerts=tuple(alerts))


def stored_steps(version: ModelVersion) -> list[tuple[dict[str, Any], Options]]:
    """(state, options) of each schema-check step of a version's bundle, verified as every load is."""
    return list(_stored_steps(str(version.path), version.ref, version.digest or None))


@functools.lru_cache(maxsize=16)  # opsloop monitor asks once per window; a bundle never changes
def _stored_steps(path: str, ref: str, digest: str | None) -> tuple[tuple[dict[str, Any], Options], ...]:
    from pathlib import Path

    from opsloop.bundle import read_manifest

    manifest = read_manifest(Path(path), ref=ref, digest=digest)
    return tuple((dict(step["state"]), Options(**(step.get("options") or {})))
                 for step in manifest.get("steps", []) if step.get("plugin") == NAME)


def _positions(indices: list[int]) -> slice | np.ndarray:
    """Matrix columns to take: a slice when consecutive (a view, no copy), else an index array."""
    import numpy as np

    if indices and indices == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return np.array(indices, dtype=np.intp)


RowCheck = Callable[["np.ndarray", Mapping[str, Sequence[Any]]], list[tuple[str, str]]]


def compile_row_check(state: Mapping[str, Any], options: Mapping[str, Any] | None, numeric: Mapping[str, int],
                      other: Sequence[str]) -> RowCheck:
    """A check of request rows against a learned schema, in numpy, with every bound computed here, once.

    `opsloop serve` calls it when it loads a version (`opsloop.serving.model`)
    and the check on every request: `numeric` maps each numeric input column
    to its column in the request's float64 matrix, `other` names the text and
    time columns (lists of values, None for null). The check returns the
    (check, column) pairs that `findings` would report on the same rows, for
    what a request can carry at all: values out of range, missing rates above
    tolerance, unseen categories (the server refuses a request with a missing,
    extra or mistyped column before). A request of one row costs a handful of
    numpy operations.
    """
    import numpy as np

    opts = Options(**(options or {}))
    learned: dict[str, Any] = state["columns"]
    ranged = [c for c in learned if c in numeric and learned[c]["kind"] == "numeric"
              and learned[c]["min"] is not None and learned[c]["max"] is not None]
    r_idx = _positions([numeric[c] for c in ranged])
    low = np.array([float(learned[c]["min"]) for c in ranged])
    high = np.array([float(learned[c]["max"]) for c in ranged])
    span = high - low
    low, high = low - opts.range_tolerance * span, high + opts.range_tolerance * span
    gappy = [c for c in learned if c in numeric]
    m_idx = _positions([numeric[c] for c in gappy])
    m_limit = np.array([learned[c]["missing_rate"] + opts.missing_tolerance for c in gappy])
    texts = {c: learned[c]["missing_rate"] + opts.missing_tolerance for c in learned if c in other}
    known = {c: frozenset(learned[c]["categories"]) for c in learned
             if c in other and learned[c].get("categories") is not None}

    def check_rows(matrix: np.ndarray, values: Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if gappy:
            gaps = np.isnan(matrix[:, m_idx])
            if gaps.any():  # most requests have none: one test, no per-column rates
                rates = gaps.sum(axis=0) / len(matrix)
                out.extend(("missing_rate", gappy[j]) for j in np.flatnonzero(rates > m_limit))
        for c, limit in texts.items():
            column = values[c]
            if sum(v is None for v in column) / len(column) > limit:
                out.append(("missing_rate", c))
        if ranged:
            block = matrix[:, r_idx]
            outside = (block < low) | (block > high)  # NaN compares False: a missing value is not outside
            if outside.any():
                out.extend(("out_of_range", ranged[j]) for j in np.flatnonzero(outside.any(axis=0)))
        for c, cats in known.items():
            if any(v is not None and str(v) not in cats for v in values[c]):
                out.append(("unseen_category", c))
        return out
    return check_rows


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.schema_check(data, options)
