"""The `batch` deploy target's record of the files it wrote: what `opsloop deploy status` reads and `opsloop
deploy remove` deletes (plugins/batch_deploy.py writes the files).

One JSON record per model under `.opsloop/deploy/batch/`, replaced atomically
(a reader sees the old record or the new one, whole), changed under one
flock for all models of the working directory (a deploy may take a shared
`output` over from another model's record), held for milliseconds, never
while scoring. A deploy records its file as `pending` before moving it into
place, so a crash in between leaves a record that names every file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import OpsloopError
from opsloop.types import DeploymentStatus

if TYPE_CHECKING:
    from opsloop.types import ModelVersion, RunContext

RECORD_DIR = Path(".opsloop") / "deploy" / "batch"
#: The lock file in RECORD_DIR: held while records change (flock: released when the holder dies).
LOCK_FILE = ".lock"
#: Where batch writes by default; `remove` deletes nothing outside it (or the configured output).
DEFAULT_DIR = Path(".opsloop") / "predictions"


def _record_path(workdir: Path, model_name: str) -> Path:
    from opsloop.store import check_name

    check_name(model_name, "model name")  # a name never reaches outside the record directory
    return Path(workdir) / RECORD_DIR / f"{model_name}.json"


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    """Hold the lock of every batch record in `workdir`: one deploy or remove changes them at a time, across
    processes. One lock for all models, as a deploy may take a shared `output` over from another model's
    record; it is held for milliseconds (never while scoring). flock, as the local store's reindex does: the
    kernel releases it when the file closes or the process dies, so a crash leaves no stale lock."""
    import fcntl

    directory = Path(workdir) / RECORD_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_record(path: Path, model_name: str, files: list[dict[str, Any]]) -> None:
    """Replace the record atomically (a reader sees the old one or the new one, whole)."""
    import json

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps({"model": model_name, "target": "batch", "files": files}, indent=2) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(tmp: Path, output: Path) -> None:
    """Move the finished predictions file into place (on failure, remove it: no stray temporary file)."""
    try:
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit(workdir: Path, version: ModelVersion, tmp: Path, output: Path, rows: int, request_id: str | None,
            run: RunContext) -> None:
    """Move the predictions file into place and record it, under the records' lock.

    The entry is written first, naming the temporary file as `pending`; then the file is moved into place;
    then the entry is written again without `pending`. A crash in between leaves an entry naming both the
    file and the temporary one, which `deploy_status` reports as unfinished (while the temporary file is
    there) and `undeploy` deletes: the record always names every file a deploy put in place. A rewrite of
    the same path moves its entry last (the temporary file of an earlier, killed deploy there is deleted:
    under the lock, every `pending` entry is a dead deploy's); another model's entry for the path is dropped
    (the file is now this model's). Without a record (a read-only directory), the file is placed all the
    same, with a warning.
    """
    from datetime import UTC, datetime

    path = _record_path(workdir, version.name)
    target = os.path.abspath(output)
    entry: dict[str, Any] = {"path": target, "version": version.ref, "rows": rows, "run_id": run.run_id,
                             "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if request_id:
        entry["request_id"] = request_id
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(workdir))
            before = _read_record(path, run)
            files = [f for f in before if f["path"] != target]
            _write_record(path, version.name, [*files, {**entry, "pending": os.path.abspath(tmp)}])
        except OSError as exc:  # the predictions are fine; only `opsloop deploy status|remove` will not know them
            run.log.warning("batch: cannot record %s in %s (%s): `opsloop deploy status` and `remove` will not "
                            "see it", target, path, exc.strerror or exc)
            _place(tmp, output)
            return
        try:
            _place(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):  # the file is not there: the record is as it was
                _write_record(path, version.name, before)
            raise
        try:
            _write_record(path, version.name, [*files, entry])
        except OSError as exc:  # the entry keeps `pending`, whose file is gone: status reads it as finished
            run.log.warning("batch: cannot finish the entry of %s in %s (%s)", target, path, exc.strerror or exc)
        _clear_pending([f for f in before if f["path"] == target])
        _take_over(workdir, version.name, target, run)


def _clear_pending(entries: list[dict[str, Any]]) -> None:
    """Delete the temporary files of killed deploys whose entries were just replaced (under the lock)."""
    for entry in entries:
        if _unfinished(entry) and _is_temporary_of(entry["pending"], entry["path"]):
            with contextlib.suppress(OSError):
                os.unlink(entry["pending"])


def _is_temporary_of(pending: str, written: str) -> bool:
    """Whether `pending` is a name `_write` gives the temporary file of `written` (beside it, hidden)."""
    return (Path(pending).parent == Path(written).parent and Path(pending).name.startswith(f".{Path(written).name}.")
            and pending.endswith(".tmp"))


def _take_over(workdir: Path, model_name: str, target: str, run: RunContext) -> None:
    """Drop `target` from other models' records (under the lock): it holds `model_name`'s predictions now, and
    another model's `deploy remove` must not delete them."""
    for other in sorted((Path(workdir) / RECORD_DIR).glob("*.json")):
        if other.stem == model_name:
            continue
        try:
            files = _read_record(other)
        except OpsloopError:
            continue
        kept = [f for f in files if f["path"] != target]
        if len(kept) < len(files):
            _clear_pending([f for f in files if f["path"] == target])
            try:
                _write_record(other, other.stem, kept)
            except OSError as exc:
                run.log.warning("batch: %s now holds %s's predictions but %s still names it (%s)", target,
                                model_name, other, exc.strerror or exc)
            else:
                run.log.warning("batch: %s held predictions of %s and now holds %s's: it was dropped from %s",
                                target, other.stem, model_name, other)


def _read_record(path: Path, run: RunContext | None = None) -> list[dict[str, Any]]:
    """The files recorded for a model, oldest first ([] when none).

    An unreadable record is an error; with `run` (a deploy, under the lock), it is moved aside to
    `<name>.json.unreadable` instead, with a warning, and the deploy starts a new one.
    """
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                                  for f in files):
            raise ValueError("not one this target wrote (no list of files)")
        return files
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        if run is None:
            raise OpsloopError(f"batch: cannot read the deploy record {path}: {exc}") from None
        aside = path.with_name(f"{path.name}.unreadable")
        os.replace(path, aside)
        run.log.warning("batch: cannot read the deploy record %s (%s); moved it to %s and started a new one",
                        path, exc, aside)
        return []


def _unfinished(entry: Mapping[str, Any]) -> bool:
    """Whether an entry's deploy stopped (or is) between recording and placing its file."""
    return isinstance(entry.get("pending"), str) and os.path.lexists(entry["pending"])


def status(model_name: str, workdir: Path) -> DeploymentStatus:
    """The newest predictions file a batch deploy wrote for `model_name`, and whether it is still there."""
    path = _record_path(workdir, model_name)
    files = _read_record(path)  # no lock: records are replaced whole
    if not files:
        return DeploymentStatus(target="batch", model=model_name, deployed=False)
    last = files[-1]
    present = [f["path"] for f in files if os.path.isfile(f["path"]) and not _unfinished(f)]
    details: dict[str, Any] = {k: last[k] for k in ("rows", "written_at", "run_id", "request_id") if k in last}
    details.update(files=present, record=str(path))
    if _unfinished(last):
        details["unfinished"] = (f"the deploy of {last.get('version')} by run {last.get('run_id')} has not put "
                                 f"{last['path']} in place (still running, or it stopped: {last['pending']})")
    elif last["path"] not in present:
        details["missing"] = last["path"]
    return DeploymentStatus(target="batch", model=model_name, deployed=last["path"] in present,
                            version=last.get("version"), location=last["path"], details=details)


def remove(model_name: str, workdir: Path, configured: Path | None, run: RunContext) -> DeploymentStatus:
    """Delete the predictions files recorded for `model_name`, then the record, under the records' lock;
    refuse any file outside where this target writes (deleting nothing)."""
    path = _record_path(workdir, model_name)
    if not path.exists():
        return DeploymentStatus(target="batch", model=model_name, deployed=False, details={"removed": []})
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(workdir))
        except OSError as exc:
            raise OpsloopError(f"batch: cannot lock the deploy records in {workdir / RECORD_DIR}: "
                               f"{exc.strerror or exc}; nothing was removed") from None
        return _remove(model_name, path, configured, workdir, run)


