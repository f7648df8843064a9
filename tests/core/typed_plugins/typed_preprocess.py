"""A typed preprocess step: fills gaps with the training medians, learnt when fitting and replayed after."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, Preprocessed, RunContext


@hookimpl
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Any, run: RunContext) -> Preprocessed:
    frame = dataset.frame
    if state is None:
        numeric = [c for c in dataset.feature_columns if frame[c].dtype.kind in "fiu"]
        state = {"fill": {c: float(frame[c].median()) for c in numeric}}
    gaps = int(frame[list(state["fill"])].isna().sum().sum())
    issues = (f"{gaps} missing values filled with training medians",) if gaps else ()
    return Preprocessed(dataset=dataset.derive(frame.fillna(state["fill"])), state=state, issues=issues)


if TYPE_CHECKING:
    import typed_preprocess

    from opsloop import kinds

    _step: kinds.PreprocessStep = typed_preprocess
