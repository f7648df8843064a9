"""A typed retrain policy: retrain when any monitor alerted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import ModelVersion, MonitorReport, RetrainDecision, RunContext


@hookimpl
def decide_retrain(version: ModelVersion, reports: list[MonitorReport], options: Any,
                   run: RunContext) -> RetrainDecision:
    alerts = [f"{report.monitor}: {alert}" for report in reports for alert in report.alerts]
    if alerts:
        return RetrainDecision(retrain=True, reasons=tuple(alerts))
    return RetrainDecision(retrain=False, reasons=(f"no monitor alerted on {version.ref}",))


if TYPE_CHECKING:
    import typed_policy

    from opsloop import kinds

    _policy: kinds.RetrainPolicy = typed_policy
