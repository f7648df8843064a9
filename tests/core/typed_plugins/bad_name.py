"""Misspelt parameter: pluggy passes arguments by name, so `datset` would never get the rows. mypy must refuse it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, Preprocessed, RunContext


@hookimpl
def preprocess(datset: Dataset, state: dict[str, Any] | None, options: Any, run: RunContext) -> Preprocessed:
    return Preprocessed(dataset=datset, state=state or {})


if TYPE_CHECKING:
    import bad_name

    from opsloop import kinds

    _step: kinds.PreprocessStep = bad_name  # error: no parameter `dataset`
