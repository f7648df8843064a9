"""`opsloop tune`: hyperparameter search with Optuna, scored by the configured validator (issue 14).

The search space (`Dimension`, what `[tune.params]` and `tune_space` become,
and how a trial's values are written into the config) is
`opsloop.tuning_space`; this module plans, runs, stores and refits.

A trial is the config with the trial's values written into the options of
the trainer (`[train.<trainer>]`, or inside its `params` table for the
names the trainer passes through to its library) and of preprocess steps
(`[preprocess.<step>]`), checked as any config is, then preprocessed and
validated exactly as `opsloop validate` does: time-ordered folds by default,
never a random split on telemetry. The trial's value is the first
validator's mean of `[tune] metric`. Validators report each fold as it is
scored (`RunContext.fold_scored`); the running mean is reported to Optuna,
whose pruner ends a trial that is already worse than the median of the
earlier trials at the same fold.

The study lives beside the registry (`ModelStore.tuning_storage`: a SQLite
file next to the local store's registry.db, a schema of the PostgreSQL
store's database), under a name derived from the search itself (data,
config, space, metric), so that running the same search again resumes it and
a changed search starts a new study. At the end the best configuration is
fitted again (the "refit") and its figure compared with the best trial's;
`register=True` registers it as a version whose lineage names the study and
the trial.

Optuna is imported here only (`pip install 'opsloop[tune]'`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.config import Config
from opsloop.errors import ConfigError, OpsloopError, PluginCallError, closest
from opsloop.tuning_space import Dimension, apply, check_values, preprocess_dimensions, trainer_dimensions
from opsloop.types import Reporter

if TYPE_CHECKING:
    import optuna

    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.types import Dataset, ModelVersion

NEEDS_OPTUNA = "opsloop tune needs Optuna: pip install 'opsloop[tune]'"
#: Figures where lower is better; every other one is maximized.
MINIMIZE = ("rmse", "mae")
#: Validators whose figures are `opsloop.metrics`' (a third-party one's are known after its first trial).
BUILT_IN_VALIDATORS = ("kfold", "holdout")
#: Trials when neither `trials` nor `timeout` is set.
DEFAULT_TRIALS = 20
#: How close the refit's figure must be to the best trial's to count as reproduced.
REFIT_TOLERANCE = 1e-9


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Search:
    """A checked search: what to vary, by which figure, how long, where the study is kept."""

    config: Config
    trainers: tuple[str, ...]
    dimensions: tuple[Dimension, ...]
    metric: str
    direction: str
    trials: int | None
    timeout: float | None
    jobs: int
    study: str
    storage: str | None

    def dims_of(self, trainer: str) -> list[Dimension]:
        return [d for d in self.dimensions if d.trainer in (None, trainer)]

    @property
    def space(self) -> dict[str, Any]:
        """The space as JSON, stored with the study and hashed into its default name."""
        return {"trainers": list(self.trainers), "metric": self.metric,
                "dimensions": {d.name: {"plugin": d.plugin, "key": d.key, **{k: v for k, v in
                               attrs.asdict(d.param).items() if v not in (None, False)}} for d in self.dimensions}}


def default_metric(train: Dataset) -> str:
    """The validator's primary figure for this target: PR AUC for a binary one (incidents are rare, and
    ROC AUC flatters a detector on rare positives), macro F1 for several classes, RMSE for a number."""
    from opsloop.errors import DataError

    if not train.target or train.target not in train.frame.columns:
        raise DataError("opsloop tune scores trials with the validator, which needs labels: set [data] target")
    from sklearn.utils.multiclass import type_of_target

    kind = type_of_target(train.frame[train.target].dropna().to_numpy())
    return {"binary": "pr_auc", "multiclass": "f1"}.get(kind, "rmse")


def plan(session: Session, train: Dataset, *, trials: int | None = None, timeout: str | None = None,
         jobs: int | None = None, store_url: str | None = None) -> Search:
    """Check `[tune]` (and command-line overrides) against the plugins and the data; nothing runs yet."""
    from opsloop.monitoring import parse_duration
    from opsloop.session import Session as _Session

    config = session.config
    section = config.tune
    source = config.source
    if not config.selected("validate"):
        raise ConfigError("opsloop tune scores each trial with the validator: select one in [validate] plugins "
                          "(kfold, time-ordered on telemetry)", section="validate", key="plugins", source=source)
    selected = config.selected("train")[0]
    trainers = tuple(section.trainers) or (selected,)
    params = dict(section.params)
    dims: list[Dimension] = []
    for trainer in trainers:
        if len(trainers) == 1:
            specs, prefix, where = params, "", "tune.params"
        else:
            specs = params.get(trainer, {})
            prefix, where = f"{trainer}/", f"tune.params.{trainer}"
            if not isinstance(specs, Mapping):
                raise ConfigError(f"with [tune] trainers, [tune.params] holds one table per trainer; {trainer!r} "
                                  f"is {specs!r}", section="tune.params", key=trainer, source=source)
        if trainer == selected:
            trainer_session = session
        else:
            table = copy.deepcopy(config.table)
            table.setdefault("train", {})["plugins"] = [trainer]
            try:
                trainer_session = _Session.open(Config.from_table(table, path=config.path, workdir=config.workdir),
                                                session.plugins, sections=("train",))
            except ConfigError as exc:
                raise ConfigError(f"trainer {trainer!r}: {exc.message}", section="tune", key="trainers",
                                  source=source, suggestion=exc.suggestion) from None
        dims += trainer_dimensions(trainer_session, trainer, specs, prefix=prefix, where=where)
    if len(trainers) > 1:
        extra = [k for k in params if k not in trainers]
        if extra:
            raise ConfigError(f"with [tune] trainers, [tune.params] holds one table per trainer "
                              f"({', '.join(trainers)}); {extra[0]!r} is none of them", section="tune.params",
                              key=extra[0], source=source, suggestion=closest(extra[0], trainers))
    dims += preprocess_dimensions(session, section.preprocess)
    check_values(session, dims)
    metric = section.metric or default_metric(train)
    if config.selected("validate")[0] in BUILT_IN_VALIDATORS:  # their figures are known: say it before any trial
        from opsloop.metrics import CLASSIFICATION, REGRESSION

        if metric not in (*CLASSIFICATION, *REGRESSION):
            raise ConfigError(f"metric {metric!r} is not among the figures of validator "
                              f"{config.selected('validate')[0]!r} ({', '.join((*CLASSIFICATION, *REGRESSION))})",
                              section="tune", key="metric", source=source,
                              suggestion=closest(metric, (*CLASSIFICATION, *REGRESSION)))
    text = timeout or section.timeout
    seconds = parse_duration(text, "[tune] timeout").total_seconds() if text else None
    budget = trials if trials is not None else section.trials
    if budget is None and seconds is None:
        budget = DEFAULT_TRIALS
    workers = jobs if jobs is not None else section.jobs
    if workers == -1:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"jobs must be at least 1, or -1 for one per core, got {workers}", section="tune",
                          key="jobs", source=source)
    search = Search(config=config, trainers=trainers, dimensions=tuple(dims), metric=metric,
                    direction="minimize" if metric in MINIMIZE else "maximize", trials=budget, timeout=seconds,
                    jobs=workers, study="", storage=store_url)
    name = section.study or f"{config.project.name}-{_digest(search, train)}"
    return attrs.evolve(search, study=name)


def _digest(search: Search, train: Dataset) -> str:
    """What makes two searches the same study: the rows, the config that shapes a model, the space."""
    from opsloop import lineage

    table = {k: v for k, v in search.config.table.items() if k in lineage.TRAINING_SECTIONS}
    blob = json.dumps({"data": train.fingerprint, "config": table, "space": search.space,
                       "seed": search.config.project.seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise OpsloopError(NEEDS_OPTUNA) from None
    import warnings

    # heartbeats (stale trials of a killed search marked failed) and TPE's `group` are "experimental"
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_study(search: Search, *, load_only: bool = False) -> optuna.Study:
    """The study, created or loaded from the registry's tuning storage (in memory when there is none)."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported by `tune` itself
    storage: Any = None
    if search.storage:
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if search.storage.startswith("sqlite") else {}
        try:
            storage = optuna.storages.RDBStorage(search.storage, engine_kwargs=kwargs, heartbeat_interval=60,
                                                 grace_period=180)
        except Exception as exc:  # SQLAlchemy's errors, a refused connection: one line naming the place
            raise OpsloopError(f"cannot open the tuning storage beside the registry ({_safe_url(search.storage)}): "
                               f"{_one_line(exc)}") from None
    config = search.config
    if load_only:
        try:
            return optuna.load_study(study_name=search.study, storage=storage)
        except KeyError:
            raise OpsloopError(f"no study {search.study!r} is stored beside the registry: run `opsloop tune` "
                               "first (with the same config, which names the study)") from None
    sampler = (optuna.samplers.TPESampler(seed=config.project.seed, multivariate=True, group=True,
                                          constant_liar=search.jobs > 1)
               if config.tune.sampler == "tpe" else optuna.samplers.RandomSampler(seed=config.project.seed))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
              if config.tune.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=search.study, storage=storage, direction=search.direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", search.space)
    elif stored != json.loads(json.dumps(search.space)):
        raise ConfigError(f"study {search.study!r} holds trials of another search space; name a new study or "
                          "remove [tune] study to let the search name its own", section="tune", key="study",
                          source=config.source)
    return study


