"""isolation-forest from the command line: a calibrated alert threshold and incident figures like xgboost's, and
training on history without labels with `[data] unlabelled` (issue 13, item 6).

Real data: the embedded ASD set (tests/conftest.py's SMALL: omi-1 and omi-9 trained, four servers monitored),
and a Parquet file made from it whose first three days have no label and whose last monitored day has none yet.
"""

from __future__ import annotations

import copy
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

FOREST = {"plugins": ["isolation-forest"], "isolation-forest": {"n_estimators": 60}}
UNLABELLED_BEFORE = "2024-01-04"  # the first three days
LATE_AFTER = "2024-01-14"  # the monitored rows whose labels have not arrived yet


def project(path: Path, table: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "opsloop.toml").write_text(tomli_w.dumps(table), encoding="utf-8")
    return path


def forest_config() -> dict[str, Any]:
    table = copy.deepcopy(SMALL)
    table["train"] = copy.deepcopy(FOREST)
    return table


def monitor_figures(out: dict[str, Any]) -> dict[str, float]:
    (report,) = [r for r in out["monitor"] if r["monitor"] == "quality-monitor"]
    return report["metrics"]


def scored(path: Path, model: str, number: int, frame: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    """The registered version, loaded as the runner loads it, and its predictions on `frame`."""
    from opsloop import config
    from opsloop.runner import Runner
    from opsloop.session import Session

    runner = Runner(Session.open(config.read(workdir=path)))
    try:
        model_ = runner.load(runner.store.get(model, number))
        return model_, model_.predict(frame)
    finally:
        runner.close()


def check_incident_figures(path: Path, out: dict[str, Any], model: str, monitored: pd.DataFrame) -> None:
    """The monitor's incident figures are opsloop.incidents' on the labelled monitored rows, alerted at the
    version's threshold."""
    from opsloop.incidents import incident_figures

    threshold = out["versions"][0]["threshold"]
    loaded, predictions = scored(path, model, 1, monitored)
    assert loaded.threshold["value"] == threshold["value"]
    alert = predictions["score"].to_numpy(dtype=float) >= threshold["value"]
    assert (predictions["prediction"].to_numpy() == alert).all()  # batch scoring alerts at the threshold
    ordered = monitored.assign(alert=alert).sort_values(["entity", "timestamp"], kind="stable")
    expected = incident_figures(ordered["label"].to_numpy(dtype=float), ordered["alert"].to_numpy(),
                                series=ordered["entity"].to_numpy(), time=ordered["timestamp"].to_numpy())
    figures = monitor_figures(out)
    for key in ("incidents", "incidents_caught", "alerts", "false_alerts", "alerts_per_day", "pa_f1"):
        assert figures[key] == pytest.approx(expected[key]), key
    assert figures["incidents"] > 0 and figures["alerts"] > 0


# ---------------------------------------------------------------------------
# Labelled data: the same threshold and figures as xgboost
# ---------------------------------------------------------------------------


def test_isolation_forest_gets_a_calibrated_threshold_and_incident_figures(tmp_path: Path) -> None:
    from opsloop import alerting, datasets

    table = forest_config()
    path = project(tmp_path / "p", table)
    out = invoke(["run", "--json", "--quiet"], path).assert_ok().json
    (version,) = out["versions"]
    threshold = version["threshold"]
    assert threshold == out["thresholds"][0]
    assert threshold["rule"] == "budget" and threshold["source"] == "validation" and threshold["positives"] > 0
    assert threshold["achieved"]["alerts_per_day"] <= 1.0 and threshold["achieved"]["incidents"] > 0
    shown = invoke(["models", "show", f"{table['project']['name']}:1", "--json"], path).assert_ok().json
    assert shown["task"] == "anomaly" and shown["threshold"] == threshold
    # the rule, given the out-of-fold rows the bundle keeps, gives the same threshold again
    rows = alerting.read_oof(Path(shown["path"]))
    assert alerting.choose(rows, alerting.AlertingSection())["value"] == threshold["value"]
    monitored = datasets.load("asd").query(table["data"]["monitor"]).reset_index(drop=True)
    check_incident_figures(path, out, table["project"]["name"], monitored)
    # the threshold can be changed without retraining, as for any version
    promoted = invoke(["models", "promote", table["project"]["name"], "1", "--rule", "f1"], path).assert_ok()
    again = invoke(["models", "show", f"{table['project']['name']}:1", "--json"], path).assert_ok().json
    assert again["threshold"]["rule"] == "f1", promoted.stdout


# ---------------------------------------------------------------------------
# History without labels
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """omi-1 and omi-9 as a Parquet file, float labels: NaN for the first three days and the last day."""
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"])].reset_index(drop=True)
    frame["label"] = frame["label"].astype("float64")
    frame.loc[(frame["timestamp"] < UNLABELLED_BEFORE) | (frame["timestamp"] >= LATE_AFTER), "label"] = np.nan
    path = tmp_path_factory.mktemp("history") / "history.parquet"
    frame.to_parquet(path, index=False)
    return path


def unlabelled_config(source: Path, mode: str | None, trainer: str) -> dict[str, Any]:
    data = {"source": str(source), "target": "label", "time": "timestamp", "series": "entity",
            "train": "timestamp < '2024-01-08 12:00'", "monitor": "timestamp >= '2024-01-08 12:00'"}
    if mode is not None:
        data["unlabelled"] = mode
    table: dict[str, Any] = {"project": {"name": "history"}, "data": data, "validate": {"kfold": {"folds": 3}}}
    table["train"] = copy.deepcopy(FOREST) if trainer == "isolation-forest" else {"xgboost": {"n_estimators": 60}}
    return table


@pytest.mark.parametrize("trainer", ["xgboost", "isolation-forest"])
def test_by_default_validation_refuses_the_rows_and_names_the_option(tmp_path: Path, history: Path,
                                                                      trainer: str) -> None:
    path = project(tmp_path / "p", unlabelled_config(history, None, trainer))
    invoke(["validate"], path).assert_error("kfold: 1,728 of 4,320 rows", "'label'", "[data] unlabelled",
                                            '"keep"')
    if trainer == "xgboost":  # `run` trains first: XGBoost refuses them, naming the option too
        invoke(["run"], path).assert_error("xgboost: 1,728 of 4,320 rows", "'label'", "[data] unlabelled",
                                           '"normal"', '"drop"')


def test_keep_trains_the_forest_on_all_rows_and_judges_the_labelled_ones(tmp_path: Path, history: Path) -> None:
    table = unlabelled_config(history, "keep", "isolation-forest")
    path = project(tmp_path / "p", table)
    checked = invoke(["validate"], path).assert_ok()
    assert "alert threshold" in checked.stdout and "rows without a label are trained on" in " ".join(
        (checked.stdout + checked.stderr).split())
    out = invoke(["run", "--json", "--quiet"], path).assert_ok().json
    train_stage = next(s for s in out["stages"] if s["stage"] == "train")
    assert "on 4,320 rows" in train_stage["summary"]  # every row of the period, the unlabelled ones too
    threshold = out["versions"][0]["threshold"]
    assert threshold["rule"] == "budget" and threshold["positives"] > 0
    assert threshold["rows"] == 4_320 - 1_728  # out-of-fold rows with a label only (here: all of them)
    shown = invoke(["models", "show", "history:1", "--json"], path).assert_ok().json
    assert shown["threshold"] == threshold
    monitored = pd.read_parquet(history).query(table["data"]["monitor"]).reset_index(drop=True)
    figures = monitor_figures(out)
    assert figures["unlabelled"] == monitored["label"].isna().sum() > 0  # labels not arrived: not judged
    labelled = monitored[monitored["label"].notna()].reset_index(drop=True)
    assert figures["rows"] == len(labelled)
    check_incident_figures(path, out, "history", labelled)


def test_keep_with_a_supervised_trainer_is_refused(tmp_path: Path, history: Path) -> None:
    path = project(tmp_path / "p", unlabelled_config(history, "keep", "xgboost"))
    invoke(["run"], path).assert_error("xgboost: 1,728 of 4,320 rows", '[data] unlabelled = "keep"',
                                       "supervised one needs a label on every row")


@pytest.mark.parametrize("mode", ["normal", "drop"])
def test_normal_and_drop_let_xgboost_train(tmp_path: Path, history: Path, mode: str) -> None:
    table = unlabelled_config(history, mode, "xgboost")
    # a retrain forced on train + monitor: the monitored rows whose labels have not arrived are left out of it
    # (neither normal nor a reason to refuse), whatever [data] unlabelled does with the training period's
    table["retrain"] = {"plugins": ["threshold-policy"],
                        "threshold-policy": {"min_f1": 0.99, "min_positives": 1, "cooldown": "0"}}
    path = project(tmp_path / "p", table)
    out = invoke(["run", "--json", "--quiet"], path).assert_ok().json
    train_stage = next(s for s in out["stages"] if s["stage"] == "train")
    trained = 4_320 if mode == "normal" else 4_320 - 1_728
    assert f"on {trained:,} rows" in train_stage["summary"]
    assert out["versions"][0]["threshold"]["positives"] > 0
    assert monitor_figures(out)["incidents"] > 0
    monitored = pd.read_parquet(history).query(table["data"]["monitor"])
    retrain = next(s for s in out["stages"] if s["stage"] == "retrain.train")
    assert f"on {trained + int(monitored['label'].notna().sum()):,} rows" in retrain["summary"]
    assert [v["ref"] for v in out["versions"]] == ["history:1", "history:2"]  # the retrained candidate


def test_a_rule_with_no_labelled_incident_out_of_fold_is_one_line_naming_it(tmp_path: Path, history: Path) -> None:
    table = unlabelled_config(history, "keep", "isolation-forest")
    # the unlabelled days and two labelled days without an incident on either server
    table["data"]["train"] = "timestamp < '2024-01-03' or (timestamp >= '2024-01-06' and timestamp < '2024-01-08 12:00')"
    table["alerting"] = {"rule": "precision", "target": 0.9}
    path = project(tmp_path / "p", table)
    invoke(["validate"], path).assert_error("[alerting.target]", "precision", "0 positive", "hold no incident")
    invoke(["run"], path).assert_error("[alerting.target]", "hold no incident")


def test_keep_lets_the_loop_retrain_the_forest_on_rows_without_a_label(tmp_path: Path, history: Path) -> None:
    """`opsloop loop` draws its retraining window as `opsloop run` does: under `keep`, the rows without a label
    train too; the holdout ends where the labels do, and the rows newer than that wait."""
    table = unlabelled_config(history, "keep", "isolation-forest")
    table.update({"monitor": {"plugins": ["quality-monitor"]},
                  "retrain": {"plugins": ["threshold-policy"],
                              "threshold-policy": {"min_f1": 0.99, "min_positives": 1, "cooldown": "0"}},
                  "gate": {"plugins": ["champion-challenger"]},
                  "loop": {"monitor_window": "4d", "holdout": "2d"}})
    path = project(tmp_path / "p", table)
    invoke(["run", "--json", "--quiet"], path).assert_ok()  # logs the monitoring period it scored (batch)
    monitored = pd.read_parquet(history).query(table["data"]["monitor"])
    labels = monitored[monitored["label"].notna()][["entity", "timestamp", "label"]]
    labels.rename(columns={"entity": "series", "timestamp": "time"}).to_csv(path / "labels.csv", index=False)
    invoke(["feedback", "--file", str(path / "labels.csv")], path).assert_ok()  # the last day has none yet
    out = invoke(["loop", "--once", "--json", "--quiet"], path).json
    assert out["decision"] == "retrain" and out["candidate"] is not None, (out["reasons"], out["notes"], out["error"])
    training, holdout = out["window"]["training"], out["window"]["holdout"]
    frame = pd.read_parquet(history)
    times = pd.to_datetime(frame["timestamp"], utc=True)
    newest_label = times[frame["label"].notna()].max()
    # the holdout ends at the newest labelled row; the unlabelled day after it is not in this cycle's window
    assert pd.Timestamp(holdout["end"]) == newest_label
    trained = frame[(times < pd.Timestamp(holdout["start"])).to_numpy()]
    assert training["rows"] == len(trained) and training["unlabelled"] == trained["label"].isna().sum() == 1_728
    assert any('labelled or not ([data] unlabelled = "keep")' in note for note in out["notes"])
    shown = invoke(["models", "show", f"history:{out['candidate']}", "--json"], path).assert_ok().json
    assert {k: shown["lineage"]["training"][k] for k in ("rows", "unlabelled")} == {
        "rows": len(trained), "unlabelled": 1_728}  # what the candidate trained on, in its lineage
    # and its lineage rebuilds it: the same rows, the unlabelled ones included
    invoke(["models", "reproduce", f"history:{out['candidate']}"], path).assert_ok()
