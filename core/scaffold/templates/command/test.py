"""Tests of the `$name` commands on a small real telemetry file: in-process, and through the real console
script as users run it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from opsloop.testing import Project, Result

CONFIG = {"plugins": {"enable": ["$name"]}}


def test_summary_tells_what_the_file_holds(opsloop_project: Callable[..., Project],
                                           small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(config=CONFIG)
    small_telemetry.to_csv(project.path / "telemetry.csv", index=False)
    found: Any = project.run("$name", "summary", "telemetry.csv", "--json").assert_ok().json
    assert found["rows"] == len(small_telemetry) == 8640
    assert found["series"] == 3
    assert found["positive_rows"] == int(small_telemetry["label"].sum()) > 0
    assert found["first"].startswith("2024-01-03") and found["last"].startswith("2024-01-12")


def test_the_console_script_runs_it(opsloop_project: Callable[..., Project], opsloop_console: Callable[..., Result],
                                    small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(config=CONFIG)
    small_telemetry.head(100).to_parquet(project.path / "telemetry.parquet")
    result = opsloop_console("$name", "summary", "telemetry.parquet").assert_ok()
    result.lines().fnmatch_lines(["rows: 100", "series: 1", "first: 2024-01-03 00:00:00"], consecutive=False)


def test_a_missing_column_is_refused_in_one_line(opsloop_project: Callable[..., Project],
                                                 small_telemetry: pd.DataFrame) -> None:
    project = opsloop_project(config=CONFIG)
    small_telemetry.to_csv(project.path / "telemetry.csv", index=False)
    project.run("$name", "summary", "telemetry.csv", "--series", "host").assert_error("$name", "'host'")
