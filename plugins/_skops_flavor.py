"""The `sklearn` model flavor, shared by the `sklearn` and `isolation-forest` plugins (no entry point).

Saving writes the estimator with skops (`model.skops`) and library versions
to `sklearn.json`. Loading never unpickles: skops rebuilds objects from a
schema and only the types it is explicitly told to trust. That list is made
here, from the names skops finds in the file (`get_untrusted_types`), never
from anything the bundle says about itself:

- classes under `sklearn.` and `numpy.` (checked to be classes: a function
  such as `numpy.load` or a dataset downloader is not trusted);
- a few scikit-learn scoring functions (`EXTRA_TRUSTED`);
- modules the operator trusts in the environment variable
  `OPSLOOP_TRUSTED_MODULES` (comma-separated module names, e.g. for an
  estimator admitted with the `sklearn` trainer's `allow_modules`).

Anything else, a class or function from some other module, makes loading
fail with a `BundleError` naming it, before any of it is imported or run.
The same check runs when saving, so a model that could not be loaded back
is never registered.

Outlier detectors (task `"anomaly"`) are stored as the plain scikit-learn
estimator; `AnomalyLabels`, rebuilt at load from the manifest's task, turns
scikit-learn's -1/+1 into opsloop's 1 (anomaly) / 0 (normal).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import hookimpl
from opsloop.errors import BundleError

if TYPE_CHECKING:
    import numpy as np

    from opsloop.bundle import LoadedModel
    from opsloop.rowops import FastPredict
    from opsloop.types import TrainedModel

FLAVOR = "sklearn"
MODEL_FILE = "model.skops"
META_FILE = "sklearn.json"
META_FORMAT = "opsloop.sklearn/1"
TRUST_ENV = "OPSLOOP_TRUSTED_MODULES"
#: Libraries whose classes a bundle may contain.
TRUSTED_LIBRARIES = ("sklearn", "numpy")
#: Functions (not classes) a scikit-learn model may legitimately hold.
EXTRA_TRUSTED = frozenset({
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.feature_selection._univariate_selection.chi2",
    "sklearn.feature_selection._mutual_info.mutual_info_classif",
    "sklearn.feature_selection._mutual_info.mutual_info_regression",
})
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
log = logging.getLogger("opsloop")


class AnomalyLabels:
    """An outlier detector whose `predict` says 1 for an anomaly and 0 for normal.

    scikit-learn's detectors predict -1 (outlier) and +1 (inlier); opsloop's
    metrics, monitors and thresholds expect 1 = anomaly. `score_samples` is
    scikit-learn's (lower = more abnormal), so `-score_samples` ranks
    anomalies first, as `opsloop.bundle.predictions_frame` uses it.

    Attributes:
        estimator: The fitted scikit-learn detector (what the bundle stores).
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def predict(self, X: Any) -> np.ndarray:
        """1 where the detector sees an anomaly, else 0."""
        import numpy as np

        return (np.asarray(self.estimator.predict(X)) == -1).astype("int8")

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality score: lower is more abnormal (`decision_function` when the detector has no other)."""
        if hasattr(self.estimator, "score_samples"):
            return self.estimator.score_samples(X)
        return self.estimator.decision_function(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """The detector's decision function: negative for anomalies."""
        return self.estimator.decision_function(X)

    def __repr__(self) -> str:
        return f"AnomalyLabels({self.estimator!r})"


def operator_modules() -> tuple[str, ...]:
    """Module names the operator trusts through `OPSLOOP_TRUSTED_MODULES`."""
    return tuple(m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip())


def _under(name: str, module: str) -> bool:
    return name.startswith(module + ".")


