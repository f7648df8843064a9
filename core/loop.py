"""`opsloop loop`: one cycle of monitor -> decide -> retrain -> validate -> gate -> promote, journaled.

A cycle, under the store's loop lock for the model (two loops on one store
never both retrain):

1. production: the version `production` points at (none: the cycle ends
   with an error, nothing else happens);
2. observe: what production scored lately and the labelled history
   (`Inputs`: the prediction log and the configured source for `opsloop
   loop`; the replayed history for `opsloop backtest`, which runs these same
   cycles);
3. monitor: the `[monitor]` plugins on the last `[loop] monitor_window` of
   production's rows;
4. decide: the `[retrain]` policies;
5. retrain: a candidate trained on the retraining window (`[loop] window`,
   expanding or sliding) less its latest `[loop] holdout`, validated
   (`[validate] gates` enforced) and registered with the window in its
   lineage, as alias `candidate`;
6. gate: champion and challenger scored on the held-out rows, the `[gate]`
   plugins judge; only a winner of every gate is promoted, with both
   figures, the margin and its interval in the alias history's reason.

Every cycle, whatever its outcome, is one entry of the store's loop journal
(`ModelStore.record_cycle`). A stop request (SIGTERM) is honoured between
steps: the step under way (a registration, an alias move) finishes, the
cycle is journaled as stopped, the lock is released.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from opsloop.errors import DataError, OpsloopError, StoreError
from opsloop.monitoring import parse_duration
from opsloop.store import strict_json
from opsloop.types import Contender, Dataset, GateVerdict, MonitorReport, RetrainDecision

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.bundle import LoadedModel
    from opsloop.config import LoopSection
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.store import ModelStore
    from opsloop.types import ModelVersion, Reporter

PRODUCTION = "production"
CANDIDATE = "candidate"
#: How every alias change the loop makes begins its reason: `loop cycle <run id>: ...` (opsloop.probation
#: recognises the loop's own promotions by it).
LOOP_REASON = "loop cycle "


class Stopped(Exception):
    """A stop was requested (SIGTERM): the cycle ends after the step under way."""

    def __init__(self, after: str) -> None:
        super().__init__(f"stopped on request after {after}")
        self.after = after


@attrs.frozen(kw_only=True)
class Observed:
    """What a cycle knows at its moment.

    Attributes:
        current: The rows production scored in the monitored window, labels
            where known (as the model learned them); None when there are none.
        predictions: Row-aligned with `current`: `prediction`, `score`.
        history: Every labelled row known, raw, in time order: what
            retraining and the gate draw from.
        monitored: (start, end) of the monitored window, or None.
        notes: Sentences for the journal (where rows came from, what was left out).
    """

    current: Dataset | None
    predictions: pd.DataFrame | None = attrs.field(default=None, eq=False, repr=False)
    history: Dataset
    monitored: tuple[datetime, datetime] | None = None
    notes: tuple[str, ...] = ()


class Inputs(Protocol):
    """Where a cycle's rows come from: the log and the source (`opsloop loop`), or a replay (`backtest`)."""

    def observe(self, runner: Runner, production: ModelVersion, model: LoadedModel, now: datetime) -> Observed:
        """What production scored in the monitored window before `now`, and the labelled history."""


@attrs.define
class CycleResult:
    """One cycle, as journaled and as `opsloop loop --once --json` prints it."""

    model: str
    now: datetime
    status: str = "keep"  # keep, promoted, waiting, rejected, rolled back, error, stopped, skipped
    decision: str = "keep"
    reasons: list[str] = attrs.field(factory=list)
    production: str | None = None
    candidate: int | None = None
    gate: dict[str, Any] | None = None
    gates: list[dict[str, Any]] = attrs.field(factory=list)
    promoted: bool = False
    #: The probation of a version the loop promoted (opsloop.probation): what was compared, on which rows, outcome.
    probation: dict[str, Any] | None = None
    #: `[loop] recalibrate`: production's threshold chosen again (opsloop.recalibrate): old, new, applied, why.
    recalibrated: dict[str, Any] | None = None
    monitor: list[dict[str, Any]] = attrs.field(factory=list)
    window: dict[str, Any] = attrs.field(factory=dict)
    error: str | None = None
    notes: list[str] = attrs.field(factory=list)
    steps: list[str] = attrs.field(factory=list)
    seconds: float = 0.0
    journal_id: int | None = None
    #: Set in memory only: the reports and verdicts, for the backtest and the renderer.
    reports: list[MonitorReport] = attrs.field(factory=list, eq=False, repr=False)

    @property
    def moved_production(self) -> bool:
        """Whether the cycle changed what production scores with: a promotion, a rollback, a new threshold."""
        return self.promoted or self.status == "rolled back" or bool((self.recalibrated or {}).get("applied"))

    def to_json(self) -> dict[str, Any]:
        return strict_json({
            "model": self.model, "at": _iso(self.now), "status": self.status, "decision": self.decision,
            "reasons": list(self.reasons), "production": self.production, "candidate": self.candidate,
            "gate": self.gate, "gates": list(self.gates), "promoted": self.promoted, "probation": self.probation,
            "recalibrated": self.recalibrated, "monitor": list(self.monitor),
            "window": dict(self.window), "error": self.error, "notes": list(self.notes),
            "steps": list(self.steps), "seconds": round(self.seconds, 3), "journal_id": self.journal_id,
        })


