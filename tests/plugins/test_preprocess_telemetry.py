"""rolling-features (windows in rows and in time) and label-horizon on real ASD servers: only the past, one series
at a time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, DataError, PluginCallError, Preprocessed, RunContext, datasets
from opsloop.errors import ConfigError
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


# -- rolling-features: windows in time ("1h", "15min"; issue 13, item 3) ------------
#
# Checked against pandas' own time-based `rolling`, against windows in rows where the two must agree, and
# against the explicit definition of the rate, on rows with gaps and missing values.


@pytest.fixture(scope="module")
def gappy(asd) -> pd.DataFrame:
    """The same rows with 30% of the steps gone (gaps of one to several steps) and some values missing."""
    rng = np.random.default_rng(3)
    frame = asd[rng.random(len(asd)) > 0.3].copy()
    frame.loc[frame.index % 9 == 0, "m01"] = np.nan
    omi3 = frame.index[frame["entity"] == "omi-3"]
    frame = frame.drop(omi3[200:260])  # a long outage: longer than every window
    return frame


def test_an_hour_on_five_minute_steps_is_twelve_rows_bit_for_bit(pm, asd, run):
    out = roll(pm, _dataset(asd), run, windows=[12, "1h"])
    for c in COLUMNS:
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_array_equal(out[f"{c}__{stat}1h"], out[f"{c}__{stat}12"], err_msg=f"{c} {stat}")
        # rate: per row for a window in rows, per second for a duration
        np.testing.assert_allclose(out[f"{c}__rate1h"].astype(np.float64),
                                   out[f"{c}__rate12"].astype(np.float64) * 12 / 3600, rtol=1e-6, atol=1e-9)


def test_windows_in_time_match_pandas_time_rolling_across_gaps_and_missing_values(pm, gappy, run):
    out = roll(pm, _dataset(gappy), run, windows=["15min", "1h"])
    indexed = gappy.set_index("timestamp")
    for window in ("15min", "1h"):
        rolling = indexed.groupby("entity", sort=False)[COLUMNS].rolling(window, min_periods=1)
        for stat in ("mean", "min", "max", "std"):
            ref = rolling.std(ddof=0) if stat == "std" else getattr(rolling, stat)()
            for c in COLUMNS:
                expected = np.concatenate([ref.loc[s, c].to_numpy() for s in gappy["entity"].unique()])
                got = np.concatenate([out.loc[gappy["entity"] == s, f"{c}__{stat}{window}"].to_numpy()
                                      for s in gappy["entity"].unique()])
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"{c} {stat}{window}")
    # the gaps change what a window holds: rows are no longer a stand-in for time
    rows = roll(pm, _dataset(gappy), run, windows=[12])
    assert not np.allclose(out["m04__mean1h"], rows["m04__mean12"])


def test_rate_is_the_change_per_second_since_the_newest_row_at_or_before_the_window(pm, gappy, run):
    out = roll(pm, _dataset(gappy), run, windows=["1h"], stats=["rate"])
    for _, rows in gappy.groupby("entity", sort=False):
        t = rows["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64)
        for c in COLUMNS:
            x = rows[c].to_numpy(dtype=np.float64)
            expected = []
            for i in range(len(x)):
                before = np.flatnonzero(t <= t[i] - 3600)
                b = before[-1] if len(before) else 0
                expected.append((x[i] - x[b]) / (t[i] - t[b]) if t[i] > t[b] else 0.0 * (x[i] - x[b]))
            np.testing.assert_allclose(out.loc[rows.index, f"{c}__rate1h"], expected, rtol=1e-5, atol=1e-9,
                                       err_msg=c)


def test_the_rows_of_the_window_alone_give_the_training_features_bit_for_bit(pm, gappy, run):
    """What the server needs: a series' last hour (and the row before it) is enough, whatever came before."""
    data = _dataset(gappy)
    fitted = step(pm, "rolling-features", data, None, run, columns=COLUMNS, windows=["15min", "1h"])
    state = json.loads(json.dumps(dict(fitted.state)))
    features = [c for c in fitted.dataset.frame.columns if "__" in c]
    for server in SERVERS:
        rows = gappy[gappy["entity"] == server]
        for end in (1, 2, 50, 333, len(rows)):
            newest = rows.iloc[end - 1]
            held = rows.iloc[:end]
            before = held[held["timestamp"] <= newest["timestamp"] - pd.Timedelta("1h")]
            request = held[held["timestamp"] > newest["timestamp"] - pd.Timedelta("1h")]
            if len(before):
                request = pd.concat([before.tail(1), request])
            scored = step(pm, "rolling-features", _dataset(request, target=None), state, run).dataset.frame
            pd.testing.assert_frame_equal(scored.loc[[held.index[-1]], features],
                                          fitted.dataset.frame.loc[[held.index[-1]], features], check_exact=True)


