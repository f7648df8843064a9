"""`dask-xgboost` through real `opsloop run`s on ASD, on a real two-worker Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

from opsloop.testing import invoke, opsloop_project, register_plugin  # noqa: E402, F401 - the kit


def test_a_run_registers_an_xgboost_version_that_opsloop_serve_scores_as_the_model_does(dask_run, asd_monitor,
                                                                                         serve_and_score):
    import numpy as np
    import pandas as pd

    path, run = dask_run
    assert [s["plugins"] for s in run["stages"] if s["stage"] == "train"] == [["dask-xgboost"]]
    ref = run["versions"][0]["ref"]
    listed = invoke(["models", "list", "--json"], path).assert_ok().json
    assert [m["name"] for m in listed] == ["asd-anomaly"]
    shown = invoke(["models", "show", ref, "--json"], path).assert_ok().json
    # the built-in trainer's flavor, saved by the built-in plugin: the same bundle a `xgboost` run writes
    assert shown["flavor"] == "xgboost" and shown["task"] == "classification"
    assert shown["params"]["dask_workers"] == 2 and shown["params"]["rows_fit"] == 4320
    manifest = json.loads((Path(shown["path"]) / "manifest.json").read_text())
    assert manifest["trainer"] == "dask-xgboost" and manifest["flavor_plugin"] == "xgboost"

    # The model's own predictions (the bundle loaded in a fresh plugin manager, preprocessing replayed), and
    # opsloop serve's on a real socket (its fast path: float32 features): the same scores, value for value.
    rows = asd_monitor[asd_monitor["entity"] == "omi-10"].head(40).drop(columns=["label"]).reset_index(drop=True)
    own, body = serve_and_score(path, ref, shown, rows)
    served = pd.DataFrame(body["predictions"])
    assert np.array_equal(served["score"].to_numpy(), own["score"].to_numpy())
    assert np.array_equal(served["prediction"].to_numpy(), own["prediction"].to_numpy())
    assert body["model_version"] == ref.split(":")[1]

    # The run's own batch scoring of the monitoring period (the `batch` target) agrees on those rows too.
    batch = pd.read_parquet(run["deployments"][0]["location"])
    batch = batch[batch["entity"] == "omi-10"].head(40)
    assert np.array_equal(batch["score"].to_numpy(), own["score"].to_numpy())


#: PR AUC of the two trainers' validations on this slice (xgboost 3.1, dask 2026.8): 0.354 and 0.360; the
#: histogram bins come from per-partition sketches merged on the cluster, so the trees differ a little.
PR_AUC_TOLERANCE = 0.1
#: The slice's share of anomalous rows is 0.064: both models must be well above what chance gives.
PR_AUC_FLOOR = 0.2


def test_dask_and_single_process_xgboost_validate_alike(dask_run, small_config, opsloop_project):
    _, run = dask_run
    project = opsloop_project(config=small_config("xgboost"))
    single = project.run("validate", "--json", "--quiet").assert_ok().json
    figures = single["reports"][0]["mean"]
    on_dask = run["validation"][0]["mean"]
    assert on_dask["pr_auc"] > PR_AUC_FLOOR and figures["pr_auc"] > PR_AUC_FLOOR
    assert abs(on_dask["pr_auc"] - figures["pr_auc"]) < PR_AUC_TOLERANCE, (on_dask, figures)


def test_an_unreachable_scheduler_is_one_line_naming_the_plugin_and_address(opsloop_project, small_config,
                                                                              free_port):
    address = f"tcp://127.0.0.1:{free_port}"
    project = opsloop_project(config=small_config("dask-xgboost", scheduler=address, connect_timeout=2))
    result = project.run("run", "--quiet")
    result.assert_error('plugin "dask-xgboost"', f"cannot reach the Dask scheduler at {address}", "within 2 s")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert project.run("models", "list", "--json").assert_ok().json == []
    assert not list((project.path / ".opsloop").glob("**/manifest.json"))


def test_options_are_the_xgboost_trainers_and_checked(opsloop_project, small_config):
    import attrs

    from opsloop.manager import PluginManager

    plugins = PluginManager()
    for name in ("xgboost", "dask-xgboost"):
        plugins.load(name)
    theirs = {f.name: f.default for f in attrs.fields(plugins.options_class("xgboost"))}
    ours = {f.name: f.default for f in attrs.fields(plugins.options_class("dask-xgboost"))}
    assert set(theirs) <= set(ours)  # every option of the built-in trainer, with its default
    assert {k: ours[k] for k in theirs if k != "params"} == {k: v for k, v in theirs.items() if k != "params"}
    assert ours["params"].factory() == theirs["params"].factory() == {}
    # tune_space: the built-in's ranges, asked through the plugin system
    space = plugins.call("dask-xgboost", "tune_space", options=plugins.options_class("dask-xgboost")())
    builtin = plugins.call("xgboost", "tune_space", options=plugins.options_class("xgboost")())
    assert dict(space.params) == dict(builtin.params) and "subsample" in space.passthrough
    assert "scheduler" not in space.passthrough

    project = opsloop_project(config=small_config("dask-xgboost", schedular="tcp://127.0.0.1:8786"))
    project.run("config", "check").assert_error("[train.dask-xgboost.schedular]", 'did you mean "scheduler"')
    project = opsloop_project(config=small_config("dask-xgboost", scheduler="tcp://no host:1"))
    project.run("config", "check").assert_error("[train.dask-xgboost.scheduler]", "Dask scheduler address")


@pytest.mark.slow  # starts two worker processes, each importing XGBoost and pandas (about 5-10 s on 2 cores)
def test_without_a_scheduler_it_starts_its_own_local_cluster_of_worker_processes(opsloop_project, small_config):
    """Training and dask-batch on the plugins' own cluster of two processes (one cluster: same options): the
    bundle files reach worker processes that load it with their own plugin managers."""
    import numpy as np
    import pandas as pd

    from opsloop_dask.cluster import close_all

    cluster = {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"}
    config = small_config("dask-xgboost", **cluster)
    config["validate"] = {"plugins": []}
    config["deploy"] = {"plugins": ["batch", "dask-batch"], "dask-batch": {"partition_rows": 2000, **cluster}}
    project = opsloop_project(config=config)
    try:
        run = project.run("run").assert_ok().json
    finally:
        close_all()  # its cluster goes now, not when the session ends
    shown = project.run("models", "show", run["versions"][0]["ref"], "--json").assert_ok().json
    assert shown["flavor"] == "xgboost" and shown["params"]["dask_workers"] == 2
    batch, on_dask = (pd.read_parquet(d["location"]).sort_values(["entity", "timestamp"], ignore_index=True)
                      for d in run["deployments"])
    assert run["deployments"][1]["details"]["partitions"] == 5
    assert np.array_equal(batch["score"].to_numpy(), on_dask["score"].to_numpy())


def test_early_stopping_holds_out_the_same_rows_and_its_best_iteration_survives_the_flavor(asd, scheduler,
                                                                                          tmp_path):
    """Direct calls of both trainers on rows whose last tenth of time steps holds incidents, so that early
    stopping runs; the Dask model goes through the built-in flavor (save, load) unchanged."""
    import numpy as np

    from opsloop import Dataset
    from opsloop.bundle import ModelFiles
    from opsloop.config import read
    from opsloop.manager import PluginManager
    from opsloop.types import RunContext

    rows = asd[asd["entity"].isin(["omi-1", "omi-9"]) & (asd["timestamp"] < "2024-01-12")].reset_index(drop=True)
    dataset = Dataset.from_frame(rows.drop(columns=["entity"]), target="label", time="timestamp", name="asd")
    run = RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=3, config=read(workdir=tmp_path))
    plugins = PluginManager()
    fitted = {}
    for name, extra in (("xgboost", {}), ("dask-xgboost", {"scheduler": scheduler})):
        plugins.load(name)
        options = plugins.options_class(name)(n_estimators=300, early_stopping_rounds=10, **extra)
        fitted[name] = plugins.call(name, "train", dataset=dataset, options=options, run=run)
    single, on_dask = fitted["xgboost"], fitted["dask-xgboost"]
    for key in ("rows_fit", "rows_early_stopping", "validation_fraction", "early_stopping_rounds"):
        assert on_dask.params[key] == single.params[key], key
    assert 0 < on_dask.params["best_iteration"] < 300 and on_dask.flavor == "xgboost"

    files = ModelFiles(plugins)
    saver, _ = files.save(on_dask, tmp_path / "bundle")
    assert saver == "xgboost"
    manifest = {"task": "classification", "features": list(on_dask.features)}
    loaded = files.load("xgboost", saver, tmp_path / "bundle", manifest)
    assert loaded.best_iteration == on_dask.params["best_iteration"]
    X = dataset.X
    assert np.array_equal(loaded.predict_proba(X), on_dask.estimator.predict_proba(X))