def _resolve(name: str) -> Any:
    """The object a dotted name from a trusted library points at, or None."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def is_trusted(name: str) -> bool:
    """Whether a type name skops reports may be loaded."""
    if not _DOTTED.match(name):
        return False
    if name in EXTRA_TRUSTED or any(_under(name, m) for m in operator_modules()):
        return True
    if any(_under(name, lib) for lib in TRUSTED_LIBRARIES):
        # Importing from scikit-learn or NumPy runs only their code; a class is
        # data plus methods, a function could be called on the data later.
        return isinstance(_resolve(name), type)
    return False


def split_types(file: Path) -> tuple[list[str], list[str]]:
    """The types skops does not trust by default in `file`: (ours to trust, refused). Public as
    `opsloop.plugins.sklearn_trainer.skops_types`, for other plugins that store scikit-learn objects with skops."""
    import skops.io

    names = skops.io.get_untrusted_types(file=file)
    trusted = [n for n in names if is_trusted(n)]
    return trusted, [n for n in names if n not in trusted]


def refusal(refused: list[str]) -> str:
    """Why a skops file with the `refused` type names is not loaded (or saved), naming them."""
    return (f"carries type(s) opsloop does not trust: {', '.join(refused)}; only classes from "
            f"{' and '.join(TRUSTED_LIBRARIES)} load (trust another module with {TRUST_ENV})")


@hookimpl
def save_model(model: TrainedModel, path: Path) -> list[str] | None:
    """Write `model.skops` and `sklearn.json`; refuse a model that could not be loaded back safely."""
    if model.flavor != FLAVOR:
        return None
    import zipfile

    import sklearn
    import skops
    import skops.io

    estimator = model.estimator.estimator if isinstance(model.estimator, AnomalyLabels) else model.estimator
    target = Path(path) / MODEL_FILE
    skops.io.dump(estimator, target, compression=zipfile.ZIP_DEFLATED)
    _, refused = split_types(target)
    if refused:
        target.unlink()
        raise BundleError(f"refusing to save: the estimator {refusal(refused)}", file=str(target))
    cls = type(estimator)
    meta = {
        "format": META_FORMAT,
        "estimator": f"{cls.__module__}.{cls.__qualname__}",
        "task": model.task,
        "n_features": len(model.features),
        "sklearn": sklearn.__version__,
        "skops": skops.__version__,
    }
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return [MODEL_FILE, META_FILE]


@hookimpl
def load_model(flavor: str, path: Path, manifest: dict[str, Any]) -> Any | None:
    """Load `model.skops` trusting only the types `is_trusted` accepts; BundleError otherwise."""
    if flavor != FLAVOR:
        return None
    import sklearn
    import skops.io

    target = Path(path) / MODEL_FILE
    if not target.is_file():
        raise BundleError("the sklearn flavor needs model.skops, which is missing", file=str(target))
    try:
        trusted, refused = split_types(target)
    except Exception as exc:  # noqa: BLE001 - zipfile, JSON and schema errors all mean "not a skops file"
        raise BundleError(f"not a valid skops file: {type(exc).__name__}: {exc}", file=str(target)) from None
    if refused:
        raise BundleError(f"refusing to load: the file {refusal(refused)}", file=str(target))
    _warn_versions(Path(path) / META_FILE, sklearn.__version__)
    try:
        estimator = skops.io.load(target, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - skops raises many kinds for a damaged file
        raise BundleError(f"skops could not load it: {type(exc).__name__}: {exc}", file=str(target)) from None
    return AnomalyLabels(estimator) if manifest.get("task") == "anomaly" else estimator


@hookimpl
def compile_predict(model: LoadedModel, threads: int) -> FastPredict | None:
    """An Isolation Forest (task `"anomaly"`) compiled for `opsloop serve`'s fast path: `isolation_forest_predict`.
    Any other scikit-learn estimator: None (the replay path)."""
    if model.manifest.get("flavor") != FLAVOR or model.task != "anomaly":
        return None
    from sklearn.ensemble import IsolationForest

    inner = model.estimator.estimator if isinstance(model.estimator, AnomalyLabels) else None
    return isolation_forest_predict(inner) if isinstance(inner, IsolationForest) else None


def isolation_forest_predict(forest: Any) -> FastPredict:
    """scikit-learn's `IsolationForest.score_samples` and `predict` on a feature matrix, value for value, without
    its per-call input checks and joblib dispatch: every tree walked at once, one level per step. Returns
    `predict(x) -> (labels, score)`: 1 for an anomaly, and `-score_samples(x)` (higher = more abnormal). Public
    as `opsloop.plugins.isolation_forest.compile_forest`, for other plugins holding a fitted forest.

    As scikit-learn computes them: a row goes left where its feature is <= the node's threshold (compared in
    float64), a missing value where the node says (`missing_go_to_left`); its depth in a tree is the leaf's
    decision path length plus the average path length of the leaf's samples, minus 1, summed over the trees in
    their order (a running sum, as scikit-learn adds tree after tree); the score is 2 ** -(depth / (trees x the
    average path length of max_samples)), and a row is an anomaly where `-score - offset_ < 0`.
    """
    import numpy as np
    from sklearn.ensemble._iforest import _average_path_length

    from opsloop.plugins._trees import Forest

    trees = forest.estimators_
    subsample = forest._max_features != forest.n_features_in_
    features = []
    for i, estimator in enumerate(trees):
        f = np.maximum(estimator.tree_.feature, 0)  # a leaf's -2: any column, a leaf points at itself
        features.append(np.asarray(forest.estimators_features_[i])[f] if subsample else f)
    walk = Forest(
        feature=np.concatenate(features),
        threshold=np.concatenate([t.tree_.threshold for t in trees]),
        left=np.concatenate([t.tree_.children_left for t in trees]),
        right=np.concatenate([t.tree_.children_right for t in trees]),
        missing_left=np.concatenate([np.asarray(t.tree_.missing_go_to_left, dtype=bool) for t in trees]),
        value=np.concatenate([forest._decision_path_lengths[i] + forest._average_path_length_per_tree[i] - 1.0
                              for i in range(len(trees))]),
        sizes=np.array([t.tree_.node_count for t in trees]),
        depth=max(t.tree_.max_depth for t in trees),
        goes_right=np.greater,  # left where x <= threshold; float32 x against float64 thresholds, in float64
    )
    denominator = float(len(trees) * _average_path_length([forest._max_samples])[0])
    offset = float(forest.offset_)

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)  # what scikit-learn's input check makes
        depths = np.cumsum(walk.leaves(x), axis=1)[:, -1]  # tree after tree, as scikit-learn adds them
        score = 2 ** -(depths / denominator) if denominator else 2 ** -np.ones_like(depths)
        return ((-score - offset) < 0).astype("int8"), score

    return predict


def _warn_versions(meta_file: Path, current: str) -> None:
    try:
        saved = json.loads(meta_file.read_text(encoding="utf-8")).get("sklearn")
    except (OSError, ValueError, AttributeError):
        return
    if saved and saved.split(".")[:2] != current.split(".")[:2]:
        log.warning("model saved with scikit-learn %s, loading with %s: predictions may differ", saved, current)
