"""What `dask-batch` wrote, per model: the record behind `opsloop deploy status` and `opsloop deploy remove`.

Each deploy writes one directory of Parquet files (`part-00000.parquet`, ...: one per partition that had
rows). The record, `.opsloop/deploy/dask-batch/<model>.json` in the working directory, lists for every output
directory the files the newest deploy into it wrote, with the version, rows, partitions, run and time; a
deploy into the same directory again replaces its entry and moves it last, so the last entry is the newest.

Writers take one lock (`fcntl.flock` on `.opsloop/deploy/dask-batch/.lock`, released by the kernel when a
process dies): a deploy holds it while it records its entry and puts its directory in place (milliseconds,
never while scoring), `undeploy` while it deletes, so two deploys of one model at once (two processes, or two
threads) never lose each other's entry, and a removal never deletes a directory a deploy is putting in place.
Readers need no lock: the record is replaced whole (`os.replace`). A deploy records its entry before putting
the directory in place, naming its staged directory as `pending`, and clears `pending` after: a crash in
between leaves an entry that status reports as unfinished and remove cleans up. A directory that another
model's record names (a shared `output`) is taken over: only the model that wrote it last removes it.

Removal deletes exactly the recorded files, then a directory left empty, then the record; other files in the
directory stay, and so does the directory holding them. It refuses, deleting nothing, an entry outside where
`dask-batch` writes (`.opsloop/predictions/` or the configured `output`, symlinks followed) or a recorded
name that is not a plain file name.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import OpsloopError, StoreError
from opsloop.types import DeploymentStatus

if TYPE_CHECKING:
    from opsloop.types import RunContext

PLUGIN = "dask-batch"
#: The records, one `<model>.json` each, and the lock, relative to the working directory.
RECORD_DIR = Path(".opsloop") / "deploy" / PLUGIN
#: Where predictions go unless `output` says otherwise, relative to the working directory.
DEFAULT_DIR = Path(".opsloop") / "predictions"


def record_path(workdir: Path, model_name: str) -> Path:
    """The model's record; a model name that is not a name (`../x`) is a StoreError naming the plugin."""
    from opsloop.store import check_name

    try:
        check_name(model_name, "model name")  # a name never reaches outside the record directory
    except StoreError as exc:
        raise StoreError(f"{PLUGIN}: {exc}") from None
    return Path(workdir) / RECORD_DIR / f"{model_name}.json"


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Hold the record directory's lock (blocking) for the `with` block."""
    import fcntl

    directory = Path(workdir) / RECORD_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OpsloopError(f"{PLUGIN}: cannot open the deploy record's lock in {directory}: "
                           f"{exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read(path: Path) -> list[dict[str, Any]]:
    """The recorded output directories, oldest first ([] when none); a record this target did not write is an
    error naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise OpsloopError(f"{PLUGIN}: cannot read the deploy record {path}: {exc}") from None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("path"), str) and isinstance(o.get("files"), list)
            and all(isinstance(f, str) for f in o["files"]) for o in outputs):
        raise OpsloopError(f"{PLUGIN}: the deploy record {path} is not one this target wrote "
                           "(no list of output directories and their files)")
    return outputs


def commit(workdir: Path, model_name: str, entry: dict[str, Any], run: RunContext, staged: Path,
           put: Callable[[], None]) -> None:
    """Under the lock: record `entry` as the model's newest, naming the `staged` directory as `pending`; `put()`
    (the staged directory into place); the entry again without `pending`. A crash in between leaves an entry
    whose staged directory status reports as unfinished and remove deletes: the record names every file a
    deploy put in place. An entry of the same directory is replaced (the staged directory of an earlier,
    killed deploy there deleted); another model's entry of it is dropped (the directory is this model's now).
    A record that cannot be written is a warning: the predictions go in place all the same."""
    path = record_path(workdir, model_name)
    entry = {**entry, "run_id": run.run_id, "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
    with locked(workdir):
        try:
            before = read(path)
        except OpsloopError as exc:  # kept aside, not overwritten: it may name files only its remove would find
            aside = path.with_name(f"{path.name}.unreadable")
            os.replace(path, aside)
            run.log.warning("%s; moved it to %s and started a new one", exc, aside)
            before = []
        kept = [o for o in before if o["path"] != entry["path"]]
        try:
            _write(path, model_name, [*kept, {**entry, "pending": str(staged)}])
        except OSError as exc:
            run.log.warning("%s: cannot record %s in %s (%s): `opsloop deploy status` and `remove` will not see "
                            "it", PLUGIN, entry["path"], path, exc.strerror or exc)
            put()
            return
        try:
            put()
        except BaseException:
            with contextlib.suppress(OSError):  # nothing was put in place: the record is as it was
                _write(path, model_name, before)
            raise
        try:
            _write(path, model_name, [*kept, entry])
        except OSError as exc:  # the entry keeps `pending`, whose directory is gone: read as finished
            run.log.warning("%s: cannot finish the entry of %s in %s (%s)", PLUGIN, entry["path"], path,
                            exc.strerror or exc)
        for old in before:
            if old["path"] == entry["path"]:
                _drop_staged(old)
        _take_over(workdir, model_name, entry["path"], run)


def _staged(entry: dict[str, Any]) -> Path | None:
    """The staged directory of an entry whose deploy has not put it in place (or stopped before), else None."""
    pending = entry.get("pending")
    if not isinstance(pending, str):
        return None
    staged, final = Path(pending), Path(entry["path"])
    # only a name deploy gives its staging directory: hidden, beside the output, `.<name>.<hex>.tmp`
    if staged.parent != final.parent or not staged.name.startswith(f".{final.name}.") or staged.suffix != ".tmp":
        return None
    return staged if staged.is_dir() else None


def _drop_staged(entry: dict[str, Any]) -> list[str]:
    """Delete the part files of a killed deploy's staged directory, and the directory once empty."""
    staged = _staged(entry)
    gone: list[str] = []
    if staged is None:
        return gone
    for name in entry["files"] or sorted(p.name for p in staged.glob("part-*.parquet")):
        target = staged / name
        if Path(name).name == name and target.is_file() and not target.is_symlink():
            target.unlink()
            gone.append(str(target))
    with contextlib.suppress(OSError):
        staged.rmdir()
        gone.append(str(staged))
    return gone


