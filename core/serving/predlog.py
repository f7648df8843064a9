"""The prediction log: every prediction, and the ground truth that arrives later, in SQLite.

Requests only put a tuple on a queue; one writer thread turns queued items
into rows and inserts them in batches (one transaction per batch, WAL,
`synchronous = NORMAL`), so logging costs a request about a microsecond.
`close()` drains the queue before it returns: a clean stop (SIGTERM, Ctrl-C)
loses nothing. The queue is bounded (`max_pending` rows): when the disk
cannot keep up, further predictions are answered but not logged, counted in
`dropped` and warned about at most once a minute; labels are never dropped.

One bad value never costs anyone else's rows (issue 8): when a batch's
transaction fails, its items are written again one by one, each in its own
transaction, so only the item that cannot be stored is lost, counted in
`errors` and reported at most once a minute. When the file is deleted, moved
aside, replaced or truncated in place while serving (`rm -rf
.opsloop/serving`, a rotation), the writer notices before and after every
batch (`opsloop.serving.logfile`: the inode of the file and of its `-wal`
against the ones it opened, and a file that got smaller without a database
header), lets go of the old file (a moved one gets the rows still in the
`-wal`, a truncated one nothing), opens a new database at the path, writes
the batch there (again, if the file went away under it) and counts it in
`reopened`: rows written to a deleted file are gone with it, no later row is.
Layout (`.opsloop/serving/predictions.db` by default):

    predictions  id, request_id, row, at (ISO 8601 UTC), model, version,
                 series, time (the row's series and time values, for feedback
                 by key; times as SQLite's datetime() writes them, UTC),
                 inputs (JSON object: the row as sent), prediction, score
    feedback     id, at, request_id and row (row NULL: every row of the
                 request), or model, series and time (feedback by key),
                 label, source
    segments     batch predictions by column, one row per scored chunk
                 (`opsloop.serving.segments`): request_id, first_row, rows,
                 at, model, version, min_time and max_time (time keys),
                 format, data (the chunk as an Arrow IPC stream)
    labelled     view: predictions joined with their feedback (served rows;
                 `opsloop.serving.segments.labelled` gives batch rows)

Feedback is matched to predictions when it is read, so a label may arrive
before or after its prediction is written, and the latest label wins.

Rows sent as JSON records are split and stored by SQLite itself (`json_each`
over the request body, in C): a third of the cost of formatting them in
Python, and no JSON re-encoding of the inputs. Rows sent as columns (the
Open Inference Protocol), and bodies SQLite cannot read as JSON (NaN
literals, UTF-16), are formatted in Python.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import attrs
# SCHEMA, connect, identity and LogFileError were defined here first: importers of this module still find them.
from opsloop.serving.logfile import SCHEMA, LogFileError, connect, has_header, identity, look, retire  # noqa: F401

log = logging.getLogger("opsloop.serving")

#: Latest feedback per prediction, over the `?` latest feedback rows, for one model.
QUALITY = """
WITH recent AS (SELECT * FROM feedback ORDER BY id DESC LIMIT :window),
matched AS (
    SELECT p.id AS pid, p.version, p.prediction, f.label, f.id AS fid
    FROM recent f JOIN predictions p ON p.request_id = f.request_id AND (f.row IS NULL OR p.row = f.row)
    WHERE p.model = :model
    UNION ALL
    SELECT p.id, p.version, p.prediction, f.label, f.id
    FROM recent f JOIN predictions p ON f.request_id IS NULL AND p.model = f.model AND p.series IS f.series
        AND p.time = f.time
    WHERE f.model = :model
),
latest AS (SELECT version, prediction, label, max(fid) FROM matched GROUP BY pid)
SELECT version, count(*), sum(prediction = label), sum(prediction = 1 AND label = 1),
       sum(prediction = 1 AND label <> 1), sum(prediction <> 1 AND label = 1),
       sum(abs(prediction - label)), sum((prediction - label) * (prediction - label))
