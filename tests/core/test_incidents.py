"""Incident figures (`opsloop.incidents`, issue 13 item 2): small cases computed by hand, then real incidents.

The hand cases assert every key. On real data (ASD's twelve servers, SMD
machine-1-6) the figures are checked against the same definitions computed
independently with pandas groupby and shift, and against what must hold for
an oracle, an always-on and a late detector.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from opsloop import datasets
from opsloop.incidents import INCIDENT_FIGURES, incident_figures

NAN = math.nan
T0 = pd.Timestamp("2024-03-01 00:00")


def minutes(*m: float) -> list[pd.Timestamp]:
    return [T0 + pd.Timedelta(minutes=x) for x in m]


def check(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == [k for k in INCIDENT_FIGURES if k in want] and set(got) == set(want)
    for key, value in want.items():
        assert isinstance(got[key], float), key
        if math.isnan(value):
            assert math.isnan(got[key]), (key, got[key])
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), (key, got[key], value)


# Two series, one row a minute. Series a: incidents at its start (rows 0-1), in the middle (row 4) and at its end
# (rows 6-7); one alert (rows 1-5) spans the first two. Series b: an unlabelled row at minute 4 that is left out,
# so minutes 2, 3 and 5 form one incident at the series' end, caught at minute 5 (180 s); a false alert at minute 0.
A = pd.DataFrame({"series": "a", "time": minutes(0, 1, 2, 3, 4, 5, 6, 7),
                  "label": [1, 1, 0, 0, 1, 0, 1, 1], "alert": [0, 1, 1, 1, 1, 1, 0, 0]})
B = pd.DataFrame({"series": "b", "time": minutes(0, 1, 2, 3, 4, 5),
                  "label": [0, 0, 1, 1, None, 1], "alert": [1, 0, 0, 0, 1, 1]})
TWO = pd.concat([A, B], ignore_index=True)
# incidents a[0-1] (delay 60 s), a[4] (0 s: the alert is on), a[6-7] (missed), b[2,3,5] (180 s); 8 positive rows,
# 6 of them in caught incidents; alerted negatives: a 2, 3, 5 and b 0.
COUNTS = {"incidents": 4.0, "incidents_caught": 3.0, "incident_recall": 0.75, "alerts": 3.0, "false_alerts": 1.0,
          "pa_precision": 6 / 10, "pa_recall": 6 / 8, "pa_f1": 12 / 18}


def figures(frame: pd.DataFrame, **kwargs) -> dict[str, float]:
    return incident_figures(frame["label"], frame["alert"], series=frame["series"], **kwargs)


def test_two_series_with_time_by_hand() -> None:
    days = (8 + 6) / 1440  # a: 7 minutes + a step; b: 5 minutes + its median step (1, 1, 1, 2 -> 1)
    want = {**COUNTS, "delay_mean_s": 80.0, "delay_median_s": 60.0, "days": days,
            "alerts_per_day": 3 / days, "false_alerts_per_day": 1 / days}
    check(figures(TWO, time=TWO["time"]), want)
    # rows in any order: sorted by series and time
    shuffled = TWO.sample(frac=1, random_state=3)
    check(figures(shuffled, time=shuffled["time"].to_numpy()), want)
    # a step given: a covers 7 + 5 minutes, b 5 + 5
    stepped = figures(TWO, time=TWO["time"], step_seconds=300)
    assert stepped["days"] == pytest.approx(22 / 1440) and stepped["alerts_per_day"] == pytest.approx(3 * 1440 / 22)


def test_without_time_rows_are_taken_in_order_per_series_and_delays_are_in_rows() -> None:
    interleaved = pd.concat([A.iloc[:3], B.iloc[:4], A.iloc[3:], B.iloc[4:]], ignore_index=True)
    want = {**COUNTS, "delay_mean_rows": 1.0, "delay_median_rows": 1.0,  # 1, 0 and 2 rows (b's unlabelled row out)
            "days": NAN, "alerts_per_day": NAN, "false_alerts_per_day": NAN}
    check(figures(interleaved), want)
    # a's last rows and b's first, positive and alerted, are two incidents and two alerts, not one
    apart = incident_figures([1, 1, 1, 0], [0, 1, 1, 0], series=["a", "a", "b", "b"])
    assert (apart["incidents"], apart["alerts"], apart["delay_mean_rows"]) == (2, 2, 0.5)
    pooled = incident_figures([1, 1, 1, 0], [0, 1, 1, 0])
    assert (pooled["incidents"], pooled["alerts"], pooled["delay_mean_rows"]) == (1, 1, 1)


def test_one_series_without_series_or_time() -> None:
    got = incident_figures([0, 1, 1, 1, 0, 0, 1, 0], [False, False, False, True, True, False, False, True])
    check(got, {"incidents": 2.0, "incidents_caught": 1.0, "incident_recall": 0.5, "delay_mean_rows": 2.0,
                "delay_median_rows": 2.0, "alerts": 2.0, "false_alerts": 1.0, "days": NAN, "alerts_per_day": NAN,
                "false_alerts_per_day": NAN, "pa_precision": 3 / 5, "pa_recall": 3 / 4, "pa_f1": 6 / 9})


def test_a_series_of_one_row_takes_the_median_step_of_the_others() -> None:
    got = incident_figures([0, 0, 0, 1], [0, 0, 0, 1], series=["a", "a", "a", "c"], time=minutes(0, 2, 4, 9))
    assert got["days"] == pytest.approx((4 + 2 + 2) / 1440)
    assert got["delay_mean_s"] == got["delay_median_s"] == 0.0 and got["incident_recall"] == 1.0


def test_empty_all_negative_and_silent_inputs_give_figures_not_errors() -> None:
    empty = {"incidents": 0.0, "incidents_caught": 0.0, "incident_recall": NAN, "alerts": 0.0,
             "false_alerts": 0.0, "alerts_per_day": NAN, "false_alerts_per_day": NAN, "pa_precision": NAN,
             "pa_recall": NAN, "pa_f1": NAN}
    check(incident_figures([], []), {**empty, "delay_mean_rows": NAN, "delay_median_rows": NAN, "days": NAN})
    check(incident_figures([], [], series=[], time=[]),
          {**empty, "delay_mean_s": NAN, "delay_median_s": NAN, "days": 0.0})
    # only unlabelled rows: nothing left to judge
    check(incident_figures([None, np.nan], [1, 1]), {**empty, "delay_mean_rows": NAN, "delay_median_rows": NAN,
                                                      "days": NAN})
    # all negative, two alerts: both false; precision 0, recall undefined
    check(incident_figures(pd.Series([0, 0, 0, 0]), pd.Series([1, 0, 1, 1]), time=minutes(0, 1, 2, 3)),
          {"incidents": 0.0, "incidents_caught": 0.0, "incident_recall": NAN, "delay_mean_s": NAN,
           "delay_median_s": NAN, "alerts": 2.0, "false_alerts": 2.0, "days": 4 / 1440,
           "alerts_per_day": 720.0, "false_alerts_per_day": 720.0, "pa_precision": 0.0, "pa_recall": NAN,
           "pa_f1": 0.0})
    # no alert: every incident missed; minutes 0, 1 and 3 labelled, so 3 minutes + a median step of 1.5
    check(incident_figures(pd.array([1, 0, pd.NA, 1], dtype="Int64"), np.zeros(4, bool), time=minutes(0, 1, 2, 3)),
          {"incidents": 2.0, "incidents_caught": 0.0, "incident_recall": 0.0, "delay_mean_s": NAN,
           "delay_median_s": NAN, "alerts": 0.0, "false_alerts": 0.0, "days": 4.5 / 1440, "alerts_per_day": 0.0,
           "false_alerts_per_day": 0.0, "pa_precision": NAN, "pa_recall": 0.0, "pa_f1": 0.0})


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="3 alerts for 2 labels"):
        incident_figures([0, 1], [0, 1, 1])


# ---------------------------------------------------------------------------
# real incidents
# ---------------------------------------------------------------------------


def runs(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per row of `frame` (sorted by entity and time), the id of its run of `column` == 1 per entity; NaN off."""
    on = frame[column].eq(1)
    before = on.groupby(frame["entity"]).shift(fill_value=False)
    return on.ne(before).where(on, False).cumsum().where(on)


