"""`opsloop loop` (one cycle, or one every DURATION), `opsloop loop history`, and `opsloop backtest`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.loop import CycleResult

loop_app = typer.Typer(help="Monitor, decide, retrain, gate and promote: the loop, and its journal.")

#: Exit status of a cycle that ended in an error (the journal has it): cron mails it.
FAILED = 1


@loop_app.callback(invoke_without_command=True)
def loop(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit (cron, CI).")] = False,
    every: Annotated[str | None, typer.Option(
        "--every", metavar="DURATION", help="Run a cycle every DURATION (10m, 1h, 1d) until SIGTERM or Ctrl-C.")]
        = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")] = None,
    log_path: Annotated[Path | None, typer.Option(
        "--log-path", dir_okay=False, help="Prediction log (default: .opsloop/serving/predictions.db).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the outcome.")] = False,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the loop: monitor production's logged rows, decide, retrain, gate champion against challenger,
    promote only a winner. Every cycle is journaled in the store (opsloop loop history).

    Exits 1 when a cycle ended in an error (the journal says which); a cycle
    that finds another loop holding the lock does nothing and exits 0.
    SIGTERM ends after the step under way, with nothing half-written.
    """
    if ctx.invoked_subcommand is not None:
        return
    from opsloop.errors import OpsloopError
    from opsloop.monitoring import parse_duration

    if once == (every is not None):
        raise OpsloopError("opsloop loop: give --once (one cycle) or --every DURATION (a cycle every 10m, 1h...)")
    interval = parse_duration(every, "--every") if every is not None else None
    from opsloop import config as config_mod
    from opsloop import history as history_mod
    from opsloop import loop as loop_mod
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.serving.settings import Settings
    from opsloop.session import Session

    overrides = [*(set_ or ()), *([f'project.name="{model}"'] if model else [])]
    cfg = config_mod.read(config, overrides=overrides)
    session = Session.open(cfg, sections=("store", "preprocess", "train", "validate", "monitor", "retrain", "gate",
                                          "plugins"))
    log = Settings(log_path=log_path).resolve(Path(cfg.workdir).absolute()).log_path
    inputs = history_mod.LogInputs(session=session, log=log)
    stop = _stop_on_signals()
    failed = False

    def show(result: CycleResult) -> None:
        nonlocal failed
        failed = failed or result.status == "error"
        if json_:
            print_json(result.to_json())
        else:
            for renderable in render_cycle(result):
                console.print(renderable)

    with RichReporter(quiet=quiet or json_) as reporter:
        def make() -> loop_mod.Cycle:
            return loop_mod.open_cycle(session, inputs, reporter=reporter, stop=stop)

        if interval is None:
            show(make().run())
        else:
            loop_mod.every(make, interval, stop, show)
    if failed and interval is None:
        raise typer.Exit(FAILED)


def _stop_on_signals() -> Any:
    """An event set by SIGTERM and SIGINT (the cycle checks it between steps)."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:  # a second Ctrl-C: the person means it
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling in-process): no handler, no stop
            pass
    return stop


def render_cycle(result: CycleResult) -> list[Any]:
    """A line for the outcome, the reasons, the gate's figures and the notes."""
    from rich.markup import escape

    colour = {"promoted": "green", "error": "red", "rejected": "yellow", "stopped": "yellow", "rolled back": "magenta",
              "waiting": "cyan"}.get(result.status, "")
    status = f"[{colour}]{result.status}[/{colour}]" if colour else result.status
    journal = f" (journal #{result.journal_id})" if result.journal_id is not None else ""
    out: list[Any] = [f"[bold]{escape(result.model)}[/bold] loop cycle at {_when(result)}: {status}, decision "
                      f"{result.decision}{journal}; production "
                      f"{escape(result.production or '-')}" + (f", candidate {result.candidate}"
                                                                if result.candidate else "")]
    if result.error:
        out.append(f"[red]error:[/red] {escape(result.error)}")
    out.extend(f"  - {escape(reason)}" for reason in result.reasons)
    probation = result.probation or {}
    for gate in probation.get("gates") or []:  # the version it replaced is the challenger
        out.append(f"  probation of {escape(probation['version'])}, gate {escape(gate['gate'])}: {gate['metric']} "
                   f"{escape(probation['against'])} {_num(gate['challenger'])} vs {_num(gate['champion'])}, margin "
                   f"{_signed(gate['margin'])}{_interval(gate)}: {probation['outcome']}")
    for gate in result.gates:
        out.append(f"  gate {escape(gate['gate'])}: {gate['metric']} challenger {_num(gate['challenger'])} vs "
                   f"champion {_num(gate['champion'])}, margin {_signed(gate['margin'])}{_interval(gate)}: "
                   f"{gate['winner']} wins")
    out.extend(f"[dim]note:[/dim] {escape(note)}" for note in result.notes)
    from opsloop.cli.summary import monitor_tables

    out.extend(monitor_tables(result.reports))
    return out


def _when(result: CycleResult) -> str:
    return result.now.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _interval(gate: dict[str, Any]) -> str:
    ci = gate.get("ci")
    return f", CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _signed(value: Any) -> str:
    return "-" if value is None else f"{value:+.3f}"


@loop_app.command("history")
def history(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="The newest N cycles.")] = 20,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The loop journal, newest first: when, what was decided and why, the candidate, the gate, promoted or not."""
    from rich.markup import escape

    from opsloop import config as config_mod
    from opsloop.cli._render import console, print_json, table
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    name = model or cfg.project.name
    session = Session.open(cfg, sections=("store",))
    with session.open_store() as store:
        records = store.cycles(name, limit=limit)
    if json_:
        print_json([{**dict(r.body), "id": r.id, "journaled_at": r.at, "status": r.status} for r in records])
        return
    if not records:
        console.print(f"no loop cycles of {name} in the journal yet (opsloop loop --once runs one)")
        return
    rows = []
    for r in records:
        body = dict(r.body)
        body.pop("journal_id", None)
        gate = body.get("gate") or {}
        figures = (f"{gate.get('metric')} {_num(gate.get('challenger'))} vs {_num(gate.get('champion'))} "
                   f"({_signed(gate.get('margin'))})") if gate else "-"
        why = body.get("error") or "; ".join(body.get("reasons") or []) or "-"
        when = str(body.get("at") or r.at)  # the cycle's moment (a backtest's replayed one), else when journaled
        rows.append([str(r.id), when[:19].replace("T", " "), r.status, str(body.get("decision", "-")),
                     escape(str(body.get("production") or "-")), str(body.get("candidate") or "-"), figures,
                     "yes" if body.get("promoted") else "no", escape(why if len(why) < 160 else why[:157] + "...")])
    console.print(table(f"loop journal of {escape(name)}, newest first",
                        ["#", "cycle at (UTC)", "status", "decision", "production", "candidate", "gate", "promoted",
                         "why"], rows))


@loop_app.command("unlock")
def unlock(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Release the loop lock of a model whatever holds it: for a loop killed with no chance to release it
    (kill -9, a lost machine), instead of waiting for [loop] lock_ttl. Make sure no loop is running first."""
    from opsloop import config as config_mod
    from opsloop.cli._render import console
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    name = model or cfg.project.name
    session = Session.open(cfg, sections=("store",))
    probe = "opsloop loop unlock"
    with session.open_store() as store:
        state = store.lock(name, probe, 1.0)  # free: now ours; held: tells who holds it
        store.unlock(name, state.owner)
    if state.acquired:
        console.print(f"the loop lock of {name} was free")
    else:
        console.print(f"released the loop lock of {name}, held by {state.owner} since {state.since}")
