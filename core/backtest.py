"""`opsloop backtest`: replay a labelled history through the loop's own cycles, chunk by chunk.

As Salesforce Merlion's evaluator simulates retraining: the first version is
trained on the training period (`[data] train`, or all but the last
`monitor_fraction`), then the rest of the history is cut into chunks in time
(`every` a duration, or `chunks` equal spans). For each chunk, in order:

1. it is scored by three strategies: (a) `loop`, the version the loop has in
   production, (b) `stale`, the first version, never retrained, and (c)
   `always`, a version retrained at the end of every chunk on the loop's
   retraining window (no gate);
2. at the chunk's end, one `opsloop.loop.Cycle` runs exactly as `opsloop
   loop` does (monitor, decide, retrain, validate, gate, promote, journal),
   with `run.now` at the chunk's end and the chunk's labels known: the
   model that scores chunk k+1 was chosen with labels up to the end of chunk
   k, never later.

Everything is written in a temporary registry (local-store) in a temporary
working directory (`keep` names one to look at afterwards): a backtest never
touches the project's registry, journal, policy state or prediction log.

For a binary task each chunk also carries the incident figures of
`opsloop.incidents` (incidents caught, detection delay, alerts per
series-day, point-adjusted F1) per strategy. A chunk's edges cut incidents
and alerts in two, so the summary gives them per strategy over the whole
replay (`incidents`: each strategy's alerts, chunk after chunk, against all
the replayed labels) instead of a mean over chunks.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import DataError, OpsloopError
from opsloop.incidents import INCIDENT_FIGURES
from opsloop.loop import Cycle, CycleResult, Observed, _iso, split
from opsloop.store import strict_json

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.bundle import LoadedModel
    from opsloop.config import Config
    from opsloop.runner import Runner
    from opsloop.types import Dataset, ModelVersion, Reporter

STRATEGIES = ("loop", "stale", "always")
#: The figures per chunk and strategy, in the order tables show them.
FIGURES = ("pr_auc", "roc_auc", "f1", "precision", "recall", "rmse", "mae")
MAX_CHUNKS = 500


@attrs.frozen(kw_only=True)
class Chunk:
    """One replayed chunk: its span, each strategy's figures on it, and the cycle that followed it."""

    start: datetime
    end: datetime
    rows: int
    positives: int
    figures: dict[str, dict[str, float]]  # strategy -> metric -> value
    models: dict[str, str]  # strategy -> the version (ref) that scored the chunk
    cycle: CycleResult

    def to_json(self) -> dict[str, Any]:
        c = self.cycle
        return strict_json({"start": _iso(self.start), "end": _iso(self.end), "rows": self.rows,
                        "positives": self.positives, **{s: dict(self.figures[s]) for s in STRATEGIES},
                        "models": dict(self.models),
                        "cycle": {"status": c.status, "decision": c.decision, "reasons": list(c.reasons),
                                  "candidate": c.candidate, "gate": c.gate, "promoted": c.promoted,
                                  "probation": c.probation, "recalibrated": c.recalibrated,
                                  "error": c.error}})


@attrs.frozen(kw_only=True)
class BacktestResult:
    """Every chunk and what the loop did over them."""

    model: str
    train: dict[str, Any]
    chunks: tuple[Chunk, ...]
    workdir: str | None = None
    incidents: dict[str, dict[str, float]] = attrs.field(factory=dict)  # strategy -> figure, whole replay

    @property
    def retrains(self) -> int:
        return sum(1 for c in self.chunks if c.cycle.candidate is not None)

    @property
    def promotions(self) -> int:
        return sum(1 for c in self.chunks if c.cycle.promoted)

    @property
    def rollbacks(self) -> int:
        """Promotions the loop undid on probation."""
        return sum(1 for c in self.chunks if c.cycle.status == "rolled back")

    @property
    def recalibrations(self) -> int:
        """Cycles that gave production a new alert threshold (`[loop] recalibrate`)."""
        return sum(1 for c in self.chunks if (c.cycle.recalibrated or {}).get("applied"))

    def means(self) -> dict[str, dict[str, float]]:
        """Each strategy's mean of each figure over the chunks that have it; not of the incident figures,
        which `incidents` gives over the whole replay."""
        out: dict[str, dict[str, float]] = {}
        for strategy in STRATEGIES:
            names = sorted({k for c in self.chunks for k in c.figures[strategy] if k not in INCIDENT_FIGURES},
                           key=_figure_order)
            out[strategy] = {}
            for name in names:
                values = [c.figures[strategy].get(name, math.nan) for c in self.chunks]
                finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
                out[strategy][name] = sum(finite) / len(finite) if finite else math.nan
        return out

    def to_json(self) -> dict[str, Any]:
        decisions = [c.cycle.decision for c in self.chunks]
        return strict_json({"model": self.model, "train": dict(self.train), "workdir": self.workdir,
                        "chunks": [c.to_json() for c in self.chunks],
                        "summary": {"chunks": len(self.chunks), "retrain_decisions": decisions.count("retrain"),
                                    "retrains": self.retrains, "promotions": self.promotions,
                                    "rollbacks": self.rollbacks, "recalibrations": self.recalibrations,
                                    "errors": sum(1 for c in self.chunks if c.cycle.status == "error"),
                                    "mean": self.means(),
                                    **({"incidents": self.incidents} if self.incidents else {})}})