FROM latest GROUP BY version
"""

#: A time as keys compare it: SQLite's datetime() form (UTC, "YYYY-MM-DD HH:MM:SS"), else as given.
KEY_TIME = "coalesce(datetime({0}), {0})"
INSERT_FEEDBACK = ("INSERT INTO feedback (at, request_id, row, model, series, time, label, source) "
                   f"VALUES (?1, ?2, ?3, ?4, ?5, {KEY_TIME.format('?6')}, ?7, ?8)")
INSERT_ROWS = ("INSERT INTO predictions (request_id, row, at, model, version, series, time, inputs, prediction, score) "
               f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, {KEY_TIME.format('?7')}, ?8, ?9, ?10)")
#: Requests sent as JSON records, split by SQLite. ?1 model; ?2 a JSON array with, per request,
#: [request id, time (epoch s), version, predictions, scores, series path, time path, body].
_ROW = "json_extract(i.value, json_extract(r.value, '$[{0}]'))"
SPLIT = f"""INSERT INTO predictions (request_id, row, at, model, version, series, time, inputs, prediction, score)
SELECT json_extract(r.value, '$[0]'), i.key,
    strftime('%Y-%m-%dT%H:%M:%fZ', json_extract(r.value, '$[1]'), 'unixepoch'), ?1, json_extract(r.value, '$[2]'),
    {_ROW.format(5)}, {KEY_TIME.format(_ROW.format(6))}, i.value,
    json_extract(r.value, '$[3][' || i.key || ']'), json_extract(r.value, '$[4][' || i.key || ']')
FROM json_each(?2) AS r, json_each(r.value, '$[7].instances') AS i"""
#: One large request: the same from separate arrays, materialized so that SQLite indexes the join (else n**2).
#: ?1 request id, ?2 time, ?3 model, ?4 version, ?5 predictions, ?6 scores, ?7 body, ?8/?9 series/time paths.
SPLIT_LARGE = f"""WITH i AS MATERIALIZED (SELECT key, value FROM json_each(?7, '$.instances')),
    p AS MATERIALIZED (SELECT key, value FROM json_each(?5)), s AS MATERIALIZED (SELECT key, value FROM json_each(?6))
INSERT INTO predictions (request_id, row, at, model, version, series, time, inputs, prediction, score)
SELECT ?1, i.key, strftime('%Y-%m-%dT%H:%M:%fZ', ?2, 'unixepoch'), ?3, ?4, json_extract(i.value, ?8),
    {KEY_TIME.format("json_extract(i.value, ?9)")}, i.value, p.value, s.value
