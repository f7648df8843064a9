"""A typed gate: the challenger wins when it catches more of the window's incidents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.errors import DataError
from opsloop.types import Contender, Dataset, GateVerdict, RunContext


@hookimpl
def gate(champion: Contender, challenger: Contender, window: Dataset, options: Any,
         run: RunContext) -> GateVerdict:
    labels = window.y.to_numpy()
    incident = labels == 1
    if not incident.any():
        raise DataError(f"typed-gate: window {window.name} has no incident")

    def recall(contender: Contender) -> float:
        alerted = contender.predictions["prediction"].to_numpy() == 1
        return float((alerted & incident).sum() / incident.sum())

    old, new = recall(champion), recall(challenger)
    return GateVerdict(winner="challenger" if new > old else "champion", metric="recall", champion=old,
                       challenger=new, margin=new - old, reasons=(f"recall {new:.2f} against {old:.2f}",))


if TYPE_CHECKING:
    import typed_gate

    from opsloop import kinds

    _gate: kinds.Gate = typed_gate
