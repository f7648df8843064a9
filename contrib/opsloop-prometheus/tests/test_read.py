"""Reading real ASD telemetry back out of a real Prometheus: values, the step grid, gaps, splitting, labels."""

from __future__ import annotations

import urllib.request

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("opsloop_prometheus",
                    reason="opsloop-prometheus is not installed (pip install -e ./contrib/opsloop-prometheus)")

from opsloop.config import DataSection  # noqa: E402

import opsloop_prometheus  # noqa: E402
from opsloop_prometheus import Options  # noqa: E402

#: The ASD slice conftest.py backfills (also in the `stand` fixture).
SERVERS = ["omi-1", "omi-9", "omi-12"]
METRICS = ["m01", "m05", "m10", "m14"]
#: The whole ASD fortnight, on its own 5-minute grid.
RANGE = {"start": "2024-01-01T00:00:00Z", "end": "2024-01-15T23:55:00Z", "step": "5m"}
DATA = DataSection(source="prometheus://x", time="timestamp", series="entity", target="label")


def source(prometheus) -> str:
    return f"prometheus://127.0.0.1:{prometheus['port']}"


def read(prometheus, tmp_path, data=DATA, **options):
    options = Options(**{"queries": {m: f'asd_{m}{{job="asd"}}' for m in METRICS}, **RANGE, **options})
    return opsloop_prometheus.load_data(source=source(prometheus), options=options, data=data, workdir=tmp_path)


def test_values_grid_and_gaps_equal_the_asd_csv(prometheus, tmp_path, asd_slice, stand):
    frame = read(prometheus, tmp_path)
    assert list(frame.columns) == ["timestamp", "entity", *METRICS]
    # One row per server per 5-minute step over the whole range, sorted by series then time.
    assert len(frame) == len(SERVERS) * 15 * 288
    assert frame["entity"].tolist() == sorted(frame["entity"]) and frame["entity"].is_monotonic_increasing
    assert frame["timestamp"].dtype == "datetime64[ns]" or str(frame["timestamp"].dtype).startswith("datetime64")
    assert frame["timestamp"].dt.tz is None
    for _, rows in frame.groupby("entity"):
        assert (rows["timestamp"].diff().dropna() == pd.Timedelta(minutes=5)).all()

    merged = asd_slice.merge(frame, on=["entity", "timestamp"], suffixes=("_csv", ""), validate="1:1")
    assert len(merged) == len(asd_slice)
    removed = stand.gap_mask(merged)
    assert removed.sum() == sum(steps for _, _, steps in stand.GAPS)
    for metric in METRICS:
        # The rows the backfill left out are NaN (a gap for [preprocess] impute), not the step before.
        assert merged.loc[removed, metric].isna().all()
        kept = merged[~removed]
        np.testing.assert_allclose(kept[metric], kept[f"{metric}_csv"].astype(float), rtol=0, atol=1e-6)


