"""The reference profile of a model version: what its training inputs and scores looked like.

Written into every bundle at register time (issue 9, item 4), so that drift
can be measured on logged predictions without reloading the training data.
Two files, both listed with their sha256 in the manifest's `files` like every
other bundle file (no pickle):

    profile.json            summary of the training rows, see `Profile`
    profile-sample.parquet  at most `SAMPLE_ROWS` raw training rows, seeded,
                            stratified by series (absent when the rows cannot
                            be written as Parquet; `Profile.sample_rows` is 0)

What `profile.json` holds:

- for every numeric raw input feature (the columns a client sends, as the
  prediction log keeps them: target, time and series excluded; booleans and
  non-numeric columns are listed in `skipped`): the count of finite values,
  the count of missing ones (NaN, None or infinite), min, max, mean, standard
  deviation and `QUANTILES` + 1 quantiles at levels 0, 1/QUANTILES, ..., 1
  (numpy's default linear interpolation), computed once over all training rows
  (exact floats; for a float32 column, float32 numbers, `"dtype": "float32"`);
- where the data has a series column: the same per series for the
  `SERIES_LIMIT` series with the most training rows (ties by name), with
  `SERIES_QUANTILES` + 1 quantiles each; `series_total` counts them all;
- the model's outputs on its own training rows (in-sample, preprocessing
  replayed as serving does): the distribution of `score` (or of `prediction`
  for a regressor) and the alert rate, the share of rows predicted 1.
- for a binary classifier or anomaly detector validated with out-of-fold
  scores (`ValidationReport.oof`): `calibration`, an isotonic regression of
  the label on those scores as its breakpoints, the rows and positives it saw,
  the decision threshold and the out-of-fold precision, recall and F1
  (`Calibration`; what `estimate-monitor` estimates performance with before
  labels arrive).

`read_profile(...)` gives it back as a `Profile` (None for a bundle written
before profiles existed), `reference(...)` the sample as a `Dataset` with the
same target, time and series columns as the training rows a monitor receives
as `reference` during `opsloop run`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import BundleError
from opsloop.types import Dataset, ModelVersion

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.manager import PluginManager

__all__ = ["Calibration", "FeatureProfile", "OutputProfile", "Profile", "SeriesProfile", "build", "calibrate",
           "counts_to_figures", "read_calibration", "read_profile", "reference"]

FORMAT = "opsloop.profile/1"
PROFILE_FILE = "profile.json"
SAMPLE_FILE = "profile-sample.parquet"
#: Quantile steps of a feature over all training rows: levels 0, 0.001, ..., 1. A CDF read from them is
#: within 1/QUANTILES (+ 1/rows) of the training rows' own, which bounds the error of KS on the profile.
QUANTILES = 1000
#: Quantile steps per series: levels 0, 0.01, ..., 1 (KS per series within about 2/100).
SERIES_QUANTILES = 100
#: Series profiled one by one: the ones with the most training rows (the profile stays small on a fleet).
SERIES_LIMIT = 50
#: Raw training rows kept as the reference sample, and the seed that picks them.
SAMPLE_ROWS = 5000
SAMPLE_SEED = 0


@attrs.frozen(kw_only=True)
class FeatureProfile:
    """One numeric column's distribution over the training rows.

    Attributes:
        count: Finite values.
        missing: NaN, None or infinite values.
        min: Smallest finite value (None when there is none; so for the others).
        max: Largest finite value.
        mean: Mean of the finite values.
        std: Population standard deviation of the finite values.
        quantiles: Quantiles at `levels` (empty when there is no finite value);
            for a float32 column rounded to float32, so that a value the rows
            hold many times is exactly one of the column's values.
    """

    count: int
    missing: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    quantiles: tuple[float, ...] = attrs.field(default=(), converter=tuple)

    @property
    def null_share(self) -> float:
        """Share of the rows without a finite value."""
        total = self.count + self.missing
        return self.missing / total if total else 0.0

    @property
    def levels(self) -> np.ndarray:
        """The probability levels of `quantiles`: 0, 1/k, ..., 1."""
        import numpy as np

        return np.linspace(0.0, 1.0, len(self.quantiles))

    def edges(self, bins: int) -> np.ndarray:
        """Inner edges of `bins` equal-probability bins, read off the quantiles (ties merged).

        Where `bins` divides the quantile steps the edges are stored quantiles
        themselves (deciles: every 100th of 1,000), otherwise interpolated.
        """
        import numpy as np

        q = np.asarray(self.quantiles, dtype=float)
        position = np.arange(1, bins) * (len(q) - 1) / bins
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, len(q) - 1)
        return np.unique(q[low] + (position - low) * (q[high] - q[low]))


@attrs.frozen(kw_only=True)
class SeriesProfile:
    """The training rows of one series (one server).

    Attributes:
        rows: Training rows of the series.
        features: Per feature, with `SERIES_QUANTILES` + 1 quantiles.
    """

    rows: int
    features: Mapping[str, FeatureProfile] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class OutputProfile:
    """The model's outputs on its training rows (in-sample).

    Attributes:
        column: `score` (probability of the positive class, or anomaly score),
            or `prediction` for a regressor.
        distribution: Its distribution, with `QUANTILES` + 1 quantiles.
        alert_rate: Share of rows predicted 1 (an alert); None for a regressor.
    """

    column: str
    distribution: FeatureProfile
    alert_rate: float | None = None


@attrs.frozen(kw_only=True)
class Profile:
    """A version's reference profile, as `read_profile` returns it.

    Attributes:
        rows: Training rows profiled.
        target: Target column of the training data, or None.
        time: Time column, or None.
        series: Series column, or None.
        features: Per numeric raw input feature, over all training rows.
        skipped: Input columns not profiled (booleans, non-numeric).
        series_profiles: Per series (as text), the `SERIES_LIMIT` largest.
        series_total: Series in the training rows (0 without a series column).
        outputs: The model's scores on the training rows, or None when they
            could not be computed (`outputs_note` says why).
        outputs_note: Why there are no outputs ("" when there are).
        sample_rows: Rows in the reference sample (0: none stored).
        calibration: How scores map to the probability of a positive, from
            the out-of-fold validation scores; None for a regressor, a
            version validated without them, or a bundle written before.
        path: The bundle directory it was read from.
    """

    rows: int
    target: str | None = None
    time: str | None = None
    series: str | None = None
    features: Mapping[str, FeatureProfile] = attrs.field(factory=dict)
    skipped: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    series_profiles: Mapping[str, SeriesProfile] = attrs.field(factory=dict)
    series_total: int = 0
    outputs: OutputProfile | None = None
    outputs_note: str = ""
    sample_rows: int = 0
    calibration: Calibration | None = None
    path: Path | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class Calibration:
    """How a version's scores map to the probability that a row is positive (issue 9, item 5).

    An isotonic regression of the label on the out-of-fold validation scores
    (scikit-learn's `IsotonicRegression(out_of_bounds="clip")`, y in [0, 1]),
    kept as its breakpoints: between two of them the probability is linear
    in the score, outside them it is the end value (`probability`, with
    `numpy.interp`; no pickle).

    Attributes:
        method: `"isotonic"`.
        scores: The breakpoints' scores (`X_thresholds_`), increasing.
        probabilities: The probability of a positive at each (`y_thresholds_`).
        rows: Out-of-fold rows it was fitted on.
        positives: Those labelled 1.
        threshold: The score from which the model predicts 1 (None when its
            predictions do not follow one score threshold); `inclusive`
            says whether a score equal to it is a 1.
        inclusive: `score >= threshold` (True) or `score > threshold`.
        baseline: What validation measured on the same out-of-fold rows,
            with the fold models' own predictions: `precision`, `recall`,
            `f1` (NaN where they divide by zero), `positive_rate` (share
            predicted 1) and `prevalence` (share labelled 1).
    """

    method: str = "isotonic"
    scores: tuple[float, ...] = attrs.field(converter=tuple)
    probabilities: tuple[float, ...] = attrs.field(converter=tuple)
    rows: int
    positives: int
    threshold: float | None = None
    inclusive: bool = False
    baseline: Mapping[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.method != "isotonic":
            raise ValueError(f"unsupported calibration method {self.method!r} (expected isotonic)")
        if not self.scores or len(self.scores) != len(self.probabilities):
            raise ValueError(f"calibration has {len(self.scores)} scores and {len(self.probabilities)} "
                             "probabilities; expected as many of each, at least one")

    def probability(self, scores: Any) -> np.ndarray:
        """The calibrated probability of a positive for each score (NaN for a NaN score)."""
        import numpy as np

        values = np.asarray(scores, dtype=float)
        return np.interp(values, np.asarray(self.scores), np.asarray(self.probabilities))

    def predicted(self, scores: Any) -> np.ndarray | None:
        """Whether the model predicts 1 for each score, by `threshold`; None without a threshold."""
        import numpy as np

        if self.threshold is None:
            return None
        values = np.asarray(scores, dtype=float)
        return values >= self.threshold if self.inclusive else values > self.threshold

    def to_json(self) -> dict[str, Any]:
        """The profile's `calibration` entry (NaN baseline figures as null)."""
        return {"method": self.method, "scores": list(self.scores), "probabilities": list(self.probabilities),
                "rows": self.rows, "positives": self.positives, "threshold": self.threshold,
                "inclusive": self.inclusive,
                "baseline": {k: (v if math.isfinite(v) else None) for k, v in self.baseline.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Calibration:
        """Back from `to_json`; ValueError or KeyError when it is not one."""
        threshold = doc.get("threshold")
        return cls(method=doc.get("method", "isotonic"), scores=[float(x) for x in doc["scores"]],
                   probabilities=[float(y) for y in doc["probabilities"]], rows=int(doc["rows"]),
                   positives=int(doc["positives"]), threshold=None if threshold is None else float(threshold),
                   inclusive=bool(doc.get("inclusive", False)),
                   baseline={k: math.nan if v is None else float(v) for k, v in doc.get("baseline", {}).items()})


# ---------------------------------------------------------------------------
# Building (at bundle writing)
# ---------------------------------------------------------------------------


def build(directory: Path, raw: Dataset, *, predictions: pd.DataFrame | None = None,
          outputs_note: str = "", calibration: Mapping[str, Any] | None = None) -> list[str]:
    """Write the profile of the training rows `raw` into a bundle directory; the file names written.

    Args:
        directory: The bundle being written (its manifest lists the files).
        raw: The raw training rows, as `write_bundle` gets them.
        predictions: The model's `predictions_frame` on those rows
            (`prediction`, and `score` for classifiers), row-aligned; None
            when they could not be computed.
        outputs_note: Why `predictions` is None, kept in the profile.
        calibration: What `calibrate` returned, kept as the profile's
            `calibration` entry (absent when None).

    Returns:
        `profile.json`, and `profile-sample.parquet` when the sample could be written.
    """
    frame = raw.frame
    meta = {c for c in (raw.target, raw.time, raw.series) if c}
    features, skipped = _numeric_inputs(frame, meta)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "rows": len(frame),
        "target": raw.target, "time": raw.time, "series": raw.series,
        "quantile_levels": QUANTILES, "series_quantile_levels": SERIES_QUANTILES,
        "features": {c: _describe(frame[c], QUANTILES) for c in features},
        "skipped": skipped,
        "series_total": 0, "series_profiles": {},
        "outputs": _outputs(predictions), "outputs_note": "" if predictions is not None else outputs_note,
    }
    if calibration is not None:
        doc["calibration"] = dict(calibration)
    if raw.series and raw.series in frame.columns:
        groups = frame.groupby(frame[raw.series].astype(str), sort=True, observed=True, dropna=False).indices
        doc["series_total"] = len(groups)
        largest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:SERIES_LIMIT]
        doc["series_profiles"] = {
            name: {"rows": len(rows), "features": {c: _describe(frame[c].iloc[rows], SERIES_QUANTILES)
                                                   for c in features}}
            for name, rows in sorted(largest)}
    files = [PROFILE_FILE]
    series = frame[raw.series] if raw.series and raw.series in frame.columns else None
    sample = frame.iloc[sample_positions(len(frame), series, SAMPLE_ROWS, SAMPLE_SEED)]
    doc["sample_rows"] = 0
    try:
        sample.reset_index(drop=True).to_parquet(directory / SAMPLE_FILE, index=False)
        doc["sample_rows"] = len(sample)
        files.append(SAMPLE_FILE)
    except (ImportError, ValueError, TypeError, NotImplementedError) as exc:
        # a column pyarrow cannot store (mixed objects): the profile stands without its sample
        (directory / SAMPLE_FILE).unlink(missing_ok=True)
        doc["sample_note"] = f"no sample: {type(exc).__name__}: {exc}"[:300]
    (directory / PROFILE_FILE).write_text(json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n",
                                          encoding="utf-8")
    return files


def _numeric_inputs(frame: pd.DataFrame, meta: set[str]) -> tuple[list[str], list[str]]:
    import pandas as pd

    features, skipped = [], []
    for c in frame.columns:
        if c in meta:
            continue
        column = frame[c]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) \
                and not pd.api.types.is_complex_dtype(column):
            features.append(str(c))
        else:
            skipped.append(str(c))
    return features, skipped


