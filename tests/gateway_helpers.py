"""Gateway test helpers: the real app under real uvicorn on a free port, a WebSocket reader, and
old samples written through the real aggregator (for the raw and rollup tiers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from sysmon.core.settings import GatewaySettings
from sysmon.gateway.app import create_app
from sysmon.gateway.server import HttpServer
from tests.helpers import RawClient, make_batch, running_collector, wait_for


@dataclass
class Gateway:
    server: HttpServer
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "ws/live"


@contextlib.asynccontextmanager
async def running_gateway(pg_dsn: str, redis_url: str, **settings: Any) -> AsyncIterator[Gateway]:
    fields: dict[str, Any] = {"postgres_url": pg_dsn, "redis_url": redis_url, "listen": "127.0.0.1:0"}
    if "token" not in settings:
        fields["insecure_no_auth"] = True
    fields.update(settings)
    server = HttpServer(create_app(GatewaySettings(**fields)), "127.0.0.1:0")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url.rstrip("/"), timeout=30) as http:
            yield Gateway(server, http)
    finally:
        await server.stop()


@dataclass
class LiveReader:
    """A /ws/live client that reads every frame into a list in the background."""

    ws: Any
    frames: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))

    def start(self) -> LiveReader:
        self.task = asyncio.create_task(self._read())
        return self

    async def subscribe(self, **sub: Any) -> None:
        await self.ws.send(json.dumps({"type": "subscribe", **sub}))
        await wait_for(lambda: any(f["type"] == "subscribed" for f in self.frames), within=10,
                       message="subscribed frame")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def close(self) -> None:
        await self.ws.close()
        if self.task:
            await self.task


@contextlib.asynccontextmanager
async def live_reader(gw: Gateway, **connect: Any) -> AsyncIterator[LiveReader]:
    async with websockets.connect(gw.ws_url, subprotocols=["sysmon.v1"], **connect) as ws:
        reader = LiveReader(ws).start()
        try:
            yield reader
        finally:
            await reader.close()


async def write_history(address: str, host_id: str, *, hours: float, every_s: int = 60,
                        values: tuple[float, ...] = (0.25, 0.75), name: str = "system.cpu.utilization",
                        session: str = "hist", until_s_ago: float = 0) -> int:
    """Samples from `hours` ago until now, `every_s` apart, through the aggregator's Push stream;
    returns once every batch is acknowledged (stored in PostgreSQL)."""
    now_ms = time.time_ns() // 1_000_000
    start = now_ms - int(hours * 3600_000)
    end = now_ms - int(until_s_ago * 1000) - 1000
    times = list(range(start - start % (every_s * 1000) + every_s * 1000, end, every_s * 1000))
    async with RawClient(address, host_id=host_id, session_id=session) as c:
        for seq, t in enumerate(times, start=1):
            c.send(make_batch(host_id, session, seq, declare=seq == 1, time_ms=t, values=values, name=name))
        await wait_for(lambda: len(c.acked) == len(times), within=60, message=f"{len(times)} batches acked")
        await c.finish()
    return len(times)


async def two_gateways_serve_every_host(address: str, pg_dsn: str, redis_url: str, hosts: list[str],
                                        **bus: Any) -> None:
    """Gateways scale out: two replicas on one bus each push every host's live samples, so a
    dashboard on either sees the whole fleet."""
    async with running_gateway(pg_dsn, redis_url, **bus) as g1, running_gateway(pg_dsn, redis_url, **bus) as g2, \
            live_reader(g1) as live1, live_reader(g2) as live2, contextlib.AsyncExitStack() as stack:
        for h in hosts:
            await stack.enter_async_context(running_collector(address, host_id=h))

        async def known() -> bool:
            return all([(await g1.http.get(f"/api/v1/hosts/{h}")).status_code == 200 for h in hosts])

        await wait_for(known, message="every host known")
        for live in (live1, live2):
            await live.subscribe(hosts=["*"], metrics=["system.uptime"])
        for live in (live1, live2):
            await wait_for(lambda live=live: {f["host"] for f in live.of("samples")} >= set(hosts), within=30,
                           message="every host's samples on each gateway's stream")
