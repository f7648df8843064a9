"""Who may write (issue 8, item 12): a bearer token for feedback (or everything), and a cap on feedback entries.

Real servers on 127.0.0.1: on a thread for the endpoints, and `python -m
opsloop.serving` for how the command takes its token from the environment.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

TOKEN = secrets.token_urlsafe(24)
# Same length, last character changed: a token that is wrong by one character, always (not "x" when TOKEN ends in "x").
WRONG = TOKEN[:-1] + ("y" if TOKEN.endswith("x") else "x")
FEEDBACK = json.dumps({"request_id": "req-1", "label": 1}).encode()


def _post(project: Any, url: str, path: str, body: bytes, token: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, answer_headers, raw = project.request(url, "POST", path, body, headers)
    return status, answer_headers, json.loads(raw)


def _get(project: Any, url: str, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return project.request(url, "GET", path, None, headers)[0]


def test_with_a_token_feedback_needs_it_and_predictions_do_not(project: Any, tmp_path: Path) -> None:
    predict = json.dumps({"instances": project.records(project.monitor.iloc[[5]])}).encode()
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db", token=TOKEN)
    with ServerThread(app) as server:
        status, headers, answer = _post(project, server.url, "/v1/feedback", FEEDBACK)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="opsloop"'
        assert "needs a bearer token" in answer["error"] and TOKEN not in answer["error"]
        status, headers, answer = _post(project, server.url, "/v1/feedback", FEEDBACK, token=WRONG)
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        basic = {"Authorization": f"Basic {TOKEN}"}
        assert project.request(server.url, "POST", "/v1/feedback", FEEDBACK, basic)[0] == 401
        assert _post(project, server.url, "/v1/feedback", FEEDBACK, token=TOKEN)[:3:2] == (202, {"accepted": 1})
        assert _post(project, server.url, "/predict", predict)[0] == 200  # scoring is not writing
        assert _get(project, server.url, "/metrics") == 200
        status, _, raw = project.request(server.url, "GET", "/metrics")
    assert 'opsloop_requests_total{route="feedback",code="401"} 3' in raw.decode()
    assert 'opsloop_request_errors_total{route="feedback",code="401",reason="unauthorized"} 3' in raw.decode()


def test_token_for_all_guards_every_endpoint_but_the_health_checks(project: Any, tmp_path: Path) -> None:
    predict = json.dumps({"instances": project.records(project.monitor.iloc[[5]])}).encode()
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db", token=TOKEN, token_for="all")
    with ServerThread(app) as server:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert _get(project, server.url, path) == 200
        for path in ("/metrics", "/", "/v2", f"/v2/models/{project.model}", f"/v2/models/{project.model}/ready"):
            assert _get(project, server.url, path) == 401, path
            assert _get(project, server.url, path, token=TOKEN) == 200, path
        assert _post(project, server.url, "/predict", predict)[0] == 401
        assert _post(project, server.url, "/predict", predict, token=TOKEN)[0] == 200
        assert _post(project, server.url, "/v1/feedback", FEEDBACK)[0] == 401
        assert _post(project, server.url, "/v1/feedback", FEEDBACK, token=TOKEN)[0] == 202


def test_without_a_token_feedback_is_open_as_documented(project: Any, tmp_path: Path) -> None:
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db")
    with ServerThread(app) as server:
        assert _post(project, server.url, "/v1/feedback", FEEDBACK)[0] == 202


def test_feedback_entries_per_request_are_capped(project: Any, tmp_path: Path) -> None:
    entries = [{"request_id": f"never-seen-{i}", "label": i % 2} for i in range(6)]
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db", max_feedback=5)
    with ServerThread(app) as server:
        for body in ({"feedback": entries}, entries):
            status, _, answer = _post(project, server.url, "/v1/feedback", json.dumps(body).encode())
            assert status == 413
            assert answer["error"] == ("6 feedback entries in one request; this server takes at most 5 "
                                       "(--max-feedback): send them in several requests")
        assert _post(project, server.url, "/v1/feedback", json.dumps(entries[:5]).encode())[:3:2] == \
            (202, {"accepted": 5})


def test_a_token_too_short_to_protect_anything_is_refused(project: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(workdir=project.path, log_path=tmp_path / "log.db", token="secret")


def _serve(project: Any, tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    output = tmp_path / "server.log"
    with open(output, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "opsloop.serving", "--port", "0",
                                 "--config", str(project.path / "opsloop.toml"), "--log-path", str(tmp_path / "log.db"),
                                 *args], cwd=project.path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def test_opsloop_serve_takes_the_token_from_the_environment(project: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPSLOOP_SERVE_TOKEN", "OPSLOOP_STORE")}
    for args, extra, message in [
        (["--token-env", "OPSLOOP_TEST_NO_SUCH_TOKEN"], {}, "the environment variable OPSLOOP_TEST_NO_SUCH_TOKEN is "
                                                            "not set"),
        (["--token-for", "all"], {}, "--token-for all needs a token"),
        ([], {"OPSLOOP_SERVE_TOKEN": "short"}, "$OPSLOOP_SERVE_TOKEN: the token must be a string of at least 16"),
    ]:
        proc = _serve(project, tmp_path, *args, env={**env, **extra})
        assert proc.wait(timeout=120) == 1
        assert message in (tmp_path / "server.log").read_text(), (args, (tmp_path / "server.log").read_text())

    proc = _serve(project, tmp_path, "--token-env", "MY_TOKEN", env={**env, "MY_TOKEN": TOKEN + "\n"})
    try:
        deadline = time.monotonic() + 120
        output = tmp_path / "server.log"
        while not (found := re.search(r"^listening on (http://\S+):", output.read_text(), re.MULTILINE)):
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        url = found.group(1)
        while "POST /v1/feedback needs the bearer token from $MY_TOKEN" not in output.read_text():
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        assert _post(project, url, "/v1/feedback", FEEDBACK)[0] == 401
        assert _post(project, url, "/v1/feedback", FEEDBACK, token=TOKEN)[0] == 202
        assert TOKEN not in output.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_local_http_starts_a_guarded_server_and_still_hot_swaps_it(project: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy target passes the options on, and sends the token when it asks what the server serves."""
    import signal

    from opsloop import config as config_mod
    from opsloop.runner import Runner
    from opsloop.serving.server import alive, read_state, state_path
    from opsloop.session import Session

    monkeypatch.setenv("OPSLOOP_SERVE_TOKEN", TOKEN)
    overrides = ['deploy.plugins=["local-http"]', "deploy.local-http.port=0", 'deploy.local-http.alias="guarded"',
                 "deploy.local-http.poll_interval=0.1", 'deploy.local-http.token_for="all"',
                 "deploy.local-http.max_feedback=2"]

    def deploy(number: int) -> Any:
        runner = Runner(Session.open(config_mod.read(project.path / "opsloop.toml", overrides=overrides)))
        try:
            version = runner.store.get(project.model, number)
            (deployment,) = runner.deploy(version, runner.load(version), None)
            return deployment
        finally:
            runner.close()

    state_file = state_path(project.path, project.model, "guarded")
    predict = json.dumps({"instances": project.records(project.monitor.iloc[[5]])}).encode()
    try:
        assert deploy(1).details["action"] == "started"
        url = read_state(state_file)["url"]  # type: ignore[index]
        assert _post(project, url, "/predict", predict)[0] == 401
        assert _post(project, url, "/predict", predict, token=TOKEN)[2]["model_version"] == "1"
        too_many = json.dumps([{"request_id": "r", "label": 1}] * 3).encode()
        assert _post(project, url, "/v1/feedback", too_many, token=TOKEN)[0] == 413
        assert deploy(2).details["action"] == "hot-swap"
        assert _post(project, url, "/predict", predict, token=TOKEN)[2]["model_version"] == "2"
    finally:
        state = read_state(state_file)
        if state and alive(state["pid"]):
            os.kill(state["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 60
            while alive(state["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
