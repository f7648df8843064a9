"""What `dask-batch` wrote, per model: the record behind `opsloop deploy status` and `opsloop deploy remove`.

The record itself (one JSON file per model under `.opsloop/deploy/dask-batch/`, replaced atomically, changed
under one lock, entries recorded `pending` before their directory goes in place, take-over of a directory
another model wrote, refusal of anything outside where the target writes) is `opsloop.deployrecord`'s. What
is `dask-batch`'s own is here: an entry is an output directory with the part files the newest deploy into it
wrote (`{"path": ..., "files": ["part-00000.parquet", ...], "version", "rows", "partitions", ...}`, in the
record's `outputs`), and a deploy's temporaries are directories: the staged one it writes into
(`.<name>.<hex>.tmp`) and the one the previous output is moved aside to while the staged one takes its place
(`.<name>.<hex>.old`). Both are named in the entry before the swap, so a deploy killed at any point of it
leaves nothing that `remove` (or the next deploy into that directory) does not clean up.

Removal deletes exactly the recorded files, then a directory left empty, then the record; other files in the
directory stay, and so does the directory holding them. It refuses, deleting nothing, an entry outside where
`dask-batch` writes (`.opsloop/predictions/` or the configured `output`, symlinks followed) or a recorded
name that is not a plain file name.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.deployrecord import DeployRecord, is_temporary_of, pending_of, unfinished
from opsloop.errors import OpsloopError
from opsloop.types import DeploymentStatus

if TYPE_CHECKING:
    from opsloop.types import RunContext

PLUGIN = "dask-batch"
#: Where predictions go unless `output` says otherwise, relative to the working directory.
DEFAULT_DIR = Path(".opsloop") / "predictions"
#: The files a deploy writes into its directory; anything else there is not its own.
PART = re.compile(r"part-\d{5}\.parquet")


def _valid(entry: dict[str, Any]) -> bool:
    files = entry.get("files")
    return isinstance(files, list) and all(isinstance(f, str) for f in files)


def records(workdir: Path) -> DeployRecord:
    """`dask-batch`'s records in `workdir` (entries under `outputs`, each with its list of `files`)."""
    return DeployRecord(PLUGIN, workdir, key="outputs", valid=_valid)


def commit(workdir: Path, model_name: str, entry: dict[str, Any], run: RunContext,
           pending: Path | Sequence[Path], put: Callable[[], None]) -> None:
    """Record `entry` naming the `pending` directories (the staged one first, then where the old output goes
    aside), `put()` the staged directory in place, record it done; under the records' lock."""
    records(workdir).commit(model_name, entry, run, pending=pending, place=put, discard=discard)


def discard(entry: dict[str, Any]) -> list[str]:
    """Clean up what a killed deploy left of an entry: the part files of its staged directory; and the old
    output it had moved aside: its part files deleted, any other file moved back into the output directory
    (as a finished swap would have); each directory once empty. Returns what it deleted."""
    gone: list[str] = []
    final = Path(entry["path"])
    for name in pending_of(entry):
        temp = Path(name)
        if not is_temporary_of(temp, final) or temp.is_symlink() or not temp.is_dir():
            continue
        old = temp.suffix == ".old"
        names = sorted(p.name for p in temp.iterdir() if PART.fullmatch(p.name)) if old else \
            (entry["files"] or sorted(p.name for p in temp.glob("part-*.parquet")))
        for part in names:
            target = temp / part
            if Path(part).name == part and target.is_file() and not target.is_symlink():
                target.unlink()
                gone.append(str(target))
        if old:
            for child in sorted(temp.iterdir()):  # not ours: back where the swap would have put it
                with contextlib.suppress(OSError):
                    final.mkdir(exist_ok=True)
                    if not os.path.lexists(final / child.name):
                        os.replace(child, final / child.name)
        with contextlib.suppress(OSError):
            temp.rmdir()
            gone.append(str(temp))
    return gone


def status(workdir: Path, model_name: str) -> DeploymentStatus:
    """The newest output directory recorded for the model: deployed while every file it wrote is there."""
    record = records(workdir)
    outputs = record.read(model_name)  # no lock: records are replaced whole
    if not outputs:
        return DeploymentStatus(target=PLUGIN, model=model_name, deployed=False)
    last = outputs[-1]
    directory = Path(last["path"])
    missing = [name for name in last["files"] if not (directory / name).is_file()]
    details: dict[str, Any] = {k: last[k] for k in ("rows", "partitions", "written_at", "run_id") if k in last}
    details.update(files=len(last["files"]), record=str(record.path(model_name)),
                   outputs=[o["path"] for o in outputs if Path(o["path"]).is_dir()])
    stopped = unfinished(last)
    if stopped:
        details["unfinished"] = (f"the deploy of {last.get('version')} by run {last.get('run_id')} has not put "
                                 f"{directory} in place (still running, or it stopped: {pending_of(last)[0]})")
    elif not directory.is_dir():
        details["missing"] = str(directory)
    elif missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        details["missing"] = f"{len(missing)} of {len(last['files'])} files ({shown})"
    return DeploymentStatus(target=PLUGIN, model=model_name,
                            deployed=directory.is_dir() and not missing and not stopped,
                            version=last.get("version"), location=last["path"], details=details)


def remove(workdir: Path, model_name: str, configured: Path | None, run: RunContext) -> DeploymentStatus:
    """Delete the files recorded for the model, each directory they leave empty, then the record; refuse any
    entry outside where this target writes (the default directory or `configured`), deleting nothing."""
    allowed = (Path(workdir) / DEFAULT_DIR).resolve()

    def delete(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
        directory = Path(entry["path"])
        removed = discard(entry)  # a deploy that stopped before (or while) putting it in place
        missing = []
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
        return removed, missing

    return records(workdir).remove(model_name, run, root=allowed, configured=configured, check=_check,
                                   delete=delete)


def _check(entry: dict[str, Any], record: Path) -> None:
    """An entry's files are plain names of files inside its directory (symlinks followed)."""
    directory = Path(entry["path"])
    real = directory.resolve()
    for name in entry["files"]:
        target = directory / name
        if name in ("", ".", "..") or Path(name).name != name or not target.resolve().is_relative_to(real):
            raise OpsloopError(f"{PLUGIN}: refusing to remove {name!r} recorded in {record} for {directory}: "
                               "not a file name in that directory; nothing was removed")
        if os.path.lexists(target) and not target.is_file():
            raise OpsloopError(f"{PLUGIN}: refusing to remove {target} recorded in {record}: it is not a file; "
                               "nothing was removed")
