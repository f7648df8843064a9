"""A missing value (JSON null, NaN) in rows a pyod version scores: filled by the bundle's impute step when the
version was trained with one, else a clear refusal naming the row and the feature (HTTP 422 from the server,
a one-line error from batch scoring), never an internal error; and one client's refused rows never touch
another client's answers, series history or logged rows.

Everything runs for real: `opsloop run` on ASD rows (server omi-9, first week to train, the second to score),
`opsloop serve`'s app on 127.0.0.1 (opsloop.serving.app.create_app, docs/serving.md), JSON clients over
http.client, the prediction log read with sqlite3 (its tables are documented in docs/serving.md).
"""

from __future__ import annotations

import http.client
import json
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyod", reason="PyOD is not installed (pip install -e ./contrib/opsloop-pyod)")
pytest.importorskip("opsloop_pyod", reason="opsloop-pyod is not installed (pip install -e ./contrib/opsloop-pyod)")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from opsloop.testing import opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures

PLUGINS = ["pyod-ecod", "pyod-copod", "pyod-hbos", "pyod-iforest"]
OPTIONS = {"pyod-iforest": {"n_estimators": 40}}
SPLIT = "2024-01-08 12:00"
#: Where the rows of the scored week get a gap: (position among the omi-9 rows scored, metric).
GAPS = [(5, "m03"), (100, "m07"), (101, "m07"), (2000, "m19")]


# ---------------------------------------------------------------------------
# Helpers: projects, a server, clients
# ---------------------------------------------------------------------------


def trained(opsloop_project: Any, pyod_config: Any, plugin: str, steps: list[str], source: Path | None = None,
            **extra: Any) -> tuple[Any, str, dict[str, Any]]:
    """A project whose `opsloop run` trained `plugin` after the preprocess `steps`: (project, ref, run JSON)."""
    config = pyod_config(plugin, **OPTIONS.get(plugin, {}))
    config["preprocess"] = {"plugins": steps, **extra}
    if source is not None:
        config["data"]["source"] = str(source)
    project = opsloop_project(config=config)
    result = project.run("run").assert_ok().json
    return project, result["versions"][0]["ref"], result


def loaded(project: Any, ref: str) -> Any:
    """The registered version as batch scoring loads it (`LoadedModel`)."""
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager

    shown = project.run("models", "show", ref, "--json").assert_ok().json
    return read_bundle(Path(shown["path"]), PluginManager(), ref=ref, digest=shown["digest"])