def test_a_later_row_or_another_series_never_changes_a_rows_features(pm, gappy, run):
    before = roll(pm, _dataset(gappy), run, windows=["1h"])
    changed = gappy.copy()
    omi1 = changed.index[changed["entity"] == "omi-1"]
    cut = omi1[150]
    changed.loc[omi1[omi1 >= cut], COLUMNS] = np.float32(0.5)
    after = roll(pm, _dataset(changed), run, windows=["1h"])
    untouched = changed.index[(changed["entity"] != "omi-1") | (changed.index < cut)]
    pd.testing.assert_frame_equal(after.loc[untouched], before.loc[untouched], check_exact=True)
    assert not after.loc[[cut], "m04__mean1h"].equals(before.loc[[cut], "m04__mean1h"])


def test_shuffled_rows_give_the_same_features_in_their_own_order(pm, gappy, run):
    ordered = roll(pm, _dataset(gappy), run, windows=["1h"])
    shuffled = gappy.sample(frac=1.0, random_state=11)
    out = roll(pm, _dataset(shuffled), run, windows=["1h"])
    assert out.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(out.loc[ordered.index], ordered, check_exact=True)


def test_rows_sharing_a_time_are_in_each_others_windows_whatever_their_order(pm, asd, run):
    omi1 = asd[asd["entity"] == "omi-1"].iloc[:40]
    twice = pd.concat([omi1, omi1.iloc[[20]].assign(m01=np.float32(7.0))]).reset_index(drop=True)
    out = roll(pm, _dataset(twice), run, windows=["15min"], stats=["mean", "max"])
    flipped = roll(pm, _dataset(twice.iloc[::-1]), run, windows=["15min"], stats=["mean", "max"])
    pd.testing.assert_frame_equal(flipped.loc[out.index], out, check_exact=True)
    same_time = twice.index[twice["timestamp"] == omi1["timestamp"].iloc[20]]
    assert len(same_time) == 2 and (out.loc[same_time, "m01__max15min"] == 7.0).all()
    # three 5-minute steps plus the duplicate: (t - 15min, t] holds four rows
    window = np.r_[omi1["m01"].iloc[18:21].to_numpy(np.float64), 7.0]
    assert out.loc[same_time, "m01__mean15min"].iloc[0] == pytest.approx(window.mean(), rel=1e-6)


def test_a_timezone_aware_time_column_gives_the_same_features(pm, asd, run):
    naive = roll(pm, _dataset(asd), run, windows=["1h"])
    aware = asd.assign(timestamp=asd["timestamp"].dt.tz_localize("Europe/Paris"))
    out = roll(pm, _dataset(aware), run, windows=["1h"])
    features = [c for c in out.columns if "__" in c]
    pd.testing.assert_frame_equal(out[features], naive[features], check_exact=True)


@pytest.mark.parametrize("windows, message", [
    (["12"], "not a duration"), (["1 h"], "not a duration"), (["0h"], "not a duration"),
    (["1hour"], "not a duration"), (["1h", "60min"], "twice"), ([12, 12], "twice"), ([1.5], "integers"),
    ([], "non-empty"), ([True], "integers"),
])
def test_bad_windows_are_refused_with_the_reason(pm, windows, message):
    with pytest.raises((TypeError, ValueError), match=message):
        pm.options_class("rolling-features")(windows=windows)


def test_a_duration_without_a_time_column_is_a_config_error_naming_the_key(pm, asd, run):
    with pytest.raises(PluginCallError) as err:
        step(pm, "rolling-features", _dataset(asd.drop(columns="timestamp"), time=None), None, run, windows=[6, "1h"])
    cause = err.value.cause
    assert isinstance(cause, ConfigError)
    assert (cause.section, cause.key) == ("preprocess.rolling-features", "windows")
    assert "'1h'" in str(cause) and "[data] time" in str(cause)
    # windows in rows need no time column
    rows = step(pm, "rolling-features", _dataset(asd.drop(columns="timestamp"), time=None), None, run, windows=[6])
    assert "m01__mean6" in rows.dataset.frame.columns


