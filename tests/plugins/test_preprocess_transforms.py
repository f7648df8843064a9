"""impute, scale and clip on real ASD rows: training's statistics, applied to later periods."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, DataError, PluginCallError, Preprocessed, RunContext, datasets
from opsloop.manager import PluginManager

METRICS = [f"m{j:02d}" for j in range(1, 20)]


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    frame = datasets.load("asd")
    return frame[frame["entity"].isin(["omi-1", "omi-9", "omi-10"])].reset_index(drop=True)


def _dataset(frame: pd.DataFrame) -> Dataset:
    return Dataset.from_frame(frame, target="label", time="timestamp", series="entity", name="rows")


@pytest.fixture(scope="module")
def train(asd) -> Dataset:
    return _dataset(asd[asd["timestamp"] < "2024-01-08"].reset_index(drop=True))


@pytest.fixture(scope="module")
def later(asd) -> Dataset:
    return _dataset(asd[asd["timestamp"] >= "2024-01-08"].reset_index(drop=True))


@pytest.fixture
def run(tmp_path) -> RunContext:
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager()
    for name in ("impute", "scale", "clip"):
        manager.load(name)
    return manager


def step(pm, name, dataset, state, run, **options) -> Preprocessed:
    opts = pm.options_class(name)(**options)
    return pm.call(name, "preprocess", dataset=dataset, state=state, options=opts, run=run)


def stored(state) -> dict:
    return json.loads(json.dumps(dict(state)))


def blank(dataset: Dataset, column: str, every: int) -> Dataset:
    frame = dataset.frame.copy()
    frame.loc[frame.index % every == 0, column] = np.nan
    return dataset.derive(frame)


# -- impute -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["median", "mean"])
def test_impute_fills_later_gaps_with_the_training_statistic_not_the_new_one(pm, train, later, run, strategy):
    # A metric whose statistic moved between the periods, so that using the wrong one would show.
    column = next(c for c in METRICS
                  if np.float32(getattr(train.frame[c], strategy)()) != np.float32(getattr(later.frame[c], strategy)()))
    fitted = step(pm, "impute", blank(train, column, 11), None, run, strategy=strategy)
    state = stored(fitted.state)
    holey = blank(train, column, 11).frame[column].astype("float64")
    expected = np.float32(holey.median() if strategy == "median" else holey.mean())
    assert state["fill"][column] == float(expected)
    gaps = blank(later, column, 5)
    assert np.float32(getattr(gaps.frame[column].astype("float64"), strategy)()) != expected
    out = step(pm, "impute", gaps, state, run, strategy=strategy).dataset.frame
    filled = out.loc[gaps.frame[column].isna(), column]
    assert len(filled) > 100 and (filled == expected).all()
    assert out[column].dtype == np.float32 and not out[column].isna().any()
    kept = gaps.frame[column].notna()
    pd.testing.assert_series_equal(out.loc[kept, column], later.frame.loc[kept, column], check_exact=True)


def test_impute_constant_and_indicator_columns(pm, train, later, run):
    state = stored(step(pm, "impute", blank(train, "m03", 7), None, run, strategy="constant", fill_value=-1.0,
                        add_indicator=True).state)
    assert state["indicators"] == ["m03"]  # only columns with gaps at training get an indicator
    gaps = blank(blank(later, "m03", 4), "m08", 9)
    out = step(pm, "impute", gaps, state, run).dataset.frame
    assert out.columns.tolist() == [*later.frame.columns, "m03__missing"]
    assert out["m03__missing"].dtype == np.int8
    assert (out["m03__missing"] == gaps.frame["m03"].isna().astype("int8")).all()
    assert (out.loc[gaps.frame["m03"].isna(), "m03"] == -1.0).all()
    # m08 had no gaps at training, yet it is filled (with the constant too), without an indicator.
    assert (out.loc[gaps.frame["m08"].isna(), "m08"] == -1.0).all()


def test_impute_fills_columns_without_training_gaps_with_their_training_median(pm, train, later, run):
    state = stored(step(pm, "impute", train, None, run, add_indicator=True).state)
    assert state["indicators"] == []
    gaps = blank(later, "m08", 9)
    out = step(pm, "impute", gaps, state, run).dataset.frame
    assert out.columns.tolist() == later.frame.columns.tolist()
    assert (out.loc[gaps.frame["m08"].isna(), "m08"] == np.float32(train.frame["m08"].median())).all()


def test_impute_fills_text_features_with_the_most_frequent_training_value(pm, asd, run):
    frame = asd.copy()
    frame.loc[frame.index % 10 == 0, "entity"] = None
    data = Dataset.from_frame(frame, target="label", time="timestamp", name="no series")
    state = stored(step(pm, "impute", data, None, run).state)
    top = frame["entity"].value_counts().index[0]
    assert state["fill"]["entity"] == top
    out = step(pm, "impute", data, state, run).dataset.frame
    assert out["entity"].notna().all() and (out.loc[frame["entity"].isna(), "entity"] == top).all()
    assert out["entity"].dtype == frame["entity"].dtype


def test_impute_without_gaps_returns_the_rows_unchanged(pm, train, run):
    out = step(pm, "impute", train, None, run)
    assert out.dataset is train


def test_impute_entirely_missing_column_is_reported_and_left_alone(pm, train, run):
    data = train.derive(train.frame.assign(dead=np.float32(np.nan)))
    out = step(pm, "impute", data, None, run)
    assert out.issues == ('column "dead" is entirely missing in the training rows: left unfilled',)
    assert stored(out.state)["fill"]["dead"] is None and out.dataset.frame["dead"].isna().all()


def test_impute_replay_without_a_learned_column_names_it(pm, train, later, run):
    state = stored(step(pm, "impute", train, None, run).state)
    with pytest.raises(PluginCallError) as err:
        step(pm, "impute", later.derive(later.frame.drop(columns="m11")), state, run)
    assert isinstance(err.value.cause, DataError) and "m11" in str(err.value.cause)


# -- scale ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["standard", "minmax", "robust"])
def test_scale_uses_training_center_and_scale_on_later_rows(pm, train, later, run, method):
    state = stored(step(pm, "scale", train, None, run, method=method).state)
    x = train.frame[METRICS].astype("float64")
    if method == "standard":
        center, scale = x.mean(), x.std(ddof=0)
    elif method == "minmax":
        center, scale = x.min(), x.max() - x.min()
    else:
        center, scale = x.median(), x.quantile(0.75) - x.quantile(0.25)
    scale = scale.where(scale != 0, 1.0)
    np.testing.assert_allclose(pd.Series(state["center"]), center, rtol=1e-12)
    np.testing.assert_allclose(pd.Series(state["scale"]), scale, rtol=1e-12)
    out = step(pm, "scale", later, state, run, method=method).dataset.frame
    expected = ((later.frame[METRICS].astype("float64") - center) / scale).astype("float32")
    pd.testing.assert_frame_equal(out[METRICS], expected, check_exact=True)
    refit = step(pm, "scale", later, None, run, method=method).dataset.frame
    assert not np.allclose(refit[METRICS], out[METRICS])
    if method == "minmax":  # training rows land in [0, 1]
        fitted = step(pm, "scale", train, state, run).dataset.frame[METRICS]
        assert fitted.min().min() == 0.0 and fitted.max().max() == pytest.approx(1.0)


def test_scale_constant_column_is_divided_by_one(pm, train, run):
    data = train.derive(train.frame.assign(flat=np.float32(0.25)))  # a metric that never moves
    for method in ("standard", "minmax", "robust"):
        state = stored(step(pm, "scale", data, None, run, method=method).state)
        assert state["scale"]["flat"] == 1.0
        out = step(pm, "scale", data, state, run).dataset.frame
        assert (out["flat"] == 0.0).all() and out[METRICS].notna().all().all()


# -- clip -------------------------------------------------------------------------


def test_clip_bounds_are_training_quantiles_and_hold_later_outliers(pm, train, later, run):
    state = stored(step(pm, "clip", train, None, run, lower_quantile=0.01, upper_quantile=0.99).state)
    q = train.frame[METRICS].quantile([0.01, 0.99])
    assert state["lower"] == {c: float(q.loc[0.01, c]) for c in METRICS}
    assert state["upper"] == {c: float(q.loc[0.99, c]) for c in METRICS}
    frame = later.frame.copy()
    frame.loc[[3, 400], "m05"] = np.float32(7.5)  # a counter gone wild
    out = step(pm, "clip", later.derive(frame), state, run).dataset.frame
    assert (out.loc[[3, 400], "m05"] == np.float32(state["upper"]["m05"])).all()
    for c in METRICS:
        assert out[c].dtype == np.float32
        assert out[c].min() >= np.float32(state["lower"][c]) and out[c].max() <= np.float32(state["upper"][c])
    inside = (frame[METRICS] >= q.loc[0.01]) & (frame[METRICS] <= q.loc[0.99])
    assert (out[METRICS][inside] == frame[METRICS][inside]).sum().sum() == inside.sum().sum()


def test_clip_keeps_integer_columns_integer_and_missing_values_missing(pm, train, run):
    frame = train.frame.assign(count=(train.frame["m01"] * 1000).round().astype("int64"))
    frame.loc[frame.index % 13 == 0, "m04"] = np.nan
    data = train.derive(frame)
    out = step(pm, "clip", data, None, run, lower_quantile=0.05, upper_quantile=0.95)
    state = stored(out.state)
    assert isinstance(state["lower"]["count"], int) and isinstance(state["upper"]["count"], int)
    assert out.dataset.frame["count"].dtype == np.int64
    assert out.dataset.frame["m04"].isna().sum() == frame["m04"].isna().sum()
