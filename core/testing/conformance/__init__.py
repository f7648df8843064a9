"""Conformance suites: one line runs every check of a plugin kind on your plugin.

    from opsloop.testing.conformance import TrainerSuite

    class TestMyTrainer(TrainerSuite, plugin="my-trainer"): pass

The plugin is found as installed (its entry point), or given with `register=` (an in-process plugin object,
registered for the suite as the kit's `register_plugin` does for one test). docs/conformance.md lists what
each suite checks and its keywords.
"""

from opsloop.testing.conformance._base import Suite
from opsloop.testing.conformance.deploy import DeploySuite
from opsloop.testing.conformance.gate import GateSuite
from opsloop.testing.conformance.monitor import MonitorSuite
from opsloop.testing.conformance.policy import PolicySuite, degraded_reports, healthy_reports
from opsloop.testing.conformance.preprocess import PreprocessSuite
from opsloop.testing.conformance.source import SourceSuite
from opsloop.testing.conformance.store import StoreSuite
from opsloop.testing.conformance.trainer import TrainerSuite
from opsloop.testing.conformance.validator import ValidatorSuite

__all__ = ["DeploySuite", "GateSuite", "MonitorSuite", "PolicySuite", "PreprocessSuite", "SourceSuite", "StoreSuite",
           "Suite", "TrainerSuite", "ValidatorSuite", "degraded_reports", "healthy_reports"]