def _figure_order(name: str) -> tuple[int, str]:
    return (FIGURES.index(name) if name in FIGURES else len(FIGURES), name)


def cut(frame: pd.DataFrame, time: str, *, every: timedelta | None, chunks: int | None) -> list[tuple[datetime,
                                                                                                           datetime]]:
    """[start, end) spans covering the replayed rows: `every` long from the first row, or `chunks` equal ones."""
    import pandas as pd

    times = pd.to_datetime(frame[time], utc=True)
    # [first, last): up to the next whole second after the newest row.
    first = times.min().to_pydatetime()
    last = times.max().to_pydatetime().replace(microsecond=0) + timedelta(seconds=1)
    if chunks is not None:
        step = (last - first) / chunks
        edges = [first + step * i for i in range(chunks)] + [last]
    else:
        assert every is not None
        count = math.ceil((last - first) / every)
        if count > MAX_CHUNKS:
            raise OpsloopError(f"--every {every} cuts the replayed history ({_iso(first)} to {_iso(last)}) into "
                               f"{count:,} chunks; at most {MAX_CHUNKS}: choose a longer one or --chunks N")
        edges = [first + every * i for i in range(count)] + [last]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


@attrs.define
class _Replay:
    """The inputs of a replayed cycle: the chunk production just scored, and the history up to its end."""

    current: Dataset
    predictions: Any
    history: Dataset
    span: tuple[datetime, datetime]

    def observe(self, runner: Runner, production: ModelVersion, model: LoadedModel, now: datetime) -> Observed:
        return Observed(current=self.current, predictions=self.predictions, history=self.history,
                        monitored=self.span)


def backtest(config: Config, *, every: timedelta | None = None, chunks: int | None = None,
             reporter: Reporter | None = None, keep: Path | None = None) -> BacktestResult:
    """Replay the configured labelled history through the loop (see the module docstring)."""
    from opsloop import data as data_mod

    if (every is None) == (chunks is None):
        raise OpsloopError("opsloop backtest: give --every DURATION or --chunks N, not both")
    raw = data_mod.load(config)
    if not raw.time or not raw.target:
        raise DataError("a backtest replays labelled rows in time order: set [data] time and [data] target")
    train_raw, replay = data_mod.periods(raw, config)
    if replay is None or not len(replay):
        raise DataError("nothing to replay: [data] monitor selects no rows after the training period "
                        "(or set monitor_fraction above 0)")
    replay = replay.derive(replay.frame.sort_values([c for c in (raw.time, raw.series) if c], kind="stable")
                           .reset_index(drop=True))
    spans = cut(replay.frame, raw.time, every=every, chunks=chunks)
    workdir = Path(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="opsloop-backtest-"))
    try:
        return _replay(config, workdir, train_raw, replay, spans, reporter, kept=keep is not None)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _isolated(config: Config, workdir: Path) -> Config:
    """The config in a working directory of its own, with a registry there and no deploy target."""
    from opsloop.config import Config as ConfigClass

    table = {**config.table, "store": {"uri": str(workdir / ".opsloop"), "plugins": ["local-store"]},
             "deploy": {"plugins": []}}
    return ConfigClass.from_table(table, path=config.path, workdir=workdir)