def with_gaps(asd: pd.DataFrame, folder: Path) -> tuple[Path, pd.DataFrame]:
    """omi-9's rows with GAPS set to NaN in the scored week, as a Parquet file `[data] source` reads."""
    rows = asd[asd["entity"] == "omi-9"].reset_index(drop=True)
    scored = rows.index[rows["timestamp"] >= SPLIT]
    for position, metric in GAPS:
        rows.loc[scored[position], metric] = np.nan
    path = folder / "asd-gaps.parquet"
    rows.to_parquet(path)
    return path, rows


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON types, times as ISO strings, NaN as null."""
    return [{k: (v.isoformat() if isinstance(v, pd.Timestamp) else None if isinstance(v, float) and math.isnan(v)
                 else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.drop(columns=["label"], errors="ignore").to_dict("records")]


def columns_body(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> dict[str, Any]:
    """The same rows as an Open Inference Protocol JSON request: one input per column, NaN as null."""
    rows = records(frame)
    inputs = []
    for column in schema:
        datatype = "BYTES" if column["dtype"] in ("str", "object") or column["dtype"].startswith("datetime") \
            else "FP32"
        inputs.append({"name": column["name"], "datatype": datatype, "shape": [len(rows)],
                       "data": [r[column["name"]] for r in rows]})
    return {"inputs": inputs}


class Server:
    """`opsloop serve` for a project, on a thread of this process and a free port of 127.0.0.1."""

    def __init__(self, project: Any, model: str, log: Path, fast: bool = True) -> None:
        from opsloop.serving.app import create_app
        from opsloop.serving.server import ServerThread

        self.model = model
        self.log = log
        self.thread = ServerThread(create_app(model=model, workdir=project.path, port=0, log_path=log,
                                              fast_path=fast))

    def __enter__(self) -> Server:
        running = self.thread.__enter__()
        self.host, port = running.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.__exit__(*exc)  # stops cleanly: the log writer drains its queue first

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def predict(self, rows: list[dict[str, Any]]) -> tuple[int, Any]:
        return self.post("/predict", {"instances": rows})

    def infer(self, body: dict[str, Any]) -> tuple[int, Any]:
        return self.post(f"/v2/models/{self.model}/infer", body)

    def metadata(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request("GET", f"/v2/models/{self.model}")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def logged(self) -> dict[str, int]:
        """Rows in the prediction log by request id (read after the server stopped)."""
        con = sqlite3.connect(self.log)
        try:
            return dict(con.execute("SELECT request_id, count(*) FROM predictions GROUP BY 1").fetchall())
        finally:
            con.close()


def scores_of(answer: dict[str, Any]) -> np.ndarray:
    return np.array([p["score"] for p in answer["predictions"]], dtype=np.float64)


def outputs_of(answer: dict[str, Any], name: str) -> np.ndarray:
    return np.array(next(o["data"] for o in answer["outputs"] if o["name"] == name), dtype=np.float64)


def scored_week(asd: pd.DataFrame) -> pd.DataFrame:
    rows = asd[(asd["entity"] == "omi-9") & (asd["timestamp"] >= SPLIT)]
    return rows.drop(columns=["label"]).reset_index(drop=True)


# ---------------------------------------------------------------------------
# No impute step: refused, naming the row and the feature
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_without_impute_the_server_answers_422_naming_row_and_feature(plugin, opsloop_project, pyod_config, asd,
                                                                      tmp_path):
    project, ref, _ = trained(opsloop_project, pyod_config, plugin, ["schema-check"])
    model = loaded(project, ref)
    rows = scored_week(asd).iloc[40:44].reset_index(drop=True)
    gap = rows.copy()
    gap.loc[1, "m03"] = np.nan
    two = rows.copy()
    two.loc[2, "m07"] = np.nan
    two.loc[3, "m07"] = np.nan
    expected = model.predict(rows)["score"].to_numpy()
    for fast in (True, False):
        with Server(project, ref.split(":")[0], tmp_path / f"log-{fast}.db", fast=fast) as server:
            assert server.metadata()["parameters"]["scorer"] == ("fast" if fast else "replay")
            status, answer = server.predict(records(gap))
            assert status == 422, answer
            assert answer["error"].startswith(f"{plugin}: row 1 of the 4 rows scored: feature 'm03' is missing"), \
                answer
            assert "\n" not in answer["error"] and "impute" in answer["error"]
            status, answer = server.infer(columns_body(two, model.manifest["input_schema"]))
            assert status == 422, answer
            assert answer["error"].startswith(f"{plugin}: row 2 of the 4 rows scored: feature 'm07' is missing "
                                              "(null or NaN; 2 values missing in 2 rows)"), answer
            # The same rows, complete: the scores batch scoring gives, bit for bit, on both endpoints.
            status, answer = server.predict(records(rows))
            assert status == 200, answer
            assert np.array_equal(scores_of(answer), expected)
            good = answer["request_id"]
            status, answer = server.infer(columns_body(rows, model.manifest["input_schema"]))
            assert status == 200, answer
            assert np.array_equal(outputs_of(answer, "score"), expected)
        # Only the answered requests are in the prediction log: a refused request leaves nothing behind.
        assert server.logged() == {good: 4, answer["id"]: 4}


@pytest.mark.parametrize("plugin", ["pyod-ecod", "pyod-iforest"])
def test_without_impute_batch_scoring_stops_naming_row_and_feature(plugin, opsloop_project, pyod_config, asd,
                                                                   tmp_path):
    source, _ = with_gaps(asd, tmp_path)
    config = pyod_config(plugin, **OPTIONS.get(plugin, {}))
    config["preprocess"] = {"plugins": ["schema-check"]}
    config["data"]["source"] = str(source)
    project = opsloop_project(config=config)
    result = project.run("run").assert_error(
        'plugin "batch"', "failed in deploy",
        f"{plugin}: row 5 of the 2,160 rows scored: feature 'm03' is missing (null or NaN; 4 values missing "
        "in 4 rows)", "impute")
    assert "Traceback" not in result.stdout + result.stderr and "internal error" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------
# An impute step: scored, as the bundle fills the gap
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["pyod-ecod", "pyod-iforest"])
def test_with_impute_a_gap_is_scored_as_the_training_median_in_batch_and_served(plugin, opsloop_project, pyod_config,
                                                                                asd, tmp_path):
    source, rows = with_gaps(asd, tmp_path)
    project, ref, result = trained(opsloop_project, pyod_config, plugin, ["schema-check", "impute"], source)
    model = loaded(project, ref)
    deployed = pd.read_parquet(result["deployments"][0]["location"])
    week = rows[rows["timestamp"] >= SPLIT].drop(columns=["label"]).reset_index(drop=True)
    assert len(deployed) == len(week) == 2160 and deployed["score"].notna().all()
    assert (deployed["timestamp"].to_numpy() == week["timestamp"].to_numpy()).all()

    # A gap scores as the same row with the training rows' median in its place (impute's default).
    train = rows[rows["timestamp"] < SPLIT]
    filled = week.copy()
    for metric in {m for _, m in GAPS}:
        filled[metric] = filled[metric].fillna(np.float32(train[metric].astype("float64").median()))
    assert np.array_equal(deployed["score"].to_numpy(), model.predict(filled)["score"].to_numpy())
    gaps = [p for p, _ in GAPS]
    assert not np.array_equal(deployed["score"].to_numpy()[gaps], model.predict(scored_week(asd))["score"]
                              .to_numpy()[gaps])  # the real values score otherwise: the gap was not ignored

    # Served, fast path and replay: the rows with nulls get the batch's scores, bit for bit.
    sent = week.iloc[95:110].reset_index(drop=True)  # rows 100 and 101 have m07 missing
    for fast in (True, False):
        with Server(project, ref.split(":")[0], tmp_path / f"log-{fast}.db", fast=fast) as server:
            status, answer = server.predict(records(sent))
            assert status == 200, answer
            assert np.array_equal(scores_of(answer), deployed["score"].to_numpy()[95:110])
            status, answer = server.predict(records(week.iloc[[5]]))
            assert status == 200, answer
            assert np.array_equal(scores_of(answer), deployed["score"].to_numpy()[[5]])


# ---------------------------------------------------------------------------
# Other clients: unaffected, their series history included
# ---------------------------------------------------------------------------


def test_one_clients_missing_values_never_cost_another_clients_answers(opsloop_project, pyod_config, asd, tmp_path):
    """Two clients each stream a server's rows one by one while a third sends the same rows with a gap, at the
    same time. The version has windowed features (rolling-features, which keeps each series' recent rows) and
    no impute step: the gaps are refused, and the good clients get every row scored as batch scoring scores it
    (a refused row entering a series' history would change the next rows' windows, or make them arrive out of
    time order); the log holds exactly their rows."""
    project, ref, _ = trained(opsloop_project, pyod_config, "pyod-ecod", ["rolling-features"],
                              **{"rolling-features": {"windows": [3], "stats": ["mean", "std", "rate"]}})
    model = loaded(project, ref)
    series = {name: asd[(asd["entity"] == name) & (asd["timestamp"] >= SPLIT)].drop(columns=["label"])
              .iloc[:30].reset_index(drop=True) for name in ("omi-9", "omi-1")}
    expected = {name: model.predict(rows)["score"].to_numpy() for name, rows in series.items()}
    answers: dict[str, list[tuple[int, Any]]] = {name: [] for name in [*series, "bad"]}
    start = threading.Barrier(3)

    with Server(project, ref.split(":")[0], tmp_path / "log.db") as server:
        def good(name: str) -> None:
            start.wait()
            for i in range(len(series[name])):
                answers[name].append(server.predict(records(series[name].iloc[[i]])))

        def bad() -> None:
            start.wait()
            for i in range(30):
                for name, rows in series.items():
                    # Later than any good row: accepted into the history, it would put the good rows out of order.
                    row = rows.iloc[[i]].assign(m03=np.nan)
                    row["timestamp"] += pd.Timedelta(days=1)
                    answers["bad"].append(server.predict(records(row)))

        threads = [threading.Thread(target=good, args=(name,)) for name in series] + [threading.Thread(target=bad)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)

    for name in series:
        assert [status for status, _ in answers[name]] == [200] * 30, answers[name]
        got = np.concatenate([scores_of(answer) for _, answer in answers[name]])
        assert np.array_equal(got, expected[name]), name
    assert len(answers["bad"]) == 60
    for status, answer in answers["bad"]:
        assert status == 422 and answer["error"].startswith("pyod-ecod: row 0 of the 1 row scored: feature 'm03'"), \
            answer
    logged = server.logged()
    assert sorted(logged) == sorted(answer["request_id"] for name in series for _, answer in answers[name])
    assert sum(logged.values()) == 60
