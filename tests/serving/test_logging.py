"""The prediction log and feedback: nothing lost on a clean stop, labels by request id or key, live quality.

The drain test runs the real command (`python -m opsloop.serving`) in a
subprocess, sends a burst of requests and stops it with SIGTERM at once:
every prediction answered must be in the log afterwards.
"""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread, read_state, state_path
from typer.testing import CliRunner

MODEL = "asd-serve"


def test_a_clean_stop_writes_every_prediction(project: Any, tmp_path: Path) -> None:
    with project.store() as store:
        store.set_alias(MODEL, "canary", 2, reason="test: drain")
    db = tmp_path / "log.db"
    cmd = [sys.executable, "-m", "opsloop.serving", "--alias", "canary", "--port", "0", "--log-path", str(db)]
    proc = subprocess.Popen(cmd, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_file = state_path(project.path, MODEL, "canary")
    try:
        deadline = time.monotonic() + 60
        while (state := read_state(state_file)) is None or state.get("pid") != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        conn = http.client.HTTPConnection(state["host"], state["port"], timeout=30)
        sent: dict[str, list[dict[str, Any]]] = {}
        rows = project.records(project.monitor.iloc[:400])
        for i in range(300):  # single rows, then a few larger requests
            k = i - 290
            batch = rows[i:i + 1] if k < 0 else rows[300 + 10 * k:310 + 10 * k]
            conn.request("POST", "/predict", json.dumps({"instances": batch}).encode())
            answer = json.loads(conn.getresponse().read())
            assert answer["model_version"] == "2"
            sent[answer["request_id"]] = batch
        proc.send_signal(signal.SIGTERM)  # at once: the writer has a batch or two still queued
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not state_file.exists()  # removed on a clean stop
    logged = project.log_rows(db, "SELECT request_id, row, version, model, inputs, series, time, at FROM predictions")
    assert len(logged) == sum(len(b) for b in sent.values()) == 390
    assert {r[0] for r in logged} == set(sent)
    for request_id, row, version, model, inputs, series, stamp, at in logged[::37]:
        record = sent[request_id][row]
        assert (version, model) == (2, MODEL) and json.loads(inputs) == record
        assert series == record["entity"] and stamp == record["timestamp"].replace("T", " ") and at.endswith("Z")


@pytest.fixture
def served(project: Any, tmp_path: Path) -> Any:
    project.set_production(1)
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db")
    with ServerThread(app) as server:
        yield server


def _wait_written(server: Any, rows: int, labels: int) -> None:
    deadline = time.monotonic() + 10
    log = server.app.log
    while log.written < rows or log.feedback < labels:
        assert time.monotonic() < deadline, (log.written, log.feedback)
        time.sleep(0.02)


def test_feedback_by_request_id_row_and_key_gives_live_precision_and_recall(served: Any, project: Any,
                                                                           tmp_path: Path) -> None:
    # rows with incidents and without, so that precision and recall are both defined
    frame = project.monitor
    picked = pd.concat([frame[frame["label"] == 1].iloc[::25].head(12), frame[frame["label"] == 0].iloc[::50].head(28)])
    truth = picked["label"].to_numpy()
    status, _, whole = project.post_json(served.url, "/predict", {"instances": project.records(picked.head(20))})
    assert status == 200
    singles = []
    for record in project.records(picked.iloc[20:]):
        singles.append(project.post_json(served.url, "/predict", {"instances": [record]})[2])
    predictions = np.array([p["prediction"] for p in whole["predictions"]]
                           + [s["predictions"][0]["prediction"] for s in singles])
    # 1. the endpoint, by request id and row
    entries = [{"request_id": whole["request_id"], "row": i, "label": int(y)} for i, y in enumerate(truth[:20])]
    status, _, answer = project.post_json(served.url, "/v1/feedback", {"feedback": entries})
    assert status == 202 and answer == {"accepted": 20}
    # 2. the CLI, by request id (all rows of a one-row request)
    from opsloop.cli.serve import feedback

    cli = typer.Typer()
    cli.command()(feedback)
    config = str(project.path / "opsloop.toml")
    for s, y in zip(singles[:10], truth[20:30], strict=True):
        result = CliRunner().invoke(cli, [s["request_id"], str(int(y)), "--config", config,
                                          "--log-path", str(tmp_path / "log.db")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    # 3. a CSV file by key: the series and time the incident ticket knows
    csv = tmp_path / "labels.csv"
    keys = picked.iloc[30:]
    csv.write_text("series,time,label\n" + "".join(f"{e},{t.isoformat()},{int(y)}\n" for e, t, y in
                                                    zip(keys["entity"], keys["timestamp"], keys["label"],
                                                        strict=True)), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--file", str(csv), "--config", config, "--log-path", str(tmp_path / "log.db")],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "recorded 10 label(s)" in result.output
    _wait_written(served, 40, 20)
    tp = int(((predictions == 1) & (truth == 1)).sum())
    fp = int(((predictions == 1) & (truth == 0)).sum())
    fn = int(((predictions == 0) & (truth == 1)).sum())
    assert tp and fn + fp  # both kinds of rows, and a model that is not perfect here: a real check
    time.sleep(2.1)  # past the /metrics cache
    text = project.request(served.url, "GET", "/metrics")[2].decode()
    figures = {line.split('metric="')[1].split('"')[0]: float(line.rpartition(" ")[2])
               for line in text.splitlines() if line.startswith("opsloop_live_quality{")}
    assert figures["labelled"] == 40
    assert figures["precision"] == pytest.approx(tp / (tp + fp))
    assert figures["recall"] == pytest.approx(tp / (tp + fn))
    assert figures["accuracy"] == pytest.approx(float((predictions == truth).mean()))
    labelled = project.log_rows(tmp_path / "log.db", "SELECT count(*), count(DISTINCT id) FROM labelled")
    assert labelled == [(40, 40)]


def test_a_later_label_wins_and_labels_may_come_first(served: Any, project: Any) -> None:
    status, _, _ = project.post_json(served.url, "/v1/feedback", {"request_id": "mine-1", "label": 0})
    assert status == 202
    record = project.records(project.monitor.iloc[[7]])
    status, _, raw = project.request(served.url, "POST", "/predict", json.dumps({"instances": record}).encode(),
                                     {"X-Request-Id": "mine-1"})
    assert status == 200 and json.loads(raw)["request_id"] == "mine-1"
    project.post_json(served.url, "/v1/feedback", [{"request_id": "mine-1", "label": 1}])
    _wait_written(served, 1, 2)
    quality = served.app.log.quality(MODEL, 100)
    assert quality[1]["labelled"] == 1
    assert quality[1]["accuracy"] == float(json.loads(raw)["predictions"][0]["prediction"] == 1)


def test_feedback_cli_refuses_bad_input(project: Any, tmp_path: Path) -> None:
    from opsloop.cli.serve import feedback
    from opsloop.errors import OpsloopError

    cli = typer.Typer()
    cli.command()(feedback)
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nabc,maybe\n", encoding="utf-8")
    for args, message in [([], "REQUEST_ID and LABEL"), (["--file", str(bad)], "not a number")]:
        with pytest.raises(OpsloopError, match=message):
            CliRunner().invoke(cli, [*args, "--config", str(project.path / "opsloop.toml"),
                                     "--log-path", str(tmp_path / "log.db")], catch_exceptions=False)


def test_every_request_form_is_logged_as_sent(served: Any, project: Any) -> None:
    """SQLite splits plain bodies; columns (v2), NaN literals and repeated keys take the Python path."""
    record = project.records(project.monitor.iloc[[3]])[0]
    tensors = [{"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP32", "data": [v]}
               for k, v in record.items()]
    status, _, _ = project.post_json(served.url, f"/v2/models/{MODEL}/infer", {"id": "v2-1", "inputs": tensors})
    assert status == 200
    with_nan = json.dumps({"instances": [{**record, "m05": float("nan")}], "id": "nan-1"})
    assert "NaN" in with_nan
    twice = '{"instances": [{"not": "this"}], "id": "twice-1", "instances": ' + json.dumps([record]) + "}"
    for body in (with_nan, twice, json.dumps({"instances": [record], "id": "plain-1"})):
        status, _, raw = project.request(served.url, "POST", "/predict", body.encode())
        assert status == 200, raw
    _wait_written(served, 4, 0)
    logged = dict(project.log_rows(served.app.log.path, "SELECT request_id, inputs FROM predictions"))
    assert set(logged) == {"v2-1", "nan-1", "twice-1", "plain-1"}
    assert json.loads(logged["plain-1"]) == json.loads(logged["twice-1"]) == record
    assert json.loads(logged["nan-1"])["m05"] != json.loads(logged["nan-1"])["m05"]  # NaN, as sent
    from_v2 = json.loads(logged["v2-1"])
    assert from_v2.keys() == record.keys() and from_v2["entity"] == record["entity"]
    assert all(from_v2[k] == record[k] for k in record if k.startswith("m"))  # float32 values survive exactly


def test_a_log_that_cannot_keep_up_drops_predictions_not_requests(project: Any, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "log.db"
    app = create_app(workdir=project.path, log_path=db, log_max_pending=50)
    rows = project.records(project.monitor.iloc[:200])
    blocker = sqlite3.connect(db, isolation_level=None)
    caplog.set_level("WARNING", logger="opsloop.serving")
    with ServerThread(app) as server:
        blocker.execute("BEGIN EXCLUSIVE")  # the disk "cannot keep up": the writer waits for this lock
        try:
            answers = [project.post_json(server.url, "/predict", {"instances": [row]}) for row in rows]
            label = project.post_json(server.url, "/v1/feedback", {"request_id": answers[-1][2]["request_id"],
                                                                   "label": 1})
            _, _, raw = project.request(server.url, "GET", "/metrics")
            assert app.log.rows_queued - app.log.rows_done <= 50  # the bound held while the writer was stuck
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert [a[0] for a in answers] == [200] * 200  # every request answered, none waited for the log
    assert label[0] == 202  # labels are never dropped
    dropped = app.log.dropped
    assert 200 - 50 <= dropped < 200
    assert f"opsloop_prediction_log_dropped_total {dropped}" in raw.decode()
    warnings = [r for r in caplog.records if "predictions not logged" in r.getMessage()]
    assert len(warnings) == 1  # at most one warning a minute, however many are dropped
    # the stop drained what was queued: everything not counted as dropped is in the log, nothing failed
    assert app.log.errors == 0
    logged = {r[0] for r in project.log_rows(db, "SELECT request_id FROM predictions")}
    answered = [a[2]["request_id"] for a in answers]
    assert len(logged) == 200 - dropped and logged <= set(answered)
    assert project.log_rows(db, "SELECT count(*) FROM feedback")[0][0] == 1
