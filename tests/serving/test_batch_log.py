"""One prediction log (issue 9, item 2): batch predictions join feedback like served ones; the log has a retention.

The batch target scores the real ASD monitoring period with version 1 of the
serving project (trained through the real lifecycle), into the log at the
server's default path, as segments (one per chunk, `opsloop.serving.segments`);
a real server logs a request into the same file; `opsloop feedback --file`
(the real command, in a subprocess) labels rows by series and time, and
`segments.labelled` must give exactly the rows with those keys, batch and
served alike. The retention tests write rows with an old `at` through the
log's own writers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import opsloop.config
import pandas as pd
import pytest
from opsloop import ConfigError, RunContext
from opsloop.manager import PluginManager
from opsloop.plugins.batch_deploy import Options
from opsloop.serving.app import create_app
from opsloop.serving import segments
from opsloop.serving.batchlog import BatchLog
from opsloop.serving.predlog import INSERT_ROWS, Feedback, PredictionLog, add_feedback, connect, iso, prune
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"
DAY = 86400.0
DEADLINE = 60.0  # generous: CI is a loaded two-core machine


def _batch(project: Any, workdir: Path, frame: pd.DataFrame, **options: Any) -> Any:
    """Score `frame` with version 1 through the `batch` target, run from `workdir`."""
    frame.to_parquet(workdir / "scoring.parquet")
    pm = PluginManager()
    pm.load("batch")
    run = RunContext(run_id="t", workdir=workdir, model_name=MODEL, config=opsloop.config.read(workdir=workdir))
    with project.store() as store:
        version = store.get(MODEL, 1)
    return pm.call("batch", "deploy", version=version, model=project.loaded(1), dataset=None,
                   options=Options(input="scoring.parquet", **options), run=run)


def _opsloop(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `opsloop` command, run in `workdir`."""
    return subprocess.run([str(Path(sys.executable).parent / "opsloop"), *args], cwd=workdir, capture_output=True,
                          text=True, timeout=300, check=False)


