"""Sensitive columns (`[data] sensitive`): never written to snapshots or the prediction log (issue 14, item 4).

The data-handling protocol (docs/data.md): a column named in `[data]
sensitive` is used for training and scoring as any other, and is never
written where rows are kept: data snapshots (`opsloop.snapshots`), the
prediction log of `opsloop serve` (`opsloop.serving.predlog`) and of the
`batch` deploy target (`opsloop.serving.batchlog`). With `sensitive_mode =
"drop"` it is left out; with `"hash"` each value is replaced by a keyed
HMAC-SHA256 (`hmac:` and 32 hex digits) of its text, so rows still group and
join by it and nobody without the key can test a guess.

The key is `OPSLOOP_HASH_KEY` (hex or text) when set, else the 32 random
bytes of `.opsloop/hash.key` in the working directory, made on first use
(mode 0600). Servers and batch runs that must agree on hashes share the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError, closest

if TYPE_CHECKING:
    import pandas as pd
    import sqlite3

    from opsloop.config import Config

KEY_ENV = "OPSLOOP_HASH_KEY"
KEY_FILE = Path(".opsloop") / "hash.key"
PREFIX = "hmac:"
_FUNCTION = "opsloop_sensitive_hash"


def read_key(workdir: Path) -> bytes:
    """The hashing key: `OPSLOOP_HASH_KEY`, else `.opsloop/hash.key` under `workdir` (made when absent)."""
    text = os.environ.get(KEY_ENV)
    if text:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return text.encode()
    path = Path(workdir) / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


@attrs.frozen(kw_only=True)
class Sensitive:
    """What to hide and how.

    Attributes:
        columns: The sensitive columns.
        mode: `"drop"` or `"hash"`.
        key: The HMAC key (hash mode only); left out of `repr`.
    """

    columns: tuple[str, ...] = ()
    mode: str = "drop"
    key: bytes = attrs.field(default=b"", repr=False)

    @classmethod
    def from_config(cls, config: Config, workdir: Path | None = None) -> Sensitive:
        """`[data] sensitive` and `sensitive_mode`, with the key read when hashing."""
        columns, mode = tuple(config.data.sensitive), config.data.sensitive_mode
        key = read_key(workdir or config.workdir) if columns and mode == "hash" else b""
        return cls(columns=columns, mode=mode, key=key)

    def __bool__(self) -> bool:
        return bool(self.columns)

    def hash_text(self, value: Any) -> str | None:
        """The keyed hash of a value's text (None stays None)."""
        if value is None:
            return None
        return PREFIX + hmac.new(self.key, str(value).encode(), hashlib.sha256).hexdigest()[:32]

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with its sensitive columns dropped or hashed (a new frame; columns absent are ignored)."""
        present = [c for c in self.columns if c in frame.columns]
        if not present:
            return frame
        if self.mode == "drop":
            return frame.drop(columns=present)
        import numpy as np
        import pandas as pd

        hashed = {}
        for name in present:
            column = frame[name]
            codes, uniques = pd.factorize(column, use_na_sentinel=True)  # each distinct value hashed once
            texts = np.array([*(self.hash_text(_plain(u)) for u in uniques), None], dtype=object)
            hashed[name] = pd.Series(texts[np.where(codes < 0, len(uniques), codes)], index=frame.index,
                                     dtype="string")
        return frame.assign(**hashed)

    def install(self, con: sqlite3.Connection) -> None:
        """Make every row this connection inserts into the prediction log's `predictions` hide the sensitive
        columns of its `inputs` JSON: a temporary trigger, whichever way the row was inserted."""
        if not self.columns:
            return
        paths = [_json_path(c) for c in self.columns]
        if self.mode == "drop":
            value = f"json_remove(NEW.inputs, {', '.join(paths)})"
        else:
            con.create_function(_FUNCTION, 1, self.hash_text, deterministic=True)
            pairs = ", ".join(f"{p}, {_FUNCTION}(json_extract(NEW.inputs, {p}))" for p in paths)
            value = f"json_replace(NEW.inputs, {pairs})"
        con.execute("DROP TRIGGER IF EXISTS temp.opsloop_sensitive")
        con.execute("CREATE TEMP TRIGGER opsloop_sensitive AFTER INSERT ON main.predictions "
                    f"WHEN NEW.inputs IS NOT NULL BEGIN UPDATE predictions SET inputs = {value} "
                    "WHERE id = NEW.id; END")


def check_columns(config: Config, columns: Sequence[str]) -> None:
    """ConfigError naming a `[data] sensitive` column the data does not have, and the closest one it has."""
    names = [str(c) for c in columns]
    for column in config.data.sensitive:
        if column not in names:
            raise ConfigError(f"sensitive column {column!r} is not in {config.data.source} "
                              f"({len(names)} columns)", section="data", key="sensitive", source=config.source,
                              suggestion=closest(column, names))


def _plain(value: Any) -> Any:
    """A numpy scalar as Python's (so that 3 hashes as "3" whichever the dtype), else the value."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str) else value


def _json_path(column: str) -> str:
    """A SQL string literal of the JSON path of a top-level key (quoted: any column name)."""
    key = column.replace("\\", "\\\\").replace('"', '\\"')
    return "'" + f'$."{key}"'.replace("'", "''") + "'"
