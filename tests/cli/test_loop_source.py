"""`[loop] monitor_rows = "source"`: a cycle reads the source afresh and monitors its newest rows, scored by
production, with no server and no prediction log in front (issue 10, item 1: a source feeds the loop)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import tomli_w
from opsloop.testing import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP  # noqa: E402


def _project(path: Path, monitor_rows: str) -> Path:
    config = copy.deepcopy(LOOP)
    config["deploy"] = {"plugins": ["batch"], "batch": {"log_predictions": False}}  # nothing in the log
    config["loop"] = {**config["loop"], "monitor_rows": monitor_rows}
    path.mkdir()
    (path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    invoke(["run", "--json", "--quiet"], path).assert_ok()
    return path


def test_a_cycle_monitors_the_sources_newest_rows_when_nothing_is_logged(tmp_path: Path) -> None:
    from_log = _project(tmp_path / "log", "log")
    out = invoke(["loop", "--once", "--json", "--quiet"], from_log).assert_ok().json
    assert out["decision"] == "keep"  # nothing production scored: nothing to judge it by
    notes = " ".join(invoke(["loop", "history", "--json"], from_log).assert_ok().json[0]["notes"])
    assert "no prediction log" in notes or "has no rows" in notes

    from_source = _project(tmp_path / "source", "source")
    out = invoke(["loop", "--once", "--json", "--quiet"], from_source).assert_ok().json
    # the policy's F1 floor (0.99) judged production on the source's newest 3 days, labels included
    assert out["decision"] == "retrain", out
    assert any("f1" in reason for reason in out["reasons"])
    entry = invoke(["loop", "history", "--json"], from_source).assert_ok().json[0]
    notes = " ".join(entry["notes"])
    assert "read from the source and scored by production" in notes
    # the newest three days of the configured periods' rows: 2 servers x 864 five-minute rows
    assert "monitored 1,728 rows of embedded:asd from 2024-01-12 23:55:01 to 2024-01-15 23:55:01" in notes


def test_a_misspelt_monitor_rows_is_one_line_naming_the_choices(tmp_path: Path) -> None:
    config = copy.deepcopy(LOOP)
    config["loop"] = {**config["loop"], "monitor_rows": "sources"}
    tmp_path.joinpath("opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    invoke(["config", "check"], tmp_path).assert_error("monitor_rows", "source")
