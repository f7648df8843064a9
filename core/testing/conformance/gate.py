"""The gate conformance suite: a verdict with a winner, figures and reasons; the better model wins either way
round; the same verdict for the same seed; one-line DataErrors on a window that cannot decide; a backtest's cycles.

    class TestMyGate(GateSuite, plugin="my-gate", options={"metric": "roc_auc"}): pass

The champion is a real version: the small real set's (`opsloop.testing.data.small_config()`), registered by
`opsloop run` with the gate selected, scored on the later period (four days of three ASD servers, 553 incident
rows of 3,456) as the loop scores its gate window. Its rival is the same version with its judgement turned
upside down (score 1 - score, prediction 1 - prediction: ROC AUC 1 - x), under version number 2: a model
that is clearly worse on any classification figure. `clear_cases=False` skips the two checks that need a gate
to prefer the clearly better model (for a gate that decides on something else, such as a human's approval).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, frames_equal, is_figure, one_line, run_context

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.session import Session
    from opsloop.types import Contender, Dataset, GateVerdict, ModelVersion


def reversed_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """The same rows judged upside down: `score` 1 - score (higher for normal rows), `prediction` flipped."""
    out = predictions.copy()
    out["prediction"] = 1 - out["prediction"].astype("int64")
    if "score" in out.columns:
        out["score"] = 1.0 - out["score"].astype("float64")
    return out


@attrs.define
class Bout:
    """The gate under test, a real version with its predictions on the later period, and its reversed twin."""

    name: str
    session: Session = attrs.field(repr=False)
    options: Any
    good: ModelVersion
    bad: ModelVersion
    window: Dataset = attrs.field(repr=False)
    predictions: pd.DataFrame = attrs.field(repr=False)
    workdir: Path

    def contenders(self, champion_good: bool, rows: Any = None) -> tuple[Contender, Contender]:
        """(champion, challenger): the good version and its reversed twin, in the roles asked for; `rows` (a
        boolean mask) keeps some rows of the predictions, for a smaller window."""
        from opsloop.types import Contender

        good = self.predictions if rows is None else self.predictions[rows].reset_index(drop=True)
        bad = reversed_predictions(good)
        first, second = ((self.good, good), (self.bad, bad)) if champion_good else ((self.bad, bad), (self.good, good))
        return (Contender(role="champion", version=first[0], predictions=first[1]),
                Contender(role="challenger", version=second[0], predictions=second[1]))

    def verdict(self, champion: Contender, challenger: Contender, window: Dataset | None = None) -> GateVerdict:
        """The gate's verdict, checked for shape (a GateVerdict with a winner and reasons)."""
        from opsloop.types import GateVerdict

        out = self.session.plugins.call(self.name, "gate", champion=champion, challenger=challenger,
                                        window=self.window if window is None else window, options=self.options,
                                        run=run_context(self.workdir, self.session))
        assert isinstance(out, GateVerdict), f"gate returned {type(out).__name__}, not GateVerdict"
        assert out.winner in ("champion", "challenger"), f"winner = {out.winner!r}, not champion or challenger"
        assert out.reasons and all(isinstance(r, str) and r.strip() for r in out.reasons), (
            f"a verdict needs at least one reason, each a sentence: {out.reasons!r}")
        return out

    def refused(self, rows: Any, window: Dataset) -> str:
        """The one-line DataError the gate gives on a window that cannot decide."""
        from opsloop.errors import DataError, PluginCallError

        champion, challenger = self.contenders(True, rows=rows)
        with pytest.raises(PluginCallError) as caught:
            self.verdict(champion, challenger, window)
        text = one_line(caught.value.cause)
        assert isinstance(caught.value.cause, DataError), (
            f"expected a DataError (the loop ends the cycle with it and production stays), got "
            f"{type(caught.value.cause).__name__}: {text}")
        return text


def same(left: float, right: float) -> bool:
    return (math.isnan(left) and math.isnan(right)) or left == right


