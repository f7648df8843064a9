"""The log directory deleted while serving (issue 8, defect 3): no later row is lost, and `--stop` still works.

Before: after `rm -rf .opsloop/serving` the server went on writing to the
unlinked file (every later row lost, /metrics saying all was well), and
`opsloop serve --stop` said no server was running. Now the writer notices
(the inode of the file and of its -wal), opens a new log at the path and
counts it on /metrics, and the server writes its state file again.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from opsloop.serving.predlog import Feedback, PredictionLog
from opsloop.serving.server import alive, read_state, state_path
from typer.testing import CliRunner

MODEL = "asd-serve"
ALIAS = "deleted"


def _metric(text: str, name: str) -> int:
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def _wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return result


def test_deleting_the_serving_directory_loses_no_later_row_and_stop_still_works(project: Any) -> None:
    from opsloop.cli.serve import feedback, serve

    with project.store() as store:
        store.set_alias(MODEL, ALIAS, 1, reason="test: deleted log")
    serving = project.path / ".opsloop" / "serving"
    db = serving / "predictions.db"  # the default log
    state_file = state_path(project.path, MODEL, ALIAS)
    config = str(project.path / "opsloop.toml")
    cmd = [sys.executable, "-m", "opsloop.serving", "--alias", ALIAS, "--port", "0", "--poll-interval", "0.1"]
    proc = subprocess.Popen(cmd, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        state = _wait("the server starts", lambda: (s := read_state(state_file)) and s.get("pid") == proc.pid and s)
        conn = http.client.HTTPConnection(state["host"], state["port"], timeout=30)

        def predict(rows: list[dict[str, Any]]) -> list[str]:
            ids = []
            for row in rows:
                conn.request("POST", "/predict", json.dumps({"instances": [row]}).encode())
                ids.append(json.loads(conn.getresponse().read())["request_id"])
            return ids

        def metrics() -> str:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()

        rows = project.records(project.monitor.iloc[:200])
        before = predict(rows[:100])
        _wait("the first rows are written", lambda: _metric(metrics(), "opsloop_prediction_log_rows_total") >= 100)
        subprocess.run(["rm", "-rf", str(serving)], check=True)
        after = predict(rows[100:])
        conn.request("POST", "/v1/feedback", json.dumps({"request_id": after[0], "label": 1}).encode())
        assert conn.getresponse().read() == b'{"accepted":1}'
        cli = typer.Typer()
        cli.command()(feedback)  # writes the file at the same path, as the server now does
        result = CliRunner().invoke(cli, [after[1], "0", "--config", config], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        text = _wait("the later rows are written",
                     lambda: (t := metrics()) and _metric(t, "opsloop_prediction_log_rows_total") >= 200 and t)
        assert _metric(text, "opsloop_prediction_log_reopened_total") >= 1
        assert _metric(text, "opsloop_prediction_log_errors_total") == 0
        _wait("the state file is written again", lambda: (read_state(state_file) or {}).get("pid") == proc.pid)
        conn.close()
        cli = typer.Typer()
        cli.command()(serve)
        result = CliRunner().invoke(cli, ["--stop", "--alias", ALIAS, "--config", config], catch_exceptions=False)
        assert result.exit_code == 0 and "stopped" in result.output, result.output
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode()
    assert output.count("was deleted or replaced while serving") >= 1, output
    assert not state_file.exists() and not alive(proc.pid)
    # the rows written before the deletion went with the file; every row after it is here, once
    logged = project.log_rows(db, "SELECT request_id, row FROM predictions")
    assert sorted(logged) == sorted((rid, 0) for rid in after)
    assert not set(before) & {r[0] for r in logged}
    assert sorted(project.log_rows(db, "SELECT request_id, label, source FROM feedback")) == sorted(
        [(after[0], 1, "http"), (after[1], 0, "cli")])


def test_a_file_deleted_under_a_batch_gets_the_batch_again(project: Any, tmp_path: Path) -> None:
    """The writer checks after the transaction too: a batch that went into a file deleted meanwhile is rewritten."""
    db = tmp_path / "serving" / "log.db"
    log = PredictionLog(db)
    log.start()
    record = project.records(project.monitor.iloc[[3]])[0]

    def queue(prefix: str, n: int) -> None:
        for i in range(n):
            log.predictions(f"{prefix}-{i}", time.time(), MODEL, 1, None, [record], [0], [0.1], ("entity", "timestamp"),
                            json.dumps({"instances": [record]}).encode())
        log.add([Feedback(label=1, request_id=f"{prefix}-0")])

    try:
        queue("first", 10)
        _wait("the first batch is written", lambda: not log.pending)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer's next batch waits inside its transaction
        try:
            queue("second", 50)
            time.sleep(0.3)  # the writer is (most likely) waiting for the lock; either way no row may be lost
            subprocess.run(["rm", "-rf", str(db.parent)], check=True)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        _wait("the second batch is written", lambda: not log.pending)
        queue("third", 5)
    finally:
        log.close()
    assert log.reopened >= 1 and log.errors == 0
    logged = sorted(r[0] for r in project.log_rows(db, "SELECT request_id FROM predictions"))
    assert logged == sorted([f"second-{i}" for i in range(50)] + [f"third-{i}" for i in range(5)])
    assert sorted(project.log_rows(db, "SELECT request_id FROM feedback")) == [("second-0",), ("third-0",)]


def test_a_deleted_wal_file_is_noticed_too(project: Any, tmp_path: Path) -> None:
    """Only `predictions.db-wal` deleted: later rows would go to the unlinked -wal, which no reader sees."""
    db = tmp_path / "log.db"
    log = PredictionLog(db)
    log.start()
    try:
        log.add([Feedback(label=1, request_id="first")])
        _wait("the first label is written", lambda: not log.pending)
        Path(f"{db}-wal").unlink()
        log.add([Feedback(label=0, request_id=f"second-{i}") for i in range(20)])
        _wait("the later labels are written", lambda: not log.pending)
        reader = sqlite3.connect(db)  # another process's view, while the server runs
        try:
            seen = {r[0] for r in reader.execute("SELECT request_id FROM feedback")}
        finally:
            reader.close()
        assert {f"second-{i}" for i in range(20)} <= seen
    finally:
        log.close()
    assert log.reopened == 1 and log.errors == 0
    assert {f"second-{i}" for i in range(20)} <= {r[0] for r in project.log_rows(db, "SELECT request_id FROM feedback")}
