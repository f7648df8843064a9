"""A real uvicorn server on 127.0.0.1 answering real clients: the protocol, records, metadata, /metrics.

The Open Inference Protocol is spoken by `tritonclient[http]` (NVIDIA's client,
in its default binary mode and in JSON); the rest by `http.client`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread
from tritonclient.utils import InferenceServerException

MODEL = "asd-serve"


@pytest.fixture(scope="module")
def server(project: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    project.set_production(1)
    app = create_app(workdir=project.path, log_path=tmp_path_factory.mktemp("log") / "predictions.db",
                     monitor_report=tmp_path_factory.mktemp("report") / "monitor.json")
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def client(server: Any) -> Any:
    c = triton.InferenceServerClient(url=f"{server.host}:{server.port}")
    yield c
    c.close()


def _inputs(frame: Any, metadata: dict[str, Any], binary: bool) -> list[Any]:
    inputs = []
    for spec in metadata["inputs"]:
        column = frame[spec["name"]]
        if spec["datatype"] == "BYTES":
            values = column.map(lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
            array = np.array([v.encode() for v in values], dtype=object)
        else:
            array = column.to_numpy(dtype=np.float32)
        tensor = triton.InferInput(spec["name"], [len(frame)], spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_metadata_come_from_the_bundle(client: Any, project: Any) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1") and not client.is_model_ready(MODEL, "2")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(MODEL)
    schema = project.loaded(1).manifest["input_schema"]
    expected = {"float32": "FP32", "str": "BYTES", "object": "BYTES", "datetime64[ns]": "BYTES",
                "datetime64[us]": "BYTES"}
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == \
        [(c["name"], expected[c["dtype"]], [-1]) for c in schema]
    assert [o["name"] for o in meta["outputs"]] == ["prediction", "score"]
    assert meta["versions"] == ["1"] and meta["parameters"]["scorer"] == "fast"


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_batch_scoring(client: Any, project: Any, binary: bool) -> None:
    rows = project.monitor.iloc[:40]
    meta = client.get_model_metadata(MODEL)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("prediction", "score")]
    result = client.infer(MODEL, _inputs(rows, meta, binary), outputs=outputs, request_id="triton-1")
    batch = project.loaded(1).predict(rows.drop(columns=["label"]))
    assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "triton-1"
    assert np.array_equal(result.as_numpy("prediction"), batch["prediction"].to_numpy())
    assert np.array_equal(result.as_numpy("score"), batch["score"].to_numpy(dtype=np.float64))


def test_tritonclient_default_request_and_errors(client: Any, project: Any) -> None:
    meta = client.get_model_metadata(MODEL)
    result = client.infer(MODEL, _inputs(project.monitor.iloc[:3], meta, True))  # binary in and out
    assert result.as_numpy("score").shape == (3,)
    with pytest.raises(InferenceServerException, match="missing feature"):
        client.infer(MODEL, _inputs(project.monitor.iloc[:3], meta, True)[:5])
    with pytest.raises(InferenceServerException, match="not being served"):
        client.infer(MODEL, _inputs(project.monitor.iloc[:3], meta, False), model_version="2")


def test_a_row_scored_by_the_server_equals_batch_scoring(server: Any, project: Any) -> None:
    rows = project.monitor.iloc[::97].head(25)
    batch = project.loaded(1).predict(rows.drop(columns=["label"]))
    for record, (_, expected) in zip(project.records(rows), batch.iterrows(), strict=True):
        status, headers, answer = project.post_json(server.url, f"/v1/models/{MODEL}:predict",
                                                    {"instances": [record]})
        assert status == 200, answer
        (got,) = answer["predictions"]
        assert got["prediction"] == expected["prediction"] and got["score"] == float(expected["score"])
        assert answer["model_version"] == headers["x-opsloop-model-version"] == "1"
        assert headers["x-request-id"] == answer["request_id"]


def test_records_endpoint_many_rows_ids_and_gzip(server: Any, project: Any) -> None:
    rows = project.monitor.iloc[:300]
    body = json.dumps({"instances": project.records(rows), "id": "batch-7"}).encode()
    status, headers, raw = project.request(server.url, "POST", "/predict", gzip.compress(body),
                                           {"Content-Encoding": "gzip"})
    answer = json.loads(raw)
    assert status == 200 and answer["request_id"] == "batch-7" == headers["x-request-id"]
    batch = project.loaded(1).predict(rows.drop(columns=["label"]))
    assert [p["score"] for p in answer["predictions"]] == batch["score"].astype(float).tolist()
    status, headers, raw = project.request(server.url, "POST", "/predict", json.dumps(
        {"instances": project.records(rows.head(1))}).encode(), {"X-Request-Id": "mine-1"})
    assert status == 200 and json.loads(raw)["request_id"] == "mine-1"
    status, _, raw = project.request(server.url, "POST", "/predict", body, {"Content-Encoding": "br"})
    assert status == 415 and "br" in json.loads(raw)["error"]


def test_missing_values_are_imputed_like_batch(server: Any, project: Any) -> None:
    rows = project.monitor.iloc[5:15].copy()
    rows.loc[rows.index[::2], ["m01", "m07"]] = np.nan
    status, _, answer = project.post_json(server.url, "/predict", {"instances": project.records(rows)})
    batch = project.loaded(1).predict(rows.drop(columns=["label"]))
    assert status == 200 and [p["score"] for p in answer["predictions"]] == batch["score"].astype(float).tolist()


def test_metrics_report_requests_latency_version_and_monitor_figures(server: Any, project: Any) -> None:
    project.post_json(server.url, "/predict", {"instances": project.records(project.monitor.head(2))})
    project.post_json(server.url, "/predict", {"instances": [{"m01": 1}]})
    report = {"monitor": [{"monitor": "drift-monitor", "model": f"{MODEL}:1", "rows": 10,
                           "metrics": {"drift_max_psi": 0.31, "precision": 0.5}, "alerts": ["m03 drifted"]}]}
    server.app.settings.monitor_report.write_text(json.dumps(report), encoding="utf-8")
    status, headers, raw = project.request(server.url, "GET", "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'opsloop_requests_total{route="predict",code="200"}' in text
    assert 'opsloop_request_errors_total{route="predict",code="422",reason="invalid_input"}' in text
    assert 'opsloop_request_duration_seconds_bucket{route="predict",le="+Inf"}' in text
    assert f'opsloop_model_version{{model="{MODEL}",alias="production"}} 1' in text
    assert f'opsloop_monitor{{monitor="drift-monitor",model="{MODEL}:1",metric="drift_max_psi"}} 0.31' in text
    assert 'opsloop_monitor_alerts{monitor="drift-monitor"' in text
    for line in text.splitlines():  # every sample line parses as NAME{labels} VALUE
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            assert name and (value in ("NaN", "+Inf") or float(value) == float(value))


def test_unknown_paths_methods_and_models_are_4xx(server: Any, project: Any) -> None:
    for method, path, code in [("GET", "/nope", 404), ("GET", "/predict", 405), ("GET", "/v2/models/other", 404),
                               ("DELETE", f"/v2/models/{MODEL}", 405), ("GET", f"/v2/models/{MODEL}/x/y", 404),
                               ("POST", "/v1/models/other:predict", 404)]:
        status, _, raw = project.request(server.url, method, path, b"{}" if method == "POST" else None)
        assert status == code and json.loads(raw)["error"], (method, path, raw)
    status, _, raw = project.request(server.url, "GET", "/")
    assert status == 200 and json.loads(raw)["version"] == 1


def test_serving_with_the_replay_path_gives_the_same_answers(project: Any, tmp_path: Path) -> None:
    app = create_app(workdir=project.path, fast_path=False, log_predictions=False)
    rows = project.monitor.iloc[40:60]
    with ServerThread(app) as running:
        status, _, answer = project.post_json(running.url, "/predict", {"instances": project.records(rows)})
        meta = json.loads(project.request(running.url, "GET", f"/v2/models/{MODEL}")[2])
    assert meta["parameters"]["scorer"] == "replay" and "off" in meta["parameters"]["fallback_reason"]
    batch = project.loaded(1).predict(rows.drop(columns=["label"]))
    assert status == 200 and [p["score"] for p in answer["predictions"]] == batch["score"].astype(float).tolist()
