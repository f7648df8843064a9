"""States fitted over partitions on the cluster equal the built-in steps' states on the same rows as one frame."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")


@pytest.fixture(scope="module")
def rows(asd: Any) -> Any:
    """Three servers' first week with what impute and scale must handle: gaps, a float32 column, an integer
    column, a text column and a column with no value at all."""
    import numpy as np

    frame = asd[asd["entity"].isin(["omi-1", "omi-3", "omi-9"]) & (asd["timestamp"] < "2024-01-08 12:00")]
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(7)
    frame.loc[rng.random(len(frame)) < 0.05, "m03"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.5, "m11"] = np.nan
    return frame.assign(m04=frame["m04"].astype("float32"), empty=np.nan, zone=frame["entity"].str[-1],
                        level=(frame["m05"] * 100).round().astype("int64"))


@pytest.fixture(scope="module")
def on_cluster(scheduler: str) -> Any:
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client, client.as_current():
        yield client


def _builtin(name: str, frame: Any, **options: Any) -> tuple[dict[str, Any], list[str]]:
    """The built-in step's fitted state and issues, through the plugin system."""
    from opsloop import Dataset
    from opsloop.config import read
    from opsloop.manager import PluginManager
    from opsloop.types import RunContext

    plugins = PluginManager()
    plugins.load(name)
    dataset = Dataset.from_frame(frame, target="label", time="timestamp", series="entity")
    run = RunContext(run_id="t", workdir=".", model_name="m", config=read(workdir="."))
    out = plugins.call(name, "preprocess", dataset=dataset, state=None, options=plugins.options_class(name)(**options),
                       run=run)
    return dict(out.state), list(out.issues)


#: Small histograms make `order_statistics` narrow over several passes instead of fetching at once (set here,
#: seen by the workers: the session's workers are threads of this process).
NARROW = {"BUCKETS": 256, "FETCH": 4}


@pytest.mark.parametrize("passes", ["one", "several"])
@pytest.mark.parametrize(("strategy", "indicator"), [("median", False), ("mean", True), ("constant", True)])
def test_impute_states_are_the_builtin_steps(rows, on_cluster, strategy, indicator, passes, monkeypatch):
    import dask.dataframe as dd

    from opsloop_dask import partitioned

    if passes == "several":
        for name, value in NARROW.items():
            monkeypatch.setattr(partitioned, name, value)
    want, issues = _builtin("impute", rows, strategy=strategy, add_indicator=indicator, fill_value=-1.0)
    features = [c for c in rows.columns if c not in ("label", "timestamp", "entity")]
    got, found = partitioned.fit_impute(dd.from_pandas(rows, npartitions=7, sort=False), features,
                                        strategy=strategy, add_indicator=indicator, fill_value=-1.0)
    assert got == want  # every fill value, tag and indicator, exactly
    assert found == issues
    assert any('"empty"' in issue for issue in found) == (strategy != "constant")  # a constant fills it


@pytest.mark.parametrize("passes", ["one", "several"])
@pytest.mark.parametrize("method", ["standard", "minmax", "robust"])
def test_scale_states_are_the_builtin_steps(rows, on_cluster, method, passes, monkeypatch):
    import dask.dataframe as dd

    from opsloop_dask import partitioned

    if passes == "several":
        for name, value in NARROW.items():
            monkeypatch.setattr(partitioned, name, value)
    frame = rows.drop(columns=["zone"])
    want, _ = _builtin("scale", frame, method=method)
    got = partitioned.fit_scale(dd.from_pandas(frame, npartitions=7, sort=False), list(want["center"]), method)
    assert list(got["center"]) == list(want["center"]) and got["method"] == method
    if method == "standard":  # means and deviations merged from partitions: the same up to float64's last bits
        for key in ("center", "scale"):
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15)
    else:  # minimum, maximum and order statistics: exact
        assert got == want


@pytest.mark.parametrize("passes", ["one", "several"])
def test_clip_states_are_the_builtin_steps(rows, on_cluster, passes, monkeypatch):
    import dask.dataframe as dd

    from opsloop_dask import partitioned

    if passes == "several":
        for name, value in NARROW.items():
            monkeypatch.setattr(partitioned, name, value)
    frame = rows.drop(columns=["zone"])
    want, _ = _builtin("clip", frame, lower_quantile=0.01, upper_quantile=0.995)
    got = partitioned.fit_clip(dd.from_pandas(frame, npartitions=7, sort=False), list(want["lower"]),
                               lower_quantile=0.01, upper_quantile=0.995)
    assert got == want and got["lower"]["empty"] is None and isinstance(got["upper"]["level"], int)
