"""`dask-batch`: score partitioned Parquet on a Dask cluster with a version's bundle, one task per partition.

The deploy target reads `input` (a Parquet file, a directory of Parquet
files such as a Hive-partitioned dataset, or a glob) with
`dask.dataframe.read_parquet`, and scores every partition on a worker: the
worker loads the version's bundle (its files travel with the tasks and are
checked against the version's digest there, so workers need opsloop and the
bundle's plugins installed, not the registry), replays its preprocessing and
predicts. Each partition's predictions are written as one Parquet file into
`output`, a directory that replaces the previous one only when every
partition is written (what the previous one held besides its part files is
moved into the new one).

Windowed features (`rolling-features`) read the previous rows of each series.
A partition is scored behind the rows its windows reach from the partitions
before it: the last rows of every series (what the bundle's steps say
through the `window_reach` hook, as the `batch` target carries them from one
chunk to the next), handed from partition to partition by a chain of small
tasks. The features, and so the predictions, are those of scoring the whole
input at once, provided the partitions come in time order within each series
(one file per day, in name order, for example); a partition that goes back in
time within a series is a DataError naming it.

Each deploy records the files it wrote (opsloop_dask.record, on opsloop.deployrecord): `deploy_status` (`opsloop deploy status`)
reports the newest directory and whether all its files are there; `undeploy` (`opsloop deploy remove`)
deletes exactly those files, a directory they leave empty and the record, nothing else, and refuses (deleting
nothing) a recorded directory outside where this target writes.

Options (`[deploy.dask-batch]`): the cluster's (`scheduler`, ...), and
input, output, carry_rows, keep, partition_rows; see `Options`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop import Deployment, hookimpl
from opsloop.deployrecord import temporary
from opsloop.errors import DataError

from opsloop_dask import record
from opsloop_dask.cluster import ClusterOptions, client_for, documented, where

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.bundle import LoadedModel
    from opsloop.types import Dataset, DeploymentStatus, ModelVersion, RunContext

PLUGIN = "dask-batch"


@documented
@attrs.frozen(kw_only=True)
class Options(ClusterOptions):
    """Options of `dask-batch` (`[deploy.dask-batch]`), besides the cluster's.

    Attributes:
        input: Parquet to score, relative to the working directory: a file,
            a directory of Parquet files (read in name order), or a glob.
            Every worker must be able to read it. None: the rows the run is
            about to monitor, split into partitions of `partition_rows`.
        output: Directory of predictions, one Parquet file per partition
            (`part-00000.parquet`, ...), which every worker must be able to
            write. None: `.opsloop/predictions/<name>-v<version>/`.
        carry_rows: Rows per series carried into the next partition. None:
            what the bundle's windowed steps reach (their `window_reach`).
        keep: Extra input columns copied into the output.
        partition_rows: Rows per partition when scoring the run's rows.
    """

    input: str | None = None
    output: str | None = None
    carry_rows: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))
    keep: list[str] = attrs.field(factory=list)
    partition_rows: int = attrs.field(default=100_000, validator=attrs.validators.gt(0))


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Options | None,
           run: RunContext) -> Deployment:
    """Score `options.input` (or the run's monitoring rows) on the cluster into a directory of Parquet."""
    import dask

    options = options or Options()
    start = time.perf_counter()
    workdir = Path(run.workdir)
    manifest = model.manifest
    series, time_col = manifest.get("series"), manifest.get("time")
    schema = {c["name"]: c["dtype"] for c in manifest["input_schema"]}
    needed = list(dict.fromkeys([*schema, *options.keep]))
    rows, seconds = (options.carry_rows, 0.0) if options.carry_rows is not None else reach(model)
    output = _resolve(options.output, workdir) if options.output else \
        workdir / record.DEFAULT_DIR / f"{version.name}-v{version.version}"

    client = client_for(options, PLUGIN)
    frame = _read(options, dataset, needed, workdir)
    source = options.input or (dataset.name if dataset is not None else "")
    parts = frame.to_delayed()
    staged, aside = temporary(output, "tmp"), temporary(output, "old")  # both named in the record before the swap
    staged.mkdir(parents=True)
    try:
        bundle = client.scatter([bundle_files(model)], broadcast=True, hash=False)[0]  # one object, not a dict
        keys = list(dict.fromkeys([c for c in (series, time_col) if c] + options.keep))
        job = dict(schema=schema, series=series, time_col=time_col, rows=rows, seconds=seconds, keys=keys,
                   ref=version.ref, digest=version.digest, source=str(source))
        carry_task, score_task = dask.delayed(_carry, pure=True), dask.delayed(_score_partition, pure=True)
        past = None
        tasks = []
        for index, part in enumerate(parts):
            tasks.append(score_task(bundle, part, past, str(staged / f"part-{index:05d}.parquet"), index, job))
            if (rows or seconds) and index + 1 < len(parts):
                past = carry_task(past, part, job, index)
        with client.as_current():
            counts = dask.compute(*tasks)
        written = [f"part-{i:05d}.parquet" for i, count in enumerate(counts) if count]
        # Into place and into the record under one lock: a concurrent deploy of the model keeps its entry.
        record.commit(workdir, version.name, {"path": os.path.abspath(output), "files": written,
                                              "version": version.ref, "rows": int(sum(counts)),
                                              "partitions": len(parts)},
                      run, [staged, aside], put=lambda: _replace(staged, output, aside))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    total = int(sum(counts))
    elapsed = time.perf_counter() - start
    run.log.info("%s: scored %d rows of %s in %d partition(s) on %s, %.2f s -> %s", PLUGIN, total, source,
                 len(parts), where(options), elapsed, output)
    details: dict[str, Any] = {"rows": total, "partitions": len(parts), "seconds": round(elapsed, 3),
                               "cluster": where(options), "files": sum(1 for c in counts if c)}
    if rows:
        details["carry_rows"] = rows
    if seconds:
        details["carry_seconds"] = seconds
    return Deployment(target=PLUGIN, model=version.ref, location=os.path.abspath(output), details=details)


@hookimpl
def deploy_status(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """The newest directory a deploy wrote for `model_name`, and whether every file of it is still there."""
    return record.status(Path(run.workdir), model_name)


@hookimpl
def undeploy(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Delete the files the deploys of `model_name` wrote (nothing else), then the record; refuse, deleting
    nothing, a recorded directory outside where this target writes."""
    options = options or Options()
    workdir = Path(run.workdir)
    return record.remove(workdir, model_name, _resolve(options.output, workdir) if options.output else None, run)


def reach(model: LoadedModel) -> tuple[int, float]:
    """How far back a partition's rows look, over the bundle's steps: (previous rows plus one, seconds), as the
    steps say through the `window_reach` hook; a step without it may state `max_window` (rows) in its state."""
    rows, seconds = 0, 0.0
    plugins = model.plugins
    for step in model.manifest.get("steps", []):
        name, state = step.get("plugin"), step.get("state") or {}
        if name in plugins.known:
            plugins.load(name, where=f"bundle {model.ref}")
            if plugins.implements(name, "window_reach"):
                found = plugins.call(name, "window_reach", state=state, options=None)
                if found:
                    rows, seconds = max(rows, found.rows + 1 if found.rows else 0), max(seconds, found.seconds)
                continue
        if "max_window" in state:
            rows = max(rows, int(state["max_window"]) + 1)
    return rows, seconds


def bundle_files(model: LoadedModel) -> dict[str, bytes]:
    """Every file of the bundle (the manifest and the files it lists), by relative path."""
    root = Path(model.path)
    names = ["manifest.json", *model.manifest.get("files", {})]
    return {name: (root / name).read_bytes() for name in names}


def _resolve(path_text: str, workdir: Path) -> Path:
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else workdir / path


def _read(options: Options, dataset: Dataset | None, needed: list[str], workdir: Path) -> Any:
    """The rows to score as a Dask DataFrame of the needed columns, partitions in input order."""
    import dask.dataframe as dd

    if options.input is None:
        if dataset is None:
            raise DataError(f"{PLUGIN}: nothing to score: set [deploy.{PLUGIN}] input to Parquet (a file, a "
                            "directory or a glob); the run has no monitoring period to score instead")
        _check_columns(list(dataset.frame.columns), needed, dataset.name or "the monitoring period")
        frame = dataset.frame[needed].reset_index(drop=True)
        return dd.from_pandas(frame, npartitions=max(1, -(-len(frame) // options.partition_rows)), sort=False)
    text = options.input
    path = _resolve(text, workdir)
    if not any(ch in text for ch in "*?[") and not path.exists():
        raise DataError(f"{PLUGIN}: input not found: {path}")
    try:
        frame = dd.read_parquet(str(path))
    except Exception as exc:  # pyarrow and fsspec raise many kinds; all mean "unreadable"
        raise DataError(f"{PLUGIN}: cannot read Parquet from {path}: {_first_line(exc)}") from None
    _check_columns(list(frame.columns), needed, path)
    return frame[needed]


def _check_columns(present: list[str], wanted: list[str], source: object) -> None:
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        raise DataError(f"{PLUGIN}: {source} lacks column(s) {', '.join(missing)} that the model needs "
                        f"(it has: {', '.join(map(str, present))})")


def _replace(staged: Path, output: Path, old: Path) -> None:
    """Put the written directory in place of `output` (a previous run's predictions go only then, moved aside to
    `old` first); what else the old directory held (not `part-NNNNN.parquet`) is moved into the new one, as
    `undeploy` would leave it. Killed half-way, the record names `old`: `record.discard` finishes the job."""
    moved = False
    if output.exists():
        os.replace(output, old)
        moved = True
    os.replace(staged, output)
    if moved:
        for child in old.iterdir():
            if not record.PART.fullmatch(child.name) and not os.path.lexists(output / child.name):
                os.replace(child, output / child.name)
        shutil.rmtree(old, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------
# On the workers
# ---------------------------------------------------------------------------

#: Versions a worker keeps loaded (the newest used): a long-lived cluster scores one version after another.
KEEP_MODELS = 4
_models: dict[str, tuple[Any, Path]] = {}
_models_lock = threading.Lock()


def _worker_model(files: Mapping[str, bytes], ref: str, digest: str) -> Any:
    """The version, loaded once per worker process from its files (checked against `digest`)."""
    key = digest or ref
    with _models_lock:
        known = _models.pop(key, None)
        if known is None:
            from opsloop.bundle import read_bundle
            from opsloop.manager import PluginManager

            root = Path(tempfile.mkdtemp(prefix="opsloop-dask-bundle-"))
            try:
                for name, content in files.items():
                    target = root / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                known = (read_bundle(root, PluginManager(), ref=ref, digest=digest or None), root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
        _models[key] = known  # the newest last
        while len(_models) > KEEP_MODELS:
            oldest = next(iter(_models))
            _, directory = _models.pop(oldest)
            shutil.rmtree(directory, ignore_errors=True)
        return known[0]


def _conform(frame: pd.DataFrame, schema: Mapping[str, str], source: str) -> pd.DataFrame:
    """Columns cast to the dtypes of the model's input schema (Parquet written elsewhere may differ)."""
    import pandas as pd

    changes = {}
    for column, dtype in schema.items():
        if column not in frame.columns or str(frame[column].dtype) == dtype:
            continue
        try:
            changes[column] = (pd.to_datetime(frame[column]).astype(dtype) if dtype.startswith("datetime64")
                               else frame[column].astype(dtype))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{PLUGIN}: {source}: column {column!r} cannot be read as {dtype} (the model's input "
                            f"schema): {exc}") from None
    return frame.assign(**changes) if changes else frame


def _carry(past: pd.DataFrame | None, part: pd.DataFrame, job: Mapping[str, Any], index: int) -> pd.DataFrame:
    """The rows of each series that the next partition's windows reach: the last `rows` of each series and
    every row of the last `seconds` before its newest time, plus the one row before them (opsloop.rowops)."""
    from opsloop.rowops import carried

    frame = _behind(past, _conform(part.reset_index(drop=True), job["schema"], job["source"]), job, index)
    return carried(frame, job["rows"], job["seconds"], job["series"], job["time_col"])


def _behind(past: pd.DataFrame | None, part: pd.DataFrame, job: Mapping[str, Any], index: int) -> pd.DataFrame:
    """`part` behind the carried rows, after checking that no series goes back in time across the boundary."""
    import pandas as pd

    if past is None or not len(past):
        return part
    series, time_col = job["series"], job["time_col"]
    if time_col and time_col in part and len(part):
        if series and series in part:
            last = past.groupby(series, sort=False, dropna=False)[time_col].max()
            first = part.groupby(series, sort=False, dropna=False)[time_col].min()
            both = first.index.intersection(last.index)
            late = [str(s) for s in both if first[s] < last[s]]
        else:
            late = ["(all rows)"] if part[time_col].min() < past[time_col].max() else []
        if late:
            raise DataError(f"{PLUGIN}: partition {index} of {job['source']} goes back in time within series "
                            f"{', '.join(late[:5])}: windowed features need each series' rows in time order "
                            f"across partitions; order the files (or rows) by {time_col}")
    return pd.concat([past, part], ignore_index=True)


def _score_partition(files: Mapping[str, bytes], part: pd.DataFrame, past: pd.DataFrame | None, path: str,
                     index: int, job: Mapping[str, Any]) -> int:
    """Score one partition behind its carried rows and write its predictions to `path`; the rows scored."""
    part = _conform(part.reset_index(drop=True), job["schema"], job["source"])
    if not len(part):
        return 0
    model = _worker_model(files, job["ref"], job["digest"])
    frame = _behind(past, part, job, index)
    preds = model.predict(frame).iloc[len(frame) - len(part):].reset_index(drop=True)
    out = part[[c for c in job["keys"] if c in part.columns]].copy()
    for column in ("prediction", "score"):
        if column in preds:
            out[column] = preds[column].to_numpy()
    out["model"] = job["ref"]
    out.to_parquet(path, index=False)
    return len(part)
