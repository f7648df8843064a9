"""Partitioned data (issue 10, item 3) without Dask: the core's pieces on `opsloop.partitions.InProcessEngine`,
a real engine of partitions (a list of pandas frames, one per day of ASD, every boundary cutting every series).

- `fit_partitions` of every built-in step gives the state its `preprocess` gives on the same rows as one frame;
- `map_partitions` with a carry: the steps replayed per partition equal the replay on one frame, across the
  boundaries (rolling-features' windows behind, label-horizon's look-ahead), and differ without the carry;
- a run refuses, before any work, a step without `fit_partitions` and a trainer that takes one frame.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import numpy as np
import pandas as pd
import pytest

from opsloop import hookimpl
from opsloop import partitions as P
from opsloop.manager import PluginManager
from opsloop.types import Dataset, RunContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402

ENGINE = "in-process"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Two ASD servers over 7.5 days in time order, with gaps, a text and an integer column added."""
    from opsloop import datasets

    asd = datasets.load("asd")
    frame = asd[asd.entity.isin(["omi-1", "omi-9"]) & (asd.timestamp < "2024-01-08 12:00")]
    frame = frame.sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(7)
    frame = frame.assign(zone=np.where(rng.random(len(frame)) < 0.6, "eu", "us"),
                         level=rng.integers(0, 40, len(frame)))
    frame.loc[rng.random(len(frame)) < 0.05, "m01"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.05, "zone"] = None
    return frame


def partitioned(frame: pd.DataFrame, pm: PluginManager) -> P.PartitionedDataset:
    parts = P.FrameList(g.reset_index(drop=True) for _, g in frame.groupby(frame.timestamp.dt.date, sort=True))

    def mapper(frame, function, argument, carry, keep, meta):
        return pm.call(ENGINE, "map_partitions", frame=frame, function=function, argument=argument, carry=carry,
                       keep=keep, meta=meta)

    return P.PartitionedDataset(frame=parts, meta=parts[0].iloc[:0], engine=ENGINE, mapper=mapper,
                                target="label", time="timestamp", series="entity", name="asd days").describe()


@pytest.fixture
def pm() -> PluginManager:
    manager = PluginManager()
    manager.register(P.InProcessEngine(), ENGINE)
    return manager


def whole_state(pm: PluginManager, name: str, frame: pd.DataFrame, options) -> tuple[dict, list, pd.DataFrame]:
    run = RunContext(run_id="t", workdir=Path("."), model_name="m", config=None)
    dataset = Dataset.from_frame(frame, target="label", time="timestamp", series="entity")
    out = pm.call(name, "preprocess", dataset=dataset, state=None, options=options, run=run)
    return json.loads(json.dumps(dict(out.state), allow_nan=True)), list(out.issues), out.dataset.frame


def options_of(pm: PluginManager, name: str, **values):
    pm.load(name)
    return pm.options_class(name)(**values)


CASES = [
    ("schema-check", {}),
    ("impute", {}),
    ("impute", {"strategy": "mean", "add_indicator": True}),
    ("impute", {"strategy": "constant", "fill_value": -1.0, "add_indicator": True}),
    ("rolling-features", {"windows": ["1h"], "stats": ["mean", "std"]}),
    ("scale", {"method": "minmax"}),
    ("scale", {"method": "robust"}),
    ("clip", {"lower_quantile": 0.01, "upper_quantile": 0.995}),
    ("label-horizon", {"horizon": 3}),
]


