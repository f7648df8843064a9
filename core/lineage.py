"""Lineage: where a version came from, recorded in its manifest and the store."""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata as im
import json
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from opsloop.config import Config
    from opsloop.manager import PluginManager
    from opsloop.types import Dataset

LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost", "skops", "pluggy", "pyarrow")

#: Config sections that shape a trained model (`[alerting]`: the threshold it alerts at). The others
#: (store, deploy, monitor, retrain) and `[data] monitor` decide where it goes and how it is watched, not
#: what it is.
TRAINING_SECTIONS = ("data", "preprocess", "train", "validate", "alerting", "plugins")


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


#: An options field with `metadata={SHAPES_MODEL: False}` does not shape the model (where a cluster or a server
#: is, a timeout, credentials): changing it neither trains a new version nor counts as a difference.
SHAPES_MODEL = "shapes_model"


def not_shaping(plugins: PluginManager | None, name: str) -> set[str]:
    """The option names plugin `name` (when loaded) marks `metadata={SHAPES_MODEL: False}`."""
    if plugins is None or not plugins.pm.has_plugin(name):
        return set()
    cls = plugins.options_class(name)
    if cls is None or not attrs.has(cls):
        return set()
    return {f.name for f in attrs.fields(cls) if f.metadata.get(SHAPES_MODEL) is False}


def shaping(table: Mapping[str, Any], plugins: PluginManager | None = None) -> dict[str, Any]:
    """The part of a config table that shapes a model: `TRAINING_SECTIONS` without `[data] monitor`, and
    `[project] seed`; with `plugins`, without the options loaded plugins mark as not shaping it."""
    out: dict[str, Any] = {}
    for section in TRAINING_SECTIONS:
        kept = {}
        for key, value in dict(table.get(section, {})).items():
            if section == "data" and key == "monitor":
                continue
            ignored = not_shaping(plugins, key) if isinstance(value, Mapping) else set()
            kept[key] = {k: v for k, v in value.items() if k not in ignored} if ignored else value
        out[section] = kept
    out["seed"] = dict(table.get("project", {})).get("seed")
    return out


def training_key(table: Mapping[str, Any], fingerprint: str, versions: Mapping[str, Any],
                 plugins: PluginManager | None = None) -> str:
    """What makes two trainings the same: the training rows, the config that shapes the model
    (`shaping`: `TRAINING_SECTIONS` and `[project] seed`, less the options plugins mark as not shaping
    it), and the versions of opsloop, the plugins used and the libraries. `opsloop run` reuses a version
    whose key matches instead of registering a twin.

    Computed from a version's recorded lineage too, so versions registered before the key
    existed are matched alike.
    """
    blob = json.dumps({"config": shaping(table, plugins), "data": fingerprint, "opsloop": versions.get("opsloop"),
                       "plugins": versions.get("plugins", {}), "libraries": versions.get("libraries", {})},
                      sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def key_of(recorded: Mapping[str, Any]) -> str | None:
    """The training key of a registered version's lineage (recorded, or computed for older ones)."""
    if recorded.get("training_key"):
        return str(recorded["training_key"])
    table, data, versions_ = recorded.get("config"), recorded.get("data"), recorded.get("versions")
    if not (isinstance(table, Mapping) and isinstance(data, Mapping) and isinstance(versions_, Mapping)):
        return None
    return training_key(table, str(data.get("fingerprint", "")), versions_)


def time_span(data: Dataset) -> dict[str, str]:
    """`start` and `end`: the first and last time the rows hold (ISO 8601 UTC), when they have a time column
    of dates; what the loop's gate leaves out of a champion's comparison (rows it trained on)."""
    if not data.time or data.time not in data.frame.columns or not len(data.frame):
        return {}
    import pandas as pd

    times = data.frame[data.time]
    if not pd.api.types.is_datetime64_any_dtype(times):
        return {}
    times = pd.to_datetime(times, utc=True)
    first, last = times.min(), times.max()
    if pd.isna(first):
        return {}
    return {"start": first.isoformat().replace("+00:00", "Z"), "end": last.isoformat().replace("+00:00", "Z")}


def record(*, config: Config, plugins: PluginManager, used: list[str], data: Dataset, run_id: str,
           parent: str | None = None, training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lineage of a version about to be registered; `training` says what window of which rows it trained
    on when the loop built it (`opsloop.loop`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    used_versions = versions(plugins, used)
    return {
        "run_id": run_id,
        "user": user,
        "host": platform.node(),
        "data": {"source": data.name, "fingerprint": data.fingerprint, "rows": len(data), **time_span(data)},
        "config": config.table,
        "config_hash": config.hash,
        "config_file": str(config.path) if config.path else None,
        "git": git_state(config.workdir),
        "versions": used_versions,
        "training_key": training_key(config.table, data.fingerprint, used_versions, plugins),
        "parent": parent,
        **({"training": dict(training)} if training else {}),
    }
