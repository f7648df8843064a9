"""Promote the candidate only when it beats production on recent labelled rows, beyond noise.

The `champion-challenger` gate (issue 12, item 2) scores one metric for the
champion (production) and the challenger (the candidate) on the same gate
window, the latest labelled rows the candidate did not train on. The margin
is "positive = challenger better" for every metric (champion - challenger
for `rmse` and `mae`). Its confidence interval comes from a block bootstrap:
the window is cut into `blocks` contiguous blocks in time order (by the time
column's quantiles, else by row order), blocks are drawn with replacement,
both metrics are recomputed on the same drawn rows, and the interval is the
percentiles of the margins. Blocks, not rows, because telemetry is
autocorrelated: neighbouring minutes are not independent evidence, and an
interval over single rows would be far too narrow.

The challenger wins when the margin is at least `min_margin` and (with
`require_ci`, the default) the interval's lower bound is above 0. Otherwise
the champion stays. Every reason carries the figures.

Metrics are computed with numpy from scores sorted once: a resample is a
weight per block, so each bootstrap draw is a weighted cumulative sum, not a
call to scikit-learn. On the full window they equal scikit-learn's
`average_precision_score` and `roc_auc_score` (tested to 1e-9).

Options (`[gate.champion-challenger]`): see `Options` and docs/stages/gate.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import DataError, GateVerdict, hookimpl

if TYPE_CHECKING:
    import numpy as np

    from opsloop.types import Contender, Dataset, RunContext

#: Metrics computed from the `score` column, over every cut.
SCORED = ("pr_auc", "roc_auc", "recall_at_precision")
#: Metrics computed from the `prediction` column, at each version's own alert threshold (opsloop.alerting).
AT_CUT = ("f1", "recall", "precision", "accuracy")
#: Regression metrics: lower is better.
LOWER_IS_BETTER = ("rmse", "mae")
METRICS = (*SCORED, *AT_CUT, *LOWER_IS_BETTER)
#: Cells of the (rows x resamples) work arrays per chunk of resamples: bounds memory (~32 MB a chunk).
_CHUNK_CELLS = 4_000_000


def _finite(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `champion-challenger` gate (`[gate.champion-challenger]`).

    Attributes:
        metric: The metric compared: `pr_auc`, `roc_auc` or
            `recall_at_precision` (from scores); `f1`, `recall`, `precision`
            or `accuracy` (from predictions, at each version's alert threshold); `rmse`
            or `mae` for regression models (lower is better).
        precision: For `recall_at_precision`: the precision a score cut must
            reach; the metric is the best recall among such cuts.
        min_margin: The challenger must beat the champion by at least this
            (in the metric's units; positive = challenger better).
        confidence: Level of the bootstrap interval of the margin.
        blocks: Contiguous time blocks the window is cut into for the bootstrap.
        resamples: Bootstrap resamples.
        require_ci: The challenger wins only when the interval's lower bound
            is above 0 as well (the improvement is not noise); false: the
            margin alone decides.
    """

    metric: str = attrs.field(default="pr_auc", validator=attrs.validators.in_(METRICS))
    precision: float = attrs.field(default=0.9, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    # 0.01: a saturated window (SMD, 89% positive rows) gave PR AUC 1.000 against 0.996 with an interval above 0;
    # the challenger it promoted scored 0.018 the next day (benchmarks/README.md, the loop).
    min_margin: float = attrs.field(default=0.01, validator=[_finite, attrs.validators.ge(0)])
    confidence: float = attrs.field(default=0.9, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    blocks: int = attrs.field(default=20, validator=attrs.validators.ge(2))
    resamples: int = attrs.field(default=1000, validator=attrs.validators.ge(100))
    require_ci: bool = True


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def gate(champion: Contender, challenger: Contender, window: Dataset, options: Options | None,
         run: RunContext | None) -> GateVerdict:
    """Compare the two on the window's labelled rows; the challenger wins only by `min_margin`, beyond noise.

    `run` has no default on purpose: pluggy passes no argument an impl gives a
    default. None (a direct call) seeds the bootstrap with 0.
    """
    import numpy as np

    options = options or Options()
    regression = options.metric in LOWER_IS_BETTER
    labelled, y, skipped = _labels(window, regression=regression)
    where = _Where.of(window, labelled, skipped)
    models = [_Scored.of(c, labelled, y, window, options.metric, regression) for c in (champion, challenger)]
    block, block_kind = _blocks(window, labelled, options.blocks)
    n_blocks = int(block.max()) + 1
    sign = -1.0 if regression else 1.0

    ones = np.ones((n_blocks, 1))
    point = [float(m.metric(y, block, ones, options)[0][0]) for m in models]
    margin = sign * (point[1] - point[0])

    rng = np.random.default_rng(run.seed if run is not None else 0)
    draws = rng.integers(0, n_blocks, size=(options.resamples, n_blocks))
    counts = np.zeros((options.resamples, n_blocks))
    np.add.at(counts, (np.arange(options.resamples)[:, None], draws), 1.0)
    margins, usable = _bootstrap(models, y, block, counts.T, options)
    margins = sign * margins

    ci: tuple[float, float] | None = None
    tail = (1.0 - options.confidence) / 2.0
    if n_blocks >= 2 and usable.sum() * 2 >= options.resamples:
        lo, hi = np.quantile(margins[usable], [tail, 1.0 - tail])
        ci = (float(lo), float(hi))

    wins, why = _decide(margin, ci, options)
    digits = _digits(max(abs(point[0]), abs(point[1])))
    label = (f"recall_at_precision@{options.precision:g}" if options.metric == "recall_at_precision"
             else options.metric)
    first = (f"{label} {point[1]:.{digits}f} (challenger {challenger.version.ref}) vs {point[0]:.{digits}f} "
             f"(champion {champion.version.ref}) on {where.rows:,} labelled rows, {where.span}: "
             f"margin {margin:+.{digits}f}")
    if regression:
        first += " (lower is better)"
    if ci is not None:
        first += f", {options.confidence * 100:g}% CI [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
    first += f" over {n_blocks} {block_kind} blocks: {why}"
    reasons = [first]
    if ci is None:
        reasons.append(_no_ci(n_blocks, int(usable.sum()), options))
    if skipped:
        reasons.append(f"{skipped:,} rows without a label left out of the window's {len(window.frame):,}")
    if block_kind == "row":
        reasons.append("blocks cut by row order: the window has no complete time column")

    figures = {f"{m.role}_{k}": v for m in models for k, v in m.figures(y, options).items()}
    return GateVerdict(winner="challenger" if wins else "champion", metric=options.metric, champion=point[0],
                       challenger=point[1], margin=margin, ci=ci, reasons=tuple(reasons), figures=figures)


# ---------------------------------------------------------------------------
# the window: labels, span, blocks
# ---------------------------------------------------------------------------


def _labels(window: Dataset, *, regression: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Positions of the labelled rows, their labels (float), how many rows had none."""
    import numpy as np
    import pandas as pd

    frame = window.frame
    if not window.target or window.target not in frame.columns:
        raise DataError(f"gate window {_describe(window)} has no target column {window.target!r}")
    target = frame[window.target]
    present = target.notna().to_numpy()
    labelled = np.flatnonzero(present)
    skipped = len(frame) - len(labelled)
    if not len(labelled):
        raise DataError(f"gate window {_describe(window)} has no labelled rows ({skipped:,} rows, none labelled)")
    values = target.iloc[labelled]
    if regression:
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(f"gate window {_describe(window)}: target {window.target!r} is not numeric "
                            f"({values.dtype}), as rmse and mae need")
        return labelled, values.to_numpy(dtype=float), skipped
    classes = set(pd.unique(values).tolist())
    if not classes <= {0, 1}:
        shown = ", ".join(map(repr, sorted(classes, key=str)[:5]))
        raise DataError(f"gate window {_describe(window)}: target {window.target!r} is not 0/1 "
                        f"(values {shown}); classification metrics need binary labels")
    y = values.to_numpy(dtype=float)
    positives = int(y.sum())
    if len(classes) < 2:
        raise DataError(f"gate window {_describe(window)} has one class only: {len(y):,} labelled rows, "
                        f"{positives:,} positive ({skipped:,} without a label); the metric needs both classes")
    return labelled, y, skipped


def _describe(window: Dataset) -> str:
    """The window's name and span, for messages."""
    where = _Where.of(window, None, 0)
    name = f"{window.name} " if window.name else ""
    return f"{name}({where.span}, {len(window.frame):,} rows)"


@attrs.frozen
class _Where:
    rows: int
    span: str

    @classmethod
    def of(cls, window: Dataset, labelled: np.ndarray | None, skipped: int) -> _Where:
        frame = window.frame if labelled is None else window.frame.iloc[labelled]
        rows = len(frame)
        if window.time and window.time in frame.columns and frame[window.time].notna().any():
            times = frame[window.time]
            first, last = times.min(), times.max()
            fmt = (lambda t: t.strftime("%Y-%m-%d %H:%M")) if hasattr(first, "strftime") else str
            return cls(rows=rows, span=f"{fmt(first)} to {fmt(last)}")
        if rows == 0:
            return cls(rows=0, span="no rows")
        positions = labelled if labelled is not None else [0, rows - 1]
        return cls(rows=rows, span=f"rows {int(positions[0]):,} to {int(positions[-1]):,}")


def _blocks(window: Dataset, labelled: np.ndarray, wanted: int) -> tuple[np.ndarray, str]:
    """Block number (0..B-1, contiguous in time) of each labelled row, and `"time"` or `"row"`.

    With a complete time column, rows are cut at the time's quantiles, so all
    series' rows of one moment share a block (a ranked time, ties together);
    else at equal counts in row order (rows are in time order per series).
    """
    import numpy as np
    import pandas as pd

    n = len(labelled)
    wanted = min(wanted, n)
    time = window.time
    if time and time in window.frame.columns and window.frame[time].iloc[labelled].notna().all():
        ranks = pd.Series(window.frame[time].iloc[labelled].to_numpy()).rank(method="min").to_numpy() - 1
        kind = "time"
    else:
        ranks = np.arange(n, dtype=float)
        kind = "row"
    raw = np.floor(ranks * wanted / n).astype(np.int64)
    # Ties in time can leave a block empty: renumber the ones in use, in order.
    _, block = np.unique(raw, return_inverse=True)
    return block.reshape(-1).astype(np.intp), kind


def _no_ci(n_blocks: int, usable: int, options: Options) -> str:
    if n_blocks < 2:
        return "no confidence interval: the labelled rows make fewer than 2 blocks"
    return (f"no confidence interval: only {usable:,} of {options.resamples:,} resamples held both classes "
            "(fewer than half)")


def _decide(margin: float, ci: tuple[float, float] | None, options: Options) -> tuple[bool, str]:
    digits = _digits(max(abs(margin), options.min_margin))
    if margin < options.min_margin:
        if margin < 0 or options.min_margin == 0:
            return False, "the champion stays: the challenger is worse"
        return False, f"the champion stays: the margin is below min_margin {options.min_margin:.{digits}f}"
    if not options.require_ci:
        return True, "the challenger wins (require_ci = false: the margin alone decides)"
    if ci is None:
        return False, "the champion stays: without a confidence interval the improvement may be noise (require_ci)"
    if ci[0] <= 0:
        return False, "the champion stays: the interval reaches 0 or below, so the improvement may be noise"
    return True, "the challenger wins"


def _digits(scale: float) -> int:
    """Decimals that show three significant digits of a figure of this size (0.912, 12.3, 1234)."""
    if not math.isfinite(scale) or scale == 0:
        return 3
    return max(0, min(6, 2 - math.floor(math.log10(scale))))


# ---------------------------------------------------------------------------
# one contender's metric, on the window and on weighted resamples
# ---------------------------------------------------------------------------


@attrs.frozen
class _Scored:
    """A contender's predictions on the labelled rows, prepared once for many resamples."""

    role: str
    metric_name: str
    prediction: Any  # np.ndarray
    score: Any  # np.ndarray | None
    order: Any  # positions of the labelled rows by descending score
    ends: Any  # last position (in `order`) of each distinct score

    @classmethod
    def of(cls, contender: Contender, labelled: np.ndarray, y: np.ndarray, window: Dataset, metric: str,
           regression: bool) -> _Scored:
        import numpy as np

        frame = contender.predictions
        who = f"{contender.role} {contender.version.ref}"
        if frame is None or len(frame) != len(window.frame):
            got = "none" if frame is None else f"{len(frame):,}"
            raise DataError(f"{who}: {got} predictions for the gate window's {len(window.frame):,} rows")
        if "prediction" not in frame.columns:
            raise DataError(f'{who}: its predictions have no "prediction" column')
        prediction = _numbers(frame["prediction"].iloc[labelled])
        if np.isnan(prediction).any():
            raise DataError(f"{who}: {int(np.isnan(prediction).sum()):,} labelled rows without a numeric prediction")
        if not regression and not set(np.unique(prediction).tolist()) <= {0, 1}:
            raise DataError(f"{who}: predictions are not 0/1 on every labelled row")
        score = order = ends = None
        if "score" in frame.columns and not regression:
            score = _numbers(frame["score"].iloc[labelled])
            if np.isnan(score).any():
                raise DataError(f"{who}: {int(np.isnan(score).sum()):,} labelled rows without a numeric score")
            order = np.argsort(-score, kind="mergesort")
            ranked = score[order]
            ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
        elif metric in SCORED:
            raise DataError(f'{who} has no scores (no "score" column) for metric {metric}: choose one '
                            f"computed from predictions ({', '.join(AT_CUT)})")
        return cls(role=contender.role, metric_name=metric, prediction=prediction, score=score, order=order,
                   ends=ends)

    def metric(self, y: np.ndarray, block: np.ndarray, weights: np.ndarray,
               options: Options) -> tuple[np.ndarray, np.ndarray]:
        """The metric under each column of block weights (blocks x resamples), and which columns are usable."""
        import numpy as np

        name = self.metric_name
        if name in SCORED:
            return _ranked(name, y[self.order], block[self.order], self.ends, weights, options.precision)
        w = weights[block]  # rows x resamples
        if name in LOWER_IS_BETTER:
            err = self.prediction - y
            total = w.sum(axis=0)
            loss = (err**2 if name == "rmse" else np.abs(err)) @ w / total
            return (np.sqrt(loss) if name == "rmse" else loss), total > 0
        hit = self.prediction == 1
        tp = (y * hit) @ w
        fp = ((1 - y) * hit) @ w
        pos = y @ w
        total = w.sum(axis=0)
        neg = total - pos
        with np.errstate(divide="ignore", invalid="ignore"):  # zero_division = 0, as scikit-learn's default
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(pos > 0, tp / pos, 0.0)
            values = {
                "precision": precision,
                "recall": recall,
                "f1": np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0),
                "accuracy": (tp + (neg - fp)) / total,
            }
        return values[name], (pos > 0) & (neg > 0)

    def figures(self, y: np.ndarray, options: Options) -> dict[str, float]:
        """The metrics worth keeping on the whole window (scikit-learn, through opsloop.metrics)."""
        import numpy as np

        from opsloop import metrics

        if self.metric_name in LOWER_IS_BETTER:
            return metrics.regression(y, self.prediction)
        found = metrics.classification(y.astype(int), self.prediction.astype(int), self.score)
        keep = ("pr_auc", "roc_auc", "f1", "precision", "recall")
        out = {k: v for k, v in found.items() if k in keep or k == self.metric_name}
        if self.metric_name == "recall_at_precision":
            whole = self.metric(y, np.zeros(len(y), dtype=np.intp), np.ones((1, 1)), options)
            out["recall_at_precision"] = float(whole[0][0])
        return out


def _numbers(column: Any) -> np.ndarray:
    """A column as floats; NaN where a value is missing or not a number."""
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=float("nan"))


def _ranked(name: str, y: np.ndarray, block: np.ndarray, ends: np.ndarray, weights: np.ndarray,
            precision_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """PR AUC (average precision), ROC AUC or recall at a precision, from rows sorted by descending score.

    Each column of `weights` is one resample (each row counts its block's
    weight); true and false positives at each distinct score are cumulative
    sums, as scikit-learn's `_binary_clf_curve` with sample weights, so with
    all weights 1 the figures are scikit-learn's.
    """
    import numpy as np

    w = weights[block]
    tps = np.cumsum(w * y[:, None], axis=0)[ends]
    fps = np.cumsum(w, axis=0)[ends] - tps
    pos, neg = tps[-1], fps[-1]
    usable = (pos > 0) & (neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "roc_auc":
            d_fps = np.diff(fps, axis=0, prepend=0.0)
            heights = tps + np.vstack([np.zeros((1, tps.shape[1])), tps[:-1]])
            value = (d_fps * heights).sum(axis=0) / (2.0 * pos * neg)
        else:
            ps = tps + fps
            precision = np.where(ps > 0, tps / ps, 0.0)
            recall = tps / pos
            if name == "pr_auc":
                value = np.maximum(0.0, (np.diff(recall, axis=0, prepend=0.0) * precision).sum(axis=0))
            else:
                value = np.where(precision >= precision_floor, recall, 0.0).max(axis=0)
    return np.where(usable, value, np.nan), usable


def _bootstrap(models: list[_Scored], y: np.ndarray, block: np.ndarray, counts: np.ndarray,
               options: Options) -> tuple[np.ndarray, np.ndarray]:
    """Challenger minus champion under each resample (blocks x resamples counts), and which are usable."""
    import numpy as np

    step = max(1, _CHUNK_CELLS // max(1, len(y)))
    margins, usable = [], []
    for start in range(0, counts.shape[1], step):
        chunk = counts[:, start:start + step]
        (champ, ok), (chal, _) = (m.metric(y, block, chunk, options) for m in models)
        margins.append(chal - champ)
        usable.append(ok)
    return np.concatenate(margins), np.concatenate(usable)
