"""Threshold rules (opsloop.alerting) on real telemetry, checked against a brute-force search with scikit-learn.

The scores are a real signal of SMD machine-1-6 (one metric, its incidents
as labels): ordered enough to calibrate, noisy enough that every rule has a
non-trivial answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, recall_score

from opsloop import alerting
from opsloop.alerting import AlertingSection, choose
from opsloop.errors import ConfigError


@pytest.fixture(scope="module")
def rows(smd_machine_1_6) -> pd.DataFrame:
    """Out-of-fold-like rows: SMD machine-1-6 cut in two series (its halves), score = metric m09 (6,260 distinct
    values, correlation 0.5 with the incidents)."""
    frame = smd_machine_1_6()
    half = len(frame) // 2
    return pd.DataFrame({"score": frame["m09"].to_numpy(dtype=float), "label": frame["label"].to_numpy(),
                         "series": np.where(np.arange(len(frame)) < half, "first", "second"),
                         "time": frame["timestamp"].to_numpy()})


def cuts(rows: pd.DataFrame) -> np.ndarray:
    return np.unique(rows["score"])[::-1]


def curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's precision, recall and cut at every distinct score (`score >= cut` alerts)."""
    precision, recall, cut = precision_recall_curve(rows["label"], rows["score"])
    return precision[:-1], recall[:-1], cut


def at(rows: pd.DataFrame, cut: float, metric) -> float:
    return metric(rows["label"], rows["score"] >= cut, zero_division=0)


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_precision_rule_is_the_lowest_cut_reaching_the_target(rows, target):
    got = choose(rows, AlertingSection(rule="precision", target=target))
    precision, _, cut = curve(rows)
    assert got["value"] == cut[precision >= target].min()
    assert got["achieved"]["precision"] >= target
    assert got["achieved"]["recall"] == pytest.approx(at(rows, got["value"], recall_score), abs=1e-12)
    assert (got["rule"], got["target"], got["inclusive"]) == ("precision", target, True)


def test_recall_rule_is_the_highest_cut_catching_the_share(rows):
    got = choose(rows, AlertingSection(rule="recall", target=0.6))
    _, recall, cut = curve(rows)
    assert got["value"] == cut[recall >= 0.6].max()


def test_f1_rule_is_the_cut_of_the_best_f1(rows):
    got = choose(rows, AlertingSection(rule="f1"))
    precision, recall, _ = curve(rows)
    with np.errstate(invalid="ignore"):
        best = np.nanmax(2 * precision * recall / (precision + recall))
    assert got["achieved"]["f1"] == pytest.approx(best, abs=1e-12)
    assert at(rows, got["value"], f1_score) == pytest.approx(best, abs=1e-12)
    assert got["target"] is None


def alerts_per_series_day(rows: pd.DataFrame, cut: float) -> float:
    """Independently of the module: runs of alerted rows per series, over the days the series span."""
    total, days = 0, 0.0
    for _, one in rows.sort_values(["series", "time"]).groupby("series"):
        alert = (one["score"] >= cut).to_numpy()
        total += int(alert[0]) + int((alert[1:] & ~alert[:-1]).sum())
        t = pd.to_datetime(one["time"])
        step = t.diff().median()
        days += (t.iloc[-1] - t.iloc[0] + step) / pd.Timedelta(days=1)
    return total / days


@pytest.mark.parametrize("target", [1.0, 0.25])
def test_budget_rule_stops_at_the_first_excess_from_the_top(rows, target):
    got = choose(rows, AlertingSection(rule="budget", target=target))
    assert alerts_per_series_day(rows, got["value"]) <= target
    lower = cuts(rows)[cuts(rows) < got["value"]]
    assert alerts_per_series_day(rows, lower[0]) > target  # the next distinct score would break the budget
    assert got["achieved"]["alerts_per_day"] == pytest.approx(alerts_per_series_day(rows, got["value"]))


def test_budget_never_takes_the_cut_where_everything_is_one_endless_alert(rows):
    # alerting on every row is one alert per series: within any budget, and useless; the rule must stop earlier
    everything = cuts(rows)[-1]
    assert alerts_per_series_day(rows, everything) < 0.25
    assert choose(rows, AlertingSection(rule="budget", target=0.25))["value"] > everything


