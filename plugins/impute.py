"""Missing-value imputation: fills gaps with values learned from the training rows.

Numeric feature columns get the training median (or mean, or a constant);
every other feature column (text, categories, booleans, dates) gets its most
frequent training value. The fill values are the state, so scoring fills
with training's values, never with statistics of the rows being scored.
With `add_indicator`, each column that had gaps at training also gets a
`<column>__missing` 0/1 column (as scikit-learn's `SimpleImputer` does), so
a model can learn from the gap itself: a metric that stops reporting is
often the first sign of trouble.

Options (`[preprocess.impute]`):
    strategy: "median" (default), "mean" or "constant".
    fill_value: The value for "constant" (default 0.0).
    add_indicator: Add `<column>__missing` columns (default false).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, NoFastPath, Preprocessed, RunContext, hookimpl

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.rowops import RowContext, RowLayout, RowOp

INDICATOR = "{}__missing"


def _finite(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


def _one_of(*choices: str) -> Any:
    """An attrs validator with a one-line message (attrs' `in_` puts a tuple in its ValueError)."""
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return check


def _boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{attribute.name}' must be true or false, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `impute`.

    Attributes:
        strategy: How numeric columns are filled: "median", "mean" or
            "constant". Other columns always get their most frequent value.
        fill_value: The fill value of numeric columns when `strategy` is
            "constant".
        add_indicator: Add a `<column>__missing` column (int8, 1 where the
            value was missing) for each column that had missing values at
            training.
    """

    strategy: str = attrs.field(default="median", validator=_one_of("median", "mean", "constant"))
    fill_value: float = attrs.field(default=0.0, validator=_finite)
    add_indicator: bool = attrs.field(default=False, validator=_boolean)


@hookimpl
def plugin_options() -> type:
    return Options


def _is_number(dtype: Any) -> bool:
    from pandas.api import types as pt

    return pt.is_numeric_dtype(dtype) and not pt.is_bool_dtype(dtype)


def _numeric_fill(series: pd.Series, options: Options) -> float | int | None:
    """The fill value of a numeric column, in the column's own precision."""
    import numpy as np
    from pandas.api import types as pt

    if options.strategy == "constant":
        value = float(options.fill_value)
    elif series.notna().any():
        values = series.astype("float64")  # statistics in double precision, whatever the storage
        value = float(values.median() if options.strategy == "median" else values.mean())
    else:
        return None
    if pt.is_integer_dtype(series.dtype):
        return round(value)  # an integer column stays integer
    if series.dtype == np.float32:
        return float(np.float32(value))  # fillna keeps float32 only for a value float32 holds exactly
    return value


def _encode(value: Any) -> tuple[Any, str | None]:
    """A most-frequent value as JSON, with a tag when it must be decoded."""
    import pandas as pd

    if isinstance(value, pd.Timestamp):
        return value.isoformat(), "datetime"
    if isinstance(value, pd.Timedelta):
        return value.isoformat(), "timedelta"
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value, None
    return str(value), None


def _decode(value: Any, tag: str | None) -> Any:
    import pandas as pd

    if tag == "datetime":
        return pd.Timestamp(value)
    if tag == "timedelta":
        return pd.Timedelta(value)
    return value


def fit(dataset: Dataset, options: Options) -> tuple[dict[str, Any], list[str]]:
    """Learn the fill value of every feature column."""
    frame = dataset.frame
    fill: dict[str, Any] = {}
    tags: dict[str, str] = {}
    issues: list[str] = []
    gaps = frame[dataset.feature_columns].isna().any() if dataset.feature_columns else {}
    for c in dataset.feature_columns:
        series = frame[c]
        if _is_number(series.dtype):
            value = _numeric_fill(series, options)
        else:
            modes = series.mode(dropna=True)
            value = None
            if len(modes):
                value, tag = _encode(modes.iloc[0])
                if tag:
                    tags[c] = tag
        if value is None:
            issues.append(f'column "{c}" is entirely missing in the training rows: left unfilled')
        fill[c] = value
    indicators = [c for c in dataset.feature_columns if gaps[c]] if options.add_indicator else []
    state = {"strategy": options.strategy, "fill": fill, "tags": tags, "indicators": indicators}
    return state, issues


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """Fill with the learned values and add the learned indicator columns."""
    import pandas as pd

    frame = dataset.frame
    fill: dict[str, Any] = state["fill"]
    missing = [c for c in fill if c not in frame.columns]
    if missing:
        raise DataError(f"impute: column(s) {', '.join(missing)} were imputed at training but are missing "
                        f"from {dataset.name or 'the rows'}")
    indicators: list[str] = list(state.get("indicators", []))
    clash = [INDICATOR.format(c) for c in indicators if INDICATOR.format(c) in frame.columns]
    if clash:
        raise DataError(f"impute: cannot add indicator column(s) {', '.join(clash)}: the rows already have them")
    columns = [c for c in fill if fill[c] is not None]
    gaps = frame[columns].isna().any() if columns else pd.Series(dtype=bool)
    todo = {c: _decode(fill[c], state.get("tags", {}).get(c)) for c in columns if gaps[c]}
    if not todo and not indicators:
        return dataset
    out = frame.fillna(value=todo) if todo else frame
    if indicators:
        flags = frame[indicators].isna().to_numpy(dtype="int8")
        names = [INDICATOR.format(c) for c in indicators]
        out = pd.concat([out, pd.DataFrame(flags, columns=names, index=frame.index)], axis=1)
    return dataset.derive(out)


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn fill values (fit) or fill with the stored ones (replay)."""
    options = options if options is not None else Options()
    issues: list[str] = []
    if state is None:
        state, issues = fit(dataset, options)
    return Preprocessed(dataset=apply(dataset, state), state=state, issues=tuple(issues))


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> RowOp | None:
    """The server's fast path: `apply` on the work matrix (numeric columns only).

    The indicators are taken before filling, as `apply` takes them from the
    rows as they came. A float32 (or float16) column keeps its dtype only for
    a fill value it holds exactly (pandas' `fillna` would widen it otherwise),
    which `fit` ensures; a state that breaks the rule replays.
    """
    import numpy as np

    fill = state["fill"]
    filled = [c for c in fill if fill[c] is not None]
    layout.columns(filled)  # NoFastPath for a text, category or date column: those replay
    floats = [c for c in filled if layout.dtypes[c].startswith("float")]
    for c in floats:
        dtype = layout.dtypes[c]
        if dtype != "float64" and float(np.dtype(dtype).type(fill[c])) != float(fill[c]):
            raise NoFastPath(f'impute: the fill value of "{c}" does not fit its dtype {dtype}')
    indicators = list(state.get("indicators", []))
    if not floats and not indicators:
        return None  # integer and boolean inputs are never missing in a request
    src = layout.columns(indicators)
    names = [INDICATOR.format(c) for c in indicators]
    for name in names:
        layout.add(name, "int8")  # as `apply` adds them: int8 columns after the others
    dst = layout.columns(names)
    idx = layout.columns(floats)
    values = np.array([float(fill[c]) for c in floats])

    def impute(work: np.ndarray, rows: RowContext) -> None:
        if indicators:
            work[:, dst] = np.isnan(work[:, src])  # flags come from the rows before filling
        block = work[:, idx]
        gaps = np.isnan(block)
        if gaps.any():
            work[:, idx] = np.where(gaps, values, block)
    return impute


@hookimpl
def fit_partitions(data: Any, options: Options | None, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """The state over partitions (a partitioned `[data] source`; plugins/_partial.py, docs/scale.md)."""
    from opsloop.plugins import _partial

    return _partial.impute(data, options)
