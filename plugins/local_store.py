"""The embedded model store: SQLite plus bundle files under `.opsloop/`.

Chosen by `[store] uri` (or `OPSLOOP_STORE`) when it is a plain path, `local:PATH`
or `file:PATH`; relative paths are resolved against the working directory.
Layout under the root:

    registry.db                  SQLite (WAL): versions, aliases, alias history
    bundles/<name>/<version>/    each version's bundle, read-only once registered
    staging/                     bundles being written (same filesystem: rename is atomic)

A registration verifies the staged bundle, then in one `BEGIN IMMEDIATE`
transaction takes the next number, renames the bundle into place and inserts
its row. A process killed before the commit leaves at most a directory
without a row, which no listing shows and the next registration of that
number removes. The plugin has no options.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsloop.errors import StoreError
from opsloop.hookspecs import hookimpl
from opsloop.store import (
    AliasChange,
    BundleFiles,
    ModelStore,
    ModelSummary,
    VersionSummary,
    check_name,
    current_user,
    rollback_target,
    unknown_alias,
    unknown_model,
)
from opsloop.types import ModelVersion

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another one before giving up

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

# A whole version as ModelVersion wants it; the aliases pointing at it folded in.
VERSION_QUERY = """SELECT v.name, v.version, created_at, created_by, flavor, task, metrics, params, lineage,
    digest, path, (SELECT group_concat(alias) FROM aliases a WHERE a.name = v.name AND a.version = v.version)
    FROM versions v JOIN details d ON d.id = v.id"""
HISTORY_COLUMNS = "name, alias, from_version, to_version, actor, at, reason, action"
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


def _aliases(text: str | None) -> tuple[str, ...]:
    return tuple(sorted(text.split(","))) if text else ()


def _loads_rows(texts: list[str], name: str, numbers: list[int]) -> list[Any]:
    """Parse one JSON column of many rows at once (one call instead of thousands: 2x faster)."""
    try:
        return json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        for text, number in zip(texts, numbers, strict=True):
            try:
                json.loads(text)
            except ValueError as exc:
                raise StoreError(f"model {name}:{number}: its record in the registry is damaged ({exc})") from None
        raise


class _Transaction:
    """An open write transaction; `on_abort` callbacks run before the rollback."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self.aborts: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.con.execute(sql, params)

    def on_abort(self, undo: Callable[[], None]) -> None:
        self.aborts.append(undo)