def test_a_long_range_is_split_into_requests_of_at_most_max_points(prometheus, tmp_path):
    def requests() -> float:
        """Range requests Prometheus has answered, from its own /metrics."""
        with urllib.request.urlopen(f"{prometheus['url']}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("prometheus_http_requests_total{")
                   and 'handler="/api/v1/query_range"' in line)

    whole = read(prometheus, tmp_path, queries={"m01": 'asd_m01{job="asd"}'})
    before = requests()
    split = read(prometheus, tmp_path, queries={"m01": 'asd_m01{job="asd"}'}, max_points=500)
    # 4,320 steps in requests of at most 500 steps: 9 requests, as Prometheus itself counts them.
    assert requests() - before == 9
    pd.testing.assert_frame_equal(whole, split)


def test_labels_from_incident_windows_equal_asd_labels(prometheus, tmp_path, asd_slice, incidents):
    (tmp_path / "incidents.csv").write_text(incidents, encoding="utf-8")
    frame = read(prometheus, tmp_path, incidents="incidents.csv")
    assert frame["label"].dtype == np.int64 and set(frame["label"].unique()) == {0, 1}
    merged = asd_slice.merge(frame, on=["entity", "timestamp"], suffixes=("_csv", ""), validate="1:1")
    assert (merged["label"] == merged["label_csv"]).all()
    assert merged["label"].sum() == asd_slice["label"].sum() > 100


def test_an_incident_for_every_series_and_default_column_names(prometheus, tmp_path):
    (tmp_path / "incidents.csv").write_text("series,start,end\n*,2024-01-02T00:00:00+01:00,2024-01-01T23:10:00Z\n",
                                            encoding="utf-8")
    frame = read(prometheus, tmp_path, data=DataSection(source="prometheus://x"), incidents="incidents.csv",
                 start="2024-01-01T22:00:00Z", end="2024-01-02T02:00:00Z", series_labels=["job", "instance"],
                 separator=":")
    assert list(frame.columns) == ["timestamp", "series", *METRICS, "label"]
    assert sorted(frame["series"].unique()) == sorted(f"asd:{s}" for s in SERVERS)
    # 23:00 UTC (midnight at +01:00) to 23:10 UTC, both ends included: three 5-minute steps, on every series.
    labelled = frame[frame["label"] == 1]
    assert len(labelled) == 3 * len(SERVERS)
    assert set(labelled["timestamp"].dt.strftime("%H:%M")) == {"23:00", "23:05", "23:10"}


def test_counter_reset_increase_and_rate(prometheus, tmp_path, asd_slice, stand):
    queries = [
        {"name": "total", "query": f"{stand.COUNTER}"},
        {"name": "increase", "query": f"{stand.COUNTER}", "increase": True},
        {"name": "rate", "query": f"{stand.COUNTER}", "rate": "10m"},
    ]
    frame = read(prometheus, tmp_path, queries=queries, start="2024-01-01T04:00:00Z", end="2024-01-01T08:00:00Z")
    assert frame["entity"].unique().tolist() == [SERVERS[0]]
    times = asd_slice.loc[asd_slice["entity"] == SERVERS[0], "timestamp"].to_numpy()
    expected = pd.Series(stand.counter_values(times), index=times)
    frame = frame.set_index("timestamp")
    np.testing.assert_array_equal(frame["total"], expected[frame.index].to_numpy())
    reset = pd.Timestamp(stand.RESET_AT)
    assert frame.loc[reset, "total"] == 0 < frame.loc[reset - pd.Timedelta(minutes=5), "total"]
    # Client side: +3 a step, also on the first step (the step before the range is read for it); at the
    # reset the counter went 3 * 71 -> 0, an increase of 0, never a negative one.
    assert frame.loc[reset, "increase"] == 0
    assert (frame["increase"].drop(reset) == 3).all()
    # Server side: rate() over 10 minutes handles the reset too: 3 per 300 s, never negative.
    assert (frame["rate"] >= 0).all()
    np.testing.assert_allclose(frame["rate"].drop([reset, reset + pd.Timedelta(minutes=5)]), 3 / 300, rtol=0.01)


def test_fill_limit_fills_short_gaps_only(prometheus, tmp_path, stand):
    frame = read(prometheus, tmp_path, queries={"m01": 'asd_m01{job="asd"}'}, fill_limit=2)
    by_server = {name: rows.set_index("timestamp")["m01"] for name, rows in frame.groupby("entity")}
    (long_server, long_first, steps), (short_server, short_first, _) = stand.GAPS
    assert steps > 2
    # The one-step gap is filled with the step before; the six-step one stays NaN throughout.
    short = pd.Timestamp(short_first)
    assert by_server[short_server][short] == by_server[short_server][short - pd.Timedelta(minutes=5)]
    start = pd.Timestamp(long_first)
    assert by_server[long_server][start:start + pd.Timedelta(minutes=5 * (steps - 1))].isna().all()
    assert frame["m01"].isna().sum() == steps


@pytest.mark.parametrize("source_form", ["prometheus+http://{host}", "http://{host}"])
def test_address_forms(prometheus, tmp_path, source_form):
    options = Options(queries={"m01": 'asd_m01{instance="omi-9"}'}, start="2024-01-03T00:00:00Z",
                      end="2024-01-03T01:00:00Z", step="5m")
    frame = opsloop_prometheus.load_data(
        source=source_form.format(host=f"127.0.0.1:{prometheus['port']}"), options=options, data=DATA,
        workdir=tmp_path)
    assert len(frame) == 13 and frame["entity"].unique().tolist() == ["omi-9"]
