"""Data and prediction drift: PSI and Kolmogorov-Smirnov against the version's training profile.

The `drift-monitor` needs no labels, so it warns before quality can be
measured. It compares the monitored rows (`current`) with what the version
was trained on: the reference profile in its bundle (`opsloop.profile`,
written at register time), or, for a bundle registered before profiles
existed (or with `use_profile = false`), the `reference` rows it is handed.
Three views (docs/stages/deploy-monitor-retrain.md has the figures measured
on ASD and SMD behind the defaults):

- every numeric raw feature (the target, time and series columns excluded):
  PSI and KS, pooled over all series;
- every series (server) of the monitored rows, the `max_series` largest:
  each feature's KS and PSI against the series' own training rows, the
  largest of each reported, alerts on KS, worst first (which server moved).
  A series without training rows of its own is compared with all of them,
  reported, and never alerted on;
- the model's outputs (`predictions`): PSI and KS of the scores and the alert
  rate (share predicted 1) against the same figures on the training rows.

PSI: the reference is cut into `bins` equal-probability bins at its
quantiles (ties merge bins); PSI = sum((c - r) * ln(c / r)) over the bins'
shares, shares floored at 1e-4 so that an empty bin stays finite. KS: the
largest gap between the two distribution functions (what
`scipy.stats.ks_2samp` returns as its statistic).

On reference rows both are exact. On a profile they are read off its 1,001
stored quantiles per feature: the reference's distribution function is known
at each quantile to within 1/1,000 (+ 1/rows) and climbs by at most that
much between two of them, so KS is within 2/1,000 + 2/rows of the exact
statistic (tests/plugins/test_drift_profile.py checks it on ASD and SMD);
PSI uses the stored deciles as edges and reads the reference's shares off
the quantiles. Per series the profile keeps 101 quantiles (KS within about
2/100).

The current rows are sorted once per column in their own dtype (no float64
copy of float32 data) and counted at the reference's points with binary
searches; benchmarks/monitor.py times 1,000,000 rows x 40 features.

Metrics: `drift_max_psi`, `drift_max_ks`, `drifted` (features over either
limit), `rows`, `reference_rows`, `psi[<col>]` and `ks[<col>]`; with a series
column `series_ks[<series>]`, `series_psi[<series>]`, `series_max_ks`,
`series_max_psi`, `series_drifted` and `series_unseen` (monitored series
without training rows of their own); with a profile and predictions
`score_psi`, `score_ks`, `alert_rate`, `reference_alert_rate` and
`alert_rate_ratio`. Alerts: drifted features worst first, then drifted
series worst first (`max_alerts` each, the rest counted in one more alert),
then the predictions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import MonitorReport, hookimpl
from opsloop.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from opsloop.profile import FeatureProfile, Profile
    from opsloop.types import Dataset, ModelVersion

#: Floor of a bin's share, so that an empty bin gives a large but finite PSI term.
EPSILON = 1e-4
#: Reference points up to which the whole column's figures are counted over the series' sorted runs.
EXACT_POINTS = 4096

_POSITIVE = [attrs.validators.gt(0), attrs.validators.lt(float("inf"))]


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `drift-monitor` (`[monitor.drift-monitor]`).

    Attributes:
        psi_threshold: Alert when a feature's PSI exceeds this.
        ks_threshold: Alert when a feature's two-sample KS statistic exceeds this.
        bins: Number of quantile bins of the reference distribution for PSI.
        features: Columns to check; None: every numeric column that is not
            the target, time or series.
        max_alerts: Drifted features (and drifted series) listed one alert
            each; the rest are counted in one more alert.
        series_ks_threshold: Alert when a series' largest feature KS, against
            its own training rows, exceeds this.
        max_series: Series looked at one by one, the ones with the most
            monitored rows; 0 turns the per-series view off.
        score_psi_threshold: Alert when the scores' PSI exceeds this.
        alert_rate_ratio: Alert when the share of rows predicted 1 is more
            than this many times the training rows' share, or less than its
            inverse.
        use_profile: Compare with the version's reference profile when its
            bundle has one; false: with the `reference` rows (exact, slower,
            needs the training rows).
    """

    psi_threshold: float = attrs.field(default=2.5, validator=_POSITIVE)
    ks_threshold: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    bins: int = attrs.field(default=10, validator=attrs.validators.ge(2))
    features: list[str] | None = None
    max_alerts: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    series_ks_threshold: float = attrs.field(default=0.7, validator=[attrs.validators.gt(0),
                                                                     attrs.validators.le(1)])
    max_series: int = attrs.field(default=50, validator=attrs.validators.ge(0))
    score_psi_threshold: float = attrs.field(default=1.0, validator=_POSITIVE)
    alert_rate_ratio: float = attrs.field(default=10.0, validator=[attrs.validators.gt(1),
                                                                  attrs.validators.lt(float("inf"))])
    use_profile: bool = True


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def monitor(version: ModelVersion, current: Dataset, reference: Dataset | None, options: Options | None,
            predictions: pd.DataFrame | None = None) -> MonitorReport:
    """PSI and KS per feature, per series and of the scores, with alerts over the limits."""
    options = options or Options()
    profile = _profile(version) if options.use_profile else None
    if profile is None and (reference is None or not len(reference)):
        return MonitorReport(model=version.ref, rows=len(current),
                             metrics={"rows": float(len(current)), "reference_rows": 0.0, "drifted": 0.0},
                             alerts=(f"no reference: {version.ref} has no reference profile in its bundle (registered "
                                     "before profiles existed) and no training rows were given, so drift cannot be "
                                     "judged",))
    columns = _columns(current, reference, profile, options)
    figures: dict[str, float] = {"rows": float(len(current)),
                                 "reference_rows": float(profile.rows if profile else len(reference))}
    psi_all, ks_all, drifted = {}, {}, []
    groups = _Groups.of(current, options) if columns else None
    own = _OwnReferences(reference, profile, options.bins) if groups else None
    per_series: list[list[tuple[str, tuple[float, float]]]] = []

    def compare(column: str) -> tuple[tuple[float, float] | None, list[tuple[str, tuple[float, float]]]]:
        cdf = _reference_cdf(column, reference, profile, options.bins)
        values = _values(current.frame[column])
        if groups is None:
            return (None if cdf is None else cdf.compare(_sorted_finite(values))), []
        # Each series' values sorted once: they make the whole column's distribution (counts add up over the
        # runs, no sort of the whole column) and each series' own.
        runs = groups.sorted_runs(values)
        # Exact reference rows have a point per distinct value (tens of thousands): counting them in every run
        # costs more than one sort of the whole column, which is then done instead.
        whole = _Runs(runs) if cdf is None or len(cdf.knots) <= EXACT_POINTS else _sorted_finite(values)
        return (None if cdf is None else cdf.compare(whole)), groups.compare(column, runs, own, cdf)

    # A column's reference at a time per thread (exact ones hold every distinct value).
    for column, (compared, series_found) in zip(columns, _threads(compare, columns), strict=True):
        per_series.append(series_found)
        if compared is None:
            continue
        psi_all[column], ks_all[column] = compared
        if compared[0] > options.psi_threshold or compared[1] > options.ks_threshold:
            drifted.append((column, *compared))
    figures["drift_max_psi"] = max(psi_all.values(), default=0.0)
    figures["drift_max_ks"] = max(ks_all.values(), default=0.0)
    figures["drifted"] = float(len(drifted))
    figures.update({f"psi[{c}]": v for c, v in psi_all.items()})
    figures.update({f"ks[{c}]": v for c, v in ks_all.items()})
    drifted.sort(key=lambda d: (d[1], d[2]), reverse=True)
    alerts = [f"{c}: PSI {p:.3f} {'>' if p > options.psi_threshold else '<='} {options.psi_threshold:g}, "
              f"KS {k:.3f} {'>' if k > options.ks_threshold else '<='} {options.ks_threshold:g}: "
              f"distribution shifted since training" for c, p, k in drifted[:options.max_alerts]]
    if len(drifted) > options.max_alerts:
        rest = drifted[options.max_alerts:]
        alerts.append(f"{len(rest)} more feature(s) drifted: {', '.join(c for c, _, _ in rest)}")
    if groups is not None:
        alerts += _series(groups, own, columns, per_series, options, figures)
    alerts += _outputs(predictions, profile, options, figures)
    return MonitorReport(model=version.ref, rows=len(current), metrics=figures, alerts=tuple(alerts))


