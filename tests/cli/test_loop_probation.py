"""`opsloop loop`: a promotion on probation, rolled back when the replaced version wins; and manual promotion.

The loop scenario of test_loop.py (a real XGBoost version on two ASD servers,
its batch logged, the true labels sent): the first cycle sees labelled rows
up to 2024-01-13 only (`[data] monitor` cut there, the log's labels left
out), promotes a candidate judged on 01-11 to 01-13, and the later cycles
see the rows up to 01-15, which neither version trained or was judged on.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from opsloop import GateVerdict, hookimpl
from opsloop.testing import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP as CONFIG  # noqa: E402
from conftest import labelled_loop_project  # noqa: E402

MODEL = CONFIG["project"]["name"]
BEFORE_14 = ('data.monitor="entity in [\'omi-1\', \'omi-9\'] and timestamp >= \'2024-01-10\' and '
             'timestamp < \'2024-01-14\'"')


def _store(path: Path) -> Any:
    from opsloop import config
    from opsloop.session import Session

    return Session.open(config.read(workdir=path), sections=("store",)).open_store()


def loop_once(path: Path, *args: str) -> Any:
    return invoke(["loop", "--once", "--json", "--quiet", *args], path)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`labelled_loop_project`, then a cycle on rows up to 01-13 that promoted version 3."""
    path = labelled_loop_project(tmp_path_factory.mktemp("probation"))
    out = loop_once(path, "--set", BEFORE_14, "--set", "loop.use_log=false").assert_ok().json
    assert out["status"] == "promoted" and out["candidate"] == 3, out["reasons"]
    assert out["window"]["holdout"]["end"] == "2024-01-13T23:55:00Z"
    assert out["probation"] is None
    return path


