"""The fast path scores exactly like `LoadedModel.predict`, value for value, for every built-in step.

Bundles are trained through the real lifecycle (`Runner.build`) on ASD rows
with gaps, a float64, an integer and a boolean feature added, so that every
dtype rule of the replay (float32 rounding after each step, integers
becoming float64 when scaled, indicator columns) is exercised. Rows are
scored whole and one at a time, and hypothesis draws more.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import opsloop
from opsloop import datasets
from opsloop.serving.fastpath import FastScorer, ReplayScorer, make_scorer
from opsloop.serving.schema import InputSchema, RequestError

METRICS = [f"m{j:02d}" for j in range(1, 20)]
BASE = {
    "data": {"source": "data.parquet", "target": "label", "time": "timestamp", "series": "entity",
             "features": [*METRICS, "load", "busy"],
             "train": "timestamp < '2024-01-04'", "monitor": "timestamp >= '2024-01-04'"},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 15, "n_jobs": 1, "max_depth": 4}},
    "validate": {"plugins": []}, "deploy": {"plugins": []}, "monitor": {"plugins": []},
    "retrain": {"plugins": []},
}
#: name -> (preprocess table, extra config); every built-in step appears with each of its modes.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "check-impute-scale-clip": ({"plugins": ["schema-check", "impute", "scale", "clip"],
                                 "impute": {"add_indicator": True}}, {}),
    "impute-mean-minmax": ({"plugins": ["impute", "scale"], "impute": {"strategy": "mean"},
                            "scale": {"method": "minmax"}}, {}),
    "constant-clip-robust": ({"plugins": ["impute", "clip", "scale"],
                              "impute": {"strategy": "constant", "fill_value": 0.3, "add_indicator": True},
                              "clip": {"lower_quantile": 0.05, "upper_quantile": 0.95},
                              "scale": {"method": "robust"}}, {}),
    "label-horizon": ({"plugins": ["label-horizon", "impute"], "label-horizon": {"horizon": 6}}, {}),
    "regression": ({"plugins": ["impute", "scale", "clip"]},
                   {"train": {"xgboost": {"task": "regression"}}}),
    "multiclass": ({"plugins": ["impute", "clip"]}, {"data": {"target": "level"}}),
    "no-steps": ({"plugins": []}, {}),
    # windows over the request's rows of each series (the server puts its kept history before them)
    "rolling": ({"plugins": ["impute", "rolling-features"], "rolling-features": {"windows": [3],
                                                                                 "stats": ["mean", "max", "rate"]}},
                {}),
    "rolling-durations": ({"plugins": ["impute", "scale", "rolling-features"],
                           "rolling-features": {"windows": ["15min", "1h"], "columns": METRICS[:6]}}, {}),
}
WINDOWED = {"rolling", "rolling-durations"}
FALLBACK = {
    "schema-reject": ({"plugins": ["schema-check", "impute"], "schema-check": {"on_violation": "reject",
                                                                             "range_tolerance": 100.0,
                                                                             "missing_tolerance": 1.0}},
                      "reject"),
    "rolling-dropped": ({"plugins": ["impute", "rolling-features"],
                         "rolling-features": {"windows": [3], "keep_original": False}}, "keep_original = false"),
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Two servers, five days; gaps in five metrics; float64, int64 and bool features; a 3-class target."""
    asd = datasets.load("asd")
    frame = asd[asd["entity"].isin(["omi-1", "omi-9"]) & (asd["timestamp"] < "2024-01-06")].reset_index(drop=True)
    rng = np.random.default_rng(7)
    for c in METRICS[:5]:
        frame.loc[rng.random(len(frame)) < 0.05, c] = np.nan
    # Gaps in m01 that say "incident": the models lean on the impute step's m01__missing indicator.
    frame.loc[(frame["label"] == 1) & (rng.random(len(frame)) < 0.6), "m01"] = np.nan
    frame["m06"] = frame["m06"].astype("float64")
    frame["load"] = (frame["m03"].fillna(0) * 1000).round().astype("int64")
    frame["busy"] = frame["m04"].fillna(0) > 0.5
    frame["level"] = pd.cut(frame["m02"].fillna(0), [-np.inf, 0.3, 0.6, np.inf], labels=False).astype("int64")
    path = tmp_path_factory.mktemp("fastpath-data") / "data.parquet"
    frame.to_parquet(path)
    return path, frame


