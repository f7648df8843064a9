"""$title: a monitor of how often a model alerts, overall and per series.

An on-call team feels a model through its alerts: this monitor reports the
share of scored rows the model flagged (`alert_rate`), the busiest series'
share (`max_series_alert_rate`, with a series column), how many series
alerted at all (`alerting_series`) and the rows judged (`rows`), and raises
an alert when the overall share exceeds `max_rate`. It needs no labels, so
it judges fresh rows too. Replace `figures` with your own measurements.

Options (`[monitor.$name]`): see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import Dataset, ModelVersion, MonitorReport, RunContext, hookimpl

if TYPE_CHECKING:
    import pandas as pd

PLUGIN = "$name"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[monitor.$name]`).

    Attributes:
        max_rate: Alert when more than this share of the rows is flagged (0 to 1).
    """

    max_rate: float = attrs.field(default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)])


@hookimpl
def plugin_options() -> type:
    return Options


def figures(current: Dataset, predictions: pd.DataFrame) -> dict[str, float]:
    """The alert figures of the scored rows (NaN where there is nothing to measure)."""
    import pandas as pd

    flagged = pd.to_numeric(predictions["prediction"], errors="coerce").reset_index(drop=True)
    scored = flagged.notna()
    out = {"rows": float(scored.sum()),
           "alert_rate": float((flagged[scored] == 1).mean()) if scored.any() else math.nan}
    series = current.series
    if series and series in current.frame.columns:
        keys = current.frame[series].reset_index(drop=True)[scored]
        per_series = (flagged[scored] == 1).groupby(keys).mean()
        out["max_series_alert_rate"] = float(per_series.max()) if len(per_series) else math.nan
        out["alerting_series"] = float((per_series > 0).sum())
    return out


@hookimpl
def monitor(version: ModelVersion, current: Dataset, predictions: pd.DataFrame, reference: Dataset,
            options: Options | None, run: RunContext) -> MonitorReport:
    """The alert figures of `predictions` (row-aligned with `current`), with an alert above `max_rate`."""
    from opsloop.errors import DataError

    options = options or Options()
    if len(predictions) != len(current.frame):
        raise DataError(f"{PLUGIN}: {len(predictions)} predictions for {len(current.frame)} rows of "
                        f"{current.name or 'the monitored period'}")
    found = figures(current, predictions)
    rate = found["alert_rate"]
    alerts: tuple[str, ...] = ()
    if math.isfinite(rate) and rate > options.max_rate:
        alerts = (f"{PLUGIN}: {version.ref} flagged {rate:.1%} of {int(found['rows']):,} rows, more than "
                  f"max_rate {options.max_rate:.1%}",)
    return MonitorReport(monitor=PLUGIN, model=version.ref, rows=int(found["rows"]), metrics=found, alerts=alerts)


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _monitor: kinds.Monitor = $module
    _configurable: kinds.Configurable = $module
