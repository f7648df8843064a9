"""The version being served, and the watcher that swaps it when its alias moves.

A `Served` is everything a request needs, built once per version: the
verified bundle, its input schema, its scorer (fast or replay), and the
metadata and headers as bytes. Requests read `ModelWatcher.current` once and
use that object to the end, so a swap never mixes two versions in one
answer.

The watcher asks the store which version the alias points at every
`poll_interval` seconds (one indexed SQLite read). When it moved, the new
bundle is verified, loaded and compiled on the watcher's thread, off the
request path, and only then does one attribute assignment make it current:
requests in flight finish on the old version, the next ones get the new one,
none fails. A version that cannot be loaded leaves the old one serving (and
counts on `/metrics`); it is retried only when the alias moves again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs
from opsloop.errors import StoreError
from opsloop.serving.fastpath import make_scorer
from opsloop.serving.schema import InputSchema

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.manager import PluginManager
    from opsloop.serving.fastpath import FastScorer, ReplayScorer
    from opsloop.serving.metrics import Metrics
    from opsloop.serving.settings import Settings
    from opsloop.store import ModelStore
    from opsloop.types import ModelVersion

log = logging.getLogger("opsloop.serving")


@attrs.frozen(kw_only=True)
class Served:
    """One loaded version, ready to answer."""

    version: ModelVersion
    model: LoadedModel = attrs.field(repr=False)
    schema: InputSchema = attrs.field(repr=False)
    scorer: FastScorer | ReplayScorer = attrs.field(repr=False)
    outputs: dict[str, str]
    metadata: bytes = attrs.field(repr=False)
    loaded_at: float

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> str:
        """The version as the protocol spells it: a string."""
        return str(self.version.version)

    @property
    def series(self) -> str | None:
        return self.model.manifest.get("series")

    @property
    def time(self) -> str | None:
        return self.model.manifest.get("time")


def output_types(task: str) -> dict[str, str]:
    """The outputs of a task and their protocol datatypes."""
    if task == "regression":
        return {"prediction": "FP64"}
    return {"prediction": "INT64", "score": "FP64"}


def load_served(store: ModelStore, plugins: PluginManager, name: str, number: int, settings: Settings) -> Served:
    """Verify, load and compile one version (BundleError/StoreError when it cannot be)."""
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager

    version = store.get(name, number)
    # A plugin manager per version: loading the next one never touches the one requests use.
    own = PluginManager(known=plugins.known, conflicts=plugins.conflicts)
    model = read_bundle(version.path, own, ref=version.ref, digest=version.digest)
    schema = InputSchema.from_manifest(model.manifest, max_rows=settings.max_rows)
    scorer = make_scorer(model, schema, fast=settings.fast_path, threads=settings.threads)
    outputs = output_types(model.task)
    metadata = {
        "name": name, "versions": [str(number)], "platform": f"opsloop_{model.manifest['flavor']}",
        "inputs": schema.metadata(),
        "outputs": [{"name": k, "datatype": v, "shape": [-1]} for k, v in outputs.items()],
        "parameters": {"task": model.task, "alias": settings.alias, "digest": version.digest,
                       "scorer": scorer.kind, "fallback_reason": scorer.reason,
                       "series": model.manifest.get("series"), "time": model.manifest.get("time")},
    }
    return Served(version=version, model=model, schema=schema, scorer=scorer, outputs=outputs,
                  metadata=json.dumps(metadata).encode(), loaded_at=time.time())


class ModelWatcher:
    """Serves `name@alias` and follows the alias when it moves."""

    def __init__(self, store: ModelStore, plugins: PluginManager, name: str, settings: Settings,
                 metrics: Metrics) -> None:
        self.store = store
        self.plugins = plugins
        self.name = name
        self.alias = settings.alias
        self.settings = settings
        self.metrics = metrics
        number = store.alias(name, self.alias)
        if number is None:
            raise StoreError(f"model {name} has no alias {self.alias!r}: point it at a version first "
                             f"(opsloop models promote, or a run with a deploy target)")
        self.current: Served = load_served(store, plugins, name, number, settings)
        self.failed: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.model_loaded(self.current)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"opsloop-watch-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            try:
                self.check()
            except Exception:  # the watcher must outlive a bad poll: the store may come back
                log.exception("opsloop serve: checking %s@%s failed", self.name, self.alias)
                self.metrics.poll_errors += 1

    def check(self) -> bool:
        """Look at the alias once; swap when it moved. True when a new version now serves."""
        number = self.store.alias(self.name, self.alias)
        if number is None or number == self.current.version.version or number == self.failed:
            return False
        try:
            served = load_served(self.store, self.plugins, self.name, number, self.settings)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            log.error("opsloop serve: cannot load %s:%s, still serving %s: %s", self.name, number,
                      self.current.version.ref, exc)
            self.failed = number
            self.metrics.load_errors += 1
            return False
        previous, self.current = self.current, served  # one assignment: atomic for the request path
        self.failed = None
        self.metrics.model_loaded(served, previous)
        log.warning("opsloop serve: %s@%s moved: now serving %s (was %s)", self.name, self.alias,
                    served.version.ref, previous.version.ref)
        return True

    def describe(self) -> dict[str, Any]:
        current = self.current
        return {"model": self.name, "alias": self.alias, "version": current.version.version,
                "scorer": current.scorer.kind, "fallback_reason": current.scorer.reason}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.close()
