"""What a server may be told, by its operator and by its clients (issue 8, items 5-8, 7b and 12b).

Grew from the hostile-client review's probe: `--poll-interval 1e10` (or
`inf`) was accepted, and the alias watcher and the state keeper then died
with `OverflowError: timestamp out of range for platform time_t`; a thread
count past int32 made every prediction a 500; `config check` passed a
`read_timeout` the server refused only at deploy, after the alias had moved.
Every number now has one range (`BOUNDS` in `opsloop.serving.settings`),
which `opsloop serve`, `python -m opsloop.serving` and `local-http`'s options
(`config check`) refuse alike, in one line naming the option and the range.

Also here: a token variable that is set but empty is refused rather than
serving unauthenticated; a refused version the alias stays on is loaded once
its bundle is repaired in place; a client may not choose a request id of
the form the server makes up.

Real servers on 127.0.0.1 and the serving project's real store; no mocks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from opsloop.errors import OpsloopError
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread
from opsloop.serving.settings import BOUNDS, OutOfRange, Settings, describe

MODEL = "asd-serve"
DEADLINE = 60.0  # generous: CI is a loaded two-core machine


def _wait_for(predicate: Any, what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _serve(project: Any, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`python -m opsloop.serving ARGS` in the project: exit code and output (it must exit by itself)."""
    cmd = [sys.executable, "-m", "opsloop.serving", "--port", "0", "--log-path", str(tmp_path / "log.db"), *args]
    proc = subprocess.Popen(cmd, cwd=project.path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:  # it serves: the value was taken
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
        pytest.fail(f"{' '.join(args)}: the server started instead of refusing:\n{output[-2000:]}")
    return proc.returncode, output


# -- numbers out of range ------------------------------------------------------------


@pytest.mark.parametrize("interval", ["1e10", "inf"])
def test_a_huge_poll_interval_is_refused_in_one_line(project: Any, tmp_path: Path, interval: str) -> None:
    code, output = _serve(project, tmp_path, "--poll-interval", interval)
    assert code == 1, output
    assert output.strip().splitlines() == [f"error: --poll-interval must be from 0.01 to 3,600 seconds, "
                                           f"got {float(interval)!r}"]


OUT_OF_RANGE = [
    ("poll_interval", "1e10"), ("poll_interval", "0"), ("read_timeout", "1e10"), ("idle_timeout", "inf"),
    ("threads", "18446744073709551616"), ("threads", "-1"), ("port", "65536"), ("max_connections", "0"),
    ("max_connections", "1000000000000"), ("max_feedback", "0"), ("log_max_pending", "100000000000"),
    ("max_rows", "0"), ("max_body_bytes", "1099511627776"),
]


@pytest.mark.parametrize(("name", "value"), OUT_OF_RANGE)
def test_serve_python_m_and_config_check_refuse_the_same_values_alike(opsloop_project: Any, name: str, value: str,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """No model needed: the options are refused before the store is opened (or a deploy moves an alias)."""
    from opsloop.serving.__main__ import main

    project = opsloop_project(config={"project": {"name": "nothing-here"}})
    flag = "--" + name.replace("_", "-")
    words = f"must be {describe(name)}, got "
    result = project.run("serve", flag, value).assert_error(f"error: {flag} {words}")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    monkeypatch.chdir(project.path)
    assert main([flag, value]) == 1
    assert capsys.readouterr().err.strip() == result.stderr.strip()  # the same line
    result = project.run("config", "check", "--set", 'deploy.plugins=["local-http"]',
                         "--set", f"deploy.local-http.{name}={value}")
    result.assert_error(f"[deploy.local-http.{name}] wrong value: {name} {words}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_every_range_is_the_same_for_the_server_and_the_local_http_options() -> None:
    from opsloop.plugins.local_http import Options

    shared = set(attrs.fields_dict(Options)) & set(BOUNDS)
    # live_window: local-http does not pass it on
    assert shared == set(BOUNDS) - {"live_window"}
    for name, (low, high, _) in BOUNDS.items():
        integer = isinstance(low, int) and isinstance(high, int)
        step = 1 if integer else 1e-9 * high
        for cls in (Settings, Options) if name in shared else (Settings,):
            for fine in (low, high):
                assert getattr(cls(**{name: fine}), name) == fine
            for wrong in (low - step, high + step, float("nan"), float("inf"), True, *((1.5,) if integer else ())):
                with pytest.raises(OutOfRange, match=f"^{name} must be "):
                    cls(**{name: wrong})


# -- a token variable set but empty ---------------------------------------------------


@pytest.mark.parametrize(("args", "variable", "value"), [
    ((), "OPSLOOP_SERVE_TOKEN", ""), ((), "OPSLOOP_SERVE_TOKEN", " \t "),
    (("--token-env", "MY_SERVE_TOKEN"), "MY_SERVE_TOKEN", ""),
])
def test_a_token_variable_set_but_empty_is_refused_not_served_without_a_token(project: Any, tmp_path: Path,
                                                                               args: tuple[str, ...], variable: str,
                                                                               value: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "OPSLOOP_SERVE_TOKEN"}, variable: value}
    code, output = _serve(project, tmp_path, *args, env=env)
    assert code == 1, output
    assert output.strip().splitlines() == [f"error: the environment variable {variable} is set but empty: put the "
                                           "bearer token there, or unset it to serve without authentication"]


def test_local_http_refuses_an_empty_token_before_it_moves_the_alias(project: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from opsloop import config as config_mod
    from opsloop.runner import Runner
    from opsloop.serving.server import alive, read_state, state_path
    from opsloop.session import Session

    monkeypatch.setenv("OPSLOOP_SERVE_TOKEN", "")
    overrides = ['deploy.plugins=["local-http"]', "deploy.local-http.port=0", 'deploy.local-http.alias="empty-token"']
    with project.store() as store:
        store.set_alias(MODEL, "empty-token", 1, reason="test: empty token")
        moves = len(store.history(MODEL, "empty-token"))
    runner = Runner(Session.open(config_mod.read(project.path / "opsloop.toml", overrides=overrides)))
    try:
        version = runner.store.get(MODEL, 2)
        with pytest.raises(OpsloopError, match="OPSLOOP_SERVE_TOKEN is set but empty"):
            runner.deploy(version, runner.load(version), None)
    finally:
        runner.close()
        state = read_state(state_path(project.path, MODEL, "empty-token"))
        if state and alive(state["pid"]):  # before the fix: a server without authentication
            os.kill(state["pid"], signal.SIGTERM)
    with project.store() as store:
        assert store.alias(MODEL, "empty-token") == 1
        assert len(store.history(MODEL, "empty-token")) == moves


# -- a refused version repaired in place ------------------------------------------------


@pytest.fixture
def alias(project: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """An alias of this test's own at version 1."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    with project.store() as store:
        store.set_alias(MODEL, name, 1, reason="test: serve options")
    yield name
    with project.store() as store:
        store.set_alias(MODEL, name, 1, reason="test: serve options")


def _version(project: Any, url: str) -> str:
    body = json.dumps({"instances": project.records(project.monitor.iloc[[100]])}).encode()
    status, _, raw = project.request(url, "POST", "/predict", body)
    assert status == 200, raw
    return json.loads(raw)["model_version"]


def test_a_refused_version_repaired_in_place_is_served_without_moving_the_alias(project: Any, alias: str,
                                                                                 tmp_path: Path) -> None:
    """Promote tampered v3 (refused), repair v3 in place: v3 serves, with no alias change (`promote 3` would
    answer "already points at 3: nothing to do")."""
    app = create_app(workdir=project.path, alias=alias, poll_interval=0.05, log_path=tmp_path / "log.db")
    app.watcher.retry_every = 3600  # the repair must be seen by its files, not by the periodic retry
    with project.tampered(3) as v3, ServerThread(app) as server:
        with project.store() as store:
            store.set_alias(MODEL, alias, 3, reason="test: the tampered version")
            moves = len(store.history(MODEL, alias))
        _wait_for(lambda: app.metrics.load_errors == 1, "the refusal of the tampered version")
        assert _version(project, server.url) == "1"
        v3.repair()
        _wait_for(lambda: _version(project, server.url) == "3", "the repaired version 3 to serve")
        assert app.metrics.load_errors == 1
        with project.store() as store:
            assert len(store.history(MODEL, alias)) == moves


def test_a_version_that_stays_refused_is_retried_now_and_then_and_reported_once(
        project: Any, alias: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(workdir=project.path, alias=alias, poll_interval=0.05, log_path=tmp_path / "log.db")
    app.watcher.retry_every = 0.2  # 30 s, shortened
    with project.tampered(3), ServerThread(app) as server, caplog.at_level(logging.ERROR, "opsloop.serving"):
        with project.store() as store:
            store.set_alias(MODEL, alias, 3, reason="test: the tampered version")
        _wait_for(lambda: app.metrics.load_errors >= 3, "two more attempts at the tampered version")
        assert _version(project, server.url) == "1"
        lines = [r.getMessage() for r in caplog.records if "cannot load" in r.getMessage()]
        assert len(lines) == 1 and "every 0.2 s" in lines[0], lines  # the next one would be a minute later


# -- request ids a client may choose ---------------------------------------------------------


def test_a_client_may_not_choose_a_request_id_of_the_form_the_server_makes_up(project: Any, tmp_path: Path) -> None:
    """An honest label for a server-made id must not join the rows of a client that reused it."""
    rows = project.records(project.monitor.iloc[[7]])
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db")
    with ServerThread(app) as server:
        status, headers, answer = project.post_json(server.url, "/predict", {"instances": rows})
        assert status == 200
        theirs = answer["request_id"]
        for made_up in (theirs, "0123456789ab-7"):  # this server's, or one another start of it made
            status, _, answer = project.post_json(server.url, "/predict", {"instances": rows, "id": made_up})
            assert status == 422 and answer["error"].startswith(f'"id" {made_up!r} has the form of the request ids')
            status, _, raw = project.request(server.url, "POST", "/predict", json.dumps({"instances": rows}).encode(),
                                             {"X-Request-Id": made_up})
            assert status == 422 and json.loads(raw)["error"].startswith(f"X-Request-Id {made_up!r} has the form")
        tensors = [{"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1], "data": [v]}
                   for k, v in rows[0].items()]
        status, _, answer = project.post_json(server.url, f"/v2/models/{MODEL}/infer", {"id": theirs,
                                                                                       "inputs": tensors})
        assert status == 422 and "has the form of the request ids" in answer["error"]
        batch_id = "batch-0123456789abcdef"  # the form of a batch run's id: its rows are in the same log
        status, _, answer = project.post_json(server.url, "/predict", {"instances": rows, "id": batch_id})
        assert status == 422 and answer["error"].startswith(f'"id" {batch_id!r} has the form of the request ids '
                                                            "batch runs log under")
        for mine in ("client-7", "x" + theirs, theirs + "x", "batch-7"):
            status, _, answer = project.post_json(server.url, "/predict", {"instances": rows, "id": mine})
            assert status == 200 and answer["request_id"] == mine
