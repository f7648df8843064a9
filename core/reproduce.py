"""Rebuild a registered version from its lineage and say whether it comes out the same (issue 14, item 3).

`opsloop models reproduce NAME:N` reads the version's manifest, rebuilds its
config from the lineage's recorded table (seed included), loads the data the
way the run did, takes the same training rows (checked by fingerprint), and
re-runs preprocess, train, validate and the alert threshold through the
runner's own stage methods, registering nothing. Then it compares, to a stated
tolerance: each preprocess step's state, the estimator's bytes, the scores of
the rebuilt and the registered model on the training rows, the validation
figures and the threshold. Every difference gets a kind: the causes (`data`,
`versions`, `config`) and what differs (`model`, `validation`); a result that
differs without any cause is `nondeterminism` (threads). docs/reproducibility.md.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError, DataError, OpsloopError, PluginCallError

if TYPE_CHECKING:
    from opsloop.config import Config
    from opsloop.manager import PluginManager
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.store import ModelStore
    from opsloop.types import Dataset, ModelVersion, Reporter, TrainedModel

#: Largest difference between two floats that still counts as the same (states, scores, figures).
DEFAULT_TOLERANCE = 1e-9
KINDS = ("data", "versions", "config", "nondeterminism", "model", "validation")
#: Causes a result difference can be explained by; with none of them it is nondeterminism.
CAUSES = ("data", "versions", "config")
#: Environment variables that set the thread count of the numeric libraries.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Option and parameter names that set a thread count.
THREAD_KEYS = ("n_jobs", "nthread", "num_threads", "n_threads", "threads")


@attrs.frozen(kw_only=True)
class Check:
    """One comparison of the recorded version with its rebuild.

    Attributes:
        ok: True when they agree, False when they differ, None for information only (never fails).
    """

    name: str
    ok: bool | None
    recorded: Any = None
    now: Any = None
    detail: str = ""


@attrs.frozen(kw_only=True)
class Difference:
    """Something that differs, with its kind (`KINDS`)."""

    kind: str
    message: str


@attrs.define
class Reproduction:
    """What `reproduce` found: the checks in order, the differences, and where data paths were resolved."""

    ref: str
    tolerance: float
    workdir: str
    checks: list[Check] = attrs.field(factory=list)
    differences: list[Difference] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    @property
    def reproduced(self) -> bool:
        """True when nothing differs: the same data, versions and config, and the same results."""
        return not self.differences

    def add(self, check: Check, kind: str | None = None, message: str | None = None) -> None:
        """Record a check; a failed one with `kind` is also a difference (`message`, default its detail)."""
        self.checks.append(check)
        if check.ok is False and kind is not None:
            self.differences.append(Difference(kind=kind, message=message or f"{check.name}: {check.detail}"))

    def verdict(self) -> str:
        """One line: reproduced, or what differs and why."""
        if self.reproduced:
            return (f"reproduced: {self.ref} rebuilt from its lineage gives the same preprocessing states, model and "
                    f"validation figures (tolerance {self.tolerance:g})")
        kinds = ", ".join(dict.fromkeys(d.kind for d in self.differences))
        return f"NOT reproduced: {self.ref}: {len(self.differences)} difference(s) ({kinds})"

    def to_json(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "ref": self.ref, "tolerance": self.tolerance,
                "workdir": self.workdir, "checks": [attrs.asdict(c) for c in self.checks],
                "differences": [attrs.asdict(d) for d in self.differences], "notes": list(self.notes),
                "verdict": self.verdict()}


# -- comparisons (pure: no data, no plugins) ---------------------------------------------------------------------

def same_number(a: Any, b: Any, tolerance: float) -> bool:
    """Two JSON scalars agree: numbers within `tolerance` (NaN equals NaN), anything else exactly."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= tolerance
    return a == b


