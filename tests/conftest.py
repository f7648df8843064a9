pytest_plugins = ["opsloop.testing"]

import pytest

#: A quick but real lifecycle on the embedded ASD data: two servers with many
#: anomalies for training, a later period of four for monitoring.
SMALL = {
    "project": {"name": "asd-anomaly"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10', 'omi-11'] and timestamp >= '2024-01-08 12:00'",
    },
    "train": {"xgboost": {"n_estimators": 60}},
    "validate": {"kfold": {"folds": 3}},
}


@pytest.fixture
def small_config():
    """A fresh copy of SMALL to change per test."""
    import copy

    return copy.deepcopy(SMALL)
