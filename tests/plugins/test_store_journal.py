"""The loop journal and the loop lock (issue 12), in both model stores, and the schema upgrades (2 and 3).

Tests taking `store` or `backend` run once per store (`[local]`, `[postgres]`
against a real server, skipped with the reason when none can be started), as
in test_local_store.py; see store_contract.py. Races are real processes.
Times are never asserted on: a lock's expiry is waited past, not measured.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from opsloop.errors import StoreError
from opsloop.plugins.local_store import LocalStore
from opsloop.store import CycleRecord, LockState

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

make_bundle = store_contract.load_sibling("store_worker").make_bundle

TTL = 0.05  # seconds: a lock that expires while the test sleeps a little longer

# One process of a race: opens the store (`lock`: before saying ready, so that only the
# lock calls overlap; `record`: after the start, so that the opens and upgrades overlap too).
RACER = """\
import os, sys, time
from pathlib import Path
from opsloop.plugins import local_store, postgres_store
uri, go, name, owner, action = sys.argv[1:6]
def open_():
    return local_store.open_store(uri, Path.cwd()) or postgres_store.open_store(uri, Path.cwd())
store = open_() if action == "lock" else None
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
store = store or open_()
if action == "lock":
    print(store.lock(name, owner, 60).acquired, flush=True)
else:
    print(store.record_cycle(name, "keep", {"owner": owner}).id, flush=True)
store.close()
"""


backend, store = store_contract.backend, store_contract.store  # the shared suite's fixtures


def add(store, name="m", tag="t"):
    staged = store.staging_dir()
    return store.register(name, staged, make_bundle(staged, tag=tag))


def race(backend, root: Path, go: Path, name: str, action: str, count: int = 8) -> list[str]:
    """`count` processes do `action` on `name` at once; what each printed."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, backend.uri(root), str(go), name, f"p{i}", action],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]
    for p in procs:  # all up and waiting: the calls really overlap
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * count, [err for _, err in outputs]
    return [out.strip() for out, _ in outputs]


