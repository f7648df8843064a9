"""Running the app under uvicorn (httptools, one process), in the foreground or on a thread.

`run(app)` serves until SIGINT/SIGTERM and, while it runs, keeps a state
file `.opsloop/serving/<model>@<alias>.json` (pid, host, port, url, log) so
that the `local-http` deploy target and `opsloop serve --stop` can find the
server; the file is removed on a clean stop. `ServerThread(app)` runs the
same server on a thread of the calling process (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import uvicorn
    from opsloop.serving.app import ServingApp

from opsloop.serving.settings import SERVING_DIR

log = logging.getLogger("opsloop.serving")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); OSError naming the address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it the body, written after the headers, waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listen now: the state file and `on_ready` announce the address before uvicorn starts, and a
    # client connecting in between must wait in the backlog, not be refused.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def config(app: ServingApp, sock: socket.socket) -> uvicorn.Config:
    """uvicorn's settings for speed: httptools, no access log, no proxy-header middleware.

    The protocol is httptools' with a read deadline and a connection limit
    (`opsloop.serving.connections`); keep-alive connections idle for
    `idle_timeout` seconds are closed.
    """
    import uvicorn
    from opsloop.serving.connections import protocol_class

    settings = app.settings
    host, port = sock.getsockname()[:2]
    return uvicorn.Config(app, host=host, port=port, lifespan="on", interface="asgi3",
                          http=protocol_class(settings.read_timeout, settings.max_connections),
                          timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]  # a float works
                          access_log=False, log_level="warning", proxy_headers=False, server_header=False,
                          timeout_graceful_shutdown=30)


def state_path(workdir: Path, model: str, alias: str) -> Path:
    """Where a server for `model@alias` run from `workdir` records itself."""
    return Path(workdir) / SERVING_DIR / f"{model}@{alias}.json"


def read_state(path: Path) -> dict[str, Any] | None:
    """A state file's content, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    if pid <= 0:  # kill(0, ...) would address our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


#: Seconds a state file's `started_at` may precede its process's start (clock steps); beyond, the pid is reused.
START_SLACK = 60.0


def is_server(state: dict[str, Any] | None) -> bool:
    """Whether a state file's process still runs and is the opsloop server that wrote the file: not a pid the
    system gave to another process after the server died uncleanly (SIGKILL, OOM), even another opsloop one
    (a `loop --every`, say: SIGTERM must not reach it). A process started after the file was written is not
    its server. Without /proc (macOS) a live pid is trusted."""
    pid = (state or {}).get("pid")
    if not isinstance(pid, int) or not alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if b"opsloop" not in command:
        return False
    started, written = process_start(pid), (state or {}).get("started_at")
    return started is None or not isinstance(written, (int, float)) or started <= written + START_SLACK


def process_start(pid: int) -> float | None:
    """When a process started (epoch seconds, from /proc), or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run(app: ServingApp, *, host: str | None = None, port: int | None = None, state: bool = True,
        on_ready: Any = None) -> None:
    """Serve until SIGINT/SIGTERM; then drain the prediction log and return.

    Args:
        app: From `create_app`.
        host, port: Default: the app's settings.
        state: Keep the state file for `local-http` and `--stop`.
        on_ready: Called with the URL once the socket listens (before serving).
    """
    from opsloop.serving.connections import Server

    settings = app.settings
    sock = bind(host or settings.host, settings.port if port is None else port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{_url_host(bound_host)}:{bound_port}"
    path = state_path(settings.workdir, app.model, settings.alias) if state else None  # type: ignore[arg-type]
    kept, keeper = threading.Event(), None
    if path is not None:
        record = {"pid": os.getpid(), "host": bound_host, "port": bound_port, "url": url, "model": app.model,
                  "alias": settings.alias, "started_at": time.time(), "log": str(settings.log_path)}
        try:
            _write_state(path, record)
        except OSError as exc:  # a read-only working directory (issue 8): serve, but say what is lost
            log.warning("opsloop serve: cannot write the state file %s (%s): `opsloop serve --stop` and the "
                        "local-http target will not find this server; stop it with Ctrl-C or SIGTERM",
                        path, exc.strerror or exc)
            path = None
    if path is not None:
        keeper = threading.Thread(target=_keep_state, args=(path, record, kept, settings.poll_interval),
                                  name="opsloop-state", daemon=True)
        keeper.start()
    if on_ready is not None:
        on_ready(url)
    try:
        with _quiet_signals():
            Server(config(app, sock)).run(sockets=[sock])
    finally:
        kept.set()
        if keeper is not None:
            keeper.join()  # before the state file is removed: never written again after that
        app.close()  # the lifespan normally did; a failed start must still drain
        sock.close()
        if path is not None and (read_state(path) or {}).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def _write_state(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _keep_state(path: Path, record: dict[str, Any], stop: threading.Event, interval: float) -> None:
    """Write the state file again when it is deleted or overwritten: `--stop` must find us (issue 8).

    Overwritten means it holds anything but this server's record, unless it is
    the record of another live server (one started later for the same model
    and alias owns the file then). A failure is said once, not at every poll,
    and again only after a success.
    """
    failing = False
    while not stop.wait(interval):
        state = read_state(path)
        if state == record or state is not None and state.get("pid") != record["pid"] and is_server(state):
            continue
        what = "deleted" if state is None and not path.exists() else "overwritten"
        try:
            _write_state(path, record)
        except OSError as exc:
            if not failing:
                log.error("opsloop serve: the state file %s was %s and cannot be written again: %s", path, what, exc)
            failing = True
        else:
            failing = False
            log.warning("opsloop serve: the state file %s was %s; written again", path, what)


@contextlib.contextmanager
def _quiet_signals() -> Any:
    """Let a SIGTERM/SIGINT end `run` normally (exit code 0, state file removed).

    uvicorn shuts down gracefully on these signals and then re-raises them to
    the handlers it found; with Python's defaults that would kill the process
    before the state file is removed. These handlers take the re-raised signal
    and do nothing more.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ServerThread:
    """The server on a background thread of this process: `with ServerThread(app) as server: server.url`."""

    def __init__(self, app: ServingApp, host: str = "127.0.0.1", port: int = 0) -> None:
        from opsloop.serving.connections import Server

        self.app = app
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self.server = Server(config(app, self.sock))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="opsloop-serve", daemon=True)

    def start(self, timeout: float = 30) -> Self:
        """Start and wait until it accepts requests."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the opsloop server did not start (see its log output)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """A clean stop: in-flight requests finish, the log is drained."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.app.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
