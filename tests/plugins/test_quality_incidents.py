"""`quality-monitor`'s incident figures (issue 13, item 2) on real ASD rows.

A LogisticRegression fitted on the first week of two servers (omi-8, omi-9)
is monitored on the second week of two servers it never saw (omi-10,
omi-11): real incidents, some caught, some missed, and false alerts.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import opsloop.config
import pandas as pd
import pytest
from opsloop import Dataset, ModelVersion, MonitorReport, RunContext, datasets
from opsloop.incidents import INCIDENT_FIGURES
from opsloop.manager import PluginManager
from opsloop.plugins import quality_monitor
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

METRICS = [f"m{j:02d}" for j in range(1, 20)]
SECOND_WEEK = pd.Timestamp("2024-01-08 12:00")


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    return datasets.load("asd")


@pytest.fixture(scope="module")
def predict(asd: pd.DataFrame):
    train = asd[asd["entity"].isin(["omi-8", "omi-9"]) & (asd["timestamp"] < SECOND_WEEK)]
    model = LogisticRegression(max_iter=1000, class_weight="balanced").fit(train[METRICS], train["label"])
    return lambda frame: pd.DataFrame({"prediction": model.predict(frame[METRICS]),
                                       "score": model.predict_proba(frame[METRICS])[:, 1]})


@pytest.fixture(scope="module")
def current(asd: pd.DataFrame) -> Dataset:
    rows = asd[asd["entity"].isin(["omi-10", "omi-11"]) & (asd["timestamp"] >= SECOND_WEEK)]
    return Dataset.from_frame(rows.reset_index(drop=True), target="label", time="timestamp", series="entity",
                              name="omi-10+omi-11 week 2")


@pytest.fixture
def monitor(tmp_path: Path, predict):
    pm = PluginManager()
    pm.load("quality-monitor")
    run = RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))
    version = ModelVersion(name="m", version=1, created_at="2024-01-15T00:00:00Z", task="classification",
                           metrics={"f1": 0.65, "recall": 0.6}, path=tmp_path)

    def call(data: Dataset, **options) -> MonitorReport:
        return pm.call("quality-monitor", "monitor", version=version, current=data,
                       predictions=predict(data.frame), reference=data,
                       options=quality_monitor.Options(**options), run=run)

    return call


def incidents(frame: pd.DataFrame, prediction: np.ndarray) -> pd.Series:
    """Per incident (a run of label 1 per server, in time order): whether one of its rows was predicted 1."""
    rows = frame.assign(alert=prediction).sort_values(["entity", "timestamp"])
    on = rows["label"].eq(1)
    incident = (on & ~on.groupby(rows["entity"]).shift(fill_value=False)).cumsum().where(on)
    return rows["alert"].eq(1).groupby(incident).any()


def test_the_monitor_reports_incident_figures_on_real_rows(monitor, current, predict) -> None:
    report = monitor(current)
    m = report.metrics
    assert [k for k in m if k in INCIDENT_FIGURES] == [k for k in INCIDENT_FIGURES if not k.endswith("_rows")]
    caught = incidents(current.frame, predict(current.frame)["prediction"].to_numpy())
    assert m["incidents"] == len(caught) > 10 and m["incidents_caught"] == caught.sum()
    assert 0 < m["incident_recall"] < 1 and m["incident_recall"] == pytest.approx(caught.mean())
    assert m["delay_median_s"] % 300 == 0 and m["delay_mean_s"] >= 0  # 5-minute rows
    assert m["days"] == pytest.approx(2 * 7.5)  # two servers, 2024-01-08 12:00 to the end of the 15th
    assert m["alerts_per_day"] == pytest.approx(m["alerts"] / 15) and 0 < m["false_alerts"] <= m["alerts"]
    assert m["pa_recall"] >= m["recall"] and m["pa_precision"] >= m["precision"]
    # the row figures are as before, and incident figures alert on nothing
    y, pred = current.frame["label"], predict(current.frame)["prediction"]
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred)) and m["rows"] == len(y)
    assert not set(report.baseline) & set(INCIDENT_FIGURES)
    assert not any(a.split()[0] in INCIDENT_FIGURES for a in report.alerts)


def test_incidents_false_removes_them_and_changes_nothing_else(monitor, current) -> None:
    full, off = monitor(current).metrics, monitor(current, incidents=False).metrics
    assert not set(off) & set(INCIDENT_FIGURES)
    assert off == {k: v for k, v in full.items() if k not in INCIDENT_FIGURES}


def test_unlabelled_rows_are_left_out_and_no_time_gives_delays_in_rows(monitor, current) -> None:
    frame = current.frame
    last_day = frame["timestamp"] >= pd.Timestamp("2024-01-15")
    unlabelled = current.derive(frame.assign(label=frame["label"].where(~last_day)))
    labelled_only = current.derive(frame[~last_day].reset_index(drop=True))
    partial, cut = monitor(unlabelled).metrics, monitor(labelled_only).metrics
    assert partial["unlabelled"] == last_day.sum()
    assert {k: partial[k] for k in INCIDENT_FIGURES if k in partial} == \
        pytest.approx({k: cut[k] for k in INCIDENT_FIGURES if k in cut}, nan_ok=True)
    assert partial["days"] == pytest.approx(2 * 6.5)

    untimed = monitor(attrs.evolve(current, time=None)).metrics
    timed = monitor(current).metrics
    assert "delay_mean_s" not in untimed and untimed["delay_median_rows"] == timed["delay_median_s"] / 300
    assert math.isnan(untimed["days"]) and math.isnan(untimed["alerts_per_day"])
    assert untimed["incidents"] == timed["incidents"] and untimed["pa_f1"] == timed["pa_f1"]
