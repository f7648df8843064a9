"""Monitoring what production scored: the configured monitor plugins on the prediction log, per time window.

`opsloop monitor` reads the log that `opsloop serve` (and batch scoring)
writes (`opsloop.serving.predlog` documents its layout), picks one version's
rows, joins the latest label of each row from `feedback` (by request id and
row, or by model, series and time), rebuilds the raw inputs the clients sent
as a `Dataset` (the bundle's input columns, the bundle's target column filled
from the labels, NaN where no label arrived yet) with a row-aligned
`predictions` frame (`prediction`, and `score` where the model gives one), and
calls the `monitor` hook of every plugin in `[monitor] plugins`, exactly as
`opsloop run`'s monitor stage does. A monitor that judges a batch therefore
judges the log unchanged.

Choices, written down once:

- Version: the one the alias points at now (or `--version N`); rows that
  other versions scored are left out, since a report judges one version
  against its own validation baseline.
- Windows cut by the row's own `time` (the telemetry's timestamp, what
  feedback by series and time names), or by `at` (when it was scored) with
  `by="at"`; a model without a time column is cut by `at`. Windows are
  half-open, [start, end), in UTC; without `since`, the first starts at the
  first row's time rounded down to a multiple of the window length (midnight
  for days).
- Labels are taken as the model's target as it learned it: a model trained
  on a transformed target (`label-horizon`) expects feedback in that sense.
- Reference: the version's profile (`opsloop.profile.reference`), or an empty
  dataset with the same columns for a bundle registered without one.

The log is opened read-only and nothing is written: a failed command leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import DataError, OpsloopError, PluginCallError
from opsloop.serving.logfile import LogFileError
from opsloop.store import strict_json
from opsloop.types import Dataset, MonitorReport

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from opsloop.session import Session
    from opsloop.types import ModelVersion

#: Seconds per unit of a duration (`15m` or `15min`, `12h`, `1d`, `2w`).
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+)\s*(min|[smhdw])\s*")
MAX_WINDOWS = 1000  # one report (and table) each: more is a mistake, not a view
CHUNK = 100_000  # log rows parsed at a time: bounded memory for the JSON text
#: How the two keys a window can be cut by are written in the log (UTC).
KEY_FORMATS = {"time": "%Y-%m-%d %H:%M:%S", "at": "%Y-%m-%dT%H:%M:%S.%f"}
BINARY = frozenset({"classification", "anomaly"})


def parse_duration(text: str, option: str = "--window") -> timedelta:
    """`15m` (or `15min`), `12h`, `1d`, `7d`, `2w` (s, m, h, d, w) as a timedelta; OpsloopError naming the option."""
    match = _DURATION.fullmatch(text or "")
    if not match or int(match.group(1)) == 0:
        raise OpsloopError(f"{option} {text!r}: expected a positive whole number and a unit, s, m, h, d or w "
                           "(15m, 12h, 1d, 7d)")
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


def parse_time(text: str, option: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (UTC unless it has an offset), `now`, or a duration meaning that long ago."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    if _DURATION.fullmatch(text):
        return now - parse_duration(text, option)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OpsloopError(f"{option} {text!r}: expected an ISO 8601 date or time (2024-01-08, "
                           "2024-01-08T12:00, with an offset or in UTC), now, or a duration ago (24h, 7d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@attrs.frozen(kw_only=True)
class Window:
    """One window's rows and what the monitors made of them.

    Attributes:
        start: First moment in the window (UTC, included).
        end: First moment after it (excluded).
        rows: Logged rows of the version in the window.
        labelled: Those with a label from feedback.
        reports: One per monitor, in the configured order (none when empty).
    """

    start: datetime
    end: datetime
    rows: int = 0
    labelled: int = 0
    reports: tuple[MonitorReport, ...] = ()

    @property
    def alerts(self) -> list[tuple[str, str]]:
        """(monitor, alert) for every alert of every report."""
        return [(r.monitor, a) for r in self.reports for a in r.alerts]

    def to_json(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end), "rows": self.rows, "labelled": self.labelled,
                "reports": [strict_json(attrs.asdict(r)) for r in self.reports],
                "alerts": [{"monitor": m, "alert": a} for m, a in self.alerts]}


@attrs.frozen(kw_only=True)
class Result:
    """What `opsloop monitor` found: the version, where its rows came from, and every window.

    Attributes:
        version: The version monitored.
        alias: The alias it was reached by (None with an explicit version).
        log: The prediction log read.
        by: `time` or `at`, what windows were cut by.
        monitors: The plugins run, in order.
        windows: In time order.
        notes: Sentences worth showing beside the figures (no reference profile...).
    """

    version: ModelVersion
    alias: str | None
    log: Path
    by: str
    monitors: tuple[str, ...]
    windows: tuple[Window, ...]
    notes: tuple[str, ...] = ()

    @property
    def alerts(self) -> int:
        return sum(len(w.alerts) for w in self.windows)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.version.name, "version": self.version.ref, "alias": self.alias,
                "log": str(self.log), "by": self.by, "monitors": list(self.monitors),
                "rows": sum(w.rows for w in self.windows), "labelled": sum(w.labelled for w in self.windows),
                "alerts": self.alerts, "notes": list(self.notes), "windows": [w.to_json() for w in self.windows]}


def _span(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    unit = next(u for u in ("w", "d", "h", "m", "s") if seconds % UNITS[u] == 0)
    return f"{seconds // UNITS[unit]}{unit}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the log -------------------------------------------------------------------

def open_log(path: Path) -> sqlite3.Connection:
    """The prediction log, read-only; LogFileError when it is missing, not a database or not a prediction log."""
    path = Path(path)
    if not path.exists():
        raise LogFileError(path, "does not exist (opsloop serve writes it; give the log with --log-path)")
    if path.is_dir():
        raise LogFileError(path, "is a directory, not a prediction log (give a file with --log-path)")
    names = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        try:
            con = sqlite3.connect(f"{path.absolute().as_uri()}?{flags}", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise LogFileError(path, f"cannot be opened: {exc}") from None
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            break
        except sqlite3.OperationalError as exc:
            con.close()
            # A WAL database in a directory this user cannot write, closed cleanly (no -wal, no -shm): no writer
            # can be at work, so it is read as it is on disk.
            if "unable to open" not in str(exc) or flags.endswith("immutable=1"):
                raise LogFileError(path, f"cannot be read: {exc}") from None
        except sqlite3.DatabaseError as exc:
            con.close()
            raise LogFileError(path, f"is not a prediction log ({exc})") from None
    assert names is not None
    missing = [t for t in ("predictions", "feedback") if t not in names]
    if missing:
        con.close()
        raise LogFileError(path, f"is an SQLite database but not a prediction log (no {' or '.join(missing)} "
                                 "table; opsloop serve writes one)")
    return con


def _nothing_logged(con: sqlite3.Connection, path: Path, version: ModelVersion, by: str, since: datetime | None,
                    until: datetime | None) -> OpsloopError:
    """Why no rows were found: the log has none of the model, none of the version, or none in the range."""
    model = version.name
    from opsloop.serving import segments

    low, high = ("at", "at") if by == "at" else ("min_time", "max_time")
    # Served rows and batch segments alike.
    both = (f"SELECT model, version, count(*) AS n, min({by}) AS lo, max({by}) AS hi FROM predictions "
            "GROUP BY model, version" + (f" UNION ALL SELECT model, version, sum(rows), min({low}), max({high}) "
                                         "FROM segments GROUP BY model, version" if segments.has_segments(con) else ""))
    rows = con.execute(f"SELECT version, sum(n), min(lo), max(hi) FROM ({both}) WHERE model = ? GROUP BY version",
                       (model,)).fetchall()
    if not rows:
        others = con.execute(f"SELECT model, sum(n) FROM ({both}) GROUP BY model ORDER BY sum(n) DESC "
                             "LIMIT 5").fetchall()
        have = ", ".join(f"{m} ({n:,} rows)" for m, n in others)
        return LogFileError(path, f"has no predictions of model {model}" + (f"; it logs {have} (--model picks one)"
                                                                             if have else ": it is empty"))
    logged = {int(v): (int(n), lo, hi) for v, n, lo, hi in rows}
    if version.version not in logged:
        have = ", ".join(f"{v} ({n:,} rows)" for v, (n, _, _) in sorted(logged.items()))
        return LogFileError(path, f"has no predictions of {version.ref} (it has versions {have} of {model}; "
                                  "--version picks one)")
    _, lo, hi = logged[version.version]
    span = f"from {since and _iso(since) or 'the start'} to {until and _iso(until) or 'the end'}"
    return DataError(f"no predictions of {version.ref} in {path} {span} by {by} (logged ones run from {lo} to {hi})")


#: Each logged row of one version in a key range, with its latest label: the newest feedback that names its request
#: and row, its whole request, or its model, series and time. One pass over `predictions` in log order (NOT INDEXED:
#: a table scan, never a sort of the whole log), each kind of feedback reduced to its latest label per key first
#: (SQLite indexes those small tables itself), whatever indexes the log has.
LABELLED = """
WITH
byrow AS MATERIALIZED (SELECT request_id, row, label, max(id) AS fid FROM feedback
                       WHERE request_id IS NOT NULL AND row IS NOT NULL GROUP BY request_id, row),
