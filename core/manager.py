"""The plugin manager: discovery without imports, loading on demand, attribution.

Discovery reads entry points in the group `opsloop` (name, distribution,
version) from installed metadata and imports nothing. `load(name)` imports a
plugin when the config selects it or a command inspects it, so start-up does
not grow with the number of installed plugins, and a plugin that fails to
import only breaks the commands that need it.
"""

from __future__ import annotations

import importlib.metadata as im
import inspect
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import attrs
import pluggy

from opsloop import hookspecs
from opsloop.errors import (
    PluginCallError,
    PluginConflictError,
    PluginLoadError,
    UnknownPluginError,
    closest,
)

GROUP = "opsloop"
IN_PROCESS = "(registered in-process)"

#: The hooks a plugin must implement to be selected for a stage.
STAGE_HOOKS = {
    "preprocess": "preprocess",
    "train": "train",
    "validate": "validate",
    "deploy": "deploy",
    "monitor": "monitor",
    "retrain": "decide_retrain",
    "gate": "gate",
    "store": "open_store",
    "data": "load_data",
}


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What discovery knows about a plugin before importing it."""

    name: str
    dist: str
    version: str
    value: str
    entry_point: im.EntryPoint | None = attrs.field(default=None, eq=False, repr=False)
    obj: object | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def label(self) -> str:
        """`dist version`, for messages."""
        return f"{self.dist} {self.version}".strip()


def discover(group: str = GROUP) -> tuple[dict[str, PluginInfo], dict[str, list[str]]]:
    """Entry points of `group`, without importing them.

    Returns:
        The plugins by name, and the names that more than one distribution
        registers (with those distributions).
    """
    known: dict[str, PluginInfo] = {}
    conflicts: dict[str, list[str]] = {}
    # Each distribution's METADATA once, not twice per entry point: opsloop's own 18
    # built-ins parsed it 36 times, 10 ms of `plugins list` (issue 8, item 14).
    labels: dict[int, tuple[object, str, str]] = {}  # the dist is kept so that its id stays its own
    for ep in im.entry_points(group=group):
        dist = ep.dist
        if id(dist) not in labels:
            meta = dist.metadata if dist else None
            labels[id(dist)] = (dist, *((meta["Name"], meta["Version"]) if meta is not None else ("?", "")))
        _, name, version = labels[id(dist)]
        info = PluginInfo(name=ep.name, dist=name, version=version, value=ep.value, entry_point=ep)
        seen = known.get(ep.name)
        if seen is None:
            known[ep.name] = info
        elif seen.dist != info.dist:  # the same dist twice on sys.path is not a conflict
            conflicts.setdefault(ep.name, [seen.label]).append(info.label)
    return known, conflicts


#: `dist version` of every plugin loaded in this process, by name: errors raised outside a manager call (a hook
#: that returned the wrong type, found by the runner) carry it too.
_LABELS: dict[str, str] = {}


def label_of(plugin: str) -> str | None:
    """`dist version` of a loaded plugin, for messages; None when no manager loaded it."""
    return _LABELS.get(plugin)


def check_hooks(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """What is wrong with a plugin's hook implementations, in one line with "did you mean", or None.

    pluggy's own errors name the module, not the plugin, span lines, and
    suggest nothing: a misspelt hook and an argument the hook does not pass
    are the two mistakes a plugin author makes.
    """
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook = opts.get("specname") or attr
        caller = getattr(pm.hook, hook, None)
        spec = caller.spec if caller is not None else None
        if spec is None:
            hint = closest(hook, [h for h in dir(hookspecs) if getattr(getattr(hookspecs, h), "opsloop_spec", None)])
            hint = f' (did you mean "{hint}"?)' if hint else ""
            return f'implements "{hook}", which is not an opsloop hook{hint}; the hooks are listed in docs/hooks.md'
        params = inspect.signature(getattr(plugin, attr)).parameters.values()
        unknown = [p.name for p in params if p.default is p.empty and p.name not in spec.argnames
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if unknown:
            hints = [f'"{a}" (did you mean "{closest(a, spec.argnames)}"?)' if closest(a, spec.argnames) else f'"{a}"'
                     for a in unknown]
            return (f"has {hook}() take {', '.join(hints)}, which {hook} does not pass; "
                    f"{hook} passes {', '.join(spec.argnames)}")
    return None


#: Called with every new PluginManager: `opsloop.testing` uses it to add in-process
#: plugins and hook recorders to the managers that commands build for themselves.
ON_NEW_MANAGER: list[Callable[[PluginManager], None]] = []


class PluginManager:
    """opsloop's view of installed plugins, wrapping a pluggy manager."""

    def __init__(self, known: dict[str, PluginInfo] | None = None,
                 conflicts: dict[str, list[str]] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if known is None:
            known, conflicts = discover()
        self.known: dict[str, PluginInfo] = dict(known)
        self.conflicts: dict[str, list[str]] = dict(conflicts or {})
        self.broken: dict[str, BaseException] = {}
        #: Called as `record(hook, plugin, kwargs, result)` after every successful hook call.
        self.recorders: list[Callable[[str, str, dict[str, Any], Any], None]] = []
        #: What observers raised and the run went on after (one line each, `plugin "x" (dist v) failed in on_...`).
        self.warnings: list[str] = []
        #: Observers that raised: not called again by this manager (`notify`).
        self.muted: set[str] = set()
        #: Each plugin's own checked options, passed to its observer hooks as `options` (filled by
        #: `Session`: `[plugins.<name>]` for an enabled plugin, else its stage table).
        self.observer_options: dict[str, Any] = {}
        for callback in ON_NEW_MANAGER:
            callback(self)

    # -- loading -----------------------------------------------------------

    def info(self, name: str, *, where: str | None = None) -> PluginInfo:
        """Discovery facts of `name`; UnknownPluginError with the closest name."""
        if name in self.conflicts:
            raise PluginConflictError(name, self.conflicts[name])
        try:
            return self.known[name]
        except KeyError:
            raise UnknownPluginError(name, self.known, where=where) from None

    def load(self, name: str, *, where: str | None = None) -> object:
        """Import and register plugin `name` (once); PluginLoadError if it fails."""
        existing = self.pm.get_plugin(name)
        if existing is not None:
            return existing
        info = self.info(name, where=where)
        if name in self.broken:
            raise PluginLoadError(name, info.label, self.broken[name])
        problem = None
        try:
            plugin = info.obj if info.obj is not None else info.entry_point.load()  # type: ignore[union-attr]
            problem = check_hooks(self.pm, plugin, name)
            if problem is not None:
                raise pluggy.PluginValidationError(plugin, problem)
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # what check_hooks does not foresee still fails here, naming its plugin
        except Exception as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self.broken[name] = exc
            raise PluginLoadError(name, info.label, exc, problem=problem) from exc
        _LABELS[name] = info.label
        return plugin

    def load_all(self, names: Iterable[str], *, where: str | None = None) -> None:
        """Load several plugins, in order."""
        for name in names:
            self.load(name, where=where)

    def try_load_everything(self) -> None:
        """Import every discovered plugin, recording failures in `broken` (for `plugins list`)."""
        for name in self.known:
            if name in self.conflicts:
                continue
            try:
                self.load(name)
            except PluginLoadError:
                pass

    def add(self, plugin: object, name: str, *, dist: str = IN_PROCESS, version: str = "") -> None:
        """Make an in-process plugin known, as if installed; it loads when selected."""
        value = getattr(plugin, "__name__", type(plugin).__name__)
        seen = self.known.get(name)
        if seen is not None and seen.obj is not plugin and seen.value != value:
            self.conflicts[name] = [seen.label, f"{dist} {version}".strip()]
            return
        self.known[name] = PluginInfo(name=name, dist=dist, version=version, value=value, obj=plugin)

    def register(self, plugin: object, name: str, *, dist: str = IN_PROCESS, version: str = "") -> None:
        """Add and load an in-process plugin at once (tests, notebooks, embedding opsloop)."""
        self.add(plugin, name, dist=dist, version=version)
        self.load(name)

    # -- introspection -----------------------------------------------------

    def hooks_of(self, name: str) -> list[str]:
        """Names of the hooks plugin `name` implements (it must be loaded)."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return []
        return sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])

    def implements(self, name: str, hook: str) -> bool:
        """Whether loaded plugin `name` implements `hook`."""
        return self._impl(name, hook) is not None

    def _impl(self, name: str, hook: str) -> pluggy.HookImpl | None:
        caller = getattr(self.pm.hook, hook)
        return next((i for i in caller.get_hookimpls() if i.plugin_name == name), None)

    def options_class(self, name: str) -> type | None:
        """The attrs class plugin `name` declares for its options, or None."""
        if not self.implements(name, "plugin_options"):
            return None
        return self.call(name, "plugin_options")

    def describe(self, name: str) -> str:
        """The first paragraph of the plugin module's docstring."""
        plugin = self.pm.get_plugin(name)
        doc = inspect.getdoc(plugin) if plugin is not None else None
        if not doc and isinstance(plugin, ModuleType):
            doc = plugin.__doc__
        return (doc or "").strip().split("\n\n")[0].replace("\n", " ")

    # -- calling -----------------------------------------------------------
    #
    # Every hook call goes through `_invoke`: one impl at a time, so that an
    # error names its plugin, and recorders (opsloop.testing's hook_recorder)
    # see stage hooks as well as observer and firstresult hooks.

    def _invoke(self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> Any:
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except PluginCallError:
            raise  # a nested call (validate -> fit -> train) already named the culprit
        except Exception as exc:
            raise PluginCallError(impl.plugin_name, hook, exc, dist=self._label(impl.plugin_name)) from exc
        for record in self.recorders:
            record(hook, impl.plugin_name, kwargs, result)
        return result

    def call(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of `hook`, blaming it for any error.

        Only the arguments the implementation names are passed, as pluggy does.
        """
        impl = self._impl(name, hook)
        if impl is None:
            raise PluginCallError(name, hook, NotImplementedError(f"plugin does not implement {hook}"),
                                  dist=self._label(name))
        return self._invoke(impl, hook, kwargs)

    def first(self, hook: str, **kwargs: Any) -> tuple[str, Any] | tuple[None, None]:
        """A firstresult hook, also telling which plugin answered: `(plugin, result)`."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls()[::-1]:  # pluggy's order: last registered first
            result = self._invoke(impl, hook, kwargs)
            if result is not None:
                return impl.plugin_name, result
        return None, None

    def notify(self, hook: str, *, swallow: bool = False, **kwargs: Any) -> None:
        """Call an observer hook on every loaded plugin, in registration (configured) order, each with its
        own options (`observer_options`).

        An observer that raises is a warning (logged, and kept in `warnings`
        for the run's summary), the others still hear the event, and the
        command goes on without it: it is not called again, so that a tracking
        server that is down costs one timeout, not one per event. Unless its
        options say `critical = true`: then its error ends the command, as a
        stage plugin's does. With `swallow` (`on_stage_error`, so that the
        original error is the one reported) even a critical one is a warning.
        """
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name in self.muted:
                continue
            options = self.observer_options.get(impl.plugin_name)
            try:
                self._invoke(impl, hook, {**kwargs, "options": options})
            except PluginCallError as exc:
                if getattr(options, "critical", False) is True and not swallow:
                    raise
                self.muted.add(impl.plugin_name)
                self.warnings.append(str(exc))
                logging.getLogger("opsloop").warning("warning: %s (the run goes on without it: an observer's error "
                                                     "does not stop it unless its options say critical = true)", exc)

    def run_ended(self, command: str, result: Any, run: Any, *, error: BaseException | None = None,
                  outcome: str | None = None) -> None:
        """Tell every observer that a run ended (`on_run_end`). `outcome` defaults from `error`: none is
        "ok", a KeyboardInterrupt "stopped", anything else "error"; `error` is passed only with those two. What
        an observer raises is a warning (`swallow`), never the command's exit code."""
        if outcome is None:
            outcome = "ok" if error is None else "stopped" if isinstance(error, KeyboardInterrupt) else "error"
        self.notify("on_run_end", command=command, outcome=outcome, result=result,
                    error=error if outcome in ("error", "stopped") else None, run=run, swallow=True)

    def _label(self, name: str) -> str | None:
        info = self.known.get(name)
        return info.label if info else None
