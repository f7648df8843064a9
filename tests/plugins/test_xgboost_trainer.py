"""The `xgboost` trainer and flavor, on the embedded ASD data (four servers with many anomalies)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, r2_score

import opsloop.config
from opsloop import Dataset, RunContext, TrainedModel, datasets
from opsloop.bundle import ModelFiles, predictions_frame, read_bundle, write_bundle
from opsloop.config import structure
from opsloop.errors import BundleError, ConfigError, DataError, PluginCallError
from opsloop.manager import PluginManager

SERVERS = ["omi-1", "omi-9", "omi-10", "omi-11"]
CUT = np.datetime64("2024-01-08")


@pytest.fixture(scope="module")
def frame():
    asd = datasets.load("asd")
    return asd[asd["entity"].isin(SERVERS)].reset_index(drop=True)


@pytest.fixture
def dataset(frame):
    return Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="asd-4")


@pytest.fixture(scope="module")
def pm():
    manager = PluginManager()
    manager.load("xgboost")
    return manager


@pytest.fixture
def run(tmp_path):
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=42,
                      config=opsloop.config.read(workdir=tmp_path))


def options(pm, **table):
    """Options structured by the config layer, as `opsloop.toml` would give them."""
    return structure(table, pm.options_class("xgboost"), section="train.xgboost", source=None)


def train(pm, dataset, run, **table) -> TrainedModel:
    return pm.call("xgboost", "train", dataset=dataset, options=options(pm, **table), run=run)


def booster_config(model: TrainedModel) -> dict:
    return json.loads(model.estimator.get_booster().save_config())


def part(dataset, mask, name):
    return dataset.derive(dataset.frame[mask].reset_index(drop=True), name=name)


def test_learns_anomalies_better_than_prevalence(pm, dataset, run):
    early = part(dataset, dataset.frame["timestamp"] < CUT, "first week")
    late = dataset.frame[dataset.frame["timestamp"] >= CUT]
    model = train(pm, early, run)
    assert model.flavor == "xgboost" and model.task == "classification"
    assert model.features == tuple(f"m{i:02d}" for i in range(1, 20))
    scores = predictions_frame(model.estimator, model.task, late[list(model.features)])["score"]
    prevalence = late["label"].mean()
    # Point-wise detection on ASD is hard (the data README: AP around 0.1-0.2), but a model must
    # rank the anomalies of a later week well above chance.
    assert average_precision_score(late["label"], scores) > 1.5 * prevalence


def test_same_seed_gives_the_same_model_byte_for_byte(pm, dataset, run, tmp_path):
    a, b = train(pm, dataset, run, n_estimators=40), train(pm, dataset, run, n_estimators=40)
    X = dataset.X
    assert np.array_equal(a.estimator.predict_proba(X), b.estimator.predict_proba(X))
    digests = []
    for name, model in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        files = pm.pm.hook.save_model(model=model, path=tmp_path / name, models=ModelFiles(pm))
        assert files == ["model.ubj", "xgboost.json"]
        digests.append(hashlib.sha256((tmp_path / name / "model.ubj").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert booster_config(a)["learner"]["generic_param"]["seed"] == "42"


def test_the_seed_reaches_random_choices(pm, dataset, run, tmp_path):
    sampled = {"n_estimators": 20, "early_stopping_rounds": 0, "params": {"subsample": 0.5}}
    other = RunContext(run_id="u", workdir=tmp_path, model_name="m", seed=7, config=run.config)
    a, b = train(pm, dataset, run, **sampled), train(pm, dataset, other, **sampled)
    assert not np.array_equal(a.estimator.predict_proba(dataset.X), b.estimator.predict_proba(dataset.X))


def test_params_pass_through_to_the_booster_and_win(pm, dataset, run):
    model = train(pm, dataset, run, n_estimators=5, max_depth=6,
                  params={"max_bin": 32, "min_split_loss": 0.5, "device": "cpu", "max_depth": 3})
    tree = booster_config(model)["learner"]["gradient_booster"]["tree_train_param"]
    assert tree["max_bin"] == "32" and float(tree["gamma"]) == 0.5 and tree["max_depth"] == "3"
    assert booster_config(model)["learner"]["generic_param"]["device"] == "cpu"
    assert model.params["max_bin"] == 32 and model.params["device"] == "cpu"


def test_early_stopping_keeps_the_best_iteration(pm, dataset, run):
    model = train(pm, dataset, run, n_estimators=400, learning_rate=0.5, early_stopping_rounds=5)
    best = model.params["best_iteration"]
    assert best < 399
    assert model.estimator.get_booster().num_boosted_rounds() == best + 1 + 5
    assert model.estimator.best_iteration == best
    # The last 10% of the time steps, every server together, were held out.
    steps = np.sort(dataset.frame["timestamp"].unique())
    held = dataset.frame["timestamp"] >= steps[round(len(steps) * 0.9)]
    assert model.params["rows_early_stopping"] == held.sum()
    assert model.params["rows_fit"] == len(dataset) - held.sum()


def test_no_early_stopping_fits_every_round_on_every_row(pm, dataset, run):
    model = train(pm, dataset, run, n_estimators=25, early_stopping_rounds=0)
    assert model.estimator.get_booster().num_boosted_rounds() == 25
    assert "best_iteration" not in model.params and model.params["rows_fit"] == len(dataset)


def test_a_hold_out_without_incidents_turns_early_stopping_off(pm, run, caplog):
    asd = datasets.load("asd")
    quiet = asd[asd["entity"] == "omi-2"].reset_index(drop=True)  # no anomaly in its last two thirds
    dataset = Dataset.from_frame(quiet, target="label", time="timestamp", series="entity", name="omi-2")
    with caplog.at_level("WARNING", logger="opsloop"):
        model = train(pm, dataset, run, n_estimators=30, early_stopping_rounds=5)
    assert model.estimator.get_booster().num_boosted_rounds() == 30
    assert model.params["rows_early_stopping"] == 0 and model.params["rows_fit"] == len(dataset)
    assert "best_iteration" not in model.params
    assert "hold one class only" in caplog.text


def test_without_time_the_early_stopping_split_is_stratified(pm, dataset, run):
    untimed = dataset.derive(dataset.frame.drop(columns=["timestamp"]), time=None)
    from opsloop.plugins.xgboost_trainer import holdout_mask

    y = untimed.frame["label"]
    held = holdout_mask(untimed, 0.1, 42, y)
    assert held.sum() == pytest.approx(0.1 * len(y), abs=1)
    assert y[held].mean() == pytest.approx(y.mean(), abs=0.002)
    assert train(pm, untimed, run, n_estimators=30).params["rows_early_stopping"] == held.sum()


def test_scale_pos_weight_auto_is_negatives_over_positives(pm, dataset, run):
    y = dataset.frame["label"]
    expected = (y == 0).sum() / (y == 1).sum()
    model = train(pm, dataset, run, n_estimators=5, early_stopping_rounds=0)
    assert model.params["scale_pos_weight"] == pytest.approx(expected)
    loss = booster_config(model)["learner"]["objective"]["reg_loss_param"]
    assert float(loss["scale_pos_weight"]) == pytest.approx(expected, rel=1e-6)
    fixed = train(pm, dataset, run, n_estimators=5, early_stopping_rounds=0, scale_pos_weight=3)
    assert fixed.params["scale_pos_weight"] == 3.0
    off = train(pm, dataset, run, n_estimators=5, early_stopping_rounds=0, scale_pos_weight="none")
    assert "scale_pos_weight" not in off.params


def test_round_trip_predicts_exactly_the_same(pm, dataset, run, tmp_path):
    model = train(pm, dataset, run, n_estimators=60)
    pm.pm.hook.save_model(model=model, path=tmp_path, models=ModelFiles(pm))
    assert json.loads((tmp_path / "xgboost.json").read_text())["best_iteration"] == model.params["best_iteration"]
    assert pm.pm.hook.load_model(flavor="sklearn", path=tmp_path, manifest={}, models=ModelFiles(pm)) is None
    loaded = pm.pm.hook.load_model(flavor="xgboost", path=tmp_path, manifest={"task": "classification"},
                                   models=ModelFiles(pm))
    assert type(loaded).__name__ == "XGBClassifier"
    assert loaded.best_iteration == model.estimator.best_iteration
    assert np.array_equal(loaded.predict_proba(dataset.X), model.estimator.predict_proba(dataset.X))
    assert list(loaded.classes_) == [0, 1]


def test_bundle_round_trip_through_the_core(pm, dataset, run, tmp_path):
    model = train(pm, dataset, run, n_estimators=30)
    write_bundle(tmp_path / "b", model=model, trainer="xgboost", raw=dataset, steps=[], metrics={},
                 lineage={}, plugins=pm)
    loaded = read_bundle(tmp_path / "b", pm)
    expected = predictions_frame(model.estimator, "classification", dataset.X)
    assert loaded.predict(dataset.frame.drop(columns=["label"])).equals(expected)


def test_garbage_model_file_is_a_clear_error(pm, dataset, run, tmp_path):
    pm.pm.hook.save_model(model=train(pm, dataset, run, n_estimators=5), path=tmp_path, models=ModelFiles(pm))
    (tmp_path / "model.ubj").write_bytes(b"this is not a model" * 20)
    with pytest.raises(BundleError, match="not a valid XGBoost model"):
        pm.pm.hook.load_model(flavor="xgboost", path=tmp_path, manifest={}, models=ModelFiles(pm))
    (tmp_path / "xgboost.json").unlink()
    with pytest.raises(BundleError, match="xgboost.json"):
        pm.pm.hook.load_model(flavor="xgboost", path=tmp_path, manifest={}, models=ModelFiles(pm))


def test_regression(pm, dataset, run):
    # m12 moves with the other metrics of its server: a later week's value is predictable from them.
    target = dataset.derive(dataset.frame.drop(columns=["label"]), target="m12")
    early = part(target, target.frame["timestamp"] < CUT, "first week")
    late = target.frame[target.frame["timestamp"] >= CUT]
    model = train(pm, early, run, task="regression", n_estimators=100)
    assert type(model.estimator).__name__ == "XGBRegressor" and "m12" not in model.features
    assert r2_score(late["m12"], model.estimator.predict(late[list(model.features)])) > 0.8


def cause(excinfo):
    assert isinstance(excinfo.value, PluginCallError) and excinfo.value.plugin == "xgboost"
    return excinfo.value.cause


def test_missing_target_is_a_data_error(pm, dataset, run):
    unlabelled = dataset.derive(dataset.frame.drop(columns=["label"]))
    with pytest.raises(PluginCallError) as excinfo:
        train(pm, unlabelled, run)
    assert isinstance(cause(excinfo), DataError) and "target" in str(cause(excinfo))


def test_text_features_are_named_and_categories_are_used(pm, dataset, run):
    texts = dataset.derive(dataset.frame.assign(host=dataset.frame["entity"].astype(object)))
    with pytest.raises(PluginCallError, match="host") as excinfo:
        train(pm, texts, run)
    assert isinstance(cause(excinfo), DataError)
    cats = dataset.derive(dataset.frame.assign(host=dataset.frame["entity"].astype("category")))
    model = train(pm, cats, run, n_estimators=5)
    assert "host" in model.features and model.estimator.enable_categorical


def test_class_labels_must_be_0_to_k(pm, dataset, run):
    shifted = dataset.derive(dataset.frame.assign(label=dataset.frame["label"] + 1))
    with pytest.raises(PluginCallError, match="0..k-1") as excinfo:
        train(pm, shifted, run)
    assert isinstance(cause(excinfo), DataError)


def test_options_are_checked_by_the_config_layer(pm):
    with pytest.raises(ConfigError) as excinfo:
        options(pm, n_estimator=10)
    assert excinfo.value.key == "n_estimator" and excinfo.value.suggestion == "n_estimators"
    with pytest.raises(ConfigError, match="scale_pos_weight"):
        options(pm, scale_pos_weight="often")
    with pytest.raises(ConfigError):
        options(pm, task="ranking")
    assert options(pm, params={"device": "cuda"}).params == {"device": "cuda"}