byrequest AS MATERIALIZED (SELECT request_id, label, max(id) AS fid FROM feedback
                           WHERE request_id IS NOT NULL AND row IS NULL GROUP BY request_id),
bykey AS MATERIALIZED (SELECT series, time, label, max(id) AS fid FROM feedback
                       WHERE request_id IS NULL AND model = :model GROUP BY series, time)
SELECT {columns},
    CASE max(coalesce(a.fid, -1), coalesce(b.fid, -1), coalesce(k.fid, -1))
        WHEN -1 THEN NULL WHEN a.fid THEN a.label WHEN b.fid THEN b.label ELSE k.label END{more}
FROM predictions p NOT INDEXED
LEFT JOIN byrow a ON a.request_id = p.request_id AND a.row = p.row
LEFT JOIN byrequest b ON b.request_id = p.request_id
LEFT JOIN bykey k ON k.series IS p.series AND k.time = p.time
WHERE p.model = :model AND {where}
"""
ROWS = LABELLED.format(columns="p.id, p.{key}, p.prediction, p.score", more=",\n    p.inputs",
                       where="p.version = :version AND p.{key} IS NOT NULL AND p.{key} >= :since AND p.{key} < :until"
                       ) + "ORDER BY p.id\n"


@attrs.frozen(kw_only=True)
class Logged:
    """One version's logged rows: raw inputs with the labels as target, predictions, and the window key."""

    current: Dataset
    predictions: pd.DataFrame = attrs.field(eq=False, repr=False)
    keys: pd.Series = attrs.field(eq=False, repr=False)
    #: Rows left out as repeats of a (series, time) this version had already scored (`_once_each`).
    repeats: int = 0


