"""/healthz, /readyz and /metrics of the alerts service (Starlette on uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sysmon.core.http_server import EmbeddedServer, bind, serve_until

# () -> (ready, what is missing)
ReadyCheck = Callable[[], tuple[bool, list[str]]]


def create_app(ready: ReadyCheck, registry: Any = REGISTRY) -> Starlette:
    async def healthz(_: Request) -> Response:
        # Alive while the event loop answers; readiness says whether it does its job.
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        ok, missing = ready()
        return JSONResponse({"ready": ok, "waiting_for": missing}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
    ])


class HttpEndpoint:
    """run(stop) serves until stop is set. The socket is bound at construction, so a taken port is
    an OSError here rather than uvicorn's sys.exit inside a task."""

    def __init__(self, listen: str, ready: ReadyCheck, registry: Any = REGISTRY):
        self.socket = bind(listen)
        host, self.port = self.socket.getsockname()[:2]
        self.host = f"[{host}]" if ":" in host else host
        self.config = uvicorn.Config(create_app(ready, registry), log_level="warning", lifespan="off", access_log=False)
        self.server = EmbeddedServer(self.config)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def run(self, stop: asyncio.Event) -> None:
        await serve_until(self.server, self.socket, stop)
