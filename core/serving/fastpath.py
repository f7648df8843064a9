"""Scoring checked rows: a per-row scorer the plugins compile where the bundle allows it, the replay otherwise.

`LoadedModel.predict` builds a pandas frame, fingerprints it and calls each
preprocess plugin through the plugin manager: right for batches, a few
milliseconds too slow for one row. `compile_fast` asks the plugins for a
`FastScorer` instead: each preprocess step's plugin compiles its stored
state into a row operation (the `compile_rows` hook; `opsloop.rowops`), the
flavor's plugin its predict (`compile_predict`), and the scorer runs the ops
in the bundle's order on one float64 matrix, then the predict. The plugins
promise the replay's numbers, value for value (tests/serving/test_fastpath.py
checks every built-in step against `LoadedModel.predict`).

The core knows no plugin by name here. A step whose plugin does not
implement `compile_rows`, raises `opsloop.NoFastPath` (its state needs the
replay) or fails while compiling, or a flavor no plugin compiles, makes the
version use `ReplayScorer` (`LoadedModel.predict`), with the reason in the
model's metadata and on `/metrics` (`opsloop_model_info{fallback_reason=...}`);
a failure is also logged as a warning. Serving never fails because of it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opsloop.errors import DataError, OpsloopError, PluginCallError
from opsloop.rowops import NoFastPath, RowContext, RowLayout, index
from opsloop.serving.schema import RequestError

if TYPE_CHECKING:
    import numpy as np
    from opsloop.bundle import LoadedModel
    from opsloop.rowops import FastPredict, RowOp
    from opsloop.serving.schema import Batch, InputSchema

log = logging.getLogger("opsloop.serving")


class Unsupported(Exception):
    """The bundle needs the replay path; the message says why."""


class ReplayScorer:
    """Scores through `LoadedModel.predict`: any bundle, any step, pandas speed."""

    kind = "replay"

    def __init__(self, model: LoadedModel, schema: InputSchema, reason: str) -> None:
        self.model = model
        self.schema = schema
        self.reason = reason

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        frame = self.schema.frame(batch)
        try:
            out = self.model.predict(frame)
        except DataError as exc:
            raise RequestError(422, str(exc)) from None
        except PluginCallError as exc:  # a step refused the rows (a check that rejects what it finds)
            if isinstance(exc.cause, DataError):
                raise RequestError(422, str(exc.cause)) from None
            raise
        score = out["score"].to_numpy() if "score" in out.columns else None
        return out["prediction"].to_numpy(), score


class FastScorer:
    """Runs the ops the plugins compiled on one float64 matrix, then the flavor's fast predict."""

    kind = "fast"
    reason = ""

    def __init__(self, *, width: int, ops: list[RowOp], features: slice | np.ndarray, predict: FastPredict,
                 threshold: dict[str, Any] | None = None, series: str | None = None,
                 series_slot: int | None = None, time: str | None = None, time_slot: int | None = None,
                 time_dtype: str | None = None) -> None:
        self.width = width
        self.ops = ops
        self.features = features
        self.predict = predict
        self.threshold = threshold  # the version's alert threshold, applied to the scores; None: the model's own
        self.series = series  # the series column, for per-series thresholds and the ops' RowContext
        self.series_slot = series_slot  # its input column when it is numeric
        self.time = time
        self.time_slot = time_slot
        self.time_dtype = time_dtype  # the datetime dtype the replay parses the times to; None when numeric

    def context(self, batch: Batch) -> RowContext:
        """The rows' series keys and times, for the ops (times parsed only if an op reads them)."""
        other = batch.other
        series = times = None
        if self.series is not None:
            series = other[self.series] if self.series_slot is None else batch.numeric[:, self.series_slot]
        if self.time is not None:
            times = other[self.time] if self.time_slot is None else batch.numeric[:, self.time_slot]
        return RowContext(batch.rows, series=series, times=times, time_dtype=self.time_dtype)

    def transform(self, batch: Batch) -> np.ndarray:
        """The model's features (float32, in the manifest's order), preprocessing replayed by the ops."""
        import numpy as np

        inputs = batch.numeric
        if self.width == inputs.shape[1]:
            work = inputs.copy()  # the inputs stay as sent: the log records them
        else:
            work = np.empty((batch.rows, self.width))
            work[:, :inputs.shape[1]] = inputs
        return self.features_of(work, self.context(batch))

    def features_of(self, work: np.ndarray, rows: RowContext, first: int = 0) -> np.ndarray:
        """Run the ops on the work matrix; the features of its rows from `first` on (those before are a series'
        kept history, `opsloop.serving.history`)."""
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore"):  # as pandas: huge values become inf in float32
            for op in self.ops:
                op(work, rows)
            return work[first:, self.features].astype(np.float32)

    def run(self, work: np.ndarray, rows: RowContext, first: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels and scores of the work matrix's rows from `first` on, before the alert threshold."""
        try:
            return self.predict(self.features_of(work, rows, first))
        except DataError as exc:  # an op refused the rows (rowops: "raise opsloop.DataError")
            raise RequestError(422, str(exc)) from None

    def finish(self, out: tuple[np.ndarray, np.ndarray | None], batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        """The version's alert threshold applied to the scores of `batch`'s rows."""
        labels, score = out
        if self.threshold is not None and score is not None:  # the version's alert threshold (opsloop.alerting)
            import numpy as np

            from opsloop.alerting import alerts

            series = batch.other.get(self.series) if self.series else None
            labels = alerts(score, self.threshold, series).astype(np.int64)
        return labels, score

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            out = self.predict(self.transform(batch))
        except DataError as exc:  # an op refused the rows (rowops: "raise opsloop.DataError")
            raise RequestError(422, str(exc)) from None
        return self.finish(out, batch)


def _options(model: LoadedModel, name: str, step: dict[str, Any]) -> Any:
    """A step's stored options, structured as `LoadedModel.transform` gives them to `preprocess`."""
    from opsloop.config import structure

    cls = model.plugins.options_class(name)
    if cls is None:
        return None
    return structure(step.get("options") or {}, cls, section=f"bundle {model.ref} step {name}", source=None)


def _compile_step(model: LoadedModel, step: dict[str, Any], layout: RowLayout) -> RowOp | None:
    """One step's op from its plugin (None: it does nothing to request rows); `Unsupported` saying why not."""
    plugins, name = model.plugins, step["plugin"]
    try:
        plugins.load(name, where=f"bundle {model.ref}")
    except OpsloopError as exc:  # not installed, or it fails to import: the replay will say so too
        raise Unsupported(f'step "{name}" has no fast path: {exc}') from None
    label = plugins.info(name).label
    if not plugins.implements(name, "compile_rows"):
        raise Unsupported(f'step "{name}" ({label}) has no fast path (it does not implement compile_rows)')
    try:
        options = _options(model, name, step)
    except OpsloopError as exc:  # options the plugin no longer takes: the replay will say so too
        raise Unsupported(f'step "{name}" has no fast path: {exc}') from None
    layout.step = name
    try:
        op = plugins.call(name, "compile_rows", state=dict(step["state"]), options=options, layout=layout)
    except PluginCallError as exc:  # the manager wraps whatever the plugin raised, NoFastPath included
        if isinstance(exc.cause, NoFastPath):
            raise Unsupported(str(exc.cause)) from None
        raise _failed(model, str(exc))
    if op is not None and not callable(op):
        raise _failed(model, f'plugin "{name}" ({label}) returned {type(op).__name__} from compile_rows, '
                              "not a row operation or None")
    return op


def _failed(model: LoadedModel, reason: str) -> Unsupported:
    """A plugin failed while compiling: logged as a warning, and the version replays (never a failed load)."""
    log.warning("opsloop serve: %s takes the replay path: %s", model.ref, reason)
    return Unsupported(reason)


def _predict(model: LoadedModel, threads: int) -> FastPredict:
    """The flavor's fast predict, from whichever plugin compiles it; `Unsupported` when none does."""
    flavor = model.manifest.get("flavor")
    try:
        plugin, predict = model.plugins.first("compile_predict", model=model, threads=threads)
    except PluginCallError as exc:
        if isinstance(exc.cause, NoFastPath):
            raise Unsupported(str(exc.cause)) from None
        raise _failed(model, str(exc))
    if predict is None:
        raise Unsupported(f"flavor {flavor!r} has no fast predict (no plugin implements compile_predict for it)")
    if not callable(predict):
        raise _failed(model, f'plugin "{plugin}" returned {type(predict).__name__} from compile_predict, '
                              "not a predict function")
    return predict


def compile_fast(model: LoadedModel, schema: InputSchema, threads: int = 1) -> FastScorer:
    """A `FastScorer` composed of the plugins' compiled steps and predict; `Unsupported` naming the first thing
    that needs the replay."""
    manifest = model.manifest
    predict = _predict(model, threads)
    layout = RowLayout(schema.index, {c.name: c.dtype for c in schema.numeric},
                       series=manifest.get("series"), time=manifest.get("time"))
    start = layout.rounding(list(layout.slots))  # what building the frame with the schema's dtypes does
    ops: list[RowOp] = [start] if start else []
    for step in manifest["steps"]:
        op = _compile_step(model, step, layout)
        if op is not None:
            ops.append(op)
    missing = [f for f in manifest["features"] if f not in layout.slots]
    if missing:
        raise Unsupported(f"feature(s) {', '.join(missing[:5])} are not numeric inputs of the fast path")
    time, time_slot, time_dtype = manifest.get("time"), None, None
    if time is not None and time in schema.index:
        time_slot = schema.index[time]
    elif time is not None and time in schema.by_name:
        time_dtype = schema.by_name[time].dtype
    series = manifest.get("series")
    series_slot = schema.index.get(series) if series is not None else None
    return FastScorer(width=layout.width, ops=ops, features=index(layout.slots[f] for f in manifest["features"]),
                      predict=predict, threshold=model.threshold, series=series, series_slot=series_slot,
                      time=time if time in schema.by_name else None, time_slot=time_slot, time_dtype=time_dtype)


def make_scorer(model: LoadedModel, schema: InputSchema, *, fast: bool = True,
                threads: int = 1) -> FastScorer | ReplayScorer:
    """The fast scorer when allowed and possible, else the replay (with the reason)."""
    if not fast:
        return ReplayScorer(model, schema, "fast path switched off (--no-fast-path)")
    try:
        return compile_fast(model, schema, threads)
    except Unsupported as exc:
        return ReplayScorer(model, schema, str(exc))
