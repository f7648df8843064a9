"""rolling-features and label-horizon on real ASD servers: only the past, one series at a time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, DataError, PluginCallError, Preprocessed, RunContext, datasets
from opsloop.manager import PluginManager

SERVERS = ["omi-1", "omi-3", "omi-9"]
COLUMNS = ["m01", "m04", "m12"]


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return datasets.load("asd")


@pytest.fixture(scope="module")
def asd(full) -> pd.DataFrame:
    """Two days of three servers."""
    frame = full[full["entity"].isin(SERVERS) & (full["timestamp"] < "2024-01-03")]
    return frame.reset_index(drop=True)


def _dataset(frame: pd.DataFrame, **kwargs) -> Dataset:
    kwargs = {"target": "label", "time": "timestamp", "series": "entity", **kwargs}
    return Dataset.from_frame(frame, name="rows", **kwargs)


@pytest.fixture
def run(tmp_path) -> RunContext:
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager()
    manager.load("rolling-features")
    manager.load("label-horizon")
    return manager


def step(pm, name, dataset, state, run, **options) -> Preprocessed:
    opts = pm.options_class(name)(**options)
    return pm.call(name, "preprocess", dataset=dataset, state=state, options=opts, run=run)


def roll(pm, dataset, run, **options) -> pd.DataFrame:
    return step(pm, "rolling-features", dataset, None, run, **{"columns": COLUMNS, **options}).dataset.frame


# -- rolling-features ---------------------------------------------------------


def test_features_match_pandas_groupby_rolling_and_an_explicit_rate(pm, asd, run):
    out = roll(pm, _dataset(asd), run, windows=[4, 12])
    assert out.columns.tolist() == [*asd.columns, *(f"{c}__{s}{w}" for c in COLUMNS for w in (4, 12)
                                                     for s in ("mean", "std", "min", "max", "rate"))]
    grouped = asd.groupby("entity", sort=False)[COLUMNS]
    for w in (4, 12):
        rolling = grouped.rolling(w, min_periods=1)
        for stat in ("mean", "min", "max", "std"):
            ref = rolling.std(ddof=0) if stat == "std" else getattr(rolling, stat)()
            ref = ref.reset_index(level=0, drop=True).sort_index()
            for c in COLUMNS:
                np.testing.assert_allclose(out[f"{c}__{stat}{w}"], ref[c], rtol=1e-6, atol=1e-7,
                                           err_msg=f"{c} {stat}{w}")
    # rate: (x[t] - x[t - w]) / w within the series; younger rows: change since the series' first row.
    for c in COLUMNS:
        for _, rows in asd.groupby("entity", sort=False):
            x = rows[c].to_numpy(dtype=np.float64)
            expected = [(x[i] - x[max(i - 12, 0)]) / (12 if i >= 12 else max(i, 1)) for i in range(len(x))]
            np.testing.assert_allclose(out.loc[rows.index, f"{c}__rate12"], expected, rtol=1e-6, atol=1e-7)


def test_missing_values_are_skipped_like_pandas_min_periods_1(pm, asd, run):
    frame = asd.copy()
    frame.loc[frame.index % 7 == 0, "m01"] = np.nan
    frame.loc[frame.index[100:130], "m04"] = np.nan  # a 30-step outage: longer than every window
    out = roll(pm, _dataset(frame), run, windows=[5])
    rolling = frame.groupby("entity", sort=False)[COLUMNS].rolling(5, min_periods=1)
    for stat in ("mean", "min", "max", "std"):
        ref = rolling.std(ddof=0) if stat == "std" else getattr(rolling, stat)()
        ref = ref.reset_index(level=0, drop=True).sort_index()
        for c in COLUMNS:
            np.testing.assert_allclose(out[f"{c}__{stat}5"], ref[c], rtol=1e-6, atol=1e-7, err_msg=f"{c} {stat}")
    assert out.loc[frame.index[110:130], "m04__mean5"].isna().all()  # nothing seen in the window
    assert out["m01__rate5"].isna().sum() > 0 and out["m12__rate5"].notna().all()


def test_scoring_the_last_steps_alone_gives_the_training_features_bit_for_bit(pm, full, run):
    """No history-dependent rounding: a request with max(windows) + 1 steps per server is enough."""
    frame = full[full["entity"].isin(SERVERS)].copy()
    frame.loc[frame.index % 11 == 0, "m04"] = np.nan
    data = _dataset(frame)
    fitted = step(pm, "rolling-features", data, None, run)
    state = json.loads(json.dumps(dict(fitted.state)))
    features = [c for c in fitted.dataset.frame.columns if "__" in c]
    for end in (13, 500, 2222, 4320):
        request = frame.groupby("entity", sort=False).nth(list(range(end - 13, end)))
        scored = step(pm, "rolling-features", _dataset(request, target=None), state, run).dataset.frame
        newest = request.groupby("entity", sort=False).tail(1).index
        pd.testing.assert_frame_equal(scored.loc[newest, features], fitted.dataset.frame.loc[newest, features],
                                      check_exact=True)


def test_series_shorter_than_the_window(pm, asd, run):
    short = asd.groupby("entity", sort=False).head(3)  # three steps per server, windows of 6 and 12
    out = roll(pm, _dataset(short), run)
    ref = short.groupby("entity", sort=False)[COLUMNS].expanding().mean().reset_index(level=0, drop=True)
    for c in COLUMNS:
        np.testing.assert_allclose(out[f"{c}__mean12"], ref.loc[short.index, c], rtol=1e-6)
    empty = roll(pm, _dataset(asd.iloc[:0]), run)
    assert len(empty) == 0 and "m01__rate12" in empty.columns


def test_first_rows_of_each_series_are_not_nan(pm, asd, run):
    out = roll(pm, _dataset(asd), run)
    firsts = asd.groupby("entity", sort=False).head(1).index
    features = [c for c in out.columns if "__" in c]
    assert out[features].notna().all().all()
    for c in COLUMNS:
        assert (out.loc[firsts, f"{c}__mean6"] == asd.loc[firsts, c]).all()
        assert (out.loc[firsts, f"{c}__std12"] == 0.0).all() and (out.loc[firsts, f"{c}__rate6"] == 0.0).all()


def test_a_later_row_never_changes_an_earlier_rows_features(pm, asd, run):
    before = roll(pm, _dataset(asd), run)
    omi1 = asd.index[asd["entity"] == "omi-1"]
    cut = omi1[300]
    changed = asd.copy()
    changed.loc[omi1[omi1 >= cut], COLUMNS] = np.float32(0.999)  # rewrite omi-1's future
    after = roll(pm, _dataset(changed), run)
    earlier = omi1[omi1 < cut]
    pd.testing.assert_frame_equal(after.loc[earlier], before.loc[earlier], check_exact=True)
    assert not after.loc[[cut], "m01__mean6"].equals(before.loc[[cut], "m01__mean6"])


def test_one_servers_rows_never_change_another_servers_features(pm, asd, run):
    before = roll(pm, _dataset(asd), run)
    changed = asd.copy()
    omi3 = changed["entity"] == "omi-3"
    changed.loc[omi3, COLUMNS] = changed.loc[omi3, COLUMNS].to_numpy()[::-1]  # scramble omi-3 entirely
    after = roll(pm, _dataset(changed), run)
    pd.testing.assert_frame_equal(after[~omi3], before[~omi3], check_exact=True)
    assert not after[omi3].equals(before[omi3])


def test_shuffled_rows_are_computed_in_time_order_and_returned_in_their_own_order(pm, asd, run):
    ordered = roll(pm, _dataset(asd), run)
    shuffled = asd.sample(frac=1.0, random_state=7)
    out = roll(pm, _dataset(shuffled), run)
    assert out.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(out.loc[ordered.index], ordered, check_exact=True)


def test_without_series_the_rows_are_one_series(pm, asd, run):
    omi1 = asd[asd["entity"] == "omi-1"]
    alone = roll(pm, _dataset(omi1), run)
    as_one = roll(pm, _dataset(omi1.drop(columns="entity"), series=None), run)
    pd.testing.assert_frame_equal(as_one, alone.drop(columns="entity"), check_exact=True)


def test_replay_rebuilds_the_stored_columns_and_keep_original_false(pm, asd, run):
    data = _dataset(asd)
    fitted = step(pm, "rolling-features", data, None, run, windows=[3], stats=["max", "rate"], keep_original=False)
    state = json.loads(json.dumps(dict(fitted.state)))
    assert state["columns"] == [f"m{j:02d}" for j in range(1, 20)]  # None resolved to every numeric feature
    assert fitted.dataset.frame.columns.tolist() == [
        "entity", "timestamp", "label", *(f"m{j:02d}__{s}3" for j in range(1, 20) for s in ("max", "rate"))]
    # Replay with other options: the state decides.
    replayed = step(pm, "rolling-features", data, state, run, windows=[6, 12])
    pd.testing.assert_frame_equal(replayed.dataset.frame, fitted.dataset.frame, check_exact=True)
    unlabelled = _dataset(asd.drop(columns="label"), target=None)
    scored = step(pm, "rolling-features", unlabelled, state, run).dataset.frame
    pd.testing.assert_frame_equal(scored, fitted.dataset.frame.drop(columns="label"), check_exact=True)


def test_unknown_or_non_numeric_columns_and_missing_series_are_data_errors(pm, asd, run):
    with pytest.raises(PluginCallError) as err:
        step(pm, "rolling-features", _dataset(asd), None, run, columns=["m01", "m77"])
    assert isinstance(err.value.cause, DataError) and "m77" in str(err.value.cause)
    with pytest.raises(PluginCallError, match="label"):  # the target is not a feature
        step(pm, "rolling-features", _dataset(asd), None, run, columns=["label"])
    state = step(pm, "rolling-features", _dataset(asd), None, run).state
    with pytest.raises(PluginCallError, match="entity"):
        step(pm, "rolling-features", _dataset(asd.drop(columns="entity"), series=None), state, run)


def test_all_of_asd(pm, full, run):
    """51,840 rows x 19 metrics x 2 windows x 5 statistics (190 features); speed: benchmarks/, not here."""
    out = step(pm, "rolling-features", _dataset(full), None, run).dataset.frame
    assert out.shape == (51_840, 22 + 190)
    assert (out.dtypes[[c for c in out.columns if "__" in c]] == np.float32).all()


# -- label-horizon ------------------------------------------------------------


def explicit(frame: pd.DataFrame, horizon: int) -> pd.Series:
    """The definition, one row at a time: a positive at this step or within `horizon` steps of the series."""
    out = pd.Series(0, index=frame.index, dtype="int8")
    for _, rows in frame.sort_values("timestamp", kind="stable").groupby("entity", sort=False):
        y = rows["label"].to_numpy()
        for i in range(len(y)):
            out[rows.index[i]] = int(y[i: i + horizon + 1].max() > 0)
    return out


@pytest.fixture(scope="module")
def labelled(full) -> pd.DataFrame:
    """600 steps of three servers around real incidents; omi-9's slice is the end of its series."""
    slices = {"omi-1": (600, 1200), "omi-3": (2100, 2700), "omi-9": (3720, 4320)}
    frame = pd.concat([full[full["entity"] == s].iloc[a:b] for s, (a, b) in slices.items()])
    assert (frame.groupby("entity")["label"].sum() > 0).all()
    return frame


