"""Tests of the `$name` observer: it hears every stage of a real run (the kit's hook_recorder) and writes each
event; a failure to write is a warning unless its options say critical."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from opsloop.testing import HookRecorder, Project


def project_with(opsloop_project: Callable[..., Project], **options: Any) -> Project:
    plugins: dict[str, Any] = {"enable": ["$name"]}
    if options:
        plugins["$name"] = options
    return opsloop_project(small=True, config={"plugins": plugins})


def test_it_hears_every_stage_and_writes_each_event(opsloop_project: Callable[..., Project],
                                                    hook_recorder: HookRecorder) -> None:
    project = project_with(opsloop_project)
    result = project.run("run").assert_ok()
    heard = [c.kwargs["stage"] for c in hook_recorder.named("on_stage_start") if c.plugin == "$name"]
    assert heard and "train" in heard
    events = [json.loads(line) for line in
              (project.path / "opsloop-events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["stage"] for e in events if e["event"] == "stage_start"] == heard
    assert [e["stage"] for e in events if e["event"] == "stage_end"] == heard  # every stage succeeded
    assert [e["version"] for e in events if e["event"] == "model_registered"] == ["small-telemetry:1"]
    assert {e["run_id"] for e in events} == {result.json["run_id"]}
    assert [(e["command"], e["outcome"]) for e in events if e["event"] == "run_end"] == [("run", "ok")]
    assert events[-1]["event"] == "run_end"  # once, after every stage


def test_a_failing_observer_warns_and_the_run_goes_on(opsloop_project: Callable[..., Project]) -> None:
    project = project_with(opsloop_project, path="no/such/dir/events.jsonl")
    result = project.run("run").assert_ok()
    assert "$name" in json.dumps(result.json["warnings"])


def test_a_critical_observer_stops_the_run(opsloop_project: Callable[..., Project]) -> None:
    project = project_with(opsloop_project, path="no/such/dir/events.jsonl", critical=True)
    project.run("run").assert_error("$name", "cannot write the events file")