def read_rows(con: sqlite3.Connection, path: Path, version: ModelVersion, manifest: dict[str, Any], *, by: str,
              since: datetime | None, until: datetime | None) -> Logged:
    """The rows `version` scored in [since, until), by `by`, served and batch (segments) alike; LogFileError or
    DataError naming what is wrong."""
    import numpy as np
    import pandas as pd

    lo = "" if since is None else _key(since, by)
    hi = "\uffff" if until is None else _key(until, by)
    schema = [c for c in manifest.get("input_schema", []) if c["name"] != manifest.get("target")]
    try:
        batch, sinks = _segment_rows(con, version, schema, by=by, lo=lo, hi=hi)
        parts = [*_served_rows(con, path, version, schema, by=by, lo=lo, hi=hi), *batch]
        if not parts:
            return Logged(current=Dataset.from_frame(pd.DataFrame(columns=[c["name"] for c in schema])),
                          predictions=pd.DataFrame({"prediction": []}),
                          keys=pd.Series([], dtype="datetime64[ns, UTC]"))
        label_array = np.concatenate([p.labels for p in parts])
        prediction = np.concatenate([p.prediction for p in parts])
        if version.task in BINARY and set(pd.unique(prediction[~np.isnan(prediction)]).tolist()) <= {0, 1}:
            _check_binary(path, version, label_array, parts)
    except sqlite3.DatabaseError as exc:
        raise LogFileError(path, f"cannot be read: {exc}") from None
    score = np.concatenate([p.score for p in parts])
    keys = [p.keys for p in parts]
    # What the parts held is in the arrays above: they keep only the served rows' inputs.
    parts = [attrs.evolve(p, keys=None, prediction=None, score=None, labels=None, given=None, where=None)
             for p in parts]
    frame = _frame(parts, sinks)
    del parts, sinks, batch
    frame = _typed(frame, schema)
    codes, uniques = _key_codes(keys)
    keep = _once_each(frame, manifest.get("series"), manifest.get("time"), label_array)
    repeats = 0 if keep is None else int(len(keep) - keep.sum())
    if repeats:
        frame = frame[keep].reset_index(drop=True)
        label_array, prediction, score, codes = label_array[keep], prediction[keep], score[keep], codes[keep]
    target = manifest.get("target")
    if target:
        frame[target] = label_array
    predictions = pd.DataFrame({"prediction": prediction}, copy=False)
    if version.task != "regression" and not np.isnan(score).all():
        predictions["score"] = score
    del label_array, prediction, score
    # Logged rows are not hashed (a million rows would cost a second): the fingerprint names where they come from.
    where = f"{Path(path).absolute()}|{version.ref}|{by}|{lo}|{hi}|{len(frame)}"
    current = Dataset(frame=frame, fingerprint="log:" + hashlib.sha256(where.encode()).hexdigest(),
                      target=target or None, time=manifest.get("time"), series=manifest.get("series"),
                      name=f"{path} ({version.ref})")
    # Keys repeat (one time per step across series, one `at` per batch): each distinct one is parsed once.
    fmt = KEY_FORMATS[by]
    when = pd.to_datetime(pd.Series(uniques), format="ISO8601" if by == "at" else fmt, errors="coerce", utc=True)
    if by == "time" and when.isna().any():  # a time SQLite could not normalize is kept as sent
        when = when.fillna(pd.to_datetime(pd.Series(uniques), format="mixed", errors="coerce", utc=True))
    return Logged(current=current, predictions=predictions, keys=when.take(codes).reset_index(drop=True),
                  repeats=repeats)