def utc(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert at.utcoffset().total_seconds() == 0 and text.endswith("Z")
    return at


# -- the journal ---------------------------------------------------------------------------


def test_the_journal_appends_and_reads_back_newest_first(store):
    first = store.record_cycle("m", "keep", {"decision": "keep", "score": math.nan, "window": [1.0, math.inf],
                                             "nested": {"low": -math.inf, "ok": 0.25}, "error": None})
    assert isinstance(first, CycleRecord) and (first.name, first.status) == ("m", "keep")
    assert first.body == {"decision": "keep", "score": None, "window": [1.0, None],
                          "nested": {"low": None, "ok": 0.25}, "error": None}  # as stored: strict JSON
    utc(first.at)
    second = store.record_cycle("m", "promoted", {"promoted": "m:2"})
    store.record_cycle("other", "error", {"error": "boom"})  # any name: no model needed
    third = store.record_cycle("m", "rejected", {})
    assert first.id < second.id < third.id
    assert store.cycles("m") == [third, second, first]
    assert store.cycles("m", limit=2) == [third, second]
    assert store.cycles("m", limit=0) == []
    assert store.cycles("m", limit=10**30) == [third, second, first]
    assert [c.status for c in store.cycles("other")] == ["error"]
    assert store.cycles("never-ran") == []
    assert store.cycles("m")[-1].body["score"] is None


def test_journal_arguments_are_checked(store):
    for call in (lambda: store.record_cycle("../m", "keep", {}), lambda: store.cycles("a b"),
                 lambda: store.lock("m/x", "me", 1), lambda: store.unlock("", "me")):
        with pytest.raises(StoreError, match="invalid model name"):
            call()
    with pytest.raises(StoreError, match="invalid loop journal status"):
        store.record_cycle("m", "", {})
    with pytest.raises(StoreError, match="invalid loop journal body"):
        store.record_cycle("m", "keep", [1, 2])
    with pytest.raises(StoreError, match="invalid limit -1"):
        store.cycles("m", limit=-1)
    for ttl in (0, -1, math.nan, math.inf, "60", True):
        with pytest.raises(StoreError, match="invalid loop lock ttl"):
            store.lock("m", "me", ttl)
    with pytest.raises(StoreError, match="invalid loop lock owner"):
        store.lock("m", " ", 1)
    assert store.cycles("m") == []


# -- the lock ------------------------------------------------------------------------------


def test_the_lock_is_taken_renewed_refused_taken_over_and_released(store):
    mine = store.lock("m", "alice@a:1", 60)
    assert isinstance(mine, LockState) and mine.acquired and mine.owner == "alice@a:1"
    assert utc(mine.since) < utc(mine.expires)
    theirs = store.lock("m", "bob@b:2", 60)
    assert not theirs.acquired
    assert (theirs.owner, theirs.since, theirs.expires) == (mine.owner, mine.since, mine.expires)
    time.sleep(0.01)
    renewed = store.lock("m", "alice@a:1", 120)
    assert renewed.acquired and renewed.since == mine.since and utc(renewed.expires) > utc(mine.expires)
    assert store.lock("other", "bob@b:2", 60).acquired  # one lock per name
    store.unlock("m", "bob@b:2")  # not bob's: nothing happens
    assert not store.lock("m", "bob@b:2", 60).acquired
    store.unlock("m", "alice@a:1")
    taken = store.lock("m", "bob@b:2", 60)
    assert taken.acquired and taken.owner == "bob@b:2"
    store.unlock("m", "bob@b:2")
    store.unlock("m", "bob@b:2")  # released twice: nothing to do


def test_an_expired_lock_is_taken_over(store):
    dead = store.lock("m", "died@a:1", TTL)
    assert dead.acquired
    time.sleep(TTL * 4)  # past its expiry, whatever the clock's resolution
    taken = store.lock("m", "next@b:2", 60)
    assert taken.acquired and taken.owner == "next@b:2" and taken.since != dead.since
    assert not store.lock("m", "died@a:1", 60).acquired  # the dead loop, back, finds it taken
    store.unlock("m", "died@a:1")  # and cannot release the new holder's lock
    assert store.lock("m", "third@c:3", 60).owner == "next@b:2"


def test_processes_racing_for_the_lock_exactly_one_acquires(tmp_path, backend):
    root = tmp_path / "reg"
    with backend.open(root) as store:
        store.lock("stale", "died@a:1", TTL)  # a lock left by a loop that died: also raced for
    time.sleep(TTL * 4)
    for round_, name in enumerate(["m", "stale"]):
        results = race(backend, root, tmp_path / f"go{round_}", name, "lock")
        assert sorted(results) == ["False"] * 7 + ["True"], results
        winner = f"p{results.index('True')}"
        with backend.open(root) as store:
            assert store.lock(name, "someone-else", 60).owner == winner


# -- schemas 2 and 3: the upgrade of an older registry -----------------------------------------------------

CURRENT = 3  # both stores' SCHEMA_VERSION
LOOP_TABLES = {"loop_journal", "loop_locks"}
THRESHOLD = {"value": 0.73, "rule": "precision", "target": 0.9, "inclusive": True}


def make_old_schema(backend, root: Path, schema: int) -> None:
    """Turn a registry back into what an earlier opsloop wrote: schema 2 (no threshold columns) or 1 (nor loop
    tables), as that opsloop's DDL left it."""
    statements = ["ALTER TABLE details DROP COLUMN threshold", "ALTER TABLE alias_history DROP COLUMN threshold"]
    if schema == 1:
        statements += ["DROP TABLE loop_journal", "DROP TABLE loop_locks"]
    if backend.id == "local":
        con = sqlite3.connect(root / "registry.db", isolation_level=None)
        try:
            for statement in statements:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {schema}")
        finally:
            con.close()
    else:
        backend._execute(*statements, f"UPDATE meta SET value = '{schema}' WHERE key = 'schema_version'")


def schema_of(backend, root: Path) -> tuple[int, set[str]]:
    """The registry's schema version, which loop tables it has, and which tables have a threshold column."""
    if backend.id == "local":
        con = sqlite3.connect(f"file:{root / 'registry.db'}?mode=ro", uri=True)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'loop%'")}
            tables |= {f"{t}.threshold" for t in ("details", "alias_history")
                       if "threshold" in {r[1] for r in con.execute(f"PRAGMA table_info({t})")}}
        finally:
            con.close()
        return version, tables - {"loop_journal_by_name"}
    with store_contract.admin(backend.server) as con:
        version = con.execute(f"SELECT value FROM {backend.schema}.meta WHERE key = 'schema_version'").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND "
                                            "tablename LIKE 'loop%%'", (backend.schema,))}
        tables |= {f"{r[0]}.threshold" for r in con.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'threshold'",
            (backend.schema,))}
    return int(version), tables


def tables_of(schema: int) -> set[str]:
    """What `schema_of` finds in a registry at `schema`."""
    return ((LOOP_TABLES if schema >= 2 else set())
            | ({"details.threshold", "alias_history.threshold"} if schema >= 3 else set()))


def old_registry(backend, root: Path, schema: int = 1) -> dict:
    """A registry at an older schema with m:1..3, production -> 2 after 1, n:1; what it held."""
    with backend.open(root) as store:
        for tag in "abc":
            add(store, "m", tag)
        add(store, "n", "x")
        store.set_alias("m", "production", 1, reason="first")
        store.set_alias("m", "production", 2, reason="better")
        held = {"models": store.models(), "versions": store.versions("m") + store.versions("n"),
                "history": store.history("m")}
    make_old_schema(backend, root, schema)
    assert schema_of(backend, root) == (schema, tables_of(schema))
    return held


