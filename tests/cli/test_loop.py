"""`opsloop loop`: monitor the log, decide, retrain, gate champion against challenger, promote, journal (issue 12).

One project for the module: a real XGBoost version trained on two ASD servers
(omi-1 and omi-9, five days)
(`opsloop run`, which puts it in production and logs the batch it scored to
the prediction log), then the true labels of those rows sent with `opsloop
feedback`. Each test works on its own copy. The policy's F1 floor is set so
that it asks for a retrain; the built-in `champion-challenger` gate judges
on the latest three days of the configured periods, which the candidate did
not train on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
from opsloop import MonitorReport, hookimpl
from opsloop.testing import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP as CONFIG  # noqa: E402 - the loop scenario, shared with test_reproduce.py
from conftest import labelled_loop_project  # noqa: E402

MODEL = CONFIG["project"]["name"]


def _store(path: Path) -> Any:
    from opsloop import config
    from opsloop.session import Session

    return Session.open(config.read(workdir=path), sections=("store",)).open_store()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with version 1 in production, its batch in the log, and the batch's true labels sent."""
    return labelled_loop_project(tmp_path_factory.mktemp("loop-project"))


@pytest.fixture
def project(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(trained, target)
    return target


def loop_once(path: Path, *args: str) -> Any:
    return invoke(["loop", "--once", "--json", "--quiet", *args], path)


def journal(path: Path) -> list[dict[str, Any]]:
    result = invoke(["loop", "history", "--json"], path).assert_ok()
    return result.json


def test_a_cycle_retrains_gates_and_promotes_a_winner_with_its_figures_in_the_history(project: Path) -> None:
    result = loop_once(project).assert_ok()
    out = result.json
    assert out["decision"] == "retrain"
    assert any("f1" in r and "min_f1 0.99" in r for r in out["reasons"])
    assert out["candidate"] == 3  # 2 is the candidate `opsloop run` registered on train + monitor
    gate = out["gate"]
    assert set(gate) >= {"metric", "champion", "challenger", "margin", "ci", "winner"}
    assert gate["metric"] == "pr_auc" and gate["winner"] == "challenger" and out["promoted"] is True
    assert gate["margin"] == pytest.approx(gate["challenger"] - gate["champion"])
    assert gate["ci"][0] <= gate["margin"] <= gate["ci"][1]
    # The gate's rows are the configured periods' last three days, which the candidate did not train on.
    assert out["window"]["holdout"]["start"] == "2024-01-13T00:00:00Z"
    assert out["window"]["holdout"]["end"] == "2024-01-15T23:55:00Z"
    assert out["window"]["training"]["end"] == "2024-01-12T23:55:00Z"
    assert out["window"]["holdout"]["rows"] == 2 * 3 * 288
    with _store(project) as store:
        assert store.alias(MODEL, "production") == 3
        change = store.history(MODEL, "production")[-1]
        version = store.get(MODEL, 3)
    assert (change.from_version, change.to_version) == (1, 3)
    assert "won the gate" in change.reason and f"{gate['challenger']:.3f}" in change.reason
    assert "margin" in change.reason and "CI" in change.reason
    # What the candidate trained on is in its lineage.
    training = version.lineage["training"]
    assert training["kind"] == "expanding" and training["end"] == "2024-01-12T23:55:00Z"
    assert training["rows"] == 2 * (5 + 3) * 288  # the [data] train period and the monitor period's first days
    assert training["holdout"]["rows"] == out["window"]["holdout"]["rows"] > 0
    assert version.lineage["parent"] == f"{MODEL}:1"
    entries = journal(project)
    assert len(entries) == 1
    assert entries[0]["status"] == "promoted" and entries[0]["candidate"] == 3
    assert entries[0]["gate"] == gate


def test_a_challenger_that_does_not_win_by_the_margin_leaves_production_alone(project: Path) -> None:
    out = loop_once(project, "--set", "gate.champion-challenger.min_margin=0.99").assert_ok().json
    assert out["status"] == "rejected" and out["decision"] == "retrain" and out["candidate"] == 3
    assert out["gate"]["winner"] == "champion" and out["promoted"] is False
    assert "min_margin" in out["reasons"][-1] and "production stays on asd-loop:1" in out["reasons"][-1]
    with _store(project) as store:
        assert store.alias(MODEL, "production") == 1
        assert store.alias(MODEL, "candidate") == 3  # registered, for a person to look at
        assert [c.to_version for c in store.history(MODEL, "production")] == [1]
    assert journal(project)[0]["status"] == "rejected"


def test_the_gate_leaves_out_the_rows_production_trained_on(project: Path) -> None:
    # A 12-day holdout reaches back into the [data] train period, which version 1 trained on.
    out = loop_once(project, "--set", 'loop.holdout="12d"').assert_ok().json
    assert out["window"]["holdout"]["start"] == "2024-01-04T00:00:00Z"
    gate_rows = out["window"]["gate"]
    assert gate_rows["start"] == "2024-01-10T00:00:00Z" and gate_rows["rows"] == 2 * 6 * 288
    assert any("those after the last one asd-loop:1 trained on (2024-01-05T23:55:00Z)" in n for n in out["notes"])
    assert f"on {gate_rows['rows']:,} labelled rows" in out["gate"]["reasons"][0]


def test_a_holdout_production_trained_on_cannot_decide(project: Path) -> None:
    # Version 2 (the candidate `opsloop run` retrained on both periods) is put in production and scores the
    # monitored rows: every held-out row is one it trained on.
    invoke(["models", "promote", MODEL, "2"], project).assert_ok()
    invoke(["run", "--json", "--quiet"], project).assert_ok()
    result = loop_once(project, "--set", "retrain.threshold-policy.max_retrains=100")  # two runs decided two
    assert result.exit_code == 1
    out = result.json
    assert out["production"] == f"{MODEL}:2" and out["status"] == "error" and out["promoted"] is False
    assert "lies within the rows asd-loop:2 trained on (up to 2024-01-15T23:55:00Z)" in out["error"]
    with _store(project) as store:
        assert store.alias(MODEL, "production") == 2


def test_a_cycle_whose_policy_keeps_production_retrains_nothing(project: Path) -> None:
    out = loop_once(project, "--set", "retrain.threshold-policy.min_f1=0.0").assert_ok().json
    assert out["decision"] == "keep" and out["candidate"] is None and out["gate"] is None
    assert out["promoted"] is False and out["reasons"]
    assert out["window"]["monitored"]["labelled"] == out["window"]["monitored"]["rows"] > 0
    with _store(project) as store:
        assert [v.version for v in store.versions(MODEL)] == [1, 2]
        assert store.alias(MODEL, "production") == 1
    assert [e["status"] for e in journal(project)] == ["keep"]


def test_a_store_without_production_is_one_line_journaled(tmp_path: Path) -> None:
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    result = loop_once(tmp_path)
    assert result.exit_code == 1
    out = result.json
    assert out["status"] == "error" and "opsloop run registers the first one" in out["error"]
    assert [e["status"] for e in journal(tmp_path)] == ["error"]
    text = invoke(["loop", "--once", "--quiet"], tmp_path)
    assert text.exit_code == 1 and "error: no model asd-loop" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr


def test_a_gate_window_with_one_class_keeps_production(project: Path) -> None:
    # The last hour holds no incident on either server: the window cannot decide.
    result = loop_once(project, "--set", 'loop.holdout="1h"')
    assert result.exit_code == 1
    out = result.json
    assert out["status"] == "error" and out["candidate"] == 3 and out["promoted"] is False
    assert "one class" in out["error"] and "champion-challenger" in out["error"]
    with _store(project) as store:
        assert store.alias(MODEL, "production") == 1


def test_a_candidate_failing_validation_gates_is_not_registered(project: Path) -> None:
    out = loop_once(project, "--set", 'validate.gates=["f1 >= 0.99"]').assert_ok().json
    assert out["status"] == "rejected" and out["decision"] == "retrain" and out["candidate"] is None
    assert any("failed [validate] gates" in r and "f1" in r for r in out["reasons"])
    with _store(project) as store:
        assert [v.version for v in store.versions(MODEL)] == [1, 2]
        assert store.alias(MODEL, "production") == 1
    assert journal(project)[0]["status"] == "rejected"


def test_a_loop_finding_the_lock_held_does_nothing(project: Path) -> None:
    with _store(project) as store:
        assert store.lock(MODEL, "someone@elsewhere:1", 3600).acquired
    out = loop_once(project).assert_ok().json
    assert out["status"] == "skipped" and "someone@elsewhere:1" in out["reasons"][0]
    with _store(project) as store:
        assert [v.version for v in store.versions(MODEL)] == [1, 2]
        assert store.cycles(MODEL) == []
        store.unlock(MODEL, "someone@elsewhere:1")
    assert loop_once(project).assert_ok().json["status"] == "promoted"


def test_unlock_releases_a_lock_left_by_a_dead_loop(project: Path) -> None:
    with _store(project) as store:
        assert store.lock(MODEL, "ops@gone:42/abc", 3600).acquired
    out = invoke(["loop", "unlock"], project).assert_ok().stdout
    assert "released the loop lock of asd-loop, held by ops@gone:42/abc" in out
    assert "was free" in invoke(["loop", "unlock"], project).assert_ok().stdout
    with _store(project) as store:
        assert store.lock(MODEL, "next-loop", 60).acquired


class FailOnce:
    """A monitor that raises on its first call and reports nothing wrong after."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def monitor(self, version: Any, current: Any) -> MonitorReport:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the metrics backend is down")
        return MonitorReport(rows=len(current), metrics={"rows": float(len(current))})


def test_a_failing_plugin_ends_its_cycle_journaled_and_the_next_one_runs(project: Path, register_plugin: Any) -> None:
    from datetime import timedelta

    from opsloop import config, history, loop
    from opsloop.session import Session

    flaky = FailOnce()
    register_plugin(flaky, "flaky-monitor")
    cfg = config.read(workdir=project, overrides=['monitor.plugins=["flaky-monitor"]'])
    session = Session.open(cfg)
    inputs = history.LogInputs(session=session, log=project / ".opsloop" / "serving" / "predictions.db")
    seen: list[Any] = []
    ran = loop.every(lambda: loop.open_cycle(session, inputs), timedelta(0), threading.Event(), seen.append,
                     cycles=2)
    assert ran == 2 and flaky.calls == 2
    assert seen[0].status == "error" and 'plugin "flaky-monitor"' in seen[0].error
    assert "the metrics backend is down" in seen[0].error
    assert seen[1].status == "keep" and seen[1].error is None
    assert [e["status"] for e in journal(project)] == ["keep", "error"]


BLOCKING_MONITOR = '''
import os, time
from pathlib import Path
from opsloop import MonitorReport, hookimpl

@hookimpl
def monitor(current):
    flag = Path(os.environ["BLOCK_DIR"])
    (flag / "monitoring").touch()
    while not (flag / "go").exists():
        time.sleep(0.05)
    return MonitorReport(rows=len(current), metrics={"f1": 0.0, "rows": float(len(current)),
                                                     "positives": 100.0})
'''


def test_sigterm_ends_the_cycle_after_the_step_under_way(project: Path, make_plugin_dist: Any) -> None:
    site = make_plugin_dist(dist="opsloop-blocking", modules={"opsloop_blocking": BLOCKING_MONITOR},
                            entry_points={"blocking-monitor": "opsloop_blocking"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "BLOCK_DIR": str(project)}
    command = [sys.executable, "-c", "from opsloop.cli import main; main()", "loop", "--every", "1h", "--json",
               "--quiet", "--set", 'monitor.plugins=["blocking-monitor"]']
    proc = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while not (project / "monitoring").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the loop never reached its monitor"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        (project / "go").touch()  # the monitor step finishes; the cycle must stop before deciding
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    cycle = json.loads(out)
    assert cycle["status"] == "stopped" and cycle["steps"][-1] == "monitor"
    assert "after monitor" in cycle["error"] and cycle["candidate"] is None
    assert "Traceback" not in err
    with _store(project) as store:
        assert [v.version for v in store.versions(MODEL)] == [1, 2]
        assert store.cycles(MODEL)[0].status == "stopped"
        assert store.lock(MODEL, "next-loop", 60).acquired  # released on the way out
    assert not list((project / ".opsloop" / "staging").glob("*"))


def test_loop_needs_once_or_every(project: Path) -> None:
    invoke(["loop"], project).assert_error("give --once")
    invoke(["loop", "--once", "--every", "10m"], project).assert_error("give --once")
    invoke(["loop", "--every", "ten"], project).assert_error("--every 'ten'")


def test_a_wrong_loop_option_is_one_line_naming_the_key(project: Path) -> None:
    invoke(["loop", "--once", "--set", 'loop.window="two weeks"'], project).assert_error(
        "[loop.window]", "'expanding'")
    invoke(["loop", "--once", "--set", 'loop.holdot="2d"'], project).assert_error(
        "[loop.holdot] unknown key", 'did you mean "holdout"')
    with _store(project) as store:
        assert store.cycles(MODEL) == []  # a config mistake stops before any cycle


def test_history_table_reads_the_journal(project: Path) -> None:
    loop_once(project).assert_ok()
    text = invoke(["loop", "history"], project).assert_ok().stdout
    assert "promoted" in text and "pr_auc" in text and "asd-loop:1" in text


def test_loop_help_does_not_import_the_heavy_libraries() -> None:
    code = ("import sys\nfrom opsloop.cli import invoke\ninvoke(['loop', '--help'])\n"
            "print(sorted(m for m in ('pandas', 'sklearn', 'xgboost', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "--every" in out


def test_monitored_rows_match_the_log(project: Path) -> None:
    out = loop_once(project, "--set", "retrain.threshold-policy.min_f1=0.0").assert_ok().json
    monitored = out["window"]["monitored"]
    labels = pd.read_csv(project / "labels.csv", parse_dates=["time"])
    start = pd.Timestamp(monitored["from"]).tz_convert(None)
    assert monitored["rows"] == int((labels["time"] >= start).sum())
    assert out["monitor"][0]["metrics"]["positives"] == float(labels.loc[labels["time"] >= start, "label"].sum())
