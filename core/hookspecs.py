"""The hook specifications: the whole contract between opsloop and its plugins.

One `opsloop run` calls them in this order:

1. `plugin_options` on each selected plugin, to check its table in
   `opsloop.toml`; `add_commands` on enabled plugins when the CLI starts.
2. `open_store` to open the model registry named by `[store] uri`, and
   `load_data` on the source plugin to read `[data] source` into rows.
3. `on_stage_start`, then the stage hook, then `on_stage_end` (or
   `on_stage_error`) around each stage:
   `preprocess` (each step, in order, fitting its state) ->
   `train` -> `validate` (which calls `train` again per fold) ->
   `save_model` (the bundle is written and registered; `on_model_registered`)
   -> `deploy` -> `load_model` and `preprocess` replayed from the bundle ->
   `monitor` -> `decide_retrain`, and, when a policy says so, preprocess,
   train, validate and register again on the newer data.
4. `opsloop serve` loads the version an alias points at (`load_model`),
   then compiles its fast path: `compile_predict` on the flavor, and
   `compile_rows` on the plugin of each preprocess step, in the bundle's
   order; a step or flavor without one makes the version replay its steps
   (`preprocess` with the stored states) on every request.
5. `opsloop loop` (and `opsloop backtest`, which replays it) runs one cycle:
   `monitor` on what production scored -> `decide_retrain` -> preprocess,
   train, validate and register a candidate on the retraining window ->
   `gate` (champion against challenger on the same held-out rows) -> the
   `production` alias moves only when every gate names the challenger.
6. `opsloop tune` asks the trainer (and the trainers it uses) for
   `tune_space`, then runs `preprocess` and `validate` once per trial with
   the trial's options; validators report each fold through
   `RunContext.fold_scored`, so that a hopeless trial ends early.
7. `opsloop deploy status` asks each deploy plugin what it has out
   (`deploy_status`); `opsloop deploy remove` takes it down (`undeploy`).
   Neither moves an alias.
8. When a run ends, however it ends (`opsloop run`, `opsloop validate`,
   each `opsloop loop` cycle, each `opsloop tune` trial and the search),
   `on_run_end` tells every enabled observer the outcome, once.

Stage hooks (`preprocess`, `train`, `validate`, `deploy`, `monitor`,
`decide_retrain`) are called only on the plugins selected for the stage, in
the configured order, by the runner itself, so that it knows whom to blame.
"Who handles this?" hooks are `firstresult`. Observer hooks (`on_*`) reach
every plugin the config enables.

Types are in `opsloop.types`; every argument is optional for an
implementation (pluggy passes only the arguments an impl names).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from opsloop.config import DataSection
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
    import pandas as pd

    from opsloop.bundle import LoadedModel, ModelFiles
    from opsloop.rowops import FastPredict, Reach, RowLayout, RowOp

PROJECT = "opsloop"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# Configuration and command line
# ---------------------------------------------------------------------------


@hookspec
def plugin_options() -> type | None:
    """Declare the options this plugin reads from its table in `opsloop.toml`.

    Called on one plugin at a time, when a command needs that plugin's
    options (`run`, `config check`, `plugins show`).

    Returns:
        An attrs class whose fields (with defaults) are the options; the
        plugin's table (for example `[train.xgboost]`) is structured into it
        with cattrs, extra keys forbidden. None (or no implementation) means
        the plugin takes no options.
    """


@hookspec
def add_commands(app: typer.Typer) -> None:
    """Add commands to the `opsloop` command line.

    Called once per CLI start on every plugin the config enables in
    `[plugins] enable`.

    Args:
        app: A Typer app mounted at `opsloop <plugin name>`; add commands
            with `@app.command()`.
    """


# ---------------------------------------------------------------------------
# The model store and model flavors
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def open_store(uri: str, workdir: Path) -> ModelStore | None:
    """Open the model registry at `uri`.

    Called when a command needs the registry, on the store plugins listed in
    `[store] plugins`. First non-None result wins; return None if it is not
    yours.

    Args:
        uri: `[store] uri` from the config or `OPSLOOP_STORE`, e.g. `.opsloop`
            or `local:/srv/models`.
        workdir: Directory relative paths are resolved against.

    Returns:
        An open `opsloop.store.ModelStore`, or None.
    """


@hookspec(firstresult=True)
def save_model(model: TrainedModel, path: Path, models: ModelFiles) -> list[str] | None:
    """Write a fitted estimator of your flavor into a bundle directory.

    Called when a version is registered, on the plugin that trained the model
    (and any other loaded plugin). First non-None result wins; return None if
    `model.flavor` is not yours.

    Args:
        model: The fitted model.
        path: An empty directory that will become the bundle.
        models: Saves other models through their own flavors
            (`models.save(member, path / "members" / "0")`): for a flavor
            whose model holds other models, as the `ensemble` trainer's
            does. Most flavors leave it out of their signature.

    Returns:
        Names of the files written, relative to `path`. The format must not
        run code when loaded (no pickle).
    """


@hookspec(firstresult=True)
def load_model(flavor: str, path: Path, manifest: dict[str, Any], models: ModelFiles) -> Any | None:
    """Load an estimator of your flavor from a verified bundle directory.

    Called when a bundle is loaded (serving, monitoring, batch scoring), after
    every file's sha256 was checked. First non-None result wins; return None
    if `flavor` is not yours.

    Args:
        flavor: The bundle's flavor, e.g. `"xgboost"`.
        path: The bundle directory.
        manifest: The bundle's manifest (task, features, params...).
        models: Loads the models a composite flavor saved with
            `models.save` (`models.load(flavor, plugin, directory,
            manifest)`); most flavors leave it out of their signature.

    Returns:
        An estimator with scikit-learn's `predict` (and `predict_proba` for
        classifiers), or None. Never unpickle anything.
    """


# ---------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------


@hookspec
def load_data(source: str, options: Any, data: DataSection, workdir: Path) -> pd.DataFrame:
    """Read `[data] source` into the rows the lifecycle works on.

    Called on the one source plugin the config chooses, whenever a command
    needs the configured rows (`run`, `validate`, `tune`, each `loop` cycle,
    `backtest`, `models reproduce`): the plugin `[data] plugin` names, or
    else the plugin named by the source's URI scheme (`prometheus://host:9090`
    is read by the plugin `prometheus`, `embedded:asd` by `embedded`); a
    path, or a `file:` URI, by the built-in `files`. Each call reads the
    source afresh, so a live source (a monitoring system) feeds each loop
    cycle its newest rows.

    Args:
        source: `[data] source`, as written in the config.
        options: This plugin's options, already checked (its table is
            `[data.<plugin>]`).
        data: The checked `[data]` section: name the time, series and label
            columns after `data.time`, `data.series` and `data.target` when
            the source does not carry names of its own.
        workdir: Directory relative paths are resolved against (the config
            file's).

    Returns:
        One pandas DataFrame. opsloop then checks the columns `[data]`
        names, keeps `[data] features`, parses the time column and splits
        the training and monitoring periods. Raise `opsloop.errors.DataError`
        (unreadable, unreachable, empty) or `ConfigError` with one line
        naming the address or file; never return None.
    """


# ---------------------------------------------------------------------------
# Lifecycle stages
# ---------------------------------------------------------------------------


@hookspec
def preprocess(dataset: Dataset, state: dict[str, Any] | None, options: Any, run: RunContext) -> Preprocessed:
    """Transform rows, learning a state when fitting and replaying it otherwise.

    Called only on the plugins selected for this stage (`[preprocess]
    plugins`), in the configured order, each getting the previous one's
    rows. Called again with the stored state whenever a version scores new
    rows (validation folds, batch scoring, serving): the result must depend
    only on the rows and the state, so that serving sees training's features.

    Args:
        dataset: The rows. Frozen: derive (`dataset.derive(frame)`), never
            mutate the frame in place. The target column may be absent when
            scoring.
        state: None when fitting; the state this step returned at fit time
            when replaying.
        options: This plugin's options, already checked.
        run: Run id, working directory, logger.

    Returns:
        The rows, the JSON-able state (when replaying, return it unchanged)
        and any data-quality issues found. Never None.
    """


@hookspec
def train(dataset: Dataset, options: Any, run: RunContext) -> TrainedModel:
    """Fit an estimator on the preprocessed training set.

    Called only on the plugin selected for this stage (`[train] plugins`,
    exactly one), once per run and once per validation fold.

    Args:
        dataset: Preprocessed rows with a target column (or none, for
            unsupervised anomaly detectors). Frozen: derive, never mutate.
        options: This plugin's options, already checked.
        run: Run id, seed, working directory, logger.

    Returns:
        The fitted model, its flavor and task. Never None.
    """


@hookspec
def tune_space(options: Any) -> SearchSpace | None:
    """Declare what `opsloop tune` may search for this trainer, and its default ranges.

    Called on a trainer plugin when `opsloop tune` starts. Optional: a
    trainer without it is tuned on `[tune.params]` alone, over its options'
    fields. A composite trainer's members (`uses_plugins`) offer their own
    spaces, which tuning prefixes with the member's name
    (`xgboost.max_depth`).

    Args:
        options: This plugin's options as configured (the base every trial
            changes).

    Returns:
        `SearchSpace(params={...}, passthrough={...})`: default ranges by
        option name (`SearchParam(low=3, high=10)`,
        `SearchParam(choices=("depthwise", "lossguide"))`), and the names
        the trainer also accepts inside its options' `params` table.
    """


@hookspec
def validate(dataset: Dataset, fit: FitFunction, options: Any, run: RunContext) -> ValidationReport:
    """Estimate how well the trainer generalises.

    Called only on the plugins selected for this stage, in the configured
    order, after `train`. Each returns its own report.

    Args:
        dataset: The preprocessed training rows.
        fit: Fits the selected trainer on a subset, `fit(dataset) ->
            TrainedModel`; use it per fold.
        options: This plugin's options, already checked.
        run: Run id, seed, working directory, logger, progress reporter.

    Returns:
        Per-fold metrics and their mean and standard deviation. Never None.
        Optionally `oof`: each row's out-of-fold score, label and prediction
        (a frame with `row`, `fold`, `label`, `score`, `prediction`); the
        first report's is the calibration `estimate-monitor` uses, stored in
        the bundle. It stays out of JSON and the registry.
    """


@hookspec
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Any,
           run: RunContext) -> Deployment:
    """Put a registered version to work.

    Called only on the plugins selected for this stage (`[deploy] plugins`),
    in the configured order, after the version is registered.

    Args:
        version: The registered version.
        model: The version loaded from its verified bundle; `model.predict(frame)`
            replays preprocessing and returns predictions.
        dataset: The period the run is about to monitor, for targets that
            score it (raw rows, not preprocessed); None when not known.
        options: This plugin's options, already checked.
        run: Run id, working directory, logger.

    Returns:
        Where the version now runs. Never None.
    """


@hookspec
def deploy_status(model_name: str, options: Any, run: RunContext) -> DeploymentStatus:
    """Say what this deploy target has out for a model, without changing anything.

    Called by `opsloop deploy status`, only on the plugins selected for the
    deploy stage (`[deploy] plugins`), in the configured order, each for its
    own row. Optional: a target without it is shown as "does not report
    status". Never moves an alias.

    Args:
        model_name: The model asked about (`--model`, else `[model] name`).
        options: This plugin's options, already checked (its table
            `[deploy.<name>]`), as `deploy` got them.
        run: Working directory, config, logger (`run.run_id` is the command's
            own; no stage runs).

    Returns:
        `DeploymentStatus(target=..., model=model_name, deployed=...)`, with
        the version a live deployment serves (`"name:version"`, asked of the
        deployment itself where it can answer) and its location. Never None.
        Raise `opsloop.errors.OpsloopError` (one line naming the address or
        file) only when the state cannot be read; "nothing deployed" is
        `deployed=False`, not an error.
    """


@hookspec
def undeploy(model_name: str, options: Any, run: RunContext) -> DeploymentStatus:
    """Take down what this deploy target put out for a model.

    Called by `opsloop deploy remove`, only on the plugins selected for the
    deploy stage (`[deploy] plugins`, or the one `--target` names), in the
    configured order. Optional: a target without it is named as unable to
    remove. Never moves an alias: the registry is unchanged, and the next
    `deploy` puts the version out again.

    Args:
        model_name: The model to take down (`--model`, else `[model] name`).
        options: This plugin's options, already checked, as `deploy` got them.
        run: Working directory, config, logger.

    Returns:
        The status after removal (`deployed=False`), with `version` and
        `location` of what was taken down (None when nothing was out) and
        `details["removed"]` listing what was stopped or deleted. Remove only
        what this target itself wrote or started; refuse with
        `opsloop.errors.OpsloopError` (one line) anything else. Nothing
        deployed is not an error: return `deployed=False` with nothing removed.
    """


@hookspec
def monitor(version: ModelVersion, current: Dataset, predictions: pd.DataFrame, reference: Dataset,
            options: Any, run: RunContext) -> MonitorReport:
    """Judge a deployed version on a later period.

    Called only on the plugins selected for this stage, in the configured
    order, after `deploy`. Each returns its own report.

    Args:
        version: The version being watched (its validation metrics are in
            `version.metrics`).
        current: Raw rows of the later period, labelled when labels exist; the
            label column is as the model learned it (preprocessing replayed,
            so a `label-horizon` target means "incident within N steps").
        predictions: Row-aligned with `current.frame`: column `prediction`
            and, for classifiers, `score` (probability of the positive class).
        reference: Raw training rows, for drift: in `opsloop run`, the
            training period; in `opsloop monitor`, the version's reference
            sample (at most 5,000 training rows stored in its bundle,
            `opsloop.profile.reference`), or an empty dataset with the same
            columns for a version registered before profiles. Compact
            per-feature quantiles of all training rows and the training
            scores are in `opsloop.profile.read_profile(version)`.
        options: This plugin's options, already checked.
        run: Run id, working directory, logger.

    Returns:
        The figures and any alerts. Never None.
    """


@hookspec
def decide_retrain(version: ModelVersion, reports: list[MonitorReport], options: Any,
                   run: RunContext) -> RetrainDecision:
    """Decide from the monitor reports whether to retrain now.

    Called only on the plugins selected for this stage, in the configured
    order, after `monitor`. The run retrains when any policy says so.

    Args:
        version: The version that was monitored.
        reports: Every monitor's report, in the configured order.
        options: This plugin's options, already checked.
        run: Run id, working directory, logger.

    Returns:
        The verdict with at least one reason. Never None.
    """


@hookspec
def gate(champion: Contender, challenger: Contender, window: Dataset, options: Any,
         run: RunContext) -> GateVerdict:
    """Judge the candidate (challenger) against production (champion) on the same rows.

    Called only on the plugins selected for this stage (`[gate] plugins`), in
    the configured order, when `opsloop loop` (or `opsloop backtest`) has
    registered a candidate. The candidate is promoted only when every gate
    names the challenger the winner.

    Args:
        champion: The version `production` points at, with its predictions on
            `window`.
        challenger: The candidate, with its predictions on `window`.
        window: The latest labelled rows, held out from the candidate's
            training (raw rows; the target column holds the labels as the
            models learned them). Rows are in time order per series.
        options: This plugin's options, already checked.
        run: Run id, seed, the cycle's time (`run.now`), logger.

    Returns:
        The winner, the primary metric for both, the margin and its
        confidence interval, with at least one reason. Never None. Raise
        `opsloop.DataError` when the window cannot decide (no labels, one
        class only): the cycle then ends with that error and production
        stays.
    """


# ---------------------------------------------------------------------------
# Serving: the fast path
# ---------------------------------------------------------------------------


@hookspec
def compile_rows(state: dict[str, Any], options: Any, layout: RowLayout) -> RowOp | None:
    """Compile a preprocess step's stored state into a row operation for `opsloop serve`'s fast path.

    Called when the server loads a version, once per preprocess step of its
    bundle, in the bundle's order, on that step's plugin only. The op works
    on the server's float64 work matrix (request rows x `layout.width`): the
    request's numeric inputs, then the columns earlier steps added. It must
    give exactly what `preprocess(dataset, state, options, run)` gives on the
    same rows, value for value, including pandas' casts (a float32 column
    written by the step is rounded to float32: `layout.rounding(columns)`).
    A step that does not implement this hook, or raises, makes the version
    replay every step on each request (`preprocess`, pandas speed), with
    the reason in the model metadata and on `/metrics`.

    Example:
        ```python
        @hookimpl
        def compile_rows(state, options, layout):
            idx = layout.columns(state["offset"])       # NoFastPath if not numeric
            offset = numpy.array(list(state["offset"].values()))
            round_ = layout.rounding(state["offset"])  # float32 columns stay float32

            def shift(work, rows):
                work[:, idx] -= offset
                if round_:
                    round_(work, rows)
            return shift
        ```

    Args:
        state: The state this step stored at fit time (as `preprocess` gets it).
        options: This plugin's options as stored in the bundle, structured as
            `preprocess` gets them (None when the plugin declares none).
        layout: An `opsloop.rowops.RowLayout`: which column is where in the
            work matrix and the dtype the replay's frame gives it at this
            point; add this step's output columns with `layout.add(name,
            dtype)` and record dtype changes in `layout.dtypes`.

    Returns:
        A callable `op(work, rows)` that edits `work` in place (`rows` is an
        `opsloop.rowops.RowContext`: the rows' count, series keys and
        times), or None when the step does nothing to request rows (it only
        changes the target, say). Raise `opsloop.NoFastPath("why")` when this
        state needs the replay path; an op raises `opsloop.DataError` for
        rows it cannot take (the client gets a 422 with the message).
    """


@hookspec(firstresult=True)
def compile_predict(model: LoadedModel, threads: int) -> FastPredict | None:
    """Compile a loaded model's estimator into a fast predict for `opsloop serve`'s fast path.

    Called when the server loads a version, on every loaded plugin (the one
    that loaded the flavor among them). First non-None result wins; return
    None if `model.manifest["flavor"]` is not yours.

    Example:
        ```python
        @hookimpl
        def compile_predict(model, threads):
            if model.manifest["flavor"] != "my-flavor":
                return None
            def predict(x):
                score = model.estimator.score_rows(x)
                return (score >= 0.5).astype("int64"), score
            return predict
        ```

    Args:
        model: The verified, loaded version (`model.estimator`,
            `model.task`, `model.manifest`).
        threads: Threads the estimator may use per request (`opsloop serve
            --threads`); 0 means the library's default.

    Returns:
        A callable from the float32 feature matrix (rows x
        `model.features`, in that order) to `(labels, score)`: what
        `LoadedModel.predict` gives as `prediction` and `score` (None for a
        regressor), value for value. The version's alert threshold is applied
        to the score afterwards, by the server. None if the flavor is not
        yours; raise `opsloop.NoFastPath("why")` when it is but this model
        needs the replay.
    """


@hookspec
def window_reach(state: dict[str, Any], options: Any) -> Reach | None:
    """How far into a series' past a preprocess step's output for a row reads, for its stored state.

    Called on the step's own plugin only, when a bundle is scored in pieces:
    `opsloop serve` keeps, per series, the rows that reach back (restoring
    them from the prediction log when a series it does not hold comes back) and computes each request's rows
    behind them, so a client sends one row per series per step; the `batch`
    deploy target carries them from one chunk to the next. A step that reads
    only its own row need not implement it.

    Example:
        ```python
        @hookimpl
        def window_reach(state, options):
            return opsloop.rowops.Reach(rows=state["lag"])   # x[t] - x[t - lag]
        ```

    Args:
        state: The step's stored state (as `preprocess` returned it).
        options: The step's options, structured as `preprocess` gets them.

    Returns:
        `opsloop.rowops.Reach(rows=..., seconds=...)`: the previous rows of
        the same series a row's output reads, and how far back in time (on
        the time column: every row newer than that before the row, and the
        newest one at or before it). None: the row alone.
    """


# ---------------------------------------------------------------------------
# Partitioned data (rows beyond one machine's memory; docs/scale.md)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def map_partitions(frame: Any, function: Any, argument: Any, carry: Any, keep: str | None, meta: Any) -> Any:
    """Run a function on every partition of a partitioned frame, where the engine keeps the partitions.

    The engine hook: the core never imports an engine. Called when a
    source's `load_data` returns something other than a pandas DataFrame (a
    Dask DataFrame): the core first asks every loaded plugin, with `function=None`, whether it
    takes that frame, and from then on runs every piece of work on the
    partitions through the plugin that said yes (opsloop-dask's
    `dask-engine`). `opsloop.partitions.InProcessEngine` is a complete
    implementation over a list of pandas frames.

    Args:
        frame: The engine's partitioned frame. Return None if it is not yours.
        function: `function(partition, argument, before, after)`, a pure
            function of pandas frames that can be shipped to workers; None
            asks only whether the frame is yours (return True).
        argument: Passed to every call (small: a state, a query, a model).
        carry: None (`before` and `after` are None), or an
            `opsloop.partitions.Carry`: partition i gets `before_i =
            carry.behind(before_{i-1}, partition_{i-1})` (the rows of every
            series its windows reach from the partitions before it) and
            `after_i = carry.after(partition_{i+1}, after_{i+1})` (the rows a
            look-ahead label reads); both chains are small.
        keep: None: return the results, in partition order, to the caller
            (they are small); "lazy" or "persist": the results are pandas
            frames, return them as a new partitioned frame of your kind,
            computed when read or held by the workers; "meta": return the
            zero-row pandas frame of `frame`'s columns and dtypes.
        meta: With `keep`, the zero-row frame of the results.

    Returns:
        What `keep` asks for; None when the frame is not yours.
    """


@hookspec
def fit_partitions(data: Any, options: Any, run: RunContext) -> tuple[dict[str, Any], list[str]]:
    """Fit a preprocess step's state over partitions, without the rows ever coming whole to one process.

    Called on the step's own plugin instead of `preprocess(state=None)`
    when `[data] source` is partitioned; `preprocess` with the state is then replayed on every
    partition (behind the rows its `window_reach` names). A step without
    this hook cannot be fitted over partitions: the run stops with a
    ConfigError naming it, before any work.

    Args:
        data: An `opsloop.partitions.PartitionedDataset`: `data.meta` (zero
            rows: the columns and dtypes), `data.empty` (a zero-row Dataset
            to resolve columns on), `data.rows`, `data.collect(function,
            argument)` (a function per partition, results back in order), and
            the statistics of `opsloop.partitions` over it (`moments`,
            `median`, `quantiles`, `value_counts`, `column_facts`), which give
            pandas' numbers on one frame.
        options: This step's options, already checked.
        run: Run id, working directory, logger.

    Returns:
        `(state, issues)`: the state `preprocess(state=None)` would return on
        the same rows as one frame (same keys and values), and the issues.
    """


# ---------------------------------------------------------------------------
# Observers
# ---------------------------------------------------------------------------


@hookspec
def on_stage_start(stage: str, plugins: list[str], run: RunContext, options: Any) -> None:
    """A stage is about to run.

    Called on every plugin the config enables, before each stage.

    Args:
        stage: The stage's name, e.g. `"train"` (`"retrain"` stages are
            prefixed: `"retrain.train"`).
        plugins: The plugins that will run, in order.
        run: The run in progress.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """


@hookspec
def on_stage_end(stage: str, result: Any, seconds: float, run: RunContext, options: Any) -> None:
    """A stage finished.

    Called on every plugin the config enables, after each stage that
    succeeded.

    Args:
        stage: The stage's name.
        result: What the stage produced (a `Dataset`, `TrainedModel`,
            `ValidationReport`, `ModelVersion`, list of `Deployment` or
            `MonitorReport`, `RetrainDecision`).
        seconds: Wall time of the stage.
        run: The run in progress.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """


@hookspec
def on_stage_error(stage: str, error: BaseException, run: RunContext, options: Any) -> None:
    """A stage failed; the run stops after this.

    Called on every plugin the config enables. Exceptions raised here are
    logged and ignored, so that the original error is the one reported.

    Args:
        stage: The stage's name.
        error: What went wrong (usually an `opsloop.errors.PluginCallError`).
        run: The run in progress.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """


@hookspec
def on_model_registered(version: ModelVersion, run: RunContext, options: Any) -> None:
    """A new version was registered in the store.

    Called on every plugin the config enables.

    Args:
        version: The new version, with its lineage.
        run: The run that registered it.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """


@hookspec
def on_alias_changed(change: AliasChange, run: RunContext | None, options: Any) -> None:
    """An alias of a model moved: deploy, promote or rollback.

    Called on every plugin the config enables, after the store recorded the
    change in its audit trail. A webhook, a chat notice or a CD trigger acts
    here.

    Args:
        change: Model name, alias, from and to version, actor, time, reason,
            action (`"set"`, `"rollback"`, or `"threshold"`: a promote gave
            the version it already pointed at a new alert threshold), and
            the threshold the change gave the version (or None).
        run: The run that moved it, or None for a CLI command.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """


@hookspec
def on_run_end(command: str, outcome: str, result: Any, error: BaseException | None, run: RunContext,
               options: Any) -> None:
    """A run ended: send a summary, close a connection, mark a tracking run finished.

    Called once per run on every plugin the config enables, after its last
    stage, whatever the end: `opsloop run` and `opsloop validate`, each
    `opsloop loop` cycle (after it is journaled; `opsloop backtest`'s
    replayed cycles too), each `opsloop tune` trial and then the search,
    `opsloop monitor` (and `opsloop report`'s monitoring), and the versions
    `opsloop backtest` trains outside a cycle. Not
    for a loop cycle skipped because another loop holds the lock, nor a
    trial whose values make an invalid config: no run began. Exceptions
    raised here are warnings, even for an observer whose options say
    `critical = true`: they never change the command's exit code nor hide
    the run's own error.

    Args:
        command: What ran: `"run"`, `"validate"`, `"loop"` (one cycle),
            `"tune"` (the search), `"tune.trial"` (one trial, whose
            `run.parent` is the search's run id), `"monitor"`, `"backtest"`
            (its first version) or `"backtest.always"` (a version retrained
            every chunk).
        outcome: `"ok"`; `"error"` (a stage or the command failed);
            `"stopped"` (Ctrl-C, or a loop cycle stopped on request);
            `"pruned"` (a tune trial the pruner ended early, not an error).
        result: The command's result: `run`, an `opsloop.runner.RunResult`
            (on an error, what the run did before it); `validate`, the
            tuple `(reports, gate results)`, or None on an error; `loop`,
            the cycle's `opsloop.loop.CycleResult` (its `status`, `error`,
            `journal_id`); `tune.trial`, the trial's list of
            `ValidationReport`, or None; `tune`, an `opsloop.tuning.TuneResult`,
            or None on an error; `monitor`, an `opsloop.monitoring.Result`;
            `backtest`, the first version's `Built`;
            `backtest.always`, the `ModelVersion`; None on an error.
        error: What ended the run, when `outcome` is `"error"` or
            `"stopped"`; else None.
        run: The run that ended.
        options: This plugin's own options, checked, from its table
            `[plugins.<name>]` (the attrs class its `plugin_options`
            returns), or None when it declares none.
    """
