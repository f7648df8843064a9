"""The embedded model store: SQLite plus bundle files under `.opsloop/`.

Chosen by `[store] uri` (or `OPSLOOP_STORE`) when it is a plain path, `local:PATH`
or `file:PATH`; relative paths are resolved against the working directory.
Layout under the root:

    registry.db                  SQLite (WAL): versions, aliases, alias history
    bundles/<name>/<version>/    each version's bundle, read-only once registered
    staging/                     bundles being written (same filesystem: rename is atomic)

Opening checks the index before anything is written (issue 8, defect 4): a
`registry.db` that is missing, empty or without tables while `bundles/`
holds versions, or that SQLite finds corrupt, is refused with a
`RegistryDamaged` error that points at `opsloop models reindex`, which
rebuilds the index from the bundles' manifests (`opsloop.plugins.
_local_reindex`). `PRAGMA quick_check` runs on every open while the database
is at most `QUICK_CHECK_MAX_BYTES` (it reads every page: about 3 ms per MB
on the 2-core test machine, 8 ms for 10,000 versions); a larger one is
checked by the queries themselves, whose corruption errors name the file.
A registry whose directory cannot be written (a read-only mount) is opened
read-only: it lists, shows and serves; every change is refused, saying so.

A registration verifies the staged bundle, then in one `BEGIN IMMEDIATE`
transaction takes the next number, renames the bundle into place and inserts
its row. A process killed before the commit leaves at most a directory
without a row, which no listing shows and the next registration of that
number removes. The registry's logic (queries, checks, messages, aliases,
rollback) is `opsloop.sqlstore.SQLStore`'s; this module gives it SQLite: the
connection, the schema, the write lock and the clock. The plugin has no options.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsloop.errors import RegistryDamaged, StoreError
from opsloop.hookspecs import hookimpl
from opsloop.sqlstore import HISTORY_COLUMNS, SQLStore, Statements, Transaction
from opsloop.store import ModelStore

SCHEMA_VERSION = 3  # 2: the loop journal and lock (issue 12); 3: version thresholds (issue 13)
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another one before giving up
QUICK_CHECK_MAX_BYTES = 32 << 20  # quick_check on open up to this size (~0.1 s); see the module docstring
DAMAGED = ("not a database", "malformed", "corrupt", "could not decode")

SCHEMA = """
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,  -- numbers are never reused, even after a delete
    created_at TEXT NOT NULL
);
CREATE TABLE versions (  -- small rows, so that listing thousands reads few pages
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES models (name),
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    flavor TEXT NOT NULL,
    task TEXT NOT NULL,
    metrics TEXT NOT NULL,
    digest TEXT NOT NULL,
    path TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE details (  -- the large part of a version, read only when one is asked for
    id INTEGER PRIMARY KEY REFERENCES versions (id) ON DELETE CASCADE,
    params TEXT NOT NULL,
    lineage TEXT NOT NULL
);
CREATE TABLE aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
) WITHOUT ROWID;
CREATE INDEX aliases_by_version ON aliases (name, version);
CREATE TABLE alias_history (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE INDEX alias_history_by_alias ON alias_history (name, alias, id);
"""

# Schema 2 (issue 12): what `opsloop loop` writes. Added to a schema-1 registry when it is
# first opened writable (`UPGRADES`); nothing else changes.
LOOP_TABLES = """
CREATE TABLE loop_journal (  -- one row per loop cycle, never changed
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    at TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL  -- strict JSON
);
CREATE INDEX loop_journal_by_name ON loop_journal (name, id);
CREATE TABLE loop_locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    since TEXT NOT NULL,
    expires TEXT NOT NULL
) WITHOUT ROWID;
"""
SCHEMA += LOOP_TABLES
# Schema 3 (issue 13): each version's current threshold, and the one a history row gave it;
# strict JSON, NULL for none. Added to a schema-2 registry the same way; nothing else changes.
THRESHOLD_COLUMNS = """
ALTER TABLE details ADD COLUMN threshold TEXT;
ALTER TABLE alias_history ADD COLUMN threshold TEXT;
"""
SCHEMA += THRESHOLD_COLUMNS
UPGRADES = {1: LOOP_TABLES, 2: THRESHOLD_COLUMNS}  # from schema N to N + 1
# SQLite's clock is this machine's, as `_now`; in one statement 'now' is one instant.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
LATER = "strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') + ? / 86400.0)"

SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def store_root(uri: str, workdir: Path) -> Path | None:
    """The directory a URI names, or None when the URI is not a local one."""
    text = uri.strip()
    lowered = text.lower()
    if lowered.startswith("file://"):
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            return None
        path = urllib.parse.unquote(parsed.path)
    elif lowered.startswith(("local:", "file:")):
        path = text.partition(":")[2]
    elif SCHEME_RE.match(text):  # postgresql://, s3://: another plugin's
        return None
    else:
        path = text
    if not path:
        return None
    root = Path(path).expanduser()
    return root if root.is_absolute() else Path(workdir) / root


@hookimpl
def open_store(uri: str, workdir: Path) -> ModelStore | None:
    """A `LocalStore` for a local URI; None for anything else (`postgresql://...`)."""
    root = store_root(uri, workdir)
    return None if root is None else LocalStore(root, uri=uri)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LocalStore(SQLStore):
    """A registry in a directory: SQLite for the records, files for the bundles."""

    SQL = Statements(param="?", join_aliases="group_concat(alias)", now=NOW, later=LATER)

    def __init__(self, root: Path, *, uri: str | None = None) -> None:
        super().__init__(root)
        self.uri = uri or str(self.root)
        self.db = self.root / "registry.db"
        self.read_only = not self.files.writable()
        self._check_file()
        with self._errors():
            con = self._connect_read_only() if self.read_only else sqlite3.connect(
                self.db, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        self._open(con)

    def tuning_storage(self) -> str:
        """`tuning.db` beside `registry.db`: Optuna's tables in a file of their own, so that `opsloop models
        reindex` (which rebuilds registry.db from the bundles) never touches a study."""
        return f"sqlite:///{(self.root / 'tuning.db').resolve()}"

    # -- plumbing ------------------------------------------------------------

    def _damaged(self, problem: str) -> RegistryDamaged:
        from opsloop.plugins._local_reindex import rebuild

        return RegistryDamaged(str(self.db), problem, rebuild=functools.partial(rebuild, self.root))

    def _versions_on_disk(self) -> str:
        names, count = set(), 0
        for name, _, _ in self.files.version_dirs():
            names.add(name)
            count += 1
        return f"{self.bundles} holds {count} version(s) of {len(names)} model(s)"

    def _check_file(self) -> None:
        """Refuse a missing or empty database next to registered bundles, before SQLite creates one."""
        try:
            size: int | None = self.db.stat().st_size
        except FileNotFoundError:
            size = None
        except OSError as exc:
            raise StoreError(f"cannot read model registry {self.db}: {exc.strerror or exc}") from None
        if size in (None, 0) and next(self.files.version_dirs(), None) is not None:
            raise self._damaged(f"is {'missing' if size is None else 'empty (0 bytes)'} but "
                                f"{self._versions_on_disk()}")
        if size is None and self.read_only:
            raise StoreError(f"no model registry at {self.root}, and it is read-only: cannot create one")

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection: `mode=ro`, or `immutable=1` when SQLite cannot share the WAL index.

        A WAL database needs its `-shm` file; on a read-only mount without one,
        only `immutable` opens it (then changes made through a writable mount
        elsewhere are not seen until the store is opened again).
        """
        path = urllib.parse.quote(str(self.db))
        for flags in ("mode=ro", "immutable=1"):
            con = sqlite3.connect(f"file:{path}?{flags}", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                                  check_same_thread=False)
            try:
                con.execute("PRAGMA user_version").fetchone()
                return con
            except sqlite3.OperationalError:
                con.close()
                if flags == "immutable=1":
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite failures as StoreErrors naming the registry file (damage: RegistryDamaged)."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            lowered = text.lower()
            if "locked" in text or "busy" in text:
                raise StoreError(f"model registry {self.db} is busy: another process holds it "
                                 f"(waited up to {BUSY_TIMEOUT:.0f} s: {text})") from None
            if isinstance(exc, sqlite3.DatabaseError) and any(word in lowered for word in DAMAGED):
                # "Could not decode to UTF-8 column 'x' with text '<garbage>'": never the garbage
                text = text.partition(" with text ")[0]
                raise self._damaged(f"is corrupt ({text}; `sqlite3 {self.db} 'PRAGMA integrity_check'` "
                                    "shows where)") from None
            if "readonly" in lowered or "read-only" in lowered:
                raise StoreError(f"model registry {self.db} is read-only ({text}): it can be read, "
                                 "not changed") from None
            if "disk is full" in lowered:
                raise StoreError(f"model registry {self.db}: the disk is full ({text})") from None
            raise StoreError(f"model registry {self.db}: {type(exc).__name__}: {text}") from None

    def check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"model registry {self.root} is read-only (its directory cannot be written, e.g. a "
                             "read-only mount): it can be listed and shown, not changed")

    def staging_dir(self) -> Path:
        self.check_writable()
        return super().staging_dir()

    def _size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.db}{suffix}").st_size
        return total

    def _initialise(self) -> None:
        """Set the connection up; create the schema in a new file (once, whoever comes first)."""
        con = self._con
        deadline = time.monotonic() + BUSY_TIMEOUT
        with self._errors():
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = FULL")  # a committed version survives a power cut
            while True:
                try:
                    self._create_schema()
                    break
                except sqlite3.OperationalError as exc:
                    # Processes opening a new registry at the same moment: while one of them
                    # switches the file to WAL mode, SQLite answers "locked" without waiting.
                    if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > deadline:
                        raise
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    time.sleep(0.01)
            if self._size() <= QUICK_CHECK_MAX_BYTES:  # a damaged page anywhere, before anything trusts it
                problems = [" ".join(str(row[0]).split()) for row in con.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise self._damaged(f"is corrupt (SQLite's quick_check: {'; '.join(problems)}; "
                                        f"`sqlite3 {self.db} 'PRAGMA integrity_check'` shows more)")

    def _create_schema(self) -> None:
        """Create the schema in a new file, or upgrade an older one in place (once, whoever comes first)."""
        con = self._con
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"model registry {self.db} has schema {version}, newer than this opsloop "
                             f"understands ({SCHEMA_VERSION}); upgrade opsloop")
        if version == SCHEMA_VERSION:
            return
        if version and self.read_only:  # an older registry, read as it is: upgraded where it can be written
            self._read_as_schema(version, functools.partial(self._not_upgraded, version))
            return
        if not version:
            tables = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if not tables and next(self.files.version_dirs(), None) is not None:
                raise self._damaged(f"has no tables but {self._versions_on_disk()}")
            if self.read_only:
                raise StoreError(f"model registry {self.db} is not set up, and {self.root} is read-only: "
                                 "cannot create it")
        try:
            self._write_schema()
        except sqlite3.OperationalError as exc:
            if not version or "readonly" not in str(exc):
                raise
            if con.in_transaction:
                con.execute("ROLLBACK")
            # The directory can be written but the file cannot (chmod): SQLite opened it read-only.
            self._read_as_schema(version, functools.partial(self._not_upgraded, version))

    def _write_schema(self) -> None:
        """Create the tables (a new file) or add what later schemas have (an older one), under the write lock."""
        con = self._con
        if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise sqlite3.OperationalError("database is locked (switching to WAL mode)")
        con.execute("BEGIN IMMEDIATE")
        version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it meanwhile
        if version > SCHEMA_VERSION:
            con.execute("ROLLBACK")
            raise StoreError(f"model registry {self.db} has schema {version}, newer than this opsloop "
                             f"understands ({SCHEMA_VERSION}); upgrade opsloop")
        if version == 0:
            if con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                con.execute("ROLLBACK")
                raise StoreError(f"{self.db} is an SQLite database but not an opsloop registry; "
                                 "choose another [store] uri")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
        for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
            for statement in UPGRADES[step].split(";"):
                if statement.strip():
                    con.execute(statement)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")

    def _not_upgraded(self, version: int, lacking: str) -> str:
        return (f"model registry {self.db} has schema {version}, from an older opsloop, and is read-only: it has "
                f"{lacking} until it is opened once where it can be written (which upgrades it "
                f"to schema {SCHEMA_VERSION})")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """A write transaction: `BEGIN IMMEDIATE` takes the write lock up front (no upgrade deadlocks).

        That lock is the whole registry's, so `_lock_model` has nothing to add.
        """
        self.check_writable()
        with self._lock, self._errors():
            self._con.execute("BEGIN IMMEDIATE")
            tx = Transaction(self._con)
            try:
                yield tx
                self._con.execute("COMMIT")
            except BaseException:
                tx.abort()  # while the lock is still ours
                if self._con.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._con.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._con

    # -- what SQLStore asks of SQLite ------------------------------------------

    def reindex(self, *, force: bool = False) -> dict[str, Any]:
        """Rebuild `registry.db` from the bundles when it lost versions (or with `force`); see `_local_reindex`."""
        from opsloop.plugins._local_reindex import rebuild

        self.close()  # the rebuild opens the registry itself, under its own lock
        return rebuild(self.root, force=force)

    def _take_number(self, tx: Transaction, name: str) -> int:
        """The next number: the transaction holds the registry's write lock, so nobody else reads it now."""
        row = tx.execute(self.SQL.last_version, (name,)).fetchone()
        return (row[0] if row else 0) + 1

    def _insert_version(self, tx: Transaction, name: str, number: int, summary: tuple[str, ...],
                        relative: str) -> int:
        at = _now()
        tx.execute("INSERT INTO models (name, last_version, created_at) VALUES (?, ?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version", (name, number, at))
        cursor = tx.execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, "
                            "digest, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (name, number, at, *summary, relative))
        return cursor.lastrowid

    def _insert_change(self, tx: Transaction, name: str, alias: str, current: int | None, version: int,
                       actor: str, reason: str, action: str, threshold: str | None) -> str:
        at = _now()
        values = (name, alias, current, version, actor, at, reason, action)
        if threshold is None:
            tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        else:
            tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}, threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*values, threshold))
        return at

    def _insert_cycle(self, tx: Transaction, name: str, status: str, body: str) -> tuple[int, str]:
        at = _now()
        cursor = tx.execute("INSERT INTO loop_journal (name, at, status, body) VALUES (?, ?, ?, ?)",
                            (name, at, status, body))
        return cursor.lastrowid, at

    def _existing(self, tx: Transaction, name: str, numbers: list[int]) -> set[int]:
        return {r[0] for r in tx.execute("SELECT version FROM versions WHERE name = ? AND version IN "
                                         "(SELECT value FROM json_each(?))", (name, json.dumps(numbers)))}

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

