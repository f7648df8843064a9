"""The `champion-challenger` gate (issue 12, item 2) on real models scored on real rows.

Two XGBoost classifiers are trained on the embedded ASD data before
2024-01-10: a real one on all 19 metrics and a weak one on two of them. The
gate window is every server's last four days (13,824 rows), which neither
saw. The fast numpy metrics are checked against scikit-learn on that window,
on SMD machine-1-6 (raw float32 metrics as scores: many ties) and on
weighted resamples.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import opsloop.config
import pandas as pd
import pytest
from opsloop import ConfigError, Contender, DataError, Dataset, GateVerdict, ModelVersion, RunContext, datasets
from opsloop.manager import PluginManager
from opsloop.plugins import champion_gate
from opsloop.plugins.champion_gate import Options, gate
from opsloop.session import Session
from sklearn import metrics as skm

FEATURES = [f"m{i:02d}" for i in range(1, 20)]
WEAK = ["m01", "m02"]
WINDOW_START = "2024-01-12"


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    return datasets.load("asd")


@pytest.fixture(scope="module")
def window(asd) -> Dataset:
    frame = asd[asd["timestamp"] >= WINDOW_START].reset_index(drop=True)
    return Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="asd last 4 days")


@pytest.fixture(scope="module")
def predictions(asd, window) -> dict[str, pd.DataFrame]:
    """Scores of the real and the weak classifier on the window."""
    import xgboost as xgb

    train = asd[asd["timestamp"] < "2024-01-10"]
    out = {}
    for name, columns in (("good", FEATURES), ("weak", WEAK)):
        model = xgb.XGBClassifier(n_estimators=100, max_depth=4, learning_rate=0.1, n_jobs=2, random_state=0)
        model.fit(train[columns], train["label"])
        score = model.predict_proba(window.frame[columns])[:, 1]
        out[name] = pd.DataFrame({"prediction": (score >= 0.5).astype(int), "score": score})
    return out


def version(number: int, task: str = "classification") -> ModelVersion:
    return ModelVersion(name="asd-anomaly", version=number, created_at="2024-01-12T00:00:00Z", task=task,
                        path=Path("/nonexistent"))


def contenders(champion: pd.DataFrame, challenger: pd.DataFrame, task: str = "classification"):
    return (Contender(role="champion", version=version(1, task), predictions=champion),
            Contender(role="challenger", version=version(3, task), predictions=challenger))


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    return RunContext(run_id="r1", workdir=tmp_path, model_name="asd-anomaly", seed=7,
                      config=opsloop.config.read(workdir=tmp_path))


def judge(champion, challenger, window, run, task="classification", **options) -> GateVerdict:
    champ, chal = contenders(champion, challenger, task)
    return gate(champion=champ, challenger=chal, window=window, options=Options(**options), run=run)


@pytest.fixture(scope="module")
def better_wins(predictions, window) -> GateVerdict:
    """The real model challenging the weak one, default options, seed 7 (shared: the same call twice)."""
    run = RunContext(run_id="r1", workdir=Path("."), model_name="asd-anomaly", seed=7, config=None)
    return judge(predictions["weak"], predictions["good"], window, run)


# ---------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------


def test_the_better_model_wins_as_challenger(better_wins, predictions, window):
    verdict = better_wins
    y = window.frame["label"]

    assert verdict.winner == "challenger" and verdict.metric == "pr_auc"
    assert verdict.challenger == pytest.approx(skm.average_precision_score(y, predictions["good"]["score"]), abs=1e-9)
    assert verdict.champion == pytest.approx(skm.average_precision_score(y, predictions["weak"]["score"]), abs=1e-9)
    assert verdict.margin == pytest.approx(verdict.challenger - verdict.champion, abs=1e-12)
    assert verdict.margin > 0.03
    lo, hi = verdict.ci
    assert 0 < lo <= verdict.margin <= hi
    assert re.fullmatch(r"pr_auc 0\.\d{3} \(challenger asd-anomaly:3\) vs 0\.\d{3} \(champion asd-anomaly:1\) "
                        r"on 13,824 labelled rows, 2024-01-12 00:00 to 2024-01-15 23:55: margin \+0\.\d{3}, "
                        r"90% CI \[\+0\.\d{3}, \+0\.\d{3}\] over 20 time blocks: the challenger wins",
                        verdict.reasons[0]), verdict.reasons[0]
    assert len(verdict.reasons) == 1
    for role in ("champion", "challenger"):
        assert {f"{role}_{k}" for k in ("pr_auc", "roc_auc", "f1", "precision", "recall")} <= set(verdict.figures)
    assert verdict.figures["challenger_pr_auc"] == pytest.approx(verdict.challenger, abs=1e-9)


def test_swapped_the_champion_stays(better_wins, predictions, window, run):
    swapped = judge(predictions["good"], predictions["weak"], window, run)

    assert swapped.winner == "champion"
    assert swapped.margin == pytest.approx(-better_wins.margin, abs=1e-12)
    assert swapped.ci[1] < 0 and swapped.ci[0] <= swapped.margin <= swapped.ci[1]
    assert swapped.reasons[0].endswith("the champion stays: the challenger is worse")


def test_the_same_seed_gives_the_same_interval_and_another_seed_another(better_wins, predictions, window, run):
    again = judge(predictions["weak"], predictions["good"], window, run)
    other = judge(predictions["weak"], predictions["good"], window, RunContext(
        run_id="r2", workdir=run.workdir, model_name="asd-anomaly", seed=8, config=run.config))

    assert again.ci == better_wins.ci and again.reasons == better_wins.reasons
    assert other.ci != better_wins.ci and other.margin == better_wins.margin


def test_a_margin_below_min_margin_keeps_the_champion(better_wins, predictions, window, run):
    margin = better_wins.margin
    floor = round(margin + 0.05, 2)
    verdict = judge(predictions["weak"], predictions["good"], window, run, min_margin=floor)

    assert verdict.winner == "champion" and verdict.margin == pytest.approx(margin) and verdict.ci[0] > 0
    assert verdict.reasons[0].endswith(f"the champion stays: the margin is below min_margin {floor:.3f}")


def test_a_tie_needs_the_interval_unless_require_ci_is_false(predictions, window, run):
    """The same real scores for both: margin 0 in every resample, so the interval is [0, 0]."""
    same = predictions["good"]
    strict = judge(same, same.copy(), window, run, min_margin=0.0)
    lenient = judge(same, same.copy(), window, run, min_margin=0.0, require_ci=False)
    assert judge(same, same.copy(), window, run).reasons[0].endswith("the margin is below min_margin 0.0100")

    assert strict.margin == 0 and strict.ci == (0.0, 0.0)
    assert strict.winner == "champion"
    assert strict.reasons[0].endswith("the interval reaches 0 or below, so the improvement may be noise")
    assert lenient.winner == "challenger"
    assert lenient.reasons[0].endswith("the challenger wins (require_ci = false: the margin alone decides)")


@pytest.mark.parametrize("metric", ["roc_auc", "f1", "recall", "precision", "accuracy", "recall_at_precision"])
def test_every_classification_metric_is_scikit_learns_on_the_window(metric, predictions, window, run):
    y = window.frame["label"].to_numpy()
    verdict = judge(predictions["weak"], predictions["good"], window, run, metric=metric, precision=0.3,
                    resamples=100)

    for role, name in (("champion", "weak"), ("challenger", "good")):
        p = predictions[name]
        if metric == "recall_at_precision":
            precision, recall, _ = skm.precision_recall_curve(y, p["score"])
            expected = recall[precision >= 0.3].max()
        elif metric == "roc_auc":
            expected = skm.roc_auc_score(y, p["score"])
        else:
            scorer = {"f1": skm.f1_score, "recall": skm.recall_score, "precision": skm.precision_score,
                      "accuracy": skm.accuracy_score}[metric]
            expected = scorer(y, p["prediction"])
        assert getattr(verdict, role) == pytest.approx(expected, abs=1e-9), role
        assert verdict.figures[f"{role}_{metric}"] == pytest.approx(expected, abs=1e-9)
    lo, hi = verdict.ci
    assert lo <= verdict.margin <= hi


def test_the_fast_metrics_equal_scikit_learn_on_smd_and_on_weighted_resamples(smd_machine_1_6):
    """Raw SMD machine-1-6 metrics (float32, many ties) as scores, all rows and block-weighted rows."""
    frame = smd_machine_1_6()
    y = frame["label"].to_numpy(dtype=float)
    block = np.arange(len(y)) * 20 // len(y)
    weights = np.random.default_rng(0).integers(0, 3, size=(20, 3)).astype(float)
    weights[:, 0] = 1.0
    for column in ("m01", "m12", "m30"):
        score = frame[column].to_numpy(dtype=float)
        order = np.argsort(-score, kind="mergesort")
        ends = np.r_[np.flatnonzero(np.diff(score[order])), len(y) - 1]
        for name, sk in (("pr_auc", skm.average_precision_score), ("roc_auc", skm.roc_auc_score)):
            fast, usable = champion_gate._ranked(name, y[order], block[order], ends, weights, 0.9)
            for j in range(weights.shape[1]):
                expected = sk(y, score, sample_weight=weights[block, j])
                assert usable[j] and fast[j] == pytest.approx(expected, abs=1e-9), (column, name, j)


# ---------------------------------------------------------------------------
# regression: lower is better
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression(asd) -> tuple[Dataset, dict[str, pd.DataFrame]]:
    """m08 of the window predicted from the other 18 metrics, and by the training mean."""
    import xgboost as xgb

    columns = [c for c in FEATURES if c != "m08"]
    train = asd[asd["timestamp"] < "2024-01-10"]
    frame = asd[asd["timestamp"] >= WINDOW_START].drop(columns="label").reset_index(drop=True)
    model = xgb.XGBRegressor(n_estimators=100, max_depth=4, n_jobs=2, random_state=0).fit(train[columns],
                                                                                         train["m08"])
    window = Dataset.from_frame(frame, target="m08", time="timestamp", series="entity", name="asd m08")
    return window, {"good": pd.DataFrame({"prediction": model.predict(frame[columns])}),
                    "mean": pd.DataFrame({"prediction": np.full(len(frame), float(train["m08"].mean()))})}


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_lower_is_better_metrics_count_the_margin_the_right_way(metric, regression, run):
    window, p = regression
    y = window.frame["m08"].to_numpy(dtype=float)
    sk = {"rmse": lambda t, q: np.sqrt(skm.mean_squared_error(t, q)), "mae": skm.mean_absolute_error}[metric]

    wins = judge(p["mean"], p["good"], window, run, task="regression", metric=metric, resamples=200)
    stays = judge(p["good"], p["mean"], window, run, task="regression", metric=metric, resamples=200)

    assert wins.challenger == pytest.approx(sk(y, p["good"]["prediction"]), abs=1e-9)
    assert wins.champion == pytest.approx(sk(y, p["mean"]["prediction"]), abs=1e-9)
    assert wins.challenger < wins.champion
    assert wins.winner == "challenger" and wins.margin == pytest.approx(wins.champion - wins.challenger)
    assert 0 < wins.ci[0] <= wins.margin <= wins.ci[1]
    assert stays.winner == "champion" and stays.margin == pytest.approx(-wins.margin) and stays.ci[1] < 0
    assert "(lower is better)" in wins.reasons[0]
    assert wins.figures[f"challenger_{metric}"] == pytest.approx(wins.challenger, abs=1e-9)


# ---------------------------------------------------------------------------
# windows that cannot decide, and what the reasons say about the rows
# ---------------------------------------------------------------------------


def test_a_window_without_labels_is_a_data_error(predictions, window, run):
    unlabelled = window.derive(window.frame.assign(label=np.nan))
    with pytest.raises(DataError) as info:
        judge(predictions["weak"], predictions["good"], unlabelled, run)
    assert str(info.value) == ("gate window asd last 4 days (2024-01-12 00:00 to 2024-01-15 23:55, 13,824 rows) "
                               "has no labelled rows (13,824 rows, none labelled)")


def test_a_window_with_one_class_is_a_data_error(asd, run):
    """omi-2 on 2024-01-13: a real day without an incident."""
    frame = asd[(asd["entity"] == "omi-2") & (asd["timestamp"] >= "2024-01-13")
                & (asd["timestamp"] < "2024-01-14")].reset_index(drop=True)
    assert frame["label"].sum() == 0
    quiet = Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="omi-2 day 13")
    scores = pd.DataFrame({"prediction": 0, "score": frame["m01"].to_numpy(dtype=float)})
    with pytest.raises(DataError) as info:
        judge(scores, scores, quiet, run)
    assert str(info.value) == ("gate window omi-2 day 13 (2024-01-13 00:00 to 2024-01-13 23:55, 288 rows) has one "
                               "class only: 288 labelled rows, 0 positive (0 without a label); the metric needs "
                               "both classes")


def test_rows_without_a_label_are_left_out_and_counted(predictions, window, run):
    late = window.frame["timestamp"] >= "2024-01-15 12:00"  # labels not yet in
    partial = window.derive(window.frame.assign(label=window.frame["label"].where(~late)))
    verdict = judge(predictions["weak"], predictions["good"], partial, run, resamples=200)

    kept = ~late.to_numpy()
    expected = skm.average_precision_score(window.frame["label"][kept], predictions["good"]["score"][kept])
    assert verdict.challenger == pytest.approx(expected, abs=1e-9)
    assert f"on {kept.sum():,} labelled rows, 2024-01-12 00:00 to 2024-01-15 11:55" in verdict.reasons[0]
    assert f"{late.sum():,} rows without a label left out of the window's 13,824" in verdict.reasons


def test_without_a_time_column_blocks_follow_row_order(predictions, window, run):
    untimed = window.derive(window.frame.drop(columns="timestamp"), time=None)
    verdict = judge(predictions["weak"], predictions["good"], untimed, run, resamples=200)

    assert "on 13,824 labelled rows, rows 0 to 13,823: " in verdict.reasons[0]
    assert " over 20 row blocks: " in verdict.reasons[0]
    assert "blocks cut by row order: the window has no complete time column" in verdict.reasons


def test_a_score_metric_on_a_model_without_scores_names_the_version(predictions, window, run):
    no_scores = predictions["weak"][["prediction"]]
    with pytest.raises(DataError, match=r'^champion asd-anomaly:1 has no scores \(no "score" column\) for metric '
                                        r"pr_auc: choose one computed from predictions"):
        judge(no_scores, predictions["good"], window, run)
    at_cut = judge(no_scores, predictions["good"], window, run, metric="f1", resamples=100, require_ci=False)
    assert at_cut.winner == "challenger" and "champion_pr_auc" not in at_cut.figures
    assert at_cut.figures["champion_f1"] == pytest.approx(at_cut.champion, abs=1e-9)


# ---------------------------------------------------------------------------
# through the plugin manager and the config
# ---------------------------------------------------------------------------


def test_the_gate_hook_runs_through_the_plugin_manager(predictions, window, tmp_path, run):
    (tmp_path / "opsloop.toml").write_text('[gate]\nplugins = ["champion-challenger"]\n\n'
                                           '[gate.champion-challenger]\nconfidence = 0.8\nresamples = 200\n',
                                           encoding="utf-8")
    session = Session.open(opsloop.config.read(tmp_path / "opsloop.toml"), PluginManager(), sections=("gate",))
    options = session.options_for("gate", "champion-challenger")
    assert options == Options(confidence=0.8, resamples=200)
    champion, challenger = contenders(predictions["weak"], predictions["good"])

    verdict = session.plugins.call("champion-challenger", "gate", champion=champion, challenger=challenger,
                                   window=window, options=options, run=run)

    assert isinstance(verdict, GateVerdict) and verdict.winner == "challenger" and verdict.metric == "pr_auc"
    assert ", 80% CI [+0." in verdict.reasons[0]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("metric", '"auc"', r"'metric' must be in \('pr_auc', "),
    ("confidence", "1.5", "'confidence' must be < 1"),
    ("blocks", "1", "'blocks' must be >= 2"),
    ("resamples", "10", "'resamples' must be >= 100"),
    ("precision", "0", "'precision' must be > 0"),
    ("min_margin", "-0.1", "'min_margin' must be >= 0"),
    ("require_ci", '"yes"', "expected bool"),
    ("margin", "0.01", "unknown key"),
])
def test_bad_options_are_config_errors_naming_the_table_and_key(tmp_path, key, value, message):
    (tmp_path / "opsloop.toml").write_text(f'[gate]\nplugins = ["champion-challenger"]\n\n'
                                           f"[gate.champion-challenger]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Session.open(opsloop.config.read(tmp_path / "opsloop.toml"), sections=("gate",))
    assert f"opsloop.toml: [gate.champion-challenger.{key}] " in str(info.value), str(info.value)
    assert (info.value.section, info.value.key) == ("gate.champion-challenger", key)
    assert re.search(message, str(info.value)), str(info.value)
    if key == "margin":
        assert info.value.suggestion == "min_margin"