@pytest.mark.parametrize("old", [1, 2])
def test_an_older_registry_is_upgraded_in_place_on_open(tmp_path, backend, old):
    root = tmp_path / "reg"
    held = old_registry(backend, root, old)
    with backend.open(root) as store:
        assert schema_of(backend, root) == (CURRENT, tables_of(CURRENT))
        assert store.models() == held["models"]
        assert store.versions("m") + store.versions("n") == held["versions"]
        assert all(v.threshold is None for v in store.versions("m"))  # an older registry had none
        assert store.history("m") == held["history"]
        assert all(c.threshold is None for c in store.history("m"))
        assert store.resolve("m@production").version == 2
        assert store.rollback("m").to_version == 1  # the history still drives rollback
        assert store.cycles("m") == []
        record = store.record_cycle("m", "keep", {"ok": True})
        assert store.cycles("m") == [record]
        assert store.lock("m", "me", 60).acquired
        assert add(store, "m", "d").version == 4
        change = store.set_alias("m", "production", 1, threshold=THRESHOLD)  # schema 3: thresholds recorded
        assert (change.action, change.threshold) == ("threshold", THRESHOLD)
        assert store.get("m", 1).threshold == THRESHOLD and store.get("m", 2).threshold is None
    with backend.open(root) as store:  # opened again: nothing more to do, nothing lost
        assert schema_of(backend, root)[0] == CURRENT
        assert [c.id for c in store.cycles("m")] == [record.id]
        assert store.resolve("m@production").threshold == THRESHOLD
        assert store.history("m")[-1].threshold == THRESHOLD


def test_processes_opening_a_schema_1_registry_at_once_upgrade_it_once(tmp_path, backend):
    root = tmp_path / "reg"
    held = old_registry(backend, root)
    ids = race(backend, root, tmp_path / "go", "m", "record")
    assert len(set(ids)) == 8
    with backend.open(root) as store:
        assert schema_of(backend, root) == (CURRENT, tables_of(CURRENT))
        assert [c.id for c in store.cycles("m")] == sorted((int(i) for i in ids), reverse=True)
        assert sorted(c.body["owner"] for c in store.cycles("m")) == sorted(f"p{i}" for i in range(8))
        assert store.versions("m") + store.versions("n") == held["versions"]


def test_a_newer_schema_is_still_refused(tmp_path, backend):
    root = tmp_path / "reg"
    backend.open(root).close()
    if backend.id == "local":
        con = sqlite3.connect(root / "registry.db", isolation_level=None)
        con.execute("PRAGMA user_version = 4")
        con.close()
    else:
        backend._execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"has schema 4, newer than this opsloop understands \(3\); upgrade"):
        backend.open(root)


def test_a_read_only_schema_1_registry_opens_for_reads(tmp_path, mounts):
    backend = store_contract.LocalBackend()
    root = tmp_path / "reg"
    old_registry(backend, root)
    ro = mounts.read_only(root)
    with LocalStore(ro) as store:
        assert store.read_only
        assert [m.name for m in store.models()] == ["m", "n"]
        assert store.resolve("m@production").version == 2
        for call in (lambda: store.cycles("m"), lambda: store.record_cycle("m", "keep", {}),
                     lambda: store.lock("m", "me", 60), lambda: store.unlock("m", "me")):
            with pytest.raises(StoreError, match=r"has schema 1, from an older opsloop, and is read-only: it has "
                                                 r"no loop journal or lock until it is opened once where it can"):
                call()
    assert schema_of(backend, root) == (1, set())  # untouched
    with LocalStore(root) as store:  # writable: upgraded
        assert store.cycles("m") == []
    with LocalStore(ro) as store:  # and now readable through the read-only mount, not writable
        assert store.cycles("m") == []
        with pytest.raises(StoreError, match="is read-only"):
            store.lock("m", "me", 60)


def test_a_read_only_schema_2_registry_reads_versions_without_thresholds(tmp_path, mounts):
    backend = store_contract.LocalBackend()
    root = tmp_path / "reg"
    held = old_registry(backend, root, 2)
    ro = mounts.read_only(root)
    with LocalStore(ro) as store:
        assert store.read_only
        mounted = [attrs.evolve(v, path=root / v.path.relative_to(ro)) for v in store.versions("m")]
        assert mounted == held["versions"][:3]
        assert store.resolve("m@production").version == 2 and store.resolve("m@production").threshold is None
        assert store.history("m") == held["history"] and store.history("m", "production")[-1].threshold is None
        assert store.cycles("m") == []  # schema 2 has the loop tables
        with pytest.raises(StoreError, match="is read-only"):
            store.set_alias("m", "production", 2, threshold=THRESHOLD)
    assert schema_of(backend, root) == (2, tables_of(2))  # untouched
    with LocalStore(root) as store:  # writable: upgraded
        assert store.set_alias("m", "production", 2, threshold=THRESHOLD).action == "threshold"
    with LocalStore(ro) as store:
        assert store.resolve("m@production").threshold == THRESHOLD


