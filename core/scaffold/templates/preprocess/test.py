"""Tests of the `$name` preprocess step: opsloop's preprocess conformance suite, a whole run on a small real
set, and the server's fast path against the replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsloop.testing import Project
from opsloop.testing.conformance import PreprocessSuite
from opsloop.testing.data import small_config, small_telemetry

STEPS = ["schema-check", "impute", "$name"]


class TestConformance(PreprocessSuite, plugin="$name"):
    """Fit gives rows and a JSON state; replay gives the same frame; the input is never changed."""


def test_a_run_stores_the_medians_and_scores_with_them(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(config=small_config(preprocess={"plugins": STEPS}))
    frame = small_telemetry()
    frame.to_csv(project.path / "telemetry.csv", index=False)
    result = project.run("run").assert_ok()
    assert ("preprocess", "$name") in result.stages

    manifest: Any = json.loads((Path(result.json["versions"][0]["path"]) / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["plugin"] == "$name")
    train = frame[frame["timestamp"] < "2024-01-09"]
    assert step["state"]["median"]["m01"] == float(train["m01"].median())
    assert set(step["state"]["median"]) == {f"m{i:02d}" for i in range(1, 20)}


def test_an_unknown_column_is_refused_in_one_line(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(config=small_config(preprocess={"plugins": STEPS, "$name": {"columns": ["m99"]}}))
    small_telemetry().to_csv(project.path / "telemetry.csv", index=False)
    project.run("run").assert_error("$name", "m99")
