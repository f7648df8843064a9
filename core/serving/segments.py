"""Batch predictions in the prediction log, by column: one segment per chunk (issue 9, items 2 and 7).

`opsloop serve` logs each served row as a row of the `predictions` table. A
batch run (the `batch` deploy target, `opsloop run`'s deploy stage) logs a
million rows at a time; row by row, SQLite alone costs about what scoring
does (benchmarks/predlog.py). So a batch goes into the same file as
*segments*: one row of the `segments` table per scored chunk, holding the
chunk as an Arrow IPC stream (Zstandard-compressed: 100,000 ASD rows take
1.4 MB instead of 9.7, and decode in about 15 ms) in a BLOB, with what a reader
filters on beside it (request id, first row number, row count, time of
writing, model, version, first and last time key). One file, one retention,
one feedback table: feedback by request id and row, by request id, or by
(series, time) joins segment rows exactly as it joins served ones.

A segment's stream has these columns, one row per scored row, in order:

    inputs      struct of the input schema's columns, typed as scored
                (float32 stays float32, times stay times)
    series      the row's series value as text (as `str()` writes it), or null
    time        its time key in SQLite's datetime() form ("YYYY-MM-DD
                HH:MM:SS", UTC), what feedback by key compares with, or null
    prediction  float64
    score       float64, or null

Row numbers are not stored: a segment's rows are `first_row`, `first_row + 1`,
... in stream order. `read` decodes the segments of one model version (in a
time range) into a frame with labels joined; `labelled` gives every labelled
batch row of a log, the segment counterpart of the `labelled` SQL view.
"""

from __future__ import annotations

import functools
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

FORMAT = "arrow-ipc-zstd"
#: Formats this version reads (an Arrow IPC stream says its own compression).
READS = frozenset({FORMAT, "arrow-ipc-lz4", "arrow-ipc"})
INSERT = ("INSERT INTO segments (request_id, first_row, rows, at, model, version, min_time, max_time, format, data) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
META = ("series", "time", "prediction", "score")


def encode(frame: pd.DataFrame, columns: list[str], series: Any, times: Any, predictions: Any,
           scores: Any | None) -> tuple[bytes, str | None, str | None]:
    """One chunk as a segment's bytes, with its first and last time key (None when it has none)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(frame)
    table = pa.Table.from_pandas(frame[columns], preserve_index=False) if columns else None
    inputs = pa.StructArray.from_arrays([c.combine_chunks() for c in table.columns], names=columns) if table \
        else pa.StructArray.from_arrays([pa.nulls(n, pa.null())], names=["_"])
    score = pa.nulls(n, pa.float64()) if scores is None else pa.array(np.asarray(scores, dtype=np.float64))
    batch = pa.RecordBatch.from_arrays(
        [inputs, series, times, pa.array(np.asarray(predictions, dtype=np.float64)), score],
        names=["inputs", *META])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_batch(batch)
    bounds = pc.min_max(times.dictionary if isinstance(times, pa.DictionaryArray) else times)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return sink.getvalue(), low, high


def series_array(column: pd.Series) -> pa.Array:
    """A chunk's series values as text (dictionary-encoded), null where missing: what the server logs."""
    import pandas as pd
    import pyarrow as pa

    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    texts = pa.array([v if type(v) is str else str(v) for v in uniques.tolist()], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32(), mask=codes < 0), texts)


def time_array(column: pd.Series, con: sqlite3.Connection) -> pa.Array:
    """A chunk's time values as keys in SQLite's datetime() form (dictionary-encoded), null where missing.

    Datetime columns are formatted by Arrow (UTC, whole seconds); other values
    go through SQLite's own `coalesce(datetime(v), v)`, once per distinct
    value, as the server's insert does.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)  # the same times recur across series
    if np.issubdtype(getattr(column.dtype, "type", object), np.datetime64):
        stamps = pa.array(pd.Series(uniques).astype("datetime64[ns]"), from_pandas=True)
        texts = pc.strftime(stamps.cast(pa.timestamp("s"), safe=False), format="%Y-%m-%d %H:%M:%S")
    else:
        values = [v if v is None or type(v) is str else str(v) for v in pd.Series(uniques, dtype=object).tolist()]
        texts = pa.array([con.execute("SELECT coalesce(datetime(?1), ?1)", (v,)).fetchone()[0] for v in values],
                         pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32(), mask=codes < 0), texts)


def nulls(n: int) -> pa.Array:
    import pyarrow as pa

    return pa.nulls(n, pa.string())


def decode(data: bytes, memory_pool: Any = None) -> pa.Table:
    """A segment's bytes back as an Arrow table (`inputs` struct, `series`, `time`, `prediction`, `score`)."""
    import pyarrow as pa

    with pa.ipc.open_stream(pa.py_buffer(data), memory_pool=memory_pool) as reader:
        return reader.read_all()


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release() -> None:
    """Give the memory of a segment read and let go back to the system (glibc keeps freed blocks otherwise), so
    that reading a million rows peaks at about the rows once, not the rows plus every segment's bytes."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def inputs_table(table: pa.Table) -> pa.Table:
    """A decoded segment's input columns as an Arrow table (the `inputs` struct's fields, no copy)."""
    import pyarrow as pa

    column = table.column("inputs")
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(c) for c in column.chunks],
                                 schema=pa.schema(list(column.type)))


def inputs_frame(table: pa.Table) -> pd.DataFrame:
    """A decoded segment's input columns as a frame."""
    return inputs_table(table).to_pandas()


