"""Rows that never come whole to one process (issue 10, item 3): `[data] source = "dask-parquet:<folder>"` and
`[train] plugins = ["dask-xgboost"]`, on a real two-worker cluster, ASD written as one Parquet file per five
days (so every partition boundary cuts every series; the training period spans two partitions and leaves
the third empty).

Every pass over partitioned data reads the files again and replays the preprocessing on them (opsloop keeps
no features on the workers), in tasks per partition, so the time goes with the number of partitions: with
one file per day (15 partitions) the module's run took 70-90 s, with three files 25-30 s. One run serves
every test of the module; it validates with `kfold` and `holdout` both, each compared with its single-process
counterpart.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

from opsloop.testing import invoke, opsloop_project, register_plugin, to_toml  # noqa: E402, F401 - the kit

SERVERS = ["omi-1", "omi-9", "omi-10", "omi-11"]
#: Days of ASD per Parquet file: its 15 days in 3 partitions.
DAYS_PER_FILE = 5
PARTITIONS = 3


@pytest.fixture(scope="module")
def rows(asd: Any) -> Any:
    """SMALL's four servers, every day, in the order the files hold them (time, then server)."""
    picked = asd[asd["entity"].isin(SERVERS)].sort_values(["timestamp", "entity"], kind="stable")
    return picked.reset_index(drop=True)


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory, rows: Any) -> Path:
    """`rows` as one Parquet file per five days, named in time order."""
    folder = tmp_path_factory.mktemp("asd-days") / "data"
    folder.mkdir()
    day = rows["timestamp"].dt.floor("D")
    for first, group in rows.groupby((day - day.min()).dt.days // DAYS_PER_FILE, sort=True):
        group.reset_index(drop=True).to_parquet(folder / f"{first:02d}.parquet", index=False)
    assert len(list(folder.iterdir())) == PARTITIONS
    return folder


def partitioned_config(small_config: Any, scheduler: str, days: Path, trainer: str = "dask-xgboost") -> dict:
    config = small_config(trainer, **({"scheduler": scheduler} if trainer.startswith("dask") else {}))
    config["data"] = {**config["data"], "source": f"dask-parquet:{days}"}
    config["data"]["dask-parquet"] = {"scheduler": scheduler}
    return config


#: The module run's validators: SMALL's three time-ordered folds first (the alert threshold and the version's
#: figures come from the first), then a holdout of the last 40% of the time steps.
VALIDATE = {"plugins": ["kfold", "holdout"], "kfold": {"folds": 3}, "holdout": {"fraction": 0.4}}


@pytest.fixture(scope="module")
def partitioned_run(tmp_path_factory: pytest.TempPathFactory, scheduler: str, small_config: Any, days: Path
                    ) -> tuple[Path, dict[str, Any]]:
    """One `opsloop run` on the Parquet files (`dask-parquet`, `dask-xgboost`), validated by `VALIDATE`."""
    path = tmp_path_factory.mktemp("partitioned-run")
    config = partitioned_config(small_config, scheduler, days)
    config["validate"] = VALIDATE
    (path / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    return path, invoke(["run", "--json", "--quiet"], path).assert_ok().json


def _manifest(path: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    shown = invoke(["models", "show", ref, "--json"], path).assert_ok().json
    return shown, json.loads((Path(shown["path"]) / "manifest.json").read_text())


def test_states_fitted_over_partitions_are_the_single_process_runs(partitioned_run, dask_run):
    """The bundle's preprocess states (schema-check, impute, rolling-features: opsloop's default) are the ones the
    same config fits on the same rows as one pandas frame, key for key and value for value."""
    path, run = partitioned_run
    _, manifest = _manifest(path, run["versions"][0]["ref"])
    single_path, single = dask_run
    _, reference = _manifest(single_path, single["versions"][0]["ref"])
    assert [s["plugin"] for s in manifest["steps"]] == ["schema-check", "impute", "rolling-features"]
    for got, want in zip(manifest["steps"], reference["steps"], strict=True):
        assert got["state"] == want["state"], got["plugin"]
    assert manifest["input_schema"] == reference["input_schema"]
    lineage = manifest["lineage"]["data"]
    assert lineage["rows"] == 4320 and lineage["partitions"] == PARTITIONS and lineage["engine"] == "dask-parquet"
    assert lineage["start"] == "2024-01-01T00:00:00Z" and lineage["end"] == "2024-01-08T11:55:00Z"
    assert lineage["fingerprint"].startswith("sha256:")


def test_validation_over_partitions_is_the_single_process_validation(partitioned_run, dask_run):
    """The same three time-ordered folds (selected per partition), fitted on the cluster, scored on the workers."""
    _, run = partitioned_run
    _, single = dask_run
    got, want = run["validation"][0], single["validation"][0]
    assert got["method"] == want["method"] == "3-fold time-ordered"
    assert [f["rows_test"] for f in got["folds"]] == [f["rows_test"] for f in want["folds"]]
    assert got["mean"]["pr_auc"] > 0.2
    assert abs(got["mean"]["pr_auc"] - want["mean"]["pr_auc"]) < 0.1, (got["mean"], want["mean"])
    assert run["thresholds"] and run["thresholds"][0]["rows"] == single["thresholds"][0]["rows"]


def test_the_version_serves_unchanged_and_scores_as_the_model_does(partitioned_run, asd_monitor, serve_and_score):
    import numpy as np
    import pandas as pd

    path, run = partitioned_run
    ref = run["versions"][0]["ref"]
    shown, manifest = _manifest(path, ref)
    assert shown["flavor"] == "xgboost" and manifest["trainer"] == "dask-xgboost"
    assert shown["params"]["partitioned"] is True and shown["params"]["rows_fit"] == 4320
    rows = asd_monitor[asd_monitor["entity"] == "omi-10"].head(40).drop(columns=["label"]).reset_index(drop=True)
    own, body = serve_and_score(path, ref, shown, rows)
    served = pd.DataFrame(body["predictions"])
    assert np.array_equal(served["score"].to_numpy(), own["score"].to_numpy())


def test_deploy_and_monitor_work_on_a_bounded_sample_of_the_monitoring_period(partitioned_run, dask_run):
    _, run = partitioned_run
    _, single = dask_run
    stages = [s["stage"] for s in run["stages"]]
    assert stages[:3] == ["load", "preprocess", "train"] and "monitor" in stages
    monitor = [s for s in run["stages"] if s["stage"] == "decide_retrain"][0]["summary"]
    assert "8,640 rows" in monitor  # the whole monitoring period is below the sample bound here
    got = {r["monitor"]: r["metrics"] for r in run["monitor"]}["quality-monitor"]
    want = {r["monitor"]: r["metrics"] for r in single["monitor"]}["quality-monitor"]
    assert got["rows"] == want["rows"] == 8640


@pytest.fixture(scope="module")
def engine_data(scheduler: str, days: Path):
    """The raw partitions as the core sees them: read by `dask-parquet` on the cluster, wrapped as `opsloop run`
    wraps them (one plugin manager for the module's steps)."""
    from opsloop import partitions
    from opsloop.config import read
    from opsloop.manager import PluginManager

    config = read(workdir=days.parent)
    plugins = PluginManager()
    plugins.load("dask-parquet")
    frame = plugins.call("dask-parquet", "load_data", source=f"dask-parquet:{days}",
                         options=plugins.options_class("dask-parquet")(scheduler=scheduler), data=config.data,
                         workdir=days.parent)
    data = partitions.wrap(frame, config, plugins, "days")
    return attrs_evolve(data, target="label", time="timestamp", series="entity").describe(), plugins


def attrs_evolve(data: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(data, **changes)


@pytest.mark.parametrize(("name", "options"), [("impute", {"add_indicator": True}), ("clip", {}),
                                               ("scale", {"method": "robust"}), ("schema-check", {})])
def test_states_over_dask_partitions_are_the_builtin_states(engine_data, rows, name, options):
    from opsloop import partitions
    from opsloop.types import Dataset, RunContext

    data, plugins = engine_data
    plugins.load(name)
    opts = plugins.options_class(name)(**options)
    run = RunContext(run_id="t", workdir=Path("."), model_name="m", config=None)
    want = plugins.call(name, "preprocess", dataset=Dataset.from_frame(rows, target="label", time="timestamp",
                                                                          series="entity"),
                        state=None, options=opts, run=run)
    got, issues = partitions.fit_step(name, data, opts, plugins, run)
    assert got == json.loads(json.dumps(dict(want.state), allow_nan=True))
    assert issues == list(want.issues)


def test_rolling_features_across_dask_partitions_equal_one_frame(engine_data, rows):
    import pandas as pd

    from opsloop import partitions
    from opsloop.types import Dataset, RunContext

    data, plugins = engine_data
    plugins.load("rolling-features")
    options = plugins.options_class("rolling-features")(windows=["1h"], stats=["mean", "std"])
    run = RunContext(run_id="t", workdir=Path("."), model_name="m", config=None)
    want = plugins.call("rolling-features", "preprocess", dataset=Dataset.from_frame(
        rows, target="label", time="timestamp", series="entity"), state=None, options=options, run=run)
    state, _ = partitions.fit_step("rolling-features", data, options, plugins, run)
    replayed = partitions.replay_step("rolling-features", state, data, options, plugins, keep="persist")
    got = pd.concat(replayed.collect(partitions._head, 10**9), ignore_index=True)
    pd.testing.assert_frame_equal(got, want.dataset.frame.reset_index(drop=True))
    assert data.partitions == PARTITIONS


def test_a_builtin_trainer_given_partitions_is_one_line_naming_it_and_dask_xgboost(opsloop_project, scheduler,
                                                                                  small_config, days):
    project = opsloop_project(config=partitioned_config(small_config, scheduler, days, trainer="xgboost"))
    result = project.run("run", "--quiet")
    result.assert_error('trainer "xgboost"', "partitioned", "dask-xgboost")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert project.run("models", "list", "--json").assert_ok().json == []


def test_a_missing_folder_is_one_line_naming_it(opsloop_project, scheduler, small_config, tmp_path):
    config = partitioned_config(small_config, scheduler, tmp_path / "nowhere")
    result = opsloop_project(config=copy.deepcopy(config)).run("run", "--quiet")
    result.assert_error("dask-parquet", str(tmp_path / "nowhere"), "not found")


def test_holdout_validation_over_partitions_is_the_single_process_holdout(partitioned_run, small_config, scheduler,
                                                                          tmp_path):
    """The run's `holdout` report: the same held-out time steps as `opsloop validate` with `holdout` on the
    same rows as one frame (`embedded:asd`, `dask-xgboost` on the same cluster), selected per partition."""
    _, run = partitioned_run
    single = small_config("dask-xgboost", scheduler=scheduler)
    single["validate"] = {"plugins": ["holdout"], "holdout": VALIDATE["holdout"]}
    (tmp_path / "opsloop.toml").write_text(to_toml(single), encoding="utf-8")
    want = invoke(["validate", "--json", "--quiet"], tmp_path).assert_ok().json
    got = run["validation"][1]
    fold, reference = got["folds"][0], want["reports"][0]["folds"][0]
    assert got["method"] == want["reports"][0]["method"]
    for key in ("rows_train", "rows_test", "positives_train", "positives_test"):
        assert fold[key] == reference[key], key
    assert math.isfinite(fold["pr_auc"]) and abs(fold["pr_auc"] - reference["pr_auc"]) < 0.1, (fold, reference)
