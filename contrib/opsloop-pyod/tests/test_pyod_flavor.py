"""The `pyod` flavor and scoring: saved and loaded without pickle, bit for bit; refused when tampered with;
one row's score independent of its batch; PyOD's own numbers."""

from __future__ import annotations

import json
import zipfile

import pytest

pytest.importorskip("pyod", reason="PyOD is not installed (pip install -e ./contrib/opsloop-pyod)")
pytest.importorskip("opsloop_pyod", reason="opsloop-pyod is not installed (pip install -e ./contrib/opsloop-pyod)")

import numpy as np  # noqa: E402

from opsloop import BundleError, Dataset  # noqa: E402
from opsloop_pyod import copod, ecod, hbos, iforest  # noqa: E402

TRAINERS = {"ecod": (ecod, {}), "copod": (copod, {}), "hbos": (hbos, {}), "hbos-auto": (hbos, {"n_bins": "auto"}),
            "iforest": (iforest, {"n_estimators": 40}),
            "iforest-subsets": (iforest, {"n_estimators": 20, "max_features": 0.5, "max_samples": 0.5})}


def fit(name, train, run_context):
    module, options = TRAINERS[name]
    return module.train(dataset=Dataset.from_frame(train, target="label"), options=module.Options(**options),
                        run=run_context)


@pytest.fixture(scope="module")
def models(asd_slices, run_context):
    """Each trainer fitted once on the training slice."""
    return {name: fit(name, asd_slices[0], run_context) for name in TRAINERS}


def saved(model, tmp_path, module, folder="bundle"):
    bundle = tmp_path / folder
    bundle.mkdir()
    files = module.save_model(model=model, path=bundle)
    assert files and all((bundle / f).is_file() for f in files)
    return bundle


@pytest.mark.parametrize("name", TRAINERS)
def test_saved_and_loaded_scores_bit_for_bit(name, models, asd_slices, tmp_path):
    train, test = asd_slices
    module = TRAINERS[name][0]
    model = models[name]
    assert model.task == "anomaly" and model.flavor == "pyod" and len(model.features) == 19
    bundle = saved(model, tmp_path, module)
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in bundle.iterdir())
    loaded = module.load_model(flavor="pyod", path=bundle, manifest={"task": "anomaly"})
    X = test.drop(columns="label")
    assert np.array_equal(loaded.score_samples(X), model.estimator.score_samples(X))
    assert np.array_equal(loaded.predict(X), model.estimator.predict(X))
    assert loaded.threshold == model.estimator.threshold
    # PyOD's rule for predict: about `contamination` of the training rows are flagged.
    assert 0.05 <= model.estimator.predict(train.drop(columns="label")).mean() <= 0.15


def test_labels_are_never_read(models, asd_slices, run_context):
    train, test = asd_slices
    flipped = train.assign(label=1 - train["label"])
    X = test.drop(columns="label")
    for name in TRAINERS:
        a, b = models[name], fit(name, flipped, run_context)
        assert np.array_equal(a.estimator.score_samples(X), b.estimator.score_samples(X)), name


@pytest.mark.parametrize("name", TRAINERS)
def test_a_rows_score_does_not_depend_on_its_batch(name, models, asd_slices):
    test = asd_slices[1]
    detector = models[name].estimator
    X = test.drop(columns="label").to_numpy()[:120]
    together = detector.anomaly_scores(X)
    alone = np.concatenate([detector.anomaly_scores(row[None, :]) for row in X])
    assert np.array_equal(together, alone)
    # Next to extreme rows, or in another order, each row keeps its score.
    extreme = np.vstack([X * 10, X, -X])
    assert np.array_equal(detector.anomaly_scores(extreme)[len(X):2 * len(X)], together)
    order = np.random.default_rng(0).permutation(len(X))
    assert np.array_equal(detector.anomaly_scores(X[order]), together[order])


