"""`opsloop run` and `opsloop init`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption


def run(
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the summary.")] = False,
    promote: Annotated[bool, typer.Option(
        "--promote", help="Point production at the version this run registers (or reuses). Without it, "
                          "production moves only when no version holds it yet.")] = False,
) -> None:
    """Run the lifecycle once: preprocess, train, validate, register, deploy, monitor, decide, retrain.

    With no opsloop.toml, runs on the embedded ASD server-metric data. A run on the same training
    rows, config and plugin versions as a registered version reuses it (`unchanged: NAME:N`).
    Deploy and monitor act on the version production points at after the run.
    """
    from opsloop import config as config_mod
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.cli.summary import run_summary
    from opsloop.runner import Runner
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg)
    with RichReporter(quiet=quiet or json_) as reporter:
        runner = Runner(session, reporter=reporter, promote=promote)
        try:
            result = runner.run_once()
        finally:
            runner.close()
    if json_:
        print_json(result.to_json())
    else:
        for renderable in run_summary(result, cfg):
            console.print(renderable)


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("opsloop.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter opsloop.toml."""
    from opsloop.cli._render import console
    from opsloop.config import starter_text
    from opsloop.errors import OpsloopError

    if path.exists() and not force:
        raise OpsloopError(f"{path} exists; use --force to overwrite it")
    path.write_text(starter_text(), encoding="utf-8")
    console.print(f"wrote {path}: edit it, check it with `opsloop config check`, run it with `opsloop run`")


def validate(
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the results.")] = False,
) -> None:
    """Preprocess and validate the training period; register nothing.

    Prints per-fold metrics with their mean and standard deviation, checks
    `[validate] gates`, and exits 1 when a gate fails (for CI pipelines).
    """
    from opsloop import config as config_mod
    from opsloop.cli._render import RichReporter, console, fmt, print_json, table, threshold_table
    from opsloop.gates import GateFailed
    from opsloop.runner import Runner
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg)
    with RichReporter(quiet=quiet or json_) as reporter:
        runner = Runner(session, reporter=reporter)
        try:
            reports, results = runner.validate_only()
        finally:
            runner.close()
    failed = [r for r in results if not r.passed]
    threshold = runner.result.thresholds[0] if runner.result.thresholds else None
    if json_:
        print_json({"reports": [r.summary() for r in reports],
                    "gates": [{"gate": str(r.gate), "value": r.value, "passed": r.passed} for r in results],
                    "passed": not failed, "threshold": threshold})
    else:
        for report in reports:
            keys = list(report.mean)
            rows = [[str(i + 1), *(fmt(fold.get(k, float("nan"))) for k in keys)] for i, fold in enumerate(report.folds)]
            rows.append(["mean", *(fmt(report.mean[k]) for k in keys)])
            rows.append(["std", *(fmt(report.std.get(k, float("nan"))) for k in keys)])
            console.print(table(report.method, ["fold", *keys], rows))
        if threshold is not None:
            console.print(threshold_table(threshold))
        for r in results:
            console.print(f"[{'green' if r.passed else 'red'}]gate[/] {r}")
    if failed:
        raise GateFailed(failed)
