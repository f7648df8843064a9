"""Governed training data: the rows a version trained on, kept or referenced (issue 14, item 4; docs/data.md).

`[data] snapshot = "store"` writes the training rows (sensitive columns
dropped or hashed: `opsloop.sensitive`) as one Parquet file under the store,
`<root>/snapshots/<sha256>.parquet`, named by the sha256 of its bytes: two
versions trained on the same rows share one file. The file is written to a
temporary name and renamed into place (atomic), then made read-only.
`"reference"` records the source file's path, size and sha256 instead, for
data kept on an immutable location; `opsloop data show` checks it again.

Which versions use a snapshot is read from their lineage
(`lineage["data"]["snapshot"]`), so it works with every store that keeps
files (local-store, postgres-store) without a schema of its own. `prune`
removes files no registered version refers to, after a grace period so that a
registration under way keeps the file it is about to record; `remove` of a
snapshot a version needs is refused, naming the versions.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.bundle import sha256_file as file_digest  # `sha256:<hex>` of a file, as the bundle's files
from opsloop.errors import OpsloopError, StoreError
from opsloop.store import _fsync  # the store's own: one way to make a write durable

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import Config
    from opsloop.store import ModelStore
    from opsloop.types import Dataset

SUFFIX = ".parquet"
#: Unreferenced snapshots younger than this are kept by `prune`: a registration may be about to record one.
GRACE = 3600.0
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{8,64})")


class SnapshotError(OpsloopError):
    """A snapshot that is unknown, damaged, or needed by a version."""


def directory(store: ModelStore) -> Path:
    """The store's snapshot directory; StoreError when the store keeps no files."""
    where = store.snapshot_dir()
    if where is None:
        raise StoreError(f'the model store {store.uri} keeps no files, so it cannot keep data snapshots: set [data] '
                         'snapshot = "reference" (a verified reference to where the data is) or "none"')
    return Path(where)


def schema_of(frame: pd.DataFrame) -> list[dict[str, str]]:
    return [{"name": str(name), "dtype": str(dtype)} for name, dtype in frame.dtypes.items()]


