"""The aggregator's HTTP listener for senders that are not sysmon collectors: Prometheus remote
write (POST /api/v1/write) and OTLP/HTTP (POST /v1/metrics).

Here rather than on the gateway: a 2xx must mean committed, and the commit (group commit, the
acknowledgement after it, the per-host limits) is the aggregator's; the gateway would have to
forward every request to it and wait for an acknowledgement anyway, and the gateway may not import
the aggregator. Statuses are what remote-write senders act on: 2xx stored; 400 (and 401, 403, 413,
415) not retried; 429 and 503 with Retry-After, retried. Error bodies are problem+json
(RFC 9457), whose `detail` Prometheus prints in its log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc
import uvicorn
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sysmon.aggregator import otlp, remote_write, telemetry
from sysmon.aggregator.admission import Admission, BadRequest, Refused, Samples
from sysmon.aggregator.ingest import now_ms
from sysmon.core.http_server import EmbeddedServer, bind, serve_until
from sysmon.core.identity import Authenticator, InvalidCredential, Principal, Scope

log = logging.getLogger(__name__)

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Content Too Large",
          415: "Unsupported Media Type", 429: "Too Many Requests", 503: "Service Unavailable"}
# A body left unread cannot stay in a keep-alive connection.
CLOSE = {"Connection": "close"}


def problem(status: int, detail: str, *, retry_after_s: float = 0.0, headers: dict[str, str] | None = None,
            ) -> Response:
    h = dict(headers or {})
    if retry_after_s:
        h["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return JSONResponse({"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status,
                         "detail": detail}, status_code=status, headers=h, media_type="application/problem+json")


# An error answered in a protocol's own body: (status, message, Retry-After seconds) -> Response.
ErrorBody = Callable[[int, str, float], Response]


def _problem_body(status: int, message: str, retry_after_s: float) -> Response:
    return problem(status, message, retry_after_s=retry_after_s)


def _status_body(status: int, message: str, retry_after_s: float) -> Response:
    """OTLP/HTTP: every 4xx and 5xx carries a google.rpc.Status."""
    h = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else {}
    body = status_pb2.Status(code=otlp.GRPC_CODES.get(status, grpc.StatusCode.UNKNOWN).value[0], message=message)
    return Response(body.SerializeToString(), status_code=status, headers=h, media_type=otlp.PROTOBUF)


class IngestApp:
    def __init__(self, admission: Admission, authenticator: Authenticator, otlp_decoder: otlp.Decoder | None = None):
        self.admission = admission
        self.authenticator = authenticator
        self.limits = admission.limits
        self.metadata: dict[str, int] = {}  # remote write: metric family -> type, as senders told
        self.otlp = otlp_decoder or otlp.Decoder(admission.series)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/v1/write", self.remote_write, methods=["POST"]),
                                 Route("/v1/metrics", self.otlp_metrics, methods=["POST"])])

    async def _principal(self, request: Request, error: ErrorBody) -> Principal | Response:
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except InvalidCredential as e:
            response = error(401, str(e), 0.0)
            response.headers["WWW-Authenticate"] = 'Bearer realm="sysmon"'
            return response
        if not principal.allows(Scope.COLLECTOR):
            return error(403, f"sending samples needs scope collector; this credential has "
                              f"{', '.join(sorted(principal.scopes))}", 0.0)
        return principal

    async def _body(self, request: Request, error: ErrorBody) -> bytes | Response:
        limit = self.limits.max_message_bytes
        length = request.headers.get("content-length")
        too_large = None
        if length is not None and length.isdigit() and int(length) > limit:
            too_large = f"body of {length} bytes exceeds the limit of {limit}"
        else:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    too_large = f"body exceeds the limit of {limit} bytes"
                    break
        if too_large is not None:
            response = error(413, too_large, 0.0)
            response.headers.update(CLOSE)
            return response
        return bytes(body)

    async def remote_write(self, request: Request) -> Response:
        def decode(body: bytes) -> Samples:
            data = remote_write.decompress(body, request.headers.get("content-encoding"), self.limits.max_message_bytes)
            return remote_write.decode(data, self.limits, now_ms(), self.admission.series, self.metadata)

        def ok(samples: Samples) -> Response:
            # Prometheus does not send a 400 again: what was valid is stored, the rest is told.
            return problem(400, samples.summary()) if samples.refused else Response(status_code=204)

        return await self._ingest(request, "remote_write", decode, ok, _problem_body)

    async def otlp_metrics(self, request: Request) -> Response:
        def decode(body: bytes) -> Samples:
            data = otlp.http_body(body, request.headers.get("content-type"), request.headers.get("content-encoding"),
                                  self.limits.max_message_bytes)
            return self.otlp.decode(otlp.request(data), self.limits, now_ms())

        def ok(samples: Samples) -> Response:
            return Response(otlp.response(samples).SerializeToString(), media_type=otlp.PROTOBUF)

        return await self._ingest(request, "otlp", decode, ok, _status_body)

    async def _ingest(self, request: Request, protocol: str, decode: Callable[[bytes], Samples],
                      ok: Callable[[Samples], Response], error: ErrorBody) -> Response:
        response = await self._handle(request, protocol, decode, ok, error)
        telemetry.FOREIGN_REQUESTS.labels(protocol, str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, protocol: str, decode: Callable[[bytes], Samples],
                      ok: Callable[[Samples], Response], error: ErrorBody) -> Response:
        # The body first, even of a request to be refused: a response before the body is read
        # leaves it in the keep-alive connection, where the sender's next request stalls behind it.
        body = await self._body(request, error)
        if isinstance(body, Response):
            return body
        principal = await self._principal(request, error)
        if isinstance(principal, Response):
            return principal
        try:
            samples = decode(body)
        except BadRequest as e:
            return error(e.status, str(e), 0.0)
        try:
            await self.admission.admit(samples, principal, protocol)
        except Refused as e:
            if e.status >= 500:
                log.warning("%s request not stored (%d): %s", protocol, e.status, e.message)
            return error(e.status, e.message, e.retry_after_s)
        return ok(samples)


class IngestHttpServer:
    """Serves IngestApp on `listen` (TLS with cert and key) until stopped; bound at construction."""

    def __init__(self, listen: str, app: IngestApp, *, tls_cert: Path | None = None, tls_key: Path | None = None,
                 tls_client_ca: Path | None = None):
        self.socket = bind(listen)
        host, self.port = self.socket.getsockname()[:2]
        self.host = f"[{host}]" if ":" in host else host
        self.scheme = "https" if tls_cert else "http"
        kw: dict[str, object] = {}
        if tls_cert and tls_key:
            # As the gRPC port: with a client CA, mutual TLS (and the bearer token on top).
            kw = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key),
                  "ssl_cert_reqs": ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE}
            if tls_client_ca:
                kw["ssl_ca_certs"] = str(tls_client_ca)
        # Requests in flight wait for their commit: at most this long once stopping.
        self.config = uvicorn.Config(app.app(), log_level="warning", lifespan="off", access_log=False,
                                     timeout_graceful_shutdown=10, **kw)
        self.server = EmbeddedServer(self.config)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def run(self, stop: asyncio.Event) -> None:
        await serve_until(self.server, self.socket, stop)