FROM i JOIN p ON p.key = i.key JOIN s ON s.key = i.key"""
FEW = 16              # rows up to which a request goes into the batched SPLIT
BATCH = 1000          # queue items written per transaction at most
PAUSE = 0.05          # seconds the writer waits between batches, so that batches form under load
WRITE_ROWS = 20_000   # rows written per transaction at most (queue items are taken whole)
STALL = 5.0           # seconds without progress after which the writer counts as stuck: requests stop waiting
ROOM_POLL = 0.005     # seconds between two looks at the queue by a request waiting for room
DROP_WARNING_EVERY = 60.0  # seconds between two warnings about predictions not logged
ERROR_LOG_EVERY = 60.0     # seconds between two log lines about items that could not be written
REWRITES = 3               # times a batch is written again when the file goes away under it
CACHE_KB = 64 * 1024       # page cache of the writer's connection (SQLite's default: 2 MiB)
PRUNE_EVERY = 60.0         # seconds between two retention passes over one log file (by any writer)
PRUNE_ROWS = 100_000       # rows of each table a retention pass looks at, at most: a pass stays short
#: A JSON escape of a UTF-16 surrogate: SQLite would store a lone one as invalid UTF-8, which no reader can
#: decode, so such bodies take the Python path (where a lone surrogate fails, alone).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: A key spelled with an escape (`"\\u0069nstances":`): SQLite's JSON paths do not match it, Python reads the
#: name it spells. (Found from any quote it may start at; a string value that looks like one costs only speed.)
_ESCAPED_KEY = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)+"\s*:')
_STOP = object()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen(kw_only=True)
class Feedback:
    """A ground-truth label for a request (a row of it, or all) or for a series at a time."""

    label: float
    request_id: str | None = None
    row: int | None = None
    model: str | None = None
    series: str | None = None
    time: str | None = None
    source: str = ""

    def record(self, at: float) -> tuple[Any, ...]:
        return (iso(at), self.request_id, self.row, self.model, self.series, self.time, self.label, self.source)


def add_feedback(con: sqlite3.Connection, entries: Iterable[Feedback], at: float | None = None) -> int:
    """Insert labels in one transaction; how many."""
    now = time.time() if at is None else at
    rows = [f.record(now) for f in entries]
    with con:
        con.execute("BEGIN")
        con.executemany(INSERT_FEEDBACK, rows)
    return len(rows)


def prune(con: sqlite3.Connection, retention: float, now: float | None = None, *, every: float = PRUNE_EVERY,
          step: int = PRUNE_ROWS) -> int | None:
    """Delete predictions (served rows and batch segments) and labels logged more than `retention` seconds ago;
    rows deleted (a segment counts its rows), None if not due.

    Cheap, and safe to call after every write: it does nothing (one indexed
    read) when the log was pruned less than `every` seconds ago, by this
    process or another writer of the same file (the time is kept in the
    table `log_state`). Rows go oldest first, in the order they were written
    (`at` is the time of writing, so ids follow it): each table's rows before
    the first one logged within the retention, at most `step` of them per
    pass, so a pass never holds the file long; when more remain, the next call
    goes on at once. A row stays while a row written before it is still
    within the retention (a log whose rows were copied in out of order).
    """
    if retention <= 0:
        return None
    now = time.time() if now is None else now
    due = con.execute("SELECT value FROM log_state WHERE key = 'pruned_at'").fetchone()
    if due is not None and isinstance(due[0], float | int) and now - due[0] < every:
        return None
    cutoff = iso(now - retention)
    deleted = 0
    more = False
    with con:
        con.execute("BEGIN IMMEDIATE")
        for table in ("predictions", "segments", "feedback"):
            first = con.execute(f"SELECT min(id) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
            if first is None:
                continue
            # The first row within the retention among the next `step`; none: all `step` of them are old.
            kept = con.execute(f"SELECT id FROM {table} WHERE id < ? AND at >= ? ORDER BY id LIMIT 1",  # noqa: S608
                               (first + step, cutoff)).fetchone()
            end = kept[0] if kept is not None else first + step
            if table == "segments":  # a segment holds many rows: they count
                deleted += con.execute("SELECT coalesce(sum(rows), 0) FROM segments WHERE id < ?", (end,)).fetchone()[0]
                con.execute("DELETE FROM segments WHERE id < ?", (end,))
            else:
                deleted += con.execute(f"DELETE FROM {table} WHERE id < ?", (end,)).rowcount  # noqa: S608
            more = more or kept is None  # perhaps more old rows beyond: the next call looks
        if not more:
            con.execute("INSERT OR REPLACE INTO log_state (key, value) VALUES ('pruned_at', ?)", (now,))
    return deleted


class PredictionLog:
    """A queue and the thread that writes it to SQLite."""

    def __init__(self, path: Path, max_pending: int = 50_000, retention: float = 0.0, sensitive: Any = None) -> None:
        self.path = Path(path)
        # `[data] sensitive` columns (`opsloop.sensitive.Sensitive`): dropped from or hashed in every logged row's
        # inputs by a trigger on the writer's connection, whichever insert path wrote the row (issue 14, item 4).
        self.sensitive = sensitive
        self.max_pending = max_pending
        self.retention = retention
        self.pruned = 0  # rows deleted for being older than the retention
        self.rows_queued = 0  # request side only, like `queued`
        self.rows_done = 0    # writer side only, like `done`
        self.dropped = 0
        self._warned = 0.0
        connect(self.path).close()  # fail now, not on the first request, when the file cannot be made
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.written = 0
        self.feedback = 0
        self.errors = 0    # prediction requests and labels that could not be written
        self.reopened = 0  # times the file was found deleted or replaced, and opened anew
        self.queued = 0  # counted by the request side only, `done` by the writer only: no lost updates
        self.done = 0
        self._thread: threading.Thread | None = None
        self._con: sqlite3.Connection | None = None  # the writer's, and its file's identity
        self._opened: tuple[int, ...] | None = None
        self._size = -1  # of the file at `path` when last looked at: a smaller one without a header was truncated
        self._unreported = 0
        self._latest_error = ""
        self._error_logged = -math.inf
        self._reader: sqlite3.Connection | None = None
        self._reader_opened: tuple[int, ...] | None = None
        self._reader_lock = threading.Lock()
        self.quality_errors = 0  # reads of the live quality figures that failed
        self._quality_logged = -math.inf
        self._prune_logged = -math.inf
        self._progress = time.monotonic()  # when the writer last finished a batch (or started)

    # -- the request side ----------------------------------------------------

    def predictions(self, request_id: str, at: float, model: str, version: int, schema: Any, records: Any,
                    predictions: Any, scores: Any, keys: tuple[Any, Any], body: bytes | None = None) -> None:
        """Queue one request's predictions (the writer does all the formatting).

        Args:
            schema: The version's `InputSchema` (to rebuild rows sent as columns).
            records: The rows as sent (a list of dicts) or the checked `Batch`.
            keys: The series and time column names, or None each.
            body: The request body `{"instances": [...]}` the records came from, when they did.
        """
        rows = len(records) if isinstance(records, list) else records.rows
        behind = self.rows_queued - self.rows_done
        # Bounded memory under sustained overload (issue: "without slowing requests noticeably"): drop the
        # entry, never wait for the writer. A request larger than the bound still goes to an empty queue.
        if behind and behind + rows > self.max_pending:
            self.dropped += rows
            if at - self._warned >= DROP_WARNING_EVERY:
                self._warned = at
                log.warning("opsloop serve: the prediction log at %s is %d rows behind (the most is %d): "
                            "%d predictions not logged so far (opsloop_prediction_log_dropped_total)",
                            self.path, behind, self.max_pending, self.dropped)
            return
        self.rows_queued += rows
        self.queued += 1
        self.queue.put((request_id, at, model, version, schema, records, predictions, scores, keys, body))

    async def room(self, rows: int) -> None:
        """Wait, without holding the event loop, while the queue has no room for `rows` and the writer is working.

        Backpressure (issue 9, item 2): under a load the writer cannot keep up
        with, requests are answered at the rate the log is written, so that no
        answered row goes unlogged; memory stays bounded by `max_pending`. When
        the writer has made no progress for `STALL` seconds (a lock held, a
        disk that hangs), requests stop waiting: `predictions` then drops
        what does not fit, counted in `dropped`, as before.
        """
        import asyncio

        while True:
            behind = self.rows_queued - self.rows_done
            if not behind or behind + rows <= self.max_pending or self._thread is None:
                return
            if time.monotonic() - self._progress > STALL:
                return
            await asyncio.sleep(ROOM_POLL)

    def add(self, entries: list[Feedback]) -> None:
        """Queue labels."""
        self.queued += 1
        self.queue.put(entries)

    # -- the writer ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._progress = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="opsloop-prediction-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            stopping = False
            # With a retention, an idle writer still wakes up to prune.
            wait = PRUNE_EVERY if self.retention > 0 else None
            self._prune()
            while True:
                try:  # once stopping, whatever is still queued (even behind the stop mark) is written
                    items = [self.queue.get(block=not stopping, timeout=None if stopping else wait)]
                except queue.Empty:
                    if stopping:
                        break
                    self._prune()
                    continue
                rows = _units(items[0])
                while len(items) < BATCH and rows < WRITE_ROWS:  # a transaction stays short: progress is seen
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                    rows += _units(items[-1])
                if any(item is _STOP for item in items):
                    stopping = True
                    items = [item for item in items if item is not _STOP]
                if items:
                    self._write(items)
                    self._progress = time.monotonic()
                    self._prune()
                if not stopping:
                    time.sleep(PAUSE)
        finally:
            if self._con is not None:  # a file moved since the last batch still gets its last rows
                change = self._change()
                if change is None:
                    self._con.close()
                else:
                    retire(self._con, self.path, self._opened, truncated=change == "truncated")
                self._con = None
            if self._unreported:
                self._report_errors()

    def _connection(self) -> sqlite3.Connection:
        """The writer's connection to the file now at `path`: opened anew (and counted) when it was replaced."""
        if self._con is not None:
            change = self._change()
            if change is None:
                return self._con
            with self._reader_lock:  # the reader lets go of the old file too, before anything opens the new one
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
            con, self._con = self._con, None
            retire(con, self.path, self._opened, truncated=change == "truncated")
            self.reopened += 1
            if change == "truncated":
                log.warning("opsloop serve: the prediction log %s was truncated or overwritten in place while "
                            "serving (logrotate copytruncate?); writing a new database there (rows not yet written "
                            "back from its -wal are lost; opsloop_prediction_log_reopened_total)", self.path)
            else:
                log.warning("opsloop serve: the prediction log %s was deleted or replaced while serving; writing to "
                            "a new one there (a file moved aside keeps its rows, a deleted one takes them with it; "
                            "opsloop_prediction_log_reopened_total)", self.path)
        con = connect(self.path)
        con.execute(f"PRAGMA cache_size = -{CACHE_KB}")  # the two indexes' pages stay in memory between batches
        if self.sensitive:
            self.sensitive.install(con)
        self._con = con
        self._opened, self._size = look(self.path)
        return con

    def _change(self) -> str | None:
        """What happened to the writer's file at `path`: None (nothing), "moved" or "truncated" (two stat calls).

        "moved": deleted, moved aside or replaced (another inode). "truncated":
        the same inode, smaller than it was and without a database header.
        """
        if self._opened is None:
            return "moved"
        now, size = look(self.path)
        if now != self._opened:
            return "moved"
        if size < self._size and not has_header(self.path):
            return "truncated"
        self._size = size  # grown by a checkpoint, or shrunk by someone's VACUUM (still a database)
        return None

    def _same_file(self) -> bool:
        """Whether the writer's connection still writes the file at `path`."""
        return self._change() is None

    def _write(self, items: list[Any]) -> None:
        """A batch into the file at `path`: one transaction, or one per item when that fails (issue 8)."""
        try:
            for _ in range(REWRITES):
                con = self._connection()
                try:
                    written, labels, failed = self._insert_each(con, items)
                except sqlite3.OperationalError:
                    if self._same_file():
                        raise  # the database failed (locked, full, I/O), not the path
                    continue
                if self._same_file():
                    break
                # deleted while the batch went in: its rows went with the file, so write them again
            else:
                raise sqlite3.OperationalError(f"the file was deleted or replaced {REWRITES} times while writing")
        except Exception as exc:  # noqa: BLE001 - the writer must survive anything (the file cannot be opened...)
            units = sum(len(item) if isinstance(item, list) else 1 for item in items)
            self._failed(units, f"a batch of {len(items)} item(s): {exc!r}")
        else:
            self.written += written
            self.feedback += labels
            if failed:
                self._failed(len(failed), failed[-1])
        self.rows_done += sum(_count(item) for item in items if not isinstance(item, list))
        self.done += len(items)

    def _insert_each(self, con: sqlite3.Connection, items: list[Any]) -> tuple[int, int, list[str]]:
        """Rows and labels written, and what could not be: the batch at once, else each alone.

        An `OperationalError` (locked, disk full, I/O) is the file's failure,
        not an item's: it costs the batch, as retrying each item would only
        fail as many times.
        """
        try:
            return (*self._insert(con, items), [])
        except sqlite3.OperationalError:
            raise
        except Exception:  # noqa: BLE001 - a bad value: find it
            pass
        written = labels = 0
        failed: list[str] = []
        for item in items:
            for unit in ([[f] for f in item] if isinstance(item, list) else [item]):  # labels one by one too
                try:
                    rows, labelled = self._insert(con, [unit])
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - lose this item only
                    failed.append(f"{_describe(unit)}: {exc!r}"[:300])
                else:
                    written += rows
                    labels += labelled
        return written, labels, failed

    def _prune(self) -> None:
        """Apply the retention (when due: `prune` keeps it cheap); a failure is logged, never fatal."""
        if self.retention <= 0:
            return
        try:
            deleted = prune(self._connection(), self.retention)
        except (LogFileError, sqlite3.Error) as exc:
            if time.monotonic() - self._prune_logged >= ERROR_LOG_EVERY:
                self._prune_logged = time.monotonic()
                log.error("opsloop serve: could not delete rows older than the retention from the prediction log "
                          "%s: %r (at most one such line a minute)", self.path, exc)
            return
        if deleted:
            self.pruned += deleted

    def _failed(self, count: int, latest: str) -> None:
        """Count items that could not be written; log at most once a minute (a flood must not flood the log)."""
        self.errors += count
        self._unreported += count
        self._latest_error = latest
        if time.monotonic() - self._error_logged >= ERROR_LOG_EVERY:
            self._report_errors()

    def _report_errors(self) -> None:
        self._error_logged = time.monotonic()
        log.error("opsloop serve: %d prediction log item(s) could not be written to %s (%d in all, "
                  "opsloop_prediction_log_errors_total; at most one such line a minute); the latest: %s",
                  self._unreported, self.path, self.errors, self._latest_error)
        self._unreported = 0

    @staticmethod
    def _insert(con: sqlite3.Connection, items: list[Any]) -> tuple[int, int]:
        labels: list[tuple[Any, ...]] = []
        small: list[tuple[tuple[Any, ...], tuple[str, str, str]]] = []
        large: list[tuple[tuple[Any, ...], tuple[str, str, str]]] = []
        python: list[tuple[Any, ...]] = []
        now = time.time()
        for item in items:
            if isinstance(item, list):
                labels.extend(f.record(now) for f in item)
            elif (split := _splittable(item)) is None:
                python.append(item)
            else:
                (small if _count(item) <= FEW else large).append((item, split))
        with con:
            con.execute("BEGIN")
            if small and not _split(con, small):  # one body SQLite cannot read: each on its own
                for item, split in small:
                    if not _split(con, [(item, split)]):
                        python.append(item)
            for item, split in large:
                if not _split_large(con, item, split):
                    python.append(item)
            columns = [item for item in python if type(item[5]) is not list]  # sent as columns: formatted together
            con.executemany(INSERT_ROWS, [*_columnar_rows(columns), *(row for item in python
                                                                        if type(item[5]) is list
                                                                        for row in _prediction_rows(*item[:9]))])
            con.executemany(INSERT_FEEDBACK, labels)
        return sum(_count(item) for item in items if not isinstance(item, list)), len(labels)

    @property
    def pending(self) -> int:
        """Items queued and not yet written."""
        return self.queued - self.done

    def close(self) -> None:
        """Write everything queued, then stop the writer."""
        if self._thread is not None:
            self.queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- reading -----------------------------------------------------------------

    def quality(self, model: str, window: int) -> dict[int, dict[str, float]]:
        """Live figures per version from the latest `window` labels: counts, accuracy, precision, recall...

        Best effort: when the file cannot be read (replaced by a directory or by
        something that is not a database), no figures ({}), counted in
        `quality_errors` and logged at most once a minute, so that `/metrics`
        still shows everything else (the error counters first); the next call
        opens the file again.
        """
        with self._reader_lock:
            if self._reader is not None and identity(self.path) != self._reader_opened:
                self._reader.close()  # the file was deleted or replaced: read the one there now
                self._reader = None
            try:
                if self._reader is None:
                    self._reader = connect(self.path)
                    self._reader_opened = identity(self.path)
                rows = self._reader.execute(QUALITY, {"model": model, "window": window}).fetchall()
            except (LogFileError, sqlite3.Error) as exc:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                self.quality_errors += 1
                if time.monotonic() - self._quality_logged >= ERROR_LOG_EVERY:
                    self._quality_logged = time.monotonic()
                    log.error("opsloop serve: cannot read the live quality figures from the prediction log (%s); "
                              "/metrics leaves them out (opsloop_prediction_log_read_errors_total; at most one such "
                              "line a minute)", exc)
                return {}
        return {int(r[0]): figures(*r[1:]) for r in rows}


