"""Wrong return type: `train` returns the estimator itself, not a TrainedModel. mypy must refuse it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, RunContext


@hookimpl
def train(dataset: Dataset, options: Any, run: RunContext) -> dict[str, float]:
    return {"threshold": float(dataset.y.mean())}


if TYPE_CHECKING:
    import bad_return

    from opsloop import kinds

    _trainer: kinds.Trainer = bad_return  # error: train returns dict[str, float]
