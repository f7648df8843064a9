"""`on_run_end`: every run tells its observers once how it ended (`opsloop run`, a loop cycle, a tune trial and
the search), and an observer failing there never changes the command's exit code nor hides the run's own error.

Real runs on the small ASD slice, observers registered through the kit (`register_plugin`, `hook_recorder`).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import attrs
import pytest

from opsloop import OpsloopError, hookimpl
from opsloop.errors import PluginCallError
from opsloop.runner import RunResult
from opsloop.testing import invoke, to_toml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP  # noqa: E402 - the loop scenario shared by the loop tests


class Ender:
    """An observer of stage ends and run ends (records through `hook_recorder`)."""

    @hookimpl
    def on_stage_end(self, stage, run):
        pass

    @hookimpl
    def on_run_end(self, command, outcome, result, error, run):
        pass


@attrs.frozen
class LoudOptions:
    critical: bool = True


class Loud:
    """An observer whose `on_run_end` raises, with `critical = true` (which ends a run from any other hook)."""

    @hookimpl
    def plugin_options(self):
        return LoudOptions

    @hookimpl
    def on_run_end(self, run):
        raise RuntimeError("the pager is down")


class Boom:
    """A trainer that fails (a stage error), or is interrupted (Ctrl-C) when told to."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    @hookimpl
    def train(self, dataset, options, run):
        raise self.error


def observed(config: dict, *names: str) -> dict:
    config = copy.deepcopy(config)
    config["plugins"] = {"enable": list(names)}
    return config


def ends(recorder) -> list:
    return [c.kwargs for c in recorder.named("on_run_end")]


def test_a_run_that_succeeds_ends_once_ok_with_its_result_after_its_last_stage(opsloop_project, small_config,
                                                                               register_plugin, hook_recorder):
    register_plugin(Ender(), "ender")
    out = opsloop_project(config=observed(small_config, "ender")).run("run").assert_ok().json
    (end,) = ends(hook_recorder)
    assert end["command"] == "run" and end["outcome"] == "ok" and end["error"] is None
    assert isinstance(end["result"], RunResult) and end["result"].run_id == out["run_id"] == end["run"].run_id
    assert [v.ref for v in end["result"].versions] == [v["ref"] for v in out["versions"]]
    assert end["run"].parent is None
    assert hook_recorder.calls[-1].hook == "on_run_end"  # after every stage's end
    assert [c.kwargs["stage"] for c in hook_recorder.named("on_stage_end")] == [s["stage"] for s in out["stages"]]


@pytest.mark.parametrize("error, outcome, code", [(ValueError("weights diverged"), "error", 1),
                                                  (KeyboardInterrupt(), "stopped", 130)])
def test_a_run_that_fails_in_a_stage_ends_with_the_stage_error(opsloop_project, small_config, register_plugin,
                                                               hook_recorder, error, outcome, code):
    register_plugin(Ender(), "ender")
    register_plugin(Boom(error), "boom")
    small_config["train"] = {"plugins": ["boom"]}
    result = opsloop_project(config=observed(small_config, "ender")).run("run")
    assert result.exit_code == code, result.stderr
    (end,) = ends(hook_recorder)
    assert end["command"] == "run" and end["outcome"] == outcome
    assert [s.stage for s in end["result"].stages] == ["load", "preprocess"]  # what it did before the error
    if outcome == "error":
        assert isinstance(end["error"], PluginCallError) and end["error"].plugin == "boom"
        assert "weights diverged" in str(end["error"]) and "weights diverged" in result.stderr
    else:
        assert isinstance(end["error"], KeyboardInterrupt)


