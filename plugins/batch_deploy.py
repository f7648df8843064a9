"""Batch scoring: score a CSV or Parquet file with a version, in chunks, into a predictions file.

The `batch` deploy target reads its input in chunks of `chunk_rows` rows
(Parquet through `pyarrow.parquet.ParquetFile.iter_batches`, CSV through
`pandas.read_csv(chunksize=...)`), replays the bundle's preprocessing and
scores each chunk with `model.predict`, and appends the result to the output
file, so memory stays bounded by the chunk size whatever the file's size.
The output is written to a temporary file next to the target and moved into
place with `os.replace`: a crash never leaves half a predictions file.

Output columns: the input's series and time columns (when the bundle names
them and the input has them), any `keep` columns, `prediction`, `score` (for
classifiers and anomaly detectors) and `model` (`name:version`).

Windowed features (`rolling-features`) need the previous rows of each series.
Chunked scoring carries the last rows of every series from one chunk to the
next (the largest window in rows plus one, and for windows in time the rows
of the longest duration plus the one before them, read from the bundle's
steps; or `carry_rows`), so the features, and the predictions, equal those of
scoring the whole file at once, provided each series' rows come in time order.

Each deploy records the file it wrote in `.opsloop/deploy/batch/<name>.json`
(version, rows, time; through `opsloop.deployrecord`): `deploy_status` (`opsloop deploy status`) reports the
newest and whether it is still there; `undeploy` (`opsloop deploy remove`)
deletes the files recorded there and the record, and nothing else: it refuses,
deleting nothing, when a recorded file is outside where this target writes
(the default `.opsloop/predictions/` or the configured `output`). The rows it
logged to the prediction log stay: they are the monitoring history.

The records change under one lock (`flock` on `.opsloop/deploy/batch/.lock`,
released by the kernel when a process dies), so concurrent deploys and removes
(two runs, a loop and a run) never lose an entry, and each record is replaced
atomically, so a reader never sees half of one. A deploy records its file
before moving it into place, naming the temporary file as `pending`, and
clears `pending` after the move: a crash in between leaves an entry that
status reports as unfinished and remove cleans up, never a file the record
does not name. A file that another model's record names (a shared `output`)
is taken over: it now holds this model's predictions, so only this model's
remove deletes it.

Options (`[deploy.batch]`):
    input: File to score (.csv, .tsv, .parquet; relative to the working
        directory). Default: the rows the run is about to monitor.
    output: Predictions file (.parquet or .csv). Default
        `.opsloop/predictions/<name>-v<version>.parquet`.
    chunk_rows: Rows per chunk (default 100000).
    carry_rows: Rows per series carried between chunks; default: what the
        bundle's windowed steps reach (their largest window in rows plus
        one, the rows of their longest duration); 0 if none.
    keep: Extra input columns copied to the output (ids, labels).
    log_predictions: Also write every prediction to the prediction log
        that `opsloop serve` writes (default true), so that `opsloop
        feedback` joins labels to batch predictions by request id (one per
        run: `batch-...`, in the deployment's details) and row, or by series
        and time.
    log_path: The prediction log. Default: the server's for this working
        directory, `.opsloop/serving/predictions.db`.
    log_retention: Delete logged predictions and labels older than this
        when the run's rows are written ("30d", "12h" or seconds; default "0":
        keep all).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import Deployment, hookimpl
from opsloop.errors import DataError
from opsloop.rowops import carried
from opsloop.deployrecord import DeployRecord, temporary, unfinished
from opsloop.types import DeploymentStatus
from opsloop.serving.settings import bounded, retention

if TYPE_CHECKING:
    import pandas as pd
    from opsloop.bundle import LoadedModel
    from opsloop.types import Dataset, ModelVersion, RunContext

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
INPUT_SUFFIXES = (*PARQUET_SUFFIXES, *CSV_SUFFIXES, ".tsv", ".csv.gz", ".tsv.gz")
#: Preprocess steps known to look at previous rows of a series.
WINDOWED_STEPS = ("rolling-features",)
PLUGIN = "batch"
#: Where batch writes by default; `undeploy` deletes nothing outside it (or the configured output).
DEFAULT_DIR = Path(".opsloop") / "predictions"


def _output_suffix(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not value.lower().endswith((*PARQUET_SUFFIXES, *CSV_SUFFIXES)):
        raise ValueError(f"{attribute.name} {value!r} must end in .parquet, .pq or .csv")


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `batch` deploy target (`[deploy.batch]`).

    Attributes:
        input: File to score: .csv, .tsv or .parquet (optionally .gz for
            text), relative to the working directory. None scores the rows
            the run is about to monitor.
        output: Where predictions go: .parquet/.pq or .csv, relative to the
            working directory. None: `.opsloop/predictions/<name>-v<version>.parquet`.
        chunk_rows: Rows read, scored and written at a time; bounds memory.
        carry_rows: Rows per series carried from one chunk into the next, so
            windowed features see the past. None: what the bundle's windowed
            steps reach: their largest window in rows plus one, and for
            durations ("1h") the rows of that last hour of each series plus
            the one before (nothing when there is no windowed step).
        keep: Extra input columns copied into the output, e.g. an id or the label.
        log_predictions: Write every prediction to the prediction log too
            (request id, row, series, time, inputs, prediction, score, model,
            version), as `opsloop serve` does, for feedback and monitoring.
        log_path: The prediction log, relative to the working directory.
            None: the server's default, `.opsloop/serving/predictions.db`.
        log_retention: Delete logged rows older than this ("30d", "12h";
            "0": keep everything), applied when the run's rows are written.
    """

    input: str | None = None
    output: str | None = attrs.field(default=None, validator=_output_suffix)
    chunk_rows: int = attrs.field(default=100_000, validator=attrs.validators.gt(0))
    carry_rows: int | None = attrs.field(default=None,
                                         validator=attrs.validators.optional(attrs.validators.ge(0)))
    keep: list[str] = attrs.field(factory=list)
    log_predictions: bool = True
    log_path: str | None = None
    # A duration ("30d") or seconds as written in TOML; seconds (a number) once converted.
    log_retention: str | float = attrs.field(default="0", converter=retention, validator=bounded("log_retention"))


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Options | None,
           run: RunContext) -> Deployment:
    """Score `options.input` (or `dataset`) with `model` into the predictions file."""
    options = options or Options()
    start = time.perf_counter()
    workdir = Path(run.workdir)
    manifest = model.manifest
    keys = [c for c in (manifest.get("series"), manifest.get("time")) if c]
    wanted = [c["name"] for c in manifest["input_schema"]]
    carry, carry_seconds = ((options.carry_rows, 0.0) if options.carry_rows is not None
                            else window_reach(manifest, model.plugins))

    source: Path | str
    if options.input is not None:
        source = _resolve(options.input, workdir)
        chunks, total = _file_chunks(source, model, [*wanted, *options.keep], options.chunk_rows)
    elif dataset is not None:
        source = dataset.name or "the monitoring period"
        _check_columns(list(dataset.frame.columns), [*wanted, *options.keep], source)
        chunks, total = _frame_chunks(dataset.frame, options.chunk_rows)
    else:
        raise DataError("batch: nothing to score: set [deploy.batch] input to a .csv or .parquet file "
                        "(the run has no monitoring period to score instead)")

    output = _resolve(options.output, workdir) if options.output else \
        workdir / DEFAULT_DIR / f"{version.name}-v{version.version}.parquet"
    batch_log = _open_log(options, version, manifest, wanted, workdir, run.config)  # a bad log path fails before scoring
    scored = _score(model, chunks, carry=carry, carry_seconds=carry_seconds, series=manifest.get("series"),
                    time_col=manifest.get("time"), source=str(source))
    if batch_log is not None:
        scored = _logged(scored, batch_log)
    columns = list(dict.fromkeys([*keys, *options.keep]))
    tmp: Path | None = None
    try:
        tmp, rows, count = _write(output, (_output_frame(frame, preds, columns, version.ref)
                                           for frame, preds in run.reporter.track(scored, "batch scoring",
                                                                                  total=total)),
                                  empty=_empty_output(columns, model.task))
    finally:
        try:
            if batch_log is not None:
                batch_log.close()
        except BaseException:  # the rows may not all be logged: no predictions file then
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
    seconds = time.perf_counter() - start
    run.log.info("batch: scored %d rows of %s in %d chunk(s), %.2f s -> %s", rows, source, count, seconds, output)
    details: dict[str, Any] = {"rows": rows, "seconds": round(seconds, 3), "chunks": count}
    if carry:
        details["carry_rows"] = carry
    if carry_seconds:
        details["carry_seconds"] = carry_seconds
    if batch_log is not None:
        details.update(logged=batch_log.rows, request_id=batch_log.request_id, log=str(batch_log.path))
        if batch_log.pruned:
            details["log_pruned"] = batch_log.pruned
        run.log.info("batch: logged %d predictions as request %s in %s", batch_log.rows, batch_log.request_id,
                     batch_log.path)
    entry: dict[str, Any] = {"path": os.path.abspath(output), "version": version.ref, "rows": rows}
    if details.get("request_id"):
        entry["request_id"] = details["request_id"]
    # Recorded (naming the temporary file as pending), moved into place, recorded as done: under one lock.
    written = tmp
    DeployRecord(PLUGIN, workdir).commit(version.name, entry, run, pending=written,
                                         place=lambda: _place(written, output))
    return Deployment(target="batch", model=version.ref, location=os.path.abspath(output), details=details)


