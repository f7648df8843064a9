"""Missing hook: a deploy target without `undeploy`. mypy must refuse it as a DeployTarget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.types import Dataset, Deployment, DeploymentStatus, ModelVersion, RunContext

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Any,
           run: RunContext) -> Deployment:
    return Deployment(target="bad-missing", model=version.ref, location="nowhere")


@hookimpl
def deploy_status(model_name: str, options: Any, run: RunContext) -> DeploymentStatus:
    return DeploymentStatus(target="bad-missing", model=model_name, deployed=False)


if TYPE_CHECKING:
    import bad_missing

    from opsloop import kinds

    _target: kinds.DeployTarget = bad_missing  # error: no undeploy
