"""Batch predictions into the prediction log (issue 9, item 2), and the JSON texts of rows sent as columns.

`opsloop serve` logs each request through a queue and a writer thread
(`opsloop.serving.predlog`). A batch run (the `batch` deploy target) has all
its rows at hand, a chunk at a time, so it writes them into the same file as
segments (`opsloop.serving.segments`): one request id for the run, rows
numbered across chunks, each chunk one row of the `segments` table (its
columns as an Arrow IPC stream), one transaction per chunk, on a thread of
its own while the next chunk is scored. Nothing is formatted row by row in
Python, and feedback joins segment rows as it joins served ones. The
retention (`opsloop.serving.predlog.prune`) is applied when the run's rows
are written.

`json_objects` builds the `inputs` JSON of many rows at once with Arrow
compute kernels (numbers cast to text in C++: float32 in its shortest form,
`0.56` and not `0.5600000023841858`, as a client would send it; text escaped
once per distinct value); the server's writer uses it for rows sent as
columns (`batch_inputs`). A missing or non-finite number is `null` (JSON has
no NaN).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.serving.predlog import LogFileError, connect, iso, prune

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from opsloop.sensitive import Sensitive


class BatchLog:
    """The predictions of one batch run, written into the prediction log chunk by chunk.

    Chunks are formatted and written on a thread of their own while the next
    chunk is scored (Arrow and SQLite work without the GIL); one chunk waits
    at most, so memory stays bounded. A failure is raised by the next `add`,
    by `flush` or by `close`.

    Args:
        path: The log file (created with its tables when new).
        request_id: The run's request id: every row is logged under it, numbered from 0.
        model, version: What scored the rows.
        columns: The input schema's columns, in order: what `inputs` holds.
        series, time: The bundle's series and time columns, or None.
        retention: Seconds to keep rows (0: everything), applied on `close`.
        sensitive: `[data] sensitive` columns, dropped from or hashed in what is logged
            (`opsloop.sensitive.Sensitive`; issue 14, item 4).
    """

    def __init__(self, path: Path, *, request_id: str, model: str, version: int, columns: list[str],
                 series: str | None, time: str | None, retention: float = 0.0, at: float | None = None,
                 sensitive: Sensitive | None = None) -> None:
        import queue
        import threading

        self.path = Path(path)
        self.request_id, self.model, self.version = request_id, model, version
        self.columns, self.series, self.time = list(columns), series, time
        self.retention = retention
        self.sensitive = sensitive
        self.at = iso(_now() if at is None else at)
        self.rows = 0  # written
        self.pruned = 0
        self._next = 0  # the row number of the next chunk's first row
        self._con = connect(self.path)  # LogFileError names the file, before anything is scored
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="opsloop-batch-log", daemon=True)
        self._thread.start()

    def add(self, frame: pd.DataFrame, predictions: Any, scores: Any | None) -> None:
        """Log one chunk: its rows (input columns as in the schema), predictions and scores, in one transaction."""
        self._raise()
        n = len(frame)
        if n:
            self._queue.put((frame, predictions, scores, self._next))  # waits while a chunk is still queued
            self._next += n

    def flush(self) -> None:
        """Wait until every chunk added is written; raise what failed."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what is queued, apply the retention (when due) and let go of the file."""
        import sqlite3

        try:
            self._queue.put(None)
            self._thread.join()
            self._raise()
            self.pruned = prune(self._con, self.retention) or 0
        except sqlite3.Error as exc:
            raise LogFileError(self.path, f"cannot delete rows older than the retention: {exc}") from None
        finally:
            self._con.close()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure the rest is not written: the run fails anyway
                    self._write(*item)
            except BaseException as exc:  # noqa: BLE001 - handed to the scoring thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, frame: pd.DataFrame, predictions: Any, scores: Any | None, first: int) -> None:
        """One chunk as one segment (`opsloop.serving.segments`), in its own transaction."""
        import sqlite3

        from opsloop.serving import segments

        n = len(frame)
        series = segments.series_array(frame[self.series]) if self.series and self.series in frame \
            else segments.nulls(n)
        times = segments.time_array(frame[self.time], self._con) if self.time and self.time in frame \
            else segments.nulls(n)
        inputs = frame[[c for c in self.columns if c in frame.columns]]
        if self.sensitive:
            inputs = self.sensitive.frame(inputs)
        data, low, high = segments.encode(inputs, list(inputs.columns), series, times, predictions, scores)
        try:
            with self._con:
                self._con.execute("BEGIN")
                self._con.execute(segments.INSERT, (self.request_id, first, n, self.at, self.model, self.version,
                                                    low, high, segments.FORMAT, data))
        except sqlite3.Error as exc:
            raise LogFileError(self.path, f"cannot log the batch's predictions: {exc}") from None
        self.rows += n