def has_segments(con: sqlite3.Connection) -> bool:
    """Whether the log has a `segments` table (logs written before segments existed have none)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'segments'").fetchone() is not None


def rows(con: sqlite3.Connection, *, model: str, version: int | None = None, by: str = "time", since: str = "",
         until: str = "\uffff") -> Iterator[tuple[str, int, str, int, pa.Table]]:
    """(request id, first row, at, version, table) of each segment of `model` (and `version`) that may hold keys
    in [since, until), in log order. `by` is "time" (the rows' time keys) or "at" (the time of logging)."""
    if not has_segments(con):
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    where, params = _where(model, version, by, since, until)
    cursor = con.execute(f"SELECT request_id, first_row, at, version, format, data FROM segments WHERE {where} "
                         "ORDER BY id", params)
    # Decoded on two threads while the next segment is read (Arrow decompresses without the GIL).
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="opsloop-segments") as pool:
        pending: deque[Any] = deque()
        for request_id, first, at, ver, fmt, data in cursor:
            if fmt not in READS:
                raise sqlite3.DatabaseError(f"segment of request {request_id} (rows from {first}) is in format "
                                            f"{fmt!r}, which this opsloop does not read (it reads {FORMAT!r})")
            pending.append(((request_id, int(first), at, int(ver)), pool.submit(_decode, data, request_id, first)))
            if len(pending) > 1:  # one decoded ahead: memory for two segments at most
                meta, table = pending.popleft()
                yield (*meta, table.result())
        while pending:
            meta, table = pending.popleft()
            yield (*meta, table.result())


def count(con: sqlite3.Connection, *, model: str, version: int | None = None, by: str = "time", since: str = "",
          until: str = "\uffff") -> int:
    """How many rows the segments that `rows` gives hold (before a reader drops those outside the range)."""
    if not has_segments(con):
        return 0
    where, params = _where(model, version, by, since, until)
    return int(con.execute(f"SELECT coalesce(sum(rows), 0) FROM segments WHERE {where}", params).fetchone()[0])


def _where(model: str, version: int | None, by: str, since: str, until: str) -> tuple[str, dict[str, Any]]:
    where = ["model = :model"]
    if version is not None:
        where.append("version = :version")
    if by == "at":
        where.append("at >= :since AND at < :until")
    else:
        where.append("max_time >= :since AND min_time < :until")
    return " AND ".join(where), {"model": model, "version": version, "since": since, "until": until}


def _decode(data: bytes, request_id: str, first: int) -> pa.Table:
    """`decode`, a damaged segment as an sqlite3.DatabaseError naming it (readers report the log as unreadable)."""
    import pyarrow as pa

    try:
        table = decode(data, pa.system_memory_pool())  # freed blocks go back to malloc, which `release` trims
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise sqlite3.DatabaseError(f"segment of request {request_id} (rows from {first}) is damaged: "
                                    f"{exc}") from None
    missing = [c for c in ("inputs", *META) if c not in table.column_names]
    if missing:
        raise sqlite3.DatabaseError(f"segment of request {request_id} (rows from {first}) lacks column(s) "
                                    f"{', '.join(missing)}")
    return table


def feedback(con: sqlite3.Connection, model: str) -> dict[str, pd.DataFrame]:
    """The latest label of each key, per kind of feedback: by request and row, by request, by (series, time)."""
    import pandas as pd

    queries = {
        "row": "SELECT request_id, row, label, max(id) AS fid FROM feedback "
               "WHERE request_id IS NOT NULL AND row IS NOT NULL GROUP BY request_id, row",
        "request": "SELECT request_id, label, max(id) AS fid FROM feedback "
                   "WHERE request_id IS NOT NULL AND row IS NULL GROUP BY request_id",
        "key": "SELECT series, time, label, max(id) AS fid FROM feedback "
               "WHERE request_id IS NULL AND model = ? GROUP BY series, time",
    }
    out = {}
    for kind, sql in queries.items():
        rows_ = con.execute(sql, (model,) if kind == "key" else ()).fetchall()
        columns = ["request_id", "row", "label", "fid"] if kind == "row" else \
            ["request_id", "label", "fid"] if kind == "request" else ["series", "time", "label", "fid"]
        frame = pd.DataFrame.from_records(rows_, columns=columns)
        frame["value"] = pd.to_numeric(frame["label"], errors="coerce").astype(float)  # not a number: NaN
        out[kind] = frame
    return out


