"""The alias watcher (issue 8): a refused version is tried again when the alias moves back to it, and a
store that keeps failing is reported once a minute, not with a traceback every poll.

Real stores throughout: the serving project's local store for the refused
version, and PostgreSQL behind a small TCP relay that the test cuts and
restores for the outage (the PostgreSQL test server of tests/plugins; the
test skips with its reason when there is none).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

MODEL = "asd-serve"
DEADLINE = 30.0


def _wait_for(predicate: Any, what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _move(project: Any, alias: str, version: int) -> None:
    with project.store() as store:
        store.set_alias(MODEL, alias, version, reason="test: watcher")


@pytest.fixture
def alias(project: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """An alias of this test's own at version 1."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    _move(project, name, 1)
    yield name
    _move(project, name, 1)


def test_a_refused_version_is_served_once_repaired_and_promoted_again(project: Any, alias: str,
                                                                     tmp_path: Path) -> None:
    """The issue's sequence: promote tampered v3 (refused), promote v1, repair v3, promote v3: v3 serves."""
    body = json.dumps({"instances": project.records(project.monitor.iloc[[100]])}).encode()

    def version(url: str) -> str:
        status, _, raw = project.request(url, "POST", "/predict", body)
        assert status == 200
        return json.loads(raw)["model_version"]

    app = create_app(workdir=project.path, alias=alias, poll_interval=0.05, log_path=tmp_path / "log.db")
    with project.tampered(3) as v3, ServerThread(app) as server:
        _move(project, alias, 3)
        _wait_for(lambda: app.metrics.load_errors == 1, "the refusal of the tampered version")
        _move(project, alias, 1)
        time.sleep(0.5)  # the watcher sees the alias at 1 again (ten polls)
        assert version(server.url) == "1" and app.metrics.load_errors == 1
        v3.repair()
        _move(project, alias, 3)
        _wait_for(lambda: version(server.url) == "3", "the repaired version 3 to serve")
        assert app.metrics.load_errors == 1


def test_every_move_of_the_alias_is_a_new_attempt_even_between_two_polls(project: Any, alias: str,
                                                                         tmp_path: Path) -> None:
    app = create_app(workdir=project.path, alias=alias, poll_interval=3600, log_path=tmp_path / "log.db")
    watcher = app.watcher  # not started: the test polls by calling check()
    try:
        with project.tampered(3) as v3:
            _move(project, alias, 3)
            assert watcher.check() is False and app.metrics.load_errors == 1
            assert watcher.check() is False and app.metrics.load_errors == 1  # not retried in a loop
            _move(project, alias, 1)  # away and back, with no poll in between: still a new attempt
            _move(project, alias, 3)
            assert watcher.check() is False and app.metrics.load_errors == 2  # still tampered: refused again
            _move(project, alias, 1)
            v3.repair()
            _move(project, alias, 3)
            assert watcher.check() is True and watcher.current.version.version == 3
            assert app.metrics.load_errors == 2
    finally:
        app.close()


# -- a store that goes away ----------------------------------------------------------


class Relay:
    """A TCP relay from a local port to PostgreSQL: `cut()` is the server going away, `restore()` it coming back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            for sock in self.sockets:
                _close(sock)
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _store_contract() -> Any:
    if "store_contract" not in sys.modules:  # shared with tests/plugins (and its PostgreSQL server)
        spec = importlib.util.spec_from_file_location("store_contract", Path(__file__).parents[1] / "plugins"
                                                      / "store_contract.py")
        assert spec and spec.loader
        sys.modules["store_contract"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["store_contract"])
    return sys.modules["store_contract"]


def test_a_store_that_keeps_failing_is_reported_once_a_minute_not_every_poll(
        project: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from opsloop.plugins.postgres_store import open_store

    contract = _store_contract()
    backend = contract.PostgresBackend(contract.require_pg())
    server = urllib.parse.urlsplit(backend.server)
    relay = Relay((server.hostname, server.port))
    relay.restore()
    relayed = server._replace(netloc=f"{server.username}@127.0.0.1:{relay.port}").geturl()
    uri = f"{relayed}?schema={backend.schema}&bundles={tmp_path / 'bundles'}"
    monkeypatch.delenv("OPSLOOP_DEBUG", raising=False)
    monkeypatch.delenv("OPSLOOP_STORE", raising=False)
    app = None
    try:
        with project.store() as local:  # version 1 of the serving project, registered in PostgreSQL
            bundle = Path(local.get(MODEL, 1).path)
        store = open_store(uri, tmp_path)
        with store:
            store.register(MODEL, bundle, json.loads((bundle / "manifest.json").read_text()))
            store.set_alias(MODEL, "production", 1, reason="test: outage")
        app = create_app(workdir=project.path, overrides=(f"store.uri={uri}", 'store.plugins=["postgres-store"]'),
                         poll_interval=0.05, log_path=tmp_path / "log.db")
        app.watcher.report_every = 1.0  # the minute, shortened
        caplog.set_level(logging.INFO, logger="opsloop.serving")
        app.start()

        relay.cut()
        started = time.monotonic()
        _wait_for(lambda: app.metrics.poll_errors >= 40, "40 failed polls")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        polls, elapsed = app.metrics.poll_errors, time.monotonic() - started
        assert 2 <= len(errors) <= 2 + elapsed / app.watcher.report_every < polls, [r.getMessage() for r in errors]
        assert "cannot check asd-serve@production in the store, still serving asd-serve:1" in errors[0].getMessage()
        assert not any(r.exc_info for r in errors)  # no traceback without OPSLOOP_DEBUG=1
        counts = [int(m.group(1)) for r in errors[1:] if (m := re.search(r": (\d+) failed poll", r.getMessage()))]
        assert len(counts) == len(errors) - 1 and all(n > 1 for n in counts), [r.getMessage() for r in errors]

        relay.restore()
        _wait_for(lambda: any("the store answers again" in r.getMessage() for r in caplog.records), "the recovery line")
        recovered = [r for r in caplog.records if "the store answers again" in r.getMessage()]
        assert len(recovered) == 1 and "asd-serve@production" in recovered[0].message
        before = app.metrics.poll_errors
        time.sleep(0.3)  # several good polls
        assert app.metrics.poll_errors == before
        assert len([r for r in caplog.records if "the store answers again" in r.getMessage()]) == 1
    finally:
        if app is not None:
            app.close()
        relay.cut()
        backend.cleanup()