def _profile(version: ModelVersion) -> Profile | None:
    """The version's profile; None for a bundle without one (or a version with no bundle on disk)."""
    from opsloop import profile
    from opsloop.bundle import MANIFEST

    if not (version.path / MANIFEST).is_file():
        return None
    return profile.read_profile(version)


def _columns(current: Dataset, reference: Dataset, profile: Profile | None, options: Options) -> list[str]:
    import pandas as pd

    meta = {c for d in (current, reference) if d is not None for c in (d.target, d.time, d.series) if c}
    if options.features is not None:
        known = set(profile.features) if profile else set(reference.frame.columns)
        missing = sorted({c for c in options.features if c not in current.frame.columns or c not in known})
        if missing:
            raise DataError(f"drift-monitor: feature(s) {', '.join(missing)} named in "
                            "[monitor.drift-monitor] features are not in the data")
        return list(options.features)
    numeric, boolean = pd.api.types.is_numeric_dtype, pd.api.types.is_bool_dtype
    if profile is not None:
        return [c for c in profile.features if c not in meta and c in current.frame.columns
                and numeric(current.frame[c]) and not boolean(current.frame[c])]
    return [c for c in reference.frame.columns if c not in meta and c in current.frame.columns
            and numeric(reference.frame[c]) and not boolean(reference.frame[c])]


