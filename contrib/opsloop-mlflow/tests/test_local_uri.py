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
