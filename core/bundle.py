"""Model bundles: a manifest plus an estimator file that cannot run code when loaded.

A bundle is a directory:

    manifest.json   input schema, preprocess steps with their states, flavor,
                    task, params, metrics, lineage, the alert threshold
                    chosen at validation (`threshold`, opsloop.alerting;
                    null for a regressor), and the sha256 of every other file
    model.*         written by the flavor's `save_model` (XGBoost UBJ, skops)
    profile.json, profile-sample.parquet
                    the reference profile of the training rows and scores
                    (opsloop.profile), for drift without the training data,
                    and the calibration of the out-of-fold scores, for
                    performance estimated before labels arrive
    threshold-oof.parquet
                    the out-of-fold scores and labels the threshold was
                    chosen on, so that `opsloop models promote --rule`
                    chooses again without retraining

Its digest is the sha256 of `manifest.json`, so the digest covers every file.
`read_bundle` checks every file against the manifest before anything is
loaded, and `LoadedModel.predict` replays the stored preprocessing so that
scoring sees the same features as training did.

The manifest also keeps a few raw input rows of the training data (`probe`,
the scorer's columns only) and the time it was written (`created_at`).
`check_bundle` loads a bundle and scores its probe rows: what registration
does before a version becomes visible, and promote and rollback before an
alias moves to it (issue 8, defect 5: a bundle that cannot load must never be
registered or promoted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.alerting import apply
from opsloop.config import CONVERTER, structure
from opsloop.errors import BundleError, DataError, OpsloopError, PluginCallError
from opsloop.types import Dataset, TrainedModel

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.manager import PluginManager
    from opsloop.types import RunContext

FORMAT = "opsloop.bundle/1"
MANIFEST = "manifest.json"
PROBE_ROWS = 5  # raw rows kept in the manifest to check that a bundle scores (few: the manifest stays small)


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@attrs.frozen(kw_only=True)
class StepRecord:
    """One preprocess step as stored: who, with which options, which learned state."""

    plugin: str
    options: Mapping[str, Any] | None
    state: Mapping[str, Any]
    dist: str = ""


def unstructure_options(options: Any) -> dict[str, Any] | None:
    """Plugin options as a JSON-able dict (None for a plugin without options)."""
    return None if options is None else CONVERTER.unstructure(options)


def input_schema(dataset: Dataset) -> list[dict[str, str]]:
    """Name and dtype of every raw column a scorer must send (the target excluded)."""
    frame = dataset.frame
    return [{"name": str(c), "dtype": str(frame[c].dtype)} for c in frame.columns if c != dataset.target]


@attrs.frozen
class ModelFiles:
    """Saving and loading an estimator through the flavor plugins: what `save_model` and `load_model` get as
    `models`, so that a flavor whose model holds other models (the `ensemble` trainer's members) stores each
    with its own flavor, in a subdirectory, as a bundle stores its one estimator.

    Attributes:
        plugins: The plugin manager whose flavor plugins do the work.
    """

    plugins: PluginManager = attrs.field(repr=False)

    def save(self, model: TrainedModel, directory: Path, *, trainer: str = "") -> tuple[str, list[str]]:
        """Write `model` into `directory` (made if missing) with the first plugin whose `save_model` accepts
        its flavor, loading the plugin named like the flavor when none does.

        Returns:
            The plugin that saved it (to load it back) and the files written, relative to `directory`.
        """
        plugins = self.plugins
        directory.mkdir(parents=True, exist_ok=True)
        saver, files = plugins.first("save_model", model=model, path=directory, models=self)
        if saver is None and model.flavor in plugins.known and not plugins.pm.has_plugin(model.flavor):
            plugins.load(model.flavor, where=f"flavor of the model trained by {trainer or 'its trainer'}")
            saver, files = plugins.first("save_model", model=model, path=directory, models=self)
        if saver is None or not files:
            raise BundleError(f"no plugin can save flavor {model.flavor!r}" + (f" (trained by {trainer})" if trainer
                                                                              else ""))
        return saver, list(files)

    def load(self, flavor: str, plugin: str, directory: Path, manifest: Mapping[str, Any], *,
             where: str = "", ref: str | None = None) -> Any:
        """Load an estimator of `flavor` from `directory` (whose files were checked) with `plugin`, the one
        that saved it; BundleError when it cannot."""
        self.plugins.load(plugin, where=where or f"bundle {directory}")
        try:
            estimator = self.plugins.pm.hook.load_model(flavor=flavor, path=directory, manifest=dict(manifest),
                                                        models=self)
        except Exception as exc:
            raise BundleError(f"cannot load the {flavor} estimator: {exc}", file=str(directory), model=ref) from exc
        if estimator is None:
            raise BundleError(f"no plugin loads flavor {flavor!r}", file=str(directory), model=ref)
        return estimator


def write_bundle(directory: Path, *, model: TrainedModel, trainer: str, raw: Dataset,
                 steps: Sequence[StepRecord], metrics: Mapping[str, float], lineage: Mapping[str, Any],
                 plugins: PluginManager, oof: pd.DataFrame | None = None,
                 threshold: Mapping[str, Any] | None = None, oof_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write a bundle into an empty directory and return its manifest.

    The first loaded plugin whose `save_model` accepts the flavor writes the
    estimator; when none does, the plugin named like the flavor (`xgboost`,
    `sklearn`) is loaded and asked. The manifest records which plugin saved
    it (to load it back) and the sha256 of each file. `oof`, the first
    validation report's out-of-fold scores (`ValidationReport.oof`), is
    calibrated into the profile (`opsloop.profile.Calibration`). `threshold`, the version's alert
    threshold (`opsloop.alerting.choose`), goes into the manifest, and `oof_rows`, the out-of-fold rows it
    was chosen on (`opsloop.alerting.oof_frame`), into `threshold-oof.parquet`.
    """
    try:
        return _write_bundle(directory, model=model, trainer=trainer, raw=raw, steps=steps, metrics=metrics,
                             lineage=lineage, plugins=plugins, oof=oof, threshold=threshold, oof_rows=oof_rows)
    except OSError as exc:  # a full disk, a read-only mount: one line naming the place (issue 8)
        raise _write_error(directory, exc) from None
    except PluginCallError as exc:  # the flavor plugin's save_model hit the same
        if isinstance(exc.cause, OSError) and exc.cause.errno:
            raise _write_error(directory, exc.cause) from None
        raise


def _write_error(directory: Path, exc: OSError) -> OpsloopError:
    from opsloop.store import os_error

    return os_error("write the model bundle", directory, exc)


def _write_bundle(directory: Path, *, model: TrainedModel, trainer: str, raw: Dataset,
                  steps: Sequence[StepRecord], metrics: Mapping[str, float], lineage: Mapping[str, Any],
                  plugins: PluginManager, oof: pd.DataFrame | None = None,
                  threshold: Mapping[str, Any] | None = None, oof_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    saver, files = ModelFiles(plugins).save(model, directory, trainer=trainer)
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "flavor": model.flavor,
        "flavor_plugin": saver,
        "trainer": trainer,
        "task": model.task,
        "target": raw.target,
        "time": raw.time,
        "series": raw.series,
        "input_schema": input_schema(raw),
        "features": list(model.features),
        "steps": [attrs.asdict(s) for s in steps],
        "params": dict(model.params),
        "metrics": dict(metrics),
        "lineage": dict(lineage),
        "probe": probe_rows(raw),
        "threshold": dict(threshold) if threshold else None,
    }
    if oof_rows is not None:
        from opsloop.alerting import OOF_FILE

        oof_rows.to_parquet(directory / OOF_FILE, index=False)
        files = [*files, OOF_FILE]
    files = [*files, *_write_profile(directory, manifest, model, raw, plugins, oof)]
    manifest["files"] = {name: sha256_file(directory / name) for name in sorted(files)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                                      encoding="utf-8")
    return manifest


def _write_profile(directory: Path, manifest: dict[str, Any], model: TrainedModel, raw: Dataset,
                   plugins: PluginManager, oof: pd.DataFrame | None = None) -> list[str]:
    """The reference profile's files (opsloop.profile): training inputs, the scores of those rows, and
    the calibration of the out-of-fold scores `oof` (binary classifiers and anomaly detectors).

    The scores come from replaying the stored steps on the raw rows, as
    serving does; a model that cannot score them is still registered (its
    probe check decides), with a profile that says why it has no scores.
    """
    from opsloop import profile

    predictions, note = None, ""
    scorer = LoadedModel(manifest=manifest, estimator=model.estimator, path=directory, plugins=plugins,
                         ref=f"new version trained by {manifest['trainer']}")
    try:
        predictions = scorer.predict(raw.frame)
    except Exception as exc:  # whatever the steps or the estimator raise: the profile notes it
        note = f"the model could not score its training rows: {exc!r}"[:300]
    calibration = profile.calibrate(oof, model.task, predictions, manifest.get("threshold"))
    # `[data] sensitive` columns stay out of the profile and its sample of training rows, in either mode
    # (docs/data.md, issue 14 item 4): the prediction log has them dropped or hashed, so drift is not judged on them.
    data_table = ((manifest.get("lineage") or {}).get("config") or {}).get("data") or {}
    hidden = [c for c in data_table.get("sensitive") or () if c in raw.frame.columns]
    shown = raw.derive(raw.frame.drop(columns=hidden)) if hidden else raw
    return profile.build(directory, shown, predictions=predictions, outputs_note=note, calibration=calibration)


def probe_rows(raw: Dataset) -> dict[str, Any]:
    """The first `PROBE_ROWS` rows of the raw input columns, as JSON (`orient="split"`, ISO times)."""
    columns = [c["name"] for c in input_schema(raw)]
    head = raw.frame[columns].head(PROBE_ROWS)
    return json.loads(head.to_json(orient="split", index=False, date_format="iso", date_unit="ns"))


def probe_frame(manifest: Mapping[str, Any]) -> pd.DataFrame | None:
    """The probe rows of a manifest with their recorded dtypes; None for a bundle without them."""
    import pandas as pd

    probe = manifest.get("probe")
    if not probe or not probe.get("data"):
        return None
    frame = pd.DataFrame(probe["data"], columns=probe["columns"])
    for column in manifest.get("input_schema", []):
        name, dtype = column["name"], column["dtype"]
        if name in frame.columns:
            frame[name] = pd.to_datetime(frame[name]).astype(dtype) if dtype.startswith("datetime") \
                else frame[name].astype(dtype)
    return frame


def check_bundle(directory: Path, plugins: PluginManager, *, ref: str, digest: str | None = None) -> None:
    """Verify, load and score a bundle's probe rows (load only when it has none); BundleError naming why.

    What a version must pass to be registered, and to be promoted or rolled
    back to: its files match, its estimator loads, and it scores raw rows
    through its own preprocessing.
    """
    import numpy as np

    model = read_bundle(directory, plugins, ref=ref, digest=digest)
    try:
        probe = probe_frame(model.manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"its probe rows cannot be read back: {exc}", model=ref, file=str(directory)) from None
    if probe is None:
        return
    try:
        predictions = model.predict(probe)
    except OpsloopError as exc:
        raise BundleError(f"it loads but cannot score its probe rows: {exc}", model=ref) from None
    except Exception as exc:  # the estimator itself: whatever it raises is the cause to show
        raise BundleError(f"it loads but cannot score its probe rows: {exc!r}", model=ref) from None
    if len(predictions) != len(probe):
        raise BundleError(f"it scored {len(predictions)} of its {len(probe)} probe rows", model=ref)
    if "score" in predictions and not np.isfinite(predictions["score"].to_numpy(dtype=float)).all():
        raise BundleError("its scores of the probe rows are not finite numbers", model=ref)


def manifest_digest(directory: Path) -> str:
    """The bundle's digest: sha256 of its manifest."""
    return sha256_file(directory / MANIFEST)


def read_manifest(directory: Path, *, ref: str | None = None, digest: str | None = None) -> dict[str, Any]:
    """Read and verify a bundle's manifest and files; BundleError naming the file otherwise."""
    name, _, version = (ref or "").partition(":")
    where = {"model": name or None, "version": int(version) if version.isdigit() else None}
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError("bundle has no manifest.json (not an opsloop bundle, or deleted)", file=str(path), **where)
    if digest is not None and sha256_file(path) != digest:
        raise BundleError("manifest.json changed on disk since registration; refusing to load",
                          file=str(path), **where)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}", file=str(path), **where) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"unsupported bundle format {manifest.get('format') if isinstance(manifest, dict) else None!r}"
                          f" (expected {FORMAT})", file=str(path), **where)
    for fname, expected in manifest.get("files", {}).items():
        fpath = (directory / fname).resolve()
        if directory.resolve() not in fpath.parents:
            raise BundleError("file outside the bundle directory", file=fname, **where)
        if not fpath.is_file():
            raise BundleError("file is missing", file=str(fpath), **where)
        if sha256_file(fpath) != expected:
            raise BundleError("file changed on disk since registration (sha256 mismatch); refusing to load",
                              file=str(fpath), **where)
    return manifest


