"""The `[data.prometheus]` options, and the time and duration syntax they accept."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

#: Prometheus's duration units (https://prometheus.io/docs/prometheus/latest/querying/basics/#time-durations).
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
#: A query name becomes a column name: letters, digits, `_`, `.`, `-`.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as `5m`, `1h30m` or `90s`; ValueError otherwise."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m, 1h or 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def parse_time(text: str, now: datetime) -> datetime:
    """A UTC datetime from `now`, `-7d` / `now-7d` (relative to `now`), ISO-8601 or a Unix timestamp.

    An ISO time without an offset is UTC.
    """
    value = text.strip()
    if value == "now":
        return now
    relative = value.removeprefix("now")
    if relative.startswith("-"):
        return now - timedelta(seconds=parse_duration(relative[1:]))
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use an ISO-8601 time (2024-01-01T00:00:00Z), a Unix "
                         "timestamp, now, or now minus a duration (-7d, now-12h)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


#: How the server is reached, not what rows come back: left out of a version's training key (the rows' own
#: fingerprint is in it), so a new token or timeout reuses the version trained on the same rows.
NOT_SHAPING = {"shapes_model": False}


@attrs.frozen(kw_only=True)
class Query:
    """One feature column: a PromQL expression and how to turn it into per-step values.

    Attributes:
        name: The column's name.
        query: PromQL; every series it returns must carry the `series_labels`.
        rate: When set (`"5m"`), the query is a counter selector and is read as
            `rate(<query>[<rate>])`: Prometheus computes the per-second rate,
            counter resets included.
        increase: Read the values as a counter and return each step's increase
            over the previous step, computed here; a decrease is a counter reset,
            so that step's increase is the new value (as Prometheus's own
            `increase` counts it). A missing step leaves the next one NaN.
    """

    name: str
    query: str
    rate: str | None = None
    increase: bool = False

    @property
    def promql(self) -> str:
        """The expression sent to Prometheus."""
        return f"rate({self.query}[{self.rate}])" if self.rate else self.query


def _query(index: int, item: Any) -> Query:
    """One entry of the `queries` list."""
    if not isinstance(item, dict):
        raise ValueError(f"queries[{index}]: expected a table {{name = ..., query = ...}}, got {item!r}")
    unknown = set(item) - {"name", "query", "rate", "increase"}
    if unknown:
        raise ValueError(f"queries[{index}]: unknown key {sorted(unknown)[0]!r} (keys: name, query, rate, increase)")
    for key in ("name", "query"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ValueError(f"queries[{index}]: {key} must be a non-empty string, got {item.get(key)!r}")
    rate, increase = item.get("rate"), item.get("increase", False)
    if rate is not None:
        if not isinstance(rate, str):
            raise ValueError(f"queries[{index}] ({item['name']}): rate must be a duration string such as \"5m\"")
        parse_duration(rate)
    if not isinstance(increase, bool):
        raise ValueError(f"queries[{index}] ({item['name']}): increase must be true or false, got {increase!r}")
    if rate and increase:
        raise ValueError(f"queries[{index}] ({item['name']}): rate and increase both read a counter; choose one")
    return Query(name=item["name"], query=item["query"], rate=rate, increase=increase)


def to_queries(value: Any) -> tuple[Query, ...]:
    """`queries` as a table (`cpu = "PromQL"`) or a list of tables (`{name, query, rate, increase}`)."""
    if isinstance(value, tuple) and all(isinstance(q, Query) for q in value):
        return value
    if isinstance(value, dict):
        items = []
        for name, query in value.items():
            if not isinstance(query, str):
                raise ValueError(f"queries.{name}: expected a PromQL string, got {query!r} (for rate or "
                                 "increase write queries as a list of tables)")
            items.append({"name": name, "query": query})
        value = items
    if not isinstance(value, list):
        raise ValueError(f"queries: expected a table of name = PromQL or a list of {{name, query}} tables, "
                         f"got {value!r}")
    queries = tuple(_query(i, item) for i, item in enumerate(value))
    names = [q.name for q in queries]
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"queries: {name!r} cannot name a column: use letters, digits, _, . and -")
        if names.count(name) > 1:
            raise ValueError(f"queries: the name {name!r} is used twice")
    return queries


def _check_queries(instance: Any, attribute: Any, value: tuple[Query, ...]) -> None:
    if not value:
        raise ValueError("queries: name at least one query, e.g. queries = {cpu = 'rate(node_cpu_seconds_total"
                         "{mode=\"user\"}[5m])'}")


def _check_duration(instance: Any, attribute: Any, value: str) -> None:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


def _time_text(name: str) -> Any:
    """A converter for `start`/`end`: a string as written, or a TOML date-time (`start =
    2024-06-01T00:00:00Z`, unquoted) as ISO-8601 text; a TOML local date-time, without offset, is UTC."""
    from datetime import date

    def convert(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
        if isinstance(value, date):
            return f"{value.isoformat()}T00:00:00+00:00"
        raise ValueError(f"{name}: expected a time such as \"-7d\", \"now\" or 2024-06-01T00:00:00Z, got "
                         f"{type(value).__name__} {value!r}")

    return convert


def _check_time(instance: Any, attribute: Any, value: str) -> None:
    try:
        parse_time(value, datetime.now(timezone.utc))
    except ValueError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


def _check_labels(instance: Any, attribute: Any, value: list[str]) -> None:
    if not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"series_labels: name at least one label, e.g. [\"instance\"], got {value!r}")


def _positive(instance: Any, attribute: Any, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be positive, got {value!r}")


def _not_negative(instance: Any, attribute: Any, value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be 0 or more, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """`[data.prometheus]`: what to query, over which range, and how to shape the rows.

    Attributes:
        queries: The feature columns: a table `name = "PromQL"`, or a list of
            tables `{name, query, rate, increase}` (see `Query`).
        start: First step: ISO-8601 (UTC when no offset; a quoted string or a
            TOML date-time), a Unix timestamp, `now`, or `-7d` / `now-7d`.
        end: Last step, in the same forms.
        step: Query resolution, a Prometheus duration (`30s`, `5m`).
        series_labels: Labels whose values, joined by `separator`, make the
            series column; every series of every query must carry them.
        separator: Joins the `series_labels` values.
        fill_limit: Forward-fill a gap of at most this many steps in each series
            with its last value (0: gaps stay NaN for `[preprocess] impute`).
        incidents: A CSV of incident windows (columns series, start, end; a
            series of `*` is every series) made into the 0/1 label column;
            relative to the config file.
        timeout: Seconds to wait for each HTTP request.
        max_points: Most steps one request asks for, per series (Prometheus
            refuses more than 11,000); longer ranges are split.
        headers: Extra HTTP headers (for a proxy or a tenant header such as
            `X-Scope-OrgID`).
        bearer_token_file: A file whose content is sent as
            `Authorization: Bearer ...`; relative to the config file.
        ca_file: A PEM file of the CA(s) that signed an HTTPS server's
            certificate, trusted besides the system's; relative to the config
            file.
    """

    # Any: cattrs hands the table or list as written to `to_queries`, which checks and normalises it.
    queries: Any = attrs.field(default=(), converter=to_queries, validator=_check_queries)
    # Any: a string, or a TOML date-time that `_time_text` writes as ISO-8601 text.
    start: Any = attrs.field(default="-7d", converter=_time_text("start"), validator=_check_time)
    end: Any = attrs.field(default="now", converter=_time_text("end"), validator=_check_time)
    step: str = attrs.field(default="1m", validator=_check_duration)
    series_labels: list[str] = attrs.field(factory=lambda: ["instance"], validator=_check_labels)
    separator: str = "/"
    fill_limit: int = attrs.field(default=0, validator=_not_negative)
    incidents: str | None = None
    timeout: float = attrs.field(default=30.0, validator=_positive, metadata=NOT_SHAPING)
    max_points: int = attrs.field(default=11_000, validator=_positive, metadata=NOT_SHAPING)
    headers: dict[str, str] = attrs.field(factory=dict, metadata=NOT_SHAPING)
    bearer_token_file: str | None = attrs.field(default=None, metadata=NOT_SHAPING)
    ca_file: str | None = attrs.field(default=None, metadata=NOT_SHAPING)

    @max_points.validator
    def _max_points(self, attribute: Any, value: int) -> None:
        if value > 11_000:
            raise ValueError(f"max_points: Prometheus answers at most 11000 points per series, got {value}")
