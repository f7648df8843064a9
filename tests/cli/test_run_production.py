"""`opsloop run` moves production only on purpose and never registers a twin (issue 9, item 1).

The issue's case, on the real embedded ASD data: an operator promotes version 2,
then reruns the first config with `--set retrain.act=false` to look at the
monitor figures. Before, production silently moved to a new version 3, a twin
of version 1. Now the rerun reuses version 1 (`unchanged: asd-anomaly:1`),
production stays on 2, and deploy and monitor act on version 2.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

QUIET = ["--set", "retrain.act=false"]


@pytest.fixture
def project(opsloop_project: Any, small_config: dict[str, Any]) -> Any:
    return opsloop_project(config=small_config)


def _other(config: dict[str, Any]) -> dict[str, Any]:
    """The same project with a training option changed: a different model."""
    changed = copy.deepcopy(config)
    changed["train"]["xgboost"]["n_estimators"] = 40
    return changed


def _history(project: Any) -> list[dict[str, Any]]:
    return project.run("models", "history", "asd-anomaly", "--json").assert_ok().json


def test_a_rerun_keeps_the_operators_promotion_and_registers_no_twin(project: Any,
                                                                    small_config: dict[str, Any]) -> None:
    first = project.run("run", *QUIET).assert_ok().json
    assert first["versions"][0]["ref"] == "asd-anomaly:1"
    assert first["production"] == {"ref": "asd-anomaly:1", "moved": True}  # nothing held it yet
    project.write_config(_other(small_config))
    second = project.run("run", *QUIET).assert_ok().json
    assert second["versions"][0]["ref"] == "asd-anomaly:2" and second["unchanged"] == []
    assert second["production"] == {"ref": "asd-anomaly:1", "moved": False}  # not without --promote
    assert second["monitor"][0]["model"] == "asd-anomaly:1"  # monitored: what production serves
    project.run("models", "promote", "asd-anomaly", "2", "--reason", "operator: fewer false pages").assert_ok()

    project.write_config(small_config)  # the first config again, with the retrain stage switched off
    third = project.run("run", *QUIET).assert_ok().json
    assert third["unchanged"] == ["asd-anomaly:1"]
    assert [v["ref"] for v in third["versions"]] == ["asd-anomaly:1"]
    stages = [s["stage"] for s in third["stages"]]
    assert "train" not in stages and "preprocess" not in stages and "validate" not in stages
    register = next(s for s in third["stages"] if s["stage"] == "register")
    assert register["summary"].startswith("unchanged: asd-anomaly:1") and first["run_id"] in register["summary"]
    assert third["production"] == {"ref": "asd-anomaly:2", "moved": False}
    assert third["monitor"][0]["model"] == "asd-anomaly:2"
    assert [d["model"] for d in third["deployments"]] == ["asd-anomaly:2"]
    listed = project.run("models", "list", "--json").assert_ok().json
    assert listed[0]["versions"] == 2  # no twin
    shown = project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json
    assert shown["version"] == 2
    moves = [(h["from_version"], h["to_version"]) for h in _history(project)]
    assert sorted(moves, key=str) == sorted([(None, 1), (1, 2)], key=str)  # the two moves, no more
    reasons = {h["to_version"]: h["reason"] for h in _history(project)}
    assert "first version in production" in reasons[1] and reasons[2] == "operator: fewer false pages"
    assert all(h["actor"] for h in _history(project))  # who moved it


def test_promote_moves_production_and_says_why(project: Any, small_config: dict[str, Any]) -> None:
    project.run("run", *QUIET).assert_ok()
    project.write_config(_other(small_config))
    promoted = project.run("run", *QUIET, "--promote").assert_ok().json
    assert promoted["production"] == {"ref": "asd-anomaly:2", "moved": True}
    assert promoted["monitor"][0]["model"] == "asd-anomaly:2"
    latest = _history(project)
    move = next(h for h in latest if h["to_version"] == 2)
    assert move["from_version"] == 1 and "--promote" in move["reason"] and promoted["run_id"] in move["reason"]
    # --promote on a rerun of the first config reuses version 1 and moves production back to it
    project.write_config(small_config)
    back = project.run("run", *QUIET, "--promote").assert_ok().json
    assert back["unchanged"] == ["asd-anomaly:1"]
    assert back["production"] == {"ref": "asd-anomaly:1", "moved": True}


def test_what_shapes_the_model_makes_a_new_version(project: Any, small_config: dict[str, Any]) -> None:
    """Changing the seed or a preprocess option is a new version; monitor and retrain options are not."""
    project.run("run", *QUIET).assert_ok()
    same = project.run("run", *QUIET, "--set", "monitor.quality-monitor.max_drop=0.2").assert_ok().json
    assert same["unchanged"] == ["asd-anomaly:1"]
    reseeded = project.run("run", *QUIET, "--set", "project.seed=7").assert_ok().json
    assert reseeded["unchanged"] == [] and reseeded["versions"][0]["ref"] == "asd-anomaly:2"
