"""The `pyod` model flavor: JSON and NumPy arrays (or skops for the forest), never pickle.

Files a bundle holds:

- `pyod.json`: the format tag, the detector kind (one of `KINDS`), the alert
  threshold, the feature count, the scalar state (training rows, HBOS's
  alpha and tol), the parameters and the library versions;
- `pyod.npz` (ECOD, COPOD, HBOS): the fitted numbers as plain numeric
  arrays (ECDF values and counts, skewness signs; histogram densities and
  edges), read with `numpy.load(allow_pickle=False)`: an object array,
  the only kind that could carry code, is refused by NumPy itself;
- `forest.skops` (Isolation Forest): scikit-learn's `IsolationForest`,
  loaded by skops trusting only the types opsloop's `sklearn` flavor trusts
  (`opsloop.plugins.sklearn_trainer.skops_types`), a list made from the
  names skops finds in the file: classes (not functions) under `sklearn.`
  and `numpy.`, and modules the operator lists in `OPSLOOP_TRUSTED_MODULES`.
  Anything else is refused, naming it, before it is imported.

The detector object is rebuilt from these by this package's own code; the
file chooses among `KINDS`, never a class or a function. A file that is
missing, damaged, of another format or names anything else is a
`BundleError`, never a traceback. Loading needs NumPy and scikit-learn, not
PyOD (which only fits).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import BundleError, NoFastPath, hookimpl

from opsloop_pyod._scoring import Detector, EcdfScorer, ForestScorer, HbosScorer

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.rowops import FastPredict
    from opsloop.types import TrainedModel

FLAVOR = "pyod"
META_FILE = "pyod.json"
ARRAYS_FILE = "pyod.npz"
FOREST_FILE = "forest.skops"
FORMAT = "opsloop.pyod/1"
KINDS = ("ecod", "copod", "hbos", "iforest")
#: The arrays each kind stores, all numeric.
ARRAYS = {"ecod": ("values", "counts", "offsets", "skew_sign"), "copod": ("values", "counts", "offsets", "skew_sign"),
          "hbos": ("hist", "edges", "offsets")}


def _forest_types(file: Path) -> tuple[list[str], list[str]]:
    """(trusted, refused) among the types skops does not trust by default in `file`: opsloop's own `sklearn`
    flavor's rule (`opsloop.plugins.sklearn_trainer.skops_types`)."""
    from opsloop.plugins.sklearn_trainer import skops_types

    return skops_types(file)


def _refusal(refused: list[str]) -> str:
    from opsloop.plugins.sklearn_trainer import skops_refusal

    return skops_refusal(refused)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("pyod", "numpy", "scikit-learn", "skops"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@hookimpl
def save_model(model: TrainedModel, path: Path) -> list[str] | None:
    """Write `pyod.json` and `pyod.npz` (or `forest.skops`); refuse a forest that could not load back safely."""
    if model.flavor != FLAVOR:
        return None
    import numpy as np

    detector = model.estimator
    if not isinstance(detector, Detector):
        raise BundleError(f"the pyod flavor saves opsloop_pyod detectors, not {type(detector).__name__}")
    path = Path(path)
    meta: dict[str, Any] = {"format": FORMAT, "kind": detector.kind, "threshold": detector.threshold,
                            "n_features": detector.n_features_in_, "params": detector.params,
                            "versions": _versions()}
    scorer = detector.scorer
    if isinstance(scorer, ForestScorer):
        import zipfile

        import skops.io

        target = path / FOREST_FILE
        skops.io.dump(scorer.forest, target, compression=zipfile.ZIP_DEFLATED)
        _, refused = _forest_types(target)
        if refused:
            target.unlink()
            raise BundleError(f"refusing to save: the forest {_refusal(refused)}", file=str(target))
        data_file = FOREST_FILE
    else:
        if isinstance(scorer, EcdfScorer):
            meta["n"] = scorer.n
        else:
            meta["alpha"], meta["tol"] = scorer.alpha, scorer.tol
        with (path / ARRAYS_FILE).open("wb") as fh:
            np.savez(fh, **scorer.arrays())
        data_file = ARRAYS_FILE
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return [META_FILE, data_file]


def _read_meta(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise BundleError(f"the pyod flavor needs {META_FILE}, which is missing", file=str(file))
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"not valid JSON: {exc}", file=str(file)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"not an {FORMAT} file (format {found!r})", file=str(file))
    if meta.get("kind") not in KINDS:
        raise BundleError(f"unknown detector kind {meta.get('kind')!r}; this version of opsloop-pyod loads "
                          f"{', '.join(KINDS)}", file=str(file))
    number = (int, float)
    if not isinstance(meta.get("threshold"), number) or not isinstance(meta.get("n_features"), int):
        raise BundleError("threshold or n_features missing or not a number", file=str(file))
    return meta


def _read_arrays(file: Path, kind: str) -> dict[str, Any]:
    import numpy as np

    if not file.is_file():
        raise BundleError(f"the pyod flavor needs {ARRAYS_FILE}, which is missing", file=str(file))
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS[kind]}
    except KeyError as exc:
        raise BundleError(f"array {exc} missing", file=str(file)) from None
    except Exception as exc:  # noqa: BLE001 - zipfile, header and pickle refusals all mean "not our arrays"
        raise BundleError(f"not a valid NumPy archive: {type(exc).__name__}: {exc}", file=str(file)) from None
    for name, array in arrays.items():
        if array.dtype.kind not in "fiu" or array.ndim != 1:
            raise BundleError(f"array {name!r} is {array.dtype} with {array.ndim} dimension(s), expected 1-d "
                              "numbers", file=str(file))
    return arrays