def independent(frame: pd.DataFrame) -> dict[str, float]:
    """The figures by their definitions, with pandas: each incident and each alert as a group."""
    f = frame.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)
    f["incident"], f["run"] = runs(f, "label"), runs(f, "alert")
    pos = f[f["incident"].notna()]
    caught = pos.groupby("incident")["alert"].any()
    first = pos.groupby("incident")["timestamp"].min()
    detected = pos[pos["alert"] == 1].groupby("incident")["timestamp"].min()
    delays = (detected - first[detected.index]).dt.total_seconds()
    true_alert = f[f["run"].notna()].groupby("run")["label"].max() == 1
    spans = f.groupby("entity")["timestamp"].agg(["min", "max"])
    steps = f.groupby("entity")["timestamp"].apply(lambda t: t.diff().median())
    days = ((spans["max"] - spans["min"] + steps).dt.total_seconds()).sum() / 86400
    adjusted = f["alert"].astype(bool) | f["incident"].isin(caught[caught].index)
    return {"incidents": len(caught), "incidents_caught": caught.sum(), "delay_mean_s": delays.mean(),
            "delay_median_s": delays.median(), "alerts": len(true_alert), "false_alerts": (~true_alert).sum(),
            "days": days, "pa_precision": skm.precision_score(f["label"], adjusted),
            "pa_recall": skm.recall_score(f["label"], adjusted), "pa_f1": skm.f1_score(f["label"], adjusted)}


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    """ASD's twelve servers, with a real detector: any metric more than 3 of its server's deviations off."""
    frame = datasets.load("asd")
    metrics = [c for c in frame.columns if c.startswith("m")]
    by = frame.groupby("entity")[metrics]
    z = (frame[metrics] - by.transform("mean")) / by.transform("std").replace(0, 1)
    return frame.assign(alert=(z.abs().max(axis=1) > 3).astype(int))


