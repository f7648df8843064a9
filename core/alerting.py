"""Calibrated alert thresholds: the score from which a version alerts, chosen at validation.

A binary classifier or anomaly detector gives every row a score; the alert
cut turns scores into pages. Fixed at the model's own decision (0.5 for a
classifier) it served no one: on SMD machine-1-6 the stale model caught 1.5%
of the later incident rows at 0.5, 73% at a cut chosen for precision 0.9
(issue 13). So the cut is chosen from the out-of-fold scores of validation
(`ValidationReport.oof`: each row scored by a fold model that did not train
on it) by the rule of the `[alerting]` section:

    rule        target means                 the threshold chosen
    precision   the precision to reach       the lowest score at which the
                (default 0.9)                out-of-fold precision is at least
                                             the target: the most incidents
                                             caught at that precision
    recall      the share of positive rows   the highest score that still
                to catch (default 0.9)       catches that share: the fewest
                                             false alerts at that recall
    budget      alerts per series per day    the lowest score at which the
                (default 1)                  alerts (runs of alerted rows,
                                             opsloop.incidents) per series-day
                                             stay within the budget
    f1          (no target)                  the score of the best F1
    fixed       the score itself (0.5)       the target, as given

A row alerts when its score is at least the threshold (`inclusive`). The
threshold and what it achieved on the out-of-fold rows (precision, recall,
F1, alerts per series-day, incidents caught: `achieved`) go into the bundle's
manifest and the store; they are optimistic in one way only: the cut was
chosen on the rows it is measured on (the scores are out-of-fold, the cut is
not). `opsloop models promote NAME N --threshold X` (or `--rule`/`--target`,
chosen again from the out-of-fold scores the bundle keeps) changes a
version's threshold without retraining.

A rule that cannot be met (no positive rows, a precision never reached) is a
`ConfigError` naming the rule, the target and the best value reachable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.types import Dataset

__all__ = ["AlertingSection", "RULES", "OOF_FILE", "apply", "choose", "fixed", "oof_frame", "read_oof",
           "describe"]

#: The rules and their default targets (None: the rule takes no target).
RULES: dict[str, float | None] = {"precision": 0.9, "recall": 0.9, "budget": 1.0, "f1": None, "fixed": 0.5}
#: The out-of-fold scores a bundle keeps (score, label, and series and time when the data has them), so that
#: `opsloop models promote --rule` can choose again without retraining.
OOF_FILE = "threshold-oof.parquet"


def _check_rule(instance: AlertingSection, attribute: Any, value: str) -> None:
    if value not in RULES:
        from opsloop.errors import closest

        hint = closest(str(value), RULES)
        raise ValueError(f"'rule' must be one of {', '.join(map(repr, RULES))}, got {value!r}"
                         + (f' (did you mean "{hint}"?)' if hint else ""), attribute)


def _check_target(instance: AlertingSection, attribute: Any, value: float | None) -> None:
    rule = instance.rule
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'target' must be a finite number, got {value!r}", attribute)
    if rule == "f1":
        raise ValueError("'target' does nothing with rule \"f1\" (the threshold of the best F1): remove it, "
                         "or choose rule \"precision\", \"recall\", \"budget\" or \"fixed\"", attribute)
    if rule in ("precision", "recall") and not 0 < value <= 1:
        raise ValueError(f"'target' of rule {rule!r} is a share in (0, 1], got {value!r}", attribute)
    if rule == "budget" and value <= 0:
        raise ValueError(f"'target' of rule \"budget\" is alerts per series per day, above 0, got {value!r}",
                         attribute)


def _check_per_series(instance: AlertingSection, attribute: Any, value: bool) -> None:
    if value and instance.rule == "fixed":
        raise ValueError("'per_series' does nothing with rule \"fixed\" (one score for every series): remove it, "
                         "or choose another rule", attribute)


@attrs.frozen(kw_only=True)
class AlertingSection:
    """`[alerting]`: how a version's alert threshold is chosen from its out-of-fold scores.

    The default, one alert per series per day (`budget`), is the rule that
    stayed near the best of the others on both real sets, where the best-F1
    cut paged ten times a server a day on ASD (benchmarks/alerting.py,
    benchmarks/README.md). Where it cannot work (data without a time column,
    or a model whose most confident rows, tied at the top score, already
    exceed the budget) the default falls back to `f1`, with a note (the
    `Runner`); a `budget` rule written in the config is an error there.

    Attributes:
        rule: `"budget"` (alerts per series per day; the default),
            `"precision"`, `"recall"`, `"f1"` (the best F1) or `"fixed"`
            (the target is the score).
        target: What the rule aims at; its default depends on the rule
            (`RULES`): 0.9 precision, 0.9 recall, 1 alert per series-day,
            0.5 for fixed; none for f1.
        per_series: Also choose one threshold per series (machine, service)
            by the same rule on that series' out-of-fold rows; a series
            where the rule cannot be met (no incident of its own, say), or
            one not seen in validation, alerts at the overall threshold.
    """

    rule: str = attrs.field(default="budget", validator=_check_rule)
    target: float | None = attrs.field(default=None, validator=_check_target)
    per_series: bool = attrs.field(default=False, validator=_check_per_series)

    @property
    def aim(self) -> float | None:
        """The target, or the rule's default."""
        return RULES[self.rule] if self.target is None else float(self.target)


