"""Prometheus's HTTP API, `/api/v1/query_range`, with the standard library's urllib.

Every failure becomes one `DataError` line naming the address and the query:
the server cannot be reached or does not answer in time, answers with an HTTP
error, or answers with a Prometheus error (its `errorType` and `error`, e.g.
`bad_data: parse error...`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from opsloop.errors import ConfigError, DataError

if TYPE_CHECKING:
    import ssl

#: `[data] source` schemes and the HTTP scheme each one means.
SCHEMES = {"prometheus": "http", "prometheus+http": "http", "prometheus+https": "https", "http": "http",
           "https": "https"}


def base_url(source: str) -> str:
    """The server's HTTP address from `[data] source`: `prometheus://host:port[/path]` is http,
    `prometheus+https://...` https, and a plain `http(s)://` URL is taken as it is."""
    parts = urlsplit(source)
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(f"{source!r} is not a Prometheus address: use prometheus://host:9090, "
                          "prometheus+https://host or http(s)://host:9090", section="data", key="source")
    if not parts.hostname:
        raise ConfigError(f"{source!r} names no host: use prometheus://host:9090", section="data", key="source")
    if parts.query or parts.fragment:
        raise ConfigError(f"{source!r}: the address takes no ?query or #fragment (queries go in "
                          "[data.prometheus] queries)", section="data", key="source")
    return urlunsplit((scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def basic_auth(source: str) -> dict[str, str]:
    """`Authorization: Basic ...` from a `user:password@` in the address (Prometheus behind a proxy that
    asks for it); no header without one."""
    import base64
    from urllib.parse import unquote

    parts = urlsplit(source)
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def display(url: str) -> str:
    """An address fit for an error message: without a password in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """Certificates signed by `ca_file` (a PEM bundle) trusted besides the system's; None: the system's only."""
    import ssl

    if ca_file is None:
        return None
    try:
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the CA file {ca_file}: {_reason(exc)}", section="data.prometheus",
                          key="ca_file") from None
    return context


def query_range(base: str, promql: str, *, start: float, end: float, step: float, timeout: float,
                headers: Mapping[str, str], what: str, context: ssl.SSLContext | None = None) -> list[dict[str, Any]]:
    """The `result` of one range query: a list of `{"metric": {labels}, "values": [[t, "v"], ...]}`.

    `what` names the query in errors (`query cpu (rate(...))`). POST, form-encoded, as Prometheus
    accepts since 2.1: a long PromQL expression does not hit URL length limits.
    """
    import urllib.error
    import urllib.request

    address = display(base)
    body = urlencode({"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}s"})
    request = urllib.request.Request(
        f"{base}/api/v1/query_range", data=body.encode(), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                 "User-Agent": "opsloop-prometheus", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise DataError(f"{address}: {what}: {_http_error(exc)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DataError(f"{address}: {what}: no answer within {timeout:g} s (timeout)") from None
        raise DataError(f"{address}: {what}: cannot connect: {_reason(reason)}") from None
    except (TimeoutError, socket.timeout):
        raise DataError(f"{address}: {what}: no answer within {timeout:g} s (timeout)") from None
    except (OSError, ValueError) as exc:  # a reset connection, a malformed URL...
        raise DataError(f"{address}: {what}: {_reason(exc)}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise DataError(f"{address}: {what}: the answer is not JSON, so this is not Prometheus's HTTP API "
                        f"(it starts {raw[:60]!r})") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise DataError(f"{address}: {what}: {_api_error(answer)}")
    data = answer.get("data") or {}
    if data.get("resultType") != "matrix":
        raise DataError(f"{address}: {what}: Prometheus answered a {data.get('resultType')!r}, not a range "
                        "vector (matrix)")
    return list(data.get("result") or [])


def _reason(reason: object) -> str:
    import ssl

    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"the server's TLS certificate is not trusted ({reason.verify_message}): name the CA that signed "
                "it in [data.prometheus] ca_file")
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _api_error(answer: Any) -> str:
    """Prometheus's own words: `errorType: error` of an API answer whose status is not success."""
    if isinstance(answer, dict) and answer.get("error"):
        return f"Prometheus error {answer.get('errorType', 'error')}: {answer['error']}"
    return f"not a Prometheus API answer: {str(answer)[:120]}"


def _http_error(exc: Any) -> str:
    """An HTTP error status; Prometheus's JSON error in the body when it sent one (400 bad_data, 422
    execution, 503 timeout)."""
    try:
        body = exc.read()
    except OSError:
        body = b""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        return f"{_api_error(answer)} (HTTP {exc.code})"
    text = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {exc.code} {exc.reason}" + (f": {text[0][:160]}" if text else "")