def _safe_url(url: str) -> str:
    """A storage URL for messages: never a password."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


class Objective:
    """One trial: the trial's config, preprocessed (cached per preprocess options) and validated."""

    def __init__(self, search: Search, session: Session, train: Dataset, parent: str | None = None) -> None:
        self.search, self.session, self.train = search, session, train
        #: The search's run id: each trial's run names it as `RunContext.parent`.
        self.parent = parent
        self.features: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.building: dict[str, threading.Lock] = {}
        self.missing_metric: str | None = None

    def config_for(self, trainer: str, values: Mapping[Dimension, Any]) -> Config:
        base = self.search.config
        table = apply(base.table, trainer, values)
        return Config.from_table(table, path=base.path, workdir=base.workdir)

    def runner_for(self, config: Config) -> Runner:
        from opsloop.runner import Runner
        from opsloop.session import Session

        session = Session.open(config, self.session.plugins, sections=("preprocess", "train", "validate"))
        runner = Runner(session, reporter=Reporter())
        runner.run = attrs.evolve(runner.run, parent=self.parent)
        return runner

    @staticmethod
    def preprocess_key(config: Config) -> str:
        """Trials whose `[preprocess]` tables are equal share one preprocessed frame."""
        return json.dumps(config.table.get("preprocess", {}), sort_keys=True, default=str)

    def prime(self, config: Config, features: Dataset) -> None:
        """Give the features of `config`'s preprocessing, already computed (a caller that has them)."""
        self.features[self.preprocess_key(config)] = features

    def preprocessed(self, runner: Runner, config: Config) -> Dataset:
        """The trial's training features: computed once per distinct preprocess config, shared by trials."""
        key = self.preprocess_key(config)
        with self.lock:
            building = self.building.setdefault(key, threading.Lock())
        with building:
            if key not in self.features:
                self.features[key] = runner.preprocess(self.train)[0]
        return self.features[key]

    def __call__(self, trial: optuna.Trial) -> float:
        optuna = _optuna()
        search = self.search
        trainer = (trial.suggest_categorical("trainer", list(search.trainers)) if len(search.trainers) > 1
                   else search.trainers[0])
        values = {d: d.suggest(trial) for d in search.dims_of(trainer)}
        trial.set_user_attr("trainer", trainer)
        try:  # a ConfigError here: the trial fails before its run begins
            config = self.config_for(trainer, values)
            runner = self.runner_for(config)
        except OpsloopError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        try:
            value, reports = self._trial(trial, runner, config)
        except optuna.TrialPruned:
            runner.end("tune.trial", None, outcome="pruned")
            raise
        except BaseException as exc:
            runner.end("tune.trial", None, error=exc)
            raise
        runner.end("tune.trial", reports)
        return value

    def _trial(self, trial: optuna.Trial, runner: Runner, config: Config) -> tuple[float, list[Any]]:
        optuna = _optuna()
        search = self.search
        try:
            features = self.preprocessed(runner, config)
            folds: list[float] = []

            def scored(index: int, figures: Mapping[str, float]) -> None:
                value = figures.get(search.metric, math.nan)
                folds.append(value)
                finite = [v for v in folds if v is not None and math.isfinite(v)]
                if finite:
                    trial.report(sum(finite) / len(finite), index)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after fold {index + 1}: running mean "
                                                 f"{search.metric} {finite[-1]:.4f}")

            runner.run = attrs.evolve(runner.run, folds=scored)
            reports = runner.validate(features, enforce_gates=False)
        except PluginCallError as exc:
            if isinstance(exc.cause, optuna.TrialPruned):
                raise exc.cause from None
            trial.set_user_attr("error", str(exc))
            raise
        except OpsloopError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        mean = dict(reports[0].mean)
        trial.set_user_attr("figures", {k: v for k, v in mean.items() if isinstance(v, float) and math.isfinite(v)})
        value = mean.get(search.metric)
        if value is None:
            known = sorted(mean)
            message = (f"[tune] metric {search.metric!r} is not among the validator's figures ("
                       f"{', '.join(known)})" + (f' (did you mean "{closest(search.metric, known)}"?)'
                                                  if closest(search.metric, known) else ""))
            trial.set_user_attr("error", message)
            self.missing_metric = message
            trial.study.stop()
            raise OpsloopError(message)
        if not math.isfinite(value):
            message = (f"{search.metric} is undefined (NaN) on every fold: the folds' test blocks hold one class; "
                       "use fewer folds or another metric")
            trial.set_user_attr("error", message)
            raise OpsloopError(message)
        return float(value), reports


