"""A third-party preprocess step joins the server's fast path through `compile_rows` (issue 13, item 5).

A plugin package made with the testing kit (`make_plugin_dist`: an entry
point discovered as if pip had installed it) holds one step in three
variants: `centre` implements `preprocess` and `compile_rows` (the worked
example of docs/hooks.md: it rewrites float32 columns and adds a float64
one, which the built-in `impute` and `scale` after it fill and scale);
`centre-slow` only
`preprocess`; `centre-broken` a `compile_rows` that raises. Each is trained
through the real runner on the embedded ASD data and served over HTTP: the
first on the fast path, answering what `LoadedModel.predict` gives, value for
value; the others on the replay path, with the reason in the model metadata
and on `/metrics`, and still answering.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread

STEP = '''
"""Centres float columns on their training means and adds the spread of the first two."""
import numpy
from opsloop import NoFastPath, Preprocessed, hookimpl


def centred(values, means):
    return values - means


@hookimpl
def preprocess(dataset, state, options, run):
    frame = dataset.frame
    if state is None:
        cols = [c for c in dataset.feature_columns if frame[c].dtype.kind == "f"][:4]
        state = {"columns": cols, "mean": [float(frame[c].astype("float64").mean()) for c in cols]}
    cols = state["columns"]
    out = centred(frame[cols].to_numpy("float64", na_value=numpy.nan), numpy.array(state["mean"]))
    new = frame.assign(**{c: out[:, j].astype(frame[c].dtype) for j, c in enumerate(cols)})
    new["spread"] = out[:, 0] - out[:, 1]
    return Preprocessed(dataset=dataset.derive(new), state=state)
'''
COMPILE = '''

@hookimpl
def compile_rows(state, options, layout):
    cols = state["columns"]
    if len(cols) < 2:
        raise NoFastPath("centre: fewer than two columns")
    idx = layout.columns(cols)
    means = numpy.array(state["mean"])
    spread = layout.add("spread", "float64")
    round_ = layout.rounding(cols)

    def centre(work, rows):
        out = centred(work[:, idx], means)
        work[:, idx] = out
        work[:, spread] = out[:, 0] - out[:, 1]
        if round_:
            round_(work, rows)
    return centre
'''
BROKEN = r'''

@hookimpl
def compile_rows(state, options, layout):
    raise ValueError('no luck "today" in C:\\temp')
'''
MODULES = {"opsloop_centre": STEP + COMPILE, "opsloop_centre_slow": STEP, "opsloop_centre_broken": STEP + BROKEN}
ENTRY_POINTS = {"centre": "opsloop_centre", "centre-slow": "opsloop_centre_slow",
                "centre-broken": "opsloop_centre_broken"}


def config(step: str) -> dict[str, Any]:
    """Two ASD servers, four days to train, a small booster: quick, but the real lifecycle."""
    return {
        "project": {"name": f"asd-{step}"},
        "data": {"source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
                 "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-05'",
                 "monitor": "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp >= '2024-01-12'"},
        "preprocess": {"plugins": [step, "impute", "scale"], "impute": {"add_indicator": True}},
        "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 20, "n_jobs": 1, "max_depth": 4}},
        "validate": {"plugins": []}, "deploy": {"plugins": []}, "monitor": {"plugins": []},
        "retrain": {"plugins": []},
    }


@pytest.fixture
def centre(opsloop_project: Any, make_plugin_dist: Any) -> Any:
    """`centre(step)`: the project with the `opsloop-centre` package installed and a version trained with `step`."""
    make_plugin_dist(dist="opsloop-centre", version="1.0", modules=MODULES, entry_points=ENTRY_POINTS)
    project = opsloop_project()

    def train(step: str) -> Any:
        project.write_config(config(step))
        project.run("run").assert_ok()
        return project
    return train


def rows_and_replay(project: Any, model: str) -> tuple[list[dict[str, Any]], Any]:
    """Real later rows as a client sends them, and what batch scoring (`LoadedModel.predict`) gives for them."""
    from opsloop import config as config_mod
    from opsloop import data
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.session import Session

    cfg = config_mod.read(workdir=project.path)
    rows = data.periods(data.load(cfg), cfg)[1].frame.drop(columns=["label"]).iloc[::29].reset_index(drop=True)
    with Session.open(cfg, sections=("store",)).open_store() as store:
        version = store.get(model, store.alias(model, "production"))
    loaded = read_bundle(version.path, PluginManager(), ref=version.ref, digest=version.digest)
    records = [{k: (v.isoformat() if hasattr(v, "isoformat") else v.item() if hasattr(v, "item") else v)
                for k, v in row.items()} for row in rows.to_dict("records")]
    return records, loaded.predict(rows)


def post(url: str, path: str, body: Any) -> tuple[int, Any]:
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if path != "/metrics" else data.decode())
    finally:
        conn.close()


def served(url: str, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    status, answer = post(url, "/predict", {"instances": records})
    assert status == 200, answer
    return (np.array([p["prediction"] for p in answer["predictions"]]),
            np.array([p["score"] for p in answer["predictions"]], dtype=np.float64))


def model_info(url: str) -> str:
    status, text = post(url, "/metrics", None)
    assert status == 200
    return next(line for line in text.splitlines() if line.startswith("opsloop_model_info{"))


def labels(line: str) -> dict[str, str]:
    """The labels of one sample line, unescaped as the Prometheus text format says (\\, \", \n)."""
    unescape = {"\\": "\\", '"': '"', "n": "\n"}
    return {key: re.sub(r"\\(.)", lambda m: unescape[m.group(1)], value)
            for key, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line)}


