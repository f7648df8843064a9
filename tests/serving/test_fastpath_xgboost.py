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
