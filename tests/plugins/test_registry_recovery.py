"""A registry whose index was lost, damaged or outlived by its bundles (issue 8, defects 4 and 8).

Real SQLite files damaged the way operators damage them (`: > registry.db`,
`rm`, a garbage page, an older backup restored), real bundles, a real
read-only mount where the sandbox allows one. The version-number checks run
on both stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from opsloop.errors import RegistryDamaged, StoreError
from opsloop.plugins._local_reindex import rebuild
from opsloop.plugins.local_store import LocalStore
from opsloop.store import MAX_VERSION, Ref

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

make_bundle = store_contract.load_sibling("store_worker").make_bundle


def add(store, name="m", tag=None):
    staged = store.staging_dir()
    return store.register(name, staged, make_bundle(staged, tag=tag or f"t{time.time_ns()}"))


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every file under bundles/: what must not change while the index is broken."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "bundles").rglob("*")) if p.is_file()}


@pytest.fixture
def registry(tmp_path):
    """A registry with m:1..3 (production -> 2 after 1), n:1, and its bundles' fingerprint."""
    root = tmp_path / "reg"
    with LocalStore(root) as store:
        for tag in ("a", "b", "c"):
            add(store, "m", tag)
        add(store, "n", "x")
        store.set_alias("m", "production", 1, reason="first")
        store.set_alias("m", "production", 2, reason="better")
    return root


