"""The version being served, and the watcher that swaps it when its alias moves.

A `Served` is everything a request needs, built once per version: the
verified bundle, its input schema, its scorer (fast or replay), its steps'
checks of request rows (`row_checks`: schema-check's learned ranges, missing
rates and categories, compiled to numpy; counted on `/metrics`), and the
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
back to the same number after the bundle was repaired (issue 8, item 7), and,
while the alias stays on it, as soon as the bundle's files change (a `stat`
of each, every poll: a repair in place is seen without an alias move, which
`promote` would refuse as "nothing to do") and every `RETRY_EVERY` seconds
(a repair the files do not show, such as the registry's record). A refusal
is logged once, then at most once a minute while it lasts (issue 8, 7b).

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
from opsloop.alerting import describe
from opsloop.errors import StoreError
from opsloop.serving.fastpath import make_scorer
from opsloop.serving.history import Streams
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
#: Seconds between two log lines about a store that keeps failing, or a version that keeps being refused.
REPORT_EVERY = 60.0
#: Seconds between two attempts at a refused version the alias stays on, when its files do not change.
RETRY_EVERY = 30.0


@attrs.define(kw_only=True)
class Refused:
    """The version the alias points at that could not be loaded, and when to try it again.

    Attributes:
        number: The version.
        change: The alias's latest move in the audit trail when it was tried; another move is a new attempt.
        path: Its bundle directory (None when the store could not say).
        files: `bundle_files(path)` just before the attempt: when it differs, the bundle changed.
        tried: When it was last tried (monotonic).
        reported: When it was last logged (monotonic).
        attempts: Failed attempts since the alias moved to it.
    """

    number: int
    change: Any
    path: str | None
    files: Any
    tried: float
    reported: float
    attempts: int = 1


@attrs.define(kw_only=True)
class Failing:
    """Polls of the store failing in a row (monotonic times).

    Attributes:
        total: Failed polls since the first.
        unreported: Of them, since the last log line.
        since: When the first failed.
        reported: When the last log line was written.
    """

    since: float
    reported: float
    total: int = 1
    unreported: int = 0


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
    #: The steps' compiled checks of request rows (`row_checks`): (step, check) pairs.
    checks: tuple[tuple[str, Any], ...] = attrs.field(default=(), repr=False)

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

    def findings(self, batch: Any) -> list[tuple[str, str]]:
        """(check, column) for each finding the steps' checks make on a request's rows; [] when none.

        A check that fails is logged (once per version and step) and skipped: a
        finding never fails a request (`on_violation = "reject"` refuses rows in
        the replay, as before).
        """
        found: list[tuple[str, str]] = []
        for step, check in self.checks:
            try:
                found.extend(check(batch.numeric, batch.other))
            except Exception:  # noqa: BLE001 - a monitoring aid must not cost an answer
                if (self.version.ref, step) not in _FAILED:
                    _FAILED.add((self.version.ref, step))
                    log.exception("opsloop serve: the row check of step %r of %s failed; its findings are not "
                                  "counted on /metrics", step, self.version.ref)
        return found

    @property
    def time(self) -> str | None:
        return self.model.manifest.get("time")


#: (version, step) whose row check raised once already: logged once, not on every request.
_FAILED: set[tuple[str, str]] = set()


def row_checks(model: LoadedModel, schema: InputSchema) -> tuple[tuple[str, Any], ...]:
    """Each preprocess step's check of request rows, compiled from its stored state once, at load.

    A step offers one with a module-level `compile_row_check(state, options,
    numeric, other)` (schema-check does): `numeric` maps each numeric input to
    its column in the request's float64 matrix, `other` names the text and
    time inputs; it returns a function of (matrix, other values) giving
    (check, column) pairs. A step without one, or whose plugin cannot be
    imported or compiled, checks nothing here (logged): loading never fails
    because of it.
    """
    checks = []
    other = [c.name for c in schema.others]
    for step in model.manifest.get("steps", []):
        name = step["plugin"]
        try:
            compile_ = getattr(model.plugins.load(name, where=f"bundle {model.ref}"), "compile_row_check", None)
            if compile_ is not None:
                checks.append((name, compile_(step["state"], step.get("options"), dict(schema.index), other)))
        except Exception as exc:  # noqa: BLE001 - scoring does not need it
            log.warning("opsloop serve: %s: step %r gives no row check (its findings are not counted on "
                        "/metrics): %s", model.ref, name, _one_line(exc))
    return tuple(checks)


def output_types(task: str) -> dict[str, str]:
    """The outputs of a task and their protocol datatypes."""
    if task == "regression":
        return {"prediction": "FP64"}
    return {"prediction": "INT64", "score": "FP64"}


def load_served(store: ModelStore, plugins: PluginManager, name: str, number: int, settings: Settings,
                streams: Streams | None = None, previous: Served | None = None) -> Served:
    """Verify, load and compile one version (BundleError/StoreError when it cannot be).

    A version whose steps read into a series' past gets a series history
    (`opsloop.serving.history`): `previous`'s when it has the same reach and
    input schema, else a new one, read back from the prediction log.
    """
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.serving.history import stateful

    version = store.get(name, number)
    # A plugin manager per version: loading the next one never touches the one requests use.
    own = PluginManager(known=plugins.known, conflicts=plugins.conflicts)
    model = read_bundle(version.path, own, ref=version.ref, digest=version.digest,
                        threshold=getattr(version, "threshold", None))
    schema = InputSchema.from_manifest(model.manifest, max_rows=settings.max_rows)
    scorer = stateful(model, schema, make_scorer(model, schema, fast=settings.fast_path, threads=settings.threads),
                      name=name, max_series=settings.max_series, streams=streams,
                      previous=previous.scorer if previous is not None else None)
    outputs = output_types(model.task)
    metadata = {
        "name": name, "versions": [str(number)], "platform": f"opsloop_{model.manifest['flavor']}",
        "inputs": schema.metadata(),
        "outputs": [{"name": k, "datatype": v, "shape": [-1]} for k, v in outputs.items()],
        "parameters": {"task": model.task, "alias": settings.alias, "digest": version.digest,
                       "scorer": scorer.kind, "fallback_reason": scorer.reason,
                       "series": model.manifest.get("series"), "time": model.manifest.get("time"),
                       "threshold": model.threshold, "reach": _reach(scorer)},
    }
    return Served(version=version, model=model, schema=schema, scorer=scorer, outputs=outputs,
                  metadata=json.dumps(metadata).encode(), loaded_at=time.time(), checks=row_checks(model, schema))


def _reach(scorer: Any) -> dict[str, float] | None:
    """The series history a version keeps, for its metadata: {"rows": ..., "seconds": ...}; None: none."""
    history = getattr(scorer, "history", None)
    return None if history is None else {"rows": history.reach.rows, "seconds": history.reach.seconds}


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
        #: The series histories' counters and the prediction log they read back from (the app sets `log`).
        self.streams = Streams(counts=metrics.series)
        self.current: Served = load_served(store, plugins, name, number, settings, self.streams)
        #: The version the alias points at and that could not be loaded; None: nothing refused.
        self.refused: Refused | None = None
        self.report_every = REPORT_EVERY
        self.retry_every = RETRY_EVERY
        self._failing: Failing | None = None  # while polls of the store fail
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
            self._failing = Failing(since=now, reported=now)
            log.error("opsloop serve: cannot check %s@%s in the store, still serving %s: %s (retrying every %g s; "
                      "reported once a minute while it lasts)", self.name, self.alias, self.current.version.ref,
                      _one_line(exc), self.settings.poll_interval, exc_info=bool(os.environ.get("OPSLOOP_DEBUG")))
            return
        failing = self._failing
        failing.total += 1
        failing.unreported += 1
        if now - failing.reported >= self.report_every:
            log.error("opsloop serve: still cannot check %s@%s in the store: %d failed poll(s) since the last "
                      "report, failing for %.0f s, still serving %s: %s", self.name, self.alias, failing.unreported,
                      now - failing.since, self.current.version.ref, _one_line(exc))
            failing.unreported, failing.reported = 0, now

    def _recovered(self) -> None:
        failing, self._failing = self._failing, None
        assert failing is not None
        log.warning("opsloop serve: the store answers again: %s@%s checked after %d failed poll(s) over %.0f s",
                    self.name, self.alias, failing.total, time.monotonic() - failing.since)

    def check(self) -> bool:
        """Look at the alias once; swap when it moved. True when a new version now serves."""
        number = self.store.alias(self.name, self.alias)
        if number is None:
            return False
        if number == self.current.version.version:
            self.refused = None  # the alias came back: a later move to the refused version is a new attempt
            return self._rethreshold()
        # A refused version is tried again when the alias moved (there and back between two polls too), when its
        # bundle's files changed (repaired in place), or after `retry_every` seconds; never every poll.
        latest = self._latest_change()
        refused, now = self.refused, time.monotonic()
        if refused is not None and (refused.number, refused.change) != (number, latest):
            refused = None  # the alias moved since: a new attempt
        path = refused.path if refused is not None else self._path(number)
        files = bundle_files(path)  # before the load: a change during it is a change
        if refused is not None and files == refused.files and now - refused.tried < self.retry_every:
            return False
        try:
            served = load_served(self.store, self.plugins, self.name, number, self.settings, self.streams,
                                 self.current)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            self.metrics.load_errors += 1
            self._refuse(number, latest, path, files, now, exc, refused)
            return False
        previous, self.current = self.current, served  # one assignment: atomic for the request path
        self.refused = None
        self.metrics.model_loaded(served, previous)
        if refused is not None:
            log.warning("opsloop serve: %s loads now (%s): %s@%s serves it (was %s)", served.version.ref,
                        "its bundle changed" if files != refused.files else "tried again", self.name, self.alias,
                        previous.version.ref)
        else:
            log.warning("opsloop serve: %s@%s moved: now serving %s (was %s)", self.name, self.alias,
                        served.version.ref, previous.version.ref)
        return True

    def _rethreshold(self) -> bool:
        """Serve the version again when a promote gave it a new threshold (`models promote --threshold`)."""
        current = self.current.version
        version = self.store.get(self.name, current.version)
        if getattr(version, "threshold", None) == getattr(current, "threshold", None):
            return False
        served = load_served(self.store, self.plugins, self.name, current.version, self.settings, self.streams,
                             self.current)
        previous, self.current = self.current, served
        self.metrics.model_loaded(served, previous)
        log.warning("opsloop serve: %s has a new threshold: %s (was %s)", current.ref,
                    describe(served.model.threshold), describe(previous.model.threshold))
        return True

    def _refuse(self, number: int, change: Any, path: str | None, files: Any, now: float, exc: Exception,
                before: Refused | None) -> None:
        """Remember the refusal; log the first one, then at most one line every `report_every` seconds."""
        if before is None:
            self.refused = Refused(number=number, change=change, path=path, files=files, tried=now, reported=now)
            log.error("opsloop serve: cannot load %s:%s, still serving %s: %s (tried again when the alias moves, "
                      "when its bundle's files change, or every %g s)", self.name, number, self.current.version.ref,
                      exc, self.retry_every)
            return
        before.files, before.tried, before.attempts = files, now, before.attempts + 1
        if now - before.reported >= self.report_every:
            before.reported = now
            log.error("opsloop serve: still cannot load %s:%s (%d attempts), still serving %s: %s", self.name,
                      number, before.attempts, self.current.version.ref, exc)

    def _path(self, number: int) -> str | None:
        """Where version `number`'s bundle is, or None when the store cannot say (the load will say why)."""
        try:
            return str(self.store.get(self.name, number).path)
        except Exception:  # noqa: BLE001 - only a hint for noticing a repair
            return None

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


def bundle_files(path: str | None) -> Any:
    """Each file of a bundle directory with its size, times and inode, and the directory's own: what changes
    when a bundle is repaired in place (rewritten, or files renamed over). Stats only, no reading: cheap every
    poll. None when there is no directory to look at."""
    if path is None:
        return None
    try:
        top = os.stat(path)
        found = [("", top.st_mtime_ns, top.st_ctime_ns, top.st_ino)]
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                found.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns,
                              st.st_ctime_ns, st.st_ino))
        return tuple(found)
    except OSError:
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
