"""What `opsloop report` reads: the registry, the prediction log, and the configured monitors' view of the log.

Read only, as `opsloop monitor` is: the store is opened only when it exists
(a missing local registry is an error, never created), the log is opened
read-only, and the monitors run without observers (an MLflow observer would
otherwise record the report as runs). Every part that cannot be read leaves a
note for its section instead of ending the report.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import OpsloopError, StoreError

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import Config
    from opsloop.monitoring import Result
    from opsloop.store import AliasChange, CycleRecord
    from opsloop.types import ModelVersion

#: Most points drawn per series in the scores-over-time plots (the page says when rows were thinned).
MAX_POINTS = 5_000
#: Versions whose logged rows the monitors are run on, newest first (production always among them).
MAX_MONITORED = 3
#: Loop cycles shown, newest first.
MAX_CYCLES = 200
#: Window lengths chosen from when `--window` is not given: the shortest giving at most `MAX_WINDOWS` windows.
WINDOW_CHOICES = ("1h", "6h", "1d", "7d", "28d")
MAX_WINDOWS = 40


@attrs.frozen(kw_only=True)
class Scores:
    """One version's logged rows for the scores-over-time plots.

    Attributes:
        version: The version number.
        frame: `series` (text), `time` (UTC), `score`, `label` (NaN where no feedback), thinned to at most
            `MAX_POINTS` per series (the rows of highest and lowest score per time bucket are kept).
        rows: Logged rows before thinning.
        incidents: `series`, `start`, `end`: runs of rows labelled 1, from all rows (not the thinned ones).
    """

    version: int
    frame: pd.DataFrame = attrs.field(eq=False, repr=False)
    rows: int
    incidents: pd.DataFrame = attrs.field(eq=False, repr=False)

    @property
    def thinned(self) -> bool:
        return len(self.frame) < self.rows


@attrs.frozen(kw_only=True)
class Monitored:
    """The configured monitors on one version's logged rows: per window, and over the whole period."""

    version: int
    windows: Result | None = None
    whole: Result | None = None


@attrs.define(kw_only=True)
class Gathered:
    """Everything the page shows, read once (filled in by `gather`)."""

    model: str
    store: str
    versions: list[ModelVersion]
    aliases: dict[str, int]
    history: list[AliasChange]
    cycles: list[CycleRecord] | None  # None: the store keeps no loop journal
    log: Path
    last_run: list[dict[str, Any]]
    scores: list[Scores] = attrs.field(factory=list)
    monitored: list[Monitored] = attrs.field(factory=list)
    window: str | None = None
    max_points: int = MAX_POINTS
    notes: dict[str, list[str]] = attrs.field(factory=dict)

    @property
    def production(self) -> int | None:
        return self.aliases.get("production")

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


def gather(cfg: Config, *, model: str | None, log: Path, window: str | None) -> Gathered:
    """Read the registry (StoreError when there is none, or no such model), then the log and the monitors."""
    import os

    from opsloop.plugins.local_store import store_root
    from opsloop.session import Session
    from opsloop.store import unknown_model

    uri = os.environ.get("OPSLOOP_STORE") or cfg.store.uri
    root = store_root(uri, Path(cfg.workdir))  # a local registry: never created by reading it
    if root is not None and not root.is_dir():
        raise StoreError(f"no model registry at {root}: nothing is registered yet (opsloop run registers a "
                         "version), or give the project's config with -c")
    name = model or cfg.project.name
    session = Session.open(cfg, sections=("store",))
    with session.open_store() as store:
        known = [m.name for m in store.models()]
        if name not in known:
            raise unknown_model(name, known)
        versions = sorted(store.versions(name), key=lambda v: v.version)
        aliases = store.aliases(name)
        history = store.history(name)
        try:
            cycles: list[CycleRecord] | None = store.cycles(name, limit=MAX_CYCLES)
        except StoreError:
            cycles = None
        shown = store.uri
    got = Gathered(model=name, store=str(shown), versions=versions, aliases=aliases, history=history, cycles=cycles,
                   log=log, last_run=_last_run(cfg, name), max_points=MAX_POINTS)
    got.scores = _read_scores(got, log, cfg)
    if got.scores:
        _monitor(got, cfg, window)
    return got


def _last_run(cfg: Config, name: str) -> list[dict[str, Any]]:
    """The monitor reports the last `opsloop run` left for `opsloop serve` (`.opsloop/serving/monitor-report.json`)
    when they are of this model."""
    from opsloop.serving.settings import MONITOR_FILE, SERVING_DIR

    path = Path(cfg.workdir) / SERVING_DIR / MONITOR_FILE
    try:
        reports = json.loads(path.read_text(encoding="utf-8")).get("monitor") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in reports if isinstance(r, dict) and str(r.get("model", "")).startswith(f"{name}:")]


