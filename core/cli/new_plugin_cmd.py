"""`opsloop new-plugin`: write a plugin package skeleton (issue 11, item 3; `opsloop.scaffold`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

KINDS_HELP = "trainer, preprocess, monitor, policy, deploy, store, source, validator, gate, observer or command"


def new_plugin(
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="The plugin's name, what operators type in opsloop.toml (lowercase, words joined "
                             "by '-'): the package is opsloop-NAME, its module opsloop_NAME.", show_default=False)],
    kind: Annotated[str, typer.Option(
        "--kind", "-k", metavar="KIND", help=f"What the plugin does: {KINDS_HELP}.", show_default=False)],
    directory: Annotated[Path, typer.Option(
        "--dir", "-d", metavar="PATH", help="Where to write opsloop-NAME/ (default: the current directory).",
        file_okay=False)] = Path("."),
    force: Annotated[bool, typer.Option(
        "--force", help="Write into an existing, non-empty opsloop-NAME/ (the skeleton's own files are "
                        "overwritten; other files stay).")] = False,
) -> None:
    """Write a plugin package skeleton: pyproject.toml with the entry point, the module with the kind's hooks
    and an options class, a README, and tests that use opsloop's kit and its conformance suite.

    The package installs (pip install -e ./opsloop-NAME), shows in `opsloop plugins list`, and its tests pass
    as generated; edit the module to make it yours (docs/writing-plugins.md).
    """
    from opsloop.scaffold import generate

    skeleton = generate(name, kind, directory, force=force)
    root = skeleton.root
    typer.echo(f"wrote {root}/ ({kind} plugin {name}):")
    for rel in skeleton.files:
        typer.echo(f"  {rel}")
    typer.echo("next:")
    where = str(root) if root.is_absolute() else f"./{root}"  # pip reads a bare word as a package name
    typer.echo(f"  pip install -e '{where}[test]'")
    typer.echo(f"  cd {root} && pytest && mypy")
