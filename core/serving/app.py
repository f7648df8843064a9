"""The prediction server: a raw ASGI application (no framework: every microsecond is the model's).

Routes (docs/serving.md has curl examples):

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/NAME[/versions/V]          model metadata: inputs, outputs
    GET  /v2/models/NAME[/versions/V]/ready    model readiness
    POST /v2/models/NAME[/versions/V]/infer    Open Inference Protocol inference
    POST /v1/models/NAME:predict, /predict     {"instances": [{...}, ...]}
    POST /v1/feedback                          ground truth for earlier requests
    GET  /metrics                              Prometheus text

Every answer to a model request names the version that gave it
(`model_version`, header `X-Opsloop-Model-Version`) and the request id
(`X-Request-Id`: the client's header, the body's "id", or a new one).
Errors are `{"error": "..."}` with a 4xx status (5xx only for a bug), and
the server goes on serving.

With a token (`Settings.token`), `POST /v1/feedback` (or, with `token_for =
"all"`, every endpoint but the health checks) needs `Authorization: Bearer
TOKEN`; otherwise a 401 with `WWW-Authenticate: Bearer` (issue 8, item 12).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import time
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import attrs
from opsloop.serving import protocol
from opsloop.serving.metrics import CONTENT_TYPE, Metrics
from opsloop.serving.schema import RequestError

if TYPE_CHECKING:
    from opsloop.serving.model import ModelWatcher, Served
    from opsloop.serving.predlog import PredictionLog
    from opsloop.serving.settings import Settings

log = logging.getLogger("opsloop.serving")

JSON = b"application/json"
#: Rows scored on the event loop itself; larger requests (and the replay path) go to a thread.
INLINE_ROWS = 64
QUALITY_TTL = 2.0  # seconds a /metrics quality figure is reused


class Disconnected(Exception):
    """The client went away before sending its whole body."""


class Unauthorized(Exception):
    """The endpoint needs the bearer token and the request lacks it: a 401 with a challenge."""

    def __init__(self, message: str, challenge: bytes) -> None:
        super().__init__(message)
        self.message = message
        self.challenge = challenge


class ServingApp:
    """The ASGI callable; `create_app` builds it."""

    def __init__(self, settings: Settings, watcher: ModelWatcher, log_: PredictionLog | None,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.watcher = watcher
        self.log = log_
        self.metrics = metrics
        self.model = watcher.name
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._started = False
        self._closed = False
        self._quality: tuple[float, dict[int, dict[str, float]]] = (0.0, {})
        self._token = settings.token.encode() if settings.token is not None else None
        self._guard_all = self._token is not None and settings.token_for == "all"
        watcher.streams.log = log_  # series histories read back from it (opsloop.serving.history)

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the alias watcher and the log writer (the lifespan does it; idempotent)."""
        if not self._started:
            self._started = True
            self.watcher.start()
            if self.log is not None:
                self.log.start()

    def close(self) -> None:
        """Stop watching and write every queued prediction (idempotent)."""
        if not self._closed:
            self._closed = True
            self.watcher.close()
            if self.log is not None:
                self.log.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.close)  # drains the log: nothing queued is lost
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        if not self._started:
            self.start()
        route = _route_name(scope["path"])
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, body, headers = await self._route(scope, receive)
        except RequestError as exc:
            status, body = exc.status, protocol.dumps({"error": exc.message})
        except Unauthorized as exc:
            status, body, headers = 401, protocol.dumps({"error": exc.message}), [(b"www-authenticate", exc.challenge)]
        except Disconnected:
            return
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("opsloop serve: internal error on %s %s", scope.get("method"), scope.get("path"))
            status, body = 500, protocol.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"})
        if not headers or headers[0][0] != b"content-type":
            headers = [(b"content-type", JSON), *headers]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(route, status, time.perf_counter() - start)

    async def _route(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        method: str = scope["method"]
        if self._guard_all and path not in ("/v2/health/live", "/v2/health/ready"):
            self._authorize(scope)
        if path.startswith("/v2/models/"):
            parts = path[11:].split("/")
            name, action, version = parts[0], "", None
            if len(parts) >= 3 and parts[1] == "versions":
                version, parts = parts[2], [name, *parts[3:]]
            if len(parts) == 2:
                action = parts[1]
            elif len(parts) > 2:
                raise RequestError(404, f"no such endpoint: {path}")
            served = self._served(name, version)
            if action == "infer":
                _allow(method, "POST")
                return await self._infer(served, scope, receive)
            _allow(method, "GET", "HEAD")
            if action == "ready":
                return 200, protocol.dumps({"name": name, "ready": True}), self._version_header(served)
            if action == "":
                return 200, served.metadata, self._version_header(served)
            raise RequestError(404, f"no such endpoint: {path}")
        if path == "/predict" or path.startswith("/v1/models/") and path.endswith(":predict"):
            _allow(method, "POST")
            served = self._served(path[11:-8] if path != "/predict" else self.model, None)
            return await self._predict(served, scope, receive)
        if path in ("/v2/health/live", "/v2/health/ready"):
            _allow(method, "GET", "HEAD")
            return 200, protocol.dumps({"live" if path.endswith("live") else "ready": True}), []
        if path == "/metrics":
            _allow(method, "GET")
            return 200, await self._metrics(), [(b"content-type", CONTENT_TYPE)]
        if path == "/v1/feedback":
            _allow(method, "POST")
            return await self._feedback(scope, receive)
        if path in ("/v2", "/v2/"):
            _allow(method, "GET", "HEAD")
            return 200, protocol.dumps({"name": "opsloop", "version": _opsloop_version(),
                                        "extensions": ["binary_tensor_data"]}), []
        if path == "/":
            _allow(method, "GET", "HEAD")
            return 200, protocol.dumps({"server": "opsloop", **self.watcher.describe(), "docs": "docs/serving.md"}), []
        raise RequestError(404, f"no such endpoint: {path} (see GET /v2/models/{self.model} and docs/serving.md)")

    def _authorize(self, scope: dict[str, Any]) -> None:
        """Pass when the request carries the bearer token (compared in constant time); Unauthorized otherwise."""
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token or b""):
                    return
                raise Unauthorized("the bearer token is wrong (Authorization: Bearer TOKEN)",
                                   b'Bearer realm="opsloop", error="invalid_token"')
        raise Unauthorized("this endpoint needs a bearer token: send the header Authorization: Bearer TOKEN "
                           "(the server's token comes from OPSLOOP_SERVE_TOKEN or --token-env)",
                           b'Bearer realm="opsloop"')

    def _served(self, name: str, version: str | None) -> Served:
        served = self.watcher.current  # read once: this request is answered by this version, swap or not
        if name != served.name:
            raise RequestError(404, f"model {name!r} is not served here (this server serves {served.name!r})")
        if version is not None and version != served.number:
            raise RequestError(404, f"version {version!r} of {name} is not being served: "
                                    f"{self.watcher.alias} points at version {served.number}")
        return served

    @staticmethod
    def _version_header(served: Served) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", JSON), (b"x-opsloop-model-version", served.number.encode())]

    async def _body(self, scope: dict[str, Any], receive: Any) -> tuple[bytes, dict[bytes, bytes]]:
        """The whole body (decompressed), within `max_body_bytes`, and the headers the server reads."""
        limit = self.settings.max_body_bytes
        wanted: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in _READ:
                wanted[key] = value
        declared = wanted.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,} "
                                    "(--max-body-bytes)")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        body = message.get("body", b"")
        if message.get("more_body") or len(body) > limit:  # chunked bodies have no length to check up front
            chunks, size = [body], len(body)
            while size <= limit and message.get("more_body"):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
            if size > limit:
                raise RequestError(413, f"the body exceeds {limit:,} bytes (--max-body-bytes)")
            body = b"".join(chunks)
        encoding = wanted.get(b"content-encoding")
        if encoding is not None and encoding not in (b"identity", b""):
            body = _decompress(body, encoding, limit)
        return body, wanted

    def _request_id(self, given: str | None, headers: dict[bytes, bytes]) -> str:
        """The client's id (the body's "id", else X-Request-Id), or a new one: PREFIX-N, PREFIX random per start."""
        where = '"id"'
        if not given:
            header = headers.get(b"x-request-id")
            if not header:
                return f"{self._prefix}{next(self._ids)}"
            given, where = protocol.request_id(header.decode("latin-1"), "X-Request-Id") or "", "X-Request-Id"
        if _SERVER_ID.fullmatch(given):
            # Feedback by request id labels every row logged under it: a client that reused an id the server
            # made up (every answer shows them) would have another client's label join its rows (issue 8, item 8).
            raise RequestError(422, f"{where} {given!r} has the form of the request ids this server makes up "
                                    "(12 hex digits, '-', a number): choose another, or send none")
        if _BATCH_ID.fullmatch(given):  # the same for the ids batch runs log their rows under
            raise RequestError(422, f"{where} {given!r} has the form of the request ids batch runs log under "
                                    "('batch-' and 16 hex digits): choose another, or send none")
        return given

    async def _check(self, served: Served, batch: Any) -> None:
        """Count the schema findings of a request's rows on /metrics (issue 9, item 5); never refuses it.

        Small requests are checked on the event loop (a few numpy operations), larger ones on a thread, as they
        are scored; the counters are only written here, on the loop.
        """
        if not served.checks:
            return
        found = served.findings(batch) if batch.rows <= INLINE_ROWS else await asyncio.to_thread(served.findings, batch)
        if found:
            self.metrics.found(served, found)

    async def _score(self, served: Served, batch: Any) -> tuple[Any, Any]:
        scorer = served.scorer
        # A version that keeps series history scores on a thread when a series must be read back from the log
        # or another request holds the history (opsloop.serving.history).
        if scorer.kind == "fast" and batch.rows <= INLINE_ROWS and (not hasattr(scorer, "inline")
                                                                    or scorer.inline(batch)):
            return scorer.score(batch)
        return await asyncio.to_thread(scorer.score, batch)

    def _answer_headers(self, served: Served, request_id: str) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", JSON), (b"x-opsloop-model-version", served.number.encode()),
                (b"x-request-id", request_id.encode())]

    async def _predict(self, served: Served, scope: dict[str, Any],
                       receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        body, headers = await self._body(scope, receive)
        at = time.time()
        batch, given = protocol.parse_instances(body, served.schema)
        rid = self._request_id(given, headers)
        await self._check(served, batch)
        predictions, scores = await self._score(served, batch)
        pred_list = predictions.tolist()
        score_list = scores.tolist() if scores is not None else None
        if self.log is not None:  # under sustained load, wait for room in the log rather than lose rows (issue 9)
            await self.log.room(batch.rows)
        self._record(served, rid, at, batch, pred_list, score_list, body)
        out = protocol.instances_response(pred_list, score_list, model=served.name, version=served.number,
                                          request=rid)
        return 200, out, self._answer_headers(served, rid)

    async def _infer(self, served: Served, scope: dict[str, Any],
                     receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        body, headers = await self._body(scope, receive)
        at = time.time()
        request = protocol.parse_infer(body, headers.get(b"inference-header-content-length"), served.schema)
        rid = self._request_id(request.id, headers)
        await self._check(served, request.batch)
        predictions, scores = await self._score(served, request.batch)
        outputs = {"prediction": (served.outputs["prediction"], predictions)}
        if scores is not None and "score" in served.outputs:
            outputs["score"] = ("FP64", scores)
        out, header_length = protocol.infer_response(outputs, request, model=served.name, version=served.number,
                                                     request_id=rid)
        if self.log is not None:
            await self.log.room(request.batch.rows)
        self._record(served, rid, at, request.batch, predictions, scores)
        answer = self._answer_headers(served, rid)
        if header_length is not None:
            answer[0] = (b"content-type", b"application/octet-stream")
            answer.append((b"inference-header-content-length", str(header_length).encode()))
        return 200, out, answer

    def _record(self, served: Served, rid: str, at: float, batch: Any, predictions: Any, scores: Any,
                body: bytes | None = None) -> None:
        self.metrics.rows[served.name, served.version.version] += batch.rows
        if self.log is not None:
            self.log.predictions(rid, at, served.name, served.version.version, served.schema,
                                 batch.records if batch.records is not None else batch, predictions, scores,
                                 (served.series, served.time), body)

    async def _feedback(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        from opsloop.serving.feedback import parse_feedback

        if self._token is not None and not self._guard_all:
            self._authorize(scope)
        if self.log is None:
            raise RequestError(404, "this server does not log predictions (--no-log), so it takes no feedback")
        body, _ = await self._body(scope, receive)
        obj = protocol.loads(body)
        items = obj.get("feedback") if type(obj) is dict and "feedback" in obj else obj
        count, cap = len(items) if type(items) is list else 1, self.settings.max_feedback
        if count > cap:  # 100,000 labels in one request were taken (issue 8, item 12)
            raise RequestError(413, f"{count:,} feedback entries in one request; this server takes at most {cap:,} "
                                    "(--max-feedback): send them in several requests")
        entries = parse_feedback(obj, model=self.model, source="http")
        self.log.add(entries)
        return 202, protocol.dumps({"accepted": len(entries)}), []

    async def _metrics(self) -> bytes:
        quality = None
        if self.log is not None:
            stamp, cached = self._quality
            if time.monotonic() - stamp > QUALITY_TTL:
                cached = await asyncio.to_thread(self.log.quality, self.model, self.settings.live_window)
                self._quality = (time.monotonic(), cached)
            quality = cached
        return self.metrics.render(alias=self.watcher.alias, log=self.log, quality=quality,
                                   report=self.settings.monitor_report,
                                   history=getattr(self.watcher.current.scorer, "history", None))


#: The form of the request ids the server makes up (`ServingApp._prefix` and a counter), this run's or another's.
_SERVER_ID = re.compile(r"[0-9a-f]{12}-[0-9]+")
_BATCH_ID = re.compile(r"batch-[0-9a-f]{16}")
_READ = frozenset((b"content-length", b"content-encoding", b"inference-header-content-length", b"x-request-id"))


def _route_name(path: str) -> str:
    """The `route` label of a path: a handful of values, whatever clients send."""
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return "infer"
        return "health" if path.endswith("/ready") else "metadata"
    if path == "/predict" or path.startswith("/v1/models/"):
        return "predict"
    return {"/metrics": "metrics", "/v1/feedback": "feedback", "/v2/health/live": "health",
            "/v2/health/ready": "health", "/v2": "metadata", "/v2/": "metadata", "/": "metadata"}.get(path, "other")


def _opsloop_version() -> str:
    import importlib.metadata as im

    try:
        return im.version("opsloop")
    except im.PackageNotFoundError:
        return "unknown"


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise RequestError(405, f"method {method} is not allowed here (use {' or '.join(allowed)})")


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """gzip or deflate bodies, never inflated beyond the limit."""
    wbits = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(encoding.lower().strip())
    if wbits is None:
        raise RequestError(415, f"Content-Encoding {encoding.decode('latin-1')!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"the body is not valid {encoding.decode('latin-1')}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RequestError(413, f"the decompressed body exceeds {limit:,} bytes (--max-body-bytes)")
    return out


def create_app(settings: Settings | None = None, **fields: Any) -> ServingApp:
    """A server for `settings` (fields override them): the store opened and the version loaded.

    Example: `create_app(model="asd-anomaly", workdir=Path("proj"), port=0)`,
    then `opsloop.serving.server.run(app)` or `ServerThread(app).start()`.
    Raises StoreError when the alias is not set, BundleError when the bundle
    fails verification, ConfigError for a bad config.
    """
    from pathlib import Path

    from opsloop import config as config_mod
    from opsloop.serving.model import ModelWatcher
    from opsloop.sensitive import Sensitive
    from opsloop.serving.predlog import PredictionLog
    from opsloop.serving.settings import Settings
    from opsloop.session import Session

    settings = attrs.evolve(settings or Settings(), **fields)
    cfg = config_mod.read(settings.config, overrides=settings.overrides, workdir=settings.workdir)
    settings = settings.resolve(Path(settings.workdir or cfg.workdir).absolute())
    session = Session.open(cfg, sections=("store",))
    store = session.open_store()
    metrics = Metrics()
    try:
        watcher = ModelWatcher(store, session.plugins, settings.model or cfg.project.name, settings, metrics)
        prediction_log = (PredictionLog(settings.log_path, max_pending=settings.log_max_pending,  # type: ignore[arg-type]
                                        retention=settings.log_retention,
                                        sensitive=Sensitive.from_config(cfg, settings.workdir))
                          if settings.log_predictions else None)
    except BaseException:
        store.close()
        raise
    return ServingApp(settings, watcher, prediction_log, metrics)