@pytest.mark.parametrize("rounds", ["one", "several"])
@pytest.mark.parametrize(("name", "values"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_states_over_partitions_are_the_single_frame_states(rows, pm, name, values, rounds, monkeypatch):
    if rounds == "several":  # histograms narrow enough that every order statistic takes several rounds
        from opsloop import partition_stats

        monkeypatch.setattr(partition_stats, "BUCKETS", 8)
        monkeypatch.setattr(partition_stats, "FETCH", 16)
    frame = rows.drop(columns=["zone"]) if name in ("scale", "clip", "rolling-features") else rows
    options = options_of(pm, name, **values)
    data = partitioned(frame, pm)
    assert data.partitions == 8 and data.rows == len(frame)
    want, issues, _ = whole_state(pm, name, frame, options)
    got, found = P.fit_step(name, data, options, pm, run=None)
    assert got == want  # every key and value, exactly
    assert found == issues


def test_standard_scale_over_partitions_to_the_last_bits(rows, pm):
    frame = rows.drop(columns=["zone"])
    options = options_of(pm, "scale", method="standard")
    want, _, _ = whole_state(pm, "scale", frame, options)
    got, _ = P.fit_step("scale", partitioned(frame, pm), options, pm, run=None)
    assert list(got["center"]) == list(want["center"])
    for key in ("center", "scale"):  # merged means and deviations: summation order differs
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15)
        assert got[key] != {c: 0.0 for c in got[key]}


@pytest.mark.parametrize(("name", "values"), [("rolling-features", {"windows": ["1h", 5], "stats": ["mean", "rate"]}),
                                              ("label-horizon", {"horizon": 6})])
def test_replay_across_partition_boundaries_equals_one_frame(rows, pm, name, values):
    frame = rows.drop(columns=["zone"])
    if name == "label-horizon":  # an incident starting just after each midnight: the day before must see it
        midnight = (frame.timestamp.dt.hour == 0) & (frame.timestamp.dt.minute == 10)
        frame = frame.assign(label=np.where(midnight, 1, frame.label))
    options = options_of(pm, name, **values)
    state, _, expected = whole_state(pm, name, frame, options)
    data = partitioned(frame, pm)
    carry = P.step_reach(name, state, options, pm, "entity", "timestamp")
    assert carry  # rows behind for the windows, rows ahead for the look-ahead label
    replayed = P.replay_step(name, state, data, options, pm)
    got = pd.concat(replayed.collect(P._head, 10**9), ignore_index=True)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
    # without the carry, each day's first (windows) or last (label) rows differ: the carry is what makes it equal
    step = P.Step(name=name, plugin=pm.load(name), state=state, options=options, target="label",
                  time="timestamp", series="entity")
    alone = pd.concat(data.collect(P._replay, step), ignore_index=True)
    assert not alone.equals(expected.reset_index(drop=True))


def test_periods_run_the_queries_per_partition(rows, pm, tmp_path):
    from opsloop.config import read
    from opsloop.errors import ConfigError

    config_path = tmp_path / "opsloop.toml"
    config_path.write_text('[data]\nsource = "x"\ntarget = "label"\ntime = "timestamp"\nseries = "entity"\n'
                           "train = \"entity == 'omi-1' and timestamp < '2024-01-05'\"\n"
                           "monitor = \"timestamp >= '2024-01-05'\"\n", encoding="utf-8")
    config = read(config_path)
    train, monitor = P.periods(partitioned(rows, pm), config)
    want = rows.query("entity == 'omi-1' and timestamp < '2024-01-05'").reset_index(drop=True)
    assert train.rows == len(want) and monitor.rows == int((rows.timestamp >= "2024-01-05").sum())
    pd.testing.assert_frame_equal(pd.concat(train.collect(P._head, 10**9), ignore_index=True), want)
    assert train.fingerprint.startswith("sha256:") and train.fingerprint != monitor.fingerprint
    config_path.write_text(config_path.read_text().replace("'omi-1'", "'omi-404'"), encoding="utf-8")
    with pytest.raises(ConfigError, match="selects no rows"):
        P.periods(partitioned(rows, pm), read(config_path))


class DaySource(P.InProcessEngine):
    """A source plugin that returns ASD as one partition per day, and is its own engine (`map_partitions`)."""

    @hookimpl
    def load_data(self, source, options, data, workdir):
        from opsloop import datasets

        asd = datasets.load("asd").sort_values(["timestamp", "entity"], kind="stable")
        return P.FrameList(g.reset_index(drop=True) for _, g in asd.groupby(asd.timestamp.dt.date, sort=True))


class OneFrameStep:
    """A third-party step without fit_partitions."""

    @hookimpl
    def preprocess(self, dataset, state, options, run):
        raise AssertionError("never fitted: the run stops before any work")


def partitioned_config(**changes) -> dict:
    config = json.loads(json.dumps(SMALL))
    config["data"]["source"] = "days:asd"
    config["data"]["plugin"] = "days"
    config.update(changes)
    return config


def test_a_trainer_that_takes_one_frame_is_refused_naming_it_and_dask_xgboost(opsloop_project, hook_recorder):
    project = opsloop_project(config=partitioned_config(), plugins={"days": DaySource()})
    result = project.run("run")
    result.assert_error('trainer "xgboost"', "partitioned", "dask-xgboost")
    assert not hook_recorder.named("fit_partitions") and not hook_recorder.named("train")


def test_a_step_without_fit_partitions_is_refused_naming_it_before_any_work(opsloop_project, hook_recorder):
    config = partitioned_config(preprocess={"plugins": ["schema-check", "one-frame-step"]})
    project = opsloop_project(config=config, plugins={"days": DaySource(), "one-frame-step": OneFrameStep()})
    result = project.run("run")
    result.assert_error('preprocess step "one-frame-step"', "fit_partitions")
    assert not hook_recorder.named("fit_partitions") and not hook_recorder.named("preprocess")


def test_a_source_returning_what_no_engine_takes_is_one_line(opsloop_project):
    class Odd:
        @hookimpl
        def load_data(self, source, options, data, workdir):
            return {"not": "a frame"}

    config = partitioned_config()
    config["data"]["plugin"] = "odd"
    project = opsloop_project(config=config, plugins={"odd": Odd()})
    project.run("run").assert_error('"odd"', "dict", "not a pandas DataFrame")


def test_commands_that_read_one_frame_refuse_a_partitioned_source_in_one_line(opsloop_project):
    project = opsloop_project(config=partitioned_config(), plugins={"days": DaySource()})
    project.run("tune", "--quiet").assert_error("read in partitions", "only opsloop run and opsloop validate")


def test_a_partition_that_goes_back_in_time_within_a_series_is_a_data_error(rows, pm):
    from opsloop.errors import DataError

    frame = rows.drop(columns=["zone"])
    options = options_of(pm, "rolling-features", windows=["1h"], stats=["mean"])
    state, _, _ = whole_state(pm, "rolling-features", frame, options)
    data = partitioned(frame, pm)
    swapped = attrs.evolve(data, frame=P.FrameList([data.frame[1], data.frame[0], *data.frame[2:]]))
    with pytest.raises(Exception, match="partition 1 goes back in time within series omi-1") as caught:
        P.replay_step("rolling-features", state, swapped, options, pm).collect(P._head, 5)
    assert isinstance(getattr(caught.value, "cause", caught.value), DataError)