def figures(n: int, correct: int, tp: int, fp: int, fn: int, abs_err: float, sq_err: float) -> dict[str, float]:
    """Classification and regression figures from counts (NaN where undefined)."""
    nan = math.nan
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else nan
    return {"labelled": n, "accuracy": correct / n if n else nan, "precision": precision, "recall": recall,
            "f1": f1, "mae": abs_err / n if n else nan, "rmse": math.sqrt(sq_err / n) if n else nan}


def _prediction_rows(request_id: str, at: float, model: str, version: int, schema: Any, records: Any,
                     predictions: Any, scores: Any, keys: tuple[Any, Any]) -> list[tuple[Any, ...]]:
    """The rows of one request; `records` are the dicts sent (plain JSON), or the `Batch` (sent as columns)."""
    stamp = iso(at)
    preds = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    n = len(preds)
    if scores is None:
        score_list: list[Any] = [None] * n
    else:
        score_list = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    if not isinstance(records, list):
        records = _records(schema, records)
    series_name, time_name = keys
    out = []
    for i, record in enumerate(records):
        series = record.get(series_name) if series_name else None
        moment = record.get(time_name) if time_name else None
        out.append((request_id, i, stamp, model, version, None if series is None else str(series),
                    None if moment is None else str(moment), json.dumps(record), preds[i], score_list[i]))
    return out


