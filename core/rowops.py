"""Row operations: what a preprocess step gives the server's fast path (the `compile_rows` hook).

`opsloop serve` scores a request without pandas when it can: the numeric
inputs become one float64 matrix (rows x columns, the "work matrix"), each
preprocess step of the bundle edits it in place with numpy, in the bundle's
order, and the flavor's fast predict (`compile_predict`) reads the features
from it. A step takes part by implementing `compile_rows(state, options,
layout)`, which turns its stored state into a `RowOp` once, when the version
loads. The op must give exactly what the step's `preprocess` gives on the
same rows, value for value, including the dtype casts pandas makes (the
server's tests compare the two on every built-in step).

Three public pieces, re-exported by `opsloop`:

- `RowLayout`: where each column lives in the work matrix while the steps are
  compiled, and the dtype the replay's frame would give it at that point; a
  step adds its output columns here.
- `RowContext`: what an op gets besides the matrix: the rows' count, series
  keys and times (for a step that keeps per-series history in the server).
- `NoFastPath`: raised by `compile_rows` (or `compile_predict`) when this
  state needs the replay path; the message is shown as the version's
  fallback reason (model metadata, `/metrics`).

A step that does nothing on request rows (one that only changes the target)
returns None. numpy is imported inside functions: `opsloop --help` stays
light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opsloop.errors import DataError, OpsloopError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["FastPredict", "NoFastPath", "Reach", "RowContext", "RowLayout", "RowOp", "carried", "index"]

#: A compiled step: `op(work, rows)` edits the float64 work matrix in place (rows x `layout.width`) and
#: returns nothing. `rows` is the request's `RowContext`.
RowOp = Callable[["np.ndarray", "RowContext"], None]
#: A flavor's compiled predict (`compile_predict`): float32 features (rows x model features) -> (labels, score or
#: None), as `LoadedModel.predict` gives `prediction` and `score`.
FastPredict = Callable[["np.ndarray"], tuple["np.ndarray", "np.ndarray | None"]]

#: dtypes that `RowLayout.rounding` rounds to, as pandas' `astype` does when a step writes such a column.
NARROW_FLOATS = ("float32", "float16")


class NoFastPath(OpsloopError):
    """This stored state needs the replay path (`LoadedModel.predict`); the message says why.

    Raise it from `compile_rows` or `compile_predict`: the server then scores
    the version by replaying the plugins, and shows the message as the
    version's fallback reason. It is not an error: serving goes on.
    """


class Reach:
    """How far into a series' past a step's output for a row reads (the `window_reach` hook).

    Attributes:
        rows: Previous rows of the same series it reads (12 for a window of
            13 rows, or for a rate over 12 rows).
        seconds: How far back in time it reads, on the time column: every row
            of the series newer than `t - seconds`, and the newest row at or
            before `t - seconds` (a rate over a duration looks there).
    """

    __slots__ = ("rows", "seconds")

    def __init__(self, rows: int = 0, seconds: float = 0.0) -> None:
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"Reach rows must be a whole number >= 0, got {rows!r}")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
            raise ValueError(f"Reach seconds must be a number >= 0, got {seconds!r}")
        self.rows = rows
        self.seconds = float(seconds)

    def __bool__(self) -> bool:
        return bool(self.rows or self.seconds)

    def __or__(self, other: Reach) -> Reach:
        """The reach of two steps together: the farther of each."""
        return Reach(max(self.rows, other.rows), max(self.seconds, other.seconds))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reach) and (self.rows, self.seconds) == (other.rows, other.seconds)

    def __hash__(self) -> int:
        return hash((self.rows, self.seconds))

    def __repr__(self) -> str:
        return f"Reach(rows={self.rows}, seconds={self.seconds:g})"


def index(slots: Iterable[int]) -> slice | np.ndarray:
    """Matrix columns to index with: a slice when they are consecutive (a view, no copy: about 5x faster on
    one row), else an integer array."""
    import numpy as np

    slots = list(slots)
    if slots and slots == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0], slots[0] + len(slots))
    return np.array(slots, dtype=np.intp)


class RowLayout:
    """The work matrix's columns while a bundle's steps are compiled, in the bundle's order.

    The server builds one per version, from the request's numeric inputs
    (float, integer and boolean columns of the input schema), and hands it to
    each step's `compile_rows` in turn: what a step adds or retypes here is
    what the next step sees, as its frame would be in the replay.

    Attributes:
        slots: Column name -> its column in the work matrix. Read it through
            `columns`; add columns with `add`.
        dtypes: Column name -> the dtype (numpy's name, lower case:
            `"float32"`, `"float64"`, `"int64"`, `"bool"`...) that column has
            at this point in the replay's frame. A step whose `preprocess`
            changes a column's dtype records it here (`layout.dtypes[c] =
            "float64"`), so that later steps round as the replay does.
        series: The bundle's series column, or None.
        time: The bundle's time column, or None.
        step: The name of the step being compiled (for messages).
    """

    def __init__(self, slots: Mapping[str, int], dtypes: Mapping[str, str], *, series: str | None = None,
                 time: str | None = None) -> None:
        self.slots: dict[str, int] = dict(slots)
        self.dtypes: dict[str, str] = {c: str(d).lower() for c, d in dtypes.items()}
        self.series = series
        self.time = time
        self.step = ""

    @property
    def width(self) -> int:
        """Columns of the work matrix: the numeric inputs plus every column the steps added."""
        return len(self.slots)

    def columns(self, names: Iterable[str]) -> slice | np.ndarray:
        """The work-matrix columns of `names`, to index `work[:, ...]` with (a slice where they are adjacent).

        Raises:
            NoFastPath: A name is not a numeric column at this point (a text
                or time input, or a column no step has added).
        """
        names = list(names)
        for c in names:
            if c not in self.slots:
                raise NoFastPath(f'step "{self.step}" uses column "{c}", which is not numeric at this point '
                                 "(the fast path works on numeric columns only)")
        return index(self.slots[c] for c in names)

    def add(self, name: str, dtype: str) -> int:
        """Add an output column of this step (with the dtype the replay's frame gives it); returns its slot.

        Raises:
            NoFastPath: A column of that name exists already (the replay
                would refuse or overwrite it).
        """
        if name in self.slots or name in self.dtypes:
            raise NoFastPath(f'step "{self.step}" adds column "{name}", which clashes with an existing column')
        self.slots[name] = len(self.slots)
        self.dtypes[name] = str(dtype).lower()
        return self.slots[name]

    def rounding(self, names: Iterable[str]) -> RowOp | None:
        """An op that rounds the narrow-float columns among `names` (float32, float16) to their dtype.

        pandas stores a step's result in the column's dtype (`astype`), so a
        float32 column is rounded after every step that writes it; an op that
        writes such columns calls this op last. None when no column needs it.
        """
        import numpy as np

        groups: dict[str, list[int]] = {}
        for c in names:
            if self.dtypes.get(c) in NARROW_FLOATS:
                groups.setdefault(self.dtypes[c], []).append(self.slots[c])
        if not groups:
            return None
        casts = [(index(slots), np.dtype(dt)) for dt, slots in groups.items()]

        def round_(work: np.ndarray, rows: RowContext | None = None) -> None:
            for idx, dt in casts:
                work[:, idx] = work[:, idx].astype(dt)
        return round_


class RowContext:
    """A request's rows as an op sees them besides the work matrix.

    Built by the server for every request, cheaply: the times are parsed only
    when an op reads them. Ops that only do arithmetic on the matrix ignore
    it; a step that keeps per-series history in the server reads the series
    keys and times here.

    Attributes:
        count: How many rows (the work matrix's height).
        series: Each row's series key (a list of the values sent for a text
            series column, a float64 array for a numeric one), or None when
            the bundle has no series column.
        first: The first row the server answers for. For a version whose
            steps reach into a series' past (`window_reach`), the server
            puts each series' kept rows before the request's, and only the
            rows from `first` on are answered: an op may leave its output
            columns unwritten for the rows before (their features are
            never read); 0 when every row is answered.
    """

    __slots__ = ("_dtype", "_raw", "_times", "count", "first", "series")

    def __init__(self, count: int, *, series: Any = None, times: Any = None, time_dtype: str | None = None) -> None:
        """`times`: the time column as sent (ISO 8601 strings, parsed to `time_dtype` on first use), or a numeric
        time column's float64 values (with `time_dtype` None); None when the bundle has no time column."""
        self.count = count
        self.series = series
        self.first = 0
        self._raw = times
        self._dtype = time_dtype
        self._times: np.ndarray | None = None

    @classmethod
    def parsed(cls, count: int, *, series: Any = None, times: np.ndarray | None = None, first: int = 0) -> RowContext:
        """A context whose times are parsed already (datetime64[ns], or a numeric time column's float64 values):
        the server's rows of the series' kept history (`first` of them) and then a request's rows."""
        rows = cls(count, series=series)
        rows._times = times
        rows.first = first
        return rows

    @property
    def times(self) -> np.ndarray | None:
        """Each row's time, or None when the bundle has no time column.

        A date-time column comes as numpy `datetime64[ns]` (UTC for a
        zone-aware one), parsed as the replay parses the request; a numeric
        time column as its float64 values.

        Raises:
            DataError: The times cannot be read as the bundle's time dtype
                (the client gets a 422 with the message).
        """
        if self._times is None and self._raw is not None:
            if self._dtype is None:
                self._times = self._raw
            else:
                self._times = _parse_times(self._raw, self._dtype)
        return self._times


def _parse_times(text: Any, dtype: str) -> np.ndarray:
    """ISO 8601 strings as `InputSchema.frame` reads them for the replay, as datetime64[ns] (UTC when zoned)."""
    import pandas as pd

    try:
        parsed = pd.to_datetime(pd.Series(text), format="ISO8601")
        if str(parsed.dtype) != dtype:
            parsed = parsed.astype(dtype)
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot read the times as {dtype}: {exc}") from None
    if getattr(parsed.dtype, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]")


def carried(frame: pd.DataFrame, rows: int, seconds: float, series: str | None,
            time_col: str | None) -> pd.DataFrame:
    """The rows of each series the next chunk's windows reach (what batch scoring and partitioned replay carry
    from one chunk or partition to the next, so that windowed steps see each series' past): the last `rows`,
    and every row of the last `seconds` before the series' newest time plus the one row before them (a
    duration's `rate` looks there)."""
    import pandas as pd

    keyed = bool(series and series in frame)
    groups = frame.groupby(series, sort=False, dropna=False) if keyed else None
    keep = pd.Series(False, index=frame.index)
    if rows:
        tail = groups.tail(rows) if groups is not None else frame.tail(rows)
        keep[tail.index] = True
    if seconds and time_col and time_col in frame:
        times = frame[time_col]
        newest = groups[time_col].transform("max") if groups is not None else times.max()
        inside = times > newest - pd.Timedelta(seconds=seconds)
        before = (inside.groupby(frame[series], sort=False, dropna=False).shift(-1, fill_value=False)
                  if keyed else inside.shift(-1, fill_value=False))
        keep |= inside | before.astype(bool)
    return frame[keep].reset_index(drop=True)
