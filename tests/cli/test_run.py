"""`opsloop run`: the whole lifecycle on real data, selection by config, third-party plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsloop import hookimpl


def stage_names(result):
    return [s["stage"] for s in result.json["stages"]]


class Observer:
    """Enabled through [plugins] enable: hears every stage, registration and alias move."""

    @hookimpl
    def on_stage_start(self, stage, plugins, run):
        pass

    @hookimpl
    def on_stage_end(self, stage, result, seconds, run):
        pass

    @hookimpl
    def on_stage_error(self, stage, error, run):
        pass

    @hookimpl
    def on_model_registered(self, version, run):
        pass

    @hookimpl
    def on_alias_changed(self, change, run):
        pass


def test_run_goes_through_every_stage_and_registers_versions(opsloop_project, small_config, hook_recorder,
                                                             register_plugin):
    register_plugin(Observer(), "observer")
    small_config["plugins"] = {"enable": ["observer"]}
    project = opsloop_project(config=small_config)
    result = project.run("run").assert_ok()
    data = result.json
    stages = stage_names(result)
    assert stages[:9] == ["load", "preprocess", "train", "validate", "alerting", "register", "deploy", "monitor",
                          "decide_retrain"]
    assert ("train", "xgboost") in result.stages
    assert ("preprocess", "schema-check") in result.stages and ("preprocess", "impute") in result.stages
    first = data["versions"][0]
    assert first["ref"] == "asd-anomaly:1"
    assert "production" in first["aliases"]
    assert {"precision", "recall", "f1", "roc_auc"} <= set(first["metrics"])
    report = data["monitor"][0]
    assert report["rows"] == 4 * 2160
    assert {"accuracy", "precision", "recall", "f1"} <= set(report["metrics"])
    decision = data["decision"]
    assert decision["reasons"]
    if decision["retrain"]:
        assert stages[9:] == ["retrain.preprocess", "retrain.train", "retrain.validate", "retrain.alerting",
                              "retrain.register"]
        assert data["versions"][1]["ref"] == "asd-anomaly:2"
        assert "candidate" in data["versions"][1]["aliases"]
    # observers heard every stage, in order, through pluggy
    started = [c.kwargs["stage"] for c in hook_recorder.named("on_stage_start")]
    assert started == stages
    ended = [c.kwargs["stage"] for c in hook_recorder.named("on_stage_end")]
    assert ended == stages
    assert all(c.kwargs["seconds"] >= 0 for c in hook_recorder.named("on_stage_end"))
    assert len(hook_recorder.named("on_model_registered")) == len(data["versions"])
    # stage hooks are recorded per selected plugin, in the configured order
    assert [c.plugin for c in hook_recorder.named("preprocess")][:2] == ["schema-check", "impute"]
    assert {c.plugin for c in hook_recorder.named("train")} == {"xgboost"}
    changes = [c.kwargs["change"] for c in hook_recorder.named("on_alias_changed")]
    assert (changes[0].alias, changes[0].from_version, changes[0].to_version) == ("production", None, 1)
    assert "first version in production" in changes[0].reason and data["run_id"] in changes[0].reason
    # the batch deployment wrote predictions for the monitored period
    deployment = data["deployments"][0]
    assert Path(deployment["location"]).is_file()
    listed = project.run("models", "list", "--json").assert_ok().json
    assert listed[0]["name"] == "asd-anomaly"
    assert listed[0]["versions"] == len(data["versions"])
    shown = project.run("models", "show", "asd-anomaly:1", "--json").assert_ok().json
    assert shown["lineage"]["data"]["fingerprint"].startswith("sha256:")
    assert shown["lineage"]["config_hash"].startswith("sha256:")
    assert shown["lineage"]["versions"]["plugins"]["xgboost"]["dist"] == "opsloop"
    assert project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json["version"] == 1


def test_retrain_acts_when_the_policy_says_so(opsloop_project, small_config):
    small_config["retrain"] = {"threshold-policy": {"min_f1": 0.99}}
    result = opsloop_project(config=small_config).run("run").assert_ok()
    assert result.json["decision"]["retrain"] is True
    assert any("0.99" in reason for reason in result.json["decision"]["reasons"])
    new = result.json["versions"][1]
    assert new["ref"] == "asd-anomaly:2"
    assert "retrain.register" in stage_names(result)


def test_a_policy_saying_keep_registers_nothing_more(opsloop_project, small_config):
    small_config["retrain"] = {"threshold-policy": {"min_f1": 0.0, "max_drop": 1.0, "min_rows": 1}}
    result = opsloop_project(config=small_config).run("run").assert_ok()
    assert result.json["decision"]["retrain"] is False, result.json["decision"]
    assert len(result.json["versions"]) == 1


class RecordingTrainer:
    """A second trainer: installing it must change nothing until the config selects it."""

    def __init__(self):
        self.calls = 0

    @hookimpl
    def train(self, dataset, options, run):
        from sklearn.linear_model import LogisticRegression

        from opsloop import TrainedModel

        self.calls += 1
        est = LogisticRegression(max_iter=200).fit(dataset.X, dataset.y)
        return TrainedModel(estimator=est, flavor="sklearn", task="classification",
                            features=tuple(dataset.feature_columns))


def test_an_installed_trainer_runs_only_when_selected(opsloop_project, small_config, register_plugin):
    trainer = RecordingTrainer()
    register_plugin(trainer, "logreg")
    small_config["retrain"] = {"act": False}
    project = opsloop_project(config=small_config)
    project.run("run").assert_ok()
    assert trainer.calls == 0
    small_config["train"]["plugins"] = ["logreg"]
    small_config["validate"]["kfold"]["folds"] = 2
    project.write_config(small_config)
    result = project.run("run").assert_ok()
    assert trainer.calls == 3  # two folds, then the full training set
    assert [p for s, p in result.stages if s == "train"] == ["logreg"]
    # its "sklearn" flavor was saved (and loaded back for deploy) by the plugin named after the flavor
    shown = project.run("models", "show", "asd-anomaly:2", "--json").assert_ok().json
    assert shown["flavor"] == "sklearn"


THIRD_PARTY = '''
"""Alert-rate monitor: the share of rows a model flags (a vendor's plugin)."""
import attrs
from opsloop import hookimpl, MonitorReport


@attrs.frozen(kw_only=True)
class Options:
    max_rate: float = 0.5


@hookimpl
def plugin_options():
    return Options


@hookimpl
def monitor(version, current, predictions, options):
    rate = float((predictions["prediction"] == 1).mean())
    alerts = (f"alert rate {rate:.2f} > {options.max_rate}",) if rate > options.max_rate else ()
    return MonitorReport(rows=len(current), metrics={"alert_rate": rate}, alerts=alerts)
'''


def test_a_third_party_distribution_is_discovered_listed_selected_and_run(opsloop_project, small_config,
                                                                          make_plugin_dist):
    make_plugin_dist(dist="opsloop-alert-rate", version="0.9", modules={"opsloop_alert_rate": THIRD_PARTY},
                     entry_points={"alert-rate": "opsloop_alert_rate"})
    project = opsloop_project(config=small_config)
    rows = {r["name"]: r for r in project.run("plugins", "list", "--json").assert_ok().json}
    assert rows["alert-rate"]["dist"] == "opsloop-alert-rate"
    assert rows["alert-rate"]["version"] == "0.9"
    assert rows["alert-rate"]["hooks"] == ["monitor", "plugin_options"]
    small_config["monitor"] = {"plugins": ["quality-monitor", "alert-rate"], "alert-rate": {"max_rate": 0.001}}
    small_config["retrain"] = {"act": False}
    project.write_config(small_config)
    project.run("config", "check").assert_ok()
    result = project.run("run").assert_ok()
    assert [p for s, p in result.stages if s == "monitor"] == ["quality-monitor", "alert-rate"]
    report = result.json["monitor"][1]
    assert report["monitor"] == "alert-rate"
    assert 0 <= report["metrics"]["alert_rate"] <= 1
    small_config["monitor"]["alert-rate"] = {"max_rat": 1}
    project.write_config(small_config)
    project.run("run").assert_error("[monitor.alert-rate.max_rat] unknown key", 'did you mean "max_rate"')


def test_a_plugin_that_raises_is_named_and_the_store_keeps_what_it_had(opsloop_project, small_config,
                                                                         register_plugin, hook_recorder):
    class Exploding:
        @hookimpl
        def decide_retrain(self, reports):
            raise RuntimeError("policy backend unreachable")

    register_plugin(Exploding(), "exploding-policy", dist="opsloop-exploding", version="1.2")
    register_plugin(Observer(), "observer")
    small_config["retrain"] = {"plugins": ["exploding-policy"]}
    small_config["plugins"] = {"enable": ["observer"]}
    project = opsloop_project(config=small_config)
    project.run("run").assert_error('plugin "exploding-policy" (opsloop-exploding 1.2) failed in decide_retrain',
                                    "policy backend unreachable")
    errors = hook_recorder.named("on_stage_error")
    assert [c.kwargs["stage"] for c in errors] == ["decide_retrain"]
    assert errors[0].kwargs["error"].plugin == "exploding-policy"
    # what was registered before the failure is intact and loadable
    shown = project.run("models", "show", "asd-anomaly:1", "--json").assert_ok().json
    assert shown["version"] == 1


@pytest.mark.slow
def test_quickstart_run_in_an_empty_directory_with_the_console_script(tmp_path):
    """The README's first line, minus the install: `opsloop run` with no config at all."""
    exe = Path(sys.executable).with_name("opsloop")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from opsloop.cli import main; main()"]
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run([*cmd, "run"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Registered versions" in proc.stdout
    assert "Decision:" in proc.stdout
    assert (tmp_path / ".opsloop").is_dir()
    listed = subprocess.run([*cmd, "models", "list", "--json"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    models = json.loads(listed.stdout)
    assert models[0]["name"] == "asd-anomaly" and models[0]["versions"] >= 1
