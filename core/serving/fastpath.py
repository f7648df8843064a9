"""Scoring checked rows: a compiled per-row scorer where the bundle allows it, the plugins' replay otherwise.

`LoadedModel.predict` builds a pandas frame, fingerprints it and calls each
preprocess plugin through the plugin manager: right for batches, a few
milliseconds too slow for one row. `compile_fast` turns a bundle into a
`FastScorer`: the stored states of its steps applied with numpy to one
float64 matrix, then XGBoost's `inplace_predict`, giving the same numbers as
the replay, value for value (tests/serving/test_fastpath.py checks every
built-in step). Each op reproduces its plugin's arithmetic, including the
dtype casts pandas makes (a float32 column is rounded to float32 after every
step that writes it, as `astype` does).

Steps with a fast path: `schema-check` (with `on_violation = "warn"` it
never changes rows), `impute` (numeric fill values and indicators), `scale`,
`clip`, and `label-horizon` (requests carry no target, so it does nothing).
Anything else, the XGBoost-only estimator path aside, falls back to
`ReplayScorer` (`LoadedModel.predict`), with the reason in the model's
metadata and on `/metrics`: `rolling-features` (its windows need each
series' previous rows: send them in the request, see docs/serving.md),
`schema-check` with `on_violation = "reject"`, text features, other
flavors, and third-party steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opsloop.errors import DataError, PluginCallError
from opsloop.serving.schema import RequestError

if TYPE_CHECKING:
    import numpy as np
    from opsloop.bundle import LoadedModel
    from opsloop.serving.schema import Batch, InputSchema

Op = Callable[["np.ndarray"], None]


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
        except PluginCallError as exc:  # a step refused the rows (schema-check with on_violation = reject)
            if isinstance(exc.cause, DataError):
                raise RequestError(422, str(exc.cause)) from None
            raise
        score = out["score"].to_numpy() if "score" in out.columns else None
        return out["prediction"].to_numpy(), score


class FastScorer:
    """Replays a bundle's steps with numpy on one float64 matrix, then predicts with XGBoost in place."""

    kind = "fast"
    reason = ""

    def __init__(self, *, width: int, start: list[Op], ops: list[Op], features: slice | np.ndarray,
                 predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
                 threshold: dict[str, Any] | None = None, series: str | None = None) -> None:
        self.width = width
        self.ops = [*start, *ops]
        self.features = features
        self.predict = predict
        self.threshold = threshold  # the version's alert threshold, applied to the scores; None: the model's own
        self.series = series  # the series column, for per-series thresholds

    def transform(self, batch: Batch) -> np.ndarray:
        """The model's features (float32, in the manifest's order), preprocessing replayed."""
        import numpy as np

        inputs = batch.numeric
        if self.width == inputs.shape[1]:
            work = inputs.copy()  # the inputs stay as sent: the log records them
        else:
            work = np.empty((batch.rows, self.width))
            work[:, :inputs.shape[1]] = inputs
        with np.errstate(over="ignore", invalid="ignore"):  # as pandas: huge values become inf in float32
            for op in self.ops:
                op(work)
            return work[:, self.features].astype(np.float32)

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        labels, score = self.predict(self.transform(batch))
        if self.threshold is not None and score is not None:  # the version's alert threshold (opsloop.alerting)
            import numpy as np

            from opsloop.alerting import alerts

            series = batch.other.get(self.series) if self.series else None
            labels = alerts(score, self.threshold, series).astype(np.int64)
        return labels, score


# ---------------------------------------------------------------------------
# Compiling steps. `slots` maps column -> matrix column, `dtypes` column -> the
# dtype the replay's frame would have; each builder returns its op (or None).
# ---------------------------------------------------------------------------


def _columns(indices: list[int]) -> slice | np.ndarray:
    """Matrix columns to index with: a slice when they are consecutive (no copy, 5x faster), else an array."""
    import numpy as np

    if indices and indices == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return np.array(indices, dtype=np.intp)


