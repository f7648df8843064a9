"""The reference profile: written by register into every bundle, read back as registered, on real ASD rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opsloop import BundleError, profile
from opsloop.bundle import MANIFEST, read_bundle, read_manifest, sha256_file
from opsloop.testing import to_toml

METRICS = [f"m{j:02d}" for j in range(1, 20)]


def build_version(workdir: Path, config: dict):
    """Preprocess, train, validate and register through the real runner and store, as `opsloop run` does."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    cfg = config_mod.read(workdir=workdir)
    runner = Runner(Session.open(cfg))
    try:
        train, _ = data_mod.periods(data_mod.load(cfg), cfg)
        version = runner.build(train).version
        model = runner.load(version)
    finally:
        runner.close()
    return version, model, train


#: As tests/conftest.py's SMALL (a quick XGBoost on ASD's first week), on three servers: 6,480 rows.
SMALL = {
    "project": {"name": "asd-anomaly"},
    "data": {"source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
             "train": "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp < '2024-01-08 12:00'"},
    "train": {"xgboost": {"n_estimators": 60}},
    "validate": {"kfold": {"folds": 3}},
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    return build_version(tmp_path_factory.mktemp("profile"), SMALL)


def test_register_writes_a_profile_of_the_training_rows(registered):
    version, model, train = registered
    frame = train.frame

    prof = profile.read_profile(version)

    assert prof is not None and prof.rows == len(frame) == 3 * 2160
    assert (prof.target, prof.time, prof.series) == ("label", "timestamp", "entity")
    assert list(prof.features) == METRICS and prof.skipped == ()
    for column in ("m01", "m07", "m19"):
        values = frame[column].to_numpy(float)
        feature = prof.features[column]
        assert (feature.count, feature.missing, feature.null_share) == (len(values), 0, 0.0)
        assert (feature.min, feature.max) == (pytest.approx(values.min(), rel=1e-8), pytest.approx(values.max(), rel=1e-8))
        assert len(feature.quantiles) == profile.QUANTILES + 1
        want = np.quantile(values, np.linspace(0, 1, profile.QUANTILES + 1))
        # numpy's quantiles, as float32 numbers for a float32 column (a tied value is exactly a row's value)
        np.testing.assert_array_equal(feature.quantiles, want.astype(np.float32).astype(float))
        most_common = pd.Series(values).mode()[0]  # held by many rows: exactly one of the quantiles
        assert most_common in feature.quantiles
    # per series: both training servers, with their own quantiles
    assert prof.series_total == 3 and set(prof.series_profiles) == {"omi-1", "omi-9", "omi-10"}
    omi9 = frame.loc[frame["entity"] == "omi-9", "m07"].to_numpy(float)
    assert prof.series_profiles["omi-9"].rows == len(omi9)
    np.testing.assert_array_equal(prof.series_profiles["omi-9"].features["m07"].quantiles,
                                  np.quantile(omi9, np.linspace(0, 1, profile.SERIES_QUANTILES + 1))
                                  .astype(np.float32).astype(float))
    # the model's own scores on its training rows, as serving computes them
    predictions = model.predict(frame)
    assert prof.outputs is not None and prof.outputs.column == "score" and prof.outputs_note == ""
    assert prof.outputs.alert_rate == pytest.approx(float((predictions["prediction"] == 1).mean()))
    np.testing.assert_allclose(prof.outputs.distribution.quantiles,
                               np.quantile(predictions["score"], np.linspace(0, 1, profile.QUANTILES + 1)),
                               rtol=1e-7, atol=1e-9)


def test_profile_files_are_bundle_files_checked_like_the_others(registered):
    version, _, _ = registered
    manifest = read_manifest(version.path, digest=version.digest)
    for name in (profile.PROFILE_FILE, profile.SAMPLE_FILE):
        assert manifest["files"][name] == sha256_file(version.path / name)
    assert not any(p.suffix in (".pkl", ".pickle") for p in version.path.iterdir())
    json.loads((version.path / profile.PROFILE_FILE).read_text())  # plain JSON


def test_reference_sample_is_training_rows_stratified_by_server(registered):
    version, model, train = registered

    sample = profile.reference(version)

    assert sample is not None and len(sample) == profile.SAMPLE_ROWS == profile.read_profile(model).sample_rows
    assert (sample.target, sample.time, sample.series) == (train.target, train.time, train.series)
    assert list(sample.frame.columns) == list(train.frame.columns)
    assert sample.frame.dtypes.astype(str).tolist() == train.frame.dtypes.astype(str).tolist()
    assert sample.frame["entity"].value_counts().to_dict() == {"omi-1": 1667, "omi-10": 1667, "omi-9": 1666}
    # real training rows, each once, in training order
    keys = ["entity", "timestamp"]
    joined = sample.frame.merge(train.frame, on=keys, suffixes=("", "_train"), validate="one_to_one")
    assert len(joined) == len(sample) and (joined["m05"] == joined["m05_train"]).all()
    assert sample.frame.groupby("entity")["timestamp"].is_monotonic_increasing.all()
    # seeded: the same rows from the same data
    again = train.frame.iloc[profile.sample_positions(len(train.frame), train.frame["entity"], profile.SAMPLE_ROWS,
                                                      profile.SAMPLE_SEED)].reset_index(drop=True)
    pd.testing.assert_frame_equal(sample.frame, again)


def test_a_changed_profile_is_refused(registered, tmp_path):
    version, _, _ = registered
    copy = tmp_path / "bundle"
    shutil.copytree(version.path, copy)
    copy.chmod(0o755)
    path = copy / profile.PROFILE_FILE
    path.chmod(0o644)
    doc = json.loads(path.read_text())
    doc["features"]["m01"]["max"] = 99.0
    path.write_text(json.dumps(doc))

    with pytest.raises(BundleError, match="sha256 mismatch"):
        profile.read_profile(copy)


def test_a_bundle_without_a_profile_reads_as_none_and_still_loads(registered, tmp_path, pm_for):
    """Bundles registered before profiles existed: no profile, no sample, the model loads as before."""
    version, _, train = registered
    old = tmp_path / "old"
    shutil.copytree(version.path, old)
    old.chmod(0o755)
    manifest = json.loads((old / MANIFEST).read_text())
    for name in (profile.PROFILE_FILE, profile.SAMPLE_FILE):
        del manifest["files"][name]
        (old / name).unlink()
    (old / MANIFEST).chmod(0o644)
    (old / MANIFEST).write_text(json.dumps(manifest))

    assert profile.read_profile(old) is None and profile.reference(old) is None
    assert len(read_bundle(old, pm_for(manifest["flavor_plugin"])).predict(train.frame.head(20))) == 20


@pytest.fixture
def pm_for():
    from opsloop.manager import PluginManager

    def make(*names: str) -> PluginManager:
        plugins = PluginManager()
        for name in names:
            plugins.load(name)
        return plugins

    return make


def test_data_without_series_and_with_non_numeric_columns_registers(tmp_path):
    """A CSV-like table with a category and a boolean column and no series: profiled where numeric."""
    from opsloop import datasets

    asd = datasets.load("asd")
    frame = asd[asd["entity"] == "omi-9"].drop(columns=["entity"]).head(3000).reset_index(drop=True)
    frame["rack"] = pd.Categorical(np.where(frame.index % 3 == 0, "a", "b"))
    frame["maintenance"] = frame.index % 7 == 0
    frame["restarts"] = pd.array(np.where(frame.index % 5 == 0, None, frame.index % 3), dtype="Int64")
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    config = {"project": {"name": "no-series"},
              "data": {"source": str(tmp_path / "rows.parquet"), "target": "label", "time": "timestamp"},
              "preprocess": {"plugins": ["impute"]},
              "train": {"xgboost": {"n_estimators": 20}}, "validate": {"kfold": {"folds": 2}}}

    version, _, train = build_version(tmp_path / "work", config)

    prof = profile.read_profile(version)
    assert prof.series is None and prof.series_total == 0 and prof.series_profiles == {}
    assert list(prof.features) == [*METRICS, "restarts"] and set(prof.skipped) == {"rack", "maintenance"}
    missing = int(train.frame["restarts"].isna().sum())  # <NA> counts as missing
    assert missing > 0 and prof.features["restarts"].missing == missing
    assert prof.features["restarts"].count == len(train.frame) - missing
    sample = profile.reference(version)
    assert len(sample) == min(len(train.frame), profile.SAMPLE_ROWS)
    assert sample.frame["rack"].dtype == "category" and sample.frame["maintenance"].dtype == bool
    # drift-monitor reads it: the nullable column is compared (its <NA> left out), text and flags are not
    from opsloop.plugins import drift_monitor

    report = drift_monitor.monitor(version=version, current=train, reference=None, options=drift_monitor.Options())
    assert report.metrics["ks[restarts]"] <= 2 / profile.QUANTILES + 2 / len(train.frame)
    assert not any(k in report.metrics for k in ("ks[rack]", "ks[maintenance]")) and report.alerts == ()
