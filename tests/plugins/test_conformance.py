"""opsloop's own built-ins pass the conformance suites a vendor runs on its plugin (docs/conformance.md)."""

from opsloop.testing.conformance import MonitorSuite, PolicySuite, PreprocessSuite, TrainerSuite


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
