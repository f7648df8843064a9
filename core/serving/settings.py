"""What a prediction server serves and how: one frozen `Settings`, shared by `opsloop serve` and `local-http`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs

#: Where the server keeps its prediction log, state files and output, under the working directory.
SERVING_DIR = Path(".opsloop") / "serving"
LOG_FILE = "predictions.db"
MONITOR_FILE = "monitor-report.json"
#: The environment variable `opsloop serve` reads its bearer token from (`--token-env` names another).
TOKEN_ENV = "OPSLOOP_SERVE_TOKEN"
#: Shortest token accepted: a guessable token is no protection.
MIN_TOKEN_LENGTH = 16


#: The range of every numeric setting, in one place: `Settings` checks it, `opsloop serve` and `python -m
#: opsloop.serving` refuse what it refuses, and so do `local-http`'s options (`config check`), all with the same line
#: (issue 8, items 5-7). Beyond these, values are mistakes that fail later: a poll interval past `time_t` kills the
#: watcher, a thread count past int32 makes every prediction a 500. (lowest, highest, unit; a range given in ints
#: takes whole numbers only.)
BOUNDS: dict[str, tuple[float, float, str]] = {
    "port": (0, 65535, ""),
    "max_body_bytes": (1, 1 << 30, "bytes"),
    "max_rows": (1, 10_000_000, "rows"),
    "poll_interval": (0.01, 3600, "seconds"),
    "log_max_pending": (1, 10_000_000, "rows"),
    "threads": (0, 1024, ""),
    "live_window": (1, 10_000_000, "predictions"),
    "read_timeout": (0.01, 86400, "seconds"),
    "idle_timeout": (0.01, 86400, "seconds"),
    "max_connections": (1, 1_000_000, "connections"),
    "max_feedback": (1, 1_000_000, "entries"),
    "max_series": (1, 100_000_000, "series"),
    # Seconds; 0 keeps everything. Given as a duration (`30d`, `12h`), read by `retention`.
    "log_retention": (0.0, 3650 * 86400.0, "seconds"),
}
#: Units of a retention (`30d`); a bare number is seconds.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)")
#: How a retention may be written, for messages and help texts.
RETENTION_FORMS = "a duration such as 30d, 12h or 90m (units s, m, h, d, w; a bare number is seconds), or 0 or none " \
                  "to keep everything"


class OutOfRange(ValueError):
    """A number outside its range; `str()` names the setting, `message(name)` another name for it (a flag).

    Attributes:
        name: The setting (`poll_interval`).
        value: The value refused.
        span: The allowed range in words (`from 0.01 to 3,600 seconds`).
    """

    def __init__(self, name: str, value: object, span: str) -> None:
        self.name, self.value, self.span = name, value, span
        super().__init__(self.message(name))

    def message(self, name: str) -> str:
        return f"{name} must be {self.span}, got {self.value!r}"


def span(low: float, high: float, unit: str = "", integer: bool = True) -> str:
    """A range in words: `an integer from 0 to 65,535`, `from 0.01 to 3,600 seconds`."""
    def number(x: float) -> str:
        return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"

    return f"{'an integer ' if integer else ''}from {number(low)} to {number(high)}{' ' + unit if unit else ''}"


def within(low: float, high: float, unit: str = "", integer: bool = True) -> Any:
    """An attrs validator: a number (an int when `integer`; never a bool or NaN) from `low` to `high`."""
    words = span(low, high, unit, integer)

    def check(_: object, attribute: attrs.Attribute, value: Any) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise OutOfRange(attribute.name, value, words)

    return check


def bounded(name: str) -> Any:
    """The validator of the setting `name`, for options that set it elsewhere (`local-http`'s)."""
    return within(*_rule(name))


def describe(name: str) -> str:
    """The range of the setting `name` in words, for help texts."""
    return span(*_rule(name))


def _rule(name: str) -> tuple[float, float, str, bool]:
    low, high, unit = BOUNDS[name]
    return low, high, unit, isinstance(low, int) and isinstance(high, int)


def retention(value: Any) -> Any:
    """A retention as seconds (0: keep everything): `30d`, `12h`, `90m`, `3600`, `0`, `none`; numbers pass as they are.

    An attrs converter: a string that is not a duration is refused here (`OutOfRange`, naming `log_retention`);
    a number is left to the range check (`BOUNDS["log_retention"]`).
    """
    if value is None:
        return 0.0
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("0", "none", "never", "forever", "off"):
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        high = BOUNDS["log_retention"][1]
        raise OutOfRange("log_retention", value, f"{RETENTION_FORMS}, at most {high / 86400:,.0f}d")
    seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"]
    return int(seconds) if seconds.is_integer() else seconds


def show_retention(seconds: float) -> str:
    """Seconds as the shortest duration that states them exactly (`30d`, `36h`, `90s`); "keep everything" for 0."""
    if not seconds:
        return "keep everything"
    for unit in ("w", "d", "h", "m"):
        count = seconds / DURATION_UNITS[unit]
        if float(count).is_integer():
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def _token(_: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH or value != value.strip()):
        raise ValueError(f"the token must be a string of at least {MIN_TOKEN_LENGTH} characters without surrounding "
                         "blanks (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")


@attrs.frozen(kw_only=True)
class Settings:
    """A server's settings; every field has the default `opsloop serve` uses.

    A number outside its range in `BOUNDS` is refused here (`OutOfRange`).

    Attributes:
        model: Model name in the registry; None: the config's `[project] name`.
        alias: The alias whose version is served (and followed when it moves).
        config: Config file giving the store (`[store]`); None: `./opsloop.toml`
            if present, else the built-in defaults.
        overrides: `SECTION.KEY=VALUE` config overrides, as `--set` takes them.
        workdir: Directory relative paths are resolved against (where
            `.opsloop/` lives); None: the config file's directory.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        max_body_bytes: Largest request body accepted (after decompression);
            a larger one is a 413.
        max_rows: Most rows in one request; more is a 413.
        poll_interval: Seconds between two looks at the alias in the store.
        log_predictions: Log every prediction (inputs, outputs, version,
            time, request id) to SQLite.
        log_path: The prediction log; None: `.opsloop/serving/predictions.db`.
        log_max_pending: Most predicted rows waiting for the log writer. When
            the disk cannot keep up and this many wait, further predictions
            are answered but not logged, and counted on `/metrics`
            (`opsloop_prediction_log_dropped_total`): memory stays bounded
            and requests never wait for the log.
        fast_path: Score with the compiled per-row scorer where the bundle
            allows it (see `opsloop.serving.fastpath`); False always replays
            preprocessing through the plugins (`LoadedModel.predict`).
        threads: XGBoost threads per prediction; 1 is fastest for small
            requests and on a busy machine, 0 means every core.
        monitor_report: JSON file whose monitor figures `/metrics` exports
            (what `opsloop run` writes, `opsloop run --json` output, or a list
            of monitor reports); None: `.opsloop/serving/monitor-report.json`,
            which every `opsloop run` that monitors rewrites.
        live_window: How many of the latest labelled predictions the live
            precision/recall on `/metrics` are computed from.
        read_timeout: Seconds a client has, from connecting or from the first
            byte of a request, to send the whole request (headers and body);
            then it gets a 408 and the connection is closed. Slow or stalled
            clients cannot hold connections open (issue 8, item 6).
        idle_timeout: Seconds an idle keep-alive connection stays open
            between two requests.
        max_connections: Most open connections. A new connection beyond it
            takes the place of the one that has waited longest (over a
            second) for its request to arrive, or else is answered 503 and
            closed. Lowered at start when the process may not open that many
            files (`ulimit -n`), so the server never runs out of descriptors.
        max_feedback: Most feedback entries in one request; more is a 413.
        max_series: Most series whose recent rows the server keeps, for a
            version whose steps read into a series' past (rolling windows);
            beyond, the least recently seen series is dropped, and read back
            from the prediction log when it sends again
            (`opsloop.serving.history`).
        token: Bearer token that requests must carry (`Authorization: Bearer
            TOKEN`) on the endpoints `token_for` names; None: no
            authentication. Left out of `repr`.
        log_retention: Seconds a logged prediction or label is kept: the log
            writer deletes older ones (oldest first, in bounded steps, at most
            once a minute per log file); 0 keeps everything. Given as a duration
            (`"30d"`, `"12h"`, `"90m"`; `"0"` or `"none"`: keep), see `retention`.
        token_for: `"write"`: the token guards `POST /v1/feedback` (what
            changes the server's state beyond logging predictions); `"all"`:
            every endpoint except the health checks.
    """

    model: str | None = None
    alias: str = "production"
    config: Path | None = None
    overrides: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    workdir: Path | None = None
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=bounded("port"))
    max_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=bounded("max_body_bytes"))
    max_rows: int = attrs.field(default=100_000, validator=bounded("max_rows"))
    poll_interval: float = attrs.field(default=0.5, validator=bounded("poll_interval"))
    log_predictions: bool = True
    log_path: Path | None = None
    log_max_pending: int = attrs.field(default=50_000, validator=bounded("log_max_pending"))
    log_retention: float = attrs.field(default=0.0, converter=retention, validator=bounded("log_retention"))
    fast_path: bool = True
    threads: int = attrs.field(default=1, validator=bounded("threads"))
    monitor_report: Path | None = None
    live_window: int = attrs.field(default=10_000, validator=bounded("live_window"))
    read_timeout: float = attrs.field(default=30.0, validator=bounded("read_timeout"))
    idle_timeout: float = attrs.field(default=5.0, validator=bounded("idle_timeout"))
    max_connections: int = attrs.field(default=1000, validator=bounded("max_connections"))
    max_feedback: int = attrs.field(default=10_000, validator=bounded("max_feedback"))
    max_series: int = attrs.field(default=100_000, validator=bounded("max_series"))
    token: str | None = attrs.field(default=None, repr=False, validator=_token)
    token_for: str = attrs.field(default="write", validator=attrs.validators.in_(("write", "all")))

    def resolve(self, workdir: Path) -> Settings:
        """The same settings with every path made absolute against `workdir`."""
        def absolute(path: Path | None, default: Path) -> Path:
            path = Path(path) if path is not None else default
            return path if path.is_absolute() else workdir / path

        return attrs.evolve(self, workdir=workdir,
                            log_path=absolute(self.log_path, SERVING_DIR / LOG_FILE),
                            monitor_report=absolute(self.monitor_report, SERVING_DIR / MONITOR_FILE))


def read_token(name: str = TOKEN_ENV, scope: str = "write") -> str | None:
    """The bearer token in the environment variable `name`, checked; None: the default variable is unset.

    A variable that is set but empty (or blank) is refused, not read as "no token": that is how a secret
    that failed to render reaches a deployment, and the server would start unauthenticated (issue 8, item
    12b). So is an unset variable that `--token-env` names, or any, with `--token-for all`.
    """
    from opsloop.errors import OpsloopError

    value = os.environ.get(name)
    if value is None:
        if name != TOKEN_ENV or scope == "all":
            raise OpsloopError(f"{'--token-for all needs a token: ' if scope == 'all' else ''}the environment "
                               f"variable {name} is not set; put the bearer token there")
        return None
    value = value.strip()
    if not value:
        raise OpsloopError(f"the environment variable {name} is set but empty: put the bearer token there, or "
                           "unset it to serve without authentication")
    try:
        _token(None, None, value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise OpsloopError(f"${name}: {exc}") from None
    return value


def default(name: str) -> Any:
    """A `Settings` field's default: the one source for `opsloop serve`'s options and `local-http`'s."""
    return attrs.fields_dict(Settings)[name].default
