"""The CI examples in docs/examples run as written (issue 12, docs/ci.md).

Each workflow file is parsed as YAML; its `opsloop ...` command lines are
taken in order, the pull-request job's then the scheduled job's, and run
in-process in a temp project whose registry is outside the project, named
by `OPSLOOP_STORE`, as on a CI runner whose workspace is thrown away. The
workflows assume a model already in production, so the project gets one
from `opsloop run` between the two jobs.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from opsloop.testing import invoke

yaml = pytest.importorskip("yaml", reason="PyYAML parses the workflow files (pip install pyyaml)")

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
MODEL = "asd-ci"
CONFIG: dict[str, Any] = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-2'] and timestamp < '2024-01-06'",
        "monitor": "entity in ['omi-1', 'omi-2'] and timestamp >= '2024-01-13'",
    },
    "preprocess": {"plugins": ["schema-check", "impute"]},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30, "n_jobs": 1}},
    "validate": {"plugins": ["holdout"], "gates": ["accuracy >= 0.5"]},
    "deploy": {"plugins": ["batch"]},
    "monitor": {"plugins": ["quality-monitor"]},
    "retrain": {"plugins": ["threshold-policy"]},
    "gate": {"plugins": ["champion-challenger"]},
    "loop": {"monitor_window": "3d", "holdout": "1d"},
}


def _opsloop_lines(script: Any) -> list[str]:
    """The `opsloop ...` lines of a step's `run` or a job's script (a string or a list of them)."""
    lines = script if isinstance(script, list) else [script] if isinstance(script, str) else []
    return [line.strip() for text in lines for line in text.splitlines() if line.strip().startswith("opsloop ")]


def github_jobs(doc: dict[str, Any]) -> dict[str, list[str]]:
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"pull_request", "schedule"} <= set(triggers)
    jobs = doc["jobs"]
    pr = [name for name, job in jobs.items() if "pull_request" in job.get("if", "")]
    scheduled = [name for name, job in jobs.items() if "schedule" in job.get("if", "")]
    assert len(pr) == 1 and len(scheduled) == 1
    for name in (*pr, *scheduled):
        uses = [step.get("uses", "") for step in jobs[name]["steps"]]
        assert any(u.startswith("actions/checkout@") for u in uses)
        setup = next(s for s in jobs[name]["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
        assert str(setup["with"]["python-version"]) == "3.11"
    return {name: [line for step in jobs[name]["steps"] for line in _opsloop_lines(step.get("run"))]
            for name in (*pr, *scheduled)}


def gitlab_jobs(doc: dict[str, Any]) -> dict[str, list[str]]:
    assert "python:3.11" in doc["default"]["image"]
    jobs = {name: job for name, job in doc.items() if isinstance(job, dict) and "script" in job}

    def sources(job: dict[str, Any]) -> str:
        return " ".join(rule.get("if", "") for rule in job.get("rules", []))

    pr = [name for name, job in jobs.items() if "merge_request_event" in sources(job)]
    scheduled = [name for name, job in jobs.items() if '"schedule"' in sources(job)]
    assert len(pr) == 1 and len(scheduled) == 1
    return {name: [line for part in ("before_script", "script", "after_script")
                   for line in _opsloop_lines(jobs[name].get(part))] for name in (*pr, *scheduled)}


@pytest.mark.parametrize("example, jobs_of", [("github-actions.yml", github_jobs), ("gitlab-ci.yml", gitlab_jobs)])
def test_the_workflow_validates_then_runs_one_loop_cycle(example: str, jobs_of: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    doc = yaml.safe_load((EXAMPLES / example).read_text(encoding="utf-8"))
    (pr_job, pr_lines), (loop_job, loop_lines) = jobs_of(doc).items()
    assert "opsloop validate" in pr_lines, pr_job
    assert any(line.startswith("opsloop loop --once") for line in loop_lines), loop_job

    project, store = tmp_path / "checkout", tmp_path / "shared-registry"
    project.mkdir()
    (project / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    monkeypatch.setenv("OPSLOOP_STORE", str(store))
    monkeypatch.setenv("OPSLOOP_LOG", str(project / ".opsloop" / "serving" / "predictions.db"))

    def run(line: str) -> Any:
        args = shlex.split(os.path.expandvars(line))
        assert args[0] == "opsloop"
        return invoke(args[1:], project)

    for line in pr_lines:
        result = run(line)
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    # The gates are what fails the job: the same line with a gate the model misses exits 1.
    validate = next(line for line in pr_lines if line.startswith("opsloop validate"))
    failed = run(f"{validate} --set 'validate.gates=[\"f1 >= 0.99\"]'")
    assert failed.exit_code == 1 and "f1 >= 0.99" in failed.stdout + failed.stderr

    invoke(["run", "--quiet"], project).assert_ok()  # production exists before the first scheduled run
    for line in loop_lines:
        result = run(line)
        assert result.exit_code == 0, (line, result.stdout, result.stderr)

    entries = invoke(["loop", "history", "--json"], project).assert_ok().json
    assert len(entries) == 1 and entries[0]["status"] in {"keep", "promoted", "rejected"}, entries
    assert entries[0]["production"] == f"{MODEL}:1"
    # Everything that must outlive the runner is in the shared registry, not in the workspace.
    assert (store / "registry.db").is_file() and not (project / ".opsloop" / "registry.db").exists()
