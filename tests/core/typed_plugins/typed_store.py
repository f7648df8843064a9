"""A typed store plugin: `typed:PATH` opens the embedded SQLite registry at PATH."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from opsloop import hookimpl

if TYPE_CHECKING:
    from opsloop.store import ModelStore


@hookimpl
def open_store(uri: str, workdir: Path) -> ModelStore | None:
    if not uri.startswith("typed:"):
        return None
    from opsloop.plugins.local_store import LocalStore

    return LocalStore(workdir / uri.removeprefix("typed:"))


if TYPE_CHECKING:
    import typed_store

    from opsloop import kinds

    _store: kinds.StoreFactory = typed_store
