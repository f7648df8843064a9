"""Slow clients and too many connections (issue 8, item 6): real server, real sockets.

Clients that send half a request and hang are closed after `read_timeout`
(a 408 when they sent part of a request), and do not stop a normal client's
health check meanwhile. Beyond `max_connections`, a newcomer takes the slot
of the connection that has waited longest for its request, or is answered
503 when every connection is busy or idle between requests; a slot freed is
usable again. Every wait is a bounded poll with a generous deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

DEADLINE = 30.0  # seconds: far more than any timeout below, for a loaded CI machine


@contextlib.contextmanager
def serving(project: Any, tmp_path: Path, **settings: Any) -> Iterator[ServerThread]:
    app = create_app(workdir=project.path, log_path=tmp_path / "log.db", **settings)
    with ServerThread(app) as server:
        yield server


def connect(server: Any, data: bytes = b"") -> socket.socket:
    """A raw connection to `server` (anything with host and port) that sends `data`."""
    sock = socket.create_connection((server.host, server.port), timeout=DEADLINE)
    if data:
        sock.sendall(data)
    return sock


def until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails at the deadline."""
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection (received {received[:80]!r})") from None
        if not chunk:
            return received
        received += chunk


def health(server: Any, conn: http.client.HTTPConnection | None = None) -> int:
    own = conn is None
    conn = conn or http.client.HTTPConnection(server.host, server.port, timeout=DEADLINE)
    try:
        conn.request("GET", "/v2/health/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        if own:
            conn.close()


def test_clients_that_hang_mid_request_are_closed_and_others_are_served(project: Any, tmp_path: Path) -> None:
    with serving(project, tmp_path, read_timeout=1.0) as server:
        silent = [connect(server) for _ in range(5)]
        half_headers = [connect(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-") for _ in range(20)]
        half_body = [connect(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 1000\r\n\r\n{\"instances\": [") for _ in range(5)]
        try:
            assert health(server) == 200  # while they all hang
            deadline = time.monotonic() + DEADLINE
            for sock in silent:  # sent nothing: closed without a word
                assert until_closed(sock, deadline) == b""
            for sock in half_headers + half_body:  # sent part of a request: told why
                assert until_closed(sock, deadline).startswith(b"HTTP/1.1 408 ")
            assert health(server) == 200
        finally:
            for sock in silent + half_headers + half_body:
                sock.close()


def test_a_request_sent_in_pieces_within_the_timeout_is_answered(project: Any, tmp_path: Path) -> None:
    with serving(project, tmp_path, read_timeout=20.0) as server:
        sock = connect(server, b"GET /v2/health/li")
        try:
            time.sleep(0.2)
            sock.sendall(b"ve HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.2)
            sock.sendall(b"Connection: close\r\n\r\n")
            assert until_closed(sock, time.monotonic() + DEADLINE).startswith(b"HTTP/1.1 200 ")
        finally:
            sock.close()


def test_beyond_the_connection_limit_newcomers_are_refused_or_take_a_stalled_slot(project: Any,
                                                                                   tmp_path: Path) -> None:
    with serving(project, tmp_path, max_connections=4, read_timeout=120.0, idle_timeout=120.0) as server:
        clients = [http.client.HTTPConnection(server.host, server.port, timeout=DEADLINE) for _ in range(4)]
        try:
            assert [health(server, c) for c in clients] == [200] * 4  # four idle keep-alive connections: full
            refused = until_closed(connect(server, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"),
                                   time.monotonic() + DEADLINE)
            assert refused == b"" or refused.startswith(b"HTTP/1.1 503 "), refused[:100]
            assert [health(server, c) for c in clients] == [200] * 4  # the clients inside are still served

            clients.pop().close()  # a slot frees up: a new client gets in
            deadline = time.monotonic() + DEADLINE
            while (status := _try_health(server)) != 200:
                assert time.monotonic() < deadline, f"no slot after a client left (last: {status})"
                time.sleep(0.05)

            stalled = connect(server, b"GET /v2/health/ready HTTP/1.1\r\nHo")  # takes the free slot and hangs
            try:
                deadline = time.monotonic() + DEADLINE  # once it waited over a second, a newcomer takes its slot
                while (status := _try_health(server)) != 200:
                    assert time.monotonic() < deadline, f"the stalled client kept its slot (last: {status})"
                    time.sleep(0.1)
                assert until_closed(stalled, time.monotonic() + DEADLINE).startswith(b"HTTP/1.1 408 ")
            finally:
                stalled.close()
            assert [health(server, c) for c in clients] == [200] * 3
        finally:
            for c in clients:
                c.close()


def _try_health(server: Any) -> int | str:
    try:
        return health(server)
    except (OSError, http.client.HTTPException) as exc:  # refused: closed before or after a 503
        return repr(exc)


def test_with_few_file_descriptors_300_stalled_clients_leave_room_for_a_health_check(project: Any,
                                                                                    tmp_path: Path) -> None:
    """The issue's case: `ulimit -n 256` and 300 clients that hang; the server must keep answering."""
    import subprocess
    import sys

    with project.store() as store:
        store.set_alias(project.model, "few-files", 1, reason="test: file descriptor limit")
    output = tmp_path / "server.log"
    with open(output, "wb") as out:  # `ulimit -n` sets the hard limit too: the server cannot raise it
        proc = subprocess.Popen(["bash", "-c", 'ulimit -n 256 && exec "$@"', "serve", sys.executable, "-m",
                                 "opsloop.serving", "--alias", "few-files", "--port", "0",
                                 "--config", str(project.path / "opsloop.toml"),
                                 "--log-path", str(tmp_path / "log.db")],
                                cwd=project.path, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    stalled: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120  # loading the model in a new process
        while not (found := re.search(r"^listening on http://([\d.]+):(\d+)", output.read_text(), re.MULTILINE)):
            assert proc.poll() is None and time.monotonic() < deadline, f"no server: {output.read_text()}"
            time.sleep(0.1)
        server = types.SimpleNamespace(host=found.group(1), port=int(found.group(2)))
        for _ in range(300):
            try:
                stalled.append(connect(server, b"GET /v2/health/ready HTTP/1.1\r\nHo"))
            except OSError:  # refused (the backlog is full): the server is busy, not down
                pass
        deadline = time.monotonic() + DEADLINE
        while (status := _try_health(server)) != 200:
            assert proc.poll() is None, "the server died"
            assert time.monotonic() < deadline, f"no health check got through (last: {status})"
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        for sock in stalled:
            sock.close()
        proc.terminate()
        proc.wait(timeout=60)
    log = output.read_text()
    assert "at most 192 connections, not 1000" in log
    assert log.count("Traceback") == 0 and log.count("cannot accept connections") <= 2, log[-2000:]


ACCEPT_RETRY = r"""
import asyncio, resource, sys, time
from opsloop.serving.connections import AcceptErrors

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    loop = asyncio.get_running_loop()
    errors = AcceptErrors()
    loop.set_exception_handler(errors)
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    deadline = time.monotonic() + 60
    while errors.reported < 0:  # until accept() ran out of file descriptors
        assert time.monotonic() < deadline, "accept() never failed"
        await asyncio.sleep(0.01)
    server.close()  # what stopping does, while asyncio's retries of accept() are pending
    await asyncio.sleep(1.5)  # they fire after one second
    print("stopped", flush=True)

asyncio.run(main())
"""


def test_accept_retries_pending_when_the_server_stops_print_no_traceback() -> None:
    """CI once printed 2,048 tracebacks on a clean stop: Python 3.11 schedules a retry for each
    failed accept() of a burst (up to the backlog), and each found the listener closed.

    A real event loop and listener limited to 64 file descriptors, and 100 real clients.
    """
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", ACCEPT_RETRY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    clients = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline() or 0)
        assert port, proc.stderr.read() if proc.stderr else ""
        for _ in range(100):
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        out, err = proc.communicate(timeout=120)
    finally:
        for client in clients:
            client.close()
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out.strip() == "stopped", err
    assert "cannot accept connections: [Errno 24]" in err  # the case happened
    assert "Traceback" not in err and "Invalid file descriptor" not in err, err[-2000:]