def test_feedback_by_key_joins_batch_and_served_predictions_alike(project: Any, tmp_path: Path) -> None:
    project.set_production(1)
    frame = project.monitor.reset_index(drop=True)  # 3 servers, 5-minute steps: each (series, time) once
    deployment = _batch(project, tmp_path, frame, chunk_rows=2000)
    db = tmp_path / ".opsloop" / "serving" / "predictions.db"  # the server's default path for this directory
    rid = deployment.details["request_id"]
    assert deployment.details["logged"] == deployment.details["rows"] == len(frame) == 3456
    assert deployment.details["log"] == str(db) and rid.startswith("batch-")

    # A server writes the same file: five rows served in one request, four of them labelled below.
    served_rows = frame.iloc[[150, 1000, 2100, 2101, 3000]]
    app = create_app(workdir=project.path, log_path=db)
    with ServerThread(app) as server:
        status, _, answer = project.post_json(server.url, "/predict", {"instances": project.records(served_rows)})
        assert status == 200
        deadline = time.monotonic() + DEADLINE
        while app.log.written < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)

    # Labels by series and time, as an incident ticket knows them (both ISO forms), and two keys never scored.
    picked = frame.iloc[sorted({*range(0, 3400, 100), 1000, 2100, 2101, 3000})]
    lines = [f"{e},{t.isoformat() if i % 2 else t.strftime('%Y-%m-%d %H:%M:%S')},{int(y)}"
             for i, (e, t, y) in enumerate(zip(picked["entity"], picked["timestamp"], picked["label"], strict=True))]
    lines += ["omi-1,2023-12-31T23:55:00,1", "omi-4,2024-01-13T00:00:00,0"]
    (tmp_path / "labels.csv").write_text("series,time,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = _opsloop(tmp_path, "feedback", "--file", "labels.csv", "--model", MODEL)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"recorded {len(picked) + 2} label(s)" in result.stdout

    # Every labelled key joins its batch row; the four served ones join their served row too.
    both = segments.labelled(db).sort_values(["request_id", "row"])
    joined = list(both[["request_id", "row", "series", "time", "label"]].itertuples(index=False, name=None))
    assert len(picked) == 35
    assert len(joined) == 35 + 4
    assert sorted(r[1] for r in joined if r[0] == rid) == sorted(picked.index.tolist())
    assert sorted(r[1] for r in joined if r[0] == answer["request_id"]) == [1, 2, 3, 4]  # row 0 (iloc 150) unlabelled
    truth = dict(zip(zip(picked["entity"], picked["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")), picked["label"]))
    assert all(label == truth[series, when] for _, _, series, when, label in joined)
    # A batch row comes as the view gives a served one: its inputs as JSON, its prediction and score.
    out = pd.read_parquet(deployment.location)
    batch_rows = both[both["request_id"] == rid]
    for row, inputs, score in zip(batch_rows["row"], batch_rows["inputs"], batch_rows["score"], strict=True):
        values, sent = json.loads(inputs), project.records(frame.iloc[[row]])[0]
        assert list(values) == list(sent) and score == out["score"][row]  # the schema's columns, in its order
        # float32 in its shortest form, as a client would send it; text and times as sent
        assert all(np.float32(values[c]) == np.float32(sent[c]) if c.startswith("m") else values[c] == sent[c]
                   for c in values)
    assert set(both.columns) >= {"at", "model", "version", "prediction", "labelled_at", "feedback_id"}

    # By request id and row too: the run's id, as the deployment reports it.
    result = _opsloop(tmp_path, "feedback", rid, "1", "--row", "3", "--model", MODEL)
    assert result.returncode == 0, result.stderr
    relabelled = segments.labelled(db, MODEL)
    assert relabelled[(relabelled["request_id"] == rid) & (relabelled["row"] == 3)]["label"].tolist() == [1]
    assert len(relabelled) == 39 + (3 not in picked.index)


def test_batch_rows_are_logged_by_column_as_scored(project: Any, tmp_path: Path) -> None:
    frame = project.monitor.iloc[:3000].reset_index(drop=True)
    deployment = _batch(project, tmp_path, frame, chunk_rows=700)
    out = pd.read_parquet(deployment.location)
    db = Path(deployment.details["log"])
    meta = project.log_rows(db, "SELECT request_id, first_row, rows, at, model, version, min_time, max_time, format "
                                "FROM segments ORDER BY id")
    assert [(m[1], m[2]) for m in meta] == [(0, 700), (700, 700), (1400, 700), (2100, 700), (2800, 200)]
    assert {(m[0], m[3], m[4], m[5], m[8]) for m in meta} == {(deployment.details["request_id"], meta[0][3], MODEL, 1,
                                                               segments.FORMAT)}
    assert project.log_rows(db, "SELECT count(*) FROM predictions") == [(0,)]  # nothing row by row
    con = sqlite3.connect(db)
    try:
        decoded = [t for *_, t in segments.rows(con, model=MODEL, version=1)]
    finally:
        con.close()
    inputs = pd.concat([segments.inputs_frame(t) for t in decoded], ignore_index=True)
    schema = [c for c in frame.columns if c != "label"]
    assert list(inputs.columns) == schema  # the schema's columns, in its order, typed as scored
    pd.testing.assert_frame_equal(inputs, frame[schema])  # float32 exactly, times as times
    keys = pd.concat([t.select(["series", "time"]).to_pandas() for t in decoded], ignore_index=True)
    assert keys["series"].astype(str).tolist() == frame["entity"].tolist()
    assert keys["time"].astype(str).tolist() == frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()
    for k, (_, lo, hi) in enumerate((m[0], m[6], m[7]) for m in meta):
        part = frame["timestamp"].iloc[k * 700:(k + 1) * 700].dt.strftime("%Y-%m-%d %H:%M:%S")
        assert (lo, hi) == (part.min(), part.max())
    scored = pd.concat([t.select(["prediction", "score"]).to_pandas() for t in decoded], ignore_index=True)
    assert (scored["prediction"].to_numpy() == out["prediction"].to_numpy()).all()
    assert (scored["score"].to_numpy() == out["score"].to_numpy()).all()


def test_batch_logging_can_be_turned_off_or_sent_elsewhere(project: Any, tmp_path: Path) -> None:
    frame = project.monitor.iloc[:500]
    off = _batch(project, tmp_path, frame, log_predictions=False)
    assert "logged" not in off.details and not (tmp_path / ".opsloop" / "serving").exists()
    there = _batch(project, tmp_path, frame, log_path="logs/batch.db")
    assert there.details["log"] == str(tmp_path / "logs" / "batch.db") and there.details["logged"] == 500
    assert project.log_rows(tmp_path / "logs" / "batch.db", "SELECT sum(rows) FROM segments") == [(500,)]
    (tmp_path / "dir.db").mkdir()
    from opsloop.errors import PluginCallError

    with pytest.raises(PluginCallError, match="is a directory, not a database file"):
        _batch(project, tmp_path, frame, log_path="dir.db", output="never.parquet")
    assert not (tmp_path / "never.parquet").exists()  # refused before scoring


# -- retention -----------------------------------------------------------------------


def _old_and_new(project: Any, db: Path, now: float) -> None:
    """40-day-old predictions (a batch segment of 50 rows, 50 served rows) and labels, then 1-day-old ones, written
    by the log's writers."""
    frame = project.monitor.iloc[:50]
    model = project.loaded(1)
    columns = list(frame.columns.drop("label"))
    for age, rid in ((40 * DAY, "old"), (DAY, "new")):
        log = BatchLog(db, request_id=rid, model=MODEL, version=1, columns=columns, series="entity",
                       time="timestamp", at=now - age)
        preds = model.predict(frame)
        log.add(frame, preds["prediction"].to_numpy(), preds["score"].to_numpy())
        log.close()
        con = connect(db)
        with con:
            con.executemany(INSERT_ROWS, [(f"{rid}-s", r, iso(now - age), MODEL, 1, "omi-1", None, "{}", 0, 0.1)
                                          for r in range(50)])
        add_feedback(con, [Feedback(label=1, request_id=rid, row=r) for r in range(5)], at=now - age)
        con.close()


def _counts(project: Any, db: Path) -> tuple[list[Any], list[Any]]:
    return (project.log_rows(db, "SELECT request_id, count(*) FROM predictions GROUP BY 1"),
            project.log_rows(db, "SELECT request_id, sum(rows) FROM segments GROUP BY 1"))


def test_the_server_writer_deletes_rows_older_than_the_retention(project: Any, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    _old_and_new(project, db, time.time())
    assert _counts(project, db) == ([("new-s", 50), ("old-s", 50)], [("new", 50), ("old", 50)])
    log = PredictionLog(db, retention=30 * DAY)
    log.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while log.pruned < 105:
            assert time.monotonic() < deadline, log.pruned
            time.sleep(0.05)
    finally:
        log.close()
    assert log.pruned == 105 and log.errors == 0  # a segment counts its rows
    assert _counts(project, db) == ([("new-s", 50)], [("new", 50)])
    assert project.log_rows(db, "SELECT request_id, count(*) FROM feedback GROUP BY 1") == [("new", 5)]
    assert segments.labelled(db)["request_id"].tolist() == ["new"] * 5


def test_pruning_is_periodic_and_goes_in_bounded_steps(project: Any, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    now = time.time()
    _old_and_new(project, db, now)
    con = connect(db)
    try:
        # The first 20 old served rows, the old segment (50 rows), all 5 old labels.
        assert prune(con, 30 * DAY, now, step=20) == 20 + 50 + 5
        assert prune(con, 30 * DAY, now, step=20) == 20  # more were left: the next call goes on at once
        assert prune(con, 30 * DAY, now, step=20) == 10  # caught up: the time is recorded
        assert prune(con, 30 * DAY, now + 59, step=20) is None  # not due within a minute, by any writer
        assert _counts(project, db) == ([("new-s", 50)], [("new", 50)])
        _old_and_new(project, db, now + 10 * DAY)  # 30-day-old rows written after the 1-day-old ones, and newer
        assert prune(con, 0, now + 3600) is None  # 0 keeps everything
        assert prune(con, 30 * DAY, now + 61) == 0  # due, but rows go oldest first: none before a kept one
        # The first "new" ones aged: all up to them, in each table.
        assert prune(con, 30 * DAY, now + 31 * DAY) == (50 + 50) * 2 + 5 + 5
    finally:
        con.close()
    assert _counts(project, db) == ([("new-s", 50)], [("new", 50)])


def test_a_batch_run_applies_its_retention(project: Any, tmp_path: Path) -> None:
    db = tmp_path / ".opsloop" / "serving" / "predictions.db"
    _old_and_new(project, db, time.time())
    deployment = _batch(project, tmp_path, project.monitor.iloc[:300], log_retention="30d")
    assert deployment.details["log_pruned"] == 105
    served, batches = _counts(project, db)
    assert served == [("new-s", 50)] and dict(batches) == {"new": 50, deployment.details["request_id"]: 300}


@pytest.mark.parametrize("value", ["30x", "-1d", "d", "1e3h"])
def test_a_bad_retention_is_one_line_naming_the_option(project: Any, tmp_path: Path, value: str) -> None:
    cmd = [sys.executable, "-m", "opsloop.serving", "--port", "0", "--log-path", str(tmp_path / "log.db"),
           "--log-retention", value]
    proc = subprocess.run(cmd, cwd=project.path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --log-retention must be a duration such as 30d, 12h or 90m (units s, m, h, d, w; a bare number is "
        f"seconds), or 0 or none to keep everything, at most 3,650d, got {value!r}"]
    for plugin in ("batch", "local-http"):
        pm = PluginManager()
        pm.load(plugin)
        with pytest.raises(ConfigError, match=rf"\[deploy.{plugin}.log_retention\].*got {value!r}"):
            opsloop.config.structure({"log_retention": value}, pm.options_class(plugin), section=f"deploy.{plugin}",
                                     source=None)


def test_retention_values() -> None:
    from opsloop.serving.settings import Settings, show_retention

    assert [Settings(log_retention=v).log_retention for v in ("30d", "12h", "90m", "2w", "45", "0", "none", " 1.5h")] \
        == [30 * DAY, 12 * 3600, 5400, 14 * DAY, 45, 0, 0, 5400]
    assert [show_retention(s) for s in (30 * DAY, 36 * 3600, 90, 0)] == ["30d", "36h", "90s", "keep everything"]
    assert Settings().log_retention == 0  # keep everything unless told
