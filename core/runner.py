"""The runner: one pass of the lifecycle, stage by stage, on the selected plugins.

preprocess -> train -> validate -> register -> deploy -> monitor ->
decide_retrain -> (retrain: preprocess, train, validate, register).

Each stage hook is called by `PluginManager.call` on the plugins the config
selects, in the configured order, so an error names the plugin that raised.
Observers hear `on_stage_start`/`_end`/`_error` around every stage.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from opsloop import data as data_mod
from opsloop import alerting, gates, lineage, partition_folds, partitions, snapshots
from opsloop.bundle import LoadedModel, StepRecord, check_bundle, read_bundle, unstructure_options, write_bundle
from opsloop.errors import BundleError, ConfigError, OpsloopError, PluginCallError, StoreError
from opsloop.store import remove_tree, strict_json
from opsloop.types import (
    Dataset,
    Deployment,
    ModelVersion,
    MonitorReport,
    Preprocessed,
    Reporter,
    RetrainDecision,
    RunContext,
    TrainedModel,
    ValidationReport,
)

if TYPE_CHECKING:
    from opsloop.gates import GateResult
    from opsloop.session import Session
    from opsloop.store import ModelStore

T = TypeVar("T")


@attrs.define
class StageRecord:
    """What one stage did, for the summary table."""

    stage: str
    plugins: list[str]
    seconds: float
    summary: str


@attrs.define
class Built:
    """A version built by preprocess, train, validate and register."""

    version: ModelVersion
    validation: list[ValidationReport]
    issues: list[str]


@attrs.define
class RunResult:
    """Everything a run produced."""

    run_id: str
    stages: list[StageRecord] = attrs.field(factory=list)
    versions: list[ModelVersion] = attrs.field(factory=list)
    validation: list[ValidationReport] = attrs.field(factory=list)
    deployments: list[Deployment] = attrs.field(factory=list)
    reports: list[MonitorReport] = attrs.field(factory=list)
    decision: RetrainDecision | None = None
    issues: list[str] = attrs.field(factory=list)
    #: Versions reused instead of registering a twin (same training key), as refs.
    unchanged: list[str] = attrs.field(factory=list)
    #: The version `production` points at after the run, and whether the run moved it.
    production: str | None = None
    promoted: bool = False
    #: The alert thresholds chosen at validation (opsloop.alerting), one per version built.
    thresholds: list[dict[str, Any]] = attrs.field(factory=list)
    #: Observers' errors that did not stop the run (PluginManager.warnings), one line each.
    warnings: list[str] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (for `opsloop run --json`)."""
        return {
            "run_id": self.run_id,
            "stages": [attrs.asdict(s) for s in self.stages],
            "versions": [{"ref": v.ref, "metrics": dict(v.metrics), "aliases": list(v.aliases),
                          "path": str(v.path), "threshold": v.threshold} for v in self.versions],
            "validation": [r.summary() for r in self.validation],
            "deployments": [attrs.asdict(d) for d in self.deployments],
            "monitor": [attrs.asdict(r) for r in self.reports],
            "decision": attrs.asdict(self.decision) if self.decision else None,
            "issues": list(self.issues),
            "unchanged": list(self.unchanged),
            "production": {"ref": self.production, "moved": self.promoted} if self.production else None,
            "thresholds": list(self.thresholds),
            "warnings": list(self.warnings),
        }


def _expect(result: Any, kind: type[T], plugin: str, hook: str) -> T:
    if not isinstance(result, kind):
        raise PluginCallError(plugin, hook, TypeError(f"returned {type(result).__name__}, expected {kind.__name__}"))
    return result


