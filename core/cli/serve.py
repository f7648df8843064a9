"""`opsloop serve` (the prediction server) and `opsloop feedback` (ground truth for logged predictions)."""

from __future__ import annotations

import enum
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from opsloop.cli._options import ConfigOption, JsonOption, SetOption
from opsloop.serving.settings import TOKEN_ENV, default, describe

if TYPE_CHECKING:
    from opsloop.serving.settings import Settings


class TokenFor(str, enum.Enum):
    """What the bearer token guards (`Settings.token_for`)."""

    write = "write"
    all = "all"


ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")]
AliasOption = Annotated[str, typer.Option("--alias", "-a", help="Serve the version this alias points at, "
                                                                 "and follow it when it moves.")]
LogPathOption = Annotated[Path | None, typer.Option("--log-path", dir_okay=False,
                                                    help="Prediction log (default: .opsloop/serving/predictions.db).")]


def serve(
    model: ModelOption = None,
    alias: AliasOption = default("alias"),
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = default("host"),
    port: Annotated[int, typer.Option("--port", "-p", help=f"TCP port (0: any free port); {describe('port')}.")]
        = default("port"),
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", help=f"Largest request body (413 above); {describe('max_body_bytes')}.")]
        = default("max_body_bytes"),
    max_rows: Annotated[int, typer.Option(
        "--max-rows", help=f"Most rows per request (413 above); {describe('max_rows')}.")] = default("max_rows"),
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", help=f"Seconds between looks at the alias; {describe('poll_interval')}.")]
        = default("poll_interval"),
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log predictions (no feedback then).")] = False,
    log_path: LogPathOption = None,
    log_max_pending: Annotated[int, typer.Option(
        "--log-max-pending",
        help="Most predicted rows waiting to be logged; beyond, predictions are answered but not logged "
             f"(counted on /metrics); {describe('log_max_pending')}.")] = default("log_max_pending"),
    log_retention: Annotated[str, typer.Option(
        "--log-retention", metavar="DURATION",
        help="Delete logged predictions and labels older than this (30d, 12h, 90m; 0: keep everything); the "
             "log writer prunes at most once a minute.")] = "0",
    no_fast_path: Annotated[bool, typer.Option("--no-fast-path", help="Always replay preprocessing through the "
                                                                      "plugins (LoadedModel.predict).")] = False,
    threads: Annotated[int, typer.Option(
        "--threads", help=f"XGBoost threads per prediction (0: all cores); {describe('threads')}.")]
        = default("threads"),
    monitor_report: Annotated[Path | None, typer.Option(
        "--monitor-report", dir_okay=False,
        help="Monitor report whose figures /metrics exports (default: .opsloop/serving/monitor-report.json, "
             "which `opsloop run` writes; or `opsloop run --json` output).")] = None,
    read_timeout: Annotated[float, typer.Option(
        "--read-timeout",
        help="Seconds a client has to send a whole request (from connecting or its first byte); then 408 "
             f"and close; {describe('read_timeout')}.")] = default("read_timeout"),
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout",
        help=f"Seconds an idle keep-alive connection stays open; {describe('idle_timeout')}.")]
        = default("idle_timeout"),
    max_connections: Annotated[int, typer.Option(
        "--max-connections",
        help="Most open connections; beyond, a newcomer takes the slot of the one waiting longest for its "
             f"request, or gets a 503. Lowered to fit ulimit -n; {describe('max_connections')}.")]
        = default("max_connections"),
    max_feedback: Annotated[int, typer.Option(
        "--max-feedback", help=f"Most feedback entries per request (413 above); {describe('max_feedback')}.")]
        = default("max_feedback"),
    max_series: Annotated[int, typer.Option(
        "--max-series",
        help="Most series whose recent rows are kept for a model with rolling windows; beyond, the least "
             f"recently seen is dropped and read back from the prediction log when it returns; "
             f"{describe('max_series')}.")] = default("max_series"),
    token_env: Annotated[str, typer.Option(
        "--token-env", metavar="NAME",
        help=f"Environment variable holding the bearer token (default {TOKEN_ENV}); when it is set, "
             "POST /v1/feedback needs Authorization: Bearer TOKEN (set but empty: refused). Not on the command "
             "line, where ps shows it.")]
        = TOKEN_ENV,
    token_for: Annotated[TokenFor, typer.Option(
        "--token-for", help="What the token guards: write (POST /v1/feedback) or all (every endpoint but the "
                            "health checks).")] = TokenFor(default("token_for")),
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server running for this model and alias "
                                                      "(started by `opsloop serve` or the local-http target).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the version an alias points at over HTTP: Open Inference Protocol, JSON records, /metrics.

    Hot-swaps when the alias moves (promote, rollback, deploy); Ctrl-C or SIGTERM
    stops it cleanly, after every logged prediction is written. With a token in
    $OPSLOOP_SERVE_TOKEN, feedback (or, with --token-for all, every request but
    health checks) needs `Authorization: Bearer TOKEN`; docs/serving.md#security.
    """
    import attrs
    from opsloop.serving.settings import read_token

    fields = dict(model=model, alias=alias, config=config, overrides=tuple(set_ or ()), host=host, port=port,
                  max_body_bytes=max_body_bytes, max_rows=max_rows, poll_interval=poll_interval,
                  log_predictions=not no_log, log_path=log_path, log_max_pending=log_max_pending,
                  log_retention=log_retention,
                  fast_path=not no_fast_path, threads=threads, monitor_report=monitor_report,
                  read_timeout=read_timeout, idle_timeout=idle_timeout, max_connections=max_connections,
                  max_feedback=max_feedback, max_series=max_series, token_for=TokenFor(token_for).value)
    settings = _settings(fields)
    if stop:
        _stop(settings)
        return
    settings = attrs.evolve(settings, token=read_token(token_env, TokenFor(token_for).value))
    from opsloop.serving.app import create_app
    from opsloop.serving.server import run

    app = create_app(settings)
    served = app.watcher.current
    how = "fast path" if served.scorer.kind == "fast" else f"replay: {served.scorer.reason}"
    _say(f"serving {served.version.ref} as {app.model}@{alias} ({how})")

    def ready(url: str) -> None:
        _say(f"listening on {url}: GET {url}/v2/models/{app.model}, POST {url}/v2/models/{app.model}/infer "
             f"or {url}/predict, GET {url}/metrics (Ctrl-C stops)")
        if app.log is not None:
            from opsloop.serving.settings import show_retention

            kept = f" (retention {show_retention(app.log.retention)})" if app.log.retention else ""
            _say(f"logging predictions to {app.log.path}{kept}")
        if settings.token is not None:
            guarded = "every request but health checks" if settings.token_for == "all" else "POST /v1/feedback"
            _say(f"{guarded} needs the bearer token from ${token_env}")
        elif host not in ("127.0.0.1", "::1", "localhost"):
            _say(f"warning: listening on {host} without a token: anyone who can connect may post feedback "
                 f"(set {TOKEN_ENV}; see docs/serving.md#security)")

    run(app, on_ready=ready)


def _settings(fields: dict[str, object]) -> Settings:
    """`Settings(**fields)`; a number out of its range is one line naming the option (`--poll-interval ...`)."""
    from opsloop.errors import OpsloopError
    from opsloop.serving.settings import OutOfRange, Settings

    try:
        return Settings(**fields)  # type: ignore[arg-type]
    except OutOfRange as exc:
        raise OpsloopError(exc.message("--" + exc.name.replace("_", "-"))) from None


def _say(line: str) -> None:
    """One unwrapped line on stderr (URLs must stay whole for copy and paste)."""
    print(line, file=sys.stderr, flush=True)


def _stop(settings: Settings) -> None:
    """SIGTERM to the server recorded in the state file; wait until it has drained its log."""
    from opsloop import config as config_mod
    from opsloop.cli._render import console
    from opsloop.errors import OpsloopError
    from opsloop.serving.server import alive, is_server, read_state, state_path

    cfg = config_mod.read(settings.config, overrides=settings.overrides)
    name = settings.model or cfg.project.name
    path = state_path(cfg.workdir, name, settings.alias)
    state = read_state(path)
    if state is None or not is_server(state):
        raise OpsloopError(f"no server is running for {name}@{settings.alias} (no live process in {path})")
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        raise OpsloopError(f"server {pid} did not stop within 60 s")
    console.print(f"stopped the server for {name}@{settings.alias} (pid {pid}, {state.get('url')})")


def feedback(
    request_id: Annotated[str | None, typer.Argument(metavar="REQUEST_ID", help="The request id a prediction answered with.")] = None,
    label: Annotated[float | None, typer.Argument(metavar="LABEL", help="The true label (class or value).")] = None,
    row: Annotated[int | None, typer.Option("--row", help="Only this row of the request (default: all).",
                                            min=0)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", dir_okay=False,
        help="Many labels: CSV with a header (request_id[,row],label or [series,]time,label) or JSON lines.")] = None,
    model: ModelOption = None,
    log_path: LogPathOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Record ground truth for logged predictions: `opsloop feedback REQUEST_ID LABEL`, or `--file labels.csv`.

    Labels go into the prediction log, where /metrics (live precision and
    recall) and monitors read them; a label may arrive before its prediction
    is written.
    """
    from opsloop import config as config_mod
    from opsloop.cli._render import console, print_json
    from opsloop.errors import OpsloopError
    from opsloop.serving.feedback import entry, read_file
    import sqlite3

    from opsloop.serving.predlog import LogFileError, add_feedback, connect
    from opsloop.serving.settings import Settings

    cfg = config_mod.read(config, overrides=set_ or ())
    name = model or cfg.project.name
    if file is not None:
        if request_id is not None:
            raise OpsloopError("give either REQUEST_ID LABEL or --file, not both")
        entries = read_file(file, model=name)
    elif request_id is None or label is None:
        raise OpsloopError("give REQUEST_ID and LABEL (or --file FILE); see `opsloop feedback --help`")
    else:
        value = int(label) if float(label).is_integer() and abs(label) < 2 ** 63 else label  # a float beyond int64
        try:
            entries = [entry({"request_id": request_id, "label": value, **({"row": row} if row is not None else {})},
                             model=name, source="cli", where="feedback")]
        except ValueError as exc:
            raise OpsloopError(str(exc)) from None
    path = Settings(log_path=log_path).resolve(Path(cfg.workdir).absolute()).log_path
    if cfg.path is None and log_path is None and not path.exists():  # type: ignore[union-attr]
        # Not in a project: a new log here would keep labels no server reads (issue 8).
        raise OpsloopError(f"no prediction log at {path} and no opsloop.toml in {Path(cfg.workdir).absolute()}: "
                           "run this where the server runs, or give the log with --log-path")
    con = connect(path)  # type: ignore[arg-type]
    try:
        count = add_feedback(con, entries)
    except sqlite3.Error as exc:  # locked for 30 s, read-only, disk full
        raise LogFileError(path, f"cannot write the labels: {exc}") from None  # type: ignore[arg-type]
    finally:
        con.close()
    if json_:
        print_json({"recorded": count, "log": str(path)})
    else:
        console.print(f"recorded {count} label(s) in {path}")
