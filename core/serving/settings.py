"""What a prediction server serves and how: one frozen `Settings`, shared by `opsloop serve` and `local-http`."""

from __future__ import annotations

import math
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


def _positive(_: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _seconds(_: object, attribute: attrs.Attribute, value: float) -> None:
    _positive(_, attribute, value)
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number of seconds, got {value!r}")


def _token(_: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH or value != value.strip()):
        raise ValueError(f"the token must be a string of at least {MIN_TOKEN_LENGTH} characters without surrounding "
                         "blanks (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")


@attrs.frozen(kw_only=True)
class Settings:
    """A server's settings; every field has the default `opsloop serve` uses.

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
        token: Bearer token that requests must carry (`Authorization: Bearer
            TOKEN`) on the endpoints `token_for` names; None: no
            authentication. Left out of `repr`.
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
    port: int = attrs.field(default=8080, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    max_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    max_rows: int = attrs.field(default=100_000, validator=_positive)
    poll_interval: float = attrs.field(default=0.5, validator=_positive)
    log_predictions: bool = True
    log_path: Path | None = None
    log_max_pending: int = attrs.field(default=50_000, validator=_positive)
    fast_path: bool = True
    threads: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    monitor_report: Path | None = None
    live_window: int = attrs.field(default=10_000, validator=_positive)
    read_timeout: float = attrs.field(default=30.0, validator=_seconds)
    idle_timeout: float = attrs.field(default=5.0, validator=_seconds)
    max_connections: int = attrs.field(default=1000, validator=_positive)
    max_feedback: int = attrs.field(default=10_000, validator=_positive)
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


def default(name: str) -> Any:
    """A `Settings` field's default: the one source for `opsloop serve`'s options and `local-http`'s."""
    return attrs.fields_dict(Settings)[name].default
