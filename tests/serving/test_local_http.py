"""The `local-http` deploy target through the runner's deploy stage: start a server, then hot-swap it.

The first deploy starts `python -m opsloop.serving` in the background; the
second only moves the alias, and the same process (same pid) answers with
the new version. `opsloop serve --stop` then stops it cleanly.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from opsloop import config as config_mod
from opsloop.runner import Runner
from opsloop.serving.server import alive, read_state, state_path
from opsloop.session import Session
from typer.testing import CliRunner

MODEL = "asd-serve"
OVERRIDES = ['deploy.plugins=["local-http"]', "deploy.local-http.port=0", 'deploy.local-http.alias="staging"',
             "deploy.local-http.poll_interval=0.1"]


def _deploy(project: Any, number: int) -> Any:
    cfg = config_mod.read(project.path / "opsloop.toml", overrides=OVERRIDES)
    runner = Runner(Session.open(cfg))
    try:
        version = runner.store.get(MODEL, number)
        (deployment,) = runner.deploy(version, runner.load(version), None)
        return deployment
    finally:
        runner.close()


def test_deploy_starts_a_server_then_hot_swaps_it(production_1: Any) -> None:
    project = production_1
    state_file = state_path(project.path, MODEL, "staging")
    record = project.records(project.monitor.iloc[[10]])
    try:
        first = _deploy(project, 1)
        assert first.target == "local-http" and first.details["action"] == "started"
        state = read_state(state_file)
        assert state is not None and state["pid"] == first.details["pid"] and alive(state["pid"])
        status, _, meta = project.request(state["url"], "GET", f"/v2/models/{MODEL}")
        assert status == 200 and json.loads(meta)["versions"] == ["1"]
        assert first.location == f"{state['url']}/v2/models/{MODEL}"

        second = _deploy(project, 3)
        assert second.details["action"] == "hot-swap" and second.details["pid"] == state["pid"]
        status, headers, answer = project.post_json(state["url"], "/predict", {"instances": record})
        assert status == 200 and answer["model_version"] == "3" == headers["x-opsloop-model-version"]
        expected = project.loaded(3).predict(project.monitor.iloc[[10]].drop(columns=["label"]))["score"].iloc[0]
        assert answer["predictions"][0]["score"] == float(expected)
        with project.store() as store:
            history = store.history(MODEL, "staging")
        assert [(c.to_version, c.reason.split(" to ")[-1]) for c in history[-2:]] == [(1, "local-http"),
                                                                                      (3, "local-http")]
    finally:
        from opsloop.cli.serve import serve

        cli = typer.Typer()
        cli.command()(serve)
        state = read_state(state_file)
        result = CliRunner().invoke(cli, ["--stop", "--alias", "staging", "--config",
                                          str(project.path / "opsloop.toml")], catch_exceptions=False)
    assert result.exit_code == 0 and "stopped" in result.output
    deadline = time.monotonic() + 10
    while state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state_file.exists() and not alive(state["pid"])


def test_a_stale_state_file_gets_a_new_server(production_1: Any) -> None:
    project = production_1
    state_file = state_path(project.path, MODEL, "staging")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"pid": 999999, "url": "http://127.0.0.1:9", "port": 9}), encoding="utf-8")
    try:
        deployment = _deploy(project, 2)
        assert deployment.details["action"] == "started" and deployment.details["pid"] != 999999
    finally:
        import os
        import signal

        state = read_state(state_file)
        if state and alive(state["pid"]):
            os.kill(state["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 30
            while alive(state["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
    assert not state_file.exists()
