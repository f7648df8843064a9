"""`opsloop run` with `mlflow-tracking` against a real `mlflow server`: the MLflow client finds the run, its
parameters and figures, the lineage and bundle artifacts, and the registered version; promote and rollback move
MLflow's alias."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e ./contrib/opsloop-mlflow)")
pytest.importorskip("opsloop_mlflow", reason="opsloop-mlflow is not installed (pip install -e ./contrib/opsloop-mlflow)")

from opsloop.testing import invoke, to_toml  # noqa: E402

MODEL = "asd-mlflow"


@attrs.define
class Logged:
    project: Path
    run: dict
    #: `opsloop models show --json` of the run's versions: 1, and 2 (its retrain).
    shown: dict[int, dict]
    #: MLflow's aliases of the registered model right after the run.
    aliases: dict


@pytest.fixture(scope="module")
def logged(mlflow_server, lifecycle, mlflow_client, tmp_path_factory):
    """One `opsloop run` logged to the server."""
    project = tmp_path_factory.mktemp("project")
    (project / "opsloop.toml").write_text(to_toml(lifecycle(mlflow_server.url, tags={"team": "sre"})))
    run = invoke(["run", "--json", "--quiet"], project).assert_ok().json
    shown = {int(v["ref"].rsplit(":", 1)[1]): invoke(["models", "show", v["ref"], "--json"], project).assert_ok().json
             for v in run["versions"]}
    aliases = dict(mlflow_client(mlflow_server.url).get_registered_model(MODEL).aliases)
    return Logged(project=project, run=run, shown=shown, aliases=aliases)


def same(a: float, b: float | None) -> bool:
    """MLflow's figure `a` is opsloop's `b` (`run --json` gives a figure that is not a number as null)."""
    if b is None or math.isnan(b):
        return math.isnan(a)
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_the_run_has_its_parameters_and_validation_and_monitor_figures(logged, mlflow_server, find_run,
                                                                        mlflow_client):
    run = find_run(mlflow_server.url, logged.run["run_id"])
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    # The config: data source, seed, trainer and its options, the preprocess steps (with their defaults).
    assert params["data.source"] == "embedded:asd"
    assert params["project.seed"] == str(logged.shown[1]["lineage"]["config"]["project"]["seed"])
    assert params["train.plugins"] == '["xgboost"]' and params["train.xgboost.n_estimators"] == "20"
    assert params["preprocess.plugins"] == '["schema-check", "impute"]'
    assert params["preprocess.impute.strategy"] == "median"  # a default nobody wrote
    assert params["model.n_estimators"] == "20" and params["model.flavor"] == "xgboost"
    # This run's monitor asked for a retrain: the retrained version is the run's last, and tagged so.
    assert [v["ref"] for v in logged.run["versions"]] == [f"{MODEL}:1", f"{MODEL}:2"]
    assert tags["team"] == "sre" and tags["opsloop.version"] == f"{MODEL}:2"

    # Validation: the mean of each figure, and each fold as a step.
    report = logged.run["validation"][0]
    assert len(report["folds"]) == 3
    for name, value in report["mean"].items():
        assert same(metrics[f"validate.kfold.{name}"], value), name
    history = mlflow_client(mlflow_server.url).get_metric_history(run.info.run_id, "validate.kfold.fold.pr_auc")
    assert sorted(m.step for m in history) == [0, 1, 2]
    for m in history:
        assert same(m.value, report["folds"][m.step]["pr_auc"])
    assert not math.isnan(metrics["validate.kfold.pr_auc"])
    # The retrain's stages, prefixed as opsloop names them.
    for name, value in logged.run["validation"][1]["mean"].items():
        assert same(metrics[f"retrain.validate.kfold.{name}"], value), name
    assert params["retrain.model.n_estimators"] == "20"

    # Monitoring: each monitor's figures, rows and alerts.
    assert logged.run["monitor"]
    for monitor in logged.run["monitor"]:
        base = f"monitor.{monitor['monitor']}"
        assert metrics[f"{base}.report.rows"] == monitor["rows"]
        assert metrics[f"{base}.report.alerts"] == len(monitor["alerts"])
        for name, value in monitor["metrics"].items():
            key = f"{base}.{name}".replace("[", "_").replace("]", "_")
            assert same(metrics[key], value), key


@pytest.mark.slow
def test_lineage_and_bundle_are_artifacts_and_the_bundle_loads_from_mlflow(logged, mlflow_server, find_run,
                                                                          mlflow_client, tmp_path):
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager

    run = find_run(mlflow_server.url, logged.run["run_id"])
    mlflow = mlflow_client(mlflow_server.url)
    lineage = json.loads(Path(mlflow.download_artifacts(run.info.run_id, "versions/1/lineage.json",
                                                        str(tmp_path))).read_text())
    first = logged.shown[1]
    assert lineage["ref"] == f"{MODEL}:1" and lineage["digest"] == first["digest"]
    assert lineage["lineage"]["run_id"] == logged.run["run_id"]
    assert lineage["lineage"]["data"] == first["lineage"]["data"]
    # The run's lineage tags are its last version's (the retrain's).
    tags, last = run.data.tags, logged.shown[2]
    assert tags["opsloop.digest"] == last["digest"]
    assert tags["opsloop.lineage.data.fingerprint"] == last["lineage"]["data"]["fingerprint"]
    assert tags["opsloop.lineage.config_hash"] == last["lineage"]["config_hash"]
    assert tags["opsloop.lineage.parent"] == f"{MODEL}:1"

    # The bundle, byte for byte, and it loads (every file's sha256 checked against the registered digest).
    downloaded = Path(mlflow.download_artifacts(run.info.run_id, "versions/1/bundle", str(tmp_path)))
    original = Path(first["path"])
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(downloaded) for p in downloaded.rglob("*") if p.is_file())
    for name in files:
        assert (downloaded / name).read_bytes() == (original / name).read_bytes(), name
    model = read_bundle(downloaded, PluginManager(), ref=f"{MODEL}:1", digest=first["digest"])
    assert model.manifest["flavor"] == "xgboost"


@pytest.mark.slow
def test_the_version_is_registered_in_mlflow_with_its_tags_and_the_production_alias(logged, mlflow_server,
                                                                                    find_run, mlflow_client):
    run = find_run(mlflow_server.url, logged.run["run_id"])
    mlflow = mlflow_client(mlflow_server.url)
    (mirror,) = mlflow.search_model_versions(f"name = '{MODEL}' and tags.`opsloop.version` = '1'")
    (retrained,) = mlflow.search_model_versions(f"name = '{MODEL}' and tags.`opsloop.version` = '2'")
    assert retrained.source == f"{run.info.artifact_uri}/versions/2/bundle"
    assert mirror.run_id == retrained.run_id == run.info.run_id
    assert mirror.source == f"{run.info.artifact_uri}/versions/1/bundle"
    assert mirror.tags["opsloop.digest"] == logged.shown[1]["digest"]
    assert retrained.tags["opsloop.digest"] == logged.shown[2]["digest"]
    assert mirror.tags["opsloop.ref"] == f"{MODEL}:1"
    assert mirror.tags["opsloop.store"] == str((logged.project / ".opsloop").resolve())
    assert mirror.tags["team"] == "sre"
    # Every opsloop alias (production on 1, the retrain's candidate on 2) on its version's mirror in MLflow.
    mirrors = {1: mirror.version, 2: retrained.version}
    expected = {alias: mirrors[n] for n, shown in logged.shown.items() for alias in shown["aliases"]}
    assert expected["production"] == mirror.version
    assert logged.aliases == expected


@pytest.mark.slow
def test_promote_and_rollback_move_the_mlflow_alias(logged, mlflow_server, mlflow_client):
    mlflow = mlflow_client(mlflow_server.url)

    def mirror(number: int) -> str:
        (found,) = mlflow.search_model_versions(f"name = '{MODEL}' and tags.`opsloop.version` = '{number}'")
        return found.version

    def production() -> str | None:
        return mlflow.get_registered_model(MODEL).aliases.get("production")

    # The run registered 1 and its retrain 2; production stayed on 1, in opsloop and in MLflow.
    assert production() == mirror(1) != mirror(2)

    invoke(["models", "promote", MODEL, "2", "--reason", "test"], logged.project).assert_ok()
    assert production() == mirror(2)
    invoke(["models", "rollback", MODEL], logged.project).assert_ok()
    assert production() == mirror(1)

    # MLflow unreachable during a promote: one line that says opsloop's alias moved and MLflow's did not.
    from socket import socket

    with socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = invoke(["models", "promote", MODEL, "2", "--set",
                     f"plugins.mlflow-tracking.tracking_uri=http://127.0.0.1:{port}"], logged.project)
    result.assert_error('plugin "mlflow-tracking"', f"http://127.0.0.1:{port}", "connection refused",
                        "MLflow's alias was not moved")
    assert len(result.stderr.strip().splitlines()) == 1
    assert production() == mirror(1)
