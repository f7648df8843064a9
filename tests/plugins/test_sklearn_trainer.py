"""The `sklearn` and `isolation-forest` trainers and the skops flavor, on the embedded ASD data."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import skops.io
from sklearn.metrics import average_precision_score, roc_auc_score

import opsloop.config
from opsloop import Dataset, RunContext, TrainedModel, datasets
from opsloop.bundle import ModelFiles, predictions_frame, read_bundle, write_bundle
from opsloop.config import structure
from opsloop.errors import BundleError, ConfigError, DataError, PluginCallError
from opsloop.manager import PluginManager

SERVERS = ["omi-1", "omi-9", "omi-10"]
CUT = np.datetime64("2024-01-08")


@pytest.fixture(scope="module")
def frame():
    asd = datasets.load("asd")
    return asd[asd["entity"].isin(SERVERS)].reset_index(drop=True)


@pytest.fixture
def dataset(frame):
    return Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="asd-3")


@pytest.fixture(scope="module")
def pm():
    manager = PluginManager()
    manager.load("sklearn")
    manager.load("isolation-forest")
    return manager


@pytest.fixture
def run(tmp_path):
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", seed=42,
                      config=opsloop.config.read(workdir=tmp_path))


def options(pm, plugin, **table):
    return structure(table, pm.options_class(plugin), section=f"train.{plugin}", source=None)


def train(pm, plugin, dataset, run, **table) -> TrainedModel:
    return pm.call(plugin, "train", dataset=dataset, options=options(pm, plugin, **table), run=run)


def forest(pm, dataset, run) -> TrainedModel:
    return train(pm, "sklearn", dataset, run, params={"n_estimators": 30, "min_samples_leaf": 5})


def split(dataset):
    early = dataset.derive(dataset.frame[dataset.frame["timestamp"] < CUT].reset_index(drop=True))
    return early, dataset.frame[dataset.frame["timestamp"] >= CUT]


# ---------------------------------------------------------------------------
# sklearn trainer
# ---------------------------------------------------------------------------


def test_random_forest_learns_and_is_seeded(pm, dataset, run):
    early, late = split(dataset)
    model = forest(pm, early, run)
    assert type(model.estimator).__name__ == "RandomForestClassifier" and model.flavor == "sklearn"
    assert model.estimator.random_state == 42 and model.params["random_state"] == 42
    assert model.params["estimator"] == "sklearn.ensemble.RandomForestClassifier"
    scores = predictions_frame(model.estimator, model.task, late[list(model.features)])["score"]
    assert average_precision_score(late["label"], scores) > 1.5 * late["label"].mean()
    again = forest(pm, early, run)
    assert np.array_equal(again.estimator.predict_proba(late[list(model.features)]),
                          model.estimator.predict_proba(late[list(model.features)]))


def test_skops_round_trip_predicts_the_same(pm, dataset, run, tmp_path):
    model = forest(pm, dataset, run)
    files = ModelFiles(pm)
    assert pm.pm.hook.save_model(model=model, path=tmp_path, models=files) == ["model.skops", "sklearn.json"]
    assert pm.pm.hook.load_model(flavor="xgboost", path=tmp_path, manifest={}, models=files) is None
    loaded = pm.pm.hook.load_model(flavor="sklearn", path=tmp_path, manifest={"task": "classification"},
                                   models=files)
    assert np.array_equal(loaded.predict_proba(dataset.X), model.estimator.predict_proba(dataset.X))


def test_regression_with_any_estimator(pm, dataset, run):
    target = dataset.derive(dataset.frame.drop(columns=["label"]), target="m12")
    early, late = split(target)
    model = train(pm, "sklearn", early, run, estimator="sklearn.linear_model.Ridge", task="regression",
                  params={"alpha": 0.5})
    assert model.estimator.alpha == 0.5 and "m12" not in model.features
    assert model.estimator.score(late[list(model.features)], late["m12"]) > 0.8


FOREIGN = """
    import pathlib

    HERE = pathlib.Path(__file__).parent
    with open(HERE / "imported.log", "a") as log:
        log.write("imported\\n")


    class Knob:
        \"\"\"An object of a class scikit-learn has never heard of.\"\"\"

        def __init__(self):
            self.value = 1.0


    def leak(X):
        (HERE / "called.log").write_text("called")
        return X