def _columnar_rows(items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows of requests sent as columns, their `inputs` formatted by column (`batch_inputs`), many at once.

    Requests of the same version (schema) and keys are stacked into one
    batch first, so that a writer batch of many small requests costs one
    formatting pass, not one per request; few rows in all take the row by row
    path (`_records`), which is quicker for them.
    """
    import numpy as np

    from opsloop.serving.batchlog import batch_inputs

    groups: dict[tuple[int, Any], list[tuple[Any, ...]]] = {}
    for item in items:
        groups.setdefault((id(item[4]), item[8]), []).append(item)
    out: list[tuple[Any, ...]] = []
    for group in groups.values():
        if sum(item[5].rows for item in group) <= FEW:
            out.extend(row for item in group for row in _prediction_rows(*item[:9]))
            continue
        schema, keys = group[0][4], group[0][8]
        stacked = _Stacked(rows=sum(item[5].rows for item in group),
                           numeric=np.concatenate([item[5].numeric for item in group]),
                           other={name: [v for item in group for v in item[5].other[name]]
                                  for name in group[0][5].other})
        inputs = iter(batch_inputs(schema, stacked))
        for request_id, at, model, version, _, batch, predictions, scores, _ in (item[:9] for item in group):
            n = batch.rows
            preds = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
            score_list = [None] * n if scores is None else (scores.tolist() if hasattr(scores, "tolist")
                                                            else list(scores))
            key_values = []
            for name in keys:
                if not name:
                    key_values.append([None] * n)
                elif name in batch.other:
                    key_values.append([None if v is None else str(v) for v in batch.other[name]])
                else:
                    key_values.append([None if v is None or v != v else str(v)
                                       for v in _records_column(schema, batch, name)])
            out.extend(zip(itertools.repeat(request_id), range(n), itertools.repeat(iso(at)),
                           itertools.repeat(model), itertools.repeat(version), key_values[0], key_values[1],
                           itertools.islice(inputs, n), preds, score_list))
    return out


@attrs.frozen
class _Stacked:
    """Requests' checked columns stacked into one (the `Batch` fields that `batch_inputs` reads)."""

    rows: int
    numeric: Any
    other: dict[str, list[Any]]


def _records_column(schema: Any, batch: Any, name: str) -> list[Any]:
    """One numeric column's values as `_records` gives them (ints and bools back to their kind)."""
    values = batch.numeric[:, schema.index[name]].tolist()
    cast = _CAST.get(schema.columns[[c.name for c in schema.columns].index(name)].kind)
    return values if cast is None else [v if v != v else cast(v) for v in values]


@functools.lru_cache(maxsize=64)
def _path(column: str | None) -> str | None:
    """The JSON path of a record's key, `$."name"` (as JSON text); "null" for no column; None if it needs escaping."""
    if column is None:
        return "null"
    return None if '"' in column or "\\" in column else json.dumps(f'$."{column}"')


def _numbers(values: Any) -> str:
    """A JSON array of finite numbers (NaN would make SQLite refuse the batch: it then goes item by item)."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return "[" + ",".join(map(repr, values)) + "]"


def _describe(item: Any) -> str:
    """What a queued item is, for a log line."""
    if isinstance(item, list):
        f = item[0]
        return f"label for request {f.request_id!r} row {f.row!r}" if f.request_id is not None else \
            f"label for series {f.series!r} at {f.time!r}"
    return f"predictions of request {item[0]!r}"


def _units(item: Any) -> int:
    """Rows of a queued item (labels count one each; the stop mark none)."""
    if item is _STOP:
        return 0
    return len(item) if isinstance(item, list) else _count(item)


def _count(item: tuple[Any, ...]) -> int:
    """Rows of a queued request: its records, or its batch's rows."""
    records = item[5]
    return len(records) if isinstance(records, list) else records.rows


def _splittable(item: tuple[Any, ...]) -> tuple[str, str, str] | None:
    """(body text, series path, time path) when SQLite can split this request's body, else None."""
    body, (series, moment) = item[9], item[8]
    series_path, time_path = _path(series), _path(moment)
    # Records as a Batch: the body repeats a key, which Python and SQLite read differently (`parse_instances`).
    if body is None or type(item[5]) is not list or series_path is None or time_path is None:
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:  # json.loads also reads UTF-16 and UTF-32
        return None
    if "\\" in text and (_SURROGATE_ESCAPE.search(text) or _ESCAPED_KEY.search(text)):
        return None
    return text, series_path, time_path


def _split(con: sqlite3.Connection, items: list[tuple[tuple[Any, ...], tuple[str, str, str]]]) -> bool:
    """Insert small requests in one statement; False (nothing written) when SQLite cannot read one of them."""
    parts = []
    expected = 0
    for item, (text, series_path, time_path) in items:
        request_id, at, _, version, _, records, predictions, scores = item[:8]
        expected += len(records)
        parts.append(f"[{encode_basestring_ascii(request_id)},{at!r},{version},{_numbers(predictions)},"
                     f"{'null' if scores is None else _numbers(scores)},{series_path},{time_path},{text}]")
    try:
        con.execute(SPLIT, (items[0][0][2], "[" + ",".join(parts) + "]"))
    except sqlite3.OperationalError:  # "malformed JSON": NaN or Infinity literals, which only Python reads
        return False
    inserted = _inserted(con)
    if inserted != expected:
        raise sqlite3.DatabaseError(f"{inserted} rows split from {len(items)} request bodies, {expected} predicted")
    return True


def _split_large(con: sqlite3.Connection, item: tuple[Any, ...], split: tuple[str, str, str]) -> bool:
    """Insert one large request; False when SQLite cannot read it."""
    request_id, at, model, version, _, records, predictions, scores = item[:8]
    text, series_path, time_path = split
    n = len(records)
    try:
        con.execute(SPLIT_LARGE, (request_id, at, model, version, _numbers(predictions),
                                  json.dumps([None] * n) if scores is None else _numbers(scores), text,
                                  json.loads(series_path), json.loads(time_path)))
    except sqlite3.OperationalError:
        return False
    inserted = _inserted(con)
    if inserted != n:
        raise sqlite3.DatabaseError(f"request {request_id}: {inserted} rows split from its "
                                    f"body, {n} predicted")
    return True


def _inserted(con: sqlite3.Connection) -> int:
    """Rows the last INSERT wrote itself: SQLite's changes(), which leaves out what triggers did (the
    sensitive-column trigger, `opsloop.sensitive`), as `total_changes` does not; and a statement starting with
    WITH has no rowcount in sqlite3."""
    return int(con.execute("SELECT changes()").fetchone()[0])


_CAST = {"int": int, "bool": bool}  # numbers back to the column's kind; floats stay floats


def _records(schema: Any, batch: Any) -> list[dict[str, Any]]:
    """Rows as dicts from a checked batch (numbers back to the column's kind, NaN back to null).

    On the writer thread, which shares the GIL with the requests: one transpose
    for every numeric column, no per-value lookups (issue: "without slowing
    requests noticeably").
    """
    numeric = batch.numeric.T.tolist()  # one list per numeric column
    other = batch.other
    index = schema.index
    isnan = math.isnan
    columns: list[list[Any]] = []
    for c in schema.columns:
        if c.name in other:
            columns.append(other[c.name])
            continue
        values = numeric[index[c.name]]
        cast = _CAST.get(c.kind)
        if cast is None:
            columns.append([None if isnan(v) else v for v in values])
        else:
            columns.append([None if isnan(v) else cast(v) for v in values])
    names = schema.names
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
