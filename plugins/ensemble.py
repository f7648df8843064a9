"""Ensemble: supervised and unsupervised trainers combined by rank, saved without pickle.

A supervised model learns the incidents of its training period; a later
period brings other kinds, which an unsupervised detector may see better
(issue 13, item 7). The `ensemble` trainer fits each of its `members`, any
trainer plugins (`xgboost`, `isolation-forest`, `sklearn`, a contrib
package's such as `pyod-ecod`), each with its own options table
(`[train.xgboost]`...), on the same rows, and combines their scores:

- each member's score (a classifier's probability of the positive class, a
  detector's `-score_samples`) is mapped to its rank among the member's
  scores of the training rows: the empirical CDF, kept as about 200
  quantiles, finest in the upper tail where alerts are; a score above every
  training score maps into (0.999, 1] by how far above it is, so the
  strongest outliers stay ordered;
- `combine = "rank-mean"` averages the ranks with `weights` (default equal);
  `"rank-max"` takes the highest (alert when any member is sure).

The combined rank is then rescaled piecewise linearly so that the training
rows' (1 - `contamination`) quantile lands on 0.5 (for a classifier,
`contamination` defaults to the training set's positive share): the score is
in [0, 1], ranks rows as the combined rank does, and its own decision (above
0.5) flags about that share. With a supervised member the ensemble is a
binary classifier (`predict_proba`), otherwise an anomaly detector
(`score_samples` = minus the score); either way validation calibrates the
alert threshold on the score (docs/alerting.md), which replaces that
decision.

Bundle layout (flavor `ensemble`): `ensemble.json` holds the combination
(members' names, flavors, tasks, features, weights, quantiles) and each
member is saved by its own flavor's plugin under `members/<i>-<name>/`, so
no format beyond the members' own is involved and nothing is unpickled.

Options (`[train.ensemble]`): members, weights, combine, contamination;
see `Options`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import SearchParam, SearchSpace, TrainedModel, hookimpl
from opsloop.errors import BundleError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from opsloop.bundle import LoadedModel, ModelFiles
    from opsloop.rowops import FastPredict
    from opsloop.types import Dataset, RunContext

__all__ = ["EnsembleEstimator", "Options", "compile_predict", "load_model", "plugin_options", "save_model", "train",
           "tune_space"]

FLAVOR = "ensemble"
META_FILE = "ensemble.json"
META_FORMAT = "opsloop.ensemble/1"
COMBINES = ("rank-mean", "rank-max")
#: Share of the rank scale kept for scores above every training score (they map into (TOP, 1]).
TOP = 0.999


def _members(_: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) < 2:
        raise ValueError(f"{attribute.name}: an ensemble needs at least 2 trainer plugins, got {list(value)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{attribute.name}: lists a trainer twice: {list(value)}")
    if FLAVOR in value:
        raise ValueError(f'{attribute.name}: "{FLAVOR}" cannot be a member of itself')


def _weights(instance: Any, attribute: attrs.Attribute, value: tuple[float, ...] | None) -> None:
    if value is None:
        return
    if len(value) != len(instance.members):
        raise ValueError(f"{attribute.name}: {len(value)} weight(s) for {len(instance.members)} members")
    if any(not math.isfinite(w) or w < 0 for w in value) or not any(w > 0 for w in value):
        raise ValueError(f"{attribute.name}: weights must be finite, >= 0, and not all 0; got {list(value)}")


def _contamination(_: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise ValueError(f"{attribute.name}: expected a share in (0, 1), got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `ensemble` trainer (`[train.ensemble]`).

    Attributes:
        members: Trainer plugins to combine (at least 2), each configured by
            its own table (`[train.xgboost]`, `[train.isolation-forest]`).
        weights: One weight per member for `"rank-mean"` (default: equal).
        combine: `"rank-mean"` (weighted mean of the members' ranks) or
            `"rank-max"` (the highest rank).
        contamination: Share of training rows the ensemble's own `predict`
            flags (used only where no calibrated threshold applies); default:
            the training positive share with a supervised member, else 0.01.
    """

    members: tuple[str, ...] = attrs.field(default=("xgboost", "isolation-forest"), converter=tuple,
                                           validator=_members)
    weights: tuple[float, ...] | None = attrs.field(default=None, validator=_weights)
    combine: str = attrs.field(default="rank-mean", validator=attrs.validators.in_(COMBINES))
    contamination: float | None = attrs.field(default=None, validator=_contamination)

    def uses_plugins(self) -> list[tuple[str, str, str]]:
        """The members, for the config check to load them and check their options (docs/writing-plugins.md)."""
        return [("members", "train", name) for name in self.members]


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def tune_space(options: Options) -> SearchSpace:
    """How the members' ranks are combined; `opsloop tune` adds each member's own space, prefixed with its
    name (`xgboost.max_depth`)."""
    return SearchSpace(params={"combine": SearchParam(choices=COMBINES)})


