"""The PostgreSQL store (`postgres-store`): what it does beyond the suite it shares with the local store.

The shared suite (register, numbering, aliases, rollback, delete, names, digests,
8 processes x 25 registrations, SIGKILL, speed) runs against it as the
`[postgres]` half of test_local_store.py. Here: its URIs, its errors when the
server or psycopg is missing, concurrent first opens, a lost connection, and
the command line and a whole `opsloop run` on it. Against a real server
(store_contract.py says where it comes from); each test has its own schema.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from opsloop.errors import StoreError
from opsloop.plugins.postgres_store import PostgresStore, open_store, parse_uri

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

store_worker = store_contract.load_sibling("store_worker")


@pytest.fixture
def pg():
    """The test server with a schema of this test's own, dropped afterwards."""
    backend = store_contract.PostgresBackend(store_contract.require_pg())
    yield backend
    backend.cleanup()


def add(store, name="m", tag="t"):
    staged = store.staging_dir()
    return store.register(name, staged, store_worker.make_bundle(staged, tag=tag))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- URIs: no server needed ---------------------------------------------------------


def test_uris_are_split_between_libpq_and_opsloop(tmp_path):
    conninfo, root, schema, shown = parse_uri(
        "postgresql://team:s3cret@db.example:5433/registry?sslmode=require&bundles=/shared/models&schema=ml", tmp_path)
    assert conninfo == "postgresql://team:s3cret@db.example:5433/registry?sslmode=require"
    assert (root, schema) == (Path("/shared/models"), "ml")
    assert shown == "postgresql://team:***@db.example:5433/registry?sslmode=require&bundles=/shared/models&schema=ml"
    conninfo, root, schema, _ = parse_uri("postgres://db/registry?bundles=models", tmp_path)
    assert (conninfo, root, schema) == ("postgres://db/registry", tmp_path / "models", "opsloop")
    _, root, _, _ = parse_uri("postgresql://db/registry", tmp_path, env={"OPSLOOP_BUNDLES": "/mnt/models"})
    assert root == Path("/mnt/models")
    conninfo, _, _, shown = parse_uri("postgresql://db/r?password=s3cret&bundles=/b", tmp_path)
    assert "password=s3cret" in conninfo and "s3cret" not in shown and "password=***" in shown
    conninfo, root, _, _ = parse_uri("postgresql:///registry?host=/run/postgresql&bundles=/m%20x+y", tmp_path)
    assert (conninfo, root) == ("postgresql:///registry?host=/run/postgresql", Path("/m x+y"))  # as libpq reads it
    for other in (".opsloop", "local:/srv/models", "file:///srv/models", "s3://bucket/models", "sqlite:///x.db", ""):
        assert parse_uri(other, tmp_path) is None
        assert open_store(other, tmp_path) is None


def test_a_uri_without_bundles_or_with_a_bad_schema_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSLOOP_BUNDLES", raising=False)
    with pytest.raises(StoreError, match=r"postgresql://u:\*\*\*@db/registry needs a bundle directory: add "
                                         r"\?bundles=/shared/models to the URI or set OPSLOOP_BUNDLES"):
        open_store("postgresql://u:pw@db/registry", tmp_path)
    for bad in ("Models", "a-b", "x%3Bdrop", "1abc", "a" * 64, ""):
        with pytest.raises(StoreError, match="invalid schema"):
            open_store(f"postgresql://db/r?bundles=/b&schema={bad}", tmp_path)


def test_psycopg_is_imported_only_when_a_store_opens_and_its_absence_is_explained(tmp_path, monkeypatch):
    code = "import sys, opsloop.plugins.postgres_store; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # `opsloop --help` and local-store users never pay for it
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails, as when it is not installed
    with pytest.raises(StoreError) as info:
        open_store("postgresql://db/registry?bundles=b", tmp_path)
    assert str(info.value) == "the PostgreSQL store needs psycopg: pip install 'opsloop[postgres]'"


# -- against the server ----------------------------------------------------------------


def test_connection_failures_are_one_line_errors_without_the_password(tmp_path, pg):
    server = urllib.parse.urlsplit(pg.server)
    host = f"{server.hostname}:{server.port}"
    role = f"opsloop_nologin_{secrets.token_hex(4)}"
    with store_contract.admin(pg.server) as con:
        con.execute(f"CREATE ROLE {role} NOLOGIN")
    cases = {
        f"opsloop:s3cret@127.0.0.1:{free_port()}/opsloop": "Connection refused",
        f"opsloop:s3cret@{host}/no_such_db": 'database "no_such_db" does not exist',
        f"nobody_{role}:s3cret@{host}/opsloop": f'role "nobody_{role}" does not exist',
        f"{role}:s3cret@{host}/opsloop": f'role "{role}" is not permitted to log in',
    }
    try:
        for where, expected in cases.items():
            with pytest.raises(StoreError) as info:
                open_store(f"postgresql://{where}?bundles={tmp_path}/b&schema={pg.schema}", tmp_path)
            message = str(info.value)
            user, _, rest = where.partition(":s3cret@")
            assert message.startswith(f"cannot connect to the model registry postgresql://{user}:***@{rest}?")
            assert expected in message and "s3cret" not in message and "\n" not in message
            assert info.value.__suppress_context__  # no chained psycopg traceback behind it
    finally:
        with store_contract.admin(pg.server) as con:
            con.execute(f"DROP ROLE {role}")


