"""What an opsloop run's stages produced, as MLflow parameters, metrics and tags (no I/O, no MLflow import).

Key names (docs/contrib/mlflow.md has the full list):

- parameters: the config, flattened (`data.source`, `project.seed`,
  `train.plugins`, `train.xgboost.max_depth`), the preprocess steps' options
  as they ran (`preprocess.impute.strategy`, defaults included), and the
  fitted model's hyper-parameters (`model.max_depth`);
- metrics, named after the stage that produced them: `validate.<validator>.
  <metric>` (the mean over folds), `...<metric>.std`, and `validate.
  <validator>.fold.<metric>` with one step per fold; `monitor.<monitor>.
  <metric>` with one step per monitored window; `alerting.threshold`;
  `seconds.<stage>`; `monitor.<monitor>.report.rows` and `.report.alerts`
  (how many alert sentences the report had). A retrain's stages are prefixed `retrain.`, as opsloop
  names them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opsloop_mlflow._client import redact

#: MLflow's limits (mlflow.utils.validation): key length, parameter and tag value length.
MAX_KEY = 250
MAX_PARAM = 6000
MAX_TAG = 8000
#: Config sections logged as parameters; `[plugins]` (this plugin's own table) is left out. No URI keeps its
#: password (`scrub`).
PARAM_SECTIONS = ("project", "data", "store", "preprocess", "train", "validate", "alerting", "deploy", "monitor",
                  "retrain", "gate", "loop", "tune")

_BAD = re.compile(r"[^\w\-. /]")

Metric = tuple[str, float, int]


def key(*parts: object) -> str:
    """A dotted MLflow key from parts, characters MLflow refuses replaced by `_`."""
    return _BAD.sub("_", ".".join(str(p) for p in parts if p != ""))[:MAX_KEY]


def text(value: Any, limit: int = MAX_PARAM) -> str:
    """A parameter or tag value: strings as they are, anything else as JSON; cut at MLflow's limit."""
    out = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return out if len(out) <= limit else out[:limit - 3] + "..."


def flatten(prefix: str, table: Mapping[str, Any]) -> dict[str, str]:
    """`{"xgboost": {"max_depth": 4}}` under `train` -> `{"train.xgboost.max_depth": "4"}`; lists as JSON."""
    out: dict[str, str] = {}
    for name, value in table.items():
        if isinstance(value, Mapping):
            out.update(flatten(key(prefix, name), value))
        else:
            out[key(prefix, name)] = text(value)
    return out


def scrub(value: Any) -> Any:
    """A config (or lineage) with every URI's password shown as `***` (`[store] uri =
    "postgresql://user:password@db/models"`): what opsloop keeps in its own store is not copied to MLflow's."""
    if isinstance(value, str):
        return redact(value) if "@" in value and "://" in value else value
    if isinstance(value, Mapping):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def config_params(table: Mapping[str, Any]) -> dict[str, str]:
    """The run's config as parameters, passwords hidden (preprocess steps' own tables come later, as they
    ran)."""
    out: dict[str, str] = {}
    for section in PARAM_SECTIONS:
        body = table.get(section)
        if not isinstance(body, Mapping):
            continue
        if section == "preprocess":
            body = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        out.update(flatten(section, scrub(body)))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def figures(prefix: str, values: Mapping[str, Any], step: int = 0) -> list[Metric]:
    """Numeric entries of a mapping as metrics `<prefix>.<name>` (NaN kept: MLflow stores it)."""
    return [(key(prefix, name), number, step) for name, value in values.items()
            if (number := _number(value)) is not None]


def validation(stage: str, names: list[str], reports: Iterable[Any]) -> list[Metric]:
    """Each validator's mean and std over folds, and each fold's figures as steps of `.fold.` metrics."""
    out: list[Metric] = []
    for index, report in enumerate(reports):
        name = names[index] if index < len(names) else f"validator{index}"
        base = key(stage, name)
        out += figures(base, report.mean)
        out += [(f"{k}.std", v, s) for k, v, s in figures(base, report.std)]
        for step, fold in enumerate(report.folds):
            out += figures(key(base, "fold"), fold, step)
    return out


