"""Incident windows (a CSV of series, start, end) made into per-step 0/1 labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from opsloop.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("series", "start", "end")
#: The series that stands for every series.
ALL = "*"


def read(path: Path) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """The windows in `path`, each (series, start, end) with tz-naive UTC times.

    Raises DataError naming the file, the row (1 is the first after the header) and the column for a
    missing column, an unparsable or missing time, or an end before its start.
    """
    import pandas as pd

    if not path.is_file():
        raise DataError(f"incidents file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # pandas raises several kinds; all mean "not a CSV we can read"
        raise DataError(f"{path}: cannot read the incidents file as CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: the incidents file has no column {missing[0]!r} (it needs series, start, end; "
                        f"it has {', '.join(table.columns) or 'none'})")
    windows = []
    for row, (series, start, end) in enumerate(table[list(COLUMNS)].itertuples(index=False), start=1):
        series = series.strip()
        if not series:
            raise DataError(f"{path}, row {row}, column 'series': empty (name a series, or * for all)")
        begin, finish = _time(path, row, "start", start), _time(path, row, "end", end)
        if finish < begin:
            raise DataError(f"{path}, row {row}, column 'end': {end.strip()} is before start {start.strip()}")
        windows.append((series, begin, finish))
    return windows


def _time(path: Path, row: int, column: str, text: str) -> pd.Timestamp:
    import pandas as pd

    try:
        moment = pd.Timestamp(text.strip())
    except (ValueError, TypeError):
        moment = None
    if moment is None or pd.isna(moment):
        raise DataError(f"{path}, row {row}, column {column!r}: cannot parse {text!r} as a time (use ISO-8601, "
                        "e.g. 2024-01-08T10:05:00Z)")
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo else moment


def labels(series: pd.Series, times: pd.Series, windows: list[tuple[str, pd.Timestamp, pd.Timestamp]]) -> pd.Series:
    """1 where a row's time lies in a window of its series (start and end included), else 0."""
    import numpy as np
    import pandas as pd

    values = np.zeros(len(times), dtype=np.int64)
    stamps = times.to_numpy()
    names = series.to_numpy()
    for name, start, end in windows:
        inside = (stamps >= start.to_datetime64()) & (stamps <= end.to_datetime64())
        if name != ALL:
            inside &= names == name
        values[inside] = 1
    return pd.Series(values, index=times.index)
