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
from typing import Any

import typer

HELP = """opsloop runs the lifecycle of machine-learning models for IT operations:
preprocess, train, validate, register, deploy, monitor, and retrain when a policy says so.

Start with `opsloop run` (no config needed: it uses embedded server-metric data),
then `opsloop init` to write a config of your own."""


def _defer_typer_adapters() -> None:
    """Build Typer's pydantic adapter of a parameter only for a value that needs one (issue 8, item 14).

    Typer 0.29 builds a pydantic `TypeAdapter` for each parameter it processes,
    even one left out (its value is None, which Typer's coercion returns before
    using the adapter): `opsloop models list --json` imported pydantic (~0.1 s)
    for its `--help`, `--config` and `--set` alone. Here the adapter is built on
    the first value that is not None, and coercion is otherwise Typer's own.
    Other Typer versions, without these internals, are left alone.
    """
    import dataclasses

    try:
        from typer import _coercion, core
    except ImportError:
        return
    build = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if build is None or base is None or getattr(build, "deferred", False):
        return

    @dataclasses.dataclass(frozen=True)
    class Deferred(base):  # type: ignore[misc, valid-type]
        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            real = build(self.descriptor)
            param._runtime_param = real  # Typer's own cache: built once per parameter, as before
            return real._coerce_value(value, param=param, ctx=ctx)

    def deferred(descriptor: Any) -> Any:
        return Deferred(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
                        descriptor=descriptor)

    deferred.deferred = True  # type: ignore[attr-defined]
    core.build_runtime_param = deferred


#: Commands (module, function) and command groups (module, Typer app), by name, in help order.
COMMANDS = {"run": ("run", "run"), "validate": ("run", "validate"), "init": ("run", "init"),
            "serve": ("serve", "serve"), "feedback": ("serve", "feedback"), "monitor": ("monitor_cmd", "monitor"),
            "backtest": ("backtest_cmd", "backtest"), "tune": ("tune_cmd", "tune"),
            "report": ("report_cmd", "report"),
            "new-plugin": ("new_plugin_cmd", "new_plugin")}
GROUPS = {"config": ("config_cmd", "config_app"), "plugins": ("plugins_cmd", "plugins_app"),
          "models": ("models", "models_app"), "loop": ("loop_cmd", "loop_app"), "data": ("data_cmd", "data_app"),
          "deploy": ("deploy_cmd", "deploy_app")}


def build_app(argv: Sequence[str] | None = None) -> typer.Typer:
    """The Typer app, with the commands of plugins the config enables.

    A command line that names a built-in command mounts that one alone: Typer
    turns every mounted command into a Click command before parsing, and
    `opsloop plugins list` need not pay for `serve`'s and `models`' options
    (issue 8, item 14). Anything else (`--help`, no command, a plugin's
    command, a misspelt one) mounts them all. Plugins' commands are always
    mounted (`add_commands` is called at every start, as documented).
    """
    _defer_typer_adapters()
    argv = list(sys.argv[1:] if argv is None else argv)
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None)  # Rich help costs ~0.1 s of imports; `--help` must stay fast
    app.callback()(_group)  # a group even when one command is mounted
    wanted = argv[0] if argv and argv[0] in {*COMMANDS, *GROUPS} else None
    from importlib import import_module

    for name, (module, attr) in COMMANDS.items():
        if wanted in (None, name):
            app.command(name)(getattr(import_module(f"opsloop.cli.{module}"), attr))
    for name, (module, attr) in GROUPS.items():
        if wanted in (None, name):
            app.add_typer(getattr(import_module(f"opsloop.cli.{module}"), attr), name=name)
    _add_plugin_commands(app, argv)
    return app


def _group() -> None:
    pass


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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
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
