"""Probation: a version the loop promoted stays only if the version it replaced does not beat it afterwards.

The gate judges a candidate on the latest held-out slice before promoting
it. That slice is short (`[loop] holdout`) and can be dominated by one
incident: on SMD machine-1-6 a one-day holdout promoted a candidate that
then ranked worse than the model it replaced on every later day
(benchmarks/README.md, the loop). So, once `[loop] probation` of labelled
rows newer than anything either version saw has arrived, a cycle judges the
promoted version (champion) against the one it replaced (challenger) on
those rows, with the same `[gate]` plugins, margin and interval. If the
replaced version wins, the cycle rolls production back to it (an alias
change of action `rollback`, the figures in its reason); otherwise the
promotion has passed probation. Either outcome is journaled once, and the
version is not judged again.

Only promotions by the loop are on probation: the alias history's last move
of `production` is the loop's (its reason starts with `loop cycle`). A
person who promotes or rolls back by hand has decided; the loop does not
second-guess them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import DataError, OpsloopError, StoreError
from opsloop.loop import LOOP_REASON, PRODUCTION, _iso, _one_line, _utc_times, verdict_json
from opsloop.monitoring import parse_duration

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.loop import Cycle
    from opsloop.store import ModelStore
    from opsloop.types import Dataset, ModelVersion

#: How far back the journal is read for an outcome; a promotion further back than this has long been judged.
JOURNAL_DEPTH = 1000
FINAL = ("passed", "rolled back")


@attrs.frozen(kw_only=True)
class Watch:
    """Production, on probation: promoted by the loop at `promoted_at`, replacing `previous`; the rows after
    `since` are new to both."""

    version: ModelVersion
    previous: ModelVersion
    promoted_at: str
    since: datetime

    def record(self, length: str) -> dict[str, Any]:
        """The journal's `probation` entry, before judging."""
        return {"version": self.version.ref, "against": self.previous.ref, "promoted_at": self.promoted_at,
                "since": _iso(self.since), "length": length, "outcome": "waiting", "rows": 0}


def watch(store: ModelStore, production: ModelVersion) -> tuple[Watch | None, str | None]:
    """Production's probation, if it is on one (and a note when it cannot be: the replaced version is gone)."""
    name = production.name
    moves = [c for c in store.history(name, PRODUCTION) if c.action != "threshold"]
    if not moves:
        return None, None
    last = moves[-1]
    if (last.to_version != production.version or last.action != "set" or last.from_version is None
            or last.from_version == production.version or not last.reason.startswith(LOOP_REASON)):
        return None, None
    if _judged(store, production, last.at):
        return None, None
    try:
        previous = store.get(name, last.from_version)
    except StoreError:
        return None, (f"probation of {production.ref}: {name}:{last.from_version}, the version it replaced, is no "
                      "longer in the registry; nothing to compare it with")
    since = _since(production)
    if since is None:
        return None, (f"probation of {production.ref}: its lineage records no rows it trained or was judged on; "
                      "it is not on probation")
    return Watch(version=production, previous=previous, promoted_at=last.at, since=since), None


def _judged(store: ModelStore, production: ModelVersion, promoted_at: str) -> bool:
    """Whether the journal already holds the outcome of this promotion's probation."""
    for record in store.cycles(production.name, limit=JOURNAL_DEPTH):
        entry = record.body.get("probation") or {}
        if (entry.get("version") == production.ref and entry.get("promoted_at") == promoted_at
                and entry.get("outcome") in FINAL):
            return True
    return False


def _since(version: ModelVersion) -> datetime | None:
    """The newest row the version was promoted on: the end of the holdout the gate judged it on (its lineage's
    `training.holdout`), else the last row it trained on; None when its lineage has neither."""
    import pandas as pd

    lineage = version.lineage or {}
    holdout = dict(dict(lineage.get("training") or {}).get("holdout") or {})
    end = holdout.get("end") or dict(lineage.get("data") or {}).get("end")
    if not end:
        return None
    stamp = pd.Timestamp(end)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def judge_probation(cycle: Cycle, production: ModelVersion, model: LoadedModel, history: Dataset) -> bool:
    """One cycle's probation step: judge production against the version it replaced once `[loop] probation`
    of labelled rows new to both has come, and roll back if that version wins. True when production was
    rolled back (the cycle then ends)."""
    length = cycle.config.loop.probation
    if length == "off" or not cycle.config.selected("gate"):
        return False
    on, note = watch(cycle.store, production)
    if note:
        cycle.result.notes.append(note)
    if on is None:
        return False
    record = cycle.result.probation = on.record(length)
    times = _utc_times(history.frame[history.time]) if history.time in history.frame.columns else None
    fresh = (times > on.since).to_numpy() if times is not None else None
    newest = times[fresh].max().to_pydatetime() if fresh is not None and fresh.any() else None
    record["rows"] = 0 if fresh is None else int(fresh.sum())
    what = f"probation of {production.ref} (promoted by the loop over {on.previous.ref})"
    if newest is None or newest - on.since < parse_duration(length, "[loop] probation"):
        have = "none yet" if newest is None else f"{record['rows']:,} rows up to {_iso(newest)}"
        cycle.result.notes.append(f"{what}: waiting for {length} of labelled rows after {_iso(on.since)} "
                                  f"({have})")
        return False
    cycle._step("probation")
    rows = history.derive(history.frame[fresh].reset_index(drop=True))
    record["until"] = _iso(newest)
    try:
        verdicts = cycle.judge(production, model, on.previous, cycle.runner.load(on.previous), rows)
    except DataError as exc:  # one class only, say: wait for rows that can decide
        cycle.result.notes.append(f"{what}: the {record['rows']:,} rows after {_iso(on.since)} cannot decide "
                                  f"yet: {_one_line(exc)}")
        return False
    record["gates"] = [verdict_json(v) for v in verdicts]
    said = "; ".join(f"{v.gate}: {' '.join(v.reasons)}" for v in verdicts)
    if not all(v.winner == "challenger" for v in verdicts):
        record["outcome"] = "passed"
        cycle.result.notes.append(f"{what}: passed on {record['rows']:,} rows after {_iso(on.since)}: "
                                  f"{on.previous.ref} did not beat it ({said})")
        return False
    cycle._step("rollback")
    why = (f"probation: {on.previous.ref} (challenger) beat {production.ref} (champion), which the loop promoted "
           f"over it, on {record['rows']:,} labelled rows after {_iso(on.since)}: {said}")
    if cycle.store.alias(cycle.name, PRODUCTION) != production.version:  # a person moved it meanwhile
        raise OpsloopError(f"{what}: production moved during the cycle; not rolling back")
    change = cycle.session.rollback(cycle.store, cycle.name, PRODUCTION, reason=cycle.reason_prefix + why,
                                    run=cycle.runner.run)
    record["outcome"] = "rolled back"
    cycle.result.status = "rolled back"
    cycle.result.production = f"{cycle.name}:{change.to_version}"
    cycle.result.reasons = [f"rolled production back from {production.ref} to {cycle.name}:{change.to_version}: "
                            f"{why}"]
    return True
