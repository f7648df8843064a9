"""A typed source: `typed-csv:FILE` reads a CSV file relative to the config's directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import DataSection


@hookimpl
def load_data(source: str, options: Any, data: DataSection, workdir: Path) -> pd.DataFrame:
    import pandas as pd

    path = workdir / source.removeprefix("typed-csv:")
    if not path.is_file():
        raise DataError(f"typed-csv: no file {path}")
    return pd.read_csv(path)


if TYPE_CHECKING:
    import typed_source

    from opsloop import kinds

    _source: kinds.Source = typed_source
