"""Per-series history in the server: a client sends one row per series per step and gets the batch score.

A bundle whose steps read into a series' past (the `window_reach` hook:
`rolling-features`) is served by a `StatefulScorer`. It keeps, per series
key, the rows within the bundle's reach (the union over its steps), as the
request sent them (the numeric values in a float64 buffer, the times as
int64 nanoseconds, the text and time values as sent for the replay), and
scores each request's rows behind them: the work matrix (fast path) or the
frame (replay) holds the history rows first, then the request's rows, and
the answer is for the request's rows only. The steps see what batch scoring
of the whole series sees (tests/serving/test_streaming.py checks it value
for value on ASD).

- Order: a row whose time is not after its series' last scored time (or
  after the row before it in the same request) is refused with a 422 naming
  the series and both times, and so are rows without a time, or without a
  series key when the bundle has a series column; nothing of a refused
  request is kept.
- The history changes only after a request scored: under `lock` (one per
  history; scoring takes a few hundred microseconds), so concurrent requests
  (the event loop and scoring threads) read and update it atomically.
- Bounded memory: at most `max_series` series (`--max-series`), the least
  recently seen evicted first.
- A series the server does not hold (new, evicted, or after a restart or a
  hot swap to a version with another reach or input schema) is read back
  from the prediction log when it sends its next row: the newest logged rows
  of that series within the reach (an index seek on (model, series, time)),
  so start-up costs nothing and an evicted series comes back exact.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import attrs
from opsloop.rowops import Reach, RowContext
from opsloop.serving.schema import Batch, RequestError

if TYPE_CHECKING:
    import numpy as np
    from opsloop.bundle import LoadedModel
    from opsloop.serving.fastpath import FastScorer, ReplayScorer
    from opsloop.serving.schema import InputSchema

log = logging.getLogger("opsloop.serving")

#: Seconds a restore waits for the log writer to write what was queued before it (rows scored just before).
LOG_WAIT = 5.0
FETCH = 64  # log rows read at a time while restoring a series
RETRIES = 3  # times a request's series are read back when other requests evict them meanwhile


@attrs.define
class SeriesCounts:
    """What `/metrics` shows of the kept series, across versions (`opsloop_series_*`)."""

    evicted: int = 0
    restored: int = 0   # series read back from the prediction log
    new: int = 0        # series with nothing to read back (first seen, the log off, or rows the schema refuses)
    refused: int = 0    # requests refused for their rows' order or missing times or keys
    restore_errors: int = 0


@attrs.define
class Streams:
    """What a version's history needs from the server: the counters and the prediction log (None: --no-log)."""

    counts: SeriesCounts = attrs.Factory(SeriesCounts)
    log: Any = None


def bundle_reach(model: LoadedModel) -> Reach:
    """How far back the bundle's steps read, together (`window_reach` of each step's plugin, `Reach.__or__`).

    A step whose plugin does not implement the hook reads its own row only.
    """
    from opsloop.serving.fastpath import _options

    reach = Reach()
    plugins = model.plugins
    for step in model.manifest.get("steps", []):
        name = step["plugin"]
        plugins.load(name, where=f"bundle {model.ref}")
        if not plugins.implements(name, "window_reach"):
            continue
        got = plugins.call(name, "window_reach", state=dict(step["state"]), options=_options(model, name, step))
        if got:
            reach = reach | got
    return reach


class Kept:
    """One series' kept rows, oldest first: numeric inputs, times, and the text and time values as sent."""

    __slots__ = ("n", "numeric", "other", "times")

    def __init__(self, width: int, time_dtype: Any, capacity: int = 16) -> None:
        import numpy as np

        self.numeric = np.empty((capacity, width))
        self.times = np.empty(capacity, dtype=time_dtype)
        self.other: list[tuple[Any, ...]] = []
        self.n = 0


