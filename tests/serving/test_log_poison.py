"""One client's bad values never cost another client's logged predictions and labels (issue 8, defect 2).

Before: `{"request_id": "x", "row": 18446744073709551616, "label": 1}` was
accepted, and the log writer then lost the whole batch it was in (an
OverflowError in SQLite), honest rows included; a lone surrogate in a text
feature did the same (or was stored as bytes no reader can decode). Now the
edge refuses such values with a 4xx naming the entry and the key, and the
writer, should one get past the edge, loses only that item.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer
from opsloop.serving.app import create_app
from opsloop.serving.predlog import Feedback, PredictionLog
from opsloop.serving.server import ServerThread
from typer.testing import CliRunner

MODEL = "asd-serve"
INFER = f"/v2/models/{MODEL}/infer"
CLIENTS = 4
PER_CLIENT = 40
NAN = float("nan")

#: Feedback bodies no SQLite column can take, and what the 422 must name.
BAD_FEEDBACK = [
    ({"request_id": "x", "row": 2 ** 64, "label": 1}, 'entry 0: "row"'),
    ({"request_id": "x", "row": -1, "label": 1}, 'entry 0: "row"'),
    ({"request_id": "x", "label": 2 ** 64}, 'entry 0: "label"'),
    ({"request_id": "x", "label": 10 ** 400}, 'entry 0: "label"'),
    ({"request_id": "x", "label": NAN}, 'entry 0: "label"'),
    ({"request_id": "x\ud800", "label": 1}, 'entry 0: "request_id"'),
    ({"series": "omi-\udfff", "time": "2024-01-08T12:00:00", "label": 1}, 'entry 0: "series"'),
    ({"series": "omi-1", "time": "2024-01-08\ud800", "label": 1}, 'entry 0: "time"'),
    ({"time": "2024-01-08T12:00:00", "label": 1, "model": "m\ud800"}, 'entry 0: "model"'),
    ({"feedback": [{"request_id": "ok", "label": 1}, {"request_id": "y", "row": 2 ** 63, "label": 0}]},
     'entry 1: "row"'),
]


def _bad_predictions(record: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Rows with a lone surrogate in the text feature: as JSON records (SQLite's path and, with a NaN, Python's)
    and as a v2 BYTES tensor."""
    bad = {**record, "entity": "omi-\ud800"}
    tensors = [{"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP32", "data": [v]}
               for k, v in bad.items()]
    return [("/predict", json.dumps({"instances": [bad]}).encode()),
            ("/predict", json.dumps({"instances": [{**bad, "m05": NAN}]}).encode()),
            (INFER, json.dumps({"inputs": tensors}).encode())]


