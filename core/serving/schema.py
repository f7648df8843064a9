"""The input schema of a served bundle, and checking requests against it.

A bundle's manifest lists every raw column a scorer must send
(`input_schema`: name and pandas dtype). Each becomes a `Column` of one kind:

- `float` (float16/32/64): a JSON number, or null for a missing value (the
  bundle's preprocessing imputes it); float32 columns must fit in float32;
- `int` (int8...uint64): a JSON integer within the dtype's range (and within
  +-2**53, so that it survives float arithmetic); no nulls;
- `bool`: true or false;
- `text` (object, string, category): a string, or null; not one with a lone
  UTF-16 surrogate (JSON's `"\\ud800"`), which no UTF-8 reader of the
  prediction log could read back;
- `datetime`: an ISO 8601 string, e.g. "2024-01-08T12:00:00".

Checked requests become a `Batch`: the numeric columns as one float64 matrix
(what the fast path works on), the text and time columns as lists, and the
rows as sent (for the prediction log). Every problem is a `RequestError`
with an HTTP status and a sentence naming the row and the feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Open Inference Protocol datatypes of numpy dtypes; text and time travel as BYTES.
DATATYPES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "bool": "BOOL",
             **{f"int{b}": f"INT{b}" for b in (8, 16, 32, 64)}, **{f"uint{b}": f"UINT{b}" for b in (8, 16, 32, 64)}}
#: Which request datatypes a column of each kind accepts.
ACCEPTS = {"float": {"FP16", "FP32", "FP64", *(f"{s}INT{b}" for s in ("", "U") for b in (8, 16, 32, 64))},
           "int": {f"{s}INT{b}" for s in ("", "U") for b in (8, 16, 32, 64)},
           "bool": {"BOOL"}, "text": {"BYTES"}, "datetime": {"BYTES"}}
EXACT_INT = 2 ** 53
_NUMBER = frozenset((float, int))


class RequestError(Exception):
    """A request the server refuses: an HTTP status and the reason, for the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def json_type(value: Any) -> str:
    """How JSON calls a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def utf8(value: str) -> bool:
    """Whether a string can be stored as UTF-8 text (not when it holds a lone surrogate); ASCII at once."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def kind_of(dtype: str) -> str:
    """The kind of a manifest dtype string."""
    text = dtype.lower()
    if text.startswith(("float", "double")):
        return "float"
    if text.startswith(("int", "uint")):
        return "int"
    if text == "bool" or text == "boolean":
        return "bool"
    if text.startswith("datetime"):
        return "datetime"
    return "text"


@attrs.frozen(kw_only=True)
class Column:
    """One input column: its name, manifest dtype, kind and protocol datatype."""

    name: str
    dtype: str
    kind: str
    datatype: str
    low: int = 0
    high: int = 0
    limit: float = math.inf

    @classmethod
    def of(cls, name: str, dtype: str) -> Column:
        import numpy as np

        kind = kind_of(dtype)
        low = high = 0
        limit = math.inf
        if kind == "int":
            info = np.iinfo(np.dtype(dtype.lower()))
            low, high = max(int(info.min), -EXACT_INT), min(int(info.max), EXACT_INT)
        elif kind == "float":
            limit = float(np.finfo(np.dtype(dtype.lower())).max)
        return cls(name=name, dtype=dtype, kind=kind, datatype=DATATYPES.get(dtype.lower(), "BYTES"),
                   low=low, high=high, limit=limit)

    def check(self, value: Any, where: str) -> Any:
        """One value as the column takes it (None -> NaN for floats); RequestError otherwise."""
        kind, t = self.kind, type(value)
        if kind == "float":
            if value is None:
                return math.nan
            if t is float or t is int:
                if abs(value) > self.limit:
                    raise RequestError(422, f"{where}: feature {self.name!r} is {_show(value)}, out of the range "
                                            f"of {self.dtype} (send null for a missing value)")
                return float(value)
        elif kind == "int":
            if t is float and value.is_integer():
                value, t = int(value), int
            if t is int:
                if not self.low <= value <= self.high:
                    raise RequestError(422, f"{where}: feature {self.name!r} is {_show(value)}, outside "
                                            f"[{self.low}, {self.high}] ({self.dtype})")
                return value
        elif kind == "bool":
            if t is bool:
                return value
        elif kind == "text":
            if value is None or t is str and utf8(value):
                return value
            if t is str:
                raise RequestError(422, f"{where}: feature {self.name!r} is {_show(value)}, which is not UTF-8 text "
                                        "(a lone surrogate such as \\ud800)")
        elif t is str:  # datetime
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise RequestError(422, f"{where}: feature {self.name!r} is {_show(value)}, not an ISO 8601 "
                                        "date and time (e.g. \"2024-01-08T12:00:00\")") from None
            return value
        expected = {"float": "a number or null", "int": "an integer", "bool": "true or false",
                    "text": "a string or null", "datetime": "an ISO 8601 date-time string"}[kind]
        raise RequestError(422, f"{where}: feature {self.name!r} is a {json_type(value)} ({_show(value)}), "
                                f"expected {expected} ({self.dtype})")

    def check_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        """Every value of a column (row numbers in messages); plain numbers pass as they are.

        Infinities and values beyond a float dtype's range are caught on the
        matrix afterwards (`InputSchema._check_range`), in one numpy pass.
        """
        if self.kind == "float" and set(map(type, values)) <= _NUMBER:
            return values
        return [self.check(v, f"{where} row {i}") for i, v in enumerate(values)]