@attrs.frozen(kw_only=True)
class TuneResult:
    """What `opsloop tune` found, JSON-able through `to_json`."""

    search: Search
    study: Any = attrs.field(repr=False)
    ran: int
    refit: dict[str, Any] | None = None
    version: ModelVersion | None = None
    importances: dict[str, float] = attrs.field(factory=dict)
    notes: tuple[str, ...] = ()

    def best_params(self) -> dict[str, Any]:
        """The best trial's values, decoded, by Optuna name (`trainer` first when it was searched)."""
        best = self.study.best_trial
        dims = {d.name: d for d in self.search.dimensions}
        return {k: dims[k].decode(v) if k in dims else v for k, v in best.params.items()}

    def best_config(self) -> Config:
        """The config of the best trial."""
        best = self.study.best_trial
        trainer = best.params.get("trainer", self.search.trainers[0])
        values = {d: d.decode(best.params[d.name]) for d in self.search.dims_of(trainer) if d.name in best.params}
        base = self.search.config
        return Config.from_table(apply(base.table, trainer, values), path=base.path, workdir=base.workdir)

    def toml(self) -> str:
        """The best configuration as TOML tables to paste into opsloop.toml."""
        config = self.best_config()
        trainer = config.selected("train")[0]
        plugins = sorted({(d.section, d.plugin) for d in self.search.dims_of(trainer)})
        lines = []
        if len(self.search.trainers) > 1:
            lines += ["[train]", f"plugins = [{json.dumps(trainer)}]", ""]
        for section, plugin in plugins:
            lines.append(f"[{section}.{plugin}]")
            table = config.options_table(section, plugin)
            for dim in (d for d in self.search.dims_of(trainer) if (d.section, d.plugin) == (section, plugin)):
                value = table.get("params", {}).get(dim.key) if dim.in_params else table.get(dim.key)
                key = f"params.{dim.key}" if dim.in_params else dim.key
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def history(self) -> list[dict[str, Any]]:
        """Every trial in order: number, state, value, the best value so far, params, seconds, error."""
        best: float | None = None
        out = []
        better = (lambda a, b: a < b) if self.search.direction == "minimize" else (lambda a, b: a > b)
        dims = {d.name: d for d in self.search.dimensions}
        for t in self.study.get_trials(deepcopy=False):
            value = t.value if t.state.name == "COMPLETE" else None
            if value is not None and (best is None or better(value, best)):
                best = value
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
                t.datetime_start else None
            out.append({"number": t.number, "state": t.state.name.lower(), "value": value, "best": best,
                        "params": {k: dims[k].decode(v) if k in dims else v for k, v in t.params.items()},
                        "pruned_at": max(t.intermediate_values) + 1 if t.state.name == "PRUNED"
                        and t.intermediate_values else None,
                        "seconds": seconds, "error": t.user_attrs.get("error")})
        return out

    def to_json(self) -> dict[str, Any]:
        trials = self.history()
        counts = {s: sum(1 for t in trials if t["state"] == s) for s in ("complete", "pruned", "fail", "running")}
        best = self.study.best_trial
        return {
            "study": self.search.study, "storage": _safe_url(self.search.storage) if self.search.storage else None,
            "metric": self.search.metric, "direction": self.search.direction,
            "best_value": best.value, "best_params": self.best_params(), "best_trial": best.number,
            "best_figures": best.user_attrs.get("figures", {}), "trials": trials, "counts": counts,
            "ran": self.ran, "refit": self.refit, "importances": self.importances,
            "version": self.version.ref if self.version else None, "notes": list(self.notes),
        }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: complete and pruned ones (a failed trial does not)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED"))


