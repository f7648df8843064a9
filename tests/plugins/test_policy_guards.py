"""`threshold-policy`'s guards (issue 9, item 6): minimum positives, drift persistence, cool-down, rate, any/all.

The guard logic is driven with MonitorReport objects written out (plain
value objects, the figures a monitor returns) and explicit decision times
(`now`); the state lives in each test's working directory, so two calls
with two RunContexts are two runs. The last tests feed reports from the
real monitors on real ASD rows.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import opsloop.config
import pandas as pd
import pytest
from opsloop import ConfigError, Dataset, ModelVersion, MonitorReport, RunContext, datasets
from opsloop.manager import PluginManager
from opsloop.plugins import threshold_policy
from opsloop.plugins.threshold_policy import Options, decide_retrain, state_path

T0 = datetime(2024, 1, 10, tzinfo=UTC)
BASELINE = {"f1": 0.60, "recall": 0.60, "precision": 0.60, "roc_auc": 0.80}


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


@pytest.fixture
def version(tmp_path: Path) -> ModelVersion:
    return ModelVersion(name="m", version=1, created_at="2024-01-01T00:00:00Z", task="classification",
                        metrics=BASELINE, path=tmp_path)


def new_run(workdir: Path, run_id: str = "r1") -> RunContext:
    return RunContext(run_id=run_id, workdir=workdir, model_name="m", config=opsloop.config.read(workdir=workdir))


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    return new_run(tmp_path)


def quality(f1: float, positives: int = 200, rows: int = 2000) -> MonitorReport:
    """A quality-monitor report: F1 and recall `f1`, precision 0.6, on `positives` labelled positives."""
    return MonitorReport(monitor="quality-monitor", model="m:1", rows=rows,
                         metrics={"f1": f1, "recall": f1, "precision": 0.6, "rows": float(rows),
                                  "positives": float(positives), "prevalence": positives / rows},
                         baseline=BASELINE)


def drift(psi: float, rows: int = 2000) -> MonitorReport:
    """A drift-monitor report whose worst feature is m04."""
    return MonitorReport(monitor="drift-monitor", model="m:1", rows=rows,
                         metrics={"rows": float(rows), "reference_rows": 10_000.0, "drift_max_psi": psi,
                                  "drift_max_ks": min(psi / 4, 1.0), "drifted": float(psi > 0.25),
                                  "psi[m04]": psi, "psi[m01]": psi / 10, "ks[m04]": min(psi / 4, 1.0)})


def decide(version, reports, run, hours: float, **options):
    return decide_retrain(version=version, reports=reports, options=Options(now=at(hours), **options), run=run)


# ---------------------------------------------------------------------------
# minimum labelled positives
# ---------------------------------------------------------------------------


def test_a_quality_drop_on_too_few_positives_does_not_count(version, run):
    few = decide(version, [quality(0.20, positives=3)], run, 0, min_positives=20)

    assert few.retrain is False
    assert few.reasons[0] == ("quality-monitor: quality drop not counted: 3 labelled positives < min_positives 20 "
                              "(f1 0.20 is 0.40 below its validation baseline 0.60 (max_drop 0.10) on 2,000 rows; "
                              "recall 0.20 is 0.40 below its validation baseline 0.60 (max_drop 0.10) on 2,000 rows)")

    enough = decide(version, [quality(0.21, positives=20)], run, 1, min_positives=20)
    assert enough.retrain is True
    assert enough.reasons[0] == ("quality-monitor: f1 0.21 is 0.39 below its validation baseline 0.60 "
                                 "(max_drop 0.10) on 2,000 rows")


def test_few_positives_within_limits_are_said(version, run):
    kept = decide(version, [quality(0.59, positives=5)], run, 0)

    assert kept.retrain is False
    assert kept.reasons == ("quality-monitor: all figures within limits on 2,000 rows: f1 0.59 within 0.10 of "
                            "baseline 0.60, recall 0.59 within 0.10 of baseline 0.60, precision 0.60 within 0.10 "
                            "of baseline 0.60, on 5 labelled positives (< min_positives 20)",)


# ---------------------------------------------------------------------------
# drift persistence
# ---------------------------------------------------------------------------


def test_drift_counts_only_after_n_consecutive_windows(version, run):
    first = decide(version, [drift(1.40)], run, 0, drift_windows=3)
    second = decide(version, [drift(1.41)], run, 24, drift_windows=3)
    third = decide(version, [drift(1.42)], run, 48, drift_windows=3)

    assert (first.retrain, second.retrain, third.retrain) == (False, False, True)
    assert first.reasons[0] == ("drift on 1 of 3 required windows: drift-monitor: max PSI 1.40 (m04) > "
                                "max_drift_psi 1.00 on 2,000 rows: the data drifted")
    assert second.reasons[0].startswith("drift on 2 of 3 required windows: drift-monitor: max PSI 1.41 (m04)")
    assert third.reasons == ("drift-monitor: max PSI 1.42 (m04) > max_drift_psi 1.00 on 2,000 rows: the data "
                             "drifted (on 3 consecutive windows, drift_windows 3)",)


def test_after_a_retrain_drift_must_persist_again(version, run):
    """A retrain answers the drift seen so far; the same drift asks again only after drift_windows more."""
    fired = [decide(version, [drift(1.40 + day / 100)], run, 24 * day, drift_windows=2, cooldown="0",
                    max_retrains=None).retrain for day in range(6)]

    assert fired == [False, True, False, True, False, True]


def test_a_quiet_window_restarts_the_count(version, run):
    decide(version, [drift(1.40)], run, 0, drift_windows=2)
    quiet = decide(version, [drift(0.10)], run, 24, drift_windows=2)
    again = decide(version, [drift(1.50)], run, 48, drift_windows=2)

    assert quiet.retrain is False and quiet.reasons[0].startswith("drift-monitor: all figures within limits")
    assert again.retrain is False and again.reasons[0].startswith("drift on 1 of 2 required windows")
    assert decide(version, [drift(1.51)], run, 72, drift_windows=2).retrain is True


def test_the_same_reports_again_are_the_same_window(version, run):
    """A rerun on the same data (same reports, same version) must not advance the count."""
    for hours in (0, 1, 2):
        decision = decide(version, [drift(1.40)], run, hours, drift_windows=2)
        assert decision.reasons[0].startswith("drift on 1 of 2 required windows"), hours


def test_a_rerun_of_a_window_that_retrained_is_cooled_down_and_keeps_the_record(version, run):
    assert decide(version, [quality(0.20), drift(1.40)], run, 0).retrain is True

    again = decide(version, [quality(0.20), drift(1.40)], run, 0.5)

    assert again.retrain is False and again.reasons[0] == "cool-down: last retrain 30m ago, 1d required"
    (window,) = json.loads(state_path(run.workdir, "m").read_text())["windows"]
    assert window["retrain"] is True and window["time"] == "2024-01-10T00:30:00Z"


def test_a_new_version_starts_its_own_count(version, run):
    decide(version, [drift(1.40)], run, 0, drift_windows=2)
    v2 = ModelVersion(name="m", version=2, created_at="x", task="classification", metrics=BASELINE, path=version.path)

    decision = decide(v2, [drift(1.41)], run, 24, drift_windows=2)

    assert decision.reasons[0].startswith("drift on 1 of 2 required windows")


def test_drift_windows_1_fires_at_once(version, run):
    decision = decide(version, [drift(1.40)], run, 0, drift_windows=1)
    assert decision.retrain is True
    assert decision.reasons == ("drift-monitor: max PSI 1.40 (m04) > max_drift_psi 1.00 on 2,000 rows: "
                                "the data drifted",)


# ---------------------------------------------------------------------------
# cool-down and maximum retrains per period
# ---------------------------------------------------------------------------


def test_cool_down_holds_back_and_releases(version, run):
    assert decide(version, [quality(0.20)], run, 0, cooldown="6h").retrain is True

    held = decide(version, [quality(0.21)], run, 2, cooldown="6h")
    assert held.retrain is False
    assert held.reasons[0] == "cool-down: last retrain 2h ago, 6h required"
    assert held.reasons[1].startswith("held back: quality-monitor: f1 0.21 is 0.39 below its validation baseline")

    assert decide(version, [quality(0.22)], run, 5.5, cooldown="6h").reasons[0] == \
        "cool-down: last retrain 5.5h ago, 6h required"
    assert decide(version, [quality(0.23)], run, 6, cooldown="6h").retrain is True


def test_a_held_back_retrain_does_not_restart_the_cool_down(version, run):
    decide(version, [quality(0.20)], run, 0, cooldown="1d")
    decide(version, [quality(0.21)], run, 20, cooldown="1d")

    assert decide(version, [quality(0.22)], run, 24, cooldown="1d").retrain is True


def test_at_most_n_retrains_per_period(version, run):
    options = {"cooldown": "0", "max_retrains": 2, "retrain_period": "1d"}
    assert decide(version, [quality(0.20)], run, 0, **options).retrain is True
    assert decide(version, [quality(0.21)], run, 1, **options).retrain is True

    held = decide(version, [quality(0.22)], run, 2, **options)
    assert held.retrain is False
    assert held.reasons[0] == "max_retrains: 2 retrain(s) in the last 1d (the last 1h ago), 2 allowed"

    assert decide(version, [quality(0.23)], run, 23.9, **options).retrain is False
    assert decide(version, [quality(0.24)], run, 24, **options).retrain is True  # the first is a day old


def test_both_rate_guards_are_named(version, run):
    options = {"cooldown": "6h", "max_retrains": 1, "retrain_period": "1w"}
    decide(version, [quality(0.20)], run, 0, **options)

    held = decide(version, [quality(0.21)], run, 3, **options)

    assert held.reasons[:2] == ("cool-down: last retrain 3h ago, 6h required",
                                "max_retrains: 1 retrain(s) in the last 1w (the last 3h ago), 1 allowed")


def test_nothing_to_retrain_leaves_the_guards_quiet(version, run):
    decide(version, [quality(0.20)], run, 0, cooldown="6h")

    kept = decide(version, [quality(0.60)], run, 1, cooldown="6h")

    assert kept.retrain is False and not any("cool-down" in r for r in kept.reasons)


# ---------------------------------------------------------------------------
# any / all
# ---------------------------------------------------------------------------


def test_combine_any_and_all(version, tmp_path):
    reports = [quality(0.20), drift(0.10)]
    anyone = decide(version, reports, new_run(tmp_path / "any"), 0, combine="any", drift_windows=1)
    assert anyone.retrain is True

    both = decide(version, reports, new_run(tmp_path / "all"), 0, combine="all", drift_windows=1)
    assert both.retrain is False
    assert re.fullmatch(r"combine = all: quality holds but drift does not: quality-monitor: f1 0\.20 .*", both.reasons[0])
    assert any(r.startswith("drift-monitor: all figures within limits") for r in both.reasons)

    drifted = [quality(0.20), drift(1.40)]
    together = decide(version, drifted, new_run(tmp_path / "all2"), 0, combine="all", drift_windows=1)
    assert together.retrain is True
    assert [r.split(":")[0] for r in together.reasons] == ["quality-monitor"] * 2 + ["drift-monitor"]


def test_combine_all_needs_persistent_drift_too(version, run):
    first = decide(version, [quality(0.20), drift(1.40)], run, 0, combine="all", drift_windows=2)
    second = decide(version, [quality(0.21), drift(1.41)], run, 24, combine="all", drift_windows=2)

    assert first.retrain is False
    assert first.reasons[0].startswith("combine = all: quality holds but drift does not")
    assert any(r.startswith("drift on 1 of 2 required windows") for r in first.reasons)
    assert second.retrain is True


def test_combine_all_without_a_drift_report_keeps(version, run):
    """`all` means every switched-on condition: drift cannot hold when no monitor measured it."""
    decision = decide(version, [quality(0.20)], run, 0, combine="all")
    assert decision.retrain is False
    assert decision.reasons[0].startswith("combine = all: quality holds but drift does not")


# ---------------------------------------------------------------------------
# the state: across runs, where it lives, when it is damaged
# ---------------------------------------------------------------------------


def test_state_survives_across_two_runs(version, tmp_path):
    first = decide(version, [quality(0.20), drift(1.40)], new_run(tmp_path, "run-1"), 0, cooldown="6h")
    assert first.retrain is True

    path = state_path(tmp_path, "m")
    assert path == tmp_path / ".opsloop" / "policy" / "m.json"
    state = json.loads(path.read_text())
    assert state["retrains"] == ["2024-01-10T00:00:00Z"]
    assert [(w["time"], w["model"], w["drift"], w["retrain"]) for w in state["windows"]] == \
        [("2024-01-10T00:00:00Z", "m:1", True, True)]

    second = decide(version, [quality(0.21), drift(1.41)], new_run(tmp_path, "run-2"), 4, cooldown="6h")
    assert second.retrain is False and second.reasons[0] == "cool-down: last retrain 4h ago, 6h required"
    assert len(json.loads(path.read_text())["windows"]) == 2
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary file left beside it


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"windows": [{"time": "soon"}], "retrains": []}',
                                     '{"windows": [], "retrains": [3]}', "\udcff"])
def test_a_corrupt_state_warns_and_starts_afresh(version, run, caplog, content):
    path = state_path(run.workdir, "m")
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("utf-8", "surrogateescape"))

    with caplog.at_level(logging.WARNING, logger="opsloop"):
        decision = decide(version, [drift(1.40)], run, 0, drift_windows=2)

    assert decision.retrain is False
    assert decision.reasons[0].startswith("drift on 1 of 2 required windows")
    note = decision.reasons[-1]
    assert note.startswith(f"policy state {path}: ") and note.endswith("; starting from a fresh state"), note
    assert note in caplog.text
    assert json.loads(path.read_text())["windows"][0]["drift"] is True  # replaced by a valid state
    assert decide(version, [drift(1.41)], run, 24, drift_windows=2).retrain is True


def test_an_unreadable_and_unwritable_state_never_fails_the_decision(version, run):
    path = state_path(run.workdir, "m")
    path.mkdir(parents=True)  # a directory where the file should be

    first = decide(version, [quality(0.20)], run, 0, cooldown="1d")
    second = decide(version, [quality(0.21)], run, 1, cooldown="1d")

    assert first.retrain is second.retrain is True  # decided, without memory: no cool-down to remember
    assert "the guards will not remember this decision" in first.reasons[-1]


def test_an_unwritable_state_says_so(version, run, caplog):
    path = state_path(run.workdir, "m")
    path.mkdir(parents=True)

    with caplog.at_level(logging.WARNING, logger="opsloop"):
        kept = decide(version, [drift(1.40)], run, 0)

    assert kept.retrain is False
    assert any(r.startswith(f"policy state {path}: cannot be read (IsADirectoryError") for r in kept.reasons)
    assert any("could not be written" in r and "the guards will not remember this decision" in r
               for r in kept.reasons)
    assert "could not be written" in caplog.text


def test_entries_later_than_the_decision_are_left_out(version, run):
    decide(version, [quality(0.20)], run, 48)

    replayed = decide(version, [quality(0.21)], run, 0)

    assert replayed.retrain is True  # the retrain "in two days" does not cool this one down
    assert replayed.reasons and json.loads(state_path(run.workdir, "m").read_text())["retrains"] == \
        ["2024-01-10T00:00:00Z"]


def test_a_model_name_cannot_escape_the_state_directory(tmp_path):
    path = state_path(tmp_path, "../../etc/passwd")
    assert path.parent == tmp_path / ".opsloop" / "policy" and path.name.startswith("model-")


def test_without_a_run_the_policy_decides_without_memory(version):
    first = decide_retrain(version=version, reports=[drift(1.40)], options=Options(drift_windows=1), run=None)
    assert first.retrain is True
    again = decide_retrain(version=version, reports=[drift(1.40)], options=Options(drift_windows=1), run=None)
    assert again.retrain is True


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("cooldown", "6 hours", r"'cooldown' must be a duration such as \"30m\", \"6h\" or \"1d\""),
    ("cooldown", "-1h", "'cooldown' must be a duration"),
    ("retrain_period", "0", r"'retrain_period' must be a duration .*greater than 0"),
    ("combine", "either", r"'combine' must be in \('any', 'all'\)"),
    ("drift_windows", 0, "'drift_windows' must be >= 1"),
    ("max_retrains", 0, "'max_retrains' must be >= 1"),
    ("min_positives", -1, "'min_positives' must be >= 0"),
    ("now", "yesterday", "'now' must be an ISO 8601 time"),
    ("cooldown", 6, "expected str"),
])
def test_bad_guard_options_name_the_option(key, value, message):
    with pytest.raises(ConfigError) as info:
        opsloop.config.structure({key: value}, Options, section="retrain.threshold-policy", source=None)
    assert str(info.value).startswith(f"config error: [retrain.threshold-policy.{key}] "), str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_durations():
    parse = threshold_policy.parse_duration
    assert parse("90s") == timedelta(seconds=90) and parse("30m") == timedelta(minutes=30)
    assert parse("6h") == timedelta(hours=6) and parse("1.5d") == timedelta(hours=36)
    assert parse("2w") == timedelta(days=14) and parse("0") == timedelta(0)
    assert Options(cooldown="0").cooldown == "0"


def test_the_guards_come_through_the_plugin_manager(version, run):
    pm = PluginManager()
    pm.load("threshold-policy")
    options = opsloop.config.structure({"cooldown": "6h", "now": "2024-01-10T00:00:00Z"}, Options,
                                       section="retrain.threshold-policy", source=None)
    decision = pm.call("threshold-policy", "decide_retrain", version=version, reports=[quality(0.2)],
                       options=options, run=run)
    assert decision.retrain is True and state_path(run.workdir, "m").is_file()


# ---------------------------------------------------------------------------
# real reports from the real monitors on real ASD rows
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    return datasets.load("asd")


def rows(asd: pd.DataFrame, servers: list[str], start: str, end: str) -> Dataset:
    frame = asd[asd["entity"].isin(servers) & (asd["timestamp"] >= start) & (asd["timestamp"] < end)]
    return Dataset.from_frame(frame.reset_index(drop=True), target="label", time="timestamp", series="entity",
                              name=f"{'+'.join(servers)} {start}..{end}")


def test_real_drift_reports_persist_over_three_days(asd, version, run):
    """omi-9, the most drifted server, against omi-1's first week: drift every day, retrain on day 3."""
    pm = PluginManager()
    pm.load("drift-monitor")
    reference = rows(asd, ["omi-1"], "2024-01-01", "2024-01-08")
    decisions = []
    for day in (8, 9, 10):
        current = rows(asd, ["omi-9"], f"2024-01-{day:02d}", f"2024-01-{day + 1:02d}")
        report = pm.call("drift-monitor", "monitor", version=version, current=current, reference=reference,
                         predictions=None, options=None, run=run)
        report = MonitorReport(monitor="drift-monitor", model=report.model, rows=report.rows, metrics=report.metrics,
                               alerts=report.alerts)
        assert report.metrics["drift_max_psi"] > Options().max_drift_psi
        decisions.append(decide_retrain(version=version, reports=[report], run=run,
                                        options=Options(drift_windows=3, now=f"2024-01-{day + 1:02d}T00:00:00")))

    assert [d.retrain for d in decisions] == [False, False, True]
    assert decisions[0].reasons[0].startswith("drift on 1 of 3 required windows: drift-monitor: max PSI ")
    assert decisions[2].reasons[0].endswith("(on 3 consecutive windows, drift_windows 3)")


def test_real_quality_report_on_few_positives_is_held(asd, version, run):
    """A real quality-monitor report on a day of omi-2 (no positives after row 2160): recall judged on none."""
    from opsloop.plugins import quality_monitor

    current = rows(asd, ["omi-2"], "2024-01-12", "2024-01-13")
    predictions = pd.DataFrame({"prediction": [0] * len(current), "score": [0.1] * len(current)})
    report = quality_monitor.monitor(version=version, current=current, predictions=predictions, options=None)
    report = MonitorReport(monitor="quality-monitor", model=report.model, rows=report.rows, metrics=report.metrics,
                           baseline=report.baseline, alerts=report.alerts)
    assert report.metrics["positives"] < 20 and report.metrics["rows"] == 288

    decision = decide_retrain(version=version, reports=[report], run=run, options=Options(now=at(0)))

    assert decision.retrain is False
    assert re.match(r"quality-monitor: quality drop not counted: \d+ labelled positives < min_positives 20 \(",
                    decision.reasons[0]), decision.reasons
