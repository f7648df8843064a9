"""Tests of the `$name` gate: opsloop's gate conformance suite, the rule on real labels, and a backtest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import $module
from opsloop import Contender, DataError, Dataset, ModelVersion, RunContext
from opsloop.config import read
from opsloop.testing import Project
from opsloop.testing.conformance import GateSuite
from opsloop.testing.data import SPLIT


class TestConformance(GateSuite, plugin="$name"):
    """A verdict with figures and reasons, the better model wins, one-line errors, a backtest's cycles."""


def contender(role: Any, number: int, score: np.ndarray, tmp_path: Path) -> Contender:
    version = ModelVersion(name="m", version=number, created_at="2024-01-09T00:00:00Z", path=tmp_path)
    return Contender(role=role, version=version,
                     predictions=pd.DataFrame({"prediction": (score >= 0.5).astype(int), "score": score}))


def window_and_scores(frame: pd.DataFrame) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The later days of the small set as a gate window, its labels, and scores that rank incidents higher."""
    later = frame[frame["timestamp"] >= SPLIT].reset_index(drop=True)
    y = later["label"].to_numpy()
    score = np.clip(y * 0.3 + np.random.default_rng(0).uniform(0, 0.7, len(y)), 0, 1)
    return Dataset.from_frame(later, target="label", time="timestamp", series="entity"), y, score


@pytest.mark.parametrize("missed", [0, 3, 10, 40])
def test_the_rule_on_the_later_days_labels(missed: int, small_telemetry: pd.DataFrame, tmp_path: Path) -> None:
    """The challenger scores `missed` incident rows 0 where the champion ranks them: it wins while its PR AUC
    (scikit-learn's average precision) is no more than max_loss 0.01 below the champion's."""
    from sklearn.metrics import average_precision_score

    window, y, champion = window_and_scores(small_telemetry)
    challenger = champion.copy()
    challenger[np.flatnonzero(y)[:missed]] = 0.0
    loss = average_precision_score(y, champion) - average_precision_score(y, challenger)
    run = RunContext(run_id="test", workdir=tmp_path, model_name="m", config=read(workdir=tmp_path))
    verdict = $module.gate(champion=contender("champion", 1, champion, tmp_path),
                           challenger=contender("challenger", 2, challenger, tmp_path), window=window,
                           options=$module.Options(max_loss=0.01), run=run)
    assert verdict.winner == ("challenger" if loss <= 0.01 else "champion"), (loss, verdict.reasons)
    assert verdict.margin == pytest.approx(-loss, abs=1e-12)
    assert verdict.champion == pytest.approx(average_precision_score(y, champion), abs=1e-12)
    assert "m:2" in verdict.reasons[0] and "m:1" in verdict.reasons[0]


def test_a_window_of_one_class_is_one_line(small_telemetry: pd.DataFrame, tmp_path: Path) -> None:
    quiet = small_telemetry[small_telemetry["label"] == 0].head(500).reset_index(drop=True)
    window = Dataset.from_frame(quiet, target="label", time="timestamp", series="entity")
    score = np.linspace(0, 1, len(quiet))
    run = RunContext(run_id="test", workdir=tmp_path, model_name="m", config=read(workdir=tmp_path))
    with pytest.raises(DataError, match="one class"):
        $module.gate(champion=contender("champion", 1, score, tmp_path),
                     challenger=contender("challenger", 2, score, tmp_path), window=window, options=None, run=run)


def test_a_backtest_follows_the_rule(opsloop_project: Callable[..., Project]) -> None:
    """A policy that always retrains: the gated cycle's winner is the one the rule names for its figures."""
    project = opsloop_project(small=True, config={
        "gate": {"plugins": ["$name"]},
        "retrain": {"plugins": ["threshold-policy"], "threshold-policy": {"min_f1": 0.99, "min_positives": 0}}})
    result: Any = project.run("backtest", "--chunks", "2", "--json").assert_ok().json
    verdicts = [c["cycle"]["gate"] for c in result["chunks"] if c["cycle"].get("gate")]
    assert verdicts
    for verdict in verdicts:
        assert verdict["gate"] == "$name" and verdict["metric"] == "pr_auc"
        expected = "challenger" if verdict["challenger"] >= verdict["champion"] - 0.01 else "champion"
        assert verdict["winner"] == expected, verdict