# ---------------------------------------------------------------------------
# What was written: status and undeploy (the record: opsloop.deployrecord)
# ---------------------------------------------------------------------------


@hookimpl
def deploy_status(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """The newest predictions file a batch deploy wrote for `model_name`, and whether it is still there."""
    record = DeployRecord(PLUGIN, run.workdir)
    files = record.read(model_name)  # no lock: records are replaced whole
    if not files:
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False)
    last = files[-1]
    present = [f["path"] for f in files if os.path.isfile(f["path"]) and not unfinished(f)]
    details: dict[str, Any] = {k: last[k] for k in ("rows", "written_at", "run_id", "request_id") if k in last}
    details.update(files=present, record=str(record.path(model_name)))
    if unfinished(last):
        details["unfinished"] = (f"the deploy of {last.get('version')} by run {last.get('run_id')} has not put "
                                 f"{last['path']} in place (still running, or it stopped: {last['pending']})")
    elif last["path"] not in present:
        details["missing"] = last["path"]
    return DeploymentStatus(target=PLUGIN, model=model_name, deployed=last["path"] in present,
                            version=last.get("version"), location=last["path"], details=details)


@hookimpl
def undeploy(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Delete the predictions files recorded for `model_name`, then the record, under the records' lock;
    refuse any file outside where this target writes (deleting nothing)."""
    options = options or Options()
    workdir = Path(run.workdir)
    configured = _resolve(options.output, workdir).resolve() if options.output else None
    return DeployRecord(PLUGIN, workdir).remove(model_name, run, root=workdir / DEFAULT_DIR, configured=configured)


def _open_log(options: Options, version: ModelVersion, manifest: Mapping[str, Any], columns: list[str],
              workdir: Path, config: Any = None) -> Any:
    """The run's writer into the prediction log (None when logging is off); `[data] sensitive` columns of
    `config` are not logged as they are (docs/data.md)."""
    if not options.log_predictions:
        return None
    from opsloop.sensitive import Sensitive
    from opsloop.serving.batchlog import BatchLog
    from opsloop.serving.settings import Settings

    path = Settings(log_path=_resolve(options.log_path, workdir) if options.log_path else None) \
        .resolve(workdir.absolute()).log_path
    return BatchLog(path, request_id=f"batch-{uuid.uuid4().hex[:16]}", model=version.name,  # type: ignore[arg-type]
                    version=version.version, columns=columns, series=manifest.get("series"),
                    time=manifest.get("time"), retention=float(options.log_retention),
                    sensitive=Sensitive.from_config(config, workdir) if config is not None else None)


def _logged(scored: Iterator[tuple[pd.DataFrame, pd.DataFrame]],
            batch_log: Any) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Log each scored chunk as it passes (written beside the scoring; a log failure leaves no predictions file)."""
    for frame, preds in scored:
        batch_log.add(frame, preds["prediction"].to_numpy(), preds["score"].to_numpy() if "score" in preds else None)
        yield frame, preds
    batch_log.flush()  # every row logged before the predictions file is put in place


# ---------------------------------------------------------------------------
# Reading in chunks
# ---------------------------------------------------------------------------


def _resolve(path_text: str, workdir: Path) -> Path:
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else workdir / path


def _check_columns(present: list[str], wanted: list[str], source: object) -> None:
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        raise DataError(f"batch: {source} lacks column(s) {', '.join(missing)} that the model needs "
                        f"(it has: {', '.join(map(str, present))})")


def _frame_chunks(frame: pd.DataFrame, chunk_rows: int) -> tuple[Iterator[pd.DataFrame], int]:
    total = -(-len(frame) // chunk_rows)
    return (frame.iloc[i:i + chunk_rows] for i in range(0, len(frame), chunk_rows)), total


def _file_chunks(path: Path, model: LoadedModel, columns: list[str],
                 chunk_rows: int) -> tuple[Iterator[pd.DataFrame], int | None]:
    """Chunks of the needed columns of a file, in file order, dtypes as in the model's input schema."""
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"batch: input file not found: {path}")
    if not name.endswith(INPUT_SUFFIXES):
        raise DataError(f"batch: unsupported input file {path}: use .csv, .tsv or .parquet")
    columns = list(dict.fromkeys(columns))
    schema = {c["name"]: c["dtype"] for c in model.manifest["input_schema"]}
    if name.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
            raise DataError(f"batch: cannot read {path}: {exc}") from exc
        _check_columns(parquet.schema_arrow.names, columns, path)
        total = -(-parquet.metadata.num_rows // chunk_rows)
        batches = parquet.iter_batches(batch_size=chunk_rows, columns=columns)
        return (_conform(b.to_pandas(), schema, path) for b in batches), total
    import pandas as pd

    sep = "\t" if ".tsv" in name else ","
    try:
        header = list(pd.read_csv(path, sep=sep, nrows=0).columns)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError...
        raise DataError(f"batch: cannot read {path}: {exc}") from exc
    _check_columns(header, columns, path)

    def chunks() -> Iterator[pd.DataFrame]:
        try:
            with pd.read_csv(path, sep=sep, usecols=columns, chunksize=chunk_rows) as reader:
                for chunk in reader:
                    yield _conform(chunk[columns], schema, path)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"batch: cannot read {path}: {exc}") from exc

    return chunks(), None


def _conform(frame: pd.DataFrame, schema: Mapping[str, str], path: Path) -> pd.DataFrame:
    """Cast columns to the dtypes the model was trained on (CSV gives float64 and text dates)."""
    import pandas as pd

    changes = {}
    for column, dtype in schema.items():
        if column not in frame.columns or str(frame[column].dtype) == dtype:
            continue
        try:
            if dtype.startswith("datetime64"):
                changes[column] = pd.to_datetime(frame[column]).astype(dtype)
            else:
                changes[column] = frame[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise DataError(f"batch: {path}: column {column!r} cannot be read as {dtype} "
                            f"(the model's input schema): {exc}") from None
    return frame.assign(**changes) if changes else frame


# ---------------------------------------------------------------------------
# Scoring with carry-over
# ---------------------------------------------------------------------------


def window_rows(manifest: Mapping[str, Any], plugins: Any = None) -> int:
    """Rows of the past a chunk needs: the largest window in rows of the bundle's steps plus one (0: none)."""
    return window_reach(manifest, plugins)[0]


def window_reach(manifest: Mapping[str, Any], plugins: Any = None) -> tuple[int, float]:
    """How far back a chunk's rows look: (previous rows plus one, seconds), over the bundle's steps.

    A step says it through the `window_reach` hook (`rolling-features`
    does). A step without the hook may declare `max_window` (rows) in its
    state, or list `windows` (or a `window`) in its state or options: whole
    numbers are rows, strings are durations ("1h") on the time column.
    """
    rows, seconds = 0, 0.0
    for step in manifest.get("steps", []):
        name, state, opts = step.get("plugin"), step.get("state") or {}, step.get("options") or {}
        if plugins is not None and name in plugins.known and plugins.implements(name, "window_reach"):
            reach = plugins.call(name, "window_reach", state=state, options=None)
            if reach:
                rows, seconds = max(rows, reach.rows + 1 if reach.rows else 0), max(seconds, reach.seconds)
            continue
        found: list[int | float] = [int(state["max_window"])] if "max_window" in state else []
        if not found:
            found = _window_sizes(state) or _window_sizes(opts)
            if not found and name in WINDOWED_STEPS:
                raise DataError(f"batch: step {name!r} of the bundle needs past rows but states "
                                "no window size; set [deploy.batch] carry_rows")
        counts = [int(w) for w in found if isinstance(w, int)]
        if counts:
            rows = max(rows, max(counts) + 1)
        seconds = max([seconds, *(w for w in found if isinstance(w, float))])
    return rows, seconds


def _window_sizes(table: Any) -> list[int | float]:
    """Every window under a key that mentions "window", at any depth: integers (rows), durations (seconds)."""
    from opsloop.monitoring import _DURATION, parse_duration

    sizes: list[int | float] = []
    if isinstance(table, Mapping):
        for key, value in table.items():
            if "window" in str(key).lower():
                values = value if isinstance(value, (list, tuple)) else [value]
                sizes.extend(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
                sizes.extend(parse_duration(v).total_seconds() for v in values
                             if isinstance(v, str) and _DURATION.fullmatch(v))
            elif isinstance(value, (Mapping, list, tuple)):
                sizes.extend(_window_sizes(value))
    elif isinstance(table, (list, tuple)):
        for item in table:
            sizes.extend(_window_sizes(item))
    return sizes


def _score(model: LoadedModel, chunks: Iterator[pd.DataFrame], *, carry: int, series: str | None,
           time_col: str | None, source: str, carry_seconds: float = 0.0) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(chunk, predictions) per chunk; with `carry`, each chunk is scored behind the previous rows."""
    import pandas as pd

    past: pd.DataFrame | None = None
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        if not len(chunk):
            continue
        if (carry or carry_seconds) and past is not None and len(past):
            _check_order(past, chunk, series, time_col, source)
            frame = pd.concat([past, chunk], ignore_index=True)
        else:
            frame = chunk
        preds = model.predict(frame)
        preds = preds.iloc[len(frame) - len(chunk):].reset_index(drop=True)
        if carry or carry_seconds:
            past = carried(frame, carry, carry_seconds, series, time_col)
        yield chunk, preds


def _check_order(past: pd.DataFrame, chunk: pd.DataFrame, series: str | None, time_col: str | None,
                 source: str) -> None:
    """Carried rows are only the right past if each series' rows come in time order."""
    if not time_col or time_col not in chunk:
        return
    if series and series in chunk:
        last = past.groupby(series, sort=False, dropna=False)[time_col].max()
        first = chunk.groupby(series, sort=False, dropna=False)[time_col].min()
        both = first.index.intersection(last.index)
        late = [s for s in both if first[s] < last[s]]
    else:
        late = ["(all rows)"] if chunk[time_col].min() < past[time_col].max() else []
    if late:
        raise DataError(f"batch: {source} is not in time order within series {', '.join(map(str, late[:5]))}: "
                        "windowed features need each series' rows in time order across chunks; sort the file "
                        f"by {', '.join(c for c in (series, time_col) if c)}")


# ---------------------------------------------------------------------------
# Writing atomically
# ---------------------------------------------------------------------------


def _output_frame(frame: pd.DataFrame, preds: pd.DataFrame, columns: list[str], ref: str) -> pd.DataFrame:
    out = frame[[c for c in columns if c in frame.columns]].copy()
    for column in ("prediction", "score"):
        if column in preds:
            out[column] = preds[column].to_numpy()
    out["model"] = ref
    return out


def _empty_output(columns: list[str], task: str) -> pd.DataFrame:
    import pandas as pd

    names = [*columns, "prediction", *(["score"] if task != "regression" else []), "model"]
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("prediction", "score") else "object")
                         for c in names})


def _write(output: Path, frames: Iterator[pd.DataFrame], *, empty: pd.DataFrame) -> tuple[Path, int, int]:
    """Write frames one after another into a temporary file beside `output`; (that file, rows, chunks).

    `deploy` moves it into place (`_place`, atomically) once it is recorded; on failure here it is deleted."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(output)
    rows = count = 0
    try:
        if output.name.lower().endswith(CSV_SUFFIXES):
            for frame in frames:
                frame.to_csv(tmp, mode="a" if count else "w", header=not count, index=False)
                rows, count = rows + len(frame), count + 1
            if not count:
                empty.to_csv(tmp, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            try:
                for frame in frames:
                    if writer is None:
                        table = pa.Table.from_pandas(frame, preserve_index=False)
                        writer = pq.ParquetWriter(tmp, table.schema)
                    else:
                        table = pa.Table.from_pandas(frame, schema=writer.schema, preserve_index=False)
                    writer.write_table(table)
                    rows, count = rows + len(frame), count + 1
                if writer is None:
                    pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), tmp)
            finally:
                if writer is not None:
                    writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, rows, count


def _place(tmp: Path, output: Path) -> None:
    """Move the finished predictions file into place (on failure, remove it: no stray temporary file)."""
    try:
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
