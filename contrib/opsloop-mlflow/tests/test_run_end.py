"""`on_run_end` against a real `mlflow server`: an MLflow run is RUNNING until the opsloop run ends, then FINISHED,
FAILED or KILLED with the tag `opsloop.outcome`, whatever ended it; `opsloop tune` nests each trial's run under
the search's (`mlflow.parentRunId`)."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e ./contrib/opsloop-mlflow)")
pytest.importorskip("opsloop_mlflow", reason="opsloop-mlflow is not installed (pip install -e ./contrib/opsloop-mlflow)")

from opsloop import hookimpl  # noqa: E402
from opsloop.testing import hook_recorder, opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures


def runs_of(client, experiment: str) -> dict:
    """The experiment's MLflow runs by their opsloop run id."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return {r.data.tags["opsloop.run_id"]: r for r in client.search_runs([found.experiment_id])}


class Peek:
    """Enabled after mlflow-tracking: at the end of each stage, what MLflow says the run's status is."""

    def __init__(self, client, experiment: str) -> None:
        self.client, self.experiment = client, experiment
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def on_stage_end(self, stage, run):
        self.seen.append((stage, runs_of(self.client, self.experiment)[run.run_id].info.status))


class Boom:
    """A trainer that fails (ValueError) or is interrupted (KeyboardInterrupt)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    @hookimpl
    def train(self, dataset, options, run):
        raise self.error


def test_a_run_is_running_until_it_ends_then_finished(opsloop_project, lifecycle, mlflow_server, mlflow_client,
                                                      register_plugin):
    client = mlflow_client(mlflow_server.url)
    peek = Peek(client, "ends-ok")
    register_plugin(peek, "peek")
    config = lifecycle(mlflow_server.url, experiment="ends-ok", registry=False)
    config["data"].pop("monitor")  # nothing to deploy or monitor: load, preprocess, ..., register
    config["deploy"] = {"plugins": []}
    config["plugins"]["enable"].append("peek")
    out = opsloop_project(config=config).run("run").assert_ok().json
    assert [stage for stage, _ in peek.seen] == [s["stage"] for s in out["stages"]]
    assert {status for _, status in peek.seen} == {"RUNNING"}  # not FINISHED after each stage
    logged = runs_of(client, "ends-ok")[out["run_id"]]
    assert logged.info.status == "FINISHED" and logged.info.end_time is not None
    assert logged.data.tags["opsloop.outcome"] == "ok" and logged.data.tags["opsloop.command"] == "run"
    assert "opsloop.error" not in logged.data.tags and "mlflow.parentRunId" not in logged.data.tags


@pytest.mark.parametrize("how, status, outcome, says", [
    ("stage", "FAILED", "error", "train: "),          # the trainer raised: the stage names itself
    ("interrupt", "KILLED", "stopped", "train: "),    # Ctrl-C in the trainer
    ("outside", "FAILED", "error", "no rows"),        # after the load stage, outside any: was FINISHED before
])
def test_a_run_that_fails_or_stops_is_failed_or_killed(how, status, outcome, says, opsloop_project, lifecycle,
                                                        mlflow_server, mlflow_client, register_plugin, hook_recorder):
    experiment = f"ends-{how}"
    config = lifecycle(mlflow_server.url, experiment=experiment, registry=False)
    if how == "outside":
        config["data"]["train"] = "timestamp < '1990-01-01'"
    else:
        register_plugin(Boom(ValueError("weights diverged") if how == "stage" else KeyboardInterrupt()), "boom")
        config["train"] = {"plugins": ["boom"]}
    result = opsloop_project(config=config).run("run")
    assert result.exit_code == (130 if how == "interrupt" else 1), result.stderr
    (end,) = [c.kwargs for c in hook_recorder.named("on_run_end")]
    (logged,) = runs_of(mlflow_client(mlflow_server.url), experiment).values()
    assert logged.data.tags["opsloop.run_id"] == end["run"].run_id
    assert logged.info.status == status and logged.data.tags["opsloop.outcome"] == outcome
    assert says in logged.data.tags["opsloop.error"]
    if how == "outside":
        assert "load" in [s.stage for s in end["result"].stages]  # MLflow's run began with the load stage


def test_a_pruned_trial_is_finished_without_an_error(mlflow_server, mlflow_client, tmp_path):
    """The hooks as a pruned `opsloop tune` trial calls them: its validate stage raised, the run did not fail."""
    from opsloop import RunContext
    from opsloop.config import read
    from opsloop.errors import PluginCallError

    from opsloop_mlflow import tracking

    run = RunContext(run_id="trial-pruned", workdir=tmp_path, model_name="pruned", config=read(workdir=tmp_path))
    options = tracking.Options(tracking_uri=mlflow_server.url, registry=False)
    tracking.on_stage_start(stage="validate", plugins=["kfold"], run=run, options=options)
    pruned = PluginCallError("kfold", "validate", RuntimeError("pruned after fold 1"))
    tracking.on_stage_error(stage="validate", error=pruned, run=run, options=options)
    client = mlflow_client(mlflow_server.url)
    assert runs_of(client, "pruned")["trial-pruned"].info.status == "FAILED"  # what a stage error says at once
    tracking.on_run_end(command="tune.trial", outcome="pruned", result=None, error=None, run=run, options=options)
    logged = runs_of(client, "pruned")["trial-pruned"]
    assert logged.info.status == "FINISHED" and logged.data.tags["opsloop.outcome"] == "pruned"
    assert "opsloop.error" not in logged.data.tags


def test_tune_nests_each_trial_under_the_search(opsloop_project, lifecycle, mlflow_server, mlflow_client,
                                                hook_recorder):
    pytest.importorskip("optuna")
    config = lifecycle(mlflow_server.url, experiment="nested", registry=False)
    config["data"].pop("monitor")
    config["deploy"] = {"plugins": []}
    config["tune"] = {"trials": 3, "params": {"max_depth": {"low": 2, "high": 4}}}
    out = opsloop_project(config=config).run("tune", "--json").assert_ok().json
    (search_end,) = [c.kwargs for c in hook_recorder.named("on_run_end") if c.kwargs["command"] == "tune"]
    runs = runs_of(mlflow_client(mlflow_server.url), "nested")
    search = runs.pop(search_end["run"].run_id)
    assert search.data.tags["opsloop.command"] == "tune" and search.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in search.data.tags
    assert search.data.tags["opsloop.tune.study"] == out["study"]
    assert search.data.tags["opsloop.tune.best_trial"] == str(out["best_trial"])
    assert search.data.metrics["tune.best.pr_auc"] == pytest.approx(out["best_value"], rel=1e-9)
    assert search.data.metrics["refit.validate.kfold.pr_auc"] == pytest.approx(out["refit"]["value"], rel=1e-9)
    # every other run is a trial, nested under the search, with the trial's own validation
    assert len(runs) == 3
    for trial in runs.values():
        assert trial.data.tags["mlflow.parentRunId"] == search.info.run_id
        assert trial.data.tags["opsloop.parent_run_id"] == search_end["run"].run_id
        assert trial.data.tags["opsloop.command"] == "tune.trial" and trial.info.status == "FINISHED"
    assert sorted(t.data.metrics["validate.kfold.pr_auc"] for t in runs.values()) == pytest.approx(
        sorted(t["value"] for t in out["trials"]), rel=1e-9)
