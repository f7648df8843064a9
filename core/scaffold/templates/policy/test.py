"""Tests of the `$name` retrain policy: opsloop's policy conformance suite and whole runs on a small real set."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import $module
from opsloop import ModelVersion, MonitorReport, RunContext
from opsloop.config import read
from opsloop.testing import Project
from opsloop.testing.conformance import PolicySuite


class TestConformance(PolicySuite, plugin="$name"):
    """A decision with reasons; keeps the model on healthy reports, retrains on degraded ones."""


def decision_of(project: Project) -> dict[str, Any]:
    decision: dict[str, Any] = project.run("run").assert_ok().json["decision"]
    return decision


def test_a_run_decides_on_the_monitored_figure(opsloop_project: Callable[..., Project]) -> None:
    # max_drop 1: no fall of ROC AUC is too far; the reason gives the monitored figure
    decision = decision_of(opsloop_project(small=True, config={"retrain": {"plugins": ["$name"],
                                                                          "$name": {"max_drop": 1.0}}}))
    assert decision["retrain"] is False
    assert "roc_auc" in decision["reasons"][0] and "holds" in decision["reasons"][0]


@pytest.mark.parametrize(("roc_auc", "on_alerts", "retrain"), [(0.75, False, False), (0.70, False, True),
                                                           (0.75, True, True), (math.nan, False, False)])
def test_the_rule_on_reports(roc_auc: float, on_alerts: bool, retrain: bool, tmp_path: Path) -> None:
    """Validation ROC AUC 0.8, max_drop 10%: retrain below 0.72, or on the report's alert when on_alerts."""
    version = ModelVersion(name="m", version=1, created_at="2024-01-09T00:00:00Z", metrics={"roc_auc": 0.8},
                           path=tmp_path)
    report = MonitorReport(monitor="quality-monitor", model="m:1", rows=1000, metrics={"roc_auc": roc_auc},
                           alerts=("f1 fell below its validation baseline",))
    run = RunContext(run_id="test", workdir=tmp_path, model_name="m", config=read(workdir=tmp_path))
    decision = $module.decide_retrain(version=version, reports=[report], run=run,
                                      options=$module.Options(on_alerts=on_alerts))
    assert decision.retrain is retrain, decision.reasons
    assert decision.reasons and decision.policy == "$name"
