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


@pytest.fixture(scope="module")
def per_series(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A version trained with `[alerting] per_series = true` (fast-path steps only), on two ASD servers."""
    import sys
    from pathlib import Path

    import tomli_w

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import SMALL

    path = tmp_path_factory.mktemp("per-series")
    # early stopping on: with all 60 rounds the top out-of-fold scores tie, and a budget of 0.5 a day cannot be met
    config = {**SMALL, "preprocess": {"plugins": ["impute"]}, "deploy": {"plugins": []},
              "train": {"xgboost": {"n_estimators": 60, "early_stopping_rounds": 20}},
              "alerting": {"rule": "budget", "target": 0.5, "per_series": True}}
    (path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    invoke(["run", "--quiet"], path).assert_ok()
    return path


@pytest.mark.parametrize("fast", [True, False])
def test_each_series_alerts_at_its_own_threshold_when_served(per_series: Any, production_1: Any, tmp_path: Any,
                                                             fast: bool) -> None:
    from opsloop import alerting, config, data

    shown = invoke(["models", "show", "asd-anomaly:1", "--json"], per_series).assert_ok().json["threshold"]
    assert shown["per_series"] and set(shown["per_series"]) <= {"omi-1", "omi-9"}  # those where the budget can be met
    cfg = config.read(workdir=per_series)
    rows = data.periods(data.load(cfg), cfg)[1].frame.drop(columns=["label"]).iloc[::30].reset_index(drop=True)
    assert set(rows["entity"]) == {"omi-1", "omi-9", "omi-10", "omi-11"}  # with their own and without
    project = type(production_1)(path=per_series, monitor=rows)
    app = create_app(workdir=per_series, model="asd-anomaly", poll_interval=0.05, log_path=tmp_path / "log.db",
                     fast_path=fast)
    with ServerThread(app) as server:
        assert app.watcher.current.scorer.kind == ("fast" if fast else "replay")
        predicted, score = served(project, server.url, rows)
    expected = alerting.alerts(score, shown, rows["entity"])
    assert (predicted == expected).all()
    overall = score >= shown["value"]
    assert (expected != overall).any()  # the per-series thresholds decided some rows differently
