"""Keep a record of what a deploy target wrote, so that `opsloop deploy status` can report it and `opsloop
deploy remove` can delete exactly that (the built-in `batch` and the contrib `dask-batch` targets use it).

One JSON record per model, `.opsloop/deploy/<target>/<model>.json` in the working directory, lists entries,
oldest first: each names the file or directory a deploy wrote (`path`) with what the target adds (version,
rows, ...). A deploy into the same path again replaces its entry and moves it last, so the last entry is the
newest. Its guarantees, for any target that goes through `DeployRecord.commit` and `DeployRecord.remove`:

- a record is replaced whole (written beside, then `os.replace`): a reader sees the old one or the new one;
- records change under one lock per target and working directory (`flock` on `.lock` in the record
  directory; the kernel releases it when the holder dies), held for milliseconds, never while scoring: two
  deploys at once never lose each other's entry, and a remove never deletes what a deploy is putting in place;
- a deploy records its entry, naming its temporary files or directories as `pending`, before it puts the
  output in place, and clears `pending` after: a crash at any point leaves nothing that `remove` does not
  delete (the next deploy into that path deletes the dead one's temporaries too);
- a path another model's record names is taken over: the other entry is dropped (its record file deleted
  when that empties it), so only the model that wrote the path last removes it;
- an unreadable record is an error for status and remove; a deploy moves it aside (`<model>.json.unreadable`)
  instead of overwriting it, with a warning, as it may name files only it knows;
- remove refuses, deleting nothing, an entry outside where the target writes (symbolic links followed) or a
  `pending` name that is not a temporary name of its path;
- paths inside the working directory are recorded relative to it (a moved project keeps its record); a
  reader gets them absolute. Records written before this module (absolute paths) are read as they are.

Temporary names are hidden siblings of the output: `.<name>.<anything>` (`temporary(path)` makes one).
POSIX only (`fcntl`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import OpsloopError, StoreError
from opsloop.types import DeploymentStatus

if TYPE_CHECKING:
    from opsloop.types import RunContext

__all__ = ["RECORDS_DIR", "DeployRecord", "Entry", "is_temporary_of", "pending_of", "temporary", "unfinished"]

#: One entry of a record: at least `path`; `pending` (a path, or a list of them) while a deploy is placing it.
Entry = dict[str, Any]
#: Where records live, relative to the working directory: one directory per target.
RECORDS_DIR = Path(".opsloop") / "deploy"
LOCK_FILE = ".lock"


def temporary(path: str | os.PathLike[str], suffix: str = "tmp") -> Path:
    """A fresh hidden name beside `path`, `.<name>.<8 hex digits>.<suffix>`, to write to before putting the
    output in place: the kind of name `pending` may hold and `remove` deletes."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


