"""Data drift per feature: Population Stability Index and Kolmogorov-Smirnov, training vs now.

The `drift-monitor` compares the distribution of every numeric raw feature
(the target, time and series columns excluded) in the monitored period
(`current`) with the training rows (`reference`). It needs no labels, so it
warns before quality can be measured.

- PSI: the reference is cut into `bins` quantile bins (deciles by default;
  ties merge bins), and PSI = sum((c - r) * ln(c / r)) over the bins' shares,
  shares floored at 1e-4 so that an empty bin stays finite. Conventional
  reading: below 0.1 no shift, 0.1 to 0.25 a moderate shift, above 0.25 a
  significant shift.
- KS: the two-sample Kolmogorov-Smirnov statistic (`scipy.stats.ks_2samp`),
  the largest gap between the two empirical distribution functions (0 to 1).
  On tens of thousands of rows its p-value flags even harmless shifts, so
  the statistic itself is compared with a threshold.

Metrics: `drift_max_psi`, `drift_max_ks`, `drifted` (features over either
threshold), `rows`, `reference_rows`, and per feature `psi[<col>]` and
`ks[<col>]`. One alert per drifted feature, worst first.

Options (`[monitor.drift-monitor]`):
    psi_threshold: Alert when a feature's PSI exceeds this (default 0.25).
    ks_threshold: Alert when a feature's KS statistic exceeds this (default 0.1).
    bins: Quantile bins of the reference for PSI (default 10).
    features: Columns to check (default: every numeric non-meta column).
    max_alerts: Alerts listed one by one before the rest are counted (default 10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from opsloop import MonitorReport, hookimpl
from opsloop.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from opsloop.types import Dataset, ModelVersion

#: Floor of a bin's share, so that an empty bin gives a large but finite PSI term.
EPSILON = 1e-4


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `drift-monitor` (`[monitor.drift-monitor]`).

    Attributes:
        psi_threshold: Alert when a feature's PSI exceeds this (0.25: the
            conventional "significant shift"; 0.1 already means "moderate").
        ks_threshold: Alert when a feature's two-sample KS statistic exceeds this.
        bins: Number of quantile bins of the reference distribution for PSI.
        features: Columns to check; None: every numeric column that is not
            the target, time or series.
        max_alerts: Drifted features listed one alert each; the rest are
            counted in one more alert.
    """

    psi_threshold: float = attrs.field(default=0.25, validator=[attrs.validators.gt(0),
                                                                attrs.validators.lt(float("inf"))])
    ks_threshold: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    bins: int = attrs.field(default=10, validator=attrs.validators.ge(2))
    features: list[str] | None = None
    max_alerts: int = attrs.field(default=10, validator=attrs.validators.ge(1))


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def monitor(version: ModelVersion, current: Dataset, reference: Dataset, options: Options | None) -> MonitorReport:
    """PSI and KS per feature between `reference` and `current`, with alerts over the thresholds."""
    from scipy.stats import ks_2samp

    options = options or Options()
    columns = _columns(current, reference, options)
    figures: dict[str, float] = {"rows": float(len(current)), "reference_rows": float(len(reference))}
    drifted: list[tuple[str, float, float]] = []
    psi_all, ks_all = {}, {}
    for column in columns:
        ref = _finite_values(reference.frame[column])
        cur = _finite_values(current.frame[column])
        if not len(ref) or not len(cur):
            continue
        psi = population_stability_index(ref, cur, options.bins)
        ks = float(ks_2samp(ref, cur).statistic)
        psi_all[column], ks_all[column] = psi, ks
        if psi > options.psi_threshold or ks > options.ks_threshold:
            drifted.append((column, psi, ks))
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
    return MonitorReport(model=version.ref, rows=len(current), metrics=figures, alerts=tuple(alerts))


def _columns(current: Dataset, reference: Dataset, options: Options) -> list[str]:
    import pandas as pd

    meta = {c for c in (current.target, current.time, current.series, reference.target, reference.time,
                        reference.series) if c}
    if options.features is not None:
        missing = [c for f in (current, reference) for c in options.features if c not in f.frame.columns]
        if missing:
            raise DataError(f"drift-monitor: feature(s) {', '.join(sorted(set(missing)))} named in "
                            "[monitor.drift-monitor] features are not in the data")
        return list(options.features)
    numeric, boolean = pd.api.types.is_numeric_dtype, pd.api.types.is_bool_dtype
    return [c for c in reference.frame.columns if c not in meta and c in current.frame.columns
            and numeric(reference.frame[c]) and not boolean(reference.frame[c])]


def _finite_values(series: Any) -> np.ndarray:
    import numpy as np

    values = np.asarray(series, dtype=float)
    return values[np.isfinite(values)]


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
    import numpy as np

    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    r, c = np.maximum(r, EPSILON), np.maximum(c, EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))