# -- ranks -----------------------------------------------------------------


def levels(rows: int) -> np.ndarray:
    """Probability levels of the kept quantiles: every 1% up to 0.99, then geometric towards 1 (down to one
    training row's share), so the upper tail, where alerts are, keeps its resolution."""
    import numpy as np

    tail = 1 - np.geomspace(0.01, max(1.0 / max(rows, 1), 1e-7), 100)
    return np.unique(np.concatenate([np.linspace(0, 0.99, 100), tail, [1.0]]))


def reference(scores: np.ndarray) -> dict[str, Any]:
    """What ranks a member's new scores: quantiles of its training scores and the spread of their top."""
    import numpy as np

    scores = np.asarray(scores, dtype="float64")
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise DataError("ensemble: a member scored no training row with a finite score")
    p = levels(scores.size)
    q = np.quantile(scores, p)
    spread = float(q[-1] - np.quantile(scores, 0.99))
    return {"levels": p.tolist(), "quantiles": q.tolist(), "spread": spread if spread > 0 else 1.0}


def rank(scores: np.ndarray, ref: dict[str, Any]) -> np.ndarray:
    """Each score's rank among the training scores, in [0, 1]: the interpolated empirical CDF, scaled into
    [0, TOP]; above the highest training score, TOP plus a share of the rest that grows with the distance."""
    import numpy as np

    p, q = np.asarray(ref["levels"]), np.asarray(ref["quantiles"])
    scores = np.asarray(scores, dtype="float64")
    out = TOP * np.interp(scores, q, p)
    above = scores > q[-1]
    if above.any():
        out[above] = TOP + (1 - TOP) * -np.expm1(-(scores[above] - q[-1]) / ref["spread"])
    return np.where(np.isnan(scores), np.nan, out)


def member_scores(estimator: Any, task: str, X: pd.DataFrame) -> np.ndarray:
    """A member's scores, higher = more likely an incident (opsloop.bundle.predictions_frame)."""
    import numpy as np

    from opsloop.bundle import predictions_frame

    frame = predictions_frame(estimator, task, X)
    if "score" not in frame.columns:
        raise DataError(f"ensemble: a {task} member gives no score to rank; members must be binary classifiers "
                        "or anomaly detectors")
    return np.asarray(frame["score"], dtype="float64")


def centre(rank: np.ndarray, cut: float) -> np.ndarray:
    """`rank` rescaled piecewise linearly so that [0, cut] -> [0, 0.5] and [cut, 1] -> [0.5, 1]: monotone, so
    every ranking figure is unchanged, and 0.5 is the ensemble's own decision."""
    import numpy as np

    cut = min(max(cut, 1e-9), 1 - 1e-9)
    return np.where(rank < cut, 0.5 * rank / cut, 0.5 + 0.5 * (rank - cut) / (1 - cut))


@attrs.define
class EnsembleEstimator:
    """Members and how their ranks combine: what the `ensemble` trainer fits and its flavor loads.

    Attributes:
        members: (name, task, features, estimator) per member.
        references: Per member, `reference()` of its training scores.
        weights: Normalised weights (sum 1).
        combine: `"rank-mean"` or `"rank-max"`.
        cut: Combined rank from which `predict` says 1 (`combined` puts it at 0.5).
        task: `"classification"` or `"anomaly"`.
        flavors: Each member's flavor (what compiles its fast predict).
        trained: The members' TrainedModels (their flavors, to save them)
            when just fitted; None when loaded from a bundle.
    """

    members: list[tuple[str, str, tuple[str, ...], Any]]
    references: list[dict[str, Any]]
    weights: list[float]
    combine: str
    cut: float = 1.0
    task: str = "classification"
    flavors: list[str] = attrs.field(factory=list)
    trained: list[TrainedModel] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def classes_(self) -> np.ndarray:
        import numpy as np

        return np.array([0, 1])

    def ranks(self, X: pd.DataFrame) -> np.ndarray:
        """Rows x members: each member's rank of each row."""
        import numpy as np

        return np.column_stack([rank(member_scores(est, task, X[list(features)]), ref)
                                for (_, task, features, est), ref in zip(self.members, self.references, strict=True)])

    def mean_rank(self, X: pd.DataFrame) -> np.ndarray:
        """The members' ranks combined (`combine`), per row, in [0, 1]."""
        return self.combine_ranks(self.ranks(X))

    def combine_ranks(self, ranks: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.combine == "rank-max":
            return ranks.max(axis=1)
        total = np.zeros(ranks.shape[0])
        for j, weight in enumerate(self.weights):  # member by member: the same sums for one row or many
            total += weight * ranks[:, j]
        return total

    def combined(self, X: pd.DataFrame) -> np.ndarray:
        """The ensemble's score per row, in [0, 1]: the combined rank, rescaled piecewise linearly so that
        `cut` lands on 0.5 (a classifier's default decision then flags what `contamination` says)."""
        return centre(self.mean_rank(X), self.cut)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        import numpy as np

        s = self.combined(X)
        return np.column_stack([1 - s, s])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.combined(X) > 0.5).astype("int8")  # as the argmax of predict_proba

    def score_samples(self, X: pd.DataFrame) -> np.ndarray:
        """Normality, as scikit-learn's detectors say it: lower = more abnormal."""
        return -self.combined(X)

    def __repr__(self) -> str:
        return f"EnsembleEstimator({self.combine}: {', '.join(m[0] for m in self.members)})"


