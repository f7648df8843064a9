"""A typed observer of every event: appends one line per event to `events.log` in the run's directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import hookimpl

if TYPE_CHECKING:
    from opsloop.store import AliasChange
    from opsloop.types import ModelVersion, RunContext


def _write(run: RunContext, line: str) -> None:
    with (run.workdir / "events.log").open("a") as log:
        log.write(line + "\n")


@hookimpl
def on_stage_start(stage: str, plugins: list[str], run: RunContext, options: Any) -> None:
    _write(run, f"start {stage} {','.join(plugins)}")


@hookimpl
def on_stage_end(stage: str, result: Any, seconds: float, run: RunContext, options: Any) -> None:
    _write(run, f"end {stage}")


@hookimpl
def on_stage_error(stage: str, error: BaseException, run: RunContext, options: Any) -> None:
    _write(run, f"error {stage} {error}")


@hookimpl
def on_model_registered(version: ModelVersion, run: RunContext, options: Any) -> None:
    _write(run, f"registered {version.ref}")


@hookimpl
def on_alias_changed(change: AliasChange, run: RunContext | None, options: Any) -> None:
    if run is not None:
        _write(run, f"alias {change.alias} {change.name}:{change.to_version}")


if TYPE_CHECKING:
    import typed_observer

    from opsloop import kinds

    _observer: kinds.Observer = typed_observer
    _stage_end_only: kinds.OnStageEnd = typed_observer
