"""Re-choosing production's alert threshold when the loop keeps it (`[loop] recalibrate`, on by default).

A shift can break a model's alerts without breaking its ranking. On SMD
machine-1-6 the first version still ranks the rows after the shift almost
perfectly (PR AUC 0.99), but its threshold, chosen at validation, never
fires again: 0 of 15 later incidents caught. The policy sees the quality
drop and retrains; the gate rightly finds no candidate ranks better and
keeps production; and nothing fixes the alerts (benchmarks/README.md, the
loop).

With `[loop] recalibrate = true` (the default), a cycle whose candidate lost the gate
chooses production's threshold again by the `[alerting]` rule, on the gate
window: the latest labelled rows, which production did not train on,
scored by production. The new threshold replaces the old one (an alias
change of action `threshold`, as `opsloop models promote --threshold` makes,
with the figures in its reason) only when it differs and its F1 on those
rows beats the old one's by at least `MIN_GAIN`. Both are measured on the
rows the new threshold was chosen on, so the gain is optimistic; the
backtest shows what it gives on the rows after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop.errors import ConfigError

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.types import Dataset

#: The least F1 gain on the gate window for a new threshold to replace the old one.
MIN_GAIN = 0.05


def choose_again(model: LoadedModel, window: Dataset, section: Any, *,
                 scored: tuple[Dataset, Any] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The threshold `section`'s rule chooses for `model` on `window`'s labelled rows, or None when it should
    not replace the current one; and the figures of both (`old`, `new`) and why, for the journal. `scored`:
    `opsloop.runner.judge(model, window)` when the caller has it already (the gate scored production on the
    same window), so the rows are not scored twice."""
    import numpy as np
    import pandas as pd

    from opsloop import alerting
    from opsloop.runner import judge

    old = model.threshold
    if not old:
        return None, {"why": "the model has no alert threshold to choose again"}
    rows_scored, predictions = scored or judge(model, window)
    labels = rows_scored.frame[rows_scored.target]
    # the window's labelled, scored rows, laid out as validation's out-of-fold rows are
    rows = alerting.oof_frame(pd.DataFrame({"row": np.arange(len(labels)), "label": labels.to_numpy(),
                                            "score": predictions["score"].to_numpy(dtype=float)}), rows_scored)
    if rows is None:
        return None, {"why": "the gate window has no labelled, scored rows to choose a threshold on"}
    try:
        new = alerting.choose(rows, section, where=f"the loop's gate window ({len(rows):,} labelled rows)")
    except ConfigError as exc:
        return None, {"why": f"the [alerting] rule cannot be met on the gate window: {exc}"}
    before = alerting.achieved(rows, old)
    after = new["achieved"]
    figures = {"rule": section.rule, "rows": len(rows), "old": {"value": old["value"], **_short(before)},
               "new": {"value": new["value"], **_short(after)}}
    gain = after["f1"] - before["f1"]
    if new["value"] == old["value"] or not gain >= MIN_GAIN:
        figures["why"] = (f"F1 on the gate window {after['f1']:.3f} at the rule's threshold {new['value']:.4g} "
                          f"against {before['f1']:.3f} at the current {old['value']:.4g}: below the "
                          f"{MIN_GAIN} gain needed")
        return None, figures
    figures["why"] = (f"the [alerting] rule {section.rule!r} chose {new['value']:.4g} on the gate window "
                      f"({len(rows):,} labelled rows): F1 {after['f1']:.3f} against {before['f1']:.3f} at "
                      f"{old['value']:.4g}, incidents caught {after['incidents_caught']:.0f} against "
                      f"{before['incidents_caught']:.0f} of {after['incidents']:.0f}, "
                      f"{after['alerts_per_day']:.1f} alerts a day against {before['alerts_per_day']:.1f} "
                      "(on the rows it was chosen on)")
    return new, figures


def _short(figures: dict[str, float]) -> dict[str, float]:
    return {k: figures[k] for k in ("f1", "precision", "recall", "incidents", "incidents_caught", "alerts_per_day")
            if k in figures}
