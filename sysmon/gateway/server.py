"""Running the app under uvicorn inside an asyncio program (`sysmon gateway`, `sysmon up`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from sysmon.gateway.live.protocol import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns SIGINT/SIGTERM and says when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(listen: str) -> socket.socket:
    """Bind host:port now, so that a port in use fails at start-up and port 0 is known at once."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listener says
    # TCP outright; without it, Nagle's algorithm and delayed ACKs add 40 ms to keep-alive requests.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as e:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {e}") from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """An app on a bound socket; start() returns once it accepts connections."""

    def __init__(self, app: FastAPI, listen: str):
        self.sock = bind(listen)
        host, port = self.sock.getsockname()[:2]
        self.host = f"[{host}]" if ":" in host else host
        self.port = port
        self.server = _Server(uvicorn.Config(
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