# -- the prediction log ----------------------------------------------------------

#: Each served row of a model with its latest label (as `opsloop.monitoring.ROWS` joins them), without its inputs:
#: the plots need the series, time and score alone, and a log's inputs are most of its bytes.
def _served_query() -> str:
    from opsloop.monitoring import LABELLED

    return LABELLED.format(columns="p.version, p.series, p.time, p.score", more="", where="p.time IS NOT NULL")


def source_labels(cfg: Config) -> tuple[pd.DataFrame | None, str]:
    """The labels `[data] source` holds (`series`, `time`, `label`; None when it has no target, no time, or cannot
    be read), and a note of where they came from or why not: rows scored by `opsloop run` are labelled in the
    source itself, and their incidents are drawn before any feedback arrives."""
    import pandas as pd

    from opsloop import data as data_mod

    spec = cfg.data
    if not spec.target or not spec.time:
        return None, "the source has no target or no time column"
    try:
        frame = data_mod.load(cfg).frame
    except OpsloopError as exc:
        return None, f"the labels of {spec.source} cannot be read ({exc})"
    if spec.target not in frame or spec.time not in frame:
        return None, f"{spec.source} has no {spec.target!r} or {spec.time!r} column"
    series = frame[spec.series].astype(str) if spec.series and spec.series in frame else "(no series)"
    labels = pd.DataFrame({"series": series, "time": pd.to_datetime(frame[spec.time], utc=True, errors="coerce"),
                           "source_label": pd.to_numeric(frame[spec.target], errors="coerce")})
    return labels.dropna().drop_duplicates(["series", "time"], keep="last"), f"the labels in {spec.source}"


