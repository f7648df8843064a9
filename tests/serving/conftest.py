"""Shared by the serving tests: one project with three versions trained through the real lifecycle.

Versions (model `asd-serve`, embedded ASD data, two servers, small and single-threaded to stay quick):
    1: schema-check, impute, scale, clip -> xgboost (25 trees)
    2: the same steps, shallower trees (other predictions)
    3: impute only -> xgboost (10 trees)
`production` points at 1 when the session starts; tests that move it put it back.
"""

from __future__ import annotations

import http.client
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import pytest
import tomli_w

MODEL = "asd-serve"
CONFIG = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-06'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp >= '2024-01-12'",
    },
    "preprocess": {"plugins": ["schema-check", "impute", "scale", "clip"]},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 25, "n_jobs": 1}},
    "validate": {"plugins": []},
    "deploy": {"plugins": []},
    "monitor": {"plugins": []},
    "retrain": {"plugins": []},
}
VERSIONS = {
    1: [],
    2: ["train.xgboost.max_depth=2"],
    3: ['preprocess.plugins=["impute"]', "train.xgboost.n_estimators=10"],
}


class Tampered:
    """Flip one byte of a version's largest file; `repair()` writes it back in place (so does leaving the block)."""

    def __init__(self, bundle: Path) -> None:
        self.target = max((p for p in bundle.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
        self.original = self.target.read_bytes()

    def __enter__(self) -> Tampered:
        self.target.write_bytes(self.original[:-1] + bytes([self.original[-1] ^ 0xFF]))
        return self

    def repair(self) -> None:
        self.target.write_bytes(self.original)

    def __exit__(self, *exc: object) -> None:
        self.repair()


def client_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON types, times as ISO strings, NaN as null."""
    out = []
    for row in frame.drop(columns=["label"], errors="ignore").to_dict("records"):
        rec = {}
        for k, v in row.items():
            if isinstance(v, pd.Timestamp):
                v = v.isoformat()
            elif isinstance(v, float) and math.isnan(v):
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            rec[k] = v
        out.append(rec)
    return out


@pytest.fixture(scope="session")
def records() -> Any:
    """`client_records`, for test modules (conftest is not importable under --import-mode=importlib)."""
    return client_records


@attrs.define
class Project:
    """The trained project: where it is, its rows, and helpers to talk to a server."""

    path: Path
    monitor: pd.DataFrame = attrs.field(repr=False)

    @property
    def model(self) -> str:
        return MODEL

    def store(self) -> Any:
        from opsloop import config as config_mod
        from opsloop.session import Session

        return Session.open(config_mod.read(workdir=self.path), sections=("store",)).open_store()

    def loaded(self, version: int) -> Any:
        """`LoadedModel` of a version: the batch scorer the server must agree with."""
        from opsloop.bundle import read_bundle
        from opsloop.manager import PluginManager

        with self.store() as store:
            v = store.get(MODEL, version)
        return read_bundle(v.path, PluginManager(), ref=v.ref, digest=v.digest)

    def tampered(self, version: int) -> Tampered:
        """`with project.tampered(3) as v3:` version 3's bundle has a flipped byte until `v3.repair()`."""
        with self.store() as store:
            return Tampered(Path(store.get(MODEL, version).path))

    @staticmethod
    def log_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of a query on a prediction log file, on a connection of its own."""
        con = sqlite3.connect(db)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def set_production(self, version: int) -> None:
        with self.store() as store:
            store.set_alias(MODEL, "production", version, reason="test")

    records = staticmethod(client_records)

    @staticmethod
    def request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request with the standard library: status, headers (lower-case), body."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    @staticmethod
    def post_json(url: str, path: str, obj: Any) -> tuple[int, dict[str, str], Any]:
        """POST a JSON body; status, headers and the decoded answer."""
        status, headers, body = Project.request(url, "POST", path, json.dumps(obj).encode(),
                                                {"Content-Type": "application/json"})
        return status, headers, json.loads(body)


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    path = tmp_path_factory.mktemp("serving")
    (path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    monitor = None
    for number, overrides in VERSIONS.items():
        cfg = config_mod.read(path / "opsloop.toml", overrides=overrides)
        runner = Runner(Session.open(cfg))
        try:
            raw = data_mod.load(cfg)
            train, monitor = data_mod.periods(raw, cfg)
            built = runner.build(train)
            assert built.version.version == number
        finally:
            runner.close()
    project = Project(path=path, monitor=monitor.frame)
    project.set_production(1)
    return project


@pytest.fixture
def production_1(project: Project) -> Project:
    """The project with production at version 1 before and after the test."""
    project.set_production(1)
    yield project
    project.set_production(1)
