"""Typed plugin kinds: what a plugin of each kind implements, as `typing.Protocol`s that mypy checks.

A plugin is a module (or an object) with hook functions. Each Protocol here
lists the hooks of one kind with exactly the names, parameters and types
that `opsloop.hookspecs` declares, so that mypy can check a plugin module
against its kind: assign the module to a variable of the kind, in a test or
under `if TYPE_CHECKING:` in the module itself (no cost at run time):

```python
# opsloop_my_trainer/__init__.py
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop import Dataset, RunContext, TrainedModel, hookimpl


@hookimpl
def train(dataset: Dataset, options: Any, run: RunContext) -> TrainedModel:
    ...


if TYPE_CHECKING:
    import opsloop_my_trainer
    from opsloop import kinds

    _trainer: kinds.Trainer = opsloop_my_trainer        # mypy checks train's parameters and return type
    _configurable: kinds.Configurable = opsloop_my_trainer
```

mypy then reports a hook that is missing, returns the wrong type, or names
a parameter differently from the spec (pluggy passes arguments by name, so
`def train(datset, options, run)` would never get its rows): the
Protocols' parameters are keyword-only, which is how pluggy calls hooks.

A Protocol asks for every argument of the hook. pluggy itself lets an
implementation take fewer (it passes only those named), and such a plugin
works; it just does not match the Protocol: declare every argument to have
mypy check it. Hooks that a kind may or may not implement have Protocols of
their own (`Configurable` for `plugin_options`, `Tunable` for `tune_space`,
`Flavor` for `save_model`/`load_model`, `RowCompiler`, `PredictCompiler`,
`Windowed`, `PartitionFitter`, `Engine`, and one per observer hook): check
a module against each that it implements. Every hook of
`opsloop.hookspecs` is in at least one Protocol, and a test
(tests/core/test_kinds.py) keeps their parameters equal to the specs'.

The Protocols are `runtime_checkable`: `isinstance(module, kinds.Trainer)`
tells whether the hooks are there (not their signatures: that is mypy's
part). The types named here are those of `opsloop.types` and the modules
the hooks name (docs/hooks.md, "Types a plugin receives and builds").
A store plugin's store subclasses `opsloop.store.ModelStore`, an abstract
class, so it needs no Protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd
    import typer

    from opsloop.bundle import LoadedModel, ModelFiles
    from opsloop.config import DataSection
    from opsloop.rowops import FastPredict, Reach, RowLayout, RowOp
    from opsloop.store import AliasChange, ModelStore
    from opsloop.types import (
        Contender,
        Dataset,
        Deployment,
        DeploymentStatus,
        FitFunction,
        GateVerdict,
        ModelVersion,
        MonitorReport,
        Preprocessed,
        RetrainDecision,
        RunContext,
        SearchSpace,
        TrainedModel,
        ValidationReport,
    )

__all__ = [
    "KINDS",
    "STAGES",
    "CommandPlugin",
    "Configurable",
    "DeployTarget",
    "Engine",
    "Flavor",
    "Gate",
    "Monitor",
    "Observer",
    "OnAliasChanged",
    "OnModelRegistered",
    "OnRunEnd",
    "OnStageEnd",
    "OnStageError",
    "OnStageStart",
    "PartitionFitter",
    "PredictCompiler",
    "PreprocessStep",
    "RetrainPolicy",
    "RowCompiler",
    "Source",
    "StoreFactory",
    "Trainer",
    "Tunable",
    "Validator",
    "Windowed",
    "hook_names",
]


# ---------------------------------------------------------------------------
# Configuration and command line
# ---------------------------------------------------------------------------


@runtime_checkable
class Configurable(Protocol):
    """A plugin with options: `plugin_options` returns the attrs class its table is structured into."""

    def plugin_options(self) -> type | None: ...


@runtime_checkable
class CommandPlugin(Protocol):
    """A plugin that adds commands under `opsloop <plugin name>` (enabled in `[plugins] enable`)."""

    def add_commands(self, *, app: typer.Typer) -> None: ...


# ---------------------------------------------------------------------------
# The model store, model flavors, data sources
# ---------------------------------------------------------------------------


@runtime_checkable
class StoreFactory(Protocol):
    """A store plugin (`[store] plugins`): opens an `opsloop.store.ModelStore` for the URIs it knows."""

    def open_store(self, *, uri: str, workdir: Path) -> ModelStore | None: ...


@runtime_checkable
class Flavor(Protocol):
    """Saves and loads estimators of one flavor (`TrainedModel.flavor`), without pickle.

    A trainer that brings its own storage format is also a Flavor; one whose
    models another plugin stores (`flavor="sklearn"`) is not.
    """

    def save_model(self, *, model: TrainedModel, path: Path, models: ModelFiles) -> list[str] | None: ...

    def load_model(self, *, flavor: str, path: Path, manifest: dict[str, Any], models: ModelFiles) -> Any | None: ...


@runtime_checkable
class Source(Protocol):
    """A data source plugin: reads `[data] source` into one frame."""

    def load_data(self, *, source: str, options: Any, data: DataSection, workdir: Path) -> pd.DataFrame: ...


# ---------------------------------------------------------------------------
# Lifecycle stages
# ---------------------------------------------------------------------------


@runtime_checkable
class PreprocessStep(Protocol):
    """A preprocess step (`[preprocess] plugins`): fits a JSON-able state, then replays it."""

    def preprocess(self, *, dataset: Dataset, state: dict[str, Any] | None, options: Any,
                   run: RunContext) -> Preprocessed: ...


@runtime_checkable
class Trainer(Protocol):
    """A trainer (`[train] plugins`): fits an estimator and says its flavor and task."""

    def train(self, *, dataset: Dataset, options: Any, run: RunContext) -> TrainedModel: ...


@runtime_checkable
class Tunable(Protocol):
    """A trainer that offers `opsloop tune` its default search ranges."""

    def tune_space(self, *, options: Any) -> SearchSpace | None: ...


@runtime_checkable
class Validator(Protocol):
    """A validator (`[validate] plugins`): fits the trainer per fold through `fit` and reports metrics."""

    def validate(self, *, dataset: Dataset, fit: FitFunction, options: Any, run: RunContext) -> ValidationReport: ...


@runtime_checkable
class DeployTarget(Protocol):
    """A deploy target (`[deploy] plugins`): puts a version out, says what is out, takes it down.

    `deploy_status` and `undeploy` are what `opsloop deploy status` and
    `opsloop deploy remove` call; a target without them still deploys (the
    commands name it as not reporting), but does not match this Protocol.
    """

    def deploy(self, *, version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Any,
               run: RunContext) -> Deployment: ...

    def deploy_status(self, *, model_name: str, options: Any, run: RunContext) -> DeploymentStatus: ...

    def undeploy(self, *, model_name: str, options: Any, run: RunContext) -> DeploymentStatus: ...


@runtime_checkable
class Monitor(Protocol):
    """A monitor (`[monitor] plugins`): judges a deployed version on later rows."""

    def monitor(self, *, version: ModelVersion, current: Dataset, predictions: pd.DataFrame, reference: Dataset,
                options: Any, run: RunContext) -> MonitorReport: ...


@runtime_checkable
class RetrainPolicy(Protocol):
    """A retrain policy (`[retrain] plugins`): turns monitor reports into a decision with reasons."""

    def decide_retrain(self, *, version: ModelVersion, reports: list[MonitorReport], options: Any,
                       run: RunContext) -> RetrainDecision: ...


@runtime_checkable
class Gate(Protocol):
    """A gate (`[gate] plugins`): judges the challenger against the champion on the same rows."""

    def gate(self, *, champion: Contender, challenger: Contender, window: Dataset, options: Any,
             run: RunContext) -> GateVerdict: ...


# ---------------------------------------------------------------------------
# Serving's fast path, partitioned data
# ---------------------------------------------------------------------------


@runtime_checkable
class RowCompiler(Protocol):
    """A preprocess step with a fast path: compiles its stored state into a row operation."""

    def compile_rows(self, *, state: dict[str, Any], options: Any, layout: RowLayout) -> RowOp | None: ...


@runtime_checkable
class PredictCompiler(Protocol):
    """A flavor with a fast path: compiles a loaded estimator into a predict on a float32 matrix."""

    def compile_predict(self, *, model: LoadedModel, threads: int) -> FastPredict | None: ...


@runtime_checkable
class Windowed(Protocol):
    """A preprocess step whose output for a row reads earlier rows of its series."""

    def window_reach(self, *, state: dict[str, Any], options: Any) -> Reach | None: ...


@runtime_checkable
class PartitionFitter(Protocol):
    """A preprocess step that fits its state over partitions (docs/scale.md)."""

    def fit_partitions(self, *, data: Any, options: Any, run: RunContext) -> tuple[dict[str, Any], list[str]]: ...


@runtime_checkable
class Engine(Protocol):
    """A partitioned-data engine: runs functions on the partitions of the frames it owns."""

    def map_partitions(self, *, frame: Any, function: Any, argument: Any, carry: Any, keep: str | None,
                       meta: Any) -> Any: ...


# ---------------------------------------------------------------------------
# Observers: one Protocol per event, since an observer implements those it needs
# ---------------------------------------------------------------------------


@runtime_checkable
class OnStageStart(Protocol):
    """Hears that a stage is about to run."""

    def on_stage_start(self, *, stage: str, plugins: list[str], run: RunContext, options: Any) -> None: ...


@runtime_checkable
class OnStageEnd(Protocol):
    """Hears that a stage succeeded, with its result and wall time."""

    def on_stage_end(self, *, stage: str, result: Any, seconds: float, run: RunContext, options: Any) -> None: ...


@runtime_checkable
class OnStageError(Protocol):
    """Hears that a stage failed."""

    def on_stage_error(self, *, stage: str, error: BaseException, run: RunContext, options: Any) -> None: ...


@runtime_checkable
class OnModelRegistered(Protocol):
    """Hears that a version was registered."""

    def on_model_registered(self, *, version: ModelVersion, run: RunContext, options: Any) -> None: ...


@runtime_checkable
class OnAliasChanged(Protocol):
    """Hears that an alias moved (deploy, promote, rollback)."""

    def on_alias_changed(self, *, change: AliasChange, run: RunContext | None, options: Any) -> None: ...


@runtime_checkable
class OnRunEnd(Protocol):
    """Hears that a run ended (`opsloop run`, a loop cycle, a tune trial or search), with its outcome."""

    def on_run_end(self, *, command: str, outcome: str, result: Any, error: BaseException | None, run: RunContext,
                   options: Any) -> None: ...


@runtime_checkable
class Observer(OnStageStart, OnStageEnd, OnStageError, OnModelRegistered, OnAliasChanged, Protocol):
    """An observer of every stage, version and alias event, such as a tracking integration (opsloop-mlflow's
    `mlflow-tracking`); one that also hears the run's end is an `OnRunEnd` too (a module is checked against
    each: `_end: kinds.OnRunEnd = my_observer`)."""


#: The Protocol of each kind `opsloop new-plugin --kind` writes, and of the other stages.
KINDS: dict[str, type] = {
    "trainer": Trainer,
    "preprocess": PreprocessStep,
    "validator": Validator,
    "deploy": DeployTarget,
    "monitor": Monitor,
    "policy": RetrainPolicy,
    "gate": Gate,
    "store": StoreFactory,
    "source": Source,
    "observer": Observer,
    "command": CommandPlugin,
}

#: The Protocol a plugin selected for each stage of the config implements (the keys of
#: `opsloop.manager.STAGE_HOOKS`).
STAGES: dict[str, type] = {
    "preprocess": PreprocessStep,
    "train": Trainer,
    "validate": Validator,
    "deploy": DeployTarget,
    "monitor": Monitor,
    "retrain": RetrainPolicy,
    "gate": Gate,
    "store": StoreFactory,
    "data": Source,
}


def hook_names(kind: type) -> tuple[str, ...]:
    """The hooks a kind's Protocol asks for, sorted: `hook_names(kinds.DeployTarget)` gives
    `("deploy", "deploy_status", "undeploy")`."""
    names = {name for cls in kind.__mro__ if getattr(cls, "_is_protocol", False) and cls is not Protocol
             for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}
    return tuple(sorted(names))