def _once_each(frame: pd.DataFrame, series: str | None, time: str | None, labels: Any) -> Any:
    """Which rows to keep so that each (series, time) counts once, or None when none repeats (or the model has
    no time column: then rows have no identity beyond their request).

    A row scored again by the same version (a second `opsloop run` reusing the version batch-scores its
    period again; a client retrying a request) is one observation, not two. Of the repeats the one kept is
    the last labelled one, or else the last read (served rows are read before batch runs' segments).
    """
    import numpy as np
    import pandas as pd

    columns = [c for c in (series, time) if c and c in frame]
    if not time or time not in columns:
        return None
    timed = frame[time].notna().to_numpy()  # a row without a time is not a repeat of another
    repeated = frame.duplicated(columns, keep=False).to_numpy() & timed
    if not repeated.any():
        return None
    groups = frame[columns].groupby(columns, sort=False, dropna=False).ngroup().to_numpy()
    rank = (~pd.isna(labels)).astype(np.int64) * len(frame) + np.arange(len(frame))
    best = np.full(groups.max() + 1, -1, dtype=np.int64)
    np.maximum.at(best, groups, rank)
    return (best[groups] == rank) | ~timed


def repeats_note(repeats: int, ref: str) -> str:
    return (f"{repeats:,} logged row(s) repeat a series and time {ref} had already scored (a rerun, a retried "
            "request): each was counted once")


