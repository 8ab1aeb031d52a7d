"""The Redis bus, the default: each topic in a Redis Stream, capped in age: a live subscriber reads
new entries from the end (fire-and-forget fan-out), a group subscriber reads through a
consumer group, gets its own unacknowledged entries again after a restart, and acknowledges
what it has handled (the same model as a Kafka consumer group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
import redis.exceptions

from sysmon.core.bus.base import DEFAULT_RETENTION_MS, Message, OnAssign, OnRevoke

log = logging.getLogger(__name__)


def stream_key(topic: str) -> str:
    return f"bus:{topic}"


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _honour_cancellation() -> None:
    """Raise CancelledError when this task was asked to stop and the request got lost.

    On Python 3.11 redis-py writes through asyncio.wait_for, which swallows a cancellation that
    lands just as the write completes; the task still counts the request, so a subscriber loop
    checks after every round trip instead of reading on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisBus:
    # One stream per topic, read whole by every consumer: keys change nothing (and a publisher
    # sends one entry for a group of batches of many hosts, the cheapest for Redis).
    partitioned = False

    def __init__(self, redis: aioredis.Redis, *, retention_ms: int = DEFAULT_RETENTION_MS, block_ms: int = 1000):
        self.redis = redis
        self.retention_ms = retention_ms
        self.block_ms = block_ms
        self.expired = 0  # pending entries that retention trimmed before a group consumer handled them

    def _minid(self) -> str:
        # Trimming by age (stream ids start with the time in ms) bounds memory by rate x retention.
        return str(time.time_ns() // 1_000_000 - self.retention_ms)

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None) -> str:
        mid = await self.redis.xadd(stream_key(topic), {"p": payload}, minid=self._minid(), approximate=True)
        return _s(mid)

    async def publish_many(self, topic: str, payloads: Sequence[bytes], *,
                           keys: Sequence[str | None] | None = None) -> None:
        if not payloads:
            return
        minid = self._minid()
        pipe = self.redis.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(stream_key(topic), {"p": p}, minid=minid, approximate=True)
        await pipe.execute()

    async def subscribe(
        self, topic: str, *, group: str | None = None, consumer: str | None = None, batch: int = 100,
        on_assign: OnAssign | None = None, on_revoke: OnRevoke | None = None,
    ) -> AsyncIterator[Message]:
        # No partitions: a group's consumers take turns on entries, whatever their key, so a group
        # member that needs whole hosts (alerts) is the group's only member, and owns everything.
        if group is None:
            async for m in self._live(topic, batch):
                yield m
        else:
            if consumer is None:
                raise ValueError("a group subscription names its consumer")
            async for m in self._group(topic, group, consumer, batch):
                yield m

    async def _live(self, topic: str, batch: int) -> AsyncIterator[Message]:
        key = stream_key(topic)
        # Start at the current end by id (not "$" on every call, which skips entries between reads).
        try:
            last = _s((await self.redis.xinfo_stream(key))["last-generated-id"])
        except redis.exceptions.ResponseError:  # no such stream yet: everything that comes is new
            last = "0-0"
        while True:
            resp = await self.redis.xread({key: last}, count=batch, block=self.block_ms)
            _honour_cancellation()
            for mid, fields in resp[0][1] if resp else ():
                last = _s(mid)
                yield Message(topic, last, fields.get(b"p", b""))

    async def _group(self, topic: str, group: str, consumer: str, batch: int) -> AsyncIterator[Message]:
        key = stream_key(topic)
        await self._ensure_group(key, group)
        # First what this consumer was given and never acknowledged (it crashed), then new entries.
        cursor = "0"
        while True:
            try:
                resp = await self.redis.xreadgroup(
                    group, consumer, {key: cursor}, count=batch, block=None if cursor != ">" else self.block_ms
                )
            except redis.exceptions.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self._ensure_group(key, group)  # the stream was deleted under us
                continue
            _honour_cancellation()
            entries = resp[0][1] if resp else []
            if cursor != ">" and not entries:
                cursor = ">"
                continue
            for mid, fields in entries:
                if cursor != ">":
                    cursor = _s(mid)  # go on through the pending list after this entry
                if not fields:
                    # Pending, but trimmed by retention while this consumer was away: the payload is
                    # gone. Say so and acknowledge it, rather than hand the consumer an empty message.
                    log.warning("bus %s: entry %s for group %s expired before it was handled", topic, _s(mid), group)
                    self.expired += 1
                    await self.redis.xack(key, group, mid)
                    continue
                yield Message(topic, _s(mid), fields[b"p"])

    async def _ensure_group(self, key: str, group: str) -> None:
        with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(key, group, id="0", mkstream=True)

    def partition_of(self, topic: str, key: str) -> int:
        return -1

    async def partition_count(self, topic: str) -> int:
        return 1

    async def ack(self, message: Message, group: str) -> None:
        await self.redis.xack(stream_key(message.topic), group, message.id)

    async def ack_many(self, messages: Sequence[Message], group: str) -> None:
        by_topic: dict[str, list[str]] = {}
        for m in messages:
            by_topic.setdefault(m.topic, []).append(m.id)
        for topic, ids in by_topic.items():
            for i in range(0, len(ids), 500):
                await self.redis.xack(stream_key(topic), group, *ids[i:i + 500])

    async def close(self) -> None:
        """The Redis client is the caller's (it serves the hot tier too): nothing to close."""


async def connect_redis(url: str, **kwargs) -> aioredis.Redis:
    r = aioredis.from_url(url, decode_responses=False, health_check_interval=10, **kwargs)
    await asyncio.wait_for(r.ping(), timeout=10)
    return r
