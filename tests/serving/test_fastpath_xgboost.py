"""xgboost's fast predict calls the booster's C predict directly: the numbers of `inplace_predict`, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from opsloop.plugins.xgboost_trainer import dense_predict


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob", "reg:squarederror", "binary:logitraw"])
def test_dense_predict_gives_inplace_predicts_numbers(objective: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 23)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    y = rng.integers(0, 3, len(x)) if objective.startswith("multi") else (x[:, 0] > 0.3).astype(int)
    cls = xgb.XGBRegressor if objective.startswith("reg") else xgb.XGBClassifier
    model = cls(n_estimators=20, max_depth=4, objective=objective, n_jobs=1, early_stopping_rounds=3)
    model.fit(x[:500], y[:500], eval_set=[(x[500:], y[500:])], verbose=False)
    booster, rounds = model.get_booster(), model._get_iteration_range(None)
    predict = dense_predict(booster, rounds, model.missing)
    for rows in (x[:1], x[3:4], x[:17], x, x[:, :][::2], x.astype(np.float64)[:5]):  # strided, float64: fallback
        want = booster.inplace_predict(rows, iteration_range=rounds, missing=model.missing, validate_features=False)
        got = predict(rows)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=True)
    got = predict(np.empty((0, 23), dtype=np.float32))  # no rows: inplace_predict's answer
    assert got.shape == booster.inplace_predict(np.empty((0, 23), dtype=np.float32), iteration_range=rounds).shape


def test_dense_predict_raises_xgboosts_error_for_a_wrong_width() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    model = xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(x, (x[:, 0] > 0).astype(int))
    predict = dense_predict(model.get_booster(), (0, 0), np.nan)
    with pytest.raises(xgb.core.XGBoostError):
        predict(np.ones((1, 4), dtype=np.float32))


def _fit(objective: str, seed: int = 7, **params):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 23)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    if objective.startswith("multi"):
        y = rng.integers(0, 3, len(x))
    elif objective.startswith("reg:") and objective != "reg:logistic":
        y = np.nan_to_num(x[:, 1]) * 3 + 5 + rng.normal(size=len(x))
    else:
        y = (np.nan_to_num(x[:, 0]) + 0.3 * rng.normal(size=len(x)) > 0.3).astype(int)
    cls = xgb.XGBRegressor if objective.startswith("reg") else xgb.XGBClassifier
    model = cls(objective=objective, n_jobs=1, **{"n_estimators": 30, "max_depth": 4, **params})
    if "early_stopping_rounds" in params:
        model.fit(x[:500], y[:500], eval_set=[(x[500:], y[500:])], verbose=False)
    else:
        model.fit(x, y)
    return model, x


@pytest.mark.parametrize(("objective", "params"), [
    ("binary:logistic", {}),
    ("binary:logistic", {"max_depth": 9, "grow_policy": "lossguide", "max_leaves": 40, "n_estimators": 60}),
    ("binary:logistic", {"early_stopping_rounds": 3, "n_estimators": 200}),
    ("reg:logistic", {}),
    ("binary:logitraw", {}),
    ("reg:squarederror", {}),
    ("reg:absoluteerror", {}),
])
def test_walking_the_trees_gives_the_c_predicts_numbers_bit_for_bit(objective: str, params: dict) -> None:
    from opsloop.plugins.xgboost_trainer import WALK_ROWS, tree_predict, walked_predict

    model, x = _fit(objective, **params)
    booster, rounds = model.get_booster(), model._get_iteration_range(None)
    walk, reason = tree_predict(booster, rounds)
    assert walk is not None, reason
    dense = dense_predict(booster, rounds, model.missing)
    predict = walked_predict(booster, rounds, model.missing, dense)
    assert predict is not dense  # the walk passed its own check against the C predict
    want = booster.inplace_predict(x, iteration_range=rounds, missing=model.missing, validate_features=False)
    one_by_one = np.concatenate([predict(x[i:i + 1]) for i in range(len(x))])
    assert one_by_one.dtype == want.dtype
    assert np.array_equal(one_by_one, want)
    assert np.array_equal(np.concatenate([walk(x[i:i + WALK_ROWS]) for i in range(0, len(x), WALK_ROWS)]), want)
    assert np.array_equal(predict(x), want)  # a batch larger than WALK_ROWS: the C predict
    assert (np.isnan(x).any(axis=1)).sum() > 100  # the rows went through missing-value branches too


def test_the_walk_is_not_used_where_it_does_not_cover_the_model(caplog: pytest.LogCaptureFixture) -> None:
    from opsloop.plugins.xgboost_trainer import tree_predict, walked_predict

    model, _ = _fit("multi:softprob")
    assert tree_predict(model.get_booster(), (0, 0)) == (None, "objective 'multi:softprob'")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    dart = xgb.XGBClassifier(booster="dart", n_estimators=5, n_jobs=1).fit(x, y)
    assert tree_predict(dart.get_booster(), (0, 0)) == (None, "booster 'dart'")
    import pandas as pd

    frame = pd.DataFrame({"a": x[:, 0], "c": pd.Categorical(rng.choice(["p", "q", "r"], len(x)))})
    cats = xgb.XGBClassifier(n_estimators=5, n_jobs=1, enable_categorical=True, tree_method="hist")
    cats.fit(frame, (frame["c"] == "q").astype(int))
    assert tree_predict(cats.get_booster(), (0, 0)) == (None, "categorical splits")
    plain = xgb.XGBClassifier(n_estimators=5, n_jobs=1, missing=0.0).fit(x, y)
    dense = dense_predict(plain.get_booster(), (0, 0), 0.0)
    with caplog.at_level("DEBUG", logger="opsloop"):
        assert walked_predict(plain.get_booster(), (0, 0), 0.0, dense) is dense  # only NaN is missing to the walk
    assert "missing = 0.0" in caplog.text


def test_a_walk_that_disagrees_with_the_c_predict_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    """The check before use: the C predict's numbers one float32 step away (as another expf would give)."""
    from opsloop.plugins.xgboost_trainer import walked_predict

    model, x = _fit("binary:logistic")
    booster, rounds = model.get_booster(), model._get_iteration_range(None)
    exact = dense_predict(booster, rounds, model.missing)

    def nudged(rows: np.ndarray) -> np.ndarray:
        p = exact(rows)
        return np.where(np.arange(len(p)) == len(p) // 2, np.nextafter(p, np.float32(1)), p)

    with caplog.at_level("DEBUG", logger="opsloop"):
        assert walked_predict(booster, rounds, model.missing, nudged) is nudged
    assert "differ from the C predict" in caplog.text
