"""$title: a preprocess step that centres numeric features on their training medians.

Fitting learns each numeric feature's median on the training rows (the
state, a JSON-able dict); replaying subtracts the stored medians, so that
validation folds, batch scoring and `opsloop serve` see exactly the features
training saw. Centred columns become float64. `compile_rows` gives the same
arithmetic to the server's per-row fast path. Replace `fit` and `apply` with
your transformation; keep the state JSON-able and the replay a function of
the rows and the state alone.

Options (`[preprocess.$name]`): see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import DataError, Dataset, Preprocessed, RunContext, hookimpl

if TYPE_CHECKING:
    import numpy as np

    from opsloop.rowops import RowContext, RowLayout, RowOp

PLUGIN = "$name"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[preprocess.$name]`).

    Attributes:
        columns: The feature columns to centre; empty: every numeric feature.
    """

    columns: list[str] = attrs.field(factory=list)


@hookimpl
def plugin_options() -> type:
    return Options


def numeric_columns(dataset: Dataset, options: Options) -> list[str]:
    """The columns to centre: those named (each must be a numeric feature), or every numeric feature."""
    import pandas as pd

    frame = dataset.frame
    features = dataset.feature_columns

    def numeric(c: str) -> bool:
        return pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])

    if not options.columns:
        return [c for c in features if numeric(c)]
    bad = [c for c in options.columns if c not in features or not numeric(c)]
    if bad:
        raise DataError(f"{PLUGIN}: [preprocess.{PLUGIN}] columns names {', '.join(bad)}, which dataset "
                        f"{dataset.name or '?'} has not as numeric feature columns")
    return list(options.columns)


def fit(dataset: Dataset, options: Options) -> tuple[dict[str, Any], list[str]]:
    """The state (each column's training median) and the issues found (columns without any value)."""
    columns = numeric_columns(dataset, options)
    medians = dataset.frame[columns].astype("float64").median() if columns else {}
    state = {"median": {c: float(medians[c]) for c in columns if math.isfinite(medians[c])}}
    issues = [f"{PLUGIN}: column {c} has no values in the training rows; left as it is"
              for c in columns if c not in state["median"]]
    return state, issues


def apply(dataset: Dataset, state: dict[str, Any]) -> Dataset:
    """Subtract the stored medians (a new frame: the input is never changed)."""
    frame = dataset.frame
    medians: dict[str, float] = state["median"]
    missing = [c for c in medians if c not in frame.columns]
    if missing:
        raise DataError(f"{PLUGIN}: column(s) {', '.join(missing)} were centred at training but are missing "
                        f"from {dataset.name or 'the rows'}")
    if not medians:
        return dataset
    return dataset.derive(frame.assign(**{c: frame[c].astype("float64") - m for c, m in medians.items()}))


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Options | None,
               run: RunContext) -> Preprocessed:
    """Learn the medians (fit, `state` None) or subtract the stored ones (replay, state returned unchanged)."""
    issues: list[str] = []
    if state is None:
        state, issues = fit(dataset, options or Options())
    return Preprocessed(dataset=apply(dataset, state), state=state, issues=tuple(issues))


@hookimpl
def compile_rows(state: dict[str, Any], options: Options | None, layout: RowLayout) -> RowOp | None:
    """The server's fast path: the same subtraction on the work matrix (float64, as the replay's columns)."""
    import numpy as np

    medians: dict[str, float] = state["median"]
    if not medians:
        return None  # nothing to centre: the rows pass unchanged
    idx = layout.columns(medians)  # NoFastPath when a column is not numeric at this point
    offset = np.array(list(medians.values()), dtype=np.float64)
    for c in medians:
        layout.dtypes[c] = "float64"  # as `apply` leaves them

    def centre(work: np.ndarray, rows: RowContext) -> None:
        work[:, idx] -= offset
    return centre


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _step: kinds.PreprocessStep = $module
    _compiler: kinds.RowCompiler = $module
    _configurable: kinds.Configurable = $module
