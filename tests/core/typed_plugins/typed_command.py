"""A typed command plugin: `opsloop typed-command hello NAME`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsloop import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def add_commands(app: typer.Typer) -> None:
    @app.command()
    def hello(name: str) -> None:
        """Greet NAME."""
        print(f"hello {name}")


if TYPE_CHECKING:
    import typed_command

    from opsloop import kinds

    _command: kinds.CommandPlugin = typed_command