@pytest.mark.parametrize("horizon", [1, 3, 12])
def test_label_horizon_equals_an_explicit_loop(pm, labelled, run, horizon):
    out = step(pm, "label-horizon", _dataset(labelled), None, run, horizon=horizon)
    assert out.state == {"horizon": horizon}
    expected = explicit(labelled, horizon)
    pd.testing.assert_series_equal(out.dataset.frame["label"], expected.rename("label"), check_exact=True)
    assert expected.sum() > labelled["label"].sum()  # early warning widens every incident
    features = [c for c in labelled.columns if c != "label"]
    pd.testing.assert_frame_equal(out.dataset.frame[features], labelled[features], check_exact=True)


def test_label_horizon_never_borrows_the_next_series_incident(pm, full, run):
    """A server's last rows stay 0 even when the next server starts inside an incident."""
    omi1 = full[full["entity"] == "omi-1"].iloc[:200]
    calm_tail = omi1[omi1["label"].rolling(20).max() == 0].index[-1]  # 20 calm steps end here
    tail = full.loc[: calm_tail][full.loc[: calm_tail, "entity"] == "omi-1"].tail(50)
    other = full[full["entity"] == "omi-9"]
    first_positive = other.index[other["label"] == 1][0]
    head = other.loc[first_positive:].head(50)
    frame = pd.concat([tail, head])
    out = step(pm, "label-horizon", _dataset(frame), None, run, horizon=12).dataset.frame["label"]
    assert (out.loc[tail.index[-12:]] == 0).all()
    pd.testing.assert_series_equal(out, explicit(frame, 12).rename("label"), check_exact=True)


