"""$title: a promotion gate that lets the challenger in unless it is worse by more than `max_loss`.

Scores `metric` for the champion (production) and the challenger (the
candidate) on the labelled rows of the gate window, the same rows for both:
`pr_auc` or `roc_auc` from their scores, `f1`, `recall`, `precision` or
`accuracy` from their predictions (at each version's alert threshold). The
challenger wins unless its figure is more than `max_loss` below the
champion's: a model trained on fresher rows is preferred as long as it is
not measurably worse. (opsloop's `champion-challenger` gate asks the
opposite: better by a margin, beyond noise.) A window that cannot tell
(no labels, or one class only) is a one-line DataError: the loop's cycle
ends with it and production stays. Replace `judge` with your own rule.

Options (`[gate.$name]`): see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import Contender, DataError, Dataset, GateVerdict, RunContext, hookimpl

if TYPE_CHECKING:
    import numpy as np

PLUGIN = "$name"
#: Computed from the `score` column.
SCORED = ("pr_auc", "roc_auc")
#: Computed from the `prediction` column.
PREDICTED = ("f1", "recall", "precision", "accuracy")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[gate.$name]`).

    Attributes:
        metric: The figure compared, higher is better: `pr_auc`, `roc_auc` (from scores), `f1`, `recall`,
            `precision`, `accuracy` (from predictions).
        max_loss: The challenger wins unless its figure is more than this below the champion's (0: it must be
            at least as good).
    """

    metric: str = attrs.field(default="pr_auc", validator=attrs.validators.in_(SCORED + PREDICTED))
    max_loss: float = attrs.field(default=0.01, validator=[attrs.validators.ge(0), attrs.validators.le(1)])


@hookimpl
def plugin_options() -> type:
    return Options


def labelled(window: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows with a label, and their labels (0/1); a DataError when they cannot decide."""
    import numpy as np

    target = window.frame[window.target] if window.target in window.frame.columns else None
    if target is None or target.isna().all():
        raise DataError(f"{PLUGIN}: the gate window ({len(window.frame):,} rows) has no labels yet: nothing to "
                        "compare champion and challenger on")
    rows = np.flatnonzero(target.notna().to_numpy())
    y = target.iloc[rows].to_numpy(dtype=float)
    if not set(np.unique(y).tolist()) <= {0.0, 1.0}:
        raise DataError(f"{PLUGIN}: the gate window's target {window.target!r} is not 0/1")
    if len(np.unique(y)) < 2:
        raise DataError(f"{PLUGIN}: the gate window's {len(y):,} labelled rows hold one class only "
                        f"({int(y.sum()):,} incidents): {PLUGIN} needs both to compare")
    return rows, y


def figure(contender: Contender, rows: np.ndarray, y: np.ndarray, metric: str) -> float:
    """The contender's `metric` on the labelled rows."""
    from sklearn import metrics

    column = "score" if metric in SCORED else "prediction"
    who = f"{contender.role} {contender.version.ref}"
    if column not in contender.predictions.columns:
        raise DataError(f'{PLUGIN}: {who} has no "{column}" column for metric {metric}; choose one of '
                        f"{', '.join(PREDICTED)}")
    values = contender.predictions[column].iloc[rows].to_numpy(dtype=float)
    if len(values) != len(y) or (values != values).any():
        raise DataError(f"{PLUGIN}: {who} has no {column} for some of the window's {len(y):,} labelled rows")
    if metric == "pr_auc":
        return float(metrics.average_precision_score(y, values))
    if metric == "roc_auc":
        return float(metrics.roc_auc_score(y, values))
    if metric == "accuracy":
        return float(metrics.accuracy_score(y, values))
    score: Any = {"f1": metrics.f1_score, "recall": metrics.recall_score, "precision": metrics.precision_score}
    return float(score[metric](y, values, zero_division=0.0))


def judge(champion: float, challenger: float, options: Options) -> tuple[bool, str]:
    """(does the challenger win?, why)."""
    if challenger < champion - options.max_loss:
        return False, f"the champion stays: the challenger is worse by more than max_loss {options.max_loss:g}"
    if challenger < champion:
        return True, f"the challenger wins: it is worse, but by no more than max_loss {options.max_loss:g}"
    return True, "the challenger wins: it is at least as good"


@hookimpl
def gate(champion: Contender, challenger: Contender, window: Dataset, options: Options | None,
         run: RunContext) -> GateVerdict:
    """Both contenders' `metric` on the window's labelled rows; the challenger wins unless it lost > max_loss."""
    options = options or Options()
    rows, y = labelled(window)
    old, new = (figure(c, rows, y, options.metric) for c in (champion, challenger))
    wins, why = judge(old, new, options)
    margin = new - old
    reasons: tuple[str, ...] = (f"{options.metric} {new:.3f} (challenger {challenger.version.ref}) vs {old:.3f} (champion "
               f"{champion.version.ref}) on {len(y):,} labelled rows with {int(y.sum()):,} incidents: margin "
               f"{margin:+.3f}; {why}",)
    if math.isnan(margin):
        wins, reasons = False, (*reasons, "the margin is not a number: the champion stays")
    return GateVerdict(winner="challenger" if wins else "champion", metric=options.metric, champion=old,
                       challenger=new, margin=margin, reasons=reasons,
                       figures={"rows": float(len(y)), "incidents": float(y.sum())})


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _gate: kinds.Gate = $module
    _configurable: kinds.Configurable = $module
