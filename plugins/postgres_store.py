"""The shared model store: metadata in PostgreSQL, bundles in a shared directory.

For a team that shares one registry. Chosen by a `[store] uri` (or
`OPSLOOP_STORE`) of the form

    postgresql://USER@HOST:PORT/DB?bundles=/shared/models&schema=opsloop

(`postgres://` too; list `postgres-store` in `[store] plugins`). Two query
parameters are opsloop's; every other one (`sslmode`, `connect_timeout`...)
and libpq's environment (`PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`...) go to
libpq, so a password need not be written into the URI:

    bundles   the bundle directory that every machine of the team mounts
              (relative paths against the working directory); without it,
              the environment variable OPSLOOP_BUNDLES
    schema    the PostgreSQL schema holding the tables (default `opsloop`),
              created with them on first open

Under the bundle directory the layout is the local store's (`bundles/<name>/
<version>/`, `staging/`, from `opsloop.store.BundleFiles`); the database
records paths relative to it, so machines may mount it at different places.
A registration verifies the staged bundle, then in one transaction takes the
next number by incrementing the model's counter row (a row lock held until
the commit serializes writers of one model; readers never wait), renames the
bundle into place and inserts the version. A process killed before the commit
leaves at most a directory without a row, which the next registration of
that number replaces. The plugin has no options (the `open_store` hook does
not receive any): everything is in the URI. Needs psycopg 3
(`pip install 'opsloop[postgres]'`), imported only when a store is opened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import StoreError
from opsloop.hookspecs import hookimpl
from opsloop.store import (
    AliasChange,
    BundleFiles,
    ModelStore,
    ModelSummary,
    Ref,
    VersionSummary,
    check_name,
    current_user,
    rollback_target,
    unknown_alias,
    unknown_model,
)
from opsloop.types import ModelVersion

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another one before giving up
CONNECT_TIMEOUT = 10  # seconds, unless the URI says otherwise
BUNDLES_ENV = "OPSLOOP_BUNDLES"
SCHEMES = ("postgresql://", "postgres://")
SCHEMA_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
NEEDS_PSYCOPG = "the PostgreSQL store needs psycopg: pip install 'opsloop[postgres]'"

# `COLLATE "C"`: names sort by code point, as in the local store, whatever the database's locale.
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE {s}.models (  -- last_version: numbers are never reused, even after a delete
    name TEXT COLLATE "C" PRIMARY KEY, last_version INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE {s}.versions (  -- small rows, so that listing thousands reads few pages
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL REFERENCES {s}.models (name), version INTEGER NOT NULL,
    created_at TEXT NOT NULL, created_by TEXT NOT NULL, flavor TEXT NOT NULL, task TEXT NOT NULL,
    metrics TEXT NOT NULL, digest TEXT NOT NULL, path TEXT NOT NULL, UNIQUE (name, version));
CREATE TABLE {s}.details (  -- the large part of a version, read only when one is asked for
    id BIGINT PRIMARY KEY REFERENCES {s}.versions (id) ON DELETE CASCADE,
    params TEXT NOT NULL, lineage TEXT NOT NULL);
CREATE TABLE {s}.aliases (
    name TEXT COLLATE "C" NOT NULL, alias TEXT COLLATE "C" NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (name, alias), FOREIGN KEY (name, version) REFERENCES {s}.versions (name, version));
CREATE INDEX aliases_by_version ON {s}.aliases (name, version);
CREATE TABLE {s}.alias_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL, alias TEXT COLLATE "C" NOT NULL, from_version INTEGER,
    to_version INTEGER NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL,
    action TEXT NOT NULL);
CREATE INDEX alias_history_by_alias ON {s}.alias_history (name, alias, id);
"""

