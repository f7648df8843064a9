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
that number replaces. The registry's logic (queries, checks, messages,
aliases, rollback) is `opsloop.sqlstore.SQLStore`'s, shared with the local
store; this module gives it PostgreSQL: the connection (opened again when
lost), the schema, the row locks and the server's clock. The plugin has no
options (the `open_store` hook does not receive any): everything is in the URI. Needs psycopg 3
(`pip install 'opsloop[postgres]'`), imported only when a store is opened.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import StoreError
from opsloop.hookspecs import hookimpl
from opsloop.sqlstore import HISTORY_COLUMNS, SQLStore, Statements, Transaction
from opsloop.store import ModelStore

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 3  # 2: the loop journal and lock (issue 12); 3: version thresholds (issue 13)
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

# Schema 2 (issue 12): what `opsloop loop` writes. Added to a schema-1 registry when it is
# first opened (`UPGRADES`); nothing else changes.
LOOP_TABLES = """
CREATE TABLE {s}.loop_journal (  -- one row per loop cycle, never changed; body: strict JSON
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT COLLATE "C" NOT NULL, at TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX loop_journal_by_name ON {s}.loop_journal (name, id);
CREATE TABLE {s}.loop_locks (
    name TEXT COLLATE "C" PRIMARY KEY, owner TEXT NOT NULL, since TEXT NOT NULL, expires TEXT NOT NULL);
"""
SCHEMA += LOOP_TABLES
# Schema 3 (issue 13): each version's current threshold, and the one a history row gave it;
# strict JSON, NULL for none (no default: adding them rewrites no row). Added to a schema-2
# registry the same way; nothing else changes.
THRESHOLD_COLUMNS = """
ALTER TABLE {s}.details ADD COLUMN threshold TEXT;
ALTER TABLE {s}.alias_history ADD COLUMN threshold TEXT;
"""
SCHEMA += THRESHOLD_COLUMNS
UPGRADES = {1: LOOP_TABLES, 2: THRESHOLD_COLUMNS}  # from schema N to N + 1

