"""The monitor conformance suite: a report of named figures on a real registered version, in a run and alone.

    class TestMyMonitor(MonitorSuite, plugin="my-monitor", options={"window": "1d"}): pass

The version is the small real set's (`opsloop.testing.data.small_config()`, XGBoost trained on the first six
days of three servers, validated on 3 time-ordered folds, registered); the monitor judges the last four days,
scored by that version, with the training period as its reference: what `opsloop run` gives it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, frames_equal, is_figure, one_line

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.session import Session
    from opsloop.types import Dataset, ModelVersion, MonitorReport, RunContext


@attrs.define
class Watch:
    """A registered version, the later period it scored, and the monitor to call on them."""

    name: str
    session: Session = attrs.field(repr=False)
    run: RunContext = attrs.field(repr=False)
    options: Any
    version: ModelVersion
    current: Dataset = attrs.field(repr=False)
    predictions: pd.DataFrame = attrs.field(repr=False)
    reference: Dataset = attrs.field(repr=False)
    lifecycle: dict[str, Any] = attrs.field(repr=False)

    def report(self, current: Dataset | None = None, predictions: pd.DataFrame | None = None) -> MonitorReport:
        """The monitor's report on `current` (default: the later period) and its predictions."""
        from opsloop.types import MonitorReport

        out = self.session.plugins.call(self.name, "monitor", version=self.version,
                                        current=self.current if current is None else current,
                                        predictions=self.predictions if predictions is None else predictions,
                                        reference=self.reference, options=self.options, run=self.run)
        assert isinstance(out, MonitorReport), f"monitor returned {type(out).__name__}, not MonitorReport"
        return out


def same_figures(left: Any, right: Any) -> bool:
    """Equal figure for figure, NaN equal to NaN."""
    if set(left) != set(right):
        return False
    return all((math.isnan(float(left[k])) and math.isnan(float(right[k]))) or float(left[k]) == float(right[k])
               for k in left)


class MonitorSuite(Suite):
    """A monitor plugin (`monitor`).

    `class TestMine(MonitorSuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[monitor.mine]`
    table), `config` (other tables merged into the small config), `register`.
    """

    section: ClassVar[str] = "monitor"

    @pytest.fixture(scope="class")
    @classmethod
    def watch(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Watch:
        """`opsloop run` with the monitor selected, then the registered version loaded and the later period
        scored by it, as the run's monitor stage has them."""
        from opsloop.runner import judge

        table = cls.stage()
        bench = Bench.create(tmp_path_factory.mktemp("monitor"), cls.table(monitor=table))
        lifecycle = bench.invoke("run").assert_ok().json
        runner = bench.runner()
        try:
            train, later = bench.periods(runner)
            version = runner.store.get(MODEL, 1)
            current, predictions = judge(runner.load(version), later)
        finally:
            runner.close()
        return Watch(name=cls.plugin, session=runner.session, run=runner.run,
                     options=runner.session.options_for("monitor", cls.plugin), version=version, current=current,
                     predictions=predictions, reference=train, lifecycle=lifecycle)

    def test_a_run_shows_its_figures(self, watch: Watch) -> None:
        """`opsloop run --json` with the monitor selected ends with its report: named after the plugin, on
        the version the run registered, with its figures."""
        reports = [r for r in watch.lifecycle["monitor"] if r["monitor"] == watch.name]
        assert len(reports) == 1, f"the run's monitor reports: {watch.lifecycle['monitor']}"
        assert reports[0]["model"] == f"{MODEL}:1"
        assert reports[0]["metrics"], "the run shows no figures for this monitor"

    def test_returns_a_report_of_named_figures(self, watch: Watch) -> None:
        """`monitor` returns an opsloop.types.MonitorReport: figures named by non-empty strings, each a number
        that is finite or NaN (NaN: not measurable on these rows; never inf, never text), at least one finite;
        baseline figures likewise; alerts as sentences; `rows` between 1 and the rows it was given."""
        report = watch.report()
        assert report.metrics, "the report has no figures"
        for where, figures in (("metrics", report.metrics), ("baseline", report.baseline)):
            for name, value in figures.items():
                assert isinstance(name, str) and name.strip(), f"a figure in {where} has no name: {name!r}"
                assert is_figure(value), f"{where}[{name!r}] = {value!r} is not a finite number or NaN"
        assert any(math.isfinite(float(v)) for v in report.metrics.values()), (
            f"every figure is NaN on a labelled, scored period: {dict(report.metrics)}")
        assert all(isinstance(a, str) and a.strip() for a in report.alerts), report.alerts
        assert 0 < report.rows <= len(watch.current.frame), (
            f"rows = {report.rows}, for {len(watch.current.frame)} rows given")

    def test_the_same_rows_give_the_same_report(self, watch: Watch) -> None:
        """Two calls on the same rows give the same figures and alerts (a report is a function of its rows)."""
        first, second = watch.report(), watch.report()
        assert same_figures(first.metrics, second.metrics), (dict(first.metrics), dict(second.metrics))
        assert first.alerts == second.alerts

    def test_does_not_mutate_what_it_is_given(self, watch: Watch) -> None:
        """The current rows, the predictions and the reference rows are the same after the call."""
        current = watch.current.frame.copy(deep=True)
        predictions = watch.predictions.copy(deep=True)
        reference = watch.reference.frame.copy(deep=True)
        watch.report()
        frames_equal(watch.current.frame, current, "the current rows after monitor")
        frames_equal(watch.predictions, predictions, "the predictions after monitor")
        frames_equal(watch.reference.frame, reference, "the reference rows after monitor")

    def test_labels_not_arrived_yet(self, watch: Watch) -> None:
        """On rows whose labels have not arrived (the target all missing, as `opsloop monitor` sees fresh
        rows), the monitor still reports (figures it cannot measure are NaN) or refuses with a one-line
        opsloop error; it never fails with a bare exception."""
        from opsloop.errors import OpsloopError, PluginCallError

        frame = watch.current.frame.assign(**{watch.current.target: float("nan")})
        try:
            report = watch.report(current=watch.current.derive(frame))
        except PluginCallError as exc:
            assert isinstance(exc.cause, OpsloopError), f"failed with a bare exception: {exc}"
            one_line(exc.cause)
            return
        assert all(is_figure(v) for v in report.metrics.values()), dict(report.metrics)

    def test_a_short_period(self, watch: Watch) -> None:
        """On the first ten rows of the period (a quiet hour, a new server) it reports, or refuses with a
        one-line opsloop error; never a bare exception."""
        from opsloop.errors import OpsloopError, PluginCallError

        current = watch.current.derive(watch.current.frame.head(10))
        try:
            report = watch.report(current=current, predictions=watch.predictions.head(10))
        except PluginCallError as exc:
            assert isinstance(exc.cause, OpsloopError), f"failed with a bare exception: {exc}"
            one_line(exc.cause)
            return
        assert all(is_figure(v) for v in report.metrics.values()), dict(report.metrics)
        assert report.rows <= 10
