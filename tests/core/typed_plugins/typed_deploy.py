"""A typed deploy target: writes the monitored period's predictions to a CSV file, reports it, removes it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, Deployment, DeploymentStatus, ModelVersion, RunContext

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel

TARGET = "typed-deploy"


def _output(workdir: Path, model_name: str) -> Path:
    return workdir / f"{model_name}.typed-predictions.csv"


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Any,
           run: RunContext) -> Deployment:
    out = _output(run.workdir, version.name)
    frame = dataset.frame if dataset is not None else None
    rows = 0
    if frame is not None:
        predictions = model.predict(frame)
        predictions.insert(0, "model", version.ref)
        predictions.to_csv(out, index=False)
        rows = len(predictions)
    return Deployment(target=TARGET, model=version.ref, location=str(out), details={"rows": rows})


@hookimpl
def deploy_status(model_name: str, options: Any, run: RunContext) -> DeploymentStatus:
    out = _output(run.workdir, model_name)
    if not out.exists():
        return DeploymentStatus(target=TARGET, model=model_name, deployed=False)
    with out.open() as lines:
        lines.readline()
        first = lines.readline()
    return DeploymentStatus(target=TARGET, model=model_name, deployed=True, version=first.split(",")[0] or None,
                            location=str(out))


@hookimpl
def undeploy(model_name: str, options: Any, run: RunContext) -> DeploymentStatus:
    before = deploy_status(model_name=model_name, options=options, run=run)
    removed = []
    if before.location is not None:
        Path(before.location).unlink()
        removed.append(before.location)
    return DeploymentStatus(target=TARGET, model=model_name, deployed=False, version=before.version,
                            location=before.location, details={"removed": removed})


if TYPE_CHECKING:
    import typed_deploy

    from opsloop import kinds

    _target: kinds.DeployTarget = typed_deploy
