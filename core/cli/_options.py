"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: ./opsloop.toml if present, else the built-in defaults).",
                 dir_okay=False),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                 help='Override a config value for this command, e.g. --set train.xgboost.max_depth=4 '
                      '(VALUE is TOML: 4, "text", ["a", "b"]; bare words are strings). Repeatable.'),
]
