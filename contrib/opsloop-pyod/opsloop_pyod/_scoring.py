"""The fitted detectors as opsloop scores them: inductive, one row at a time, NumPy only.

PyOD's ECOD and COPOD are transductive: `decision_function(X)` appends X to
the training rows and recomputes every feature's empirical CDF (pyod 3.6,
`ecod.py`/`copod.py`), so a row's score depends on the other rows of the
request and each call sorts the whole training set again. Served that way, a
score would change with the batch it came in. `EcdfScorer` keeps PyOD's
formulas but fixes the reference: each feature's ECDF of the *training* rows
(sorted distinct values and their cumulative counts, exact), and a new row is
placed in it as PyOD places a row scored alone, counting itself:

    F_left(x)  = (#{train <= x} + 1) / (n + 1)
    F_right(x) = (#{train >= x} + 1) / (n + 1)

The skewness that picks each feature's tail (ECOD, COPOD) is the training
rows'. A row's score therefore depends only on the row and the model, never
on the batch, and costs a binary search per feature.

HBOS (`HbosScorer`) and Isolation Forest (`ForestScorer`) are inductive in
PyOD already; `HbosScorer` is PyOD's histogram lookup (both its fixed-bins
and `"auto"` variants) vectorised in NumPy, so loading a bundle needs neither
PyOD nor numba. The forest is scikit-learn's `IsolationForest`, which PyOD's
`IForest` wraps, walked in NumPy with scikit-learn's arithmetic (its own
`decision_function` costs milliseconds a call, which a one-row request pays
in full).

Every scorer gives PyOD's anomaly score (higher = more abnormal). Inputs are
rounded to float32 first, at fit and at scoring, so the serving fast path
(which hands flavors float32 features) and batch scoring see the same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def as_matrix(X: Any, n_features: int | None = None, *, infinite: bool = False) -> np.ndarray:
    """X as a float64 matrix of float32-rounded values; ValueError for NaN, for a wrong width, and for
    infinities unless `infinite` (scoring: an infinite value is the most extreme there is, and every scorer
    ranks it so; fitting: PyOD refuses it)."""
    import numpy as np

    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes infinite, as pandas casts it
        x = np.asarray(X, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d feature matrix, got {x.ndim} dimensions")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"expected {n_features} feature columns, got {x.shape[1]}")
    bad = np.isnan(x) if infinite else ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"the features hold {'NaN' if infinite else 'NaN or infinite'} values (impute them in a "
                         "preprocess step)")
    return np.ascontiguousarray(x, dtype=np.float64)


def missing_values(plugin: str, X: Any, names: Any = None) -> str | None:
    """None when no value of X is missing (NaN); else one line saying where: the first row (counted from 0
    among the rows scored) and its first missing feature (named by X's columns, else by `names`), and how
    many values are missing when more than one."""
    import numpy as np

    values = np.asarray(X)
    if values.dtype.kind in "iub":   # integers and booleans are never missing
        return None
    gaps = np.isnan(values if values.dtype.kind == "f" else values.astype(np.float64))
    if not gaps.any():
        return None
    if gaps.ndim == 1:
        gaps = gaps.reshape(1, -1)
    row, column = (int(v) for v in np.argwhere(gaps)[0])
    columns = getattr(X, "columns", None)
    names = list(columns) if columns is not None else list(names) if names is not None else []
    name = repr(str(names[column])) if column < len(names) else f"number {column}"
    count, rows = int(gaps.sum()), int(gaps.any(axis=1).sum())
    more = f"; {count:,} values missing in {rows:,} row{'s' if rows > 1 else ''}" if count > 1 else ""
    n = len(gaps)
    return (f"{plugin}: row {row} of the {n:,} row{'s' if n > 1 else ''} scored: feature {name} is missing "
            f"(null or NaN{more}); PyOD's detectors score complete rows only, and no preprocess step of this "
            "version fills gaps: send a value, or train a new version with \"impute\" in [preprocess] plugins")


def order_keys(x: np.ndarray, first: int = 0) -> np.ndarray:
    """uint64 keys that sort as (column, value): the column number (from `first`) in the high 32 bits,
    the float32 value's bits made order-preserving in the low 32 (exact: values are float32-rounded)."""
    import numpy as np

    bits = (np.asarray(x, dtype=np.float32) + np.float32(0)).view(np.uint32)   # + 0: -0.0 becomes 0.0
    low = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    column = np.arange(first, first + x.shape[1], dtype=np.uint64) << np.uint64(32)
    return low | column


def row_sums(parts: np.ndarray) -> np.ndarray:
    """Each row's sum, feature after feature: the same additions for a row alone as in any batch (NumPy's
    `sum(axis=1)` may pair them differently by memory layout and batch size)."""
    total = parts[:, 0].copy()
    for j in range(1, parts.shape[1]):
        total += parts[:, j]
    return total


class EcdfScorer:
    """ECOD or COPOD scores from the training rows' per-feature ECDFs (see the module docstring).

    Attributes:
        method: `"ecod"` or `"copod"`.
        values: Per feature, the sorted distinct training values.
        counts: Per feature, `counts[k]` = training rows <= `values[k - 1]` (`counts[0]` = 0).
        n: Training rows.
        skew_sign: Per feature, the sign of the training rows' skewness (0 for a constant feature).
    """

    def __init__(self, method: str, values: list[np.ndarray], counts: list[np.ndarray], n: int,
                 skew_sign: np.ndarray) -> None:
        if method not in ("ecod", "copod"):
            raise ValueError(f"unknown ECDF method {method!r}")
        import numpy as np

        self.method = method
        self.values = values
        self.counts = counts
        self.n = int(n)
        self.skew_sign = skew_sign
        # One sorted array for all features, so that a request costs one binary search, not two per
        # feature: feature j's values as (j << 32 | order-preserving bits of the float32), and the
        # cumulative counts over all features (feature j's start at j * n).
        self._keys = np.concatenate([order_keys(v.reshape(-1, 1), first=j).ravel() for j, v in enumerate(values)])
        self._cum = np.concatenate([[0], *(c[1:] + j * self.n for j, c in enumerate(counts))]).astype(np.int64)

    @property
    def n_features(self) -> int:
        return len(self.values)

    @classmethod
    def fit(cls, method: str, X: np.ndarray) -> EcdfScorer:
        """The ECDFs of the training rows `X` (already `as_matrix`)."""
        import numpy as np
        from scipy.stats import skew

        values, counts = [], []
        for j in range(X.shape[1]):
            distinct, per_value = np.unique(X[:, j], return_counts=True)
            values.append(distinct)
            counts.append(np.concatenate(([0], np.cumsum(per_value))).astype(np.int64))
        # PyOD's own skew: scipy's, NaN (a constant column) counted as 0.
        skew_sign = np.sign(np.nan_to_num(skew(X, axis=0)))
        return cls(method, values, counts, len(X), skew_sign)

    def tails(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """PyOD's `U_l` and `U_r` per row and feature: minus the log of the left and right tail
        probabilities of each value among the training rows, counting the value itself."""
        import numpy as np

        x = as_matrix(X, self.n_features, infinite=True)
        keys = order_keys(x)
        start = np.arange(x.shape[1], dtype=np.int64) * self.n
        le = self._cum[np.searchsorted(self._keys, keys, side="right")] - start   # training rows <= x
        lt = self._cum[np.searchsorted(self._keys, keys, side="left")] - start    # training rows < x
        below = (le + 1).astype(np.float64)          # F_left * (n + 1): counting x itself
        above = (self.n - lt + 1).astype(np.float64)  # F_right * (n + 1)
        return -1 * np.log(below / (self.n + 1)), -1 * np.log(above / (self.n + 1))

    def anomaly_scores(self, X: Any) -> np.ndarray:
        """PyOD's ECOD/COPOD score of each row of X against the training ECDFs: higher = more abnormal."""
        import numpy as np

        u_l, u_r = self.tails(X)
        s = self.skew_sign
        u_skew = u_l * -1 * np.sign(s - 1) + u_r * np.sign(s + 1)
        if self.method == "ecod":
            o = np.maximum(u_skew, np.maximum(u_l, u_r))
        else:
            o = np.maximum(u_skew, np.add(u_l, u_r) / 2)
        return row_sums(o)

    def arrays(self) -> dict[str, np.ndarray]:
        """The state as flat arrays (per-feature arrays concatenated, with offsets)."""
        import numpy as np

        offsets = np.cumsum([0] + [len(v) for v in self.values]).astype(np.int64)
        return {"values": np.concatenate(self.values).astype(np.float64),
                "counts": np.concatenate([c[1:] for c in self.counts]).astype(np.int64),
                "offsets": offsets, "skew_sign": np.asarray(self.skew_sign, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, method: str, n: int, arrays: dict[str, np.ndarray]) -> EcdfScorer:
        """Rebuild from `arrays()`; ValueError when they do not fit together."""
        import numpy as np

        values, counts, offsets = arrays["values"], arrays["counts"], arrays["offsets"]
        skew_sign = arrays["skew_sign"]
        if (offsets.ndim != 1 or len(offsets) != len(skew_sign) + 1 or offsets[0] != 0
                or offsets[-1] != len(values) or len(counts) != len(values) or np.any(np.diff(offsets) < 1)):
            raise ValueError("the ECDF arrays do not fit together")
        vs = [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        cs = [np.concatenate(([0], counts[a:b])) for a, b in zip(offsets[:-1], offsets[1:])]
        if any(np.any(np.diff(v) <= 0) for v in vs) or any(np.any(np.diff(c) <= 0) or c[-1] != n for c in cs):
            raise ValueError("the ECDF arrays are not sorted counts of the training rows")
        return cls(method, vs, cs, n, skew_sign)


class HbosScorer:
    """PyOD's HBOS score from its fitted histograms, vectorised (pyod `hbos._calculate_outlier_scores*`).

    Attributes:
        hist: Per feature, the histogram densities.
        edges: Per feature, the bin edges (one more than `hist`).
        alpha: Regulariser added to each density before the log.
        tol: How far outside the edges (in bin widths) a value still takes the edge bin.
    """

    def __init__(self, hist: list[np.ndarray], edges: list[np.ndarray], alpha: float, tol: float) -> None:
        import numpy as np

        self.hist = hist
        self.edges = edges
        self.alpha = float(alpha)
        self.tol = float(tol)
        # Features side by side, padded to the longest histogram (`"auto"` bins differ per feature):
        # edges with +inf, which no value exceeds, so counting the edges below a value is its bin.
        d, width = len(hist), max(len(h) for h in hist)
        self._edges = np.full((width + 1, d), np.inf)
        self._log_density = np.zeros((width, d))
        for j, (h, e) in enumerate(zip(hist, edges)):
            self._edges[: len(e), j] = e
            self._log_density[: len(h), j] = np.log2(h + self.alpha)
        self._bins = np.array([len(h) for h in hist])
        self._lowest = np.array([np.log2(h + self.alpha).min() for h in hist])
        self._first = np.array([e[0] for e in edges])
        self._last = np.array([e[-1] for e in edges])
        self._first_width = np.array([e[1] - e[0] for e in edges])
        self._last_width = np.array([e[-1] - e[-2] for e in edges])
        self._last_density = self._log_density[self._bins - 1, np.arange(d)]

    @property
    def n_features(self) -> int:
        return len(self.hist)

    @classmethod
    def from_pyod(cls, detector: Any) -> HbosScorer:
        """The histograms of a fitted `pyod.models.hbos.HBOS` (fixed bins: columns; `"auto"`: a list)."""
        import numpy as np

        hist, edges = detector.hist_, detector.bin_edges_
        if isinstance(hist, np.ndarray):
            hist = [hist[:, j] for j in range(hist.shape[1])]
            edges = [edges[:, j] for j in range(edges.shape[1])]
        return cls([np.asarray(h, dtype=np.float64) for h in hist],
                   [np.asarray(e, dtype=np.float64) for e in edges], detector.alpha, detector.tol)

    def anomaly_scores(self, X: Any) -> np.ndarray:
        """PyOD's HBOS score of each row: minus the sum of log2(density + alpha); higher = more abnormal."""
        import numpy as np

        x = as_matrix(X, self.n_features, infinite=True)
        out = np.empty_like(x)
        for start in range(0, len(x), 4096):   # bounds the rows x edges x features comparison
            out[start:start + 4096] = self._per_feature(x[start:start + 4096])
        return -1 * row_sums(out)

    def _per_feature(self, x: np.ndarray) -> np.ndarray:
        """Each value's log2(density + alpha), as PyOD's `_calculate_outlier_scores` picks it."""
        import numpy as np

        idx = (self._edges[None, :, :] < x[:, None, :]).sum(axis=1)   # np.digitize(x, edges, right=True)
        inside = self._log_density[np.clip(idx - 1, 0, self._bins - 1), np.arange(x.shape[1])]
        low = np.where(self._first - x <= self._first_width * self.tol, self._log_density[0], self._lowest)
        high = np.where(x - self._last <= self._last_width * self.tol, self._last_density, self._lowest)
        return np.where(idx == 0, low, np.where(idx == self._bins + 1, high, inside))

    def arrays(self) -> dict[str, np.ndarray]:
        import numpy as np

        offsets = np.cumsum([0] + [len(h) for h in self.hist]).astype(np.int64)
        return {"hist": np.concatenate(self.hist), "edges": np.concatenate(self.edges), "offsets": offsets}

    @classmethod
    def from_arrays(cls, alpha: float, tol: float, arrays: dict[str, np.ndarray]) -> HbosScorer:
        """Rebuild from `arrays()`; ValueError when they do not fit together."""
        import numpy as np

        hist, edges, offsets = arrays["hist"], arrays["edges"], arrays["offsets"]
        d = len(offsets) - 1
        if (offsets.ndim != 1 or d < 1 or offsets[0] != 0 or offsets[-1] != len(hist)
                or len(edges) != len(hist) + d or np.any(np.diff(offsets) < 1)):
            raise ValueError("the histogram arrays do not fit together")
        hs = [hist[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        es = [edges[a + j:b + j + 1] for j, (a, b) in enumerate(zip(offsets[:-1], offsets[1:]))]
        if any(np.any(np.diff(e) < 0) for e in es):
            raise ValueError("the histogram edges are not sorted")
        return cls(hs, es, alpha, tol)


class ForestScorer:
    """PyOD's `IForest` score, minus scikit-learn's `IsolationForest.decision_function`, walked in NumPy.

    scikit-learn's `decision_function` costs milliseconds per call whatever the rows (input checks,
    chunking, one `apply` per tree), which a one-row request pays in full. opsloop's own
    `compile_forest` (opsloop.plugins.isolation_forest, what `isolation-forest` serves with) walks all
    trees at once in NumPy with scikit-learn's arithmetic, so the numbers are `decision_function`'s,
    bit for bit (tested).

    Attributes:
        forest: The fitted `sklearn.ensemble.IsolationForest` (PyOD's `detector_`): what is saved.
    """

    def __init__(self, forest: Any) -> None:
        from opsloop.plugins.isolation_forest import compile_forest

        self.forest = forest
        self._predict = compile_forest(forest)

    @property
    def n_features(self) -> int:
        return int(self.forest.n_features_in_)

    def anomaly_scores(self, X: Any) -> np.ndarray:
        _, score = self._predict(as_matrix(X, self.n_features, infinite=True))  # score: -score_samples
        return -1 * (-score - self.forest.offset_)


class Detector:
    """A fitted PyOD detector as opsloop uses it (task `"anomaly"`).

    `predict` says 1 for an anomaly and 0 for normal (PyOD's `threshold_` rule:
    anomaly score above the training rows' `1 - contamination` quantile);
    `score_samples` is a normality score, minus PyOD's anomaly score, so
    `-score_samples` (what `opsloop.bundle.predictions_frame` reports as the
    score) is PyOD's anomaly score: higher = more abnormal.

    A missing value (NaN) in a row to score is an `opsloop.DataError` naming
    the row and the feature (the server answers it with HTTP 422, batch
    scoring stops with it): PyOD's detectors have no rule for a missing
    value, and guessing one here would hide the gap. A version trained with
    the `impute` step never gets here with one: its bundle fills the gap
    first. An infinite value is scored (the most extreme value there is).

    Attributes:
        kind: The plugin's detector: `"ecod"`, `"copod"`, `"hbos"` or `"iforest"`.
        scorer: An `EcdfScorer`, `HbosScorer` or `ForestScorer`.
        threshold: Anomaly scores above it are predicted 1.
        params: What the detector was built with (contamination, bins, ...).
        features: The feature names, in order, for messages (the manifest's); empty when unknown.
    """

    def __init__(self, kind: str, scorer: Any, threshold: float, params: dict[str, Any],
                 features: Any = ()) -> None:
        self.kind = kind
        self.scorer = scorer
        self.threshold = float(threshold)
        self.params = dict(params)
        self.features = tuple(map(str, features or ()))

    @property
    def n_features_in_(self) -> int:
        return self.scorer.n_features

    @property
    def plugin(self) -> str:
        return f"pyod-{self.kind}"

    def anomaly_scores(self, X: Any) -> np.ndarray:
        """PyOD's anomaly score per row (higher = more abnormal), independent of the other rows; DataError
        naming the row and the feature when a value is missing."""
        from opsloop import DataError

        problem = missing_values(self.plugin, X, self.features)
        if problem is not None:
            raise DataError(problem)
        return self.scorer.anomaly_scores(X)

    def predict(self, X: Any) -> np.ndarray:
        """1 where the anomaly score is above the threshold, else 0."""
        return (self.anomaly_scores(X) > self.threshold).astype("int8")

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality score: minus the anomaly score (lower = more abnormal)."""
        return -1 * self.anomaly_scores(X)

    def __repr__(self) -> str:
        return f"Detector(kind={self.kind!r}, features={self.n_features_in_}, threshold={self.threshold:.6g})"
