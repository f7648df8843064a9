"""Lineage: where a version came from, recorded in its manifest and the store."""

from __future__ import annotations

import getpass
import importlib.metadata as im
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsloop.config import Config
    from opsloop.manager import PluginManager
    from opsloop.types import Dataset

LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost", "skops", "pluggy", "pyarrow")


def git_state(directory: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git work tree holding `directory`, or None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def versions(plugins: PluginManager, used: list[str]) -> dict[str, Any]:
    """Versions of Python, opsloop, the plugins used and the main libraries."""
    libs = {}
    for lib in LIBRARIES:
        try:
            libs[lib] = im.version(lib)
        except im.PackageNotFoundError:
            continue
    plugin_versions = {}
    for name in dict.fromkeys(used):
        info = plugins.known.get(name)
        if info is not None:
            plugin_versions[name] = {"dist": info.dist, "version": info.version}
    try:
        opsloop_version = im.version("opsloop")
    except im.PackageNotFoundError:
        opsloop_version = "unknown"
    return {"python": platform.python_version(), "opsloop": opsloop_version, "plugins": plugin_versions,
            "libraries": libs}


def record(*, config: Config, plugins: PluginManager, used: list[str], data: Dataset, run_id: str,
           parent: str | None = None) -> dict[str, Any]:
    """The lineage of a version about to be registered."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {
        "run_id": run_id,
        "user": user,
        "host": platform.node(),
        "data": {"source": data.name, "fingerprint": data.fingerprint, "rows": len(data)},
        "config": config.table,
        "config_hash": config.hash,
        "config_file": str(config.path) if config.path else None,
        "git": git_state(config.workdir),
        "versions": versions(plugins, used),
        "parent": parent,
    }