def _load_forest(file: Path) -> Any:
    import skops.io

    if not file.is_file():
        raise BundleError(f"the pyod flavor needs {FOREST_FILE}, which is missing", file=str(file))
    try:
        trusted, refused = _forest_types(file)
    except Exception as exc:  # noqa: BLE001 - zipfile, JSON and schema errors all mean "not a skops file"
        raise BundleError(f"not a valid skops file: {type(exc).__name__}: {exc}", file=str(file)) from None
    if refused:
        raise BundleError(f"refusing to load: the file {_refusal(refused)}", file=str(file))
    try:
        forest = skops.io.load(file, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - skops raises many kinds for a damaged file
        raise BundleError(f"skops could not load it: {type(exc).__name__}: {exc}", file=str(file)) from None
    from sklearn.ensemble import IsolationForest

    if not isinstance(forest, IsolationForest):
        raise BundleError(f"expected an IsolationForest, found {type(forest).__name__}", file=str(file))
    return forest


def load(path: Path, features: Any = ()) -> Detector:
    """The detector stored in bundle directory `path` (`features`: the manifest's names, for messages);
    BundleError for anything but a sound pyod model."""
    path = Path(path)
    meta = _read_meta(path / META_FILE)
    kind = meta["kind"]
    try:
        if kind == "iforest":
            scorer: Any = ForestScorer(_load_forest(path / FOREST_FILE))
        elif kind == "hbos":
            scorer = HbosScorer.from_arrays(float(meta["alpha"]), float(meta["tol"]),
                                            _read_arrays(path / ARRAYS_FILE, kind))
        else:
            scorer = EcdfScorer.from_arrays(kind, int(meta["n"]), _read_arrays(path / ARRAYS_FILE, kind))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"the {kind} state does not fit together: {type(exc).__name__}: {exc}",
                          file=str(path)) from None
    if scorer.n_features != meta["n_features"]:
        raise BundleError(f"the stored state has {scorer.n_features} features, {META_FILE} says "
                          f"{meta['n_features']}", file=str(path))
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    names = features if isinstance(features, (list, tuple)) and len(features) == scorer.n_features else ()
    return Detector(kind, scorer, float(meta["threshold"]), params, names)


@hookimpl
def load_model(flavor: str, path: Path, manifest: dict[str, Any]) -> Detector | None:
    """Rebuild the detector from `pyod.json` and its arrays (or trusted skops types); BundleError otherwise."""
    if flavor != FLAVOR:
        return None
    return load(path, (manifest or {}).get("features", ()))


@hookimpl
def compile_predict(model: LoadedModel, threads: int) -> FastPredict | None:
    """The detector's own scoring on the server's float32 rows: the same numbers as batch scoring, row by row.
    A missing value is the detector's DataError naming the row and the feature, which the server answers
    with 422 (a version whose preprocessing imputes never gets here with one)."""
    if model.manifest.get("flavor") != FLAVOR:
        return None
    detector = model.estimator
    if not isinstance(detector, Detector):
        raise NoFastPath(f"a pyod bundle loaded as {type(detector).__name__}")

    def predict(x: Any) -> tuple[Any, Any]:
        score = detector.anomaly_scores(x)
        return (score > detector.threshold).astype("int8"), score
    return predict