def _key_codes(keys: list[Any]) -> tuple[Any, list[str]]:
    """Each row's key as a code into the distinct keys of all parts, and those keys (dictionary-encoded parts:
    their dictionaries are mapped, never their rows decoded)."""
    import numpy as np

    distinct: dict[str, int] = {}
    codes = []
    for array in keys:
        mapping = np.array([distinct.setdefault(v, len(distinct)) for v in array.dictionary.to_pylist()],
                           dtype=np.int64)
        codes.append(mapping[array.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(codes), list(distinct)


def _frame(parts: list[_Part], sinks: dict[str, _Sink] | None) -> pd.DataFrame:
    """The served rows' inputs (frames), then the segments' (`sinks`, one per column), as one frame.

    A segment's numbers are written into one preallocated array per column as
    it is read (`_Sink`), and the arrays go to pandas through Arrow without a
    copy: the peak holds the rows about once, plus a segment or two.
    """
    import pandas as pd
    import pyarrow as pa

    frames = [p.inputs for p in parts if isinstance(p.inputs, pd.DataFrame)]
    if sinks:
        columns = {}
        for name in list(sinks):
            columns[name] = sinks.pop(name).result()
        frames.append(pa.table(columns).to_pandas(split_blocks=True, self_destruct=True))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


class _Sink:
    """One input column across segments: numbers without nulls written into one array allocated for every row
    the segments hold, while they agree on a type; other values (text, times, a column with nulls or of another
    type) kept as pieces and joined at the end (`_join`)."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self.array: Any = None
        self.pieces: list[Any] = []

    def add(self, column: Any) -> None:
        import numpy as np
        import pyarrow as pa

        array = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks)
        kind = array.type
        if array.null_count == 0 and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            values = array.to_numpy(zero_copy_only=False)
            if self.array is None and not self.pieces:
                self.array = np.empty(self.total, dtype=values.dtype)
            # (more rows than counted: a batch run logged a segment while this one read the log)
            if self.array is not None and values.dtype == self.array.dtype and \
                    self.used + len(values) <= len(self.array):
                self.array[self.used:self.used + len(values)] = values
                self.used += len(values)
                return
            array = np.array(values, copy=True)  # not the segment's memory: it goes once read
        if self.array is not None:  # from here on, pieces: what was written first is the first piece
            self.pieces.append(self.array[:self.used])
            self.array = None
        self.pieces.append(array)

    def result(self) -> Any:
        import pyarrow as pa

        if self.array is not None:
            return pa.array(self.array[:self.used])  # wraps it, no copy
        return _join(self.pieces) if self.pieces else pa.nulls(0)


def _join(pieces: list[Any]) -> pa.Array:
    """One column's pieces (numpy arrays or Arrow arrays) as one Arrow array."""
    import numpy as np
    import pyarrow as pa

    if all(isinstance(p, np.ndarray) for p in pieces) and len({p.dtype for p in pieces}) == 1:
        return pa.array(np.concatenate(pieces) if len(pieces) > 1 else pieces[0])  # wraps it, no copy
    arrays = [pa.array(p) if isinstance(p, np.ndarray) else p for p in pieces]
    if len({a.type for a in arrays}) == 1:
        return pa.concat_arrays(arrays)
    # a batch logged with other types for this column (an int where another had floats): Arrow promotes them
    table = pa.concat_tables([pa.table({"c": a}) for a in arrays], promote_options="permissive")
    return table.column("c").combine_chunks()


@attrs.frozen(kw_only=True)
class _Part:
    """Rows read from one place of the log: the served rows, or one segment."""

    inputs: Any  # a frame (served rows); None for a segment (its inputs are in the sinks)
    keys: Any  # dictionary-encoded Arrow strings, no nulls: each row's window key (time key, or when logged)
    prediction: Any
    score: Any
    labels: Any  # the latest label as a number; NaN where none (or not a number)
    given: Any  # where a label arrived
    where: Any  # (index in this part) -> (request id, row, the label as logged)


def _served_rows(con: sqlite3.Connection, path: Path, version: ModelVersion, schema: list[dict[str, str]], *,
                 by: str, lo: str, hi: str) -> list[_Part]:
    """The rows `opsloop serve` logged one by one (JSON inputs), with their labels."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    params = {"model": version.name, "version": version.version, "since": lo, "until": hi}
    ids: list[Any] = []
    keys: list[Any] = []
    preds: list[Any] = []
    scores: list[Any] = []
    labels: list[Any] = []
    parts = []
    cursor = con.execute(ROWS.format(key=by), params)
    while chunk := cursor.fetchmany(CHUNK):
        rowid, key, pred, score, label, inputs = zip(*chunk, strict=True)
        ids.extend(rowid)
        keys.extend(key)
        preds.extend(pred)
        scores.extend(score)
        labels.extend(label)
        parts.append(_inputs(inputs, schema, path))
    if not ids:
        return []

    def where(i: int) -> tuple[str, int, Any]:
        return (*con.execute("SELECT request_id, row FROM predictions WHERE id = ?", (ids[i],)).fetchone(), labels[i])

    return [_Part(inputs=pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0],
                  keys=pa.array(keys, pa.string()).dictionary_encode(),
                  prediction=pd.to_numeric(pd.Series(preds, dtype=object), errors="coerce").to_numpy(dtype=float),
                  score=pd.to_numeric(pd.Series(scores, dtype=object), errors="coerce").to_numpy(dtype=float),
                  labels=pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").to_numpy(dtype=float),
                  given=np.array([v is not None for v in labels], dtype=bool), where=where)]


def _segment_rows(con: sqlite3.Connection, version: ModelVersion, schema: list[dict[str, str]], *, by: str, lo: str,
                  hi: str) -> tuple[list[_Part], dict[str, _Sink]]:
    """The rows batch runs logged as segments (`opsloop.serving.segments`), with their labels: a part per segment
    (its inputs in `sinks`, one per input column, in the parts' order)."""
    import numpy as np
    import pyarrow as pa

    from opsloop.serving import segments

    names = [c["name"] for c in schema]
    total = segments.count(con, model=version.name, version=version.version, by=by, since=lo, until=hi)
    sinks = {name: _Sink(total) for name in names}
    parts = []
    fb = None
    for request_id, first, at, _, table in segments.rows(con, model=version.name, version=version.version, by=by,
                                                         since=lo, until=hi):
        if fb is None:
            fb = segments.feedback(con, version.name)
        label, fid = segments.labels(table, request_id, first, fb)
        positions = None  # row i of the segment, unless the range leaves rows out
        if by == "time":
            times = table.column("time").combine_chunks()
            if not isinstance(times, pa.DictionaryArray):
                times = times.dictionary_encode()
            # In range, by the distinct times (a few thousand), then by row; a null time is never in range.
            inside = np.array([lo <= v < hi for v in times.dictionary.to_pylist()] + [False], dtype=bool)
            keep = inside[times.indices.fill_null(len(inside) - 1).to_numpy(zero_copy_only=False)]
            if not keep.all():
                table, label, fid, positions = table.filter(keep), label[keep], fid[keep], np.flatnonzero(keep)
                times = times.filter(pa.array(keep))
            keys = times
        else:
            keys = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)),
                                                  pa.array([at], pa.string()))
        if not table.num_rows:
            continue
        inputs = segments.inputs_table(table)
        for name in (n for n in names if n not in inputs.column_names):  # a column the batch did not have:
            inputs = inputs.append_column(name, pa.nulls(len(inputs)))  # missing, as a client that left it out
        score = table.column("score").to_numpy(zero_copy_only=False).astype(float)
        for name in names:
            sinks[name].add(inputs.column(name))
        del inputs
        parts.append(_Part(inputs=None, keys=keys,
                           prediction=table.column("prediction").to_numpy(zero_copy_only=False).astype(float),
                           score=score, labels=label, given=fid >= 0,
                           where=lambda i, r=request_id, f=first, pos=positions, ids=fid: (
                               r, f + int(i if pos is None else pos[i]),
                               con.execute("SELECT label FROM feedback WHERE id = ?", (int(ids[i]),)).fetchone()[0])))
        del table
        segments.release()  # the segment's bytes and Arrow buffers: back to the system before the next
    return parts, sinks if parts else {}