def test_concurrent_first_opens_create_the_schema_once(tmp_path, pg):
    code = ("import os, sys, time; from pathlib import Path\n"
            "from opsloop.plugins.postgres_store import open_store\n"
            "import psycopg; print('ready', flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
            "open_store(sys.argv[1], Path.cwd()).close()\n")
    for round_ in range(2):  # each round a schema nobody created yet, opened by 8 processes at once
        pg.cleanup()
        go = tmp_path / f"go{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", code, pg.uri(tmp_path / "reg"), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        for p in procs:  # all imported and waiting: the opens really overlap
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        go.touch()
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, errors
    with pg.open(tmp_path / "reg") as store:
        assert add(store).version == 1


def test_a_schema_that_is_not_a_registry_is_refused(tmp_path, pg):
    with store_contract.admin(pg.server) as con:
        con.execute(f"CREATE SCHEMA {pg.schema}")
        con.execute(f"CREATE TABLE {pg.schema}.notes (text TEXT)")
    with pytest.raises(StoreError, match=f"schema {pg.schema} of .* is not an opsloop registry"):
        pg.open(tmp_path / "reg")
    with store_contract.admin(pg.server) as con:
        con.execute(f"DROP SCHEMA {pg.schema} CASCADE")
    pg.open(tmp_path / "reg").close()
    with store_contract.admin(pg.server) as con:
        con.execute(f"UPDATE {pg.schema}.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="has schema 99, newer than this opsloop understands .3.; upgrade opsloop"):
        pg.open(tmp_path / "reg")


def test_schemas_are_separate_registries_and_bundle_paths_are_relative(tmp_path, pg):
    other = store_contract.PostgresBackend(pg.server)
    try:
        with pg.open(tmp_path / "a") as a, other.open(tmp_path / "b") as b:
            assert isinstance(a, PostgresStore) and add(a).version == 1 and add(a).version == 2
            assert add(b).version == 1 and [m.versions for m in b.models()] == [1]
        # the team mounts the bundle directory elsewhere: the records still find the bundles
        (tmp_path / "a").rename(tmp_path / "moved")
        with pg.open(tmp_path / "moved") as moved:
            v = moved.get("m", 2)
            assert v.path == tmp_path / "moved" / "bundles" / "m" / "2" and (v.path / "manifest.json").is_file()
    finally:
        other.cleanup()


def test_a_lost_connection_is_opened_again(tmp_path, pg):
    with pg.open(tmp_path / "reg") as store:
        add(store)

        def kill_session():
            pid = store._con.info.backend_pid
            with store_contract.admin(pg.server) as con:
                con.execute("SELECT pg_terminate_backend(%s)", (pid,))

        kill_session()  # a server restart, an idle timeout, an administrator
        assert store.latest("m").version == 1  # reads try once more on a new connection
        kill_session()
        with pytest.raises(StoreError, match="lost the connection to the model registry"):
            add(store)  # a write is not repeated behind the caller's back
        assert add(store).version == 2
        assert [v.version for v in store.versions("m")] == [1, 2]


def test_the_command_line_and_a_whole_run_on_a_shared_registry(opsloop_project, small_config, pg, tmp_path,
                                                               monkeypatch):
    monkeypatch.delenv("OPSLOOP_STORE", raising=False)
    small_config["store"] = {"uri": pg.uri(tmp_path / "shared"), "plugins": ["local-store", "postgres-store"]}
    small_config["retrain"] = {"threshold-policy": {"min_f1": 0.99}}  # a second version, as `candidate`
    project = opsloop_project(config=small_config)
    result = project.run("run").assert_ok()
    assert [v["ref"] for v in result.json["versions"]] == ["asd-anomaly:1", "asd-anomaly:2"]
    assert not (project.path / ".opsloop" / "registry.db").exists()
    (listed,) = project.run("models", "list", "--json").assert_ok().json
    assert (listed["name"], listed["versions"], listed["aliases"]) == (
        "asd-anomaly", 2, {"candidate": 2, "production": 1})
    shown = project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json
    assert shown["version"] == 1 and shown["path"] == str(tmp_path / "shared" / "bundles" / "asd-anomaly" / "1")
    project.run("models", "promote", "asd-anomaly", "2", "--reason", "wins on f1").assert_ok()
    assert project.run("models", "rollback", "asd-anomaly", "--json").assert_ok().json["to_version"] == 1
    history = project.run("models", "history", "asd-anomaly", "--alias", "production", "--json").assert_ok().json
    assert [(h["from_version"], h["to_version"], h["action"]) for h in history] == [
        (None, 1, "set"), (1, 2, "set"), (2, 1, "rollback")]
    monkeypatch.setenv("OPSLOOP_STORE", f"postgresql://opsloop:s3cret@127.0.0.1:{free_port()}/opsloop?bundles=b")
    failed = project.run("models", "list").assert_error("cannot connect to the model registry",
                                                        "postgresql://opsloop:***@127.0.0.1")
    assert "s3cret" not in failed.stderr


def test_a_writer_held_up_too_long_is_told_the_registry_is_busy(tmp_path, pg):
    with pg.open(tmp_path / "reg") as store:
        add(store)
        store._con.execute("SET lock_timeout = '200ms'")  # instead of 30 s, for the test
        store._con.commit()
        with store_contract.admin(pg.server) as other:
            other.autocommit = False  # another process in the middle of a write to model m
            other.execute(f"SELECT 1 FROM {pg.schema}.models WHERE name = 'm' FOR UPDATE")
            with pytest.raises(StoreError, match="model registry postgresql://.* is busy: another process holds"):
                store.set_alias("m", "production", 1)
            assert store.latest("m").version == 1  # readers never wait
            other.rollback()
        assert store.set_alias("m", "production", 1).to_version == 1
        pid = store._con.info.backend_pid
        with store_contract.admin(pg.server) as con:  # between calls the session holds no snapshot, no lock
            state = con.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
        assert state == "idle"