def test_fixed_keeps_the_target_and_reports_what_it_achieves(rows):
    cut = float(np.quantile(rows["score"], 0.95))
    got = choose(rows, AlertingSection(rule="fixed", target=cut))
    assert got["value"] == cut
    assert got["achieved"]["recall"] == pytest.approx(at(rows, cut, recall_score), abs=1e-12)


def test_an_unreachable_precision_names_the_rule_and_the_best_reachable_value(rows):
    weak = rows.assign(score=rows["score"].sample(frac=1.0, random_state=0).to_numpy())  # scores shuffled
    best = curve(weak)[0].max()
    with pytest.raises(ConfigError) as caught:
        choose(weak, AlertingSection(rule="precision", target=min(0.99, best + 0.2)))
    text = str(caught.value)
    assert "[alerting" in text and "target" in text and "cannot be met" in text
    assert f"the best precision on the {len(weak):,} out-of-fold rows" in text and f"{best:.3f}" in text


def test_no_positive_rows_is_a_clear_error(rows):
    normal = rows[rows["label"] == 0]
    with pytest.raises(ConfigError, match="hold no incident"):
        choose(normal, AlertingSection(rule="f1"))


def test_budget_needs_a_time_column(rows):
    with pytest.raises(ConfigError, match="no time column"):
        choose(rows.drop(columns="time"), AlertingSection(rule="budget"))


@pytest.mark.parametrize(("table", "message"), [
    ({"rule": "precison"}, 'did you mean "precision"'),
    ({"rule": "f1", "target": 0.5}, "does nothing with rule"),
    ({"rule": "precision", "target": 1.5}, "share in (0, 1]"),
    ({"rule": "budget", "target": 0}, "above 0"),
    ({"rul": "f1"}, 'did you mean "rule"'),
])
def test_a_wrong_alerting_section_is_one_line_naming_the_key(tmp_path, table, message):
    from opsloop import config

    with pytest.raises(ConfigError) as caught:
        config.Config.from_table({"alerting": table}, workdir=tmp_path)
    assert message in str(caught.value) and "alerting" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_apply_alerts_at_and_above_the_value():
    frame = pd.DataFrame({"prediction": [0, 1, 0, 1], "score": [0.1, 0.6, 0.3, 0.29]})
    out = alerting.apply(frame, {"value": 0.3})
    assert out["prediction"].tolist() == [0, 1, 1, 0]
    assert alerting.apply(frame, None) is frame
    assert alerting.describe({"value": 0.3, "rule": "precision", "target": 0.9}) == "0.3 (precision 0.9)"


def test_per_series_thresholds_are_each_series_own_rule(rows):
    section = AlertingSection(rule="budget", target=0.5, per_series=True)
    got = choose(rows, section)
    assert set(got["per_series"]) == {"first", "second"}
    for name, group in rows.groupby("series"):
        alone = choose(group, AlertingSection(rule="budget", target=0.5))
        assert got["per_series"][name] == alone["value"]
        assert alerts_per_series_day(group, alone["value"]) <= 0.5
    # the figures are those of each row alerting at its own series' threshold
    cut = rows["series"].map(got["per_series"]).to_numpy()
    alert = rows["score"].to_numpy() >= cut
    assert alerting.alerts(rows["score"], got, rows["series"]).tolist() == alert.tolist()
    assert got["achieved"]["recall"] == pytest.approx(recall_score(rows["label"], alert), abs=1e-12)
    assert got["value"] == choose(rows, AlertingSection(rule="budget", target=0.5))["value"]  # the overall one
    # a series not seen in validation alerts at the overall threshold
    unseen = alerting.alerts([got["value"], np.nextafter(got["value"], -np.inf)], got, ["new", "new"])
    assert unseen.tolist() == [True, False]


def test_a_series_where_the_rule_cannot_be_met_keeps_the_overall_threshold(rows):
    # the second half's incidents removed: precision cannot be met there, so only the first has its own
    quiet = rows.assign(label=np.where(rows["series"] == "second", 0, rows["label"]))
    got = choose(quiet, AlertingSection(rule="precision", target=0.3, per_series=True))
    assert list(got["per_series"]) == ["first"]


def test_per_series_does_nothing_with_a_fixed_threshold(tmp_path):
    from opsloop import config

    with pytest.raises(ConfigError, match="'per_series' does nothing with rule"):
        config.Config.from_table({"alerting": {"rule": "fixed", "target": 0.3, "per_series": True}}, workdir=tmp_path)
