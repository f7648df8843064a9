"""Errors: every failure a user can cause is an `OpsloopError` that says what and where.

Each subclass keeps its facts as attributes and formats them once in
`__str__`, so the CLI can print one line and tests can assert on the facts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "OpsloopError",
    "PluginCallError",
    "PluginConflictError",
    "PluginLoadError",
    "RegistryDamaged",
    "StoreError",
    "UnknownPluginError",
    "closest",
    "one_line",
]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt one, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_line(exc: BaseException) -> str:
    """An exception as one line: an opsloop error's own words, else `Type('message')` with line breaks folded."""
    if isinstance(exc, OpsloopError):
        return " ".join(str(exc).split())
    text = str(exc)
    if "\n" not in text:
        return repr(exc)
    return f"{type(exc).__name__}: {'; '.join(line.strip() for line in text.splitlines() if line.strip())}"


def _wrap(dist: str | None) -> str:
    """` (dist version)` for a message; an in-process plugin's label already has its parentheses."""
    if not dist:
        return ""
    return f" {dist}" if dist.startswith("(") else f" ({dist})"


class OpsloopError(Exception):
    """Root of every error opsloop reports to a user as one clear line."""


class ConfigError(OpsloopError):
    """A config value is wrong: names the file, the section and the key."""

    def __init__(
        self,
        message: str,
        *,
        section: str | None = None,
        key: str | None = None,
        source: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.message = message
        self.section = section
        self.key = key
        self.source = source
        self.suggestion = suggestion
        super().__init__(message)

    def __str__(self) -> str:
        where = ".".join(p for p in (self.section, self.key) if p)
        loc = f"[{where}] " if where else ""
        src = f"{self.source}: " if self.source else ""
        hint = f' (did you mean "{self.suggestion}"?)' if self.suggestion else ""
        return f"config error: {src}{loc}{self.message}{hint}"


class UnknownPluginError(OpsloopError):
    """A plugin name that no installed distribution provides."""

    def __init__(self, name: str, known: Iterable[str], *, where: str | None = None) -> None:
        self.name = name
        self.known = sorted(known)
        self.where = where
        self.suggestion = closest(name, self.known)
        super().__init__(name)

    def __str__(self) -> str:
        where = f" in [{self.where}]" if self.where else ""
        hint = f' (did you mean "{self.suggestion}"?)' if self.suggestion else ""
        if not self.known:
            return (f'unknown plugin "{self.name}"{where}: no opsloop plugins are installed at all, '
                    "so opsloop itself is not installed (pip install -e .)")
        return f'unknown plugin "{self.name}"{where}{hint}; installed: {", ".join(self.known)}'


class PluginConflictError(OpsloopError):
    """Two installed distributions register the same plugin name."""

    def __init__(self, plugin: str, dists: Iterable[str]) -> None:
        self.plugin = plugin
        self.dists = sorted(dists)
        super().__init__(plugin)

    def __str__(self) -> str:
        return (f'plugin name "{self.plugin}" is registered by more than one distribution: '
                f'{" and ".join(self.dists)}; uninstall one of them')


class PluginLoadError(OpsloopError):
    """A plugin's module could not be imported or registered.

    `problem`, when given, replaces "failed to load: <cause>" (a misspelt hook, a hook argument that the hook
    does not pass: the manager's own words, with "did you mean").
    """

    def __init__(self, plugin: str, dist: str, cause: BaseException, *, problem: str | None = None) -> None:
        self.plugin = plugin
        self.dist = dist
        self.cause = cause
        self.problem = problem
        super().__init__(plugin)

    def __str__(self) -> str:
        return f'plugin "{self.plugin}"{_wrap(self.dist)} {self.problem or "failed to load: " + one_line(self.cause)}'


class PluginCallError(OpsloopError):
    """A plugin raised while a hook was running; names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, cause: BaseException, *, dist: str | None = None) -> None:
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        if dist is None:  # raised outside the manager (a wrong return type): the label of the plugin's last load
            from opsloop.manager import label_of

            dist = label_of(plugin)
        self.dist = dist
        super().__init__(plugin)

    def __str__(self) -> str:
        return f'plugin "{self.plugin}"{_wrap(self.dist)} failed in {self.hook}: {one_line(self.cause)}'


class DataError(OpsloopError):
    """Input data is missing, unreadable or does not fit what the model expects."""


class StoreError(OpsloopError):
    """The model store cannot do what was asked (unknown model, bad name, busy...)."""


class RegistryDamaged(StoreError):
    """A registry's index is empty, unreadable or corrupt (issue 8, defect 4).

    Raised instead of opening it, so that nothing is written next to bundles
    the index no longer knows. `rebuild`, when the store can rebuild its
    index from its bundles' manifests (`opsloop models reindex`), does that
    and returns the store's report of it.
    """

    def __init__(self, path: str, problem: str, *, rebuild: Callable[[], Any] | None = None) -> None:
        self.path = path
        self.problem = problem
        self.rebuild = rebuild
        super().__init__(path)

    def __str__(self) -> str:
        hint = ("run `opsloop models reindex` to rebuild the index from the bundles' manifests"
                if self.rebuild is not None else "restore it from a backup")
        return f"model registry {self.path} {self.problem}; {hint}"


class BundleError(OpsloopError):
    """A model bundle is corrupt, tampered with, or cannot be loaded safely."""

    def __init__(self, message: str, *, model: str | None = None, version: int | None = None,
                 file: str | None = None) -> None:
        self.message = message
        self.model = model
        self.version = version
        self.file = file
        super().__init__(message)

    def __str__(self) -> str:
        ref = ""
        if self.model is not None:
            ref = f"{self.model}:{self.version}" if self.version is not None else self.model
            ref = f"model {ref}: "
        file = f"{self.file}: " if self.file else ""
        return f"{ref}{file}{self.message}"
