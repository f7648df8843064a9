"""`estimate-monitor`: precision, recall and F1 estimated from calibrated scores, on real ASD and SMD (issue 9, item 5).

Each set is split in two by a seeded coin per row: one half is trained on
(xgboost, 60 trees, stratified 5-fold validation, so every training row gets
an out-of-fold score) and registered through the real runner and store, the
other half is monitored. The monitored rows come from the same servers and
days as the training rows and were never trained on: data without shift,
where the calibration of the out-of-fold scores should carry over and the
estimate should land near the figures counted with the labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import numpy as np
import pandas as pd
import pytest
from opsloop import datasets, profile
from opsloop.bundle import MANIFEST, manifest_digest, sha256_file
from opsloop.errors import ConfigError
from opsloop.plugins import estimate_monitor, holdout
from opsloop.testing import to_toml
from opsloop.types import Dataset

CONFIG = {"preprocess": {"plugins": ["impute"]}, "train": {"xgboost": {"n_estimators": 60}},
          "validate": {"plugins": ["kfold"], "kfold": {"folds": 5, "method": "stratified"}},
          "monitor": {"plugins": ["estimate-monitor"]}}
#: How far the estimate may be from the realized figure on the monitored half (absolute). The realized
#: figures are themselves a sample: with ~1,200 (ASD) and ~1,900 (SMD) monitored positives and ~2,100
#: predicted ones, a proportion such as recall or precision has a standard error of about 0.01-0.015 if rows
#: were independent, and incident rows come in runs (ASD's in a few dozen incidents), so fewer independent
#: draws. Measured: ASD 0.029 (precision), 0.018 (recall, F1); SMD 0.004 at most (docs/monitoring.md).
TOLERANCE = 0.06


@attrs.frozen
class Case:
    version: object
    model: object
    train: Dataset
    monitored: Dataset
    oof: pd.DataFrame
    workdir: Path


def _build(workdir: Path, name: str, frame: pd.DataFrame, stages: dict | None = None) -> Case:
    """Register a version trained on a seeded half of `frame`, as `opsloop run` does, keeping its validation."""
    from opsloop import config as config_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(workdir / "data.parquet", index=False)
    config = {"project": {"name": name}, "data": {"source": "data.parquet", "target": "label", "time": "timestamp",
                                                  "series": "entity"}, **(stages or CONFIG)}
    (workdir / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    half = np.random.default_rng(0).random(len(frame)) < 0.5
    full = Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name=name)
    train = full.derive(frame[half].reset_index(drop=True))
    monitored = full.derive(frame[~half].reset_index(drop=True))
    runner = Runner(Session.open(config_mod.read(workdir=workdir)))
    try:
        features, steps, _ = runner.preprocess(train)
        trained = runner.train(features)
        validation = runner.validate(features)
        version = runner.register(trained, train, steps, validation)
        model = runner.load(version)
    finally:
        runner.close()
    return Case(version, model, train, monitored, validation[0].oof, workdir)


@pytest.fixture(scope="module")
def asd(tmp_path_factory) -> Case:
    return _build(tmp_path_factory.mktemp("asd"), "asd", datasets.load("asd"))


@pytest.fixture(scope="module")
def smd(tmp_path_factory, smd_machine_1_6) -> Case:
    return _build(tmp_path_factory.mktemp("smd"), "smd", smd_machine_1_6())


def watch(case: Case, current: Dataset | None = None, version=None, **options):
    current = current if current is not None else case.monitored
    predictions = case.model.predict(current.frame).reset_index(drop=True)
    return estimate_monitor.monitor(version=version or case.version, current=current, predictions=predictions,
                                    options=estimate_monitor.Options(**options))


# ---------------------------------------------------------------------------
# The calibration in the bundle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["asd", "smd"])
def test_the_bundle_carries_the_calibration_of_the_out_of_fold_scores(case, request):
    from sklearn.isotonic import IsotonicRegression

    c: Case = request.getfixturevalue(case)
    calibration = profile.read_calibration(c.version)
    assert calibration is not None
    # stratified folds test every training row once: the out-of-fold rows are the training rows
    assert c.oof["row"].tolist() == list(range(len(c.train)))
    assert calibration.rows == len(c.train) and calibration.positives == int(c.train.frame["label"].sum())
    assert (calibration.threshold, calibration.inclusive) == (0.5, False)  # argmax of predict_proba
    # np.interp over the stored breakpoints is scikit-learn's isotonic fit, inside and outside its scores
    fitted = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(c.oof["score"], c.oof["label"])
    probes = np.concatenate([c.oof["score"].to_numpy(), np.linspace(-0.5, 1.5, 201)])
    assert np.allclose(calibration.probability(probes), fitted.predict(probes), rtol=0, atol=1e-12)
    # the baseline is what the fold models' own predictions scored on those rows
    y, predicted = c.oof["label"].to_numpy() == 1, c.oof["prediction"].to_numpy() == 1
    tp = (y & predicted).sum()
    assert calibration.baseline["precision"] == pytest.approx(tp / predicted.sum())
    assert calibration.baseline["recall"] == pytest.approx(tp / y.sum())
    # stored in profile.json, which the manifest's digest covers; small (breakpoints, not rows)
    manifest = json.loads((c.version.path / MANIFEST).read_text())
    path = c.version.path / profile.PROFILE_FILE
    assert manifest["files"][profile.PROFILE_FILE] == sha256_file(path)
    stored = json.loads(path.read_text())["calibration"]
    assert len(json.dumps(stored)) < 20_000
    assert profile.read_profile(c.version).calibration == calibration


def test_the_calibration_round_trips_through_json(asd):
    calibration = profile.read_calibration(asd.version)
    again = profile.Calibration.from_json(json.loads(json.dumps(calibration.to_json(), allow_nan=False)))
    assert again == calibration
    scores = asd.model.predict(asd.monitored.frame)["score"].to_numpy()
    assert np.array_equal(again.probability(scores), calibration.probability(scores))
    assert np.isnan(calibration.probability([np.nan])).all()


def test_the_out_of_fold_scores_stay_out_of_json_and_equality(asd):
    from opsloop.types import ValidationReport

    report = ValidationReport(method="m", mean={"f1": 0.5}, oof=asd.oof)
    assert report == ValidationReport(method="m", mean={"f1": 0.5})
    assert "oof" not in repr(report) and "oof" not in report.summary()
    json.dumps(report.summary())


def test_holdout_keeps_the_held_out_rows_scores(asd):
    """Holdout scores the last fifth of the time steps with a model of the rest: those rows, in order."""
    from opsloop import config as config_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    frame = asd.train.frame[asd.train.frame["entity"].isin(["omi-1", "omi-9"])].reset_index(drop=True)
    dataset = asd.train.derive(frame)
    runner = Runner(Session.open(config_mod.read(workdir=asd.workdir)))
    try:
        report = holdout.validate(dataset=dataset, fit=runner.fit, options=holdout.Options(), run=runner.run)
    finally:
        runner.close()
    _, test = holdout.time_split(dataset, 0.2)
    assert report.oof["row"].tolist() == test.tolist()
    assert (report.oof["label"].to_numpy() == frame["label"].to_numpy()[test]).all()
    assert report.oof["fold"].eq(0).all() and report.oof["score"].between(0, 1).all()


def test_an_anomaly_detector_is_calibrated_with_the_threshold_its_predictions_follow(tmp_path):
    """isolation-forest (task "anomaly"): its score is -score_samples, not a probability; the threshold is read
    off its predictions on the training rows, and the estimate runs as for a classifier."""
    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"])].reset_index(drop=True)
    stages = {**CONFIG, "train": {"plugins": ["isolation-forest"], "isolation-forest": {"n_estimators": 50}},
              "validate": {"plugins": ["holdout"], "holdout": {"method": "stratified"}}}
    c = _build(tmp_path, "iso", frame, stages)
    calibration = profile.read_calibration(c.version)
    assert c.version.task == "anomaly" and calibration is not None
    assert calibration.inclusive and calibration.threshold is not None
    assert calibration.rows == len(c.oof) == math.ceil(0.2 * len(c.train))  # held-out rows (sklearn rounds up)
    trained = c.model.predict(c.train.frame)
    assert np.array_equal(calibration.predicted(trained["score"]), trained["prediction"].to_numpy() == 1)
    assert np.all(np.diff(calibration.probabilities) >= 0) and 0 <= min(calibration.probabilities)
    m = watch(c).metrics
    assert m["labelled"] == len(c.monitored) and 0 < m["estimated_f1"] < 1 and 0 < m["realized_f1"] < 1


# ---------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["asd", "smd"])
def test_the_estimate_is_close_to_the_realized_figures_without_shift(case, request):
    c: Case = request.getfixturevalue(case)
    report = watch(c)
    m = report.metrics
    assert m["rows"] == m["labelled"] == len(c.monitored)
    assert m["positives"] == c.monitored.frame["label"].sum() > 1000
    for name in ("precision", "recall", "f1"):
        assert abs(m[f"estimated_{name}"] - m[f"realized_{name}"]) < TOLERANCE, (name, m)
    assert abs(m["estimated_prevalence"] - m["realized_prevalence"]) < 0.01
    # the realized figures are scikit-learn's on the same rows
    from sklearn.metrics import f1_score, precision_score

    predicted = c.model.predict(c.monitored.frame)["prediction"].to_numpy()
    assert m["realized_f1"] == pytest.approx(f1_score(c.monitored.frame["label"], predicted))
    assert m["realized_precision"] == pytest.approx(precision_score(c.monitored.frame["label"], predicted))
    # the baseline sits beside both, under both names; a healthy period does not alert
    assert report.baseline["estimated_f1"] == report.baseline["realized_f1"] == \
        profile.read_calibration(c.version).baseline["f1"]
    assert report.alerts == ()


def test_without_labels_only_the_estimate_is_reported(asd):
    unlabelled = asd.monitored.derive(asd.monitored.frame.assign(label=np.nan))
    labelled = watch(asd)
    report = watch(asd, unlabelled)
    assert "labelled" not in report.metrics and "realized_f1" not in report.metrics
    assert {k: v for k, v in report.metrics.items() if k.startswith("estimated_")} == \
        {k: v for k, v in labelled.metrics.items() if k.startswith("estimated_")}
    # a few labels arrived: the realized figures count those rows only
    some = asd.monitored.frame["label"].where(np.arange(len(asd.monitored)) % 10 == 0)
    partial = watch(asd, asd.monitored.derive(asd.monitored.frame.assign(label=some)))
    assert partial.metrics["labelled"] == some.notna().sum()


def test_a_fall_in_expected_f1_alerts_and_a_quiet_window_does_not(asd):
    # the rows the model predicted 0 with the highest scores, and a quiet stretch: F1 expected far below baseline
    predictions = asd.model.predict(asd.monitored.frame)
    scores = predictions["score"].where(predictions["prediction"] == 0, -1).to_numpy()
    hard = asd.monitored.derive(asd.monitored.frame.iloc[np.argsort(-scores)[:2000]].reset_index(drop=True))
    report = watch(asd, hard)
    assert report.metrics["expected_positives"] >= 20
    assert len(report.alerts) == 1 and report.alerts[0].startswith("estimated F1 ")
    assert "below the out-of-fold F1" in report.alerts[0] and "max_f1_drop 0.30" in report.alerts[0]
    # too few expected incident rows for F1 to mean anything: figures, no alert
    assert watch(asd, hard, min_expected_positives=1e6).alerts == ()


def test_too_few_rows_give_a_note_and_no_estimate(asd):
    few = asd.monitored.derive(asd.monitored.frame.iloc[:50].reset_index(drop=True))
    report = watch(asd, few)
    assert report.metrics == {"rows": 50.0}
    assert report.alerts == ("too few rows: 50 scored row(s) in asd, fewer than min_rows 100: no estimate",)
    assert "estimated_f1" in watch(asd, few, min_rows=50).metrics


def test_an_old_bundle_without_a_calibration_gives_a_clear_note(asd, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(asd.version.path, old)
    doc = json.loads((old / profile.PROFILE_FILE).read_text())
    del doc["calibration"]
    (old / profile.PROFILE_FILE).write_text(json.dumps(doc))
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["files"][profile.PROFILE_FILE] = sha256_file(old / profile.PROFILE_FILE)
    (old / MANIFEST).write_text(json.dumps(manifest))
    version = attrs.evolve(asd.version, path=old, digest=manifest_digest(old))
    assert profile.read_calibration(version) is None

    report = watch(asd, version=version)
    assert report.metrics == {"rows": 0.0}
    assert len(report.alerts) == 1
    assert report.alerts[0].startswith("no calibration: asd:1 has no score calibration in its bundle")
    # a bundle from before profiles: the same
    del manifest["files"][profile.PROFILE_FILE]
    (old / MANIFEST).write_text(json.dumps(manifest))
    older = attrs.evolve(asd.version, path=old, digest=manifest_digest(old))
    assert watch(asd, version=older).alerts == report.alerts


@pytest.mark.parametrize(("override", "key"), [
    ("monitor.estimate-monitor.max_f1_drop=0", "max_f1_drop"),
    ("monitor.estimate-monitor.max_f1_drop=1.5", "max_f1_drop"),
    ("monitor.estimate-monitor.min_rows=0", "min_rows"),
    ("monitor.estimate-monitor.min_expected_positives=-1", "min_expected_positives"),
    ("monitor.estimate-monitor.max_f1_dorp=0.2", "max_f1_dorp"),
])
def test_a_bad_option_is_a_config_error_naming_it(tmp_path, override, key):
    from opsloop import config as config_mod
    from opsloop.session import Session

    cfg = config_mod.read(workdir=tmp_path, overrides=['monitor.plugins=["estimate-monitor"]', override])
    with pytest.raises(ConfigError) as info:
        Session.open(cfg)
    assert (info.value.section, info.value.key) == ("monitor.estimate-monitor", key)
