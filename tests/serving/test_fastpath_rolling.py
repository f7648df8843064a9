"""rolling-features' shortcut for the stream's next row computes only the statistics asked for: each subset
gets the bits of the op's general path (windows with missing values and gaps in time included)."""

from __future__ import annotations

import numpy as np
import pytest
from opsloop import datasets
from opsloop.plugins import rolling_features as rf
from opsloop.rowops import RowContext, RowLayout

COLUMNS = [f"m{j:02d}" for j in range(1, 6)]


@pytest.fixture(scope="module")
def series():
    asd = datasets.load("asd")
    rows = asd[asd["entity"] == "omi-1"].head(400).reset_index(drop=True)
    rng = np.random.default_rng(3)
    rows = rows.drop(index=rng.choice(len(rows), 60, replace=False)).reset_index(drop=True)  # gaps in time
    for c in COLUMNS[:2]:
        rows.loc[rng.choice(len(rows), 12, replace=False), c] = np.nan
    return rows


@pytest.mark.parametrize("stats", [["mean", "std"], ["rate"], ["min", "max"], ["std", "rate", "mean"], ["max"]])
@pytest.mark.parametrize("windows", [["1h"], [4, "30min"]])
def test_each_subset_of_statistics_gets_the_general_paths_bits(series, stats, windows):
    state = {"columns": COLUMNS, "windows": windows, "stats": stats, "keep_original": True,
             "series": "entity", "time": "timestamp"}
    layout = RowLayout({c: j for j, c in enumerate(COLUMNS)}, {c: "float32" for c in COLUMNS}, series="entity",
                       time="timestamp")
    op = rf.compile_rows(state, None, layout)
    times = series["timestamp"].to_numpy().astype("datetime64[ns]")
    values = series[COLUMNS].to_numpy(dtype=np.float64, na_value=np.nan)
    missing = set()
    for p in range(len(series)):
        lo = max(p - 20, 0)  # more than every window's reach here
        n = p + 1 - lo
        work = np.zeros((n, layout.width))
        work[:, :len(COLUMNS)] = values[lo:p + 1]
        general = work.copy()
        keys, when = ["omi-1"] * n, times[lo:p + 1]
        op(work, RowContext.parsed(n, series=keys, times=when, first=n - 1))
        op(general, RowContext.parsed(n, series=keys, times=when))
        np.testing.assert_array_equal(work[-1], general[-1], err_msg=f"row {p}")
        missing.add(bool(np.isnan(values[p]).any()))
    assert missing == {True, False}  # rows with and without a missing value (the shortcut steps aside) were met