@pytest.fixture
def project(promoted: Path, tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(promoted, target)
    return target


def test_a_promotion_waits_for_its_probation_then_is_judged_once(project: Path) -> None:
    # Two days of labelled rows (01-14, 01-15) have come since; a 3-day probation waits for more.
    waiting = loop_once(project, "--set", 'loop.probation="3d"', "--set", "retrain.act=false").assert_ok().json
    p = waiting["probation"]
    assert p["version"] == f"{MODEL}:3" and p["against"] == f"{MODEL}:1" and p["outcome"] == "waiting"
    assert p["since"] == "2024-01-13T23:55:00Z" and p["rows"] == 2 * 2 * 288
    assert any("waiting for 3d of labelled rows after 2024-01-13T23:55:00Z" in n for n in waiting["notes"])

    judged = loop_once(project, "--set", "retrain.act=false").assert_ok().json
    p = judged["probation"]
    assert p["outcome"] in ("passed", "rolled back") and p["until"] == "2024-01-15T23:55:00Z"
    gate = p["gates"][0]
    assert gate["gate"] == "champion-challenger" and gate["metric"] == "pr_auc"
    assert gate["champion"] is not None and gate["challenger"] is not None
    # the previous version is the challenger: it rolls back exactly when it wins
    assert (p["outcome"] == "rolled back") == (gate["winner"] == "challenger")
    with _store(project) as store:
        now = store.alias(MODEL, "production")
        last = store.history(MODEL, "production")[-1]
    if p["outcome"] == "rolled back":
        assert judged["status"] == "rolled back" and now == 1 and last.action == "rollback"
    else:
        assert judged["status"] == "keep" and now == 3 and last.action == "set"
        assert any(f"probation of {MODEL}:3" in n and "passed" in n for n in judged["notes"])

    # judged once: the next cycle does not judge it again
    again = loop_once(project, "--set", "retrain.act=false").assert_ok().json
    assert again["probation"] is None
    history = invoke(["loop", "history", "--json"], project).assert_ok().json
    assert [e["probation"]["outcome"] if e.get("probation") else None for e in history][:3] == \
        [None, p["outcome"], "waiting"]


class PreferPrevious:
    """A team's own gate: the challenger wins unless its PR AUC is lower than the champion's by more than 0.5."""

    @hookimpl
    def gate(self, champion: Any, challenger: Any, window: Any) -> GateVerdict:
        from sklearn.metrics import average_precision_score

        from opsloop.errors import DataError

        labels = window.frame[window.target].to_numpy()
        if len(set(labels.tolist())) < 2:  # as the built-in gate: PR AUC needs both classes
            raise DataError(f"the window holds one class only ({len(labels):,} rows)")
        ours, theirs = (average_precision_score(labels, c.predictions["score"]) for c in (challenger, champion))
        winner = "challenger" if ours >= theirs - 0.5 else "champion"
        return GateVerdict(winner=winner, metric="pr_auc", champion=theirs, challenger=ours, margin=ours - theirs,
                           reasons=(f"challenger {ours:.3f} against {theirs:.3f}, tolerance 0.5",))


def test_a_replaced_version_that_wins_its_probation_rolls_production_back(project: Path,
                                                                         register_plugin: Any) -> None:
    register_plugin(PreferPrevious(), "prefer-previous")
    out = loop_once(project, "--set", 'gate.plugins=["prefer-previous"]').assert_ok().json
    assert out["status"] == "rolled back" and out["promoted"] is False and out["candidate"] is None
    assert out["production"] == f"{MODEL}:1"
    p = out["probation"]
    assert p["outcome"] == "rolled back" and p["gates"][0]["winner"] == "challenger"
    assert "probation" in out["reasons"][0] and f"from {MODEL}:3 to {MODEL}:1" in out["reasons"][0]
    with _store(project) as store:
        assert store.alias(MODEL, "production") == 1
        last = store.history(MODEL, "production")[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", 3, 1)
    assert "probation" in last.reason and f"{p['gates'][0]['challenger']:.3f}" in last.reason
    # a rolled-back production is not on probation, and the cycle after it runs as usual
    after = loop_once(project, "--set", 'gate.plugins=["prefer-previous"]', "--set", "retrain.act=false")
    assert after.assert_ok().json["probation"] is None
    shown = invoke(["loop", "history"], project).assert_ok().stdout
    assert "rolled back" in shown


def test_probation_off_and_a_promotion_by_hand_are_not_judged(project: Path) -> None:
    off = loop_once(project, "--set", 'loop.probation="off"', "--set", "retrain.act=false").assert_ok().json
    assert off["probation"] is None
    # a person moves production away and back: 3 is now production by their hand, not the loop's
    invoke(["models", "promote", MODEL, "2", "--reason", "trying 2"], project).assert_ok()
    invoke(["models", "promote", MODEL, "3", "--reason", "checked by hand"], project).assert_ok()
    by_hand = loop_once(project, "--set", "retrain.act=false").assert_ok().json
    assert by_hand["probation"] is None


def test_manual_promotion_leaves_the_winner_waiting_for_a_person(tmp_path: Path) -> None:
    path = labelled_loop_project(tmp_path / "manual", {**CONFIG, "loop": {**CONFIG["loop"], "promote": "manual"}})
    out = loop_once(path, "--set", BEFORE_14, "--set", "loop.use_log=false").assert_ok().json
    assert out["status"] == "waiting" and out["promoted"] is False and out["candidate"] == 3
    assert out["gate"]["winner"] == "challenger"
    assert f"opsloop models promote {MODEL} 3" in out["reasons"][-1]
    with _store(path) as store:
        assert store.alias(MODEL, "production") == 1 and store.alias(MODEL, "candidate") == 3
        assert [c.to_version for c in store.history(MODEL, "production")] == [1]


@pytest.mark.parametrize(("key", "value", "words"), [
    ("promote", '"automatic"', ["'promote' must be one of 'auto', 'manual'", '"auto"']),
    ("probation", '"soon"', ["'probation' must be a duration", "or 'off'"]),
    ("recalibrate", '"yes"', ["expected bool", "'yes'"]),
])
def test_a_wrong_promote_or_probation_is_one_line(project: Path, key: str, value: str, words: list[str]) -> None:
    result = loop_once(project, "--set", f"loop.{key}={value}")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and f"[loop.{key}]" in line and all(w in line for w in words), line


def test_a_backtest_replays_probation_and_scores_with_the_version_rolled_back_to(tmp_path: Path,
                                                                                register_plugin: Any) -> None:
    """The backtest runs the loop's own cycles, probation included: with a gate that lets the challenger win
    unless it is far worse, every candidate is promoted and, a day of rows later, rolled back (the replaced
    version is then the challenger); the chunk after a rollback is scored by the version rolled back to."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_backtest import CONFIG as BACKTEST

    register_plugin(PreferPrevious(), "prefer-previous")
    path = tmp_path / "bt"
    path.mkdir()
    config = {**BACKTEST, "gate": {"plugins": ["prefer-previous"]}, "loop": {"holdout": "1d", "probation": "1d"}}
    (path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    out = invoke(["backtest", "--chunks", "3", "--json"], path).assert_ok().json
    chunks, summary = out["chunks"], out["summary"]
    statuses = [c["cycle"]["status"] for c in chunks]
    assert "promoted" in statuses and "rolled back" in statuses, statuses
    assert summary["rollbacks"] == statuses.count("rolled back") >= 1
    for before, after in zip(chunks, chunks[1:], strict=False):
        cycle = before["cycle"]
        if cycle["status"] == "rolled back":
            probation = cycle["probation"]
            assert probation["outcome"] == "rolled back" and probation["gates"][0]["winner"] == "challenger"
            assert after["models"]["loop"] == probation["against"] != probation["version"]
        elif cycle["promoted"]:
            assert after["models"]["loop"] == f"{BACKTEST['project']['name']}:{cycle['candidate']}"