def json_differences(recorded: Any, now: Any, tolerance: float, path: str = "") -> list[str]:
    """Where two JSON values differ, as `path: recorded -> now` (floats within `tolerance` are equal)."""
    if isinstance(recorded, Mapping) and isinstance(now, Mapping):
        out = []
        for key in sorted({*recorded, *now}, key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in now:
                out.append(f"{where}: {_short(recorded[key])} -> (absent)")
            elif key not in recorded:
                out.append(f"{where}: (absent) -> {_short(now[key])}")
            else:
                out.extend(json_differences(recorded[key], now[key], tolerance, where))
        return out
    if isinstance(recorded, list | tuple) and isinstance(now, list | tuple):
        if len(recorded) != len(now):
            return [f"{path or 'value'}: {len(recorded)} items -> {len(now)} items"]
        out = []
        for i, (a, b) in enumerate(zip(recorded, now)):
            out.extend(json_differences(a, b, tolerance, f"{path}[{i}]"))
        return out
    if same_number(recorded, now, tolerance):
        return []
    return [f"{path or 'value'}: {_short(recorded)} -> {_short(now)}"]


def _short(value: Any, width: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def version_changes(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The differences between two `lineage.versions` records: `library numpy 1.26.4 -> 2.0.0`, `plugin
    xgboost (opsloop) 0.1.0 -> 0.2.0`, `python 3.11.4 -> 3.11.9`, `opsloop ...`."""
    out = []
    for key in ("python", "opsloop"):
        if recorded.get(key) != now.get(key):
            out.append(f"{key} {recorded.get(key, '?')} -> {now.get(key, '?')}")
    plugins_a, plugins_b = dict(recorded.get("plugins") or {}), dict(now.get("plugins") or {})
    for name in dict.fromkeys([*plugins_a, *plugins_b]):
        a, b = plugins_a.get(name), plugins_b.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"plugin {name}: not used then -> {b.get('dist')} {b.get('version')}")
        elif b is None:
            out.append(f"plugin {name}: {a.get('dist')} {a.get('version')} -> not used now")
        elif a.get("dist") != b.get("dist"):
            out.append(f"plugin {name}: {a.get('dist')} {a.get('version')} -> {b.get('dist')} {b.get('version')}")
        else:
            out.append(f"plugin {name} ({a.get('dist')}) {a.get('version')} -> {b.get('version')}")
    libs_a, libs_b = dict(recorded.get("libraries") or {}), dict(now.get("libraries") or {})
    for lib in dict.fromkeys([*libs_a, *libs_b]):
        if libs_a.get(lib) != libs_b.get(lib):
            out.append(f"library {lib} {libs_a.get(lib, 'not installed')} -> {libs_b.get(lib, 'not installed')}")
    return out


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How the current config differs from the recorded one in what shapes a model (`lineage.TRAINING_SECTIONS`
    and `[project] seed`)."""
    from opsloop.lineage import TRAINING_SECTIONS

    def shaping(table: Mapping[str, Any]) -> dict[str, Any]:
        out = {s: table.get(s, {}) for s in TRAINING_SECTIONS}
        out["data"] = {k: v for k, v in dict(out["data"]).items() if k != "monitor"}
        out["project"] = {"seed": dict(table.get("project", {})).get("seed")}
        return out

    return json_differences(shaping(recorded), shaping(current), 0.0)


def thread_hints(options: Mapping[str, Any]) -> list[str]:
    """The thread settings that can make a fit differ between two runs: options named like a thread count,
    and the thread environment variables as they are now (they are not recorded)."""
    hints = [f"{where} {key} = {value}" for where, table in options.items() if isinstance(table, Mapping)
             for key, value in table.items() if key in THREAD_KEYS]
    hints += [f"{name}={os.environ[name]}" for name in THREAD_ENV if name in os.environ]
    unset = [name for name in THREAD_ENV if name not in os.environ]
    if unset:
        hints.append(f"{', '.join(unset)} unset (all cores: {os.cpu_count()})")
    return hints


# -- the rebuild ---------------------------------------------------------------------------------------------------

def rebuilt_config(recorded: Mapping[str, Any], current: Config, ref: str = "the version") -> tuple[Config, str]:
    """The config a version was built with, from its lineage, and a sentence saying where its relative paths
    are resolved: the recorded config file's directory when that file still exists, else the current
    config's working directory."""
    from opsloop.config import Config

    table = recorded.get("config")
    if not isinstance(table, Mapping) or not table:
        raise OpsloopError(f"cannot reproduce {ref}: its lineage records no config (registered before lineage "
                           "recorded the config, or not by opsloop run)")
    recorded_file = recorded.get("config_file")
    path = Path(recorded_file) if recorded_file else None
    if path is not None and path.is_file():
        workdir, where = path.parent, f"{path.parent} (the directory of the recorded config file {path})"
    else:
        workdir = Path(current.workdir)
        why = (f"the recorded config file {path} is gone" if path is not None
               else "the version was built from the built-in defaults, without a config file")
        where, path = f"{workdir} (the current config's directory: {why})", None
    try:
        return Config.from_table(_plain(table), path=path, workdir=workdir), where
    except ConfigError as exc:
        raise ConfigError(f"cannot reproduce {ref}: its recorded config is not valid for this opsloop: {exc}") from None


def _plain(value: Any) -> Any:
    """A deep, mutable copy of a JSON table (the store may hand back read-only mappings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def training_rows(config: Config, recorded: Mapping[str, Any], ref: str,
                  logged: Callable[[], list[Dataset]] | None = None, session: Session | None = None
                  ) -> tuple[Dataset, str]:
    """The rows the version trained on, read the way its run read them, and how they were chosen.

    - `opsloop run`: the `[data] train` period;
    - `opsloop run`'s retraining (`[train + monitor]` in the recorded source): that period and the
      monitored labelled rows;
    - `opsloop loop` (lineage `training`): the labelled rows of the source, and those of the prediction log
      when the loop took them (`logged`, read now: feedback that came later changes them, and the fingerprint
      tells), between the window's first and last time.

    DataError in one line when the data cannot be read (a file gone): it cannot be rebuilt.
    """
    from opsloop import data as data_mod

    data = dict(recorded.get("data") or {})
    try:
        raw = data_mod.load(config, session)
    except (DataError, ConfigError, PluginCallError) as exc:
        raise DataError(f"cannot reproduce {ref}: its training data cannot be read: {exc} (it trained on "
                        f"{_rows(data.get('rows'))} rows of {data.get('source', '?')}, fingerprint "
                        f"{data.get('fingerprint', '?')})") from None
    window = recorded.get("training")
    if isinstance(window, Mapping) and window.get("start") and window.get("end"):
        from_log = "+ prediction log" in str(data.get("source") or "") and logged is not None
        rows = _loop_rows(raw, config, window, logged() if from_log else [])
        return rows, (f"the loop's training window {window['start']} to {window['end']}"
                      + (" (the source's and the prediction log's labelled rows)" if from_log else ""))
    train, monitor = data_mod.periods(raw, config)
    source = str(data.get("source") or "")
    if monitor is not None and "[train + " in source:
        from opsloop.runner import _concat

        monitored = monitor
        target = monitor.target
        if target and target in monitor.frame.columns and config.data.unlabelled != "keep":
            monitored = monitor.derive(monitor.frame[monitor.frame[target].notna()].reset_index(drop=True))
        return (train.derive(_concat(train, monitored), name=source),
                "the training period and the monitored labelled rows (a retrained version)")
    return train, "the [data] train period"


def _loop_rows(raw: Dataset, config: Config, window: Mapping[str, Any], logged: list[Dataset]) -> Dataset:
    """The loop's history (`opsloop.history`) cut to the recorded training window."""
    import pandas as pd

    from opsloop.history import _history, _periods

    source, periods = _periods(raw, config)
    history = _history(source, periods, logged, [], keep=config.data.unlabelled == "keep")
    times = pd.to_datetime(history.frame[history.time], utc=True, errors="coerce")
    inside = ((times >= pd.Timestamp(window["start"])) & (times <= pd.Timestamp(window["end"]))).to_numpy()
    return history.derive(history.frame[inside].reset_index(drop=True), name=f"{raw.name} [loop window]")


def reproduce(store: ModelStore, ref: str, *, current: Config, plugins: PluginManager | None = None,
              tolerance: float = DEFAULT_TOLERANCE, reporter: Reporter | None = None) -> Reproduction:
    """Rebuild version `ref` (NAME:N, NAME@ALIAS) of `store` from its lineage and compare (module docstring).

    Args:
        store: Where the version is registered; only read.
        ref: The version.
        current: The config in use now: its working directory resolves data paths when the recorded
            config file is gone, and its differences from the recorded one are shown (information only).
        plugins: A plugin manager (a new one discovers installed plugins).
        tolerance: Largest absolute difference between two floats that counts as the same.
        reporter: Progress of the stages.
    """
    from opsloop.bundle import read_manifest
    from opsloop.manager import PluginManager
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.store import Ref

    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise OpsloopError(f"--tolerance must be a finite number of at least 0, got {tolerance}")
    version = store.resolve(Ref.parse(ref))
    manifest = read_manifest(version.path, ref=version.ref, digest=version.digest)
    recorded = dict(manifest.get("lineage") or version.lineage or {})
    config, where = rebuilt_config(recorded, current, version.ref)
    result = Reproduction(ref=version.ref, tolerance=tolerance, workdir=str(config.workdir))
    result.notes.append(f"data paths resolved against {where}")
    try:
        session = Session.open(config, plugins or PluginManager(), sections=("preprocess", "train", "validate"))
    except ConfigError as exc:
        raise ConfigError(f"cannot reproduce {version.ref}: {exc}") from None
    runner = Runner(session, reporter=reporter)

    _check_config(result, recorded, config, current)
    raw, how = training_rows(config, recorded, version.ref,
                             lambda: _logged_rows(store, recorded, current, session.plugins, version.ref),
                             session)
    result.notes.append(f"training rows: {how}")
    _check_data(result, recorded, raw)
    _check_versions(result, recorded, runner)
    model, steps, reports, threshold, features = _rebuild(runner, raw)
    _check_steps(result, manifest, steps, tolerance)
    _check_params(result, manifest, model)
    with tempfile.TemporaryDirectory(prefix="opsloop-reproduce-") as tmp:
        bytes_equal = _check_bytes(result, manifest, model, session.plugins, Path(tmp), runner)
        _check_predictions(result, version, manifest, model, steps, raw, runner, Path(tmp), tolerance, bytes_equal)
    _check_validation(result, manifest, reports, threshold, tolerance)
    _explain(result, runner)
    return result


def _logged_rows(store: ModelStore, recorded: Mapping[str, Any], current: Config, plugins: PluginManager,
                 ref: str) -> list[Dataset]:
    """The labelled rows of the prediction log, as the loop cycle that built the version read them (its parent
    was production then); DataError when the log is gone."""
    from opsloop.history import LogInputs
    from opsloop.serving.settings import Settings
    from opsloop.session import Session
    from opsloop.store import Ref

    log = Settings().resolve(Path(current.workdir).absolute()).log_path
    if not log.exists():
        raise DataError(f"cannot reproduce {ref}: the loop trained it on labelled rows of the prediction log, and "
                        f"{log} is gone")
    parent = recorded.get("parent")
    if not parent:
        raise OpsloopError(f"cannot reproduce {ref}: its lineage names no parent (the production version whose "
                           "log rows the loop read)")
    production = store.resolve(Ref.parse(str(parent)))
    inputs = LogInputs(session=Session.open(current, plugins, sections=("store",)), log=log)
    return inputs._logged(production, [])[3]


def _rebuild(runner: Runner, raw: Dataset) -> tuple[TrainedModel, list[Any], list[Any], Any, Dataset]:
    """Preprocess, train, validate and calibrate as `Runner.build` does, registering nothing."""
    features, steps, _ = runner.preprocess(raw, "reproduce.")
    model = runner.train(features, "reproduce.")
    reports = runner.validate(features, "reproduce.", enforce_gates=False)
    threshold, _ = runner.calibrate(reports, features, "reproduce.")
    return model, steps, reports, threshold, features


def _check_config(result: Reproduction, recorded: Mapping[str, Any], config: Config, current: Config) -> None:
    seed = dict(recorded["config"].get("project", {})).get("seed")
    result.add(Check(name="seed", ok=None, recorded=seed, now=config.project.seed,
                     detail="the rebuild uses the recorded seed"))
    recorded_hash = recorded.get("config_hash")
    if recorded_hash and config.hash != recorded_hash:
        result.add(Check(name="config", ok=False, recorded=recorded_hash, now=config.hash,
                         detail="the recorded config table does not hash to the recorded config_hash"), "config")
    changes = config_changes(recorded["config"], current.table)
    result.add(Check(name="current config", ok=None, recorded=recorded.get("config_file") or "(built-in defaults)",
                     now=current.source,
                     detail=("differs from the recorded one (information only: the rebuild uses the recorded "
                             "config): " + "; ".join(changes)) if changes
                     else "shapes a model as the recorded one does"))
    from opsloop.lineage import git_state

    git, now_git = recorded.get("git") or {}, git_state(Path(config.workdir)) or {}
    if git or now_git:
        def commit(g: Mapping[str, Any]) -> str:
            return (str(g["commit"])[:12] + (" (dirty)" if g.get("dirty") else "")) if g.get("commit") else "-"

        result.add(Check(name="git commit", ok=None, recorded=commit(git), now=commit(now_git),
                         detail="information: the code of plugins and opsloop is compared by version"))


def _check_data(result: Reproduction, recorded: Mapping[str, Any], raw: Dataset) -> None:
    data = dict(recorded.get("data") or {})
    fingerprint, rows = data.get("fingerprint"), data.get("rows")
    same = fingerprint == raw.fingerprint
    detail = "the same rows" if same else (
        f"data changed: fingerprint {fingerprint} ({_rows(rows)} rows) -> "
        f"{raw.fingerprint} ({len(raw):,} rows) in {raw.name}")
    result.add(Check(name="data fingerprint", ok=same, recorded=f"{fingerprint} ({_rows(rows)} rows)",
                     now=f"{raw.fingerprint} ({len(raw):,} rows)", detail=detail), "data", detail)


def _rows(rows: Any) -> str:
    return f"{rows:,}" if isinstance(rows, int) else "?"


def _check_versions(result: Reproduction, recorded: Mapping[str, Any], runner: Runner) -> None:
    from opsloop.lineage import versions

    then, now = dict(recorded.get("versions") or {}), versions(runner.plugins, runner._used())
    changes = version_changes(then, now)
    result.add(Check(name="versions", ok=not changes, recorded=then, now=now,
                     detail="; ".join(changes) or "python, opsloop, plugins and libraries as recorded"))
    result.differences.extend(Difference(kind="versions", message=c) for c in changes)


def _check_steps(result: Reproduction, manifest: Mapping[str, Any], steps: list[Any], tolerance: float) -> None:
    then = list(manifest.get("steps") or [])
    names_then, names_now = [s.get("plugin") for s in then], [s.plugin for s in steps]
    if names_then != names_now:
        detail = f"preprocess steps {names_then} -> {names_now}"
        result.add(Check(name="preprocess steps", ok=False, recorded=names_then, now=names_now, detail=detail),
                   "config", detail)
        return
    for old, new in zip(then, steps):
        options = json_differences(old.get("options"), dict(new.options) if new.options is not None else None, 0.0)
        if options:
            detail = f"options of {new.plugin} as the plugin reads them now: " + "; ".join(options[:5])
            result.add(Check(name=f"{new.plugin} options", ok=False, recorded=old.get("options"),
                             now=new.options, detail=detail), "config", detail)
        diffs = json_differences(old.get("state"), dict(new.state), tolerance)
        result.add(Check(name=f"{new.plugin} state", ok=not diffs,
                         recorded=f"{_count(old.get('state'))} value(s)", now=f"{_count(new.state)} value(s)",
                         detail="; ".join(diffs[:5]) + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
                         if diffs else "identical"), "model")


def _count(state: Any) -> int:
    if isinstance(state, Mapping):
        return sum(_count(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_count(v) for v in state)
    return 1


def _check_params(result: Reproduction, manifest: Mapping[str, Any], model: TrainedModel) -> None:
    import json

    now = json.loads(json.dumps(dict(model.params), default=str))
    diffs = json_differences(manifest.get("params") or {}, now, 0.0)
    flavor = manifest.get("flavor")
    if flavor != model.flavor:
        diffs.insert(0, f"flavor: {flavor} -> {model.flavor}")
    result.add(Check(name="estimator parameters", ok=not diffs, recorded=f"{flavor}, {len(manifest.get('params') or {})}"
                     " parameter(s)", now=f"{model.flavor}, {len(now)} parameter(s)",
                     detail="; ".join(diffs) or "identical"), "model")


def _check_bytes(result: Reproduction, manifest: Mapping[str, Any], model: TrainedModel, plugins: PluginManager,
                 directory: Path, runner: Runner) -> bool:
    """The rebuilt estimator saved by its flavor plugin, file by file against the bundle's sha256. Information
    only: a flavor whose files hold a time or a random name differs here while its predictions agree."""
    from opsloop.bundle import ModelFiles, sha256_file

    _, files = ModelFiles(plugins).save(model, directory, trainer=runner.config.selected("train")[0])
    recorded = dict(manifest.get("files") or {})
    differ = [name for name in files if recorded.get(name) != sha256_file(directory / name)]
    equal = not differ
    result.add(Check(name="estimator bytes", ok=True if equal else None, recorded=f"{len(files)} file(s)",
                     now="identical" if equal else f"{len(differ)} file(s) differ",
                     detail=("byte for byte: " + ", ".join(files)) if equal else
                     f"{', '.join(differ)} differ (information: the predictions decide)"))
    return equal


def _check_predictions(result: Reproduction, version: ModelVersion, manifest: Mapping[str, Any],
                       model: TrainedModel, steps: list[Any], raw: Dataset, runner: Runner, directory: Path,
                       tolerance: float, bytes_equal: bool) -> None:
    """Scores of the registered bundle and of the rebuilt model on the training rows, at the same threshold."""
    import numpy as np

    from opsloop.bundle import LoadedModel

    registered = runner.load(version)
    rebuilt = LoadedModel(manifest={**manifest, "steps": [attrs.asdict(s) for s in steps],
                                    "features": list(model.features)},
                          estimator=model.estimator, path=directory, plugins=runner.plugins, run=runner.run,
                          ref=f"{version.ref} (rebuilt)", override=registered.threshold)
    then, now = registered.predict(raw.frame), rebuilt.predict(raw.frame)
    column = "score" if "score" in then.columns and "score" in now.columns else "prediction"
    a, b = then[column].to_numpy(), now[column].to_numpy()
    if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
        a, b = a.astype(float), b.astype(float)
        both_nan = np.isnan(a) & np.isnan(b)
        gap = np.where(both_nan, 0.0, np.abs(a - b))
        worst = float(np.nanmax(np.where(np.isnan(gap), np.inf, gap))) if len(gap) else 0.0
        ok = worst <= tolerance
        now_text = f"max |{column} difference| {worst:.3g} (tolerance {tolerance:g})"
    else:
        differ = int((a != b).sum())
        ok, now_text = differ == 0, f"{differ} prediction(s) differ"
    flips = int((then["prediction"].to_numpy() != now["prediction"].to_numpy()).sum()) if column == "score" else 0
    detail = f"{len(raw):,} training rows scored by the registered bundle and by the rebuild"
    if flips:
        detail += f"; {flips:,} alert decision(s) differ"
    if not ok and bytes_equal:
        detail += " although the estimator bytes are identical (the preprocessing differs)"
    result.add(Check(name="predictions", ok=ok and not flips, recorded=f"{len(raw):,} rows scored", now=now_text,
                     detail=detail), "model", f"predictions: {now_text}; {detail}")


def _check_validation(result: Reproduction, manifest: Mapping[str, Any], reports: list[Any], threshold: Any,
                      tolerance: float) -> None:
    import json

    then = dict(manifest.get("metrics") or {})
    now = json.loads(json.dumps(dict(reports[0].mean), allow_nan=True)) if reports else {}
    diffs = json_differences(then, now, tolerance)
    result.add(Check(name="validation figures", ok=not diffs, recorded=f"{len(then)} figure(s)",
                     now=f"{len(now)} figure(s)" + (f", {len(diffs)} differ" if diffs else ""),
                     detail="; ".join(diffs[:6]) or "identical"), "validation")
    old, new = manifest.get("threshold"), threshold
    value_then = old.get("value") if isinstance(old, Mapping) else None
    value_now = new.get("value") if isinstance(new, Mapping) else None
    same = json_differences(value_then, value_now, tolerance) == []
    result.add(Check(name="alert threshold", ok=same, recorded=value_then, now=value_now,
                     detail="chosen again by the recorded [alerting] rule on the out-of-fold scores"
                     + ("" if same else f": {value_then} -> {value_now}")), "validation")


def _explain(result: Reproduction, runner: Runner) -> None:
    options = {f"[{section}.{name}]": _table(opts) for (section, name), opts in runner.session.options.items()}
    result.differences = explain(result.differences, thread_hints(options))


def explain(differences: list[Difference], hints: list[str]) -> list[Difference]:
    """The differences with their cause said: result differences (`model`, `validation`) name the causes found
    (`data`, `versions`, `config`); without any, the same data, config and versions gave another result, and
    a `nondeterminism` difference names the thread settings (`hints`, from `thread_hints`)."""
    causes = list(dict.fromkeys(d.kind for d in differences if d.kind in CAUSES))
    results = [d for d in differences if d.kind in ("model", "validation")]
    if not results:
        return list(differences)
    if causes:
        why = {"data": "the data changed", "versions": "versions changed", "config": "the config as read changed"}
        said = " and ".join(why[c] for c in causes)
        return [attrs.evolve(d, message=f"{d.message} (explained by: {said})") if d in results else d
                for d in differences]
    return [*differences, Difference(
        kind="nondeterminism",
        message="the same data, config and versions gave a different result: the fit is not deterministic here; "
                "thread counts change the order of floating-point sums (set them to 1 to check): "
                + "; ".join(hints))]


def _table(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    from opsloop.bundle import unstructure_options

    return dict(unstructure_options(options) or {})
