"""opsloop: the lifecycle of machine-learning models for IT operations.

The core defines the lifecycle as pluggy hooks (`opsloop.hookspecs`); plugins,
found through entry points in the group `opsloop`, do the work. Importing
this package is cheap: pandas, scikit-learn and XGBoost load only when used.
"""

from opsloop.errors import (
    BundleError,
    ConfigError,
    DataError,
    OpsloopError,
    PluginCallError,
    PluginConflictError,
    PluginLoadError,
    StoreError,
    UnknownPluginError,
)
from opsloop.hookspecs import hookimpl
from opsloop.types import (
    Dataset,
    Deployment,
    ModelVersion,
    MonitorReport,
    Preprocessed,
    RetrainDecision,
    RunContext,
    TrainedModel,
    ValidationReport,
)

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "Dataset",
    "Deployment",
    "ModelVersion",
    "MonitorReport",
    "OpsloopError",
    "PluginCallError",
    "PluginConflictError",
    "PluginLoadError",
    "Preprocessed",
    "RetrainDecision",
    "RunContext",
    "StoreError",
    "TrainedModel",
    "UnknownPluginError",
    "ValidationReport",
    "hookimpl",
]
