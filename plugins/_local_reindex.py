"""Rebuild a local registry's index (`registry.db`) from its bundles' manifests.

`opsloop models reindex` (issue 8, defect 4). Every `bundles/<name>/<N>/`
whose files match its manifest becomes version N of `name` again: flavor,
task, metrics, params and lineage from the manifest, `created_by` from the
lineage, `created_at` from the manifest (bundles written before it recorded
one: the time its manifest file was written). Whatever the old database still
gives is kept: its times, its aliases and alias history, the last number of
each model (numbers are never reused), and the digest each version had, so a
bundle whose manifest changed since is reported as tampered and skipped. What
cannot be read is said in the report: where no alias can be recovered, there
is no `production` until someone promotes one.

A version's threshold (issue 13) comes back as its manifest's, replaced by the
last one the kept alias history gave it (`promote --threshold`). A threshold
set after registration is not in the bundle: when the alias history cannot be
read either, it is not recovered, and the version is back at its manifest's.

Two cases:
- the index cannot be opened (missing, empty, without tables, corrupt): the
  old file is moved aside as `registry.db.broken-<time>` (never deleted), a
  new one is written beside it and renamed into place;
- the index opens but lost versions whose bundles are on disk (an older
  `registry.db` restored from a backup), or `--force`: the index is copied to
  `registry.db.before-reindex-<time>`, then rewritten in one transaction that
  holds the registry's write lock.

A directory that was never sealed (its registration did not commit) is
indexed only when the old index is gone; otherwise it is an orphan, left to
the next registration of its number.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from opsloop.errors import BundleError, RegistryDamaged, StoreError
from opsloop.store import BundleFiles, check_threshold, current_user, os_error, sealed

@attrs.define
class Old:
    """What the old index still gives; `notes` say what it does not."""

    versions: dict[tuple[str, int], dict[str, Any]] = attrs.field(factory=dict)
    last: dict[str, int] = attrs.field(factory=dict)
    aliases: list[tuple[str, str, int]] | None = None
    history: list[tuple[Any, ...]] | None = None
    notes: list[str] = attrs.field(factory=list)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _rows(con: Any, sql: str, what: str, notes: list[str]) -> list[tuple[Any, ...]] | None:
    """Every row a query still returns; None (with a note) when it fails before the end."""
    rows: list[tuple[Any, ...]] = []
    try:
        for row in con.execute(sql):
            rows.append(tuple(row))
    except sqlite3.Error as exc:
        notes.append(f"{what}: unreadable in the old index ({exc}); {len(rows)} row(s) read before the damage")
        return None
    return rows


def read_old(con: Any) -> Old:
    """What the old index holds, table by table, as far as each can be read."""
    old = Old()
    rows = _rows(con, "SELECT name, version, created_at, created_by, digest FROM versions", "versions", old.notes)
    for name, version, created_at, created_by, digest in rows or ():
        old.versions[(name, version)] = {"created_at": created_at, "created_by": created_by, "digest": digest}
    old.last = dict(_rows(con, "SELECT name, last_version FROM models", "models", old.notes) or ())
    old.aliases = _rows(con, "SELECT name, alias, version FROM aliases", "aliases", old.notes)
    history = "SELECT name, alias, from_version, to_version, actor, at, reason, action{} FROM alias_history ORDER BY id"
    try:  # an index from before schema 3 has no threshold column: its changes carried none
        con.execute("SELECT threshold FROM alias_history LIMIT 0")
        old.history = _rows(con, history.format(", threshold"), "alias history", old.notes)
    except sqlite3.Error:  # or damaged: then the query below says how far it could be read
        old.history = _rows(con, history.format(", NULL"), "alias history", old.notes)
    return old


def read_broken(db: Path) -> Old:
    """`read_old` on a damaged file, read-only; an empty or unreadable one gives an empty `Old`."""
    if not db.is_file() or db.stat().st_size == 0:
        return Old(notes=[f"{db.name} was {'empty' if db.is_file() else 'missing'}: nothing to recover from it"])
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return Old(notes=[f"{db.name} cannot be opened ({exc}): nothing recovered from it"])
    try:
        return read_old(con)
    finally:
        con.close()


def plan(files: BundleFiles, old: Old, *, orphans: bool) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The version rows the bundles give, and the bundles skipped with why."""
    from opsloop.bundle import manifest_digest, read_manifest

    rows, skipped = [], []
    for name, number, path in sorted(files.version_dirs()):
        ref = f"{name}:{number}"
        known = old.versions.get((name, number))
        if known is None and not orphans and not sealed(path):
            skipped.append({"ref": ref, "reason": "never sealed and not in the index: a registration that did "
                                                  "not commit (the next one of this number replaces it)"})
            continue
        try:
            manifest = read_manifest(path, ref=ref)
            digest = manifest_digest(path)
        except (BundleError, OSError) as exc:
            skipped.append({"ref": ref, "reason": str(exc)})
            continue
        if known is not None and known["digest"] and known["digest"] != digest:
            skipped.append({"ref": ref, "reason": f"tampered: manifest.json is {digest}, the index recorded "
                                                  f"{known['digest']}"})
            continue
        lineage = manifest.get("lineage") or {}
        created_at = (known or {}).get("created_at") or manifest.get("created_at") or datetime.fromtimestamp(
            (path / "manifest.json").stat().st_mtime, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows.append({
            "name": name, "version": number, "created_at": created_at,
            "created_by": (known or {}).get("created_by") or str(lineage.get("user") or current_user()),
            "flavor": str(manifest.get("flavor") or ""), "task": str(manifest.get("task") or ""),
            "metrics": json.dumps(manifest.get("metrics") or {}, default=str), "digest": digest,
            "path": f"bundles/{name}/{number}",
            "params": json.dumps(manifest.get("params") or {}, default=str),
            "lineage": json.dumps(lineage, default=str), "sealed": sealed(path),
            "threshold": _threshold(manifest.get("threshold"), old.history or (), name, number),
        })
    return rows, skipped


def _threshold(manifest: Any, history: Any, name: str, number: int) -> str | None:
    """A version's threshold as JSON text: the last one the history gave it, or else its manifest's, or None."""
    for row in reversed(history):
        if (row[0], row[3]) == (name, number) and row[8] is not None:
            return row[8]
    if manifest is None:
        return None
    try:
        return json.dumps(check_threshold(manifest, f"{name}:{number}"), default=str, allow_nan=False)
    except StoreError:
        return None  # not a threshold the store would have registered


def restored_aliases(old: Old, present: set[tuple[str, int]]) -> tuple[dict[tuple[str, str], int], str]:
    """Where each alias pointed, from the old aliases table or else by replaying its history."""
    if old.aliases:
        found = {(n, a): v for n, a, v in old.aliases}
        source = "the old index's aliases"
    elif old.history:
        found = {}
        for name, alias, _, to_version, *_ in old.history:
            found[(name, alias)] = to_version
        source = "the old index's alias history (the last move of each alias)"
    else:
        return {}, ("no alias could be recovered from the old index: production and the others are unset until "
                    "`opsloop models promote NAME VERSION`")
    gone = sorted(f"{n}@{a} -> {v}" for (n, a), v in found.items() if (n, v) not in present)
    if gone:
        source += f" (dropped, their version is not indexed: {', '.join(gone)})"
    return {key: v for key, v in found.items() if (key[0], v) in present}, source


def fill(con: Any, rows: list[dict[str, Any]], old: Old, aliases: dict[tuple[str, str], int]) -> int:
    """Insert models, versions, details, aliases and history (inside the caller's transaction)."""
    models: dict[str, tuple[int, str]] = {}
    for row in rows:
        last, first = models.get(row["name"], (0, row["created_at"]))
        models[row["name"]] = (max(last, row["version"], old.last.get(row["name"], 0)), min(first, row["created_at"]))
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for name, last in old.last.items():  # every version deleted: its numbers stay given all the same
        models.setdefault(name, (last, now))
    con.executemany("INSERT INTO models (name, last_version, created_at) VALUES (?, ?, ?)",
                    [(n, last, at) for n, (last, at) in models.items()])
    for row in rows:
        cursor = con.execute("INSERT INTO versions (name, version, created_at, created_by, flavor, task, metrics, "
                             "digest, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             tuple(row[k] for k in ("name", "version", "created_at", "created_by", "flavor", "task",
                                                    "metrics", "digest", "path")))
        con.execute("INSERT INTO details (id, params, lineage, threshold) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, row["params"], row["lineage"], row["threshold"]))
    con.executemany("INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?)",
                    [(n, a, v) for (n, a), v in aliases.items()])
    history = [h for h in old.history or () if h[0] in models]
    if old.history is None:  # aliases kept without their trail: the trail says where they come from
        history = [(n, a, None, v, "opsloop models reindex", now, "restored by reindex: the alias history was "
                    "unreadable", "set", None) for (n, a), v in aliases.items()]
    con.executemany("INSERT INTO alias_history (name, alias, from_version, to_version, actor, at, reason, action, "
                    "threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", history)
    return len(history)


def report(db: Path, rows: list[dict[str, Any]], skipped: list[dict[str, str]], aliases: dict[tuple[str, str], int],
           source: str, history: int, old: Old, kept: Path) -> dict[str, Any]:
    notes = list(old.notes)
    if not old.last:
        notes.append("the old index's last version numbers are lost: a number above a model's highest bundle "
                     "that was given to a version deleted since may be given again")
    unsealed = [f"{r['name']}:{r['version']}" for r in rows if not r["sealed"]]
    if unsealed:
        notes.append(f"never sealed, indexed (their registration may not have committed): {', '.join(unsealed)}")
    return {
        "registry": str(db), "old_index": str(kept),
        "versions": [f"{r['name']}:{r['version']}" for r in rows], "skipped": skipped,
        "aliases": {f"{n}@{a}": v for (n, a), v in sorted(aliases.items())}, "aliases_from": source,
        "history_entries": history, "notes": notes,
    }


def _seal(files: BundleFiles, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        files.seal(row["path"])


@contextlib.contextmanager
def _exclusive(root: Path):  # noqa: ANN202 - a context manager
    """One reindex at a time per registry (a lock file; the database itself may be unusable)."""
    path = root / "registry.db.reindex-lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_error("lock the registry for reindexing", path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(f"another `opsloop models reindex` is rebuilding {root / 'registry.db'}") from None
        yield
    finally:
        os.close(fd)


def rebuild(root: Path, *, force: bool = False) -> dict[str, Any]:
    """Rebuild `root/registry.db` from the bundles; the report of what was indexed, skipped and restored."""
    from opsloop.plugins.local_store import LocalStore

    files = BundleFiles(root)
    db = files.root / "registry.db"
    if not files.bundles.is_dir():
        raise StoreError(f"no model registry at {files.root}: it has no bundles/ directory to reindex")
    if not files.writable():
        raise StoreError(f"cannot reindex {db}: {files.root} is read-only")
    with _exclusive(files.root):
        try:
            store = LocalStore(files.root)
        except RegistryDamaged:
            return _replace(files, db)
        with store:
            return _in_place(files, db, store, force=force)


def _replace(files: BundleFiles, db: Path) -> dict[str, Any]:
    """The index cannot be opened: build a new one beside it, move the old one aside, rename the new one in."""
    from opsloop.plugins.local_store import SCHEMA, SCHEMA_VERSION

    old = read_broken(db)
    rows, skipped = plan(files, old, orphans=not old.versions)
    present = {(r["name"], r["version"]) for r in rows}
    aliases, source = restored_aliases(old, present)
    fresh = db.with_name(f"registry.db.reindex-{os.getpid()}")
    kept = db.with_name(f"registry.db.broken-{_stamp()}")
    try:
        con = sqlite3.connect(fresh, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            history = fill(con, rows, old, aliases)
            con.execute("COMMIT")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        for suffix in ("", "-wal", "-shm"):  # never deleted: moved aside, the WAL with its database
            if os.path.lexists(f"{db}{suffix}"):
                os.rename(f"{db}{suffix}", f"{kept}{suffix}")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{fresh}{suffix}")
        os.rename(fresh, db)
    except OSError as exc:
        raise os_error("write the rebuilt index", fresh, exc) from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write the rebuilt index {fresh}: {exc}") from None
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{fresh}{suffix}")
    _seal(files, rows)
    return report(db, rows, skipped, aliases, source, history, old, kept)


def _in_place(files: BundleFiles, db: Path, store: Any, *, force: bool) -> dict[str, Any]:
    """The index opens: rewrite it in one transaction if it lost versions (or with `force`), after a copy."""
    kept = db.with_name(f"registry.db.before-reindex-{_stamp()}")
    with store._read() as con:  # the copy first: SQLite's backup cannot read inside our write transaction
        target = sqlite3.connect(kept)
        try:
            con.backup(target)
        finally:
            target.close()
    with store._transaction() as tx:  # the registry's write lock: no registration meanwhile
        con = tx.con
        old = read_old(con)
        rows, skipped = plan(files, old, orphans=False)
        lost = [f"{r['name']}:{r['version']}" for r in rows if (r["name"], r["version"]) not in old.versions]
        if not lost and not force:
            kept.unlink()  # our own copy of an index we leave alone
            raise StoreError(f"model registry {db} is readable and knows every bundle ({len(old.versions)} "
                             "version(s)): nothing to rebuild (--force rebuilds it anyway)")
        present = {(r["name"], r["version"]) for r in rows}
        aliases, source = restored_aliases(old, present)
        for table in ("aliases", "alias_history", "details", "versions", "models"):
            con.execute(f"DELETE FROM {table}")
        history = fill(con, rows, old, aliases)
    _seal(files, rows)
    return report(db, rows, skipped, aliases, source, history, old, kept)
