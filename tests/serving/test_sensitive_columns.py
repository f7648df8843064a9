"""Sensitive columns never reach the prediction log (issue 14, item 4; docs/data.md).

A real lifecycle on ASD with `[data] sensitive`: the `batch` deploy target
logs the monitoring period as segments, a real `opsloop serve` app on
127.0.0.1 logs requests (a few rows, and a large request: the log's two
insert paths), and neither holds the sensitive columns as sent: dropped, or
replaced by the keyed hash that `opsloop.sensitive` gives. Monitoring still
reads the log.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import Any

import pandas as pd
import pytest

from opsloop import config as config_mod
from opsloop import data as data_mod
from opsloop.sensitive import Sensitive
from opsloop.serving import segments
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

SENSITIVE = ["m03", "m07"]
DEADLINE = 60.0


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.drop(columns=["label"]).to_dict("records"):
        out.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else
                        None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
                    for k, v in row.items()})
    return out


def _post(url: str, records: list[dict[str, Any]]) -> int:
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/predict", json.dumps({"instances": records}).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _lifecycle(opsloop_project, small_config, mode: str) -> tuple[Any, pd.DataFrame]:
    small_config["data"].update(sensitive=SENSITIVE, sensitive_mode=mode)
    small_config.update({"monitor": {"plugins": []}, "retrain": {"plugins": []}})
    project = opsloop_project(config=small_config)
    result = project.run("run").assert_ok()
    assert result.json["deployments"][0]["details"]["logged"] > 0  # the batch target logged the monitoring period
    cfg = config_mod.read(workdir=project.path)
    _, monitor = data_mod.periods(data_mod.load(cfg), cfg)
    return project, monitor.frame


def _segment_inputs(db) -> pd.DataFrame:
    with sqlite3.connect(db) as con:
        blobs = [row[0] for row in con.execute("SELECT data FROM segments")]
    assert blobs
    return pd.concat([segments.inputs_frame(segments.decode(b)) for b in blobs], ignore_index=True)


def _serve(project, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Serve a few rows and a large request through a real server; the logged inputs, in order."""
    db = project.path / ".opsloop" / "serving" / "predictions.db"
    app = create_app(workdir=project.path)
    few, many = frame[frame["entity"] == "omi-1"].iloc[:3], frame[frame["entity"] == "omi-9"].iloc[:40]
    with ServerThread(app) as server:
        assert _post(server.url, _records(few)) == 200
        assert _post(server.url, _records(many)) == 200
        deadline = time.monotonic() + DEADLINE
        while app.log.written < 43:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with sqlite3.connect(db) as con:
        return [json.loads(row[0]) for row in con.execute("SELECT inputs FROM predictions ORDER BY id")]


def test_dropped_sensitive_columns_are_in_neither_the_batch_nor_the_served_log(opsloop_project, small_config):
    project, frame = _lifecycle(opsloop_project, small_config, "drop")
    db = project.path / ".opsloop" / "serving" / "predictions.db"
    batch = _segment_inputs(db)
    assert not set(SENSITIVE) & set(batch.columns) and {"m01", "m19", "entity", "timestamp"} <= set(batch.columns)
    assert len(batch) == len(frame)

    served = _serve(project, frame)
    assert len(served) == 43
    for inputs in served:
        assert not set(SENSITIVE) & set(inputs) and {"m01", "m02", "m19", "entity"} <= set(inputs)

    # Feedback joins by key and monitoring reads the log as before: the dropped columns are missing values
    # (drift is not judged on them), the rest is there.
    labelled = frame.iloc[::50]
    lines = [f"{e},{t.isoformat()},{int(y)}" for e, t, y in zip(labelled["entity"], labelled["timestamp"],
                                                                 labelled["label"], strict=True)]
    (project.path / "labels.csv").write_text("series,time,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    project.run("feedback", "--file", "labels.csv", "--model", "asd-anomaly").assert_ok()
    result = project.run("monitor", "--json", "--set", 'monitor.plugins=["quality-monitor", "drift-monitor"]')
    window = result.assert_ok().json["windows"][0]
    assert window["labelled"] >= len(labelled)
    drift = next(r for r in window["reports"] if r["monitor"] == "drift-monitor")["metrics"]
    assert "psi[m01]" in drift and not {"psi[m03]", "psi[m07]"} & set(drift)


def test_hashed_sensitive_columns_are_logged_as_keyed_hashes(opsloop_project, small_config, monkeypatch):
    monkeypatch.setenv("OPSLOOP_HASH_KEY", "ab" * 32)
    project, frame = _lifecycle(opsloop_project, small_config, "hash")
    hide = Sensitive(columns=tuple(SENSITIVE), mode="hash", key=bytes.fromhex("ab" * 32))
    db = project.path / ".opsloop" / "serving" / "predictions.db"

    batch = _segment_inputs(db)
    for column in SENSITIVE:
        assert batch[column].dropna().str.startswith("hmac:").all()
        assert list(batch[column]) == list(hide.frame(frame)[column])

    served = _serve(project, frame)
    sent = _records(frame[frame["entity"] == "omi-1"].iloc[:3]) + _records(frame[frame["entity"] == "omi-9"].iloc[:40])
    for inputs, original in zip(served, sent, strict=True):
        for column in SENSITIVE:
            assert inputs[column] == hide.hash_text(original[column]) != original[column]
        assert inputs["m01"] == pytest.approx(original["m01"])
