"""Retrain when a monitored figure crosses a limit: quality floors, drops from baseline, drift.

The `threshold-policy` reads every monitor report and retrains when, on
enough labelled rows, a quality metric is below its floor (`min_f1`,
`min_recall`, `min_precision`), a metric fell more than `max_drop` below
its validation baseline, or the largest per-feature PSI exceeds
`max_drift_psi`. Every reason is one sentence with its figures; when it
keeps the model, the reasons say which figures were checked and that they
were within limits, or why nothing could be judged.

Options (`[retrain.threshold-policy]`):
    min_f1: Retrain when F1 is below this (default 0.5; unset to skip).
    min_recall: Retrain when recall is below this (default: not checked).
    min_precision: Retrain when precision is below this (default: not checked).
    max_drop: Retrain when a metric in `drop_metrics` is more than this
        below the validation baseline (default 0.1; unset to skip).
    drop_metrics: Metrics compared with the baseline (default f1, recall,
        precision, roc_auc; `mae` and `rmse` count a rise as the drop).
    max_drift_psi: Retrain when `drift_max_psi` exceeds this (default 0.25,
        the conventional "significant shift"; unset to skip).
    min_rows: Judge a report only with at least this many (labelled) rows
        (default 100).
    on_alerts: Also retrain on any monitor alert (default false).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import RetrainDecision, hookimpl
from opsloop.plugins.quality_monitor import LOWER_IS_BETTER, worsening

if TYPE_CHECKING:
    from opsloop.types import ModelVersion, MonitorReport

_optional_unit = attrs.validators.optional([attrs.validators.ge(0), attrs.validators.le(1)])
# inf would silently switch a check off: None says so (issue 8, item 9).
_optional_finite = attrs.validators.optional([attrs.validators.ge(0), attrs.validators.lt(math.inf)])


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `threshold-policy` (`[retrain.threshold-policy]`).

    Attributes:
        min_f1: Retrain when F1 is below this; None skips the check.
        min_recall: Retrain when recall is below this; None skips the check.
        min_precision: Retrain when precision is below this; None skips the check.
        max_drop: Retrain when a metric of `drop_metrics` is more than this
            (absolute) below its validation baseline; None skips the check.
        drop_metrics: The metrics `max_drop` applies to.
        max_drift_psi: Retrain when the largest per-feature PSI of a drift
            report (`drift_max_psi`) exceeds this; None skips the check.
        min_rows: Reports on fewer (labelled) rows are not judged.
        on_alerts: Also retrain on any alert a monitor raised.
    """

    min_f1: float | None = attrs.field(default=0.5, validator=_optional_unit)
    min_recall: float | None = attrs.field(default=None, validator=_optional_unit)
    min_precision: float | None = attrs.field(default=None, validator=_optional_unit)
    max_drop: float | None = attrs.field(default=0.1, validator=_optional_finite)
    drop_metrics: list[str] = attrs.field(factory=lambda: ["f1", "recall", "precision", "roc_auc"])
    max_drift_psi: float | None = attrs.field(default=0.25, validator=_optional_finite)
    min_rows: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    on_alerts: bool = False


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def decide_retrain(version: ModelVersion, reports: list[MonitorReport], options: Options | None) -> RetrainDecision:
    """Retrain when any report crosses a limit; reasons carry the figures either way."""
    options = options or Options()
    if not reports:
        return RetrainDecision(retrain=False, reasons=("no monitor report to judge: keeping the model",))
    breaches: list[str] = []
    within: list[str] = []
    for report in reports:
        b, w = _judge(report, dict(version.metrics), options)
        breaches.extend(b)
        within.extend(w)
    if breaches:
        return RetrainDecision(retrain=True, reasons=tuple(breaches))
    return RetrainDecision(retrain=False, reasons=tuple(within))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _who(report: MonitorReport) -> str:
    return f"{report.monitor}: " if report.monitor else ""


def _judge(report: MonitorReport, version_metrics: dict[str, float],
           options: Options) -> tuple[list[str], list[str]]:
    """(reasons to retrain, figures found within limits) for one report."""
    figures = report.metrics
    who = _who(report)
    rows = int(figures["rows"]) if _finite(figures.get("rows")) else report.rows
    on = f"on {rows:,} rows"
    alerts = [f"{who}alert: {a}" for a in report.alerts] if options.on_alerts else []
    if rows < options.min_rows:
        kept = [f"{who}not judged: {rows:,} (labelled) rows < min_rows {options.min_rows:,}"]
        kept += [f"{who}noted alert: {a}" for a in report.alerts]
        return alerts, kept
    breaches, within = list(alerts), []
    floors = {"f1": options.min_f1, "recall": options.min_recall, "precision": options.min_precision}
    for name, floor in floors.items():
        value = figures.get(name)
        if floor is None or not _finite(value):
            continue
        if value < floor:
            breaches.append(f"{who}{name} {value:.2f} < min_{name} {floor:.2f} {on}")
        else:
            within.append(f"{name} {value:.2f} >= min_{name} {floor:.2f}")
    if options.max_drop is not None:
        baseline = {**version_metrics, **report.baseline}
        for name in options.drop_metrics:
            value, base = figures.get(name), baseline.get(name)
            if not (_finite(value) and _finite(base)):
                continue
            if worsening(name, value, base) > options.max_drop:
                where = "above" if name in LOWER_IS_BETTER else "below"
                breaches.append(f"{who}{name} {value:.2f} is {worsening(name, value, base):.2f} {where} its "
                                f"validation baseline {base:.2f} (max_drop {options.max_drop:.2f}) {on}")
            else:
                within.append(f"{name} {value:.2f} within {options.max_drop:.2f} of baseline {base:.2f}")
    psi = figures.get("drift_max_psi")
    if options.max_drift_psi is not None and _finite(psi):
        worst = _worst_feature(figures, "psi[")
        feature = f" ({worst})" if worst else ""
        if psi > options.max_drift_psi:
            breaches.append(f"{who}max PSI {psi:.2f}{feature} > max_drift_psi {options.max_drift_psi:.2f} "
                            f"{on}: the data drifted")
        else:
            within.append(f"max PSI {psi:.2f}{feature} <= {options.max_drift_psi:.2f}")
    if breaches:
        return breaches, []
    if within:
        kept = [f"{who}all figures within limits {on}: {', '.join(within)}"]
    else:
        kept = [f"{who}no figure this policy checks (f1, recall, precision, drift_max_psi) {on}"]
    kept += [f"{who}noted alert: {a}" for a in report.alerts]
    return [], kept


def _worst_feature(figures: Any, prefix: str) -> str | None:
    """The feature with the highest `<prefix><feature>]` figure."""
    per = {k[len(prefix):-1]: v for k, v in figures.items() if k.startswith(prefix) and k.endswith("]")
           and _finite(v)}
    return max(per, key=per.__getitem__) if per else None
