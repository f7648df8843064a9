"""`opsloop serve` counts schema-check findings on request rows on /metrics (issue 9, item 5).

A real server on 127.0.0.1 serves a version trained on SMD machine-1-6's
first 11,844 steps (real data, ../shared/data/smd). Requests with values
beyond the training range (the later period has many) are answered as usual
and counted in `opsloop_schema_findings_total`, per request, check and
column; requests within range add nothing. What the server counts for single
rows is what the plugin's own check finds on the same rows.
"""

from __future__ import annotations

import http.client
import json
import math
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import pytest
from opsloop import Dataset
from opsloop.plugins import schema_check
from opsloop.testing import to_toml

SPLIT = 11844
SAMPLE = re.compile(r'^opsloop_schema_findings_total\{model="([^"]+)",version="(\d+)",check="([^"]+)",'
                    r'column="([^"]+)"\} (\d+)$', re.MULTILINE)


@attrs.define
class Project:
    path: Path
    train: pd.DataFrame
    later: pd.DataFrame


def build(root: Path, frame: pd.DataFrame, *overrides: str) -> Path:
    """A project whose production is a version trained on the first period (schema-check, impute -> XGBoost)."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    split = frame["timestamp"].iloc[SPLIT]
    config = {
        "project": {"name": "smd"},
        "data": {"source": str(root.parent / "smd.parquet"), "target": "label", "time": "timestamp",
                 "series": "entity", "train": f"timestamp < '{split}'", "monitor": f"timestamp >= '{split}'"},
        "preprocess": {"plugins": ["schema-check", "impute"]},
        "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 20, "n_jobs": 1}},
        "validate": {"plugins": []}, "deploy": {"plugins": []}, "monitor": {"plugins": []},
        "retrain": {"plugins": []},
    }
    root.mkdir()
    (root / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    cfg = config_mod.read(root / "opsloop.toml", overrides=list(overrides))
    runner = Runner(Session.open(cfg))
    try:
        train, _ = data_mod.periods(data_mod.load(cfg), cfg)
        runner.place(runner.build(train).version)
    finally:
        runner.close()
    return root


@pytest.fixture(scope="module")
def smd(tmp_path_factory: pytest.TempPathFactory, smd_machine_1_6: Any) -> Project:
    root = tmp_path_factory.mktemp("smd-serve")
    frame = smd_machine_1_6()
    frame.to_parquet(root / "smd.parquet", index=False)
    return Project(path=build(root / "warn", frame), train=frame.iloc[:SPLIT],
                   later=frame.iloc[SPLIT:].reset_index(drop=True))


class Client:
    """One connection to a running server."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def predict(self, rows: pd.DataFrame) -> tuple[int, Any]:
        records = []
        for r in rows.drop(columns=["label"]).to_dict("records"):
            records.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else
                                None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        self.conn.request("POST", "/predict", json.dumps({"instances": records}), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def findings(self) -> dict[tuple[str, str], int]:
        """(check, column) -> requests, of the model served (smd version 1)."""
        self.conn.request("GET", "/metrics")
        text = self.conn.getresponse().read().decode()
        assert "# TYPE opsloop_schema_findings_total counter" in text
        return {(check, column): int(n) for model, version, check, column, n in SAMPLE.findall(text)
                if (model, version) == ("smd", "1")}


def plugin_findings(project: Project, rows: pd.DataFrame) -> set[tuple[str, str]]:
    """What schema-check's own check (pandas, the stored state and options) finds on `rows`."""
    from opsloop import config as config_mod
    from opsloop.session import Session

    with Session.open(config_mod.read(workdir=project.path), sections=("store",)).open_store() as store:
        version = store.get("smd", 1)
    ((state, options),) = schema_check.stored_steps(version)
    dataset = Dataset.from_frame(rows, target="label", time="timestamp", series="entity")
    return {(f.check, f.column) for f in schema_check.findings(dataset, state, options) if f.violation}


def test_out_of_range_requests_are_counted_and_in_range_ones_add_nothing(smd: Project) -> None:
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    train = smd.train
    features = [c for c in train.columns if c.startswith("m")]
    inside = train.iloc[[100]].reset_index(drop=True)  # a training row: within every range
    high = inside.assign(m07=np.float32(1.0))  # m07 was 0.243..0.649 at training: 1.0 is out of range
    gap = inside.assign(m03=np.nan)  # a null: 100% missing in this request, 0% at training
    app = create_app(workdir=smd.path, log_path=smd.path / "log.db")
    with ServerThread(app) as server:
        client = Client(server.url)
        assert client.findings() == {}
        status, answer = client.predict(inside)
        assert status == 200 and client.findings() == {}  # a request within range adds nothing
        status, answer = client.predict(high)
        assert status == 200 and answer["model_version"] == "1"  # warn: answered as any other
        assert client.findings() == {("out_of_range", "m07"): 1}
        status, _ = client.predict(pd.concat([high, high, inside], ignore_index=True))
        assert status == 200 and client.findings() == {("out_of_range", "m07"): 2}  # per request, not per row
        status, _ = client.predict(gap)
        assert status == 200
        assert client.findings() == {("out_of_range", "m07"): 2, ("missing_rate", "m03"): 1}
        for _ in range(3):
            assert client.predict(inside)[0] == 200
        assert client.findings() == {("out_of_range", "m07"): 2, ("missing_rate", "m03"): 1}
        assert set(features) >= {c for _, c in client.findings()}  # labels come from the model's own columns


def test_single_rows_of_the_later_period_are_counted_as_the_plugin_judges_them(smd: Project) -> None:
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    rows = smd.later.iloc[::40].reset_index(drop=True)  # 297 rows over the whole later period
    expected: dict[tuple[str, str], int] = {}
    for i in range(len(rows)):
        for key in plugin_findings(smd, rows.iloc[[i]]):
            expected[key] = expected.get(key, 0) + 1
    assert len({c for _, c in expected}) >= 10 and {k for k, _ in expected} == {"out_of_range"}
    app = create_app(workdir=smd.path, log_path=smd.path / "log-later.db")
    with ServerThread(app) as server:
        client = Client(server.url)
        for i in range(len(rows)):
            assert client.predict(rows.iloc[[i]])[0] == 200
        assert client.findings() == expected
        # one request of all of them: each finding once more, whatever its rows
        assert client.predict(rows)[0] == 200
        assert client.findings() == {k: n + 1 for k, n in expected.items()}
    assert plugin_findings(smd, rows) == set(expected)


def test_on_violation_reject_still_refuses_and_counts(smd: Project, tmp_path: Path) -> None:
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    frame = pd.concat([smd.train, smd.later], ignore_index=True)
    (tmp_path / "smd.parquet").symlink_to(smd.path.parent / "smd.parquet")
    path = build(tmp_path / "reject", frame, 'preprocess.schema-check.on_violation="reject"')
    inside = smd.train.iloc[[100]].reset_index(drop=True)
    app = create_app(workdir=path, log_path=path / "log.db")
    with ServerThread(app) as server:
        client = Client(server.url)
        status, answer = client.predict(inside.assign(m07=np.float32(1.0)))
        assert status == 422 and 'column "m07"' in answer["error"]  # as before: the replay refuses the rows
        assert client.findings() == {("out_of_range", "m07"): 1}
        assert client.predict(inside)[0] == 200 and client.findings() == {("out_of_range", "m07"): 1}


def test_the_compiled_check_finds_what_the_plugin_finds(smd: Project) -> None:
    """compile_row_check against findings() on the same rows: SMD's later period, single rows and blocks, with
    gaps put in and a text column (m07's training terciles, "above" beyond them: a category never seen)."""
    train, later = smd.train.copy(), smd.later.copy()
    edges = train["m07"].quantile([0, 1 / 3, 2 / 3]).tolist()

    def band(values: pd.Series) -> pd.Series:
        out = pd.Series(np.select([values > train["m07"].max(), values >= edges[2], values >= edges[1]],
                                  ["above", "high", "mid"], "low"), index=values.index, dtype=object)
        return out.where(values.index % 97 != 5, None)  # a few missing values

    train["band"], later["band"] = band(train["m07"]), band(later["m07"])
    later.loc[later.index % 53 == 0, "m03"] = np.nan  # gaps where training had none
    fitted = schema_check.preprocess(dataset=Dataset.from_frame(train, target="label", time="timestamp",
                                                                series="entity"),
                                     state=None, options=None, run=None)
    state = fitted.state
    numeric = [c for c in later.columns if c.startswith("m")]
    check = schema_check.compile_row_check(state, None, {c: j for j, c in enumerate(numeric)}, ["band"])
    seen: set[str] = set()
    for start, size in [*((i, 1) for i in range(0, len(later), 37)), (0, 500), (5000, 3), (10_000, 1845)]:
        rows = later.iloc[start:start + size].reset_index(drop=True)
        expected = {(f.check, f.column) for f in schema_check.findings(
            Dataset.from_frame(rows, target="label", time="timestamp", series="entity"), state,
            schema_check.Options()) if f.violation}
        got = check(rows[numeric].to_numpy(np.float64), {"band": rows["band"].tolist()})
        assert set(got) == expected and len(got) == len(expected), (start, size)
        seen.update(k for k, _ in got)
    assert seen == {"out_of_range", "missing_rate", "unseen_category"}  # every check a request can show
