"""Fixtures for opsloop-pyod's tests: small real slices of the embedded ASD data.

opsloop's kit (`opsloop.testing`) is imported by the test modules that use it rather than named in
`pytest_plugins` here: pytest refuses `pytest_plugins` in a conftest below the rootdir that it meets while
collecting (`pytest contrib`), and this one lives in opsloop's checkout.
"""

from __future__ import annotations

import pytest

#: The 19 ASD metrics.
METRICS = [f"m{i:02d}" for i in range(1, 20)]
#: A server whose second week the first week's detectors rank well (ROC AUC 0.83 to 0.92).
SERVERS = ["omi-9"]


@pytest.fixture(scope="session")
def asd():
    """The embedded ASD set (12 servers, 19 metrics, labelled)."""
    from opsloop import datasets

    return datasets.load("asd")


@pytest.fixture(scope="session")
def asd_slices(asd):
    """(train, test) frames of metrics and label: server omi-9, the first week and the second (real
    anomalies in both)."""
    first = asd["timestamp"] < "2024-01-08 12:00"
    servers = asd["entity"].isin(SERVERS)
    train, test = asd[first & servers], asd[~first & servers]
    columns = [*METRICS, "label"]
    return train[columns].reset_index(drop=True), test[columns].reset_index(drop=True)


@pytest.fixture(scope="session")
def run_context(tmp_path_factory):
    """A RunContext for calling a trainer's hook directly."""
    from opsloop.config import read
    from opsloop.types import RunContext

    workdir = tmp_path_factory.mktemp("run")
    return RunContext(run_id="t", workdir=workdir, model_name="m", seed=7, config=read(workdir=workdir))


@pytest.fixture
def pyod_config():
    """A quick real lifecycle for one pyod trainer: a config dict for `opsloop_project`."""
    def make(plugin: str, **options):
        config = {
            "project": {"name": "asd-pyod"},
            "data": {
                "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
                "train": f"entity in {SERVERS} and timestamp < '2024-01-08 12:00'",
                "monitor": f"entity in {SERVERS} and timestamp >= '2024-01-08 12:00'",
            },
            "preprocess": {"plugins": ["schema-check", "impute"]},
            "train": {"plugins": [plugin]},
            "validate": {"kfold": {"folds": 2}},
        }
        if options:
            config["train"][plugin] = options
        return config
    return make