# -- training ----------------------------------------------------------------


@hookimpl
def train(dataset: Dataset, options: Options, run: RunContext) -> TrainedModel:
    """Fit every member on the rows, rank each one's training scores, and combine."""
    import numpy as np

    options = options or Options()
    fitted: list[TrainedModel] = []
    for name in options.members:
        model = run.fit_trainer(name, dataset)
        if model.task not in ("classification", "anomaly"):
            raise DataError(f'ensemble: member "{name}" is a {model.task} model; members must be binary '
                            "classifiers or anomaly detectors")
        if model.task == "classification" and len(getattr(model.estimator, "classes_", (0, 1))) != 2:
            raise DataError(f'ensemble: member "{name}" has {len(model.estimator.classes_)} classes; the ensemble '
                            "ranks binary classifiers only")
        fitted.append(model)
    X = dataset.X
    refs = [reference(member_scores(m.estimator, m.task, X[list(m.features)])) for m in fitted]
    weights = np.asarray(options.weights or [1.0] * len(fitted), dtype="float64")
    task = "classification" if any(m.task == "classification" for m in fitted) else "anomaly"
    estimator = EnsembleEstimator(
        members=[(name, m.task, tuple(m.features), m.estimator) for name, m in zip(options.members, fitted, strict=True)],
        references=refs, weights=(weights / weights.sum()).tolist(), combine=options.combine, task=task,
        flavors=[m.flavor for m in fitted])
    share = options.contamination
    if share is None:
        positive = (float(np.nanmean(np.asarray(dataset.y, dtype="float64")))
                    if task == "classification" and dataset.target in dataset.frame.columns else 0.0)
        share = positive if 0 < positive < 1 else 0.01
    estimator.cut = float(np.quantile(estimator.mean_rank(X), 1 - share))
    run.log.info("ensemble: %s of %s on %d rows", options.combine, ", ".join(options.members), len(X))
    features = tuple(dict.fromkeys(f for m in fitted for f in m.features))
    params: dict[str, Any] = {"combine": options.combine, "members": list(options.members),
                              "weights": estimator.weights, "cut": estimator.cut}
    for name, m in zip(options.members, fitted, strict=True):  # flat, one row each in `models show`
        params.update({f"{name}.flavor": m.flavor, f"{name}.task": m.task},
                      **{f"{name}.{key}": value for key, value in m.params.items()})
    estimator.trained = fitted
    return TrainedModel(estimator=estimator, flavor=FLAVOR, task=task, params=params,
                        features=features)


# -- the flavor ----------------------------------------------------------------


def _member_dir(index: int, name: str) -> str:
    return f"members/{index}-{name}"


@hookimpl
def save_model(model: TrainedModel, path: Path, models: ModelFiles) -> list[str] | None:
    """Each member with its own flavor under `members/<i>-<name>/`, and `ensemble.json`."""
    if model.flavor != FLAVOR:
        return None
    est = model.estimator
    if not isinstance(est, EnsembleEstimator) or est.trained is None:
        raise BundleError(f"the ensemble flavor saves what the ensemble trainer fitted, got {type(est).__name__}")
    files, members = [], []
    for index, ((name, task, features, _), member) in enumerate(zip(est.members, est.trained, strict=True)):
        sub = _member_dir(index, name)
        saver, written = models.save(member, Path(path) / sub, trainer=name)
        files.extend(f"{sub}/{f}" for f in written)
        members.append({"name": name, "dir": sub, "flavor": member.flavor, "flavor_plugin": saver, "task": task,
                        "features": list(features), "params": dict(member.params)})
    meta = {"format": META_FORMAT, "combine": est.combine, "weights": est.weights, "cut": est.cut,
            "task": est.task, "members": members, "references": est.references}
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return [*files, META_FILE]