def _rounding(columns: list[str], slots: dict[str, int], dtypes: dict[str, str]) -> Op | None:
    """An op that rounds narrow-float columns to their dtype, as pandas' astype does after a step."""
    import numpy as np

    groups: dict[str, list[int]] = {}
    for c in columns:
        if dtypes[c] in ("float32", "float16"):
            groups.setdefault(dtypes[c], []).append(slots[c])
    if not groups:
        return None
    casts = [(_columns(idx), np.dtype(dt)) for dt, idx in groups.items()]

    def round_(w: np.ndarray) -> None:
        for idx, dt in casts:
            w[:, idx] = w[:, idx].astype(dt)
    return round_


def _numeric(columns: list[str], slots: dict[str, int], dtypes: dict[str, str], step: str) -> None:
    for c in columns:
        if c not in slots:
            raise Unsupported(f'step "{step}" uses column "{c}", which is not numeric at this point')


def _impute(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int], dtypes: dict[str, str]) -> Op | None:
    import numpy as np

    fill = state["fill"]
    _numeric([c for c in fill if fill[c] is not None], slots, dtypes, "impute")
    floats = [c for c in fill if fill[c] is not None and dtypes[c].startswith("float")]
    for c in floats:  # pandas keeps a float32 column float32 only for a fill value float32 holds
        if dtypes[c] != "float64" and float(np.dtype(dtypes[c]).type(fill[c])) != float(fill[c]):
            raise Unsupported(f'impute: the fill value of "{c}" does not fit its dtype {dtypes[c]}')
    indicators = list(state.get("indicators", []))
    _numeric(indicators, slots, dtypes, "impute")
    src = _columns([slots[c] for c in indicators])
    dst = []
    for c in indicators:
        name = f"{c}__missing"
        if name in slots or name in dtypes:
            raise Unsupported(f'impute: indicator column "{name}" clashes with an existing column')
        slots[name], dtypes[name] = len(slots), "int8"
        dst.append(slots[name])
    idx = _columns([slots[c] for c in floats])
    values = np.array([float(fill[c]) for c in floats])
    dst_idx = _columns(dst)

    def impute(w: np.ndarray) -> None:
        if indicators:
            w[:, dst_idx] = np.isnan(w[:, src])  # flags come from the rows before filling
        block = w[:, idx]
        gaps = np.isnan(block)
        if gaps.any():
            w[:, idx] = np.where(gaps, values, block)
    return impute if floats or indicators else None


def _scale(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int], dtypes: dict[str, str]) -> Op | None:
    import numpy as np

    columns = list(state["center"])
    if not columns:
        return None
    _numeric(columns, slots, dtypes, "scale")
    idx = _columns([slots[c] for c in columns])
    center = np.array([state["center"][c] for c in columns], dtype=np.float64)
    scale = np.array([state["scale"][c] for c in columns], dtype=np.float64)
    for c in columns:  # float columns keep their dtype, the others become float64
        if not dtypes[c].startswith("float"):
            dtypes[c] = "float64"
    round_ = _rounding(columns, slots, dtypes)

    def scale_(w: np.ndarray) -> None:
        w[:, idx] = (w[:, idx] - center) / scale
        if round_:
            round_(w)
    return scale_


def _clip(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int], dtypes: dict[str, str]) -> Op | None:
    import numpy as np

    lower, upper = state["lower"], state["upper"]
    columns = [c for c in lower if lower[c] is not None and upper[c] is not None]
    if not columns:
        return None
    _numeric(columns, slots, dtypes, "clip")
    idx = _columns([slots[c] for c in columns])
    lo = np.array([lower[c] for c in columns], dtype=np.float64)
    hi = np.array([upper[c] for c in columns], dtype=np.float64)
    for c in columns:
        if dtypes[c][:1] not in ("f", "i", "u"):
            dtypes[c] = "float64"
    round_ = _rounding(columns, slots, dtypes)

    def clip(w: np.ndarray) -> None:
        w[:, idx] = np.clip(w[:, idx], lo, hi)  # integers stay whole: their bounds are whole
        if round_:
            round_(w)
    return clip


def _schema_check(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int],
                  dtypes: dict[str, str]) -> Op | None:
    if (options or {}).get("on_violation", "warn") != "warn":
        raise Unsupported('schema-check with on_violation = "reject" judges every request through the plugin')
    return None


def _label_horizon(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int],
                   dtypes: dict[str, str]) -> Op | None:
    return None  # it only changes the target, which requests never carry