class LocalStore(ModelStore):
    """A registry in a directory: SQLite for the records, files for the bundles."""

    def __init__(self, root: Path, *, uri: str | None = None) -> None:
        self.files = BundleFiles(root)
        self.root, self.bundles, self.staging = self.files.root, self.files.bundles, self.files.staging
        self.uri = uri or str(self.root)
        self.db = self.root / "registry.db"
        self._lock = threading.RLock()  # one connection, shared by threads (the HTTP server's)
        self.files.create()
        with self._errors():
            self._con = sqlite3.connect(self.db, timeout=BUSY_TIMEOUT, isolation_level=None,
                                        check_same_thread=False)
        try:
            self._initialise()
        except BaseException:
            self._con.close()
            raise
        self.files.sweep()

    # -- plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite failures as StoreErrors naming the registry file."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreError(f"model registry {self.db} is busy: another process holds it "
                                 f"(waited up to {BUSY_TIMEOUT:.0f} s: {text})") from None
            if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text
                                                           or "corrupt" in text):
                raise StoreError(f"model registry {self.db} is corrupt or not an opsloop registry ({text}); "
                                 "restore it from a backup or move it away") from None
            raise StoreError(f"model registry {self.db}: {type(exc).__name__}: {text}") from None

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
                    return
                except sqlite3.OperationalError as exc:
                    # Processes opening a new registry at the same moment: while one of them
                    # switches the file to WAL mode, SQLite answers "locked" without waiting.
                    if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > deadline:
                        raise
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    time.sleep(0.01)

    def _create_schema(self) -> None:
        con = self._con
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"model registry {self.db} has schema {version}, newer than this opsloop "
                             f"understands ({SCHEMA_VERSION}); upgrade opsloop")
        if version == SCHEMA_VERSION:
            return
        if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise sqlite3.OperationalError("database is locked (switching to WAL mode)")
        con.execute("BEGIN IMMEDIATE")
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:
            if con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                con.execute("ROLLBACK")
                raise StoreError(f"{self.db} is an SQLite database but not an opsloop registry; "
                                 "choose another [store] uri")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Transaction]:
        """A write transaction: `BEGIN IMMEDIATE` takes the write lock up front (no upgrade deadlocks)."""
        with self._lock, self._errors():
            self._con.execute("BEGIN IMMEDIATE")
            tx = _Transaction(self._con)
            try:
                yield tx
                self._con.execute("COMMIT")
            except BaseException:
                for undo in reversed(tx.aborts):  # while the lock is still ours
                    with contextlib.suppress(Exception):
                        undo()
                if self._con.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._con.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._con

    def _require_model(self, con: Any, name: str) -> int:
        """The last number given to `name`; StoreError with the closest name if unknown."""
        row = con.execute("SELECT last_version FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            check_name(name)
            raise unknown_model(name, (r[0] for r in con.execute("SELECT name FROM models")))
        return row[0]

    def _missing_version(self, con: Any, name: str, version: int) -> StoreError:
        last = self._require_model(con, name)
        count, low, high = con.execute("SELECT count(*), min(version), max(version) FROM versions WHERE name = ?",
                                       (name,)).fetchone()
        have = f"it has {count} version(s), {low} to {high}" if count else "it has no versions left"
        if 1 <= version <= last:
            return StoreError(f"model {name} has no version {version}: it was deleted ({have})")
        return StoreError(f"model {name} has no version {version} ({have})")

    def _versions(self, rows: list[tuple[Any, ...]]) -> list[ModelVersion]:
        """ModelVersions from VERSION_QUERY rows, the JSON columns parsed in one go each."""
        numbers = [r[1] for r in rows]
        metrics, params, lineage = (_loads_rows([r[i] for r in rows], rows[0][0], numbers) for i in (6, 7, 8))
        root = str(self.root)
        return [ModelVersion(name=r[0], version=r[1], created_at=r[2], created_by=r[3], flavor=r[4], task=r[5],
                             metrics=m, params=p, lineage=li, digest=r[9], path=Path(root, r[10]),
                             aliases=_aliases(r[11]))
                for r, m, p, li in zip(rows, metrics, params, lineage, strict=True)]

    # -- versions ------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self.files.staging_dir()

    def register(self, name: str, staged: Path, manifest: dict[str, Any]) -> ModelVersion:
        check_name(name)
        staged, disk, digest = self.files.prepare(name, staged)
        meta = manifest or disk
        lineage = meta.get("lineage") or {}
        summary = (str(lineage.get("user") or current_user()), str(meta.get("flavor") or ""),
                   str(meta.get("task") or ""), json.dumps(meta.get("metrics") or {}, default=str), digest)
        details = (json.dumps(meta.get("params") or {}, default=str), json.dumps(lineage, default=str))
        with self._transaction() as tx:
            row = tx.execute("SELECT last_version FROM models WHERE name = ?", (name,)).fetchone()
            number = (row[0] if row else 0) + 1
            # A directory already at this number is an orphan of a registration killed
            # between its rename and its commit: `place` replaces it.
            relative = self.files.place(staged, name, number)
            tx.on_abort(lambda: self.files.unplace(relative, staged))
            at = _now()
            tx.execute("INSERT INTO models (name, last_version, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version", (name, number, at))
            row_id = tx.execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, "
                                "digest, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (name, number, at, *summary, relative)).lastrowid
            tx.execute("INSERT INTO details (id, params, lineage) VALUES (?, ?, ?)", (row_id, *details))
        self.files.seal(relative)
        return self.get(name, number)

    def get(self, name: str, version: int) -> ModelVersion:
        with self._read() as con:
            row = con.execute(f"{VERSION_QUERY} WHERE v.name = ? AND v.version = ?",
                              (name, version)).fetchone()
            if row is None:
                raise self._missing_version(con, name, version)
        return self._versions([row])[0]

    def latest(self, name: str) -> ModelVersion:
        with self._read() as con:
            row = con.execute(f"{VERSION_QUERY} WHERE v.name = ? ORDER BY v.version DESC LIMIT 1",
                              (name,)).fetchone()
            if row is None:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
        return self._versions([row])[0]

    def versions(self, name: str) -> list[ModelVersion]:
        with self._read() as con:
            rows = con.execute(f"{VERSION_QUERY} WHERE v.name = ? ORDER BY v.version", (name,)).fetchall()
            if not rows:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
        return self._versions(rows)

    def version_summaries(self, name: str) -> list[VersionSummary]:
        with self._read() as con:
            rows = con.execute("SELECT version, created_at, created_by, flavor, task, metrics, digest FROM versions "
                               "WHERE name = ? ORDER BY version", (name,)).fetchall()
            if not rows:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
            pointing: dict[int, list[str]] = {}
            for alias, version in con.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                                              (name,)):
                pointing.setdefault(version, []).append(alias)
        metrics = _loads_rows([r[5] for r in rows], name, [r[0] for r in rows])
        none = ()
        return [VersionSummary(name=name, version=r[0], created_at=r[1], created_by=r[2], flavor=r[3], task=r[4],
                               metrics=m, digest=r[6], aliases=tuple(pointing.get(r[0], none)))
                for r, m in zip(rows, metrics, strict=True)]

    def models(self) -> list[ModelSummary]:
        with self._read() as con:
            rows = con.execute("SELECT name, count(*), max(version), max(created_at) FROM versions "
                               "GROUP BY name ORDER BY name").fetchall()
            aliases: dict[str, dict[str, int]] = {}
            for name, alias, version in con.execute("SELECT name, alias, version FROM aliases ORDER BY alias"):
                aliases.setdefault(name, {})[alias] = version
        return [ModelSummary(name=name, versions=count, latest=latest, updated_at=updated,
                             aliases=aliases.get(name, {})) for name, count, latest, updated in rows]

    def delete(self, name: str, version: int) -> None:
        with self._transaction() as tx:
            row = tx.execute("SELECT path FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise self._missing_version(tx, name, version)
            pointing = [r[0] for r in tx.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? "
                                                 "ORDER BY alias", (name, version))]
            if pointing:
                names = ", ".join(f"{name}@{a}" for a in pointing)
                raise StoreError(f"cannot delete {name}:{version}: {'aliases' if len(pointing) > 1 else 'alias'} "
                                 f"{names} point{'' if len(pointing) > 1 else 's'} at it; "
                                 "point them at another version first")
            tx.execute("DELETE FROM details WHERE id = (SELECT id FROM versions WHERE name = ? AND version = ?)",
                       (name, version))
            tx.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
        # The row goes first: a crash from here on leaves a directory nobody lists,
        # never a listed version without its files.
        self.files.remove(row[0])

    # -- aliases -------------------------------------------------------------

    def alias(self, name: str, alias: str) -> int | None:
        check_name(alias, "alias")
        with self._read() as con:
            row = con.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if row is None:
                self._require_model(con, name)
                return None
        return row[0]

    def aliases(self, name: str) -> dict[str, int]:
        with self._read() as con:
            self._require_model(con, name)
            return dict(con.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,)))

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None) -> AliasChange | None:
        check_name(alias, "alias")
        with self._transaction() as tx:
            if tx.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone() is None:
                raise self._missing_version(tx, name, version)
            row = tx.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            current = row[0] if row else None
            if current == version:
                return None
            return self._move_alias(tx, name, alias, current, version, reason, actor, "set")

    def rollback(self, name: str, alias: str = "production", *, reason: str = "",
                 actor: str | None = None) -> AliasChange:
        check_name(alias, "alias")
        with self._transaction() as tx:
            row = tx.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if row is None:
                self._require_model(tx, name)
                raise unknown_alias(name, alias, dict(tx.execute("SELECT alias, version FROM aliases WHERE name = ?",
                                                                 (name,))))
            current = row[0]
            changes = self._history(tx, name, alias)
            wanted = json.dumps(sorted({c.to_version for c in changes}))
            exists = {r[0] for r in tx.execute("SELECT version FROM versions WHERE name = ? AND version IN "
                                               "(SELECT value FROM json_each(?))", (name, wanted))}
            target = rollback_target(changes, current, exists)
            if target is None:
                raise StoreError(f"cannot roll back {name}@{alias}: it points at version {current} and there is "
                                 "no earlier version to go back to (see `opsloop models history`)")
            return self._move_alias(tx, name, alias, current, target, reason, actor, "rollback")

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        if alias is not None:
            check_name(alias, "alias")
        with self._read() as con:
            self._require_model(con, name)
            return self._history(con, name, alias)

    def _history(self, con: Any, name: str, alias: str | None) -> list[AliasChange]:
        if alias is None:
            rows = con.execute(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = ? ORDER BY id", (name,))
        else:
            rows = con.execute(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = ? AND alias = ? "
                               "ORDER BY id", (name, alias))
        return [AliasChange(name=r[0], alias=r[1], from_version=r[2], to_version=r[3], actor=r[4], at=r[5],
                            reason=r[6], action=r[7]) for r in rows]

    def _move_alias(self, tx: Any, name: str, alias: str, current: int | None, version: int, reason: str,
                    actor: str | None, action: str) -> AliasChange:
        change = AliasChange(name=name, alias=alias, from_version=current, to_version=version,
                             actor=actor or current_user(), at=_now(), reason=reason, action=action)
        tx.execute("INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
                   "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version", (name, alias, version))
        tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, alias, current, version, change.actor, change.at, reason, action))
        return change

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

