"""opsloop: the lifecycle of machine-learning models for IT operations.

The core defines the lifecycle as pluggy hooks (`opsloop.hookspecs`); plugins,
found through entry points in the group `opsloop`, do the work. Importing
this package is cheap: pandas, scikit-learn and XGBoost load only when used.
"""

from __future__ import annotations

import importlib
import os

# XGBoost and scikit-learn use OpenMP; its default spin-waiting threads make
# training 10-50x slower on a machine whose cores are busy with anything else
# (measured on 2 shared cores). Passive waiting costs nothing measurable when
# the machine is idle. Set before either library loads OpenMP; a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Any

# Re-exports are resolved on first use (PEP 562), so that `opsloop --help`
# does not pay for pluggy and attrs; type checkers see the real imports.
_EXPORTS = {
    "hookimpl": "opsloop.hookspecs",
    **dict.fromkeys(["BundleError", "ConfigError", "DataError", "OpsloopError", "PluginCallError",
                     "PluginConflictError", "PluginLoadError", "RegistryDamaged", "StoreError", "UnknownPluginError"],
                   "opsloop.errors"),
    **dict.fromkeys(["Contender", "Dataset", "Deployment", "DeploymentStatus", "GateVerdict", "ModelVersion",
                     "MonitorReport", "Preprocessed", "RetrainDecision", "RunContext", "SearchParam", "SearchSpace", "TrainedModel", "ValidationReport"], "opsloop.types"),
    **dict.fromkeys(["NoFastPath", "Reach", "RowContext", "RowLayout"], "opsloop.rowops"),
}

if TYPE_CHECKING:
    from opsloop.errors import (
        BundleError as BundleError,
        ConfigError as ConfigError,
        DataError as DataError,
        OpsloopError as OpsloopError,
        PluginCallError as PluginCallError,
        PluginConflictError as PluginConflictError,
        PluginLoadError as PluginLoadError,
        RegistryDamaged as RegistryDamaged,
        StoreError as StoreError,
        UnknownPluginError as UnknownPluginError,
    )
    from opsloop.hookspecs import hookimpl as hookimpl
    from opsloop.rowops import NoFastPath as NoFastPath
    from opsloop.rowops import Reach as Reach
    from opsloop.rowops import RowContext as RowContext
    from opsloop.rowops import RowLayout as RowLayout
    from opsloop.types import (
        Contender as Contender,
        Dataset as Dataset,
        Deployment as Deployment,
        DeploymentStatus as DeploymentStatus,
        GateVerdict as GateVerdict,
        ModelVersion as ModelVersion,
        MonitorReport as MonitorReport,
        Preprocessed as Preprocessed,
        RetrainDecision as RetrainDecision,
        RunContext as RunContext,
        SearchParam as SearchParam,
        SearchSpace as SearchSpace,
        TrainedModel as TrainedModel,
        ValidationReport as ValidationReport,
    )

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'opsloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
