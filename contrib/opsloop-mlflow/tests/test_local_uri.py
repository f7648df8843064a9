"""`tracking_uri = "sqlite:///..."`: no server at all, MLflow's own store in a file; and the switches
`log_bundle` and `registry` off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e ./contrib/opsloop-mlflow)")
pytest.importorskip("opsloop_mlflow", reason="opsloop-mlflow is not installed (pip install -e ./contrib/opsloop-mlflow)")

from opsloop.testing import opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures

MODEL = "asd-mlflow"


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One MLflow SQLite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.mark.slow
def test_a_sqlite_tracking_uri_without_bundle_upload(opsloop_project, lifecycle, mlflow_client, find_run, tmp_path,
                                                     sqlite_uri):
    uri = sqlite_uri
    project = opsloop_project(config=lifecycle(uri, log_bundle=False, run_name="nightly"))
    result = project.run("run").assert_ok()
    run = find_run(uri, result.json["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "nightly"
    assert run.data.params["train.xgboost.n_estimators"] == "20"
    assert "validate.kfold.pr_auc" in run.data.metrics

    mlflow = mlflow_client(uri)
    logged = {f.path for f in mlflow.list_artifacts(run.info.run_id, "versions/1")}
    assert logged == {"versions/1/lineage.json"}  # no bundle: it stays in opsloop's store
    lineage = json.loads(Path(mlflow.download_artifacts(run.info.run_id, "versions/1/lineage.json",
                                                        str(tmp_path))).read_text())
    assert lineage["lineage"]["run_id"] == result.json["run_id"]
    (mirror,) = mlflow.search_model_versions(f"name = '{MODEL}' and tags.`opsloop.version` = '1'")
    assert mirror.source == f"{run.info.artifact_uri}/versions/1"
    assert mlflow.get_registered_model(MODEL).aliases["production"] == mirror.version


@pytest.mark.slow
def test_registry_off_logs_the_run_and_leaves_the_registry_alone(opsloop_project, lifecycle, mlflow_client, find_run,
                                                                  sqlite_uri):
    config = lifecycle(sqlite_uri, registry=False, experiment=MODEL)
    config["project"]["name"] = "no-registry"
    project = opsloop_project(config=config)
    result = project.run("run").assert_ok()
    run = find_run(sqlite_uri, result.json["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["opsloop.version"] == "no-registry:2"

    def mirrored() -> list[str]:
        return [m.name for m in mlflow_client(sqlite_uri).search_registered_models()]

    assert "no-registry" not in mirrored()
    # Alias moves say nothing to MLflow either.
    project.run("models", "promote", "no-registry", "2", "--reason", "test").assert_ok()
    assert "no-registry" not in mirrored()


def test_gate_verdicts_decisions_and_an_interrupted_stage(sqlite_uri, mlflow_client, tmp_path):
    """The loop's gate, a retrain decision and Ctrl-C, through the hooks as `opsloop loop` calls them."""
    from opsloop import GateVerdict, RetrainDecision, RunContext
    from opsloop.config import read

    from opsloop_mlflow import tracking

    run = RunContext(run_id="cycle-1", workdir=tmp_path, model_name="looped", config=read(workdir=tmp_path))
    options = tracking.Options(tracking_uri=sqlite_uri)
    tracking.on_stage_start(stage="decide_retrain", plugins=["threshold-policy"], run=run, options=options)
    tracking.on_stage_end(stage="decide_retrain", result=RetrainDecision(retrain=True, reasons=("f1 fell",)),
                          seconds=0.1, run=run, options=options)
    verdict = GateVerdict(winner="challenger", metric="pr_auc", champion=0.41, challenger=0.47, margin=0.06,
                          ci=(0.01, 0.11), reasons=("better",), gate="champion-challenger",
                          figures={"champion.f1": 0.3})
    tracking.on_stage_start(stage="gate", plugins=["champion-challenger"], run=run, options=options)
    tracking.on_stage_end(stage="gate", result=[verdict], seconds=0.2, run=run, options=options)
    tracking.on_stage_start(stage="retrain.train", plugins=["xgboost"], run=run, options=options)
    tracking.on_stage_error(stage="retrain.train", error=KeyboardInterrupt(), run=run, options=options)

    mlflow = mlflow_client(sqlite_uri)
    (logged,) = mlflow.search_runs([mlflow.get_experiment_by_name("looped").experiment_id])
    metrics = logged.data.metrics
    assert metrics["decide_retrain.retrain"] == 1.0
    assert logged.data.tags["opsloop.decision"] == "retrain: f1 fell"
    assert metrics["gate.champion-challenger.margin"] == pytest.approx(0.06)
    assert metrics["gate.champion-challenger.ci_low"] == pytest.approx(0.01)
    assert metrics["gate.champion-challenger.promote"] == 1.0
    assert metrics["gate.champion-challenger.figures.champion.f1"] == pytest.approx(0.3)
    assert logged.info.status == "KILLED" and logged.data.tags["opsloop.error"].startswith("retrain.train")


def test_without_mlflow_the_run_says_what_to_install(opsloop_project, lifecycle, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where it is not installed
    project = opsloop_project(config=lifecycle(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    result = project.run("run")
    result.assert_error('plugin "mlflow-tracking"', "MLflow cannot be imported", "pip install opsloop-mlflow")
    assert project.run("models", "list", "--json").assert_ok().json == []


@pytest.mark.slow
def test_an_alias_moved_to_a_version_mlflow_never_saw_is_removed_there(opsloop_project, lifecycle, mlflow_client,
                                                                      sqlite_uri):
    config = lifecycle(sqlite_uri, experiment=MODEL)
    config["project"]["name"] = "late-mirror"
    project = opsloop_project(config=config)
    project.run("run").assert_ok()  # versions 1 and 2, mirrored; production on 1
    mlflow = mlflow_client(sqlite_uri)
    assert "production" in mlflow.get_registered_model("late-mirror").aliases

    # Versions 3 and 4 registered while the mirror was off: MLflow has no copy of them.
    project.run("run", "--set", "plugins.mlflow-tracking.registry=false", "--set",
                "train.xgboost.n_estimators=25").assert_ok()
    project.run("models", "promote", "late-mirror", "3", "--reason", "test").assert_ok()
    aliases = mlflow.get_registered_model("late-mirror").aliases
    assert "production" not in aliases  # not left on version 1, which production no longer is
    project.run("models", "rollback", "late-mirror").assert_ok()
    (first,) = mlflow.search_model_versions("name = 'late-mirror' and tags.`opsloop.version` = '1'")
    assert mlflow.get_registered_model("late-mirror").aliases["production"] == first.version