def is_temporary_of(pending: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether `pending` is a temporary name of `path`: beside it, named `.<name>.<something>`."""
    pending, path = Path(pending), Path(path)
    prefix = f".{path.name}."
    return pending.parent == path.parent and pending.name.startswith(prefix) and len(pending.name) > len(prefix)


def pending_of(entry: Entry) -> list[str]:
    """The temporaries an entry names as `pending` (a string in records of one, a list for more)."""
    pending = entry.get("pending")
    if isinstance(pending, str):
        return [pending]
    if isinstance(pending, list):
        return [p for p in pending if isinstance(p, str)]
    return []


def unfinished(entry: Entry) -> bool:
    """Whether the entry's deploy has not put its output in place (still running, or it stopped): its first
    `pending` temporary is still there."""
    pending = pending_of(entry)
    return bool(pending) and is_temporary_of(pending[0], entry["path"]) and os.path.lexists(pending[0])


class DeployRecord:
    """The records of one deploy target in one working directory.

    Args:
        target: The deploy plugin's name: the record directory's name and the start of every message.
        workdir: The working directory (`run.workdir`).
        key: The record's list of entries (`files` for `batch`, `outputs` for `dask-batch`).
        valid: Whether an entry read is one this target wrote (beyond a `path` string); a record with an
            entry that is not is unreadable.
    """

    def __init__(self, target: str, workdir: str | os.PathLike[str], *, key: str = "files",
                 valid: Callable[[Entry], bool] | None = None) -> None:
        self.target = target
        self.workdir = Path(workdir).absolute()
        self.key = key
        self.valid = valid
        self.directory = self.workdir / RECORDS_DIR / target

    # -- reading and writing ---------------------------------------------------------------------------------

    def path(self, model: str) -> Path:
        """The model's record; a model name that is not a name (`../x`) is a StoreError naming the target."""
        from opsloop.store import check_name

        try:
            check_name(model, "model name")  # a name never reaches outside the record directory
        except StoreError as exc:
            raise StoreError(f"{self.target}: {exc}") from None
        return self.directory / f"{model}.json"

    def read(self, model: str, run: RunContext | None = None) -> list[Entry]:
        """The model's entries, oldest first, paths absolute ([] when there is no record).

        An unreadable record is an OpsloopError naming it; with `run` (a deploy, under the lock) it is moved
        aside to `<model>.json.unreadable` instead, with a warning, and this returns [].
        """
        import json

        path = self.path(model)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data.get(self.key) if isinstance(data, dict) else None
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict) and isinstance(e.get("path"), str) and (self.valid is None or self.valid(e))
                    for e in entries):
                raise ValueError(f"not one this target wrote (no list of {self.key})")
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            if run is None:
                raise OpsloopError(f"{self.target}: cannot read the deploy record {path}: {exc}") from None
            aside = path.with_name(f"{path.name}.unreadable")
            os.replace(path, aside)
            run.log.warning("%s: cannot read the deploy record %s (%s); moved it to %s and started a new one",
                            self.target, path, exc, aside)
            return []
        return [self._outward(e) for e in entries]

    def write(self, model: str, entries: Sequence[Entry]) -> None:
        """Replace the model's record whole with `entries` (deleted when there are none); hold `locked()`."""
        import json

        path = self.path(model)
        if not entries:
            path.unlink(missing_ok=True)
            return
        body = {"model": model, "target": self.target, self.key: [self._inward(e) for e in entries]}
        tmp = temporary(path)
        try:
            tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _outward(self, entry: Entry) -> Entry:
        out = {**entry, "path": str(self.workdir / entry["path"])}  # an absolute path stays as it is
        pending = pending_of(entry)
        if pending:
            out["pending"] = [str(self.workdir / p) for p in pending] if len(pending) > 1 else \
                str(self.workdir / pending[0])
        return out

    def _inward(self, entry: Entry) -> Entry:
        out = {**entry, "path": self._relative(entry["path"])}
        pending = pending_of(entry)
        if pending:
            out["pending"] = [self._relative(p) for p in pending] if len(pending) > 1 else self._relative(pending[0])
        return out

    def _relative(self, name: str) -> str:
        path = Path(os.path.abspath(self.workdir / name))
        return str(path.relative_to(self.workdir)) if path.is_relative_to(self.workdir) else str(path)

    # -- the lock ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock of every record of this target in the working directory (blocking), for the `with`
        block; a lock that cannot be opened is an OpsloopError naming the directory."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._lock())
            except OSError as exc:
                raise OpsloopError(f"{self.target}: cannot lock the deploy records in {self.directory}: "
                                   f"{exc.strerror or exc}") from None
            yield

    # -- a deploy ---------------------------------------------------------------------------------------------

    def commit(self, model: str, entry: Entry, run: RunContext, *, pending: str | os.PathLike[str]
               | Sequence[str | os.PathLike[str]], place: Callable[[], None],
               discard: Callable[[Entry], list[str]] | None = None) -> None:
        """Put a deploy's output in place and record it, under the lock.

        The entry (`run_id` and `written_at` added) is recorded first, naming `pending` (the temporaries the
        deploy wrote or may leave: temporary names of `entry["path"]`, the first the one `place` moves); then
        `place()` puts the output in place; then the entry is recorded again without `pending`. If `place`
        fails, the record is put back as it was. An earlier entry of the same path is replaced (`discard`
        deletes what its dead deploy left), another model's is dropped (taken over). A record that cannot be
        written is a warning: the output goes in place all the same.

        Args:
            discard: Deletes the temporaries a dead deploy's entry names and returns what it deleted; the
                default deletes files (not directories).
        """
        from datetime import UTC, datetime

        record = self.path(model)
        target = os.path.abspath(entry["path"])
        temps = [os.path.abspath(pending)] if isinstance(pending, (str, os.PathLike)) else \
            [os.path.abspath(p) for p in pending]
        entry = {**entry, "path": target}
        entry.setdefault("run_id", run.run_id)
        entry.setdefault("written_at", datetime.now(UTC).isoformat(timespec="seconds"))
        drop = discard or self.discard
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._lock())
                before = self.read(model, run)
                kept = [e for e in before if e["path"] != target]
                self.write(model, [*kept, {**entry, "pending": temps[0] if len(temps) == 1 else temps}])
            except OSError as exc:  # the output is fine; only `opsloop deploy status|remove` will not know it
                run.log.warning("%s: cannot record %s in %s (%s): `opsloop deploy status` and `remove` will not "
                                "see it", self.target, target, record, exc.strerror or exc)
                place()
                return
            try:
                place()
            except BaseException:
                with contextlib.suppress(OSError):  # nothing was put in place: the record is as it was
                    self.write(model, before)
                raise
            try:
                self.write(model, [*kept, entry])
            except OSError as exc:  # the entry keeps `pending`, whose temporary is gone: read as finished
                run.log.warning("%s: cannot finish the entry of %s in %s (%s)", self.target, target, record,
                                exc.strerror or exc)
            for old in before:  # under the lock, a `pending` entry is a dead deploy's
                if old["path"] == target:
                    drop(old)
            self._take_over(model, target, run, drop)

    def _take_over(self, model: str, target: str, run: RunContext, drop: Callable[[Entry], list[str]]) -> None:
        """Drop `target` from other models' records (under the lock): it holds `model`'s output now, and
        another model's `deploy remove` must not delete it. A record left empty is deleted."""
        for other in sorted(self.directory.glob("*.json")):
            if other.stem == model:
                continue
            try:
                entries = self.read(other.stem)
            except OpsloopError:
                continue
            kept = [e for e in entries if e["path"] != target]
            if len(kept) == len(entries):
                continue
            for dropped in entries:
                if dropped["path"] == target:
                    drop(dropped)
            try:
                self.write(other.stem, kept)
            except OSError as exc:
                run.log.warning("%s: %s now holds %s's output but %s still names it (%s)", self.target, target,
                                model, other, exc.strerror or exc)
            else:
                run.log.warning("%s: %s held output of %s and now holds %s's: it was dropped from %s",
                                self.target, target, other.stem, model, other)

    @staticmethod
    def discard(entry: Entry) -> list[str]:
        """The default `discard`: delete the files (not directories) among the entry's `pending` temporaries."""
        gone = []
        for name in pending_of(entry):
            if is_temporary_of(name, entry["path"]) and os.path.lexists(name) and not os.path.isdir(name):
                with contextlib.suppress(OSError):
                    os.unlink(name)
                    gone.append(name)
        return gone

    # -- remove -----------------------------------------------------------------------------------------------

    def remove(self, model: str, run: RunContext, *, root: str | os.PathLike[str],
               configured: str | os.PathLike[str] | None = None, check: Callable[[Entry, Path], None] | None = None,
               delete: Callable[[Entry], tuple[list[str], list[str]]] | None = None) -> DeploymentStatus:
        """Delete what the model's entries name, then its record, under the lock; `deploy remove`'s result.

        Every entry is checked before anything is deleted: its path must be inside `root` or be `configured`
        (symbolic links followed), its `pending` names temporary names of it, and `check(entry, record)` (a
        target's own checks) must not raise; otherwise an OpsloopError naming the path, and nothing deleted.

        Args:
            root: The directory the target writes into by default.
            configured: The output the configuration names, if any.
            delete: Deletes an entry's output and returns (deleted, already gone); the default unlinks the
                file at `path` (refused if it is not a file) and its `pending` files.
        """
        record = self.path(model)
        nothing = DeploymentStatus(target=self.target, model=model, deployed=False, details={"removed": []})
        if not record.exists():  # nothing recorded: no lock taken, nothing created
            return nothing
        root = Path(root).resolve()
        own = Path(configured).resolve() if configured is not None else None
        with self.locked():
            entries = self.read(model)
            if not entries:
                record.unlink(missing_ok=True)
                return nothing
            for entry in entries:
                self._check(entry, record, root, own)
                (check or self._check_file)(entry, record)
            removed: list[str] = []
            missing: list[str] = []
            for entry in entries:
                gone, absent = (delete or self._delete_file)(entry)
                removed.extend(gone)
                missing.extend(absent)
            record.unlink()
            removed.append(str(record))
        last = entries[-1]
        run.log.info("%s: removed %d file(s) of %s", self.target, len(removed) - 1, model)
        details: dict[str, Any] = {"removed": removed}
        if missing:
            details["already_gone"] = missing
        return DeploymentStatus(target=self.target, model=model, deployed=False, version=last.get("version"),
                                location=last["path"], details=details)

    def _check(self, entry: Entry, record: Path, root: Path, own: Path | None) -> None:
        real = Path(entry["path"]).resolve()  # symlinks followed: a link to elsewhere is refused too
        if not (real.is_relative_to(root) or real == own):
            raise OpsloopError(f"{self.target}: refusing to remove {entry['path']} recorded in {record}: it is "
                               f"outside where this target writes ({root}{' or ' + str(own) if own else ''}); "
                               "nothing was removed")
        for name in pending_of(entry):
            if not is_temporary_of(name, entry["path"]):
                raise OpsloopError(f"{self.target}: refusing to remove {name} recorded in {record}: it is not a "
                                   f"temporary name of {entry['path']}; nothing was removed")

    def _check_file(self, entry: Entry, record: Path) -> None:
        if os.path.lexists(entry["path"]) and not os.path.isfile(entry["path"]):
            raise OpsloopError(f"{self.target}: refusing to remove {entry['path']} recorded in {record}: it is not "
                               "a file; nothing was removed")

    def _delete_file(self, entry: Entry) -> tuple[list[str], list[str]]:
        target = Path(entry["path"])
        if target.is_file():
            target.unlink()
            gone, missing = [str(target)], []
        else:
            gone, missing = [], [str(target)]
        return [*gone, *self.discard(entry)], missing