# A whole version as ModelVersion wants it; the aliases pointing at it folded in.
VERSION_QUERY = """SELECT v.name, v.version, created_at, created_by, flavor, task, metrics, params, lineage,
    digest, path, (SELECT array_agg(alias) FROM aliases a WHERE a.name = v.name AND a.version = v.version)
    FROM versions v JOIN details d ON d.id = v.id"""
HISTORY_COLUMNS = "name, alias, from_version, to_version, actor, at, reason, action"
# The server's clock, not each machine's: one time line for the whole team. The local store's format.
NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


class ConnectionLost(StoreError):
    """The server ended the session (restart, timeout, administrator): the next call reconnects."""


def _reconnecting(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a read once more, on a new connection, when the store's connection was lost.

    Reads only: a write that lost its connection fails (its transaction was
    rolled back by the server) and the caller decides; the next call reconnects.
    """
    @functools.wraps(method)
    def read(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConnectionLost:
            return method(self, *args, **kwargs)

    return read


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(NEEDS_PSYCOPG) from None
    return psycopg


def parse_uri(uri: str, workdir: Path, env: dict[str, str] | None = None) -> tuple[str, Path, str, str] | None:
    """Split a PostgreSQL URI into what libpq gets and what opsloop keeps.

    Returns:
        `(conninfo, bundle directory, schema, URI for messages)`, the last
        without the password; None when the URI is not a PostgreSQL one.
    """
    text = uri.strip()
    if not text.lower().startswith(SCHEMES):
        return None
    env = os.environ if env is None else env
    # Split by hand, as libpq reads it (`%XX` escapes, `+` is a plus): urlunsplit would
    # drop the `//` of `postgresql:///db?host=/run/postgresql`, and urlencode re-escape.
    head, _, query = text.partition("?")
    params = []  # (key, value, the item as written)
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        params.append((urllib.parse.unquote(key), urllib.parse.unquote(value), item))
    ours = {key: value for key, value, _ in params if key in ("bundles", "schema")}
    rest = "&".join(item for key, _, item in params if key not in ours)
    conninfo = f"{head}?{rest}" if rest else head
    scheme, _, netloc = head.partition("://")
    netloc, slash, path = netloc.partition("/")
    user, at, host = netloc.rpartition("@")
    if ":" in user:
        user = user.partition(":")[0] + ":***"
    shown = "&".join("password=***" if key == "password" else item for key, _, item in params)
    display = f"{scheme}://{user}{at}{host}{slash}{path}" + (f"?{shown}" if shown else "")
    schema = ours.get("schema", "opsloop")
    if not SCHEMA_NAME_RE.fullmatch(schema):
        raise StoreError(f"invalid schema {schema!r} in {display}: use 1-63 lowercase letters, digits or '_', "
                         "starting with a letter or '_'")
    bundles = ours.get("bundles") or env.get(BUNDLES_ENV, "")
    if not bundles:
        raise StoreError(f"the PostgreSQL store at {display} needs a bundle directory: add "
                         f"?bundles=/shared/models to the URI or set {BUNDLES_ENV}")
    root = Path(bundles).expanduser()
    return conninfo, (root if root.is_absolute() else Path(workdir) / root), schema, display


@hookimpl
def open_store(uri: str, workdir: Path) -> ModelStore | None:
    """A `PostgresStore` for a `postgresql://` URI; None for anything else."""
    parsed = parse_uri(uri, workdir)
    if parsed is None:
        return None
    conninfo, root, schema, display = parsed
    return PostgresStore(conninfo, root, schema=schema, uri=display)


class PostgresStore(ModelStore):
    """A registry shared by a team: PostgreSQL for the records, a directory for the bundles."""

    def __init__(self, conninfo: str, root: Path, *, schema: str = "opsloop", uri: str | None = None) -> None:
        self._psycopg = _psycopg()
        self.files = BundleFiles(root)
        self.root, self.bundles, self.staging = self.files.root, self.files.bundles, self.files.staging
        self.conninfo, self.schema = conninfo, schema
        self.uri = uri or conninfo
        self._lock = threading.RLock()  # one connection, shared by threads (the HTTP server's)
        self.files.create()
        self._con = self._connect()
        try:
            self._initialise()
        except BaseException:
            self._con.close()
            raise
        self.files.sweep()

    # -- plumbing ------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        """A new connection, autocommit off, searching our schema; StoreError naming the URI if refused."""
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.conninfo).query)
        extra = {} if "connect_timeout" in params else {"connect_timeout": CONNECT_TIMEOUT}
        if "application_name" not in params:
            extra["application_name"] = "opsloop"
        try:
            con = self._psycopg.connect(self.conninfo, autocommit=False, **extra)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to the model registry {self.uri}: {_one_line(exc)}") from None
        try:
            with self._errors():
                con.execute("SELECT set_config('search_path', %s, false), set_config('lock_timeout', %s, false)",
                            (f'"{self.schema}"', f"{int(BUSY_TIMEOUT * 1000)}ms"))
                con.commit()
        except BaseException:
            con.close()
            raise
        return con

    def _connection(self) -> psycopg.Connection:
        """The store's connection, opened again if it was lost (the call that lost it failed)."""
        if self._con.closed:
            self._con = self._connect()
        return self._con

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """PostgreSQL failures as StoreErrors naming the registry (never the password)."""
        pg = self._psycopg
        try:
            yield
        except pg.errors.LockNotAvailable as exc:
            raise StoreError(f"model registry {self.uri} is busy: another process holds the model "
                             f"(waited up to {BUSY_TIMEOUT:.0f} s: {_one_line(exc)})") from None
        except pg.OperationalError as exc:
            con = getattr(self, "_con", None)
            if con is not None and con.closed:
                raise ConnectionLost(f"lost the connection to the model registry {self.uri}: "
                                     f"{_one_line(exc)}") from None
            raise StoreError(f"model registry {self.uri}: {_one_line(exc)}") from None
        except pg.Error as exc:
            raise StoreError(f"model registry {self.uri}: {type(exc).__name__}: {_one_line(exc)}") from None

    def _initialise(self) -> None:
        """Create the schema and its tables if absent: once, whoever comes first."""
        con = self._con
        with self._errors():
            if self._schema_version(con) == SCHEMA_VERSION:  # the usual case: one query, no lock
                con.rollback()
                return
            # Processes opening a new registry at the same moment: one creates, the others wait and see it.
            con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"opsloop-schema:{self.schema}",))
            version = self._schema_version(con)
            if version is None:
                tables = con.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                                     (self.schema,)).fetchone()[0]
                if tables:
                    raise StoreError(f"schema {self.schema} of {self.uri} holds tables but is not an opsloop "
                                     "registry; choose another ?schema= in [store] uri")
                from psycopg import sql

                con.execute(sql.SQL(SCHEMA).format(s=sql.Identifier(self.schema)))
                con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
            elif version > SCHEMA_VERSION:
                raise StoreError(f"model registry {self.uri} has schema {version}, newer than this opsloop "
                                 f"understands ({SCHEMA_VERSION}); upgrade opsloop")
            con.commit()

    def _schema_version(self, con: psycopg.Connection) -> int | None:
        # A catalog query, not to_regclass(): that one may answer from a cache that still
        # misses the schema another process created while this one waited for the lock.
        if con.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'meta'",
                       (self.schema,)).fetchone() is None:
            return None
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    @contextlib.contextmanager
    def _transaction(self, aborts: list[Callable[[], None]] | None = None) -> Iterator[psycopg.Connection]:
        """A write transaction; every writer first locks the model's row, so writers of one model queue.

        Callbacks appended to `aborts` undo what the transaction did outside the database.
        """
        with self._lock, self._errors():
            con = self._connection()
            try:
                yield con
            except BaseException:
                for undo in reversed(aborts or []):  # while the row lock is still ours
                    with contextlib.suppress(Exception):
                        undo()
                with contextlib.suppress(Exception):
                    con.rollback()
                raise
            # A COMMIT that fails leaves a placed bundle where it is: whether the
            # commit happened is unknown, and a directory without a row is harmless.
            con.commit()

    @contextlib.contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        with self._lock, self._errors():
            con = self._connection()
            try:
                yield con
            finally:  # end the snapshot: a session idle in a transaction holds back VACUUM
                with contextlib.suppress(Exception):
                    con.rollback()

    def _lock_model(self, tx: Any, name: str) -> int:
        """Lock `name`'s row until the commit; its last number (StoreError if unknown)."""
        row = tx.execute("SELECT last_version FROM models WHERE name = %s FOR UPDATE", (name,)).fetchone()
        return row[0] if row else self._require_model(tx, name)

    def _require_model(self, con: Any, name: str) -> int:
        """The last number given to `name`; StoreError with the closest name if unknown."""
        row = con.execute("SELECT last_version FROM models WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise unknown_model(name, (r[0] for r in con.execute("SELECT name FROM models")))
        return row[0]

    def _missing_version(self, con: Any, name: str, version: int) -> StoreError:
        last = self._require_model(con, name)
        count, low, high = con.execute("SELECT count(*), min(version), max(version) FROM versions WHERE name = %s",
                                       (name,)).fetchone()
        have = f"it has {count} version(s), {low} to {high}" if count else "it has no versions left"
        if 1 <= version <= last:
            return StoreError(f"model {name} has no version {version}: it was deleted ({have})")
        return StoreError(f"model {name} has no version {version} ({have})")

    def _versions(self, rows: list[tuple[Any, ...]]) -> list[ModelVersion]:
        numbers = [r[1] for r in rows]
        metrics, params, lineage = (_loads_rows([r[i] for r in rows], rows[0][0], numbers) for i in (6, 7, 8))
        root = str(self.root)
        return [ModelVersion(name=r[0], version=r[1], created_at=r[2], created_by=r[3], flavor=r[4], task=r[5],
                             metrics=m, params=p, lineage=li, digest=r[9], path=Path(root, r[10]),
                             aliases=tuple(sorted(r[11])) if r[11] else ())
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
        identity, aborts = _identity(staged), []
        with self._transaction(aborts) as tx:
            # The upsert takes the next number and locks the model's row until the commit; a
            # rollback (or a killed process) gives the number back, so there are never gaps.
            number = tx.execute(f"INSERT INTO models AS m (name, last_version, created_at) VALUES (%s, 1, {NOW}) "
                                "ON CONFLICT (name) DO UPDATE SET last_version = m.last_version + 1 "
                                "RETURNING last_version", (name,)).fetchone()[0]
            # A directory already at this number is an orphan of a registration killed
            # between its rename and its commit: `place` replaces it.
            relative = self.files.place(staged, name, number)
            aborts.append(lambda: self._unplace(relative, staged, identity))
            row_id = tx.execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, "
                                f"digest, path) VALUES (%s, %s, {NOW}, %s, %s, %s, %s, %s, %s) RETURNING id",
                                (name, number, *summary, relative)).fetchone()[0]
            tx.execute("INSERT INTO details (id, params, lineage) VALUES (%s, %s, %s)", (row_id, *details))
        self.files.seal(relative)
        return self.get(name, number)

    def _unplace(self, relative: str, staged: Path, identity: tuple[int, int]) -> None:
        """Undo `place`, unless the directory there is no longer ours.

        With SQLite the lock dies with the process; here it dies with the
        session, which the server may end (restart, timeout) while this
        process lives on: another registration may then have replaced our
        bundle with its own, which must stay.
        """
        with contextlib.suppress(OSError):
            if _identity(self.root / relative) == identity:
                self.files.unplace(relative, staged)

    @_reconnecting
    def get(self, name: str, version: int) -> ModelVersion:
        check_name(name)
        with self._read() as con:
            row = con.execute(f"{VERSION_QUERY} WHERE v.name = %s AND v.version = %s", (name, version)).fetchone()
            if row is None:
                raise self._missing_version(con, name, version)
        return self._versions([row])[0]

    @_reconnecting
    def latest(self, name: str) -> ModelVersion:
        check_name(name)
        with self._read() as con:
            row = con.execute(f"{VERSION_QUERY} WHERE v.name = %s ORDER BY v.version DESC LIMIT 1",
                              (name,)).fetchone()
            if row is None:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
        return self._versions([row])[0]

    @_reconnecting
    def resolve(self, ref: str | Ref) -> ModelVersion:
        """As `ModelStore.resolve`, with `NAME@ALIAS` in one query (one round trip, not two)."""
        ref = Ref.parse(ref) if isinstance(ref, str) else ref
        if ref.alias is not None:
            with self._read() as con:
                row = con.execute(f"{VERSION_QUERY} JOIN aliases x ON x.name = v.name AND x.version = v.version "
                                  "WHERE x.name = %s AND x.alias = %s", (ref.name, ref.alias)).fetchone()
            if row is not None:
                return self._versions([row])[0]
        return super().resolve(ref)  # the errors, and the other forms

    @_reconnecting
    def versions(self, name: str) -> list[ModelVersion]:
        check_name(name)
        with self._read() as con:
            rows = con.execute(f"{VERSION_QUERY} WHERE v.name = %s ORDER BY v.version", (name,)).fetchall()
            if not rows:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
        return self._versions(rows)

    @_reconnecting
    def version_summaries(self, name: str) -> list[VersionSummary]:
        check_name(name)
        with self._read() as con:
            rows = con.execute("SELECT version, created_at, created_by, flavor, task, metrics, digest FROM versions "
                               "WHERE name = %s ORDER BY version", (name,)).fetchall()
            if not rows:
                self._require_model(con, name)
                raise StoreError(f"model {name} has no versions left (all deleted)")
            pointing: dict[int, list[str]] = {}
            for alias, version in con.execute("SELECT alias, version FROM aliases WHERE name = %s ORDER BY alias",
                                              (name,)):
                pointing.setdefault(version, []).append(alias)
        metrics = _loads_rows([r[5] for r in rows], name, [r[0] for r in rows])
        none = ()
        return [VersionSummary(name=name, version=r[0], created_at=r[1], created_by=r[2], flavor=r[3], task=r[4],
                               metrics=m, digest=r[6], aliases=tuple(pointing.get(r[0], none)))
                for r, m in zip(rows, metrics, strict=True)]

    @_reconnecting
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
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)
            row = tx.execute("SELECT path FROM versions WHERE name = %s AND version = %s", (name, version)).fetchone()
            if row is None:
                raise self._missing_version(tx, name, version)
            pointing = [r[0] for r in tx.execute("SELECT alias FROM aliases WHERE name = %s AND version = %s "
                                                 "ORDER BY alias", (name, version))]
            if pointing:
                names = ", ".join(f"{name}@{a}" for a in pointing)
                raise StoreError(f"cannot delete {name}:{version}: {'aliases' if len(pointing) > 1 else 'alias'} "
                                 f"{names} point{'' if len(pointing) > 1 else 's'} at it; "
                                 "point them at another version first")
            tx.execute("DELETE FROM versions WHERE name = %s AND version = %s", (name, version))  # details cascade
        # The row goes first: a crash from here on leaves a directory nobody lists,
        # never a listed version without its files.
        self.files.remove(row[0])

    # -- aliases -------------------------------------------------------------

    @_reconnecting
    def alias(self, name: str, alias: str) -> int | None:
        check_name(name)
        check_name(alias, "alias")
        with self._read() as con:
            row = con.execute("SELECT version FROM aliases WHERE name = %s AND alias = %s", (name, alias)).fetchone()
            if row is None:
                self._require_model(con, name)
                return None
        return row[0]

    @_reconnecting
    def aliases(self, name: str) -> dict[str, int]:
        check_name(name)
        with self._read() as con:
            self._require_model(con, name)
            return dict(con.execute("SELECT alias, version FROM aliases WHERE name = %s ORDER BY alias", (name,)))

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None) -> AliasChange | None:
        check_name(alias, "alias")
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)
            if tx.execute("SELECT 1 FROM versions WHERE name = %s AND version = %s",
                          (name, version)).fetchone() is None:
                raise self._missing_version(tx, name, version)
            row = tx.execute("SELECT version FROM aliases WHERE name = %s AND alias = %s", (name, alias)).fetchone()
            current = row[0] if row else None
            if current == version:
                return None
            return self._move_alias(tx, name, alias, current, version, reason, actor, "set")

    def rollback(self, name: str, alias: str = "production", *, reason: str = "",
                 actor: str | None = None) -> AliasChange:
        check_name(alias, "alias")
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)  # two operators rolling back at once go back two steps
            row = tx.execute("SELECT version FROM aliases WHERE name = %s AND alias = %s", (name, alias)).fetchone()
            if row is None:
                raise unknown_alias(name, alias, dict(tx.execute("SELECT alias, version FROM aliases WHERE name = %s",
                                                                 (name,))))
            current = row[0]
            changes = self._history(tx, name, alias)
            exists = {r[0] for r in tx.execute("SELECT version FROM versions WHERE name = %s AND version = ANY(%s)",
                                               (name, sorted({c.to_version for c in changes})))}
            target = rollback_target(changes, current, exists)
            if target is None:
                raise StoreError(f"cannot roll back {name}@{alias}: it points at version {current} and there is "
                                 "no earlier version to go back to (see `opsloop models history`)")
            return self._move_alias(tx, name, alias, current, target, reason, actor, "rollback")

    @_reconnecting
    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        check_name(name)
        if alias is not None:
            check_name(alias, "alias")
        with self._read() as con:
            self._require_model(con, name)
            return self._history(con, name, alias)

    def _history(self, con: Any, name: str, alias: str | None) -> list[AliasChange]:
        if alias is None:
            rows = con.execute(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = %s ORDER BY id", (name,))
        else:
            rows = con.execute(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = %s AND alias = %s "
                               "ORDER BY id", (name, alias))
        return [AliasChange(name=r[0], alias=r[1], from_version=r[2], to_version=r[3], actor=r[4], at=r[5],
                            reason=r[6], action=r[7]) for r in rows]

    def _move_alias(self, tx: Any, name: str, alias: str, current: int | None, version: int, reason: str,
                    actor: str | None, action: str) -> AliasChange:
        actor = actor or current_user()
        tx.execute("INSERT INTO aliases (name, alias, version) VALUES (%s, %s, %s) "
                   "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version", (name, alias, version))
        at = tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, {NOW}, %s, %s) "
                        "RETURNING at", (name, alias, current, version, actor, reason, action)).fetchone()[0]
        return AliasChange(name=name, alias=alias, from_version=current, to_version=version, actor=actor, at=at,
                           reason=reason, action=action)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.uri!r}, bundles={str(self.root)!r})"


def _loads_rows(texts: list[str], name: str, numbers: list[int]) -> list[Any]:
    """Parse one JSON column of many rows at once; a damaged record is named."""
    try:
        return json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        for text, number in zip(texts, numbers, strict=True):
            try:
                json.loads(text)
            except ValueError as exc:
                raise StoreError(f"model {name}:{number}: its record in the registry is damaged ({exc})") from None
        raise


def _identity(path: Path) -> tuple[int, int]:
    """What tells one directory from another that took its place: (device, inode); a rename keeps it."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
