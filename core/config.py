"""`opsloop.toml`: reading, defaults, `--set` overrides and checking.

The config selects plugins per stage and holds each plugin's options in a
table named after it (`[train.xgboost]`). Core sections are attrs classes
and plugin options are attrs classes the plugins declare; both are
structured with one strict cattrs converter, and every mistake becomes a
`ConfigError` naming the file, the section, the key and the closest valid
name.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.strategies import configure_union_passthrough
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from opsloop.alerting import AlertingSection
from opsloop.errors import ConfigError, StoreError, closest

CONFIG_FILE = "opsloop.toml"
STAGES = ("preprocess", "train", "validate", "deploy", "monitor", "retrain", "gate")


# ---------------------------------------------------------------------------
# Core sections
# ---------------------------------------------------------------------------


def _model_name(instance: Any, attribute: Any, value: str) -> None:
    # The store's own check, so that `config check` and `register` cannot disagree (issue 8, item 9).
    from opsloop.store import check_name

    try:
        check_name(value)
    except StoreError as exc:  # the store's words, under the config's key
        raise ValueError(str(exc), attribute) from None


def _seed(instance: Any, attribute: Any, value: int) -> None:
    if not 0 <= value < 2**32:  # numpy's and scikit-learn's range for a seed
        raise ValueError(f"'{attribute.name}' must be an integer from 0 to 2**32 - 1, got {value!r}", attribute)


def _fraction(instance: Any, attribute: Any, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"'{attribute.name}' must be a number from 0 (monitor nothing) to below 1, got {value!r}",
                         attribute)


@attrs.frozen(kw_only=True)
class ProjectSection:
    """`[project]`: what versions are called and how random choices are seeded."""

    name: str = attrs.field(default="model", validator=_model_name)
    seed: int = attrs.field(default=42, validator=_seed)


def _unlabelled(instance: Any, attribute: Any, value: str) -> None:
    from opsloop.data import UNLABELLED

    if value not in UNLABELLED:
        hint = closest(str(value), UNLABELLED)
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, UNLABELLED))}, got {value!r}"
                         + (f' (did you mean "{hint}"?)' if hint else ""), attribute)


#: `[data] snapshot`: what a registered version keeps of the rows it trained on (docs/data.md, issue 14 item 4).
SNAPSHOT_MODES = ("none", "store", "reference")
#: `[data] sensitive_mode`: what becomes of a sensitive column in snapshots and the prediction log.
SENSITIVE_MODES = ("drop", "hash")
#: `[loop] monitor_rows`: where a cycle's monitored rows come from (docs/loop.md, docs/data-sources.md).
MONITOR_ROWS = ("log", "source")
PROMOTE = ("auto", "manual")


def _one_of(choices: tuple[str, ...]) -> Any:
    """A validator: one of `choices`, with the closest one when misspelt."""
    def check(instance: Any, attribute: Any, value: str) -> None:
        if value not in choices:
            hint = closest(str(value), choices)
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
                             + (f' (did you mean "{hint}"?)' if hint else ""), attribute)
    return check


def _sensitive(instance: Any, attribute: Any, value: list[str]) -> None:
    # A key column cannot be hidden: feedback joins the log on series and time, and the target is the label.
    for column in value:
        for key in ("target", "time", "series"):
            if column == getattr(instance, key):
                raise ValueError(f"'{attribute.name}': {column!r} is the {key} column, which the prediction log, "
                                 "feedback and training need as it is; only feature or other columns can be "
                                 "sensitive", attribute)


@attrs.frozen(kw_only=True)
class DataSection:
    """`[data]`: where rows come from and which periods train and monitor.

    Attributes:
        source: What to read: a CSV/TSV/Parquet file or a folder of Parquet
            files (relative to the config file), `embedded:<name>`, or a URI
            whose scheme names the source plugin that reads it
            (`prometheus://host:9090`; docs/data-sources.md).
        plugin: The source plugin, by name, when the scheme does not say it
            (`source = "https://prom.example:9090"`, `plugin = "prometheus"`).
            Its options are the table `[data.<plugin>]`.
        unlabelled: What the training period's rows without a label (a
            missing target) are (issue 13, item 6; opsloop.data.UNLABELLED):
            `"error"` (the default: validation and supervised trainers
            refuse them), `"normal"` (label 0), `"drop"` (left out), or
            `"keep"` (an unsupervised trainer trains on them; validation
            and the alert threshold judge the labelled rows only).
        snapshot: What a registered version keeps of its training rows
            (docs/data.md): `"none"` (the default: the fingerprint alone),
            `"store"` (the rows as Parquet in the store, content-addressed
            and shared by versions on the same rows), or `"reference"` (the
            source file's path, size and sha256, verified when read).
        sensitive: Columns never written to snapshots or the prediction log.
        sensitive_mode: `"drop"` (the default: left out) or `"hash"`
            (replaced by a keyed HMAC-SHA256 of the value, so rows still
            group and join by it).
    """

    source: str = "embedded:asd"
    plugin: str | None = None
    target: str | None = None
    time: str | None = None
    series: str | None = None
    features: list[str] | None = None
    train: str | None = None
    monitor: str | None = None
    monitor_fraction: float = attrs.field(default=0.3, validator=_fraction)
    unlabelled: str = attrs.field(default="error", validator=_unlabelled)
    snapshot: str = attrs.field(default="none", validator=_one_of(SNAPSHOT_MODES))
    sensitive: list[str] = attrs.field(factory=list, validator=_sensitive)
    sensitive_mode: str = attrs.field(default="drop", validator=_one_of(SENSITIVE_MODES))


@attrs.frozen(kw_only=True)
class StoreSection:
    """`[store]`: the model registry."""

    uri: str = ".opsloop"
    plugins: list[str] = attrs.field(factory=lambda: ["local-store"])


@attrs.frozen(kw_only=True)
class StageSection:
    """A stage section: which plugins run, in order."""

    plugins: list[str] = attrs.field(factory=list)


def _check_gates(instance: Any, attribute: Any, value: list[str]) -> None:
    from opsloop.gates import Gate

    for text in value:
        try:
            Gate.parse(text)
        except ValueError as exc:
            raise ValueError(str(exc), attribute) from None  # attrs' convention: the key is found from args[1]


@attrs.frozen(kw_only=True)
class ValidateSection:
    """`[validate]`: validators, and gates a model must pass (`"f1 >= 0.8"`)."""

    plugins: list[str] = attrs.field(factory=list)
    gates: list[str] = attrs.field(factory=list, validator=_check_gates)


@attrs.frozen(kw_only=True)
class RetrainSection:
    """`[retrain]`: policies, and whether a "retrain" verdict is acted upon."""

    plugins: list[str] = attrs.field(factory=list)
    act: bool = True


def _duration(*, allow: tuple[str, ...] = ()) -> Any:
    """A validator: a duration such as "1d" (s, m, h, d, w), or one of `allow`."""
    def check(instance: Any, attribute: Any, value: str) -> None:
        from opsloop.monitoring import _DURATION

        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if value in allow or (match and int(match.group(1)) > 0):
            return
        also = "".join(f" or {a!r}" for a in allow)
        raise ValueError(f"'{attribute.name}' must be a duration such as \"12h\", \"1d\" or \"14d\" (a whole "
                         f"number and s, m, h, d or w){also}, got {value!r}", attribute)
    return check


@attrs.frozen(kw_only=True)
class LoopSection:
    """`[loop]`: what `opsloop loop` (and `opsloop backtest`) retrains on, holds out and monitors.

    Attributes:
        window: Retraining data: `"expanding"` (all history) or a duration
            (`"14d"`: a sliding window ending at the newest labelled row).
        holdout: The latest labelled slice, held out from the candidate's
            training, on which champion and challenger are compared. Two
            days by default: one day dominated by one incident promoted a
            candidate that was worse on the days after (SMD machine-1-6,
            benchmarks/README.md).
        monitor_window: How far back each cycle monitors the prediction log.
        use_log: Add the logged production rows that have labels (feedback)
            to the configured source's rows.
        monitor_rows: Where each cycle's monitored rows come from: `"log"`
            (what production served, from the prediction log; the default)
            or `"source"` (the source's newest `monitor_window` of rows,
            read afresh and scored by production in the cycle: a live
            source such as Prometheus with nothing serving in front).
        lock_ttl: A lock older than this is taken over (a loop that died);
            longer than a cycle.
        promote: `"auto"`: the gate's winner becomes production; `"manual"`:
            it waits as `candidate` for a person (`opsloop models promote`).
        probation: Once this much labelled time has come after a promotion
            by the loop, the promoted version is judged against the one it
            replaced on those rows by the same gate; production rolls back
            if the replaced one wins (opsloop.probation). `"off"`: never.
        recalibrate: When a candidate loses the gate, choose production's
            alert threshold again by the `[alerting]` rule on the gate
            window, and apply it when it raises F1 there
            (opsloop.recalibrate). On by default: a shift can break a
            model's alerts without breaking its ranking (docs/loop.md).
    """

    window: str = attrs.field(default="expanding", validator=_duration(allow=("expanding",)))
    holdout: str = attrs.field(default="2d", validator=_duration())
    monitor_window: str = attrs.field(default="1d", validator=_duration())
    use_log: bool = True
    monitor_rows: str = attrs.field(default="log", validator=_one_of(MONITOR_ROWS))
    lock_ttl: str = attrs.field(default="6h", validator=_duration())
    promote: str = attrs.field(default="auto", validator=_one_of(PROMOTE))
    probation: str = attrs.field(default="1d", validator=_duration(allow=("off",)))
    recalibrate: bool = True


def _trials(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"'{attribute.name}' must be at least 1 (the number of trials the search may run), "
                         f"got {value!r}", attribute)


def _jobs(instance: Any, attribute: Any, value: int) -> None:
    if value != -1 and value < 1:
        raise ValueError(f"'{attribute.name}' must be a number of trials at once >= 1, or -1 for one per core, "
                         f"got {value!r}", attribute)


@attrs.frozen(kw_only=True)
class TuneSection:
    """`[tune]`: what `opsloop tune` searches, for how long, and by which figure (docs/tuning.md).

    Attributes:
        trials: Trials the study should hold when the search ends (those an
            interrupted search already ran count). Default 20 when no
            `timeout` is set.
        timeout: A duration ("10m"): no trial starts after it.
        metric: The validator's figure to optimize; default `pr_auc` for a
            binary target, `f1` for several classes, `rmse` for a number.
        sampler: `"tpe"` (Optuna's TPE, the default) or `"random"`.
        pruner: `"median"` (end a trial whose running mean over its first
            folds is below the median of earlier trials at that fold) or
            `"none"`.
        jobs: Trials run at once, in threads; -1 for one per core.
        study: The study's name; default: the project's name and a digest of
            the search (data, config, space, metric), so that the same search
            resumes and a changed one starts afresh.
        trainers: Search which trainer too, among these plugins (each
            searched on its own space); default: the selected one alone.
        params: The search space of the trainer (`max_depth = { low = 3,
            high = 10 }`); with `trainers`, one table per trainer.
        preprocess: Search spaces of preprocess steps' options, one table per
            step (`[tune.preprocess.rolling-features]`).
    """

    trials: int | None = attrs.field(default=None, validator=_trials)
    timeout: str | None = attrs.field(default=None, validator=attrs.validators.optional(_duration()))
    metric: str | None = None
    sampler: str = attrs.field(default="tpe", validator=_one_of(("tpe", "random")))
    pruner: str = attrs.field(default="median", validator=_one_of(("median", "none")))
    jobs: int = attrs.field(default=1, validator=_jobs)
    study: str | None = None
    trainers: list[str] = attrs.field(factory=list)
    params: dict[str, Any] = attrs.field(factory=dict)
    preprocess: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class PluginsSection:
    """`[plugins]`: plugins loaded for every command (observers, CLI commands)."""

    enable: list[str] = attrs.field(factory=list)


SECTIONS: dict[str, type] = {
    "project": ProjectSection,
    "data": DataSection,
    "store": StoreSection,
    "preprocess": StageSection,
    "train": StageSection,
    "validate": ValidateSection,
    "deploy": StageSection,
    "monitor": StageSection,
    "retrain": RetrainSection,
    "gate": StageSection,
    "loop": LoopSection,
    "alerting": AlertingSection,
    "tune": TuneSection,
    "plugins": PluginsSection,
}
#: Sections whose sub-tables are plugin options, and the key listing the plugins.
PLUGIN_LISTS = {"data": "plugin", **{s: "plugins" for s in STAGES}, "store": "plugins", "plugins": "enable"}


# ---------------------------------------------------------------------------
# A strict converter: a string is not an int, 5 is not a string
# ---------------------------------------------------------------------------


def _strict(kind: type, accept: tuple[type, ...], reject: tuple[type, ...] = ()) -> Any:
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, reject) or not isinstance(value, accept):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


def make_converter() -> cattrs.Converter:
    """The converter config sections and plugin options are structured with."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook(int, _strict(int, (int,), (bool,)))
    conv.register_structure_hook(float, _strict(float, (int, float), (bool,)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(Path, _strict(Path, (str,)))
    # cattrs would happily turn the string "abc" into ["a", "b", "c"].
    def lists(tp: Any) -> Any:
        (item,) = typing.get_args(tp) or (Any,)

        def structure(value: Any, _: type) -> list[Any]:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
            return [conv.structure(v, item) for v in value]

        return structure

    conv.register_structure_hook_factory(lambda tp: typing.get_origin(tp) is list, lists)
    # Options such as `scale_pos_weight: str | float` ("auto" or a number).
    configure_union_passthrough(str | int | float | bool | None, conv)
    return conv


CONVERTER = make_converter()


def _field_names(cls: type) -> list[str]:
    return [f.name for f in attrs.fields(cls)] if attrs.has(cls) else []


def _errors(exc: BaseException, cls: type, path: tuple[str, ...]) -> Iterable[tuple[str, str, str | None]]:
    """Flatten a cattrs error into (key path, message, suggestion)."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield ".".join((*path, key)), "unknown key", closest(key, _field_names(exc.cl))
    elif isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _errors(sub, note.type, (*path, note.name))
        for sub in without:
            yield from _errors(sub, cls, path)
    elif isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _errors(sub, note.type, (*path, str(note.index)))
        for sub in without:
            yield from _errors(sub, cls, path)
    else:  # a validator's error: attrs names the field in args[1] or at the start of the message
        key = path
        attribute = exc.args[1] if len(exc.args) > 1 else None
        match = re.match(r"^'?(\w+)'?", str(exc.args[0])) if exc.args else None
        if isinstance(attribute, attrs.Attribute):
            key = (*path, attribute.name)
        elif match and match.group(1) in _field_names(cls):
            key = (*path, match.group(1))
        message = str(exc.args[0]) if exc.args else str(exc)
        yield ".".join(key), f"wrong value: {message}", None


def structure(data: Mapping[str, Any], cls: type, *, section: str, source: str | None) -> Any:
    """Structure a table into an attrs class, or raise one ConfigError for all mistakes."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {type(data).__name__} {data!r}", section=section,
                          source=source)
    try:
        return CONVERTER.structure(dict(data), cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems = list(_errors(exc, cls, ()))
        key, message, suggestion = problems[0]
        if len(problems) > 1:
            others = "; ".join(f"{k}: {m}" for k, m, _ in problems[1:])
            message = f"{message} (and {len(problems) - 1} more: {others})"
        raise ConfigError(message, section=section, key=key, source=source, suggestion=suggestion) from exc
    except (TypeError, ValueError) as exc:
        (key, message, _), = _errors(exc, cls, ())
        raise ConfigError(message, section=section, key=key or None, source=source) from exc


# ---------------------------------------------------------------------------
# Reading, merging, overriding
# ---------------------------------------------------------------------------


def default_table() -> dict[str, Any]:
    """The built-in defaults: the whole lifecycle on the embedded data."""
    text = resources.files("opsloop").joinpath("default.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def starter_text() -> str:
    """The commented starter config `opsloop init` writes."""
    return resources.files("opsloop").joinpath("starter.toml").read_text(encoding="utf-8")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stage.key=value` from `--set`: the value is TOML when it parses, else a string."""
    path, sep, raw = text.partition("=")
    keys = [k.strip() for k in path.strip().split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.plugins=[\"xgboost\"]")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def _apply_override(table: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node = table
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text!r}: {key} is a value, not a table")
        node = child
    node[keys[-1]] = value


def read(path: Path | None = None, *, overrides: Iterable[str] = (), workdir: Path | None = None) -> Config:
    """Read a config file (or the defaults) and apply `--set` overrides.

    Args:
        path: The file; None reads `opsloop.toml` in `workdir` if it exists,
            else the built-in defaults alone.
        overrides: `SECTION.KEY=VALUE` strings, applied last.
        workdir: Where to look when `path` is None (default: the current directory).
    """
    workdir = Path(workdir or Path.cwd())
    if path is None and (workdir / CONFIG_FILE).is_file():
        path = workdir / CONFIG_FILE
    defaults = default_table()
    user: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no such file: {path}") from None
        except UnicodeDecodeError as exc:  # where, never the file's bytes (issue 8)
            line = exc.object[:exc.start].count(b"\n") + 1
            raise ConfigError(f"not UTF-8 text at byte {exc.start} (line {line})", source=str(path)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
        # A user's data is described whole: the embedded data's periods must not leak into it.
        if "data" in user:
            defaults.pop("data", None)
            defaults["project"]["name"] = ProjectSection().name
    table = _merge(defaults, user)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(table, keys, value, text)
    return Config.from_table(table, path=path, workdir=path.parent if path else workdir)


@attrs.frozen(kw_only=True)
class Config:
    """A config whose core sections are checked; plugin options are checked by `check()`.

    Attributes:
        table: The merged TOML table (defaults, file, overrides).
        path: The file it came from, None for the defaults alone.
        workdir: Directory relative paths in the config are resolved against.
    """

    table: dict[str, Any] = attrs.field(eq=False, repr=False)
    path: Path | None = None
    workdir: Path
    project: ProjectSection
    data: DataSection
    store: StoreSection
    plugins: PluginsSection
    stages: dict[str, StageSection | ValidateSection | RetrainSection]
    loop: LoopSection = attrs.field(factory=LoopSection)
    alerting: AlertingSection = attrs.field(factory=AlertingSection)
    tune: TuneSection = attrs.field(factory=TuneSection)

    @classmethod
    def from_table(cls, table: dict[str, Any], *, path: Path | None = None,
                   workdir: Path | None = None) -> Config:
        """Check the core sections of a merged table."""
        source = str(path) if path else None
        for name in table:
            if name not in SECTIONS:
                raise ConfigError("unknown section", section=name, source=source,
                                  suggestion=closest(name, SECTIONS))
        sections: dict[str, Any] = {}
        for name, section_cls in SECTIONS.items():
            data = table.get(name, {})
            if not isinstance(data, Mapping):
                raise ConfigError(f"expected a table, got {data!r}", section=name, source=source)
            core_keys = set(_field_names(section_cls))
            core = {k: v for k, v in data.items() if k in core_keys or not isinstance(v, Mapping)}
            if name not in PLUGIN_LISTS:  # no plugin tables here: a table is a mistake too
                core = dict(data)
            sections[name] = structure(core, section_cls, section=name, source=source)
        return cls(
            table=table, path=path, workdir=Path(workdir or Path.cwd()),
            project=sections["project"], data=sections["data"], store=sections["store"],
            plugins=sections["plugins"], stages={s: sections[s] for s in STAGES}, loop=sections["loop"],
            alerting=sections["alerting"], tune=sections["tune"],
        )

    @property
    def source(self) -> str:
        """The file name for messages, or `(defaults)`."""
        return str(self.path) if self.path else "(built-in defaults)"

    @property
    def hash(self) -> str:
        """sha256 of the merged table in canonical JSON, for lineage."""
        blob = json.dumps(self.table, sort_keys=True, default=str).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def selected(self, section: str) -> list[str]:
        """The plugins a section selects, in order."""
        if section == "store":
            return list(self.store.plugins)
        if section == "plugins":
            return list(self.plugins.enable)
        if section == "data":
            from opsloop.data import source_plugin

            return [source_plugin(self.data)]
        return list(self.stages[section].plugins)

    def plugin_tables(self, section: str) -> dict[str, Any]:
        """The sub-tables of a section: options by plugin name."""
        data = self.table.get(section, {})
        core = set(_field_names(SECTIONS[section]))
        return {k: v for k, v in data.items() if k not in core and isinstance(v, Mapping)}

    def options_table(self, section: str, plugin: str) -> dict[str, Any]:
        """The options table of one plugin in one section (empty when absent)."""
        return dict(self.plugin_tables(section).get(plugin, {}))

    def resolve(self, value: str | Path) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.workdir / p
