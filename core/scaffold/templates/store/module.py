"""$title: a model registry kept as one JSON index beside the bundle directories (`[store] uri = "$name:PATH"`).

`open_store` answers URIs that start with `$name:`; the rest is a directory
(relative to the config's directory). Inside it, `index.json` holds every
version's record, the aliases and their history; `bundles/<model>/<N>/`
holds the bundles, placed atomically and sealed read-only by opsloop's
`BundleFiles`. Every change takes an exclusive lock (`index.lock`, flock:
processes on one machine) and rewrites the index atomically (`os.replace`),
so concurrent registrations get consecutive numbers and a crash leaves the
old index or the new one. The same index keeps the loop's journal and lock
(`opsloop loop` needs them). To keep the records somewhere else (a database,
an object store, an API), replace `_read` and `_write`: the rest is the
contract `opsloop.store.ModelStore` documents.

The plugin has no options: the URI says where.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop import ModelVersion, StoreError, hookimpl
from opsloop.store import (
    AliasChange,
    BundleFiles,
    CycleRecord,
    LockState,
    ModelStore,
    ModelSummary,
    check_name,
    check_threshold,
    current_user,
    rollback_target,
    strict_json,
    unknown_alias,
    unknown_model,
)

SCHEME = "$name:"
Index = dict[str, Any]


@hookimpl
def open_store(uri: str, workdir: Path) -> ModelStore | None:
    """A `JsonStore` for `$name:PATH`; None for any other URI (another store plugin's)."""
    if not uri.startswith(SCHEME):
        return None
    path = Path(uri.removeprefix(SCHEME).removeprefix("//")).expanduser()
    if not str(path).strip() or str(path) == ".":
        raise StoreError(f'$name: store URI "{uri}" names no directory: write $name:PATH')
    return JsonStore(path if path.is_absolute() else Path(workdir) / path, uri=uri)


def _now(later: float = 0.0) -> str:
    """The time (plus `later` seconds) as ISO 8601 UTC, milliseconds, `Z`: text that sorts as time does."""
    return (datetime.now(UTC) + timedelta(seconds=later)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonStore(ModelStore):
    """The registry in `root`: `index.json`, `index.lock`, `bundles/`, `staging/`."""

    def __init__(self, root: Path, *, uri: str) -> None:
        self.uri = uri
        self.files = BundleFiles(root)
        self.files.create()
        self.root = self.files.root
        self.index_path = self.root / "index.json"
        self.lock_path = self.root / "index.lock"

    # -- where the records live: replace these two to keep them elsewhere -------------------------

    def _read(self) -> Index:
        """The whole index (an empty one before the first registration)."""
        try:
            index: Index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"models": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(f"$name: cannot read the index {self.index_path}: {exc}") from None
        return index

    @contextlib.contextmanager
    def _write(self) -> Iterator[Index]:
        """The index to change, under an exclusive lock; written back atomically unless the block raised."""
        try:
            lock = open(self.lock_path, "a")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            raise StoreError(f"$name: cannot lock {self.lock_path}: {exc.strerror or exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            index = self._read()
            yield index
            temporary = self.index_path.with_name(f".index.{os.getpid()}.tmp")
            try:
                temporary.write_text(json.dumps(index, indent=1), encoding="utf-8")
                os.replace(temporary, self.index_path)
            except OSError as exc:
                temporary.unlink(missing_ok=True)
                raise StoreError(f"$name: cannot write the index {self.index_path}: {exc}") from None

    # -- reading ------------------------------------------------------------------------------------

    def _model(self, index: Index, name: str) -> dict[str, Any]:
        check_name(name)
        model: dict[str, Any] | None = index["models"].get(name)
        if model is None:
            raise unknown_model(name, index["models"])
        return model

    def _version(self, name: str, model: Mapping[str, Any], number: int) -> ModelVersion:
        record = model["versions"].get(str(number))
        if record is None:
            have = ", ".join(sorted(model["versions"], key=int)) or "none left"
            raise StoreError(f"model {name} has no version {number} (versions: {have})")
        aliases = tuple(sorted(a for a, v in model["aliases"].items() if v == number))
        return ModelVersion(name=name, version=number, created_at=record["created_at"],
                            created_by=record["created_by"], flavor=record["flavor"], task=record["task"],
                            metrics=record["metrics"], params=record["params"], lineage=record["lineage"],
                            aliases=aliases, path=self.root / record["path"], digest=record["digest"],
                            threshold=record.get("threshold"))

    def models(self) -> list[ModelSummary]:
        index = self._read()
        out = []
        for name, model in sorted(index["models"].items()):
            numbers = sorted(map(int, model["versions"]))
            if numbers:
                out.append(ModelSummary(name=name, versions=len(numbers), latest=numbers[-1],
                                        updated_at=max(r["created_at"] for r in model["versions"].values()),
                                        aliases=dict(model["aliases"])))
        return out

    def versions(self, name: str) -> list[ModelVersion]:
        model = self._model(self._read(), name)
        if not model["versions"]:
            raise StoreError(f"model {name} has no versions left (all deleted)")
        return [self._version(name, model, int(n)) for n in sorted(model["versions"], key=int)]

    def get(self, name: str, version: int) -> ModelVersion:
        return self._version(name, self._model(self._read(), name), version)

    def alias(self, name: str, alias: str) -> int | None:
        check_name(alias, "alias")
        number: int | None = self._model(self._read(), name)["aliases"].get(alias)
        return number

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._model(self._read(), name)["aliases"])

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        if alias is not None:
            check_name(alias, "alias")
        changes = self._model(self._read(), name)["history"]
        return [AliasChange(name=name, **c) for c in changes if alias is None or c["alias"] == alias]

    # -- writing ------------------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self.files.staging_dir()

    def register(self, name: str, staged: Path, manifest: dict[str, Any]) -> ModelVersion:
        check_name(name)
        staged, disk, digest = self.files.prepare(name, staged)  # verified, on our filesystem, read-only
        meta = manifest or disk
        threshold = meta.get("threshold")
        threshold = None if threshold is None else check_threshold(threshold, f"the new version of {name}")
        lineage = meta.get("lineage") or {}
        with self._write() as index:
            model = index["models"].setdefault(name, {"last": 0, "versions": {}, "aliases": {}, "history": []})
            number = model["last"] + 1  # never reused, even after a delete
            relative = self.files.place(staged, name, number)  # an orphan at this number is replaced
            model["last"] = number
            model["versions"][str(number)] = {
                "created_at": _now(), "created_by": str(lineage.get("user") or current_user()),
                "flavor": str(meta.get("flavor") or ""), "task": str(meta.get("task") or ""),
                "metrics": _json(meta.get("metrics")), "params": _json(meta.get("params")),
                "lineage": _json(lineage), "digest": digest, "path": relative, "threshold": threshold,
            }
        self.files.seal(relative)
        return self.get(name, number)

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None, threshold: Mapping[str, Any] | None = None) -> AliasChange | None:
        check_name(alias, "alias")
        checked = None if threshold is None else check_threshold(threshold, f"{name}:{version}")
        with self._write() as index:
            model = self._model(index, name)
            self._version(name, model, version)  # StoreError if absent
            current = model["aliases"].get(alias)
            if current == version and checked is None:
                return None
            if checked is not None:
                model["versions"][str(version)]["threshold"] = checked
            return self._move(model, name, alias, current, version, reason, actor,
                              "threshold" if current == version else "set", checked)

    def rollback(self, name: str, alias: str = "production", *, reason: str = "",
                 actor: str | None = None) -> AliasChange:
        check_name(alias, "alias")
        with self._write() as index:
            model = self._model(index, name)
            current = model["aliases"].get(alias)
            if current is None:
                raise unknown_alias(name, alias, model["aliases"])
            changes = [AliasChange(name=name, **c) for c in model["history"] if c["alias"] == alias]
            target = rollback_target(changes, current, set(map(int, model["versions"])))
            if target is None:
                raise StoreError(f"cannot roll back {name}@{alias}: it points at version {current} and there is "
                                 "no earlier version to go back to (see `opsloop models history`)")
            return self._move(model, name, alias, current, target, reason, actor, "rollback", None)

    def _move(self, model: dict[str, Any], name: str, alias: str, current: int | None, version: int, reason: str,
              actor: str | None, action: Any, threshold: dict[str, Any] | None) -> AliasChange:
        change = {"alias": alias, "from_version": current, "to_version": version, "actor": actor or current_user(),
                  "at": _now(), "reason": reason, "action": action, "threshold": threshold}
        model["aliases"][alias] = version
        model["history"].append(change)
        return AliasChange(name=name, **change)

    def delete(self, name: str, version: int) -> None:
        with self._write() as index:
            model = self._model(index, name)
            self._version(name, model, version)
            pointing = sorted(a for a, v in model["aliases"].items() if v == version)
            if pointing:
                raise StoreError(f"cannot delete {name}:{version}: alias(es) {', '.join(pointing)} point at it; "
                                 "point them at another version first")
            relative = model["versions"].pop(str(version))["path"]
        self.files.remove(relative)  # the record went first: nobody lists a version without its files

    # -- the loop's journal and lock (opsloop loop) ---------------------------------------------------

    def record_cycle(self, name: str, status: str, body: Mapping[str, Any]) -> CycleRecord:
        check_name(name)
        if not isinstance(status, str) or not status or not isinstance(body, Mapping):
            raise StoreError(f"$name: invalid loop journal entry for {name}: a status and a mapping are needed")
        clean = json.loads(json.dumps(strict_json(body), default=str, allow_nan=False))
        with self._write() as index:
            journal = index.setdefault("journal", {"last": 0, "entries": {}})
            journal["last"] += 1
            entry = {"id": journal["last"], "at": _now(), "status": status, "body": clean}
            journal["entries"].setdefault(name, []).append(entry)
        return CycleRecord(name=name, **entry)

    def cycles(self, name: str, *, limit: int | None = None) -> list[CycleRecord]:
        check_name(name)
        entries = self._read().get("journal", {}).get("entries", {}).get(name, [])
        newest = [CycleRecord(name=name, **e) for e in reversed(entries)]
        return newest if limit is None else newest[:max(limit, 0)]

    def lock(self, name: str, owner: str, ttl: float) -> LockState:
        check_name(name)
        if not owner or not 0 < ttl < 10 * 366 * 86400:
            raise StoreError(f"$name: invalid loop lock of {name}: an owner and a ttl in seconds (more than 0)")
        with self._write() as index:
            locks = index.setdefault("locks", {})
            held = locks.get(name)
            now = _now()
            if held is None or held["owner"] == owner or held["expires"] < now:
                since = held["since"] if held is not None and held["owner"] == owner else now
                held = locks[name] = {"owner": owner, "since": since, "expires": _now(ttl)}
        return LockState(acquired=held["owner"] == owner, **held)

    def unlock(self, name: str, owner: str) -> None:
        check_name(name)
        with self._write() as index:
            locks = index.setdefault("locks", {})
            if locks.get(name, {}).get("owner") == owner:
                del locks[name]


def _json(value: Any) -> dict[str, Any]:
    """A manifest's mapping as plain JSON data (as opsloop's own stores keep it: NaN stays NaN)."""
    out: dict[str, Any] = json.loads(json.dumps(dict(value or {}), default=str))
    return out


if TYPE_CHECKING:  # mypy checks the hook against opsloop's: name, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _factory: kinds.StoreFactory = $module