def _build(tmp: Path, data_path: Path, preprocess: dict[str, Any], extra: dict[str, Any]) -> Any:
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.bundle import read_bundle
    from opsloop.runner import Runner
    from opsloop.session import Session

    table = _merge({**BASE, "project": {"name": "fp"}, "preprocess": preprocess}, extra)
    table["data"] = {**table["data"], "source": str(data_path)}
    (tmp / "opsloop.toml").write_text(tomli_w.dumps(table), encoding="utf-8")
    cfg = config_mod.read(tmp / "opsloop.toml")
    runner = Runner(Session.open(cfg))
    try:
        raw = data_mod.load(cfg)
        train, monitor = data_mod.periods(raw, cfg)
        version = runner.build(train).version
        return read_bundle(version.path, runner.plugins, ref=version.ref, digest=version.digest), monitor.frame
    finally:
        runner.close()


def _scoring_rows(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Later rows, with more gaps and values far outside training's range (clip must act)."""
    rows = frame.drop(columns=["label", "level"], errors="ignore").iloc[::37].head(60).reset_index(drop=True)
    rng = np.random.default_rng(11)
    for c in METRICS[:8]:
        rows.loc[rng.random(len(rows)) < 0.15, c] = np.nan
    rows.loc[3, "m07"] = np.float32(25.0)
    rows.loc[4, "m08"] = np.float32(-3.5)
    rows.loc[5, "m06"] = 1e6
    rows.loc[6, "load"] = -40_000
    return rows


def _batch(schema: InputSchema, frame: pd.DataFrame) -> Any:
    """The rows as the server receives them: JSON values checked into a batch."""
    records = []
    for row in frame.to_dict("records"):
        records.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else
                            None if isinstance(v, float) and math.isnan(v) else
                            v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return schema.from_instances(records)


def _assert_same(fast: tuple[np.ndarray, Any], slow: pd.DataFrame) -> None:
    assert np.array_equal(np.asarray(fast[0]), slow["prediction"].to_numpy()), (fast[0], slow["prediction"])
    if "score" in slow.columns:
        assert np.array_equal(np.asarray(fast[1], dtype=np.float64), slow["score"].to_numpy(dtype=np.float64))
    else:
        assert fast[1] is None


@pytest.fixture(scope="module")
def bundles(data: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path, _ = data
    out = {}
    for name, (preprocess, extra) in CASES.items():
        out[name] = _build(tmp_path_factory.mktemp(name), path, preprocess, extra)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_equals_replay_value_for_value(case: str, bundles: dict[str, Any]) -> None:
    model, monitor = bundles[case]
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    scorer = make_scorer(model, schema)
    assert isinstance(scorer, FastScorer), getattr(scorer, "reason", "")
    rows = _scoring_rows(monitor, model.manifest["target"])
    slow = model.predict(rows)  # the batch scorer, on the frame as it is
    _assert_same(scorer.score(_batch(schema, rows)), slow)
    # The features themselves, not only the predictions (trees are blind to some differences, e.g. clipping
    # beyond their last split), as XGBoost reads them: float32.
    replayed = model.transform(rows).frame[model.features].to_numpy(dtype=np.float32, na_value=np.nan)
    assert np.array_equal(scorer.transform(_batch(schema, rows)), replayed, equal_nan=True)
    for i in range(0, len(rows), 7):  # single-row requests, as most clients send them
        one = rows.iloc[[i]].reset_index(drop=True)
        alone = model.predict(one) if case in WINDOWED else slow.iloc[[i]].reset_index(drop=True)
        _assert_same(scorer.score(_batch(schema, one)), alone)


def test_every_builtin_step_is_covered() -> None:
    """Every built-in preprocess step is checked above: on the fast path against the replay, or falling back."""
    from opsloop.manager import PluginManager

    pm = PluginManager()
    builtin = [n for n, info in pm.known.items() if info.dist == "opsloop"]
    pm.load_all(builtin)
    compiled = {n for n in builtin if pm.implements(n, "compile_rows")}
    steps = {n for n in builtin if pm.implements(n, "preprocess")}
    assert {"schema-check", "impute", "scale", "clip", "label-horizon"} <= compiled <= steps
    covered = {step for pre, _ in (*CASES.values(), *FALLBACK.values()) for step in pre["plugins"]}
    assert steps <= covered


@pytest.mark.parametrize("case", list(FALLBACK))
def test_steps_without_fast_path_fall_back_to_replay(case: str, data: tuple[Path, pd.DataFrame],
                                                     tmp_path: Path) -> None:
    preprocess, reason = FALLBACK[case]
    model, monitor = _build(tmp_path, data[0], preprocess, {})
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    scorer = make_scorer(model, schema)
    assert isinstance(scorer, ReplayScorer) and reason in scorer.reason
    rows = monitor.drop(columns=["label", "level"], errors="ignore").head(20).reset_index(drop=True)
    _assert_same(scorer.score(_batch(schema, rows)), model.predict(rows))
    if case == "schema-reject":  # the plugin still judges each request: a refusal is a 422 with its reason
        rows.loc[0, "m09"] = np.float32(1e6)
        with pytest.raises(RequestError) as refused:
            scorer.score(_batch(schema, rows))
        assert refused.value.status == 422 and "m09" in refused.value.message


def test_the_flavor_compiles_its_own_predict_and_another_flavor_replays(bundles: dict[str, Any],
                                                                       data: tuple[Path, pd.DataFrame],
                                                                       tmp_path: Path) -> None:
    model, _ = bundles["no-steps"]
    plugin, predict = model.plugins.first("compile_predict", model=model, threads=1)
    assert plugin == "xgboost" and callable(predict)
    # the sklearn flavor compiles Isolation Forests only (_skops_flavor); a random forest classifier replays
    trees, monitor = _build(tmp_path, data[0], {"plugins": ["impute"]},
                            {"train": {"plugins": ["sklearn"], "sklearn": {"params": {"n_estimators": 5}}}})
    schema = InputSchema.from_manifest(trees.manifest, max_rows=1000)
    scorer = make_scorer(trees, schema)
    assert isinstance(scorer, ReplayScorer)
    assert scorer.reason == "flavor 'sklearn' has no fast predict (no plugin implements compile_predict for it)"
    rows = monitor.drop(columns=["label", "level"], errors="ignore").head(20).reset_index(drop=True)
    _assert_same(scorer.score(_batch(schema, rows)), trees.predict(rows))


def test_ops_get_the_rows_series_keys_and_times_and_may_refuse_rows(bundles: dict[str, Any]) -> None:
    """What a stateful op (per-series history in the server) will read: `RowContext` as the replay sees the rows."""
    from opsloop import DataError, RowContext

    model, monitor = bundles["no-steps"]
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    scorer = make_scorer(model, schema)
    assert isinstance(scorer, FastScorer)
    rows = _scoring_rows(monitor, "label").head(25)
    seen: list[RowContext] = []
    scorer.ops.append(lambda work, ctx: seen.append(ctx))
    batch = _batch(schema, rows)
    scorer.score(batch)
    ctx = seen[-1]
    frame = schema.frame(batch)  # what the replay scores
    assert ctx.count == 25 and list(ctx.series) == frame["entity"].tolist() == rows["entity"].tolist()
    assert ctx.times.dtype == np.dtype("datetime64[ns]")
    assert np.array_equal(ctx.times, frame["timestamp"].to_numpy()) and ctx.times is ctx.times  # parsed once

    def refuse(work: np.ndarray, ctx: RowContext) -> None:
        raise DataError(f"series {ctx.series[0]!r}: rows out of order")
    scorer.ops.append(refuse)
    with pytest.raises(RequestError) as refused:
        scorer.score(batch)
    assert refused.value.status == 422 and "rows out of order" in refused.value.message


def test_switching_the_fast_path_off_replays(bundles: dict[str, Any]) -> None:
    model, monitor = bundles["check-impute-scale-clip"]
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    scorer = make_scorer(model, schema, fast=False)
    assert isinstance(scorer, ReplayScorer) and "off" in scorer.reason
    rows = _scoring_rows(monitor, "label").head(10)
    _assert_same(scorer.score(_batch(schema, rows)), model.predict(rows))


# Doubles, as clients send them (0.48, not float32's 0.4799999893): the server must round as pandas does.
_value = st.one_of(st.none(), st.floats(min_value=-50, max_value=50),
                   st.sampled_from([0.0, -0.0, 1.0, 3.4e38, -3.4e38, 1e-40]))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=st.lists(_value, min_size=19, max_size=19), load=st.integers(-10**6, 10**6), busy=st.booleans(),
       case=st.sampled_from(["check-impute-scale-clip", "constant-clip-robust", "regression", "multiclass"]))
def test_any_row_scores_the_same_both_ways(values: list[float | None], load: int, busy: bool, case: str,
                                           bundles: dict[str, Any]) -> None:
    model, _ = bundles[case]
    schema = InputSchema.from_manifest(model.manifest, max_rows=10)
    record = {"entity": "omi-1", "timestamp": "2024-01-05T10:00:00", **dict(zip(METRICS, values, strict=True)),
              "load": load, "busy": busy}
    batch = schema.from_instances([record])
    frame = schema.frame(batch)
    scorer = make_scorer(model, schema)
    _assert_same(scorer.score(batch), model.predict(frame))
    replayed = model.transform(frame).frame[model.features].to_numpy(dtype=np.float32, na_value=np.nan)
    assert np.array_equal(scorer.transform(batch), replayed, equal_nan=True)


def test_doubles_are_rounded_to_float32_before_the_steps_as_the_replay_does(bundles: dict[str, Any]) -> None:
    """Doubles whose scaled value depends on rounding them to float32 first: the fast path must agree."""
    model, monitor = bundles["impute-mean-minmax"]
    step = next(s for s in model.manifest["steps"] if s["plugin"] == "scale")
    center, scale = step["state"]["center"]["m02"], step["state"]["scale"]["m02"]
    candidates = np.random.default_rng(3).random(200_000)
    direct = ((candidates - center) / scale).astype(np.float32)
    rounded = ((candidates.astype(np.float32).astype(np.float64) - center) / scale).astype(np.float32)
    tricky = candidates[direct != rounded][:20]
    assert len(tricky) >= 5  # such doubles exist: the test can tell the two orders apart
    rows = monitor.drop(columns=["label"], errors="ignore").head(len(tricky)).reset_index(drop=True)
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    batch = _batch(schema, rows)
    batch.numeric[:, schema.index["m02"]] = tricky  # what a client's JSON doubles become
    replayed = model.transform(schema.frame(batch)).frame[model.features].to_numpy(dtype=np.float32)
    assert np.array_equal(make_scorer(model, schema).transform(batch), replayed, equal_nan=True)


def test_binary_labels_break_ties_like_predict_proba_argmax() -> None:
    from opsloop.plugins.xgboost_trainer import binary_labels

    p = np.array([0.5, np.nextafter(np.float32(0.5), 1), np.nextafter(np.float32(0.5), 0), 0.0, 1.0, 0.7, 1e-8],
                 dtype=np.float32)
    classes = np.array([0, 1])
    proba = np.vstack((1.0 - p, p)).transpose()  # what XGBClassifier.predict_proba returns
    assert np.array_equal(binary_labels(p, classes), classes[proba.argmax(axis=1)])
    assert binary_labels(p, classes).tolist()[:3] == [0, 1, 0]


@pytest.mark.parametrize("case", sorted(WINDOWED))
def test_a_series_reach_before_a_row_gives_the_whole_series_value(case: str, bundles: dict[str, Any]) -> None:
    """What the server's kept history relies on: the rows a step's `window_reach` names, put before a row,
    give that row, bit for bit, what batch scoring of the whole series gives it (gaps included)."""
    model, monitor = bundles[case]
    schema = InputSchema.from_manifest(model.manifest, max_rows=1000)
    scorer = make_scorer(model, schema)
    (state,) = [s["state"] for s in model.manifest["steps"] if s["plugin"] == "rolling-features"]
    reach = model.plugins.call("rolling-features", "window_reach", state=state, options=None)
    assert reach == (opsloop.Reach(rows=3) if case == "rolling" else opsloop.Reach(seconds=3600))
    series = monitor[monitor["entity"] == "omi-9"].drop(columns=["label", "level"], errors="ignore")
    series = series[np.random.default_rng(2).random(len(series)) > 0.2].reset_index(drop=True)  # gaps
    full = model.predict(series)
    for t in (0, 1, 10, 100, 333, len(series) - 1):
        when = series["timestamp"]
        kept = series.index[(series.index < t) & (series.index >= t - reach.rows)] if reach.rows else \
            series.index[(series.index < t) & (when > when[t] - pd.Timedelta(seconds=reach.seconds))]
        first = kept.min() if len(kept) else t
        rows = series.iloc[max(first - (1 if reach.seconds else 0), 0):t + 1].reset_index(drop=True)
        prediction, score = scorer.score(_batch(schema, rows))
        assert prediction[-1] == full["prediction"].iloc[t] and score[-1] == full["score"].iloc[t], t
