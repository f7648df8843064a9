"""Model quality on a labelled later period: accuracy, precision, recall, F1, ROC AUC, PR AUC.

The `quality-monitor` compares the deployed version's predictions with the
labels of the monitored period, overall and per series (machine, service),
and alerts when a figure fell more than `max_drop` below the version's
validation baseline. Rows without a label (incidents are confirmed late) are
left out; with no labels at all it reports rows and prediction rate only,
and says so in an alert. For a version with an alert threshold (its
predictions are made at it: opsloop.alerting), the baseline of precision,
recall and F1 is what the threshold achieved on the out-of-fold rows
(`threshold.achieved`); the other figures' is validation's mean.

Metrics it reports: `accuracy`, `precision`, `recall`, `f1`, `roc_auc`,
`pr_auc` (classification; `mae`, `rmse`, `r2` for regression), `rows`
(labelled rows judged), `positives`, `prevalence`, `prediction_rate`, and
per series `f1[<series>]` (series with at least `min_series_positives`
positives; the worst `max_series` of them). Per-series figures inform but
do not alert: validation measured no per-series baseline.

For a binary classifier or anomaly detector it also reports how the labelled
rows look to an on-call team (`opsloop.incidents`, defined there and in
docs/alerting.md): `incidents` (runs of positive rows per series),
`incidents_caught`, `incident_recall`, the detection delay
`delay_mean_s`/`delay_median_s` (in rows, `delay_mean_rows`/
`delay_median_rows`, without a time column), `alerts` (runs of rows
predicted 1), `false_alerts`, `days` (series-days covered),
`alerts_per_day`, `false_alerts_per_day` (per series and day) and the
point-adjusted `pa_precision`, `pa_recall`, `pa_f1` (optimistic: read them
beside `incident_recall` and `f1`). Reported, never alerted on: validation
measures no incident baseline.

Options (`[monitor.quality-monitor]`):
    max_drop: Alert when a watched metric is more than this below its
        validation baseline (absolute, default 0.1); for `mae` and `rmse`,
        more than this above it.
    watch: Metrics compared with the baseline (default f1, precision,
        recall, roc_auc, pr_auc; add r2, mae or rmse for regression).
    per_series: Report per-series F1 (default true).
    max_series: At most this many per-series figures, worst first (default 50).
    min_series_positives: Report a series' F1 only with at least this many
        positives (default 1).
    incidents: Report the incident figures (default true).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import MonitorReport, hookimpl

#: Errors: a rise is the drop.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})

if TYPE_CHECKING:
    import pandas as pd
    from opsloop.types import Dataset, ModelVersion


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `quality-monitor` (`[monitor.quality-monitor]`).

    Attributes:
        max_drop: Alert when a watched metric fell more than this (absolute)
            below the version's validation baseline (rose above it, for the
            errors `mae` and `rmse`).
        watch: Metrics compared with the baseline.
        per_series: Compute F1 per series when the data names a series column.
        max_series: Report at most this many per-series F1 figures, worst first.
        min_series_positives: Report a series' F1 only when the series has at
            least this many positives (F1 is undefined without any).
        incidents: Report incident figures (incidents caught, detection delay,
            alerts and false alerts per series-day, point-adjusted F1) for a
            binary task.
    """

    max_drop: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(math.inf)])
    watch: list[str] = attrs.field(factory=lambda: ["f1", "precision", "recall", "roc_auc", "pr_auc"])
    per_series: bool = True
    max_series: int = attrs.field(default=50, validator=attrs.validators.ge(0))
    min_series_positives: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    incidents: bool = True


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def monitor(version: ModelVersion, current: Dataset, predictions: pd.DataFrame,
            options: Options | None) -> MonitorReport:
    """Quality of `predictions` against the labels of `current`, with alerts on drops."""
    import numpy as np
    from opsloop import metrics as m

    options = options or Options()
    task = version.task or ("regression" if "score" not in predictions else "classification")
    frame = current.frame
    if len(predictions) != len(frame):
        from opsloop.errors import DataError

        raise DataError(f"quality-monitor: {len(predictions)} predictions for {len(frame)} rows of {current.name}")
    pred = predictions.reset_index(drop=True)
    labelled = (frame[current.target].notna().to_numpy() if current.target and current.target in frame
                else np.zeros(len(frame), dtype=bool))
    labelled = labelled & pred["prediction"].notna().to_numpy()
    figures: dict[str, float] = {}
    if task != "regression":
        figures["prediction_rate"] = float((pred["prediction"].dropna() == 1).mean()) if len(pred) else math.nan
    if not labelled.any():
        return MonitorReport(model=version.ref, rows=len(frame), metrics={"rows": 0.0, **figures},
                             alerts=((f"no labels: {current.name or 'the monitored period'} has no "
                                      f"{current.target or 'target'} values, so quality cannot be judged "
                                      f"({len(frame):,} rows scored)"),))
    y = frame[current.target].to_numpy()[labelled]
    judged = pred[labelled]
    quality = m.for_task(task, y, judged)
    figures = {**quality, "rows": float(labelled.sum()), **figures}
    if task != "regression":
        figures["positives"] = float((y == 1).sum())
        figures["prevalence"] = figures["positives"] / len(y)
    baseline = {k: float(v) for k, v in version.metrics.items() if k in quality and _finite(v)}
    # predictions are made at the version's alert threshold: precision, recall and F1 compare with what it
    # achieved out-of-fold, not with validation's figures at the model's own 0.5 (opsloop.alerting)
    achieved = (getattr(version, "threshold", None) or {}).get("achieved") or {}
    baseline.update({k: float(achieved[k]) for k in ("precision", "recall", "f1")
                     if k in quality and _finite(achieved.get(k))})
    alerts = [_drop_alert(k, figures[k], baseline[k], options.max_drop, len(y))
              for k in options.watch if k in baseline and _finite(figures.get(k))
              and worsening(k, figures[k], baseline[k]) > options.max_drop]
    if options.per_series and task != "regression" and current.series and current.series in frame:
        # the labelled rows' series only: a text column as numpy is a Python object per row
        series = frame[current.series].iloc[np.flatnonzero(labelled)].to_numpy()
        figures.update(_per_series(series, y, judged["prediction"].to_numpy(), options))
    if labelled.sum() < len(frame):
        figures["unlabelled"] = float(len(frame) - labelled.sum())
    if options.incidents and task != "regression" and np.isin(y, (0, 1)).all():
        figures.update(_incidents(current, np.flatnonzero(labelled), y, judged["prediction"].to_numpy()))
    return MonitorReport(model=version.ref, rows=len(frame), metrics=figures, baseline=baseline,
                         alerts=tuple(alerts))


