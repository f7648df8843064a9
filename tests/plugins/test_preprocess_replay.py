"""Every built-in preprocess step replays its stored state to the very same features.

The steps are loaded through their real entry points and called the way the
runner and `LoadedModel.transform` call them; each state goes through JSON,
as it does in a bundle. Data: three real ASD servers, three days each, with a
few values blanked so that imputation has work to do.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import opsloop.config
from opsloop import Dataset, Preprocessed, RunContext, datasets
from opsloop.manager import PluginManager

SERVERS = ["omi-1", "omi-3", "omi-9"]
STEPS = {
    "schema-check": {},
    "impute": {"add_indicator": True},
    "scale": {"method": "robust"},
    "clip": {},
    "rolling-features": {"windows": [3, 12]},
    "label-horizon": {"horizon": 6},
}


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(SERVERS)].reset_index(drop=True)
    # Telemetry has gaps: blank every 37th m03 and every 53rd m05 (real values elsewhere).
    frame.loc[frame.index % 37 == 0, "m03"] = np.nan
    frame.loc[frame.index % 53 == 0, "m05"] = np.nan
    return frame


def _period(frame: pd.DataFrame, start: str, end: str) -> Dataset:
    rows = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]
    return Dataset.from_frame(rows, target="label", time="timestamp", series="entity", name=f"{start}..{end}")


@pytest.fixture(scope="module")
def train(asd: pd.DataFrame) -> Dataset:
    return _period(asd, "2024-01-01", "2024-01-04")


@pytest.fixture(scope="module")
def later(asd: pd.DataFrame) -> Dataset:
    return _period(asd, "2024-01-04", "2024-01-07")


@pytest.fixture
def run(tmp_path) -> RunContext:
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    return PluginManager()


def call(pm: PluginManager, name: str, dataset: Dataset, state: dict | None, run: RunContext,
         **options: object) -> Preprocessed:
    pm.load(name)
    options_cls = pm.options_class(name)
    result = pm.call(name, "preprocess", dataset=dataset, state=state, options=options_cls(**options), run=run)
    assert isinstance(result, Preprocessed)
    return result


def stored(state) -> dict:
    """The state as a bundle stores and gives it back."""
    return json.loads(json.dumps(dict(state)))


@pytest.mark.parametrize("name", list(STEPS))
def test_replayed_state_gives_the_fit_time_features_value_for_value(pm, train, run, name):
    fitted = call(pm, name, train, None, run, **STEPS[name])
    state = stored(fitted.state)
    replayed = call(pm, name, train, state, run, **STEPS[name])
    pd.testing.assert_frame_equal(replayed.dataset.frame, fitted.dataset.frame, check_exact=True)
    assert stored(replayed.state) == state
    assert replayed.dataset.fingerprint == fitted.dataset.fingerprint


@pytest.mark.parametrize("name", list(STEPS))
def test_replay_never_relearns_from_the_rows_it_is_given(pm, train, later, run, name):
    state = stored(call(pm, name, train, None, run, **STEPS[name]).state)
    refit = call(pm, name, later, None, run, **STEPS[name])
    replayed = call(pm, name, later, state, run, **STEPS[name])
    assert stored(replayed.state) == state
    assert replayed.dataset.frame.columns.tolist() == call(pm, name, train, state, run).dataset.frame.columns.tolist()
    if name in ("impute", "scale", "clip", "schema-check"):  # learned statistics differ between periods
        assert stored(refit.state) != state


def test_the_whole_chain_replays_from_stored_states_like_a_bundle(pm, train, later, run):
    """Fit the six steps in order, then replay them on raw rows as `LoadedModel.transform` does."""
    current, steps = train, []
    for name, options in STEPS.items():
        out = call(pm, name, current, None, run, **options)
        steps.append((name, options, stored(out.state)))
        current = out.dataset
    fitted = current.frame
    assert "m03__missing" in fitted.columns and "m01__rate12" in fitted.columns

    def replay(raw: Dataset) -> pd.DataFrame:
        for name, options, state in steps:
            raw = call(pm, name, raw, state, run, **options).dataset
        return raw.frame

    pd.testing.assert_frame_equal(replay(train), fitted, check_exact=True)
    scored = replay(later)
    assert scored.columns.tolist() == fitted.columns.tolist()
    assert (scored.dtypes == fitted.dtypes).all()
    # Scoring rows without a label: the same features, and no target is invented.
    unlabelled = Dataset.from_frame(later.frame.drop(columns="label"), time="timestamp", series="entity")
    features = replay(unlabelled)
    assert "label" not in features.columns
    pd.testing.assert_frame_equal(features, scored.drop(columns="label"), check_exact=True)


@pytest.mark.parametrize("name", list(STEPS))
def test_steps_keep_float32_features_float32_and_leave_meta_columns_alone(pm, train, run, name):
    out = call(pm, name, train, None, run, **STEPS[name]).dataset.frame
    metrics = [c for c in out.columns if c.startswith("m") and not c.endswith("__missing")]
    assert all(out[c].dtype == np.float32 for c in metrics)
    assert out.index.equals(train.frame.index)
    pd.testing.assert_series_equal(out["timestamp"], train.frame["timestamp"], check_exact=True)
    pd.testing.assert_series_equal(out["entity"], train.frame["entity"], check_exact=True)
    if name != "label-horizon":
        pd.testing.assert_series_equal(out["label"], train.frame["label"], check_exact=True)
    else:
        assert out["label"].dtype == train.frame["label"].dtype


@pytest.mark.parametrize("name", list(STEPS))
def test_the_input_frame_is_never_mutated(pm, train, run, name):
    before = train.frame.copy(deep=True)
    call(pm, name, train, None, run, **STEPS[name])
    pd.testing.assert_frame_equal(train.frame, before, check_exact=True)


def test_every_step_loads_through_its_entry_point_with_a_summary(pm):
    for name in STEPS:
        info = pm.info(name)
        assert info.dist == "opsloop"
        pm.load(name)
        assert pm.implements(name, "preprocess") and pm.implements(name, "plugin_options")
        summary = pm.describe(name)
        assert summary and "\n" not in summary and len(summary) < 120
