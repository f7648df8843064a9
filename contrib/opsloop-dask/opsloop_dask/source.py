"""`dask-parquet`: a `[data] source` of Parquet files read with `dask.dataframe`, partition by partition.

`source = "dask-parquet:data/metrics"` (a folder of Parquet files, read in name order; a file; or a glob)
is read lazily: the rows never come to the process that runs `opsloop`. opsloop's core gets the Dask
DataFrame back from `load_data` and runs everything on its partitions through `map_partitions`
(opsloop_dask.engine, implemented here too), on the cluster `[data.dask-parquet]` names (a `scheduler`, or
a `LocalCluster` with the options of `dask-xgboost`). Pair it with `[train] plugins = ["dask-xgboost"]`;
docs/scale.md says what runs where.

The rule for windowed features: each series' rows in time order across partitions (one file per day,
say), as `dask-batch` needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import hookimpl
from opsloop.errors import DataError, OpsloopError

from opsloop_dask import engine
from opsloop_dask.cluster import ClusterOptions, client_for, documented
from opsloop_dask.engine import map_partitions  # noqa: F401 - the engine hook, on the plugin the run loads

if TYPE_CHECKING:
    from opsloop.config import DataSection

PLUGIN = "dask-parquet"
PREFIX = "dask-parquet:"


@documented
@attrs.frozen(kw_only=True)
class Options(ClusterOptions):
    """Options of `dask-parquet` (`[data.dask-parquet]`): where the partitions are read and worked on.

    Attributes:
        blocksize: Split files into partitions of about this many bytes ("128MiB"); None: one partition per
            file (or per row group when `split_row_groups`).
        split_row_groups: A partition per Parquet row group instead of per file.
    """

    blocksize: str | None = None
    split_row_groups: bool = False


@hookimpl
def plugin_options() -> type:
    return Options


def _path(source: str, workdir: Path) -> str:
    text = source.removeprefix(PREFIX)
    if text.startswith("//"):
        text = text[2:]
    if not text:
        raise DataError(f'{PLUGIN}: [data] source "{source}" names no path (dask-parquet:<folder of Parquet files>)')
    if any(ch in text for ch in "*?["):
        return str(text if Path(text).is_absolute() else workdir / text)
    path = Path(text) if Path(text).is_absolute() else workdir / text
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise DataError(f"{PLUGIN}: folder {path} holds no .parquet file")
    elif not path.is_file():
        raise DataError(f"{PLUGIN}: {path} not found ([data] source {source!r})")
    return str(path)


@hookimpl
def load_data(source: str, options: Options | None, data: DataSection, workdir: Path) -> Any:
    """The Parquet files as a Dask DataFrame on the cluster (nothing is read here but their schema)."""
    import dask.dataframe as dd
    import pandas as pd

    options = options or Options()
    path = _path(source, workdir)
    try:
        client = client_for(options, PLUGIN)
    except OpsloopError as exc:  # cluster.py names the deploy section for plugins other than the trainer
        raise type(exc)(str(exc).replace(f"[deploy.{PLUGIN}]", f"[data.{PLUGIN}]")) from None
    engine.use(client)
    kwargs: dict[str, Any] = {}
    if options.blocksize:
        kwargs["blocksize"] = options.blocksize
    if options.split_row_groups:
        kwargs["split_row_groups"] = True
    try:
        frame = dd.read_parquet(path, **kwargs)
    except Exception as exc:  # pyarrow raises many kinds; all mean "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{PLUGIN}: cannot read the Parquet files at {path}: {first}") from None
    # Dask reads text as pandas' "string" (missing: NA); pandas reads the same files as "str" (missing: NaN).
    # Text columns get pandas' own dtype, so that the input schema, the states and the scores are a single
    # process's.
    text = {c: "str" for c, t in frame.dtypes.items() if isinstance(t, pd.StringDtype) and t.na_value is pd.NA}
    return frame.astype(text) if text else frame
