"""Issue 8, defect 5: a classifier trained on rows of one class could be registered and never loaded.

The trainers refuse such rows with a DataError naming the target column and the class; the
early-stopping fallback (a hold-out of one class) and k-fold folds with a one-class training block
keep working, because only the rows a trainer is given to fit all at once are judged.
"""

from __future__ import annotations

import math

import pytest

import opsloop.config
from opsloop import Dataset, RunContext, datasets
from opsloop.config import structure
from opsloop.errors import DataError, PluginCallError
from opsloop.manager import PluginManager


class Notes:
    def __init__(self):
        self.notes = []

    def note(self, message):
        self.notes.append(message)

    def __getattr__(self, name):  # the rest of the reporter: silent
        return lambda *a, **k: (a[0] if name == "track" else None)


@pytest.fixture(scope="module")
def asd():
    return datasets.load("asd")


@pytest.fixture(scope="module")
def pm():
    manager = PluginManager()
    for name in ("xgboost", "sklearn", "kfold"):
        manager.load(name)
    return manager


@pytest.fixture
def run(tmp_path):
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=42, reporter=Notes(),
                      config=opsloop.config.read(workdir=tmp_path))


def quiet(asd):
    """omi-2 after 2024-01-08: no incident at all."""
    frame = asd[(asd["entity"] == "omi-2") & (asd["timestamp"] > "2024-01-08")].reset_index(drop=True)
    assert frame["label"].nunique() == 1
    return Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="omi-2 quiet")


def train(pm, plugin, dataset, run, **table):
    options = structure(table, pm.options_class(plugin), section=f"train.{plugin}", source=None)
    return pm.call(plugin, "train", dataset=dataset, options=options, run=run)


@pytest.mark.parametrize("plugin, table", [("xgboost", {"n_estimators": 5}),
                                           ("sklearn", {"params": {"n_estimators": 5}})])
def test_a_target_of_one_class_is_refused_naming_the_column_and_the_class(pm, asd, run, plugin, table):
    with pytest.raises(PluginCallError) as info:
        train(pm, plugin, quiet(asd), run, **table)
    assert isinstance(info.value.cause, DataError)
    assert f"{plugin}: target column 'label' holds one class only (0) in the 2,303 training rows" in str(info.value)
    assert "a classifier needs at least two" in str(info.value)


def test_regression_and_anomaly_detection_do_not_need_two_classes(pm, asd, run):
    data = quiet(asd)
    assert train(pm, "xgboost", data, run, task="regression", n_estimators=5).task == "regression"
    forest = train(pm, "sklearn", data, run, task="anomaly", estimator="sklearn.ensemble.IsolationForest",
                   params={"n_estimators": 5})
    assert forest.task == "anomaly"


def test_kfold_reports_a_one_class_training_block_of_xgboost_as_nan_with_a_note(pm, asd, run):
    # The first blocks in time of these servers hold no incident: xgboost now refuses them.
    frame = asd[asd["entity"].isin(["omi-1", "omi-9", "omi-10", "omi-11"])].reset_index(drop=True)
    dataset = Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="asd-4")

    def fit(part):
        return train(pm, "xgboost", part, run, n_estimators=10)

    options = structure({"folds": 5}, pm.options_class("kfold"), section="validate.kfold", source=None)
    report = pm.call("kfold", "validate", dataset=dataset, fit=fit, options=options, run=run)
    first, *rest = report.folds
    assert first["positives_train"] == 0 and math.isnan(first["f1"])
    assert all(not math.isnan(f["accuracy"]) for f in rest)
    assert any("fold 1/5" in n and "holds one class only" in n for n in run.reporter.notes)
