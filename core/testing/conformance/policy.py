"""The retrain-policy conformance suite: a decision with reasons, keep on healthy reports, act as documented.

    class TestMyPolicy(PolicySuite, plugin="my-policy", options={"min_f1": 0.5}): pass

The version is a real one: the small set's (`opsloop.testing.data.small_config()`) registered by `opsloop run`
with the policy selected. Healthy reports repeat the version's validation figures; `retrains_on` (a function
of the version returning reports, default `degraded_reports`) gives reports on which the policy's
documentation says it retrains (None skips that check).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, one_line, run_context

if TYPE_CHECKING:
    from opsloop.session import Session
    from opsloop.types import ModelVersion, MonitorReport, RetrainDecision

#: Figures where lower is better (errors); every other figure is better higher.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "mse", "log_loss", "brier"})
#: Rows and positives the suite's reports say they were measured on (enough for any sensible guard).
ROWS, POSITIVES = 3456, 120


def healthy_reports(version: ModelVersion) -> list[MonitorReport]:
    """A quality report that repeats the version's validation figures on plenty of labelled rows, no alert."""
    from opsloop.types import MonitorReport

    figures = {**version.metrics, "positives": POSITIVES}
    return [MonitorReport(monitor="quality-monitor", model=version.ref, rows=ROWS, metrics=figures,
                          baseline=dict(version.metrics))]


def degraded_reports(version: ModelVersion) -> list[MonitorReport]:
    """A quality report whose every figure is far worse than at validation (better-higher figures at a quarter,
    errors four times larger) on plenty of labelled rows, with an alert: what a quality policy retrains on."""
    from opsloop.types import MonitorReport

    worse = {k: (v * 4 if k in LOWER_IS_BETTER else v / 4) for k, v in version.metrics.items()}
    return [MonitorReport(monitor="quality-monitor", model=version.ref, rows=ROWS,
                          metrics={**worse, "positives": POSITIVES}, baseline=dict(version.metrics),
                          alerts=("every figure fell to a quarter of its validation value",))]


@attrs.define
class Judge:
    """The policy under test, with its checked options, and a real registered version."""

    name: str
    session: Session = attrs.field(repr=False)
    options: Any
    version: ModelVersion
    lifecycle: dict[str, Any] = attrs.field(repr=False)

    def decide(self, reports: list[MonitorReport], workdir: Path) -> RetrainDecision:
        """The policy's decision, in a fresh working directory (a policy may keep memory there)."""
        from opsloop.types import RetrainDecision

        out = self.session.plugins.call(self.name, "decide_retrain", version=self.version, reports=reports,
                                        options=self.options, run=run_context(workdir, self.session))
        assert isinstance(out, RetrainDecision), f"decide_retrain returned {type(out).__name__}, not RetrainDecision"
        assert isinstance(out.retrain, bool), f"RetrainDecision.retrain is {out.retrain!r}, not a bool"
        assert out.reasons and all(isinstance(r, str) and r.strip() for r in out.reasons), (
            f"a decision needs at least one reason, each a sentence: {out.reasons!r}")
        return out


class PolicySuite(Suite):
    """A retrain policy (`decide_retrain`).

    `class TestMine(PolicySuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[retrain.mine]`
    table), `retrains_on` (version -> reports it must retrain on; default `degraded_reports`, None: not
    checked), `config`, `register`.
    """

    section: ClassVar[str] = "retrain"
    keywords: ClassVar[dict[str, Any]] = {"retrains_on": degraded_reports}
    retrains_on: ClassVar[Callable[[ModelVersion], list[MonitorReport]] | None] = degraded_reports

    @pytest.fixture(scope="class")
    @classmethod
    def judge(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Judge:
        """`opsloop run` with the policy selected; the version it registered."""
        table = cls.stage()
        bench = Bench.create(tmp_path_factory.mktemp("policy"), cls.table(retrain=table))
        lifecycle = bench.invoke("run").assert_ok().json
        session = bench.session()
        with session.open_store() as store:
            version = store.get(MODEL, 1)
        return Judge(name=cls.plugin, session=session, options=session.options_for("retrain", cls.plugin),
                     version=version, lifecycle=lifecycle)

    def test_a_run_decides_with_reasons(self, judge: Judge) -> None:
        """`opsloop run --json` with the policy selected ends with its decision and the reasons for it."""
        decision = judge.lifecycle["decision"]
        assert decision is not None, "the run made no decision"
        assert judge.name in decision["policy"]
        assert decision["reasons"], "the run's decision has no reasons"

    def test_keeps_the_model_on_healthy_reports(self, judge: Judge, tmp_path: Path) -> None:
        """On a report that repeats the version's validation figures on plenty of labelled rows, with no
        alert, the policy keeps the model (`retrain=False`) and says why."""
        decision = judge.decide(healthy_reports(judge.version), tmp_path)
        assert decision.retrain is False, f"retrains on a healthy report: {decision.reasons}"

    def test_retrains_where_its_documentation_says(self, judge: Judge, tmp_path: Path) -> None:
        """On the reports `retrains_on` gives (default: every figure far below validation, with an alert),
        the policy asks for a retrain, with reasons."""
        make = type(self).retrains_on
        if make is None:
            pytest.skip("retrains_on=None: the suite was told this policy has no report it retrains on")
        decision = judge.decide(make(judge.version), tmp_path)
        assert decision.retrain is True, f"keeps the model on reports it should retrain on: {decision.reasons}"

    def test_no_reports(self, judge: Judge, tmp_path: Path) -> None:
        """With no monitor selected the policy gets no report: it decides (with a reason) or refuses with a
        one-line opsloop error; never a bare exception."""
        from opsloop.errors import OpsloopError, PluginCallError

        try:
            judge.decide([], tmp_path)
        except PluginCallError as exc:
            assert isinstance(exc.cause, OpsloopError), f"failed with a bare exception: {exc}"
            one_line(exc.cause)

    def test_unmeasured_figures(self, judge: Judge, tmp_path: Path) -> None:
        """A report whose figures are NaN (labels not arrived) gives a decision with reasons, or a one-line
        opsloop error; never a bare exception, and NaN is not a reason to retrain on its own."""
        from opsloop.errors import OpsloopError, PluginCallError
        from opsloop.types import MonitorReport

        nan = {k: math.nan for k in judge.version.metrics}
        report = MonitorReport(monitor="quality-monitor", model=judge.version.ref, rows=ROWS, metrics=nan,
                               baseline=dict(judge.version.metrics))
        try:
            decision = judge.decide([report], tmp_path)
        except PluginCallError as exc:
            assert isinstance(exc.cause, OpsloopError), f"failed with a bare exception: {exc}"
            one_line(exc.cause)
            return
        assert decision.retrain is False, f"retrains on figures it could not measure: {decision.reasons}"

    def test_the_same_reports_give_the_same_decision(self, judge: Judge, tmp_path: Path) -> None:
        """Asked twice in fresh working directories, on the same reports, the policy decides the same."""
        reports = healthy_reports(judge.version)
        first = judge.decide(reports, tmp_path / "a")
        second = judge.decide(reports, tmp_path / "b")
        assert (first.retrain, first.reasons) == (second.retrain, second.reasons)
