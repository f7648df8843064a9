"""The model store interface that store plugins implement.

A store keeps numbered versions per model name and aliases that point at
them. Bundles are written by `opsloop.bundle` into a staging directory; the
store moves them into place and records them atomically.

Every alias change (promote, rollback, deploy) is kept in an audit trail of
`AliasChange` records (issue 4): who, when, from which version to which, why.
`rollback` walks that trail back, like an undo stack, so that rolling back
twice goes back two promotions rather than toggling between two versions.

`BundleFiles` is the on-disk half that every store keeping bundles as files
shares (the local store, and a database-backed one with a bundle directory):
staging, atomic placement, orphan replacement, read-only sealing, removal.
`SQLStore` is the rest of such a store when its records are in SQL tables
(SQLite, PostgreSQL): the queries, checks, messages, alias history and
rollback, with the database's dialect, connection, locking and numbering left
to the plugin.
"""

from __future__ import annotations

import abc
import contextlib
import getpass
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from opsloop.errors import StoreError, closest
from opsloop.types import ModelVersion

# `fullmatch`, not `match` with `$`: `$` also matches before a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

AliasAction = Literal["set", "rollback"]
STAGING_TTL = 3600.0  # seconds after which a staging leftover is a leftover, not work in progress


def check_name(value: str, what: str = "model name") -> str:
    """A model or alias name that is safe as a directory name; StoreError otherwise."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise StoreError(f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..'")
    return value


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
            if not number.isdigit() or int(number) < 1:
                raise StoreError(f"invalid version in {text!r}: expected NAME:N with N >= 1")
            return cls(name=check_name(name), version=int(number))
        return cls(name=check_name(name))


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
        action: `"set"` (promote, deploy) or `"rollback"`.
    """

    name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    at: str
    reason: str = ""
    action: AliasAction = "set"


