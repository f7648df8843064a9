"""Data types that cross hooks.

All are `attrs.frozen(kw_only=True)`: no plugin changes what the next one
sees (derive with `attrs.evolve`), and fields can be added later without
breaking a plugin that builds one by keyword. pandas is imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.config import Config

__all__ = [
    "Contender",
    "Dataset",
    "Deployment",
    "GateVerdict",
    "ModelVersion",
    "MonitorReport",
    "Preprocessed",
    "RetrainDecision",
    "RunContext",
    "TrainedModel",
    "ValidationReport",
]

Task = Literal["classification", "regression", "anomaly"]
T = TypeVar("T")


def _frozen_mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def _optional_mapping(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of a mapping, or None (where None means "none", not "empty")."""
    return None if value is None else dict(value)


@attrs.frozen(kw_only=True)
class Dataset:
    """Telemetry rows and what we know about them.

    Attributes:
        frame: The rows; left out of `==` and `repr`.
        target: Label column, None when unlabelled.
        time: Time column, None when rows are not ordered in time.
        series: Column naming the machine or service a row belongs to, if several.
        fingerprint: sha256 of the rows (values, columns, dtypes), for lineage.
        name: Where the rows came from (a path, `embedded:asd`, a period name).
    """

    frame: pd.DataFrame = attrs.field(eq=False, repr=False)
    target: str | None = None
    time: str | None = None
    series: str | None = None
    fingerprint: str
    name: str = ""

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, **kwargs: Any) -> Dataset:
        """Wrap a frame, computing its fingerprint."""
        return cls(frame=frame, fingerprint=fingerprint_frame(frame), **kwargs)

    def derive(self, frame: pd.DataFrame, **changes: Any) -> Dataset:
        """The same dataset with other rows (fingerprint recomputed)."""
        return attrs.evolve(self, frame=frame, fingerprint=fingerprint_frame(frame), **changes)

    @property
    def meta_columns(self) -> list[str]:
        """The target, time and series columns that are present."""
        return [c for c in (self.target, self.time, self.series) if c and c in self.frame.columns]

    @property
    def feature_columns(self) -> list[str]:
        """Every column that is not the target, the time or the series."""
        meta = set(self.meta_columns)
        return [c for c in self.frame.columns if c not in meta]

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - the name every ML reader expects
        """The feature columns."""
        return self.frame[self.feature_columns]

    @property
    def y(self) -> pd.Series:
        """The target column; a DataError when the dataset has none."""
        from opsloop.errors import DataError

        if not self.target or self.target not in self.frame.columns:
            raise DataError(f"dataset {self.name or '?'} has no target column {self.target!r}")
        return self.frame[self.target]

    def __len__(self) -> int:
        return len(self.frame)

    def held_out(self, fraction: float, seed: int, stratify: pd.Series | None = None) -> np.ndarray:
        """Boolean mask of the rows to hold out (early stopping, a quick check): the last `fraction` of the
        time steps when there is a time column, else a random sample (stratified by `stratify` when given).

        In time order every row of one time step stays on one side, so that no series sees the future of
        another through the split. The built-in `xgboost` trainer holds out these rows; a trainer in a
        package (opsloop-dask's `dask-xgboost`) calls this to hold out the same ones.
        """
        import numpy as np

        n = len(self.frame)
        if self.time and self.time in self.frame.columns:
            times = self.frame[self.time].to_numpy()
            steps = np.unique(times)
            if len(steps) < 2:
                return np.zeros(n, dtype=bool)
            cut = min(max(round(len(steps) * (1 - fraction)), 1), len(steps) - 1)
            return times >= steps[cut]
        from sklearn.model_selection import train_test_split

        rows = np.arange(n)
        try:
            _, held = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
        except ValueError:  # a class too small to stratify: a plain random sample is the best we can do
            _, held = train_test_split(rows, test_size=fraction, random_state=seed)
        mask = np.zeros(n, dtype=bool)
        mask[held] = True
        return mask


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """A sha256 of a frame's columns, dtypes and values (row order matters).

    Numeric columns are hashed from their raw bytes (fast: this runs on
    every derived dataset); other columns through pandas' row hashing.
    """
    import numpy as np
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(str(len(frame)).encode())
    for _, column in frame.items():
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biufcmM":
            digest.update(np.ascontiguousarray(column.to_numpy()).view(np.uint8))
        else:
            digest.update(pd.util.hash_pandas_object(column, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


@attrs.frozen(kw_only=True)
class Preprocessed:
    """What one preprocess step returns.

    Attributes:
        dataset: The transformed rows.
        state: JSON-able state the step learned (when fitting) or was given
            (when replaying); stored in the bundle and replayed when serving.
        issues: Data-quality findings, one sentence each, for the run summary.
    """

    dataset: Dataset
    state: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    issues: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class TrainedModel:
    """A fitted estimator and how to store it.

    Attributes:
        estimator: Follows scikit-learn's API: `predict(X)`, and
            `predict_proba(X)` for classifiers. Left out of `==` and `repr`.
        flavor: Storage format, handled by a `save_model`/`load_model` plugin
            (`"xgboost"`, `"sklearn"`).
        task: `"classification"`, `"regression"` or `"anomaly"`.
        params: The hyper-parameters the estimator was fitted with, JSON-able:
            they become the registered version's `params` (its manifest,
            `opsloop models show` and `models diff`); left empty, the version
            shows `{}` (issue 11).
        features: Columns the estimator was fitted on, in order.
    """

    estimator: Any = attrs.field(eq=False, repr=False)
    flavor: str
    task: Task = "classification"
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    features: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ValidationReport:
    """Metrics of a validation scheme.

    Attributes:
        method: What was done, e.g. `"5-fold time-ordered"`.
        folds: Per-fold metrics, in fold order.
        mean: Mean of each metric over the folds.
        std: Standard deviation of each metric over the folds.
        oof: Out-of-fold scores of a binary classifier or anomaly detector:
            one row per validated row that a fold model scored without having
            trained on it, with columns `row` (its position in the validated
            dataset), `fold` (from 0), `label`, `score` and `prediction`,
            sorted by `row`; None for a regressor, a model without scores, or
            a validator that keeps none. The register step calibrates the
            scores on it (opsloop.profile, issue 9 item 5). Left out of `==`,
            `repr` and every JSON summary: it is as long as the data.
    """

    method: str
    folds: tuple[Mapping[str, float], ...] = ()
    mean: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    std: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    oof: pd.DataFrame | None = attrs.field(default=None, eq=False, repr=False)

    def summary(self) -> dict[str, Any]:
        """The report as JSON-able data, without the out-of-fold rows."""
        return attrs.asdict(self, filter=lambda attribute, _: attribute.name != "oof")


@attrs.frozen(kw_only=True)
class ModelVersion:
    """One registered, immutable model version.

    Attributes:
        name: Model name.
        version: Number, from 1, without gaps per name.
        created_at: ISO 8601 UTC time of registration.
        created_by: User who registered it.
        flavor: Storage format of the estimator.
        task: What the model predicts.
        metrics: Validation metrics (means).
        params: Hyper-parameters.
        lineage: Data fingerprint, config and its hash, git commit, versions.
        aliases: Aliases pointing at this version now.
        path: Directory of the bundle.
        digest: sha256 of the bundle's manifest, which lists every file's sha256.
        threshold: The version's current alert threshold (issue 13): the
            manifest's `threshold` at registration, replaced by
            `set_alias(..., threshold=...)` (`opsloop models promote
            --threshold`) without a new bundle; a JSON mapping with at least
            a finite `value`. None for a version without one.
    """

    name: str
    version: int
    created_at: str
    created_by: str = ""
    flavor: str = ""
    task: str = ""
    metrics: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    lineage: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    aliases: tuple[str, ...] = ()
    path: Path
    digest: str = ""
    threshold: Mapping[str, Any] | None = attrs.field(default=None, converter=_optional_mapping)

    @property
    def ref(self) -> str:
        """`name:version`, the form every command accepts."""
        return f"{self.name}:{self.version}"


@attrs.frozen(kw_only=True)
class Deployment:
    """Where a version went.

    Attributes:
        target: The deploy plugin's name.
        model: `name:version` deployed.
        location: A file, URL or endpoint an operator can use.
        details: Anything else worth showing (rows scored, seconds).
    """

    target: str
    model: str
    location: str
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class DeploymentStatus:
    """What a deploy target has out for a model (`opsloop deploy status`), or what it took down (`remove`).

    Attributes:
        target: The deploy plugin's name.
        model: The model's name.
        deployed: Whether the target has the model out: a server that answers,
            a predictions file that exists. After `undeploy`: whether anything
            is still out (False once taken down).
        version: `name:version` deployed (for example `"asd-anomaly:3"`), or
            None when nothing is, or the target cannot tell.
        location: A file, URL or endpoint an operator can use, or None.
        details: Anything else worth showing (pid, rows, what was removed).
    """

    target: str
    model: str
    deployed: bool
    version: str | None = None
    location: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class MonitorReport:
    """What a monitor saw on a period of live or later data.

    Attributes:
        monitor: The plugin's name (set by the runner when left empty).
        model: `name:version` monitored.
        rows: Rows looked at.
        metrics: Figures, e.g. accuracy, precision, recall, f1.
        baseline: The same figures at validation time, where known.
        alerts: Sentences a policy or a person should read.
    """

    monitor: str = ""
    model: str = ""
    rows: int = 0
    metrics: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    baseline: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    alerts: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RetrainDecision:
    """A retrain policy's verdict.

    Attributes:
        retrain: Whether to retrain now.
        reasons: Why, one sentence each; never empty.
        policy: The plugin's name (set by the runner when left empty).
    """

    retrain: bool
    reasons: tuple[str, ...]
    policy: str = ""


class Reporter:
    """Progress and messages for the person watching; silent by default."""

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate over `items`, showing progress where there is a screen."""
        yield from items

    def note(self, message: str) -> None:
        """A one-line message for the person watching."""

    def stage_started(self, stage: str, plugins: list[str]) -> None:
        """A stage begins (the runner calls this)."""

    def stage_finished(self, stage: str, seconds: float, summary: str) -> None:
        """A stage ended well (the runner calls this)."""

    def stage_failed(self, stage: str, error: BaseException) -> None:
        """A stage raised (the runner calls this)."""


@attrs.frozen(kw_only=True)
class RunContext:
    """What every stage hook gets about the run in progress.

    Attributes:
        run_id: Unique id of this run.
        workdir: Directory the run works in (where `.opsloop/` lives).
        model_name: Name versions are registered under.
        seed: Seed every random choice derives from.
        config: The checked config.
        log: Logger for plugins (`run.log.info(...)`).
        reporter: Progress bars and notes (`run.reporter.track(folds, "folds")`).
        now: The moment the run acts at (UTC): None means the clock; `opsloop
            backtest` sets the replayed time, so that a policy's cool-down
            counts in the history's time, not the machine's.
        trainers: What `fit_trainer` calls; set by the runner, None outside a
            run. Left out of `==` and `repr`.
        folds: What `fold_scored` calls: set by `opsloop tune` to prune a
            hopeless trial after its early folds, None otherwise. Left out of
            `==` and `repr`.
        parent: The run id of the run this one is part of: an `opsloop tune`
            trial's is the search's (a tracker nests the trial under it);
            None otherwise.
    """

    run_id: str
    workdir: Path
    model_name: str
    seed: int = 0
    config: Config = attrs.field(eq=False, repr=False)
    log: logging.Logger = attrs.field(eq=False, repr=False, factory=lambda: logging.getLogger("opsloop"))
    reporter: Reporter = attrs.field(eq=False, repr=False, factory=Reporter)
    now: datetime | None = None
    trainers: Callable[[str, Dataset], TrainedModel] | None = attrs.field(default=None, eq=False, repr=False)
    folds: Callable[[int, Mapping[str, float]], None] | None = attrs.field(default=None, eq=False, repr=False)
    parent: str | None = None

    def fold_scored(self, index: int, figures: Mapping[str, float]) -> None:
        """Tell the run that fold `index` (0-based, in the order folds are fitted) scored `figures`.

        Validators call it after each fold (`kfold` and `holdout` do, through
        `kfold.run_folds`). Outside `opsloop tune` it does nothing; under it,
        it may raise `optuna.TrialPruned` to end a hopeless trial early: let
        it propagate (docs/tuning.md). A validator that never calls it is
        simply never pruned.
        """
        if self.folds is not None:
            self.folds(index, figures)

    def fit_trainer(self, name: str, dataset: Dataset) -> TrainedModel:
        """Fit another trainer plugin on `dataset` with its own options (`[train.<name>]`).

        For composite trainers such as `ensemble`, whose members are trainer
        plugins. The plugin must be declared by the caller's options
        (`uses_plugins`, docs/writing-plugins.md), so that the config check
        loads it and checks its options before anything runs.

        Raises:
            OpsloopError: Outside a run (no runner to fit with), or `name`
                was not declared.
        """
        if self.trainers is None:
            from opsloop.errors import OpsloopError

            raise OpsloopError(f"cannot fit trainer {name!r}: this context has no runner (only stages of a run "
                               "can fit other trainers)")
        return self.trainers(name, dataset)


@attrs.frozen(kw_only=True)
class Contender:
    """A version scored on the gate window: the champion (production) or the challenger (the candidate).

    Attributes:
        role: `"champion"` or `"challenger"`.
        version: The registered version.
        predictions: Row-aligned with the gate window's frame: column
            `prediction` and, for classifiers, `score` (probability of the
            positive class). Left out of `==` and `repr`.
    """

    role: Literal["champion", "challenger"]
    version: ModelVersion
    predictions: pd.DataFrame = attrs.field(eq=False, repr=False)


@attrs.frozen(kw_only=True)
class GateVerdict:
    """A gate's judgement of champion against challenger on the same rows.

    Attributes:
        winner: `"challenger"` (promote it) or `"champion"` (keep production).
        metric: The primary metric compared, e.g. `"pr_auc"`.
        champion: The champion's figure on the window.
        challenger: The challenger's figure on the window.
        margin: How much better the challenger is (challenger - champion for
            a metric where higher is better, champion - challenger where lower
            is): positive means the challenger is better.
        ci: A confidence interval of `margin` (low, high), or None.
        reasons: Why, one sentence each; never empty.
        gate: The plugin's name (set by the loop when left empty).
        figures: Any other figures worth keeping (both contenders' metrics).
    """

    winner: Literal["challenger", "champion"]
    metric: str
    champion: float
    challenger: float
    margin: float
    ci: tuple[float, float] | None = None
    reasons: tuple[str, ...] = ()
    gate: str = ""
    figures: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)


FitFunction = Callable[[Dataset], TrainedModel]


@attrs.frozen(kw_only=True)
class SearchParam:
    """One searchable parameter of `opsloop tune`: a numeric range or a list of choices.

    Written in config as `[tune.params] max_depth = { low = 3, high = 10 }`,
    or returned by a trainer's `tune_space` hook as its default range.

    Attributes:
        low: Lower end of a numeric range (inclusive).
        high: Upper end (inclusive). Integers on both ends search integers;
            a float on either end searches floats.
        log: Search on a log scale (needs `low > 0`), as for a learning rate.
        step: Spacing of the searched values (not with `log`).
        choices: The values to choose from instead of a range: strings,
            numbers, booleans, or any TOML value (a list of window lengths).
    """

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))


@attrs.frozen(kw_only=True)
class SearchSpace:
    """What a trainer plugin offers to `opsloop tune` (its `tune_space` hook).

    Attributes:
        params: The default search ranges, by option name: what is searched
            when `[tune.params]` names nothing for this trainer.
        passthrough: Names the trainer accepts besides its options' fields,
            which tuning sets inside the options' `params` table (XGBoost's
            `grow_policy` or `subsample`, an estimator's keyword arguments).
    """

    params: Mapping[str, SearchParam] = attrs.field(factory=dict, converter=_frozen_mapping)
    passthrough: frozenset[str] = attrs.field(factory=frozenset, converter=frozenset)
