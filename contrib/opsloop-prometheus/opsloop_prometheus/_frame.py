"""Range queries into one frame: a row per series per step, a column per query.

The step grid runs from `start` rounded up to a multiple of `step` to `end`
rounded down (so a loop cycle an hour later sees the same timestamps), and a
range longer than `max_points` steps is read in several requests. Every
series is reindexed onto the whole grid: a step Prometheus did not answer
(no sample, or a stale one: query_range leaves out steps after a staleness
marker) is NaN, never a repeated value.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import ConfigError, DataError

from opsloop_prometheus import _client, _incidents
from opsloop_prometheus._options import Options, Query, parse_duration, parse_time

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import DataSection

SECTION = "data.prometheus"


def grid(options: Options, now: datetime) -> tuple[int, int, int]:
    """(first, last, step) of the step grid, in integer milliseconds since the epoch."""
    start, end = parse_time(options.start, now), parse_time(options.end, now)
    step = round(parse_duration(options.step) * 1000)
    first = math.ceil(start.timestamp() * 1000 / step) * step
    last = math.floor(end.timestamp() * 1000 / step) * step
    if last < first:
        raise ConfigError(f"the range holds no step: end {options.end!r} ({end:%Y-%m-%d %H:%M:%S}Z) is before "
                          f"start {options.start!r} ({start:%Y-%m-%d %H:%M:%S}Z), or within one step {options.step} "
                          "of it", section=SECTION, key="end")
    return first, last, step


def chunks(first: int, last: int, step: int, max_points: int) -> list[tuple[int, int]]:
    """(start, end) of each request, so that none asks for more than `max_points` steps per series."""
    span = (max_points - 1) * step
    out, start = [], first
    while start <= last:
        out.append((start, min(last, start + span)))
        start += span + step
    return out


def read_query(base: str, query: Query, options: Options, first: int, last: int, step: int,
               headers: dict[str, str], context: Any = None) -> dict[str, dict[int, float]]:
    """One query's values: series name -> {step time in ms: value}, over every chunk of the range."""
    what = f"query {query.name} ({query.promql})"
    values: dict[str, dict[int, float]] = {}
    for start, end in chunks(first, last, step, options.max_points):
        seen: dict[str, dict[str, str]] = {}
        result = _client.query_range(base, query.promql, start=start / 1000, end=end / 1000, step=step / 1000,
                                     timeout=options.timeout, headers=headers, what=what, context=context)
        for item in result:
            labels = item.get("metric") or {}
            missing = [name for name in options.series_labels if name not in labels]
            if missing:
                raise DataError(f"{_client.display(base)}: {what}: a series has no label {missing[0]!r}, which "
                                f"series_labels needs ({_show(labels)}): keep it in the query's result "
                                f"(by ({', '.join(options.series_labels)})) or change series_labels")
            name = options.separator.join(labels[label] for label in options.series_labels)
            if name in seen:
                raise DataError(f"{_client.display(base)}: {what}: two series make the series {name!r} "
                                f"({_show(seen[name])} and {_show(labels)}): aggregate them, e.g. sum by "
                                f"({', '.join(options.series_labels)}) (...), or add the label that tells them "
                                "apart to series_labels")
            seen[name] = labels
            column = values.setdefault(name, {})
            for stamp, text in item.get("values") or ():
                column[round(float(stamp) * 1000)] = float(text)
    if not values:
        raise DataError(f"{_client.display(base)}: {what} returned no series between "
                        f"{_iso(first)} and {_iso(last)}: check the metric name and label selectors")
    return values


def load(source: str, options: Options, data: DataSection, workdir: Path, now: datetime | None = None) -> pd.DataFrame:
    """`[data] source` read with `options`: the frame described in this module's docstring."""
    import numpy as np
    import pandas as pd

    base = _client.base_url(source)
    time_col, series_col = data.time or "timestamp", data.series or "series"
    label_col = data.target or "label"
    reserved = {time_col, series_col} | ({label_col} if options.incidents else set())
    for query in options.queries:
        if query.name in reserved:
            raise ConfigError(f"the query name {query.name!r} is also the time, series or label column",
                              section=SECTION, key="queries")
    windows = _incidents.read(_resolve(workdir, options.incidents)) if options.incidents else None
    headers = {**_client.basic_auth(source), **options.headers, **_bearer(workdir, options.bearer_token_file)}
    context = _client.tls_context(_resolve(workdir, options.ca_file) if options.ca_file else None)
    first, last, step = grid(options, now or datetime.now(timezone.utc))

    columns: dict[str, dict[str, dict[int, float]]] = {}
    for query in options.queries:
        # An increase needs the step before the first: read one more step, dropped below.
        begin = first - step if query.increase else first
        columns[query.name] = read_query(base, query, options, begin, last, step, headers, context)

    names = sorted(set().union(*columns.values()))
    stamps = np.arange(first, last + step, step, dtype=np.int64)
    frame = pd.DataFrame({
        time_col: pd.to_datetime(np.tile(stamps, len(names)), unit="ms"),
        series_col: np.repeat(np.array(names, dtype=object), len(stamps)),
    })
    for query in options.queries:
        frame[query.name] = _column(columns[query.name], names, stamps, step, query, options.fill_limit)
    if windows is not None:
        frame[label_col] = _incidents.labels(frame[series_col], frame[time_col], windows)
    return frame


def _column(values: dict[str, dict[int, float]], names: list[str], stamps: Any, step: int, query: Query,
            fill_limit: int) -> Any:
    """One query's values on the whole grid, series after series: NaN where a step has no value."""
    import numpy as np

    out = np.full(len(names) * len(stamps), np.nan)
    for i, name in enumerate(names):
        points = values.get(name, {})
        # `padded[0]` is the step before the grid (read for an increase), `padded[1:]` the grid; a time off
        # the grid (none, from query_range) is dropped.
        offset = np.fromiter(points.keys(), dtype=np.int64, count=len(points)) - int(stamps[0])
        at = offset // step + 1
        found = np.fromiter(points.values(), dtype=float, count=len(points))
        keep = (offset % step == 0) & (at >= 0) & (at <= len(stamps))
        padded = np.full(len(stamps) + 1, np.nan)
        padded[at[keep]] = found[keep]
        row = padded[1:]
        if query.increase:
            previous = padded[:-1]
            # A counter that went down was reset (its process restarted): it counted `row` since.
            row = np.where(row < previous, row, row - previous)
        out[i * len(stamps):(i + 1) * len(stamps)] = _fill(row, fill_limit)
    return out


def _fill(row: Any, limit: int) -> Any:
    """Forward-fill each gap of at most `limit` steps that follows a value; longer gaps stay NaN."""
    import numpy as np

    if limit == 0:
        return row
    row = row.copy()
    missing = np.isnan(row)
    i = 0
    while i < len(row):
        if not missing[i]:
            i += 1
            continue
        j = i
        while j < len(row) and missing[j]:
            j += 1
        if i > 0 and j - i <= limit:
            row[i:j] = row[i - 1]
        i = j
    return row


def _resolve(workdir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else workdir / path


def _bearer(workdir: Path, value: str | None) -> dict[str, str]:
    if not value:
        return {}
    path = _resolve(workdir, value)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the bearer token file {path}: {exc.strerror}", section=SECTION,
                          key="bearer_token_file") from None
    return {"Authorization": f"Bearer {token}"}


def _show(labels: dict[str, str]) -> str:
    """A series as PromQL writes it: `name{label="value", ...}`."""
    pairs = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{pairs}}}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
