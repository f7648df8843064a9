"""`opsloop models promote|rollback|history|diff|delete|show` on a real store with real versions."""

from __future__ import annotations

import pytest

from opsloop import hookimpl


class AliasWatcher:
    def __init__(self):
        self.changes = []

    @hookimpl
    def on_alias_changed(self, change, run):
        self.changes.append((change.alias, change.from_version, change.to_version, change.action, run))


@pytest.fixture
def three_versions(opsloop_project, small_config, register_plugin):
    watcher = AliasWatcher()
    register_plugin(watcher, "watcher")
    small_config["retrain"] = {"act": False}
    small_config["plugins"] = {"enable": ["watcher"]}
    project = opsloop_project(config=small_config)
    for depth in (3, 4, 5):  # three runs: v1, v2, v3, each promoted to production in turn
        project.run("run", "--promote", "--set", f"train.xgboost.max_depth={depth}").assert_ok()
    watcher.changes.clear()
    return project, watcher


def test_promote_history_and_rollback(three_versions):
    project, watcher = three_versions
    assert project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json["version"] == 3
    change = project.run("models", "promote", "asd-anomaly", "1", "--reason", "v3 pages too often",
                         "--json").assert_ok().json
    assert (change["from_version"], change["to_version"], change["reason"]) == (3, 1, "v3 pages too often")
    project.run("models", "promote", "asd-anomaly", "2", "--alias", "candidate").assert_ok()
    history = project.run("models", "history", "asd-anomaly", "--json").assert_ok().json
    production = [(h["from_version"], h["to_version"]) for h in history if h["alias"] == "production"]
    assert production == [(None, 1), (1, 2), (2, 3), (3, 1)]
    assert all(h["actor"] for h in history)
    only = project.run("models", "history", "asd-anomaly", "--alias", "candidate", "--json").assert_ok().json
    assert [(h["alias"], h["to_version"]) for h in only] == [("candidate", 2)]
    back = project.run("models", "rollback", "asd-anomaly", "--json").assert_ok().json
    assert (back["from_version"], back["to_version"], back["action"]) == (1, 3, "rollback")
    assert project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json["version"] == 3
    # the observer heard every move, with no run (they came from the command line)
    assert watcher.changes == [("production", 3, 1, "set", None), ("candidate", None, 2, "set", None),
                               ("production", 1, 3, "rollback", None)]
    text = project.run("models", "history", "asd-anomaly").assert_ok().stdout
    assert "v3 pages too often" in text


def test_show_name_lists_versions_and_diff_shows_differences(three_versions):
    project, _ = three_versions
    shown = project.run("models", "show", "asd-anomaly", "--json").assert_ok().json
    assert shown["version"] == 3
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3]
    diff = project.run("models", "diff", "asd-anomaly", "1", "3", "--json").assert_ok().json
    assert diff["params"]["max_depth"] == {"a": 3, "b": 5, "changed": True}
    assert diff["lineage"]["config.train.xgboost.max_depth"]["changed"] is True
    assert diff["lineage"]["config_hash"]["changed"] is True
    assert "data.fingerprint" not in diff["lineage"]  # same data: equal fields are left out
    assert diff["schema"] == {}
    full = project.run("models", "diff", "asd-anomaly", "1", "3", "--all", "--json").assert_ok().json
    assert full["schema"]["m01"] == {"a": "float32", "b": "float32", "changed": False}
    assert "max_depth" in project.run("models", "diff", "asd-anomaly", "1", "3").assert_ok().stdout


def test_delete_is_refused_while_aliased_and_loses_nothing(three_versions):
    project, _ = three_versions
    project.run("models", "delete", "asd-anomaly", "3", "--yes").assert_error("production")
    assert project.run("models", "show", "asd-anomaly:3", "--json").assert_ok().json["version"] == 3
    project.run("models", "delete", "asd-anomaly", "2").assert_error()  # no confirmation on a closed stdin
    assert project.run("models", "show", "asd-anomaly:2", "--json").assert_ok().json["version"] == 2
    assert project.run("models", "delete", "asd-anomaly", "2", "--yes", "--json").assert_ok().json == {
        "deleted": "asd-anomaly:2"}
    project.run("models", "show", "asd-anomaly:2").assert_error("asd-anomaly")
    listed = project.run("models", "show", "asd-anomaly", "--json").assert_ok().json
    assert [v["version"] for v in listed["versions"]] == [1, 3]


def test_bad_references_are_one_line_errors(three_versions):
    project, _ = three_versions
    project.run("models", "show", "asd-anomaly:9").assert_error("9")
    project.run("models", "show", "asd-anomaly@prod").assert_error("prod")
    project.run("models", "show", "asd-anomly").assert_error('asd-anomaly')
    project.run("models", "promote", "asd-anomaly", "7").assert_error("7")
    project.run("models", "promote", "asd-anomaly", "1", "--alias", "../x").assert_error("invalid alias")
    project.run("models", "rollback", "asd-anomaly", "--alias", "candidate").assert_error("candidate")