def labels(table: pa.Table, request_id: str, first: int, fb: dict[str, pd.DataFrame]) -> tuple[Any, Any]:
    """Each row's latest label as a number (NaN where unlabelled, or where the label is not a number) and the id of
    the feedback that gave it (-1: none), the newest of the three kinds of feedback winning, as for served rows."""
    import numpy as np
    import pandas as pd

    n = table.num_rows
    best = np.full(n, -1, dtype=np.int64)
    label = np.full(n, np.nan)

    def take(fid: Any, values: Any, found: Any) -> None:
        newer = found & (fid > best)
        best[newer] = fid[newer]
        label[newer] = values[newer]

    by_request = fb["request"]
    hit = by_request[by_request["request_id"] == request_id]
    if len(hit):
        fid = np.full(n, int(hit["fid"].iloc[0]), dtype=np.int64)
        take(fid, np.full(n, hit["value"].iloc[0]), np.ones(n, dtype=bool))
    by_row = fb["row"]
    hit = by_row[by_row["request_id"] == request_id]
    if len(hit):
        position = hit["row"].to_numpy(dtype=np.int64) - first
        inside = (position >= 0) & (position < n)
        fid = np.full(n, -1, dtype=np.int64)
        values = np.full(n, np.nan)
        fid[position[inside]] = hit["fid"].to_numpy(dtype=np.int64)[inside]
        values[position[inside]] = hit["value"].to_numpy()[inside]
        take(fid, values, fid >= 0)
    by_key = fb["key"]
    if len(by_key):
        s_codes, s_dict = _codes(table.column("series"))
        t_codes, t_dict = _codes(table.column("time"))
        s_at = {v: i for i, v in enumerate(s_dict)}
        t_at = {v: i for i, v in enumerate(t_dict)}
        width = len(t_dict) + 1
        # A key as one integer: (series code + 1) * width + (time code + 1), code -1 for null; -1 overall when
        # the feedback names a series or time no row of the segment has.
        wanted = np.array([-1 if (s is not None and s not in s_at) or (t is not None and t not in t_at)
                           else (s_at.get(s, -1) + 1) * width + t_at.get(t, -1) + 1
                           for s, t in zip(by_key["series"].tolist(), by_key["time"].tolist(), strict=True)],
                          dtype=np.int64)
        usable = wanted >= 0
        if usable.any():
            found = pd.Index(wanted[usable]).get_indexer((s_codes + 1) * width + t_codes + 1)
            hit = found >= 0
            at = np.where(hit, found, 0)
            take(np.where(hit, by_key["fid"].to_numpy(dtype=np.int64)[usable][at], -1),
                 by_key["value"].to_numpy()[usable][at], hit)
    return label, best


def _codes(column: Any) -> tuple[Any, list[Any]]:
    """A (dictionary-encoded) text column's codes as int64 (-1 for null) and its distinct values."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not isinstance(array, pa.DictionaryArray):
        array = array.dictionary_encode()
    return array.indices.fill_null(-1).to_numpy().astype("int64"), array.dictionary.to_pylist()


def labelled(path: Path, model: str | None = None) -> pd.DataFrame:
    """Every labelled prediction of a log once, with its latest label, served and batch alike (all models, or one).

    The columns of the `labelled` SQL view: request_id, row, at, model,
    version, series, time, inputs (JSON text), prediction, score, label,
    labelled_at, feedback_id. Served rows come from the view (which has a row
    per label received; the latest is kept), segment rows are decoded and
    joined here, with the same rule: the newest feedback naming the row, its
    request, or its model, series and time wins.
    """
    import pandas as pd

    from opsloop.serving.batchlog import json_objects

    con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    try:
        cursor = con.execute("SELECT request_id, row, at, model, version, series, time, inputs, prediction, score, "
                             "label, labelled_at, feedback_id FROM labelled" + (" WHERE model = ?" if model else ""),
                             (model,) if model else ())
        columns = [d[0] for d in cursor.description]
        served = pd.DataFrame.from_records(cursor.fetchall(), columns=columns)
        parts = [served.sort_values("feedback_id", kind="stable")
                 .drop_duplicates(["request_id", "row"], keep="last").sort_index()]
        models = [model] if model else [m for (m,) in con.execute("SELECT DISTINCT model FROM segments")] \
            if has_segments(con) else []
        for name in models:
            fb = feedback(con, name)
            when = {int(f): a for f, a in con.execute("SELECT id, at FROM feedback")} if any(map(len, fb.values())) \
                else {}
            for request_id, first, at, version, table in rows(con, model=name):
                label, fid = labels(table, request_id, first, fb)
                keep = fid >= 0
                if not keep.any():
                    continue
                kept = table.filter(keep)
                inputs = inputs_frame(kept)
                parts.append(pd.DataFrame({
                    "request_id": request_id, "row": first + keep.nonzero()[0], "at": at, "model": name,
                    "version": version, "series": kept.column("series").to_pandas().astype(object),
                    "time": kept.column("time").to_pandas().astype(object),
                    "inputs": json_objects(inputs, list(inputs.columns)).to_pylist(),
                    "prediction": kept.column("prediction").to_numpy(), "score": kept.column("score").to_numpy(),
                    "label": label[keep], "labelled_at": [when.get(int(f)) for f in fid[keep]],
                    "feedback_id": fid[keep]}))
    finally:
        con.close()
    parts = [p for p in parts if len(p)] or parts[:1]
    return pd.concat(parts, ignore_index=True)
