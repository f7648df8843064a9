"""Fixtures for opsloop-mlflow's tests: real `mlflow server` processes on 127.0.0.1, a small real lifecycle.

opsloop's kit (`opsloop.testing`) is imported by the test modules that use it rather than named in
`pytest_plugins` here: pytest refuses `pytest_plugins` in a conftest below the rootdir that it meets while
collecting (`pytest contrib`), and this one lives in opsloop's checkout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import attrs
import pytest

#: How long a server may take to answer /health: MLflow creates its SQLite tables at start, on a loaded
#: 2-core machine that can take a while.
STARTUP_DEADLINE = 120.0
MODEL = "asd-mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class Server:
    """An `mlflow server` started by a test: its URL, folder and process (its own process group)."""

    url: str
    folder: Path
    process: subprocess.Popen
    log: Path

    def wait(self, deadline: float = STARTUP_DEADLINE) -> Server:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server did not answer {self.url}/health in {deadline:.0f} s:\n"
                    f"{self.log.read_text()[-3000:]}")

    def terminate(self) -> None:
        """SIGTERM to the server's process group (it runs uvicorn as a child)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Terminate, and SIGKILL the group if it lingers."""
        self.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def launch(folder: Path, *, artifacts: Path | None = None) -> Server:
    """Start `mlflow server` with a SQLite backend in `folder` (not waiting for it: `.wait()`)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(artifacts or folder / "artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    log = folder / "server.log"
    # MLflow 3 also starts a job runner (for GenAI evaluation jobs) that opsloop never uses: off, to start faster.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    return Server(url=f"http://127.0.0.1:{port}", folder=folder, process=process, log=log)


@pytest.fixture(scope="session")
def mlflow_servers(tmp_path_factory):
    """Two real `mlflow server`s, started at once (each takes seconds to come up; together they take about as
    long as one), stopped when the session ends; `.wait()` for the one a test needs:

    - `"main"`: SQLite backend (`folder / "mlflow.db"`), proxied artifacts: what a team runs;
    - `"artifacts"`: refuses every artifact write (its artifact folder would be under a regular file).
    """
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e ./contrib/opsloop-mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    (root / "a-file").write_text("not a folder")
    servers = {"main": launch(root / "main"),
               "artifacts": launch(root / "artifacts", artifacts=root / "a-file" / "artifacts")}
    yield servers
    for server in servers.values():
        server.terminate()
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_servers):
    """The real MLflow tracking server with a SQLite backend and proxied artifacts."""
    return mlflow_servers["main"].wait()


def _lifecycle(tracking_uri: str, **options) -> dict:
    """A quick real lifecycle with the observer on: two ASD servers' first week (anomalies in both), six
    metrics, a 20-round XGBoost, 3 folds; monitored on their second week."""
    return {
        "project": {"name": MODEL},
        "data": {
            "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
            "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
            "monitor": "entity in ['omi-1', 'omi-9'] and timestamp >= '2024-01-08 12:00'",
            "features": [f"m{i:02d}" for i in range(1, 7)],
        },
        "preprocess": {"plugins": ["schema-check", "impute"]},
        "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 20, "n_jobs": 1}},
        "validate": {"kfold": {"folds": 3}},
        "plugins": {"enable": ["mlflow-tracking"], "mlflow-tracking": {"tracking_uri": tracking_uri, **options}},
    }


def _client(tracking_uri: str):
    """An MLflow client on the same URI, for the tests to look at what was logged."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _mlflow_run(tracking_uri: str, opsloop_run_id: str):
    """The MLflow run logging an opsloop run, found by its tag."""
    mlflow = _client(tracking_uri)
    experiment = mlflow.get_experiment_by_name(MODEL)
    assert experiment is not None, f"no experiment {MODEL!r} at {tracking_uri}"
    runs = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`opsloop.run_id` = '{opsloop_run_id}'")
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def lifecycle():
    """`lifecycle(tracking_uri, **options)`: the config dict of a quick real lifecycle with the observer on."""
    return _lifecycle


@pytest.fixture(scope="session")
def mlflow_client():
    """`mlflow_client(uri)`: an MlflowClient on a tracking (and registry) URI."""
    return _client


@pytest.fixture(scope="session")
def find_run():
    """`find_run(uri, opsloop_run_id)`: the MLflow run that logs an opsloop run."""
    return _mlflow_run

