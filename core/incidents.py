"""Incident-level alerting figures: what an on-call team sees of a model's alerts (issue 13, item 2).

Row figures (precision, recall, F1) count rows; an operator counts incidents
caught, how late, and pages. `incident_figures` groups the rows into runs,
per series, in time order (by series, then time, stably, when a time is
given; else in the given order within each series). Rows without a label
(NaN, None) are left out first, and with a time, rows without one: the
labelled rows either side of them count as consecutive.

- An **incident** is a maximal run of consecutive positive rows (label 1) of
  one series; rows of two series never form one incident.
- An incident is **caught** when at least one of its rows is alerted;
  `incident_recall` is caught / incidents.
- The **detection delay** of a caught incident is the time from its first
  row to its first alerted row: in seconds between their times
  (`delay_mean_s`, `delay_median_s`), or without a time in rows
  (`delay_mean_rows`, `delay_median_rows`); mean and median over the caught
  incidents. An alert already on at an incident's first row is a delay of 0.
- An **alert** is a maximal run of consecutive alerted rows of one series,
  as a paging system fires once while its condition holds: one alert may
  span two incidents and the normal rows between them. A **false alert**
  overlaps no positive row.
- `days` is the time covered, summed over series: last time - first time +
  one step per series, the step being `step_seconds` or the median time
  difference within the series (the median of all series for a series of
  one row). So `alerts_per_day` and `false_alerts_per_day` are per series
  and day, as an operator sets a paging budget per machine per day. Without
  a time, all three are NaN.
- **Point-adjusted** precision, recall and F1 (Xu et al., WWW 2018, as the
  OmniAnomaly (Su et al., KDD 2019) and InterFusion (Li et al., KDD 2021)
  benchmarks score): every row of a caught incident counts as alerted, then
  precision, recall and F1 per row (`pa_f1` = 2TP / (2TP + FP + FN)). They
  flatter: one alerted row in an incident of a thousand makes all of it a
  hit, so a detector that fires at random scores well on long incidents.
  Read `pa_f1` beside `incident_recall` and the per-row F1, never alone.

Every figure is a float (counts too), NaN when undefined (a ratio over
nothing: no incident, no caught incident, no alerted row); no input, no
positive and no alert give figures, never an exception.
"""

from __future__ import annotations

import math
from typing import Any

#: The figures `incident_figures` returns, in display order. A result has the
#: delays in seconds (`_s`, with a time) or in rows (`_rows`, without one).
INCIDENT_FIGURES = ("incidents", "incidents_caught", "incident_recall", "delay_mean_s", "delay_median_s",
                    "delay_mean_rows", "delay_median_rows", "alerts", "false_alerts", "days", "alerts_per_day",
                    "false_alerts_per_day", "pa_precision", "pa_recall", "pa_f1")


def incident_figures(label: Any, alert: Any, *, series: Any = None, time: Any = None,
                     step_seconds: float | None = None) -> dict[str, float]:
    """Incidents caught, detection delay, alerts and false alerts per day, point-adjusted F1 (module docstring).

    Args:
        label: 0/1 per row; NaN or None for a row without a label (left out).
        alert: Whether the model alerted on the row (bool or 0/1; the `prediction` column == 1).
        series: Series id per row (machine, service), or None for one series.
        time: Time per row (datetime64, pandas Series or strings), or None: rows are then in order.
        step_seconds: The sampling step, for `days`; default the median step within each series.

    Returns:
        The figures named in `INCIDENT_FIGURES`, as floats; delays in rows without `time`.
    """
    import numpy as np
    import pandas as pd

    y = _floats(label)
    alerted = _floats(alert) == 1
    if len(alerted) != len(y):
        raise ValueError(f"incident_figures: {len(alerted)} alerts for {len(y)} labels")
    keep = ~np.isnan(y)
    codes = pd.factorize(pd.Series(series, copy=False))[0] if series is not None else np.zeros(len(y), np.int64)
    if time is not None:
        stamps = pd.to_datetime(pd.Series(time, copy=False), utc=True).dt.tz_localize(None)
        keep &= stamps.notna().to_numpy()
        t = stamps.to_numpy("datetime64[ns]").astype(np.int64)[keep]
        codes, y, alerted = codes[keep], y[keep], alerted[keep]
        order = np.lexsort((t, codes))  # stable: ties keep their order
        t = t[order]
    else:
        codes, y, alerted = codes[keep], y[keep], alerted[keep]
        order = np.argsort(codes, kind="stable")
    codes, pos, alerted = codes[order], y[order] == 1, alerted[order]

    first_of_series = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
    starts = pos & (first_of_series | ~np.r_[False, pos[:-1]])
    incident = np.cumsum(starts) - 1  # each positive row's incident
    n_incidents = int(starts.sum())
    hit = np.flatnonzero(pos & alerted)  # in order, so an incident's first hit comes first
    hit_incident = incident[hit]
    first_hit = np.r_[True, hit_incident[1:] != hit_incident[:-1]] if len(hit) else np.zeros(0, bool)
    caught = hit_incident[first_hit]
    begun, detected = np.flatnonzero(starts)[caught], hit[first_hit]
    if time is not None:
        delays = (t[detected] - t[begun]) / 1e9
    else:
        delays = (detected - begun).astype(float)

    alert_starts = alerted & (first_of_series | ~np.r_[False, alerted[:-1]])
    n_alerts = int(alert_starts.sum())
    true_alerts = len(np.unique((np.cumsum(alert_starts) - 1)[pos & alerted]))

    lengths = np.bincount(incident[pos], minlength=n_incidents)
    tp = float(lengths[caught].sum())
    fp = float((alerted & ~pos).sum())
    fn = float(pos.sum()) - tp
    days = _days(t, first_of_series, step_seconds) if time is not None else math.nan
    unit = "s" if time is not None else "rows"
    return {"incidents": float(n_incidents), "incidents_caught": float(len(caught)),
            "incident_recall": _ratio(len(caught), n_incidents),
            f"delay_mean_{unit}": float(delays.mean()) if len(delays) else math.nan,
            f"delay_median_{unit}": float(np.median(delays)) if len(delays) else math.nan,
            "alerts": float(n_alerts), "false_alerts": float(n_alerts - true_alerts), "days": days,
            "alerts_per_day": _ratio(n_alerts, days), "false_alerts_per_day": _ratio(n_alerts - true_alerts, days),
            "pa_precision": _ratio(tp, tp + fp), "pa_recall": _ratio(tp, tp + fn),
            "pa_f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _floats(values: Any) -> Any:
    """`values` as a float array, NaN for None, NA or anything not a number."""
    import numpy as np
    import pandas as pd

    return pd.to_numeric(pd.Series(values, copy=False), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den and not math.isnan(den) else math.nan


def _days(t: Any, first_of_series: Any, step_seconds: float | None) -> float:
    """Days covered, summed over series: last - first + one step each (series are contiguous in `t`)."""
    import numpy as np
    import pandas as pd

    first = np.flatnonzero(first_of_series)
    last = np.r_[first[1:] - 1, len(t) - 1] if len(first) else first
    span = (t[last] - t[first]) / 1e9
    if step_seconds is not None:
        step = np.full(len(first), float(step_seconds))
    else:
        inside = ~first_of_series[1:]
        gaps = np.diff(t)[inside] / 1e9
        which = (np.cumsum(first_of_series) - 1)[1:][inside]
        step = pd.Series(gaps, dtype=float).groupby(which).median().reindex(range(len(first))).to_numpy(copy=True)
        step[np.isnan(step)] = np.median(gaps) if len(gaps) else math.nan
    return float((span + step).sum() / 86400)
