"""Issue 8, defect 2 follow-up: bodies whose keys Python and SQLite read differently.

Found by the hostile-client review. JSON allows a key to be repeated, and to
be spelled with escapes: `{"instances": [A], "\\u0069nstances": [B, B]}`.
Python's json keeps the last "instances" (B, B), which the server checks,
scores and answers with 200; the log writer handed the raw body to SQLite's
`json_each(body, '$.instances')`, which reads the first one (A) and matches
no escaped key:

- with another row count, the split disagreed with the predictions and the
  request, answered 200, was not logged at all;
- with the same count, row A was logged beside B's prediction.

The same inside a row: `{"entity": "A", "entity": "B"}` was scored as B and
logged as series A. Every request answered 200 must be logged with the rows
it was scored on (real server, real SQLite file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread


def _bodies(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str]:
    row_b = json.dumps(b)
    return {
        "escaped-more": '{"instances": %s, "\\u0069nstances": %s, "id": "escaped-more"}' % (
            json.dumps([a]), json.dumps([b, b])),
        "escaped-same": '{"instances": %s, "\\u0069nstances": %s, "id": "escaped-same"}' % (
            json.dumps([a]), json.dumps([b])),
        "plain-twice": '{"instances": %s, "instances": %s, "id": "plain-twice"}' % (json.dumps([a]), json.dumps([b])),
        "row-dup": '{"instances": [%s], "id": "row-dup"}' % row_b.replace(
            '"entity": "series-B"', '"entity": "series-A", "entity": "series-B"'),
        "row-dup-escaped": '{"instances": [%s], "id": "row-dup-escaped"}' % row_b.replace(
            '"entity": "series-B"', '"entity": "series-A", "\\u0065ntity": "series-B"'),
        "row-escaped-once": '{"instances": [%s], "id": "row-escaped-once"}' % row_b.replace(
            '"entity": "series-B"', '"\\u0065ntity": "series-B"'),
        # one key each, and an escaped quote in a value: more quotes than keys and strings, all read alike
        "quote-in-value": '{"instances": [%s], "id": "quote-in-value"}' % row_b.replace(
            '"entity": "series-B"', '"entity": "series-\\"B\\""'),
    }


@pytest.mark.parametrize("rid", ["escaped-more", "escaped-same", "plain-twice", "row-dup", "row-dup-escaped",
                                 "row-escaped-once", "quote-in-value"])
def test_the_log_holds_the_rows_that_were_scored_whatever_the_key_spelling(project: Any, tmp_path: Path,
                                                                          rid: str) -> None:
    records = project.records(project.monitor.iloc[[5, 6]])
    a, b = {**records[0], "entity": "series-A"}, {**records[1], "entity": "series-B"}
    body = _bodies(a, b)[rid]
    expected = 'series-"B"' if rid == "quote-in-value" else "series-B"
    db = tmp_path / "log.db"
    app = create_app(workdir=project.path, log_path=db)
    with ServerThread(app) as server:
        status, _, raw = project.request(server.url, "POST", "/predict", body.encode())
        assert status == 200, raw
        answer = json.loads(raw)["predictions"]
        single = json.dumps({"instances": [{**b, "entity": expected}], "id": "reference"}).encode()
        reference = json.loads(project.request(server.url, "POST", "/predict", single)[2])["predictions"][0]
    assert app.log is not None and app.log.errors == 0
    logged = project.log_rows(db, "SELECT series, inputs, prediction, score FROM predictions WHERE request_id = ? ORDER BY row",
                   rid)
    assert len(logged) == len(answer), f"{rid}: answered {len(answer)} row(s), logged {len(logged)}"
    for (series, inputs, prediction, score), answered in zip(logged, answer, strict=True):
        assert series == expected, f"{rid}: scored {expected}, logged series {series!r}"
        assert json.loads(inputs)["entity"] == expected, f"{rid}: logged inputs {inputs[:80]}"
        assert (prediction, score) == (answered["prediction"], answered["score"]) == (
            reference["prediction"], reference["score"])  # the row logged is the one scored: B's inputs