def owner_id() -> str:
    """Who holds a lock: user, host and process, and a random part for two loops in one process."""
    from opsloop.store import current_user

    return f"{current_user()}@{platform.node()}:{os.getpid()}/{uuid.uuid4().hex[:6]}"


class Cycle:
    """One cycle of the loop for a `Runner` (its session, store and plugins); `run()` never raises an
    `OpsloopError`: it ends the cycle and is journaled."""

    def __init__(self, runner: Runner, inputs: Inputs, *, now: datetime | None = None,
                 stop: threading.Event | None = None, owner: str | None = None, journal: bool = True) -> None:
        self.runner = runner
        self.session = runner.session
        self.config = runner.config
        self.inputs = inputs
        self.now = now or datetime.now(UTC)
        self.runner.run = attrs.evolve(runner.run, now=self.now)
        self.stop = stop or threading.Event()
        self.owner = owner or owner_id()
        self.journal = journal
        self.name = runner.run.model_name
        self.result = CycleResult(model=self.name, now=self.now)
        self.ttl = parse_duration(self.config.loop.lock_ttl, "[loop] lock_ttl").total_seconds()
        #: The champion's last `judge`: the rows with its labels and its predictions (read by recalibrate).
        self.champion_scored: tuple[Dataset, Any] | None = None

    @property
    def store(self) -> ModelStore:
        return self.runner.store

    @property
    def reason_prefix(self) -> str:
        """The start of the reason of every alias change this cycle makes."""
        return f"{LOOP_REASON}{self.runner.run.run_id}: "

    def _step(self, name: str) -> None:
        """Between two steps: honour a stop request, and keep the lock ours."""
        if self.stop.is_set():
            raise Stopped(self.result.steps[-1] if self.result.steps else "start")
        self.result.steps.append(name)
        if self.journal:
            state = self.store.lock(self.name, self.owner, self.ttl)
            if not state.acquired:  # our lease ran out and another loop took it: stop before writing anything
                raise OpsloopError(f"the loop lock of {self.name} was taken over by {state.owner} at {state.since} "
                                   f"(this cycle outlived [loop] lock_ttl {self.config.loop.lock_ttl}): "
                                   "stopping without retraining")

    def run(self) -> CycleResult:
        start = time.perf_counter()
        result = self.result
        if self.journal:
            try:
                state = self.store.lock(self.name, self.owner, self.ttl)
            except OpsloopError as exc:  # no lock, no cycle: nothing to journal it in either
                result.status, result.error = "error", _one_line(exc)
                self.runner.close()
                return result
            if not state.acquired:
                result.status = "skipped"
                result.reasons = [f"another loop holds the lock of {self.name}: {state.owner} since {state.since} "
                                  f"(until {state.expires} unless it finishes first)"]
                result.seconds = time.perf_counter() - start
                return result
        failure: BaseException | None = None  # what ended the cycle, for on_run_end
        try:
            self._cycle()
        except Stopped as stop:
            failure = stop
            result.status = "stopped"
            result.error = f"stopped on request after {stop.after}: nothing half-written"
        except OpsloopError as exc:
            failure = exc
            result.status, result.error = "error", _one_line(exc)
        except Exception as exc:  # an internal error must not end `--every`: journaled like any other
            failure = exc
            result.status, result.error = "error", f"internal error: {exc.__class__.__name__}: {_one_line(exc)}"
            if os.environ.get("OPSLOOP_DEBUG"):  # as the CLI's error boundary: the traceback on request
                import traceback

                traceback.print_exc()
        except BaseException as exc:  # a second Ctrl-C: journaled as what it is, the lock released, then it goes on up
            failure = exc
            result.status, result.error = "stopped", "interrupted (a second Ctrl-C) during " + (
                result.steps[-1] if result.steps else "start")
            raise
        finally:
            result.seconds = time.perf_counter() - start
            if self.journal:
                self._write_journal()
            self.runner.end("loop", result, outcome={"error": "error", "stopped": "stopped"}.get(result.status, "ok"),
                            error=failure)
            self.runner.close()
        return result

    def _write_journal(self) -> None:
        try:
            body = self.result.to_json()
            body.pop("journal_id")  # the store's id, known once written
            record = self.store.record_cycle(self.name, self.result.status, body)
            self.result.journal_id = record.id
        except StoreError as exc:
            self.result.notes.append(f"the cycle could not be journaled: {exc}")
        finally:
            try:
                self.store.unlock(self.name, self.owner)
            except StoreError as exc:
                self.result.notes.append(f"the loop lock could not be released: {exc}")

    # -- the steps -----------------------------------------------------------

    def _cycle(self) -> None:
        result, runner = self.result, self.runner
        self._step("production")
        production = self._production()
        result.production = production.ref
        model = runner.load(production)
        self._step("observe")
        observed = self.inputs.observe(runner, production, model, self.now)
        result.notes.extend(observed.notes)
        if self._probation(production, model, observed.history):
            return  # rolled back: the version monitored here is no longer production
        self._step("monitor")
        reports = self._monitor(production, observed)
        self._step("decide")
        decision = self._decide(production, reports)
        result.decision = "retrain" if decision.retrain else "keep"
        result.reasons = list(decision.reasons)
        if not decision.retrain:
            return
        if not self.config.stages["retrain"].act:
            result.reasons.append("[retrain] act = false: the decision is journaled, nothing is retrained")
            return
        if not self.config.selected("gate"):  # before the work: a candidate nobody can judge is never promoted
            raise OpsloopError("no gate selected ([gate] plugins): the loop never promotes without one "
                               '(plugins = ["champion-challenger"])')
        train, holdout = self._split(observed.history)
        self._step("retrain")
        candidate = self._retrain(production, train, holdout)
        if candidate is None:
            return
        self._step("gate")
        window = self._fresh(production, holdout)
        verdicts = self._gate(production, model, candidate, window)
        self._step("promote")
        self._promote(production, candidate, verdicts, window)
        if result.status == "rejected" and self.config.loop.recalibrate:
            self._step("recalibrate")
            self._recalibrate(production, model, window)

    def _recalibrate(self, production: ModelVersion, model: LoadedModel, window: Dataset) -> None:
        """`[loop] recalibrate`: production kept its place; choose its alert threshold again on the gate window
        (opsloop.recalibrate) and, when that helps, give it the new one."""
        from opsloop.recalibrate import choose_again

        new, figures = choose_again(model, window, self.config.alerting, scored=self.champion_scored)
        self.result.recalibrated = {**figures, "version": production.ref, "applied": new is not None}
        if new is None:
            self.result.notes.append(f"recalibrate: {production.ref} keeps its threshold: {figures['why']}")
            return
        reason = f"{self.reason_prefix}recalibrate: {figures['why']}"
        self.session.set_alias(self.store, self.name, PRODUCTION, production.version, reason=reason,
                               run=self.runner.run, threshold=new)
        self.result.reasons.append(f"{production.ref} stays in production with a new alert threshold: "
                                   f"{figures['why']}")

    def _production(self) -> ModelVersion:
        try:
            return self.store.resolve(f"{self.name}@{PRODUCTION}")
        except StoreError:
            models = {m.name for m in self.store.models()}
            if self.name not in models:
                raise OpsloopError(f"no model {self.name} in {self.store.uri}: the loop needs a version in "
                                   "production (opsloop run registers the first one)") from None
            raise OpsloopError(f"no version of {self.name} is in production: promote one first (opsloop models "
                               f"promote {self.name} N); the loop retrains only against a production version") \
                from None

    def _probation(self, production: ModelVersion, model: LoadedModel, history: Dataset) -> bool:
        """Judge production against the version it replaced once `[loop] probation` of new labelled rows has
        arrived; roll back if that version wins (opsloop.probation). True when production was rolled back."""
        from opsloop.probation import judge_probation

        return judge_probation(self, production, model, history)

    def _monitor(self, production: ModelVersion, observed: Observed) -> list[MonitorReport]:
        from opsloop.monitoring import reference_for

        current = observed.current
        if observed.monitored is not None:
            start, end = observed.monitored
            self.result.window["monitored"] = {"length": self.config.loop.monitor_window, "from": _iso(start),
                                               "until": _iso(end), "rows": 0 if current is None else len(current),
                                               "labelled": _labelled(current)}
        if current is None or not len(current) or not self.config.selected("monitor"):
            return []
        reference, note = reference_for(production, current)
        if note:
            self.result.notes.append(note)
        reports = self.runner.monitor(production, None, current, reference, predictions=observed.predictions)
        self.result.reports = reports
        self.result.monitor = [{"monitor": r.monitor, "rows": r.rows, "metrics": dict(r.metrics),
                                "alerts": list(r.alerts)} for r in reports]
        return reports

    def _decide(self, production: ModelVersion, reports: list[MonitorReport]) -> RetrainDecision:
        if not reports:
            span = self.config.loop.monitor_window
            why = (f"production ({production.ref}) scored no rows in the last {span} to monitor"
                   if self.config.selected("monitor") else "no monitor selected ([monitor] plugins)")
            return RetrainDecision(retrain=False, reasons=(f"{why}: keeping it",))
        if not self.config.selected("retrain"):
            return RetrainDecision(retrain=False, reasons=("no retrain policy selected ([retrain] plugins): "
                                                           "keeping production",))
        return self.runner.decide(production, reports)

    def _split(self, history: Dataset) -> tuple[Dataset, Dataset]:
        train, holdout, window = split(history, self.config.loop)
        self.result.window.update(window)
        return train, holdout

    def _retrain(self, production: ModelVersion, train: Dataset, holdout: Dataset) -> ModelVersion | None:
        from opsloop.gates import GateFailed

        training = {**self.result.window["training"], "holdout": self.result.window["holdout"],
                    "cycle": self.runner.run.run_id, "fingerprint": train.fingerprint}
        try:
            built = self.runner.build(train, prefix="retrain.", parent=production.ref, alias=CANDIDATE,
                                      training=training)
        except GateFailed as exc:
            self.result.status = "rejected"
            self.result.reasons.append(f"the candidate failed [validate] gates and was not registered: "
                                       f"{_one_line(exc)}; production stays on {production.ref}")
            return None
        candidate = built.version
        if candidate.version == production.version:  # no candidate: `candidate` stays null
            self.result.reasons.append(f"the retrained version is production itself ({production.ref}: same rows, "
                                       "config and plugin versions): nothing to gate")
            return None
        self.result.candidate = candidate.version
        return candidate

    def _fresh(self, production: ModelVersion, holdout: Dataset) -> Dataset:
        """The held-out rows after the last one production trained on (its lineage's `data.end`): a champion
        scored on its own training rows would look better than it is. DataError when none are left."""
        end = dict(production.lineage.get("data") or {}).get("end")
        if not end or not holdout.time or holdout.time not in holdout.frame.columns:
            return holdout
        import pandas as pd

        times = _utc_times(holdout.frame[holdout.time])
        fresh = (times > pd.Timestamp(end)).to_numpy()
        if fresh.all():
            return holdout
        span = self.result.window.get("holdout", {})
        if not fresh.any():
            raise DataError(f"the holdout ({span.get('start')} to {span.get('end')}) lies within the rows "
                            f"{production.ref} trained on (up to {end}): no fresh labelled rows to compare "
                            "champion and challenger on yet")
        window = holdout.derive(holdout.frame[fresh].reset_index(drop=True))
        self.result.window["gate"] = {**_span(times[fresh]), "rows": len(window.frame)}
        self.result.notes.append(f"gate window: {len(window.frame):,} of the {len(holdout.frame):,} held-out rows, "
                                 f"those after the last one {production.ref} trained on ({end})")
        return window

    def _gate(self, production: ModelVersion, model: LoadedModel, candidate: ModelVersion,
              holdout: Dataset) -> list[GateVerdict]:
        verdicts = self.judge(production, model, candidate, self.runner.load(candidate), holdout)
        self.result.gates = [verdict_json(v) for v in verdicts]
        self.result.gate = self.result.gates[0]
        return verdicts

    def judge(self, champion_version: ModelVersion, champion_model: LoadedModel, challenger_version: ModelVersion,
              challenger_model: LoadedModel, rows: Dataset) -> list[GateVerdict]:
        """Both versions scored on `rows`, judged by every `[gate]` plugin (a `gate` stage); DataError naming the
        gate when the rows cannot decide (one class, no labels)."""
        from opsloop.errors import PluginCallError
        from opsloop.runner import judge

        names = self.config.selected("gate")
        window, challenger_preds = judge(challenger_model, rows)
        self.champion_scored = judge(champion_model, rows)  # kept: recalibrate reads production's scores again
        champion_preds = self.champion_scored[1]
        champion = Contender(role="champion", version=champion_version, predictions=champion_preds)
        challenger = Contender(role="challenger", version=challenger_version, predictions=challenger_preds)

        def work() -> list[GateVerdict]:
            verdicts = []
            for name in names:
                try:
                    verdict = self.session.plugins.call(name, "gate", champion=champion, challenger=challenger,
                                                        window=window, options=self.session.options_for("gate", name),
                                                        run=self.runner.run)
                except PluginCallError as exc:
                    if isinstance(exc.cause, DataError):  # the window cannot decide: its words, journaled
                        raise DataError(f"gate {name}: {exc.cause}") from exc
                    raise
                if not isinstance(verdict, GateVerdict):
                    raise PluginCallError(name, "gate", TypeError(f"returned {type(verdict).__name__}, "
                                                                  "expected GateVerdict"))
                if verdict.winner not in ("challenger", "champion") or not verdict.reasons:
                    raise PluginCallError(name, "gate", ValueError("returned a verdict without a winner "
                                                                   "('challenger' or 'champion') or reasons"))
                verdicts.append(attrs.evolve(verdict, gate=verdict.gate or name))
            return verdicts

        return self.runner._stage("gate", names, work, lambda vs: "; ".join(
            f"{v.gate}: {v.winner} ({v.metric} {v.challenger:.3f} vs {v.champion:.3f})" for v in vs))

    def _promote(self, production: ModelVersion, candidate: ModelVersion, verdicts: list[GateVerdict],
                 holdout: Dataset) -> None:
        result = self.result
        lost = [v for v in verdicts if v.winner != "challenger"]
        said = "; ".join(f"{v.gate}: {' '.join(v.reasons)}" for v in verdicts)
        if lost:
            result.status = "rejected"
            result.reasons.append(f"{candidate.ref} did not win the gate ({', '.join(v.gate for v in lost)}); "
                                  f"production stays on {production.ref}: {said}")
            return
        if self.config.loop.promote == "manual":
            result.status = "waiting"
            result.reasons.append(f"{candidate.ref} won the gate against {production.ref} on {len(holdout):,} "
                                  f"held-out rows ({said}); it waits as @{CANDIDATE} for a person to promote it "
                                  f"([loop] promote = \"manual\"): opsloop models promote {self.name} "
                                  f"{candidate.version}")
            return
        reason = (f"{self.reason_prefix}{candidate.ref} won the gate against {production.ref} on "
                  f"{len(holdout):,} held-out rows: {said}")
        self.session.set_alias(self.store, self.name, PRODUCTION, candidate.version, reason=reason, run=self.runner.run)
        result.status, result.promoted = "promoted", True
        result.reasons.append(f"promoted {candidate.ref} to production (was {production.ref})")


