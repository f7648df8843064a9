"""$title: a data source that reads delimited text files laid out as its options say.

Reads `[data] source` (a path, relative to the config file's folder, or a
`file:` URI) with the field delimiter, decimal mark and encoding of
`[data.$name]`, skipping `skip_lines` lines before the header: a spreadsheet
saved in a European locale (`;` between fields, `,` in numbers) reads as
numbers, not as text. A file that is missing, undecodable or empty, or that
reads as one column because the delimiter is wrong, is a one-line DataError
naming the file. Replace `read` with your own format.

Options (`[data.$name]`): see `Options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from opsloop import DataError, hookimpl

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import DataSection

PLUGIN = "$name"


def _one_character(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != 1:
        raise ValueError(f"'{attribute.name}' must be one character, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Options of `$name` (`[data.$name]`).

    Attributes:
        delimiter: The character between fields (`;`, `,`, a tab as "\\t", `|`).
        decimal: The decimal mark in numbers (`.` or `,`).
        encoding: The file's text encoding (`utf-8`, `cp1252`, `latin-1`...).
        skip_lines: Lines before the header to skip (an export's title lines).
    """

    delimiter: str = attrs.field(default=";", validator=_one_character)
    decimal: str = attrs.field(default=",", validator=_one_character)
    encoding: str = "utf-8"
    skip_lines: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.delimiter == self.decimal:
            raise ValueError(f"'delimiter' and 'decimal' are both {self.delimiter!r}: they must differ")


@hookimpl
def plugin_options() -> type:
    return Options


def where(source: str, workdir: Path) -> Path:
    """The file `source` names: a path or a `file:` URI, relative to `workdir`."""
    if source.startswith("file:"):
        from urllib.parse import unquote, urlparse

        source = unquote(urlparse(source).path)
    path = Path(source).expanduser()
    return path if path.is_absolute() else Path(workdir) / path


def read(path: Path, options: Options) -> pd.DataFrame:
    """The file's rows, as pandas reads them with the options' layout; a DataError naming the file otherwise."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{PLUGIN}: data file not found: {path}")
    try:
        return pd.read_csv(path, sep=options.delimiter, decimal=options.decimal, encoding=options.encoding,
                           skiprows=options.skip_lines)
    except UnicodeDecodeError:
        raise DataError(f"{PLUGIN}: {path} is not {options.encoding} text; set [data.{PLUGIN}] encoding") from None
    except LookupError:
        raise DataError(f"{PLUGIN}: unknown encoding {options.encoding!r} in [data.{PLUGIN}] encoding") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{PLUGIN}: {path} is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{PLUGIN}: cannot read {path}: {reason}") from None


@hookimpl
def load_data(source: str, options: Options | None, data: DataSection, workdir: Path) -> pd.DataFrame:
    """Read the file; say so when its rows hold none of the columns `[data]` names or it reads as one column."""
    options = options or Options()
    path = where(source, workdir)
    frame = read(path, options)
    if frame.empty:
        raise DataError(f"{PLUGIN}: {path} holds a header and no rows")
    named = [c for c in (data.time, data.series, data.target) if c]
    if frame.shape[1] == 1 and named and not set(named) <= set(frame.columns):
        raise DataError(f"{PLUGIN}: {path} reads as one column with delimiter {options.delimiter!r} "
                        f"(header {str(frame.columns[0])[:60]!r}); set [data.{PLUGIN}] delimiter")
    return frame


if TYPE_CHECKING:  # mypy checks the hooks against opsloop's: names, parameters, types (opsloop.kinds)
    import $module
    from opsloop import kinds

    _source: kinds.Source = $module
    _configurable: kinds.Configurable = $module
