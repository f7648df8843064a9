"""Tests of the `$name` data source: opsloop's source conformance suite and whole runs on a small real set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

import $module
from opsloop.config import read
from opsloop.testing import Project
from opsloop.testing.conformance import SourceSuite
from opsloop.testing.data import small_config

#: How a spreadsheet in a European locale saves the small set: `;` between fields, `,` in numbers, a title line.
EUROPEAN: dict[str, Any] = {"delimiter": ";", "decimal": ",", "encoding": "cp1252", "skip_lines": 1}


class TestConformance(SourceSuite, plugin="$name", source="telemetry.csv",
                      options={"delimiter": ",", "decimal": "."}):
    """The configured columns, the same rows twice, one-line errors, a whole run (on the kit's comma CSV)."""


def european_project(opsloop_project: Callable[..., Project], frame: pd.DataFrame, **options: Any) -> Project:
    """The small project with its rows saved as a European export, `export.csv`, read through the plugin."""
    project = opsloop_project(small=True, config={"data": {"plugin": "$name", "source": "export.csv",
                                                           "$name": {**EUROPEAN, **options}}})
    with open(project.path / "export.csv", "w", encoding="cp1252", newline="") as out:
        out.write("Telemetry export, three servers\n")
        frame.to_csv(out, sep=";", decimal=",", index=False)
    return project


def load(project: Project, **options: Any) -> pd.DataFrame:
    """What the plugin reads for the project's `[data]`, called as opsloop calls it."""
    data = read(project.config_path, workdir=project.path).data
    return $module.load_data(source="export.csv", options=$module.Options(**{**EUROPEAN, **options}), data=data,
                             workdir=project.path)


def test_a_european_export_reads_as_the_numbers_it_holds(opsloop_project: Callable[..., Project],
                                                         small_telemetry: pd.DataFrame) -> None:
    project = european_project(opsloop_project, small_telemetry)
    assert ";" in (project.path / "export.csv").read_text(encoding="cp1252").splitlines()[1]
    frame = load(project)
    assert list(frame.columns) == list(small_telemetry.columns)
    numbers = [c for c in small_telemetry.columns if c.startswith("m")]
    assert all(pd.api.types.is_float_dtype(frame[c]) for c in numbers), frame.dtypes
    pd.testing.assert_frame_equal(frame[numbers], small_telemetry[numbers], check_dtype=False, rtol=1e-6)


def test_a_run_on_the_export_validates_as_one_on_the_comma_csv(opsloop_project: Callable[..., Project],
                                                               small_telemetry: pd.DataFrame) -> None:
    project = european_project(opsloop_project, small_telemetry)
    result = project.run("run").assert_ok().json
    assert ("load", "export.csv") in [(s["stage"], p) for s in result["stages"] for p in s["plugins"]]
    # the same rows read by opsloop's own `files` source from a plain CSV: the same validation figures
    plain = Project(path=project.path / "plain")
    plain.path.mkdir()
    small_telemetry.to_csv(plain.path / "telemetry.csv", index=False)
    plain.write_config(small_config())
    assert result["validation"][0]["mean"] == plain.run("run").assert_ok().json["validation"][0]["mean"]


def test_a_wrong_delimiter_is_one_line_naming_the_option(opsloop_project: Callable[..., Project],
                                                         small_telemetry: pd.DataFrame) -> None:
    project = european_project(opsloop_project, small_telemetry, delimiter="|")
    project.run("run").assert_error("$name", "export.csv", "one column", "delimiter")


def test_a_wrong_encoding_is_one_line_naming_the_option(opsloop_project: Callable[..., Project],
                                                        small_telemetry: pd.DataFrame) -> None:
    # servers named in the export's own encoding (cp1252), read as utf-8
    named = small_telemetry.assign(entity="Köln-" + small_telemetry["entity"])
    project = european_project(opsloop_project, named, encoding="utf-8")
    project.run("run").assert_error("$name", "export.csv", "not utf-8 text", "encoding")


def test_a_missing_file_is_one_line_naming_it(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"data": {"plugin": "$name", "source": "nowhere.csv"}})
    project.run("run").assert_error("$name", "nowhere.csv", "not found")
