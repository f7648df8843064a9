"""$title: a deploy target that exports a version's verified bundle to a directory serving picks up.

`deploy` copies the registered bundle (manifest, model files, preprocessing
states) to `<directory>/<model>/` and writes `deployment.json` beside it
(which version, its digest, when): a model server, a sync job or a CD
pipeline watching that directory takes it from there. A newer version
replaces the older one whole. `deploy_status` reads `deployment.json`;
`undeploy` removes the export, and only a directory this target wrote (it
refuses anything without its `deployment.json`). Neither moves an alias.
Replace the copying with your platform's API calls.

Options (`[deploy.$name]`): see `Options`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import Dataset, Deployment, ModelVersion, OpsloopError, RunContext, hookimpl
from opsloop.types import DeploymentStatus

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel

PLUGIN = "$name"
#: The record this target writes beside each export; `undeploy` removes only directories that hold one.
RECORD = "deployment.json"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[deploy.$name]`).

    Attributes:
        directory: Where exports go, one subdirectory per model (relative to the working directory).
    """

    directory: str = "exported"


@hookimpl
def plugin_options() -> type:
    return Options


def export_dir(model_name: str, options: Options | None, run: RunContext) -> Path:
    """`<directory>/<model>`, absolute."""
    base = Path((options or Options()).directory).expanduser()
    return (base if base.is_absolute() else Path(run.workdir) / base).absolute() / model_name


def read_record(target: Path) -> dict[str, Any] | None:
    """What `deploy` recorded in `target`, or None when nothing was exported there."""
    try:
        record: dict[str, Any] = json.loads((target / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OpsloopError(f"{PLUGIN}: cannot read {target / RECORD}: {exc}") from None
    return record


def _writable_tree(root: Path) -> None:
    """Registered bundles are read-only; the export must be removable when the next version replaces it."""
    for parent, _, files in os.walk(root):
        os.chmod(parent, 0o755)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o644)


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Options | None,
           run: RunContext) -> Deployment:
    """Copy the bundle to `<directory>/<model>/` (whole or not at all) with its `deployment.json`."""
    target = export_dir(version.name, options, run)
    record = {"model": version.name, "version": version.ref, "digest": version.digest,
              "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run.run_id}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{version.name}-", dir=target.parent))
        shutil.copytree(version.path, staged / "bundle", copy_function=shutil.copyfile)
        _writable_tree(staged)
        (staged / RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if target.exists():
            old = target.with_name(f".{version.name}-old-{os.getpid()}")
            os.rename(target, old)
            os.rename(staged, target)
            shutil.rmtree(old)
        else:
            os.rename(staged, target)
    except OSError as exc:
        raise OpsloopError(f"{PLUGIN}: cannot export {version.ref} to {target}: {exc.strerror or exc}") from None
    run.log.info("%s: exported %s to %s", PLUGIN, version.ref, target)
    return Deployment(target=PLUGIN, model=version.ref, location=str(target), details=record)


@hookimpl
def deploy_status(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Which version is exported for `model_name`, and where."""
    target = export_dir(model_name, options, run)
    record = read_record(target)
    if record is None:
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False)
    present = (target / "bundle" / "manifest.json").is_file()
    return DeploymentStatus(target=PLUGIN, model=model_name, deployed=present, version=record.get("version"),
                            location=str(target), details=record)


@hookimpl
def undeploy(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Remove the export of `model_name`: only a directory holding this target's `deployment.json`."""
    target = export_dir(model_name, options, run)
    if not target.exists():
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False, details={"removed": []})
    record = read_record(target)
    if record is None or record.get("model") != model_name:
        raise OpsloopError(f"{PLUGIN}: refusing to remove {target}: it holds no {RECORD} of {model_name} written "
                           "by this target; nothing was removed")
    shutil.rmtree(target)
    run.log.info("%s: removed the export of %s from %s", PLUGIN, record.get("version"), target)
    return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False, version=record.get("version"),
                            location=str(target), details={"removed": [str(target)]})


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _target: kinds.DeployTarget = $module
    _configurable: kinds.Configurable = $module