def _read_meta(file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"the ensemble flavor needs {META_FILE}, which is missing", file=str(file)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{META_FILE} is not valid JSON: {exc}", file=str(file)) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise BundleError(f"{META_FILE}: unsupported format (expected {META_FORMAT})", file=str(file))
    try:
        members, refs = meta["members"], meta["references"]
        ok = (isinstance(members, list) and len(members) >= 2 and len(refs) == len(members)
              and len(meta["weights"]) == len(members) and meta["combine"] in COMBINES
              and all(len(r["levels"]) == len(r["quantiles"]) >= 2 for r in refs)
              and all(isinstance(m[k], str) for m in members for k in ("name", "dir", "flavor", "flavor_plugin", "task")))
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{META_FILE}: malformed ({type(exc).__name__}: {exc})", file=str(file)) from None
    if not ok:
        raise BundleError(f"{META_FILE}: malformed (members, references, weights or combine)", file=str(file))
    return meta


@hookimpl
def load_model(flavor: str, path: Path, manifest: dict[str, Any], models: ModelFiles) -> Any | None:
    """Load each member with the plugin that saved it, then the combination from `ensemble.json`."""
    if flavor != FLAVOR:
        return None
    path = Path(path)
    meta = _read_meta(path / META_FILE)
    members = []
    for m in meta["members"]:
        directory = (path / m["dir"]).resolve()
        if path.resolve() not in directory.parents:
            raise BundleError(f"member directory {m['dir']!r} is outside the bundle", file=str(path / META_FILE))
        sub_manifest = {**manifest, "flavor": m["flavor"], "flavor_plugin": m["flavor_plugin"], "task": m["task"],
                        "features": m["features"], "params": m.get("params", {})}
        estimator = models.load(m["flavor"], m["flavor_plugin"], directory, sub_manifest,
                                where=f"member {m['name']} of the ensemble in {path}")
        members.append((m["name"], m["task"], tuple(m["features"]), estimator))
    return EnsembleEstimator(members=members, references=meta["references"], weights=[float(w) for w in meta["weights"]],
                             combine=meta["combine"], cut=float(meta["cut"]), task=meta["task"],
                             flavors=[m["flavor"] for m in meta["members"]])


@hookimpl
def compile_predict(model: LoadedModel, threads: int) -> FastPredict | None:
    """The ensemble on `opsloop serve`'s fast path: each member's own compiled predict (asked of the plugins
    through the same hook) on its columns, ranked and combined as `EnsembleEstimator` does; NoFastPath naming
    the first member that has none."""
    if model.manifest.get("flavor") != FLAVOR:
        return None
    import numpy as np

    from opsloop.errors import PluginCallError
    from opsloop.rowops import NoFastPath

    est: EnsembleEstimator = model.estimator
    position = {name: i for i, name in enumerate(model.features)}
    compiled = []
    for (name, task, features, estimator), flavor in zip(est.members, est.flavors, strict=True):
        member = attrs.evolve(model, estimator=estimator, manifest={**model.manifest, "flavor": flavor, "task": task,
                                                                     "features": list(features)})
        try:
            _, fast = model.plugins.first("compile_predict", model=member, threads=threads)
        except PluginCallError as exc:
            if isinstance(exc.cause, NoFastPath):
                raise NoFastPath(f"ensemble member {name}: {exc.cause}") from None
            raise
        if fast is None:
            raise NoFastPath(f"ensemble member {name} (flavor {flavor}) has no fast predict")
        compiled.append((fast, np.asarray([position[f] for f in features], dtype=np.intp)))
    classes = np.array([0, 1])
    references = [{**ref, "levels": np.asarray(ref["levels"], dtype="float64"),
                   "quantiles": np.asarray(ref["quantiles"], dtype="float64")} for ref in est.references]  # once

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ranks = np.column_stack([rank(fast(x[:, columns])[1], ref)
                                 for (fast, columns), ref in zip(compiled, references, strict=True)])
        score = centre(est.combine_ranks(ranks), est.cut)
        above = score > 0.5
        return (classes[above.astype(np.intp)] if est.task == "classification" else above.astype("int8")), score

    return predict

