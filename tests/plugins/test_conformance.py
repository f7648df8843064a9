"""opsloop's own built-ins pass the conformance suites a vendor runs on its plugin (docs/conformance.md)."""

from opsloop.testing.conformance import TrainerSuite


class TestXGBoost(TrainerSuite, plugin="xgboost", options={"n_estimators": 30, "n_jobs": 1}): pass
