"""Reads `[data] source = "embedded:<name>"`: a dataset that ships inside opsloop (`embedded:asd`).

The source plugin for the `embedded:` scheme; `opsloop.datasets` lists the
sets and their licenses. Takes no options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsloop.hookspecs import hookimpl

if TYPE_CHECKING:
    import pandas as pd


@hookimpl
def load_data(source: str) -> pd.DataFrame:
    from opsloop import datasets
    from opsloop.errors import ConfigError

    name = source.removeprefix("embedded:")
    try:
        return datasets.load(name)
    except KeyError as exc:
        raise ConfigError(exc.args[0], section="data", key="source") from None
