"""Data snapshots on a shared PostgreSQL registry (issue 14, item 4): kept in its bundle directory, found from
its versions' lineage, pruned and refused as with the local store. Against the test server
(store_contract.py); skipped with the reason when there is none."""

from __future__ import annotations

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests


def test_snapshots_live_beside_the_shared_bundles_and_follow_the_registry(opsloop_project, small_config, tmp_path,
                                                                          monkeypatch):
    backend = store_contract.PostgresBackend(store_contract.require_pg())
    try:
        monkeypatch.delenv("OPSLOOP_STORE", raising=False)
        shared = tmp_path / "shared"
        small_config["store"] = {"uri": backend.uri(shared), "plugins": ["local-store", "postgres-store"]}
        small_config["data"]["snapshot"] = "store"
        small_config.update({"deploy": {"plugins": []}, "monitor": {"plugins": []}, "retrain": {"plugins": []}})
        project = opsloop_project(config=small_config)
        project.run("run").assert_ok()
        project.run("run", "--set", "train.xgboost.max_depth=3").assert_ok()
        project.run("run", "--set", "data.train=\"entity == 'omi-9' and timestamp < '2024-01-08'\"").assert_ok()
        assert not (project.path / ".opsloop" / "snapshots").exists()
        files = sorted(p.name for p in (shared / "snapshots").glob("*.parquet"))
        listed = project.run("data", "list", "--json").assert_ok().json
        assert sorted(e["digest"].removeprefix("sha256:") + ".parquet" for e in listed) == files
        assert sorted(e["versions"] for e in listed) == [["asd-anomaly:1", "asd-anomaly:2"], ["asd-anomaly:3"]]

        project.run("data", "remove", "asd-anomaly:3").assert_error("asd-anomaly:3 trained on it")
        project.run("models", "delete", "asd-anomaly", "3", "--yes").assert_ok()
        pruned = project.run("data", "prune", "--older-than", "0", "--json").assert_ok().json
        assert len(pruned["removed"]) == 1 and len(pruned["kept_in_use"]) == 1
        assert len(list((shared / "snapshots").glob("*.parquet"))) == 1
    finally:
        backend.cleanup()
