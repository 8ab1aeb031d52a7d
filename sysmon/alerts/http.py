"""/healthz, /readyz and /metrics of the alerts service (Starlette on uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

# () -> (ready, what is missing)
ReadyCheck = Callable[[], tuple[bool, list[str]]]


def create_app(ready: ReadyCheck) -> Starlette:
    async def healthz(_: Request) -> Response:
        # Alive while the event loop answers; readiness says whether it does its job.
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        ok, missing = ready()
        return JSONResponse({"ready": ok, "waiting_for": missing}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
    ])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The command that runs us owns SIGINT/SIGTERM (sysmon up stops everything on one).
        yield


class HttpEndpoint:
    """run(stop) serves until stop is set. The socket is bound at construction, so a taken port is
    an OSError here rather than uvicorn's sys.exit inside a task."""

    def __init__(self, listen: str, ready: ReadyCheck):
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self.socket = socket.create_server((host, int(port)), reuse_port=False)
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        self.config = uvicorn.Config(create_app(ready), log_level="warning", lifespan="off", access_log=False)
        self.server = _Server(self.config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
            self.socket.close()
