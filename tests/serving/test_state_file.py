"""The state file overwritten while serving (issue 8, defect 3 follow-up): the server writes it again.

Found by the hostile-client review: the state keeper rewrote
`.opsloop/serving/<model>@<alias>.json` only when it was deleted. Replaced
by other content (a stale copy restored from a backup, a record of a dead
process, a stray editor save), it stayed so, and `opsloop serve --stop`
said no server was running while one ran. A real server process, the real
CLI; every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from opsloop.serving.server import alive, read_state, state_path
from opsloop.testing import invoke

MODEL = "asd-serve"
ALIAS = "overwritten"


def _wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return result


def _last_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("content", ["not json", "a dead server's record"])
def test_an_overwritten_state_file_is_written_again_and_stop_finds_the_server(project: Any, content: str) -> None:
    with project.store() as store:
        store.set_alias(MODEL, ALIAS, 1, reason="test: overwritten state file")
    state_file = state_path(project.path, MODEL, ALIAS)
    cmd = [sys.executable, "-m", "opsloop.serving", "--alias", ALIAS, "--port", "0", "--poll-interval", "0.1"]
    proc = subprocess.Popen(cmd, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        state = _wait("the server starts", lambda: (s := read_state(state_file)) and s.get("pid") == proc.pid and s)
        if content == "not json":
            state_file.write_text("{ this is not the server's state\n", encoding="utf-8")
        else:
            state_file.write_text(json.dumps({**state, "pid": _last_pid()}), encoding="utf-8")
        _wait("the state file is written again", lambda: read_state(state_file) == state)
        result = invoke(["serve", "--stop", "--alias", ALIAS], cwd=project.path)
        assert result.exit_code == 0 and "stopped" in result.stdout, result.stdout + result.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode()  # type: ignore[union-attr]
    assert "was overwritten; written again" in output, output
    assert not state_file.exists() and not alive(proc.pid)


def test_stop_does_not_signal_another_opsloop_process_that_got_a_dead_servers_pid(project: Any) -> None:
    """The server died without removing its file (SIGKILL, OOM) and the system gave its pid to another opsloop
    process (here one whose command line says opsloop, started after the file was written): `serve --stop`
    finds no server and leaves that process alone (it sent it SIGTERM before)."""
    state_file = state_path(project.path, MODEL, ALIAS)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "opsloop", "loop", "--every",
                              "1h"], stdin=subprocess.PIPE)
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"pid": other.pid, "url": "http://127.0.0.1:9", "port": 9,
                                          "started_at": time.time() - 86400}), encoding="utf-8")
        result = invoke(["serve", "--stop", "--alias", ALIAS], cwd=project.path)
        assert result.exit_code == 1 and "no server is running" in result.stderr, result.stderr
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()
