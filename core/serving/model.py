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
counts on `/metrics`); it is tried again whenever the alias moves again, even
back to the same number after the bundle was repaired (issue 8, item 7).

A store that cannot be read (PostgreSQL down, say) fails every poll; the
watcher says so in one line, then once a minute with the count, and once
more when the store answers again (issue 8, item 11).
"""

from __future__ import annotations

import json
import logging
import os
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
#: Seconds between two log lines about a store that keeps failing.
REPORT_EVERY = 60.0


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
        #: The version refused last and the alias's latest change when it was tried; None: nothing refused.
        self.failed: tuple[int, Any] | None = None
        self.report_every = REPORT_EVERY
        # While polls fail: [failed polls, of them since the last report, first failure, last report] (monotonic).
        self._failing: list[Any] | None = None
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
            except Exception as exc:  # the watcher must outlive a bad poll: the store may come back
                self.metrics.poll_errors += 1
                self._poll_failed(exc)
            else:
                if self._failing is not None:
                    self._recovered()

    def _poll_failed(self, exc: Exception) -> None:
        """One line for the first failure (a traceback with OPSLOOP_DEBUG=1), then one a minute with the count."""
        now = time.monotonic()
        if self._failing is None:
            self._failing = [1, 0, now, now]
            log.error("opsloop serve: cannot check %s@%s in the store, still serving %s: %s (retrying every %g s; "
                      "reported once a minute while it lasts)", self.name, self.alias, self.current.version.ref,
                      _one_line(exc), self.settings.poll_interval, exc_info=bool(os.environ.get("OPSLOOP_DEBUG")))
            return
        failing = self._failing
        failing[0] += 1
        failing[1] += 1
        if now - failing[3] >= self.report_every:
            log.error("opsloop serve: still cannot check %s@%s in the store: %d failed poll(s) since the last "
                      "report, failing for %.0f s, still serving %s: %s", self.name, self.alias, failing[1],
                      now - failing[2], self.current.version.ref, _one_line(exc))
            failing[1], failing[3] = 0, now

    def _recovered(self) -> None:
        total, _, first, _ = self._failing  # type: ignore[misc]
        self._failing = None
        log.warning("opsloop serve: the store answers again: %s@%s checked after %d failed poll(s) over %.0f s",
                    self.name, self.alias, total, time.monotonic() - first)

    def check(self) -> bool:
        """Look at the alias once; swap when it moved. True when a new version now serves."""
        number = self.store.alias(self.name, self.alias)
        if number is None:
            return False
        if number == self.current.version.version:
            self.failed = None  # the alias came back: a later move to the refused version is a new attempt
            return False
        # A refused version is tried again only after the alias moved (there and back between two polls too).
        latest = self._latest_change()
        if self.failed == (number, latest):
            return False
        try:
            served = load_served(self.store, self.plugins, self.name, number, self.settings)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            log.error("opsloop serve: cannot load %s:%s, still serving %s: %s", self.name, number,
                      self.current.version.ref, exc)
            self.failed = (number, latest)
            self.metrics.load_errors += 1
            return False
        previous, self.current = self.current, served  # one assignment: atomic for the request path
        self.failed = None
        self.metrics.model_loaded(served, previous)
        log.warning("opsloop serve: %s@%s moved: now serving %s (was %s)", self.name, self.alias,
                    served.version.ref, previous.version.ref)
        return True

    def _latest_change(self) -> Any:
        """The alias's latest move in the audit trail (read before a load, so a move during it is seen)."""
        changes = self.store.history(self.name, self.alias)
        return changes[-1] if changes else None

    def describe(self) -> dict[str, Any]:
        current = self.current
        return {"model": self.name, "alias": self.alias, "version": current.version.version,
                "scorer": current.scorer.kind, "fallback_reason": current.scorer.reason}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
