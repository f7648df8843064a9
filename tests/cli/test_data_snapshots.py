"""Governed training data (issue 14, item 4): `[data] snapshot`, `opsloop data list/show/remove/prune`, and
sensitive columns in snapshots, on the embedded ASD data through the real lifecycle."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from opsloop import config as config_mod
from opsloop import data as data_mod
from opsloop import snapshots
from opsloop.session import Session

#: Deploy, monitor and retrain are not what these tests are about: register only.
QUIET = {"deploy": {"plugins": []}, "monitor": {"plugins": []}, "retrain": {"plugins": []}}


def _project(opsloop_project, small_config, **data):
    small_config["data"].update(data)
    small_config["data"] = {k: v for k, v in small_config["data"].items() if v is not None}
    small_config.update(QUIET)
    return opsloop_project(config=small_config)


def _training_rows(project):
    """The rows `run` trains on, loaded the way it loads them."""
    cfg = config_mod.read(workdir=project.path)
    train, _ = data_mod.periods(data_mod.load(cfg), cfg)
    return train.frame


def _store(project):
    return Session.open(config_mod.read(workdir=project.path), sections=("store",)).open_store()


def test_versions_on_the_same_rows_share_one_snapshot_that_reads_back_as_the_training_rows(
        opsloop_project, small_config):
    project = _project(opsloop_project, small_config, snapshot="store", sensitive=["m03", "m07"])
    project.run("run").assert_ok()
    project.run("run", "--set", "train.xgboost.max_depth=3").assert_ok()  # another version, the same rows
    files = list((project.path / ".opsloop" / "snapshots").iterdir())
    assert len(files) == 1 and files[0].suffix == ".parquet"
    assert not stat.S_IMODE(files[0].stat().st_mode) & 0o222  # read-only once in place

    listed = project.run("data", "list", "--json").assert_ok().json
    assert len(listed) == 1
    entry = listed[0]
    assert entry["versions"] == ["asd-anomaly:1", "asd-anomaly:2"]
    assert entry["bytes"] == files[0].stat().st_size
    assert files[0].name == entry["digest"].removeprefix("sha256:") + ".parquet"
    names = [c["name"] for c in entry["columns"]]
    assert "m03" not in names and "m07" not in names and {"m01", "label", "entity", "timestamp"} <= set(names)

    # The rows read back are the rows trained on, without the sensitive columns, bit for bit.
    expected = _training_rows(project).drop(columns=["m03", "m07"]).reset_index(drop=True)
    with _store(project) as store:
        got = snapshots.read(store, "asd-anomaly:1")
        version = store.get("asd-anomaly", 2)
        lineage = version.lineage["data"]["snapshot"]
    pd.testing.assert_frame_equal(got, expected)
    # The bundle's reference profile and its sample of training rows leave them out too (docs/data.md).
    sample = pd.read_parquet(version.path / "profile-sample.parquet")
    profile = json.loads((version.path / "profile.json").read_text())
    assert "m01" in sample.columns and not {"m03", "m07"} & set(sample.columns)
    assert "m01" in profile["features"] and not {"m03", "m07"} & set(profile["features"])
    assert lineage["digest"] == entry["digest"] and lineage["rows"] == len(expected)
    assert lineage["sensitive"] == {"columns": ["m03", "m07"], "mode": "drop"}

    # show: by version or by digest prefix, with the versions, the size and the schema
    shown = project.run("data", "show", "asd-anomaly:2", "--json").assert_ok().json
    assert shown["digest"] == entry["digest"] and shown["rows"] == len(expected)
    assert project.run("data", "show", entry["digest"][7:19], "--json").assert_ok().json == shown
    text = project.run("data", "show", "asd-anomaly@production").assert_ok().stdout
    assert "asd-anomaly:1, asd-anomaly:2" in text and "m01" in text and "float32" in text


def test_prune_removes_only_what_no_version_needs_and_remove_refuses_a_needed_one(opsloop_project, small_config):
    project = _project(opsloop_project, small_config, snapshot="store")
    project.run("run").assert_ok()
    project.run("run", "--set", "data.train=\"entity == 'omi-1' and timestamp < '2024-01-08 12:00'\"").assert_ok()
    listed = {e["versions"][0]: e["digest"] for e in project.run("data", "list", "--json").assert_ok().json}
    assert set(listed) == {"asd-anomaly:1", "asd-anomaly:2"} and len(set(listed.values())) == 2

    # Needed by a registered version: refused, one clear line, non-zero exit.
    project.run("data", "remove", "asd-anomaly:1").assert_error("is not removed: asd-anomaly:1 trained on it")
    # Unused but recent (a registration may be about to record it): prune keeps it by default.
    project.run("models", "delete", "asd-anomaly", "2", "--yes").assert_ok()
    kept = project.run("data", "prune", "--json").assert_ok().json
    assert kept["removed"] == [] and kept["kept_recent"] == [listed["asd-anomaly:2"]]
    dry = project.run("data", "prune", "--older-than", "0", "--dry-run", "--json").assert_ok().json
    assert dry["removed"] == [listed["asd-anomaly:2"]]
    assert len(list((project.path / ".opsloop" / "snapshots").glob("*.parquet"))) == 2
    done = project.run("data", "prune", "--older-than", "0", "--json").assert_ok().json
    assert done["removed"] == [listed["asd-anomaly:2"]] and done["kept_in_use"] == [listed["asd-anomaly:1"]]
    remaining = project.run("data", "list", "--json").assert_ok().json
    assert [e["digest"] for e in remaining] == [listed["asd-anomaly:1"]]

    project.run("data", "show", "0123456789ab").assert_error("unknown snapshot '0123456789ab'",
                                                             listed["asd-anomaly:1"][7:19])
    project.run("data", "show", "asd-anomaly:7").assert_error("has no version 7")
    project.run("data", "prune", "--older-than", "soon").assert_error("--older-than 'soon'")


def test_hashed_sensitive_columns_are_keyed_hashes_that_still_group(opsloop_project, small_config, monkeypatch):
    monkeypatch.delenv("OPSLOOP_HASH_KEY", raising=False)
    project = _project(opsloop_project, small_config, snapshot="store", sensitive=["m03"], sensitive_mode="hash")
    project.run("run").assert_ok()
    key = project.path / ".opsloop" / "hash.key"
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    with _store(project) as store:
        got = snapshots.read(store, "asd-anomaly:1")
    rows = _training_rows(project)
    assert got["m03"].str.startswith("hmac:").all() and got["m03"].str.len().eq(37).all()
    # one hash per value, the same rows per hash: grouping and joining by the column still work
    assert sorted(got.groupby("m03").size()) == sorted(rows.groupby("m03").size())
    pd.testing.assert_frame_equal(got.drop(columns="m03"), rows.drop(columns="m03").reset_index(drop=True))
    # another key, other hashes (a guess cannot be tested without the key)
    monkeypatch.setenv("OPSLOOP_HASH_KEY", "00" * 32)
    project.run("run", "--set", "train.xgboost.max_depth=3").assert_ok()
    with _store(project) as store:
        other = snapshots.read(store, "asd-anomaly:2")
    assert not set(other["m03"]) & set(got["m03"])


def test_a_reference_records_and_verifies_the_source_file(opsloop_project, small_config, tmp_path):
    from opsloop import datasets

    source = tmp_path / "asd.parquet"
    source.write_bytes(datasets.path("asd").read_bytes())
    project = _project(opsloop_project, small_config, snapshot="reference", source=str(source))
    project.run("run").assert_ok()
    assert not (project.path / ".opsloop" / "snapshots").exists()
    shown = project.run("data", "show", "asd-anomaly:1", "--json").assert_ok().json
    assert shown["location"] == str(source) and shown["verified"] is True
    assert shown["bytes"] == source.stat().st_size and shown["sha256"] == snapshots.file_digest(source)
    os.chmod(source, 0o644)
    with open(source, "r+b") as f:  # the "immutable" location changed
        f.seek(100)
        f.write(b"\0")
    shown = project.run("data", "show", "asd-anomaly:1").assert_ok().stdout
    assert "NOT VERIFIED" in shown and "changed" in shown


def test_a_misspelt_sensitive_column_is_one_config_error_with_the_closest_name(opsloop_project, small_config):
    project = _project(opsloop_project, small_config, snapshot="store", sensitive=["m033"])
    project.run("run").assert_error("[data.sensitive]", "'m033' is not in embedded:asd", "m03")
    assert project.run("models", "list", "--json").assert_ok().json == []
    project.run("validate").assert_error("[data.sensitive]", "m03")


@pytest.mark.parametrize(("data", "fragment"), [
    ({"snapshot": "stor"}, 'did you mean "store"'),
    ({"sensitive_mode": "hashed"}, 'did you mean "hash"'),
    ({"sensitive": ["label"]}, "'label' is the target column"),
    ({"sensitive": "m03"}, "expected a list"),
])
def test_bad_data_keys_are_config_errors(opsloop_project, small_config, data, fragment):
    project = _project(opsloop_project, small_config, **data)
    project.run("config", "check").assert_error(f"[data.{next(iter(data))}]", fragment)


def test_no_snapshot_by_default_and_data_commands_say_so(opsloop_project, small_config):
    project = _project(opsloop_project, small_config)
    project.run("run").assert_ok()
    assert "snapshot" not in project.run("models", "show", "asd-anomaly:1", "--json").assert_ok().json[
        "lineage"]["data"]
    assert project.run("data", "list", "--json").assert_ok().json == []
    project.run("data", "show", "asd-anomaly:1").assert_error('asd-anomaly:1 has no data snapshot')
