"""The two model stores behind one test suite: how each is opened, inspected and cleaned up.

`tests/plugins/test_local_store.py` runs its store tests once per backend
(`[local]`, `[postgres]`): the PostgreSQL store must pass the local store's
suite, assertion for assertion. What differs is here: how a registry is named
(a directory, or a database URI with a fresh schema and a bundle directory),
how a test makes the database refuse a row, and how it fills in 10,000
versions.

PostgreSQL comes from `OPSLOOP_TEST_PG` (tests/run.sh exports it), or else
from running tests/services/postgres.sh once; when neither gives a server,
the PostgreSQL tests skip with the script's own explanation.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opsloop.store import ModelStore

HERE = Path(__file__).parent
SERVICE = HERE.parent / "services" / "postgres.sh"
PG_ENV = "OPSLOOP_TEST_PG"


def load_sibling(name: str) -> Any:
    """Import `tests/plugins/<name>.py` once per session (no packages under --import-mode=importlib)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.cache
def pg_server() -> tuple[str | None, str]:
    """`(URI, "")` of a PostgreSQL server for tests, or `(None, why not)`; asked once per session."""
    if importlib.util.find_spec("psycopg") is None:
        return None, "psycopg is not installed (pip install -e '.[postgres]')"
    if os.environ.get(PG_ENV):
        return os.environ[PG_ENV], ""
    try:
        proc = subprocess.run(["bash", str(SERVICE)], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{SERVICE.name} could not run: {exc}"
    match = re.search(rf"^{PG_ENV}=(\S+)$", proc.stdout, re.MULTILINE)
    if proc.returncode == 0 and match:
        return match.group(1), ""
    return None, f"no PostgreSQL server for the tests: {proc.stderr.strip() or f'{SERVICE.name} exited {proc.returncode}'}"


def require_pg() -> str:
    """The test server's URI, or skip the test with the reason."""
    uri, why = pg_server()
    if uri is None:
        pytest.skip(why)
    return uri


def admin(server: str) -> Any:
    """An autocommit connection for the test itself (DDL, bulk rows, cleanup)."""
    import psycopg

    return psycopg.connect(server, autocommit=True)


class LocalBackend:
    """The embedded store: a directory."""

    id = "local"

    def uri(self, root: Path) -> str:
        return str(root)

    def open(self, root: Path) -> ModelStore:
        from opsloop.plugins.local_store import LocalStore

        return LocalStore(root)

    def where(self, store: Any) -> str:
        """A regex for how the store's errors name the registry."""
        return re.escape("registry.db")

    def refuse_inserts(self, store: Any, message: str) -> None:
        import sqlite3

        with sqlite3.connect(store.db) as con:  # SQLite itself refuses the row, after the bundle was moved
            con.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON versions BEGIN SELECT RAISE(ABORT, '{message}'); END")

    def allow_inserts(self, store: Any) -> None:
        import sqlite3

        with sqlite3.connect(store.db) as con:
            con.execute("DROP TRIGGER refuse")

    def fill(self, store: Any, name: str, last: int) -> None:
        """Copy version 1 of `name` into versions 2..last, as registration would write them."""
        import sqlite3

        with sqlite3.connect(store.db) as con:
            con.execute("WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                        "INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, digest, "
                        "path) SELECT name, i, created_at, created_by, flavor, task, metrics, digest, path "
                        "FROM versions, n", (last,))
            con.execute("INSERT INTO details SELECT v.id, d.params, d.lineage, d.threshold FROM versions v, details d "
                        "WHERE v.id != d.id")
            con.execute("UPDATE models SET last_version = ?", (last,))

    def cleanup(self) -> None:
        pass


class PostgresBackend:
    """The PostgreSQL store: the test server, a schema of its own per test, bundles under the test's directory."""

    id = "postgres"

    def __init__(self, server: str) -> None:
        self.server = server
        self.schema = f"t_{secrets.token_hex(6)}"

    def uri(self, root: Path) -> str:
        return f"{self.server}?schema={self.schema}&bundles={root}"

    def open(self, root: Path) -> ModelStore:
        from opsloop.plugins.postgres_store import open_store

        store = open_store(self.uri(root), root.parent)
        assert store is not None
        return store

    def where(self, store: Any) -> str:
        return re.escape(store.uri)

    def _execute(self, *statements: str, params: Any = None) -> None:
        with admin(self.server) as con:
            con.execute(f"SET search_path TO {self.schema}")
            for statement in statements:
                con.execute(statement, params)

    def refuse_inserts(self, store: Any, message: str) -> None:
        self._execute(f"CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                      f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$",
                      "CREATE TRIGGER refuse BEFORE INSERT ON versions FOR EACH ROW EXECUTE FUNCTION refuse()")

    def allow_inserts(self, store: Any) -> None:
        self._execute("DROP TRIGGER refuse ON versions", "DROP FUNCTION refuse()")

    def fill(self, store: Any, name: str, last: int) -> None:
        self._execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, digest, "
                      "path) SELECT name, i, created_at, created_by, flavor, task, metrics, digest, path "
                      "FROM versions, generate_series(2, %(last)s) i",
                      "INSERT INTO details SELECT v.id, d.params, d.lineage, d.threshold FROM versions v, details d "
                      "WHERE v.id != d.id",
                      "UPDATE models SET last_version = %(last)s", "ANALYZE", params={"last": last})

    def cleanup(self) -> None:
        with admin(self.server) as con:
            con.execute("SET lock_timeout = '10s'")
            con.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


BACKENDS = ["local", "postgres"]


def make_backend(kind: str) -> LocalBackend | PostgresBackend:
    """A backend for one test (PostgreSQL: skipped with the reason when no server can be had)."""
    return LocalBackend() if kind == "local" else PostgresBackend(require_pg())


# The fixtures every module of the shared suite uses; a module takes them with `backend = store_contract.backend`.
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    """Each store in turn: how to name, open and inspect a registry of that kind."""
    made = make_backend(request.param)
    yield made
    made.cleanup()


@pytest.fixture
def store(backend: Any, tmp_path: Path) -> Any:
    """An open registry of the backend, in the test's directory."""
    with backend.open(tmp_path / "reg") as opened:
        yield opened
