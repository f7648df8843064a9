"""The `batch` deploy target: scores CSV and Parquet files in chunks, like in-memory prediction.

The model is a scikit-learn LogisticRegression fitted on real ASD rows and
wrapped in a `LoadedModel` directly (no trainer plugin needed); every
prediction the plugin writes is compared with `model.predict` on the same
rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import opsloop.config
import pandas as pd
import pytest
from opsloop import (
    ConfigError,
    DataError,
    Dataset,
    ModelVersion,
    PluginCallError,
    Preprocessed,
    RunContext,
    datasets,
    hookimpl,
)
from opsloop.bundle import LoadedModel, input_schema
from opsloop.manager import PluginManager
from opsloop.plugins.batch_deploy import Options, window_reach, window_rows
from sklearn.linear_model import LogisticRegression

METRICS = [f"m{j:02d}" for j in range(1, 20)]
TRAIN_SERVERS = ["omi-8", "omi-9"]
SCORE_SERVERS = ["omi-10", "omi-11"]
WINDOW = 12
WINDOWED = [f"m0{j}_past{WINDOW}" for j in (1, 2, 3)]


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    return datasets.load("asd")


@pytest.fixture(scope="module")
def estimator(asd: pd.DataFrame) -> LogisticRegression:
    train = asd[asd["entity"].isin(TRAIN_SERVERS)]
    return LogisticRegression(max_iter=1000, class_weight="balanced").fit(train[METRICS], train["label"])


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    return RunContext(run_id="t", workdir=tmp_path, model_name="m", config=opsloop.config.read(workdir=tmp_path))


@pytest.fixture
def version(tmp_path: Path) -> ModelVersion:
    return ModelVersion(name="m", version=1, created_at="2024-01-15T00:00:00Z", path=tmp_path)


@pytest.fixture
def pm() -> PluginManager:
    plugins = PluginManager()
    plugins.load("batch")
    return plugins


def loaded(estimator, asd, pm, run, *, steps=(), features=METRICS) -> LoadedModel:
    raw = Dataset.from_frame(asd.head(10), target="label", time="timestamp", series="entity")
    manifest = {"task": "classification", "features": list(features), "input_schema": input_schema(raw),
                "steps": list(steps), "target": "label", "time": "timestamp", "series": "entity"}
    return LoadedModel(manifest=manifest, estimator=estimator, path=run.workdir, plugins=pm, run=run, ref="m:1")


@pytest.fixture
def model(estimator, asd, pm, run) -> LoadedModel:
    return loaded(estimator, asd, pm, run)


@pytest.fixture(scope="module")
def rows(asd: pd.DataFrame) -> pd.DataFrame:
    return asd[asd["entity"].isin(SCORE_SERVERS)].reset_index(drop=True)


def deploy(pm, version, model, run, dataset=None, **options):
    return pm.call("batch", "deploy", version=version, model=model, dataset=dataset, options=Options(**options),
                   run=run)


def expected(model: LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
    preds = model.predict(frame)
    return pd.DataFrame({"entity": frame["entity"], "timestamp": frame["timestamp"],
                         "prediction": preds["prediction"].to_numpy(), "score": preds["score"].to_numpy(),
                         "model": "m:1"})


#: Scores agree to float32 resolution, not bit for bit (issue 8): scikit-learn keeps float32 inputs in
#: float32, and BLAS sums each row's 19 products in an order that depends on the batch's size and
#: alignment, so a row scored in a chunk of 3,000 and in a frame of 8,640 can differ by a few float32
#: ulps of the largest product (seen: 1.9e-6 relative). 1e-5 is about 4 x 19 float32 epsilons.
FLOAT32_RTOL = 1e-5


def assert_same_predictions(out: pd.DataFrame, want: pd.DataFrame, rtol: float = FLOAT32_RTOL) -> None:
    assert list(out.columns) == ["entity", "timestamp", "prediction", "score", "model"]
    assert len(out) == len(want)
    assert out["entity"].astype(str).tolist() == want["entity"].astype(str).tolist()
    assert (pd.to_datetime(out["timestamp"]).to_numpy() == want["timestamp"].to_numpy()).all()
    np.testing.assert_array_equal(out["prediction"].to_numpy(), want["prediction"].to_numpy())
    np.testing.assert_allclose(out["score"].to_numpy(), want["score"].to_numpy(), rtol=rtol)
    assert set(out["model"]) == {"m:1"}


def test_parquet_input_gives_the_in_memory_predictions(pm, version, model, run, rows, tmp_path):
    rows.to_parquet(tmp_path / "scoring.parquet")

    deployment = deploy(pm, version, model, run, input="scoring.parquet")

    out_path = tmp_path / ".opsloop" / "predictions" / "m-v1.parquet"
    assert deployment.target == "batch" and deployment.model == "m:1"
    assert deployment.location == str(out_path)
    assert deployment.details["rows"] == len(rows) == 8640
    assert deployment.details["chunks"] == 1 and deployment.details["seconds"] >= 0
    out = pd.read_parquet(out_path)
    assert_same_predictions(out, expected(model, rows))
    assert 0 < out["prediction"].mean() < 1  # the model predicts both classes on these servers


def test_csv_input_and_csv_output(pm, version, model, run, rows, tmp_path):
    rows.to_csv(tmp_path / "scoring.csv", index=False)

    deployment = deploy(pm, version, model, run, input="scoring.csv", output="out/preds.csv", chunk_rows=3000)

    assert deployment.location == str(tmp_path / "out" / "preds.csv")
    assert deployment.details == {"rows": 8640, "seconds": deployment.details["seconds"], "chunks": 3,
                                  "logged": 8640, "request_id": deployment.details["request_id"],
                                  "log": str(tmp_path / ".opsloop" / "serving" / "predictions.db")}
    out = pd.read_csv(tmp_path / "out" / "preds.csv")
    assert_same_predictions(out, expected(model, rows))


def test_tiny_chunks_equal_one_chunk(pm, version, model, run, rows, tmp_path):
    rows.to_parquet(tmp_path / "scoring.parquet")
    whole = deploy(pm, version, model, run, input="scoring.parquet", output="whole.parquet")
    chunked = deploy(pm, version, model, run, input="scoring.parquet", output="chunked.parquet", chunk_rows=777)

    assert whole.details["chunks"] == 1
    assert chunked.details["chunks"] == -(-len(rows) // 777) == 12
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "chunked.parquet"),
                                  pd.read_parquet(tmp_path / "whole.parquet"))


def test_scores_the_runs_dataset_when_no_input_is_set(pm, version, model, run, rows, tmp_path):
    dataset = Dataset.from_frame(rows, target="label", time="timestamp", series="entity", name="monitor")

    deployment = deploy(pm, version, model, run, dataset=dataset, chunk_rows=5000, keep=["label"])

    out = pd.read_parquet(deployment.location)
    assert list(out.columns) == ["entity", "timestamp", "label", "prediction", "score", "model"]
    assert out["label"].tolist() == rows["label"].tolist()
    assert_same_predictions(out.drop(columns="label"), expected(model, rows))
    assert deployment.details["chunks"] == 2


def test_nothing_to_score_is_a_data_error(pm, version, model, run):
    with pytest.raises(PluginCallError) as info:
        deploy(pm, version, model, run)
    assert isinstance(info.value.cause, DataError)
    assert "set [deploy.batch] input" in str(info.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_missing_columns_name_the_file_and_the_columns(pm, version, model, run, rows, tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    bad = rows.drop(columns=["m05", "m17"])
    bad.to_parquet(path) if suffix == ".parquet" else bad.to_csv(path, index=False)

    with pytest.raises(PluginCallError) as info:
        deploy(pm, version, model, run, input=str(path))
    assert isinstance(info.value.cause, DataError)
    message = str(info.value)
    assert str(path) in message and "m05, m17" in message
    assert not (tmp_path / ".opsloop" / "predictions").exists()


def test_missing_file_and_bad_output_suffix(pm, version, model, run, tmp_path):
    with pytest.raises(PluginCallError, match="input file not found: .*nowhere.parquet"):
        deploy(pm, version, model, run, input="nowhere.parquet")
    with pytest.raises(ConfigError, match=r"\[deploy.batch.output\] wrong value: output .preds.json. must end in"):
        opsloop.config.structure({"output": "preds.json"}, Options, section="deploy.batch", source=None)
    with pytest.raises(ConfigError, match="chunk_rows"):
        opsloop.config.structure({"chunk_rows": 0}, Options, section="deploy.batch", source=None)


def test_a_failure_midway_leaves_no_half_output(pm, version, model, run, rows, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("previous predictions\n")
    broken = rows.astype({"m03": object})
    broken.loc[6000, "m03"] = "0.4o"  # the third 2,500-row chunk cannot be read as float32
    broken.to_csv(tmp_path / "broken.csv", index=False)

    with pytest.raises(PluginCallError) as info:
        deploy(pm, version, model, run, input="broken.csv", output="preds.csv", chunk_rows=2500)

    assert isinstance(info.value.cause, DataError) and "'m03' cannot be read as float32" in str(info.value)
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".preds")) == []


# ---------------------------------------------------------------------------
# Windowed features: the last rows of each series are carried between chunks
# ---------------------------------------------------------------------------


class PastMean:
    """A windowed step: the mean of m01..m03 over the previous WINDOW rows of the same server."""

    @hookimpl
    def preprocess(self, dataset, state, options, run):
        frame = dataset.frame
        groups = frame.groupby(dataset.series, sort=False)
        new = {name: groups[name[:3]].transform(lambda s: s.shift(1).rolling(WINDOW, min_periods=1).mean())
                     .fillna(frame[name[:3]]) for name in WINDOWED}
        return Preprocessed(dataset=dataset.derive(frame.assign(**new)), state={"max_window": WINDOW})


@pytest.fixture
def windowed(asd, pm, run) -> LoadedModel:
    pm.register(PastMean(), name="past-mean")
    train = asd[asd["entity"].isin(TRAIN_SERVERS)]
    features = pm.call("past-mean", "preprocess", dataset=Dataset.from_frame(train, target="label",
                       time="timestamp", series="entity"), state=None, options=None, run=run).dataset.frame
    estimator = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features[[*METRICS, *WINDOWED]],
                                                                               features["label"])
    step = {"plugin": "past-mean", "options": None, "state": {"max_window": WINDOW}}
    return loaded(estimator, asd, pm, run, steps=[step], features=[*METRICS, *WINDOWED])


def test_windowed_features_are_exact_across_chunks(pm, version, windowed, run, rows, tmp_path):
    rows.to_parquet(tmp_path / "scoring.parquet")

    deployment = deploy(pm, version, windowed, run, input="scoring.parquet", output="carry.parquet",
                        chunk_rows=500)
    deploy(pm, version, windowed, run, input="scoring.parquet", output="nocarry.parquet", chunk_rows=500,
           carry_rows=0)

    assert deployment.details["carry_rows"] == WINDOW + 1 and deployment.details["chunks"] == 18
    want = expected(windowed, rows)
    assert_same_predictions(pd.read_parquet(tmp_path / "carry.parquet"), want)
    # Without the carry-over, rows right after each chunk boundary lose their past: scores differ.
    cut = pd.read_parquet(tmp_path / "nocarry.parquet")
    differs = ~np.isclose(cut["score"].to_numpy(), want["score"].to_numpy(), rtol=FLOAT32_RTOL)
    assert differs.any() and set(np.flatnonzero(differs) % 500) <= set(range(WINDOW))


def rolling_model(asd: pd.DataFrame, pm, run, *, windows: list) -> LoadedModel:
    """A bundle with the built-in `rolling-features` step (three metrics) and a logistic regression on it."""
    from opsloop.bundle import unstructure_options

    pm.load("rolling-features")
    options = pm.options_class("rolling-features")(windows=windows, columns=["m01", "m02", "m04"])
    train = Dataset.from_frame(asd[asd["entity"].isin(TRAIN_SERVERS)], target="label", time="timestamp",
                               series="entity")
    fitted = pm.call("rolling-features", "preprocess", dataset=train, state=None, options=options, run=run)
    features = [c for c in fitted.dataset.feature_columns if c not in ("entity", "timestamp")]
    estimator = LogisticRegression(max_iter=2000, class_weight="balanced").fit(fitted.dataset.frame[features],
                                                                               fitted.dataset.frame["label"])
    step = {"plugin": "rolling-features", "options": unstructure_options(options), "state": dict(fitted.state)}
    return loaded(estimator, asd, pm, run, steps=[step], features=features)


def test_rolling_features_bundle_is_exact_across_chunks(asd, pm, version, run, rows, tmp_path):
    """The built-in `rolling-features` step, replayed chunk by chunk, gives the whole-file predictions."""
    model = rolling_model(asd, pm, run, windows=[6, 24])
    rows.to_parquet(tmp_path / "scoring.parquet")

    deployment = deploy(pm, version, model, run, input="scoring.parquet", chunk_rows=1000)
    cut = deploy(pm, version, model, run, input="scoring.parquet", output="cut.parquet", chunk_rows=1000,
                 carry_rows=0)

    assert deployment.details["carry_rows"] == 25 and deployment.details["chunks"] == 9
    want = expected(model, rows)
    # pandas' rolling kernels keep running sums, so a window's float32 mean can differ in the last
    # bits with where the run began; the carried past makes everything else the same.
    assert_same_predictions(pd.read_parquet(deployment.location), want)
    gap = np.abs(pd.read_parquet(cut.location)["score"].to_numpy() - want["score"].to_numpy())
    assert gap.max() > 1e-3  # without the carry-over, rows after each boundary lose their past


def test_windows_in_time_are_exact_across_chunks_with_gaps(asd, pm, version, run, rows, tmp_path):
    """Durations ("30min", "2h") on rows with gaps: the carried past is the last two hours of each series and
    the row before them, so chunked predictions equal the whole file's."""
    model = rolling_model(asd, pm, run, windows=["30min", "2h"])
    gappy = rows[np.random.default_rng(5).random(len(rows)) > 0.25].reset_index(drop=True)
    gappy.to_parquet(tmp_path / "gappy.parquet")

    deployment = deploy(pm, version, model, run, input="gappy.parquet", chunk_rows=700)
    cut = deploy(pm, version, model, run, input="gappy.parquet", output="cut.parquet", chunk_rows=700,
                 carry_rows=0)

    assert deployment.details["carry_seconds"] == 7200 and "carry_rows" not in deployment.details
    assert deployment.details["chunks"] == -(-len(gappy) // 700)
    assert_same_predictions(pd.read_parquet(deployment.location), expected(model, gappy))
    gap = np.abs(pd.read_parquet(cut.location)["score"].to_numpy() - expected(model, gappy)["score"].to_numpy())
    assert gap.max() > 1e-3  # without the carry-over, rows after each boundary lose their past


def test_windowed_scoring_refuses_rows_out_of_time_order(pm, version, windowed, run, rows, tmp_path):
    rows.iloc[::-1].to_parquet(tmp_path / "reversed.parquet")
    with pytest.raises(PluginCallError, match="not in time order within series omi-11.*sort the file by "
                                              "entity, timestamp"):
        deploy(pm, version, windowed, run, input="reversed.parquet", chunk_rows=1000)


def test_window_rows_reads_the_steps():
    assert window_rows({"steps": []}) == 0
    assert window_rows({"steps": [{"plugin": "impute", "options": {}, "state": {"medians": {"m01": 0.5}}}]}) == 0
    assert window_rows({"steps": [{"plugin": "x", "options": None, "state": {"max_window": 30}}]}) == 31
    rolling = {"plugin": "rolling-features", "options": {"windows": [3, 12, 6]}, "state": {}}
    assert window_rows({"steps": [rolling]}) == 13
    with pytest.raises(DataError, match="set \\[deploy.batch\\] carry_rows"):
        window_rows({"steps": [{"plugin": "rolling-features", "options": {}, "state": {}}]})
    mixed = {"plugin": "rolling-features", "options": {}, "state": {"windows": [6, "15min", "1h"]}}
    assert window_reach({"steps": [mixed, rolling]}) == (13, 3600.0)
    assert window_reach({"steps": [{"plugin": "rolling-features", "options": {}, "state": {"windows": ["2h"]}}]}) \
        == (0, 7200.0)


# ---------------------------------------------------------------------------
# Memory: a big file is scored in bounded memory
# ---------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import gc, re, sys
    from pathlib import Path
    import pandas as pd, pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    import opsloop.config
    from opsloop import Dataset, ModelVersion, RunContext, datasets
    from opsloop.bundle import LoadedModel, input_schema
    from opsloop.manager import PluginManager
    from opsloop.plugins.batch_deploy import Options

    path, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    asd = datasets.load("asd")
    metrics = [f"m{j:02d}" for j in range(1, 20)]
    train = asd[asd["entity"].isin(["omi-8", "omi-9"])]
    estimator = LogisticRegression(max_iter=1000).fit(train[metrics], train["label"])
    raw = Dataset.from_frame(asd.head(10), target="label", time="timestamp", series="entity")
    manifest = {"task": "classification", "features": metrics, "input_schema": input_schema(raw), "steps": [],
                "target": "label", "time": "timestamp", "series": "entity"}
    pm = PluginManager()
    run = RunContext(run_id="t", workdir=workdir, model_name="m", config=opsloop.config.read(workdir=workdir))
    model = LoadedModel(manifest=manifest, estimator=estimator, path=workdir, plugins=pm, run=run, ref="m:1")
    version = ModelVersion(name="m", version=1, created_at="x", path=workdir)
    pm.load("batch")

    def score(file):
        pm.call("batch", "deploy", version=version, model=model, dataset=None,
                options=Options(input=str(file), chunk_rows=20_000), run=run)

    # Warm up on the first 100,000 rows, so that first-use allocations are not counted.
    pq.write_table(pq.ParquetFile(path).read_row_groups(range(5)), workdir / "warm.parquet")
    score(workdir / "warm.parquet")
    del asd, train, raw
    gc.collect()

    def kb(field):
        return int(re.search(rf"^{field}:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))

    def growth(work):  # how far peak RSS rose above the RSS before `work`
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = kb("VmRSS")
        work()
        return kb("VmHWM") - before

    chunked = growth(lambda: score(path))
    whole = growth(lambda: model.predict(pd.read_parquet(path)))
    print(chunked, whole)
""")


def test_a_big_file_is_scored_in_bounded_memory(asd, tmp_path):
    """Peak RSS of chunked scoring grows far less than loading and scoring the file whole.

    Measured in a fresh process as the rise of peak resident memory (Linux
    VmHWM, reset through /proc/self/clear_refs before each measurement),
    because pyarrow's buffers are invisible to tracemalloc; Arrow's system
    allocator makes RSS follow what is really in use.
    """
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    copies = [asd.assign(entity=asd["entity"] + f"-copy{k}") for k in range(12)]
    big = pd.concat(copies, ignore_index=True)  # 622,080 real rows, 144 servers: whole grows, chunks do not
    big.to_parquet(tmp_path / "big.parquet", row_group_size=20_000)
    del big, copies

    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big.parquet"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    chunked_kb, whole_kb = map(int, proc.stdout.split())

    out = pd.read_parquet(tmp_path / ".opsloop" / "predictions" / "m-v1.parquet")
    assert len(out) == 622_080
    assert whole_kb > 30_000, f"loading the file whole should take tens of MB, took {whole_kb} kB"
    print(f"peak RSS growth: chunked {chunked_kb} kB, whole {whole_kb} kB")
    assert chunked_kb * 2.5 < whole_kb, f"chunked scoring grew peak RSS by {chunked_kb} kB, whole by {whole_kb} kB"