def _check_binary(path: Path, version: ModelVersion, values: Any, parts: list[_Part]) -> None:
    """DataError naming the first row whose latest label is neither 0 nor 1 (or not a number), for a 0/1 model."""
    import numpy as np

    given = np.concatenate([p.given for p in parts])
    bad = np.flatnonzero(given & ~np.isin(values, (0.0, 1.0)))
    if not len(bad):
        return
    first = int(bad[0])
    for part in parts:
        if first < len(part.labels):
            request, row, label = part.where(first)
            break
        first -= len(part.labels)
    raise DataError(f"prediction log {path}: the label of request {request} row {row} is {label!r}, "
                    f"but {version.ref} is a 0/1 {version.task} model ({len(bad):,} row(s) labelled so): send the "
                    "right label again with opsloop feedback (the latest label of a row wins)")


def _key(moment: datetime, by: str) -> str:
    text = moment.astimezone(UTC).strftime(KEY_FORMATS[by])
    return text[:-3] + "Z" if by == "at" else text


def _arrow_type(dtype: str) -> Any:
    import pyarrow as pa

    if dtype.startswith(("float", "int", "uint", "Float", "Int", "UInt")):
        return pa.float64()  # ints too: a null must stay a null, and JSON writes some as 1.0
    if dtype in ("bool", "boolean"):
        return pa.bool_()
    return pa.string()


