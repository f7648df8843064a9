"""An `ensemble` version served (issue 13, item 7): one row per series per request, through a real server on
127.0.0.1, gets the score batch scoring gives, value for value, on the fast path (each member's compiled
predict: XGBoost's and the Isolation Forest's) as on the replay path.

The model: the shipped default's preprocessing (rolling-features over "1h") and an ensemble of XGBoost and
Isolation Forest, trained small on two ASD servers; the requests are the monitoring rows in time order.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
import tomli_w
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-ensemble"
CONFIG = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-05'",
        "monitor": "entity in ['omi-1', 'omi-9'] and timestamp >= '2024-01-12' and timestamp < '2024-01-12 04:00'",
    },
    "preprocess": {"plugins": ["schema-check", "impute", "rolling-features"],
                   "rolling-features": {"windows": ["1h"], "stats": ["mean", "std"]}},
    "train": {"plugins": ["ensemble"], "ensemble": {"members": ["xgboost", "isolation-forest"]},
              "xgboost": {"n_estimators": 20, "n_jobs": 1, "early_stopping_rounds": 0},
              "isolation-forest": {"n_estimators": 30}},
    "validate": {"plugins": []}, "deploy": {"plugins": []}, "monitor": {"plugins": []}, "retrain": {"plugins": []},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, records: Any) -> dict[str, Any]:
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    path = tmp_path_factory.mktemp("ensemble-serving")
    (path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    cfg = config_mod.read(path / "opsloop.toml")
    runner = Runner(Session.open(cfg))
    try:
        train, monitor = data_mod.periods(data_mod.load(cfg), cfg)
        version = runner.build(train).version
        runner.store.set_alias(MODEL, "production", version.version, reason="test")
        model = runner.load(version)
    finally:
        runner.close()
    frame = monitor.frame.sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    return {"path": path, "records": records(frame), "score": model.predict(frame)["score"].tolist()}


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "replay"])
def test_streamed_rows_score_as_batch(served: dict[str, Any], fast: bool) -> None:
    app = create_app(workdir=served["path"], log_path=None, log_predictions=False, fast_path=fast)
    with ServerThread(app) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for i, row in enumerate(served["records"]):
                conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": [row]}).encode(),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = json.loads(response.read())
                assert response.status == 200, (i, body)
                assert body["predictions"][0]["score"] == served["score"][i], i
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
        finally:
            conn.close()
    info = [line for line in metrics.splitlines() if line.startswith("opsloop_model_info")]
    assert info and ('fallback_reason=""' in info[0]) == fast, info
