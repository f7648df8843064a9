"""rolling-features windows in time ("1h", "15min"): per series, past-only, the same at fit and replay.

Issue 13, item 3. On real ASD servers (5-minute steps), with rows removed to
make gaps and values blanked to make missing data, the features are checked
against pandas' own time-based `rolling`, against windows in rows where the
two must agree, and against the explicit definition of the rate.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, DataError, PluginCallError, Preprocessed, RunContext, datasets
from opsloop.errors import ConfigError
from opsloop.manager import PluginManager

SERVERS = ["omi-2", "omi-5", "omi-11"]
COLUMNS = ["m01", "m04", "m12"]


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return datasets.load("asd")


@pytest.fixture(scope="module")
def asd(full) -> pd.DataFrame:
    """Three days of three servers."""
    frame = full[full["entity"].isin(SERVERS) & (full["timestamp"] < "2024-01-04")]
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def gappy(asd) -> pd.DataFrame:
    """The same rows with 30% of the steps gone (gaps of one to several steps) and some values missing."""
    rng = np.random.default_rng(3)
    frame = asd[rng.random(len(asd)) > 0.3].copy()
    frame.loc[frame.index % 9 == 0, "m01"] = np.nan
    omi5 = frame.index[frame["entity"] == "omi-5"]
    frame = frame.drop(omi5[200:260])  # a long outage: longer than every window
    return frame


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
    return manager


def step(pm, dataset, state, run, **options) -> Preprocessed:
    opts = pm.options_class("rolling-features")(**{"columns": COLUMNS, **options})
    return pm.call("rolling-features", "preprocess", dataset=dataset, state=state, options=opts, run=run)


def roll(pm, frame, run, **options) -> pd.DataFrame:
    return step(pm, _dataset(frame), None, run, **options).dataset.frame


def test_an_hour_on_five_minute_steps_is_twelve_rows_bit_for_bit(pm, asd, run):
    out = roll(pm, asd, run, windows=[12, "1h"])
    for c in COLUMNS:
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_array_equal(out[f"{c}__{stat}1h"], out[f"{c}__{stat}12"], err_msg=f"{c} {stat}")
        # rate: per row for a window in rows, per second for a duration
        np.testing.assert_allclose(out[f"{c}__rate1h"].astype(np.float64),
                                   out[f"{c}__rate12"].astype(np.float64) * 12 / 3600, rtol=1e-6, atol=1e-9)


def test_windows_in_time_match_pandas_time_rolling_across_gaps_and_missing_values(pm, gappy, run):
    out = roll(pm, gappy, run, windows=["15min", "1h"])
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
    rows = roll(pm, gappy, run, windows=[12])
    assert not np.allclose(out["m04__mean1h"], rows["m04__mean12"])


def test_rate_is_the_change_per_second_since_the_newest_row_at_or_before_the_window(pm, gappy, run):
    out = roll(pm, gappy, run, windows=["1h"], stats=["rate"])
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
    fitted = step(pm, data, None, run, windows=["15min", "1h"])
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
            scored = step(pm, _dataset(request, target=None), state, run).dataset.frame
            pd.testing.assert_frame_equal(scored.loc[[held.index[-1]], features],
                                          fitted.dataset.frame.loc[[held.index[-1]], features], check_exact=True)


def test_a_later_row_or_another_series_never_changes_a_rows_features(pm, gappy, run):
    before = roll(pm, gappy, run, windows=["1h"])
    changed = gappy.copy()
    omi2 = changed.index[changed["entity"] == "omi-2"]
    cut = omi2[150]
    changed.loc[omi2[omi2 >= cut], COLUMNS] = np.float32(0.5)
    after = roll(pm, changed, run, windows=["1h"])
    untouched = changed.index[(changed["entity"] != "omi-2") | (changed.index < cut)]
    pd.testing.assert_frame_equal(after.loc[untouched], before.loc[untouched], check_exact=True)
    assert not after.loc[[cut], "m04__mean1h"].equals(before.loc[[cut], "m04__mean1h"])


def test_shuffled_rows_give_the_same_features_in_their_own_order(pm, gappy, run):
    ordered = roll(pm, gappy, run, windows=["1h"])
    shuffled = gappy.sample(frac=1.0, random_state=11)
    out = roll(pm, shuffled, run, windows=["1h"])
    assert out.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(out.loc[ordered.index], ordered, check_exact=True)


def test_rows_sharing_a_time_are_in_each_others_windows_whatever_their_order(pm, asd, run):
    omi2 = asd[asd["entity"] == "omi-2"].iloc[:40]
    twice = pd.concat([omi2, omi2.iloc[[20]].assign(m01=np.float32(7.0))]).reset_index(drop=True)
    out = roll(pm, twice, run, windows=["15min"], stats=["mean", "max"])
    flipped = roll(pm, twice.iloc[::-1], run, windows=["15min"], stats=["mean", "max"])
    pd.testing.assert_frame_equal(flipped.loc[out.index], out, check_exact=True)
    same_time = twice.index[twice["timestamp"] == omi2["timestamp"].iloc[20]]
    assert len(same_time) == 2 and (out.loc[same_time, "m01__max15min"] == 7.0).all()
    # three 5-minute steps plus the duplicate: (t - 15min, t] holds four rows
    window = np.r_[omi2["m01"].iloc[18:21].to_numpy(np.float64), 7.0]
    assert out.loc[same_time, "m01__mean15min"].iloc[0] == pytest.approx(window.mean(), rel=1e-6)


def test_a_timezone_aware_time_column_gives_the_same_features(pm, asd, run):
    naive = roll(pm, asd, run, windows=["1h"])
    aware = asd.assign(timestamp=asd["timestamp"].dt.tz_localize("Europe/Paris"))
    out = roll(pm, aware, run, windows=["1h"])
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
        step(pm, _dataset(asd.drop(columns="timestamp"), time=None), None, run, windows=[6, "1h"])
    cause = err.value.cause
    assert isinstance(cause, ConfigError)
    assert (cause.section, cause.key) == ("preprocess.rolling-features", "windows")
    assert "'1h'" in str(cause) and "[data] time" in str(cause)
    # windows in rows need no time column
    rows = step(pm, _dataset(asd.drop(columns="timestamp"), time=None), None, run, windows=[6])
    assert "m01__mean6" in rows.dataset.frame.columns


def test_numbers_or_missing_times_are_data_errors_naming_the_column(pm, asd, run):
    numeric = asd.assign(timestamp=asd["timestamp"].astype("int64") // 10**9)
    with pytest.raises(PluginCallError) as err:
        roll(pm, numeric, run, windows=["1h"])
    assert isinstance(err.value.cause, DataError) and "'timestamp'" in str(err.value.cause)
    assert "int64" in str(err.value.cause)
    missing = asd.copy()
    missing.loc[missing.index[5], "timestamp"] = pd.NaT
    with pytest.raises(PluginCallError, match="1 row.*no time.*omi-2"):
        roll(pm, missing, run, windows=["1h"])


def test_all_of_asd_in_float32(pm, full, run):
    """51,840 rows x 19 metrics x 2 windows x 3 statistics; speed: benchmarks/, not here."""
    out = step(pm, _dataset(full), None, run, columns=None, windows=["15min", "1h"],
               stats=["mean", "std", "rate"]).dataset.frame
    assert out.shape == (51_840, 22 + 19 * 2 * 3)
    features = [c for c in out.columns if "__" in c]
    assert (out.dtypes[features] == np.float32).all() and out[features].notna().all().all()
