"""The prediction log keeps up with the server (issue 9, item 2): no answered row goes unlogged under load.

Real server on 127.0.0.1, real requests of real ASD rows from several
clients at once, a log queue bound of one request's rows: before, every
request that found another queued was answered and its rows dropped; now it
waits for room while the writer works. A writer that cannot work (the file
locked) still drops rather than hold requests: tests/serving/test_logging.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"


def test_concurrent_large_requests_are_all_logged(production_1: Any, tmp_path: Path) -> None:
    project = production_1
    db = tmp_path / "log.db"
    app = create_app(workdir=project.path, log_path=db, log_max_pending=1000)
    rows = project.records(project.monitor.iloc[:1000])
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(6):
            if (k + i) % 2:  # JSON records and v2 columns, both paths of the writer
                status, _, answer = project.post_json(server.url, "/predict", {"instances": rows})
                rid = answer.get("request_id")
            else:
                tensors = [{"name": c, "shape": [len(rows)], "datatype": "BYTES" if c in ("entity", "timestamp")
                            else "FP32", "data": [r[c] for r in rows]} for c in rows[0]]
                status, _, answer = project.post_json(server.url, f"/v2/models/{MODEL}/infer", {"inputs": tensors})
                rid = answer.get("id")
            with lock:
                answers.append((status, rid))

    with ServerThread(app) as server:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert [s for s, _ in answers] == [200] * 24
    assert app.log.dropped == 0 and app.log.errors == 0
    logged = dict(project.log_rows(db, "SELECT request_id, count(*) FROM predictions GROUP BY request_id"))
    assert logged == {rid: 1000 for _, rid in answers}


def test_a_large_request_sent_as_columns_is_logged_as_its_rows(production_1: Any, tmp_path: Path) -> None:
    """The writer formats requests sent as columns by column, stacked: the same rows as the row by row path."""
    project = production_1
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db")
    frame = project.monitor.iloc[200:260]
    rows = project.records(frame)
    with ServerThread(app) as server:
        for ids, part in (("big", rows), ("one", rows[:1])):  # 60 rows by column, 1 row by row
            tensors = [{"name": c, "shape": [len(part)], "datatype": "BYTES" if c in ("entity", "timestamp")
                        else "FP32", "data": [r[c] for r in part]} for c in part[0]]
            status, _, _ = project.post_json(server.url, f"/v2/models/{MODEL}/infer", {"id": ids, "inputs": tensors})
            assert status == 200
    logged = project.log_rows(tmp_path / "log.db", "SELECT request_id, row, series, time, inputs FROM predictions "
                                                   "ORDER BY request_id, row")
    big = [r for r in logged if r[0] == "big"]
    one = [r for r in logged if r[0] == "one"]
    assert [r[1] for r in big] == list(range(60)) and len(one) == 1
    assert one[0][2:4] == big[0][2:4] and json.loads(one[0][4]) == json.loads(big[0][4])  # both paths agree
    for (_, row, series, when, inputs), record in zip(big, rows, strict=True):
        values = json.loads(inputs)
        assert list(values) == list(record)
        assert values["entity"] == record["entity"] == series
        assert values["timestamp"] == record["timestamp"] and when == record["timestamp"].replace("T", " ")
        # FP32 tensors arrive as float64 of the float32 values: logged exactly, as the row path does
        assert all(values[c] == record[c] for c in record if c.startswith("m"))
