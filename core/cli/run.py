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
) -> None:
    """Run the lifecycle once: preprocess, train, validate, register, deploy, monitor, decide, retrain.

    With no opsloop.toml, runs on the embedded ASD server-metric data.
    """
    from opsloop import config as config_mod
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.cli.summary import run_summary
    from opsloop.runner import Runner
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg)
    with RichReporter(quiet=quiet or json_) as reporter:
        runner = Runner(session, reporter=reporter)
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
