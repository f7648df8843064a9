"""Fixtures for opsloop-dask's tests: one real Dask cluster for the session, and configs on embedded ASD.

The cluster is a `LocalCluster` of two workers as threads of the test process (`processes=False`) that
talk to their scheduler over loopback TCP: the plugins connect to it by its `tcp://127.0.0.1:PORT`
address, exactly as to a remote scheduler, and every task and result crosses that TCP connection
serialized; what threads save is starting two worker processes and importing XGBoost and pandas in each
(about 5 s on this 2-core machine), which the session would otherwise pay before any test runs.

opsloop's kit (`opsloop.testing`) is imported by the test modules rather than named in `pytest_plugins`
here (pytest refuses `pytest_plugins` in a conftest below the rootdir; see opsloop-pyod's conftest).
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e ./contrib/opsloop-dask)")
pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

#: tests/conftest.py's SMALL (two servers with many anomalies to train on, a later period of four to
#: monitor), its trainer swapped; the preprocessing is opsloop's default, rolling-features (1h) included.
SMALL: dict[str, Any] = {
    "project": {"name": "asd-anomaly"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10', 'omi-11'] and timestamp >= '2024-01-08 12:00'",
    },
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 60}},
    "validate": {"kfold": {"folds": 3}},
}


@pytest.fixture(scope="session")
def scheduler() -> Any:
    """The address of a running two-worker Dask cluster, tcp://127.0.0.1:PORT."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                           host="127.0.0.1", dashboard_address=None)
    yield cluster.scheduler_address
    from opsloop_dask.cluster import close_all

    close_all()  # the plugins' clients first, so that none retries a closed scheduler
    cluster.close()


@pytest.fixture(scope="session")
def small_config():
    """`small_config(trainer, **trainer_options)`: a fresh copy of SMALL training with `trainer`."""
    def make(trainer: str = "xgboost", **options: Any) -> dict[str, Any]:
        config = copy.deepcopy(SMALL)
        config["train"] = {"plugins": [trainer], trainer: {"n_estimators": 60, **options}}
        return config
    return make


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def asd():
    """The embedded ASD set (12 servers, 19 metrics, labelled)."""
    from opsloop import datasets

    return datasets.load("asd")


@pytest.fixture(scope="session")
def asd_monitor(asd):
    """SMALL's monitoring period: four servers from 2024-01-08 12:00, in (entity, timestamp) order."""
    rows = asd[asd["entity"].isin(["omi-1", "omi-9", "omi-10", "omi-11"]) & (asd["timestamp"] >= "2024-01-08 12:00")]
    return rows.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="session")
def dask_run(tmp_path_factory: pytest.TempPathFactory, scheduler: str,
             small_config: Any) -> tuple[Path, dict[str, Any]]:
    """One `opsloop run` with `[train] plugins = ["dask-xgboost"]` on the cluster, deployed by both the
    built-in `batch` target and `dask-batch` (the monitoring period in partitions of 1,000 rows):
    (project directory, the run's JSON)."""
    from opsloop.testing import invoke, to_toml

    path = tmp_path_factory.mktemp("dask-run")
    config = small_config("dask-xgboost", scheduler=scheduler)
    config["deploy"] = {"plugins": ["batch", "dask-batch"],
                        "dask-batch": {"scheduler": scheduler, "partition_rows": 1000}}
    (path / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    return path, invoke(["run", "--json", "--quiet"], path).assert_ok().json


@pytest.fixture
def serve_and_score(tmp_path):
    """`serve_and_score(path, ref, shown, rows) -> (own, body)`: version `ref` (`shown`: its `models show --json`) loaded
    from its bundle, its own predictions on raw `rows` (preprocessing replayed; checked against its
    estimator's `predict_proba`), and the body `opsloop serve` answers for the same rows on a real socket."""
    import http.client
    import json
    import math

    import numpy as np
    import pandas as pd
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:  # as a client sends them: JSON types, NaN as null
        return [{k: (v.isoformat() if isinstance(v, pd.Timestamp) else None if isinstance(v, float)
                     and math.isnan(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in frame.to_dict("records")]

    def check(path: Path, ref: str, shown: dict[str, Any], rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        model = read_bundle(Path(shown["path"]), PluginManager(), ref=ref, digest=shown["digest"])
        own = model.predict(rows)
        features = model.transform(rows).frame[model.features]
        assert np.array_equal(own["score"].to_numpy(), model.estimator.predict_proba(features)[:, 1])
        app = create_app(model=ref.split(":")[0], workdir=path, port=0, log_path=tmp_path / "log.db")
        with ServerThread(app) as server:
            host, port = server.url.removeprefix("http://").rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", "/predict", json.dumps({"instances": records(rows)}))
                response = conn.getresponse()
                body = json.loads(response.read())
            finally:
                conn.close()
        assert response.status == 200, body
        return own, body

    return check