def _take_over(workdir: Path, model_name: str, directory: str, run: RunContext) -> None:
    """Drop `directory` from other models' records: it holds `model_name`'s predictions now, and another
    model's `deploy remove` must not delete them."""
    for other in sorted((Path(workdir) / RECORD_DIR).glob("*.json")):
        if other.stem == model_name:
            continue
        try:
            outputs = read(other)
        except OpsloopError:
            continue
        kept = [o for o in outputs if o["path"] != directory]
        if len(kept) < len(outputs):
            for dropped in outputs:
                if dropped["path"] == directory:
                    _drop_staged(dropped)
            try:
                _write(other, other.stem, kept)
            except OSError as exc:
                run.log.warning("%s: %s now holds %s's predictions but %s still names it (%s)", PLUGIN, directory,
                                model_name, other, exc.strerror or exc)
            else:
                run.log.warning("%s: %s held predictions of %s and now holds %s's: it was dropped from %s",
                                PLUGIN, directory, other.stem, model_name, other)


def _write(path: Path, model_name: str, outputs: list[dict[str, Any]]) -> None:
    """Replace the record whole (a reader sees the old one or the new one)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps({"model": model_name, "target": PLUGIN, "outputs": outputs}, indent=2) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def status(workdir: Path, model_name: str) -> DeploymentStatus:
    """The newest output directory recorded for the model: deployed while every file it wrote is there."""
    path = record_path(workdir, model_name)
    outputs = read(path)
    if not outputs:
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False)
    last = outputs[-1]
    directory = Path(last["path"])
    missing = [name for name in last["files"] if not (directory / name).is_file()]
    details: dict[str, Any] = {k: last[k] for k in ("rows", "partitions", "written_at", "run_id") if k in last}
    details.update(files=len(last["files"]), record=str(path),
                   outputs=[o["path"] for o in outputs if Path(o["path"]).is_dir()])
    unfinished = _staged(last) is not None
    if unfinished:
        details["unfinished"] = (f"the deploy of {last.get('version')} by run {last.get('run_id')} has not put "
                                 f"{directory} in place (still running, or it stopped: {last['pending']})")
    elif not directory.is_dir():
        details["missing"] = str(directory)
    elif missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        details["missing"] = f"{len(missing)} of {len(last['files'])} files ({shown})"
    return DeploymentStatus(target=PLUGIN, model=model_name,
                            deployed=directory.is_dir() and not missing and not unfinished,
                            version=last.get("version"), location=last["path"], details=details)


def remove(workdir: Path, model_name: str, configured: Path | None, run: RunContext) -> DeploymentStatus:
    """Delete the files recorded for the model, each directory they leave empty, then the record; refuse any
    entry outside where this target writes (the default directory or `configured`), deleting nothing."""
    path = record_path(workdir, model_name)
    if not path.exists():  # nothing recorded: no lock taken, nothing created
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False, details={"removed": []})
    with locked(workdir):
        outputs = read(path)
        if not outputs:
            return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False, details={"removed": []})
        allowed = (Path(workdir) / DEFAULT_DIR).resolve()
        own = configured.resolve() if configured is not None else None
        for entry in outputs:
            _check(entry, path, allowed, own)
        removed, missing = [], []
        for entry in outputs:
            directory = Path(entry["path"])
            removed.extend(_drop_staged(entry))  # a deploy that stopped before putting it in place
            for name in entry["files"]:
                target = directory / name
                if target.is_file():
                    target.unlink()
                    removed.append(str(target))
                else:
                    missing.append(str(target))
            if directory.is_dir() and directory.resolve() != allowed and not any(directory.iterdir()):
                directory.rmdir()  # left empty: it was all ours
                removed.append(str(directory))
        path.unlink()
        removed.append(str(path))
    last = outputs[-1]
    run.log.info("%s: removed %d file(s) and folder(s) of %s", PLUGIN, len(removed) - 1, model_name)
    details: dict[str, Any] = {"removed": removed}
    if missing:
        details["already_gone"] = missing
    return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False, version=last.get("version"),
                            location=last["path"], details=details)


def _check(entry: dict[str, Any], record: Path, allowed: Path, own: Path | None) -> None:
    """An entry may be removed: its directory inside `allowed` or `own` itself, its files plain names of files
    inside it (symlinks followed); otherwise a one-line refusal."""
    directory = Path(entry["path"])
    real = directory.resolve()
    where = f"{allowed}{' or ' + str(own) if own else ''}"
    if not (real.is_relative_to(allowed) or real == own):
        raise OpsloopError(f"{PLUGIN}: refusing to remove {directory} recorded in {record}: it is outside where "
                           f"this target writes ({where}); nothing was removed")
    for name in entry["files"]:
        target = directory / name
        if name in ("", ".", "..") or Path(name).name != name or not target.resolve().is_relative_to(real):
            raise OpsloopError(f"{PLUGIN}: refusing to remove {name!r} recorded in {record} for {directory}: "
                               "not a file name in that directory; nothing was removed")
        if os.path.lexists(target) and not target.is_file():
            raise OpsloopError(f"{PLUGIN}: refusing to remove {target} recorded in {record}: it is not a file; "
                               "nothing was removed")
