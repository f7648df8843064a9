"""The `kfold` and `holdout` validators, fitting the real trainers on the embedded ASD data."""

from __future__ import annotations

import itertools
import math

import attrs
import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, RunContext, datasets
from opsloop.config import structure
from opsloop.errors import ConfigError, DataError, PluginCallError
from opsloop.metrics import CLASSIFICATION, REGRESSION
from opsloop.types import Reporter

STEP = pd.Timedelta(minutes=5)
FAST = {"n_estimators": 20, "early_stopping_rounds": 0, "max_depth": 4}


@pytest.fixture(scope="module")
def asd():
    return datasets.load("asd")


def servers(asd, *names, time=True, target="label"):
    frame = asd[asd["entity"].isin(names)].reset_index(drop=True)
    if not time:
        frame = frame.drop(columns=["timestamp"])
    return Dataset.from_frame(frame, target=target, time="timestamp" if time else None, series="entity",
                              name="asd " + ",".join(names))


@pytest.fixture(scope="module")
def pm():
    from opsloop.manager import PluginManager

    manager = PluginManager()
    for name in ("xgboost", "sklearn", "isolation-forest", "kfold", "holdout"):
        manager.load(name)
    return manager


@pytest.fixture
def run(tmp_path):
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=42,
                      config=opsloop.config.read(workdir=tmp_path))


def options(pm, plugin, section, **table):
    return structure(table, pm.options_class(plugin), section=f"{section}.{plugin}", source=None)


class Recorded:
    """The real estimator, noting which rows it is asked to score."""

    def __init__(self, estimator, entry):
        self.estimator, self.entry = estimator, entry

    @property
    def classes_(self):
        return self.estimator.classes_

    def predict_proba(self, X):
        self.entry["test"] = X.index
        return self.estimator.predict_proba(X)


def recording_fit(pm, run, seen, trainer="xgboost", **table):
    """`fit` as the runner gives it, wrapping the real trainer and recording what each fold saw."""

    def fit(dataset):
        model = pm.call(trainer, "train", dataset=dataset, options=options(pm, trainer, "train", **table), run=run)
        entry = {"train": dataset.frame.index}
        seen.append(entry)
        return attrs.evolve(model, estimator=Recorded(model.estimator, entry))

    return fit


def plain_fit(pm, run, trainer="xgboost", **table):
    return lambda d: pm.call(trainer, "train", dataset=d, options=options(pm, trainer, "train", **table), run=run)


def validate(pm, plugin, dataset, fit, run, **table):
    return pm.call(plugin, "validate", dataset=dataset, fit=fit, options=options(pm, plugin, "validate", **table),
                   run=run)


