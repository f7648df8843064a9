"""A typed monitor: the share of rows the model alerts on, against a configured ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from opsloop import hookimpl
from opsloop.types import Dataset, ModelVersion, MonitorReport, RunContext

if TYPE_CHECKING:
    import pandas as pd


@attrs.frozen(kw_only=True)
class Options:
    """`[monitor.typed-monitor]`: the alert rate above which the monitor alerts."""

    max_alert_rate: float = 0.2


@hookimpl
def plugin_options() -> type[Options]:
    return Options


@hookimpl
def monitor(version: ModelVersion, current: Dataset, predictions: pd.DataFrame, reference: Dataset,
            options: Options, run: RunContext) -> MonitorReport:
    rate = float(predictions["prediction"].mean()) if len(predictions) else 0.0
    alerts = (f"alerting on {rate:.0%} of rows (ceiling {options.max_alert_rate:.0%})",) \
        if rate > options.max_alert_rate else ()
    return MonitorReport(model=version.ref, rows=len(current), metrics={"alert_rate": rate}, alerts=alerts)


if TYPE_CHECKING:
    import typed_monitor

    from opsloop import kinds

    _monitor: kinds.Monitor = typed_monitor
    _configurable: kinds.Configurable = typed_monitor
