"""The search space of `opsloop tune`: what each searched value is and where it goes in the config.

`[tune.params]` (or a trainer's `tune_space` hook, with its members' spaces
prefixed by their names) and `[tune.preprocess.<step>]` become
`Dimension`s, checked before any trial: an unknown name (with the closest
one), an empty or inverted range, a log range through 0, an empty list of
choices, a value the option refuses. `apply` writes one trial's values into a
copy of the config table. Used by `opsloop.tuning`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError, PluginCallError, closest
from opsloop.types import SearchParam, SearchSpace

if TYPE_CHECKING:
    import optuna

    from opsloop.session import Session

SPEC_KEYS = ("low", "high", "log", "step", "choices")

# ---------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)  # keys of a trial's values: by identity (choices may be lists)
class Dimension:
    """One searched value and where it goes in the config.

    Attributes:
        name: Optuna's parameter name (`max_depth`, `xgboost.max_depth` for
            an ensemble's member, `preprocess.rolling-features.windows`,
            `xgboost/max_depth` when trainers are searched too).
        section: `"train"` or `"preprocess"`.
        plugin: Whose options it sets.
        key: The option (a field of the plugin's options, or a key of its
            `params` table when `in_params`).
        in_params: Set inside the options' `params` table.
        param: The range or choices.
        trainer: The trainer this dimension belongs to (None: every trial).
    """

    name: str
    section: str
    plugin: str
    key: str
    in_params: bool
    param: SearchParam
    trainer: str | None = None

    @property
    def encoded(self) -> bool:
        """Choices Optuna cannot store as they are (lists, tables): searched as their JSON text."""
        choices = self.param.choices
        return choices is not None and not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        p = self.param
        if p.choices is not None:
            if self.encoded:
                return json.loads(trial.suggest_categorical(self.name, [json.dumps(c) for c in p.choices]))
            return trial.suggest_categorical(self.name, list(p.choices))
        if isinstance(p.low, int) and isinstance(p.high, int) and (p.step is None or isinstance(p.step, int)):
            return trial.suggest_int(self.name, p.low, p.high, step=p.step or 1, log=p.log)
        return trial.suggest_float(self.name, float(p.low), float(p.high), step=p.step, log=p.log)

    def decode(self, value: Any) -> Any:
        """A stored trial's value as the config takes it."""
        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def describe(self) -> str:
        p = self.param
        if p.choices is not None:
            return "one of " + ", ".join(json.dumps(c) for c in p.choices)
        text = f"{p.low} to {p.high}"
        return text + (", log scale" if p.log else "") + (f", step {p.step}" if p.step else "")


