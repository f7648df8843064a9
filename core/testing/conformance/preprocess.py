"""The preprocess-step conformance suite: fit then replay, a JSON state, no refit, no mutation, windows.

    class TestMyStep(PreprocessSuite, plugin="my-step", options={"window": 12}): pass

The step is fitted on the small real set's training period (`opsloop.testing.data`: 3 servers, 5-minute
metrics, labelled incidents) and replayed on it and on the later period, as a registered version replays it
when it scores. `before=["impute"]` fits those steps first (in order) when the step expects their output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import Bench, Suite, check_serving, frames_equal

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.session import Session
    from opsloop.types import Dataset, Preprocessed, RunContext


@attrs.define
class Step:
    """The step under test, with its checked options, and the rows it is fitted and replayed on."""

    name: str
    session: Session = attrs.field(repr=False)
    run: RunContext = attrs.field(repr=False)
    options: Any
    train: Dataset = attrs.field(repr=False)
    later: Dataset = attrs.field(repr=False)

    def fit(self, dataset: Dataset) -> Preprocessed:
        return self._call(dataset, None)

    def replay(self, dataset: Dataset, state: Any) -> Preprocessed:
        return self._call(dataset, dict(state))

    def _call(self, dataset: Dataset, state: dict[str, Any] | None) -> Preprocessed:
        from opsloop.types import Preprocessed

        out = self.session.plugins.call(self.name, "preprocess", dataset=dataset, state=state, options=self.options,
                                        run=self.run)
        assert isinstance(out, Preprocessed), f"preprocess returned {type(out).__name__}, not Preprocessed"
        return out


def through_json(state: Any) -> dict[str, Any]:
    """The state as a bundle stores and replays it."""
    return json.loads(json.dumps(dict(state), allow_nan=True))


class PreprocessSuite(Suite):
    """A preprocess step (`preprocess`, and `window_reach` when its output for a row reads the series' past).

    `class TestMine(PreprocessSuite, plugin="mine"): pass` runs it. Keywords: `options` (its
    `[preprocess.mine]` table), `before` (steps fitted first, in order), `config`, `register`.
    """

    section: ClassVar[str] = "preprocess"
    keywords: ClassVar[dict[str, Any]] = {"before": []}
    before: ClassVar[list[str]] = []

    @classmethod
    def steps_table(cls) -> dict[str, Any]:
        """`[preprocess]`: the `before` steps, then this one with its options."""
        return cls.stage(plugins=[*cls.before, cls.plugin])

    @pytest.fixture(scope="class")
    @classmethod
    def step(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Step:
        """The step's options checked as `opsloop run` checks them; the rows after the `before` steps."""
        from opsloop.runner import Runner

        bench = Bench.create(tmp_path_factory.mktemp("step"), cls.table(preprocess=cls.steps_table()))
        runner = Runner(bench.session())
        train, later = bench.periods(runner)
        plugins = runner.plugins
        for name in cls.before:
            options = runner.session.options_for("preprocess", name)
            fitted = plugins.call(name, "preprocess", dataset=train, state=None, options=options, run=runner.run)
            train = fitted.dataset
            later = plugins.call(name, "preprocess", dataset=later, state=through_json(fitted.state),
                                 options=options, run=runner.run).dataset
        return Step(name=cls.plugin, session=runner.session, run=runner.run,
                    options=runner.session.options_for("preprocess", cls.plugin), train=train, later=later)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, step: Step) -> Preprocessed:
        return step.fit(step.train)

    def test_fit_returns_rows_a_state_and_issues(self, step: Step, fitted: Preprocessed) -> None:
        """Fitting (`state=None`) returns an opsloop.types.Preprocessed: a Dataset with the time, series and
        target columns still named, a state mapping, and issues as sentences."""
        from opsloop.types import Dataset

        out = fitted.dataset
        assert isinstance(out, Dataset), f"Preprocessed.dataset is {type(out).__name__}, not Dataset"
        for role in ("time", "series", "target"):
            column = getattr(step.train, role)
            assert getattr(out, role) == column, f"the dataset's {role} column changed from {column!r}"
        assert all(isinstance(issue, str) and issue for issue in fitted.issues), fitted.issues
        assert len(out.frame) == len(step.train.frame), (
            f"fitting changed the number of rows ({len(step.train.frame)} -> {len(out.frame)})")

    def test_state_is_json(self, fitted: Preprocessed) -> None:
        """The state survives JSON unchanged (it is stored in the bundle's manifest and replayed from there):
        string keys, JSON values only, nothing lost in `json.dumps`/`json.loads`."""
        state = dict(fitted.state)
        try:
            text = json.dumps(state, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"the state is not JSON: {exc}") from None
        assert json.dumps(json.loads(text), allow_nan=True) == text, "the state changes through JSON"
        assert all(isinstance(key, str) for key in state), "the state has keys that are not strings"

    def test_replay_with_the_state_gives_the_fitted_frame(self, step: Step, fitted: Preprocessed) -> None:
        """Replaying the stored state (through JSON) on the training rows gives exactly the frame fitting gave
        (columns, dtypes, values), and returns the state unchanged: what serving sees is what training saw."""
        state = through_json(fitted.state)
        replayed = step.replay(step.train, state)
        frames_equal(replayed.dataset.frame, fitted.dataset.frame, "replay on the training rows")
        assert through_json(replayed.state) == state, "replay returned another state than the one it was given"

    def test_replay_on_new_rows_does_not_refit(self, step: Step, fitted: Preprocessed) -> None:
        """Replayed on the later period's rows, the step keeps the training state (it returns it unchanged,
        learns nothing from the rows it scores), keeps the row count, and gives the same frame every time."""
        state = through_json(fitted.state)
        first = step.replay(step.later, state)
        second = step.replay(step.later, state)
        assert through_json(first.state) == state, "replay on new rows changed the state (a refit?)"
        assert len(first.dataset.frame) == len(step.later.frame), (
            f"replay changed the number of rows ({len(step.later.frame)} -> {len(first.dataset.frame)})")
        frames_equal(second.dataset.frame, first.dataset.frame, "two replays of the same rows")

    def test_does_not_mutate_its_input(self, step: Step) -> None:
        """Neither fitting nor replaying changes the frame it was given (datasets are frozen: derive)."""
        train, later = step.train.frame.copy(deep=True), step.later.frame.copy(deep=True)
        fitted = step.fit(step.train)
        step.replay(step.later, through_json(fitted.state))
        frames_equal(step.train.frame, train, "the training frame after fitting")
        frames_equal(step.later.frame, later, "the later frame after replaying")

    def test_replays_rows_without_the_target(self, step: Step, fitted: Preprocessed) -> None:
        """Scoring rows carry no target: replay on the later rows without it gives the same feature columns and
        values as with it."""
        target = step.later.target
        frame = step.later.frame.drop(columns=[target])
        unlabelled = step.later.derive(frame, target=None)
        state = through_json(fitted.state)
        without = step.replay(unlabelled, state).dataset.frame
        labelled = step.replay(step.later, state).dataset.frame
        frames_equal(without, labelled.drop(columns=[target], errors="ignore"),
                     "replay without the target against replay with it")

    def test_a_later_piece_scores_as_in_the_whole_frame(self, step: Step, fitted: Preprocessed) -> None:
        """Serving and batch scoring replay the step on pieces of each series. A step that declares
        `window_reach` gets each piece with the rows before it that its reach names, and must give for the
        piece's rows what the whole frame gives; a step that does not declare it gets the piece alone, and must
        give the same (its output for a row reads that row only)."""
        state = through_json(fitted.state)
        reach = None
        if step.session.plugins.implements(step.name, "window_reach"):
            reach = step.session.plugins.call(step.name, "window_reach", state=state, options=step.options)
        whole = step.replay(step.later, state).dataset.frame
        cut = _cut(step.later)
        piece = step.later.frame.loc[cut | _behind(step.later, cut, reach)]
        scored = step.replay(step.later.derive(piece.reset_index(drop=True)), state).dataset.frame
        tail = scored.iloc[[i for i, kept in enumerate(cut[piece.index]) if kept]]
        frames_equal(tail, whole.loc[cut.to_numpy()], "the piece's rows replayed with the rows its reach names"
                     if reach else "the piece's rows replayed alone (the step declares no window_reach)")


    def test_a_version_with_it_serves_as_it_replays(self, tmp_path_factory: pytest.TempPathFactory,
                                                    tmp_path: Path) -> None:
        """A version trained with the step (`opsloop run`, XGBoost after it) is served by `opsloop serve` (a
        real server on 127.0.0.1) with the scores `LoadedModel.predict` gives for the same rows: the step's
        `compile_rows` fast path, when it has one, computes what its `preprocess` replay computes."""
        bench = Bench.create(tmp_path_factory.mktemp("served-step"), self.table(preprocess=self.steps_table()))
        result = bench.invoke("run").assert_ok().json
        check_serving(bench, result["versions"][0], tmp_path / "log.db")


