"""Alert thresholds from the command line: chosen at validation, kept by the version, used when scoring, changed
by `opsloop models promote` without retraining, and clear errors when a rule cannot be met (issue 13, items 1, 8).

One project on the embedded ASD data (tests/conftest.py's SMALL: two servers trained, four monitored) is
run once for the module; tests that change its thresholds work on copies.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w
from opsloop.testing import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402

MODEL = SMALL["project"]["name"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("alerting")
    (path / "opsloop.toml").write_text(tomli_w.dumps(SMALL), encoding="utf-8")
    return path, invoke(["run", "--json", "--quiet"], path).assert_ok().json


def copy_of(ran: tuple[Path, Any], tmp_path: Path) -> Path:
    shutil.copytree(ran[0], tmp_path / "p")
    return tmp_path / "p"


def loaded(path: Path, number: int) -> Any:
    from opsloop import config
    from opsloop.runner import Runner
    from opsloop.session import Session

    runner = Runner(Session.open(config.read(workdir=path)))
    return runner.load(runner.store.get(MODEL, number))


def monitored(path: Path) -> pd.DataFrame:
    from opsloop import config, data

    cfg = config.read(workdir=path)
    return data.periods(data.load(cfg), cfg)[1].frame


def test_a_run_chooses_the_threshold_and_every_place_shows_it(ran: tuple[Path, Any]) -> None:
    from opsloop import alerting

    path, out = ran
    assert [s["stage"] for s in out["stages"]][3:6] == ["validate", "alerting", "register"]
    chosen = out["thresholds"][0]
    assert out["versions"][0]["threshold"] == chosen
    shown = invoke(["models", "show", f"{MODEL}:1", "--json"], path).assert_ok().json
    assert shown["threshold"] == chosen
    assert {"value", "rule", "target"} <= set(shown["threshold"]) and shown["threshold"]["source"] == "validation"
    bundle = Path(shown["path"])
    assert json.loads((bundle / "manifest.json").read_text())["threshold"] == chosen
    # the rule, given the out-of-fold rows the bundle keeps, gives the same threshold again
    rows = alerting.read_oof(bundle)
    assert len(rows) == chosen["rows"] and int(rows["label"].sum()) == chosen["positives"]
    section = alerting.AlertingSection(rule=chosen["rule"], target=chosen["target"])
    assert alerting.choose(rows, section)["value"] == chosen["value"]
    text = invoke(["models", "show", f"{MODEL}:1"], path).assert_ok().stdout
    assert f"alert threshold {alerting.describe(chosen)}" in " ".join(text.split())


def test_batch_scoring_and_the_monitor_alert_at_the_threshold(ran: tuple[Path, Any]) -> None:
    path, out = ran
    value = out["thresholds"][0]["value"]
    frame = monitored(path)
    predicted = loaded(path, 1).predict(frame.drop(columns=["label"]))
    assert (predicted["prediction"].to_numpy() == (predicted["score"].to_numpy() >= value)).all()
    # the monitored figures are those of these predictions, and the baseline is the threshold's own figures
    report = next(r for r in out["monitor"] if r["monitor"] == "quality-monitor")
    assert report["metrics"]["prediction_rate"] == pytest.approx(float((predicted["prediction"] == 1).mean()))
    achieved = out["thresholds"][0]["achieved"]
    for name in ("precision", "recall", "f1"):
        if achieved[name] is not None:
            assert report["baseline"][name] == pytest.approx(achieved[name])


def test_promote_gives_a_new_threshold_without_retraining(ran: tuple[Path, Any], tmp_path: Path) -> None:
    from opsloop import alerting

    path = copy_of(ran, tmp_path)
    before = invoke(["models", "show", f"{MODEL}:1", "--json"], path).assert_ok().json
    result = invoke(["models", "promote", MODEL, "1", "--rule", "recall", "--target", "0.5", "--per-series",
                     "--json"], path)
    change = result.assert_ok().json
    expected = alerting.choose(alerting.read_oof(Path(before["path"])),
                               alerting.AlertingSection(rule="recall", target=0.5, per_series=True), where="promote")
    assert expected["per_series"]
    assert change["action"] == "threshold" and change["threshold"] == expected
    after = invoke(["models", "show", f"{MODEL}:1", "--json"], path).assert_ok().json
    assert after["threshold"] == expected and after["digest"] == before["digest"]  # the bundle is unchanged
    frame = monitored(path).drop(columns=["label"])
    predicted = loaded(path, 1).predict(frame)
    assert (predicted["prediction"].to_numpy() == alerting.alerts(predicted["score"], expected, frame["entity"])).all()
    # estimate-monitor judges the new decision against what the new threshold achieved out-of-fold
    from opsloop import Dataset, config
    from opsloop.plugins import estimate_monitor
    from opsloop.session import Session

    with Session.open(config.read(workdir=path)).open_store() as store:
        version = store.get(MODEL, 1)
    report = estimate_monitor.monitor(version=version, current=Dataset.from_frame(frame), options=None,
                                      predictions=predicted.drop(columns=["prediction"]))
    for name in ("precision", "recall", "f1"):
        if expected["achieved"][name] is not None:
            assert report.baseline[f"estimated_{name}"] == pytest.approx(expected["achieved"][name])
    assert report.metrics["rows"] == len(frame)
    # without a logged prediction it decides at the new threshold too: the same estimate as from the predictions
    logged = estimate_monitor.monitor(version=version, current=Dataset.from_frame(frame), options=None,
                                      predictions=predicted)
    assert logged.metrics == report.metrics
    assert invoke(["models", "list"], path).assert_ok()  # one version still: nothing was trained
    assert [v["version"] for v in invoke(["models", "show", MODEL, "--json"], path).json["versions"]] == [1]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--target", "0.5"], ["--target needs --rule"]),
    (["--per-series"], ["--per-series needs --rule"]),
    (["--threshold", "0.5", "--rule", "f1"], ["--threshold", "not both"]),
    (["--rule", "precison"], ['did you mean "precision"']),
    (["--rule", "f1", "--target", "0.5"], ["does nothing with rule"]),
    (["--threshold", "nan"], ["finite number"]),
    (["--rule", "budget", "--target", "0.001"], ["cannot be met", "alerting only at the highest score"]),
])
def test_a_wrong_promote_is_one_line_and_changes_nothing(ran: tuple[Path, Any], tmp_path: Path,
                                                         args: list[str], fragments: list[str]) -> None:
    path = copy_of(ran, tmp_path)
    before = invoke(["models", "history", MODEL, "--json"], path).assert_ok().json
    result = invoke(["models", "promote", MODEL, "1", *args], path).assert_error(*fragments)
    assert len(result.stderr.strip().splitlines()) == 1
    assert invoke(["models", "history", MODEL, "--json"], path).assert_ok().json == before


def test_a_rule_written_in_the_config_that_cannot_be_met_stops_before_registering(tmp_path: Path) -> None:
    # (the unit tests of opsloop.alerting check the unmet precision's "best precision" on built scores; on
    # the real model whether a precision of 1 is reached depends on its top score, a budget no run can meet
    # does not)
    config = {**SMALL, "alerting": {"rule": "budget", "target": 0.001}}
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    result = invoke(["run", "--quiet"], tmp_path).assert_error("[alerting.target]", "rule 'budget' with target 0.001",
                                                               "cannot be met", "alerting only at the highest score")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no models registered" in invoke(["models", "list"], tmp_path).assert_ok().stdout


def test_validate_shows_the_threshold_a_run_would_choose(tmp_path: Path) -> None:
    config = {**SMALL, "alerting": {"rule": "recall", "target": 0.5}}
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    threshold = invoke(["validate", "--json"], tmp_path).assert_ok().json["threshold"]
    assert (threshold["rule"], threshold["target"]) == ("recall", 0.5)
    assert threshold["achieved"]["recall"] >= 0.5
    text = " ".join(invoke(["validate"], tmp_path).assert_ok().stdout.split())
    assert f"alert threshold {threshold['value']:.4g} (recall 0.5)" in text
    assert "no models registered" in invoke(["models", "list"], tmp_path).assert_ok().stdout


def test_data_without_a_time_column_falls_back_from_the_default_budget(tmp_path: Path) -> None:
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"])].drop(columns=["timestamp"])
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    config = {"project": {"name": "no-time"}, "data": {"source": "rows.parquet", "target": "label",
                                                        "series": "entity"},
              "train": {"xgboost": {"n_estimators": 30}}, "validate": {"kfold": {"folds": 3}},
              "preprocess": {"plugins": ["impute"]}}
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    out = invoke(["run"], tmp_path).assert_ok()
    assert 'the default rule "budget"' in " ".join((out.stdout + out.stderr).split())
    threshold = invoke(["models", "show", "no-time:1", "--json"], tmp_path).assert_ok().json["threshold"]
    assert threshold["rule"] == "f1" and "no time column" in threshold["note"]
    explicit = {**config, "alerting": {"rule": "budget"}}
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(explicit), encoding="utf-8")
    invoke(["run", "--quiet"], tmp_path).assert_error("rule 'budget'", "no time column")
    assert np.isfinite(threshold["value"])


def test_estimate_monitor_decides_per_series_without_logged_predictions(ran: tuple[Path, Any]) -> None:
    import attrs

    from opsloop import Dataset, alerting, config
    from opsloop.plugins import estimate_monitor
    from opsloop.session import Session

    path, out = ran
    with Session.open(config.read(workdir=path)).open_store() as store:
        version = store.get(MODEL, 1)
    frame = monitored(path)
    predicted = loaded(path, 1).predict(frame.drop(columns=["label"]))
    # a version whose omi-10 alerts only at its top tenth of scores, the rest at the registered threshold
    own = float(predicted["score"][frame["entity"] == "omi-10"].quantile(0.9))
    threshold = {**version.threshold, "per_series": {"omi-10": own}}
    assert (alerting.alerts(predicted["score"], threshold, frame["entity"])
            != alerting.alerts(predicted["score"], version.threshold)).any()
    version = attrs.evolve(version, threshold=threshold)
    current = Dataset.from_frame(frame.drop(columns=["label"]), series="entity", time="timestamp")
    logged = alerting.apply(predicted, threshold, frame["entity"])
    with_predictions = estimate_monitor.monitor(version=version, current=current, options=None, predictions=logged)
    from_scores = estimate_monitor.monitor(version=version, current=current, options=None,
                                           predictions=predicted.drop(columns=["prediction"]))
    assert from_scores.metrics == with_predictions.metrics