def write(frame: pd.DataFrame, where: Path) -> tuple[str, Path, bool]:
    """Write `frame` as Parquet into `where`, content-addressed: (digest, path, new).

    `new` is False when a snapshot with the same bytes was already there (the
    temporary file is then removed and the existing one's time refreshed, so
    that `prune`'s grace period protects it until the caller records it).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # zstd: smaller than the default snappy on telemetry, and as quick to write (benchmarks/snapshots.py)
        pq.write_table(table, tmp, compression="zstd", compression_level=1)
        digest = file_digest(tmp)
        target = where / f"{digest.removeprefix('sha256:')}{SUFFIX}"
        if target.exists():
            tmp.unlink()
            with contextlib.suppress(OSError):
                os.utime(target)
            return digest, target, False
        _fsync(tmp)
        tmp.chmod(0o444)
        os.rename(tmp, target)
        _fsync(where)
        return digest, target, True
    except OSError as exc:
        from opsloop.store import os_error

        raise os_error("write a data snapshot", where, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def take(config: Config, store: ModelStore, data: Dataset) -> dict[str, Any] | None:
    """What `[data] snapshot` keeps of a version's training rows, for `lineage["data"]["snapshot"]`; None for
    "none"."""
    mode = config.data.snapshot
    if mode == "none":
        return None
    from opsloop.sensitive import Sensitive

    sensitive = Sensitive.from_config(config)
    hidden = {"sensitive": {"columns": list(sensitive.columns), "mode": sensitive.mode}} if sensitive else {}
    if mode == "reference":
        return {"mode": "reference", **reference(config), "rows": len(data), "training_rows": data.name, **hidden}
    where = directory(store)
    frame = sensitive.frame(data.frame).reset_index(drop=True)
    digest, path, _ = write(frame, where)
    return {"mode": "store", "digest": digest, "path": str(path.relative_to(where.parent)), "rows": len(frame),
            "bytes": path.stat().st_size, "columns": schema_of(frame), **hidden}


def reference(config: Config) -> dict[str, Any]:
    """The `[data] source` file: its absolute path, size and sha256 (an embedded set: its packaged file)."""
    from opsloop.data import EMBEDDED_PREFIX

    source = config.data.source
    if source.startswith(EMBEDDED_PREFIX):
        from opsloop import datasets

        path = datasets.path(source.removeprefix(EMBEDDED_PREFIX))
    else:
        path = config.resolve(source)
    path = Path(path).absolute()
    try:
        return {"source": source, "location": str(path), "sha256": file_digest(path), "bytes": path.stat().st_size}
    except OSError as exc:
        raise SnapshotError(f"cannot reference the data of [data] source {source!r}: {path}: "
                            f"{exc.strerror or exc}") from None


def verify_reference(entry: dict[str, Any]) -> str | None:
    """None when a reference's file still has its recorded sha256, else what is wrong."""
    path = Path(str(entry.get("location", "")))
    try:
        now = file_digest(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None if now == entry.get("sha256") else f"{path} changed: sha256 {now}, recorded {entry.get('sha256')}"


# ---------------------------------------------------------------------------
# What is there and who uses it
# ---------------------------------------------------------------------------


def usage(store: ModelStore) -> dict[str, list[str]]:
    """Digest -> the versions (`NAME:N`) whose lineage records that stored snapshot."""
    used: dict[str, list[str]] = {}
    for model in store.models():
        for version in store.versions(model.name):
            entry = recorded(version.lineage)
            if entry and entry.get("mode") == "store" and entry.get("digest"):
                used.setdefault(str(entry["digest"]), []).append(version.ref)
    return used


def recorded(lineage: Any) -> dict[str, Any] | None:
    """A version's snapshot entry, if its lineage has one."""
    data = lineage.get("data") if isinstance(lineage, dict) else None
    entry = data.get("snapshot") if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


def files(where: Path) -> Iterator[Path]:
    """The snapshot files in a directory (not the temporary ones)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(where):
            if entry.name.endswith(SUFFIX) and _DIGEST.fullmatch(entry.name.removesuffix(SUFFIX)):
                yield Path(entry.path)


def describe(path: Path, versions: list[str]) -> dict[str, Any]:
    """One snapshot: digest, path, rows, bytes, columns (from the Parquet footer), versions using it."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    pandas_types = {c.get("name"): c.get("numpy_type") for c in (schema.pandas_metadata or {}).get("columns", [])}
    stat = path.stat()
    return {"digest": "sha256:" + path.name.removesuffix(SUFFIX), "path": str(path), "rows": meta.num_rows,
            "bytes": stat.st_size, "created": _iso(stat.st_mtime),
            "columns": [{"name": f.name, "dtype": str(pandas_types.get(f.name) or f.type)} for f in schema],
            "versions": sorted(versions, key=_ref_key)}


def listing(store: ModelStore) -> list[dict[str, Any]]:
    """Every stored snapshot with the versions that use it; a recorded one whose file is gone as `missing`."""
    where = directory(store)
    used = usage(store)
    out = [describe(path, used.pop("sha256:" + path.name.removesuffix(SUFFIX), [])) for path in files(where)]
    out += [{"digest": digest, "path": None, "missing": True, "versions": sorted(refs, key=_ref_key)}
            for digest, refs in used.items()]
    return sorted(out, key=lambda e: e["digest"])


def find(store: ModelStore, text: str) -> dict[str, Any]:
    """A snapshot by digest (or a unique prefix of 8+ hex digits), or the one a version (`NAME:N`, `NAME@ALIAS`,
    `NAME`) trained on; SnapshotError naming what is wrong."""
    where = directory(store)
    match = _DIGEST.fullmatch(text.strip().lower())
    if match is None:
        from opsloop.store import Ref

        version = store.resolve(Ref.parse(text))
        entry = recorded(version.lineage)
        if entry is None:
            raise SnapshotError(f"{version.ref} has no data snapshot: it was registered with [data] snapshot = "
                                '"none" (its lineage keeps the fingerprint of its rows only)')
        if entry.get("mode") == "reference":
            problem = verify_reference(entry)
            return {**entry, "versions": [version.ref], "verified": problem is None,
                    **({"problem": problem} if problem else {})}
        text = str(entry["digest"])
        match = _DIGEST.fullmatch(text)
        assert match is not None
    prefix = match.group(1)
    found = [p for p in files(where) if p.name.startswith(prefix)]
    used = usage(store)
    if len(found) > 1:
        raise SnapshotError(f"snapshot {text!r} is ambiguous: {len(found)} snapshots start with {prefix}")
    if not found:
        refs = [refs for digest, refs in used.items() if digest.removeprefix("sha256:").startswith(prefix)]
        if refs:
            raise SnapshotError(f"snapshot {text!r} is missing from {where}, and {', '.join(refs[0])} need it")
        known = sorted(p.name.removesuffix(SUFFIX)[:12] for p in files(where))
        raise SnapshotError(f"unknown snapshot {text!r}: " + (f"the store has {', '.join(known[:10])}"
                                                              + (", ..." if len(known) > 10 else "")
                                                              if known else f"no snapshots in {where} yet")
                            + " (opsloop data list)")
    path = found[0]
    return describe(path, used.get("sha256:" + path.name.removesuffix(SUFFIX), []))


def read(store: ModelStore, text: str, *, verify: bool = True) -> pd.DataFrame:
    """The rows of a stored snapshot (checked against its digest unless `verify` is False)."""
    import pandas as pd

    entry = find(store, text)
    if entry.get("mode") == "reference" or not entry.get("path"):
        raise SnapshotError(f"{text}: not a stored snapshot (a reference to {entry.get('location')})")
    path = Path(entry["path"])
    if verify and file_digest(path) != entry["digest"]:
        raise SnapshotError(f"snapshot {path} does not match its digest: it was changed after it was written")
    return pd.read_parquet(path)


# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------


def prune(store: ModelStore, *, older_than: float = GRACE, dry_run: bool = False) -> dict[str, Any]:
    """Remove stored snapshots no registered version refers to and older than `older_than` seconds (and
    temporary files as old); never one a version needs. Returns what was (or would be) removed and kept."""
    where = directory(store)
    used = usage(store)
    limit = time.time() - older_than
    removed, kept_young, freed = [], [], 0
    for path in files(where):
        digest = "sha256:" + path.name.removesuffix(SUFFIX)
        if digest in used:
            continue
        stat = path.stat()
        if stat.st_mtime > limit:
            kept_young.append(digest)
            continue
        if not dry_run:
            _remove(path)
        removed.append(digest)
        freed += stat.st_size
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(where):
            if entry.name.startswith(".tmp-") and entry.stat().st_mtime < limit and not dry_run:
                _remove(Path(entry.path))
    return {"removed": removed, "bytes": freed, "dry_run": dry_run, "kept_in_use": sorted(used),
            "kept_recent": kept_young}


def remove(store: ModelStore, text: str) -> dict[str, Any]:
    """Remove one stored snapshot; refused (SnapshotError naming them) while a registered version uses it."""
    entry = find(store, text)
    if entry.get("mode") == "reference":
        raise SnapshotError(f"{text}: a reference to {entry.get('location')} is part of the version's lineage, "
                            "not a file of the store; nothing to remove")
    if entry["versions"]:
        raise SnapshotError(f"snapshot {entry['digest'][:19]} is not removed: {', '.join(entry['versions'])} "
                            "trained on it (delete those versions first: opsloop models delete)")
    _remove(Path(entry["path"]))
    return entry


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        from opsloop.store import os_error

        raise os_error("remove a data snapshot", path, exc) from None


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _ref_key(ref: str) -> tuple[str, int]:
    name, _, number = ref.rpartition(":")
    return name, int(number) if number.isdigit() else 0
