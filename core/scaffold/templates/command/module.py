"""$title: adds `opsloop $name summary FILE`, which says what a telemetry file holds before you train on it.

Enabled in `[plugins] enable`, the plugin adds its commands under `opsloop
$name`: `summary FILE` reads a CSV or Parquet file and prints its rows,
columns, series, time span and labelled incidents (`--json` for scripts).
Add your own commands to `add_commands` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer  # the command line's own library: opsloop has imported it when it calls add_commands

from opsloop import DataError, hookimpl

if TYPE_CHECKING:
    import pandas as pd

PLUGIN = "$name"


def read(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame; a DataError naming the file otherwise."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{PLUGIN}: no such file: {path}")
    try:
        return pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas and pyarrow raise many kinds
        raise DataError(f"{PLUGIN}: cannot read {path}: {' '.join(str(exc).split())}") from None


def summary(frame: pd.DataFrame, *, series: str, time: str, target: str) -> dict[str, Any]:
    """Rows, columns, series, time span and labelled rows of a telemetry frame."""
    import pandas as pd

    out: dict[str, Any] = {"rows": len(frame), "columns": list(map(str, frame.columns))}
    for option, column in (("--series", series), ("--time", time), ("--target", target)):
        if column and column not in frame.columns:
            raise DataError(f"{PLUGIN}: {option} names column {column!r}, which the file has not "
                            f"(columns: {', '.join(out['columns'])})")
    if series:
        out["series"] = int(frame[series].nunique())
    if time:
        stamps = pd.to_datetime(frame[time], errors="coerce")
        out["first"], out["last"] = str(stamps.min()), str(stamps.max())
    if target:
        out["positive_rows"] = int((frame[target] == 1).sum())
    return out


@hookimpl
def add_commands(app: typer.Typer) -> None:
    """`opsloop $name summary FILE`."""

    @app.command("summary")
    def summary_command(
        file: Annotated[Path, typer.Argument(help="A .csv or .parquet file of telemetry.")],
        series: Annotated[str, typer.Option(help="The series column ('' for none).")] = "entity",
        time: Annotated[str, typer.Option(help="The time column ('' for none).")] = "timestamp",
        target: Annotated[str, typer.Option(help="The label column ('' for none).")] = "label",
        json_: Annotated[bool, typer.Option("--json", help="Print JSON, not text.")] = False,
    ) -> None:
        """Rows, columns, series, time span and labelled rows of a telemetry file."""
        found = summary(read(file), series=series, time=time, target=target)
        if json_:
            typer.echo(json.dumps(found, indent=2))
            return
        for key, value in found.items():
            typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


if TYPE_CHECKING:  # mypy checks the hook against opsloop's: name, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _commands: kinds.CommandPlugin = $module
