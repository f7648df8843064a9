"""The validator conformance suite: per-fold figures, no fold scores a row it trained on, folds in time order,
the same report for the same seed, one-line errors on too little data, and a whole `opsloop run`.

    class TestMyValidator(ValidatorSuite, plugin="my-validator", options={"days": 1}): pass

The rows are the small real set's training period (`opsloop.testing.data.small_config()`: three ASD servers, six
days at five minutes), preprocessed as `opsloop run` preprocesses them; `fit` fits the small config's trainer
(XGBoost, 30 trees, one thread), as the runner's `fit` does. To see which rows each fold trained on and which it
scored, the suite adds one column, `conformance_row` (the row's position), that `fit` takes out before the
trainer sees the rows and that the fitted model reads back when it scores: a validator scores a fold's rows with
the columns the model names (`TrainedModel.features`), as serving does. `time_ordered=False` is for a validator
whose documentation says it shuffles rows even when they have a time (the time-order check is then skipped).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, frames_equal, is_figure, one_line

if TYPE_CHECKING:
    import numpy as np

    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.types import Dataset, TrainedModel, ValidationReport

#: The column that says which row is which (its position in the validated rows).
ROW = "conformance_row"


@attrs.define
class Fold:
    """One model `fit` returned: the rows it trained on, and those it was asked to score."""

    trained: np.ndarray
    scored: list[np.ndarray] = attrs.field(factory=list)
    unseen: int = 0  # calls that scored rows without the ROW column (not through the model's features)


class Recorder:
    """A fitted estimator that notes the rows it scores, then lets the real one score them (without ROW)."""

    def __init__(self, inner: Any, fold: Fold) -> None:
        self._inner = inner
        self._fold = fold

    def _rows(self, X: Any) -> Any:
        import numpy as np

        if hasattr(X, "columns") and ROW in X.columns:
            self._fold.scored.append(np.asarray(X[ROW], dtype=np.int64))
            return X.drop(columns=[ROW])
        self._fold.unseen += 1
        return X

    def predict(self, X: Any) -> Any:
        return self._inner.predict(self._rows(X))

    def predict_proba(self, X: Any) -> Any:
        return self._inner.predict_proba(self._rows(X))

    def decision_function(self, X: Any) -> Any:
        return self._inner.decision_function(self._rows(X))

    def score_samples(self, X: Any) -> Any:
        return self._inner.score_samples(self._rows(X))

    def __getattr__(self, name: str) -> Any:  # classes_, n_features_in_, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@attrs.define
class Trial:
    """The validator under test, the preprocessed training rows (with ROW), and the runner whose trainer fits."""

    name: str
    session: Session = attrs.field(repr=False)
    runner: Runner = attrs.field(repr=False)
    options: Any
    dataset: Dataset = attrs.field(repr=False)
    lifecycle: dict[str, Any] = attrs.field(repr=False)

    def validate(self, dataset: Dataset | None = None) -> tuple[ValidationReport, list[Fold]]:
        """The validator's report on `dataset` (default: the training rows), and what each fitted model saw."""
        from opsloop.types import ValidationReport

        folds: list[Fold] = []

        def fit(rows: Dataset) -> TrainedModel:
            import numpy as np

            frame = rows.frame
            assert ROW in frame.columns, (
                f"fit was given rows without the column {ROW!r}: give it a subset of the dataset's rows, "
                "with their columns (dataset.derive(dataset.frame.iloc[positions]))")
            fold = Fold(trained=np.asarray(frame[ROW], dtype=np.int64))
            folds.append(fold)
            model = self.runner.fit(rows.derive(frame.drop(columns=[ROW])))
            features = (*[f for f in model.features if f != ROW], ROW)
            return attrs.evolve(model, estimator=Recorder(model.estimator, fold), features=features)

        out = self.session.plugins.call(self.name, "validate", dataset=self.dataset if dataset is None else dataset,
                                        fit=fit, options=self.options, run=self.runner.run)
        assert isinstance(out, ValidationReport), f"validate returned {type(out).__name__}, not ValidationReport"
        return out, folds

    def refused(self, dataset: Dataset) -> str:
        """The one-line opsloop error the validator gives on `dataset` (it must not report on it)."""
        from opsloop.errors import PluginCallError

        with pytest.raises(PluginCallError) as caught:
            self.validate(dataset)
        return one_line(caught.value.cause)