def test_a_run_that_fails_outside_a_stage_ends_with_that_error(opsloop_project, small_config, register_plugin,
                                                               hook_recorder):
    register_plugin(Ender(), "ender")
    small_config["data"]["train"] = "timestamp < '1990-01-01'"  # no rows: found after the load stage ended
    result = opsloop_project(config=observed(small_config, "ender")).run("run")
    assert result.exit_code == 1
    (end,) = ends(hook_recorder)
    assert end["outcome"] == "error" and isinstance(end["error"], OpsloopError)
    assert [c.kwargs["stage"] for c in hook_recorder.named("on_stage_end")] == ["load"]
    assert not hook_recorder.named("on_stage_error")  # no stage failed: only on_run_end tells observers
    assert str(end["error"]).split("\n")[0] in result.stderr + result.stdout


def test_each_loop_cycle_ends_after_it_is_journaled(tmp_path, register_plugin, hook_recorder):
    register_plugin(Ender(), "ender")
    (tmp_path / "opsloop.toml").write_text(to_toml(observed(LOOP, "ender")), encoding="utf-8")
    # No version in production yet: the cycle ends in an error outside any stage, journaled.
    failed = invoke(["loop", "--once", "--json", "--quiet"], tmp_path)
    assert failed.exit_code == 1 and failed.json["status"] == "error"
    (end,) = ends(hook_recorder)
    assert end["command"] == "loop" and end["outcome"] == "error"
    assert end["result"].status == "error" and end["result"].journal_id == failed.json["journal_id"] is not None
    assert "opsloop run registers the first one" in end["result"].error
    # A run puts version 1 in production; the next cycle (its policy keeps production) ends ok.
    invoke(["run", "--json", "--quiet"], tmp_path).assert_ok()
    hook_recorder.calls.clear()
    kept = invoke(["loop", "--once", "--json", "--quiet", "--set", "retrain.threshold-policy.min_f1=0.0"],
                  tmp_path).assert_ok().json
    (end,) = ends(hook_recorder)
    assert end["command"] == "loop" and end["outcome"] == "ok" and end["error"] is None
    assert end["result"].status == kept["status"] == "keep" and end["result"].journal_id == kept["journal_id"]
    assert {c.kwargs["run"].run_id for c in hook_recorder.named("on_stage_end")} == {end["run"].run_id}


def test_a_tune_ends_each_trial_under_the_search_then_the_search(opsloop_project, small_config, register_plugin,
                                                                 hook_recorder):
    pytest.importorskip("optuna")
    register_plugin(Ender(), "ender")
    small_config["train"]["xgboost"].update({"n_estimators": 20, "early_stopping_rounds": 0})
    small_config["tune"] = {"trials": 2, "params": {"max_depth": {"low": 2, "high": 4}}}
    out = opsloop_project(config=observed(small_config, "ender")).run("tune", "--json").assert_ok().json
    *trials, search = ends(hook_recorder)
    assert search["command"] == "tune" and search["outcome"] == "ok" and search["error"] is None
    assert search["result"].study.best_value == out["best_value"] and search["run"].parent is None
    assert [t["command"] for t in trials] == ["tune.trial", "tune.trial"]
    assert all(t["run"].parent == search["run"].run_id for t in trials)
    assert len({t["run"].run_id for t in trials} | {search["run"].run_id}) == 3
    assert [t["outcome"] for t in trials] == ["ok", "ok"]
    assert [t["result"][0].mean["pr_auc"] for t in trials] == [t["value"] for t in out["trials"]]
    # the refit is part of the search's run, not a run of its own
    refit = [c.kwargs["run"].run_id for c in hook_recorder.named("on_stage_end")
             if c.kwargs["stage"].startswith("refit.")]
    assert refit and set(refit) == {search["run"].run_id}


def test_an_observer_raising_in_on_run_end_is_a_warning_that_changes_no_exit_code(opsloop_project, small_config,
                                                                                  register_plugin):
    register_plugin(Loud(), "loud")
    project = opsloop_project(config=observed(small_config, "loud"))
    out = project.run("run").assert_ok().json  # critical = true, and still exit 0
    (warning,) = out["warnings"]
    assert 'plugin "loud"' in warning and "on_run_end" in warning and "the pager is down" in warning

    register_plugin(Boom(ValueError("weights diverged")), "boom")
    failed = invoke(["run", "--json", "--quiet", "--set", 'train.plugins=["boom"]'], project.path)
    assert failed.exit_code == 1
    assert "weights diverged" in failed.stderr  # the run's own error, not the observer's


