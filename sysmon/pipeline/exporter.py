"""`sysmon export sqs`: the samples topic, through a consumer group of its own, to an SQS queue.

    bus SAMPLES (group) ─► describe every series (bus, else hot tier) ─► pack (pack.py) ─►
    SendMessageBatch (retried with backoff until accepted) ─► acknowledge the bus entries

At-least-once: an entry is acknowledged only after every message holding its batches was accepted,
so a restart (or a crash) sends again what was in flight, and the consumer group hands the same
consumer its unacknowledged entries first; the handler stores a batch once however often it comes.
Throttling, 5xx and an endpoint that went away are all waited out with backoff; the bus is not read
further meanwhile (its retention bounds how long the queue may be away without loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.message import DecodeError

from sysmon.core import bus as busmod
from sysmon.core.backoff import Backoff, wait_or_stop
from sysmon.core.batch import samples_events
from sysmon.core.hot import HotTier
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import pack, telemetry, wire
from sysmon.pipeline.settings import SqsExporterSettings

log = logging.getLogger(__name__)

REDIS_ERRORS = (OSError, TimeoutError, redis.exceptions.RedisError)
READ_AHEAD = 2000  # bus entries queued ahead of packing
MAX_ENTRIES_PER_FLUSH = 500
# A flush also ends at this many payload bytes, so that one never holds the event loop for long.
MAX_FLUSH_BYTES = 2 * 1024 * 1024
LAG_EVERY_S = 2.0
# Series descriptions learned but not seen again for this long are forgotten (memory stays bounded).
DESCRIBE_TTL_S = 3600.0


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def sqs_client(settings: SqsExporterSettings) -> Any:
    """A boto3 SQS client that tries once: retries are this exporter's, with waits a stop interrupts."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20,
                 max_pool_connections=4, tcp_keepalive=True)
    return boto3.client("sqs", region_name=settings.region_name(), endpoint_url=settings.endpoint_url, config=cfg)


