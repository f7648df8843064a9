"""The `mlflow-tracking` observer: each opsloop run logged as an MLflow run, versions and aliases mirrored.

Enabled with `[plugins] enable = ["mlflow-tracking"]`; options in
`[plugins.mlflow-tracking]` (`Options`). One MLflow run per opsloop run id,
in the experiment named after the model:

- the run's first stage creates it (and so checks that the tracking server
  answers and takes writes, before any data is trained on): tags, the config
  as parameters and as the artifact `opsloop/config.json`;
- every stage that ends logs what it produced (`opsloop_mlflow._records`):
  the preprocess steps' options, the model's hyper-parameters, validation
  figures (folds as steps), the alert threshold, monitor figures (windows as
  steps), the gate's and the retrain policy's verdicts, each stage's seconds;
- the run is RUNNING until opsloop says it ended (`on_run_end`): then
  FINISHED, FAILED, or KILLED (Ctrl-C, a loop cycle stopped on request), with
  the tags `opsloop.outcome` and `opsloop.command`; a failed stage marks it
  FAILED (KILLED on Ctrl-C) at once, for the commands that do not announce
  their end;
- `opsloop tune`: the search is a run, and each trial's run is nested under
  it (the tag `mlflow.parentRunId`), as MLflow's UI groups and compares them;
- before the `register` stage writes anything to opsloop's store, the
  registry is written to (the registered model and its tag
  `opsloop.last_run`), so a registry that refuses writes stops the run
  before a version exists; `on_model_registered` then logs the version's
  lineage (tags, `versions/<N>/lineage.json`) and its bundle
  (`versions/<N>/bundle/`), and creates the MLflow model version whose source
  is that bundle, tagged with opsloop's version number, digest and store;
- `on_alias_changed` (run, deploy, `opsloop models promote`/`rollback`)
  moves the MLflow alias of the same name to the MLflow version mirroring
  the opsloop version, or removes it when no MLflow version mirrors it.

A failed MLflow call is one line naming the plugin, the address and what was
being done (`opsloop_mlflow._client`).
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import StoreError, hookimpl

from opsloop_mlflow import _records as records
from opsloop_mlflow._client import Connection

if TYPE_CHECKING:
    from opsloop.store import AliasChange
    from opsloop.types import ModelVersion, RunContext

log = logging.getLogger("opsloop.mlflow")

#: MLflow's batch limits: parameters or tags per request, metrics per request.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
#: Seconds `create_model_version` waits for a registry that copies asynchronously to say READY.
AWAIT_VERSION = 60


def _positive_or_none(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    least = 0 if attribute.name == "retries" else 1
    if value is not None and value < least:
        raise ValueError(f"expected a whole number >= {least}, got {value}", attribute)  # the key, for the error


def _string_table(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f'expected a table of strings (tags = {{ team = "sre" }}), got {value!r}', attribute)


#: An option that does not shape the model (docs/writing-plugins.md, "Options that do not shape the model").
NOT_SHAPING = {"shapes_model": False}


@attrs.frozen(kw_only=True)
class Options:
    """`[plugins.mlflow-tracking]`.

    Attributes:
        tracking_uri: Any URI MLflow accepts: `http://host:5000`,
            `https://...`, `sqlite:///path/mlflow.db`, `file:///path/mlruns`,
            `databricks`. None: MLFLOW_TRACKING_URI, else MLflow's default.
        registry_uri: Where the model registry is, when not at
            `tracking_uri`.
        experiment: The MLflow experiment runs go to; None: the model's name
            (`project.name`).
        registry: Mirror versions and aliases into MLflow's model registry.
        registered_model: The registered model's name there; None: the
            opsloop model's name.
        log_bundle: Upload each registered version's bundle as an artifact
            (the MLflow version's source); off, the source is the version's
            lineage artifact folder, and the bundle stays in opsloop's store.
        run_name: The MLflow run's name; None: `<model>-<run id>`.
        tags: Extra tags on every run and model version (team, cost centre...):
            a table of strings.
        timeout: Seconds to wait for one HTTP answer; None:
            MLFLOW_HTTP_REQUEST_TIMEOUT, else 10.
        retries: Retries of a failed HTTP request; None:
            MLFLOW_HTTP_REQUEST_MAX_RETRIES, else 2.
        critical: An MLflow failure ends the command (opsloop ends an
            observer's run only when its options say critical), so that no
            run and no version is in opsloop without its MLflow record.
            False: the failure is a warning and the run goes on, without
            MLflow's record of it.
    """

    # None of these shapes a model: opsloop's lineage leaves them out of the training key, so pointing the
    # observer elsewhere reuses a version trained on the same rows and config.
    tracking_uri: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    registry_uri: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    experiment: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    registry: bool = attrs.field(default=True, metadata=NOT_SHAPING)
    registered_model: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    log_bundle: bool = attrs.field(default=True, metadata=NOT_SHAPING)
    run_name: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    # `Any` for cattrs, so that a wrong value reaches the validator, which says what is expected.
    tags: Any = attrs.field(factory=dict, validator=_string_table, metadata=NOT_SHAPING)
    timeout: int | None = attrs.field(default=None, validator=_positive_or_none, metadata=NOT_SHAPING)
    retries: int | None = attrs.field(default=None, validator=_positive_or_none, metadata=NOT_SHAPING)
    critical: bool = attrs.field(default=True, metadata=NOT_SHAPING)


@hookimpl
def plugin_options() -> type:
    return Options


# ---------------------------------------------------------------------------
# One MLflow run per opsloop run
# ---------------------------------------------------------------------------


@attrs.define
class Tracked:
    """The MLflow run logging one opsloop run, and what was logged to it so far."""

    connection: Connection
    options: Options
    model: str
    run_id: str
    artifact_uri: str
    status: str = "RUNNING"
    params: dict[str, str] = attrs.field(factory=dict)
    #: Monitor stages seen so far: the step of the next window's figures.
    windows: int = 0
    #: opsloop's store (its address, no password), from the `register` stage's announcement.
    store: str = ""
    #: Saying why the run failed: retried at least once (`Connection.talking`).
    failing: bool = False
    #: The tag `opsloop.error` was set (`fail`: a stage's error, or MLflow's own, named with its stage).
    error_tagged: bool = False

    def call(self, doing: str, *, registry: bool = False) -> Any:
        return self.connection.talking(doing, registry=registry, retry=self.failing)

    def log_params(self, params: dict[str, str], run: RunContext) -> None:
        """New parameters only: MLflow refuses to change one, so a value seen before is not sent again."""
        from mlflow.entities import Param

        fresh = {}
        for name, value in params.items():
            if name not in self.params:
                fresh[name] = value
            elif self.params[name] != value:
                run.log.warning("mlflow-tracking: parameter %s was %r, now %r; MLflow keeps the first",
                                name, self.params[name], value)
        items = [Param(k, v) for k, v in fresh.items()]
        with self.call("logging parameters") as client:
            for start in range(0, len(items), PARAMS_PER_BATCH):
                client.log_batch(self.run_id, params=items[start:start + PARAMS_PER_BATCH])
        self.params.update(fresh)

    def log_metrics(self, metrics: list[records.Metric]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        latest = {(k, step): v for k, v, step in metrics}  # one value per key and step: the last given
        items = [Metric(k, v, now, step) for (k, step), v in latest.items()]
        with self.call("logging metrics") as client:
            for start in range(0, len(items), METRICS_PER_BATCH):
                client.log_batch(self.run_id, metrics=items[start:start + METRICS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, records.text(v, records.MAX_TAG)) for k, v in tags.items()]
        with self.call("tagging the run") as client:
            for start in range(0, len(items), PARAMS_PER_BATCH):
                client.log_batch(self.run_id, tags=items[start:start + PARAMS_PER_BATCH])

    def log_json(self, document: Any, artifact_file: str) -> None:
        with self.call(f"writing the artifact {artifact_file}") as client:
            client.log_text(self.run_id, json.dumps(document, indent=2, sort_keys=True, default=str), artifact_file)

    def set_status(self, status: str) -> None:
        """RUNNING, FINISHED, FAILED or KILLED (end time set by MLflow for the last three)."""
        if status == self.status:
            return
        with self.call(f"marking the run {status}") as client:
            if status == "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
            else:
                client.set_terminated(self.run_id, status=status)
        self.status = status

    def fail(self, status: str = "FAILED", error: object = None) -> None:
        """Mark the run failed (and why, in the tag `opsloop.error`), as far as the server lets us: the error
        being reported matters more."""
        self.failing = True
        try:
            if error is not None:
                self.set_tags({"opsloop.error": str(error)})
                self.error_tagged = True
        except StoreError as exc:
            log.warning("%s", exc)
        try:
            self.set_status(status)
        except StoreError as exc:
            log.warning("%s", exc)


#: The MLflow run of each opsloop run in progress in this process, by opsloop run id, forgotten when the run
#: ends (`on_run_end`); the oldest are forgotten past `KEEP_RUNS` (a command that does not announce its end).
_RUNS: dict[str, Tracked] = {}
KEEP_RUNS = 64


def _options(options: Options | None) -> Options:
    return options if options is not None else Options()


def _begin(run: RunContext, options: Options) -> Tracked:
    """Create the MLflow run of an opsloop run: the first write, and so the check that MLflow is there."""
    connection = Connection(options.tracking_uri, options.registry_uri, timeout=options.timeout,
                            retries=options.retries)
    experiment = options.experiment or run.model_name
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    tags = {"opsloop.run_id": run.run_id, "opsloop.model": run.model_name, "mlflow.user": user,
            "mlflow.source.name": "opsloop", "mlflow.source.type": "JOB", **options.tags}
    with connection.talking(f"finding or creating the experiment {experiment!r}") as client:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    if run.parent:
        tags["opsloop.parent_run_id"] = run.parent
        parent = _parent_run(connection, experiment_id, run.parent)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
    with connection.talking(f"creating a run in the experiment {experiment!r}") as client:
        created = client.create_run(experiment_id, tags=tags,
                                    run_name=options.run_name or f"{run.model_name}-{run.run_id}")
    tracked = Tracked(connection=connection, options=options, model=options.registered_model or run.model_name,
                      run_id=created.info.run_id, artifact_uri=created.info.artifact_uri)
    try:
        tracked.log_params(records.config_params(run.config.table), run)
        # An artifact written now, before anything is trained: a server that stores no artifacts says so here.
        tracked.log_json(records.scrub(run.config.table), "opsloop/config.json")
    except StoreError as exc:
        tracked.fail(error=exc)
        raise
    run.reporter.note(f"mlflow-tracking: run {tracked.run_id} in experiment {experiment!r} at {connection.address}")
    return tracked


def _parent_run(connection: Connection, experiment_id: str, parent: str) -> str | None:
    """The MLflow run id of opsloop run `parent` (a tune trial's search): this process's, else the newest run
    of the experiment tagged with it; None when MLflow has none (the trial is then not nested)."""
    tracked = _RUNS.get(parent)
    if tracked is not None:
        return tracked.run_id
    with connection.talking(f"finding the MLflow run of opsloop run {parent}") as client:
        found = client.search_runs([experiment_id], filter_string=f"tags.`opsloop.run_id` = '{_quoted(parent)}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
    if not found:
        log.warning("mlflow-tracking: no MLflow run logs opsloop run %s; its trial is not nested under it", parent)
        return None
    return found[0].info.run_id


def _tracked(run: RunContext | None, options: Options | None) -> Tracked | None:
    if run is None:
        return None
    tracked = _RUNS.get(run.run_id)
    if tracked is None:
        tracked = _RUNS[run.run_id] = _begin(run, _options(options))
        while len(_RUNS) > KEEP_RUNS:
            del _RUNS[next(iter(_RUNS))]
    return tracked


# ---------------------------------------------------------------------------
# Observer hooks
# ---------------------------------------------------------------------------


@hookimpl
def on_stage_start(stage: str, plugins: list[str], run: RunContext, options: Options | None) -> None:
    tracked = _tracked(run, options)
    if tracked is None:
        return
    try:
        tracked.set_status("RUNNING")
        if stage.rsplit(".", 1)[-1] == "register":
            tracked.store = _store_address(plugins[0], run.workdir) if plugins else ""
            if tracked.options.registry:
                _claim_registered_model(tracked, run)
    except StoreError as exc:
        tracked.fail(error=f"{stage}: {exc}")
        raise


def _store_address(uri: str, workdir: Path) -> str:
    """opsloop's store as the runner announces it (never with a password), a relative folder made absolute."""
    if re.match(r"^[A-Za-z][\w+.-]*:", uri):
        return uri
    return str((Path(workdir) / uri).resolve())


def _claim_registered_model(tracked: Tracked, run: RunContext) -> None:
    """Write to the registry before opsloop's store registers anything: a refusal stops the run here, with
    nothing half-registered (issue 10, item 7)."""
    from mlflow.exceptions import MlflowException

    name = tracked.model
    with tracked.call(f"creating the registered model {name!r}", registry=True) as client:
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name, tags=dict(tracked.options.tags),
                                           description=f"Mirrored from opsloop's registry ({tracked.store}).")
    with tracked.call(f"tagging the registered model {name!r}", registry=True) as client:
        client.set_registered_model_tag(name, "opsloop.last_run", run.run_id)


@hookimpl
def on_stage_end(stage: str, result: Any, seconds: float, run: RunContext, options: Options | None) -> None:
    tracked = _tracked(run, options)
    if tracked is None:
        return
    try:
        _log_result(tracked, stage, result, run)
        tracked.log_metrics([(records.key("seconds", stage), float(seconds), 0)])
    except StoreError as exc:
        tracked.fail(error=f"{stage}: {exc}")
        raise


def _log_result(tracked: Tracked, stage: str, result: Any, run: RunContext) -> None:
    """What a stage produced, by the stage's name (`retrain.validate` is a `validate`)."""
    kind = stage.rsplit(".", 1)[-1]
    prefix = stage[: -len(kind)]
    if kind == "load":
        tracked.set_tags({"opsloop.data.source": result.name, "opsloop.data.fingerprint": result.fingerprint})
        tracked.log_metrics([(records.key(stage, "rows"), float(len(result)), 0)])
    elif kind == "preprocess":
        dataset, steps, issues = result
        tracked.log_params(records.step_params(stage, steps), run)
        tracked.log_metrics([(records.key(stage, "rows"), float(len(dataset)), 0),
                             (records.key(stage, "features"), float(len(dataset.feature_columns)), 0),
                             (records.key(stage, "issues"), float(len(issues)), 0)])
    elif kind == "train":
        tracked.log_params({**records.flatten(f"{prefix}model", dict(result.params)),
                            f"{prefix}model.flavor": result.flavor, f"{prefix}model.task": result.task,
                            f"{prefix}model.features": records.text(list(result.features))}, run)
    elif kind == "validate":
        tracked.log_metrics(records.validation(stage, run.config.selected("validate"), result))
    elif kind == "alerting" and result:
        tracked.log_metrics(records.figures(stage, {"threshold": result.get("value"), **{
            k: v for k, v in result.items() if k not in ("value", "rule")}}))
    elif kind == "register":
        tracked.set_tags({"opsloop.version": result.ref, "opsloop.digest": result.digest})
    elif kind == "deploy":
        tracked.set_tags({records.key("opsloop.deploy", d.target): d.location for d in result})
    elif kind == "monitor":
        tracked.log_metrics(records.monitoring(stage, result, tracked.windows))
        tracked.log_json([attrs.asdict(r) for r in result], f"opsloop/monitor/{tracked.windows}.json")
        tracked.windows += 1
    elif kind == "decide_retrain":
        tracked.log_metrics([(records.key(stage, "retrain"), float(result.retrain), max(tracked.windows - 1, 0))])
        tracked.set_tags({"opsloop.decision": ("retrain: " if result.retrain else "keep: ") + "; ".join(result.reasons)})
    elif kind == "gate":
        tracked.log_metrics(records.gating(stage, result))


@hookimpl
def on_stage_error(stage: str, error: BaseException, run: RunContext, options: Options | None) -> None:
    tracked = _RUNS.get(run.run_id) if run is not None else None
    if tracked is None:
        return
    tracked.fail("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", f"{stage}: {error}")


#: The MLflow status of each outcome `on_run_end` gives (a pruned tune trial is not a failure).
STATUS = {"ok": "FINISHED", "pruned": "FINISHED", "stopped": "KILLED", "error": "FAILED"}


@hookimpl
def on_run_end(command: str, outcome: str, result: Any, error: BaseException | None, run: RunContext,
               options: Options | None) -> None:
    """The run's status from its outcome, the tags `opsloop.outcome` and `opsloop.command` (and
    `opsloop.error`); for a search, its best figure. A run that never reached a stage has no MLflow run."""
    tracked = _RUNS.pop(run.run_id, None) if run is not None else None
    if tracked is None:
        return
    tags = {"opsloop.outcome": outcome, "opsloop.command": command}
    if error is not None and not tracked.error_tagged:  # a stage's error is tagged already, with the stage
        tags["opsloop.error"] = str(error)
    if command == "tune" and result is not None:
        tags.update({"opsloop.tune.study": result.search.study, "opsloop.tune.best_trial": str(
            result.study.best_trial.number)})
        tracked.log_metrics([(records.key("tune", f"best.{result.search.metric}"), float(result.study.best_value),
                              0)])
    tracked.set_tags(tags)
    if error is None and tracked.error_tagged:  # a pruned trial: its validate stage raised, the run did not fail
        with tracked.call("removing the tag opsloop.error") as client:
            client.delete_tag(tracked.run_id, "opsloop.error")
    tracked.set_status(STATUS.get(outcome, "FAILED"))


@hookimpl
def on_model_registered(version: ModelVersion, run: RunContext, options: Options | None) -> None:
    tracked = _tracked(run, options)
    if tracked is None:
        return
    try:
        _log_version(tracked, version)
        if tracked.options.registry:
            _mirror_version(tracked, version)
    except StoreError as exc:
        tracked.fail(error=exc)
        raise StoreError(f"{exc} ({version.ref} is registered in opsloop's store; MLflow's run "
                         f"{tracked.run_id} is marked FAILED)") from exc


def _log_version(tracked: Tracked, version: ModelVersion) -> None:
    base = f"versions/{version.version}"
    tracked.set_tags(records.lineage_tags(version))
    tracked.log_json(records.lineage_document(version), f"{base}/lineage.json")
    if tracked.options.log_bundle:
        with tracked.call(f"uploading the bundle of {version.ref}") as client:
            client.log_artifacts(tracked.run_id, str(version.path), f"{base}/bundle")


def _mirror_version(tracked: Tracked, version: ModelVersion) -> None:
    """An MLflow model version for the opsloop version, its source the bundle logged with the run."""
    base = f"{tracked.artifact_uri.rstrip('/')}/versions/{version.version}"
    source = f"{base}/bundle" if tracked.options.log_bundle else base
    tags = {**records.lineage_tags(version), "opsloop.version": str(version.version), "opsloop.ref": version.ref,
            "opsloop.store": tracked.store, **tracked.options.tags}
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(version.metrics.items()) if isinstance(v, int | float))
    with tracked.call(f"creating a version of the registered model {tracked.model!r}", registry=True) as client:
        client.create_model_version(tracked.model, source=source, run_id=tracked.run_id, tags=tags,
                                    description=f"opsloop {version.ref} ({version.flavor} {version.task})"
                                                + (f": {metrics}" if metrics else ""),
                                    await_creation_for=AWAIT_VERSION)


@hookimpl
def on_alias_changed(change: AliasChange, run: RunContext | None, options: Options | None) -> None:
    options = _options(options)
    if not options.registry:
        return
    tracked = _tracked(run, options)
    connection = tracked.connection if tracked is not None else Connection(
        options.tracking_uri, options.registry_uri, timeout=options.timeout, retries=options.retries)
    name = options.registered_model or change.name
    moved = f"opsloop's {change.name}@{change.alias} points at {change.to_version}; MLflow's alias was not moved"
    try:
        _move_alias(connection, name, change)
    except StoreError as exc:
        if tracked is not None:
            tracked.fail(error=exc)
        raise StoreError(f"{exc} ({moved})") from exc


def _move_alias(connection: Connection, name: str, change: AliasChange) -> None:
    """Point MLflow's alias at the MLflow version tagged with the opsloop version's number, or remove it
    when none is (a version registered before the mirror was on): never leave it on the wrong version."""
    from mlflow.exceptions import MlflowException

    with connection.talking(f"finding the version of {name!r} that mirrors {change.name}:{change.to_version}",
                            registry=True) as client:
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                log.warning("mlflow-tracking: no registered model %r in MLflow; alias %s not mirrored", name,
                            change.alias)
                return
            raise
        found = client.search_model_versions(
            f"name = '{_quoted(name)}' and tags.`opsloop.version` = '{change.to_version}'")
    if found:
        target = max(found, key=lambda v: int(v.version))
        with connection.talking(f"setting the alias {change.alias!r} of {name!r}", registry=True) as client:
            client.set_registered_model_alias(name, change.alias, target.version)
            if change.threshold is not None:
                client.set_model_version_tag(name, target.version, "opsloop.threshold",
                                             records.text(change.threshold.get("value")))
        return
    log.warning("mlflow-tracking: no MLflow version of %r mirrors %s:%s; its alias %s is removed in MLflow",
                name, change.name, change.to_version, change.alias)
    if change.alias in (registered.aliases or {}):
        with connection.talking(f"removing the alias {change.alias!r} of {name!r}", registry=True) as client:
            client.delete_registered_model_alias(name, change.alias)


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")