class SeriesHistory:
    """The kept rows of every series for one reach and input schema; shared by the versions that agree on both."""

    def __init__(self, *, model: str, reach: Reach, schema: InputSchema, series: str | None, time: str | None,
                 max_series: int, streams: Streams) -> None:
        import numpy as np

        self.model = model
        self.reach = reach
        self.schema = schema
        self.series = series if series in schema.by_name else None
        self.time = time if time in schema.by_name else None
        self.max_series = max_series
        self.streams = streams
        self.held: OrderedDict[Any, Kept] = OrderedDict()
        self.lock = threading.Lock()
        self.width = len(schema.numeric)
        self.others = tuple(c.name for c in schema.others)
        self.series_slot = schema.index.get(self.series) if self.series else None
        self.time_slot = schema.index.get(self.time) if self.time else None
        self.time_dtype = (schema.by_name[self.time].dtype if self.time is not None and self.time_slot is None
                           else None)  # a date-time column's dtype; None when numeric or absent
        self.time_other = self.others.index(self.time) if self.time_dtype is not None else None
        self._store = np.int64 if self.time_dtype is not None else np.float64
        self._naive = self.time_dtype is not None and "," not in self.time_dtype  # no time zone in the dtype
        self._span = int(reach.seconds * 1e9) if self.time_dtype is not None else reach.seconds

    @property
    def signature(self) -> tuple[Any, ...]:
        """What a version must share with this history to take it over at a hot swap."""
        return (self.model, self.reach, tuple((c.name, c.dtype) for c in self.schema.columns), self.series,
                self.time)

    # -- reading a request -------------------------------------------------

    def keys(self, batch: Batch) -> list[Any]:
        """Each row's series key (None for every row when the bundle has no series column)."""
        if self.series is None:
            return [None] * batch.rows
        if self.series_slot is not None:
            values = batch.numeric[:, self.series_slot].tolist()
            missing = [i for i, v in enumerate(values) if v != v]
        else:
            values = batch.other[self.series]
            missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            self.streams.counts.refused += 1
            raise RequestError(422, f"row {missing[0]} has no series key ({self.series!r} is null): this model keeps "
                                    f"a history per series, so every row must name its series")
        return values

    def times(self, batch: Batch) -> np.ndarray | None:
        """Each row's time as kept: int64 nanoseconds (a date-time column, UTC when zoned) or float64."""
        import numpy as np

        if self.time is None:
            return None
        if self.time_slot is not None:
            t = batch.numeric[:, self.time_slot]
            bad = np.flatnonzero(np.isnan(t))
        else:
            text = batch.other[self.time]
            bad = [i for i, v in enumerate(text) if v is None]
            if not len(bad):
                t = self._parse(text)
        if len(bad):
            self.streams.counts.refused += 1
            raise RequestError(422, f"row {int(bad[0])} has no time ({self.time!r} is null): this model's windows "
                                    "read each series' past by time, so every row needs one")
        return t

    def _parse(self, text: list[str]) -> np.ndarray:
        """ISO 8601 strings as the replay parses them (`RowContext.times`): numpy for plain local times, else
        pandas."""
        import numpy as np

        from opsloop.rowops import _parse_times

        if self._naive and all(len(s) >= 10 and s[-1] != "Z" and "+" not in s and "-" not in s[10:] for s in text):
            try:
                return np.array(text, dtype="datetime64[ns]").view(np.int64)
            except ValueError:
                pass
        try:
            return _parse_times(text, self.time_dtype).view(np.int64)
        except Exception as exc:  # noqa: BLE001 - a DataError's message, as the replay gives it
            raise RequestError(422, f"feature {self.time!r}: {exc}") from None

    def show(self, value: Any) -> str:
        """A kept or sent time, for messages."""
        if self.time_dtype is not None and not isinstance(value, str):
            import numpy as np

            return str(np.datetime64(int(value), "ns")).removesuffix(".000000000")
        return str(value)

    def _sent(self, batch: Batch, i: int) -> str:
        if self.time_slot is not None:
            return f"{batch.numeric[i, self.time_slot]!r}"
        return str(batch.other[self.time][i])

    def _last_shown(self, kept: Kept) -> str:
        if self.time_other is not None and kept.other:
            return str(kept.other[-1][self.time_other])
        return self.show(kept.times[kept.n - 1])

    def check_order(self, batch: Batch, keys: list[Any], times: np.ndarray | None) -> None:
        """422 when a row's time is not after its series' last: kept, or earlier in this request."""
        if times is None:
            return
        last: dict[Any, tuple[Any, int | None]] = {}
        held = self.held
        for i, key in enumerate(keys):
            t = times[i]
            if key in last:
                before, j = last[key]
            else:
                kept = held.get(key)
                before, j = (kept.times[kept.n - 1], None) if kept is not None and kept.n else (None, None)
            if before is not None and not t > before:
                self.streams.counts.refused += 1
                if j is None:
                    was = f"the last time scored for it, {self._last_shown(held[key])!r}"
                else:
                    was = f"row {j}'s time in this request, {self._sent(batch, j)!r}"
                same = "the same as" if t == before else "before"
                name = f"series {key!r}" if self.series is not None else "the series"
                raise RequestError(422, f"{name}: row {i}'s time {self._sent(batch, i)!r} is {same} {was}: this "
                                        "model keeps each series' history, so send each series' rows once, in time "
                                        "order (nothing in this request was scored or kept)")
            last[key] = (t, i)

    # -- keeping ---------------------------------------------------------------

    def rows_of(self, batch: Batch, i: int) -> tuple[Any, ...]:
        other = batch.other
        return tuple(other[name][i] for name in self.others)

    def add(self, batch: Batch, keys: list[Any], times: np.ndarray | None) -> None:
        """Keep a scored request's rows (under `lock`), drop what is out of reach, evict beyond `max_series`."""
        held = self.held
        numeric = batch.numeric
        for i, key in enumerate(keys):
            kept = held.get(key)
            if kept is None:
                kept = held[key] = Kept(self.width, self._store)
            else:
                held.move_to_end(key)
            n = kept.n
            if n == len(kept.times):
                self._grow(kept)
            kept.numeric[n] = numeric[i]
            if times is not None:
                kept.times[n] = times[i]
            kept.other.append(self.rows_of(batch, i))
            kept.n = n + 1
            self._prune(kept)
        while len(held) > self.max_series:
            held.popitem(last=False)
            self.streams.counts.evicted += 1

    def _grow(self, kept: Kept) -> None:
        import numpy as np

        size = 2 * len(kept.times)
        numeric = np.empty((size, self.width))
        numeric[:kept.n] = kept.numeric[:kept.n]
        times = np.empty(size, dtype=kept.times.dtype)
        times[:kept.n] = kept.times[:kept.n]
        kept.numeric, kept.times = numeric, times

    def _start(self, times: np.ndarray, n: int) -> int:
        """The first of `n` rows (oldest first) that a row after the last can still reach."""
        reach = self.reach
        start = max(n - reach.rows, 0)
        if reach.seconds and self.time is not None and n:
            # every row newer than t - seconds, and the newest at or before it, for any t after the last row
            first = int(times[:n].searchsorted(times[n - 1] - self._span, side="right")) - 1
            start = min(start, max(first, 0))
        return start

    def _prune(self, kept: Kept) -> None:
        start = self._start(kept.times, kept.n)
        if start:
            n = kept.n - start
            kept.numeric[:n] = kept.numeric[start:kept.n]
            kept.times[:n] = kept.times[start:kept.n]
            del kept.other[:start]
            kept.n = n

    # -- restoring from the prediction log ---------------------------------------

    def missing(self, keys: list[Any]) -> list[Any]:
        """The request's series this history does not hold (distinct, in order)."""
        held = self.held
        if len(keys) == 1:
            return [] if keys[0] in held else list(keys)
        return [k for k in dict.fromkeys(keys) if k not in held]

    def restore(self, keys: list[Any]) -> None:
        """Read back the series in `keys` from the prediction log (outside `lock`), then hold them (under it).

        Called on a scoring thread: it waits for the log writer to have
        written what was queued so far (at most `LOG_WAIT` seconds).
        """
        found = {}
        plog = self.streams.log
        if plog is not None:
            target, deadline = plog.rows_queued, time.monotonic() + LOG_WAIT
            while plog.rows_done < target and time.monotonic() < deadline and plog._thread is not None:
                time.sleep(0.005)
            try:
                con = sqlite3.connect(f"file:{plog.path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
            except sqlite3.Error:
                con = None
            if con is not None:
                try:
                    for key in keys:
                        try:
                            found[key] = self._read(con, key)
                        except (sqlite3.Error, ValueError, KeyError, TypeError, RequestError) as exc:
                            self.streams.counts.restore_errors += 1
                            log.warning("opsloop serve: cannot read back series %r of %s from the prediction log "
                                        "(it starts without history): %s", key, self.model, exc)
                            found[key] = None
                finally:
                    con.close()
        with self.lock:
            counts = self.streams.counts
            for key in keys:
                if key in self.held:
                    continue
                kept = found.get(key)
                if kept is not None and kept.n:
                    counts.restored += 1
                else:
                    counts.new += 1
                    kept = Kept(self.width, self._store)
                self.held[key] = kept
            while len(self.held) > self.max_series:
                self.held.popitem(last=False)
                counts.evicted += 1

    def _read(self, con: sqlite3.Connection, key: Any) -> Kept | None:
        """The newest logged rows of one series within reach, as kept (None: none logged)."""
        import numpy as np

        if key is None:
            where, args = "series IS NULL", (self.model,)
        elif isinstance(key, float):
            variants = {repr(key), str(int(key)) if key.is_integer() else repr(key)}
            where, args = f"series IN ({', '.join('?' * len(variants))})", (self.model, *variants)
        else:
            where, args = "series = ?", (self.model, str(key))
        by_time = self.time_dtype is not None
        order = "time DESC, id DESC" if by_time else "id DESC"
        cursor = con.execute(f"SELECT time, inputs FROM predictions WHERE model = ? AND {where} "  # noqa: S608
                             f"ORDER BY {order}", args)
        records: list[dict[str, Any]] = []
        stamps: list[Any] = []
        enough = self.reach.rows + 1 if not by_time else None
        while True:
            chunk = cursor.fetchmany(FETCH)
            for stamp, inputs in chunk:
                record = json.loads(inputs)
                if self.series is not None and record.get(self.series) != key:
                    continue
                records.append(record)
                stamps.append(stamp)
            if not chunk or enough is not None and len(records) >= enough:
                break
            if by_time and self._covered(records, stamps):
                break
        if not records:
            return None
        records.reverse()
        batch = self.schema.from_instances(records)
        times = self.times(batch)
        order_ = np.arange(batch.rows) if times is None else np.argsort(times, kind="stable")
        if times is not None:  # one row per time: the one logged last (rows sent twice by older clients)
            t = times[order_]
            keep = np.append(t[1:] != t[:-1], True)
            order_ = order_[keep]
        kept = Kept(self.width, self._store, capacity=max(16, len(order_)))
        n = len(order_)
        kept.numeric[:n] = batch.numeric[order_]
        if times is not None:
            kept.times[:n] = times[order_]
        kept.other = [self.rows_of(batch, int(i)) for i in order_]
        kept.n = n
        self._prune(kept)
        return kept

    def _covered(self, records: list[dict[str, Any]], stamps: list[Any]) -> bool:
        """Whether the rows read so far (newest second first) hold everything within reach of the newest.

        The log's `time` has whole seconds, so rows of the last second read
        may be newer than rows read before them in it: only rows of earlier
        seconds count as certainly newer than every row not read yet.
        """
        cut = stamps[-1]
        newer = [r for r, s in zip(records, stamps) if s > cut]
        if len(newer) <= self.reach.rows:
            return False
        if not self.reach.seconds:
            return True
        times = self._parse([r[self.time] for r in records])
        latest = times.max()
        older = [t for t, s in zip(times, stamps) if s > cut and t <= latest - self._span]
        return bool(older)

    # -- the request's rows behind the history -----------------------------------

    def context(self, parts: list[Kept], keys: list[Any], times: np.ndarray | None, numeric_keys: bool) -> Any:
        """The series keys and times of the history rows (in `parts`' order) and then of the request's rows."""
        import numpy as np

        series = None
        if self.series is not None:
            hist_keys: list[Any] = []
            for kept, key in zip(parts, dict.fromkeys(keys)):
                hist_keys.extend([key] * kept.n)
            series = hist_keys + list(keys)
            if numeric_keys:
                series = np.array(series, dtype=np.float64)
        all_times = None
        if times is not None:
            all_times = np.concatenate([*(kept.times[:kept.n] for kept in parts), times])
            if self.time_dtype is not None:
                all_times = all_times.view("datetime64[ns]")
        return series, all_times


class StatefulScorer:
    """A version's scorer (fast or replay) with the series history before each request's rows."""

    def __init__(self, inner: FastScorer | ReplayScorer, history: SeriesHistory) -> None:
        self.inner = inner
        self.history = history
        self.kind = inner.kind
        self.reason = inner.reason

    def inline(self, batch: Batch) -> bool:
        """Whether the request can be scored on the event loop: every series held, the history free."""
        h = self.history
        return not h.lock.locked() and not h.missing(h.keys(batch))

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        h = self.history
        keys = h.keys(batch)
        times = h.times(batch)
        if len(keys) > h.max_series and len(set(keys)) > h.max_series:
            raise RequestError(413, f"the request holds rows of {len(set(keys)):,} series; this server keeps at most "
                                    f"{h.max_series:,} (--max-series): send fewer series per request")
        for _ in range(RETRIES):
            missing = h.missing(keys)
            if missing:
                h.restore(missing)
            with h.lock:
                if h.missing(keys):  # evicted again by other requests meanwhile (a limit below the series in flight)
                    continue
                h.check_order(batch, keys, times)
                parts = [h.held[k] for k in dict.fromkeys(keys)]
                if self.kind == "fast":
                    out = self._fast(batch, parts, keys, times)
                else:
                    out = self._replay(batch, parts)
                h.add(batch, keys, times)
                return out
        raise RequestError(503, f"the series of this request were dropped again while being read back "
                                f"({len(h.held):,} series held, --max-series {h.max_series:,}): try again, or "
                                "raise --max-series above the number of series sending at once")

    def _fast(self, batch: Batch, parts: list[Kept], keys: list[Any], times: np.ndarray | None) -> Any:
        import numpy as np

        inner = self.inner
        history = sum(kept.n for kept in parts)
        n, inputs = batch.rows, batch.numeric
        work = np.empty((history + n, inner.width))
        width = inputs.shape[1]
        at = 0
        for kept in parts:
            work[at:at + kept.n, :width] = kept.numeric[:kept.n]
            at += kept.n
        work[history:, :width] = inputs
        series, all_times = self.history.context(parts, keys, times, self.history.series_slot is not None)
        rows = RowContext.parsed(history + n, series=series, times=all_times, first=history)
        return inner.finish(inner.run(work, rows, history), batch)

    def _replay(self, batch: Batch, parts: list[Kept]) -> Any:
        import numpy as np

        history = sum(kept.n for kept in parts)
        if not history:
            return self.inner.score(batch)
        numeric = np.concatenate([*(kept.numeric[:kept.n] for kept in parts), batch.numeric])
        other = {}
        for j, name in enumerate(self.history.others):
            values = [row[j] for kept in parts for row in kept.other]
            other[name] = values + list(batch.other[name])
        labels, score = self.inner.score(Batch(rows=history + batch.rows, numeric=numeric, other=other))
        return labels[history:], (score[history:] if score is not None else None)


def stateful(model: LoadedModel, schema: InputSchema, scorer: FastScorer | ReplayScorer, *, name: str,
             max_series: int, streams: Streams | None, previous: Any = None) -> FastScorer | ReplayScorer | StatefulScorer:
    """`scorer` with a series history when the bundle's steps reach into the past; the previous version's history
    when it has the same reach and input schema (a hot swap keeps it), else a new one (read back from the log)."""
    reach = bundle_reach(model)
    if not reach:
        return scorer
    manifest = model.manifest
    history = SeriesHistory(model=name, reach=reach, schema=schema, series=manifest.get("series"),
                            time=manifest.get("time"), max_series=max_series, streams=streams or Streams())
    old = getattr(previous, "history", None)
    if old is not None and old.signature == history.signature:
        old.max_series = max_series
        history = old
    return StatefulScorer(scorer, history)
