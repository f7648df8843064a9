"""`[loop] recalibrate` (on by default): a cycle whose candidate lost the gate chooses production's alert
threshold again.

The loop scenario of test_loop.py (a real XGBoost version on two ASD
servers, its batch logged and labelled). The gate's margin is set out of
reach so the candidate loses; the `[alerting]` rule is the best F1, so the
rule's threshold on the gate window can be checked against scikit-learn.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opsloop.testing import invoke
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP as CONFIG  # noqa: E402
from conftest import labelled_loop_project  # noqa: E402

MODEL = CONFIG["project"]["name"]
LOSES = ("--set", "gate.champion-challenger.min_margin=0.99")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_loop_project(tmp_path_factory.mktemp("recalibrate"))


def _store(path: Path) -> Any:
    from opsloop import config
    from opsloop.session import Session

    return Session.open(config.read(workdir=path), sections=("store",)).open_store()


def _window_scores(path: Path, version: Any, start: str, end: str) -> tuple[np.ndarray, np.ndarray]:
    """Production's scores and the labels of the gate window's rows, from the source (every label is known)."""
    import pandas as pd
    from opsloop import config, data
    from opsloop.bundle import read_bundle
    from opsloop.runner import judge
    from opsloop.session import Session

    cfg = config.read(workdir=path)
    frame = data.load(cfg).frame.query(CONFIG["data"]["monitor"])
    times = pd.to_datetime(frame["timestamp"], utc=True)
    rows = frame[((times >= pd.Timestamp(start)) & (times <= pd.Timestamp(end))).to_numpy()]
    from opsloop.types import Dataset

    dataset = Dataset.from_frame(rows.reset_index(drop=True), target="label", time="timestamp", series="entity")
    model = read_bundle(Path(version.path), Session.open(cfg).plugins, ref=version.ref, digest=version.digest)
    judged, predictions = judge(model, dataset)
    return predictions["score"].to_numpy(dtype=float), judged.frame["label"].to_numpy(dtype=float)


def test_on_by_default_a_threshold_that_does_not_gain_enough_is_journaled_not_applied(project: Path,
                                                                                      tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(project, copy)
    with _store(copy) as store:
        before = store.resolve(f"{MODEL}@production")
    out = invoke(["loop", "--once", "--json", "--quiet", *LOSES], copy).assert_ok().json
    assert out["status"] == "rejected"
    r = out["recalibrated"]  # the default [alerting] rule, budget, chose a cut on the gate window
    assert r["rule"] == "budget" and r["old"]["value"] == before.threshold["value"]
    # on this window the budget's cut gains less than 0.05 F1 (it loses: 0.49 to 0.16 here), so it stays a note
    assert r["applied"] is False and r["new"]["f1"] < r["old"]["f1"] + 0.05 and "below" in r["why"]
    assert any("keeps its threshold" in note for note in out["notes"])
    with _store(copy) as store:
        assert [c.action for c in store.history(MODEL, "production")] == ["set"]
        assert store.resolve(f"{MODEL}@production").threshold["value"] == before.threshold["value"]


def test_off_a_lost_gate_leaves_the_threshold_unexamined(project: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(project, copy)
    out = invoke(["loop", "--once", "--json", "--quiet", *LOSES, "--set", "loop.recalibrate=false"],
                 copy).assert_ok().json
    assert out["status"] == "rejected" and out["recalibrated"] is None
    with _store(copy) as store:
        assert [c.action for c in store.history(MODEL, "production")] == ["set"]


def test_a_lost_gate_gives_production_the_rules_threshold_on_the_gate_window(project: Path) -> None:
    with _store(project) as store:
        before = store.resolve(f"{MODEL}@production")
    out = invoke(["loop", "--once", "--json", "--quiet", *LOSES, "--set", 'alerting.rule="f1"'],
                 project).assert_ok().json
    assert out["status"] == "rejected" and out["promoted"] is False
    r = out["recalibrated"]
    assert r["version"] == f"{MODEL}:1" and r["rule"] == "f1" and r["old"]["value"] == before.threshold["value"]
    window = out["window"].get("gate") or out["window"]["holdout"]
    scores, labels = _window_scores(project, before, window["start"], window["end"])
    assert len(labels) == r["rows"]
    # the figures are scikit-learn's F1 at each threshold on those rows
    for side in ("old", "new"):
        assert r[side]["f1"] == pytest.approx(f1_score(labels, scores >= r[side]["value"]), abs=1e-9)
    # the rule's threshold is the best F1 cut of production's own scores there
    best = max(f1_score(labels, scores >= s) for s in np.unique(scores))
    assert r["new"]["f1"] == pytest.approx(best, abs=1e-9)
    with _store(project) as store:
        after = store.resolve(f"{MODEL}@production")
        last = store.history(MODEL, "production")[-1]
    # on this window the rule's cut raises F1 well beyond the 0.05 needed (0.49 to 0.67 here): it is applied
    assert r["applied"] is True and r["new"]["f1"] >= r["old"]["f1"] + 0.05
    assert after.version == 1 and after.threshold["value"] == r["new"]["value"]
    assert last.action == "threshold" and "recalibrate" in last.reason and "F1" in last.reason
    assert any("new alert threshold" in reason for reason in out["reasons"])
    # scoring follows: the next cycle's production alerts at the new threshold
    with _store(project) as store:
        assert store.get(MODEL, 1).threshold["value"] == r["new"]["value"]
    # undone by hand as docs/loop.md says: the journal names the old threshold, promote --threshold restores it
    journal = invoke(["loop", "history", "--json"], project).assert_ok().json
    old = next(c["recalibrated"]["old"]["value"] for c in journal if (c.get("recalibrated") or {}).get("applied"))
    assert old == before.threshold["value"]
    invoke(["models", "promote", MODEL, "1", "--threshold", repr(old), "--reason", "back to validation's"],
           project).assert_ok()
    with _store(project) as store:
        assert store.get(MODEL, 1).threshold["value"] == old
        undo = store.history(MODEL, "production")[-1]
        assert undo.action == "threshold" and undo.reason.startswith("back to validation's; threshold")


def test_a_backtest_recalibrates_as_the_loop_does_and_says_so(project: Path) -> None:
    args = ["backtest", "--chunks", "2", "--quiet", *LOSES, "--set", 'alerting.rule="f1"']
    out = invoke([*args, "--json"], project).assert_ok().json
    applied = [c for c in out["chunks"] if (c["cycle"].get("recalibrated") or {}).get("applied")]
    assert applied and out["summary"]["recalibrations"] == len(applied)
    first = applied[0]["cycle"]["recalibrated"]
    assert first["new"]["f1"] >= first["old"]["f1"] + 0.05
    # the table names the change in the cycle's column, and the header counts it
    shown = " ".join(invoke(args, project).assert_ok().stdout.split())  # the terminal's width wraps lines
    assert f"{len(applied)} threshold change(s)" in shown
    assert f"threshold {first['old']['value']:.4g} -> {first['new']['value']:.4g}" in shown
