"""Reads `[data] source` from a file: CSV, TSV, Parquet (optionally gzipped), or a folder of Parquet files.

The source plugin for a path or a `file:` URI (the default): relative paths
resolve against the config file's directory. A folder is read as one Parquet
dataset (every `.parquet` file under it, as pandas and pyarrow read
partitioned data: a `key=value` folder becomes a column). Takes no options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from opsloop.hookspecs import hookimpl

if TYPE_CHECKING:
    import pandas as pd


@hookimpl
def load_data(source: str, workdir: Path) -> pd.DataFrame:
    from opsloop.data import read_table
    from opsloop.errors import ConfigError

    if source.startswith("embedded:"):  # `[data] plugin = "files"` on an embedded source
        raise ConfigError(f"{source!r} is an embedded dataset, not a file: leave [data] plugin unset (the "
                          "embedded source reads it)", section="data", key="plugin")
    return read_table(source, Path(workdir))

