"""A `local-http` deploy that fails puts the alias back: a server that does not start (its port taken by a real
socket) and a running server that does not swap in time (a real one, stopped with SIGSTOP). The runs are real
`opsloop run`s of the small telemetry set (opsloop.testing.data); the alias history is the store's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opsloop.serving.server import alive, read_state, state_path
from opsloop.testing.data import small_config, small_telemetry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import server_pids  # noqa: E402 - tests/conftest.py

MODEL = "small-telemetry"  # small_config's [project] name
SMALLER = ("--set", "train.xgboost.n_estimators=20")  # another version: other trees, same data


@pytest.fixture(scope="module")
def telemetry_csv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("data") / "telemetry.csv"
    small_telemetry().to_csv(path, index=False)
    return path.read_bytes()


def _project(opsloop_project: Any, telemetry_csv: bytes, **local_http: Any) -> Any:
    return opsloop_project(config=small_config(deploy={"plugins": ["local-http"], "local-http": local_http}),
                           files={"telemetry.csv": telemetry_csv})


def _production(project: Any) -> int:
    (model,) = project.run("models", "list", "--json").assert_ok().json
    return model["aliases"]["production"]


def _history(project: Any) -> list[dict[str, Any]]:
    return project.run("models", "history", MODEL, "--alias", "production", "--json").assert_ok().json


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_server_that_does_not_start_leaves_production_where_it_was(opsloop_project: Any,
                                                                     telemetry_csv: bytes) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        project = _project(opsloop_project, telemetry_csv, port=port, start_timeout=120)
        try:
            # The first version: production is new, and a store cannot remove an alias: the error says so.
            project.run("run").assert_error('plugin "local-http"', "the server did not start",
                                            "production was new, and the model store cannot remove an alias",
                                            f"still names {MODEL}:1, which no server serves")
            assert [(c["action"], c["to_version"]) for c in _history(project)] == [("set", 1)]

            # The second, promoted by the run: the deploy fails, production goes back to version 1.
            failed = project.run("run", "--promote", *SMALLER)
            failed.assert_error("the server did not start", "production restored to version 1 (rolled back",
                                "the log ends:")
            assert _production(project) == 1
            *_, promoted, back = _history(project)
            assert (promoted["action"], promoted["from_version"], promoted["to_version"]) == ("set", 1, 2)
            assert (back["action"], back["from_version"], back["to_version"]) == ("rollback", 2, 1)
            assert back["reason"].startswith(f"rollback: the local-http deploy of {MODEL}:2 by run ")
            assert "the server did not start" in back["reason"]
            assert server_pids(project.path) == []  # the failed server is gone, no other started
        finally:
            for pid in server_pids(project.path):
                _stop(pid)


def test_a_running_server_that_does_not_swap_in_time_keeps_serving_the_version_production_names_again(
        opsloop_project: Any, telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, port=0, poll_interval=0.1, swap_timeout=3)
    project.run("run").assert_ok()
    state = read_state(state_path(project.path, MODEL, "production"))
    assert state is not None
    pid = state["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)  # hung: it neither answers nor looks at the alias
        project.run("run", "--promote", *SMALLER).assert_error(
            f"(pid {pid}, {state['url']}) runs but did not answer", "production restored to version 1")
        assert _production(project) == 1
        back = _history(project)[-1]
        assert (back["action"], back["from_version"], back["to_version"]) == ("rollback", 2, 1)
        assert "did not answer within 3 s" in back["reason"]

        os.kill(pid, signal.SIGCONT)
        # woken, it reads the alias again: still version 1, which it serves (a generous deadline: a loaded CI)
        deadline, versions = time.monotonic() + 60, None
        while versions != ["1"] and time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{state['url']}/v2/models/{MODEL}",
                                                                      timeout=10) as answer:
                versions = json.loads(answer.read())["versions"]
            time.sleep(0.2)
        assert versions == ["1"]
        (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
        assert row["deployed"] is True and row["version"] == f"{MODEL}:1" and row["details"]["pid"] == pid
    finally:
        for server in {pid, *server_pids(project.path)}:
            _stop(server)


def test_a_restore_that_fails_too_is_said_with_what_to_do(opsloop_project: Any, telemetry_csv: bytes) -> None:
    """The rollback itself fails (here the store it must write is a file, not a registry): the sentence the
    deploy's error ends with says so, names the version the alias still names, and the command that fixes it."""
    from opsloop import config as config_mod
    from opsloop.plugins import local_http
    from opsloop.session import Session
    from opsloop.types import RunContext

    project = _project(opsloop_project, telemetry_csv)
    project.run("run", "--set", "deploy.plugins=[]").assert_ok()
    config = config_mod.read(project.path / "opsloop.toml")
    with Session.open(config).open_store() as store:
        version = store.get(MODEL, 1)
    blocker = project.path / "not-a-registry"
    blocker.write_text("a file\n", encoding="utf-8")
    broken = config_mod.read(project.path / "opsloop.toml", overrides=[f"store.uri={blocker}"])
    run = RunContext(run_id="0123456789ab", workdir=project.path, model_name=MODEL, config=broken)

    said = local_http._restore_alias(version, "production", run, "the server did not start")
    assert said.startswith("restoring production failed too (")
    assert said.endswith(f"it still names {MODEL}:1, which no server serves; "
                         f"opsloop models rollback {MODEL} --alias production")
    assert _production(project) == 1 and [c["action"] for c in _history(project)] == ["set"]
