"""Tests of the `$name` commands: run through opsloop's command line, in-process and as the real console
script, on a small real telemetry file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsloop.testing import Project
from opsloop.testing.data import small_telemetry

CONFIG = {"plugins": {"enable": ["$name"]}}


def test_summary_tells_what_the_file_holds(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(config=CONFIG)
    frame = small_telemetry()
    frame.to_csv(project.path / "telemetry.csv", index=False)
    found: Any = project.run("$name", "summary", "telemetry.csv", "--json").assert_ok().json
    assert found["rows"] == len(frame) == 8640
    assert found["series"] == 3
    assert found["positive_rows"] == int(frame["label"].sum())
    assert found["first"].startswith("2024-01-03") and found["last"].startswith("2024-01-12")


def test_the_console_script_runs_it(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(config=CONFIG)
    small_telemetry().head(100).to_parquet(project.path / "telemetry.parquet")
    opsloop = Path(sys.executable).parent / "opsloop"
    done = subprocess.run([str(opsloop), "$name", "summary", "telemetry.parquet"], cwd=project.path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "rows: 100" in done.stdout.splitlines()


def test_a_missing_column_is_refused_in_one_line(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(config=CONFIG)
    small_telemetry().to_csv(project.path / "telemetry.csv", index=False)
    project.run("$name", "summary", "telemetry.csv", "--series", "host").assert_error("$name", "'host'")
