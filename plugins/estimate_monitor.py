"""Precision, recall and F1 estimated before labels arrive, from the version's calibrated scores.

The `estimate-monitor` does what NannyML calls confidence-based performance
estimation (CBPE): incidents are confirmed late, so the labels of a window
come days after its predictions, but a model whose scores are calibrated
says how many of its alerts it expects to be right. At register time the
version's out-of-fold validation scores were calibrated (an isotonic
regression of the label on the score, `opsloop.profile.Calibration`, kept in
the bundle's profile as JSON); here each monitored row's score becomes `p`,
the probability that the row is an incident, and with `positive` the rows
the model predicted 1 (its `prediction`, or the calibration's threshold on
the score where a row has none):

    expected TP = sum of p over the rows predicted 1
    expected FP = sum of 1 - p over the rows predicted 1
    expected FN = sum of p over the rows predicted 0

precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN),
as if those were counts. Where the window holds labels, the same figures are
counted on the labelled rows beside them (`realized_*`), so that a later run
shows how good the estimate was.

The estimate holds while the calibration does: on rows like the ones it was
fitted on (no concept shift: the same score means the same chance of an
incident). It does not see a shift in what a score means (a new kind of
incident the model scores low), only a shift in the scores themselves; read
it beside `drift-monitor`, and trust `realized_*` once labels arrived.

Metrics: `rows` (rows with a finite score), `estimated_precision`,
`estimated_recall`, `estimated_f1`, `estimated_prevalence` (mean p: the
expected share of incidents), `expected_positives` (sum of p),
`positive_rate` (share predicted 1); with labels `labelled`, `positives`,
`realized_precision`, `realized_recall`, `realized_f1`,
`realized_prevalence`. Precision, recall and F1 are NaN where they divide by
zero. Baseline: the out-of-fold figures of validation (the same rows the
calibration saw, with the fold models' predictions) under both the
estimated and the realized names. Alerts: estimated F1 more than
`max_f1_drop` below the baseline F1, in a window that expects at least
`min_expected_positives` incident rows; and one alert, with no estimate,
when the version has no calibration or the window has fewer than
`min_rows` scored rows. The defaults keep every day of healthy ASD and SMD
data quiet (docs/monitoring.md has the figures).

Options (`[monitor.estimate-monitor]`): min_rows, max_f1_drop,
min_expected_positives; see `Options`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import MonitorReport, hookimpl
from opsloop.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import pandas as pd
    from opsloop.profile import Calibration
    from opsloop.types import Dataset, ModelVersion

#: The figures estimated and realized, and their names in the calibration's baseline.
FIGURES = ("precision", "recall", "f1", "prevalence")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `estimate-monitor` (`[monitor.estimate-monitor]`).

    Attributes:
        min_rows: Estimate only on at least this many scored rows; fewer
            give one alert and no estimate (a handful of rows holds a
            fraction of an expected incident).
        max_f1_drop: Alert when the estimated F1 is more than this
            (absolute) below the out-of-fold F1 of validation.
        min_expected_positives: Alert on the estimated F1 only when the
            window is expected to hold at least this many positive rows
            (the sum of p): F1 on a quiet window with one or two expected
            incident rows swings from 0 to 1 and says nothing.
    """

    min_rows: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    max_f1_drop: float = attrs.field(default=0.3, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    min_expected_positives: float = attrs.field(default=20.0, validator=[attrs.validators.ge(0),
                                                                         attrs.validators.lt(math.inf)])


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def monitor(version: ModelVersion, current: Dataset, predictions: pd.DataFrame,
            options: Options | None) -> MonitorReport:
    """Estimated precision, recall and F1 from calibrated scores, beside the realized ones where labelled."""
    import numpy as np

    options = options or Options()
    if len(predictions) != len(current):
        raise DataError(f"estimate-monitor: {len(predictions)} predictions for {len(current)} rows of "
                        f"{current.name or 'the monitored period'}")
    calibration = _calibration(version)
    if calibration is None:
        return _without(version, len(current), (
            f"no calibration: {version.ref} has no score calibration in its bundle (registered before "
            "estimate-monitor existed, validated without out-of-fold scores, or not a 0/1 model with scores), "
            "so performance cannot be estimated; register a new version with a validator (kfold, holdout)"))
    if "score" not in predictions.columns:
        return _without(version, len(current), f"no scores: the predictions of {version.ref} have no score, so "
                                               "performance cannot be estimated")
    score = predictions["score"].to_numpy(dtype=float)
    scored = np.isfinite(score)
    rows = int(scored.sum())
    if rows < options.min_rows:
        return _without(version, len(current), (
            f"too few rows: {rows:,} scored row(s) in {current.name or 'the window'}, fewer than min_rows "
            f"{options.min_rows:,}: no estimate"), scored=rows)
    threshold = getattr(version, "threshold", None)
    frame = current.frame
    series = (frame[current.series].to_numpy() if threshold and threshold.get("per_series") and current.series
              and current.series in frame.columns else None)
    positive = _positive(predictions, score, calibration, threshold, series)
    p = calibration.probability(score)
    every = rows == len(score)  # the usual case: no copies of a million rows
    figures = {"rows": float(rows), **_estimate(p if every else p[scored], positive if every else positive[scored])}
    labels = _labels(current)
    labelled = ~np.isnan(labels) if every else scored & ~np.isnan(labels)
    count = int(labelled.sum())
    if count:
        figures["labelled"] = float(count)
        whole = count == len(labels)
        figures.update(_realized(labels == 1 if whole else labels[labelled] == 1,
                                 positive if whole else positive[labelled]))
    base = calibration.baseline
    baseline = {f"{kind}_{name}": float(base[name]) for name in FIGURES for kind in ("estimated", "realized")
                if _finite(base.get(name))}
    if _finite(base.get("positive_rate")):
        baseline["positive_rate"] = float(base["positive_rate"])
    alerts = []
    f1, base_f1 = figures["estimated_f1"], base.get("f1")
    enough = figures["expected_positives"] >= options.min_expected_positives
    if enough and _finite(base_f1) and _finite(f1) and base_f1 - f1 > options.max_f1_drop:
        alerts.append(f"estimated F1 {f1:.3f} is {base_f1 - f1:.3f} below the out-of-fold F1 {base_f1:.3f} "
                      f"(max_f1_drop {options.max_f1_drop:.2f}) on {rows:,} rows, before labels: expected "
                      f"precision {figures['estimated_precision']:.3f}, recall {figures['estimated_recall']:.3f}")
    return MonitorReport(model=version.ref, rows=len(current), metrics=figures, baseline=baseline,
                         alerts=tuple(alerts))


def _without(version: ModelVersion, rows: int, alert: str, *, scored: int = 0) -> MonitorReport:
    """A report with no estimate: the scored rows and one alert saying why."""
    return MonitorReport(model=version.ref, rows=rows, metrics={"rows": float(scored)}, alerts=(alert,))


def _calibration(version: ModelVersion) -> Calibration | None:
    """The version's calibration; None for a bundle without one (or a version with no bundle on disk).

    Its decision and out-of-fold baseline are at the version's current alert threshold: the one the bundle
    was calibrated at, or the one `opsloop models promote --threshold` gave it since (opsloop.alerting).
    """
    import attrs

    from opsloop import profile
    from opsloop.bundle import MANIFEST

    if not (version.path / MANIFEST).is_file():
        return None
    calibration = profile.read_calibration(version)
    threshold = getattr(version, "threshold", None)
    if calibration is None or not threshold:
        return calibration
    achieved = threshold.get("achieved") or {}
    baseline = {**calibration.baseline, **{k: float(achieved[k]) for k in (*FIGURES, "positive_rate")
                                           if _finite(achieved.get(k))}}
    return attrs.evolve(calibration, threshold=float(threshold["value"]),
                        inclusive=bool(threshold.get("inclusive", True)), baseline=baseline)


def _positive(predictions: pd.DataFrame, score: np.ndarray, calibration: Calibration,
              threshold: Mapping[str, Any] | None = None, series: Any = None) -> np.ndarray:
    """Rows predicted 1: the logged `prediction`, or where there is none, the version's alert threshold on
    the score (per series where it has them: opsloop.alerting), else the calibration's."""
    import numpy as np
    import pandas as pd

    if threshold:
        from opsloop.alerting import alerts

        by_score = alerts(score, threshold, series)
    else:
        by_score = calibration.predicted(score)
    if "prediction" not in predictions.columns:
        if by_score is None:
            raise DataError("estimate-monitor: the predictions have no `prediction` column and the version's "
                            "calibration has no decision threshold to read one off the scores")
        return by_score
    prediction = pd.to_numeric(predictions["prediction"], errors="coerce").to_numpy(dtype=float)
    missing = np.isnan(prediction)
    if missing.any() and by_score is not None:
        return np.where(missing, by_score, prediction == 1)
    return prediction == 1


def _labels(current: Dataset) -> np.ndarray:
    """The target as floats, NaN where there is no label (or no target column)."""
    import numpy as np
    import pandas as pd

    frame = current.frame
    if not current.target or current.target not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[current.target], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _estimate(p: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """CBPE: expected true positives, false positives and false negatives, as if counts."""
    from opsloop.profile import counts_to_figures

    import numpy as np

    on = float(np.dot(p, positive))  # the sum of p over the rows predicted 1, without a copy of them
    figures = counts_to_figures(on, float(np.count_nonzero(positive)) - on, float(p.sum()) - on, float(len(p)))
    out = {f"estimated_{name}": figures[name] for name in FIGURES}
    out["positive_rate"] = figures["positive_rate"]
    out["expected_positives"] = float(p.sum())
    return out


def _realized(actual: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    from opsloop.profile import counts_to_figures

    import numpy as np

    tp = float(np.count_nonzero(actual & positive))
    figures = counts_to_figures(tp, float(np.count_nonzero(positive)) - tp, float(np.count_nonzero(actual)) - tp,
                                float(len(actual)))
    return {**{f"realized_{name}": figures[name] for name in FIGURES}, "positives": float(np.count_nonzero(actual))}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
