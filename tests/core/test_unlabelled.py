"""`[data] unlabelled`: training rows without a label, on the embedded ASD data (issue 13, item 6).

The first days of two servers lose their labels (NaN), as history nobody
labelled would; each value of the option is checked on what the training
period becomes and on what validation judges.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from opsloop import config as config_mod
from opsloop import data as data_mod
from opsloop.errors import ConfigError, DataError
from opsloop.types import Reporter, RunContext

UNLABELLED_BEFORE = "2024-01-04"
TRAIN = "timestamp < '2024-01-08 12:00'"


def history() -> pd.DataFrame:
    """omi-1 and omi-9, the first three days without labels (float labels, NaN)."""
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"])].reset_index(drop=True)
    frame["label"] = frame["label"].astype("float64")
    frame.loc[frame["timestamp"] < UNLABELLED_BEFORE, "label"] = np.nan
    return frame


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unlabelled") / "history.parquet"
    history().to_parquet(path, index=False)
    return path


def read(source: Path, mode: str | None, **data: str) -> config_mod.Config:
    table = {"source": str(source), "target": "label", "time": "timestamp", "series": "entity",
             "train": TRAIN, "monitor": "timestamp >= '2024-01-08 12:00'", **data}
    if mode is not None:
        table["unlabelled"] = mode
    (source.parent / "opsloop.toml").write_text(tomli_w.dumps({"data": table}), encoding="utf-8")
    return config_mod.read(workdir=source.parent)


def periods(source: Path, mode: str | None, **data: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = read(source, mode, **data)
    train, monitor = data_mod.periods(data_mod.load(cfg), cfg)
    return train.frame, monitor.frame


def test_the_default_is_error_and_leaves_the_rows_as_they_are(source: Path) -> None:
    assert read(source, None).data.unlabelled == "error"
    train, monitor = periods(source, None)
    frame = history().query(TRAIN)
    assert len(train) == len(frame) and train["label"].isna().sum() == frame["label"].isna().sum() > 0


def test_normal_makes_them_label_0_in_the_training_period_only(source: Path) -> None:
    train, monitor = periods(source, "normal", monitor="timestamp >= '2024-01-02'")
    frame = history()
    before = frame.query(TRAIN)
    assert len(train) == len(before) and not train["label"].isna().any()
    assert int(train["label"].sum()) == int(before["label"].sum())  # the labelled positives stay
    unlabelled = (train["timestamp"] < UNLABELLED_BEFORE).to_numpy()
    assert (train["label"].to_numpy()[unlabelled] == 0).all()
    # the monitoring period's missing labels are labels not arrived yet: untouched
    assert monitor["label"].isna().sum() == frame.query("timestamp >= '2024-01-02'")["label"].isna().sum() > 0


def test_drop_leaves_them_out(source: Path) -> None:
    train, _ = periods(source, "drop")
    before = history().query(TRAIN)
    assert len(train) == int(before["label"].notna().sum())
    assert (train["timestamp"] >= UNLABELLED_BEFORE).all()


def test_keep_keeps_them_unlabelled(source: Path) -> None:
    train, _ = periods(source, "keep")
    before = history().query(TRAIN)
    assert len(train) == len(before) and train["label"].isna().sum() == before["label"].isna().sum()


def test_a_misspelt_value_is_a_config_error_with_the_closest_one(source: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read(source, "kep")
    text = str(caught.value)
    assert "[data.unlabelled]" in text and '"keep"' in text and "'normal'" in text


@pytest.mark.parametrize("mode", ["normal", "drop"])
def test_a_period_with_no_label_at_all_is_a_data_error(source: Path, mode: str) -> None:
    with pytest.raises(DataError) as caught:
        periods(source, mode, train=f"timestamp < '{UNLABELLED_BEFORE}'")
    text = str(caught.value)
    assert f'[data] unlabelled = "{mode}"' in text and "none of the 1,728 rows" in text and "'label'" in text


def test_normal_needs_a_0_1_target(source: Path) -> None:
    frame = history()
    frame["label"] = frame["label"] * 3
    path = source.parent / "threes.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(ConfigError) as caught:
        periods(path, "normal")
    assert "[data.unlabelled]" in str(caught.value) and "not 0/1" in str(caught.value)


# ---------------------------------------------------------------------------
# Validation judges the labelled rows only
# ---------------------------------------------------------------------------


def fit_forest(dataset):  # noqa: ANN001, ANN201 - the runner's `fit`, with the real trainer
    from opsloop import TrainedModel
    from sklearn.ensemble import IsolationForest

    from opsloop.plugins._skops_flavor import AnomalyLabels

    X = dataset.X
    forest = AnomalyLabels(IsolationForest(n_estimators=50, random_state=0).fit(X))
    return TrainedModel(estimator=forest, flavor="sklearn", task="anomaly", features=tuple(X.columns))


def run_context(cfg: config_mod.Config) -> RunContext:
    return RunContext(run_id="t", workdir=cfg.workdir, model_name="m", seed=0, config=cfg, reporter=Reporter(),
                      log=logging.getLogger("opsloop"))


@pytest.mark.parametrize("validator", ["kfold", "holdout"])
def test_keep_validation_scores_only_the_labelled_rows(source: Path, validator: str) -> None:
    import importlib

    plugin = importlib.import_module(f"opsloop.plugins.{validator}")
    cfg = read(source, "keep")
    train, _ = data_mod.periods(data_mod.load(cfg), cfg)
    report = plugin.validate(dataset=train, fit=fit_forest, options=plugin.Options(), run=run_context(cfg))
    labelled = train.frame["label"].notna().to_numpy()
    assert len(report.oof) and labelled[report.oof["row"].to_numpy()].all()
    judged = sum(f["rows_test"] - f["unlabelled_test"] for f in report.folds)
    assert judged == len(report.oof) and report.folds[0]["unlabelled_train"] > 0  # trained on them
    # each fold's figures are those of its labelled test rows, as scikit-learn computes them
    from sklearn.metrics import average_precision_score

    for number, fold in enumerate(report.folds):
        rows = report.oof[report.oof["fold"] == number]
        if rows["label"].nunique() == 2:
            assert fold["pr_auc"] == pytest.approx(average_precision_score(rows["label"], rows["score"]))
        assert fold["positives_test"] == rows["label"].sum()
    assert "unlabelled_test" not in report.mean  # counts are not averaged


@pytest.mark.parametrize("mode", ["error", "normal"])
def test_validation_refuses_rows_without_a_label_unless_keep(source: Path, mode: str) -> None:
    from opsloop.plugins import kfold

    cfg = read(source, mode)
    raw = data_mod.load(cfg)
    train = raw.derive(raw.frame.query(TRAIN).reset_index(drop=True))  # the rows before [data] unlabelled
    with pytest.raises(DataError) as caught:
        kfold.validate(dataset=train, fit=fit_forest, options=kfold.Options(), run=run_context(cfg))
    text = str(caught.value)
    assert "kfold: 1,728 of 4,320 rows" in text and "'label'" in text and "[data] unlabelled" in text


def test_keep_with_no_labelled_row_is_a_data_error(source: Path) -> None:
    from opsloop.plugins import kfold

    cfg = read(source, "keep", train=f"timestamp < '{UNLABELLED_BEFORE}'")
    train, _ = data_mod.periods(data_mod.load(cfg), cfg)
    with pytest.raises(DataError) as caught:
        kfold.validate(dataset=train, fit=fit_forest, options=kfold.Options(), run=run_context(cfg))
    assert "none of the 1,728 rows" in str(caught.value) and "select no validator" in str(caught.value)
