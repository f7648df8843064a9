"""Tests of the `$name` validator: opsloop's validator conformance suite and whole runs on a small real set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from opsloop.testing import Project
from opsloop.testing.conformance import ValidatorSuite
from opsloop.testing.data import SPLIT


class TestConformance(ValidatorSuite, plugin="$name", options={"days": 1.0}):
    """Per-fold figures, no row scored by a model that trained on it, the past trains, one-line errors."""


def validation_of(project: Project) -> dict[str, Any]:
    report: dict[str, Any] = project.run("run").assert_ok().json["validation"][0]
    return report


def test_a_run_holds_out_the_last_days(opsloop_project: Callable[..., Project],
                                       small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(small=True, config={"validate": {"plugins": ["$name"], "$name": {"days": 1.0}}})
    report = validation_of(project)
    assert report["method"] == "last 1 day(s) held out"
    # the training period's rows in its last day, all three servers, against the rest of it
    training = small_telemetry[small_telemetry["timestamp"] < SPLIT]
    last = training["timestamp"] > training["timestamp"].max() - pd.Timedelta(days=1)
    (fold,) = report["folds"]
    assert (fold["rows_test"], fold["rows_train"]) == (int(last.sum()), int((~last).sum()))
    assert (fold["positives_test"], fold["positives_train"]) == (int(training["label"][last].sum()),
                                                                 int(training["label"][~last].sum()))
    assert 0.0 <= fold["roc_auc"] <= 1.0 and report["mean"]["roc_auc"] == fold["roc_auc"]


def test_holding_out_every_day_is_one_line_naming_the_option(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"validate": {"plugins": ["$name"], "$name": {"days": 6.0}}})
    project.run("run").assert_error("$name", "nothing is left to train on", "days")