def _incidents(current: Dataset, rows: Any, y: Any, pred: Any) -> dict[str, float]:
    """The incident figures of the labelled `rows` (positions in `current.frame`), per series and in time order."""
    from opsloop.incidents import incident_figures

    frame = current.frame
    series, time = ((frame[c].iloc[rows] if c and c in frame else None) for c in (current.series, current.time))
    return incident_figures(y, pred == 1, series=series, time=time)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def worsening(name: str, value: float, base: float) -> float:
    """How much worse `value` is than `base`: a fall, or a rise for errors (mae, rmse)."""
    return value - base if name in LOWER_IS_BETTER else base - value


def _drop_alert(name: str, value: float, base: float, max_drop: float, rows: int) -> str:
    where = "above" if name in LOWER_IS_BETTER else "below"
    return (f"{name} {value:.3f} is {worsening(name, value, base):.3f} {where} its validation baseline {base:.3f} "
            f"(max_drop {max_drop:.2f}) on {rows:,} labelled rows")


def _per_series(series: Any, y: Any, pred: Any, options: Options) -> dict[str, float]:
    """`f1[<series>]` for series with enough positives, worst first.

    No alert: a series' F1 has no baseline of its own (validation measures
    the pooled F1), and series differ by nature; the pooled figures alert.
    """
    import numpy as np
    import pandas as pd
    from sklearn.metrics import f1_score

    rows = []
    for name, idx in pd.Series(np.arange(len(y))).groupby(series, sort=False).groups.items():
        yi, pi = y[idx], pred[idx]
        if int((yi == 1).sum()) >= options.min_series_positives:
            rows.append((str(name), float(f1_score(yi, pi, zero_division=0))))
    rows.sort(key=lambda r: r[1])
    return {f"f1[{name}]": f1 for name, f1 in rows[:options.max_series]}