def asd_figures(frame: pd.DataFrame, alert: str = "alert") -> dict[str, float]:
    return incident_figures(frame["label"], frame[alert], series=frame["entity"], time=frame["timestamp"])


def test_real_incidents_match_their_definitions_computed_with_pandas(asd: pd.DataFrame) -> None:
    got = asd_figures(asd)
    want = independent(asd)
    assert 50 < want["incidents"] and 0 < want["incidents_caught"] < want["incidents"]  # a real, imperfect case
    for key, value in want.items():
        assert got[key] == pytest.approx(float(value), rel=1e-9), key
    assert got["days"] == pytest.approx(12 * 15)  # twelve servers, 15 days of 5-minute rows each
    assert got["incident_recall"] == got["incidents_caught"] / got["incidents"]
    assert got["false_alerts_per_day"] == pytest.approx(got["false_alerts"] / got["days"])
    row_recall = skm.recall_score(asd["label"], asd["alert"])
    assert got["pa_recall"] >= row_recall and got["pa_precision"] >= skm.precision_score(asd["label"], asd["alert"])


def test_oracle_always_on_and_shuffled_rows(asd: pd.DataFrame) -> None:
    oracle = asd_figures(asd, "label")
    incidents = runs(asd.sort_values(["entity", "timestamp"]), "label").nunique()
    assert oracle["incidents"] == oracle["incidents_caught"] == incidents
    assert oracle["incident_recall"] == 1 and oracle["delay_mean_s"] == oracle["delay_median_s"] == 0
    assert oracle["alerts"] == incidents and oracle["false_alerts"] == 0
    assert oracle["pa_precision"] == oracle["pa_recall"] == oracle["pa_f1"] == 1
    always = asd_figures(asd.assign(alert=1))
    assert always["alerts"] == asd["entity"].nunique() == 12 and always["false_alerts"] == 0
    assert always["incident_recall"] == always["pa_recall"] == 1 and always["delay_median_s"] == 0
    assert always["pa_precision"] == pytest.approx(asd["label"].mean())
    shuffled = asd.sample(frac=1, random_state=0)
    assert asd_figures(shuffled) == pytest.approx(asd_figures(asd), nan_ok=True)


def test_a_detector_one_row_late_on_smd_machine_1_6(smd_machine_1_6) -> None:
    """One row late (alert = the label shifted by a minute): every incident longer than a row is caught exactly
    60 s in, every one-row incident missed, and its one-row alert (the row after it) false."""
    frame = smd_machine_1_6()
    frame["late"] = frame["label"].shift(1, fill_value=0)
    got = incident_figures(frame["label"], frame["late"], series=frame["entity"], time=frame["timestamp"])
    run = runs(frame, "label")
    lengths = run.value_counts()
    assert got["incidents"] == len(lengths) > 10
    assert got["incidents_caught"] == (lengths > 1).sum() and got["delay_mean_s"] == got["delay_median_s"] == 60
    last_row_incident = run.iloc[-1] if frame["label"].iloc[-1] == 1 else None  # its alert falls off the end
    assert got["false_alerts"] == ((lengths == 1) & (lengths.index != last_row_incident)).sum()
    assert got["days"] == pytest.approx(len(frame) / 1440)
    rows = incident_figures(frame["label"], frame["late"])  # no time: one row late
    assert rows["delay_mean_rows"] == rows["delay_median_rows"] == 1