def checkpoint(root: Path) -> None:
    with sqlite3.connect(root / "registry.db") as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def garble_page(root: Path, table: str) -> int:
    """Overwrite the first page of `table` with random bytes, in the middle of the file; its number."""
    checkpoint(root)
    with sqlite3.connect(root / "registry.db") as con:
        page = con.execute("SELECT min(pageno) FROM dbstat WHERE name = ?", (table,)).fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        count = con.execute("PRAGMA page_count").fetchone()[0]
    assert 1 < page < count  # a page in the middle, not the header
    with open(root / "registry.db", "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(os.urandom(size))
    return page


# -- refusing to open ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["emptied", "deleted", "no tables"])
def test_a_lost_index_next_to_bundles_is_refused_and_nothing_is_created(registry, damage):
    before = fingerprint(registry)
    db = registry / "registry.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if damage == "emptied":
        db.write_bytes(b"")
    elif damage == "deleted":
        db.unlink()
    else:
        db.unlink()
        sqlite3.connect(db).execute("VACUUM").connection.close()  # a valid SQLite file without tables
    with pytest.raises(RegistryDamaged, match="holds 4 version.s. of 2 model.s.; run `opsloop models reindex` "
                                              "to rebuild the index from the bundles' manifests") as info:
        LocalStore(registry)
    assert str(db) in str(info.value)
    assert fingerprint(registry) == before
    if damage == "deleted":
        assert not db.exists()  # not even created
    elif damage == "emptied":
        assert db.stat().st_size == 0
    else:
        assert sqlite3.connect(db).execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0


def test_a_garbage_page_in_the_middle_is_found_on_open(registry):
    before = fingerprint(registry)
    garble_page(registry, "details")  # read by no listing: only an integrity check sees it
    with pytest.raises(RegistryDamaged, match=r"registry\.db is corrupt .*PRAGMA integrity_check.*reindex"):
        LocalStore(registry)
    assert fingerprint(registry) == before


def test_damage_found_by_a_query_is_one_line_without_the_garbage(registry, monkeypatch):
    import opsloop.plugins.local_store as local_store

    monkeypatch.setattr(local_store, "QUICK_CHECK_MAX_BYTES", 0)  # a large registry: no quick_check on open
    checkpoint(registry)
    with sqlite3.connect(registry / "registry.db") as con:  # text that is not UTF-8, where SQLite cannot tell
        con.execute("UPDATE details SET params = CAST(x'7b22ffff' AS TEXT) WHERE id = 1")
    with LocalStore(registry) as store:
        assert [m.name for m in store.models()] == ["m", "n"]
        with pytest.raises(RegistryDamaged, match=r"is corrupt \(Could not decode to UTF-8 column 'params'") as info:
            store.get("m", 1)
    assert "\\xff" not in str(info.value) and "\n" not in str(info.value)


def test_a_sealed_bundle_is_never_replaced_even_when_the_index_forgot_it(registry):
    """An older registry.db restored from a backup: the next number is taken, its place is not."""
    backup = registry.parent / "backup.db"
    with LocalStore(registry) as store:
        dst = sqlite3.connect(backup)
        store._con.backup(dst)
        dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        dst.close()
        add(store, "m", "d")  # m:4, which the backup does not know
    before = fingerprint(registry)
    shutil.copy(backup, registry / "registry.db")
    for suffix in ("-wal", "-shm"):
        Path(f"{registry / 'registry.db'}{suffix}").unlink(missing_ok=True)
    with LocalStore(registry) as store:
        staged = store.staging_dir()
        with pytest.raises(StoreError, match=r"cannot register m:4: .*bundles/m/4 already holds a registered bundle"
                                             r".*nothing was overwritten.*opsloop models reindex"):
            store.register("m", staged, make_bundle(staged, tag="e"))
        assert [v.version for v in store.versions("m")] == [1, 2, 3]
    assert fingerprint(registry) == before
    report = rebuild(registry)  # readable but behind its bundles: rewritten in place, after a copy
    assert report["versions"] == ["m:1", "m:2", "m:3", "m:4", "n:1"]
    assert Path(report["old_index"]).name.startswith("registry.db.before-reindex-")
    with LocalStore(registry) as store:
        assert store.get("m", 4).params == {"tag": "d"} and store.alias("m", "production") == 2
        assert add(store, "m", "e").version == 5


# -- rebuilding ----------------------------------------------------------------------------------


def test_reindex_after_emptying_restores_versions_without_aliases(registry):
    before = fingerprint(registry)
    with LocalStore(registry) as store:
        created = {v.ref: v.created_at for v in store.versions("m")}
        digests = {v.ref: v.digest for v in store.versions("m")}
    (registry / "registry.db").write_bytes(b"")
    report = rebuild(registry)
    assert report["versions"] == ["m:1", "m:2", "m:3", "n:1"] and report["skipped"] == []
    assert report["aliases"] == {} and "no alias could be recovered" in report["aliases_from"]
    moved = Path(report["old_index"])
    assert moved.name.startswith("registry.db.broken-") and moved.stat().st_size == 0  # kept, not deleted
    with LocalStore(registry) as store:
        versions = store.versions("m")
        assert [v.params["tag"] for v in versions] == ["a", "b", "c"]
        assert {v.ref: v.digest for v in versions} == digests
        assert all(v.created_by == "worker" and v.lineage["tag"] == v.params["tag"] for v in versions)
        assert all(v.created_at for v in versions) and set(created) == {v.ref for v in versions}
        assert store.aliases("m") == {} and store.history("m") == []
        assert add(store, "m").version == 4
    assert {k: v for k, v in fingerprint(registry).items() if "/4/" not in k} == before


def test_reindex_after_a_garbage_page_keeps_what_the_old_index_still_gives(registry):
    garble_page(registry, "details")
    report = rebuild(registry)
    assert report["versions"] == ["m:1", "m:2", "m:3", "n:1"]
    assert report["aliases"] == {"m@production": 2}
    with LocalStore(registry) as store:
        assert store.alias("m", "production") == 2
        assert [(h.from_version, h.to_version, h.reason) for h in store.history("m")] == [
            (None, 1, "first"), (1, 2, "better")]
        assert store.rollback("m").to_version == 1  # the undo stack came back with the history


def test_reindex_keeps_numbers_the_old_index_still_knows(registry):
    with LocalStore(registry) as store:
        store.delete("n", 1)  # n has no version left; its number 1 stays given
        store.delete("m", 3)
    garble_page(registry, "details")
    report = rebuild(registry)
    assert report["versions"] == ["m:1", "m:2"]
    with LocalStore(registry) as store:
        assert add(store, "n").version == 2 and add(store, "m").version == 4


def test_reindex_skips_a_tampered_bundle_and_says_why(registry):
    bundle = registry / "bundles" / "m" / "3"
    bundle.chmod(0o755)
    (bundle / "model.txt").chmod(0o644)
    (bundle / "model.txt").write_text("swapped\n")
    (registry / "registry.db").write_bytes(b"")
    report = rebuild(registry)
    assert report["versions"] == ["m:1", "m:2", "n:1"]
    assert [s["ref"] for s in report["skipped"]] == ["m:3"] and "sha256 mismatch" in report["skipped"][0]["reason"]
    with LocalStore(registry) as store:
        assert [v.version for v in store.versions("m")] == [1, 2]
        staged = store.staging_dir()  # 3 stays taken: the tampered bundle is still there, sealed or not
        assert store.register("m", staged, make_bundle(staged, tag="new")).version in (3, 4)


def test_reindex_refuses_a_healthy_registry_unless_forced(registry):
    with pytest.raises(StoreError, match="readable and knows every bundle .4 version.s..: nothing to rebuild"):
        rebuild(registry)
    report = rebuild(registry, force=True)
    assert report["versions"] == ["m:1", "m:2", "m:3", "n:1"] and report["aliases"] == {"m@production": 2}
    assert Path(report["old_index"]).is_file()


def test_a_registration_killed_before_its_commit_is_still_replaced(registry):
    """The orphan rule survives: a never-sealed directory at a number without a record is not a version."""
    orphan = registry / "bundles" / "m" / "4"
    make_bundle(orphan, tag="orphan")  # as a killed registration leaves it: renamed, never sealed
    with LocalStore(registry) as store:
        v = add(store, "m", "real")
        assert v.version == 4 and v.params == {"tag": "real"}


# -- version numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["m:²", "m:٣", "m:99999999999999999999", f"m:{MAX_VERSION + 1}", "m:-1", "m: 1"])
def test_a_version_reference_takes_ascii_digits_within_int64(text):
    with pytest.raises(StoreError, match=f'invalid version reference "{text}": expected NAME:N with N a whole number '
                                         f"from 1 to {MAX_VERSION}"):
        Ref.parse(text)


@pytest.fixture(params=store_contract.BACKENDS)
def any_store(request, tmp_path):
    backend = store_contract.make_backend(request.param)
    with backend.open(tmp_path / "reg") as store:
        yield store
    backend.cleanup()


def test_numbers_beyond_the_column_name_no_version(any_store):
    add(any_store)
    huge = 10**20
    for call in (lambda: any_store.get("m", huge), lambda: any_store.set_alias("m", "production", huge),
                 lambda: any_store.delete("m", huge)):
        with pytest.raises(StoreError, match=r"invalid version 100000000000000000000"):
            call()
    beyond = any_store.MAX_VERSION  # fits the check, names no version (PostgreSQL: 2**31 - 1)
    with pytest.raises(StoreError, match=f"model m has no version {beyond} "):
        any_store.get("m", beyond)
    with pytest.raises(StoreError, match=f"model m has no version {MAX_VERSION} "):
        any_store.resolve(f"m:{MAX_VERSION}")


# -- read-only and full filesystems --------------------------------------------------------------------------


def test_a_registry_on_a_read_only_mount_is_read_and_refuses_changes(registry, mounts):
    ro = mounts.read_only(registry)
    assert not os.access(ro, os.W_OK)
    with LocalStore(ro) as store:
        assert store.read_only
        assert [m.name for m in store.models()] == ["m", "n"]
        assert store.resolve("m@production").version == 2 and len(store.history("m")) == 2
        from opsloop.bundle import read_manifest

        v = store.get("m", 3)
        assert read_manifest(v.path, ref=v.ref, digest=v.digest)["params"] == {"tag": "c"}
        with pytest.raises(StoreError, match=r"is read-only .*can be listed and shown, not changed"):
            store.set_alias("m", "production", 3)
        with pytest.raises(StoreError, match=r"is read-only .*not changed"):
            store.staging_dir()
        with pytest.raises(StoreError, match=r"cannot make a staging directory .*staging.*Read-only file system"):
            store.files.staging_dir()  # what the filesystem itself answers
    with LocalStore(registry) as store:  # the same registry, writable again: unchanged
        assert store.alias("m", "production") == 2


def test_a_full_disk_while_storing_a_bundle_is_one_line_and_leaves_nothing(tmp_path, mounts):
    disk = mounts.tmpfs("256k")
    with LocalStore(disk / "reg") as store:
        add(store)
        outside = tmp_path / "big-bundle"  # registered from elsewhere: the store copies it in
        make_bundle(outside, tag="big")
        (outside / "model.txt").write_bytes(os.urandom(400_000))
        manifest = json.loads((outside / "manifest.json").read_text())
        digest = hashlib.sha256((outside / "model.txt").read_bytes()).hexdigest()
        manifest["files"]["model.txt"] = f"sha256:{digest}"
        (outside / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match=r"cannot store the bundle of m: .*No space left on device .errno 28."):
            store.register("m", outside, manifest)
        assert list(store.staging.iterdir()) == []  # the partial copy went at once, not in an hour
        assert [v.version for v in store.versions("m")] == [1]