"""


@pytest.fixture
def foreign(tmp_path, monkeypatch):
    """A module outside scikit-learn, imported once (to build the object) and then forgotten."""
    (tmp_path / "foreign_thing.py").write_text(textwrap.dedent(FOREIGN))
    monkeypatch.syspath_prepend(str(tmp_path))
    import foreign_thing

    yield foreign_thing
    sys.modules.pop("foreign_thing", None)


def _carriers(foreign, X):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    return {
        "foreign_thing.leak": FunctionTransformer(func=foreign.leak).fit(X),
        "foreign_thing.Knob": LogisticRegression(C=foreign.Knob()),
    }


@pytest.mark.parametrize("carried", ["foreign_thing.leak", "foreign_thing.Knob"])
def test_a_bundle_carrying_a_foreign_object_is_refused(pm, dataset, foreign, tmp_path, carried, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    # What an attacker (or a careless colleague) writes: a valid skops file with a foreign object.
    skops.io.dump(_carriers(foreign, dataset.X.to_numpy()[:50])[carried], bundle / "model.skops")
    sys.modules.pop("foreign_thing")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, so only the trust list stands in the way
    with pytest.raises(BundleError, match=f"refusing to load.*{carried}"):
        pm.pm.hook.load_model(flavor="sklearn", path=bundle, manifest={"task": "classification"}, models=ModelFiles(pm))
    assert "foreign_thing" not in sys.modules
    assert (tmp_path / "imported.log").read_text().count("imported") == 1  # only when the test built it
    assert not (tmp_path / "called.log").exists()


def test_saving_a_foreign_object_is_refused_and_an_operator_can_trust_a_module(pm, dataset, foreign, tmp_path,
                                                                            monkeypatch):
    from sklearn.preprocessing import FunctionTransformer

    carrier = FunctionTransformer(func=foreign.leak).fit(dataset.X.to_numpy()[:50])
    model = TrainedModel(estimator=carrier, flavor="sklearn", task="regression", features=("a",))
    with pytest.raises(BundleError, match="refusing to save.*foreign_thing.leak"):
        pm.pm.hook.save_model(model=model, path=tmp_path, models=ModelFiles(pm))
    assert not (tmp_path / "model.skops").exists()
    monkeypatch.setenv("OPSLOOP_TRUSTED_MODULES", "other, foreign_thing")
    pm.pm.hook.save_model(model=model, path=tmp_path, models=ModelFiles(pm))
    loaded = pm.pm.hook.load_model(flavor="sklearn", path=tmp_path, manifest={"task": "regression"},
                                   models=ModelFiles(pm))
    assert loaded.func.__module__ == "foreign_thing"


def test_functions_from_trusted_libraries_are_not_trusted(pm, dataset, tmp_path):
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(func=np.load), tmp_path / "model.skops")
    with pytest.raises(BundleError, match="numpy.load"):
        pm.pm.hook.load_model(flavor="sklearn", path=tmp_path, manifest={}, models=ModelFiles(pm))


def test_garbage_skops_file_is_a_clear_error(pm, tmp_path):
    (tmp_path / "model.skops").write_bytes(b"PK not really a zip file")
    with pytest.raises(BundleError, match="not a valid skops file"):
        pm.pm.hook.load_model(flavor="sklearn", path=tmp_path, manifest={}, models=ModelFiles(pm))


def test_estimator_path_is_checked(pm):
    with pytest.raises(ConfigError, match="not under sklearn"):
        options(pm, "sklearn", estimator="os.system")
    assert options(pm, "sklearn", estimator="xgboost.XGBClassifier", allow_modules=["xgboost"])
    with pytest.raises(ConfigError, match="import path"):
        options(pm, "sklearn", estimator="RandomForestClassifier")


def call_error(pm, dataset, run, **table):
    with pytest.raises(PluginCallError) as excinfo:
        train(pm, "sklearn", dataset, run, **table)
    return excinfo.value.cause


def test_mistakes_name_the_key(pm, dataset, run):
    typo = call_error(pm, dataset, run, estimator="sklearn.ensemble.RandomForestClassifer")
    assert isinstance(typo, ConfigError) and typo.key == "estimator"
    assert typo.suggestion == "sklearn.ensemble.RandomForestClassifier"
    unknown = call_error(pm, dataset, run, params={"n_trees": 3})
    assert isinstance(unknown, ConfigError) and unknown.key == "params" and "n_trees" in str(unknown)
    invalid = call_error(pm, dataset, run, params={"n_estimators": -3})
    assert isinstance(invalid, ConfigError) and invalid.key == "params"
    no_proba = call_error(pm, dataset, run, estimator="sklearn.linear_model.Ridge")
    assert isinstance(no_proba, ConfigError) and "predict_proba" in str(no_proba)


def test_missing_target_and_text_features_are_data_errors(pm, dataset, run):
    missing = call_error(pm, dataset.derive(dataset.frame.drop(columns=["label"])), run)
    assert isinstance(missing, DataError) and "target" in str(missing)
    texts = dataset.derive(dataset.frame.assign(host=dataset.frame["entity"].astype(object)))
    text = call_error(pm, texts, run)
    assert isinstance(text, DataError) and "host" in str(text)


# ---------------------------------------------------------------------------
# isolation-forest (and outlier detectors through the sklearn trainer)
# ---------------------------------------------------------------------------


def test_isolation_forest_says_1_for_anomalies_and_ranks_them(pm, dataset, run):
    early, late = split(dataset)
    model = train(pm, "isolation-forest", early, run, contamination=0.1)
    assert model.task == "anomaly" and model.flavor == "sklearn" and "label" not in model.features
    on_train = model.estimator.predict(early.X)
    assert set(np.unique(on_train)) == {0, 1}
    assert on_train.mean() == pytest.approx(0.1, abs=0.01)  # contamination sets the threshold
    predictions = predictions_frame(model.estimator, "anomaly", late[list(model.features)])
    inner = model.estimator.estimator
    assert np.array_equal(predictions["score"], -inner.score_samples(late[list(model.features)]))
    assert np.array_equal(predictions["prediction"], (inner.predict(late[list(model.features)]) == -1).astype(int))
    # Trained without labels, it still ranks the labelled anomalies of a later week above chance.
    assert roc_auc_score(late["label"], predictions["score"]) > 0.6


def test_isolation_forest_bundle_stores_the_plain_forest(pm, dataset, run, tmp_path):
    model = train(pm, "isolation-forest", dataset, run, n_estimators=50, max_samples=512)
    write_bundle(tmp_path / "b", model=model, trainer="isolation-forest", raw=dataset, steps=[], metrics={},
                 lineage={}, plugins=pm)
    assert skops.io.get_untrusted_types(file=tmp_path / "b" / "model.skops") == ["sklearn.tree._tree.Tree"]
    loaded = read_bundle(tmp_path / "b", pm)
    assert type(loaded.estimator).__name__ == "AnomalyLabels"
    expected = predictions_frame(model.estimator, "anomaly", dataset.X)
    assert loaded.predict(dataset.frame.drop(columns=["label"])).equals(expected)


# scikit-learn warns that the forest, fitted on a frame, scores a plain matrix: the fast path's input.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
@pytest.mark.parametrize("table", [{}, {"max_samples": 1000, "n_estimators": 40}], ids=["defaults", "deeper"])
def test_isolation_forest_fast_path_gives_scikit_learns_scores_bit_for_bit(pm, dataset, run, table):
    from sklearn.ensemble import IsolationForest

    from opsloop.plugins._skops_flavor import AnomalyLabels, isolation_forest_predict

    early, late = split(dataset)
    x = late[list(early.feature_columns)].to_numpy(np.float32, copy=True)
    x[::7, 3] = np.nan  # missing values go where each node sends them
    x[::11, 0] = np.nan
    forests = [train(pm, "isolation-forest", early, run, **table).estimator.estimator,
               # a forest whose trees see a subset of the columns each (the columns are mapped back)
               IsolationForest(max_features=0.5, random_state=0).fit(early.X.to_numpy(np.float32))]
    for forest in forests:
        fast = isolation_forest_predict(forest)
        labels, score = fast(x)
        assert np.array_equal(score, -forest.score_samples(x))
        assert np.array_equal(labels, AnomalyLabels(forest).predict(x)) and 0 < labels.sum() < len(x)
        one_by_one = np.concatenate([fast(x[i:i + 1])[1] for i in range(0, len(x), 97)])
        assert np.array_equal(one_by_one, score[::97])


# scikit-learn's own LocalOutlierFactor.fit(novelty=True) warns about its internal call.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_any_outlier_detector_through_the_sklearn_trainer(pm, dataset, run):
    model = train(pm, "sklearn", dataset.derive(dataset.frame.drop(columns=["label"]), target=None), run,
                  estimator="sklearn.neighbors.LocalOutlierFactor", task="anomaly",
                  params={"novelty": True, "n_neighbors": 10, "contamination": 0.05})
    assert set(np.unique(model.estimator.predict(dataset.X))) == {0, 1}
    stuck = call_error(pm, dataset, run, estimator="sklearn.neighbors.LocalOutlierFactor", task="anomaly")
    assert isinstance(stuck, ConfigError) and "novelty" in str(stuck)


def test_isolation_forest_options_are_checked(pm):
    with pytest.raises(ConfigError, match="contamination"):
        options(pm, "isolation-forest", contamination=0.9)
    with pytest.raises(ConfigError, match="max_samples"):
        options(pm, "isolation-forest", max_samples=0)
    assert options(pm, "isolation-forest", contamination=0.02, max_samples=0.5).max_samples == 0.5