def rollback_target(changes: Iterable[AliasChange], current: int, exists: set[int]) -> int | None:
    """The version a rollback of one alias goes back to, or None when there is none.

    The changes (oldest first, one alias) are replayed as an undo stack: a
    `set` pushes its version, a `rollback` pops back to the version it went
    to. The target is the nearest version below the top that still exists
    and differs from `current`; versions deleted since are skipped.
    """
    stack: list[int] = []
    for change in changes:
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
        get consecutive numbers without gaps or duplicates.
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
                  actor: str | None = None) -> AliasChange | None:
        """Point `name@alias` at `version` and record the change in the history.

        Args:
            name: Model name.
            alias: Alias name, checked with `check_name`.
            version: An existing version (StoreError otherwise).
            reason: Why, for the audit trail.
            actor: Who; the current login name by default.

        Returns:
            The recorded change, or None when the alias already pointed there
            (nothing is recorded then).
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
        version that still exists.

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

    def staging_dir(self) -> Path:
        """An empty directory to write a bundle into before `register` (default: a temp dir)."""
        return Path(tempfile.mkdtemp(prefix="opsloop-bundle-"))

    def close(self) -> None:
        """Release connections; the default has none."""

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
            raise StoreError(f"cannot create the model store at {self.root}: {exc}") from None

    def staging_dir(self) -> Path:
        """A new empty directory in `staging/`."""
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.staging))

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
        if staged.parent != self.staging:  # not ours: copy it onto our filesystem (the caller keeps theirs)
            copy = self.staging_dir()
            copy.rmdir()
            shutil.copytree(staged, copy, symlinks=True)
            staged = copy
        for parent, _, files in os.walk(staged):  # durable before it is recorded, read-only from now on
            for fname in files:
                _fsync(Path(parent, fname))
                Path(parent, fname).chmod(0o444)
            _fsync(Path(parent))
        return staged, manifest, digest

    def place(self, staged: Path, name: str, version: int) -> str:
        """Rename a prepared bundle to its final place; its path relative to the root."""
        relative = f"bundles/{check_name(name)}/{int(version)}"
        target = self.root / relative
        remove_tree(target)  # an orphan: the number has no record, so neither has the place
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        _fsync(target.parent)
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


# -- stores keeping their records in SQL tables ---------------------------------

# A whole version as ModelVersion wants it; the aliases pointing at it folded in, comma-joined.
VERSION_QUERY = """SELECT v.name, v.version, created_at, created_by, flavor, task, metrics, params, lineage,
    digest, path, (SELECT {join_aliases} FROM aliases a WHERE a.name = v.name AND a.version = v.version)
    FROM versions v JOIN details d ON d.id = v.id"""
HISTORY_COLUMNS = "name, alias, from_version, to_version, actor, at, reason, action"


class Statements:
    """The statements every `SQLStore` runs, in one database's dialect.

    Written once with `?` placeholders, which `param` replaces (`%s` for
    psycopg); `join_aliases` is the aggregate that joins alias names with
    commas (names cannot contain one).
    """

    def __init__(self, *, param: str, join_aliases: str) -> None:
        def q(text: str) -> str:
            return text.replace("?", param)

        version = VERSION_QUERY.format(join_aliases=join_aliases)
        self.get = q(f"{version} WHERE v.name = ? AND v.version = ?")
        self.latest = q(f"{version} WHERE v.name = ? ORDER BY v.version DESC LIMIT 1")
        self.versions = q(f"{version} WHERE v.name = ? ORDER BY v.version")
        self.resolve = q(f"{version} JOIN aliases x ON x.name = v.name AND x.version = v.version "
                         "WHERE x.name = ? AND x.alias = ?")
        self.summaries = q("SELECT version, created_at, created_by, flavor, task, metrics, digest FROM versions "
                           "WHERE name = ? ORDER BY version")
        self.models = ("SELECT name, count(*), max(version), max(created_at) FROM versions "
                       "GROUP BY name ORDER BY name")
        self.all_aliases = "SELECT name, alias, version FROM aliases ORDER BY alias"
        self.model_names = "SELECT name FROM models"
        self.last_version = q("SELECT last_version FROM models WHERE name = ?")
        self.span = q("SELECT count(*), min(version), max(version) FROM versions WHERE name = ?")
        self.exists = q("SELECT 1 FROM versions WHERE name = ? AND version = ?")
        self.path = q("SELECT path FROM versions WHERE name = ? AND version = ?")
        self.insert_details = q("INSERT INTO details (id, params, lineage) VALUES (?, ?, ?)")
        self.delete = (q("DELETE FROM details WHERE id = (SELECT id FROM versions WHERE name = ? AND version = ?)"),
                       q("DELETE FROM versions WHERE name = ? AND version = ?"))
        self.aliases = q("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias")
        self.alias = q("SELECT version FROM aliases WHERE name = ? AND alias = ?")
        self.pointing = q("SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias")
        self.set_alias = q("INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
                           "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version")
        self.history = q(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = ? ORDER BY id")
        self.alias_history = q(f"SELECT {HISTORY_COLUMNS} FROM alias_history WHERE name = ? AND alias = ? "
                               "ORDER BY id")


class Transaction:
    """An open write transaction of an `SQLStore`: its statements, and what to undo if it fails."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self.aborts: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.con.execute(sql, params)

    def on_abort(self, undo: Callable[[], None]) -> None:
        """Have `undo` called if the transaction fails, before its rollback (the lock still held)."""
        self.aborts.append(undo)

    def abort(self) -> None:
        """Call the `on_abort` callbacks, newest first; one that fails does not stop the rollback."""
        for undo in reversed(self.aborts):
            with contextlib.suppress(Exception):
                undo()