@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation:RuntimeWarning")
@pytest.mark.parametrize("name", ["ecod", "copod"])
def test_ecdf_scores_are_pyods_for_a_row_scored_alone(name, models, asd_slices):
    """PyOD appends the rows it scores to the training rows; for a single row that is exactly our ECDF
    with the row counted in, so the tail probabilities agree for every row (up to rounding), and so do the
    scores except where adding the row flips a feature's skewness sign (PyOD recomputes it from the batch,
    we keep the training rows'): an extreme row can do that, which is PyOD's batch dependence."""
    from scipy.stats import skew

    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.utils.stat_models import column_ecdf

    train, test = asd_slices
    X_train = train.drop(columns="label").to_numpy(dtype=np.float64)
    real = test.drop(columns="label").to_numpy(dtype=np.float64)
    # Real rows, and rows beyond the training range on either side (ASD is scaled to [0, 1]), and -0.0.
    rows = np.vstack([real[::40], -real[::300], 3 * real[::300], -np.zeros((1, real.shape[1]))])
    ours = models[name].estimator.anomaly_scores(rows)
    reference = {"ecod": ECOD, "copod": COPOD}[name]().fit(X_train)
    signs = np.sign(np.nan_to_num(skew(X_train, axis=0)))
    u_l, u_r = models[name].estimator.scorer.tails(rows)
    compared = 0
    for i, (row, score) in enumerate(zip(rows, ours)):
        both = np.vstack([X_train, row])
        np.testing.assert_allclose(u_l[i], -np.log(column_ecdf(both)[-1]), rtol=1e-12)
        np.testing.assert_allclose(u_r[i], -np.log(column_ecdf(-both)[-1]), rtol=1e-12)
        if np.array_equal(np.sign(np.nan_to_num(skew(both, axis=0))), signs):
            np.testing.assert_allclose(score, reference.decision_function(row[None, :])[0], rtol=1e-9)
            compared += 1
    assert compared >= 0.9 * len(real[::40])


