"""Each opsloop-pyod trainer through a real `opsloop run` on ASD: trained, registered, loaded back, same scores."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyod", reason="PyOD is not installed (pip install -e ./contrib/opsloop-pyod)")
pytest.importorskip("opsloop_pyod", reason="opsloop-pyod is not installed (pip install -e ./contrib/opsloop-pyod)")

from opsloop.testing import opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures

PLUGINS = ["pyod-ecod", "pyod-copod", "pyod-hbos", "pyod-iforest"]
#: Tolerant: the four reach 0.83 to 0.92 on this slice (pyod 3.6, scikit-learn 1.9); chance is 0.5.
MIN_ROC_AUC = 0.7


@pytest.mark.parametrize("plugin", PLUGINS)
def test_trains_registers_loads_back_and_scores_the_same(plugin, opsloop_project, pyod_config, asd):
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager

    options = {"n_estimators": 40} if plugin == "pyod-iforest" else {}
    project = opsloop_project(config=pyod_config(plugin, **options))
    result = project.run("run").assert_ok()
    assert ("train", plugin) in result.stages
    ref = result.json["versions"][0]["ref"]
    shown = project.run("models", "show", ref, "--json").assert_ok().json
    assert shown["flavor"] == "pyod" and shown["task"] == "anomaly"
    assert shown["params"]["estimator"].startswith("pyod.models.")

    # The deploy stage scored the monitored rows with the registered bundle; loading it again in a
    # fresh plugin manager gives the same numbers, bit for bit.
    deployed = pd.read_parquet(result.json["deployments"][0]["location"])
    loaded = read_bundle(Path(shown["path"]), PluginManager(), ref=ref, digest=shown["digest"])
    rows = asd[(asd["entity"] == "omi-9") & (asd["timestamp"] >= "2024-01-08 12:00")]
    rows = rows.merge(deployed[["entity", "timestamp", "score", "prediction"]], on=["entity", "timestamp"])
    assert len(rows) == len(deployed) == 2160
    again = loaded.predict(rows.drop(columns=["score", "prediction", "label"]))
    assert np.array_equal(again["score"].to_numpy(), rows["score"].to_numpy())
    assert np.array_equal(again["prediction"].to_numpy(), rows["prediction"].to_numpy())

    # The server's fast path (compile_predict, on float32 features): the same numbers again.
    from opsloop_pyod import ecod  # the four trainers share the flavor's hooks

    fast = ecod.compile_predict(model=loaded, threads=0)
    labels, score = fast(rows[loaded.manifest["features"]].to_numpy(dtype=np.float32))
    assert np.array_equal(score, rows["score"].to_numpy())
    assert np.array_equal(labels, (score > loaded.estimator.threshold).astype("int8"))

    # Labels never trained it, yet it ranks the labelled anomalies of servers it never saw.
    assert roc_auc_score(rows["label"], rows["score"]) > MIN_ROC_AUC


@pytest.mark.parametrize(("plugin", "key", "value", "says"), [
    ("pyod-ecod", "contamination", 0.7, "expected a number in (0, 0.5]"),
    ("pyod-copod", "contamination", "auto", "expected float"),
    ("pyod-hbos", "n_bins", 1, 'expected a bin count >= 2 or "auto"'),
    ("pyod-hbos", "alpha", 1.5, "expected a number in (0, 1)"),
    ("pyod-iforest", "max_samples", 0, "expected \"auto\", a row count >= 1"),
    ("pyod-iforest", "n_estimatorz", 10, "did you mean \"n_estimators\""),
])
def test_bad_options_are_config_errors_naming_the_key(plugin, key, value, says, opsloop_project, pyod_config):
    project = opsloop_project(config=pyod_config(plugin, **{key: value}))
    project.run("config", "check").assert_error(f"[train.{plugin}.{key}]", says)