def _describe(column: Any, steps: int) -> dict[str, Any]:
    """Counts, moments and quantiles of a column. Exact floats (a tie in the rows stays a tie in the
    quantiles); of a float32 column they are float32 numbers, written in their own shortest digits."""
    import numpy as np

    single = column.dtype == np.float32
    values = column.to_numpy(dtype=float, na_value=np.nan)  # nullable integers: <NA> becomes NaN
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"count": int(finite.size), "missing": int(values.size - finite.size)}
    if finite.size:
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, steps + 1))
        numbers = [float(str(q)) for q in quantiles.astype(np.float32)] if single else quantiles.tolist()
        out.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                   std=float(finite.std()), quantiles=numbers)
        if single:
            out["dtype"] = "float32"
    return out


def _outputs(predictions: pd.DataFrame | None) -> dict[str, Any] | None:
    import pandas as pd

    if predictions is None:
        return None
    column = "score" if "score" in predictions.columns else "prediction"
    if column not in predictions.columns or not pd.api.types.is_numeric_dtype(predictions[column]):
        return None
    alert_rate = None
    if "score" in predictions.columns and len(predictions):  # a classifier or an anomaly detector
        alert_rate = float((predictions["prediction"] == 1).mean())
    return {"column": column, "distribution": _describe(predictions[column], QUANTILES), "alert_rate": alert_rate}