def _read_scores(got: Gathered, log: Path, cfg: Config | None = None) -> list[Scores]:
    """Every version's logged rows (served and batch), thinned per series; a note when there is no log.

    A row's label is its feedback when it has some, else the label `[data] source` holds for its series and time
    (with `cfg`), so the incidents of rows `opsloop run` scored from labelled data are drawn too."""
    import pandas as pd

    from opsloop import monitoring
    from opsloop.serving import segments

    if not log.exists():
        got.note("scores", f"no prediction log at {log}: nothing scored yet (opsloop run with a deploy target, or "
                           "opsloop serve, writes it)")
        return []
    try:
        con = monitoring.open_log(log)
    except OpsloopError as exc:
        got.note("scores", str(exc))
        return []
    parts: list[pd.DataFrame] = []
    try:
        cursor = con.execute(_served_query(), {"model": got.model})
        while chunk := cursor.fetchmany(100_000):
            parts.append(pd.DataFrame(chunk, columns=["version", "series", "time", "score", "label"]))
        fb = None
        for request_id, first, _, version, table in segments.rows(con, model=got.model):
            fb = fb if fb is not None else segments.feedback(con, got.model)
            label, _ = segments.labels(table, request_id, first, fb)
            parts.append(pd.DataFrame({
                "version": version, "series": table.column("series").to_pandas().astype(object),
                "time": table.column("time").to_pandas().astype(object),
                "score": table.column("score").to_numpy(zero_copy_only=False).astype(float), "label": label}))
            segments.release()
    except sqlite3.DatabaseError as exc:
        got.note("scores", f"the prediction log {log} cannot be read: {exc}")
        return []
    finally:
        con.close()
    if not parts:
        got.note("scores", f"the prediction log {log} has no rows of {got.model}")
        return []
    rows = pd.concat(parts, ignore_index=True)
    rows["series"] = rows["series"].where(rows["series"].notna(), "(no series)").astype(str)
    rows["time"] = pd.to_datetime(rows["time"], format="mixed", errors="coerce", utc=True)
    rows["score"] = pd.to_numeric(rows["score"], errors="coerce")
    rows["label"] = pd.to_numeric(rows["label"], errors="coerce")
    rows = rows.dropna(subset=["time"])
    if rows.empty:
        got.note("scores", f"the logged rows of {got.model} have no time (a model without a time column): there is "
                           "nothing to draw over time")
        return []
    if rows["score"].isna().all():
        got.note("scores", f"the logged rows of {got.model} have no scores (a model without scores): only "
                           "predictions were logged")
        return []
    if cfg is not None and rows["label"].isna().any():
        labels, where = source_labels(cfg)
        if labels is not None:
            rows = rows.merge(labels, on=["series", "time"], how="left")
            rows["label"] = rows["label"].fillna(rows.pop("source_label"))
        got.note("labels", f"incidents: feedback labels, then {where}" if labels is not None else
                 f"incidents: feedback labels only ({where})")
    out = []
    per_series = rows.groupby("series")["version"].nunique()
    for version, part in rows.groupby("version", sort=True):
        # a batch scored twice (a rerun that reused the version) is one row per series and time: the latest
        part = part.drop_duplicates(["series", "time"], keep="last").sort_values(["series", "time"], kind="stable")
        kept = [_thin(p, max(got.max_points // int(per_series[s]), 2)) for s, p in part.groupby("series", sort=True)]
        frame = pd.concat(kept, ignore_index=True) if kept else part.iloc[:0]
        out.append(Scores(version=int(version), frame=frame[["series", "time", "score", "label"]].reset_index(
            drop=True), rows=len(part), incidents=incident_spans(part)))
    return out


def _thin(rows: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` rows of one series in time order: per bucket of consecutive rows, the highest and the lowest
    score (peaks, which an alert is about, survive thinning)."""
    import numpy as np

    if len(rows) <= limit:
        return rows
    buckets = np.arange(len(rows)) * (limit // 2) // len(rows)
    score = rows["score"].fillna(-np.inf).to_numpy()
    frame = rows.assign(_b=buckets, _s=score)
    grouped = frame.groupby("_b", sort=True)["_s"]
    keep = np.union1d(grouped.idxmax().to_numpy(), grouped.idxmin().to_numpy())
    return rows.loc[keep]


def incident_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs of consecutive rows labelled 1 per series (rows in series and time order; unlabelled rows are left out,
    as `opsloop.incidents` does): `series`, `start`, `end` (the last row's time plus the series' usual step)."""
    import pandas as pd

    labelled = rows.dropna(subset=["label"])
    out = []
    for series, part in labelled.groupby("series", sort=True):
        positive = (part["label"] == 1).to_numpy()
        if not positive.any():
            continue
        times = part["time"].reset_index(drop=True)
        step = times.diff().median()
        step = step if isinstance(step, pd.Timedelta) and not pd.isna(step) else pd.Timedelta(0)
        starts = positive & ~pd.Series(positive).shift(1, fill_value=False).to_numpy()
        ends = positive & ~pd.Series(positive).shift(-1, fill_value=False).to_numpy()
        for start, end in zip(times[starts], times[ends], strict=True):
            out.append((series, start, end + step))
    return pd.DataFrame(out, columns=["series", "start", "end"])


# -- the monitors on the log ----------------------------------------------------------

def duration(step: timedelta) -> str:
    """`1d`, `6h`, `90m`: a window length as `--window` takes it."""
    seconds = int(step.total_seconds())
    unit, size = next((u, n) for u, n in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
                      if seconds % n == 0)
    return f"{seconds // size}{unit}"


def _step(scores: list[Scores], window: str | None) -> timedelta:
    """`--window`, or the shortest of `WINDOW_CHOICES` that cuts the logged period into at most `MAX_WINDOWS`."""
    from opsloop.monitoring import parse_duration

    if window is not None:
        return parse_duration(window)
    first = min(s.frame["time"].min() for s in scores)
    last = max(s.frame["time"].max() for s in scores)
    span = (last - first).to_pytimedelta()
    for choice in WINDOW_CHOICES:
        step = parse_duration(choice)
        if span / step < MAX_WINDOWS:
            return step
    return parse_duration(WINDOW_CHOICES[-1])


def _monitor(got: Gathered, cfg: Config, window: str | None) -> None:
    """The configured monitors on the logged rows of production and the newest versions, per window and whole."""
    from opsloop import monitoring
    from opsloop.session import Session

    if not cfg.selected("monitor"):
        got.note("monitor", f"no monitor selected in {cfg.source} ([monitor] plugins): the monitors were not run on "
                            "the prediction log")
        return
    step = _step(got.scores, window)
    got.window = duration(step)
    try:
        session = Session.open(cfg, sections=("store", "monitor"))  # no observers: the report records nothing
    except OpsloopError as exc:
        got.note("monitor", f"the monitors could not be loaded: {exc}")
        return
    logged = [s.version for s in got.scores]
    chosen = sorted(logged, reverse=True)[:MAX_MONITORED]
    if got.production in logged and got.production not in chosen:
        chosen = [got.production, *chosen[:-1]]
    if len(logged) > len(chosen):
        got.note("monitor", f"the monitors ran on the rows of versions {', '.join(map(str, sorted(chosen)))}; "
                            f"{len(logged) - len(chosen)} older version(s) with logged rows are left out")
    for number in sorted(chosen):
        try:
            kwargs = {"model": got.model, "alias": None, "version": number, "log": got.log}
            per = monitoring.monitor(session, **kwargs, step=step)
            whole = monitoring.monitor(session, **kwargs)
        except OpsloopError as exc:
            got.note("monitor", f"{got.model}:{number}: {exc}")
            continue
        got.monitored.append(Monitored(version=number, windows=per, whole=whole))