def test_time_folds_never_train_on_the_future(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", "omi-10")
    times = dataset.frame["timestamp"]
    seen = []
    report = validate(pm, "kfold", dataset, recording_fit(pm, run, seen, **FAST), run, folds=4)
    assert report.method == "4-fold time-ordered" and len(report.folds) == len(seen) == 4
    for fold, entry in zip(report.folds, seen):
        assert times[entry["train"]].max() < times[entry["test"]].min()
        assert fold["rows_train"] == len(entry["train"]) and fold["rows_test"] == len(entry["test"])
    # Forward chaining: each fold trains on all that came before its test block, tests on the next.
    for before, after in itertools.pairwise(seen):
        assert set(after["train"]) == set(before["train"]) | set(before["test"])
        assert times[after["test"]].min() == times[before["test"]].max() + STEP
    assert times[seen[-1]["test"]].max() == times.max()
    assert sum(len(e["test"]) for e in seen) + len(seen[0]["train"]) == len(dataset)


def test_time_folds_leave_a_gap(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-10")
    times = dataset.frame["timestamp"]
    seen = []
    report = validate(pm, "kfold", dataset, recording_fit(pm, run, seen, **FAST), run, folds=3, gap=12)
    assert report.method == "3-fold time-ordered, gap 12"
    for entry in seen:
        assert times[entry["test"]].min() - times[entry["train"]].max() == 13 * STEP


def test_stratified_folds_keep_the_class_ratio(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", "omi-10", time=False)
    y = dataset.frame["label"]
    seen = []
    report = validate(pm, "kfold", dataset, recording_fit(pm, run, seen, **FAST), run)
    assert report.method == "5-fold stratified"
    for fold, entry in zip(report.folds, seen):
        # StratifiedKFold: each class's count in a fold is within one of its share.
        assert abs(fold["positives_test"] - y.mean() * fold["rows_test"]) <= 1
        assert y[entry["test"]].sum() == fold["positives_test"]
        assert not set(entry["train"]) & set(entry["test"])
    assert sorted(i for e in seen for i in e["test"]) == list(range(len(dataset)))


def test_report_has_per_fold_metrics_and_their_mean_and_std(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", time=False)
    report = validate(pm, "kfold", dataset, plain_fit(pm, run, **FAST), run, folds=3)
    assert set(report.mean) == set(report.std) == set(CLASSIFICATION)
    for key in CLASSIFICATION:
        values = [f[key] for f in report.folds]
        assert report.mean[key] == pytest.approx(np.mean(values))
        assert report.std[key] == pytest.approx(np.std(values))
    assert all({"rows_train", "rows_test", "positives_train", "positives_test"} <= set(f) for f in report.folds)
    assert report.mean["roc_auc"] > 0.6


def test_a_test_block_with_one_class_reports_nan_auc(pm, asd, run):
    # omi-2 has no anomaly after its step 1445, so its last third holds one class only.
    dataset = servers(asd, "omi-2")
    report = validate(pm, "kfold", dataset, plain_fit(pm, run, **FAST), run, folds=2)
    empty = [f for f in report.folds if f["positives_test"] == 0]
    assert empty and all(math.isnan(f["roc_auc"]) and math.isnan(f["pr_auc"]) for f in empty)
    assert all(math.isnan(f["recall"]) for f in empty)  # no incident to recall: undefined, not 0
    assert all(not math.isnan(f["accuracy"]) for f in report.folds)
    assert not math.isnan(report.mean["accuracy"])


class Notes(Reporter):
    def __init__(self):
        self.notes = []

    def note(self, message):
        self.notes.append(message)


def test_a_training_block_with_one_class_gives_nan_metrics_and_a_note(pm, asd, tmp_path):
    # The first 2.5 days of these servers hold no anomaly; logistic regression refuses one class.
    notes = Notes()
    run = RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=42, reporter=notes,
                     config=opsloop.config.read(workdir=tmp_path))
    dataset = servers(asd, "omi-1", "omi-9", "omi-10", "omi-11")
    fit = plain_fit(pm, run, "sklearn", estimator="sklearn.linear_model.LogisticRegression")
    report = validate(pm, "kfold", dataset, fit, run)
    first, *rest = report.folds
    assert first["positives_train"] == 0 and all(math.isnan(first[k]) for k in CLASSIFICATION)
    assert all(not math.isnan(f["accuracy"]) for f in rest)
    assert len(notes.notes) == 1 and "fold 1/5" in notes.notes[0] and "one class" in notes.notes[0]
    assert report.mean["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in rest]))


def test_other_trainer_failures_are_not_hidden(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", "omi-10", "omi-11")
    fit = plain_fit(pm, run, "sklearn", estimator="sklearn.linear_model.LogisticRegression",
                    params={"C": -1.0})
    with pytest.raises(PluginCallError, match=r"train\.sklearn\.params"):
        validate(pm, "kfold", dataset, fit, run, method="stratified", folds=2)


def test_parallel_folds_give_the_same_report(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9")
    fit = plain_fit(pm, run, n_jobs=1, **FAST)
    one = validate(pm, "kfold", dataset, fit, run, folds=3)
    two = validate(pm, "kfold", dataset, fit, run, folds=3, n_jobs=2)
    assert one == two


def test_regression_folds(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", time=False).derive(
        asd[asd["entity"].isin(["omi-1", "omi-9"])].drop(columns=["timestamp", "label"]).reset_index(drop=True),
        target="m12")
    report = validate(pm, "kfold", dataset, plain_fit(pm, run, task="regression", **FAST), run, folds=3)
    assert report.method == "3-fold random" and set(report.mean) == set(REGRESSION)
    assert report.mean["r2"] > 0.8 and "positives_test" not in report.folds[0]


def test_an_unsupervised_detector_is_scored_against_labels(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", "omi-10")
    report = validate(pm, "holdout", dataset, plain_fit(pm, run, "isolation-forest"), run)
    assert report.method == "holdout 20% time-ordered"
    assert report.mean["roc_auc"] > 0.6
    unlabelled = dataset.derive(dataset.frame.drop(columns=["label"]), target=None)
    for plugin in ("kfold", "holdout"):
        with pytest.raises(PluginCallError, match="needs labels") as excinfo:
            validate(pm, plugin, unlabelled, plain_fit(pm, run, "isolation-forest"), run)
        assert isinstance(excinfo.value.cause, DataError)


def test_holdout_tests_on_the_latest_period(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9")
    times = dataset.frame["timestamp"]
    seen = []
    report = validate(pm, "holdout", dataset, recording_fit(pm, run, seen, **FAST), run, fraction=0.25)
    (entry,) = seen
    assert report.method == "holdout 25% time-ordered" and len(report.folds) == 1
    assert times[entry["train"]].max() + STEP == times[entry["test"]].min()
    assert times[entry["test"]].max() == times.max()
    assert report.folds[0]["rows_test"] == pytest.approx(0.25 * len(dataset), abs=2)
    assert report.mean == {k: v for k, v in report.folds[0].items() if k in CLASSIFICATION}


def test_stratified_holdout_keeps_the_class_ratio(pm, asd, run):
    dataset = servers(asd, "omi-1", "omi-9", time=False)
    report = validate(pm, "holdout", dataset, plain_fit(pm, run, **FAST), run, method="stratified")
    fold = report.folds[0]
    assert report.method == "holdout 20% stratified"
    assert abs(fold["positives_test"] - dataset.frame["label"].mean() * fold["rows_test"]) <= 1


def test_methods_the_data_cannot_support_are_data_errors(pm, asd, run):
    untimed = servers(asd, "omi-1", time=False)
    with pytest.raises(PluginCallError, match="needs a time column"):
        validate(pm, "kfold", untimed, plain_fit(pm, run, **FAST), run, method="time")
    continuous = untimed.derive(untimed.frame.drop(columns=["label"]), target="m12")
    with pytest.raises(PluginCallError, match="needs class labels"):
        validate(pm, "holdout", continuous, plain_fit(pm, run, **FAST), run, method="stratified")
    short = servers(asd, "omi-1")
    short = short.derive(short.frame.iloc[:4])
    with pytest.raises(PluginCallError, match="too few"):
        validate(pm, "kfold", short, plain_fit(pm, run, **FAST), run)


def test_validator_options_are_checked(pm):
    with pytest.raises(ConfigError):
        options(pm, "kfold", "validate", folds=1)
    with pytest.raises(ConfigError):
        options(pm, "kfold", "validate", n_jobs=0)
    with pytest.raises(ConfigError) as excinfo:
        options(pm, "kfold", "validate", method="stratify")
    assert excinfo.value.section == "validate.kfold"
    with pytest.raises(ConfigError):
        options(pm, "holdout", "validate", fraction=1.5)
