"""`opsloop monitor`: the configured monitors on what production scored (the prediction log), per window."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.monitoring import Result


class By(str, enum.Enum):
    """What windows are cut by (`opsloop.monitoring`)."""

    time = "time"
    at = "at"


def monitor(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")] = None,
    alias: Annotated[str, typer.Option("--alias", "-a", help="Monitor the version this alias points at now.")]
        = "production",
    version: Annotated[int | None, typer.Option("--version", "-V", min=1,
                                                help="Monitor this version instead of the alias' one.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="T", help="From this moment (ISO 8601 date or time, UTC unless it has an offset; or a "
                                     "duration ago: 24h, 7d). Default: the first logged row of the version.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", metavar="T", help="Up to this moment, excluded (as --since; default: after the last row).")]
        = None,
    window: Annotated[str | None, typer.Option(
        "--window", "-w", metavar="DURATION",
        help="One report per window of this length (15m, 12h, 1d, 7d), aligned to multiples of it since "
             "1970-01-01 UTC (midnight for days) unless --since is given. Default: one window.")] = None,
    by: Annotated[By, typer.Option(
        "--by", help="Cut windows by the row's own time (the model's time column) or by when it was scored "
                     "(at). A model without a time column is cut by at.")] = By.time,
    log_path: Annotated[Path | None, typer.Option(
        "--log-path", dir_okay=False, help="Prediction log (default: .opsloop/serving/predictions.db).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when any monitor raised an alert (cron, CI).")]
        = False,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the configured monitors ([monitor] plugins) on the predictions a version served, per time window.

    Reads the prediction log (opsloop serve writes it), joins the latest label
    of each row from feedback, and gives every monitor the logged inputs,
    labels and predictions, as `opsloop run` gives it a batch. Reads only:
    nothing is written. With --check, exits 1 when any alert fired.
    """
    from opsloop import config as config_mod
    from opsloop import monitoring
    from opsloop.errors import OpsloopError
    from opsloop.serving.settings import Settings
    from opsloop.session import Session

    step = monitoring.parse_duration(window) if window is not None else None
    start = monitoring.parse_time(since, "--since") if since is not None else None
    end = monitoring.parse_time(until, "--until") if until is not None else None
    cfg = config_mod.read(config, overrides=set_ or ())
    if not cfg.selected("monitor"):
        raise OpsloopError(f"no monitor selected: set [monitor] plugins in {cfg.source} (for example "
                           '["quality-monitor", "drift-monitor"])')
    session = Session.open(cfg, sections=("store", "monitor", "plugins"))  # plugins: observers hear each window
    log = Settings(log_path=log_path).resolve(Path(cfg.workdir).absolute()).log_path
    result = monitoring.monitor(session, model=model or cfg.project.name, alias=alias, version=version,
                                log=log, by=by.value, since=start, until=end, step=step)  # type: ignore[arg-type]
    if json_:
        from opsloop.cli._render import print_json

        print_json(result.to_json())
    else:
        from opsloop.cli._render import console

        for renderable in render(result):
            console.print(renderable)
    if check and result.alerts:
        raise typer.Exit(1)


def render(result: Result) -> list[Any]:
    """A heading, then per window a table of every monitor's figures and its alerts."""
    from rich.markup import escape

    from opsloop.cli._render import table
    from opsloop.cli.summary import figure_rows

    v = result.version
    via = f" (@{result.alias})" if result.alias else ""
    rows = sum(w.rows for w in result.windows)
    labelled = sum(w.labelled for w in result.windows)
    out: list[Any] = [f"[bold]{v.ref}[/bold]{via}: {rows:,} logged rows, {labelled:,} labelled, "
                      f"{len(result.windows)} window(s) by {result.by}; monitors: {', '.join(result.monitors)}; "
                      f"log {escape(str(result.log))}"]
    out.extend(f"[dim]note:[/dim] {escape(note)}" for note in result.notes)
    for w in result.windows:
        title = (f"{_moment(w.start)} → {_moment(w.end)}: {w.rows:,} rows, {w.labelled:,} labelled")
        if not w.rows:
            out.append(f"{title} (no logged rows: not monitored)")
            continue
        out.append(table(title, ["monitor", "figure", "value", "at validation"],
                         ([r.monitor, *row] for r in w.reports for row in figure_rows(r))))
        out.extend(f"[yellow]alert[/yellow] {escape(m)}: {escape(a)}" for m, a in w.alerts)
    out.append(f"{result.alerts} alert(s)" if result.alerts else "no alerts")
    return out


def _moment(moment: Any) -> str:
    """A window edge, short: the date alone at midnight."""
    text = moment.strftime("%Y-%m-%d %H:%M")
    return text[:10] if text.endswith("00:00") and moment.second == 0 else text
