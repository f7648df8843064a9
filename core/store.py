"""The model store interface that store plugins implement.

A store keeps numbered versions per model name and aliases that point at
them. Bundles are written by `opsloop.bundle` into a staging directory; the
store moves them into place and records them atomically.

Every alias change (promote, rollback, deploy) is kept in an audit trail of
`AliasChange` records (issue 4): who, when, from which version to which, why.
`rollback` walks that trail back, like an undo stack, so that rolling back
twice goes back two promotions rather than toggling between two versions.

Each version has a current alert threshold (issue 13), the manifest's at
registration; `set_alias(..., threshold=...)` replaces it without a new
bundle (bundles are immutable), in the same transaction as the history row
that records it. `check_threshold` is what a threshold must be.

`BundleFiles` is the on-disk half that every store keeping bundles as files
shares (the local store, and a database-backed one with a bundle directory):
staging, atomic placement, orphan replacement, read-only sealing, removal.
`opsloop.sqlstore.SQLStore` is the rest of such a store when its records are
in SQL tables (SQLite, PostgreSQL).
"""

from __future__ import annotations

import abc
import contextlib
import getpass
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from opsloop.errors import StoreError, closest
from opsloop.types import ModelVersion

# `fullmatch`, not `match` with `$`: `$` also matches before a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

AliasAction = Literal["set", "rollback", "threshold"]
MAX_VERSION = 2**63 - 1  # SQLite's INTEGER; a larger number cannot name a version anywhere
STAGING_TTL = 3600.0  # seconds after which a staging leftover is a leftover, not work in progress


def check_name(value: str, what: str = "model name") -> str:
    """A model or alias name that is safe as a directory name; StoreError otherwise."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise StoreError(f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..'")
    return value


def check_version(version: object) -> int:
    """A version number as an int, StoreError unless it is a whole number from 1 to `MAX_VERSION`."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise StoreError(f"invalid version {version!r}: expected a whole number from 1 to {MAX_VERSION}")
    return version


