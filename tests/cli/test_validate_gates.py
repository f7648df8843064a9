"""`opsloop validate` and `[validate] gates`: a failed gate exits non-zero and blocks registration."""

from __future__ import annotations

import pytest

from opsloop.gates import Gate, check


def test_validate_prints_folds_and_passes_gates(opsloop_project, small_config):
    small_config["validate"]["gates"] = ["accuracy >= 0.5", "roc_auc > 0"]
    result = opsloop_project(config=small_config).run("validate", "--json").assert_ok()
    data = result.json
    report = data["reports"][0]
    assert len(report["folds"]) == 3
    assert report["method"].startswith("3-fold time-ordered")
    assert "oof" not in report  # the out-of-fold scores (kept for calibration) are not printed
    assert data["passed"] is True
    assert [g["gate"] for g in data["gates"]] == ["accuracy >= 0.5", "roc_auc > 0"]
    assert data["gates"][0]["value"] == pytest.approx(report["mean"]["accuracy"])


def test_a_failing_gate_exits_non_zero_naming_it(opsloop_project, small_config):
    small_config["validate"]["gates"] = ["accuracy >= 0.5", "f1 >= 0.999"]
    project = opsloop_project(config=small_config)
    result = project.run("validate")
    result.assert_error("validation gate(s) failed: f1 >= 0.999 (FAILED:")
    assert "accuracy >= 0.5 (passed" in result.stdout  # the table and every gate are printed first
    # and `run` stops before registering anything
    project.run("run").assert_error("f1 >= 0.999")
    assert project.run("models", "list", "--json").assert_ok().json == []


def test_gate_syntax_and_unknown_metrics_are_clear_errors(opsloop_project, small_config):
    project = opsloop_project(config=small_config)
    project.run("validate", "--set", 'validate.gates=["f1 => 0.5"]').assert_error(
        "[validate.gates]", "is not METRIC OP NUMBER")
    project.run("validate", "--set", 'validate.gates=["f2 >= 0.5"]').assert_error(
        "no metric 'f2'", "f1")


@pytest.mark.parametrize(("text", "metrics", "passed"), [
    ("f1 >= 0.8", {"f1": 0.8}, True),
    ("f1 > 0.8", {"f1": 0.8}, False),
    ("rmse <= 1e-3", {"rmse": 0.0005}, True),
    ("recall < .5", {"recall": 0.7}, False),
    ("roc_auc >= 0.5", {"roc_auc": float("nan")}, False),
])
def test_gate_semantics(text, metrics, passed):
    (result,) = check([text], metrics)
    assert result.passed is passed
    assert str(Gate.parse(text)).split()[0] == text.split()[0]