def calibrate(oof: pd.DataFrame | None, task: str, predictions: pd.DataFrame | None = None,
              threshold: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The `calibration` entry of a profile: isotonic regression of the label on out-of-fold scores.

    Args:
        oof: `ValidationReport.oof` (`label`, `score`, `prediction`), or None.
        task: The model's task; only `classification` and `anomaly` are calibrated.
        predictions: The final model's `predictions_frame` on its training
            rows, where the decision threshold of an anomaly detector is read.
        threshold: The version's alert threshold (opsloop.alerting), when it
            has one: the decision, and the baseline figures, are at it.

    Returns:
        `Calibration.to_json()`, or None without out-of-fold scores, for a
        regressor, or when the rows hold a single class (nothing to learn).
    """
    import numpy as np

    if oof is None or task not in ("classification", "anomaly") or not len(oof) \
            or not {"label", "score", "prediction"} <= set(oof.columns):
        return None
    score = oof["score"].to_numpy(dtype=float)
    label = oof["label"].to_numpy(dtype=float)
    kept = np.isfinite(score) & np.isin(label, (0.0, 1.0))
    score, label = score[kept], label[kept]
    positives = int(label.sum())
    if not positives or positives == len(label):
        return None
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, label)
    if threshold:
        cut, inclusive = float(threshold["value"]), bool(threshold.get("inclusive", True))
        predicted = score >= cut if inclusive else score > cut
    else:
        predicted = oof["prediction"].to_numpy(dtype=float)[kept] == 1
        cut, inclusive = _decision(task, predictions)
    return Calibration(scores=fitted.X_thresholds_.tolist(), probabilities=fitted.y_thresholds_.tolist(),
                       rows=len(label), positives=positives, threshold=cut, inclusive=inclusive,
                       baseline=counts_to_figures(*_counts(label == 1, predicted))).to_json()


def _counts(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float, float]:
    """True positives, false positives, false negatives and rows of two boolean arrays."""
    tp = float((actual & predicted).sum())
    return tp, float((~actual & predicted).sum()), float((actual & ~predicted).sum()), float(len(actual))


def counts_to_figures(tp: float, fp: float, fn: float, rows: float) -> dict[str, float]:
    """Precision, recall and F1 (NaN where they divide by zero), share predicted 1 and share positive, from
    (expected or counted) true positives, false positives, false negatives and rows."""
    precision = tp / (tp + fp) if tp + fp > 0 else math.nan
    recall = tp / (tp + fn) if tp + fn > 0 else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan
    return {"precision": precision, "recall": recall, "f1": f1,
            "positive_rate": (tp + fp) / rows if rows else math.nan,
            "prevalence": (tp + fn) / rows if rows else math.nan}


def _decision(task: str, predictions: pd.DataFrame | None) -> tuple[float | None, bool]:
    """How a score becomes a 1: a classifier predicts the likelier class (`score > 0.5`, a tie is 0:
    `predictions_frame` takes the argmax of `predict_proba`); an anomaly detector's threshold is read off
    its predictions on the training rows, where the smallest score predicted 1 lies above every score
    predicted 0 (None when no single threshold separates them)."""
    import numpy as np

    if task == "classification":
        return 0.5, False
    if predictions is None or not {"score", "prediction"} <= set(predictions.columns):
        return None, False
    score = predictions["score"].to_numpy(dtype=float)
    one = predictions["prediction"].to_numpy(dtype=float) == 1
    ones, zeros = score[one], score[~one]
    if not len(zeros) or not len(ones):
        return None, False
    low, high = float(np.nanmin(ones)), float(np.nanmax(zeros))
    return (low, True) if high < low else (None, False)


def sample_positions(rows: int, series: pd.Series | None, limit: int, seed: int) -> np.ndarray:
    """Row positions of a seeded sample of at most `limit` of `rows` rows, in row order.

    Stratified by series: each series gets its share of `limit` in
    proportion to its rows (largest remainders round the shares), so the
    sample mixes the servers as the training rows do.
    """
    import numpy as np
    import pandas as pd

    if series is None:
        codes = np.zeros(rows, dtype=np.intp)
    else:
        codes, _ = pd.factorize(series.astype(str), sort=True)
    if not rows:
        return np.array([], dtype=np.intp)
    return _stratified(codes, np.bincount(codes), min(limit, rows), np.random.default_rng(seed))


def _stratified(codes: np.ndarray, counts: np.ndarray, take: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    exact = take * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    short = take - int(quota.sum())
    if short:  # largest remainders first, then the larger series
        order = np.lexsort((-counts, -(exact - quota)))
        quota[order[:short]] += 1
    order = np.lexsort((rng.random(len(codes)), codes))  # rows grouped by series, shuffled within
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(codes)) - starts[codes[order]]
    return np.sort(order[rank < quota[codes[order]]])


# ---------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------


def _manifest(source: Any) -> tuple[Path, Mapping[str, Any]]:
    """The bundle directory and its verified manifest, from a version, a loaded model or a path."""
    from opsloop.bundle import read_manifest

    manifest = getattr(source, "manifest", None)
    if isinstance(manifest, Mapping) and hasattr(source, "path"):  # a LoadedModel: verified when it was read
        return Path(source.path), manifest
    if isinstance(source, ModelVersion):
        return source.path, read_manifest(source.path, ref=source.ref, digest=source.digest or None)
    directory = Path(os.fspath(source))
    return directory, read_manifest(directory)


def read_profile(source: ModelVersion | Any, plugins: PluginManager | None = None) -> Profile | None:
    """The reference profile of a version, or None for a bundle written before profiles existed.

    Args:
        source: A `ModelVersion` (its bundle is verified against its digest),
            a `LoadedModel` (already verified), or a bundle directory (its
            files are verified against its manifest).
        plugins: Not needed (no estimator is loaded); accepted so that it can
            be called like `read_bundle`.

    Raises:
        BundleError: The bundle's files do not match its manifest, or the
            profile cannot be read.
    """
    directory, manifest = _manifest(source)
    if PROFILE_FILE not in manifest.get("files", {}):
        return None
    path = directory / PROFILE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"unsupported profile format {doc.get('format')!r} (expected {FORMAT})")
        return _structure(doc, directory)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"its reference profile cannot be read: {exc}", file=str(path)) from None


def read_calibration(source: ModelVersion | Any, plugins: PluginManager | None = None) -> Calibration | None:
    """The score calibration of a version (`Profile.calibration`), or None when its bundle has none.

    Args:
        source: As for `read_profile`.
        plugins: As for `read_profile`: not needed.

    Raises:
        BundleError: As `read_profile`.
    """
    directory, manifest = _manifest(source)
    if PROFILE_FILE not in manifest.get("files", {}):
        return None
    path = directory / PROFILE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8")).get("calibration")
        return None if doc is None else Calibration.from_json(doc)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"its score calibration cannot be read: {exc}", file=str(path)) from None


def _feature(doc: Mapping[str, Any]) -> FeatureProfile:
    import numpy as np

    quantiles = np.asarray(doc.get("quantiles", ()), dtype=float)
    if doc.get("dtype") == "float32":  # written in float32's shortest digits: back to those exact numbers
        quantiles = quantiles.astype(np.float32).astype(float)
    return FeatureProfile(count=int(doc["count"]), missing=int(doc.get("missing", 0)), min=doc.get("min"),
                          max=doc.get("max"), mean=doc.get("mean"), std=doc.get("std"),
                          quantiles=tuple(quantiles.tolist()))


def _structure(doc: Mapping[str, Any], directory: Path) -> Profile:
    outputs = doc.get("outputs")
    return Profile(
        rows=int(doc["rows"]), target=doc.get("target"), time=doc.get("time"), series=doc.get("series"),
        features={c: _feature(f) for c, f in doc["features"].items()}, skipped=tuple(doc.get("skipped", ())),
        series_profiles={s: SeriesProfile(rows=int(p["rows"]), features={c: _feature(f)
                                                                         for c, f in p["features"].items()})
                         for s, p in doc.get("series_profiles", {}).items()},
        series_total=int(doc.get("series_total", 0)),
        outputs=None if outputs is None else OutputProfile(column=outputs["column"],
                                                           distribution=_feature(outputs["distribution"]),
                                                           alert_rate=outputs.get("alert_rate")),
        outputs_note=doc.get("outputs_note", ""), sample_rows=int(doc.get("sample_rows", 0)),
        calibration=None if doc.get("calibration") is None else Calibration.from_json(doc["calibration"]),
        path=directory)


def reference(source: ModelVersion | Any, plugins: PluginManager | None = None) -> Dataset | None:
    """The profile's sample of raw training rows as a `Dataset`, or None when the bundle has none.

    The frame has the training rows' columns and dtypes (inputs, target, time,
    series) and the same `target`, `time` and `series` as the `reference` a
    monitor receives during `opsloop run`; rows are in training order.

    Args:
        source: As for `read_profile`.
        plugins: As for `read_profile`: not needed.
    """
    import pandas as pd

    directory, manifest = _manifest(source)
    if SAMPLE_FILE not in manifest.get("files", {}):
        return None
    path = directory / SAMPLE_FILE
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many kinds; all mean "unreadable"
        raise BundleError(f"its reference sample cannot be read: {exc}", file=str(path)) from None
    name = getattr(source, "ref", None) or str(directory)
    return Dataset.from_frame(frame, target=manifest.get("target"), time=manifest.get("time"),
                              series=manifest.get("series"), name=f"{name} reference sample")


def series_names(profile: Profile) -> Sequence[str]:
    """The profiled series, most training rows first."""
    return sorted(profile.series_profiles, key=lambda s: (-profile.series_profiles[s].rows, s))
