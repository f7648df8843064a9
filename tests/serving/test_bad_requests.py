"""Bad requests get a 4xx with a reason, and the server keeps serving (hypothesis against a live server).

Each example sends one malformed, mis-typed, mis-shaped or oversized request
and then a valid one: the first must be answered 4xx with `{"error": "..."}`,
the second 200, so a crash, a hang or a 5xx anywhere fails the test.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"
LIMIT = 64 * 1024
MAX_ROWS = 50
INFER = f"/v2/models/{MODEL}/infer"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def live(project: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    project.set_production(1)
    app = create_app(workdir=project.path, max_body_bytes=LIMIT, max_rows=MAX_ROWS,
                     log_path=tmp_path_factory.mktemp("badlog") / "predictions.db")
    record = project.records(project.monitor.head(1))[0]
    with ServerThread(app) as running:
        yield running, record


def _check(live: Any, project: Any, method: str, path: str, body: bytes, headers: dict[str, str] | None = None,
           expect: int | None = None) -> None:
    server, record = live
    status, _, raw = project.request(server.url, method, path, body, headers)
    assert 400 <= status < 500, f"{status} {raw[:300]!r} for {body[:200]!r}"
    if expect is not None:
        assert status == expect, (status, raw[:300])
    reason = json.loads(raw)["error"]
    assert isinstance(reason, str) and len(reason) > 10, raw
    ok, _, answer = project.post_json(server.url, "/predict", {"instances": [record]})
    assert ok == 200 and answer["model_version"] == "1"


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                 max_size=4), max_leaves=12)
_not_a_number = st.one_of(st.text(max_size=8), st.booleans(), st.lists(st.floats(), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_not_text = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.text(), max_size=2))


@SETTINGS
@given(body=st.binary(max_size=300), path=st.sampled_from(["/predict", INFER, "/v1/feedback"]))
def test_garbage_bodies(body: bytes, path: str, live: Any, project: Any) -> None:
    try:
        json.loads(body)
        return  # valid JSON by chance: the structured tests cover those
    except ValueError:
        pass
    _check(live, project, "POST", path, body)


@SETTINGS
@given(value=_json, path=st.sampled_from(["/predict", INFER, "/v1/feedback"]))
def test_json_of_the_wrong_shape(value: Any, path: str, live: Any, project: Any) -> None:
    _check(live, project, "POST", path, json.dumps(value).encode())


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["missing", "extra", "float", "text", "time", "row", "rows", "instances",
                                              "empty", "too_many", "huge_int", "infinity", "float32", "id"]))
def test_instances_that_do_not_fit_the_schema(data: st.DataObject, kind: str, live: Any, project: Any) -> None:
    record = dict(live[1])
    body: Any = {"instances": [record]}
    metric = data.draw(st.sampled_from([f"m{j:02d}" for j in range(1, 20)]))
    if kind == "missing":
        del record[data.draw(st.sampled_from(sorted(record)))]
    elif kind == "extra":
        record[data.draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in record))] = 1.0
    elif kind == "float":
        record[metric] = data.draw(_not_a_number)
    elif kind == "text":
        record["entity"] = data.draw(_not_text)
    elif kind == "time":
        record["timestamp"] = data.draw(st.one_of(_not_text, st.sampled_from(["yesterday", "2024-13-01", "", "12:00x"])))
    elif kind == "row":
        body = {"instances": [data.draw(st.one_of(st.integers(), st.text(), st.lists(st.floats(), max_size=3)))]}
    elif kind == "rows":
        body = {"instances": [record, data.draw(_json.filter(lambda v: not isinstance(v, dict)))]}
    elif kind == "instances":
        body = {"instances": data.draw(_json.filter(lambda v: not isinstance(v, list)))}
    elif kind == "empty":
        body = {"instances": []}
    elif kind == "too_many":
        body = {"instances": [record] * data.draw(st.integers(MAX_ROWS + 1, MAX_ROWS + 30))}
    elif kind == "huge_int":
        record[metric] = data.draw(st.sampled_from([10**40, -(10**39), 10**400]))
    elif kind == "float32":
        record[metric] = data.draw(st.floats(min_value=3.5e38, max_value=1e300))
    elif kind == "id":
        body["id"] = data.draw(st.one_of(st.integers(), st.lists(st.text(), min_size=1), st.text(min_size=201)))
    text = json.dumps(body)
    if kind == "infinity":
        text = json.dumps(body).replace(json.dumps(record[metric]), data.draw(st.sampled_from(["Infinity",
                                                                                                 "-Infinity"])), 1)
    _check(live, project, "POST", data.draw(st.sampled_from(["/predict", f"/v1/models/{MODEL}:predict"])),
           text.encode())


def _tensors(record: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, value in record.items():
        datatype = "BYTES" if isinstance(value, str) else "FP32"
        out.append({"name": name, "shape": [1], "datatype": datatype, "data": [value]})
    return out


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["shape", "rank", "mismatch", "datatype", "wrong_type", "data",
                                              "nested", "duplicate", "unknown", "missing", "rows", "inputs",
                                              "binary_size", "binary_trailing", "header_length", "outputs",
                                              "bytes_binary"]))
def test_tensors_that_do_not_fit_the_protocol(data: st.DataObject, kind: str, live: Any, project: Any) -> None:
    tensors = _tensors(live[1])
    i = data.draw(st.integers(2, len(tensors) - 1))  # a FP32 metric
    body: dict[str, Any] = {"inputs": tensors}
    extra, headers = b"", {}
    if kind == "shape":
        tensors[i]["shape"] = data.draw(st.one_of(st.text(), st.lists(st.integers(max_value=-1), min_size=1),
                                                  st.integers()))
    elif kind == "rank":
        tensors[i]["shape"] = [1, data.draw(st.integers(2, 5))]
        tensors[i]["data"] = [0.5] * tensors[i]["shape"][1]
    elif kind == "mismatch":
        tensors[i]["shape"] = [data.draw(st.integers(2, 9))]
    elif kind == "datatype":
        tensors[i]["datatype"] = data.draw(st.one_of(st.text(max_size=6), st.sampled_from(["BOOL", "BYTES", "BF16"]),
                                                     _json.filter(lambda v: not isinstance(v, str))))  # [] was a 500
    elif kind == "wrong_type":
        tensors[i]["data"] = [data.draw(_not_a_number)]
    elif kind == "data":
        tensors[i]["data"] = data.draw(st.one_of(st.none(), st.text(), st.dictionaries(st.text(), st.integers())))
    elif kind == "nested":
        tensors[i]["data"] = [[0.5, 0.5]]
    elif kind == "duplicate":
        tensors.append(dict(tensors[i]))
    elif kind == "unknown":
        tensors[i] = {**tensors[i], "name": data.draw(st.text(max_size=8).filter(lambda n: n not in live[1]))}
    elif kind == "missing":
        del tensors[i]
    elif kind == "rows":
        for t in tensors:
            t["shape"], t["data"] = [MAX_ROWS + 1], t["data"] * (MAX_ROWS + 1)
    elif kind == "inputs":
        body["inputs"] = data.draw(st.one_of(st.just([]), st.text(), st.lists(st.integers(), min_size=1)))
    elif kind in ("binary_size", "binary_trailing"):
        del tensors[i]["data"]
        tensors[i]["parameters"] = {"binary_data_size": 4 if kind == "binary_trailing" else
                                    data.draw(st.sampled_from([0, 3, 5, 8, -1, 10**6, "4"]))}
        extra = struct.pack("<f", 0.5) + (b"junk" if kind == "binary_trailing" else b"")
    elif kind == "header_length":
        headers = {"Inference-Header-Content-Length": data.draw(st.sampled_from(["abc", "0", "-5", "99999999"]))}
    elif kind == "outputs":
        body["outputs"] = data.draw(st.one_of(st.text(), st.just([{"name": "nope"}]), st.just([{"nome": 1}])))
    elif kind == "bytes_binary":
        entity = next(t for t in tensors if t["name"] == "entity")
        del entity["data"]
        entity["parameters"] = {"binary_data_size": 9}
        extra = struct.pack("<I", 50) + b"omi-1"  # says 50 bytes, has 5
    header = json.dumps(body).encode()
    if extra and "Inference-Header-Content-Length" not in headers:
        headers["Inference-Header-Content-Length"] = str(len(header))
    _check(live, project, "POST", INFER, header + extra, headers)


@SETTINGS
@given(size=st.integers(LIMIT + 1, 3 * LIMIT), declared=st.booleans())
def test_oversized_bodies_are_413(size: int, declared: bool, live: Any, project: Any) -> None:
    body = json.dumps({"instances": [live[1]], "pad": "x" * size}).encode()
    headers = {} if declared else {"Transfer-Encoding": "chunked"}
    if not declared:
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[i:i + 8192] for i in range(0, len(body), 8192))) \
            + b"0\r\n\r\n"
    _check(live, project, "POST", "/predict", body, headers, expect=413)


def test_a_zip_bomb_is_413(live: Any, project: Any) -> None:
    import gzip

    bomb = gzip.compress(b"[" + b" " * (LIMIT * 20) + b"]")
    _check(live, project, "POST", "/predict", bomb, {"Content-Encoding": "gzip"}, expect=413)


@SETTINGS
@given(entry=st.one_of(
    st.fixed_dictionaries({"request_id": st.text(min_size=1, max_size=20),  # true/false are labels 1/0
                           "label": _not_a_number.filter(lambda v: not isinstance(v, bool))}),
    st.fixed_dictionaries({"request_id": _not_text.filter(lambda v: not isinstance(v, str)), "label": st.just(1)}),
    st.fixed_dictionaries({"label": st.just(1)}),
    st.fixed_dictionaries({"request_id": st.just("r"), "row": st.integers(max_value=-1), "label": st.just(0)}),
    st.fixed_dictionaries({"request_id": st.just("r"), "time": st.just("2024-01-01"), "label": st.just(0)}),
    st.fixed_dictionaries({"request_id": st.just("r"), "label": st.just(1), "surprise": st.integers()})))
def test_bad_feedback(entry: dict[str, Any], live: Any, project: Any) -> None:
    _check(live, project, "POST", "/v1/feedback", json.dumps(entry).encode(), expect=422)