@pytest.mark.parametrize("n_bins", [10, "auto"])
def test_hbos_scores_are_pyods(n_bins, models, asd_slices):
    from pyod.models.hbos import HBOS

    train, test = asd_slices
    X = test.drop(columns="label").to_numpy(dtype=np.float64)
    ours = models["hbos" if n_bins == 10 else "hbos-auto"].estimator.anomaly_scores(X)
    reference = HBOS(n_bins=n_bins).fit(train.drop(columns="label").to_numpy(dtype=np.float64))
    np.testing.assert_allclose(ours, reference.decision_function(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["iforest", "iforest-subsets"])
def test_iforest_scores_are_pyods_bit_for_bit(name, models, asd_slices, run_context):
    """The trees walked in NumPy give scikit-learn's (and so PyOD's) numbers exactly, also when each tree
    sees a subset of the rows and features."""
    from pyod.models.iforest import IForest

    train, test = asd_slices
    X = test.drop(columns="label").to_numpy(dtype=np.float64)
    ours = models[name].estimator.anomaly_scores(X)
    reference = IForest(**TRAINERS[name][1], random_state=run_context.seed).fit(train.drop(columns="label").to_numpy())
    assert np.array_equal(ours, reference.decision_function(X))


# --- tampered and damaged files -----------------------------------------------------------------------------

@pytest.fixture
def ecod_bundle(models, tmp_path):
    return saved(models["ecod"], tmp_path, ecod, "ecod")


@pytest.fixture
def forest_bundle(models, tmp_path):
    return saved(models["iforest"], tmp_path, iforest, "iforest")


def load(bundle):
    return ecod.load_model(flavor="pyod", path=bundle, manifest={"task": "anomaly"})


def test_a_forest_naming_an_untrusted_type_is_refused(forest_bundle):
    file = forest_bundle / "forest.skops"
    with zipfile.ZipFile(file) as z:
        members = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(members["schema.json"])
    schema["__module__"], schema["__class__"] = "os", "system"
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(file, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(BundleError, match=r"does not trust: .*os\.system"):
        load(forest_bundle)


def test_a_kind_that_is_not_ours_is_refused(ecod_bundle):
    meta = json.loads((ecod_bundle / "pyod.json").read_text())
    meta["kind"] = "builtins.eval"
    (ecod_bundle / "pyod.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"unknown detector kind 'builtins.eval'"):
        load(ecod_bundle)


def test_pickled_arrays_are_refused(ecod_bundle):
    with np.load(ecod_bundle / "pyod.npz") as npz:
        arrays = dict(npz)
    arrays["values"] = np.array([object(), 1.0], dtype=object)   # an object array is stored pickled
    np.savez(ecod_bundle / "pyod.npz", **arrays)
    with pytest.raises(BundleError, match=r"pyod.npz: not a valid NumPy archive: ValueError: .*allow_pickle"):
        load(ecod_bundle)


@pytest.mark.parametrize("file", ["pyod.json", "pyod.npz", "forest.skops"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_a_damaged_file_is_a_bundle_error(file, damage, ecod_bundle, forest_bundle):
    bundle = forest_bundle if file == "forest.skops" else ecod_bundle
    path = bundle / file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.unlink()
    with pytest.raises(BundleError, match=file.replace(".", r"\.")):
        load(bundle)


def test_arrays_that_do_not_fit_together_are_a_bundle_error(ecod_bundle):
    with np.load(ecod_bundle / "pyod.npz") as npz:
        arrays = dict(npz)
    arrays["counts"] = arrays["counts"][::-1].copy()
    np.savez(ecod_bundle / "pyod.npz", **arrays)
    with pytest.raises(BundleError, match="not sorted counts"):
        load(ecod_bundle)


def test_other_flavors_are_not_ours(ecod_bundle):
    assert ecod.load_model(flavor="sklearn", path=ecod_bundle, manifest={}) is None


@pytest.mark.parametrize("name", TRAINERS)
def test_a_missing_value_is_a_data_error_naming_row_and_feature(name, models, asd_slices, tmp_path):
    from opsloop import DataError

    test = asd_slices[1].drop(columns="label").iloc[:6].reset_index(drop=True)
    module, plugin = TRAINERS[name][0], f"pyod-{name.split('-')[0]}"
    gap = test.copy()
    gap.loc[4, "m11"] = np.nan
    # Loaded from its bundle with the manifest's feature names, as serving and batch scoring load it; on the
    # frame batch scoring hands it and on the bare matrix the server's fast path does.
    bundle = saved(models[name], tmp_path, module)
    loaded = module.load_model(flavor="pyod", path=bundle, manifest={"task": "anomaly", "features": list(test.columns)})
    for detector in (models[name].estimator, loaded):
        for X in (gap, gap.to_numpy(dtype=np.float32)):
            for method in (detector.anomaly_scores, detector.predict, detector.score_samples):
                with pytest.raises(DataError) as caught:
                    method(X)
                message = str(caught.value)
                assert message.startswith(f"{plugin}: row 4 of the 6 rows scored: feature 'm11' is missing (null or "
                                          "NaN); PyOD's detectors score complete rows only"), message
    more = gap.copy()
    more.loc[[0, 4], "m02"] = np.nan
    with pytest.raises(DataError, match=r"row 0 of the 6 rows scored: feature 'm02' is missing \(null or NaN; "
                                        r"3 values missing in 2 rows\)"):
        loaded.predict(more)
    # The complete rows still score as before.
    assert np.array_equal(loaded.anomaly_scores(test), models[name].estimator.anomaly_scores(test))


@pytest.mark.parametrize("name", TRAINERS)
def test_an_infinite_value_scores_as_the_most_extreme_value(name, models, asd_slices):
    """Scored, not refused: beyond every training value (and float32's range: `as_matrix` rounds to float32)."""
    detector = models[name].estimator
    X = asd_slices[1].drop(columns="label").to_numpy(dtype=np.float64)[:20]
    for j in (0, 7, 18):
        for sign in (1, -1):
            infinite, huge, beyond = X.copy(), X.copy(), X.copy()
            infinite[:, j], huge[:, j], beyond[:, j] = sign * np.inf, sign * 1e38, sign * 1e300
            scores = detector.anomaly_scores(infinite)
            assert np.isfinite(scores).all()
            assert np.array_equal(scores, detector.anomaly_scores(huge))
            assert np.array_equal(scores, detector.anomaly_scores(beyond))


def test_training_rows_must_be_complete_and_finite(asd_slices, run_context):
    from opsloop import DataError

    train = asd_slices[0].copy()
    train.loc[3, "m05"] = np.nan
    with pytest.raises(DataError, match=r"pyod-ecod: feature column\(s\) with missing values: m05; .*impute"):
        fit("ecod", train, run_context)
    train.loc[3, "m05"] = np.inf
    with pytest.raises(DataError, match="pyod-ecod: .*NaN or infinite"):
        fit("ecod", train, run_context)
