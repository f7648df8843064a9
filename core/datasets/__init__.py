"""Small real IT-operations datasets shipped inside opsloop.

For tests, demos and tutorials that need real server metrics without a
download. Each dataset is one Parquet file in this package, next to its
license; ``README.md`` here gives the source, the license and the columns.

- ``asd``: ASD (Application Server Dataset, Li et al., KDD '21), the labelled
  15-day test period of 12 servers: columns ``entity``, ``timestamp``
  (synthetic 5-minute clock), ``m01``..``m19`` (float32 in [0, 1]) and
  ``label`` (int8, 1 = inside a labelled anomaly); 51,840 rows. MIT License,
  Copyright (c) 2021 zhhlee (``LICENSE-ASD``).

Example:
    >>> from opsloop import datasets
    >>> frame = datasets.load("asd")
    >>> int(frame.loc[frame["entity"] == "omi-1", "label"].sum())
    441

pandas is imported inside `load`, so importing this module stays cheap.
"""

from __future__ import annotations

import pathlib
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import pandas as pd

__all__ = ["EMBEDDED", "load", "path"]

EMBEDDED: dict[str, str] = {"asd": "asd.parquet"}
"""Dataset name -> file name in this package."""


def _resource(name: str) -> Traversable:
    try:
        filename = EMBEDDED[name]
    except KeyError:
        available = ", ".join(sorted(EMBEDDED))
        raise KeyError(f"no embedded dataset {name!r}; available: {available}") from None
    return resources.files(__name__).joinpath(filename)


def path(name: str) -> pathlib.Path:
    """Return the path of an embedded dataset's file.

    Args:
        name: A key of `EMBEDDED`, such as ``"asd"``.

    Returns:
        The Parquet file inside the installed package. Read it, never write it.

    Raises:
        KeyError: ``name`` is not an embedded dataset; the message lists the
            available names.
        FileNotFoundError: opsloop is installed somewhere that is not a
            directory (a zip file, for instance); use `load` instead.
    """
    resource = _resource(name)
    if not isinstance(resource, pathlib.Path):
        raise FileNotFoundError(
            f"embedded dataset {name!r} is not a file on disk ({resource}); use load({name!r})"
        )
    return resource


def load(name: str = "asd") -> pd.DataFrame:
    """Read an embedded dataset into a DataFrame.

    Args:
        name: A key of `EMBEDDED`; defaults to ``"asd"``.

    Returns:
        A new DataFrame with a fresh RangeIndex; for ``"asd"``, 51,840 rows
        sorted by entity number (omi-1, omi-2, ..., omi-12), then timestamp.

    Raises:
        KeyError: ``name`` is not an embedded dataset; the message lists the
            available names.
    """
    import pandas as pd

    resource = _resource(name)
    if isinstance(resource, pathlib.Path):
        return pd.read_parquet(resource)
    with resource.open("rb") as stream:
        return pd.read_parquet(stream)
