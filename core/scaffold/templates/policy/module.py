"""$title: a retrain policy that retrains when a quality figure falls well below its validation value.

Reads every monitor report that measured `metric` (ROC AUC by default: it
ranks incidents above normal rows whatever the alert threshold) on at least
`min_rows` rows, and asks for a retrain when it is more than `max_drop`
(a share, 0.1 = 10%) below the version's validation figure. Optionally, any
monitor alert also asks for one. Every decision says why, with its figures.
Replace `judge` with your own rule.

Options (`[retrain.$name]`): see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

from opsloop import ModelVersion, MonitorReport, RetrainDecision, RunContext, hookimpl

PLUGIN = "$name"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[retrain.$name]`).

    Attributes:
        metric: The figure to watch, as monitors name it (`roc_auc`, `f1`, `recall`...).
        max_drop: Retrain when the figure is more than this share below its validation value (0 to 1).
        min_rows: Reports on fewer rows are not judged (too few to tell).
        on_alerts: Also retrain on any alert a monitor raised.
    """

    metric: str = "roc_auc"
    max_drop: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    min_rows: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    on_alerts: bool = False


@hookimpl
def plugin_options() -> type:
    return Options


def judge(version: ModelVersion, report: MonitorReport, options: Options) -> tuple[bool, str] | None:
    """(retrain?, why) for one report, or None when the report says nothing about `metric`."""
    value = report.metrics.get(options.metric)
    base = report.baseline.get(options.metric, version.metrics.get(options.metric))
    if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)):
        return None
    where = f"{report.monitor or 'a monitor'} on {report.rows:,} rows"
    if report.rows < options.min_rows:
        return False, f"{options.metric} not judged: {where}, fewer than min_rows {options.min_rows}"
    floor = base * (1 - options.max_drop)
    if value < floor:
        return True, (f"{options.metric} {value:.3f} is more than {options.max_drop:.0%} below its validation "
                      f"value {base:.3f} ({where})")
    return False, f"{options.metric} {value:.3f} holds against its validation value {base:.3f} ({where})"


@hookimpl
def decide_retrain(version: ModelVersion, reports: list[MonitorReport], options: Options | None,
                   run: RunContext) -> RetrainDecision:
    """Retrain when any report's figure fell too far (or, with `on_alerts`, any report alerted)."""
    options = options or Options()
    verdicts = [v for v in (judge(version, r, options) for r in reports) if v is not None]
    reasons = [why for retrain, why in verdicts if retrain]
    if options.on_alerts:
        reasons += [f"{r.monitor or 'a monitor'} alerted: {alert}" for r in reports for alert in r.alerts]
    if reasons:
        return RetrainDecision(retrain=True, reasons=tuple(reasons), policy=PLUGIN)
    kept = [why for _, why in verdicts] or [f"no report measured {options.metric}: nothing to judge"]
    return RetrainDecision(retrain=False, reasons=tuple(kept), policy=PLUGIN)


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _policy: kinds.RetrainPolicy = $module
    _configurable: kinds.Configurable = $module
