"""Issue 8, defect 3 follow-up: the prediction log replaced by a file that is not a database, or a directory.

Found by the hostile-client review: with `.opsloop/serving/predictions.db`
replaced by a text file (or a directory) while serving, every `GET /metrics`
was a 500 with a traceback in the server's output, so the scrape that should
show `opsloop_prediction_log_errors_total` climbing showed nothing at all.
The live quality figures are best effort: left out (and counted) while the
log cannot be read; everything else is served.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from opsloop.serving.app import QUALITY_TTL, create_app
from opsloop.serving.server import ServerThread


def _metric(text: str, name: str) -> int:
    match = re.search(rf"^{name} (\d+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return int(match.group(1))


@pytest.mark.parametrize("replacement", ["text file", "directory"])
def test_metrics_answer_when_the_log_file_is_not_a_database(project: Any, tmp_path: Path, replacement: str) -> None:
    db = tmp_path / "serving" / "predictions.db"
    predict = json.dumps({"instances": project.records(project.monitor.iloc[[5]]), "id": "unreadable-1"}).encode()
    feedback = json.dumps({"request_id": "unreadable-1", "label": 1}).encode()
    app = create_app(workdir=project.path, log_path=db)
    with ServerThread(app) as server:
        assert project.request(server.url, "POST", "/predict", predict)[0] == 200
        assert project.request(server.url, "POST", "/v1/feedback", feedback)[0] == 202
        deadline = time.monotonic() + 60
        while b"opsloop_live_quality{" not in (body := project.request(server.url, "GET", "/metrics")[2]):
            assert time.monotonic() < deadline, "the live quality figures appear"  # the reader is open now
            time.sleep(QUALITY_TTL / 4)
        for path in db.parent.glob("predictions.db*"):
            path.unlink()
        if replacement == "directory":
            db.mkdir()
        else:
            db.write_text("this is not a database\n" * 10)
        assert project.request(server.url, "POST", "/predict", predict)[0] == 200  # answered, not logged
        deadline = time.monotonic() + 60
        while True:
            status, _, body = project.request(server.url, "GET", "/metrics")
            assert status == 200, body[:300]
            text = body.decode()
            if _metric(text, "opsloop_prediction_log_read_errors_total") and \
                    _metric(text, "opsloop_prediction_log_errors_total"):
                break
            assert time.monotonic() < deadline, f"the failed read and write are counted: {text[-2000:]}"
            time.sleep(QUALITY_TTL / 4)
    assert "opsloop_live_quality{" not in text  # left out, not stale or made up
    assert 'opsloop_requests_total{route="predict",code="200"} 2' in text


@pytest.mark.parametrize("problem", ["not a database", "is a file"])
def test_serve_with_a_log_it_cannot_open_says_so_in_one_line(project: Any, tmp_path: Path, problem: str) -> None:
    """Was "internal error: DatabaseError('file is not a database') (this is a bug in opsloop...)"."""
    from opsloop.testing import invoke

    if problem == "not a database":
        db = tmp_path / "predictions.db"
        db.write_text("this is not a database\n", encoding="utf-8")
    else:
        (tmp_path / "serving").write_text("", encoding="utf-8")  # where the log's directory should be
        db = tmp_path / "serving" / "predictions.db"
    result = invoke(["serve", "--port", "0", "--log-path", str(db)], cwd=project.path)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: prediction log {db}: ") and problem in lines[0], lines[0]