def check_threshold(threshold: object, what: str) -> dict[str, Any]:
    """A threshold as stored: a JSON-able mapping with a finite numeric `value` (issue 13); StoreError otherwise.

    Returns a copy as strict JSON would give it back (NaN and infinities
    elsewhere in it as None, keys as strings, numpy scalars as Python's).
    """
    if not isinstance(threshold, Mapping):
        raise StoreError(f"invalid threshold for {what}: expected a mapping with a numeric 'value', got "
                         f"{type(threshold).__name__}")
    if "value" not in threshold:
        raise StoreError(f"invalid threshold for {what}: it has no 'value' (the score from which the model alerts)")
    value = threshold["value"]
    if callable(getattr(value, "item", None)) and not isinstance(value, str | bytes):
        with contextlib.suppress(Exception):  # numpy.float64 and friends
            value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StoreError(f"invalid threshold for {what}: its 'value' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise StoreError(f"invalid threshold for {what}: its 'value' must be finite, got {value!r}")
    return strict_json(threshold)


def os_error(what: str, path: Path | str, exc: OSError) -> StoreError:
    """One line for a failed file operation: what, where, and the system's words (read-only, disk full...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename else path
    return StoreError(f"cannot {what}: {where}: {reason}" + (f" (errno {exc.errno})" if exc.errno else ""))


def current_user() -> str:
    """The login name recorded as `created_by` and as the actor of alias changes."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@attrs.frozen(kw_only=True)
class Ref:
    """A parsed `NAME`, `NAME:VERSION` or `NAME@ALIAS`."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        """Parse a reference; StoreError naming what is wrong."""
        name, alias = text, None
        if "@" in text:
            name, _, alias = text.partition("@")
            return cls(name=check_name(name), alias=check_name(alias, "alias"))
        if ":" in text:
            name, _, number = text.partition(":")
            # ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses (issue 8)
            if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= MAX_VERSION:
                raise StoreError(f'invalid version reference "{text}": expected NAME:N with N a whole number '
                                 f"from 1 to {MAX_VERSION}")
            return cls(name=check_name(name), version=int(number))
        return cls(name=check_name(name))


def _optional_dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


@attrs.frozen(kw_only=True)
class ModelSummary:
    """One line of `opsloop models list`."""

    name: str
    versions: int
    latest: int
    updated_at: str
    aliases: dict[str, int] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class VersionSummary:
    """One line of a version table: a `ModelVersion` without params, lineage and path.

    What `version_summaries` returns, so that listing thousands of versions
    does not parse thousands of lineage records.
    """

    name: str
    version: int
    created_at: str
    created_by: str = ""
    flavor: str = ""
    task: str = ""
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    aliases: tuple[str, ...] = ()
    digest: str = ""

    @property
    def ref(self) -> str:
        """`name:version`."""
        return f"{self.name}:{self.version}"


@attrs.frozen(kw_only=True)
class AliasChange:
    """One entry of the audit trail: an alias moved.

    Attributes:
        name: Model name.
        alias: The alias that moved, e.g. `production`.
        from_version: Where it pointed before; None when it was new.
        to_version: Where it points now.
        actor: Who moved it (login name, or what the caller passed).
        at: ISO 8601 UTC time of the change.
        reason: Why, as given by the caller (may be empty).
        action: `"set"` (promote, deploy), `"rollback"`, or `"threshold"`:
            only `threshold` changed, the alias already pointed at the version
            (`from_version == to_version`).
        threshold: The threshold this change gave `to_version` (issue 13);
            None when it did not change the version's threshold.
    """

    name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    at: str
    reason: str = ""
    action: AliasAction = "set"
    threshold: Mapping[str, Any] | None = attrs.field(default=None, converter=_optional_dict)


@attrs.frozen(kw_only=True)
class CycleRecord:
    """One entry of the loop journal: what a cycle of `opsloop loop` (or a backtest) did.

    Attributes:
        id: Increasing with every entry of the store.
        name: Model name.
        at: ISO 8601 UTC time the entry was written (the store's clock).
        status: `"keep"`, `"promoted"`, `"waiting"` (a winner awaits a person), `"rolled back"` (probation),
            `"rejected"` (a candidate lost the
            gate), `"error"` or `"stopped"`.
        body: The cycle as `opsloop loop --once --json` prints it (decision,
            reasons, candidate, gate, promoted, window, monitor, error...).
    """

    id: int
    name: str
    at: str
    status: str
    body: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class LockState:
    """The loop lock of one model, as `lock` found or left it.

    Attributes:
        acquired: Whether the caller holds it now.
        owner: Who holds it (the caller when acquired): `user@host:pid/...`.
        since: ISO 8601 UTC time the holder took it.
        expires: ISO 8601 UTC time after which another owner may take it over.
    """

    acquired: bool
    owner: str
    since: str
    expires: str


def strict_json(value: Any) -> Any:
    """`value` with NaN and infinities as None, so that it dumps as strict JSON (numpy scalars as Python's): the
    loop journal's bodies and every `--json` that carries figures."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if not isinstance(value, str | int | bool | type(None)) and callable(getattr(value, "item", None)):
        with contextlib.suppress(Exception):  # numpy.float32 and friends: not floats, but have .item()
            return strict_json(value.item())
    return value


def rollback_target(changes: Iterable[AliasChange], current: int, exists: set[int]) -> int | None:
    """The version a rollback of one alias goes back to, or None when there is none.

    The changes (oldest first, one alias) are replayed as an undo stack: a
    `set` pushes its version, a `rollback` pops back to the version it went
    to, a `threshold` change moves nothing and is passed over. The target
    is the nearest version below the top that still exists and differs
    from `current`; versions deleted since are skipped.
    """
    stack: list[int] = []
    for change in changes:
        if change.action == "threshold":
            continue
        if change.action == "rollback":
            while stack and stack[-1] != change.to_version:
                stack.pop()
            if not stack:
                stack.append(change.to_version)
        else:
            stack.append(change.to_version)
    if stack and stack[-1] == current:
        stack.pop()
    for version in reversed(stack):
        if version != current and version in exists:
            return version
    return None


class ModelStore(abc.ABC):
    """What a store plugin's `open_store` returns.

    Names are checked with `check_name`; every failure a user can cause is a
    `StoreError` naming the model, version or alias (with the closest model
    name when one is misspelt).
    """

    uri: str

    @abc.abstractmethod
    def register(self, name: str, staged: Path, manifest: dict[str, Any]) -> ModelVersion:
        """Move a staged bundle into the store as the next version of `name`.

        All or nothing: a crash leaves either the whole version or none.
        Numbers start at 1 and are never reused, so concurrent registrations
        get consecutive numbers without gaps or duplicates. The version's
        threshold starts as `manifest.get("threshold")` (None, or checked
        with `check_threshold`: StoreError before anything is written).
        """

    @abc.abstractmethod
    def models(self) -> list[ModelSummary]:
        """Every model name with its version count and aliases."""

    @abc.abstractmethod
    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first (StoreError if there are none)."""

    @abc.abstractmethod
    def get(self, name: str, version: int) -> ModelVersion:
        """One version (StoreError naming it if absent)."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None, threshold: Mapping[str, Any] | None = None) -> AliasChange | None:
        """Point `name@alias` at `version` and record the change in the history.

        Args:
            name: Model name.
            alias: Alias name, checked with `check_name`.
            version: An existing version (StoreError otherwise).
            reason: Why, for the audit trail.
            actor: Who; the current login name by default.
            threshold: A new threshold for `version` (issue 13), checked with
                `check_threshold` (StoreError before anything changes). In
                the same transaction, it replaces the version's threshold and
                the history row carries it; a row is recorded even when the
                alias already pointed there (action `"threshold"`).

        Returns:
            The recorded change, or None when the alias already pointed there
            and no threshold was given (nothing is recorded then).
        """

    @abc.abstractmethod
    def alias(self, name: str, alias: str) -> int | None:
        """The version `name@alias` points at, or None (StoreError if `name` is unknown)."""

    @abc.abstractmethod
    def aliases(self, name: str) -> dict[str, int]:
        """Every alias of `name` and the version it points at (StoreError if `name` is unknown)."""

    @abc.abstractmethod
    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """The audit trail of `name`'s aliases (or of one alias), oldest first.

        StoreError if `name` is unknown; an empty list when no alias was ever set.
        """

    @abc.abstractmethod
    def rollback(self, name: str, alias: str = "production", *, reason: str = "",
                 actor: str | None = None) -> AliasChange:
        """Point `name@alias` back at the version it pointed at before.

        The history is an undo stack (see `rollback_target`): rolling back
        twice goes back two changes. Atomic with respect to concurrent alias
        changes. StoreError when the alias does not exist or has no earlier
        version that still exists. Thresholds stay as they are: each version
        keeps its own.

        Returns:
            The recorded change, with `action="rollback"`.
        """

    @abc.abstractmethod
    def delete(self, name: str, version: int) -> None:
        """Remove a version and its bundle.

        Refused with a StoreError naming the aliases while any alias points at
        it. The number is never given to another version.
        """

    def version_summaries(self, name: str) -> list[VersionSummary]:
        """Every version of `name` as a light table row, oldest first (StoreError if none).

        Stores override this to answer in one query without parsing lineage.
        """
        return [VersionSummary(name=v.name, version=v.version, created_at=v.created_at, created_by=v.created_by,
                               flavor=v.flavor, task=v.task, metrics=dict(v.metrics), aliases=v.aliases,
                               digest=v.digest) for v in self.versions(name)]

    def latest(self, name: str) -> ModelVersion:
        """The highest-numbered version of `name` (StoreError if there is none)."""
        return self.versions(name)[-1]

    def check_writable(self) -> None:
        """StoreError when this store cannot record anything (a read-only registry); the default: it can.

        Commands that will register call it first, so that they fail before
        the work, not after it.
        """

    def staging_dir(self) -> Path:
        """An empty directory to write a bundle into before `register` (default: a temp dir)."""
        return Path(tempfile.mkdtemp(prefix="opsloop-bundle-"))

    def close(self) -> None:
        """Release connections; the default has none."""

    def reindex(self, *, force: bool = False) -> dict[str, Any]:
        """Rebuild the index from the bundles (`opsloop models reindex`); StoreError where not supported.

        Returns:
            A JSON-able report: versions indexed, bundles skipped and why, aliases restored.
        """
        raise StoreError(f"the model store {self.uri} cannot rebuild its index from its bundles; restore its "
                         "database from a backup instead")

    def tuning_storage(self) -> str | None:
        """Where `opsloop tune` keeps its Optuna studies beside this registry: an SQLAlchemy URL (Optuna's
        `RDBStorage`), so that an interrupted search resumes; None when the store has no such place (the
        search then lives in memory and starts over when interrupted)."""
        return None

    # -- the loop's journal and lock (issue 12) -----------------------------------
    # Not abstract, so that a third-party store written before them still opens;
    # such a store cannot run `opsloop loop`, and says so.

    def record_cycle(self, name: str, status: str, body: Mapping[str, Any]) -> CycleRecord:
        """Append one cycle to the loop journal of `name` (any name: the model need not exist yet).

        Args:
            name: Model name.
            status: `"keep"`, `"promoted"`, `"waiting"`, `"rejected"`, `"rolled back"`, `"error"` or `"stopped"`.
            body: JSON-able (NaN and infinities are stored as null).

        Returns:
            The entry as stored, with its id and time.
        """
        raise StoreError(f"the model store {self.uri} keeps no loop journal: opsloop loop needs a store that "
                         "does (local-store, postgres-store)")

    def cycles(self, name: str, *, limit: int | None = None) -> list[CycleRecord]:
        """The loop journal of `name`, newest first (at most `limit` entries); empty when none."""
        raise StoreError(f"the model store {self.uri} keeps no loop journal: opsloop loop needs a store that "
                         "does (local-store, postgres-store)")

    def lock(self, name: str, owner: str, ttl: float) -> LockState:
        """Take (or renew) the loop lock of `name` for `ttl` seconds, atomically across processes and machines.

        Acquired when nobody holds it, when `owner` already holds it (the
        expiry moves to now + ttl, `since` stays), or when the holder's expiry
        has passed (a loop that died). Otherwise not acquired, with the
        holder's state. `ttl` is seconds, more than 0 (StoreError otherwise).
        """
        raise StoreError(f"the model store {self.uri} has no loop lock: opsloop loop needs a store that "
                         "has (local-store, postgres-store)")

    def unlock(self, name: str, owner: str) -> None:
        """Release the loop lock of `name` if `owner` holds it; nothing otherwise."""
        raise StoreError(f"the model store {self.uri} has no loop lock: opsloop loop needs a store that "
                         "has (local-store, postgres-store)")

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """The version a reference names: `NAME` is the latest, `NAME@ALIAS` what the alias points at."""
        ref = Ref.parse(ref) if isinstance(ref, str) else ref
        if ref.alias is not None:
            number = self.alias(ref.name, ref.alias)
            if number is None:
                raise unknown_alias(ref.name, ref.alias, self.aliases(ref.name))
            return self.get(ref.name, number)
        if ref.version is not None:
            return self.get(ref.name, ref.version)
        return self.latest(ref.name)

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot_dir(self) -> Path | None:
        """Where `[data] snapshot = "store"` keeps training-data snapshots (`opsloop.snapshots`, issue 14 item 4):
        `snapshots/` beside `bundles/` in a store that keeps its bundles as files (`BundleFiles`, as the local
        and PostgreSQL stores do); None when the store has no such place."""
        files = getattr(self, "files", None)
        return files.root / "snapshots" if isinstance(files, BundleFiles) else None


def unknown_model(name: str, known: Iterable[str]) -> StoreError:
    """The error for a model name the store does not have, with the closest one."""
    known = sorted(known)
    hint = closest(name, known)
    if hint:
        return StoreError(f'unknown model "{name}" (did you mean "{hint}"?)')
    if known:
        return StoreError(f'unknown model "{name}"; models: {", ".join(known[:20])}'
                          + (", ..." if len(known) > 20 else ""))
    return StoreError(f'unknown model "{name}": the registry has no models yet')


def unknown_alias(name: str, alias: str, known: Mapping[str, int]) -> StoreError:
    """The error for an alias a model does not have, with the ones it has."""
    hint = closest(alias, known)
    if hint:
        return StoreError(f'model {name} has no alias "{alias}" (did you mean "{hint}"?)')
    have = ", ".join(f"@{a} -> {v}" for a, v in sorted(known.items())) or "none"
    return StoreError(f'model {name} has no alias "{alias}" (aliases: {have})')


class BundleFiles:
    """Bundle directories under a root, for every store that keeps bundles as files.

    `<root>/bundles/<name>/<version>/` holds registered bundles, read-only;
    `<root>/staging/` holds bundles being written. Both are on one filesystem,
    so `place` is an atomic rename. `place` and `unplace` must run while the
    store holds its write lock (inside the transaction that records the
    version): a directory found at a number that has no record is then an
    orphan of a registration killed before its commit, and is replaced.

    A registered bundle's directory is sealed (read-only) after its commit;
    an orphan's never is. `place` therefore never replaces a sealed
    directory: one found at a number the records do not know means that the
    records lost versions (an emptied or older `registry.db`), and
    overwriting it would destroy a registered model (issue 8, defect 4).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.bundles = self.root / "bundles"
        self.staging = self.root / "staging"

    def create(self) -> None:
        """Make the directories; StoreError if that is impossible."""
        try:
            for directory in (self.root, self.bundles, self.staging):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if self.bundles.is_dir() and not self.writable():
                return  # a read-only registry can still be read; writes say why they cannot
            raise os_error("create the model store", self.root, exc) from None

    def writable(self) -> bool:
        """Whether new files can be made under the root (False on a read-only mount)."""
        return os.access(self.root, os.W_OK | os.X_OK)

    def staging_dir(self) -> Path:
        """A new empty directory in `staging/`."""
        try:
            return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.staging))
        except OSError as exc:
            raise os_error("make a staging directory for a new bundle", self.staging, exc) from None

    def version_dirs(self) -> Iterator[tuple[str, int, Path]]:
        """`(name, version, directory)` of every `bundles/<name>/<N>/` there is, in no order."""
        with contextlib.suppress(OSError):
            for model in os.scandir(self.bundles):
                if not model.is_dir(follow_symlinks=False) or not NAME_RE.fullmatch(model.name):
                    continue
                with contextlib.suppress(OSError):
                    for entry in os.scandir(model.path):
                        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                            yield model.name, int(entry.name), Path(entry.path)

    def prepare(self, name: str, staged: Path) -> tuple[Path, dict[str, Any], str]:
        """Verify a staged bundle, bring it into `staging/`, flush and seal it.

        Returns:
            The directory to `place`, the manifest on disk, and the digest.
        """
        from opsloop.bundle import manifest_digest, read_manifest  # the bundle module pulls in cattrs

        staged = Path(staged).absolute()
        if not staged.is_dir():
            raise StoreError(f"cannot register {name}: {staged} is not a bundle directory")
        manifest = read_manifest(staged, ref=name)  # every file matches its sha256, or BundleError
        digest = manifest_digest(staged)
        copy = None
        try:
            if staged.parent != self.staging:  # not ours: copy it onto our filesystem (the caller keeps theirs)
                copy = self.staging_dir()
                _copy_tree(staged, copy)
                staged = copy
            for parent, _, files in os.walk(staged):  # durable before it is recorded, read-only from now on
                for fname in files:
                    _fsync(Path(parent, fname))
                    Path(parent, fname).chmod(0o444)
                _fsync(Path(parent))
        except OSError as exc:  # a full disk, a read-only mount: say where, leave no copy behind
            if copy is not None:
                remove_tree(copy)
            raise os_error(f"store the bundle of {name}", staged, exc) from None
        return staged, manifest, digest

    def place(self, staged: Path, name: str, version: int) -> str:
        """Rename a prepared bundle to its final place; its path relative to the root."""
        relative = f"bundles/{check_name(name)}/{int(version)}"
        target = self.root / relative
        if os.path.lexists(target):
            if sealed(target):
                raise StoreError(f"cannot register {name}:{version}: {target} already holds a registered bundle "
                                 "that the registry has no record of (its index lost versions); nothing was "
                                 "overwritten: run `opsloop models reindex` to rebuild the index from the "
                                 "bundles' manifests")
            remove_tree(target)  # an orphan: never sealed, never committed; the number has no record
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged, target)  # onto nothing: an existing non-empty directory makes it fail
            _fsync(target.parent)
        except OSError as exc:
            raise os_error(f"place the bundle of {name}:{version}", target, exc) from None
        return relative

    def unplace(self, relative: str, staged: Path, identity: tuple[int, int]) -> None:
        """Undo `place` (the transaction failed), unless the directory there is no longer ours.

        `identity` is the staged directory's `dir_identity`, taken before `place`
        (a rename keeps it). With SQLite the write lock dies with the process; a
        database session can end while its process lives on (a server restart, a
        timeout), and another registration may then have replaced our bundle with
        its own, which must stay. A bundle that cannot go back is removed.
        """
        with contextlib.suppress(OSError):
            if dir_identity(self.root / relative) != identity:
                return
            try:
                os.rename(self.root / relative, staged)
            except OSError:
                remove_tree(self.root / relative)

    def seal(self, relative: str) -> None:
        """Make a placed bundle's directory read-only (after the commit: `unplace` needs it writable)."""
        with contextlib.suppress(OSError):
            (self.root / relative).chmod(0o555)

    def remove(self, relative: str) -> None:
        """Remove a bundle whose record is gone: moved aside first, so no reader sees it half-removed."""
        bundle = self.root / relative
        trash = self.staging / f"deleted-{os.getpid()}-{time.time_ns()}"
        with contextlib.suppress(OSError):
            bundle.chmod(0o755)
            os.rename(bundle, trash)
            bundle = trash
        remove_tree(bundle)

    def sweep(self, ttl: float = STAGING_TTL) -> None:
        """Remove what killed or failed registrations (and deletions) left in `staging/`."""
        limit = time.time() - ttl
        with contextlib.suppress(OSError):
            for entry in self.staging.iterdir():
                with contextlib.suppress(OSError):
                    if entry.lstat().st_mtime < limit:
                        remove_tree(entry)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a directory tree into an existing empty directory, symlinks as symlinks.

    Not `shutil.copytree`: it gathers every failure into one `shutil.Error`
    listing each file, where the first OSError (a full disk) is what to say.
    """
    for parent, dirs, files in os.walk(source):
        here = target / Path(parent).relative_to(source)
        for name in dirs:
            if os.path.islink(os.path.join(parent, name)):
                os.symlink(os.readlink(os.path.join(parent, name)), here / name)
            else:
                os.mkdir(here / name)
        for name in files:
            shutil.copy2(os.path.join(parent, name), here / name, follow_symlinks=False)


def sealed(path: Path) -> bool:
    """Whether a bundle directory was sealed, i.e. made read-only after its version was committed."""
    try:
        return not os.lstat(path).st_mode & 0o222
    except OSError:
        return False


def dir_identity(path: Path) -> tuple[int, int]:
    """What tells one directory from another that took its place: (device, inode); a rename keeps it."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree, read-only parts included; nothing if absent."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, _ in os.walk(path):
            for directory in [parent, *(os.path.join(parent, d) for d in dirs)]:
                with contextlib.suppress(OSError):
                    os.chmod(directory, 0o755)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink()