def test_a_third_party_step_with_compile_rows_is_served_on_the_fast_path(centre: Any, tmp_path: Path) -> None:
    project = centre("centre")
    records, replay = rows_and_replay(project, "asd-centre")
    assert len(records) >= 100
    app = create_app(workdir=project.path, model="asd-centre", log_path=tmp_path / "log.db")
    with ServerThread(app) as server:
        scorer = app.watcher.current.scorer
        assert scorer.kind == "fast", scorer.reason
        status, meta = post(server.url, "/v2/models/asd-centre", None)
        assert meta["parameters"]["scorer"] == "fast" and meta["parameters"]["fallback_reason"] == ""
        assert 'scorer="fast",fallback_reason=""' in model_info(server.url)
        # the features themselves, as the flavor reads them, then the answers: one request, then single rows
        batch = app.watcher.current.schema.from_instances(records)
        loaded = app.watcher.current.model
        frame = app.watcher.current.schema.frame(batch)
        features = loaded.transform(frame).frame[loaded.features].to_numpy(dtype=np.float32, na_value=np.nan)
        steps = loaded.manifest["steps"]
        assert "spread" in loaded.features and "spread" in steps[1]["state"]["fill"]  # impute fills the new column
        assert {c["dtype"] for c in loaded.manifest["input_schema"] if c["name"] in steps[0]["state"]["columns"]} \
            == {"float32"}  # the rounding to float32 after the step matters
        assert np.array_equal(scorer.transform(batch), features, equal_nan=True)
        prediction, score = served(server.url, records)
        assert np.array_equal(score, replay["score"].to_numpy(dtype=np.float64))
        assert np.array_equal(prediction, replay["prediction"].to_numpy())
        for i in range(0, len(records), 17):
            prediction, score = served(server.url, records[i:i + 1])
            assert score[0] == replay["score"].iloc[i] and prediction[0] == replay["prediction"].iloc[i]
    assert len(set(replay["prediction"])) == 2  # the threshold splits these rows: the check means something


def test_the_same_step_without_compile_rows_replays_and_says_why(centre: Any, tmp_path: Path) -> None:
    project = centre("centre-slow")
    records, replay = rows_and_replay(project, "asd-centre-slow")
    app = create_app(workdir=project.path, model="asd-centre-slow", log_path=tmp_path / "log.db")
    reason = 'step "centre-slow" (opsloop-centre 1.0) has no fast path (it does not implement compile_rows)'
    with ServerThread(app) as server:
        status, meta = post(server.url, "/v2/models/asd-centre-slow", None)
        assert (meta["parameters"]["scorer"], meta["parameters"]["fallback_reason"]) == ("replay", reason)
        escaped = reason.replace('"', '\\"')  # the Prometheus text format's escaping of label values
        assert f'scorer="replay",fallback_reason="{escaped}"}} 1' in model_info(server.url)
        prediction, score = served(server.url, records)
        assert np.array_equal(score, replay["score"].to_numpy(dtype=np.float64))


def test_a_compile_rows_that_raises_replays_with_the_error_as_the_reason(centre: Any, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    project = centre("centre-broken")
    records, replay = rows_and_replay(project, "asd-centre-broken")
    with caplog.at_level(logging.WARNING, logger="opsloop.serving"):
        app = create_app(workdir=project.path, model="asd-centre-broken", log_path=tmp_path / "log.db")
    reason = app.watcher.current.scorer.reason
    assert app.watcher.current.scorer.kind == "replay"
    assert reason.startswith('plugin "centre-broken" (opsloop-centre 1.0) failed in compile_rows: ValueError(')
    assert 'no luck "today" in C:' in reason and "\\" in reason
    assert any("replay path" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    with ServerThread(app) as server:
        status, meta = post(server.url, "/v2/models/asd-centre-broken", None)
        assert meta["parameters"]["fallback_reason"] == reason
        line = model_info(server.url)
        assert line.endswith("} 1") and labels(line)["fallback_reason"] == reason  # quotes, backslashes escaped
        assert labels(line)["scorer"] == "replay"
        prediction, score = served(server.url, records)
        assert np.array_equal(score, replay["score"].to_numpy(dtype=np.float64))
    # a reason of any length and shape is one bounded label value on /metrics; the metadata keeps it whole
    from opsloop.serving.fastpath import ReplayScorer
    from opsloop.serving.metrics import REASON_CHARS, Metrics

    current = app.watcher.current
    long = attrs.evolve(current, scorer=ReplayScorer(current.model, current.schema, "why\n" + "x" * 1000))
    metrics = Metrics()
    metrics.model_loaded(long)
    line = next(x for x in metrics.render(alias="production").decode().splitlines()
                if x.startswith("opsloop_model_info{"))
    value = labels(line)["fallback_reason"]
    assert len(value) == REASON_CHARS and value.startswith("why xxx") and value.endswith("...")
