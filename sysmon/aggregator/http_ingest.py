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
import contextlib
import logging
import math
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sysmon.aggregator import remote_write, telemetry
from sysmon.aggregator.admission import Admission, Refused, Samples
from sysmon.aggregator.ingest import now_ms
from sysmon.core.http_server import EmbeddedServer, bind
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


class IngestApp:
    def __init__(self, admission: Admission, authenticator: Authenticator):
        self.admission = admission
        self.authenticator = authenticator
        self.limits = admission.limits
        self.metadata: dict[str, int] = {}  # remote write: metric family -> type, as senders told

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/v1/write", self.remote_write, methods=["POST"])])

    async def _principal(self, request: Request) -> Principal | Response:
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except InvalidCredential as e:
            return problem(401, str(e), headers={"WWW-Authenticate": 'Bearer realm="sysmon"'})
        if not principal.allows(Scope.COLLECTOR):
            return problem(403, f"sending samples needs scope collector; this credential has "
                                f"{', '.join(sorted(principal.scopes))}")
        return principal

    async def _body(self, request: Request) -> bytes | Response:
        limit = self.limits.max_message_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return problem(413, f"body of {length} bytes exceeds the limit of {limit}", headers=CLOSE)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return problem(413, f"body exceeds the limit of {limit} bytes", headers=CLOSE)
        return bytes(body)

    async def remote_write(self, request: Request) -> Response:
        def decode(body: bytes) -> Samples:
            data = remote_write.decompress(body, request.headers.get("content-encoding"), self.limits.max_message_bytes)
            return remote_write.decode(data, self.limits, now_ms(), self.admission.series, self.metadata)

        return await self._ingest(request, "remote_write", decode)

    async def _ingest(self, request: Request, protocol: str, decode: Callable[[bytes], Samples],
                      ok: Callable[[], Response] = lambda: Response(status_code=204)) -> Response:
        response = await self._handle(request, protocol, decode, ok)
        telemetry.FOREIGN_REQUESTS.labels(protocol, str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, protocol: str, decode: Callable[[bytes], Samples],
                      ok: Callable[[], Response]) -> Response:
        # The body first, even of a request to be refused: a response before the body is read
        # leaves it in the keep-alive connection, where the sender's next request stalls behind it.
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        principal = await self._principal(request)
        if isinstance(principal, Response):
            return principal
        try:
            samples = decode(body)
        except remote_write.BadRequest as e:
            return problem(e.status, str(e))
        try:
            await self.admission.admit(samples, principal, protocol)
        except Refused as e:
            if e.status >= 500:
                log.warning("%s request not stored (%d): %s", protocol, e.status, e.message)
            return problem(e.status, e.message, retry_after_s=e.retry_after_s)
        return ok()


class IngestHttpServer:
    """Serves IngestApp on `listen` (TLS with cert and key) until stopped; bound at construction."""

    def __init__(self, listen: str, app: IngestApp, *, tls_cert: Path | None = None, tls_key: Path | None = None):
        self.socket = bind(listen)
        host, self.port = self.socket.getsockname()[:2]
        self.host = f"[{host}]" if ":" in host else host
        self.scheme = "https" if tls_cert else "http"
        kw = {}
        if tls_cert and tls_key:
            kw = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key), "ssl_cert_reqs": ssl.CERT_NONE}
        # Requests in flight wait for their commit: at most this long once stopping.
        self.config = uvicorn.Config(app.app(), log_level="warning", lifespan="off", access_log=False,
                                     timeout_graceful_shutdown=10, **kw)
        self.server = EmbeddedServer(self.config)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            # The listener leaves the event loop before its socket is closed: a socket closed while
            # still registered leaves a stale registration behind, which a later listener given the
            # same descriptor number inherits (it accepts nothing).
            for server in getattr(self.server, "servers", []):
                server.close()
            self.socket.close()
