"""The plugin authors' kit itself (issue 11, item 1): the small set, the console in a subprocess with a line
matcher, a test double over an installed plugin, and the `testing` extra holding exactly what the kit imports."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

from opsloop import hookimpl
from opsloop.testing.data import SERIES, SPLIT
from opsloop.testing.data import small_telemetry as load_small
from opsloop.types import TrainedModel

ROOT = Path(__file__).resolve().parents[2]


def test_the_small_set_is_real_asd_with_incidents_on_both_sides_of_the_split(small_telemetry):
    frame = small_telemetry
    assert frame.shape == (8640, 22) and set(frame["entity"]) == set(SERIES)
    before, after = frame[frame["timestamp"] < SPLIT], frame[frame["timestamp"] >= SPLIT]
    for part in (before, after):
        assert (part.groupby("entity")["label"].sum() > 0).all()
    from opsloop import datasets

    full = datasets.load("asd").set_index(["entity", "timestamp"])
    assert full.loc[frame.set_index(["entity", "timestamp"]).index].reset_index().equals(frame)  # a slice, unchanged
    frame.loc[:, "m01"] = -1.0  # the fixture hands each test its own frame: the set itself is unchanged
    assert (load_small()["m01"] >= 0).all()


def test_a_small_project_runs_the_whole_lifecycle(opsloop_project):
    data = opsloop_project(small=True).run("run").assert_ok().json
    assert [s["stage"] for s in data["stages"]][:4] == ["load", "preprocess", "train", "validate"]
    assert data["versions"][0]["ref"] == "small-telemetry:1"
    assert data["monitor"][0]["rows"] == 3456  # the rows from the split on


def test_config_tables_merge_over_the_small_config(opsloop_project):
    project = opsloop_project(small=True, config={"train": {"xgboost": {"n_estimators": 5}}})
    text = project.config_path.read_text()
    assert "n_estimators = 5" in text and 'source = "telemetry.csv"' in text


def test_the_console_runs_the_installed_script_and_matches_lines(opsloop_console, make_plugin_dist):
    make_plugin_dist(dist="opsloop-echo", version="0.2", modules={"opsloop_echo": '''
        """Echoes nothing: a plugin that is only installed."""
        from opsloop import hookimpl

        @hookimpl
        def on_stage_start(stage):
            pass
        '''}, entry_points={"echo": "opsloop_echo"})
    result = opsloop_console("plugins", "list").assert_ok()
    result.lines().fnmatch_lines(["*echo*opsloop-echo*0.2*", "*xgboost*opsloop*"], consecutive=False)
    result.lines().no_fnmatch_line("*Traceback*")
    opsloop_console("plugins", "show", "ehco").assert_error('did you mean "echo"')


def test_override_replaces_an_installed_plugin_for_one_test(opsloop_project, override_plugin, hook_recorder):
    seen = []

    @hookimpl
    def train(dataset, options, run):
        seen.append(len(dataset.frame))
        from sklearn.dummy import DummyClassifier

        model = DummyClassifier(strategy="prior").fit(dataset.frame[["m01"]], dataset.frame["label"])
        return TrainedModel(estimator=model, flavor="sklearn", features=("m01",), params={"double": True})

    from opsloop.plugins import xgboost_trainer  # the double takes the options the config gives xgboost

    override_plugin("xgboost", SimpleNamespace(train=train, plugin_options=xgboost_trainer.plugin_options))
    project = opsloop_project(small=True)
    data = project.run("run").assert_ok().json
    assert seen and seen[0] > 0
    assert [c.plugin for c in hook_recorder.named("train")] == ["xgboost"] * len(seen)
    listed = {r["name"]: r for r in project.run("plugins", "list", "--json").assert_ok().json}
    assert listed["xgboost"]["dist"] == "(test double of opsloop " + listed["kfold"]["version"] + ")"
    assert data["versions"][0]["ref"] == "small-telemetry:1"


def test_the_installed_plugin_is_back_after_an_override(opsloop_project):
    listed = {r["name"]: r for r in opsloop_project().run("plugins", "list", "--json").assert_ok().json}
    assert listed["xgboost"]["dist"] == "opsloop"


def test_the_testing_extra_holds_exactly_what_the_kit_imports():
    """Every third-party module opsloop.testing imports is opsloop's own dependency or in the `testing` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                          for r in reqs}
    base, extra = names(project["dependencies"]), names(project["optional-dependencies"]["testing"])
    imported = set()
    for path in (ROOT / "core" / "testing").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "opsloop"}
    dist_of = {"tomli_w": "tomli-w", "sklearn": "scikit-learn", "_pytest": "pytest"}
    needed = {dist_of.get(m, m) for m in third_party}
    assert needed - base - extra == set(), "imported by opsloop.testing but in neither the dependencies nor [testing]"
    assert extra <= needed | {"pytest"}, "in [testing] but not imported by opsloop.testing"


def test_a_failing_double_registers_nothing(opsloop_project, override_plugin):
    """The example of docs/testing-plugins.md, as written there."""
    from opsloop.plugins import xgboost_trainer

    @hookimpl
    def train(dataset, options, run):
        raise MemoryError("no room")

    override_plugin("xgboost", SimpleNamespace(train=train, plugin_options=xgboost_trainer.plugin_options))
    project = opsloop_project(small=True)
    project.run("run").assert_error('plugin "xgboost" (test double of opsloop', "MemoryError")
    assert project.run("models", "list", "--json").json == []
