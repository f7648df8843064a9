"""Hot swap: the alias moves (promote, rollback) while clients keep sending, and no request fails.

Four client threads post the same row in a loop while the test promotes and
rolls back `production` through the store. Every response must be a 200
naming a version, and its score must be the one that version computes
(batch scoring of the row), so a response cannot claim one version and
come from another.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"


def _client(url: str, body: bytes, stop: threading.Event, seen: list[tuple[str, str, float]],
            errors: list[str]) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    while not stop.is_set():
        try:
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            if response.status != 200:
                errors.append(f"{response.status}: {raw[:200]!r}")
                continue
            answer = json.loads(raw)
            seen.append((response.getheader("X-Opsloop-Model-Version"), answer["model_version"],
                         answer["predictions"][0]["score"]))
        except Exception as exc:  # noqa: BLE001 - any failure is what the test counts
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.close()


def test_promote_and_rollback_under_load_drop_no_request(production_1: Any, tmp_path: Any) -> None:
    project = production_1
    row = project.monitor.iloc[[1200]]
    expected = {str(v): float(project.loaded(v).predict(row.drop(columns=["label"]))["score"].iloc[0])
                for v in (1, 2, 3)}
    assert len(set(expected.values())) == 3  # the versions answer differently: the check below means something
    body = json.dumps({"instances": project.records(row)}).encode()
    app = create_app(workdir=project.path, poll_interval=0.05, log_path=tmp_path / "log.db")
    stop, seen, errors = threading.Event(), [], []
    moves: list[tuple[str, int | None]] = [("set", 2), ("set", 3), ("rollback", None), ("rollback", None),
                                           ("set", 3), ("rollback", None), ("set", 2)]
    with ServerThread(app) as server:
        clients = [threading.Thread(target=_client, args=(server.url, body, stop, seen, errors)) for _ in range(4)]
        for c in clients:
            c.start()
        try:
            with project.store() as store:
                time.sleep(0.3)
                for action, version in moves:
                    if action == "set":
                        store.set_alias(MODEL, "production", version, reason="test: promote under load")
                    else:
                        store.rollback(MODEL, "production", reason="test: roll back under load")
                    target = str(store.alias(MODEL, "production"))
                    before = len(seen)
                    deadline = time.monotonic() + 10
                    while not any(s[0] == target for s in seen[before:]):  # the swap reaches the clients
                        assert time.monotonic() < deadline, f"still not serving {target}"
                        time.sleep(0.02)
                    time.sleep(0.2)  # requests keep flowing on the new version for a while
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=30)
        status, _, raw = project.request(server.url, "GET", "/metrics")
    assert errors == []
    assert len(seen) > 100
    assert {s[0] for s in seen} == {"1", "2", "3"}
    for header, version, score in seen:
        assert header == version and score == expected[version], (header, version, score)
    assert status == 200 and f"opsloop_model_swaps_total {len(moves)}" in raw.decode()


def test_an_alias_that_is_not_set_is_a_clear_error(project: Any) -> None:
    from opsloop.errors import StoreError

    with pytest.raises(StoreError, match="has no alias 'nowhere'"):
        create_app(workdir=project.path, alias="nowhere")