def failure_reason(e: BaseException) -> str:
    """A short label for a failed call: throttled, server (5xx), endpoint (unreachable), refused."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if "Throttl" in code or code in ("RequestThrottled", "KmsThrottled", "OverLimit"):
            return "throttled"
        return "server" if status >= 500 else "refused"
    if isinstance(e, ConnectionError | HTTPClientError | OSError):
        return "endpoint"
    return "other"


class Describer:
    """Every series a batch refers to, described in the event: a message must stand alone."""

    def __init__(self, lookup: Callable[[str], Any]):
        self._lookup = lookup
        self.known: dict[int, tuple[events_pb2.SeriesInfo, float]] = {}

    async def complete(self, ev: events_pb2.SamplesEvent, now: float) -> events_pb2.SamplesEvent:
        for s in ev.series:
            self.known[s.id] = (s, now)
        ids = {i for f in ev.frames for i in f.series_ids}
        missing = ids - self.known.keys()
        if missing:
            for sid, d in (await self._lookup(ev.host_id)).items():
                if sid not in self.known:
                    self.known[sid] = (events_pb2.SeriesInfo(id=sid, name=d["name"], attributes=d["attributes"],
                                                             unit=d["unit"], kind=d["kind"]), now)
            missing = ids - self.known.keys()
        out = events_pb2.SamplesEvent(host_id=ev.host_id, session_id=ev.session_id, seq=ev.seq,
                                      stored_unix_ms=ev.stored_unix_ms)
        for i in sorted(ids - missing):
            info, _ = self.known[i]
            self.known[i] = (info, now)
            out.series.append(info)
        if not missing:
            out.frames.extend(ev.frames)
            return out
        dropped = 0
        for f in ev.frames:
            keep = [(i, v) for i, v in zip(f.series_ids, f.values, strict=True) if i not in missing]
            dropped += len(f.values) - len(keep)
            if keep:
                out.frames.add(time_unix_ms=f.time_unix_ms, series_ids=[i for i, _ in keep],
                               values=[v for _, v in keep])
        telemetry.UNRESOLVED.inc(dropped)
        log.warning("%s seq %d: %d samples of %d series left out: no description on the bus or in the hot tier",
                    ev.host_id, ev.seq, dropped, len(missing))
        return out

    def forget(self, now: float) -> None:
        for sid in [k for k, (_, seen) in self.known.items() if now - seen > DESCRIBE_TTL_S]:
            del self.known[sid]


class SqsExporter:
    def __init__(self, settings: SqsExporterSettings, *, redis_url: str, client: Any = None):
        self.settings = settings
        self.redis_url = redis_url
        self.client = client if client is not None else sqs_client(settings)
        self.packer = pack.Packer(message_bytes=settings.message_bytes)
        self._queue: asyncio.Queue[busmod.Message] = asyncio.Queue(READ_AHEAD)
        self.sent_messages = 0
        self.sent_samples = 0
        self.calls = 0
        self.acked = 0
        self.failures = 0
        self.connected = asyncio.Event()
        # Entries queued or being sent: a reader that subscribes again (after a Redis error) is handed
        # its pending entries again, and these must not be sent twice.
        self._inflight: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        redis = aioredis.from_url(self.redis_url, decode_responses=False, health_check_interval=10)
        try:
            bus = busmod.RedisBus(redis, block_ms=200)
            describer = Describer(HotTier(redis).series)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._read(bus, stop)), tg.create_task(self._lag(redis, stop))]
                await self._forward(bus, describer, stop)
                for t in tasks:
                    t.cancel()
        finally:
            await redis.aclose()

    async def _read(self, bus: busmod.RedisBus, stop: asyncio.Event) -> None:
        s = self.settings
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                async for m in bus.subscribe(busmod.SAMPLES, group=s.consumer_group, consumer=s.consumer,
                                             batch=MAX_ENTRIES_PER_FLUSH):
                    self.connected.set()
                    backoff.reset()
                    if m.id in self._inflight:
                        continue
                    self._inflight.add(m.id)
                    await self._queue.put(m)
            except REDIS_ERRORS as e:
                delay = backoff.next_delay()
                log.warning("bus unavailable (%s); reading again in %.1fs", e, delay)
                await wait_or_stop(stop, delay)

    async def _lag(self, redis: aioredis.Redis, stop: asyncio.Event) -> None:
        key = busmod.stream_key(busmod.SAMPLES)
        while not stop.is_set():
            with contextlib.suppress(*REDIS_ERRORS):
                groups = {_text(g["name"]): g for g in await redis.xinfo_groups(key)}
                g = groups.get(self.settings.consumer_group)
                if g is not None:
                    last = _text(g["last-delivered-id"])
                    if g.get("lag") is not None:  # Redis 7
                        undelivered = int(g["lag"])
                    else:
                        undelivered = len(await redis.xrange(key, f"({last}", "+", count=10_000))
                    telemetry.LAG.set(int(g["pending"]) + undelivered)
                    newest = _text((await redis.xinfo_stream(key))["last-generated-id"])
                    telemetry.LAG_SECONDS.set(max(0, int(newest.split("-")[0]) - int(last.split("-")[0])) / 1000)
            await wait_or_stop(stop, LAG_EVERY_S)

    async def _take(self, stop: asyncio.Event) -> list[busmod.Message]:
        """Entries for one flush: at least one, then whatever comes within `linger` up to a full flush."""
        msgs: list[busmod.Message] = []
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not getter.done():
            getter.cancel()
            return []
        msgs.append(getter.result())
        size = len(msgs[0].payload)
        deadline = time.monotonic() + self.settings.linger.total_seconds()

        def full() -> bool:
            return len(msgs) >= MAX_ENTRIES_PER_FLUSH or size >= MAX_FLUSH_BYTES

        while not full():
            while not self._queue.empty() and not full():
                msgs.append(self._queue.get_nowait())
                size += len(msgs[-1].payload)
            left = deadline - time.monotonic()
            if left <= 0 or full():
                break
            try:
                msgs.append(await asyncio.wait_for(self._queue.get(), left))
                size += len(msgs[-1].payload)
            except TimeoutError:
                break
        return msgs

    async def _forward(self, bus: busmod.RedisBus, describer: Describer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            entries = await self._take(stop)
            if not entries:
                continue
            now = time.monotonic()
            events: list[events_pb2.SamplesEvent] = []
            for m in entries:
                try:
                    evs = samples_events(m.payload)
                except DecodeError:
                    log.warning("bus entry %s is not a SamplesEvents: skipped", m.id)
                    continue
                for ev in evs:
                    if len(events) % 200 == 199:
                        await asyncio.sleep(0)  # the reader and the lag gauge get their turn
                    while True:
                        try:
                            events.append(await describer.complete(ev, now))
                            break
                        except REDIS_ERRORS as e:
                            log.warning("hot tier unavailable for series descriptions (%s)", e)
                            if await wait_or_stop(stop, 1.0):
                                return
            describer.forget(now)
            # A host's batches side by side: a message describes each series once, so a host's frames
            # together in one message share its descriptions (most of a message's bytes otherwise).
            events.sort(key=lambda ev: (ev.host_id, ev.session_id, ev.seq))
            # Packing is pure CPU (protobuf, deflate, base64): off the event loop, which keeps the bus read.
            messages = await asyncio.to_thread(self.packer.pack, events)
            for call in pack.calls(messages):
                if not await self._send(call, stop):
                    return  # stopping: the entries stay unacknowledged and are sent again after a restart
            await self._ack(bus, entries, stop)

    async def _send(self, call: Sequence[wire.Encoded], stop: asyncio.Event) -> bool:
        """Send until every message of the call is accepted; False when stopped first."""
        pending = {str(i): m for i, m in enumerate(call)}
        backoff = Backoff(initial=0.2, maximum=self.settings.retry_max.total_seconds())
        while pending:
            entries = [{"Id": k, "MessageBody": m.body, "MessageAttributes": m.attributes} for k, m in pending.items()]
            t0 = time.perf_counter()
            try:
                resp = await asyncio.to_thread(self.client.send_message_batch, QueueUrl=self.settings.queue_url,
                                               Entries=entries)
            except Exception as e:  # botocore raises many kinds; every one is waited out and tried again
                reason = failure_reason(e)
                telemetry.CALLS.labels("error").inc()
                telemetry.FAILED.labels(reason).inc(len(pending))
                self.failures += 1
                delay = backoff.next_delay()
                (log.warning if reason != "refused" else log.error)(
                    "SendMessageBatch of %d messages failed (%s: %s); again in %.1fs", len(pending), reason, e, delay)
                if await wait_or_stop(stop, delay):
                    return False
                continue
            telemetry.CALL_SECONDS.observe(time.perf_counter() - t0)
            telemetry.CALLS.labels("ok").inc()
            telemetry.MESSAGES_PER_CALL.observe(len(entries))
            self.calls += 1
            for ok in resp.get("Successful", []):
                m = pending.pop(ok["Id"])
                n = m.samples
                telemetry.SENT_MESSAGES.inc()
                telemetry.SENT_SAMPLES.inc(n)
                telemetry.SENT_BYTES.inc(m.size)
                self.sent_messages += 1
                self.sent_samples += n
            failed = resp.get("Failed", [])
            if failed:
                self.failures += 1
                for f in failed:
                    reason = "refused" if f.get("SenderFault") else "server"
                    telemetry.FAILED.labels(reason).inc()
                delay = backoff.next_delay()
                log.warning("%d of %d messages not accepted (%s); again in %.1fs", len(failed), len(entries),
                            "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed[:3]), delay)
                if await wait_or_stop(stop, delay):
                    return False
            else:
                backoff.reset()
        return True

    async def _ack(self, bus: busmod.RedisBus, entries: list[busmod.Message], stop: asyncio.Event) -> None:
        """One XACK per thousand entries (a round trip per entry cost more than sending them)."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        key = busmod.stream_key(busmod.SAMPLES)
        while True:
            try:
                for i in range(0, len(entries), 1000):
                    await bus.redis.xack(key, self.settings.consumer_group, *(m.id for m in entries[i:i + 1000]))
                self.acked += len(entries)
                self._inflight.difference_update(m.id for m in entries)
                telemetry.ENTRIES.inc(len(entries))
                return
            except REDIS_ERRORS as e:
                # Unacknowledged entries would be sent again after a restart: harmless, but try to ack.
                delay = backoff.next_delay()
                log.warning("acknowledging %d bus entries failed (%s); again in %.1fs", len(entries), e, delay)
                if await wait_or_stop(stop, delay):
                    return
