"""`opsloop serve` (the prediction server) and `opsloop feedback` (ground truth for logged predictions)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from opsloop.cli._options import ConfigOption, JsonOption, SetOption
from opsloop.serving.settings import default

if TYPE_CHECKING:
    from opsloop.serving.settings import Settings

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")]
AliasOption = Annotated[str, typer.Option("--alias", "-a", help="Serve the version this alias points at, "
                                                                 "and follow it when it moves.")]
LogPathOption = Annotated[Path | None, typer.Option("--log-path", dir_okay=False,
                                                    help="Prediction log (default: .opsloop/serving/predictions.db).")]


def serve(
    model: ModelOption = None,
    alias: AliasOption = default("alias"),
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = default("host"),
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port (0: any free port).", min=0,
                                      max=65535)] = default("port"),
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413 above).",
                                                min=1)] = default("max_body_bytes"),
    max_rows: Annotated[int, typer.Option("--max-rows", help="Most rows per request (413 above).",
                                          min=1)] = default("max_rows"),
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="Seconds between looks at the alias.",
                                                 min=0.01)] = default("poll_interval"),
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log predictions (no feedback then).")] = False,
    log_path: LogPathOption = None,
    log_max_pending: Annotated[int, typer.Option(
        "--log-max-pending", min=1,
        help="Most predicted rows waiting to be logged; beyond, predictions are answered but not logged "
             "(counted on /metrics).")] = default("log_max_pending"),
    no_fast_path: Annotated[bool, typer.Option("--no-fast-path", help="Always replay preprocessing through the "
                                                                      "plugins (LoadedModel.predict).")] = False,
    threads: Annotated[int, typer.Option("--threads", help="XGBoost threads per prediction (0: all cores).",
                                         min=0)] = default("threads"),
    monitor_report: Annotated[Path | None, typer.Option(
        "--monitor-report", dir_okay=False,
        help="Monitor report whose figures /metrics exports (default: .opsloop/serving/monitor-report.json, "
             "which `opsloop run` writes; or `opsloop run --json` output).")] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server running for this model and alias "
                                                      "(started by `opsloop serve` or the local-http target).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the version an alias points at over HTTP: Open Inference Protocol, JSON records, /metrics.

    Hot-swaps when the alias moves (promote, rollback, deploy); Ctrl-C or SIGTERM
    stops it cleanly, after every logged prediction is written.
    """
    from opsloop.serving.settings import Settings

    settings = Settings(model=model, alias=alias, config=config, overrides=tuple(set_ or ()), host=host, port=port,
                        max_body_bytes=max_body_bytes, max_rows=max_rows, poll_interval=poll_interval,
                        log_predictions=not no_log, log_path=log_path, log_max_pending=log_max_pending,
                        fast_path=not no_fast_path, threads=threads, monitor_report=monitor_report)
    if stop:
        _stop(settings)
        return
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
            _say(f"logging predictions to {app.log.path}")

    run(app, on_ready=ready)


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
    from opsloop.serving.predlog import add_feedback, connect
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
    con = connect(path)  # type: ignore[arg-type]
    try:
        count = add_feedback(con, entries)
    finally:
        con.close()
    if json_:
        print_json({"recorded": count, "log": str(path)})
    else:
        console.print(f"recorded {count} label(s) in {path}")