def tune(runner: Runner, *, trials: int | None = None, timeout: str | None = None, jobs: int | None = None,
         register: bool = False, show_only: bool = False) -> TuneResult:
    """Plan, run (or resume) the search, refit the best configuration, and with `register`, register it.

    Observers hear each trial's end (`on_run_end`, command "tune.trial", its run's `parent` the search's run
    id) and then the search's (command "tune", with the `TuneResult`); the refit is part of the search's run.

    Raises:
        ConfigError: A wrong `[tune]` (unknown parameter, empty or inverted range, wrong metric...).
        OpsloopError: No trial finished (each failed trial's first error is named), or Optuna is missing.
    """
    return runner.ending("tune", lambda: _tune(runner, trials=trials, timeout=timeout, jobs=jobs, register=register,
                                                show_only=show_only))


def _tune(runner: Runner, *, trials: int | None, timeout: str | None, jobs: int | None, register: bool,
          show_only: bool) -> TuneResult:
    from opsloop import data as data_mod

    _optuna()
    config = runner.config
    raw = runner._stage("load", [config.data.source], lambda: data_mod.load(config, runner.session),
                        lambda d: f"{len(d):,} rows from {d.name}")
    train, _ = data_mod.periods(raw, config)
    store = runner.store
    search = plan(runner.session, train, trials=trials, timeout=timeout, jobs=jobs, store_url=store.tuning_storage())
    notes = [] if search.storage else [f"the store {store.uri} keeps no studies: this search lives in memory"]
    study = open_study(search, load_only=show_only)
    before = finished(study)
    if not show_only:
        objective = Objective(search, runner.session, train, parent=runner.run.run_id)
        remaining = None if search.trials is None else max(0, search.trials - before)
        if remaining == 0:
            notes.append(f"study {search.study} already holds {before} finished trial(s) of the {search.trials} "
                         "asked for: nothing to run (raise [tune] trials or --trials to search further)")
        else:
            if before:
                notes.append(f"resumed study {search.study}: {before} trial(s) were already stored")

            def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                value = f" {search.metric} {trial.value:.4f}" if trial.value is not None else ""
                why = trial.user_attrs.get("error") if trial.state.name == "FAIL" else None
                runner.reporter.note(f"trial {trial.number}: {trial.state.name.lower()}{value}; best "
                                     f"{_best_text(study)}" + (f"; {why}" if why else ""))

            def work() -> int:
                study.optimize(objective, n_trials=remaining, timeout=search.timeout, n_jobs=search.jobs,
                               catch=(OpsloopError,), gc_after_trial=False, callbacks=[progress])
                return finished(study) - before

            runner._stage("tune", list(search.trainers), work,
                          lambda n: f"{n} trial(s) of study {search.study}, best {search.metric} "
                                    f"{_best_text(study)}")
        if objective.missing_metric:
            raise ConfigError(objective.missing_metric.split("] ", 1)[-1], section="tune", key="metric",
                              source=config.source)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        errors = [t.user_attrs.get("error") for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
        why = f": the first failed with {errors[0]}" if errors else ""
        raise OpsloopError(f"no trial of study {search.study} finished within the budget "
                           f"({_budget_text(search)}){why}")
    ran = finished(study) - before
    result = TuneResult(search=search, study=study, ran=ran, notes=tuple(notes),
                        importances=_importances(study, search, notes))
    if show_only:
        return result
    return _refit(runner, result, train, register=register)


def _best_text(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return "- (no trial complete)"


def _budget_text(search: Search) -> str:
    parts = ([f"{search.trials} trial(s)"] if search.trials is not None else []) + (
        [f"timeout {search.timeout:g} s"] if search.timeout is not None else [])
    return ", ".join(parts)


def _importances(study: optuna.Study, search: Search, notes: list[str]) -> dict[str, float]:
    """fANOVA importances of the parameters (Optuna's default evaluator); empty with a note where it cannot
    say (fewer than two complete trials, one parameter)."""
    optuna = _optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2 or len({k for t in complete for k in t.params}) < 1:
        notes.append("parameter importances need at least 2 complete trials")
        return {}
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=search.config.project.seed))
    except (ValueError, RuntimeError) as exc:
        notes.append(f"parameter importances could not be computed: {_one_line(exc)}")
        return {}
    return {k: float(v) for k, v in found.items()}


