"""Batch predictions into the prediction log, in bulk and by column (issue 9, item 2).

`opsloop serve` logs each request through a queue and a writer thread
(`opsloop.serving.predlog`). A batch run (the `batch` deploy target) has all
its rows at hand, a chunk at a time, so it writes them directly into the same
file and tables: one request id for the run, rows numbered across chunks,
one transaction per chunk. Nothing is formatted row by row in Python:

- `inputs`, the row as a JSON object, is built for a whole chunk by Arrow
  compute kernels (numbers cast to text in C++: float32 in its shortest form,
  `0.56` and not `0.5600000023841858`, as a client would send it; text
  escaped once per distinct value; every column's texts joined with the
  keys in one call), in the input schema's column order;
- the key columns (`series`, `time`) are formatted the same way, times in
  SQLite's `datetime()` form (UTC, whole seconds), which is what feedback by
  key compares with;
- the rows go to SQLite through one `executemany` over column lists.

A missing or non-finite number is `null` in `inputs` (JSON has no NaN), as
on the server. The retention (`opsloop.serving.predlog.prune`) is applied
when the run's rows are written.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.serving.predlog import KEY_TIME, LogFileError, connect, iso, prune

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: One row of a batch; ?7 is a time already in SQLite's datetime() form (or NULL).
INSERT = ("INSERT INTO predictions (request_id, row, at, model, version, series, time, inputs, prediction, score) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
#: The same, for time values of another kind (numbers, text): SQLite reads them as the server's path does.
INSERT_KEYED = INSERT.replace("?7,", f"{KEY_TIME.format('?7')},")
#: Text columns with more distinct values than this share of their rows are escaped value by value.
DISTINCT_SHARE = 0.5


class BatchLog:
    """The predictions of one batch run, written into the prediction log chunk by chunk.

    Args:
        path: The log file (created with its tables when new).
        request_id: The run's request id: every row is logged under it, numbered from 0.
        model, version: What scored the rows.
        columns: The input schema's columns, in order: what `inputs` holds.
        series, time: The bundle's series and time columns, or None.
        retention: Seconds to keep rows (0: everything), applied on `close`.
    """

    def __init__(self, path: Path, *, request_id: str, model: str, version: int, columns: list[str],
                 series: str | None, time: str | None, retention: float = 0.0, at: float | None = None) -> None:
        self.path = Path(path)
        self.request_id, self.model, self.version = request_id, model, version
        self.columns, self.series, self.time = list(columns), series, time
        self.retention = retention
        self.at = iso(_now() if at is None else at)
        self.rows = 0
        self.pruned = 0
        self._con = connect(self.path)  # LogFileError names the file, before anything is scored

    def add(self, frame: pd.DataFrame, predictions: Any, scores: Any | None) -> None:
        """Log one chunk: its rows (input columns as in the schema), predictions and scores, in one transaction."""
        import sqlite3

        n = len(frame)
        if not n:
            return
        inputs = json_objects(frame, [c for c in self.columns if c in frame.columns]).to_pylist()
        series = _text(frame[self.series]) if self.series and self.series in frame else itertools.repeat(None, n)
        keyed = False
        if self.time and self.time in frame:
            times, keyed = _times(frame[self.time])
        else:
            times = itertools.repeat(None, n)
        preds = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
        score_list = itertools.repeat(None, n) if scores is None else \
            (scores.tolist() if hasattr(scores, "tolist") else list(scores))
        repeat = itertools.repeat
        rows = zip(repeat(self.request_id), range(self.rows, self.rows + n), repeat(self.at), repeat(self.model),
                   repeat(self.version), series, times, inputs, preds, score_list)
        try:
            with self._con:
                self._con.execute("BEGIN")
                self._con.executemany(INSERT_KEYED if keyed else INSERT, rows)
        except sqlite3.Error as exc:
            raise LogFileError(self.path, f"cannot log the batch's predictions: {exc}") from None
        self.rows += n

    def close(self) -> None:
        """Apply the retention (when due) and let go of the file."""
        import sqlite3

        try:
            self.pruned = prune(self._con, self.retention) or 0
        except sqlite3.Error as exc:
            raise LogFileError(self.path, f"cannot delete rows older than the retention: {exc}") from None
        finally:
            self._con.close()


def _now() -> float:
    return time.time()


def json_objects(frame: pd.DataFrame, columns: list[str]) -> pa.StringArray:
    """Each row of `frame` as a JSON object of `columns` (in that order), as one Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:
        return pa.array(["{}"] * len(frame), pa.string())
    parts: list[Any] = []
    for k, name in enumerate(columns):
        parts.append(("{" if k == 0 else ",") + json.dumps(str(name)) + ":")
        parts.append(json_values(frame[name]))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def json_values(column: pd.Series) -> pa.StringArray:
    """A column's values as JSON texts: numbers in their shortest form, null for missing and non-finite ones."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = column.dtype
    null = pa.scalar("null", pa.string())
    if pd.api.types.is_bool_dtype(dtype):
        values = pa.array(column, from_pandas=True, type=pa.bool_())
        return pc.fill_null(values.cast(pa.string()), null)
    if pd.api.types.is_float_dtype(dtype):
        values = pa.array(column.to_numpy(), from_pandas=True)  # NaN -> null
        values = pc.if_else(pc.is_inf(values), pa.scalar(None, values.type), values)
        texts = values.cast(pa.string())
        # Whole numbers as floats, as Python writes them (1.0, not Arrow's 1): readers then type the column float.
        plain = pc.and_(pc.equal(pc.find_substring(texts, "."), -1), pc.equal(pc.find_substring(texts, "e"), -1))
        texts = pc.if_else(plain, pc.binary_join_element_wise(texts, ".0", ""), texts)
        return pc.fill_null(texts, null)
    if pd.api.types.is_integer_dtype(dtype):
        return pc.fill_null(pa.array(column, from_pandas=True).cast(pa.string()), null)
    if isinstance(dtype, pd.DatetimeTZDtype) or np.issubdtype(getattr(dtype, "type", object), np.datetime64):
        return _iso_times(column)
    return _json_texts(column)


def _iso_times(column: pd.Series) -> pa.StringArray:
    """Times as `Timestamp.isoformat()` writes them, quoted: `"2024-01-01T00:05:00"` (UTC with `+00:00` if aware)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    aware = isinstance(column.dtype, pd.DatetimeTZDtype)
    if aware:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    stamps = pa.array(column.astype("datetime64[ns]"), from_pandas=True)
    seconds = stamps.cast(pa.timestamp("s"), safe=False)
    whole = pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%S")
    # Sub-second times keep their fraction (Arrow writes all nine digits); whole seconds are written without.
    fraction = pc.not_equal(stamps.cast(pa.int64()), pc.multiply(seconds.cast(pa.int64()), 1_000_000_000))
    if pc.any(fraction).as_py():
        whole = pc.if_else(fraction, pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S"), whole)
    quoted = pc.binary_join_element_wise('"', whole, '+00:00"' if aware else '"', "")
    return pc.fill_null(quoted, pa.scalar("null", pa.string()))


def _json_texts(column: pd.Series) -> pa.StringArray:
    """Text (or any other) values as JSON, each distinct value encoded once by `json.dumps`."""
    import pandas as pd
    import pyarrow as pa

    values = column.astype(object).where(column.notna(), None)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if len(uniques) > DISTINCT_SHARE * max(len(values), 1):
        return pa.array([_dumps(v) for v in values], pa.string())
    texts = pa.array([*(_dumps(v) for v in uniques), "null"], pa.string())
    codes[codes < 0] = len(uniques)
    return texts.take(pa.array(codes))


def _dumps(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value != value:  # NaN in an object column
        return "null"
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _text(column: pd.Series) -> list[str | None]:
    """Series values as the log keeps them: text (as `str()` writes it, like the server), None when missing."""
    values = column.astype(object).where(column.notna(), None).tolist()
    return [v if v is None or type(v) is str else str(v) for v in values]


def _times(column: pd.Series) -> tuple[list[str | None], bool]:
    """Time values for the key (and whether SQLite must still read them, as the server's path does).

    Datetime columns are formatted here, in SQLite's `datetime()` form (UTC,
    whole seconds: what `datetime('2024-01-01T00:05:00.5')` gives); other
    values as text, which the insert reads with `datetime()` like the server.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not np.issubdtype(getattr(column.dtype, "type", object), np.datetime64):
        return _text(column), True
    stamps = pa.array(column.astype("datetime64[ns]"), from_pandas=True).cast(pa.timestamp("s"), safe=False)
    return pc.strftime(stamps, format="%Y-%m-%d %H:%M:%S").to_pylist(), False
