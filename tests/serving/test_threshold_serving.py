"""The server alerts at the version's threshold, and follows a threshold that `models promote` changes.

A copy of the serving project (so the shared one keeps versions without a
threshold), its version 1 given a threshold by `opsloop models promote
--threshold`, served by a real HTTP server on 127.0.0.1, on the fast path
and on the replay path: every answered `prediction` is `score >= threshold`,
and a second promote with another threshold reaches the running server.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread
from opsloop.testing import invoke

MODEL = "asd-serve"


def served(project: Any, url: str, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    status, _, answer = project.post_json(url, "/predict", {"instances": project.records(rows)})
    assert status == 200, answer
    return (np.array([p["prediction"] for p in answer["predictions"]]),
            np.array([p["score"] for p in answer["predictions"]]))


def threshold_of(project: Any, url: str) -> float | None:
    import json

    status, _, body = project.request(url, "GET", f"/v2/models/{MODEL}")
    assert status == 200
    threshold = json.loads(body)["parameters"]["threshold"]
    return None if threshold is None else threshold["value"]


@pytest.mark.parametrize("fast", [True, False])
def test_served_predictions_follow_the_promoted_threshold(production_1: Any, tmp_path: Any, fast: bool) -> None:
    copy = tmp_path / "project"
    shutil.copytree(production_1.path, copy)
    project = type(production_1)(path=copy, monitor=production_1.monitor)
    rows = project.monitor.drop(columns=["label"]).iloc[::40].reset_index(drop=True)
    scores = project.loaded(1).predict(rows)["score"].to_numpy(dtype=float)
    first, second = (float(np.quantile(scores, q)) for q in (0.8, 0.95))
    # both thresholds decide differently from the model's own 0.5 on some of these rows: the check means something
    assert ((scores >= first) != (scores > 0.5)).any() and ((scores >= second) != (scores >= first)).any()

    invoke(["models", "promote", MODEL, "1", "--threshold", repr(first)], copy).assert_ok()
    app = create_app(workdir=copy, poll_interval=0.05, log_path=tmp_path / "log.db", fast_path=fast)
    with ServerThread(app) as server:
        assert app.watcher.current.scorer.kind == ("fast" if fast else "replay")
        assert threshold_of(project, server.url) == first
        predicted, score = served(project, server.url, rows)
        np.testing.assert_allclose(score, scores, rtol=1e-6)
        assert (predicted == (score >= first)).all()

        invoke(["models", "promote", MODEL, "1", "--threshold", repr(second), "--reason", "fewer pages"],
               copy).assert_ok()
        deadline = time.monotonic() + 60
        while threshold_of(project, server.url) != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threshold_of(project, server.url) == second
        predicted, score = served(project, server.url, rows)
        assert (predicted == (score >= second)).all()
    history = invoke(["models", "history", MODEL, "--json"], copy).assert_ok().json
    last = history[-1]
    assert (last["action"], last["to_version"], last["threshold"]["value"]) == ("threshold", 1, second)
    assert "fewer pages" in last["reason"] and "threshold" in last["reason"]