# ---------------------------------------------------------------------------
# Per series and of the scores
# ---------------------------------------------------------------------------


class _Groups:
    """The current rows grouped by series: the order that groups them, where each group starts, the series
    names, and the largest ones (at most `max_series`) that get figures of their own."""

    def __init__(self, codes: Any, labels: list[str], max_series: int) -> None:
        import numpy as np

        counts = np.bincount(codes, minlength=len(labels))
        self.labels = labels
        self.kept = np.argsort(-counts, kind="stable")[:max_series]
        self.order = np.argsort(codes, kind="stable")
        self.starts = np.concatenate(([0], np.cumsum(counts)))

    @classmethod
    def of(cls, current: Dataset, options: Options) -> _Groups | None:
        import pandas as pd

        key = current.series
        if not options.max_series or not key or key not in current.frame.columns:
            return None
        codes, labels = pd.factorize(current.frame[key].astype(str))
        return cls(codes, [str(label) for label in labels], options.max_series)

    def sorted_runs(self, values: np.ndarray) -> list[np.ndarray]:
        """Each series' finite values, sorted."""
        grouped = values[self.order]
        return [_sorted_finite(grouped[self.starts[k]:self.starts[k + 1]]) for k in range(len(self.labels))]

    def compare(self, column: str, runs: list[np.ndarray], own: _OwnReferences,
                pooled: _CDF | None) -> list[tuple[str, tuple[float, float]]]:
        """(series, (PSI, KS)) of each kept series against its own training rows (or all of them, for a series
        training had no row of)."""
        references = own.column(column)
        out = []
        for code in self.kept:
            label = self.labels[code]
            cdf = references.get(label) if label in own.names else pooled
            compared = None if cdf is None else cdf.compare(runs[code])
            if compared is not None:
                out.append((label, compared))
        return out


