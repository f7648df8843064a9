"""The `opsloop` command line.

This module only assembles the command groups; `main()` is the one error
boundary: an `OpsloopError` prints one line, anything else one "internal
error" line, both exit 1, and OPSLOOP_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import typer

from opsloop.cli import run as run_cmds
from opsloop.cli.config_cmd import config_app
from opsloop.cli.models import models_app
from opsloop.cli.plugins_cmd import plugins_app
from opsloop.cli import serve as serve_cmds

HELP = """opsloop runs the lifecycle of machine-learning models for IT operations:
preprocess, train, validate, register, deploy, monitor, and retrain when a policy says so.

Start with `opsloop run` (no config needed: it uses embedded server-metric data),
then `opsloop init` to write a config of your own."""


def build_app(argv: Sequence[str] | None = None) -> typer.Typer:
    """The Typer app, with the commands of plugins the config enables."""
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None)  # Rich help costs ~0.1 s of imports; `--help` must stay fast
    app.command("run")(run_cmds.run)
    app.command("validate")(run_cmds.validate)
    app.command("init")(run_cmds.init)
    app.command("serve")(serve_cmds.serve)
    app.command("feedback")(serve_cmds.feedback)
    app.add_typer(config_app, name="config")
    app.add_typer(plugins_app, name="plugins")
    app.add_typer(models_app, name="models")
    _add_plugin_commands(app, list(sys.argv[1:] if argv is None else argv))
    return app


def _config_path(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.partition("=")[2])
    return Path("opsloop.toml")


def _add_plugin_commands(app: typer.Typer, argv: list[str]) -> None:
    """Mount `add_commands` of plugins in `[plugins] enable`; reads only that key, imports only those."""
    path = _config_path(argv)
    try:
        enable = tomllib.loads(path.read_text(encoding="utf-8")).get("plugins", {}).get("enable", [])
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return  # commands that read the config report its problems properly
    if not enable or not isinstance(enable, list):
        return
    from opsloop.errors import OpsloopError
    from opsloop.manager import PluginManager

    pm = PluginManager()
    for name in enable:
        try:
            pm.load(str(name), where="plugins.enable")
            if pm.implements(name, "add_commands"):
                sub = typer.Typer(no_args_is_help=True, help=pm.describe(name) or f"Commands of plugin {name}.")
                pm.call(name, "add_commands", app=sub)
                app.add_typer(sub, name=name)
        except OpsloopError as exc:  # other commands must keep working
            print(f"warning: {exc}", file=sys.stderr)


def invoke(argv: Sequence[str]) -> int:
    """Run the CLI with arguments and return the exit code (the error boundary)."""
    debug = bool(os.environ.get("OPSLOOP_DEBUG"))
    try:
        build_app(argv)(args=list(argv), prog_name="opsloop", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from opsloop.errors import OpsloopError

        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, OpsloopError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"internal error: {exc!r} (this is a bug in opsloop or a plugin; "
                  "set OPSLOOP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Console entry point `opsloop`."""
    sys.exit(invoke(sys.argv[1:]))