def _inputs(texts: Iterable[str], schema: list[dict[str, str]], path: Path) -> pd.DataFrame:
    """The logged JSON objects as a frame of the schema's columns (pyarrow's parser, in C++; Python's for what
    it refuses, such as a number sent for a text column)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.json as pj

    names = [c["name"] for c in schema]
    data = "\n".join(texts).encode()
    options = pj.ParseOptions(explicit_schema=pa.schema([(c["name"], _arrow_type(c["dtype"])) for c in schema]),
                              unexpected_field_behavior="ignore")
    try:
        return pj.read_json(io.BytesIO(data), parse_options=options).to_pandas()[names]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        records = [json.loads(t) for t in data.decode().split("\n")]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogFileError(path, f"holds inputs that are not JSON objects: {exc}") from None
    return pd.DataFrame.from_records(records, columns=names)


def _typed(frame: pd.DataFrame, schema: list[dict[str, str]]) -> pd.DataFrame:
    """Columns back to the dtypes the bundle recorded, where the values allow (ints with nulls stay floats).
    Columns that already have their dtype are left as they are (no copy)."""
    import pandas as pd

    out = frame[[c["name"] for c in schema]]
    for column in schema:
        name, dtype = column["name"], column["dtype"]
        values = out[name]
        if str(values.dtype) == dtype:
            continue
        try:
            if dtype.startswith("datetime"):
                values = pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
                values = values.astype(dtype) if "UTC" in dtype else values.dt.tz_convert(None).astype(dtype)
            elif dtype.startswith(("int", "uint", "Int", "UInt", "bool")) and values.isna().any():
                values = pd.to_numeric(values, errors="coerce")
            else:
                values = values.astype(dtype)
        except (TypeError, ValueError):
            continue  # left as read: the monitor sees what the client sent
        out[name] = values
    return out


# -- windows and monitors --------------------------------------------------------

def windows(first: datetime, last: datetime, *, since: datetime | None, until: datetime | None,
            step: timedelta | None) -> list[tuple[datetime, datetime]]:
    """[start, end) windows covering the rows from `first` to `last` (or since/until where given)."""
    start = since
    if start is None:
        if step is None:
            start = first
        else:
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            start = epoch + step * ((first - epoch) // step)
    end = until if until is not None else last + timedelta(microseconds=1)
    if step is None:
        return [(start, end)]
    count = -((start - end) // step)  # ceil
    if count > MAX_WINDOWS:
        raise OpsloopError(f"--window {_span(step)} cuts {_iso(start)} to {_iso(end)} into {count:,} windows; at most "
                           f"{MAX_WINDOWS:,}: choose a longer window or a shorter --since/--until")
    out = []
    while start < end:  # the last window is whole unless --until cuts it
        out.append((start, start + step if until is None else min(start + step, until)))
        start += step
    return out


def run_monitors(session: Session, version: ModelVersion, current: Dataset, predictions: pd.DataFrame,
                 reference: Dataset, run: Any) -> list[MonitorReport]:
    """The `monitor` hook of each plugin in `[monitor] plugins`, in order, as `opsloop run` calls it."""
    reports = []
    for name in session.config.selected("monitor"):
        report = session.plugins.call(name, "monitor", version=version, current=current, predictions=predictions,
                                      reference=reference, options=session.options_for("monitor", name), run=run)
        if not isinstance(report, MonitorReport):
            raise PluginCallError(name, "monitor", TypeError(f"returned {type(report).__name__}, expected "
                                                             "MonitorReport"))
        reports.append(attrs.evolve(report, monitor=report.monitor or name, model=report.model or version.ref))
    return reports


def _stage(session: Session, run: Any, work: Any) -> list[MonitorReport]:
    """One window's monitoring as a `monitor` stage: observers (a tracking integration) hear it as in a run."""
    import time

    names = list(session.config.selected("monitor"))
    session.plugins.notify("on_stage_start", stage="monitor", plugins=names, run=run)
    start = time.perf_counter()
    try:
        reports = work()
    except BaseException as exc:
        session.plugins.notify("on_stage_error", stage="monitor", error=exc, run=run, swallow=True)
        raise
    session.plugins.notify("on_stage_end", stage="monitor", result=reports, seconds=time.perf_counter() - start,
                           run=run)
    return reports


