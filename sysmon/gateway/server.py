"""Running the app under uvicorn inside an asyncio program (`sysmon gateway`, `sysmon up`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from fastapi import FastAPI

from sysmon.core.http_server import EmbeddedServer, bind
from sysmon.gateway.live.protocol import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class HttpServer:
    """An app on a bound socket; start() returns once it accepts connections."""

    def __init__(self, app: FastAPI, listen: str):
        self.sock = bind(listen)
        host, port = self.sock.getsockname()[:2]
        self.host = f"[{host}]" if ":" in host else host
        self.port = port
        self.server = EmbeddedServer(uvicorn.Config(
            app, lifespan="on", log_config=None, access_log=False, ws="websockets-sansio",
            ws_max_size=MAX_MESSAGE_BYTES, ws_ping_interval=20.0, ws_ping_timeout=20.0,
            timeout_graceful_shutdown=3, server_header=False,
        ))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="http")
        while not self.server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()
