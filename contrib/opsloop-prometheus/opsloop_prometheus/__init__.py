"""Prometheus as an opsloop data source: the plugin `prometheus`.

`[data] source = "prometheus://host:9090"` (or `prometheus+https://...`, or
any `http(s)://` address with `[data] plugin = "prometheus"`) reads the
range queries of `[data.prometheus]` over Prometheus's HTTP API into one
row per series per step: a time column, a series column built from chosen
labels, a float column per query and, from a file of incident windows, a
0/1 label column (issue 10, item 2). See README.md for every option.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import hookimpl

from opsloop_prometheus._options import Options, Query

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Options", "Query", "load_data", "plugin_options"]


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def load_data(source: str, options: Options, data: Any, workdir: Path) -> pd.DataFrame:
    from opsloop_prometheus import _frame

    return _frame.load(source, options, data, Path(workdir))