def test_label_horizon_replay_uses_the_stored_horizon_and_passes_unlabelled_rows(pm, labelled, run):
    state = json.loads(json.dumps(dict(step(pm, "label-horizon", _dataset(labelled), None, run, horizon=5).state)))
    replayed = step(pm, "label-horizon", _dataset(labelled), state, run, horizon=40).dataset.frame
    pd.testing.assert_series_equal(replayed["label"], explicit(labelled, 5).rename("label"), check_exact=True)
    unlabelled = _dataset(labelled.drop(columns="label"), target=None)
    out = step(pm, "label-horizon", unlabelled, state, run)
    assert out.dataset is unlabelled and out.state == state


def test_label_horizon_orders_by_time_and_keeps_row_order(pm, labelled, run):
    shuffled = labelled.sample(frac=1.0, random_state=3)
    out = step(pm, "label-horizon", _dataset(shuffled), None, run, horizon=4).dataset.frame
    assert out.index.equals(shuffled.index)
    expected = explicit(labelled, 4).rename("label").sort_index()
    pd.testing.assert_series_equal(out["label"].sort_index(), expected, check_exact=True)


def test_label_horizon_unknown_labels_stay_unknown_unless_an_incident_is_ahead(pm, labelled, run):
    frame = labelled.assign(label=labelled["label"].astype("float64"))
    frame.iloc[::25, frame.columns.get_loc("label")] = np.nan
    out = step(pm, "label-horizon", _dataset(frame), None, run, horizon=6).dataset.frame["label"]
    known = explicit(frame.assign(label=frame["label"].fillna(0)), 6)
    unknown = frame["label"].isna()
    assert (out[unknown & (known == 1)] == 1).all()
    assert out[unknown & (known == 0)].isna().all()
    assert (out[~unknown] == known[~unknown]).all()


def test_label_horizon_needs_a_target_to_fit(pm, labelled, run):
    with pytest.raises(PluginCallError) as err:
        step(pm, "label-horizon", _dataset(labelled.drop(columns="label"), target=None), None, run)
    assert isinstance(err.value.cause, DataError) and "target" in str(err.value.cause)