def same_figures(left: Any, right: Any) -> bool:
    """Equal figure for figure, NaN (or JSON's null) equal to NaN."""
    if set(left) != set(right):
        return False
    a = {k: math.nan if v is None else float(v) for k, v in left.items()}
    b = {k: math.nan if v is None else float(v) for k, v in right.items()}
    return all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def seen(folds: list[Fold]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each model's training rows and scored rows, as sorted tuples (comparable whatever order fit was called in)."""
    import numpy as np

    return [(tuple(np.sort(f.trained).tolist()),
             tuple(np.unique(np.concatenate(f.scored)).tolist()) if f.scored else ()) for f in folds]


class ValidatorSuite(Suite):
    """A validator (`validate`): a validation scheme such as k-fold or holdout.

    `class TestMine(ValidatorSuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[validate.mine]`
    table), `time_ordered` (default True: on rows with a time, every fold trains on rows earlier than those it
    scores; False skips that check), `config`, `register`.
    """

    section: ClassVar[str] = "validate"
    keywords: ClassVar[dict[str, Any]] = {"time_ordered": True}
    time_ordered: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def trial(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Trial:
        """`opsloop run` with the validator selected; then the training period preprocessed as the run does it,
        with the ROW column added."""
        import numpy as np

        bench = Bench.create(tmp_path_factory.mktemp("validator"), cls.table(validate=cls.stage()))
        lifecycle = bench.invoke("run").assert_ok().json
        runner = bench.runner()
        try:
            train, _ = bench.periods(runner)
            features, _, _ = runner.preprocess(train)
        finally:
            runner.close()
        dataset = features.derive(features.frame.assign(**{ROW: np.arange(len(features.frame), dtype=np.int64)}))
        return Trial(name=cls.plugin, session=runner.session, runner=runner,
                     options=runner.session.options_for("validate", cls.plugin), dataset=dataset,
                     lifecycle=lifecycle)

    @pytest.fixture(scope="class")
    @classmethod
    def validated(cls, trial: Trial) -> tuple[ValidationReport, list[Fold]]:
        """The validator's report on the training rows, and what each model it fitted saw."""
        return trial.validate()

    def test_a_run_reports_its_validation(self, trial: Trial) -> None:
        """`opsloop run --json` with the validator selected registers version 1 with the validator's report
        (a method and per-fold figures) and its mean figures as the version's metrics."""
        assert trial.lifecycle["versions"] and trial.lifecycle["versions"][0]["ref"] == f"{MODEL}:1", (
            f"the run registered {[v['ref'] for v in trial.lifecycle['versions']]}")
        reports = trial.lifecycle["validation"]  # one per version the run registered, in order
        assert reports and reports[0]["method"] and reports[0]["folds"], f"the run's validation: {reports}"
        metrics = trial.lifecycle["versions"][0]["metrics"]
        assert metrics, "the registered version has no validation metrics"
        assert same_figures(metrics, reports[0]["mean"]), (metrics, reports[0]["mean"])

    def test_reports_figures_per_fold(self, validated: tuple[ValidationReport, list[Fold]]) -> None:
        """`validate` returns a ValidationReport: a method (what was done, as a phrase), at least one fold, each
        fold's figures named by non-empty strings and finite or NaN (never inf, never text), at least one
        finite; `mean` and `std` likewise, over figures the folds have."""
        report, _ = validated
        assert isinstance(report.method, str) and report.method.strip(), f"method = {report.method!r}"
        assert report.folds, "the report has no folds"
        for i, figures in enumerate(report.folds):
            assert figures, f"fold {i + 1} has no figures"
            for name, value in figures.items():
                assert isinstance(name, str) and name.strip(), f"a figure of fold {i + 1} has no name: {name!r}"
                assert is_figure(value), f"fold {i + 1}: {name!r} = {value!r} is not a finite number or NaN"
        assert any(math.isfinite(float(v)) for f in report.folds for v in f.values()), (
            f"every figure of every fold is NaN on labelled rows: {report.folds}")
        named = {k for f in report.folds for k in f}
        for where, figures in (("mean", report.mean), ("std", report.std)):
            for name, value in figures.items():
                assert is_figure(value), f"{where}[{name!r}] = {value!r} is not a finite number or NaN"
            assert set(figures) <= named, f"{where} has figures no fold has: {sorted(set(figures) - named)}"
        assert report.mean, "the report has no mean figures (they become the version's metrics)"

    def test_never_scores_a_row_it_trained_on(self, validated: tuple[ValidationReport, list[Fold]],
                                              trial: Trial) -> None:
        """Every model `fit` returned scores only rows it did not train on, through the columns it names
        (`TrainedModel.features`); at least one model scores rows; where a fold reports `rows_test`, it is the
        number of rows its model scored."""
        import numpy as np

        _, folds = validated
        assert folds, "validate never called fit"
        assert not any(f.unseen for f in folds), (
            f"a model was asked to score rows without the column {ROW!r}: score a fold's rows with the columns "
            "the model names (rows[list(model.features)]), as serving does")
        scoring = [f for f in folds if f.scored]
        assert scoring, "no model fitted by validate scored any row"
        n = len(trial.dataset.frame)
        for i, fold in enumerate(folds):
            scored = np.concatenate(fold.scored) if fold.scored else np.array([], dtype=np.int64)
            both = np.intersect1d(fold.trained, scored)
            assert not len(both), (f"model {i + 1} scored {len(both):,} row(s) it trained on (positions "
                                   f"{both[:5].tolist()} of {n:,})")
            assert len(fold.trained) and fold.trained.max() < n

    def test_rows_test_counts_the_scored_rows(self, validated: tuple[ValidationReport, list[Fold]]) -> None:
        """Where the folds report `rows_test` (as kfold and holdout do), they are the numbers of distinct rows the
        models scored, one fold per model that scored."""
        import numpy as np

        report, folds = validated
        counts = [f["rows_test"] for f in report.folds if "rows_test" in f]
        if not counts:
            pytest.skip("the folds report no rows_test")
        scoring = [len(np.unique(np.concatenate(f.scored))) for f in folds if f.scored]
        assert len(scoring) == len(counts), f"{len(counts)} folds report rows_test, {len(scoring)} models scored"
        # sorted: folds fitted in threads (kfold's n_jobs) call fit in any order
        assert sorted(int(c) for c in counts) == sorted(scoring), f"rows_test {counts}, rows scored {scoring}"

    def test_folds_train_on_the_past_of_what_they_score(self, validated: tuple[ValidationReport, list[Fold]],
                                                        trial: Trial) -> None:
        """On rows with a time column (telemetry), every model trained only on rows earlier than every row it
        scores: a shuffled split would let it learn from the future of the rows it is judged on."""
        if not type(self).time_ordered:
            pytest.skip("time_ordered=False: the validator's documentation says it does not keep time order")
        import numpy as np

        _, folds = validated
        times = trial.dataset.frame[trial.dataset.time].to_numpy()
        for i, fold in enumerate(f for f in folds if f.scored):
            scored = np.concatenate(fold.scored)
            last_trained, first_scored = times[fold.trained].max(), times[scored].min()
            assert last_trained < first_scored, (
                f"model {i + 1} trained on rows up to {last_trained} and scored rows from {first_scored}")

    def test_the_same_seed_gives_the_same_report(self, validated: tuple[ValidationReport, list[Fold]],
                                                 trial: Trial) -> None:
        """Validated again on the same rows with the same run (seed), the report is the same: method, figures
        of each fold (NaN equal to NaN), the rows each model trained on and scored."""
        first, first_folds = validated
        second, second_folds = trial.validate()
        assert first.method == second.method
        assert len(first.folds) == len(second.folds)
        for i, (a, b) in enumerate(zip(first.folds, second.folds)):
            assert same_figures(a, b), f"fold {i + 1}: {dict(a)} then {dict(b)}"
        assert sorted(seen(first_folds)) == sorted(seen(second_folds)), (
            "the same rows and seed gave other training or scored rows")

    def test_leaves_the_rows_unchanged(self, trial: Trial) -> None:
        """The frame given to `validate` is the same after it (a validator derives subsets, never edits)."""
        before = trial.dataset.frame.copy()
        trial.validate(trial.dataset)
        frames_equal(trial.dataset.frame, before, "the validated rows after validate")

    def test_too_little_data_is_a_one_line_error(self, trial: Trial) -> None:
        """One row (a single time step of one series) cannot be split into training and scored rows: a one-line
        opsloop error (DataError), not a report and not a bare exception."""
        one = trial.dataset.derive(trial.dataset.frame.iloc[:1])
        trial.refused(one)

    def test_rows_without_labels_are_a_one_line_error(self, trial: Trial) -> None:
        """Rows with no target column leave nothing to score against: a one-line opsloop error (DataError)
        naming the target or the labels."""
        frame = trial.dataset.frame.drop(columns=[trial.dataset.target])
        text = trial.refused(trial.dataset.derive(frame))
        assert any(word in text.lower() for word in ("label", "target", str(trial.dataset.target))), text


__all__ = ["ROW", "ValidatorSuite"]