def parse_param(spec: Any, *, section: str, key: str, source: str | None) -> SearchParam:
    """A search spec from config (`{ low = 3, high = 10 }`, `{ choices = [...] }`), checked: ConfigError for
    an unknown key, an empty or inverted range, a log range through 0, an empty list of choices."""
    def fail(message: str, suggestion: str | None = None) -> ConfigError:
        return ConfigError(message, section=section, key=key, source=source, suggestion=suggestion)

    if isinstance(spec, SearchParam):
        spec = {k: v for k, v in attrs.asdict(spec).items() if v not in (None, False)}
    if not isinstance(spec, Mapping):
        raise fail(f"expected a range {{ low = ..., high = ... }} or {{ choices = [...] }}, got {spec!r}")
    for name in spec:
        if name not in SPEC_KEYS:
            raise fail(f"unknown key {name!r} in the search spec (keys: {', '.join(SPEC_KEYS)})",
                       closest(str(name), SPEC_KEYS))
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) - {"choices"}:
            raise fail("give either choices or a range (low, high), not both")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise fail(f"choices must be a non-empty list, got {choices!r}")
        return SearchParam(choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    numbers = [v for v in (low, high, spec.get("step")) if v is not None]
    if low is None or high is None:
        raise fail(f"a range needs both low and high, got {dict(spec)!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
        raise fail(f"low, high and step must be finite numbers, got {dict(spec)!r}")
    if low > high:
        raise fail(f"the range is inverted: low {low} is above high {high}")
    if low == high:
        raise fail(f"the range is empty: low and high are both {low}; write the value in the plugin's own "
                   "table instead of searching it")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise fail(f"a log-scale range must be above 0, got low {low}")
    step = spec.get("step")
    if step is not None and (step <= 0 or log):
        raise fail("step must be above 0 and cannot be combined with log" if step > 0 or log
                   else f"step must be above 0, got {step}")
    return SearchParam(low=low, high=high, log=log, step=step)


def _fields(session: Session, plugin: str) -> list[str]:
    cls = session.plugins.options_class(plugin)
    return [f.name for f in attrs.fields(cls)] if cls is not None and attrs.has(cls) else []


def _space(session: Session, plugin: str) -> SearchSpace:
    """A trainer's `tune_space`, or an empty one when it has none."""
    if not session.plugins.implements(plugin, "tune_space"):
        return SearchSpace()
    options = session.options.get(("train", plugin))
    space = session.plugins.call(plugin, "tune_space", options=options)
    if space is None:
        return SearchSpace()
    if not isinstance(space, SearchSpace):
        raise PluginCallError(plugin, "tune_space", TypeError(f"returned {type(space).__name__}, expected "
                                                              "SearchSpace"), dist=session.plugins.known[plugin].label)
    return space


def trainer_dimensions(session: Session, trainer: str, specs: Mapping[str, Any], *, prefix: str,
                       where: str) -> list[Dimension]:
    """The dimensions of one trainer: `specs` (from `[tune.params]`), or, when empty, the defaults its
    `tune_space` (and its members', prefixed with their names) declares. ConfigError for a name the
    trainer does not have, with the closest one."""
    source = session.config.source
    members = session.plugins_behind("train", trainer)
    spaces = {name: _space(session, name) for name in members}
    if not specs:
        specs = {**spaces[trainer].params,
                 **{f"{m}.{k}": v for m in members[1:] for k, v in spaces[m].params.items()}}
        if not specs:
            raise ConfigError(f'trainer "{trainer}" declares no default search space (no tune_space hook); '
                              "name the options to search here, e.g. max_depth = { low = 3, high = 10 }",
                              section=where, source=source)
    dims = []
    for name, spec in specs.items():
        plugin, key = trainer, name
        head, dot, rest = name.partition(".")
        if dot and head in members[1:]:
            plugin, key = head, rest
        fields = [f for f in _fields(session, plugin) if f != "params"]
        passthrough = spaces[plugin].passthrough
        if key not in fields and key not in passthrough:
            known = [*fields, *sorted(passthrough), *(f"{m}.{k}" for m in members[1:] for k in _fields(session, m))]
            raise ConfigError(f'trainer "{plugin}" has no parameter {key!r} (its options: '
                              f"{', '.join(fields) or 'none'}"
                              + (f"; and {len(passthrough)} more it passes to its library" if passthrough else "")
                              + ")", section=where, key=name, source=source, suggestion=closest(name, known))
        param = parse_param(spec, section=where, key=name, source=source)
        dims.append(Dimension(name=f"{prefix}{name}", section="train", plugin=plugin, key=key,
                              in_params=key not in fields, param=param, trainer=trainer))
    return dims


def preprocess_dimensions(session: Session, specs: Mapping[str, Any]) -> list[Dimension]:
    """`[tune.preprocess.<step>]` tables: the step must be selected, the keys must be its options."""
    source = session.config.source
    steps = session.config.selected("preprocess")
    dims = []
    for step, table in specs.items():
        where = f"tune.preprocess.{step}"
        if step not in steps:
            raise ConfigError(f'preprocess step "{step}" is not selected in [preprocess] plugins '
                              f"({', '.join(steps) or 'none'})", section="tune.preprocess", key=step,
                              source=source, suggestion=closest(step, steps))
        if not isinstance(table, Mapping):
            raise ConfigError(f"expected a table of search specs, got {table!r}", section=where, source=source)
        fields = _fields(session, step)
        for key, spec in table.items():
            if key not in fields:
                raise ConfigError(f'preprocess step "{step}" has no option {key!r} (its options: '
                                  f"{', '.join(fields) or 'none'})", section=where, key=key, source=source,
                                  suggestion=closest(key, fields))
            dims.append(Dimension(name=f"preprocess.{step}.{key}", section="preprocess", plugin=step, key=key,
                                  in_params=False, param=parse_param(spec, section=where, key=key, source=source)))
    return dims


def apply(table: Mapping[str, Any], trainer: str, values: Mapping[Dimension, Any]) -> dict[str, Any]:
    """The config table of a trial: the trainer selected, each value written where its dimension says."""
    out = copy.deepcopy(dict(table))
    out.pop("tune", None)
    out.setdefault("train", {})["plugins"] = [trainer]
    for dim, value in values.items():
        options = out.setdefault(dim.section, {}).setdefault(dim.plugin, {})
        if dim.in_params:
            options = options.setdefault("params", {})
        options[dim.key] = value
    return out


def check_values(session: Session, dims: list[Dimension]) -> None:
    """Every end of every range and every choice, written into its plugin's options and checked as the config
    would be: a wrong type or a value the option refuses is found before the first trial."""
    from opsloop.config import structure

    config = session.config
    for dim in dims:
        if dim.in_params:
            continue  # the library checks what it is passed through to it, at the first trial
        p = dim.param
        values = list(p.choices) if p.choices is not None else [p.low, p.high]
        cls = session.plugins.options_class(dim.plugin)
        if cls is None:
            continue
        for value in values:
            table = {**config.options_table(dim.section, dim.plugin), dim.key: value}
            try:
                structure(table, cls, section=f"{dim.section}.{dim.plugin}", source=config.source)
            except ConfigError as exc:
                where = "tune.params" if dim.section == "train" else f"tune.preprocess.{dim.plugin}"
                name = dim.name.split("/", 1)[-1] if dim.section == "train" else dim.key
                raise ConfigError(f"the value {value!r} of this search is refused by [{dim.section}.{dim.plugin}] "
                                  f"{dim.key}: {exc.message}", section=where, key=name,
                                  source=config.source) from None