@attrs.define
class Batch:
    """Checked rows, as the scorers want them.

    Attributes:
        rows: How many rows.
        numeric: float64 matrix (rows x numeric columns, in `InputSchema.numeric` order).
        other: Values of the text and time columns, by name.
        records: The rows as sent (plain-JSON requests), for the log; None
            when the request came as columns, or when its body repeats a key
            (which readers of JSON read differently: the log then rebuilds
            the rows from the checked values, as they were scored).
    """

    rows: int
    numeric: np.ndarray
    other: dict[str, list[Any]]
    records: list[dict[str, Any]] | None = None


class InputSchema:
    """A bundle's input columns, checking requests into `Batch`es."""

    def __init__(self, columns: Sequence[Column], *, max_rows: int) -> None:
        import numpy as np

        self.columns = tuple(columns)
        self.names = tuple(c.name for c in self.columns)
        self.name_set = frozenset(self.names)
        self.by_name = {c.name: c for c in self.columns}
        self.numeric = tuple(c for c in self.columns if c.kind in ("float", "int", "bool"))
        self.index = {c.name: j for j, c in enumerate(self.numeric)}
        self.floats = tuple(c.name for c in self.numeric if c.kind == "float")
        self.others = tuple(c for c in self.columns if c.kind in ("text", "datetime"))
        self.max_rows = max_rows
        # Plain floats are the common case: each row is checked with set operations in C.
        self._all_float = len(self.floats) == len(self.numeric)
        self._limits = np.array([c.limit if c.kind == "float" else math.inf for c in self.numeric])

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], *, max_rows: int) -> InputSchema:
        return cls([Column.of(str(c["name"]), str(c["dtype"])) for c in manifest["input_schema"]], max_rows=max_rows)

    def metadata(self) -> list[dict[str, Any]]:
        """The inputs as the protocol's model metadata lists them."""
        return [{"name": c.name, "datatype": c.datatype, "shape": [-1]} for c in self.columns]

    def _rows_allowed(self, n: int) -> None:
        if n == 0:
            raise RequestError(422, "the request has no rows")
        if n > self.max_rows:
            raise RequestError(413, f"the request has {n:,} rows; this server takes at most {self.max_rows:,} "
                                    "per request (--max-rows)")

    def _key_problem(self, keys: Any, where: str) -> RequestError:
        missing = [n for n in self.names if n not in keys]
        extra = sorted(str(k) for k in keys if k not in self.name_set)
        parts = []
        if missing:
            parts.append(f"missing feature(s) {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if extra:
            parts.append(f"unknown feature(s) {', '.join(_show(e) for e in extra[:10])}"
                         f"{' ...' if len(extra) > 10 else ''}")
        return RequestError(422, f"{where}: {'; '.join(parts)} (the model takes: {', '.join(self.names)})")

    def from_instances(self, instances: Any) -> Batch:
        """Rows sent as `{"instances": [{feature: value, ...}, ...]}`."""
        import numpy as np

        if type(instances) is not list:
            raise RequestError(400, f'"instances" must be an array of objects (one per row), got a {json_type(instances)}')
        n = len(instances)
        self._rows_allowed(n)
        floats, others = self.floats, self.others
        numeric: list[list[Any]] = []
        other: dict[str, list[Any]] = {c.name: [] for c in others}
        plain = self._all_float
        for i, row in enumerate(instances):
            if type(row) is not dict:
                raise RequestError(422, f"instance {i} is a {json_type(row)}, expected an object of features")
            if row.keys() != self.name_set:
                raise self._key_problem(row, f"instance {i}")
            values = [row[name] for name in floats] if plain else None
            if values is None or not set(map(type, values)) <= _NUMBER:
                values = [c.check(row[c.name], f"instance {i}") for c in self.numeric]
            numeric.append(values)
            for c in others:
                other[c.name].append(c.check(row[c.name], f"instance {i}"))
        try:
            matrix = np.array(numeric, dtype=np.float64) if self.numeric else np.empty((n, 0))
        except OverflowError:  # an integer beyond any float: find it for the message
            for i, row in enumerate(instances):
                for c in self.numeric:
                    c.check(row[c.name], f"instance {i}")
            raise
        self._check_range(matrix)
        return Batch(rows=n, numeric=matrix, other=other, records=instances)

    def from_columns(self, columns: dict[str, Any]) -> Batch:
        """Rows sent as one array (list or numpy) per column, all of one length; checked here."""
        import numpy as np

        if columns.keys() != self.name_set:
            raise self._key_problem(columns, "inputs")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise RequestError(422, "inputs: every input must have the same number of rows, got "
                                    + ", ".join(f"{k}={len(v)}" for k, v in columns.items()))
        n = lengths.pop()
        self._rows_allowed(n)
        matrix = np.empty((n, len(self.numeric)), dtype=np.float64)
        for j, c in enumerate(self.numeric):
            values = columns[c.name]
            if isinstance(values, np.ndarray):
                values = self._check_array(c, values)
            else:
                values = c.check_all(values, f"input {c.name!r}")
            try:
                matrix[:, j] = values
            except OverflowError:  # an integer beyond any float
                matrix[:, j] = [c.check(v, f"input {c.name!r} row {i}") for i, v in enumerate(values)]
        self._check_range(matrix)
        other = {c.name: (c.check_all(list(columns[c.name]), f"input {c.name!r}")) for c in self.others}
        return Batch(rows=n, numeric=matrix, other=other)

    def _check_array(self, c: Column, values: np.ndarray) -> np.ndarray:
        """A binary tensor (numpy) for one column: the kind must match, ints in range."""
        import numpy as np

        kind = values.dtype.kind
        if c.kind == "bool" and kind != "b" or c.kind == "int" and kind not in "iu" or c.kind == "float" \
                and kind not in "fiu":
            raise RequestError(422, f"input {c.name!r}: {values.dtype} data, the feature is {c.dtype}")
        if c.kind == "int" and len(values) and (values.min() < c.low or values.max() > c.high):
            raise RequestError(422, f"input {c.name!r}: values outside [{c.low}, {c.high}] ({c.dtype})")
        return values.astype(np.float64)

    def _check_range(self, matrix: np.ndarray) -> None:
        """No infinities, and nothing a float column's dtype cannot hold (a cast would make it infinite)."""
        import numpy as np

        if not matrix.size:
            return
        bad = np.abs(matrix) > self._limits  # NaN compares False, silently: a missing value is in range
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            c = self.numeric[j]
            raise RequestError(422, f"row {i}: feature {c.name!r} is {matrix[i, j]!r}, out of the range of {c.dtype} "
                                    "(send null for a missing value)")

    def frame(self, batch: Batch) -> pd.DataFrame:
        """The rows as a DataFrame with the training dtypes (what `LoadedModel.predict` takes)."""
        import pandas as pd

        data: dict[str, Any] = {}
        for c in self.columns:
            if c.kind in ("float", "int", "bool"):
                data[c.name] = pd.Series(batch.numeric[:, self.index[c.name]]).astype(c.dtype)
            elif c.kind == "datetime":
                try:
                    times = pd.to_datetime(pd.Series(batch.other[c.name]), format="ISO8601")
                    data[c.name] = times.astype(c.dtype) if str(times.dtype) != c.dtype else times
                except (ValueError, TypeError) as exc:
                    raise RequestError(422, f"feature {c.name!r}: cannot read the times as {c.dtype}: {exc}") from None
            else:
                data[c.name] = pd.Series(batch.other[c.name], dtype=c.dtype if c.dtype != "object" else object)
        return pd.DataFrame(data, columns=list(self.names))