def _series(groups: _Groups, own: _OwnReferences, columns: list[str],
            per_series: list[list[tuple[str, tuple[float, float]]]], options: Options,
            figures: dict[str, float]) -> list[str]:
    """`series_ks[<s>]`, `series_psi[<s>]`: each series' largest feature KS and PSI; alerts on the worst."""
    found: dict[str, list[tuple[str, float, float]]] = {}
    for column, results in zip(columns, per_series, strict=True):  # in column order
        for label, compared in results:
            found.setdefault(label, []).append((column, *compared))
    labels = groups.labels
    worst = {s: (max(f, key=lambda x: (x[2], x[1])), max(f, key=lambda x: (x[1], x[2]))) for s, f in found.items()}
    ranked = sorted(worst, key=lambda s: (-worst[s][0][2], -worst[s][1][1], s))
    figures.update({f"series_ks[{s}]": worst[s][0][2] for s in ranked})
    figures.update({f"series_psi[{s}]": worst[s][1][1] for s in ranked})
    # a series the training rows had no row of has no past to move from: figures, never an alert
    seen = [s for s in ranked if s in own.names]
    over = [s for s in seen if worst[s][0][2] > options.series_ks_threshold]
    figures["series_max_ks"] = max((worst[s][0][2] for s in seen), default=0.0)
    figures["series_max_psi"] = max((worst[s][1][1] for s in seen), default=0.0)
    figures["series_drifted"] = float(len(over))
    figures["series_unseen"] = float(sum(label not in own.names for label in labels))
    alerts = [f"series {s}: KS {worst[s][0][2]:.3f} > {options.series_ks_threshold:g} on {worst[s][0][0]} "
              f"(PSI {worst[s][0][1]:.3f}) against its own training rows: this series moved"
              for s in over[:options.max_alerts]]
    if len(over) > options.max_alerts:
        alerts.append(f"{len(over) - options.max_alerts} more series drifted: {', '.join(over[options.max_alerts:])}")
    return alerts


class _OwnReferences:
    """Each training series' own reference, one column at a time (from the profile, or the rows)."""

    def __init__(self, reference: Dataset, profile: Profile | None, bins: int) -> None:
        self.profile, self.bins, self.rows = profile, bins, {}
        if profile is not None:
            self.names = set(profile.series_profiles)
        elif reference.series and reference.series in reference.frame.columns:
            self.frame = frame = reference.frame
            self.rows = frame.groupby(frame[reference.series].astype(str), sort=True, observed=True).indices
            self.names = {str(s) for s in self.rows}
        else:
            self.names = set()

    def column(self, column: str) -> dict[str, _CDF | None]:
        if self.profile is not None:
            return {s: _cdf_from_profile(p.features[column], self.bins) if column in p.features else None
                    for s, p in self.profile.series_profiles.items()}
        values = _values(self.frame[column]) if self.rows else None
        return {str(s): _cdf_from_rows(_sorted_finite(values[rows]), self.bins) for s, rows in self.rows.items()}


def _outputs(predictions: pd.DataFrame | None, profile: Profile | None, options: Options,
             figures: dict[str, float]) -> list[str]:
    """Scores and alert rate against the training rows' (prediction drift)."""
    if predictions is None or profile is None or profile.outputs is None or not len(predictions):
        return []
    out = profile.outputs
    alerts = []
    if out.column in predictions.columns:
        cdf = _cdf_from_profile(out.distribution, options.bins)
        compared = None if cdf is None else cdf.compare(_sorted_finite(_values(predictions[out.column])))
        if compared is not None:
            figures["score_psi"], figures["score_ks"] = compared
            if compared[0] > options.score_psi_threshold:
                alerts.append(f"{out.column}s: PSI {compared[0]:.3f} > {options.score_psi_threshold:g}, "
                              f"KS {compared[1]:.3f}: the model scores differently than on its training rows")
    if out.alert_rate is not None and "prediction" in predictions.columns:
        rate, base = float((predictions["prediction"] == 1).mean()), out.alert_rate
        ratio = rate / base if base else (1.0 if rate == 0 else math.inf)
        figures.update(alert_rate=rate, reference_alert_rate=base, alert_rate_ratio=ratio)
        limit = options.alert_rate_ratio
        if ratio > limit or ratio < 1 / limit:
            alerts.append(f"alert rate {rate:.2%} is {ratio:.2f}x the training rows' {base:.2%} "
                          f"(outside 1/{limit:g}x..{limit:g}x)")
    return alerts


