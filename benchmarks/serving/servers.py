"""Servers under test: start on a free loopback port, wait until ready, account CPU, stop (whole process group)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 (released just before the server binds it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One HTTP request on loopback: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Endpoint:
    """One way to ask a server for predictions."""

    path: str
    #: Rows (dicts of raw columns) -> request body bytes.
    encode: Callable[[list[dict]], bytes]
    #: Response JSON -> one score (or label) per row, to check answers against the raw model.
    parse: Callable[[Any], list[float]]
    #: "score" (P(label = 1) per row) or "label" (predicted class per row).
    answers: str = "score"


@dataclass
class Server:
    """One server process (and its children, in their own process group)."""

    name: str
    cmd: list[str]
    ready_path: str
    #: Protocol name ("json", "v2") -> endpoint.
    endpoints: dict[str, Endpoint]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self, logdir: Path, timeout: float = 180) -> None:
        """Start and wait until `ready_path` answers 200; RuntimeError with the log's tail otherwise."""
        self.log = logdir / f"{self.name}.log"
        cmd = [c.replace("{port}", str(self.port)) for c in self.cmd]
        env = {**os.environ, **(self.env or {})}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   + self.tail())
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.port, "GET", self.ready_path, timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n" + self.tail())

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def predict(self, protocol: str, rows: list[dict]) -> list[float]:
        end = self.endpoints[protocol]
        status, body = request(self.port, "POST", end.path, end.encode(rows))
        if status != 200:
            raise RuntimeError(f"{self.name} ({protocol}): HTTP {status}: {body[:300]!r}")
        return end.parse(json.loads(body))

    def _group(self) -> list[tuple[Path, list[str]]]:
        """(/proc/PID, stat fields after the command) of every live process in the server's group."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rpartition(")")[2].split()
                if self.proc is not None and int(fields[2]) == self.proc.pid:  # pgrp: the session we started
                    out.append((stat.parent, fields))
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in the server's group, reaped children included."""
        return sum(sum(int(x) for x in fields[11:15]) for _, fields in self._group()) / TICK

    def rss_mb(self) -> float:
        """Resident memory of the server's processes, MiB."""
        total = 0
        for proc, _ in self._group():
            with contextlib.suppress(OSError, ValueError, StopIteration):
                line = next(ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("VmRSS:"))
                total += int(line.split()[1])
        return total / 1024

    def stop(self, grace: float = 60) -> float | None:
        """SIGTERM to the group (a clean stop: opsloop drains its prediction log), SIGKILL after `grace` s.

        Returns the seconds the clean stop took, None when it had to be killed (or was not running).
        """
        if self.proc is None or self.proc.poll() is not None:
            return None
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        took: float | None = None
        try:
            self.proc.wait(timeout=grace)
            took = time.monotonic() - started
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        return took