def _remove(model_name: str, path: Path, configured: Path | None, workdir: Path, run: RunContext
            ) -> DeploymentStatus:
    files = _read_record(path)
    if not files:
        return DeploymentStatus(target="batch", model=model_name, deployed=False, details={"removed": []})
    allowed_dir = (workdir / DEFAULT_DIR).resolve()
    doomed: list[str] = []
    for entry in files:
        real = Path(entry["path"]).resolve()  # symlinks followed: a link to elsewhere is refused too
        if not (real.is_relative_to(allowed_dir) or real == configured):
            raise OpsloopError(f"batch: refusing to remove {entry['path']} recorded in {path}: it is outside "
                               f"where this target writes ({allowed_dir}"
                               f"{' or ' + str(configured) if configured else ''}); nothing was removed")
        if os.path.lexists(entry["path"]) and not os.path.isfile(entry["path"]):
            raise OpsloopError(f"batch: refusing to remove {entry['path']} recorded in {path}: it is not a file; "
                               "nothing was removed")
        doomed.append(entry["path"])
        pending = entry.get("pending")
        if isinstance(pending, str):  # a deploy that stopped half-way: its temporary file, beside the output
            if not _is_temporary_of(pending, entry["path"]):
                raise OpsloopError(f"batch: refusing to remove {pending} recorded in {path}: it is not a "
                                   f"temporary file of {entry['path']}; nothing was removed")
            if os.path.isfile(pending):
                doomed.append(pending)
    removed, missing = [], []
    for name in doomed:
        target = Path(name)
        if target.is_file():
            target.unlink()
            removed.append(name)
        else:
            missing.append(name)
    path.unlink()
    last = files[-1]
    run.log.info("batch: removed %d predictions file(s) of %s", len(removed), model_name)
    details: dict[str, Any] = {"removed": [*removed, str(path)]}
    if missing:
        details["already_gone"] = missing
    return DeploymentStatus(target="batch", model=model_name, deployed=False, version=last.get("version"),
                            location=last["path"], details=details)