def test_numbers_or_missing_times_are_data_errors_naming_the_column(pm, asd, run):
    numeric = asd.assign(timestamp=asd["timestamp"].astype("int64") // 10**9)
    with pytest.raises(PluginCallError) as err:
        roll(pm, _dataset(numeric), run, windows=["1h"])
    assert isinstance(err.value.cause, DataError) and "'timestamp'" in str(err.value.cause)
    assert "int64" in str(err.value.cause)
    missing = asd.copy()
    missing.loc[missing.index[5], "timestamp"] = pd.NaT
    with pytest.raises(PluginCallError, match="1 row.*no time.*omi-1"):
        roll(pm, _dataset(missing), run, windows=["1h"])


def test_all_of_asd_in_float32(pm, full, run):
    """51,840 rows x 19 metrics x 2 windows x 3 statistics; speed: benchmarks/, not here."""
    out = step(pm, "rolling-features", _dataset(full), None, run, windows=["15min", "1h"],
               stats=["mean", "std", "rate"]).dataset.frame
    assert out.shape == (51_840, 22 + 19 * 2 * 3)
    features = [c for c in out.columns if "__" in c]
    assert (out.dtypes[features] == np.float32).all() and out[features].notna().all().all()


@pytest.mark.parametrize("windows", [[3, 12], ["15min", "1h"], [6, "30min"]])
def test_the_rows_a_server_needs_computed_alone_get_the_batch_bits(gappy, windows):
    """`features_at` (the server's request rows behind their kept history) against `features` (every row)."""
    from opsloop.plugins import rolling_features as rf

    state = {"columns": COLUMNS, "windows": windows, "stats": list(rf.STATS), "keep_original": True,
             "series": "entity", "time": "timestamp"}
    order, starts = rf.series_order(gappy, "entity", "timestamp")
    x = gappy[COLUMNS].to_numpy(dtype=np.float64, na_value=np.nan)
    x = x[order] if order is not None else x
    t = rf.times(gappy, "timestamp", order, "entity")
    everything = rf.features(x, starts, t, state)
    rng = np.random.default_rng(4)
    for at in (np.arange(len(x)), np.sort(rng.choice(len(x), 50, replace=False)), np.array([len(x) - 1]),
               np.flatnonzero(starts == np.arange(len(x)))):  # every series' first row
        for some, every in zip(rf.features_at(x, starts, t, state, at), everything, strict=True):
            np.testing.assert_array_equal(some, every[at])


@pytest.mark.parametrize("windows", [[3, 12], ["15min", "1h"], [6, "30min"]])
def test_the_servers_next_row_of_one_series_gets_the_batch_bits(gappy, windows):
    """The op's shortcut for the stream's commonest request (one series' kept rows, then its next row) against
    the op's general path, with gaps and windows holding missing values (where the shortcut steps aside)."""
    from opsloop.plugins import rolling_features as rf
    from opsloop.rowops import RowContext, RowLayout

    state = {"columns": COLUMNS, "windows": windows, "stats": list(rf.STATS), "keep_original": True,
             "series": "entity", "time": "timestamp"}
    layout = RowLayout({c: j for j, c in enumerate(COLUMNS)}, {c: "float32" for c in COLUMNS}, series="entity",
                       time="timestamp")
    op = rf.compile_rows(state, None, layout)
    series = gappy[gappy["entity"] == "omi-1"].reset_index(drop=True)
    times = series["timestamp"].to_numpy().astype("datetime64[ns]")
    checked = set()
    blank = int(np.flatnonzero(series["m01"].isna().to_numpy())[3])  # a row whose own value is missing
    for p in (0, 1, 5, 40, 77, 150, 222, blank, len(series) - 1):
        rows = series.iloc[max(p - 30, 0):p + 1]  # enough history for every window here
        n = len(rows)
        work = np.zeros((n, layout.width))
        work[:, :len(COLUMNS)] = rows[COLUMNS].to_numpy(dtype=np.float64, na_value=np.nan)
        general = work.copy()
        keys, when = ["omi-1"] * n, times[max(p - 30, 0):p + 1]
        op(work, RowContext.parsed(n, series=keys, times=when, first=n - 1))
        op(general, RowContext.parsed(n, series=keys, times=when))
        np.testing.assert_array_equal(work[-1], general[-1], err_msg=f"row {p}")
        checked.add(bool(np.isnan(work[-1, 0])))
    assert checked == {True, False}  # both paths were taken: windows with and without a missing value


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
