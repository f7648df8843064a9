"""Each version's current alert threshold (issue 13), in both model stores.

Tests taking `store` or `backend` run once per store (`[local]`, `[postgres]`
against a real server, skipped with the reason when none can be started), as
in test_local_store.py; see store_contract.py. The schema-3 upgrade is tested
with the others in test_store_journal.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from opsloop.bundle import MANIFEST
from opsloop.errors import RegistryDamaged, StoreError
from opsloop.plugins._local_reindex import rebuild
from opsloop.plugins.local_store import LocalStore

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

make_bundle = store_contract.load_sibling("store_worker").make_bundle

backend, store = store_contract.backend, store_contract.store  # the shared suite's fixtures

CHOSEN = {"value": 0.73, "rule": "precision", "target": 0.9, "inclusive": True,
          "achieved": {"precision": 0.91, "recall": 0.62}}
OPERATOR = {"value": 0.8, "rule": "manual", "inclusive": True}


def add(store, name="m", tag="t", threshold=None):
    """Register one small real bundle, its manifest carrying `threshold` when given."""
    staged = store.staging_dir()
    manifest = make_bundle(staged, tag=tag)
    if threshold is not None:
        manifest["threshold"] = threshold
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return store.register(name, staged, manifest)


def test_a_registered_manifests_threshold_comes_back_everywhere(store):
    first = add(store, tag="a", threshold=CHOSEN)
    plain = add(store, tag="b")
    assert first.threshold == CHOSEN and plain.threshold is None  # a version without one: None
    store.set_alias("m", "production", 1)
    assert store.get("m", 1).threshold == CHOSEN
    assert [v.threshold for v in store.versions("m")] == [CHOSEN, None]
    assert store.resolve("m@production").threshold == CHOSEN
    assert store.resolve("m:1").threshold == CHOSEN and store.resolve("m").threshold is None
    assert store.latest("m").threshold is None


def test_promote_with_a_threshold_replaces_it_and_the_history_carries_it(store):
    add(store, tag="a", threshold=CHOSEN)
    add(store, tag="b", threshold=CHOSEN)
    store.set_alias("m", "production", 1, reason="first")
    moved = store.set_alias("m", "production", 2, reason="better, stricter", actor="ops", threshold=OPERATOR)
    assert (moved.action, moved.from_version, moved.to_version, moved.threshold) == ("set", 1, 2, OPERATOR)
    assert store.get("m", 2).threshold == OPERATOR
    assert store.get("m", 1).threshold == CHOSEN  # the other version keeps its own
    assert store.resolve("m@production").threshold == OPERATOR
    looser = {"value": 0.6, "rule": "manual"}
    kept = store.set_alias("m", "production", 2, reason="too many pages", threshold=looser)
    assert (kept.action, kept.from_version, kept.to_version, kept.threshold) == ("threshold", 2, 2, looser)
    assert store.alias("m", "production") == 2 and store.get("m", 2).threshold == looser
    history = store.history("m")
    assert [(c.action, c.from_version, c.to_version, c.threshold) for c in history] == [
        ("set", None, 1, None), ("set", 1, 2, OPERATOR), ("threshold", 2, 2, looser)]
    assert history[1:] == [moved, kept]  # as returned, so as stored
    assert store.history("m", "production") == history
    assert store.set_alias("m", "production", 2) is None  # without a threshold: nothing moves, nothing recorded
    assert len(store.history("m")) == 3


def test_a_threshold_change_moves_nothing_for_rollback(store):
    for tag in "abc":
        add(store, tag=tag, threshold={"value": {"a": 0.5, "b": 0.6, "c": 0.7}[tag]})
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2, threshold={"value": 0.65})
    store.set_alias("m", "production", 2, threshold={"value": 0.66})  # twice on 2: still one step
    store.set_alias("m", "production", 3)
    back = store.rollback("m")
    assert (back.to_version, back.threshold) == (2, None)
    assert store.get("m", 2).threshold == {"value": 0.66}  # rollback leaves thresholds as they are
    assert store.get("m", 3).threshold == {"value": 0.7}
    assert store.rollback("m").to_version == 1
    assert store.get("m", 1).threshold == {"value": 0.5}
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("m")


def test_a_threshold_is_stored_as_strict_json(store):
    add(store, tag="a")
    numpy = pytest.importorskip("numpy")
    change = store.set_alias("m", "production", 1, threshold={"value": numpy.float64(0.25), "rule": "recall",
                                                               "achieved": {"recall": math.nan}, 3: "x"})
    stored = {"value": 0.25, "rule": "recall", "achieved": {"recall": None}, "3": "x"}
    assert change.threshold == stored and store.get("m", 1).threshold == stored
    assert store.history("m")[-1].threshold == stored


@pytest.mark.parametrize(("threshold", "problem"), [
    (0.8, r"expected a mapping with a numeric 'value', got float"),
    ([0.8], r"expected a mapping with a numeric 'value', got list"),
    ({"rule": "precision"}, r"it has no 'value'"),
    ({"value": None}, r"its 'value' must be a number, got None"),
    ({"value": "0.8"}, r"its 'value' must be a number, got '0.8'"),
    ({"value": True}, r"its 'value' must be a number, got True"),
    ({"value": math.nan}, r"its 'value' must be finite, got nan"),
    ({"value": math.inf}, r"its 'value' must be finite, got inf"),
])
def test_an_invalid_threshold_is_refused_and_changes_nothing(store, threshold, problem):
    add(store, tag="a", threshold=CHOSEN)
    add(store, tag="b")
    store.set_alias("m", "production", 1)
    before = (store.versions("m"), store.history("m"), store.aliases("m"))
    for version in (1, 2):  # the alias already there, and a move
        with pytest.raises(StoreError, match=rf"invalid threshold for m:{version}: {problem}"):
            store.set_alias("m", "production", version, threshold=threshold)
    with pytest.raises(StoreError, match=rf"invalid threshold for the new version of m: {problem}"):
        add(store, tag="c", threshold=threshold)
    assert (store.versions("m"), store.history("m"), store.aliases("m")) == before


def test_a_threshold_for_a_missing_version_is_refused(store):
    add(store, tag="a")
    with pytest.raises(StoreError, match="model m has no version 7"):
        store.set_alias("m", "production", 7, threshold=OPERATOR)
    assert store.history("m") == [] and store.get("m", 1).threshold is None


# -- the local store's reindex -------------------------------------------------------------


def test_reindex_restores_the_manifests_threshold_and_the_historys(tmp_path):
    root = tmp_path / "reg"
    with LocalStore(root) as store:
        add(store, tag="a", threshold=CHOSEN)
        add(store, tag="b", threshold=CHOSEN)
        add(store, tag="c")
        store.set_alias("m", "production", 1)
        store.set_alias("m", "production", 1, threshold=OPERATOR)
        report = store.reindex(force=True)  # a readable index: its history is kept, and replayed
    assert report["versions"] == ["m:1", "m:2", "m:3"]
    with LocalStore(root) as store:
        assert [v.threshold for v in store.versions("m")] == [OPERATOR, CHOSEN, None]
        assert store.history("m")[-1].threshold == OPERATOR
    for suffix in ("", "-wal", "-shm"):  # the index and its history lost: only what the bundles hold
        Path(f"{root / 'registry.db'}{suffix}").unlink(missing_ok=True)
    with pytest.raises(RegistryDamaged):
        LocalStore(root)
    assert rebuild(root)["versions"] == ["m:1", "m:2", "m:3"]
    with LocalStore(root) as store:  # the operator's threshold was only in the lost history: not recovered
        assert [v.threshold for v in store.versions("m")] == [CHOSEN, CHOSEN, None]
        assert store.history("m") == []


# -- `opsloop models history` ------------------------------------------------------------------


def test_models_history_shows_the_threshold_a_change_gave(opsloop_project):
    project = opsloop_project(config={})
    with LocalStore(project.path / ".opsloop") as store:
        add(store, "asd", "a", threshold=CHOSEN)
        add(store, "other", "a", threshold=CHOSEN)
        store.set_alias("asd", "production", 1)
        store.set_alias("asd", "production", 1, reason="fewer pages",
                        threshold={"value": 0.8, "rule": "precision", "target": 0.95})
        store.set_alias("other", "production", 1)
    text = project.run("models", "history", "asd").assert_ok().stdout
    assert "threshold" in text and "0.800 (precision 0.95)" in text
    changes = project.run("models", "history", "asd", "--json").assert_ok().json
    assert [(c["action"], c["threshold"]) for c in changes] == [
        ("set", None), ("threshold", {"value": 0.8, "rule": "precision", "target": 0.95})]
    assert "threshold" not in project.run("models", "history", "other").assert_ok().stdout  # no change carried one
