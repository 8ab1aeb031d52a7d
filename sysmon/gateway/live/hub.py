"""The live hub: one bus subscription per topic for the whole process, fanned out in memory.

A frame is built once per distinct subscription and event, then put on each interested client's
bounded queue; each client has its own sender task. So a slow client only ever loses its own
oldest frames, and neither the bus reader nor the other clients wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from google.protobuf.message import DecodeError

from sysmon.core import bus as busmod
from sysmon.core.backoff import Backoff, wait_or_stop
from sysmon.core.batch import samples_events
from sysmon.core.hot import HotTier
from sysmon.gateway import telemetry
from sysmon.gateway.live import protocol
from sysmon.gateway.live.protocol import SeriesMeta, Subscription
from sysmon.gateway.live.queue import FrameQueue
from sysmon.pb.v1 import events_pb2

log = logging.getLogger(__name__)

# Series descriptions kept in memory; past this the cache starts over (a fleet of 10k hosts).
MAX_META = 1_000_000
LOOKUP_EVERY_S = 10.0


class LiveClient:
    def __init__(self, queue_frames: int):
        self.queue = FrameQueue(queue_frames)
        self.subscription: Subscription | None = None

    def send(self, frame: str) -> None:
        if not self.queue.put(frame):
            telemetry.WS_DROPPED.inc()


class LiveHub:
    def __init__(self, bus: busmod.Bus | None, hot: HotTier | None, *, queue_frames: int = 256,
                 heartbeat_s: float = 15.0, max_clients: int = 5000):
        self.bus = bus
        self.hot = hot
        self.queue_frames = queue_frames
        self.heartbeat_s = heartbeat_s
        self.max_clients = max_clients
        self.clients: set[LiveClient] = set()
        self.meta: dict[int, SeriesMeta] = {}
        self._looked_up: dict[str, float] = {}

    # --- clients ---------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self.clients) >= self.max_clients

    def register(self) -> LiveClient:
        c = LiveClient(self.queue_frames)
        self.clients.add(c)
        telemetry.WS_CLIENTS.set(len(self.clients))
        return c

    def unregister(self, client: LiveClient) -> None:
        self.clients.discard(client)
        telemetry.WS_CLIENTS.set(len(self.clients))

    def close_all(self, code: int, reason: str) -> None:
        for c in list(self.clients):
            c.queue.close(code, reason)

    # --- the bus ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        readers: dict[str, Callable[[bytes], Awaitable[None] | None]] = {
            busmod.SAMPLES: self.on_samples,
            busmod.HOSTS: self.on_host,
            busmod.ALERTS: self.on_alert,
        }
        tasks = [asyncio.create_task(self._heartbeats(stop), name="ws-heartbeats")]
        if self.bus is not None:
            tasks += [asyncio.create_task(self._follow(t, h, stop), name=f"bus-{t}") for t, h in readers.items()]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, topic: str, handle: Callable[[bytes], Awaitable[None] | None],
                      stop: asyncio.Event) -> None:
        assert self.bus is not None
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                async for msg in self.bus.subscribe(topic):
                    backoff.reset()
                    telemetry.BUS_EVENTS.labels(topic).inc()
                    try:
                        r = handle(msg.payload)
                        if r is not None:
                            await r
                    except DecodeError:
                        log.warning("undecodable %s event %s skipped", topic, msg.id)
                    # The bus hands over up to 100 entries at once: let the senders run between them.
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as e:
                telemetry.BUS_ERRORS.labels(topic).inc()
                delay = backoff.next_delay()
                log.warning("bus topic %s unavailable (%s); live push resumes in %.1fs", topic, e, delay)
                if await wait_or_stop(stop, delay):
                    return
            except Exception:
                telemetry.BUS_ERRORS.labels(topic).inc()
                log.exception("live fan-out of %s failed; restarting it", topic)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, self.heartbeat_s):
            now = time.time_ns() // 1_000_000
            for c in list(self.clients):
                c.send(protocol.heartbeat_frame(now, c.queue.dropped))

    # --- events ----------------------------------------------------------------------------------

    async def on_samples(self, payload: bytes) -> None:
        for ev in samples_events(payload):
            for s in ev.series:
                self._remember(s.id, SeriesMeta(s.name, dict(s.attributes), s.unit))
            if not self.clients:
                continue  # nobody watching: no need to regroup the samples or describe series from Redis
            es = protocol.event_series(ev)
            if any(sid not in self.meta for sid in es.points):
                await self._describe(es.host)
            self.fan_out(es)

    def fan_out(self, es: protocol.EventSeries) -> None:
        frames: dict[Subscription, str | None] = {}
        for c in list(self.clients):
            sub = c.subscription
            if sub is None:
                continue
            if sub not in frames:
                frames[sub] = protocol.samples_frame(es, sub, self.meta)
            frame = frames[sub]
            if frame is not None:
                c.send(frame)

    def on_host(self, payload: bytes) -> None:
        ev = events_pb2.HostEvent.FromString(payload)
        self._broadcast(ev.host_id, protocol.host_frame(ev), lambda s: s.host_events)

    def on_alert(self, payload: bytes) -> None:
        ev = events_pb2.AlertEvent.FromString(payload)
        self._broadcast(ev.host_id, protocol.alert_frame(ev), lambda s: s.alert_events)

    def _broadcast(self, host: str, frame: str, wants: Callable[[Subscription], bool]) -> None:
        for c in list(self.clients):
            sub = c.subscription
            if sub is not None and wants(sub) and sub.wants_host(host):
                c.send(frame)

    def _remember(self, sid: int, meta: SeriesMeta) -> None:
        if len(self.meta) >= MAX_META and sid not in self.meta:
            self.meta.clear()
        self.meta[sid] = meta

    async def _describe(self, host: str) -> None:
        """Series first described before this gateway started: their descriptions are in Redis."""
        if self.hot is None:
            return
        now = time.monotonic()
        if now - self._looked_up.get(host, -LOOKUP_EVERY_S) < LOOKUP_EVERY_S:
            return
        self._looked_up[host] = now
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            described: dict[int, Any] = await self.hot.series(host)
            for sid, d in described.items():
                self._remember(sid, SeriesMeta(d["name"], dict(d["attributes"]), d.get("unit", "")))