def verdict_json(verdict: GateVerdict) -> dict[str, Any]:
    """A verdict as the journal and `--json` give it."""
    return strict_json({"gate": verdict.gate, "metric": verdict.metric, "champion": verdict.champion,
                    "challenger": verdict.challenger, "margin": verdict.margin,
                    "ci": list(verdict.ci) if verdict.ci is not None else None, "winner": verdict.winner,
                    "reasons": list(verdict.reasons), "figures": dict(verdict.figures)})


def split(history: Dataset, loop: LoopSection) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The retraining window of `history` less its latest `holdout` (the candidate's training rows), that
    holdout, and both spans for the journal (`training`, `holdout`).

    The window ends at the newest labelled row: `expanding` starts at the first
    row, a duration that long before the end (sliding). Rows without a label
    (`[data] unlabelled = "keep"`: an unsupervised trainer takes them) train
    like the others; newer ones than the newest labelled row wait for a later
    cycle, as the holdout must end where the labels do."""
    time_col = history.time
    if not time_col or time_col not in history.frame.columns:
        raise DataError("the loop cuts its retraining window and holdout by time: set [data] time")
    if not history.target or history.target not in history.frame.columns:
        raise DataError("the loop retrains on labelled rows: set [data] target")
    frame = history.frame
    if not len(frame):
        raise DataError(f"no labelled rows to retrain on in {history.name}")
    times = _utc_times(frame[time_col])
    if times.isna().all():
        raise DataError(f"no row of {history.name} has a {time_col} that is a date and time")
    labelled = frame[history.target].notna().to_numpy()
    if not labelled.any():
        raise DataError(f"none of the {len(frame):,} rows of {history.name} has a label: the holdout the gate "
                        "compares on needs labelled rows")
    newest = times[labelled].max()
    if not labelled.all():  # rows newer than the newest label wait for a later cycle
        upto = (times <= newest).to_numpy()
        frame, times = frame[upto], times[upto].reset_index(drop=True)
        labelled = frame[history.target].notna().to_numpy()
    end = newest.to_pydatetime() + timedelta(microseconds=1)
    cut = end - parse_duration(loop.holdout, "[loop] holdout")
    first = times.min().to_pydatetime()
    sliding = loop.window != "expanding"
    begin = max(first, end - parse_duration(loop.window, "[loop] window")) if sliding else first
    in_window = (times >= begin).to_numpy()
    held = (times >= cut).to_numpy()
    train_frame = frame[in_window & ~held].reset_index(drop=True)
    holdout_frame = frame[held].reset_index(drop=True)
    if not len(train_frame):
        raise DataError(f"[loop] holdout {loop.holdout} takes every row of the [loop] window {loop.window} "
                        f"({_iso(begin)} to {_iso(end)}): nothing is left to train on")
    # Spans as the first and last row each holds (inclusive): what an operator looks up in the data.
    unlabelled = int((in_window & ~held & ~labelled).sum())
    window = {"training": {"kind": "sliding" if sliding else "expanding", "length": loop.window,
                           **_span(times[in_window & ~held]), "rows": len(train_frame), "source": history.name,
                           **({"unlabelled": unlabelled} if unlabelled else {})},
              "holdout": {"length": loop.holdout, **_span(times[held]), "rows": len(holdout_frame)}}
    train = history.derive(train_frame, name=f"{history.name} [{window['training']['start']} to "
                                             f"{window['training']['end']}]")
    holdout = history.derive(holdout_frame, name=f"{history.name} [holdout {window['holdout']['start']} to "
                                                 f"{window['holdout']['end']}]")
    return train, holdout, window


# -- helpers ---------------------------------------------------------------------

def _span(times: Any) -> dict[str, str | None]:
    """`start` and `end`: the first and the last of some row times (None when there are none)."""
    if not len(times):
        return {"start": None, "end": None}
    return {"start": _iso(times.min().to_pydatetime()), "end": _iso(times.max().to_pydatetime())}


def _labelled(current: Dataset | None) -> int:
    if current is None or not current.target or current.target not in current.frame.columns:
        return 0
    return int(current.frame[current.target].notna().sum())


def _utc_times(values: Any) -> Any:
    import pandas as pd

    times = pd.to_datetime(values, utc=True, errors="coerce")
    return times.reset_index(drop=True) if isinstance(times, pd.Series) else pd.Series(times)


def _iso(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def every(make_cycle: Callable[[], Cycle], interval: timedelta, stop: threading.Event,
          on_cycle: Callable[[CycleResult], None], cycles: int | None = None) -> int:
    """Run cycles every `interval` until `stop` is set (or `cycles` ran); a failed cycle is journaled and the
    next one runs. Returns the number of cycles run."""
    count = 0
    while not stop.is_set() and (cycles is None or count < cycles):
        started = time.monotonic()
        on_cycle(make_cycle().run())
        count += 1
        if cycles is not None and count >= cycles:
            break
        stop.wait(max(0.0, interval.total_seconds() - (time.monotonic() - started)))
    return count


def open_cycle(session: Session, inputs: Inputs, *, reporter: Reporter | None = None, now: datetime | None = None,
               stop: threading.Event | None = None, owner: str | None = None) -> Cycle:
    """A cycle on a fresh runner of `session` (the runner's id is the cycle's)."""
    from opsloop.runner import Runner

    return Cycle(Runner(session, reporter=reporter), inputs, now=now, stop=stop, owner=owner)
