"""`[data] sensitive` on a partitioned source (docs/scale.md, docs/data.md): its columns are checked against the
partitions' columns as a frame's are (issue 14: a misspelt one would leave the real column where rows are kept),
with the same one-line ConfigError naming the column and the closest one. The source is a real engine of
partitions (`opsloop.partitions.InProcessEngine`: ASD, one pandas frame per day), no Dask needed."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pytest

from opsloop import hookimpl
from opsloop import partitions as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402


class DaySource(P.InProcessEngine):
    """ASD as one partition per day; its own engine (`map_partitions`)."""

    @hookimpl
    def load_data(self, source, options, data, workdir):
        from opsloop import datasets

        asd = datasets.load("asd").sort_values(["timestamp", "entity"], kind="stable")
        return P.FrameList(g.reset_index(drop=True) for _, g in asd.groupby(asd.timestamp.dt.date, sort=True))


def _config(**data) -> dict:
    config = json.loads(json.dumps(SMALL))
    config["data"].update({"source": "days:asd", "plugin": "days", **data})
    return config


def test_a_misspelt_sensitive_column_of_a_partitioned_source_is_one_line_naming_the_closest(opsloop_project,
                                                                                           hook_recorder):
    project = opsloop_project(config=_config(sensitive=["m3"]), plugins={"days": DaySource()})
    for command in ("run", "validate"):
        result = project.run(command)
        result.assert_error("[data.sensitive]", "sensitive column 'm3' is not in days:asd (22 columns)",
                            'did you mean "m13"?')
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]  # one error line, no traceback
        assert line.startswith("error: config error:") and "Traceback" not in result.stderr
    # refused when the partitions are first looked at: nothing fitted, nothing registered
    assert not hook_recorder.named("fit_partitions") and not hook_recorder.named("train")
    assert project.run("models", "list", "--json").assert_ok().json == []


def test_a_sensitive_column_the_partitions_have_passes_the_check(opsloop_project):
    """A correct name is not refused: the partitions are read and the run reaches the trainer check (a trainer
    that takes one frame is refused only after the data and its columns were accepted)."""
    project = opsloop_project(config=_config(sensitive=["m03"]), plugins={"days": DaySource()})
    project.run("run").assert_error('trainer "xgboost"', "partitioned", "dask-xgboost")


@pytest.mark.slow  # a whole run on a Dask cluster (about 30 s)
def test_a_partitioned_runs_prediction_log_holds_the_sensitive_column_hashed(opsloop_project, tmp_path,
                                                                            monkeypatch):
    """With Dask (opsloop-dask): Parquet files of ASD read in partitions, trained by `dask-xgboost`, the sampled
    monitoring period deployed by `batch`; the prediction log it writes holds `m03` as keyed hashes only."""
    pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed")
    from distributed import LocalCluster
    from opsloop import datasets
    from opsloop.sensitive import Sensitive
    from opsloop.serving import segments

    monkeypatch.setenv("OPSLOOP_HASH_KEY", "cd" * 32)
    asd = datasets.load("asd")
    rows = asd[asd["entity"].isin(["omi-1", "omi-9"])].sort_values(["timestamp", "entity"], kind="stable")
    folder = tmp_path / "days"
    folder.mkdir()
    day = rows["timestamp"].dt.floor("D")
    for first, group in rows.groupby((day - day.min()).dt.days // 5, sort=True):  # 3 files of 5 days
        group.reset_index(drop=True).to_parquet(folder / f"{first:02d}.parquet", index=False)

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                           host="127.0.0.1", dashboard_address=None)
    try:
        scheduler = cluster.scheduler_address
        config = json.loads(json.dumps(SMALL))
        config["data"].update({"source": f"dask-parquet:{folder}", "sensitive": ["m03"], "sensitive_mode": "hash",
                               "dask-parquet": {"scheduler": scheduler},
                               "monitor": "timestamp >= '2024-01-08 12:00'"})
        config["train"] = {"plugins": ["dask-xgboost"], "dask-xgboost": {"n_estimators": 30, "scheduler": scheduler}}
        config.update({"deploy": {"plugins": ["batch"]}, "monitor": {"plugins": []}, "retrain": {"plugins": []}})
        project = opsloop_project(config=config)
        result = project.run("run").assert_ok()
    finally:
        from opsloop_dask.cluster import close_all

        close_all()
        cluster.close()
    assert result.json["deployments"][0]["details"]["logged"] > 0
    with sqlite3.connect(project.path / ".opsloop" / "serving" / "predictions.db") as con:
        blobs = [row[0] for row in con.execute("SELECT data FROM segments")]
    logged = pd.concat([segments.inputs_frame(segments.decode(b)) for b in blobs], ignore_index=True)
    assert logged["m03"].notna().all() and logged["m03"].str.startswith("hmac:").all()
    assert pd.api.types.is_numeric_dtype(logged["m02"])  # the others as they were
    hide = Sensitive(columns=("m03",), mode="hash", key=bytes.fromhex("cd" * 32))
    assert set(logged["m03"]) <= {hide.hash_text(v) for v in rows["m03"]}