def reference_for(version: ModelVersion, current: Dataset) -> tuple[Dataset, str | None]:
    """The version's reference sample (`opsloop.profile.reference`), or an empty dataset with the current
    rows' columns and a note saying why."""
    from opsloop import profile

    found = profile.reference(version)
    if found is not None:
        return found, None
    empty = current.derive(current.frame.iloc[:0], name=f"{version.ref}: no reference profile")
    return empty, (f"{version.ref} has no reference profile (registered before profiles were stored): drift "
                   "needs a version registered with a profile, so monitors that compare with the training "
                   "rows (drift-monitor) got an empty reference")


def monitor(session: Session, *, model: str, alias: str | None, version: int | None, log: Path, by: str = "time",
            since: datetime | None = None, until: datetime | None = None, step: timedelta | None = None,
            run: Any = None) -> Result:
    """Run the configured monitors on the log's rows of one version, window by window.

    Raises:
        StoreError: The model, alias or version does not exist.
        LogFileError: The log is missing, not a prediction log, or holds no rows of the model or version.
        DataError: No rows in [since, until), or labels a 0/1 model cannot have.
    """
    from opsloop.bundle import read_manifest
    from opsloop.types import RunContext

    if since is not None and until is not None and since >= until:
        raise OpsloopError(f"--since {_iso(since)} is not before --until {_iso(until)}")
    con = open_log(log)  # first: a wrong --log-path outside a project must not open (and create) a registry
    try:
        with session.open_store() as store:
            target = store.get(model, version) if version is not None else store.resolve(f"{model}@{alias}")
        manifest = read_manifest(Path(target.path), ref=target.ref, digest=target.digest)
        if by == "time" and not manifest.get("time"):
            by = "at"  # a model without a time column: rows have no time of their own
        rows = read_rows(con, log, target, manifest, by=by, since=since, until=until)
        if not len(rows.current):
            raise _nothing_logged(con, log, target, by, since, until)
    finally:
        con.close()
    dropped = int(rows.keys.isna().sum())
    if dropped == len(rows.keys):
        raise DataError(f"no predictions of {target.ref} in {log} have a {by} that is a date and time "
                        f"({dropped:,} rows); try --by at")
    notes = [f"{dropped:,} row(s) with a {by} that is not a date and time were left out"] if dropped else []
    if rows.repeats:
        notes.append(repeats_note(rows.repeats, target.ref))
    reference, note = reference_for(target, rows.current)
    if note:
        notes.append(note)
    owned = run is None  # a run of its own: observers hear its end here (on_run_end, command "monitor")
    run = run or RunContext(run_id=uuid.uuid4().hex[:12], workdir=Path(session.config.workdir),
                            model_name=target.name, seed=session.config.project.seed, config=session.config)
    try:
        found = _windows(session, run, target, rows, reference, since, until, step)
    except BaseException as exc:
        if owned:
            session.plugins.run_ended("monitor", None, run, error=exc)
        raise
    result = Result(version=target, alias=None if version is not None else alias, log=log, by=by,
                    monitors=tuple(session.config.selected("monitor")), windows=found, notes=tuple(notes))
    if owned:
        session.plugins.run_ended("monitor", result, run)
    return result


def _windows(session: Session, run: Any, target: ModelVersion, rows: Any, reference: Dataset,
             since: datetime | None, until: datetime | None, step: timedelta | None) -> tuple[Window, ...]:
    """The configured monitors on each window of `rows` (a `monitor` stage each)."""
    keys = rows.keys
    out = []
    target_col = rows.current.target
    spans = windows(keys.min().to_pydatetime(), keys.max().to_pydatetime(), since=since, until=until, step=step)
    for start, end in spans:
        mask = ((keys >= start) & (keys < end)).to_numpy()
        count = int(mask.sum())
        if not count:
            out.append(Window(start=start, end=end))
            continue
        whole = count == len(mask)  # one window over every row: no copy
        frame = rows.current.frame if whole else rows.current.frame[mask].reset_index(drop=True)
        current = attrs.evolve(rows.current, frame=frame, fingerprint=f"{rows.current.fingerprint}|{_iso(start)}")
        labelled = int(frame[target_col].notna().sum()) if target_col in frame else 0
        predicted = rows.predictions if whole else rows.predictions[mask].reset_index(drop=True)
        reports = _stage(session, run, lambda: run_monitors(session, target, current, predicted,  # noqa: B023
                                                             reference, run))
        out.append(Window(start=start, end=end, rows=count, labelled=labelled, reports=tuple(reports)))
    return tuple(out)
