"""schema-check on real ASD rows: what it learns, each kind of violation, warn and reject."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, DataError, PluginCallError, Preprocessed, RunContext, datasets
from opsloop.manager import PluginManager

NAME = "schema-check"


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    frame = datasets.load("asd")
    return frame[frame["entity"].isin(["omi-1", "omi-3"])].reset_index(drop=True)


def _dataset(frame: pd.DataFrame, series: str | None = "entity") -> Dataset:
    return Dataset.from_frame(frame, target="label", time="timestamp", series=series, name="rows")


@pytest.fixture(scope="module")
def train(asd) -> Dataset:
    return _dataset(asd[asd["timestamp"] < "2024-01-06"].reset_index(drop=True))


@pytest.fixture(scope="module")
def later(asd) -> pd.DataFrame:
    return asd[asd["timestamp"] >= "2024-01-06"].reset_index(drop=True)


@pytest.fixture
def run(tmp_path) -> RunContext:
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager()
    manager.load(NAME)
    return manager


def check(pm, dataset, state, run, **options) -> Preprocessed:
    opts = pm.options_class(NAME)(**options)
    return pm.call(NAME, "preprocess", dataset=dataset, state=state, options=opts, run=run)


@pytest.fixture
def state(pm, train, run) -> dict:
    return json.loads(json.dumps(dict(check(pm, train, None, run).state)))


def test_learns_columns_dtypes_ranges_and_missing_rates(state, train):
    frame = train.frame
    learned = state["columns"]
    assert list(learned) == [f"m{j:02d}" for j in range(1, 20)]  # features only: no entity, timestamp, label
    for c, info in learned.items():
        assert info["dtype"] == "float32" and info["kind"] == "numeric"
        assert info["min"] == float(frame[c].min()) and info["max"] == float(frame[c].max())
        assert info["missing_rate"] == 0.0
    assert state["time"] == "timestamp" and state["series"] == "entity"


def test_fit_reports_exactly_the_constant_and_the_empty_columns(pm, train, run):
    frame = train.frame.assign(dead=np.float32(np.nan))
    constant = [c for c in frame.columns if c.startswith("m") and frame[c].nunique(dropna=True) == 1]
    issues = check(pm, train.derive(frame), None, run).issues
    assert sorted(i.split('"')[1] for i in issues if "constant" in i) == sorted(constant)
    assert [i for i in issues if "entirely missing" in i] == ['column "dead" is entirely missing in the training rows']


def test_rows_like_training_pass_without_issues(pm, train, state, run):
    out = check(pm, train, state, run, on_violation="reject")
    assert out.issues == ()
    assert out.dataset is train  # rows are never changed


def test_missing_column_is_a_violation_and_reject_raises_naming_it(pm, train, state, run):
    rows = train.derive(train.frame.drop(columns="m05"))
    assert check(pm, rows, state, run).issues == ('missing column "m05"',)
    with pytest.raises(PluginCallError) as err:
        check(pm, rows, state, run, on_violation="reject")
    assert isinstance(err.value.cause, DataError)
    assert '"m05"' in str(err.value.cause)


def test_missing_series_column_is_a_violation(pm, train, state, run):
    rows = _dataset(train.frame.drop(columns="entity"))
    assert check(pm, rows, state, run).issues == ('missing column "entity" (the series column at training)',)


def test_extra_column_is_only_a_warning_even_when_rejecting(pm, train, state, run):
    rows = train.derive(train.frame.assign(m20=np.float32(0.5)))
    out = check(pm, rows, state, run, on_violation="reject")
    assert len(out.issues) == 1 and '"m20"' in out.issues[0] and "extra" in out.issues[0]


def test_wrong_dtype_kind_is_a_violation(pm, train, state, run):
    rows = train.derive(train.frame.assign(m02=train.frame["m02"].astype(str)))
    issues = check(pm, rows, state, run).issues
    assert len(issues) == 1 and issues[0].startswith('column "m02" has dtype') and "numeric" in issues[0]
    with pytest.raises(PluginCallError, match='"m02"'):
        check(pm, rows, state, run, on_violation="reject")


def test_an_integer_column_read_back_as_float_is_not_a_dtype_violation(pm, train, run):
    rows = train.derive(train.frame.assign(code=(train.frame["m01"] * 100).round().astype("int64")))
    state = check(pm, rows, None, run).state
    replay = rows.derive(rows.frame.assign(code=rows.frame["code"].astype("float64")))
    assert check(pm, replay, state, run).issues == ()


def test_out_of_range_values_beyond_the_tolerance_are_counted(pm, train, state, run, later):
    frame = train.frame.copy()
    lo, hi = state["columns"]["m03"]["min"], state["columns"]["m03"]["max"]
    span = hi - lo
    frame.loc[:2, "m03"] = np.float32(hi + 0.5 * span)  # 3 rows far above
    frame.loc[3, "m04"] = np.float32(state["columns"]["m04"]["max"] + 0.05 * span)  # inside the 10% band
    issues = check(pm, train.derive(frame), state, run).issues
    assert len(issues) == 1
    assert issues[0].startswith('column "m03": 3 of ') and "outside the training range" in issues[0]
    # A tighter tolerance catches the smaller excursion too.
    tight = check(pm, train.derive(frame), state, run, range_tolerance=0.0).issues
    assert {i.split('"')[1] for i in tight} == {"m03", "m04"}
    with pytest.raises(PluginCallError, match='"m03"'):
        check(pm, train.derive(frame), state, run, on_violation="reject")


def test_unseen_categories_of_a_text_feature(pm, asd, run):
    # Without a series column, `entity` is a text feature: a new server is an unseen category.
    train = _dataset(asd[asd["entity"] == "omi-1"], series=None)
    state = check(pm, train, None, run).state
    assert state["columns"]["entity"]["categories"] == ["omi-1"]
    new = _dataset(asd, series=None)
    issues = [i for i in check(pm, new, state, run).issues if '"entity"' in i]  # omi-3's metrics differ too
    assert issues == ["column \"entity\": 1 unseen category in 4,320 row(s): 'omi-3'"]
    with pytest.raises(PluginCallError, match="'omi-3'"):
        check(pm, new, state, run, on_violation="reject")


def test_categories_beyond_the_cap_are_not_stored_nor_checked(pm, asd, run):
    train = _dataset(asd, series=None)
    state = json.loads(json.dumps(dict(check(pm, train, None, run, max_categories=1).state)))
    assert state["columns"]["entity"]["categories"] is None
    assert state["columns"]["entity"]["n_categories"] == 2
    renamed = train.derive(train.frame.assign(entity="omi-99"))
    assert check(pm, renamed, state, run, max_categories=1).issues == ()


def test_missing_rate_far_above_training(pm, train, state, run):
    frame = train.frame.copy()
    frame.loc[frame.index % 2 == 0, "m04"] = np.nan  # half the rows
    frame.loc[frame.index % 50 == 0, "m06"] = np.nan  # 2%: within the default tolerance
    issues = check(pm, train.derive(frame), state, run).issues
    assert len(issues) == 1 and issues[0].startswith('column "m04" is missing in 50.0% of rows, 0.0% at training')
    strict = check(pm, train.derive(frame), state, run, missing_tolerance=0.01).issues
    assert {i.split('"')[1] for i in strict} == {"m04", "m06"}


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.1])
def test_real_later_period_is_checked_against_training(pm, state, later, run, tolerance):
    """omi-1 and omi-3 in their second week: every column that leaves the widened range is reported."""
    frame = later
    span = {c: i["max"] - i["min"] for c, i in state["columns"].items()}
    expected = {c for c, i in state["columns"].items()
                if ((frame[c] < i["min"] - tolerance * span[c]) | (frame[c] > i["max"] + tolerance * span[c])).any()}
    issues = check(pm, _dataset(frame), state, run, range_tolerance=tolerance).issues
    assert {i.split('"')[1] for i in issues} == expected
    assert tolerance == 0.1 or len(expected) >= 5  # real drift: the check has something to find


def test_target_absent_when_scoring_is_fine(pm, train, state, run):
    rows = Dataset.from_frame(train.frame.drop(columns="label"), time="timestamp", series="entity")
    assert check(pm, rows, state, run, on_violation="reject").issues == ()