@contextlib.contextmanager
def restricted_user(backend: Any, kind: str, *grants: str) -> Iterator[str]:
    """A PostgreSQL login with only `grants` on the backend's schema (`{s}` stands for it): its server URL.
    The role and the backend's schema are dropped afterwards."""
    role = f"opsloop_{kind}_{secrets.token_hex(4)}"
    try:
        with store_contract.admin(backend.server) as con:
            con.execute(f"CREATE ROLE {role} LOGIN")
            con.execute(f"GRANT USAGE ON SCHEMA {backend.schema} TO {role}")
            for grant in grants:
                con.execute(f"GRANT {grant.format(s=backend.schema)} TO {role}")
        server = urllib.parse.urlsplit(backend.server)
        yield server._replace(netloc=f"{role}@{server.hostname}:{server.port}").geturl()
    finally:
        backend.cleanup()
        with store_contract.admin(backend.server) as con:
            con.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_postgres_user_who_may_write_rows_but_not_alter_tables_uses_a_schema_2_registry(tmp_path):
    from opsloop.plugins.postgres_store import open_store

    backend = store_contract.PostgresBackend(store_contract.require_pg())
    root = tmp_path / "reg"
    held = old_registry(backend, root, 2)
    with restricted_user(backend, "writer", "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s}",
                         "USAGE ON ALL SEQUENCES IN SCHEMA {s}") as writer:
        with open_store(f"{writer}?schema={backend.schema}&bundles={root}", tmp_path) as store:
            assert store.versions("m") + store.versions("n") == held["versions"]  # threshold None throughout
            assert store.history("m") == held["history"]
            assert store.set_alias("m", "production", 3, reason="as before").threshold is None  # writes as before
            assert store.rollback("m").to_version == 2
            assert add(store, "m", "d").threshold is None
            with pytest.raises(StoreError, match=r"cannot record the threshold of m:2: model registry .* has schema "
                                                 r"2, from an older opsloop, and could not be upgraded to schema 3 "
                                                 r"\(.*\): it has no version thresholds until"):
                store.set_alias("m", "production", 2, threshold=THRESHOLD)
            assert len(store.history("m")) == 4
        assert schema_of(backend, root) == (2, tables_of(2))
        with backend.open(root) as store:  # its owner opens it: upgraded, nothing lost
            assert schema_of(backend, root) == (3, tables_of(3))
            assert [c.action for c in store.history("m")] == ["set", "set", "set", "rollback"]
            assert store.set_alias("m", "production", 2, threshold=THRESHOLD).threshold == THRESHOLD


def test_a_postgres_user_who_cannot_create_tables_reads_a_schema_1_registry(tmp_path):
    from opsloop.plugins.postgres_store import open_store

    backend = store_contract.PostgresBackend(store_contract.require_pg())
    root = tmp_path / "reg"
    old_registry(backend, root)
    with restricted_user(backend, "reader", "SELECT ON ALL TABLES IN SCHEMA {s}") as reader:
        with open_store(f"{reader}?schema={backend.schema}&bundles={root}", tmp_path) as store:
            assert [m.name for m in store.models()] == ["m", "n"]
            with pytest.raises(StoreError, match=r"has schema 1, from an older opsloop, and could not be upgraded "
                                                 r"to schema 3 \(.*permission denied.*\): it has no loop journal"):
                store.cycles("m")
        assert schema_of(backend, root) == (1, set())


def test_a_schema_1_registry_file_sqlite_can_only_read_opens_for_reads(tmp_path, monkeypatch):
    # A registry.db without write permission in a writable directory: SQLite opens it
    # read-only without a word (simulated with mode=ro: the tests may run as root).
    backend = store_contract.LocalBackend()
    root = tmp_path / "reg"
    old_registry(backend, root)
    connect = sqlite3.connect

    def read_only_file(database, *args, **kwargs):
        if Path(database) == root / "registry.db":
            return connect(f"file:{database}?mode=ro", *args, uri=True, **kwargs)
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only_file)
    with LocalStore(root) as store:
        assert not store.read_only and store.resolve("m@production").version == 2
        with pytest.raises(StoreError, match=r"has schema 1, from an older opsloop, and is read-only"):
            store.cycles("m")
        with pytest.raises(StoreError, match=r"registry.db is read-only .*not changed"):
            store.set_alias("m", "production", 3)
    monkeypatch.undo()
    assert schema_of(backend, root) == (1, set())
