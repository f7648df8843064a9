"""$title: an observer that writes every stage and every registered version of a run to a JSON-lines file.

Enabled in `[plugins] enable`, it hears each stage start, end and fail
(`on_stage_*`), each new version (`on_model_registered`) and each alias move
(`on_alias_changed`), and appends one JSON object per event to `path`: the
run id, the event, the stage or version, and timings. A tracking system, a
chat notice or an audit log would act in the same places. An exception here
is reported as a warning and the run goes on, unless `critical` is set.

Options (`[plugins.$name]`): see `Options`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import ModelVersion, OpsloopError, RunContext, hookimpl

if TYPE_CHECKING:
    from opsloop.store import AliasChange

PLUGIN = "$name"


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[plugins.$name]`).

    Attributes:
        path: The events file (JSON lines), relative to the working directory.
        critical: Stop the run when writing an event fails (default: a warning, and the run goes on).
    """

    path: str = attrs.field(default="opsloop-events.jsonl", metadata={"shapes_model": False})
    critical: bool = attrs.field(default=False, metadata={"shapes_model": False})


@hookimpl
def plugin_options() -> type:
    return Options


def write(event: dict[str, Any], workdir: Path | str, options: Options | None) -> None:
    """Append one event, as one JSON line, to the events file."""
    path = Path((options or Options()).path).expanduser()
    path = path if path.is_absolute() else Path(workdir) / path
    line = json.dumps({"at": datetime.now(UTC).isoformat(timespec="milliseconds"), **event}, default=str)
    try:
        with path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as exc:
        raise OpsloopError(f"{PLUGIN}: cannot write the events file {path}: {exc.strerror or exc}") from None


@hookimpl
def on_stage_start(stage: str, plugins: list[str], run: RunContext, options: Options | None) -> None:
    write({"run_id": run.run_id, "event": "stage_start", "stage": stage, "plugins": plugins}, run.workdir, options)


@hookimpl
def on_stage_end(stage: str, result: Any, seconds: float, run: RunContext, options: Options | None) -> None:
    write({"run_id": run.run_id, "event": "stage_end", "stage": stage, "seconds": round(seconds, 3),
           "result": type(result).__name__}, run.workdir, options)


@hookimpl
def on_stage_error(stage: str, error: BaseException, run: RunContext, options: Options | None) -> None:
    write({"run_id": run.run_id, "event": "stage_error", "stage": stage, "error": str(error)}, run.workdir,
          options)


@hookimpl
def on_model_registered(version: ModelVersion, run: RunContext, options: Options | None) -> None:
    write({"run_id": run.run_id, "event": "model_registered", "version": version.ref,
           "metrics": dict(version.metrics)}, run.workdir, options)


@hookimpl
def on_alias_changed(change: AliasChange, run: RunContext | None, options: Options | None) -> None:
    write({"run_id": run.run_id if run else None, "event": "alias_changed", "model": change.name,
           "alias": change.alias, "from": change.from_version, "to": change.to_version, "action": change.action,
           "actor": change.actor, "reason": change.reason}, run.workdir if run else Path.cwd(), options)


@hookimpl
def on_run_end(command: str, outcome: str, result: Any, error: BaseException | None, run: RunContext,
               options: Options | None) -> None:
    write({"run_id": run.run_id, "event": "run_end", "command": command, "outcome": outcome,
           "error": None if error is None else str(error)}, run.workdir, options)


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _observer: kinds.Observer = $module
    _run_end: kinds.OnRunEnd = $module
    _configurable: kinds.Configurable = $module
