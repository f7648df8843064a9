"""Tests of the `$name` monitor: opsloop's monitor conformance suite and whole runs on a small real set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from opsloop.testing import Project
from opsloop.testing.conformance import MonitorSuite


class TestConformance(MonitorSuite, plugin="$name"):
    """A report of named figures on a real registered version, in a run and alone."""


def report_of(project: Project) -> dict[str, Any]:
    result = project.run("run").assert_ok()
    return next(r for r in result.json["monitor"] if r["monitor"] == "$name")


def test_the_figures_are_those_of_the_predictions_file(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"monitor": {"plugins": ["$name"]}})
    report = report_of(project)
    predictions = pd.read_parquet(project.path / ".opsloop" / "predictions" / "small-telemetry-v1.parquet")
    assert report["metrics"]["rows"] == len(predictions)
    assert report["metrics"]["alert_rate"] == (predictions["prediction"] == 1).mean()
    assert report["metrics"]["max_series_alert_rate"] == (predictions["prediction"] == 1).groupby(
        predictions["entity"]).mean().max()
    assert report["alerts"] == []


def test_it_alerts_above_max_rate(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"monitor": {"plugins": ["$name"], "$name": {"max_rate": 0.0}}})
    report = report_of(project)
    assert report["metrics"]["alert_rate"] > 0
    assert len(report["alerts"]) == 1 and "max_rate" in report["alerts"][0]