def _replay(config: Config, workdir: Path, train_raw: Dataset, replay: Dataset,
            spans: list[tuple[datetime, datetime]], reporter: Reporter | None, *, kept: bool) -> BacktestResult:
    import pandas as pd

    from opsloop.runner import Runner, judge
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    isolated = _isolated(config, workdir)
    session = Session.open(isolated)
    times = pd.to_datetime(replay.frame[replay.time], utc=True)
    first = Runner(session, reporter=reporter)
    first.run = attrs.evolve(first.run, now=spans[0][0])

    def build_first() -> tuple[Any, ModelVersion, LoadedModel]:
        built = first.build(train_raw)
        version = first.place(built.version)
        return built, version, first.load(version)

    try:
        _, stale_version, stale = first.ending("backtest", build_first, report=lambda done: done[0])
    finally:
        first.close()
    loop_version, loop_model = stale_version, stale
    always_version, always_model = stale_version, stale
    owner = "opsloop-backtest"
    chunks = []
    alarms: dict[str, list[pd.DataFrame]] = {s: [] for s in STRATEGIES}  # each chunk's labelled rows, per strategy
    track = reporter.track if reporter is not None else (lambda items, *a, **k: items)
    for i, (start, end) in enumerate(track(spans, "backtest chunks")):
        mask = ((times >= start) & (times < end)).to_numpy()
        rows = replay.derive(replay.frame[mask].reset_index(drop=True))
        if not len(rows):
            continue
        figures, models = {}, {}
        scored = {}
        for strategy, version, model in (("loop", loop_version, loop_model), ("stale", stale_version, stale),
                                         ("always", always_version, always_model)):
            judged, predictions = judge(model, rows)
            scored[strategy] = (judged, predictions)
            figures[strategy] = _figures(model.task, judged, predictions)
            models[strategy] = version.ref
            alarms[strategy].append(_alarms(model.task, judged, predictions))
        judged, predictions = scored["loop"]
        history_frame = pd.concat([train_raw.frame, replay.frame[(times < end).to_numpy()]], ignore_index=True)
        history = train_raw.derive(history_frame, name=f"{replay.name} up to {_iso(end)}")
        inputs = _Replay(current=judged, predictions=predictions, history=history, span=(start, end))
        cycle = Cycle(Runner(session, reporter=reporter), inputs, now=end, owner=owner).run()
        labels = judged.frame[judged.target] if judged.target in judged.frame else pd.Series([], dtype=float)
        chunks.append(Chunk(start=start, end=end, rows=len(rows), positives=int((labels == 1).sum()),
                            figures=figures, models=models, cycle=cycle))
        if cycle.moved_production:
            loop_version, loop_model = _production(session, loop_version.name)
        if i + 1 < len(spans):  # the last chunk's would score nothing
            always_version, always_model = _always(session, history, end, reporter)
    incidents = {s: _incidents(pd.concat(frames, ignore_index=True)) for s, frames in alarms.items()
                 if frames and all(f is not None for f in frames)}
    return BacktestResult(model=stale_version.name, chunks=tuple(chunks), workdir=str(workdir) if kept else None,
                          incidents=incidents,
                          train={"rows": len(train_raw), "version": stale_version.ref,
                                 "start": _iso(pd.to_datetime(train_raw.frame[train_raw.time], utc=True).min()),
                                 "end": _iso(pd.to_datetime(train_raw.frame[train_raw.time], utc=True).max())})


def _production(session: Any, name: str) -> tuple[ModelVersion, LoadedModel]:
    from opsloop.runner import Runner

    runner = Runner(session)
    try:
        version = runner.store.resolve(f"{name}@production")
        return version, runner.load(version)
    finally:
        runner.close()


def _always(session: Any, history: Dataset, now: datetime, reporter: Reporter | None) -> tuple[ModelVersion,
                                                                                                 LoadedModel]:
    """A version trained on the loop's whole retraining window (holdout included: nothing gates it), registered
    as `<name>-always` beside the loop's, and loaded."""
    import pandas as pd

    from opsloop.runner import Runner

    runner = Runner(session, reporter=reporter)
    runner.run = attrs.evolve(runner.run, now=now, model_name=f"{runner.run.model_name}-always")

    def build() -> tuple[ModelVersion, LoadedModel]:
        train, holdout, _ = split(history, session.config.loop)
        window = history.derive(pd.concat([train.frame, holdout.frame], ignore_index=True))
        features, steps, _issues = runner.preprocess(window, prefix="always.")
        model = runner.train(features, prefix="always.")
        version = runner.register(model, window, steps, [], prefix="always.")
        return version, runner.load(version)

    try:
        return runner.ending("backtest.always", build, report=lambda done: done[0])
    finally:
        runner.close()


def _figures(task: str, judged: Dataset, predictions: pd.DataFrame) -> dict[str, float]:
    """The chunk's figures for one strategy: PR AUC, ROC AUC, F1, precision, recall (RMSE, MAE for regression),
    and the incident figures for a binary task; NaN where the chunk cannot give one (no positive rows)."""
    import numpy as np

    from opsloop import metrics

    target = judged.target
    if not target or target not in judged.frame.columns:
        return {}
    labels = judged.frame[target].to_numpy(dtype=float)
    known = ~np.isnan(labels)
    if not known.any():
        return {}
    kept = predictions[known]
    values = metrics.for_task(task, labels[known], kept, undefined=math.nan)
    alarms = _alarms(task, judged, predictions)
    return {**{k: float(v) for k, v in values.items() if k in FIGURES},
            **(_incidents(alarms) if alarms is not None else {})}


def _alarms(task: str, judged: Dataset, predictions: pd.DataFrame) -> pd.DataFrame | None:
    """The labelled rows' `label`, `alert` (prediction 1), `series` and `time`, for a binary task; else None."""
    import numpy as np
    import pandas as pd

    frame, target = judged.frame, judged.target
    if task == "regression" or not target or target not in frame.columns:
        return None
    labels = frame[target].to_numpy(dtype=float)
    known = ~np.isnan(labels)
    if not np.isin(labels[known], (0, 1)).all():
        return None
    return pd.DataFrame({"label": labels, "alert": predictions["prediction"].to_numpy() == 1,
                         **{k: frame[c].to_numpy() for k, c in (("series", judged.series), ("time", judged.time))
                            if c and c in frame.columns}})[known].reset_index(drop=True)


def _incidents(rows: pd.DataFrame) -> dict[str, float]:
    from opsloop.incidents import incident_figures

    return incident_figures(rows["label"], rows["alert"], series=rows.get("series"), time=rows.get("time"))
