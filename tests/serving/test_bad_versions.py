"""An alias moved to a version that cannot load: the server keeps answering with the version it has."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"


def _metric(project: Any, url: str, name: str) -> float:
    status, _, raw = project.request(url, "GET", "/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on /metrics")


def _wait_for(predicate: Any, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(project: Any, tmp_path: Path) -> None:
    with project.store() as store:
        store.set_alias(MODEL, "canary", 1, reason="test: tampered bundle")
        bundle = Path(store.get(MODEL, 2).path)
    target = max((p for p in bundle.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    original = target.read_bytes()
    body = json.dumps({"instances": project.records(project.monitor.iloc[[100]])}).encode()
    app = create_app(workdir=project.path, alias="canary", poll_interval=0.05, log_path=tmp_path / "log.db")
    try:
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one flipped byte
        with ServerThread(app) as server:
            with project.store() as store:
                store.set_alias(MODEL, "canary", 2, reason="test: move to the tampered version")
            _wait_for(lambda: _metric(project, server.url, "opsloop_model_load_errors_total") == 1, "the refusal")
            for _ in range(20):  # still version 1, every time, and the refusal is not retried in a loop
                status, headers, raw = project.request(server.url, "POST", "/predict", body)
                assert status == 200 and json.loads(raw)["model_version"] == "1"
            assert _metric(project, server.url, "opsloop_model_load_errors_total") == 1
            with project.store() as store:  # the next move to a sound version is followed
                store.set_alias(MODEL, "canary", 3, reason="test: move on")
            _wait_for(lambda: json.loads(project.request(server.url, "POST", "/predict", body)[2])["model_version"]
                      == "3", "version 3")
    finally:
        target.write_bytes(original)
        with project.store() as store:
            store.set_alias(MODEL, "canary", 1, reason="test: restore")
