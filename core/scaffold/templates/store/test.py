"""Tests of the `$name` store: opsloop's store conformance suite, and a whole run and promote on a small real
set with the registry in this store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from opsloop.testing import Project
from opsloop.testing.conformance import StoreSuite


class TestConformance(StoreSuite, plugin="$name"):
    """The store contract: register, get, list, versions, aliases and their history, errors."""

    @pytest.fixture
    def store_uri(self, tmp_path: Path) -> str:
        return f"$name:{tmp_path / 'registry'}"


def test_a_run_registers_into_it_and_models_commands_read_it(opsloop_project: Callable[..., Project]) -> None:
    store = {"plugins": ["$name", "local-store"], "uri": "$name:registry"}
    project = opsloop_project(small=True, config={"store": store})
    project.run("run").assert_ok()
    project.run("run", "--set", "train.xgboost.n_estimators=20").assert_ok()
    index = json.loads((project.path / "registry" / "index.json").read_text(encoding="utf-8"))
    assert sorted(index["models"]["small-telemetry"]["versions"]) == ["1", "2"]

    project.run("models", "promote", "small-telemetry", "2", "--reason", "test").assert_ok()
    shown = project.run("models", "show", "small-telemetry@production", "--json").assert_ok().json
    assert shown["version"] == 2
    project.run("models", "rollback", "small-telemetry").assert_ok()
    history = project.run("models", "history", "small-telemetry", "--json").assert_ok().json
    assert [h["to_version"] for h in history] == [1, 2, 1]


def test_a_uri_without_a_directory_is_refused_in_one_line(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"store": {"plugins": ["$name"], "uri": "$name:"}})
    project.run("models", "list").assert_error("$name", "names no directory")