@pytest.fixture(scope="module")
def live(project: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    project.set_production(1)
    app = create_app(workdir=project.path, log_path=tmp_path_factory.mktemp("poison") / "log.db")
    with ServerThread(app) as server:
        yield server


@pytest.mark.parametrize(("body", "names"), BAD_FEEDBACK, ids=[n for _, n in BAD_FEEDBACK])
def test_feedback_sqlite_cannot_store_is_a_422_naming_entry_and_key(live: Any, project: Any, body: Any,
                                                                   names: str) -> None:
    status, _, raw = project.request(live.url, "POST", "/v1/feedback", json.dumps(body).encode())
    assert status == 422, raw
    assert names in json.loads(raw)["error"]


def test_a_lone_surrogate_in_a_feature_is_a_422_naming_it(live: Any, project: Any) -> None:
    record = project.records(project.monitor.iloc[[3]])[0]
    for path, body in _bad_predictions(record):
        status, _, raw = project.request(live.url, "POST", path, body)
        assert status == 422, (path, raw)
        assert "'entity'" in json.loads(raw)["error"] and "UTF-8" in json.loads(raw)["error"]
    # a NaN alone is a missing value in a float feature (imputed), as documented: still answered
    status, _, raw = project.request(live.url, "POST", "/predict",
                                     json.dumps({"instances": [{**record, "m05": NAN}]}).encode())
    assert status == 200, raw


def test_a_flood_of_poison_costs_no_honest_prediction_or_label(project: Any, tmp_path: Path) -> None:
    project.set_production(1)
    db = tmp_path / "log.db"
    app = create_app(workdir=project.path, log_path=db)
    rows = project.records(project.monitor.iloc[:CLIENTS * PER_CLIENT])
    poison = [("/v1/feedback", json.dumps(b).encode()) for b, _ in BAD_FEEDBACK] + _bad_predictions(rows[0])
    honest_done = threading.Event()
    refused: list[int] = []

    def poisoner() -> None:
        for n in range(3000):  # bounded, and it stops as soon as the honest clients are done
            if honest_done.is_set():
                return
            path, body = poison[n % len(poison)]
            refused.append(project.request(server.url, "POST", path, body)[0])

    def client(k: int) -> list[str]:
        ids = []
        for i in range(k, len(rows), CLIENTS):
            status, _, answer = project.post_json(server.url, "/predict", {"instances": [rows[i]]})
            assert status == 200, answer
            rid = answer["request_id"]
            status, _, answer = project.post_json(server.url, "/v1/feedback",
                                                  {"request_id": rid, "row": 0, "label": i % 2})
            assert status == 202, answer
            ids.append(rid)
        return ids

    with ServerThread(app) as server, ThreadPoolExecutor(CLIENTS + 2) as pool:
        poisoners = [pool.submit(poisoner) for _ in range(2)]
        try:
            clients = [pool.submit(client, k) for k in range(CLIENTS)]
            honest = [rid for c in clients for rid in c.result(timeout=300)]
        finally:
            honest_done.set()
            for p in poisoners:
                p.result(timeout=60)
        metrics = project.request(server.url, "GET", "/metrics")[2].decode()
    assert refused and set(refused) == {422}  # every poisoned request was stopped at the edge
    assert len(honest) == CLIENTS * PER_CLIENT
    logged = project.log_rows(db, "SELECT request_id, row FROM predictions")
    assert sorted(logged) == sorted((rid, 0) for rid in honest)
    labels = project.log_rows(db, "SELECT request_id, row FROM feedback")
    assert sorted(labels) == sorted((rid, 0) for rid in honest)
    # none got past the edge, so the writer had nothing to refuse
    assert app.log.errors == 0 and "opsloop_prediction_log_errors_total 0" in metrics


def test_the_writer_loses_only_the_poisoned_items_of_a_batch(project: Any, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Defence in depth: items the edge would refuse, queued directly, cost only themselves."""
    record = project.records(project.monitor.iloc[[3]])[0]
    bad = {**record, "entity": "omi-\ud800"}
    keys = ("entity", "timestamp")
    log = PredictionLog(tmp_path / "log.db")
    now = time.time()
    for i in range(100):  # all queued before the writer starts: one batch, both insert paths
        log.predictions(f"split-{i}", now, MODEL, 1, None, [record], [0], [0.25], keys,
                        json.dumps({"instances": [record]}).encode())
        log.predictions(f"python-{i}", now, MODEL, 1, None, [record], [1], None, keys)
        log.add([Feedback(label=i % 2, request_id=f"split-{i}", row=0)])
    log.predictions("bad-python", now, MODEL, 1, None, [bad], [0], [0.5], keys)
    log.predictions("bad-split", now, MODEL, 1, None, [bad], [0], [0.5], keys,
                    json.dumps({"instances": [bad]}).encode())
    log.add([Feedback(label=1, request_id="x", row=2 ** 64), Feedback(label=1, request_id="python-0", row=0)])
    log.add([Feedback(label=2 ** 64, request_id="python-1")])
    log.add([Feedback(label=1, series="omi-\udfff", time="2024-01-08T12:00:00", model=MODEL)])
    caplog.set_level("ERROR", logger="opsloop.serving")
    log.start()
    try:
        deadline = time.monotonic() + 60
        while log.pending:
            assert time.monotonic() < deadline, log.pending
            time.sleep(0.02)
        assert (log.written, log.feedback, log.errors) == (200, 101, 5)
        for i in range(20):  # more poisoned batches: counted, not one log line each
            log.add([Feedback(label=1, request_id=f"python-{i}", row=2 ** 63)])
            log.add([Feedback(label=1, request_id=f"python-{i}", row=0)])
            while log.pending:
                assert time.monotonic() < deadline, log.pending
                time.sleep(0.02)
    finally:
        log.close()
    assert (log.written, log.feedback, log.errors) == (200, 121, 25)
    predictions = project.log_rows(log.path, "SELECT request_id, series, inputs FROM predictions")  # every row readable
    assert sorted(r[0] for r in predictions) == sorted([f"split-{i}" for i in range(100)]
                                                       + [f"python-{i}" for i in range(100)])
    assert all(r[1] == record["entity"] and json.loads(r[2]) == record for r in predictions)
    assert project.log_rows(log.path, "SELECT count(*) FROM feedback") == [(121,)]
    lines = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(lines) == 2, lines  # the first failure, then one line with the count when the writer stops
    assert lines[0].startswith("opsloop serve: 5 prediction log item(s)") and "20 prediction log item(s)" in lines[1]


def test_feedback_cli_refuses_what_sqlite_cannot_store_in_one_line(project: Any, tmp_path: Path) -> None:
    from opsloop.cli.serve import feedback
    from opsloop.errors import OpsloopError

    cli = typer.Typer()
    cli.command()(feedback)
    common = ["--config", str(project.path / "opsloop.toml"), "--log-path", str(tmp_path / "log.db")]
    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"request_id": "a", "label": 1}\n{"request_id": "b", "row": 18446744073709551616, "label": 1}\n',
                     encoding="utf-8")
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"request_id,label\n\xff\xfe,1\n")
    wide = tmp_path / "rows.csv"
    wide.write_text("request_id,row,label\na,\u00b2,1\n", encoding="utf-8")
    for args, message in [(["--file", str(lines)], f'{lines}:2: "row" must be an integer'),
                          (["--file", str(binary)], "not UTF-8"),
                          (["--file", str(wide)], f"{wide}:2: row '\u00b2' is not a whole number"),
                          (["req\udcff", "1"], '"request_id" must be a printable string')]:
        with pytest.raises(OpsloopError, match=re.escape(message)):
            CliRunner().invoke(cli, [*args, *common], catch_exceptions=False)
    # the real command: one line on stderr, no traceback, exit 1
    done = subprocess.run([sys.executable, "-c", "from opsloop.cli import main; main()", "feedback", "--file",
                           str(lines), *common], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and '"row"' in done.stderr
    assert not (tmp_path / "log.db").exists() or project.log_rows(tmp_path / "log.db", "SELECT count(*) FROM feedback") == [(0,)]
