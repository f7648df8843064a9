"""`opsloop tune` (issue 14, items 1, 2 and 6): Optuna's search on real ASD data, scored by time-ordered folds."""

from __future__ import annotations

import json

import pytest

import attrs

from opsloop import SearchParam, SearchSpace, TrainedModel, hookimpl
from opsloop import config as config_mod
from opsloop.session import Session

pytest.importorskip("optuna")

SPACE = {
    "max_depth": {"low": 2, "high": 5},
    "learning_rate": {"low": 0.05, "high": 0.3, "log": True},
    "grow_policy": {"choices": ["depthwise", "lossguide"]},  # XGBoost's own, passed through `params`
}


@pytest.fixture
def tune_config(small_config):
    small_config["train"]["xgboost"].update({"n_estimators": 40, "early_stopping_rounds": 0})
    small_config["tune"] = {"trials": 3, "params": SPACE}
    return small_config


def test_tune_searches_stores_resumes_and_reproduces_the_best(opsloop_project, tune_config):
    project = opsloop_project(config=tune_config)
    first = project.run("tune", "--json").assert_ok().json
    assert first["metric"] == "pr_auc" and first["direction"] == "maximize"  # the default for a binary target
    trials = first["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and first["ran"] == 3
    values = [t["value"] for t in trials if t["state"] == "complete"]
    assert first["best_value"] == max(values)
    best = trials[first["best_trial"]]
    assert best["params"] == first["best_params"]
    assert 2 <= first["best_params"]["max_depth"] <= 5
    assert 0.05 <= first["best_params"]["learning_rate"] <= 0.3
    assert first["best_params"]["grow_policy"] in ("depthwise", "lossguide")
    # the best trial's figure is what a fresh fit of its configuration gives
    assert first["refit"]["reproduced"] is True
    assert first["refit"]["value"] == pytest.approx(first["best_value"], rel=1e-9)
    assert 0 < first["best_value"] <= 1
    assert first["best_figures"]["pr_auc"] == first["best_value"]
    assert (project.path / ".opsloop" / "tuning.db").is_file()  # beside the registry

    # the same search again resumes the stored study: only the missing trials run, the first ones are kept
    second = project.run("tune", "--json", "--trials", "5").assert_ok().json
    assert second["study"] == first["study"] and second["ran"] == 2
    assert [t["params"] for t in second["trials"][:3]] == [t["params"] for t in trials]
    assert second["counts"]["complete"] + second["counts"]["pruned"] == 5
    assert any("resumed study" in note for note in second["notes"])

    # --show reads the study, runs nothing
    shown = project.run("tune", "--json", "--show").assert_ok().json
    assert shown["ran"] == 0 and len(shown["trials"]) == 5 and shown["refit"] is None

    # a changed search is a new study
    other = project.run("tune", "--json", "--set", "tune.params.max_depth={low=2,high=4}").assert_ok().json
    assert other["study"] != first["study"] and [t["number"] for t in other["trials"]] == [0, 1, 2]


def test_tune_register_records_the_study_in_lineage(opsloop_project, tune_config):
    tune_config["tune"]["trials"] = 2
    project = opsloop_project(config=tune_config)
    result = project.run("tune", "--json", "--register").assert_ok().json
    shown = project.run("models", "show", result["version"], "--json").assert_ok().json
    assert shown["lineage"]["training"]["tune"]["study"] == result["study"]
    assert shown["lineage"]["training"]["tune"]["trial"] == result["best_trial"]
    assert shown["metrics"]["pr_auc"] == pytest.approx(result["best_value"], rel=1e-9)
    table = shown["lineage"]["config"]["train"]["xgboost"]
    assert table["max_depth"] == result["best_params"]["max_depth"]
    assert table["params"]["grow_policy"] == result["best_params"]["grow_policy"]
    assert "tune" not in shown["lineage"]["config"]  # the version's config is the tuned one, not the search
    # and the tuned version can be rebuilt from its lineage
    assert project.run("models", "reproduce", result["version"], "--json").assert_ok().json["reproduced"] is True


def test_tune_text_output_shows_history_importances_and_the_toml(opsloop_project, tune_config):
    project = opsloop_project(config=tune_config)
    out = project.run("tune").assert_ok().stdout
    assert "optimization history" in out and "parameter importances" in out
    toml_part = out.split("to keep in opsloop.toml:")[1]
    assert "[train.xgboost]" in toml_part and "max_depth = " in toml_part and "params.grow_policy = " in toml_part


def test_trials_run_at_once_with_jobs(opsloop_project, tune_config):
    project = opsloop_project(config=tune_config)
    result = project.run("tune", "--json", "--jobs", "2", "--trials", "2").assert_ok().json
    assert result["counts"]["complete"] == 2 and result["ran"] == 2


def test_a_hopeless_trial_is_pruned_after_its_first_scored_fold(tmp_path, tune_config, monkeypatch):
    """The folds reach Optuna through RunContext.fold_scored: a pruner that prunes below 0.99 stops at fold 1."""
    import optuna

    from opsloop import data as data_mod
    from opsloop.tuning import Objective, plan

    monkeypatch.chdir(tmp_path)
    cfg = config_mod.Config.from_table(config_mod._merge(config_mod.default_table(), tune_config),
                                       workdir=tmp_path)
    session = Session.open(cfg)
    train, _ = data_mod.periods(data_mod.load(cfg), cfg)
    search = plan(session, train)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.99),
                                sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(Objective(search, session, train), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    # the first fold with a figure ends it (here fold 2: fold 1's training block holds no incident, its
    # figures are NaN and nothing is reported); fold 3 is never fitted
    assert list(trial.intermediate_values) == [1]
    # without a pruner the same trial scores every fold, in order
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(Objective(search, session, train), n_trials=1)
    assert sorted(study.trials[0].intermediate_values) == [1, 2]


@pytest.mark.parametrize(("override", "fragments"), [
    ("tune.params.max_depth={low=5,high=2}", ["[tune.params.max_depth]", "inverted: low 5 is above high 2"]),
    ("tune.params.max_depth={low=3,high=3}", ["[tune.params.max_depth]", "empty"]),
    ("tune.params.grow_policy={choices=[]}", ["[tune.params.grow_policy]", "non-empty list"]),
    ("tune.params.max_dept={low=2,high=5}", ["[tune.params.max_dept]", "no parameter 'max_dept'", '"max_depth"']),
    ("tune.params.max_depth={low=2.5,high=5.5}", ["[tune.params.max_depth]", "expected int"]),
    ("tune.params.learning_rate={low=0,high=1,log=true}", ["[tune.params.learning_rate]", "above 0"]),
    ("tune.params.max_depth={lo=2,high=5}", ["[tune.params.max_depth]", "unknown key 'lo'", '"low"']),
    ("tune.trials=0", ["[tune.trials]", "at least 1"]),
    ("tune.timeout=0s", ["[tune.timeout]", "duration"]),
    ("tune.preprocess.rolling={windows={choices=[[\"1h\"]]}}", ["[tune.preprocess.rolling]", '"rolling-features"']),
    ("tune.metric=pr_aux", ["[tune.metric]", "pr_aux", '"pr_auc"']),
])
def test_bad_search_is_one_line_and_registers_nothing(opsloop_project, tune_config, override, fragments):
    project = opsloop_project(config=tune_config)
    result = project.run("tune", "--set", override)
    result.assert_error(*fragments)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("✓ load")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # progress, then one line
    assert "Traceback" not in result.stderr
    assert project.run("models", "list", "--json").assert_ok().json == []


def test_every_trial_failing_is_one_line_naming_the_first_error(opsloop_project, tune_config):
    # XGBoost refuses this value of a parameter it is passed through: every trial fails the same way
    tune_config["tune"]["params"] = {"max_bin": {"choices": [1]}}
    result = opsloop_project(config=tune_config).run("tune", "--trials", "2")
    result.assert_error("no trial of study", "finished", "max_bin")


def test_default_space_covers_the_shipped_ensemble_and_its_members(tmp_path):
    """With no [tune.params], the trainer's tune_space and its members' give the space: for the default ensemble
    the combine rule, XGBoost's depth, rate, rounds and sampling, the forest's trees and sample size."""
    from opsloop import data as data_mod
    from opsloop.tuning import plan

    cfg = config_mod.read(workdir=tmp_path)
    train, _ = data_mod.periods(data_mod.load(cfg), cfg)
    search = plan(Session.open(cfg), train)
    names = {d.name for d in search.dimensions}
    assert {"combine", "xgboost.max_depth", "xgboost.learning_rate", "xgboost.subsample",
            "isolation-forest.n_estimators", "isolation-forest.max_samples"} <= names
    assert {d.plugin for d in search.dimensions} == {"ensemble", "xgboost", "isolation-forest"}
    assert search.metric == "pr_auc" and search.trials == 20
    assert json.loads(json.dumps(search.space))["dimensions"]["xgboost.learning_rate"]["log"] is True


def test_searching_the_trainer_and_a_preprocess_option(opsloop_project, tune_config):
    tune_config["tune"] = {
        "trials": 3, "trainers": ["xgboost", "isolation-forest"],
        "params": {"xgboost": {"max_depth": {"low": 2, "high": 4}},
                   "isolation-forest": {"n_estimators": {"low": 20, "high": 60, "step": 20}}},
        "preprocess": {"rolling-features": {"windows": {"choices": [["30m"], ["1h", "3h"]]}}},
    }
    result = opsloop_project(config=tune_config).run("tune", "--json").assert_ok().json
    for trial in result["trials"]:
        params = trial["params"]
        assert params["trainer"] in ("xgboost", "isolation-forest")
        assert params["preprocess.rolling-features.windows"] in (["30m"], ["1h", "3h"])  # decoded, not JSON text
        other = "isolation-forest" if params["trainer"] == "xgboost" else "xgboost"
        assert not any(k.startswith(f"{other}/") for k in params)  # a trainer's space only when it is chosen
    assert result["refit"]["reproduced"] is True


@attrs.frozen(kw_only=True)
class LogRegOptions:
    C: float = 1.0
    max_iter: int = 200


class VendorTrainer:
    """A third-party trainer that declares its own search space: tuned with no [tune.params] at all."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def plugin_options(self):
        return LogRegOptions

    @hookimpl
    def tune_space(self, options):
        return SearchSpace(params={"C": SearchParam(low=0.01, high=10.0, log=True)})

    @hookimpl
    def train(self, dataset, options, run):
        from sklearn.linear_model import LogisticRegression

        self.seen.append(options.C)
        est = LogisticRegression(C=options.C, max_iter=options.max_iter).fit(dataset.X.fillna(0), dataset.y)
        return TrainedModel(estimator=est, flavor="sklearn", task="classification",
                            features=tuple(dataset.feature_columns), params={"C": options.C})


def test_a_third_party_trainer_is_tuned_on_its_declared_space(opsloop_project, tune_config):
    trainer = VendorTrainer()
    tune_config["train"] = {"plugins": ["logreg"]}
    tune_config["tune"] = {"trials": 2}
    result = opsloop_project(config=tune_config, plugins={"logreg": trainer}).run("tune", "--json").assert_ok().json
    assert set(result["best_params"]) == {"C"}
    trial_values = [t["params"]["C"] for t in result["trials"]]
    assert all(0.01 <= c <= 10.0 for c in trial_values)
    # each trial's C reached the trainer, through its options (3 folds per trial, then the refit's 3)
    assert sorted(set(trainer.seen)) == sorted(set(trial_values))
