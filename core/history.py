"""Where `opsloop loop`'s cycles get their rows: the prediction log and the configured source.

`LogInputs.observe` gives a cycle (`opsloop.loop.Cycle`) what production
scored in the last `[loop] monitor_window` of its logged rows (with the
labels feedback joined to them), and the labelled history retraining and the
gate draw from: the rows of `[data] source` that the `[data] train` and
`monitor` periods select, plus, with `[loop] use_log`, every labelled logged
row, one row per series and time (the log's label wins). With `[data]
unlabelled = "keep"` (an unsupervised trainer, such as isolation-forest,
trains on rows without a label) the rows without a label come too, the
source's and the log's, as `opsloop run`'s retrain takes them; a labelled
copy of a row wins over an unlabelled one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.loop import Observed
from opsloop.monitoring import parse_duration
from opsloop.types import Dataset

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.types import ModelVersion


@attrs.define
class LogInputs:
    """What production scored, from the prediction log; history from `[data] source` and labelled log rows."""

    session: Session
    log: Path

    def observe(self, runner: Runner, production: ModelVersion, model: LoadedModel, now: datetime) -> Observed:
        from opsloop import data as data_mod

        config = self.session.config
        notes: list[str] = []
        current = predictions = None
        monitored = None
        logged = []
        from_source = config.loop.monitor_rows == "source"
        if self.log.exists() and (config.loop.use_log or not from_source):
            current, predictions, monitored, logged = self._logged(production, notes, quiet=from_source)
        elif not from_source:
            notes.append(f"no prediction log at {self.log}: nothing production scored is monitored")
        raw = data_mod.load(config, self.session)  # afresh each cycle: a live source brings its newest rows
        source, periods = _periods(raw, config)
        if from_source:  # within the configured periods, as history is
            import pandas as pd

            rows = raw.derive(pd.concat(periods, ignore_index=True) if len(periods) > 1 else periods[0])
            current, predictions, monitored = _newest(rows, model, config, notes)
        history = _history(source, periods, logged if config.loop.use_log else [], notes,
                           keep=config.data.unlabelled == "keep")
        return Observed(current=current, predictions=predictions, history=history, monitored=monitored,
                        notes=tuple(notes))

    def _logged(self, production: ModelVersion, notes: list[str], *, quiet: bool = False
                ) -> tuple[Any, Any, Any, list[Dataset]]:
        """Production's rows in the last monitor_window of its log (by the rows' time), and every version's
        labelled rows (every row with `[data] unlabelled = "keep"`)."""
        from opsloop import monitoring
        from opsloop.bundle import read_manifest

        config = self.session.config
        con = monitoring.open_log(self.log)
        labelled: list[Dataset] = []
        current = predictions = monitored = None
        try:
            # Only versions with rows in the log (each read scans it), and only production's without use_log.
            logged = _logged_versions(con, production.name)
            with self.session.open_store() as store:
                versions = [v for v in store.versions(production.name) if v.version in logged
                            and (config.loop.use_log or v.version == production.version)]
            for version in versions:
                manifest = read_manifest(Path(version.path), ref=version.ref, digest=version.digest)
                by = "time" if manifest.get("time") else "at"
                rows = monitoring.read_rows(con, self.log, version, manifest, by=by, since=None, until=None)
                if not len(rows.current):
                    continue
                frame, target = rows.current.frame, rows.current.target
                if config.data.unlabelled == "keep":  # an unsupervised trainer takes the rows without a label too
                    labelled.append(rows.current)
                elif target and target in frame.columns:
                    mask = frame[target].notna().to_numpy()
                    if mask.any():
                        labelled.append(rows.current.derive(frame[mask].reset_index(drop=True)))
                if version.version != production.version:
                    continue
                if rows.repeats:
                    notes.append(monitoring.repeats_note(rows.repeats, version.ref))
                keys = rows.keys
                # Up to the newest row's time, [from, until): the next whole second after it.
                end = keys.max().to_pydatetime().replace(microsecond=0) + timedelta(seconds=1)
                start = end - parse_duration(config.loop.monitor_window, "[loop] monitor_window")
                inside = ((keys >= start) & (keys < end)).to_numpy()
                current = rows.current.derive(frame[inside].reset_index(drop=True))
                predictions = rows.predictions[inside].reset_index(drop=True)
                monitored = (start, end)
        finally:
            con.close()
        if current is None and not quiet:
            notes.append(f"the prediction log {self.log} has no rows of {production.ref}")
        return current, predictions, monitored, labelled


def _newest(source: Dataset, model: LoadedModel, config: Any, notes: list[str]) -> tuple[Dataset, Any, Any]:
    """`[loop] monitor_rows = "source"`: the newest `monitor_window` of the source's rows in the configured
    periods (by their time, up to the next whole second after the newest), scored by production. The window
    before it is scored with them and then left out, so that windowed features see each series' past as they
    would in serving."""
    import pandas as pd

    from opsloop.errors import ConfigError
    from opsloop.runner import judge

    if not source.time:
        raise ConfigError('monitor_rows = "source" monitors the newest rows by their time: set [data] time',
                          section="loop", key="monitor_rows", source=config.source)
    times = pd.to_datetime(source.frame[source.time], utc=True)
    end = times.max().to_pydatetime().replace(microsecond=0) + timedelta(seconds=1)
    length = parse_duration(config.loop.monitor_window, "[loop] monitor_window")
    start = end - length
    lead = (times >= start - length).to_numpy()
    frame = source.frame[lead].reset_index(drop=True)
    inside = (times[lead] >= start).to_numpy()
    judged, predictions = judge(model, source.derive(frame))
    current = judged.derive(judged.frame[inside].reset_index(drop=True),
                            name=f"{source.name} [{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}]")
    notes.append(f"monitored {len(current.frame):,} rows of {source.name} from {start:%Y-%m-%d %H:%M:%S} to "
                 f"{end:%Y-%m-%d %H:%M:%S}, read from the source and scored by production")
    return current, predictions[inside].reset_index(drop=True), (start, end)


def _periods(source: Dataset, config: Any) -> tuple[Dataset, list[Any]]:
    """The frames the config's periods select (`[data] train` and `monitor`, the same rows a backtest replays),
    under the name they go by: the whole source when neither query is set."""
    from opsloop import data as data_mod

    if config.data.train is None and config.data.monitor is None:
        return source, [source.frame]
    train, monitor = data_mod.periods(source, config)
    named = source.derive(source.frame.iloc[:0], name=f"{source.name} [train and monitor periods]")
    return named, [train.frame] + ([monitor.frame] if monitor is not None else [])


def _logged_versions(con: Any, model: str) -> set[int]:
    """The versions of `model` with rows in the prediction log, served or batch."""
    from opsloop.serving import segments

    query = "SELECT DISTINCT version FROM predictions WHERE model = ?"
    if segments.has_segments(con):
        query += " UNION SELECT DISTINCT version FROM segments WHERE model = ?"
    return {int(v) for (v,) in con.execute(query, (model,) * query.count("?"))}


def _history(source: Dataset, periods: list[Any], logged: list[Dataset], notes: list[str], *,
             keep: bool = False) -> Dataset:
    """The periods' labelled rows and the log's, one row per (series, time): the log's label wins (feedback is
    what an operator confirmed after the export), and a row in two periods is kept once. With `keep` (`[data]
    unlabelled = "keep"`) the rows without a label too, a labelled copy of a row winning over an unlabelled
    one."""
    import pandas as pd

    target = source.target
    labels = bool(target) and all(target in f.columns for f in periods)
    parts = [f if keep or not labels else f[f[target].notna()] for f in periods]
    own = sum(len(p) for p in parts)
    columns = list(source.frame.columns)
    parts += [part.frame[[c for c in columns if c in part.frame.columns]] for part in logged]
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    keys = [c for c in (source.series, source.time) if c]
    if len(parts) > 1 and keys:
        if keep and labels:  # stable: among the copies of a row, the labelled ones last, in their order
            frame = frame.iloc[frame[target].notna().to_numpy().argsort(kind="stable")]
        frame = frame.drop_duplicates(subset=keys, keep="last")
    if logged:
        count = sum(len(p.frame) for p in logged)
        notes.append(f"history: {own:,} rows of {source.name} and {count:,} logged rows, labelled or not ([data] "
                     'unlabelled = "keep")' if keep else
                     f"history: {own:,} labelled rows of {source.name} and {count:,} labelled logged rows")
    if source.time:
        frame = frame.sort_values([c for c in (source.time, source.series) if c], kind="stable")
    return source.derive(frame.reset_index(drop=True), name=f"{source.name} + prediction log" if logged
                         else source.name)
