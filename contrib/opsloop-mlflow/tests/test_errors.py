"""Bad input (issue 10, item 7): an MLflow that cannot be reached, that never answers, that refuses artifacts or
registry writes, and wrong options: one line naming the plugin and the address, a non-zero exit, and nothing
registered in opsloop's store."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e ./contrib/opsloop-mlflow)")
pytest.importorskip("opsloop_mlflow", reason="opsloop-mlflow is not installed (pip install -e ./contrib/opsloop-mlflow)")

from opsloop.testing import opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures

from opsloop_mlflow._client import reason, redact  # noqa: E402
from opsloop_mlflow._records import config_params, scrub  # noqa: E402

MODEL = "asd-mlflow"
PLUGIN = 'plugin "mlflow-tracking"'


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nothing_registered(project) -> None:
    assert project.run("models", "list", "--json").assert_ok().json == []
    assert not list((project.path / ".opsloop").rglob("manifest.json"))


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def mlflow_runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_an_unreachable_server_stops_the_run_before_training(opsloop_project, lifecycle):
    port = closed_port()
    # A password in the URI never reaches the message.
    project = opsloop_project(config=lifecycle(f"http://ops:s3cret@127.0.0.1:{port}"))
    result = project.run("run")
    result.assert_error(PLUGIN, "on_stage_start", f"http://ops:***@127.0.0.1:{port}", "connection refused")
    assert "s3cret" not in result.stderr
    one_line(result)
    nothing_registered(project)


def test_not_critical_an_unreachable_server_is_a_warning_and_the_run_goes_on(opsloop_project, lifecycle):
    port = closed_port()
    config = lifecycle(f"http://127.0.0.1:{port}")
    config["plugins"]["mlflow-tracking"]["critical"] = False
    project = opsloop_project(config=config)
    data = project.run("run").assert_ok().json
    assert data["versions"], "the run registered nothing"
    assert data["warnings"] and all(w.startswith(f'{PLUGIN}') and "connection refused" in w
                                    for w in data["warnings"]), data["warnings"]


def test_a_server_that_never_answers_fails_within_the_configured_timeout(opsloop_project, lifecycle):
    # A socket that listens but never accepts: the connection is made (the kernel's backlog), no answer comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        project = opsloop_project(config=lifecycle(address, timeout=1, retries=0))
        result = project.run("run")
    result.assert_error(PLUGIN, address, "no answer in time")
    one_line(result)
    nothing_registered(project)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("retries", -1, "expected a whole number >= 0"),
    ("timeout", 0, "expected a whole number >= 1"),
    ("tracking_url", "http://x", 'did you mean "tracking_uri"'),
    ("tags", "team", "expected a table of strings"),
    ("tags", {"team": 3}, "expected a table of strings"),
])
def test_bad_options_are_config_errors_naming_the_key(key, value, says, opsloop_project, lifecycle):
    project = opsloop_project(config=lifecycle("http://127.0.0.1:1", **{key: value}))
    project.run("config", "check").assert_error(f"[plugins.mlflow-tracking.{key}]", says)


def test_messages_hide_passwords_and_keep_to_one_line():
    assert redact("https://ops:s3cret@mlflow.example:443/x") == "https://ops:***@mlflow.example:443/x"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    # The config copied to MLflow (parameters, opsloop/config.json, lineage.json) keeps no password.
    table = {"store": {"uri": "postgresql://ops:s3cret@db.internal/models", "plugins": ["postgres-store"]},
             "data": {"source": "prometheus://ops:s3cret@prom:9090", "features": ["a@b"]}}
    assert "s3cret" not in repr(scrub(table)) and "s3cret" not in repr(config_params(table))
    assert config_params(table)["store.uri"] == "postgresql://ops:***@db.internal/models"
    assert scrub(table)["data"]["features"] == ["a@b"]
    said = reason(RuntimeError("line one\nline two " + "x" * 1000))
    assert "\n" not in said and len(said) <= 300


@pytest.mark.slow
def test_a_server_refusing_artifacts_stops_the_run_before_training(opsloop_project, lifecycle, mlflow_servers,
                                                                   mlflow_client):
    server = mlflow_servers["artifacts"].wait()
    project = opsloop_project(config=lifecycle(server.url, retries=0))  # refused is refused: no need to insist
    result = project.run("run")
    result.assert_error(PLUGIN, "on_stage_start", server.url, "writing the artifact opsloop/config.json",
                        "the server refused it")
    one_line(result)
    nothing_registered(project)
    (run,) = mlflow_runs(mlflow_client(server.url), MODEL)
    assert run.info.status == "FAILED" and "refused" in run.data.tags["opsloop.error"]


@pytest.mark.slow
def test_a_registry_refusing_writes_stops_the_run_before_opsloop_registers(opsloop_project, lifecycle,
                                                                            mlflow_server, mlflow_client):
    # Runs on the real server; the model registry at its own URI (`registry_uri`): the server's database,
    # opened read-only, so its tables are there and every write is refused.
    registry = f"sqlite:///file:{mlflow_server.folder / 'mlflow.db'}?mode=ro&uri=true"
    project = opsloop_project(config=lifecycle(mlflow_server.url, registry_uri=registry, experiment="refused"))
    result = project.run("run")
    result.assert_error(PLUGIN, "on_stage_start", f"MLflow at {registry}", f"creating the registered model '{MODEL}'")
    assert "readonly database" in one_line(result)
    nothing_registered(project)
    (run,) = mlflow_runs(mlflow_client(mlflow_server.url), "refused")
    assert run.info.status == "FAILED" and run.data.tags["opsloop.error"].startswith("register: ")
    # It trained and validated before the register stage: those figures are in MLflow, for the record.
    assert "validate.kfold.pr_auc" in run.data.metrics
