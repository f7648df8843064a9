"""`opsloop tune`: search the trainer's hyperparameters with Optuna, scored by the configured validator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.tuning import TuneResult


def tune(
    trials: Annotated[int | None, typer.Option(
        "--trials", min=1, help="Trials the study should hold at the end (overrides [tune] trials).")] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION", help="Start no trial after this long (10m, 2h; overrides [tune] timeout).")]
        = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", help="Trials at once, in threads; -1 for one per core (overrides [tune] jobs).")] = None,
    register: Annotated[bool, typer.Option(
        "--register", help="Register the best configuration as a version; its lineage names the study and "
                           "trial.")] = False,
    show: Annotated[bool, typer.Option(
        "--show", help="Show the stored study of this search; run no trial.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the results.")] = False,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Search hyperparameters of the selected trainer (and, optionally, which trainer and preprocess
    options) with Optuna, on the space in [tune] (docs/tuning.md).

    Each trial is scored by the configured validator (time-ordered folds on
    telemetry); a trial worse than the median of earlier ones after its first
    folds is pruned. The study is kept beside the registry, so running the
    same search again resumes it. At the end the best configuration is fitted
    again and its figure compared with the best trial's.
    """
    from opsloop import config as config_mod
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.tuning import tune as run_tune

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg)
    with RichReporter(quiet=quiet or json_) as reporter:
        runner = Runner(session, reporter=reporter)
        try:
            result = run_tune(runner, trials=trials, timeout=timeout, jobs=jobs, register=register,
                              show_only=show)
        finally:
            runner.close()
    if json_:
        print_json(result.to_json())
        return
    for renderable in render(result):
        console.print(renderable)


def render(result: TuneResult) -> list[Any]:
    """The best trial, the optimization history, the parameter importances, and the config to paste."""
    from rich.markup import escape

    from opsloop.cli._render import fmt, table

    data = result.to_json()
    search = result.search
    counts = data["counts"]
    out: list[Any] = [
        f"[bold]study {escape(search.study)}[/bold]: {len(data['trials'])} trial(s) stored "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed), {data['ran']} run now; "
        f"{search.direction} {search.metric}"]
    best_rows = [["trial", str(data["best_trial"])], [search.metric, fmt(data["best_value"])]]
    best_rows += [[k, _value(v)] for k, v in data["best_params"].items()]
    if data["refit"]:
        refit = data["refit"]
        best_rows.append(["refit", f"{fmt(refit['value'])} ({'reproduced' if refit['reproduced'] else 'DIFFERS'})"])
    if data["version"]:
        best_rows.append(["registered", data["version"]])
    out.append(table("best trial", ["", "value"], best_rows))
    names = list(data["best_params"])
    shown = data["trials"][-30:]
    rows = [[str(t["number"]), t["state"], fmt(t["value"]) if t["value"] is not None else "-",
             fmt(t["best"]) if t["best"] is not None else "-",
             *[_value(t["params"].get(n)) for n in names],
             (f"pruned after fold {t['pruned_at']}" if t["pruned_at"] else escape((t["error"] or "")[:60]))]
            for t in shown]
    title = "optimization history" + (f" (last {len(shown)} of {len(data['trials'])})"
                                      if len(shown) < len(data["trials"]) else "")
    out.append(table(title, ["trial", "state", search.metric, "best so far", *names, "note"], rows))
    if data["importances"]:
        out.append(table("parameter importances (fANOVA)", ["parameter", "importance"],
                         ([k, f"{v:.3f}"] for k, v in data["importances"].items())))
    for note in data["notes"]:
        out.append(f"[dim]note:[/dim] {escape(note)}")
    out.append("the best configuration, to keep in opsloop.toml:")
    out.append(escape(result.toml().rstrip()))
    return out


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
