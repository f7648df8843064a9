"""`estimate-monitor` end to end: `opsloop run` and `opsloop monitor` with it in `[monitor] plugins` (issue 9, item 5).

A real XGBoost version on two ASD servers; `opsloop run` validates it
(time-ordered folds, whose out-of-fold scores are calibrated into the
bundle), scores the later period with the batch deployment (which logs the
predictions) and monitors it; `opsloop monitor` then reads the log, first
before any label arrived, then after `opsloop feedback` gave them all.
"""

from __future__ import annotations

import math

import pytest

CONFIG = {
    "project": {"name": "asd-est"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
        "monitor": "entity in ['omi-1', 'omi-9'] and timestamp >= '2024-01-08 12:00'",
    },
    "preprocess": {"plugins": ["impute"]},
    "train": {"xgboost": {"n_estimators": 40}},
    "validate": {"kfold": {"folds": 3}},
    "monitor": {"plugins": ["quality-monitor", "estimate-monitor"]},
    "retrain": {"plugins": []},
}
ESTIMATED = ("estimated_precision", "estimated_recall", "estimated_f1", "expected_positives", "positive_rate")


def _report(reports: list[dict], name: str) -> dict:
    return next(r for r in reports if r["monitor"] == name)


def _same(a: float | None, b: float | None) -> bool:
    """Equal figures (to float32 rounding of logged scores); NaN (null in `opsloop monitor --json`) matches NaN."""
    def nan(x: float | None) -> bool:
        return x is None or math.isnan(x)

    return nan(a) and nan(b) if nan(a) or nan(b) else a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_run_and_monitor_report_the_estimate_beside_the_realized_figures(opsloop_project):
    import pandas as pd

    project = opsloop_project(config=CONFIG)
    run = project.run("run", "--json").assert_ok().json
    estimate = _report(run["monitor"], "estimate-monitor")
    quality = _report(run["monitor"], "quality-monitor")
    m = estimate["metrics"]
    assert m["rows"] == m["labelled"] == quality["metrics"]["rows"] == 2 * 2160
    assert all(0 <= m[k] for k in ESTIMATED)
    # the realized figures are quality-monitor's on the same rows and predictions
    for name in ("precision", "recall", "f1"):
        assert _same(m[f"realized_{name}"], quality["metrics"][name]), name
    assert {"estimated_f1", "realized_f1"} <= set(estimate["baseline"])
    assert "oof" not in run["validation"][0]  # the out-of-fold rows stay out of the JSON

    # the batch deployment logged what it scored; no label has arrived yet: the estimate alone
    before = project.run("monitor", "--json").assert_ok().json
    assert before["monitors"] == ["quality-monitor", "estimate-monitor"]
    (window,) = before["windows"]
    logged = _report(window["reports"], "estimate-monitor")["metrics"]
    assert logged["rows"] == m["rows"] and "realized_f1" not in logged and "labelled" not in logged
    for key in ESTIMATED:
        assert _same(logged[key], m[key]), key

    # every label arrives: the realized figures join, as in the run
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"]) & (frame["timestamp"] >= pd.Timestamp("2024-01-08 12:00"))]
    rows = frame[["entity", "timestamp", "label"]].itertuples(index=False)
    (project.path / "labels.csv").write_text(
        "series,time,label\n" + "".join(f"{e},{t.isoformat()},{int(y)}\n" for e, t, y in rows), encoding="utf-8")
    project.run("feedback", "--file", "labels.csv").assert_ok()
    after = project.run("monitor", "--json").assert_ok().json
    labelled = _report(after["windows"][0]["reports"], "estimate-monitor")["metrics"]
    assert labelled["labelled"] == m["labelled"]
    for key in (*ESTIMATED, "realized_precision", "realized_recall", "realized_f1", "positives"):
        assert _same(labelled[key], m[key]), key
