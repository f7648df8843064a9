"""`opsloop monitor` reads batch segments as it reads served rows (issue 9, items 2 and 3).

The same real ASD rows, scored by version 1 of the serving project, are
logged twice: by the `batch` target into one log (as segments, one per
chunk) and by a real server on 127.0.0.1 into another (row by row, JSON).
The same labels go into both, by series and time, and by request and row
(a later label overriding an earlier one). `opsloop monitor --json` must
then give the same figures from both logs, window by window: the log's
two layouts are one log to a monitor.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import opsloop.config
import pandas as pd
import pytest
from opsloop import RunContext
from opsloop.manager import PluginManager
from opsloop.plugins.batch_deploy import Options
from opsloop.serving.app import create_app
from opsloop.serving.predlog import Feedback, add_feedback, connect
from opsloop.serving.server import ServerThread
from opsloop.testing import invoke

MODEL = "asd-serve"
MONITORS = ['monitor.plugins=["quality-monitor", "drift-monitor"]']
DEADLINE = 60.0  # generous: CI is a loaded two-core machine
REQUEST_ROWS = 500


@pytest.fixture(scope="module")
def logs(project: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The monitoring period logged by batch into `batch.db` and by a server into `served.db`, labelled alike."""
    where = tmp_path_factory.mktemp("segments")
    frame = project.monitor.reset_index(drop=True)
    frame.to_parquet(where / "scoring.parquet")
    pm = PluginManager()
    pm.load("batch")
    run = RunContext(run_id="t", workdir=where, model_name=MODEL, config=opsloop.config.read(workdir=project.path))
    with project.store() as store:
        version = store.get(MODEL, 1)
    deployment = pm.call("batch", "deploy", version=version, model=project.loaded(1), dataset=None,
                         options=Options(input="scoring.parquet", log_path=str(where / "batch.db"), chunk_rows=1000),
                         run=run)
    rid = deployment.details["request_id"]

    served = where / "served.db"
    app = create_app(workdir=project.path, log_path=served)
    request_of = []
    with ServerThread(app) as server:
        for start in range(0, len(frame), REQUEST_ROWS):
            status, _, answer = project.post_json(
                server.url, "/predict", {"instances": project.records(frame.iloc[start:start + REQUEST_ROWS])})
            assert status == 200, answer
            request_of.append(answer["request_id"])
        deadline = time.monotonic() + DEADLINE
        while app.log.written < len(frame):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    # Labels: the truth by series and time for every third row; then rows 1,000-1,019 relabelled 1 by request and
    # row (newer: they win), and row 3,000 by key again, 0 (newest).
    keyed = frame.iloc[::3]
    by_key = [Feedback(label=float(y), model=MODEL, series=e, time=t.strftime("%Y-%m-%d %H:%M:%S"))
              for e, t, y in zip(keyed["entity"], keyed["timestamp"], keyed["label"], strict=True)]
    last = frame.iloc[3000]
    newest = [Feedback(label=0.0, model=MODEL, series=last["entity"], time=last["timestamp"].isoformat())]
    for db, locate in ((where / "batch.db", lambda i: (rid, i)),
                       (served, lambda i: (request_of[i // REQUEST_ROWS], i % REQUEST_ROWS))):
        con = connect(db)
        try:
            add_feedback(con, by_key)
            add_feedback(con, [Feedback(label=1.0, request_id=locate(i)[0], row=locate(i)[1])
                               for i in range(1000, 1020)])
            add_feedback(con, newest)
        finally:
            con.close()
    truth = frame["label"].astype(float).where(frame.index % 3 == 0)
    truth.iloc[1000:1020] = 1.0
    truth.iloc[3000] = 0.0
    return {"project": project, "batch": where / "batch.db", "served": served, "rid": rid, "truth": truth,
            "frame": frame}


def _monitor(logs: dict[str, Any], which: str, *args: str) -> dict[str, Any]:
    result = invoke(["monitor", "--version", "1", "--log-path", str(logs[which]), "--json",
                     *[a for s in MONITORS for a in ("--set", s)], *args], logs["project"].path)
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_the_batch_log_holds_segments_and_no_rows(logs: dict[str, Any]) -> None:
    con = sqlite3.connect(logs["batch"])
    try:
        assert con.execute("SELECT count(*), sum(rows) FROM segments").fetchone() == (4, len(logs["frame"]))
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    finally:
        con.close()


@pytest.mark.parametrize("args", [("--window", "1d"), ("--by", "at"),
                                  ("--window", "6h", "--since", "2024-01-13T03:00:00", "--until", "2024-01-14T12:00:00")],
                         ids=["by-time-daily", "by-at", "a-range-in-6h-windows"])
def test_monitor_gives_the_same_figures_from_segments_as_from_served_rows(logs: dict[str, Any],
                                                                          args: tuple[str, ...]) -> None:
    batch, served = _monitor(logs, "batch", *args), _monitor(logs, "served", *args)
    frame, truth = logs["frame"], logs["truth"]
    if "--since" in args:  # the rows of the range, by their own time
        inside = ((frame["timestamp"] >= "2024-01-13 03:00:00") & (frame["timestamp"] < "2024-01-14 12:00:00"))
        frame, truth = frame[inside.to_numpy()], truth[inside.to_numpy()]
        assert 0 < len(frame) < len(logs["frame"])
    assert batch["rows"] == served["rows"] == len(frame)
    assert batch["labelled"] == served["labelled"] == int(truth.notna().sum())
    if args[0] == "--window":
        assert len(batch["windows"]) == len(served["windows"]) >= 2
    for b, s in zip(batch["windows"], served["windows"], strict=True):
        assert (b["rows"], b["labelled"]) == (s["rows"], s["labelled"])
        if args[0] == "--window":  # by time: the rows' own times (by at: when each log was written, not the same)
            assert (b["start"], b["end"]) == (s["start"], s["end"])
        for rb, rs in zip(b["reports"], s["reports"], strict=True):
            assert rb["monitor"] == rs["monitor"] and rb["rows"] == rs["rows"]
            assert rb["metrics"].keys() == rs["metrics"].keys()
            for name, value in rb["metrics"].items():
                other = rs["metrics"][name]
                if value is None or other is None:
                    assert value is other, name
                else:  # the server scores on its own path: scores agree to float32 resolution
                    assert value == pytest.approx(other, rel=1e-5, abs=1e-6), name


def test_labels_join_segment_rows_by_key_and_by_request_and_row(logs: dict[str, Any]) -> None:
    """The quality figures on the batch log equal scikit-learn's on the rows and labels the test knows."""
    from sklearn import metrics as skm

    out = _monitor(logs, "batch")
    quality = next(r for r in out["windows"][0]["reports"] if r["monitor"] == "quality-monitor")["metrics"]
    truth = logs["truth"]
    scored = pd.read_parquet(Path(logs["batch"]).parent / ".opsloop" / "predictions" / f"{MODEL}-v1.parquet")
    known = truth.notna().to_numpy()
    y, p = truth[known].to_numpy(), scored["prediction"].to_numpy()[known]
    assert quality["rows"] == known.sum() == len(truth[::3]) + 20 - 6  # 6 of rows 1,000-1,019 are also keyed
    assert quality["precision"] == pytest.approx(skm.precision_score(y, p, zero_division=np.nan))
    assert quality["recall"] == pytest.approx(skm.recall_score(y, p, zero_division=np.nan))
    assert quality["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scored["score"].to_numpy()[known]))


def test_a_label_that_is_not_0_or_1_on_a_segment_row_names_its_request_and_row(logs: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    for suffix in ("", "-wal", "-shm"):  # a copy of the batch log, one label made wrong
        source = Path(f"{logs['batch']}{suffix}")
        if source.exists():
            Path(f"{db}{suffix}").write_bytes(source.read_bytes())
    con = connect(db)
    try:
        add_feedback(con, [Feedback(label=7.0, request_id=logs["rid"], row=2042)])
    finally:
        con.close()
    result = invoke(["monitor", "--version", "1", "--log-path", str(db), *("--set", MONITORS[0])],
                    logs["project"].path)
    assert result.exit_code == 1
    assert f"the label of request {logs['rid']} row 2042 is 7" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_segment_is_one_line_naming_the_log_and_the_segment(logs: dict[str, Any], tmp_path: Path,
                                                                      damage: str) -> None:
    db = tmp_path / "damaged.db"
    source = sqlite3.connect(logs["batch"])
    try:
        source.backup(target := sqlite3.connect(db))
        target.close()
    finally:
        source.close()
    con = sqlite3.connect(db)
    try:
        first, data = con.execute("SELECT first_row, data FROM segments ORDER BY id LIMIT 1 OFFSET 2").fetchone()
        broken = data[:len(data) // 2] if damage == "truncated" else bytes(len(data))
        with con:
            con.execute("UPDATE segments SET data = ? WHERE first_row = ?", (broken, first))
    finally:
        con.close()
    result = invoke(["monitor", "--version", "1", "--log-path", str(db), *("--set", MONITORS[0])],
                    logs["project"].path)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(db) in lines[0] and f"segment of request {logs['rid']} (rows from {first}) is damaged" in lines[0]


def test_segments_with_missing_values_and_other_types_are_read_as_logged(project: Any, tmp_path: Path) -> None:
    """Three batches of one version: as scored, with missing values, with a column of another type (float64)."""
    from opsloop.bundle import read_manifest
    from opsloop.monitoring import open_log, read_rows
    from opsloop.serving.batchlog import BatchLog

    frame = project.monitor.iloc[:900].reset_index(drop=True)
    columns = [c for c in frame.columns if c != "label"]
    metrics = [c for c in columns if c.startswith("m")]
    holes = frame.copy()
    holes.loc[::7, metrics[0]] = np.nan  # nulls in a segment: that column is joined from pieces
    wider = frame.copy()
    wider[metrics[1]] = wider[metrics[1]].astype("float64")  # another type in a segment
    db = tmp_path / "mixed.db"
    log = BatchLog(db, request_id="batch-00000000000000aa", model=MODEL, version=1, columns=columns,
                   series="entity", time="timestamp")
    model = project.loaded(1)
    for part in (frame.iloc[:300], holes.iloc[300:600], wider.iloc[600:]):
        preds = model.predict(part)
        log.add(part, preds["prediction"].to_numpy(), preds["score"].to_numpy())
    log.close()
    with project.store() as store:
        version = store.get(MODEL, 1)
    manifest = read_manifest(Path(version.path), ref=version.ref, digest=version.digest)
    con = open_log(db)
    try:
        rows = read_rows(con, db, version, manifest, by="time", since=None, until=None)
    finally:
        con.close()
    got = rows.current.frame
    expected = pd.concat([frame.iloc[:300], holes.iloc[300:600], frame.iloc[600:]], ignore_index=True)
    assert len(got) == 900 and list(got.columns[:len(columns)]) == columns
    for name in metrics:  # the bundle's dtype (float32) again, NaN where missing, the float64 values as float32
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name].to_numpy(), expected[name].astype("float32").to_numpy())
    assert got["entity"].tolist() == expected["entity"].tolist()
    assert (got["timestamp"] == expected["timestamp"]).all()
    assert rows.current.frame["label"].isna().all()  # nothing labelled


def test_rows_beyond_the_counted_ones_are_kept() -> None:
    """A batch run may log a segment between the count of rows and their reading: no row is lost or misplaced."""
    import pyarrow as pa
    from opsloop.monitoring import _Sink

    sink = _Sink(total=3)
    for values in ([1.5, 2.5], [3.5, 4.5], [5.5]):  # five rows where three were counted
        sink.add(pa.chunked_array([pa.array(np.array(values, dtype=np.float32))]))
    assert sink.result().to_pylist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    mixed = _Sink(total=4)
    for piece in (pa.array(np.array([1, 2], dtype=np.float32)), pa.array([3.0, None], pa.float32())):
        mixed.add(pa.chunked_array([piece]))  # the second has a null: joined from pieces, in order
    assert mixed.result().to_pylist() == [1.0, 2.0, 3.0, None]
