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

from opsloop.errors import StoreError

if TYPE_CHECKING:
    from opsloop.store import ModelStore
    from opsloop.types import ModelVersion

PRODUCTION = "production"
LOOP_REASON = "loop cycle "
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
        from opsloop.loop import _iso

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
