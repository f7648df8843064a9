"""The model stores' shared suite: real SQLite or PostgreSQL, real files, real processes.

Tests taking `store` or `backend` run once per store (`[local]`: `local-store`,
`[postgres]`: `postgres-store` against a real server, skipped with the reason
when none can be started); see store_contract.py. The rest are the local
store's own (URIs, SQLite damage).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from opsloop.bundle import read_manifest
from opsloop.config import Config, default_table
from opsloop.errors import BundleError, StoreError
from opsloop.manager import PluginManager
from opsloop.plugins.local_store import LocalStore, open_store, store_root
from opsloop.session import Session
from opsloop.store import STAGING_TTL, Ref, check_name

WORKER = Path(__file__).with_name("store_worker.py")
import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

store_worker = store_contract.load_sibling("store_worker")
make_bundle = store_worker.make_bundle


backend, store = store_contract.backend, store_contract.store  # the shared suite's fixtures


def add(store, name="m", tag=None, **kwargs):
    """Register one small real bundle."""
    staged = store.staging_dir()
    return store.register(name, staged, make_bundle(staged, tag=tag or f"t{time.time_ns()}", **kwargs))


def check_consistent(backend, root: Path, name: str) -> list[int]:
    """Open the store afresh; every listed version has its verified files; numbers have no gaps."""
    with backend.open(root) as s:
        try:
            versions = s.versions(name)
        except StoreError:
            return []
        numbers = [v.version for v in versions]
        assert numbers == list(range(1, len(numbers) + 1))
        for v in versions:
            assert v.path.is_dir(), v.ref
            manifest = read_manifest(v.path, ref=v.ref, digest=v.digest)
            assert manifest["params"]["tag"] == v.params["tag"]
        return numbers


# -- register, list, get, resolve --------------------------------------------


def test_register_list_get_resolve(store):
    first = add(store, tag="a", metrics={"f1": 0.7})
    for tag in ("b", "c"):
        add(store, tag=tag)
    assert first.ref == "m:1" and first.path == store.root / "bundles" / "m" / "1" and first.path.is_absolute()
    assert first.created_by == "worker" and first.flavor == "test" and first.task == "classification"
    assert first.metrics == {"f1": 0.7} and first.params == {"tag": "a"} and first.lineage["tag"] == "a"
    assert datetime.fromisoformat(first.created_at.replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert [v.version for v in store.versions("m")] == [1, 2, 3]
    assert [(s.version, s.metrics) for s in store.version_summaries("m")][0] == (1, {"f1": 0.7})
    assert store.get("m", 2).params == {"tag": "b"}
    assert store.resolve("m").version == 3 and store.latest("m").version == 3
    assert store.resolve("m:2").version == 2 and store.resolve(Ref(name="m", version=1)) == first
    store.set_alias("m", "production", 2)
    assert store.resolve("m@production").params == {"tag": "b"}
    assert store.resolve("m@production").aliases == ("production",)
    (summary,) = store.models()
    assert (summary.name, summary.versions, summary.latest, summary.aliases) == ("m", 3, 3, {"production": 2})


def test_numbers_are_per_model_and_never_reused(store):
    assert [add(store, "a").version for _ in range(3)] == [1, 2, 3]
    assert add(store, "b").version == 1
    store.delete("a", 3)
    assert add(store, "a").version == 4  # 3 is gone for good: history and lineage may still name it
    assert [v.version for v in store.versions("a")] == [1, 2, 4]
    assert [m.name for m in store.models()] == ["a", "b"]


def test_digest_is_the_sha256_of_the_manifest_and_files_are_sealed(store):
    v = add(store)
    manifest_bytes = (v.path / "manifest.json").read_bytes()
    assert v.digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert read_manifest(v.path, digest=v.digest)["files"]["model.txt"].startswith("sha256:")
    assert all(not (p.stat().st_mode & 0o222) for p in [v.path, *v.path.iterdir()])  # read-only
    model = v.path / "model.txt"
    model.chmod(0o644)
    model.write_text("tampered\n")
    with pytest.raises(BundleError, match="model.txt") as info:
        read_manifest(v.path, ref=v.ref, digest=v.digest)
    assert "m:1" in str(info.value)


def test_a_tampered_bundle_is_refused_and_nothing_is_registered(store):
    staged = store.staging_dir()
    make_bundle(staged, tag="x")
    (staged / "model.txt").write_text("not what the manifest says\n")
    with pytest.raises(BundleError, match="model.txt"):
        store.register("m", staged, {})
    with pytest.raises(StoreError, match="unknown model"):
        store.versions("m")
    assert not (store.bundles / "m").exists()


def test_a_failed_insert_undoes_the_rename(store, backend):
    backend.refuse_inserts(store, "disk full")  # the database itself refuses the row, after the bundle was moved
    staged = store.staging_dir()
    manifest = make_bundle(staged, tag="x")
    with pytest.raises(StoreError, match=f"{backend.where(store)}.*disk full"):
        store.register("m", staged, manifest)
    assert read_manifest(staged) == manifest  # back where it was, whole
    assert not (store.bundles / "m" / "1").exists()
    with pytest.raises(StoreError, match="unknown model"):
        store.versions("m")
    backend.allow_inserts(store)
    assert store.register("m", staged, manifest).version == 1


def test_a_bundle_from_elsewhere_is_copied_in(store, tmp_path):
    outside = tmp_path / "outside"
    manifest = make_bundle(outside, tag="o")
    v = store.register("m", outside, manifest)
    assert (outside / "model.txt").is_file() and read_manifest(v.path, digest=v.digest)
    assert list(store.staging.iterdir()) == []


# -- names and errors ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x" * 200, ".hidden", "a..b", "a\n", "/abs", "a b"])
def test_names_that_could_escape_are_refused(store, bad):
    with pytest.raises(StoreError, match="invalid model name"):
        check_name(bad)
    staged = store.staging_dir()
    with pytest.raises(StoreError, match="invalid model name"):
        store.register(bad, staged, make_bundle(staged, tag="x"))
    with pytest.raises(StoreError, match="invalid alias"):
        store.set_alias("m", bad, 1)
    assert list(store.bundles.iterdir()) == []
    assert {p.name for p in store.root.iterdir()} <= {"bundles", "staging", "registry.db", "registry.db-wal",
                                                      "registry.db-shm"}
    assert [p.name for p in store.root.parent.iterdir()] == ["reg"]


def test_refs_are_parsed_strictly():
    assert Ref.parse("m@production") == Ref(name="m", alias="production")
    assert Ref.parse("m:12") == Ref(name="m", version=12)
    for bad in ("m:0", "m:x", "m@../p", "m@", "../m:1", "x" * 129):
        with pytest.raises(StoreError):
            Ref.parse(bad)


def test_errors_name_what_is_missing(store):
    add(store, "anomaly-detector")
    add(store, "anomaly-detector")
    with pytest.raises(StoreError, match='unknown model "anomaly-detecter" \\(did you mean "anomaly-detector"'):
        store.resolve("anomaly-detecter")
    with pytest.raises(StoreError, match="has no version 7 .it has 2 version.s., 1 to 2"):
        store.resolve("anomaly-detector:7")
    store.set_alias("anomaly-detector", "production", 1)
    with pytest.raises(StoreError, match='no alias "prodution" \\(did you mean "production"'):
        store.resolve("anomaly-detector@prodution")
    with pytest.raises(StoreError, match="has no version 5"):
        store.set_alias("anomaly-detector", "candidate", 5)
    with pytest.raises(StoreError, match="unknown model"):
        store.history("nope")


def test_a_corrupt_registry_is_a_clear_error(tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    (root / "registry.db").write_bytes(b"this is not SQLite, it was overwritten by mistake" * 100)
    with pytest.raises(StoreError, match="registry.db is corrupt"):
        LocalStore(root)
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "registry.db") as con:
        con.execute("CREATE TABLE notes (text)")
    with pytest.raises(StoreError, match="not an opsloop registry"):
        LocalStore(other)


# -- aliases, history, rollback, delete ---------------------------------------------


def test_aliases_and_their_history(store):
    for _ in range(3):
        add(store)
    first = store.set_alias("m", "production", 1, reason="first deploy", actor="alice")
    assert (first.from_version, first.to_version, first.actor, first.reason) == (None, 1, "alice", "first deploy")
    assert store.set_alias("m", "production", 1) is None  # no change, nothing recorded
    store.set_alias("m", "candidate", 3)
    second = store.set_alias("m", "production", 2, reason="better f1")
    assert second.actor  # the login name by default
    assert store.aliases("m") == {"candidate": 3, "production": 2}
    assert store.alias("m", "production") == 2 and store.alias("m", "staging") is None
    assert store.get("m", 2).aliases == ("production",) and store.get("m", 1).aliases == ()
    assert [s.aliases for s in store.version_summaries("m")] == [(), ("production",), ("candidate",)]
    history = store.history("m")
    assert [(h.alias, h.from_version, h.to_version) for h in history] == [
        ("production", None, 1), ("candidate", None, 3), ("production", 1, 2)]
    assert [h.reason for h in store.history("m", "production")] == ["first deploy", "better f1"]
    assert history[0].at <= history[-1].at


def test_rollback_walks_the_history_back(store):
    for _ in range(4):
        add(store)
    for version in (1, 2, 3):
        store.set_alias("m", "production", version)
    change = store.rollback("m", reason="3 misses incidents")
    assert (change.from_version, change.to_version, change.action, change.reason) == (3, 2, "rollback",
                                                                                       "3 misses incidents")
    assert store.alias("m", "production") == 2
    assert store.rollback("m").to_version == 1  # twice: two steps back, not back to 3
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("m")
    store.set_alias("m", "production", 4)
    assert store.rollback("m").to_version == 1
    assert [h.action for h in store.history("m")][-3:] == ["rollback", "set", "rollback"]
    with pytest.raises(StoreError, match='no alias "candidate"'):
        store.rollback("m", "candidate")


def test_rollback_skips_deleted_versions(store):
    for _ in range(3):
        add(store)
    for version in (1, 2, 3):
        store.set_alias("m", "production", version)
    store.delete("m", 2)
    assert store.rollback("m").to_version == 1


def test_delete_is_refused_while_an_alias_points_at_it(store):
    for _ in range(2):
        add(store)
    store.set_alias("m", "production", 1)
    store.set_alias("m", "candidate", 1)
    with pytest.raises(StoreError, match="m@candidate, m@production point at it"):
        store.delete("m", 1)
    assert store.get("m", 1).path.is_dir()
    path = store.get("m", 2).path
    store.delete("m", 2)
    assert not path.exists() and list(store.staging.iterdir()) == []
    with pytest.raises(StoreError, match="no version 2: it was deleted"):
        store.get("m", 2)
    with pytest.raises(StoreError, match="no version 9"):
        store.delete("m", 9)


# -- opening: URIs, config, leftovers -------------------------------------------------------------


def test_uris(tmp_path):
    assert store_root(".opsloop", tmp_path) == tmp_path / ".opsloop"
    assert store_root("local:models", tmp_path) == tmp_path / "models"
    assert store_root(f"file:{tmp_path}/abs", Path("/elsewhere")) == tmp_path / "abs"
    assert store_root(f"file://{tmp_path}/url%20form", Path("/elsewhere")) == tmp_path / "url form"
    for other in ("postgresql://u@db/registry", "s3://bucket/models", "file://otherhost/x", ""):
        assert store_root(other, tmp_path) is None
        assert open_store(other, tmp_path) is None
    with open_store("local:reg", tmp_path) as s:
        assert s.root == tmp_path / "reg" and (tmp_path / "reg" / "registry.db").is_file()


def test_opened_through_the_plugin_manager_and_the_env_override(tmp_path, monkeypatch):
    config = Config.from_table(default_table(), workdir=tmp_path)
    session = Session.open(config, PluginManager(), sections=("store",))
    with session.open_store() as s:
        assert isinstance(s, LocalStore) and s.root == tmp_path / ".opsloop"
    monkeypatch.setenv("OPSLOOP_STORE", "local:shared-registry")
    with session.open_store() as s:
        assert s.root == tmp_path / "shared-registry"


def test_staging_leftovers_are_swept_when_old(tmp_path, backend):
    root = tmp_path / "reg"
    with backend.open(root) as s:
        old, fresh = s.staging_dir(), s.staging_dir()
        make_bundle(old, tag="old")
        then = time.time() - STAGING_TTL - 60
        os.utime(old, (then, then))
    with backend.open(root) as s:
        assert not old.exists() and fresh.is_dir()


def test_threads_share_one_store(store):
    def work():
        for _ in range(10):
            add(store)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v.version for v in store.versions("m")] == list(range(1, 41))


# -- processes: concurrency and SIGKILL ---------------------------------------------------


def worker(uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), uri, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_eight_processes_register_two_hundred_versions_without_gaps(tmp_path, backend):
    root, go = tmp_path / "reg", tmp_path / "go"  # the registry does not exist yet: they race to create it
    procs = [worker(backend.uri(root), "m", "25", "--go", str(go)) for _ in range(8)]
    for p in procs:  # every worker is up before any registers: they really overlap
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outputs]
    claimed = [line.split() for out, _ in outputs for line in out.splitlines()]
    assert sorted(int(number) for number, _ in claimed) == list(range(1, 201))
    with backend.open(root) as s:
        versions = s.versions("m")
        assert [v.version for v in versions] == list(range(1, 201))
        assert {v.version: v.params["tag"] for v in versions} == {int(n): tag for n, tag in claimed}
        assert len({v.lineage["pid"] for v in versions}) == 8
        assert list(s.staging.iterdir()) == []
    assert check_consistent(backend, root, "m") == list(range(1, 201))


def test_sigkill_between_rename_and_commit_leaves_no_version(tmp_path, backend):
    root = tmp_path / "reg"
    proc = worker(backend.uri(root), "m", "5", "--die-after-rename", "3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert [line.split()[0] for line in out.splitlines()] == ["1", "2"]
    orphan = root / "bundles" / "m" / "3"
    assert orphan.is_dir()  # renamed into place, never committed
    assert check_consistent(backend, root, "m") == [1, 2]
    with backend.open(root) as s:  # the number is still free, and so is its place
        v = add(s, tag="after")
        assert v.version == 3 and read_manifest(v.path, digest=v.digest)["params"] == {"tag": "after"}
        assert s.versions("m")[-1].params == {"tag": "after"}


def test_sigkill_at_random_moments_leaves_whole_versions_or_none(tmp_path, backend):
    root = tmp_path / "reg"
    rng = random.Random(4)
    registered = 0
    for _ in range(10):
        proc = worker(backend.uri(root), "m", "0", "--pause-after-rename", "0.005")
        assert proc.stdout.readline()  # at least one registration is through
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        numbers = check_consistent(backend, root, "m")
        assert len(numbers) > registered
        registered = len(numbers)
    with backend.open(root) as s:
        assert add(s).version == registered + 1
    assert check_consistent(backend, root, "m") == list(range(1, registered + 2))


# -- many versions (their speed: benchmarks/registry.py, not a test) ----------------------


def test_ten_thousand_versions_list_and_resolve(store, backend):
    add(store, "big")
    backend.fill(store, "big", 10000)  # 9,999 more rows, as registration would write them
    store.set_alias("big", "production", 9000)
    assert len(store.version_summaries("big")) == 10000
    assert [m.name for m in store.models()] == ["big"]
    assert store.resolve("big@production").version == 9000 and store.resolve("big").version == 10000
