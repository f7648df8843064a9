"""Talking to MLflow: a client per tracking URI, HTTP bounded in time, every failure one line naming the address.

MLflow's HTTP client retries a failed request up to 7 times with exponential
backoff and waits 120 s for an answer (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
MLFLOW_HTTP_REQUEST_TIMEOUT): on a host that does not answer, a run would
hang for minutes before saying anything. Every call this package makes runs
inside `Connection.talking`, which sets those variables for the call's
duration only (the plugin's `timeout` and `retries`, else the variables the
operator exported, else 10 s and 2 retries) and turns whatever MLflow raises
into one `StoreError` line naming the address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opsloop import OpsloopError, StoreError

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Seconds MLflow waits for one HTTP answer, and retries of a failed request, unless configured.
DEFAULT_TIMEOUT = 10
DEFAULT_RETRIES = 2
#: Longest reason kept from an MLflow error (they can quote a whole HTML error page).
MAX_REASON = 300


def redact(uri: str) -> str:
    """A URI fit for messages and tags: the password in `user:password@host` replaced by `***`."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words on one line: a connection problem, or what the server answered."""
    from mlflow.exceptions import MlflowException, RestException

    text = exc.message if isinstance(exc, MlflowException) else str(exc)
    if isinstance(exc, RestException):
        said = f"the server refused it ({exc.error_code}): {text}"
    elif m := re.search(r"too many (\d{3}) error responses", text):
        said = f"the server refused it (HTTP {m.group(1)}, every retry)"
    elif re.search(r"Connection refused|NewConnectionError|Failed to establish", text):
        said = "cannot connect (connection refused)"
    elif re.search(r"timed out|Timeout", text, re.IGNORECASE):
        said = "no answer in time (timed out)"
    elif re.search(r"Name or service not known|nodename nor servname|getaddrinfo failed", text):
        said = "cannot connect (unknown host)"
    elif m := re.search(r"(\d{3}) (?:Client|Server) Error: ([^\n]*?) for url", text):
        said = f"the server refused it (HTTP {m.group(1)} {m.group(2)})"
    else:
        said = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    said = " ".join(said.split())
    return said if len(said) <= MAX_REASON else said[:MAX_REASON - 3] + "..."


@contextlib.contextmanager
def bounded(timeout: int | None, retries: int | None) -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded for the duration of a call, its chatter silenced.

    An operator's MLFLOW_HTTP_REQUEST_* variables win over the defaults, the plugin's options over both.
    MLflow also prints each run's URL to standard output when a run ends, which would corrupt
    `opsloop run --json`: MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT turns that off.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": timeout,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": retries,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": None,
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": None,
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": None,
    }
    # One call at a time changes the environment and the loggers (Optuna may run trials in threads).
    with _BOUNDED, _environment(wanted):
        yield


#: Serialises `bounded`: what it changes (the environment, logger levels) belongs to the whole process.
_BOUNDED = threading.RLock()


@contextlib.contextmanager
def _environment(wanted: dict[str, object]) -> Iterator[None]:
    defaults = {"MLFLOW_HTTP_REQUEST_TIMEOUT": DEFAULT_TIMEOUT, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": DEFAULT_RETRIES,
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1, "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 0,
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if value is not None:
            os.environ[name] = str(value)
        elif saved[name] is None:
            os.environ[name] = str(defaults[name])
    # MLflow logs at INFO, and a database error with its traceback at ERROR before raising it (alembic logs
    # while it creates a SQLite store's tables): opsloop's output stays its own, and the error that MLflow
    # raises becomes this plugin's one line (`Connection.talking`; OPSLOOP_DEBUG=1 shows the traceback).
    quiet = {"mlflow": logging.CRITICAL, "alembic": logging.WARNING}
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), quiet[logger.name]))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Connection:
    """An `MlflowClient` for the configured tracking and registry URIs, and their addresses for messages."""

    def __init__(self, tracking_uri: str | None, registry_uri: str | None, *, timeout: int | None = None,
                 retries: int | None = None) -> None:
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError as exc:
            raise OpsloopError(f"MLflow cannot be imported ({exc}): install it with the plugin's package, "
                               "pip install opsloop-mlflow (or ./contrib/opsloop-mlflow)") from exc

        self.timeout, self.retries = timeout, retries
        tracking = tracking_uri or mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, or MLflow's default
        #: Where runs go, and where the registry is, as messages and tags show them (no password).
        self.address = redact(str(tracking))
        self.registry_address = redact(str(registry_uri or tracking))
        self.client: MlflowClient
        with self.talking("opening a client"):
            self.client = MlflowClient(tracking_uri=tracking, registry_uri=registry_uri or tracking)

    @contextlib.contextmanager
    def talking(self, doing: str, *, registry: bool = False, retry: bool = False) -> Iterator[MlflowClient]:
        """`with connection.talking("creating the run") as client:` the client, HTTP bounded; any failure is
        one StoreError naming the address and what was being done. `retry`: at least one retry, even with
        `retries = 0` (after a refused upload the server may close the connection the next call reuses)."""
        address = self.registry_address if registry else self.address
        retries = max(self.retries, 1) if retry and self.retries is not None else self.retries
        with bounded(self.timeout, retries):
            try:
                yield getattr(self, "client", None)  # type: ignore[misc] - None only while the client is built
            except OpsloopError:
                raise
            except Exception as exc:
                raise StoreError(f"MLflow at {address}: {doing} failed: {reason(exc)}") from exc
