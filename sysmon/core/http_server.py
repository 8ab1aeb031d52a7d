"""uvicorn inside an asyncio program that owns its signals (the gateway, the alerts service's
health endpoint, both in `sysmon up`), on a socket bound before serving."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
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


async def serve_until(server: EmbeddedServer, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve on `sock` until `stop` is set (or the server ends), then close the listener and the socket."""
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        # The listener leaves the event loop before its socket is closed: a socket closed while
        # still registered leaves a stale registration behind, which a later listener given the
        # same descriptor number inherits (it accepts nothing).
        for listener in getattr(server, "servers", []):
            listener.close()
        sock.close()