# ---------------------------------------------------------------------------
# Distributions: a reference's points and the current rows counted at them
# ---------------------------------------------------------------------------


@attrs.frozen
class _CDF:
    """A reference distribution: its distribution function at `knots` and its PSI bins.

    `upto[i]` is the reference's share <= knots[i], `below[i]` its share <
    knots[i]; `shares` are its shares of the PSI bins cut at `edges`
    ([-inf, e0), [e0, e1), ..., [e_last, inf)).
    """

    knots: np.ndarray
    upto: np.ndarray
    below: np.ndarray
    edges: np.ndarray
    shares: np.ndarray

    def psi(self, current: np.ndarray | _Runs) -> float | None:
        """PSI of sorted finite `current` values against the reference (None without values)."""
        import numpy as np

        if not len(current):
            return None
        counts = np.diff(np.concatenate(([0], _count_below(current, self.edges), [len(current)])))
        r, c = np.maximum(self.shares, EPSILON), np.maximum(counts / len(current), EPSILON)
        return float(np.sum((c - r) * np.log(c / r)))

    def compare(self, current: np.ndarray | _Runs) -> tuple[float, float] | None:
        """(PSI, KS) of sorted finite `current` values against the reference (None without values)."""
        import numpy as np

        psi = self.psi(current)
        if psi is None:
            return None
        m = len(current)
        # The largest gap between two distribution functions lies at a reference point, on its left
        # or right limit (between two points the reference's is flat, the current one only climbs).
        upto_gap = np.abs(self.upto - _count_upto(current, self.knots) / m)
        below_gap = np.abs(self.below - _count_below(current, self.knots) / m)
        return psi, float(max(upto_gap.max(), below_gap.max()))


def _threads(work: Any, items: list[Any]) -> list[Any]:
    """`work` on each item, on up to one thread per core (NumPy's sorts and searches release the GIL), results
    in the items' order."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="opsloop-drift") as pool:
        return list(pool.map(work, items))


def _values(column: pd.Series) -> np.ndarray:
    """A column's values as float32 (when they are) or float64; a nullable integer's <NA> as NaN."""
    import numpy as np

    return column.to_numpy() if column.dtype == np.float32 else column.to_numpy(dtype=np.float64, na_value=np.nan)


def _sorted_finite(values: Any) -> np.ndarray:
    """The finite values, sorted; float32 stays float32 (half the memory, no conversion)."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype != np.float32:
        array = array.astype(np.float64)
    ordered = np.sort(array)  # NaN last, infinities at the ends
    low = np.searchsorted(ordered, -np.inf, side="right")
    high = np.searchsorted(ordered, np.inf, side="left")
    return ordered[low:high]


def _as(points: np.ndarray, dtype: np.dtype, toward: float) -> np.ndarray:
    """`points` in `dtype`, rounded toward +inf or -inf, so that comparing in `dtype` is exact."""
    import numpy as np

    if dtype == np.float64:
        return points
    rounded = points.astype(dtype)
    off = rounded < points if toward > 0 else rounded > points
    return np.where(off, np.nextafter(rounded, np.array(toward, dtype=dtype)), rounded)


class _Runs:
    """Sorted runs of values (each series' own) standing for all of them: counts add up over the runs."""

    def __init__(self, runs: list[np.ndarray]) -> None:
        self.runs = [r for r in runs if len(r)]

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)


