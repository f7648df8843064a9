"""Streaming (issue 13, item 4): one row per series per request gets the score batch scoring of the whole series
gives, value for value, on ASD, through a real server on 127.0.0.1.

The model is the shipped default's preprocessing (schema-check, impute,
rolling-features windows ["1h"], mean and std) and XGBoost, trained small on
two servers; the requests are its monitoring period's rows, one per request,
the two series interleaved in time order, as a monitoring agent sends them.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-stream"
CONFIG = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-05'",
        "monitor": "entity in ['omi-1', 'omi-9'] and timestamp >= '2024-01-12' and timestamp < '2024-01-12 10:00'",
    },
    "preprocess": {"plugins": ["schema-check", "impute", "rolling-features"],
                   "rolling-features": {"windows": ["1h"], "stats": ["mean", "std"]}},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 20, "n_jobs": 1, "early_stopping_rounds": 0}},
    "validate": {"plugins": []}, "deploy": {"plugins": []}, "monitor": {"plugins": []}, "retrain": {"plugins": []},
}

#: 1: the shipped default's windows; 2: the same reach, other trees (a hot swap keeps the history); 3: a window of
#: 30 minutes, another reach (the history is read back from the log).
VERSIONS = {1: [], 2: ["train.xgboost.n_estimators=10"], 3: ['preprocess.rolling-features.windows=["30min"]']}


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory, records: Any) -> dict[str, Any]:
    """The trained project, its monitoring rows in time order (as records) and their batch scores."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.runner import Runner
    from opsloop.session import Session

    path = tmp_path_factory.mktemp("streaming")
    (path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    models = {}
    for number, overrides in VERSIONS.items():
        cfg = config_mod.read(path / "opsloop.toml", overrides=overrides)
        runner = Runner(Session.open(cfg))
        try:
            train, monitor = data_mod.periods(data_mod.load(cfg), cfg)
            version = runner.build(train).version
            assert version.version == number
        finally:
            runner.close()
        models[number] = read_bundle(version.path, PluginManager(), ref=version.ref, digest=version.digest)
    with Session.open(cfg, sections=("store",)).open_store() as store:
        store.set_alias(MODEL, "production", 1, reason="test")
    frame = monitor.frame.sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    batch = {number: model.predict(frame) for number, model in models.items()}  # batch scoring of the period
    return {"path": path, "records": records(frame), "score": batch[1]["score"].tolist(),
            "prediction": batch[1]["prediction"].tolist(),
            "versions": {number: out["score"].tolist() for number, out in batch.items()}}


class Client:
    """One keep-alive connection to the server."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, rows: list[dict[str, Any]]) -> tuple[int, Any]:
        self.conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": rows}).encode(),
                          {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def metrics(self) -> dict[str, float]:
        self.conn.request("GET", "/metrics")
        text = self.conn.getresponse().read().decode()
        return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("opsloop_series_")}

    def close(self) -> None:
        self.conn.close()


def _serve(stream: dict[str, Any], log: Path | None, **fields: Any) -> ServerThread:
    app = create_app(workdir=stream["path"], log_path=log, log_predictions=log is not None, **fields)
    return ServerThread(app)


def _send(client: Client, stream: dict[str, Any], rows: range) -> None:
    """Each row alone, in time order; its score must be batch's for that row, bit for bit."""
    for i in rows:
        status, body = client.post([stream["records"][i]])
        assert status == 200, (i, body)
        assert body["predictions"][0]["score"] == stream["score"][i], i
        assert body["predictions"][0]["prediction"] == stream["prediction"][i], i


def test_one_row_per_request_gets_the_batch_score_and_a_restart_keeps_it(stream: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    log = tmp_path / "predictions.db"
    n = len(stream["records"])
    half = n // 2
    with _serve(stream, log) as server:
        client = Client(server.url)
        _send(client, stream, range(half))
        seen = client.metrics()
        client.close()
    assert seen["opsloop_series_held"] == 2 and seen["opsloop_series_new_total"] == 2
    assert seen["opsloop_series_evicted_total"] == 0
    with _serve(stream, log) as server:  # restarted: each series read back from the log on its next row
        client = Client(server.url)
        _send(client, stream, range(half, n))
        seen = client.metrics()
        client.close()
    assert seen["opsloop_series_restored_total"] == 2 and seen["opsloop_series_new_total"] == 0


def test_out_of_order_and_duplicate_rows_are_refused_and_change_nothing(stream: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    records = stream["records"]
    with _serve(stream, tmp_path / "predictions.db") as server:
        client = Client(server.url)
        _send(client, stream, range(40))
        last = records[39]
        same = [r for r in records[:39] if r["entity"] == last["entity"]][-1]
        status, body = client.post([same])  # an earlier time of the series
        assert status == 422
        assert f"series {last['entity']!r}" in body["error"]
        assert repr(same["timestamp"]) in body["error"] and repr(last["timestamp"]) in body["error"]
        assert "before the last time scored" in body["error"]
        status, body = client.post([dict(last)])  # the same time again
        assert status == 422 and "the same as the last time scored" in body["error"]
        status, body = client.post([records[40], records[40]])  # twice in one request
        assert status == 422 and "row 1's time" in body["error"] and "row 0's time in this request" in body["error"]
        later = [r for r in records[40:] if r["entity"] == last["entity"]]
        status, body = client.post([later[1], later[0]])  # out of order within a request
        assert status == 422 and "before row 0's time in this request" in body["error"]
        status, body = client.post([{**records[40], "timestamp": None}])
        assert status == 422 and "'timestamp' is a null" in body["error"]  # the schema refuses it already
        status, body = client.post([{**records[40], "entity": None}])
        assert status == 422 and "no series key" in body["error"]
        assert client.metrics()["opsloop_series_refused_total"] == 5
        _send(client, stream, range(40, 80))  # nothing was kept from the refused requests: still exact
        client.close()


def test_evicted_series_are_read_back_from_the_log(stream: dict[str, Any], tmp_path: Path) -> None:
    with _serve(stream, tmp_path / "predictions.db", max_series=1) as server:
        client = Client(server.url)
        _send(client, stream, range(60))  # two series interleaved, room for one: each row evicts the other
        seen = client.metrics()
        client.close()
    assert seen["opsloop_series_held"] == 1 and seen["opsloop_series_limit"] == 1
    assert seen["opsloop_series_evicted_total"] >= 58 and seen["opsloop_series_restored_total"] >= 56


def test_without_the_log_an_evicted_series_starts_anew_and_is_counted(stream: dict[str, Any]) -> None:
    records = stream["records"]
    with _serve(stream, None, max_series=1) as server:
        client = Client(server.url)
        _send(client, stream, range(2))  # the first row of each series has no past anyway
        status, body = client.post([records[2]])
        assert status == 200
        seen = client.metrics()
        client.close()
    assert seen["opsloop_series_evicted_total"] == 2 and seen["opsloop_series_new_total"] == 3
    assert status == 200


def test_a_request_with_more_series_than_the_limit_is_refused(stream: dict[str, Any], tmp_path: Path) -> None:
    records = stream["records"]
    with _serve(stream, tmp_path / "predictions.db", max_series=1) as server:
        client = Client(server.url)
        status, body = client.post(records[:2])  # two series
        assert status == 413 and "2 series" in body["error"] and "--max-series" in body["error"]
        _send(client, stream, range(1))  # nothing was kept: the first row is still scored as batch does
        client.close()


def test_the_replay_path_keeps_the_history_too(stream: dict[str, Any], tmp_path: Path) -> None:
    with _serve(stream, tmp_path / "predictions.db", fast_path=False) as server:
        client = Client(server.url)
        client.conn.request("GET", f"/v2/models/{MODEL}")
        meta = json.loads(client.conn.getresponse().read())
        assert meta["parameters"]["scorer"] == "replay"
        assert meta["parameters"]["reach"] == {"rows": 0, "seconds": 3600.0}
        _send(client, stream, range(60))
        client.close()


def test_a_hot_swap_keeps_or_reads_back_the_history(stream: dict[str, Any], tmp_path: Path) -> None:
    from opsloop import config as config_mod
    from opsloop.session import Session

    def promote(number: int, client: Client) -> None:
        with Session.open(config_mod.read(stream["path"] / "opsloop.toml"), sections=("store",)).open_store() as s:
            s.set_alias(MODEL, "production", number, reason="test")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            client.conn.request("GET", f"/v2/models/{MODEL}")
            if json.loads(client.conn.getresponse().read())["versions"] == [str(number)]:
                return
            time.sleep(0.02)
        raise AssertionError(f"version {number} does not serve")

    def send(rows: range, number: int) -> None:
        for i in rows:
            status, body = client.post([stream["records"][i]])
            assert status == 200 and body["model_version"] == str(number), (i, body)
            assert body["predictions"][0]["score"] == stream["versions"][number][i], (number, i)

    try:
        with _serve(stream, tmp_path / "predictions.db", poll_interval=0.05) as server:
            client = Client(server.url)
            send(range(50), 1)
            promote(2, client)  # the same reach and inputs: the history goes on
            send(range(50, 100), 2)
            seen = client.metrics()
            assert seen["opsloop_series_restored_total"] == 0 and seen["opsloop_series_new_total"] == 2
            promote(3, client)  # another reach: each series is read back from the log on its next row
            send(range(100, 150), 3)
            seen = client.metrics()
            assert seen["opsloop_series_restored_total"] == 2 and seen["opsloop_series_held"] == 2
            client.close()
    finally:
        with Session.open(config_mod.read(stream["path"] / "opsloop.toml"), sections=("store",)).open_store() as s:
            s.set_alias(MODEL, "production", 1, reason="test")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "replay"])
def test_a_bundle_without_series_column_is_one_stream(fast: bool, tmp_path_factory: pytest.TempPathFactory,
                                                       records: Any) -> None:
    """No series column: every row belongs to one series; windows in rows and in time, with rates, still exact
    (the scorer alone: the server's tests above run the same code)."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop import datasets
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.runner import Runner
    from opsloop.serving import protocol
    from opsloop.serving.fastpath import make_scorer
    from opsloop.serving.history import Streams, stateful
    from opsloop.serving.schema import InputSchema
    from opsloop.session import Session

    path = tmp_path_factory.mktemp("one-stream")
    asd = datasets.load("asd")
    asd[asd["entity"] == "omi-1"].drop(columns=["entity"]).reset_index(drop=True).to_parquet(path / "one.parquet")
    config = {**CONFIG, "data": {"source": "one.parquet", "target": "label", "time": "timestamp",
                                 "train": "timestamp < '2024-01-05'",
                                 "monitor": "timestamp >= '2024-01-12' and timestamp < '2024-01-12 06:00'"},
              "preprocess": {"plugins": ["impute", "rolling-features"],
                             "rolling-features": {"windows": ["1h", 3], "stats": ["mean", "std", "rate"]}}}
    (path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    cfg = config_mod.read(path / "opsloop.toml")
    runner = Runner(Session.open(cfg))
    try:
        train, monitor = data_mod.periods(data_mod.load(cfg), cfg)
        version = runner.build(train).version
    finally:
        runner.close()
    model = read_bundle(version.path, PluginManager(), ref=version.ref, digest=version.digest)
    assert model.manifest.get("series") is None
    frame = monitor.frame.sort_values("timestamp").reset_index(drop=True)
    want = model.predict(frame)["score"].tolist()
    schema = InputSchema.from_manifest(model.manifest, max_rows=100)
    scorer = stateful(model, schema, make_scorer(model, schema, fast=fast), name="one", max_series=10,
                      streams=Streams())
    assert scorer.kind == ("fast" if fast else "replay") and scorer.history.reach.rows == 3
    for i, record in enumerate(records(frame)):
        batch, _ = protocol.parse_instances(json.dumps({"instances": [record]}).encode(), schema)
        assert scorer.score(batch)[1][0] == want[i], i


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "replay"])
def test_concurrent_clients_of_different_series_stay_exact(fast: bool, stream: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """One client per series, each on its own connection and thread: the replay scores on worker threads, so
    the history is read and updated by several at once."""
    import threading

    records = stream["records"]
    failures: list[Any] = []

    def client_of(entity: str, url: str) -> None:
        client = Client(url)
        try:
            for i, record in enumerate(records):
                if record["entity"] != entity:
                    continue
                status, body = client.post([record])
                if status != 200 or body["predictions"][0]["score"] != stream["score"][i]:
                    failures.append((entity, i, status, body))
        finally:
            client.close()

    with _serve(stream, tmp_path / "predictions.db", fast_path=fast) as server:
        threads = [threading.Thread(target=client_of, args=(e, server.url)) for e in ("omi-1", "omi-9")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