def test_validate_ends_with_its_reports_and_gate_results(opsloop_project, small_config, register_plugin,
                                                         hook_recorder):
    register_plugin(Ender(), "ender")
    small_config["validate"]["gates"] = ["pr_auc >= 0.0"]
    out = opsloop_project(config=observed(small_config, "ender")).run("validate", "--json").assert_ok().json
    (end,) = ends(hook_recorder)
    assert end["command"] == "validate" and end["outcome"] == "ok" and end["error"] is None
    reports, gates = end["result"]
    assert [r.summary()["mean"]["pr_auc"] for r in reports] == [r["mean"]["pr_auc"] for r in out["reports"]]
    assert [g.passed for g in gates] == [g["passed"] for g in out["gates"]] == [True]


class BadMonitor:
    """A monitor that fails: a stage error inside `opsloop monitor`."""

    @hookimpl
    def monitor(self, version, current, predictions, reference, options, run):
        raise ValueError("the drift service timed out")


def test_monitor_and_backtest_end_their_runs_and_reproduce_tells_no_observer(tmp_path, register_plugin, hook_recorder):
    from opsloop.monitoring import Result

    register_plugin(Ender(), "ender")
    register_plugin(BadMonitor(), "bad-monitor")
    (tmp_path / "opsloop.toml").write_text(to_toml(observed(LOOP, "ender")), encoding="utf-8")
    invoke(["run", "--json", "--quiet"], tmp_path).assert_ok()  # logs the batch it scored

    hook_recorder.calls.clear()
    shown = invoke(["monitor", "--json"], tmp_path).assert_ok().json
    (end,) = ends(hook_recorder)
    assert end["command"] == "monitor" and end["outcome"] == "ok" and isinstance(end["result"], Result)
    assert len(end["result"].windows) == len(shown["windows"])
    assert {c.kwargs["run"].run_id for c in hook_recorder.named("on_stage_end")} == {end["run"].run_id}

    hook_recorder.calls.clear()
    failed = invoke(["monitor", "--set", 'monitor.plugins=["bad-monitor"]'], tmp_path)
    assert failed.exit_code == 1 and "the drift service timed out" in failed.stderr
    (end,) = ends(hook_recorder)
    assert end["outcome"] == "error" and end["result"] is None and "timed out" in str(end["error"])

    hook_recorder.calls.clear()
    invoke(["backtest", "--chunks", "2", "--json", "--quiet"], tmp_path).assert_ok()
    # the first version, then per chunk its loop cycle and (but after the last) the always-retrained version
    assert [e["command"] for e in ends(hook_recorder)] == ["backtest", "loop", "backtest.always", "loop"]
    assert all(e["outcome"] == "ok" for e in ends(hook_recorder))

    hook_recorder.calls.clear()  # reproduce opens no observer (a rebuild to compare, nothing to track)
    invoke(["models", "reproduce", f"{LOOP['project']['name']}:1", "--json"], tmp_path).assert_ok()
    assert not hook_recorder.named("on_stage_end") and not ends(hook_recorder)

def test_a_loop_cycle_that_fails_passes_its_error(tmp_path, register_plugin, hook_recorder):
    register_plugin(Ender(), "ender")
    (tmp_path / "opsloop.toml").write_text(to_toml(observed(LOOP, "ender")), encoding="utf-8")
    failed = invoke(["loop", "--once", "--json", "--quiet"], tmp_path)  # nothing in production yet
    (end,) = ends(hook_recorder)
    assert end["outcome"] == "error" and isinstance(end["error"], OpsloopError)
    assert str(end["error"]).split("\n")[0] in failed.json["error"]