def _rolling(state: dict[str, Any], options: dict[str, Any], slots: dict[str, int], dtypes: dict[str, str]) -> Op:
    windows = state.get("windows") or []
    raise Unsupported(f"rolling-features computes windows of up to {max(windows, default=0)} rows per series: "
                      "send each series' recent rows with the request")


#: Built-in steps with a fast path; the tests check each against `LoadedModel.predict`.
STEPS: dict[str, Callable[..., Op | None]] = {
    "schema-check": _schema_check, "impute": _impute, "scale": _scale, "clip": _clip,
    "label-horizon": _label_horizon, "rolling-features": _rolling,
}


def binary_labels(p: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels from P(class 1) as `classes[predict_proba(X).argmax(axis=1)]` gives them, without the stacking.

    XGBClassifier.predict_proba stacks (1 - p, p) in float32; argmax takes
    class 1 only when its column is strictly larger (a tie goes to class 0).
    """
    import numpy as np

    return classes[(p > (1.0 - p)).astype(np.intp)]


def _xgboost_predict(model: LoadedModel, threads: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """What `predictions_frame` computes from `predict_proba`/`predict`, on a float32 matrix (the version's
    alert threshold is applied after, by `FastScorer.score`)."""
    import numpy as np

    estimator = model.estimator
    booster = estimator.get_booster()
    if threads:
        booster.set_param({"nthread": threads})  # the same numbers with any thread count
    rounds = estimator._get_iteration_range(None)  # XGBoost's own rule: best_iteration + 1 when early-stopped
    missing = estimator.missing
    task = model.task
    objective = estimator.objective if isinstance(estimator.objective, str) else ""
    if task == "regression":
        def regress(x: np.ndarray) -> tuple[np.ndarray, None]:
            return booster.inplace_predict(x, iteration_range=rounds, missing=missing, validate_features=False), None
        return regress
    if task != "classification":
        raise Unsupported(f"task {task!r} of an xgboost bundle")
    classes = np.asarray(estimator.classes_)
    raw = objective.startswith(("binary:logistic", "multi:softprob"))

    def classify(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if raw:
            p = booster.inplace_predict(x, iteration_range=rounds, missing=missing, validate_features=False)
            if p.ndim == 1 and len(classes) == 2:
                return binary_labels(p, classes), p
            proba = p if p.ndim == 2 else np.vstack((1.0 - p, p)).transpose()
        else:
            proba = np.asarray(estimator.predict_proba(x))
        score = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
        return classes[proba.argmax(axis=1)], score
    return classify


def compile_fast(model: LoadedModel, schema: InputSchema, threads: int = 1) -> FastScorer:
    """A `FastScorer` for the bundle; `Unsupported` naming the first thing it cannot do."""
    manifest = model.manifest
    if manifest.get("flavor") != "xgboost":
        raise Unsupported(f"flavor {manifest.get('flavor')!r} is scored by LoadedModel.predict")
    slots = dict(schema.index)
    dtypes = {c.name: c.dtype.lower() for c in schema.numeric}
    start = _rounding(list(slots), slots, dtypes)  # what building the frame with the schema's dtypes does
    ops: list[Op] = []
    for step in manifest["steps"]:
        builder = STEPS.get(step["plugin"])
        if builder is None:
            raise Unsupported(f'step "{step["plugin"]}" has no fast path')
        op = builder(step["state"], step.get("options") or {}, slots, dtypes)
        if op is not None:
            ops.append(op)
    missing = [f for f in manifest["features"] if f not in slots]
    if missing:
        raise Unsupported(f"feature(s) {', '.join(missing[:5])} are not numeric inputs of the fast path")
    return FastScorer(width=len(slots), start=[start] if start else [], ops=ops,
                      features=_columns([slots[f] for f in manifest["features"]]), predict=_xgboost_predict(model, threads),
                      threshold=model.threshold, series=manifest.get("series"))


def make_scorer(model: LoadedModel, schema: InputSchema, *, fast: bool = True,
                threads: int = 1) -> FastScorer | ReplayScorer:
    """The fast scorer when allowed and possible, else the replay (with the reason)."""
    if not fast:
        return ReplayScorer(model, schema, "fast path switched off (--no-fast-path)")
    try:
        return compile_fast(model, schema, threads)
    except Unsupported as exc:
        return ReplayScorer(model, schema, str(exc))
