"""The model store interface that store plugins implement.

A store keeps numbered versions per model name and aliases that point at
them. Bundles are written by `opsloop.bundle` into a staging directory; the
store moves them into place and records them atomically.
"""

from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import Any

import attrs

from opsloop.errors import StoreError
from opsloop.types import ModelVersion

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str = "model name") -> str:
    """A model or alias name that is safe as a directory name; StoreError otherwise."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise StoreError(f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..'")
    return value


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


class ModelStore(abc.ABC):
    """What a store plugin's `open_store` returns."""

    uri: str

    @abc.abstractmethod
    def register(self, name: str, staged: Path, manifest: dict[str, Any]) -> ModelVersion:
        """Move a staged bundle into the store as the next version of `name`.

        All or nothing: a crash leaves either the whole version or none.
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
    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "") -> None:
        """Point `name@alias` at `version`."""

    @abc.abstractmethod
    def alias(self, name: str, alias: str) -> int | None:
        """The version `name@alias` points at, or None."""

    def staging_dir(self) -> Path:
        """An empty directory to write a bundle into before `register` (default: a temp dir)."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix="opsloop-bundle-"))

    def close(self) -> None:
        """Release connections; the default has none."""

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """The version a reference names: `NAME` is the latest."""
        ref = Ref.parse(ref) if isinstance(ref, str) else ref
        if ref.alias is not None:
            number = self.alias(ref.name, ref.alias)
            if number is None:
                raise StoreError(f"model {ref.name} has no alias {ref.alias!r}")
            return self.get(ref.name, number)
        if ref.version is not None:
            return self.get(ref.name, ref.version)
        return self.versions(ref.name)[-1]

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