def _cut(dataset: Dataset) -> pd.Series:
    """The rows of the later period's second half (by time), as a boolean mask."""
    times = dataset.frame[dataset.time]
    return times >= times.quantile(0.5, interpolation="nearest")


def _behind(dataset: Dataset, cut: pd.Series, reach: Any) -> pd.Series:
    """Per series, the rows before the cut that `reach` names: the last `reach.rows`, every row newer than the
    piece's first time minus `reach.seconds`, and the newest at or before it."""
    import pandas as pd

    frame = dataset.frame
    keep = pd.Series(False, index=frame.index)
    if not reach:
        return keep
    groups = frame.groupby(dataset.series, sort=False).groups if dataset.series else {None: frame.index}
    for index in groups.values():
        rows = frame.loc[index]
        before = rows[~cut[index]].sort_values(dataset.time, kind="stable")
        after = rows[cut[index]]
        if before.empty or after.empty:
            continue
        chosen = set(before.index[len(before) - reach.rows:]) if reach.rows else set()
        if reach.seconds:
            start = after[dataset.time].min() - pd.Timedelta(seconds=reach.seconds)
            times = before[dataset.time]
            chosen |= set(before.index[times > start])
            older = before.index[times <= start]
            if len(older):
                chosen.add(older[-1])
        keep[list(chosen)] = True
    return keep
