"""`opsloop backtest`: what the loop would have done on a labelled history, against never and always retraining."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.backtest import BacktestResult


def backtest(
    every: Annotated[str | None, typer.Option(
        "--every", metavar="DURATION", help="Replay in chunks of this length (12h, 1d, 7d). Default: 1d.")] = None,
    chunks: Annotated[int | None, typer.Option("--chunks", min=1, help="Replay in N chunks of equal time span.")]
        = None,
    keep: Annotated[Path | None, typer.Option(
        "--keep", file_okay=False, help="Keep the backtest's registry and journal in this directory (default: a "
                                        "temporary one, removed at the end).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the results.")] = False,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Replay the labelled history through the loop's own cycles and compare three strategies per chunk.

    Trains on the training period ([data] train), then, chunk by chunk in
    time order, scores each chunk with the loop's production model, the
    never-retrained model and a model retrained every chunk, and runs one
    loop cycle at the chunk's end (monitor, decide, retrain, gate, promote).
    Nothing is written to the project's registry.
    """
    from opsloop import config as config_mod
    from opsloop.backtest import backtest as run_backtest
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.errors import OpsloopError
    from opsloop.monitoring import parse_duration

    if every is not None and chunks is not None:
        raise OpsloopError("opsloop backtest: give --every DURATION or --chunks N, not both")
    step = parse_duration(every if every is not None else "1d", "--every") if chunks is None else None
    cfg = config_mod.read(config, overrides=set_ or ())
    with RichReporter(quiet=quiet or json_) as reporter:
        result = run_backtest(cfg, every=step, chunks=chunks, reporter=reporter, keep=keep)
    if json_:
        print_json(result.to_json())
    else:
        for renderable in render(result):
            console.print(renderable)


def render(result: BacktestResult) -> list[Any]:
    """Per chunk: the three strategies' main figures and what the cycle did; then the means."""
    from rich.markup import escape

    from opsloop.backtest import STRATEGIES
    from opsloop.cli._render import table

    means = result.means()
    metric = next((m for m in ("pr_auc", "f1", "rmse") if m in means["loop"]), None)
    out: list[Any] = [f"[bold]{escape(result.model)}[/bold] backtest: first version {result.train['version']} on "
                      f"{result.train['rows']:,} rows ({result.train['start']} to {result.train['end']}), then "
                      f"{len(result.chunks)} chunk(s): {result.retrains} retrain(s), {result.promotions} "
                      "promotion(s)" + (f", {result.rollbacks} rolled back on probation" if result.rollbacks else "")
                      + (f", {result.recalibrations} threshold change(s)" if result.recalibrations else "")]
    rows = []
    for c in result.chunks:
        cycle = c.cycle
        did = cycle.status if cycle.status != "keep" else "keep"
        if cycle.gate:
            did += f" ({cycle.gate['metric']} {_num(cycle.gate['challenger'])} vs {_num(cycle.gate['champion'])})"
        probation = cycle.probation or {}
        if probation.get("gates"):
            did += f"; probation of {probation['version']}: {probation['outcome']}"
        recalibrated = cycle.recalibrated or {}
        if recalibrated.get("applied"):
            did += f"; threshold {recalibrated['old']['value']:.4g} -> {recalibrated['new']['value']:.4g}"
        rows.append([c.start.strftime("%Y-%m-%d %H:%M"), f"{c.rows:,}", str(c.positives),
                     *[_num(c.figures[s].get(metric)) if metric else "-" for s in STRATEGIES],
                     c.models["loop"], did])
    out.append(table(f"per chunk ({metric or 'no figure'})",
                     ["chunk start (UTC)", "rows", "positives", "loop", "stale", "always", "loop's model",
                      "cycle at the chunk's end"], rows))
    names = [n for n in means["loop"]]
    out.append(table("mean over chunks", ["strategy", *names],
                     ([s, *[_num(means[s].get(n)) for n in names]] for s in STRATEGIES)))
    if result.incidents:  # what each strategy's alerts did over the whole replay, as a pager sees it
        out.append(table("alerting over the whole replay (docs/alerting.md)",
                         ["strategy", "incidents caught", "median delay (min)", "alerts per series-day",
                          "false alerts per series-day", "pa_f1"],
                         ([s, f"{_count(f.get('incidents_caught'))} of {_count(f.get('incidents'))}",
                           _num(_minutes(f.get("delay_median_s")), ".0f"), _num(f.get("alerts_per_day")),
                           _num(f.get("false_alerts_per_day")), _num(f.get("pa_f1"))]
                          for s, f in result.incidents.items())))
    for c in result.chunks:
        if c.cycle.decision == "retrain" or c.cycle.status == "error":
            why = c.cycle.error or "; ".join(c.cycle.reasons)
            out.append(f"[dim]{c.end.strftime('%Y-%m-%d %H:%M')}[/dim] {c.cycle.status}: {escape(why)}")
    if result.workdir:
        out.append(f"the backtest's registry and journal are in {escape(result.workdir)} "
                   f"(opsloop loop history --set store.uri={escape(result.workdir)}/.opsloop)")
    return out


def _count(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.0f}"


def _minutes(seconds: Any) -> Any:
    return None if seconds is None else seconds / 60


def _num(value: Any, form: str = ".3f") -> str:
    import math

    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, form)