# ---------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------


def oof_frame(oof: pd.DataFrame | None, validated: Dataset) -> pd.DataFrame | None:
    """The out-of-fold rows a threshold is chosen on: `score`, `label` (0/1), and `series` and `time` where
    the validated data has them; None when there is nothing to calibrate (a regressor, no scores, not
    binary labels, a single class)."""
    import numpy as np
    import pandas as pd

    if oof is None or not len(oof) or not {"row", "label", "score"} <= set(oof.columns):
        return None
    score = oof["score"].to_numpy(dtype=float)
    label = pd.to_numeric(oof["label"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(score) & np.isin(label, (0.0, 1.0))
    if not keep.any():
        return None
    rows = oof["row"].to_numpy()[keep]
    out = pd.DataFrame({"score": score[keep], "label": label[keep].astype(np.int8)})
    frame = validated.frame
    if validated.series and validated.series in frame.columns:
        out["series"] = frame[validated.series].to_numpy()[rows]
    if validated.time and validated.time in frame.columns:
        out["time"] = pd.to_datetime(frame[validated.time].to_numpy()[rows])
    return out


def choose(rows: pd.DataFrame, section: AlertingSection, *, where: str = "validation") -> dict[str, Any]:
    """The threshold `section`'s rule gives on out-of-fold `rows` (`oof_frame`), as the manifest keeps it.

    Raises:
        ConfigError: `[alerting]` names what cannot be met and the best reachable value.
    """
    positives = int((rows["label"] == 1).sum())
    threshold: dict[str, Any] = {"value": _value(rows, section), "rule": section.rule, "target": section.aim,
                                 "inclusive": True, "source": where, "rows": len(rows), "positives": positives}
    if section.per_series and "series" in rows.columns:
        threshold["per_series"] = _per_series(rows, attrs.evolve(section, per_series=False))
    threshold["achieved"] = achieved(rows, threshold)
    return _strict(threshold)


def _value(rows: pd.DataFrame, section: AlertingSection) -> float:
    """The score the rule chooses on `rows` (ConfigError when it cannot be met)."""
    import numpy as np

    score = rows["score"].to_numpy(dtype=float)
    label = rows["label"].to_numpy() == 1
    rule, target = section.rule, section.aim
    positives = int(label.sum())
    size = f"{len(label):,} out-of-fold rows, {positives:,} positive"
    if rule == "fixed":
        return float(target)
    if not positives:
        raise _unmet(section, f"the {size} hold no incident, so no threshold can be calibrated on them")
    if rule == "budget":
        if "time" not in rows.columns:
            raise _unmet(section, "it counts alerts per day and the data has no time column ([data] time)")
        return _budget(rows, float(target), section, size)
    cuts, tp, fp = _curve(score, label)
    precision = tp / (tp + fp)
    recall = tp / positives
    if rule == "precision":
        met = np.flatnonzero(precision >= target - 1e-12)
        if not len(met):
            best = int(np.argmax(precision))
            raise _unmet(section, f"the best precision on the {size} is {precision[best]:.3f} (recall "
                                  f"{recall[best]:.3f} at threshold {cuts[best]:.4g})")
        return float(cuts[met[-1]])
    if rule == "recall":
        return float(cuts[np.flatnonzero(recall >= target - 1e-12)[0]])
    f1 = 2 * tp / (tp + fp + positives)  # rule f1
    return float(cuts[int(np.argmax(f1))])


def _per_series(rows: pd.DataFrame, section: AlertingSection) -> dict[str, float]:
    """The rule's threshold on each series' own rows, for the series where it can be met (by series name)."""
    out = {}
    for name, group in rows.groupby("series", sort=True):
        try:
            out[str(name)] = _value(group, section)
        except ConfigError:  # no incident of its own, a precision it never reaches: the overall threshold
            continue
    return out


def fixed(rows: pd.DataFrame | None, value: float, *, where: str) -> dict[str, Any]:
    """A threshold given as a number (`promote --threshold`), with what it achieves on `rows` if known."""
    out: dict[str, Any] = {"value": float(value), "rule": "fixed", "target": float(value), "inclusive": True,
                           "source": where}
    if rows is not None:
        out.update(rows=len(rows), positives=int((rows["label"] == 1).sum()), achieved=achieved(rows, value))
    return _strict(out)


def _strict(threshold: dict[str, Any]) -> dict[str, Any]:
    """As the manifest, the store and every `--json` keep it: NaN figures (nothing to divide by) as None."""
    from opsloop.store import strict_json

    return strict_json(threshold)


def _unmet(section: AlertingSection, why: str) -> ConfigError:
    if section.aim is None:
        return ConfigError(f"rule {section.rule!r} cannot be met: {why}; choose another rule (docs/alerting.md)",
                           section="alerting", key="rule")
    return ConfigError(f"rule {section.rule!r} with target {section.aim:g} cannot be met: {why}; lower the target "
                       "or choose another rule (docs/alerting.md)", section="alerting", key="target")


def _curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores from highest to lowest, and the true and false positives of alerting at each."""
    import numpy as np

    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], label[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each run of equal scores
    tp = np.cumsum(y)[last].astype(float)
    return s[last], tp, (last + 1) - tp


def _budget(rows: pd.DataFrame, target: float, section: AlertingSection, size: str) -> float:
    """The lowest score reached by lowering the cut from the top until the alerts per series-day would
    exceed `target`. Alerts are runs of alerted rows (opsloop.incidents), so they do not only grow as the cut
    falls: far down, runs merge until alerting on every row is one endless alert. The cut stops at the
    first excess, never beyond it: up to 256 cuts spread over the distinct scores are tried from the top,
    then the distinct scores between the last one within budget and the first one over it, by bisection."""
    import numpy as np

    from opsloop.incidents import incident_figures

    ordered = rows.sort_values([c for c in ("series", "time") if c in rows.columns], kind="stable")
    score = ordered["score"].to_numpy(dtype=float)
    series = ordered["series"].to_numpy() if "series" in ordered.columns else None
    days = incident_figures(ordered["label"].to_numpy(), np.zeros(len(score), dtype=bool), series=series,
                            time=ordered["time"].to_numpy())["days"]
    first = np.ones(len(score), dtype=bool)  # rows that start a series: a run never continues across series
    if series is not None and len(score):
        first[1:] = series[1:] != series[:-1]

    def rate(cut: float) -> float:
        alert = score >= cut
        starts = alert & (first | ~np.r_[False, alert[:-1]])
        return float(starts.sum()) / days if days > 0 else math.inf

    cuts = np.unique(score)[::-1]  # distinct scores, highest first
    if not rate(cuts[0]) <= target:
        raise _unmet(section, f"alerting only at the highest score already gives {rate(cuts[0]):.3g} alerts per "
                              f"series-day on the {size}")
    grid = np.unique(np.linspace(0, len(cuts) - 1, num=min(len(cuts), 256)).round().astype(int))
    ok = 0  # index into cuts of the lowest cut found within budget
    for index in grid[1:]:
        if rate(cuts[index]) > target:
            high = int(index)
            break
        ok = int(index)
    else:
        return float(cuts[ok])
    while high - ok > 1:
        mid = (ok + high) // 2
        if rate(cuts[mid]) <= target:
            ok = mid
        else:
            high = mid
    return float(cuts[ok])


def achieved(rows: pd.DataFrame, threshold: Mapping[str, Any] | float) -> dict[str, float]:
    """Per-row precision, recall and F1 and the incident figures (opsloop.incidents) of alerting at
    `threshold` (a threshold object, per series where it has them, or a number) on `rows`."""
    from opsloop.incidents import incident_figures
    from opsloop.profile import counts_to_figures

    if not isinstance(threshold, Mapping):
        threshold = {"value": float(threshold)}
    rows = rows.assign(alert=alerts(rows["score"], threshold, rows["series"] if "series" in rows.columns else None))
    label = rows["label"].to_numpy() == 1
    alert = rows["alert"].to_numpy()
    tp = float((label & alert).sum())
    figures = counts_to_figures(tp, float((~label & alert).sum()), float((label & ~alert).sum()), float(len(label)))
    figures = {k: figures[k] for k in ("precision", "recall", "f1", "positive_rate")}
    ordered = rows.sort_values([c for c in ("series", "time") if c in rows.columns], kind="stable")
    figures.update(incident_figures(ordered["label"].to_numpy(), ordered["alert"].to_numpy(),
                                    series=ordered["series"].to_numpy() if "series" in ordered.columns else None,
                                    time=ordered["time"].to_numpy() if "time" in ordered.columns else None))
    return {k: float(v) for k, v in figures.items()}


# ---------------------------------------------------------------------------
# Using
# ---------------------------------------------------------------------------


def apply(predictions: pd.DataFrame, threshold: Mapping[str, Any] | None, series: Any = None) -> pd.DataFrame:
    """`predictions` (`predictions_frame`) with `prediction` = 1 where the row alerts (`alerts`), else 0;
    unchanged without a threshold or a score. `series` (row-aligned) picks per-series thresholds."""
    if not threshold or "score" not in predictions.columns:
        return predictions
    alert = alerts(predictions["score"], threshold, series)
    dtype = predictions["prediction"].dtype if predictions["prediction"].dtype.kind in "iub" else "int64"
    return predictions.assign(prediction=alert.astype(dtype))


def alerts(score: Any, threshold: Mapping[str, Any], series: Any = None) -> np.ndarray:
    """Whether each score alerts: `score >= value` (`>` when not `inclusive`), compared in float64, where
    `value` is the row's series' own threshold (`per_series`, when `series` is given and has one) or the
    overall one. What batch scoring, the server's fast path and the figures at a threshold all use."""
    import numpy as np
    import pandas as pd

    score = np.asarray(score, dtype=np.float64)
    value: Any = float(threshold["value"])
    own = threshold.get("per_series")
    if own and series is not None:
        names = pd.Series(np.asarray(series, dtype=object)).astype(str)  # stored by name, as JSON keys are
        value = names.map(own).fillna(value).to_numpy(dtype=np.float64)
    return score >= value if threshold.get("inclusive", True) else score > value


def describe(threshold: Mapping[str, Any] | None, form: str = ".4g") -> str:
    """`0.7312 (precision 0.9)`, for tables and messages (the value as `form` writes it); `-` without one."""
    if not threshold:
        return "-"
    rule, target = threshold.get("rule"), threshold.get("target")
    aim = "" if target is None or rule == "fixed" else f" {float(target):g}"
    own = threshold.get("per_series")
    how = f"{rule}{aim}" if rule else ""
    how += f"; {len(own)} series their own" if own else ""
    return format(float(threshold["value"]), form) + (f" ({how})" if how else "")


def read_oof(path: Any) -> pd.DataFrame | None:
    """The out-of-fold rows a bundle keeps (`OOF_FILE`), or None when it has none."""
    from pathlib import Path

    import pandas as pd

    file = Path(path) / OOF_FILE
    return pd.read_parquet(file) if file.is_file() else None