def read_bundle(directory: Path, plugins: PluginManager, *, ref: str | None = None,
                digest: str | None = None, run: RunContext | None = None,
                threshold: Mapping[str, Any] | None = None) -> LoadedModel:
    """Verify and load a bundle; the flavor plugin and preprocess plugins are loaded as needed.
    `threshold` is the version's current one as the store keeps it (`ModelVersion.threshold`), which a
    promote may have changed since the manifest was written."""
    manifest = read_manifest(directory, ref=ref, digest=digest)
    estimator = ModelFiles(plugins).load(manifest["flavor"], manifest["flavor_plugin"], directory, manifest,
                                         where=f"bundle {ref or directory}", ref=ref)
    return LoadedModel(manifest=manifest, estimator=estimator, path=directory, plugins=plugins, run=run,
                       ref=ref or str(directory), override=dict(threshold) if threshold else None)


def predictions_frame(estimator: Any, task: str, X: pd.DataFrame) -> pd.DataFrame:
    """`prediction` (and `score` for classifiers and anomaly detectors) per row of X."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=X.index)
    if task == "classification":
        proba = np.asarray(estimator.predict_proba(X))
        out["prediction"] = np.asarray(estimator.classes_)[proba.argmax(axis=1)] \
            if hasattr(estimator, "classes_") else proba.argmax(axis=1)
        out["score"] = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
    elif task == "anomaly":
        out["prediction"] = np.asarray(estimator.predict(X))
        if hasattr(estimator, "score_samples"):
            out["score"] = -np.asarray(estimator.score_samples(X))
    else:
        out["prediction"] = np.asarray(estimator.predict(X))
    return out


@attrs.define
class LoadedModel:
    """A verified bundle, ready to score raw rows."""

    manifest: dict[str, Any]
    estimator: Any = attrs.field(repr=False)
    path: Path
    plugins: PluginManager = attrs.field(repr=False)
    run: RunContext | None = attrs.field(default=None, repr=False)
    ref: str = ""
    #: The store's threshold for the version when it differs from the manifest's (a promote changed it).
    override: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def threshold(self) -> dict[str, Any] | None:
        """The alert threshold scoring uses: `score >= value` alerts (opsloop.alerting); None for a model
        without one (a regressor, a bundle written before thresholds), which keeps its own decision."""
        return self.override or self.manifest.get("threshold") or None

    @property
    def features(self) -> list[str]:
        return list(self.manifest["features"])

    def check_input(self, frame: pd.DataFrame) -> None:
        """DataError naming the columns a frame lacks."""
        wanted = [c["name"] for c in self.manifest["input_schema"]]
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataError(f"{self.ref}: input lacks column(s) {', '.join(missing)}")

    def transform(self, frame: pd.DataFrame, issues: list[str] | None = None) -> Dataset:
        """Replay the stored preprocessing on raw rows.

        Args:
            frame: Raw rows with the input schema's columns.
            issues: When given, what each step found on these rows is appended
                to it, as `"<step>: <issue>"` (schema-check's values out of the
                training range, unseen categories, missing-rate jumps: issue 9,
                item 5); the features, and so the scores, are the same either way.
        """
        self.check_input(frame)
        m = self.manifest
        dataset = Dataset.from_frame(frame, target=m["target"] if m["target"] in frame.columns else None,
                                     time=m["time"], series=m["series"], name=self.ref)
        for step in m["steps"]:
            name = step["plugin"]
            self.plugins.load(name, where=f"bundle {self.ref}")
            cls = self.plugins.options_class(name)
            options = None if cls is None else structure(step["options"] or {}, cls,
                                                         section=f"bundle {self.ref} step {name}", source=None)
            result = self.plugins.call(name, "preprocess", dataset=dataset, state=dict(step["state"]),
                                       options=options, run=self.run)
            dataset = result.dataset
            if issues is not None:
                issues.extend(f"{name}: {issue}" for issue in result.issues)
        return dataset

    def score(self, frame: pd.DataFrame, issues: list[str] | None = None) -> tuple[Dataset, pd.DataFrame]:
        """The replayed features (with the target as the model learned it, when present) and predictions;
        `issues` collects the steps' findings, as in `transform`."""
        dataset = self.transform(frame, issues)
        if len(dataset) != len(frame):
            raise DataError(f"{self.ref}: preprocessing changed the number of rows ({len(frame)} -> {len(dataset)})")
        series = self.manifest.get("series")
        preds = apply(predictions_frame(self.estimator, self.task, dataset.frame[self.features]), self.threshold,
                      frame[series].to_numpy() if series and series in frame.columns else None)
        preds.index = frame.index
        return dataset, preds

    def predict(self, frame: pd.DataFrame, issues: list[str] | None = None) -> pd.DataFrame:
        """Predictions for raw rows, preprocessing replayed; row-aligned with `frame`. `issues` collects the
        steps' findings, as in `transform`."""
        return self.score(frame, issues)[1]
