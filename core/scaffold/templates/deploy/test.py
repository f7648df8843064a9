"""Tests of the `$name` deploy target: opsloop's deploy conformance suite, and deploy, status and remove on
a whole run of a small real set."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from opsloop.testing import Project
from opsloop.testing.conformance import DeploySuite


class TestConformance(DeploySuite, plugin="$name"):
    """Deploy, then status says deployed with the version; remove, then status says not deployed."""


def test_deploy_status_and_remove(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"deploy": {"plugins": ["$name"]}})
    run = project.run("run").assert_ok().json
    export = project.path / "exported" / "small-telemetry"
    assert [d["location"] for d in run["deployments"]] == [str(export)]
    record = json.loads((export / "deployment.json").read_text(encoding="utf-8"))
    assert record["version"] == "small-telemetry:1"
    bundle = Path(run["versions"][0]["path"])
    assert (export / "bundle" / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()

    status = project.run("deploy", "status", "--json").assert_ok().json
    assert "small-telemetry:1" in json.dumps(status) and '"deployed": true' in json.dumps(status)

    project.run("deploy", "remove", "--json").assert_ok()
    assert not export.exists()
    assert bundle.is_dir(), "the registered version stays"
    status = project.run("deploy", "status", "--json").assert_ok().json
    assert '"deployed": true' not in json.dumps(status)


def test_remove_refuses_a_directory_it_did_not_write(opsloop_project: Callable[..., Project]) -> None:
    project = opsloop_project(small=True, config={"deploy": {"plugins": ["$name"]}})
    stranger = project.path / "exported" / "small-telemetry"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("not an export\n", encoding="utf-8")
    project.run("deploy", "remove").assert_error("$name", "refusing to remove", "nothing was removed")
    assert (stranger / "notes.txt").is_file()
