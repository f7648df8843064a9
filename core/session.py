"""A checked config bound to loaded plugins: what every command works from.

`Session.open(config)` loads exactly the plugins the config selects, checks
that each implements its stage's hook, and structures each plugin's options.
Nothing else is imported, so a broken plugin that is not selected changes
nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.config import PLUGIN_LISTS, Config, structure
from opsloop.errors import ConfigError, PluginCallError, StoreError, UnknownPluginError, closest
from opsloop.manager import STAGE_HOOKS, PluginManager

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opsloop.store import AliasChange, ModelStore
    from opsloop.types import RunContext

#: How many plugins a section may select: (at least, at most).
CARDINALITY = {"train": (1, 1), "store": (1, None), "preprocess": (0, None), "data": (1, 1)}
STORE_ENV = "OPSLOOP_STORE"


@attrs.define
class Session:
    """Config, plugins and checked options, ready for the runner and the CLI."""

    config: Config
    plugins: PluginManager
    options: dict[tuple[str, str], Any] = attrs.field(factory=dict)
    #: (section, plugin) -> the (section, plugin) pairs its options say it calls (`uses_plugins`), in order.
    used: dict[tuple[str, str], list[tuple[str, str]]] = attrs.field(factory=dict)

    @classmethod
    def open(cls, config: Config, plugins: PluginManager | None = None, *,
             sections: tuple[str, ...] | None = None) -> Session:
        """Load and check the plugins the config selects.

        Args:
            config: The config.
            plugins: A plugin manager (a new one discovers installed plugins).
            sections: Only these sections (default: all), so `models list`
                does not need the trainer to import.
        """
        session = cls(config=config, plugins=plugins or PluginManager())
        for section in sections or tuple(PLUGIN_LISTS):
            session._check_section(section)
        return session

    def _check_section(self, section: str) -> None:
        config, pm = self.config, self.plugins
        list_key = PLUGIN_LISTS[section]
        where = f"{section}.{list_key}"
        names = config.selected(section)
        low, high = CARDINALITY.get(section, (0, None))
        if len(names) < low or (high is not None and len(names) > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}"
            raise ConfigError(f"selects {len(names)} plugins, needs {wanted}", section=section,
                              key=list_key, source=config.source)
        if len(set(names)) != len(names):
            raise ConfigError(f"lists a plugin twice: {names}", section=section, key=list_key,
                              source=config.source)
        for name in names:
            try:
                pm.load(name, where=where)
            except UnknownPluginError as exc:
                if section == "data" and config.data.plugin is None:  # the name came from the source's scheme
                    raise ConfigError(f'no data source plugin "{name}" is installed to read {config.data.source!r} '
                                      f"(the plugin is named by the URI's scheme); install the package that "
                                      f"provides it (opsloop-{name}?), or name one with [data] plugin "
                                      "(docs/data-sources.md)", section="data", key="source", source=config.source,
                                      suggestion=closest(name, pm.known)) from exc
                raise ConfigError(str(exc), section=section, key=list_key, source=config.source) from exc
            hook = STAGE_HOOKS.get(section)
            if hook and not pm.implements(name, hook):
                raise ConfigError(f'plugin "{name}" cannot be selected here: it does not implement '
                                  f"the {hook} hook (it implements: {', '.join(pm.hooks_of(name)) or 'nothing'})",
                                  section=section, key=list_key, source=config.source)
            self.options[(section, name)] = self._options(section, name)
            if section == "plugins" or name not in pm.observer_options:  # what its observer hooks get
                pm.observer_options[name] = self.options[(section, name)]
            self._check_against_config(section, name, self.options[(section, name)])
            self._check_uses(section, name, self.options[(section, name)], ((section, name),))
        for table in config.plugin_tables(section):
            if table in names:
                continue
            if table not in pm.known:  # a typo in a plugin's table name must not pass silently
                raise ConfigError(f'table for unknown plugin "{table}"', section=section, key=table,
                                  source=config.source, suggestion=closest(table, [*names, *pm.known]))

    def _options(self, section: str, name: str) -> Any:
        cls = self.plugins.options_class(name)
        table = self.config.options_table(section, name)
        if cls is None:
            if table:
                raise ConfigError(f'plugin "{name}" takes no options', section=f"{section}.{name}",
                                  key=next(iter(table)), source=self.config.source)
            return None
        return structure(table, cls, section=f"{section}.{name}", source=self.config.source)

    def _check_against_config(self, section: str, name: str, options: Any) -> None:
        """A plugin's options may check themselves against the rest of the config (`check_config(config)`):
        what one table cannot know alone, such as a window duration that needs `[data] time`."""
        check = getattr(options, "check_config", None)
        if not callable(check):
            return
        try:
            check(self.config)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), section=f"{section}.{name}", source=self.config.source) from None

    def _check_uses(self, section: str, name: str, options: Any, chain: tuple[tuple[str, str], ...]) -> None:
        """Load and check the plugins a plugin's options say it calls (`uses_plugins()`: (key, section, plugin)
        triples, e.g. the `ensemble` trainer's members), with their own options, before anything runs."""
        uses = getattr(options, "uses_plugins", None)
        if not callable(uses):
            return
        where = f"{section}.{name}"
        for key, used_section, used in uses():
            if (used_section, used) in chain:
                raise ConfigError(f'plugin "{used}" would call itself ({" -> ".join(n for _, n in chain)} -> {used})',
                                  section=where, key=key, source=self.config.source)
            try:
                self.plugins.load(used, where=f"{where}.{key}")
            except UnknownPluginError as exc:
                raise ConfigError(str(exc), section=where, key=key, source=self.config.source) from exc
            hook = STAGE_HOOKS.get(used_section)
            if hook and not self.plugins.implements(used, hook):
                raise ConfigError(f'plugin "{used}" cannot be used here: it does not implement the {hook} hook '
                                  f"(it implements: {', '.join(self.plugins.hooks_of(used)) or 'nothing'})",
                                  section=where, key=key, source=self.config.source)
            if (used_section, used) not in self.options:
                self.options[(used_section, used)] = self._options(used_section, used)
                self._check_against_config(used_section, used, self.options[(used_section, used)])
            self.used.setdefault((section, name), [])
            if (used_section, used) not in self.used[(section, name)]:
                self.used[(section, name)].append((used_section, used))
            self._check_uses(used_section, used, self.options[(used_section, used)], (*chain, (used_section, used)))

    def plugins_behind(self, section: str, name: str) -> list[str]:
        """`name` and every plugin it uses (`uses_plugins`), depth first: whose versions shape its result."""
        names = [name]
        for used_section, used in self.used.get((section, name), []):
            names.extend(n for n in self.plugins_behind(used_section, used) if n not in names)
        return names

    def plugin_options(self, name: str) -> Any:
        """Plugin `name`'s own checked options, as its observer hooks get them: `[plugins.<name>]` when
        `[plugins] enable` lists it, else its table in the first stage that selects it; None without options."""
        return self.plugins.observer_options.get(name)

    def options_for(self, section: str, name: str) -> Any:
        """The checked options of a selected plugin."""
        return self.options[(section, name)]

    def set_alias(self, store: ModelStore, name: str, alias: str, version: int, *, reason: str,
                  run: RunContext | None = None, threshold: Mapping[str, Any] | None = None) -> AliasChange | None:
        """Move an alias (and, with `threshold`, give the version a new alert threshold), record it, and tell
        `on_alias_changed` observers."""
        change = (store.set_alias(name, alias, version, reason=reason) if threshold is None
                  else store.set_alias(name, alias, version, reason=reason, threshold=threshold))
        if change is not None:
            self.plugins.notify("on_alias_changed", change=change, run=run)
        return change

    def rollback(self, store: ModelStore, name: str, alias: str, *, reason: str,
                 run: RunContext | None = None) -> AliasChange:
        """Move an alias back to its previous version and tell observers."""
        change = store.rollback(name, alias, reason=reason)
        self.plugins.notify("on_alias_changed", change=change, run=run)
        return change

    def open_store(self) -> ModelStore:
        """The registry named by `OPSLOOP_STORE` or `[store] uri`."""
        if ("store", self.config.selected("store")[0]) not in self.options:
            self._check_section("store")
        uri = os.environ.get(STORE_ENV) or self.config.store.uri
        store = None
        for name in self.config.selected("store"):
            try:
                store = self.plugins.call(name, "open_store", uri=uri, workdir=Path(self.config.workdir))
            except PluginCallError as exc:
                if isinstance(exc.cause, StoreError):  # the store speaking about the registry: its words alone
                    raise exc.cause from exc
                raise
            if store is not None:
                break
        if store is None:
            raise StoreError(f"no store plugin accepts {uri!r} (tried: {', '.join(self.config.selected('store'))}); "
                             "check [store] uri and plugins")
        return store


def plugin_options(name: str, config: Config | Path | str | None = None) -> Any:
    """A plugin's own options, read and checked from a config, for code that no hook hands them to (a command a
    plugin adds with `add_commands`, a script): `[plugins.<name>]` if `[plugins] enable` lists the plugin, else
    its table in the stage that selects it; an instance of the class its `plugin_options` hook returns, or None.

    Args:
        name: The plugin's name.
        config: A Config, a path to a config file, or None for `opsloop.toml` in the current directory.

    Raises:
        ConfigError: the table is misspelt or its values are wrong (the same one-line errors `config check` gives).
    """
    from opsloop.config import read

    cfg = config if isinstance(config, Config) else read(Path(config) if config is not None else None)
    session = Session.open(cfg)
    if name not in session.plugins.observer_options:
        raise ConfigError(f'plugin "{name}" is neither in [plugins] enable nor selected by a stage, so it has no '
                          "options in this config", section="plugins", key="enable", source=cfg.source,
                          suggestion=closest(name, session.plugins.observer_options))
    return session.plugin_options(name)