def _json_state(state: Any, plugin: str) -> dict[str, Any]:
    """The state as it will be replayed: through JSON, so fit and replay see the same."""
    try:
        return json.loads(json.dumps(dict(state), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise PluginCallError(plugin, "preprocess", TypeError(f"state is not JSON-able: {exc}")) from exc


class Runner:
    """Runs the lifecycle for a `Session`."""

    def __init__(self, session: Session, *, reporter: Reporter | None = None, promote: bool = False) -> None:
        self.session = session
        self.promote = promote
        self.config = session.config
        self.plugins = session.plugins
        self.reporter = reporter or Reporter()
        self.run = RunContext(
            run_id=uuid.uuid4().hex[:12], workdir=Path(self.config.workdir), model_name=self.config.project.name,
            seed=self.config.project.seed, config=self.config, reporter=self.reporter, trainers=self.fit_trainer,
        )
        self.result = RunResult(run_id=self.run.run_id, warnings=self.plugins.warnings)
        self._store: ModelStore | None = None
        self.gate_results: list[GateResult] = []
        #: What the last failed stage raised (`end` reports it when its caller has no exception of its own).
        self.failure: BaseException | None = None
        #: Whether `on_run_end` was announced (once per run).
        self.ended = False

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            self._store = self.session.open_store()
        return self._store

    # -- stages ------------------------------------------------------------

    def _stage(self, stage: str, plugins: list[str], work: Callable[[], T], summary: Callable[[T], str]) -> T:
        self.plugins.notify("on_stage_start", stage=stage, plugins=plugins, run=self.run)
        self.reporter.stage_started(stage, plugins)
        start = time.perf_counter()
        try:
            result = work()
        except BaseException as exc:
            self.failure = exc
            self.reporter.stage_failed(stage, exc)
            self.plugins.notify("on_stage_error", stage=stage, error=exc, run=self.run, swallow=True)
            raise
        seconds = time.perf_counter() - start
        text = summary(result)
        self.result.stages.append(StageRecord(stage=stage, plugins=plugins, seconds=seconds, summary=text))
        self.reporter.stage_finished(stage, seconds, text)
        self.plugins.notify("on_stage_end", stage=stage, result=result, seconds=seconds, run=self.run)
        return result

    def preprocess(self, dataset: Dataset, prefix: str = "") -> tuple[Dataset, list[StepRecord], list[str]]:
        """Fit every selected step in order; the states come back JSON-round-tripped."""
        names = self.config.selected("preprocess")
        if partitions.is_partitioned(dataset):
            return self._stage(f"{prefix}preprocess", names, lambda: self._fit_partitioned(dataset, names),
                               lambda r: f"{len(r[0]):,} rows x {len(r[0].feature_columns)} features in "
                               f"{r[0].partitions} partitions" + (f", {len(r[2])} data-quality issue(s)" if r[2] else ""))

        def work() -> tuple[Dataset, list[StepRecord], list[str]]:
            steps, issues, current = [], [], dataset
            for name in names:
                options = self.session.options_for("preprocess", name)
                out = _expect(self.plugins.call(name, "preprocess", dataset=current, state=None, options=options,
                                                run=self.run), Preprocessed, name, "preprocess")
                current = out.dataset
                issues.extend(f"{name}: {issue}" for issue in out.issues)
                steps.append(StepRecord(plugin=name, options=unstructure_options(options),
                                        state=_json_state(out.state, name), dist=self.plugins.known[name].label))
            return current, steps, issues

        return self._stage(f"{prefix}preprocess", names, work,
                           lambda r: f"{len(r[0]):,} rows x {len(r[0].feature_columns)} features"
                           + (f", {len(r[2])} data-quality issue(s)" if r[2] else ""))

    def _fit_partitioned(self, dataset: Any, names: list[str]) -> tuple[Any, list[StepRecord], list[str]]:
        """Each step fitted over the partitions (`fit_partitions`), then replayed on every partition with its
        windows carried across their boundaries. Lazily: every later pass recomputes the features from the
        source's partitions (compute traded for memory: no worker holds more than the partitions it works on)."""
        steps, issues, current = [], [], dataset
        for name in names:
            options = self.session.options_for("preprocess", name)
            state, found = partitions.fit_step(name, current, options, self.plugins, self.run)
            issues.extend(f"{name}: {issue}" for issue in found)
            current = partitions.replay_step(name, state, current, options, self.plugins, keep="lazy")
            current = attrs.evolve(current, rows=dataset.rows, partitions=dataset.partitions,
                                   fingerprint=dataset.fingerprint, spans=dataset.spans)
            steps.append(StepRecord(plugin=name, options=unstructure_options(options), state=state,
                                    dist=self.plugins.known[name].label))
        return current, steps, issues

    def check_partitioned(self) -> None:
        """Before any work on partitioned rows: every step can be fitted over partitions, the trainer takes
        them (ConfigError naming the step or the trainer otherwise)."""
        partitions.check_steps(self.config.selected("preprocess"), self.plugins)
        trainer = self.config.selected("train")[0]
        partitions.check_trainer(trainer, self.session.options_for("train", trainer))

    def fit(self, dataset: Dataset) -> TrainedModel:
        """Fit the selected trainer on `dataset` (what `validate` gets as `fit`)."""
        return self.fit_trainer(self.config.selected("train")[0], dataset)

    def fit_trainer(self, name: str, dataset: Dataset) -> TrainedModel:
        """Fit trainer `name` with its checked options: the selected one, or one a composite trainer uses
        (`RunContext.fit_trainer`, declared by its options' `uses_plugins`)."""
        if ("train", name) not in self.session.options:
            selected = self.config.selected("train")[0]
            raise OpsloopError(f'trainer "{name}" was not declared: a trainer fits another only if its options '
                               f'name it in uses_plugins() (the selected trainer is "{selected}")')
        model = _expect(self.plugins.call(name, "train", dataset=dataset, options=self.session.options_for("train", name),
                                          run=self.run), TrainedModel, name, "train")
        return model if model.features else attrs.evolve(model, features=tuple(dataset.feature_columns))

    def train(self, dataset: Dataset, prefix: str = "") -> TrainedModel:
        return self._stage(f"{prefix}train", self.config.selected("train"), lambda: self.fit(dataset),
                           lambda m: f"{m.flavor} {m.task} on {len(dataset):,} rows")

    def validate(self, dataset: Dataset, prefix: str = "", *, enforce_gates: bool = True) -> list[ValidationReport]:
        names = self.config.selected("validate")

        def work() -> list[ValidationReport]:
            return [_expect(self.plugins.call(n, "validate", dataset=dataset, fit=self.fit,
                                              options=self.session.options_for("validate", n), run=self.run),
                            ValidationReport, n, "validate") for n in names]

        reports = self._stage(f"{prefix}validate", names, work,
                              lambda reports: "; ".join(f"{r.method}: {_figures(r.mean)}" for r in reports) or "skipped")
        self.gate_results = self.check_gates(reports, enforce=enforce_gates)
        return reports

    def calibrate(self, reports: list[ValidationReport], features: Dataset, prefix: str = ""
                  ) -> tuple[dict[str, Any] | None, Any]:
        """The alert threshold `[alerting]` chooses on the first report's out-of-fold scores, and those rows
        (opsloop.alerting); (None, None) when there is nothing to calibrate (a regressor, no scores)."""
        if reports and partitions.is_partitioned(features):  # the scored rows' series and time came with them
            reports[0], features = partition_folds.split_oof(reports[0], features)
        rows = alerting.oof_frame(reports[0].oof, features) if reports else None
        if rows is None:
            return None, None
        section = self.config.alerting
        threshold = self._stage(f"{prefix}alerting", [section.rule], lambda: self._choose(rows, section),
                                _threshold_summary)
        if threshold is None:
            return None, None
        self.result.thresholds.append(threshold)
        return threshold, rows

    def _choose(self, rows: Any, section: alerting.AlertingSection) -> dict[str, Any] | None:
        """`alerting.choose`. The default rule, which nobody wrote in the config, gives way where it cannot
        work, with a note: to the best F1 when the data has no time column to count days with or the model's
        most confident rows (tied at its top score, on little data) already exceed the budget; to the model's
        own decision (None) when the out-of-fold rows hold no incident. A rule written in the config is
        never replaced: it fails with the reason (ConfigError)."""
        if "rule" in self.config.table.get("alerting", {}) or section.rule != "budget":
            return alerting.choose(rows, section)
        why = None
        for fallback in (section, alerting.AlertingSection(rule="f1")):
            try:
                chosen = alerting.choose(rows, fallback)
            except ConfigError as exc:
                why = why or exc.message.split(": ", 1)[-1].split("; ")[0]
                continue
            if fallback is section:
                return chosen
            self.reporter.note(f'alerting: the default rule "budget" (at most {section.aim:g} alert per series per '
                               f"day) cannot work here ({why}); the threshold of the best F1 is used instead. Set "
                               "[alerting] rule to choose (docs/alerting.md)")
            return {**chosen, "note": f"default rule budget: {why}"}
        self.reporter.note(f"alerting: no threshold can be calibrated ({why}); the model keeps its own decision "
                           "(a classifier's 0.5)")
        return None

    def check_gates(self, reports: list[ValidationReport], *, enforce: bool = True) -> list[GateResult]:
        """`[validate] gates` against the first report's means; with `enforce`, GateFailed stops the run
        before anything is registered."""
        gates_ = self.config.stages["validate"].gates
        if not gates_:
            return []
        if not reports:
            raise OpsloopError("[validate] gates are set but no validator is selected in [validate] plugins")
        results = gates.check(gates_, reports[0].mean)
        failed = [r for r in results if not r.passed]
        if failed and enforce:
            raise gates.GateFailed(failed)
        return results

    def _used(self) -> list[str]:
        """The plugins whose versions shape a version: preprocess steps, the trainer, the validators."""
        return [*self.config.selected("preprocess"), *self.session.plugins_behind("train", self.config.selected("train")[0]),
                *self.config.selected("validate")]

    def twin(self, raw: Dataset) -> ModelVersion | None:
        """The newest registered version trained on the same rows, config and versions, if any."""
        name = self.run.model_name
        if name not in {m.name for m in self.store.models()}:
            return None
        key = lineage.training_key(self.config.table, raw.fingerprint, lineage.versions(self.plugins, self._used()),
                                   self.plugins)
        for version in sorted(self.store.versions(name), key=lambda v: v.version, reverse=True):
            if lineage.key_of(version.lineage) == key:
                return version
        return None

    def register(self, model: TrainedModel, raw: Dataset, steps: list[StepRecord],
                 validation: list[ValidationReport], prefix: str = "", parent: str | None = None,
                 alias: str | None = None, training: dict[str, Any] | None = None,
                 threshold: dict[str, Any] | None = None, oof_rows: Any = None) -> ModelVersion:
        trainer = self.config.selected("train")[0]

        whole = raw
        if partitions.is_partitioned(raw):  # schema, probe rows and drift profile from a bounded sample
            raw = raw.sample(partitions.SAMPLE_ROWS, self.run.seed)
            if self.config.data.snapshot != "none":
                self.reporter.note(f'[data] snapshot = "{self.config.data.snapshot}" is not taken of partitioned '
                                   "rows: the lineage records their fingerprint over the partitions (docs/scale.md)")

        def work() -> ModelVersion:
            record = lineage.record(config=self.config, plugins=self.plugins, used=self._used(), data=raw,
                                    run_id=self.run.run_id, parent=parent, training=training)
            # every validator's report, fold by fold (the registry's metrics are the first one's means): after the
            # training key, which it must not enter; `opsloop report` draws the folds from it
            record["validation"] = strict_json([r.summary() for r in validation])
            if whole is not raw:
                record["data"].update(partitions.lineage_data(whole, len(raw)))
            snapshot = snapshots.take(self.config, self.store, raw) if whole is raw else None  # `[data] snapshot`
            if snapshot is not None:
                record["data"]["snapshot"] = snapshot
            name = self.run.model_name
            staged = self.store.staging_dir()
            try:
                manifest = write_bundle(staged, model=model, trainer=trainer, raw=raw, steps=steps,
                                        metrics=validation[0].mean if validation else {}, lineage=record,
                                        plugins=self.plugins, oof=validation[0].oof if validation else None,
                                        threshold=threshold, oof_rows=oof_rows)
                try:  # loads and scores before it becomes visible: never register what cannot load (issue 8)
                    check_bundle(staged, self.plugins, ref=f"{name} (new version)")
                except BundleError as exc:
                    raise StoreError(f"the new version of {name} (run {self.run.run_id}) was not registered: "
                                     f"{exc}") from exc
                version = self.store.register(name, staged, manifest)
            except BaseException:
                remove_tree(staged)  # a failed write, check or registration leaves nothing in staging/
                raise
            self.plugins.notify("on_model_registered", version=version, run=self.run)
            if alias:
                self.session.set_alias(self.store, version.name, alias, version.version,
                                       reason=f"registered by run {self.run.run_id}", run=self.run)
                version = self.store.get(version.name, version.version)
            return version

        version = self._stage(f"{prefix}register", [self.store.uri], work,  # never the password
                              lambda v: f"{v.ref}" + (f" @{', @'.join(v.aliases)}" if v.aliases else ""))
        self.result.versions.append(version)
        return version

    def load(self, version: ModelVersion) -> LoadedModel:
        """A registered version, verified and loaded from its bundle."""
        return read_bundle(version.path, self.plugins, ref=version.ref, digest=version.digest, run=self.run,
                           threshold=version.threshold)

    def build(self, raw: Dataset, prefix: str = "", parent: str | None = None,
              alias: str | None = None, training: dict[str, Any] | None = None) -> Built:
        """Preprocess, train, validate and register a version on raw rows, or reuse the registered
        version trained on the same rows, config and plugin versions (`unchanged: NAME:N`)."""
        twin = self.twin(raw)
        if twin is not None:
            return self.reuse(twin, prefix, alias)
        features, steps, issues = self.preprocess(raw, prefix)
        model = self.train(features, prefix)
        validation = self.validate(features, prefix)
        threshold, rows = self.calibrate(validation, features, prefix)
        version = self.register(model, raw, steps, validation, prefix, parent=parent, alias=alias,
                                training=training, threshold=threshold, oof_rows=rows)
        self.result.validation.extend(validation)
        self.result.issues.extend(issues)
        return Built(version=version, validation=validation, issues=issues)

    def reuse(self, version: ModelVersion, prefix: str = "", alias: str | None = None) -> Built:
        """A registered twin stands for the version this run would have built: nothing is trained."""
        def work() -> ModelVersion:
            if alias:
                self.session.set_alias(self.store, version.name, alias, version.version,
                                       reason=f"unchanged version reused by run {self.run.run_id}", run=self.run)
            return self.store.get(version.name, version.version)

        fresh = self._stage(f"{prefix}register", [self.store.uri], work,
                            lambda v: f"unchanged: {v.ref} (same training rows, config and plugin versions"
                                      f" as run {v.lineage.get('run_id', '?')})")
        self.result.versions.append(fresh)
        self.result.unchanged.append(fresh.ref)
        return Built(version=fresh, validation=[], issues=[])

    def place(self, version: ModelVersion) -> ModelVersion:
        """Point `production` at `version` only when nothing holds it yet or the run was asked to
        (`--promote`); return the version production serves after the run."""
        name, current = version.name, self.store.alias(version.name, "production")
        if current is not None and (current == version.version or not self.promote):
            if current != version.version:
                self.reporter.note(f"production stays on {name}:{current}; {version.ref} is registered beside it "
                                   f"(opsloop models promote {name} {version.version}, or opsloop run --promote)")
            self.result.production = f"{name}:{current}"
            return self.store.get(name, current)
        reason = (f"promoted by run {self.run.run_id} (--promote)" if current is not None
                  else f"first version in production, registered by run {self.run.run_id}")
        self.session.set_alias(self.store, name, "production", version.version, reason=reason, run=self.run)
        self._refresh(version)
        self.result.production, self.result.promoted = version.ref, True
        return self.store.get(name, version.version)

    def deploy(self, version: ModelVersion, model: LoadedModel, dataset: Dataset | None) -> list[Deployment]:
        names = self.config.selected("deploy")

        def work() -> list[Deployment]:
            return [_expect(self.plugins.call(n, "deploy", version=version, model=model, dataset=dataset,
                                              options=self.session.options_for("deploy", n), run=self.run),
                            Deployment, n, "deploy") for n in names]

        deployments = self._stage("deploy", names, work,
                                  lambda ds: "; ".join(f"{d.target}: {d.location}" for d in ds) or "no target")
        self.result.deployments.extend(deployments)
        return deployments

    def _refresh(self, version: ModelVersion) -> None:
        """Re-read a version in the result after its aliases changed."""
        fresh = self.store.get(version.name, version.version)
        self.result.versions = [fresh if v.ref == version.ref else v for v in self.result.versions]

    def monitor(self, version: ModelVersion, model: LoadedModel | None, current: Dataset,
                reference: Dataset, predictions: Any = None) -> list[MonitorReport]:
        """The monitor stage on `current`: scored by `model`, or with the `predictions` production logged
        (then `current`'s labels are already as the model learned them)."""
        names = self.config.selected("monitor")

        def work() -> list[MonitorReport]:
            judged, scored = (current, predictions) if predictions is not None else judge(model, current)
            reports = []
            for n in names:
                report = _expect(self.plugins.call(n, "monitor", version=version, current=judged,
                                                   predictions=scored, reference=reference,
                                                   options=self.session.options_for("monitor", n), run=self.run),
                                 MonitorReport, n, "monitor")
                reports.append(attrs.evolve(report, monitor=report.monitor or n, model=report.model or version.ref))
            return reports

        reports = self._stage("monitor", names, work,
                              lambda rs: "; ".join(f"{r.monitor}: {_figures(r.metrics)}" for r in rs))
        self.result.reports.extend(reports)
        if reports:
            self._publish(reports)
        return reports

    def _publish(self, reports: list[MonitorReport]) -> None:
        """Leave the reports where `opsloop serve` exports them on /metrics (a failure only warns).

        Always `.opsloop/serving/monitor-report.json` in the working directory,
        whichever store: where a server started in that directory looks by default.
        """
        from opsloop.serving.metrics import write_monitor_report
        from opsloop.serving.settings import MONITOR_FILE, SERVING_DIR

        path = Path(self.config.workdir) / SERVING_DIR / MONITOR_FILE
        try:
            write_monitor_report(path, self.run.run_id, reports)
        except OSError as exc:
            self.run.log.warning("could not write the monitor report for opsloop serve to %s: %s", path, exc)

    def decide(self, version: ModelVersion, reports: list[MonitorReport]) -> RetrainDecision:
        names = self.config.selected("retrain")

        def work() -> RetrainDecision:
            decisions = []
            for n in names:
                d = _expect(self.plugins.call(n, "decide_retrain", version=version, reports=reports,
                                              options=self.session.options_for("retrain", n), run=self.run),
                            RetrainDecision, n, "decide_retrain")
                if not d.reasons:
                    raise PluginCallError(n, "decide_retrain", ValueError("returned a decision without reasons"))
                decisions.append(attrs.evolve(d, policy=d.policy or n))
            retrain = any(d.retrain for d in decisions)
            reasons = tuple(f"{d.policy}: {r}" for d in decisions for r in d.reasons if d.retrain == retrain)
            return RetrainDecision(retrain=retrain, reasons=reasons or ("no policy selected",),
                                   policy=", ".join(names))

        decision = self._stage("decide_retrain", names, work,
                               lambda d: ("retrain" if d.retrain else "keep") + ": " + "; ".join(d.reasons))
        self.result.decision = decision
        return decision

    def end(self, command: str, result: Any, *, outcome: str | None = None, error: BaseException | None = None
            ) -> None:
        """Tell every observer that this run ended (`on_run_end`), once; later calls do nothing.

        `outcome` defaults from `error`: none is "ok", a KeyboardInterrupt "stopped", anything else "error";
        an "error" or "stopped" given without an exception reports the last failed stage's. What an observer
        raises is a warning (`PluginManager.notify` with `swallow`): never the command's exit code.
        """
        if self.ended:
            return
        self.ended = True
        if outcome in ("error", "stopped") and error is None:
            error = self.failure
        self.plugins.run_ended(command, result, self.run, error=error, outcome=outcome)

    def ending(self, command: str, work: Callable[[], T], *, report: Callable[[T], Any] | None = None,
               partial: Any = None) -> T:
        """`work()`, then the run's end (`end`) with what it returned (or `report` of it); when it raises, the
        end with `partial` (what the run did before the error) and the exception, which goes on up."""
        try:
            done = work()
        except BaseException as exc:
            self.end(command, partial, error=exc)
            raise
        self.end(command, done if report is None else report(done))
        return done

    # -- the whole loop ----------------------------------------------------

    def validate_only(self) -> tuple[list[ValidationReport], list[GateResult]]:
        """Load, preprocess and validate the training period; register nothing (`opsloop validate`).
        Observers hear the end (`on_run_end`, command "validate")."""
        return self.ending("validate", self._validate_only)

    def _validate_only(self) -> tuple[list[ValidationReport], list[GateResult]]:
        raw = self._stage("load", [self.config.data.source],
                          lambda: data_mod.load(self.config, self.session, partitioned=True), _loaded)
        if partitions.is_partitioned(raw):
            self.check_partitioned()
        train_raw, _ = data_mod.periods(raw, self.config)
        features, _, issues = self.preprocess(train_raw)
        self.result.issues.extend(issues)
        reports = self.validate(features, enforce_gates=False)
        self.calibrate(reports, features)  # (partitioned: reports[0] loses the oof rows' series and time there)  # the threshold a run would register, and what it achieves
        # nothing is registered: the out-of-fold rows go (they are as long as the data)
        reports = [attrs.evolve(r, oof=None) for r in reports]
        self.result.validation.extend(reports)
        return reports, self.gate_results

    def run_once(self) -> RunResult:
        """One pass of the lifecycle on the configured data; observers hear its end (`on_run_end`, command
        "run", with the `RunResult`: on an error, what the run did before it)."""
        return self.ending("run", self._run_once, partial=self.result)

    def _run_once(self) -> RunResult:
        # Opened first: a damaged or read-only registry fails in a second, not after training.
        self.store.check_writable()
        raw = self._stage("load", [self.config.data.source],
                          lambda: data_mod.load(self.config, self.session, partitioned=True), _loaded)
        if partitions.is_partitioned(raw):
            return self._run_partitioned(raw)
        train_raw, monitor_raw = data_mod.periods(raw, self.config)
        built = self.build(train_raw)
        version = self.place(built.version)  # what production serves: deployed and monitored below
        if not self.config.selected("deploy") and monitor_raw is None:
            return self.result
        model = self.load(version)
        self.deploy(version, model, monitor_raw)
        if monitor_raw is None or not self.config.selected("monitor"):
            self.reporter.note("no monitoring period or monitor selected: stopping after deploy")
            return self.result
        reports = self.monitor(version, model, monitor_raw, train_raw)
        decision = self.decide(version, reports)
        if decision.retrain and self.config.stages["retrain"].act:
            monitored, name = monitor_raw, f"{raw.name} [train + monitor]"
            target = monitor_raw.target
            if target and target in monitor_raw.frame.columns and self.config.data.unlabelled != "keep":
                waiting = monitor_raw.frame[target].isna().to_numpy()
                if waiting.any():  # labels not arrived yet: neither normal rows nor rows to refuse the retrain for
                    monitored = monitor_raw.derive(monitor_raw.frame[~waiting].reset_index(drop=True))
                    name = f"{raw.name} [train + labelled monitor rows]"
                    self.reporter.note(f"retrain: {int(waiting.sum()):,} monitored row(s) without a label yet are "
                                       "left out of the retraining data")
            newer = train_raw.derive(_concat(train_raw, monitored), name=name)
            self.build(newer, prefix="retrain.", parent=version.ref, alias="candidate")
        return self.result

    def _run_partitioned(self, raw: Any) -> RunResult:
        """`run_once` on partitioned rows (docs/scale.md): preprocessing, training and validation over the
        partitions; deploy and monitor on a bounded sample of the monitoring period scored by production."""
        self.check_partitioned()  # before any work
        train_raw, monitor_raw = data_mod.periods(raw, self.config)
        built = self.build(train_raw)
        version = self.place(built.version)
        if not self.config.selected("deploy") and monitor_raw is None:
            return self.result
        model = self.load(version)
        sample = None
        if monitor_raw is not None:
            sample = monitor_raw.sample(partitions.SAMPLE_ROWS, self.run.seed)
            if len(sample) < (monitor_raw.rows or 0):
                self.reporter.note(f"deploy and monitor: a sample of {len(sample):,} of the {monitor_raw.rows:,} "
                                   "rows of the partitioned monitoring period (docs/scale.md); score all of them "
                                   "on the cluster with the dask-batch target")
        self.deploy(version, model, sample)
        if sample is None or not self.config.selected("monitor"):
            self.reporter.note("no monitoring period or monitor selected: stopping after deploy")
            return self.result
        reference = train_raw.sample(partitions.SAMPLE_ROWS, self.run.seed)
        reports = self.monitor(version, model, sample, reference)
        decision = self.decide(version, reports)
        if decision.retrain and self.config.stages["retrain"].act:
            self.reporter.note("retrain: not acted on with a partitioned source (the training and monitoring "
                               "periods are not joined in one process); run again with [data] train covering "
                               "the newer rows")
        return self.result

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def judge(model: LoadedModel, current: Dataset) -> tuple[Dataset, Any]:
    """`current` scored by `model`, with its labels as the model learned them (label-horizon's "incident
    within N steps"), and the predictions."""
    features, predictions = model.score(current.frame)
    target = current.target
    if target and target in current.frame.columns and target in features.frame.columns:
        current = current.derive(current.frame.assign(**{target: features.frame[target].to_numpy()}))
    return current, predictions


def _concat(a: Dataset, b: Dataset) -> Any:
    import pandas as pd

    frame = pd.concat([a.frame, b.frame], ignore_index=True)
    if a.time:
        frame = frame.sort_values([c for c in (a.series, a.time) if c], kind="stable", ignore_index=True)
    return frame


def _loaded(data: Any) -> str:
    if partitions.is_partitioned(data):
        return f"partitioned rows from {data.name} (engine: {data.engine})"
    return f"{len(data):,} rows from {data.name}"


def _threshold_summary(threshold: dict[str, Any] | None) -> str:
    """`threshold 0.7312 (precision 0.9): precision 0.912, recall 0.451, 12/20 incidents caught, ...`."""
    if threshold is None:
        return "no threshold: the model's own decision"
    got = threshold.get("achieved") or {}
    parts = [f"{k} {got[k]:.3f}" for k in ("precision", "recall", "f1") if got.get(k) is not None]
    if got.get("incidents"):
        parts.append(f"{got['incidents_caught']:.0f}/{got['incidents']:.0f} incidents caught")
    if got.get("alerts_per_day") is not None:
        parts.append(f"{got['alerts_per_day']:.2f} alerts per series-day")
    return f"threshold {alerting.describe(threshold)}: " + ", ".join(parts) + " (out-of-fold)"


def _figures(metrics: Any) -> str:
    """The headline figures of a report for a stage's one-line summary: the well-known ones, else the report's
    own first plain figures (a third-party monitor names its figures as it likes)."""
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "rmse", "drift_max_psi", "estimated_f1")
    keys = [k for k in names if k in metrics] or [k for k, v in metrics.items()
                                                  if "[" not in k and k != "rows" and isinstance(v, (int, float))]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys[:5]) or "-"

