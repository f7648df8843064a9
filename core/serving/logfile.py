"""The prediction log's file: opening it, telling whether it is still the one opened, and letting go of it.

The log writer (`opsloop.serving.predlog.PredictionLog`) looks at the file
before and after every batch (`look`: two `stat` calls) and compares it with
what it opened. Three things can happen to the file while a server writes it
(issue 8):

- deleted, or replaced by another file: the device or inode of the file or
  of its `-wal` changed;
- moved aside (`mv predictions.db predictions.db.1`, a rename rotation):
  the same, but the rows still in the `-wal`, which keeps its name, belong to
  the moved file. SQLite does not write them back when a connection to a
  moved file closes, so `retire` does it first (`wal_checkpoint(TRUNCATE)`
  through the old connection, whose `-wal` is the one beside the old name),
  then removes that `-wal` from beside the path, where it would otherwise be
  read as the journal of whatever database is put there next;
- truncated in place (`: > predictions.db`, logrotate's `copytruncate`):
  same inode, so only the size tells; `look` reads the header when the file
  got smaller than it was, and a file without one was truncated. `retire`
  then writes nothing into it: SQLite would write the pages of the `-wal`
  back into the empty file on close, leaving a corrupt database there, so a
  second connection holds the file shared while the old one closes (which
  makes SQLite leave the `-wal` alone) and drops the `-wal` (SQLite deletes
  the journal of an empty file when it opens it).

Every failure to open the file is a `LogFileError` naming it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from opsloop.errors import OpsloopError

log = logging.getLogger("opsloop.serving")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    at TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    series TEXT,
    time TEXT,
    inputs TEXT NOT NULL,
    prediction NUMERIC,
    score REAL
);
CREATE INDEX IF NOT EXISTS predictions_by_request ON predictions (request_id, row);
CREATE INDEX IF NOT EXISTS predictions_by_key ON predictions (model, series, time);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    request_id TEXT,
    row INTEGER,
    model TEXT,
    series TEXT,
    time TEXT,
    label NUMERIC NOT NULL,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS feedback_by_request ON feedback (request_id, row);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    first_row INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    at TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    min_time TEXT,
    max_time TEXT,
    format TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_request ON segments (request_id, first_row);
CREATE TABLE IF NOT EXISTS log_state (
    key TEXT PRIMARY KEY,
    value
);
CREATE VIEW IF NOT EXISTS labelled AS
    SELECT p.*, f.label, f.at AS labelled_at, f.id AS feedback_id
    FROM feedback f JOIN predictions p ON p.request_id = f.request_id AND (f.row IS NULL OR p.row = f.row)
    UNION ALL
    SELECT p.*, f.label, f.at, f.id
    FROM feedback f JOIN predictions p ON f.request_id IS NULL AND p.model = f.model
        AND p.series IS f.series AND p.time = f.time;
"""
MAGIC = b"SQLite format 3\x00"  # the first bytes of every SQLite database


class LogFileError(OpsloopError):
    """The prediction log cannot be opened: not a database, a directory, no room for it..."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(str(path))

    def __str__(self) -> str:
        return f"prediction log {self.path}: {self.problem}"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the log (created with its tables when new); LogFileError when it cannot be had."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LogFileError(path, f"cannot create its directory: {path.parent} (or a parent) is a file") from None
    except OSError as exc:
        raise LogFileError(path, f"cannot create its directory {path.parent}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise LogFileError(path, "is a directory, not a database file (give a file with --log-path)")
    con = None
    try:
        con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("PRAGMA busy_timeout = 30000")
        con.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:  # OperationalError too: cannot open, locked, read-only, full
        if con is not None:
            con.close()
        hint = " (move it aside, or give another file with --log-path)" if "not a database" in str(exc) else ""
        raise LogFileError(path, f"{exc}{hint}") from None
    return con


def identity(path: Path) -> tuple[int, ...] | None:
    """Which file is at `path`, and which `-wal` beside it (device and inode of each); None when one is missing."""
    return look(path)[0]


def look(path: Path) -> tuple[tuple[int, ...] | None, int]:
    """The identity of the file at `path` and its size (-1 when it is missing): two `stat` calls."""
    try:
        db = os.stat(path)
    except OSError:
        return None, -1
    try:
        wal = os.stat(f"{path}-wal")
    except OSError:
        return None, db.st_size
    return (db.st_dev, db.st_ino, wal.st_dev, wal.st_ino), db.st_size


def has_header(path: Path) -> bool:
    """Whether the file at `path` starts as a database does (False when it is empty or unreadable)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def retire(con: sqlite3.Connection, path: Path, opened: tuple[int, ...] | None, *, truncated: bool) -> None:
    """Close a connection whose file is no longer the one at `path`, losing nothing that can be kept.

    Args:
        opened: The identity the connection's file had (its `-wal` is the one to clean up).
        truncated: The file is still at `path`, truncated: write nothing into it.
    """
    if truncated:
        _close_without_writing_back(con, path)
        return
    try:  # moved aside: the rows in the -wal go into the moved file (a deleted one takes them with it)
        busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as exc:
        busy, why = 1, repr(exc)
    else:
        why = "a reader kept it busy for 30 s"
    con.close()
    if busy:
        log.warning("opsloop serve: could not write the last rows back into the prediction log that was at %s "
                    "(%s): rows since its last checkpoint may be missing from the moved file", path, why)
    wal = f"{path}-wal"
    try:
        st = os.stat(wal)
    except OSError:
        return
    if opened is not None and (st.st_dev, st.st_ino) == opened[2:]:
        try:  # the old file's journal: a database put at the path must not read it as its own
            os.unlink(wal)
        except OSError as exc:
            log.warning("opsloop serve: cannot remove %s, the journal of the prediction log moved away from "
                        "there: %s", wal, exc)


def _close_without_writing_back(con: sqlite3.Connection, path: Path) -> None:
    """Close `con` while a second connection holds the (empty) file shared: SQLite then leaves the file alone."""
    pin = None
    try:
        if os.path.getsize(path) == 0:
            pin = sqlite3.connect(path, timeout=5, isolation_level=None)
            pin.execute("BEGIN")
            pin.execute("SELECT count(*) FROM sqlite_master").fetchone()  # shared lock; drops the stale -wal
    except (OSError, sqlite3.Error) as exc:
        log.warning("opsloop serve: the prediction log %s changed again while being reopened (%r); SQLite may "
                    "write old pages into it", path, exc)
        if pin is not None:
            pin.close()
            pin = None
    try:
        con.close()
    finally:
        if pin is not None:
            pin.close()
