"""The model-store conformance suite: the store contract of `opsloop.store.ModelStore`, through `open_store`.

    class TestMyStore(StoreSuite, plugin="my-store"):
        @pytest.fixture
        def store_uri(self, tmp_path):
            return f"mystore://127.0.0.1:9000/{tmp_path.name}"

The store is opened the way every command opens it: the plugin's `open_store(uri, workdir)` hook on a fresh
plugin manager. `store_uri` is a fixture a subclass overrides (default: a fresh directory, for a store that
keeps its registry in files); `foreign_uri` is a URI the store must decline (return None: not its own), or None
to skip that check. Bundles are real: a manifest listing the sha256 of each file, as `opsloop.bundle` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from opsloop.testing.conformance._base import Suite, one_line

if TYPE_CHECKING:
    from opsloop.manager import PluginManager
    from opsloop.store import ModelStore
    from opsloop.types import ModelVersion

NAME = "conformance-model"


def write_bundle(directory: Path, tag: str, metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """A small, verifiable bundle in `directory` (a manifest with each file's sha256); its manifest."""
    from opsloop.bundle import FORMAT, MANIFEST, sha256_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.json").write_text(json.dumps({"tag": tag}) + "\n", encoding="utf-8")
    (directory / "members").mkdir(exist_ok=True)
    (directory / "members" / "weights.txt").write_text(f"weights of {tag}\n", encoding="utf-8")
    manifest = {
        "format": FORMAT, "flavor": "conformance", "task": "classification",
        "metrics": metrics if metrics is not None else {"f1": 0.5, "pr_auc": 0.6},
        "params": {"tag": tag}, "lineage": {"user": "conformance", "tag": tag},
        "files": {name: sha256_file(directory / name) for name in ("model.json", "members/weights.txt")},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def register(store: ModelStore, tag: str, name: str = NAME, **kwargs: Any) -> ModelVersion:
    """Stage a bundle where the store says and register it."""
    staged = store.staging_dir()
    return store.register(name, staged, write_bundle(staged, tag, **kwargs))


def store_error(call: Any, *fragments: str) -> str:
    """`call()` must raise a one-line StoreError containing every fragment; its text."""
    from opsloop.errors import StoreError

    with pytest.raises(StoreError) as caught:
        call()
    text = one_line(caught.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in the error: {text}"
    return text


class StoreSuite(Suite):
    """A model store (`open_store`) and the store contract (`opsloop.store.ModelStore`).

    `class TestMine(StoreSuite, plugin="mine"): pass` runs it on a fresh directory; override the `store_uri`
    fixture for a store elsewhere. Keywords: `foreign_uri` (a URI it must decline; None skips), `register`.
    """

    section: ClassVar[str] = "store"
    keywords: ClassVar[dict[str, Any]] = {"foreign_uri": "conformance-unknown-scheme://127.0.0.1/nowhere"}
    foreign_uri: ClassVar[str | None] = "conformance-unknown-scheme://127.0.0.1/nowhere"

    @pytest.fixture
    def store_uri(self, tmp_path: Path) -> str:
        """The registry the test works on (a fresh one per test). Override for a store that is not a directory."""
        return str(tmp_path / "registry")

    @pytest.fixture
    def store_plugins(self, _conformance_plugin: None) -> PluginManager:
        """A plugin manager with the store plugin loaded (installed, or given with `register=`)."""
        from opsloop.manager import PluginManager

        plugins = PluginManager()
        plugins.load(type(self).plugin)
        return plugins

    def open(self, plugins: PluginManager, uri: str, workdir: Path) -> ModelStore:
        """The store as a command opens it: the plugin's `open_store` hook."""
        from opsloop.store import ModelStore

        store = plugins.call(type(self).plugin, "open_store", uri=uri, workdir=workdir)
        assert isinstance(store, ModelStore), (
            f"open_store({uri!r}) returned {type(store).__name__}, not an opsloop.store.ModelStore")
        return store

    @pytest.fixture
    def store(self, store_plugins: PluginManager, store_uri: str, tmp_path: Path) -> Iterator[ModelStore]:
        with self.open(store_plugins, store_uri, tmp_path) as opened:
            yield opened

    def test_declines_a_uri_that_is_not_its_own(self, store_plugins: PluginManager, tmp_path: Path) -> None:
        """`open_store` is a "who handles this?" hook: for a URI of another kind it returns None, so that the
        next store plugin is asked."""
        uri = type(self).foreign_uri
        if uri is None:
            pytest.skip("foreign_uri=None: this store takes every URI")
        assert store_plugins.call(type(self).plugin, "open_store", uri=uri, workdir=tmp_path) is None

    def test_registers_numbered_versions_with_their_bundles(self, store: ModelStore) -> None:
        """`register` numbers the versions of a name 1, 2, 3; each keeps the manifest's flavor, task, metrics
        and params, and a bundle directory whose manifest has the version's digest and whose files verify
        (the same bytes as staged)."""
        from opsloop.bundle import manifest_digest, read_manifest

        made = [register(store, f"v{i}", metrics={"f1": i / 10}) for i in (1, 2, 3)]
        assert [v.version for v in made] == [1, 2, 3]
        for number, version in enumerate(made, 1):
            assert (version.name, version.flavor, version.task) == (NAME, "conformance", "classification")
            assert dict(version.metrics) == {"f1": number / 10}
            assert dict(version.params) == {"tag": f"v{number}"}
            assert version.path.is_dir(), f"{version.ref}: bundle directory {version.path} is missing"
            assert version.digest == manifest_digest(version.path)
            manifest = read_manifest(version.path, ref=version.ref, digest=version.digest)
            assert json.loads((version.path / "model.json").read_text(encoding="utf-8")) == {"tag": f"v{number}"}
            assert manifest["params"] == {"tag": f"v{number}"}

    def test_get_list_versions_latest_and_references(self, store: ModelStore) -> None:
        """`get`, `versions` (oldest first), `latest`, `models` (names with counts) and `resolve` of
        `NAME`, `NAME:N` and `NAME@ALIAS` agree with what was registered."""
        for i in (1, 2, 3):
            register(store, f"v{i}")
        register(store, "other", name="other-model")
        assert [v.version for v in store.versions(NAME)] == [1, 2, 3]
        assert store.get(NAME, 2).params["tag"] == "v2"
        assert store.latest(NAME).version == 3
        summaries = {m.name: m for m in store.models()}
        assert set(summaries) == {NAME, "other-model"}
        assert [v.version for v in store.version_summaries(NAME)] == [1, 2, 3]
        store.set_alias(NAME, "production", 2, reason="conformance")
        assert store.resolve(NAME).version == 3
        assert store.resolve(f"{NAME}:1").version == 1
        assert store.resolve(f"{NAME}@production").version == 2

    def test_aliases_set_move_history_and_rollback(self, store: ModelStore) -> None:
        """`set_alias` points an alias and records who, why and from where; setting it where it points
        records nothing; moving it records the move; `rollback` undoes the last move (action "rollback");
        `history` lists the changes oldest first; `aliases` shows where each points."""
        for i in (1, 2, 3):
            register(store, f"v{i}")
        first = store.set_alias(NAME, "production", 1, reason="first", actor="alice")
        assert first is not None and (first.from_version, first.to_version) == (None, 1)
        assert (first.actor, first.reason, first.action) == ("alice", "first", "set")
        assert store.set_alias(NAME, "production", 1, reason="again") is None
        store.set_alias(NAME, "production", 2, reason="better")
        store.set_alias(NAME, "candidate", 3, reason="trial")
        assert store.alias(NAME, "production") == 2
        assert store.aliases(NAME) == {"production": 2, "candidate": 3}
        assert "production" in store.get(NAME, 2).aliases
        back = store.rollback(NAME, "production", reason="worse")
        assert (back.from_version, back.to_version, back.action) == (2, 1, "rollback")
        assert store.alias(NAME, "production") == 1
        moves = [(c.alias, c.from_version, c.to_version, c.action) for c in store.history(NAME, "production")]
        assert moves == [("production", None, 1, "set"), ("production", 1, 2, "set"),
                         ("production", 2, 1, "rollback")]
        assert len(store.history(NAME)) == 4
        assert store.alias(NAME, "staging") is None

    def test_a_threshold_moves_with_the_alias(self, store: ModelStore) -> None:
        """`register` keeps the manifest's threshold; `set_alias(..., threshold=...)` gives the version a new
        one (recorded in the history, action "threshold" when the alias already pointed there)."""
        staged = store.staging_dir()
        manifest = write_bundle(staged, "t")
        manifest["threshold"] = {"value": 0.3, "rule": "fixed"}
        version = store.register(NAME, staged, manifest)
        assert dict(version.threshold or {})["value"] == 0.3
        store.set_alias(NAME, "production", 1, reason="first")
        change = store.set_alias(NAME, "production", 1, reason="quieter", threshold={"value": 0.6})
        assert change is not None and change.action == "threshold"
        assert dict(store.get(NAME, 1).threshold or {})["value"] == 0.6

    def test_unknown_names_versions_and_aliases_are_one_line_errors(self, store: ModelStore) -> None:
        """Asking for a model, version or alias that does not exist is a one-line StoreError naming it;
        so is an invalid model name, and an alias pointed at a missing version."""
        register(store, "v1")
        store_error(lambda: store.versions("no-such-model"), "no-such-model")
        store_error(lambda: store.get("no-such-model", 1), "no-such-model")
        store_error(lambda: store.get(NAME, 99), "99")
        store_error(lambda: store.aliases("no-such-model"), "no-such-model")
        store_error(lambda: store.set_alias(NAME, "production", 99, reason="x"), "99")
        store_error(lambda: store.rollback(NAME, "production", reason="x"), "production")
        store_error(lambda: store.resolve(f"{NAME}@nowhere"), "nowhere")
        store_error(lambda: register(store, "bad", name="no spaces/or slashes"))

    def test_delete_is_refused_while_an_alias_points_and_numbers_are_not_reused(self, store: ModelStore) -> None:
        """`delete` refuses a version an alias points at (naming the alias), removes another with its bundle,
        and the next version gets a new number."""
        made = [register(store, f"v{i}") for i in (1, 2, 3)]
        store.set_alias(NAME, "production", 3, reason="x")
        store_error(lambda: store.delete(NAME, 3), "production")
        store.delete(NAME, 2)
        assert [v.version for v in store.versions(NAME)] == [1, 3]
        assert not made[1].path.exists(), "the deleted version's bundle is still there"
        assert register(store, "v4").version == 4

    def test_a_reopened_store_has_everything(self, store_plugins: PluginManager, store_uri: str,
                                             tmp_path: Path) -> None:
        """Closed and opened again at the same URI, the store has the same versions, aliases and history."""
        with self.open(store_plugins, store_uri, tmp_path) as store:
            register(store, "v1")
            register(store, "v2")
            store.set_alias(NAME, "production", 2, reason="x")
        with self.open(store_plugins, store_uri, tmp_path) as again:
            assert [v.version for v in again.versions(NAME)] == [1, 2]
            assert again.alias(NAME, "production") == 2
            assert len(again.history(NAME)) == 1
            assert again.get(NAME, 2).path.is_dir()

    def test_the_loop_journal_and_lock(self, store: ModelStore) -> None:
        """When the store keeps a loop journal (`opsloop loop` needs one): `record_cycle` appends with
        increasing ids, `cycles` lists newest first (with `limit`), NaN is stored as null; `lock` is taken,
        renewed by its owner, refused to another, released by `unlock`."""
        from opsloop.store import ModelStore

        if type(store).record_cycle is ModelStore.record_cycle:
            pytest.skip("this store keeps no loop journal (opsloop loop cannot run on it)")
        first = store.record_cycle(NAME, "keep", {"reasons": ["fine"], "f1": math.nan})
        second = store.record_cycle(NAME, "promoted", {"candidate": f"{NAME}:2"})
        assert second.id > first.id
        entries = store.cycles(NAME)
        assert [e.status for e in entries] == ["promoted", "keep"]
        assert entries[1].body["f1"] is None
        assert [e.status for e in store.cycles(NAME, limit=1)] == ["promoted"]
        assert store.cycles("never-cycled") == []
        if type(store).lock is ModelStore.lock:
            return
        assert store.lock(NAME, "loop-a", 60).acquired
        assert store.lock(NAME, "loop-a", 60).acquired
        assert not store.lock(NAME, "loop-b", 60).acquired
        store.unlock(NAME, "loop-a")
        assert store.lock(NAME, "loop-b", 60).acquired
