"""The opsloop leg: `opsloop serve` of `NAME@production`, its defaults on (schema checks, replay, prediction log).

`opsloop serve` when the CLI has the command, else `python -m opsloop.serving`
(the same `serve` function, without the rest of the CLI). Extra `opsloop
serve` options, e.g. `--no-fast-path`, come from `benchmarks/serving.py
--opsloop-args`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from servers import Endpoint, Server

CLI = [sys.executable, "-c", "from opsloop.cli import main; main()"]


def command() -> list[str]:
    """How to start the server: the CLI's `serve` when it is mounted."""
    probe = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode == 0 and "--alias" in probe.stdout:
        return [*CLI, "serve"]
    return [sys.executable, "-m", "opsloop.serving"]


def opsloop_server(model, workdir: Path, threads: int, extra: str = "", *, name: str = "opsloop") -> Server:
    """`opsloop serve` of `model` in its project `workdir` (each server its own project: its own log)."""
    from legs import instances, omp_env, v2_encoder, v2_scores

    cmd = [*command(), "--model", model.name, "--alias", "production", "--host", "127.0.0.1", "--port", "{port}",
           "--threads", str(threads), *shlex.split(extra)]
    return Server(name=name, cmd=cmd, cwd=workdir, env=omp_env(threads), ready_path="/v2/health/ready",
                  endpoints={"json": Endpoint("/predict", instances, lambda r: [p["score"] for p in r["predictions"]]),
                             "v2": Endpoint(f"/v2/models/{model.name}/infer", v2_encoder(model), v2_scores)})


def describe(server: Server) -> str:
    """What the running server says about the version it serves (scorer kind), for the report."""
    from servers import request

    status, body = request(server.port, "GET", "/")
    if status != 200:
        return f"GET / answered {status}"
    info = json.loads(body)
    return ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("docs", "server") and v not in ("", None) and not isinstance(v, dict))


def log_state(server: Server) -> dict[str, float]:
    """The prediction log's queue (requests not yet written), rows written and rows answered but not logged
    (the queue was full), from `/metrics`: counters over the server's life (a leg takes differences)."""
    from servers import request

    wanted = {"opsloop_prediction_log_queue": "log_queue", "opsloop_prediction_log_rows_total": "log_rows",
              "opsloop_prediction_log_dropped_total": "log_dropped"}
    status, body = request(server.port, "GET", "/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines() if status == 200 else ():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out