def _count_below(ordered: np.ndarray | _Runs, points: np.ndarray) -> np.ndarray:
    """How many of the sorted values are < each point."""
    import numpy as np

    if isinstance(ordered, _Runs):
        return sum((_count_below(r, points) for r in ordered.runs), np.zeros(len(points), dtype=np.int64))
    return np.searchsorted(ordered, _as(points, ordered.dtype, math.inf), side="left")


def _count_upto(ordered: np.ndarray | _Runs, points: np.ndarray) -> np.ndarray:
    """How many of the sorted values are <= each point."""
    import numpy as np

    if isinstance(ordered, _Runs):
        return sum((_count_upto(r, points) for r in ordered.runs), np.zeros(len(points), dtype=np.int64))
    return np.searchsorted(ordered, _as(points, ordered.dtype, -math.inf), side="right")


def _reference_cdf(column: str, reference: Dataset, profile: Profile | None, bins: int) -> _CDF | None:
    if profile is not None:
        feature = profile.features.get(column)
        return None if feature is None else _cdf_from_profile(feature, bins)
    return _cdf_from_rows(_sorted_finite(_values(reference.frame[column])), bins)


def _cdf_from_rows(ordered: np.ndarray, bins: int) -> _CDF | None:
    """The exact distribution of sorted finite reference values."""
    import numpy as np

    n = len(ordered)
    if not n:
        return None
    new = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    knots = ordered[new].astype(np.float64)
    ends = np.concatenate((new[1:], [n]))
    edges = np.unique(np.quantile(ordered.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1]))
    below_edges = _count_below(ordered, edges)
    shares = np.diff(np.concatenate(([0], below_edges, [n]))) / n
    return _CDF(knots, ends / n, new / n, edges, shares)


def _cdf_from_profile(feature: FeatureProfile, bins: int) -> _CDF | None:
    """The distribution read off a profile's quantiles (within 1/steps of the training rows')."""
    import numpy as np

    q = np.asarray(feature.quantiles, dtype=np.float64)
    if not len(q):
        return None
    steps = len(q) - 1
    knots = np.unique(q)
    # at a tie, the highest level holding the value is the share <= it, the lowest the share < it
    upto = (np.searchsorted(q, knots, side="right") - 1) / steps if steps else np.ones(1)
    below = np.searchsorted(q, knots, side="left") / steps if steps else np.zeros(1)
    edges = feature.edges(bins)
    shares = np.diff(np.concatenate(([0.0], _share_below(q, edges), [1.0])))
    return _CDF(knots, upto, below, edges, shares)


def _share_below(q: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The share < each point, interpolated between the quantiles `q` (levels 0, 1/steps, ..., 1)."""
    import numpy as np

    steps = len(q) - 1
    j = np.searchsorted(q, points, side="left")
    inner = (j > 0) & (j <= steps)
    lo, hi = np.clip(j - 1, 0, steps), np.clip(j, 0, steps)
    span = np.where(inner, q[hi] - q[lo], 1.0)
    share = (lo + np.where(inner, (points - q[lo]) / span, 0.0)) / max(steps, 1)
    return np.where(j == 0, 0.0, np.where(j > steps, 1.0, share))


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of `current` against `reference`, over the reference's quantile bins.

    Args:
        reference: Finite values the model was trained on.
        current: Finite values seen now.
        bins: Quantile bins of the reference; ties merge bins (a column that is
            mostly zeros gets fewer, wider bins), values outside the reference's
            range fall in the first or last bin.

    Returns:
        sum over bins of (c - r) * ln(c / r), shares floored at `EPSILON`; 0
        for identical distributions.
    """
    cdf = _cdf_from_rows(_sorted_finite(reference), bins)
    psi = None if cdf is None else cdf.psi(_sorted_finite(current))
    return 0.0 if psi is None else psi
