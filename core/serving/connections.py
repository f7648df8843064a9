"""Connections: a read timeout and a connection limit on top of uvicorn's httptools protocol.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no
deadline for a request whose headers or body trickle in, and a connection
that never sends a byte stays open for good: sixty such clients held their
sockets for as long as they liked, and with `ulimit -n 256` three hundred of
them left no file descriptor for a health check (issue 8, item 6). So:

- **read timeout**: from the moment a connection opens, or a request's first
  byte arrives, the client has `read_timeout` seconds to send the whole
  request. Then it gets a 408 (or, if it sent nothing, just the close). The
  time the application takes to answer does not count: the deadline ends
  when the request has been read.
- **connection limit**: at most `max_connections` connections are open. A
  new one beyond it takes the slot of the connection that has been waiting
  longest, and more than `EVICT_AFTER` seconds, for its request to arrive
  (the slow clients above); when none has, the new connection is answered
  503 and closed at once. Connections whose request is being answered, and
  idle keep-alive clients, are never closed for a newcomer.

When a burst of connections still exhausts the descriptors (asyncio accepts
many at once, before any can be refused), asyncio stops accepting for a
second and tries again; `Server` reports that once a minute with a count
instead of a traceback every second. Retries still pending when the server
stops find the listener closed; they are dropped without a traceback.

The cost on the request path is a flag or two: a new connection gets one
timer (`loop.call_later`) until its first request is read, and after that
a timer is armed only when a request does not arrive in one read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("opsloop.serving")

#: A connection must have waited this long for its request before a newcomer may take its slot.
EVICT_AFTER = 1.0
#: Seconds between two reports of a recurring error.
REPORT_EVERY = 60.0
#: File descriptors kept free of connections: the prediction log, the store, bundles, the listener.
RESERVED_FILES = 64


def _answer(status: bytes, error: str) -> bytes:
    """A whole response that closes the connection, written straight to the socket."""
    body = json.dumps({"error": error}).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


TIMEOUT_RESPONSE = _answer(b"408 Request Timeout", "the request did not arrive in time (--read-timeout)")
BUSY_RESPONSE = _answer(b"503 Service Unavailable", "too many open connections (--max-connections); try again")


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read deadline per request and a cap on connections.

    `protocol_class` makes a subclass per server carrying its settings and the
    set of connections waiting for a request (oldest first).
    """

    read_timeout: float = 30.0
    max_connections: int = 1000
    waiting: dict[LimitedProtocol, float]  # connection -> when it began waiting; insertion order is age order

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: Any = None
        self._reading = False  # a request is expected or partly received, not yet whole
        self._refused = False

    # -- connections -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections and not self._evict():
            self._refused = True
            self.transport = transport
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)
        self._reading = True
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def _evict(self) -> bool:
        """Close the connection that has waited longest for its request, if it waited long enough."""
        for oldest, since in self.waiting.items():
            if self.loop.time() - since < EVICT_AFTER:
                return False
            oldest._time_out()
            return True
        return False

    # -- the read deadline -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading:
            if self._timer is None:
                self._arm()
        elif self._timer is not None:
            self._disarm()

    def on_message_begin(self) -> None:
        self._reading = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._reading = False
        super().on_message_complete()

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.read_timeout, self._time_out)
        self.waiting[self] = self.loop.time()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.pop(self, None)

    def _time_out(self) -> None:
        """The request did not arrive whole in time (or a newcomer needs the slot): 408 and close."""
        self._disarm()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.scope is self.scope and cycle.response_started
        if self.scope is not None and not answered:  # it sent part of a request; one that sent nothing is closed
            transport.write(TIMEOUT_RESPONSE)
        transport.close()


def protocol_class(read_timeout: float, max_connections: int) -> type[LimitedProtocol]:
    """A `LimitedProtocol` for one server (uvicorn's `Config(http=...)` takes a class)."""
    return type("OpsloopHttpProtocol", (LimitedProtocol,),
                {"read_timeout": read_timeout, "max_connections": connection_limit(max_connections), "waiting": {}})


def connection_limit(wanted: int) -> int:
    """`wanted`, or fewer when the process may not open that many files (after raising the soft limit if it can)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    limit = max(1, soft - min(RESERVED_FILES, soft // 4))
    log.warning("opsloop serve: at most %d connections, not %d: this process may open %d files (ulimit -n)",
                limit, wanted, soft)
    return limit


class Server(uvicorn.Server):
    """uvicorn's server, reporting "out of file descriptors" at accept once a minute, with a count."""

    async def serve(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors())
        await super().serve(sockets)


class AcceptErrors:
    """An event-loop exception handler: accept failures counted and reported once a minute; the rest as usual."""

    def __init__(self) -> None:
        self.count = 0
        self.reported = -REPORT_EVERY

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "._start_serving(" in message and isinstance(context.get("exception"), ValueError):
            # A retry of accept() firing after the listener was closed (the server stopping). Python 3.11
            # schedules one retry per failed accept() of a burst, up to the backlog: 2,048 tracebacks.
            log.debug("opsloop serve: accept retry on a closed listener ignored: %s", context.get("exception"))
            return
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if now - self.reported >= REPORT_EVERY:
            log.error("opsloop serve: cannot accept connections: %s (%d time(s) since the last report; asyncio "
                      "retries every second; see --max-connections and ulimit -n)", context.get("exception"),
                      self.count)
            self.count, self.reported = 0, now