class SQLStore(ModelStore):
    """A store with its records in SQL tables and its bundles in a `BundleFiles` directory.

    Everything but the database itself: the queries (`Statements`), name
    checks, messages, the conversion of rows, registration around a number,
    alias history and rollback, delete checks. Both the local (SQLite) and the
    PostgreSQL store are one, with the same tables (`models`, `versions`,
    `details`, `aliases`, `alias_history`). A subclass gives:

    - `SQL`, the statements in its dialect;
    - `_initialise()`, for the connection it hands to `_open`;
    - `_read()`, a context yielding a connection (`execute(sql, params)`) for reads;
    - `_transaction()`, a context yielding a `Transaction` that commits at the
      end, or calls `abort()` and rolls back when the block raises;
    - `_take_number`, `_insert_version` and `_insert_change`: numbering under
      concurrency and where the time comes from;
    - `_existing`, which of some version numbers still exist;
    - `_lock_model`, when its transactions do not already exclude other writers.
    """

    SQL: ClassVar[Statements]
    _con: Any  # the connection, which the subclass opens

    def __init__(self, root: Path) -> None:
        self.files = BundleFiles(root)
        self.root, self.bundles, self.staging = self.files.root, self.files.bundles, self.files.staging
        self._lock = threading.RLock()  # one connection, shared by threads (the HTTP server's)
        self.files.create()

    def _open(self, con: Any) -> None:
        """Take the store's connection: `_initialise` it (closed again if that fails), then sweep `staging/`."""
        self._con = con
        try:
            self._initialise()
        except BaseException:
            con.close()
            raise
        self.files.sweep()

    # -- what the database gives -----------------------------------------------

    @abc.abstractmethod
    def _initialise(self) -> None:
        """Set a new connection up; create the tables if the registry is new."""

    @abc.abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """A connection for reads, StoreErrors for the database's failures."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """A write transaction (see the class docstring)."""

    @abc.abstractmethod
    def _take_number(self, tx: Transaction, name: str) -> int:
        """The next number of `name`, held until the commit: no other writer may take it."""

    @abc.abstractmethod
    def _insert_version(self, tx: Transaction, name: str, number: int, summary: tuple[str, ...],
                        relative: str) -> int:
        """Insert the version row (and the model's); its id.

        `summary` is `(created_by, flavor, task, metrics, digest)`.
        """

    @abc.abstractmethod
    def _insert_change(self, tx: Transaction, name: str, alias: str, current: int | None, version: int,
                       actor: str, reason: str, action: str) -> str:
        """Insert one `alias_history` row; its time."""

    @abc.abstractmethod
    def _existing(self, tx: Transaction, name: str, numbers: list[int]) -> set[int]:
        """Those of `numbers` that are versions of `name`."""

    def _lock_model(self, tx: Transaction, name: str) -> None:
        """Hold other writers of `name` off until the commit (StoreError if unknown).

        Nothing by default: for stores whose transactions take the whole store's write lock.
        """

    # -- shared plumbing -------------------------------------------------------

    def _require_model(self, con: Any, name: str) -> int:
        """The last number given to `name`; StoreError with the closest name if unknown."""
        row = con.execute(self.SQL.last_version, (name,)).fetchone()
        if row is None:
            check_name(name)
            raise unknown_model(name, (r[0] for r in con.execute(self.SQL.model_names)))
        return row[0]

    def _missing_version(self, con: Any, name: str, version: int) -> StoreError:
        last = self._require_model(con, name)
        count, low, high = con.execute(self.SQL.span, (name,)).fetchone()
        have = f"it has {count} version(s), {low} to {high}" if count else "it has no versions left"
        if 1 <= version <= last:
            return StoreError(f"model {name} has no version {version}: it was deleted ({have})")
        return StoreError(f"model {name} has no version {version} ({have})")

    def _no_versions(self, con: Any, name: str) -> StoreError:
        self._require_model(con, name)
        return StoreError(f"model {name} has no versions left (all deleted)")

    def _versions(self, rows: list[tuple[Any, ...]]) -> list[ModelVersion]:
        """ModelVersions from `Statements` version rows, the JSON columns parsed in one go each."""
        numbers = [r[1] for r in rows]
        metrics, params, lineage = (_loads_rows([r[i] for r in rows], rows[0][0], numbers) for i in (6, 7, 8))
        root = str(self.root)
        return [ModelVersion(name=r[0], version=r[1], created_at=r[2], created_by=r[3], flavor=r[4], task=r[5],
                             metrics=m, params=p, lineage=li, digest=r[9], path=Path(root, r[10]),
                             aliases=tuple(sorted(r[11].split(","))) if r[11] else ())
                for r, m, p, li in zip(rows, metrics, params, lineage, strict=True)]

    # -- versions --------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self.files.staging_dir()

    def register(self, name: str, staged: Path, manifest: dict[str, Any]) -> ModelVersion:
        check_name(name)
        staged, disk, digest = self.files.prepare(name, staged)
        meta = manifest or disk
        lineage = meta.get("lineage") or {}
        summary = (str(lineage.get("user") or current_user()), str(meta.get("flavor") or ""),
                   str(meta.get("task") or ""), json.dumps(meta.get("metrics") or {}, default=str), digest)
        details = (json.dumps(meta.get("params") or {}, default=str), json.dumps(lineage, default=str))
        identity = dir_identity(staged)
        with self._transaction() as tx:
            number = self._take_number(tx, name)
            # A directory already at this number is an orphan of a registration killed
            # between its rename and its commit: `place` replaces it.
            relative = self.files.place(staged, name, number)
            tx.on_abort(lambda: self.files.unplace(relative, staged, identity))
            row_id = self._insert_version(tx, name, number, summary, relative)
            tx.execute(self.SQL.insert_details, (row_id, *details))
        self.files.seal(relative)
        return self.get(name, number)

    def get(self, name: str, version: int) -> ModelVersion:
        return self._get(check_name(name), version)

    def _get(self, name: str, version: int) -> ModelVersion:
        with self._read() as con:
            row = con.execute(self.SQL.get, (name, version)).fetchone()
            if row is None:
                raise self._missing_version(con, name, version)
        return self._versions([row])[0]

    def latest(self, name: str) -> ModelVersion:
        return self._latest(check_name(name))

    def _latest(self, name: str) -> ModelVersion:
        with self._read() as con:
            row = con.execute(self.SQL.latest, (name,)).fetchone()
            if row is None:
                raise self._no_versions(con, name)
        return self._versions([row])[0]

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """As `ModelStore.resolve`, with `NAME@ALIAS` in one query (one round trip, not two)."""
        if isinstance(ref, str):
            ref = Ref.parse(ref)  # checks the names: not again below
        else:
            check_name(ref.name)
        if ref.alias is not None:
            with self._read() as con:
                row = con.execute(self.SQL.resolve, (ref.name, ref.alias)).fetchone()
            if row is not None:
                return self._versions([row])[0]
            return super().resolve(ref)  # the errors
        if ref.version is not None:
            return self._get(ref.name, ref.version)
        return self._latest(ref.name)

    def versions(self, name: str) -> list[ModelVersion]:
        check_name(name)
        with self._read() as con:
            rows = con.execute(self.SQL.versions, (name,)).fetchall()
            if not rows:
                raise self._no_versions(con, name)
        return self._versions(rows)

    def version_summaries(self, name: str) -> list[VersionSummary]:
        check_name(name)
        with self._read() as con:
            rows = con.execute(self.SQL.summaries, (name,)).fetchall()
            if not rows:
                raise self._no_versions(con, name)
            pointing: dict[int, list[str]] = {}
            for alias, version in con.execute(self.SQL.aliases, (name,)):
                pointing.setdefault(version, []).append(alias)
        metrics = _loads_rows([r[5] for r in rows], name, [r[0] for r in rows])
        none = ()
        return [VersionSummary(name=name, version=r[0], created_at=r[1], created_by=r[2], flavor=r[3], task=r[4],
                               metrics=m, digest=r[6], aliases=tuple(pointing.get(r[0], none)))
                for r, m in zip(rows, metrics, strict=True)]

    def models(self) -> list[ModelSummary]:
        with self._read() as con:
            rows = con.execute(self.SQL.models).fetchall()
            aliases: dict[str, dict[str, int]] = {}
            for name, alias, version in con.execute(self.SQL.all_aliases):
                aliases.setdefault(name, {})[alias] = version
        return [ModelSummary(name=name, versions=count, latest=latest, updated_at=updated,
                             aliases=aliases.get(name, {})) for name, count, latest, updated in rows]

    def delete(self, name: str, version: int) -> None:
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)
            row = tx.execute(self.SQL.path, (name, version)).fetchone()
            if row is None:
                raise self._missing_version(tx, name, version)
            pointing = [r[0] for r in tx.execute(self.SQL.pointing, (name, version))]
            if pointing:
                names = ", ".join(f"{name}@{a}" for a in pointing)
                raise StoreError(f"cannot delete {name}:{version}: {'aliases' if len(pointing) > 1 else 'alias'} "
                                 f"{names} point{'' if len(pointing) > 1 else 's'} at it; "
                                 "point them at another version first")
            for statement in self.SQL.delete:
                tx.execute(statement, (name, version))
        # The row goes first: a crash from here on leaves a directory nobody lists,
        # never a listed version without its files.
        self.files.remove(row[0])

    # -- aliases ---------------------------------------------------------------

    def alias(self, name: str, alias: str) -> int | None:
        check_name(alias, "alias")
        check_name(name)
        with self._read() as con:
            row = con.execute(self.SQL.alias, (name, alias)).fetchone()
            if row is None:
                self._require_model(con, name)
                return None
        return row[0]

    def aliases(self, name: str) -> dict[str, int]:
        check_name(name)
        with self._read() as con:
            self._require_model(con, name)
            return dict(con.execute(self.SQL.aliases, (name,)))

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None) -> AliasChange | None:
        check_name(alias, "alias")
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)
            if tx.execute(self.SQL.exists, (name, version)).fetchone() is None:
                raise self._missing_version(tx, name, version)
            row = tx.execute(self.SQL.alias, (name, alias)).fetchone()
            current = row[0] if row else None
            if current == version:
                return None
            return self._move_alias(tx, name, alias, current, version, reason, actor, "set")

    def rollback(self, name: str, alias: str = "production", *, reason: str = "",
                 actor: str | None = None) -> AliasChange:
        check_name(alias, "alias")
        check_name(name)
        with self._transaction() as tx:
            self._lock_model(tx, name)  # two operators rolling back at once go back two steps
            row = tx.execute(self.SQL.alias, (name, alias)).fetchone()
            if row is None:
                self._require_model(tx, name)
                raise unknown_alias(name, alias, dict(tx.execute(self.SQL.aliases, (name,))))
            current = row[0]
            changes = self._history(tx, name, alias)
            exists = self._existing(tx, name, sorted({c.to_version for c in changes}))
            target = rollback_target(changes, current, exists)
            if target is None:
                raise StoreError(f"cannot roll back {name}@{alias}: it points at version {current} and there is "
                                 "no earlier version to go back to (see `opsloop models history`)")
            return self._move_alias(tx, name, alias, current, target, reason, actor, "rollback")

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        if alias is not None:
            check_name(alias, "alias")
        check_name(name)
        with self._read() as con:
            self._require_model(con, name)
            return self._history(con, name, alias)

    def _history(self, con: Any, name: str, alias: str | None) -> list[AliasChange]:
        if alias is None:
            rows = con.execute(self.SQL.history, (name,))
        else:
            rows = con.execute(self.SQL.alias_history, (name, alias))
        return [AliasChange(name=r[0], alias=r[1], from_version=r[2], to_version=r[3], actor=r[4], at=r[5],
                            reason=r[6], action=r[7]) for r in rows]

    def _move_alias(self, tx: Transaction, name: str, alias: str, current: int | None, version: int, reason: str,
                    actor: str | None, action: AliasAction) -> AliasChange:
        actor = actor or current_user()
        tx.execute(self.SQL.set_alias, (name, alias, version))
        at = self._insert_change(tx, name, alias, current, version, actor, reason, action)
        return AliasChange(name=name, alias=alias, from_version=current, to_version=version, actor=actor, at=at,
                           reason=reason, action=action)

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _loads_rows(texts: list[str], name: str, numbers: list[int]) -> list[Any]:
    """Parse one JSON column of many rows at once (one call instead of thousands: 2x faster)."""
    try:
        return json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        for text, number in zip(texts, numbers, strict=True):
            try:
                json.loads(text)
            except ValueError as exc:
                raise StoreError(f"model {name}:{number}: its record in the registry is damaged ({exc})") from None
        raise