def _refit(runner: Runner, result: TuneResult, train: Dataset, *, register: bool) -> TuneResult:
    """Fit the best configuration again and compare its figure with the best trial's; register it if asked."""
    from opsloop.runner import Runner as _Runner
    from opsloop.session import Session

    search, best = result.search, result.study.best_trial
    config = result.best_config()
    session = Session.open(config, runner.session.plugins)
    refit_runner = _Runner(session, reporter=runner.reporter)
    refit_runner._store = runner.store
    # Part of the search's run (its `refit.` stages, the version it registers), not a run of its own.
    refit_runner.run = attrs.evolve(refit_runner.run, run_id=runner.run.run_id, parent=runner.run.parent)
    refit_runner.result.run_id = runner.run.run_id
    version = None
    if register:
        tune_record = {"study": search.study, "trial": best.number, "metric": search.metric, "value": best.value,
                       "storage": _safe_url(search.storage) if search.storage else None}
        built = refit_runner.build(train, prefix="refit.", training={"tune": tune_record})
        version = built.version
        validation = built.validation
        figures = dict(validation[0].mean) if validation else dict(version.metrics)
        runner.result.versions.extend(refit_runner.result.versions)
    else:
        features, _, _ = refit_runner.preprocess(train, prefix="refit.")
        figures = dict(refit_runner.validate(features, prefix="refit.", enforce_gates=False)[0].mean)
    value = figures.get(search.metric)
    same = value is not None and math.isfinite(value) and abs(value - best.value) <= REFIT_TOLERANCE * max(
        1.0, abs(best.value))
    notes = list(result.notes)
    if not same:
        notes.append(f"the refit gave {search.metric} {value} against the best trial's {best.value}: training is "
                     "not deterministic here (threads in the trainer, or trials run at once with jobs > 1); the "
                     "registered figure is the refit's")
    refit = {"value": value, "best_trial_value": best.value, "reproduced": bool(same),
             "tolerance": REFIT_TOLERANCE}
    return attrs.evolve(result, refit=refit, version=version, notes=tuple(notes))
