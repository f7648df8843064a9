"""The trainer conformance suite: fit, save, load without code, score the same, serve, run a whole lifecycle.

    class TestMyTrainer(TrainerSuite, plugin="my-trainer", options={"n_estimators": 20}): pass

The plugin is the selected trainer (`[train] plugins = ["my-trainer"]`) of the small real set's config
(`opsloop.testing.data.small_config()`: schema-check and impute before it, 3 time-ordered folds, batch
scoring, quality-monitor); `options` is its `[train.my-trainer]` table, and `config` merges any other tables
(an ensemble's members' own tables, say).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from opsloop.testing.conformance._base import MODEL, Bench, NoUnpickling, Suite, check_serving, one_line, pickled_files

#: Tasks a TrainedModel may declare (opsloop.types.TrainedModel.task).
TASKS = ("classification", "regression", "anomaly")
#: Relative tolerance for "the same scores" across a save and load, and through the server.
RTOL = 1e-9


class TrainerSuite(Suite):
    """A trainer plugin (`train`, with its flavor's `save_model` and `load_model`).

    `class TestMine(TrainerSuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[train.mine]`
    table), `config` (other tables merged into the small config), `register` (an in-process plugin object).
    """

    section: ClassVar[str] = "train"

    # -- fixtures --------------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def trainer_bench(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Bench:
        """A project whose config selects the trainer (with its options) on the small set."""
        train = cls.stage()
        return Bench.create(tmp_path_factory.mktemp("trainer"), cls.table(train=train))

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, trainer_bench: Bench) -> dict[str, Any]:
        """The trainer fitted on the preprocessed training period, written to a bundle with opsloop's writer."""
        from opsloop.bundle import write_bundle

        runner = trainer_bench.runner()
        try:
            train, later = trainer_bench.periods(runner)
            features, steps, _ = runner.preprocess(train)
            model = runner.fit_trainer(cls.plugin, features)
            bundle = trainer_bench.path / "bundle"
            write_bundle(bundle, model=model, trainer=cls.plugin, raw=train, steps=steps, metrics={},
                         lineage={}, plugins=runner.plugins)
        finally:
            runner.close()
        return {"model": model, "features": features, "train": train, "later": later, "bundle": bundle}

    @pytest.fixture(scope="class")
    @classmethod
    def lifecycle(cls, trainer_bench: Bench) -> dict[str, Any]:
        """`opsloop run --json` in the project: the whole lifecycle with this trainer."""
        return trainer_bench.invoke("run").assert_ok().json

    # -- checks ----------------------------------------------------------------------------------------------

    def test_fit_returns_a_trained_model_with_flavor_task_and_params(self, fitted: dict[str, Any]) -> None:
        """`train` returns an opsloop.types.TrainedModel: a flavor name, a task opsloop knows, the features it
        was fitted on (columns of the dataset it got), and its hyper-parameters in `params` (JSON-able, not
        empty: they are what `opsloop models show` and the lineage record)."""
        from opsloop.types import TrainedModel

        model = fitted["model"]
        assert isinstance(model, TrainedModel), f"train returned {type(model).__name__}, not TrainedModel"
        assert isinstance(model.flavor, str) and model.flavor, "TrainedModel.flavor is empty"
        assert model.task in TASKS, f"TrainedModel.task {model.task!r} is not one of {TASKS}"
        assert model.estimator is not None, "TrainedModel.estimator is None"
        columns = set(fitted["features"].frame.columns)
        assert model.features and set(model.features) <= columns, (
            f"TrainedModel.features {model.features!r} are not columns of the training set")
        assert dict(model.params), ("TrainedModel.params is empty: record the hyper-parameters the model was "
                                    "fitted with (TrainedModel(params=...))")
        json.dumps(dict(model.params))  # raises, naming the value, when a parameter is not JSON-able

    def test_estimator_scores_rows_as_scikit_learn_does(self, fitted: dict[str, Any]) -> None:
        """The estimator has scikit-learn's `predict` (and `predict_proba` for a classifier): one prediction
        per row, finite scores."""
        import numpy as np

        from opsloop.bundle import predictions_frame

        model, features = fitted["model"], fitted["features"]
        rows = features.frame[list(model.features)].head(500)
        predictions = predictions_frame(model.estimator, model.task, rows)
        assert len(predictions) == len(rows), f"{len(predictions)} predictions for {len(rows)} rows"
        if "score" in predictions:
            assert np.isfinite(predictions["score"].to_numpy(dtype=float)).all(), "scores are not all finite"

    def test_bundle_holds_no_pickle_and_loads_without_unpickling(self, fitted: dict[str, Any]) -> None:
        """`save_model` writes files that are not pickles, and `load_model` (reached through the hook, on a
        fresh plugin manager) loads them with no unpickling at all: loading a model must not run code."""
        from opsloop.bundle import read_bundle
        from opsloop.manager import PluginManager

        bundle = fitted["bundle"]
        assert not pickled_files(bundle), f"the bundle holds pickled files: {pickled_files(bundle)}"
        with NoUnpickling():
            loaded = read_bundle(bundle, PluginManager(), ref="conformance")
        assert loaded.manifest["flavor"] == fitted["model"].flavor
        assert loaded.estimator is not None

    def test_tampered_bundle_fails_cleanly(self, fitted: dict[str, Any], tmp_path: Path) -> None:
        """A bundle whose estimator file changed is refused with a one-line BundleError naming the file; and
        when the change is written into the manifest too (checksums pass), the flavor's `load_model` fails
        on the damaged file with a one-line error instead of loading something else."""
        import hashlib

        from opsloop.bundle import MANIFEST, read_bundle
        from opsloop.errors import BundleError
        from opsloop.manager import PluginManager

        copy = tmp_path / "bundle"
        shutil.copytree(fitted["bundle"], copy)
        manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
        written = [name for name in manifest["files"] if not name.startswith("profile")]
        target = max(written, key=lambda name: (copy / name).stat().st_size)
        data = (copy / target).read_bytes()
        (copy / target).write_bytes(data[: len(data) // 2])
        with pytest.raises(BundleError) as caught:
            read_bundle(copy, PluginManager(), ref="conformance")
        assert target in one_line(caught.value), f"the error does not name the file {target}: {caught.value}"

        manifest["files"][target] = "sha256:" + hashlib.sha256((copy / target).read_bytes()).hexdigest()
        (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        with NoUnpickling(), pytest.raises(BundleError) as caught:
            read_bundle(copy, PluginManager(), ref="conformance")
        one_line(caught.value)

    def test_scores_the_same_rows_identically_after_the_round_trip(self, fitted: dict[str, Any]) -> None:
        """The estimator loaded back from the bundle scores the later period's rows as the fitted one did
        (scores to 1e-9 relative, predictions equal), and `LoadedModel.predict` scores raw rows with the
        bundle's preprocessing replayed."""
        import numpy as np

        from opsloop.bundle import predictions_frame, read_bundle
        from opsloop.manager import PluginManager

        model, later = fitted["model"], fitted["later"]
        with NoUnpickling():
            loaded = read_bundle(fitted["bundle"], PluginManager(), ref="conformance")
        features = loaded.transform(later.frame).frame[list(model.features)]
        before = predictions_frame(model.estimator, model.task, features)
        after = predictions_frame(loaded.estimator, loaded.task, features)
        assert list(before.columns) == list(after.columns)
        assert np.array_equal(before["prediction"].to_numpy(), after["prediction"].to_numpy()), (
            "predictions changed across the save and load")
        if "score" in before:
            np.testing.assert_allclose(after["score"].to_numpy(dtype=float), before["score"].to_numpy(dtype=float),
                                       rtol=RTOL, atol=0, err_msg="scores changed across the save and load")
        scored = loaded.predict(later.frame)
        assert len(scored) == len(later.frame)

    def test_a_whole_run_registers_a_version(self, lifecycle: dict[str, Any]) -> None:
        """`opsloop run` with this trainer preprocesses, trains, validates (3 time-ordered folds), registers
        version 1 with its validation metrics, puts production on it, scores and monitors the later period."""
        assert [v["ref"] for v in lifecycle["versions"]] == [f"{MODEL}:1"], lifecycle["versions"]
        version = lifecycle["versions"][0]
        assert "production" in version["aliases"]
        assert version["metrics"], "the registered version has no validation metrics"
        assert lifecycle["monitor"] and lifecycle["monitor"][0]["rows"] > 0

    def test_serves_the_scores_it_predicts(self, trainer_bench: Bench, lifecycle: dict[str, Any],
                                           tmp_path: Path) -> None:
        """`opsloop serve` (a real server on 127.0.0.1) loads the registered version and answers POSTed rows
        with the predictions and scores `LoadedModel.predict` gives for the same rows (1e-9 relative)."""
        check_serving(trainer_bench, lifecycle["versions"][0], tmp_path / "log.db")
