"""opsloop's own built-ins pass the conformance suites a vendor runs on its plugin (docs/conformance.md).

One line per built-in; postgres-store runs on the test server of store_contract.py (OPSLOOP_TEST_PG, or
tests/services/postgres.sh), skipped with the reason when there is none.
"""

import pytest
import store_contract  # registered by conftest.py: the PostgreSQL test server, shared with the store tests

from opsloop.testing.conformance import DeploySuite, MonitorSuite, PolicySuite, PreprocessSuite, SourceSuite, StoreSuite, TrainerSuite


class TestXGBoost(TrainerSuite, plugin="xgboost", options={"n_estimators": 30, "n_jobs": 1}): pass


class TestSchemaCheck(PreprocessSuite, plugin="schema-check"): pass
class TestImpute(PreprocessSuite, plugin="impute", options={"add_indicator": True}): pass
class TestScale(PreprocessSuite, plugin="scale", options={"method": "robust"}): pass
class TestClip(PreprocessSuite, plugin="clip"): pass
class TestRollingFeatures(PreprocessSuite, plugin="rolling-features", before=["impute"]): pass
class TestLabelHorizon(PreprocessSuite, plugin="label-horizon", options={"horizon": 6}): pass


class TestQualityMonitor(MonitorSuite, plugin="quality-monitor"): pass
class TestDriftMonitor(MonitorSuite, plugin="drift-monitor"): pass
class TestEstimateMonitor(MonitorSuite, plugin="estimate-monitor"): pass
class TestSchemaCheckMonitor(MonitorSuite, plugin="schema-check"): pass


class TestThresholdPolicy(PolicySuite, plugin="threshold-policy"): pass


class TestLocalStore(StoreSuite, plugin="local-store"): pass


class TestPostgresStore(StoreSuite, plugin="postgres-store", foreign_uri=".opsloop"):
    @pytest.fixture
    def store_uri(self, tmp_path):
        backend = store_contract.PostgresBackend(store_contract.require_pg())
        yield backend.uri(tmp_path / "bundles")
        backend.cleanup()


class TestFilesSource(SourceSuite, plugin="files", source="telemetry.csv"): pass


#: The embedded ASD set cut to the small set's servers and days, so that its run takes seconds.
SMALL_ASD = "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp >= '2024-01-03'"


class TestEmbeddedSource(SourceSuite, plugin="embedded", source="embedded:asd",
                         data={"train": f"{SMALL_ASD} and timestamp < '2024-01-09'",
                               "monitor": f"{SMALL_ASD} and timestamp >= '2024-01-09' and timestamp < '2024-01-13'"}):
    pass


class TestBatchDeploy(DeploySuite, plugin="batch"): pass
class TestLocalHttp(DeploySuite, plugin="local-http", options={"port": 0}): pass
