"""A typed validator: trains on the first 75% of the time steps, scores the last 25%."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, FitFunction, RunContext, ValidationReport


@hookimpl
def validate(dataset: Dataset, fit: FitFunction, options: Any, run: RunContext) -> ValidationReport:
    from opsloop import metrics
    from opsloop.bundle import predictions_frame

    held = dataset.held_out(0.25, run.seed)
    train, test = dataset.frame[~held], dataset.frame[held]
    model = fit(dataset.derive(train))
    predictions = predictions_frame(model.estimator, model.task, test[list(model.features)])
    figures = metrics.for_task(model.task, test[dataset.target], predictions)
    run.fold_scored(0, figures)
    return ValidationReport(method="last 25% of time steps", folds=(figures,), mean=figures)


if TYPE_CHECKING:
    import typed_validator

    from opsloop import kinds

    _validator: kinds.Validator = typed_validator