def _now() -> float:
    return time.time()


def json_objects(frame: pd.DataFrame, columns: list[str]) -> pa.StringArray:
    """Each row of `frame` as a JSON object of `columns` (in that order), as one Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:
        return pa.array(["{}"] * len(frame), pa.string())
    last = len(columns) - 1
    # Each column's texts carry their key (and the braces), so that one join with "," makes the objects.
    parts = [json_values(frame[name], prefix=("{" if k == 0 else "") + json.dumps(str(name)) + ":",
                         suffix="}" if k == last else "") for k, name in enumerate(columns)]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, ",")


def json_values(column: pd.Series, prefix: str = "", suffix: str = "") -> pa.StringArray:
    """A column's values as JSON texts (between `prefix` and `suffix`): numbers in their shortest form, null for
    missing and non-finite ones.

    A column with few distinct values (telemetry often has them: percentages,
    the same timestamps across series) is formatted once per distinct value.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        texts = pa.array(column, from_pandas=True).cast(pa.string())
        return _around(pc.fill_null(texts, "null"), prefix, suffix)
    if pd.api.types.is_float_dtype(dtype):
        return _distinct(column.to_numpy(), _json_floats, prefix, suffix)
    if isinstance(dtype, pd.DatetimeTZDtype) or np.issubdtype(getattr(dtype, "type", object), np.datetime64):
        return _distinct(column, _iso_times, prefix, suffix)
    values = column.astype(object).where(column.notna(), None)
    return _distinct(values, lambda u: pa.array([_dumps(v) for v in u], pa.string()), prefix, suffix)


def _around(texts: pa.StringArray, prefix: str, suffix: str) -> pa.StringArray:
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, texts, suffix, "") if prefix or suffix else texts


def _distinct(values: Any, fmt: Any, prefix: str, suffix: str) -> pa.StringArray:
    """`fmt` applied to each distinct value once when there are few (else to all), missing ones as null."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    codes, uniques = pd.factorize(values, use_na_sentinel=True)  # a hash pass: about 20 ns a value
    if len(uniques) > len(values) // 2:  # mostly distinct: format them all
        return _around(fmt(values), prefix, suffix)
    texts = pa.concat_arrays([_around(fmt(uniques), prefix, suffix), pa.array([prefix + "null" + suffix])])
    codes = np.where(codes < 0, len(uniques), codes)
    return texts.take(pa.array(codes))


def _json_floats(values: Any) -> pa.StringArray:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(np.asarray(values) if not isinstance(values, pa.Array) else values, from_pandas=True)
    values = pc.if_else(pc.is_inf(values), pa.scalar(None, values.type), values)  # NaN was made null
    texts = values.cast(pa.string())
    # Whole numbers as floats, as Python writes them (1.0, not Arrow's 1): readers then type the column float.
    plain = pc.and_(pc.equal(pc.find_substring(texts, "."), -1), pc.equal(pc.find_substring(texts, "e"), -1))
    texts = pc.if_else(plain, pc.binary_join_element_wise(texts, ".0", ""), texts)
    return pc.fill_null(texts, "null")


def _iso_times(values: Any) -> pa.StringArray:
    """Times as `Timestamp.isoformat()` writes them, quoted: `"2024-01-01T00:05:00"` (UTC with `+00:00` if aware)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pd.Series(values)
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
    return pc.fill_null(quoted, "null")


def _dumps(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value != value:  # NaN in an object column
        return "null"
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def batch_inputs(schema: Any, batch: Any) -> list[str]:
    """The `inputs` of a checked request sent as columns (`opsloop.serving.schema.Batch`), one JSON text per row.

    What `opsloop.serving.predlog._records` and `json.dumps` give row by row
    (integers and booleans back to their kind, NaN back to null, text and
    times as sent), built by column for the server's log writer.
    """
    import pandas as pd

    columns: dict[str, Any] = {}
    numeric = batch.numeric
    for c in schema.columns:
        if c.name in batch.other:
            columns[c.name] = pd.Series(batch.other[c.name], dtype=object)
            continue
        values = pd.Series(numeric[:, schema.index[c.name]])
        columns[c.name] = values.astype("Int64") if c.kind == "int" else \
            values.astype("boolean") if c.kind == "bool" else values
    return json_objects(pd.DataFrame(columns, copy=False), list(columns)).to_pylist()
