"""Tests of the `$name` trainer: opsloop's trainer conformance suite, and a whole run on a small real set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from opsloop.testing import Project
from opsloop.testing.conformance import TrainerSuite


class TestConformance(TrainerSuite, plugin="$name"):
    """Fits the small set, saves and loads without code, scores the same after the round trip, serves."""


def test_a_run_with_it_registers_a_version_with_its_parameters(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"train": {"plugins": ["$name"], "$name": {"c": 0.5}}})
    result = project.run("run").assert_ok()
    assert ("train", "$name") in result.stages
    shown: Any = project.run("models", "show", result.json["versions"][0]["ref"], "--json").assert_ok().json
    assert shown["params"]["c"] == 0.5
    assert shown["flavor"] == "sklearn"
    # it learned something: on the later days it ranks incident rows above their base rate
    monitored = result.json["monitor"][0]["metrics"]
    assert monitored["pr_auc"] > monitored["prevalence"]


def test_text_features_are_refused_in_one_line(opsloop_project: Callable[..., Project],
                                               small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(small=True, config={"train": {"plugins": ["$name"]}, "preprocess": {"plugins": []}})
    small_telemetry["m01"] = small_telemetry["m01"].map(lambda v: f"{v:.2f} units")
    small_telemetry.to_csv(project.path / "telemetry.csv", index=False)
    project.run("run").assert_error("$name", "m01", "not numeric")