# The server's clock, not each machine's: one time line for the whole team. The local store's format.
NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
# For the loop lock: one instant per statement (clock_timestamp() moves between two calls).
LOCK_NOW = """to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
LOCK_LATER = ("""to_char((statement_timestamp() + ? * interval '1 second') AT TIME ZONE 'UTC', """
              """'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""")


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


class PostgresStore(SQLStore):
    """A registry shared by a team: PostgreSQL for the records, a directory for the bundles."""

    SQL = Statements(param="%s", join_aliases="string_agg(alias, ',')", now=LOCK_NOW, later=LOCK_LATER)
    MAX_VERSION = 2**31 - 1  # the version column is an INTEGER

    def __init__(self, conninfo: str, root: Path, *, schema: str = "opsloop", uri: str | None = None) -> None:
        self._psycopg = _psycopg()
        super().__init__(root)
        self.conninfo, self.schema = conninfo, schema
        self.uri = uri or conninfo
        self._open(self._connect())

    # Reads run once more, on a new connection, when the store's connection was lost.
    get = _reconnecting(SQLStore.get)
    latest = _reconnecting(SQLStore.latest)
    resolve = _reconnecting(SQLStore.resolve)
    versions = _reconnecting(SQLStore.versions)
    version_summaries = _reconnecting(SQLStore.version_summaries)
    models = _reconnecting(SQLStore.models)
    alias = _reconnecting(SQLStore.alias)
    aliases = _reconnecting(SQLStore.aliases)
    history = _reconnecting(SQLStore.history)
    cycles = _reconnecting(SQLStore.cycles)

    def tuning_storage(self) -> str:
        """The same database, Optuna's tables in schema `<schema>_tuning` (created here), through
        SQLAlchemy's psycopg 3 driver; libpq's environment (PGPASSWORD...) applies as for the store."""
        tuning = f"{self.schema}_tuning"
        with self._errors():
            con = self._connection()
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{tuning}"')
            con.commit()
        head, sep, query = self.conninfo.partition("?")
        url = "postgresql+psycopg://" + head.split("://", 1)[1]
        options = urllib.parse.urlencode({"options": f"-csearch_path={tuning}"})
        return f"{url}?{query}&{options}" if query else f"{url}?{options}"

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
            elif version < SCHEMA_VERSION:
                self._upgrade(con, version)
            con.commit()

    def _upgrade(self, con: psycopg.Connection, version: int) -> None:
        """Bring an older registry to SCHEMA_VERSION, under the schema lock `_initialise` holds.

        A user who may not create tables (or a read-only server) still reads it as it is.
        """
        from psycopg import sql

        pg = self._psycopg
        try:
            for step in range(version, SCHEMA_VERSION):
                con.execute(sql.SQL(UPGRADES[step]).format(s=sql.Identifier(self.schema)))
            con.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        except (pg.errors.InsufficientPrivilege, pg.errors.ReadOnlySqlTransaction) as exc:
            con.rollback()
            why = _one_line(exc)
            self._read_as_schema(version, lambda lacking: (
                f"model registry {self.uri} has schema {version}, from an older opsloop, and could not be "
                f"upgraded to schema {SCHEMA_VERSION} ({why}): it has {lacking} until "
                "a user who may create and alter tables in its schema opens it"))

    def _schema_version(self, con: psycopg.Connection) -> int | None:
        # A catalog query, not to_regclass(): that one may answer from a cache that still
        # misses the schema another process created while this one waited for the lock.
        if con.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'meta'",
                       (self.schema,)).fetchone() is None:
            return None
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """A write transaction; every writer first locks the model's row, so writers of one model queue."""
        with self._lock, self._errors():
            tx = Transaction(self._connection())
            try:
                yield tx
            except BaseException:
                tx.abort()  # while the row lock is still ours
                with contextlib.suppress(Exception):
                    tx.con.rollback()
                raise
            # A COMMIT that fails leaves a placed bundle where it is: whether the
            # commit happened is unknown, and a directory without a row is harmless.
            tx.con.commit()

    @contextlib.contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        with self._lock, self._errors():
            con = self._connection()
            try:
                yield con
            finally:  # end the snapshot: a session idle in a transaction holds back VACUUM
                with contextlib.suppress(Exception):
                    con.rollback()

    # -- what SQLStore asks of PostgreSQL --------------------------------------

    def _lock_model(self, tx: Transaction, name: str) -> None:
        """Lock `name`'s row until the commit (StoreError if unknown)."""
        if tx.execute("SELECT last_version FROM models WHERE name = %s FOR UPDATE", (name,)).fetchone() is None:
            self._require_model(tx, name)

    def _take_number(self, tx: Transaction, name: str) -> int:
        # The upsert takes the next number and locks the model's row until the commit; a
        # rollback (or a killed process) gives the number back, so there are never gaps.
        return tx.execute(f"INSERT INTO models AS m (name, last_version, created_at) VALUES (%s, 1, {NOW}) "
                          "ON CONFLICT (name) DO UPDATE SET last_version = m.last_version + 1 "
                          "RETURNING last_version", (name,)).fetchone()[0]

    def _insert_version(self, tx: Transaction, name: str, number: int, summary: tuple[str, ...],
                        relative: str) -> int:
        return tx.execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, "
                          f"digest, path) VALUES (%s, %s, {NOW}, %s, %s, %s, %s, %s, %s) RETURNING id",
                          (name, number, *summary, relative)).fetchone()[0]

    def _insert_change(self, tx: Transaction, name: str, alias: str, current: int | None, version: int,
                       actor: str, reason: str, action: str, threshold: str | None) -> str:
        values = (name, alias, current, version, actor, reason, action)
        if threshold is None:
            return tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}) "
                              f"VALUES (%s, %s, %s, %s, %s, {NOW}, %s, %s) RETURNING at", values).fetchone()[0]
        return tx.execute(f"INSERT INTO alias_history ({HISTORY_COLUMNS}, threshold) "
                          f"VALUES (%s, %s, %s, %s, %s, {NOW}, %s, %s, %s) RETURNING at",
                          (*values, threshold)).fetchone()[0]

    def _insert_cycle(self, tx: Transaction, name: str, status: str, body: str) -> tuple[int, str]:
        return tx.execute(f"INSERT INTO loop_journal (name, at, status, body) VALUES (%s, {NOW}, %s, %s) "
                          "RETURNING id, at", (name, status, body)).fetchone()

    def _existing(self, tx: Transaction, name: str, numbers: list[int]) -> set[int]:
        return {r[0] for r in tx.execute("SELECT version FROM versions WHERE name = %s AND version = ANY(%s)",
                                         (name, numbers))}

    def __repr__(self) -> str:
        return f"PostgresStore({self.uri!r}, bundles={str(self.root)!r})"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
