"""Tests of the `$name` preprocess step: opsloop's preprocess conformance suite, a whole run on a small real
set, and the server's fast path against the replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from opsloop.testing import Project
from opsloop.testing.conformance import PreprocessSuite
from opsloop.testing.data import SPLIT

STEPS = ["schema-check", "impute", "$name"]


class TestConformance(PreprocessSuite, plugin="$name"):
    """Fit gives rows and a JSON state; replay gives the same frame; the input is never changed."""


def test_a_run_stores_the_training_medians(opsloop_project: Callable[..., Project],
                                          small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(small=True, config={"preprocess": {"plugins": STEPS}})
    result = project.run("run").assert_ok()
    assert ("preprocess", "$name") in result.stages

    manifest: Any = json.loads((Path(result.json["versions"][0]["path"]) / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["plugin"] == "$name")
    train = small_telemetry[small_telemetry["timestamp"] < SPLIT]
    assert step["state"]["median"]["m01"] == float(train["m01"].median())
    assert set(step["state"]["median"]) == {f"m{i:02d}" for i in range(1, 20)}


def test_an_unknown_column_is_refused_in_one_line(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"preprocess": {"plugins": STEPS, "$name": {"columns": ["m99"]}}})
    project.run("run").assert_error("$name", "m99")