def monitoring(stage: str, reports: Iterable[Any], step: int) -> list[Metric]:
    """Each monitor's figures, and the report's rows and number of alert sentences (`.report.rows`,
    `.report.alerts`: a monitor's own figures may be called `rows` or `alerts`), at `step` (the window's
    number in this run)."""
    out: list[Metric] = []
    for report in reports:
        base = key(stage, report.monitor or "monitor")
        out += figures(base, report.metrics, step)
        out += [(key(base, "report", "rows"), float(report.rows), step),
                (key(base, "report", "alerts"), float(len(report.alerts)), step)]
    return out


def gating(stage: str, verdicts: Iterable[Any]) -> list[Metric]:
    """Each gate's figures: both contenders' primary metric, the margin and its interval, the verdict."""
    out: list[Metric] = []
    for verdict in verdicts:
        base = key(stage, verdict.gate or "gate")
        values = {"champion": verdict.champion, "challenger": verdict.challenger, "margin": verdict.margin,
                  "promote": verdict.winner == "challenger"}
        if verdict.ci is not None:
            values.update(ci_low=verdict.ci[0], ci_high=verdict.ci[1])
        out += figures(base, values) + figures(key(base, "figures"), verdict.figures)
    return out


def step_params(stage: str, steps: Iterable[Any]) -> dict[str, str]:
    """The preprocess steps as they ran: their order and each one's options, defaults included."""
    steps = list(steps)
    out = {key(stage, "plugins"): text([s.plugin for s in steps])}
    for step in steps:
        out[key(stage, step.plugin, "dist")] = text(step.dist)
        out.update(flatten(key(stage, step.plugin), step.options or {}))
    return out


def lineage_tags(version: Any) -> dict[str, str]:
    """A registered version's identity and lineage, flat, for the MLflow run and model version."""
    lineage = version.lineage
    git = lineage.get("git") or {}
    data = lineage.get("data") or {}
    tags = {
        "opsloop.version": version.ref,
        "opsloop.digest": version.digest,
        "opsloop.flavor": version.flavor,
        "opsloop.task": version.task,
        "opsloop.lineage.run_id": lineage.get("run_id"),
        "opsloop.lineage.config_hash": lineage.get("config_hash"),
        "opsloop.lineage.training_key": lineage.get("training_key"),
        "opsloop.lineage.parent": lineage.get("parent"),
        "opsloop.lineage.data.source": data.get("source"),
        "opsloop.lineage.data.fingerprint": data.get("fingerprint"),
        "opsloop.lineage.data.rows": data.get("rows"),
        "opsloop.lineage.data.start": data.get("start"),
        "opsloop.lineage.data.end": data.get("end"),
        "opsloop.lineage.git.commit": git.get("commit"),
        "opsloop.lineage.git.dirty": git.get("dirty"),
        "opsloop.lineage.opsloop": (lineage.get("versions") or {}).get("opsloop"),
    }
    if version.threshold:
        tags["opsloop.threshold"] = version.threshold.get("value")
    return {k: text(v, MAX_TAG) for k, v in tags.items() if v is not None and v != ""}


def lineage_document(version: Any) -> dict[str, Any]:
    """The version as `opsloop models show --json` describes it: the lineage artifact's content."""
    return {"ref": version.ref, "name": version.name, "version": version.version, "created_at": version.created_at,
            "created_by": version.created_by, "flavor": version.flavor, "task": version.task,
            "digest": version.digest, "metrics": _json_safe(dict(version.metrics)),
            "params": dict(version.params), "threshold": version.threshold, "lineage": scrub(dict(version.lineage))}


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities as null: the artifact is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