class GateSuite(Suite):
    """A promotion gate (`gate`).

    `class TestMine(GateSuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[gate.mine]` table),
    `clear_cases` (default True: the clearly better model wins as challenger and stays as champion; False skips
    those two checks), `config`, `register`.
    """

    section: ClassVar[str] = "gate"
    keywords: ClassVar[dict[str, Any]] = {"clear_cases": True}
    clear_cases: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def bout(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Bout:
        """`opsloop run` with the gate selected (its options checked as the loop checks them); version 1
        loaded and the later period scored by it, as the loop scores its gate window."""
        from opsloop.runner import judge

        path = tmp_path_factory.mktemp("gate")
        bench = Bench.create(path, cls.table(gate=cls.stage()))
        bench.invoke("run").assert_ok()
        runner = bench.runner()
        try:
            _, later = bench.periods(runner)
            good = runner.store.get(MODEL, 1)
            window, predictions = judge(runner.load(good), later)
        finally:
            runner.close()
        return Bout(name=cls.plugin, session=runner.session, options=runner.session.options_for("gate", cls.plugin),
                    good=good, bad=attrs.evolve(good, version=2), window=window, predictions=predictions,
                    workdir=path)

    def test_returns_a_verdict_with_figures_and_reasons(self, bout: Bout) -> None:
        """`gate` returns a GateVerdict: winner `champion` or `challenger`, the metric it compared (a name), both
        contenders' figures and the margin as numbers (finite or NaN, never inf), a confidence interval that is
        None or (low, high) with low <= high, reasons as sentences, other figures named and numeric."""
        verdict = bout.verdict(*bout.contenders(True))
        assert isinstance(verdict.metric, str) and verdict.metric.strip(), f"metric = {verdict.metric!r}"
        for name in ("champion", "challenger", "margin"):
            value = getattr(verdict, name)
            assert is_figure(value), f"{name} = {value!r} is not a finite number or NaN"
        if verdict.ci is not None:
            low, high = verdict.ci
            assert is_figure(low) and is_figure(high) and low <= high, f"ci = {verdict.ci!r}"
        for name, value in verdict.figures.items():
            assert isinstance(name, str) and name.strip(), f"a figure has no name: {name!r}"
            assert is_figure(value), f"figures[{name!r}] = {value!r} is not a finite number or NaN"

    def test_a_clearly_better_challenger_wins(self, bout: Bout) -> None:
        """Against a champion that judges every row upside down, the real version as challenger wins, with a
        positive margin (positive means the challenger is better)."""
        if not type(self).clear_cases:
            pytest.skip("clear_cases=False: the gate does not decide on model quality alone")
        verdict = bout.verdict(*bout.contenders(False))
        assert verdict.winner == "challenger", f"keeps a champion that is upside down: {verdict.reasons}"
        assert verdict.margin > 0, f"margin {verdict.margin} for a clearly better challenger"

    def test_a_clearly_worse_challenger_loses(self, bout: Bout) -> None:
        """The real version as champion stays against a challenger that judges every row upside down, and the
        margin is negative."""
        if not type(self).clear_cases:
            pytest.skip("clear_cases=False: the gate does not decide on model quality alone")
        verdict = bout.verdict(*bout.contenders(True))
        assert verdict.winner == "champion", f"promotes a challenger that is upside down: {verdict.reasons}"
        assert verdict.margin < 0, f"margin {verdict.margin} for a clearly worse challenger"

    def test_the_same_seed_gives_the_same_verdict(self, bout: Bout) -> None:
        """Asked twice on the same window with the same run seed, the gate gives the same verdict: winner,
        figures, interval and reasons (a bootstrap draws from the run's seed)."""
        first = bout.verdict(*bout.contenders(True))
        second = bout.verdict(*bout.contenders(True))
        assert (first.winner, first.metric, first.reasons) == (second.winner, second.metric, second.reasons)
        for name in ("champion", "challenger", "margin"):
            assert same(getattr(first, name), getattr(second, name)), name
        assert (first.ci is None) == (second.ci is None)
        if first.ci is not None and second.ci is not None:
            assert all(same(a, b) for a, b in zip(first.ci, second.ci)), (first.ci, second.ci)
        assert set(first.figures) == set(second.figures)
        assert all(same(first.figures[k], second.figures[k]) for k in first.figures)

    def test_leaves_the_window_and_predictions_unchanged(self, bout: Bout) -> None:
        """The window and both contenders' predictions are the same after the call."""
        champion, challenger = bout.contenders(True)
        before = [bout.window.frame.copy(), champion.predictions.copy(), challenger.predictions.copy()]
        bout.verdict(champion, challenger)
        for what, after, then in zip(("the window", "the champion's predictions", "the challenger's predictions"),
                                     (bout.window.frame, champion.predictions, challenger.predictions), before):
            frames_equal(after, then, f"{what} after gate")

    def test_a_backtest_gates_its_candidates_with_it(self, tmp_path: Path) -> None:
        """`opsloop backtest --chunks 2` with the gate selected (and a policy that always retrains) ends a cycle
        with the gate's verdict on a candidate, named after the plugin, and no cycle fails."""
        retrain = {"plugins": ["threshold-policy"], "threshold-policy": {"min_f1": 0.99, "min_positives": 0}}
        bench = Bench.create(tmp_path / "backtest", type(self).table(gate=type(self).stage(), retrain=retrain))
        result = bench.invoke("backtest", "--chunks", "2", "--json").assert_ok().json
        cycles = [chunk["cycle"] for chunk in result["chunks"]]
        assert not [c["error"] for c in cycles if c.get("error")], f"cycles failed: {cycles}"
        verdicts = [g for c in cycles for g in c.get("gates") or ([c["gate"]] if c.get("gate") else [])]
        assert verdicts, f"no cycle gated a candidate: {[c['status'] for c in cycles]}"
        assert all(v["gate"] == type(self).plugin and v["winner"] in ("champion", "challenger") and v["reasons"]
                   for v in verdicts), verdicts

    def test_a_window_without_labels_is_a_one_line_data_error(self, bout: Bout) -> None:
        """A window whose labels have not arrived (the target all missing) cannot decide: a one-line DataError,
        so that the loop ends the cycle with it and production stays."""
        frame = bout.window.frame.assign(**{bout.window.target: math.nan})
        bout.refused(None, bout.window.derive(frame))

    def test_a_window_of_one_class_is_a_one_line_data_error(self, bout: Bout) -> None:
        """A window with no incident (every label 0) cannot tell the better model at finding them: a one-line
        DataError."""
        rows = (bout.window.frame[bout.window.target] == 0).to_numpy()
        assert rows.any() and not rows.all()
        window = bout.window.derive(bout.window.frame[rows].reset_index(drop=True))
        bout.refused(rows, window)


__all__ = ["GateSuite", "reversed_predictions"]
