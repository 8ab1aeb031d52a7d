"""The Redis bus, the default: each topic in a Redis Stream, capped in age: a live subscriber reads
new entries from the end (fire-and-forget fan-out), a group subscriber reads through a
consumer group, gets its own unacknowledged entries again after a restart, and acknowledges
what it has handled (the same model as a Kafka consumer group).

With `shards` above 1 the samples topic is that many streams, split by host as Kafka partitions
are (the bus is then `partitioned`, and the aggregator writes it as it writes Kafka); a group
subscriber that takes rebalance callbacks (the alerts replicas) reads only the shards whose
leases it holds (leases.py), the others every shard. Why streams per shard rather than one
stream read by every replica through a group per shard: each replica then reads and decodes
only its share (with one stream, N replicas decode the whole fleet N times, and evaluation
input is what replicas are for), at the price of one XADD per shard a live group touches on
the aggregator's pipelined publish and one XREAD over P keys for the gateway's live reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

import redis.asyncio as aioredis
import redis.exceptions

from sysmon.core.bus.base import DEFAULT_RETENTION_MS, SAMPLES, Message, OnAssign, OnRevoke, partition_for
from sysmon.core.bus.leases import LEASEHOLDER, Leases

log = logging.getLogger(__name__)


def stream_key(topic: str) -> str:
    return f"bus:{topic}"


def shard_key(topic: str, shard: int) -> str:
    return f"bus:{topic}:{shard}"


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
    def __init__(self, redis: aioredis.Redis, *, retention_ms: int = DEFAULT_RETENTION_MS, block_ms: int = 1000,
                 shards: int = 1, lease_ms: int = 10_000, sharded: Collection[str] = (SAMPLES,)):
        self.redis = redis
        self.retention_ms = retention_ms
        self.block_ms = block_ms
        # One stream per topic (shards=1), read whole by every consumer: keys change nothing (and a
        # publisher sends one entry for a group of batches of many hosts, the cheapest for Redis).
        # Above 1, samples are split by host over that many streams, as Kafka partitions are.
        self.shards = shards
        self.partitioned = shards > 1
        self.sharded = frozenset(sharded)  # the topics split so; the others, one stream each
        self.lease_ms = lease_ms
        self.expired = 0  # pending entries that retention trimmed before a group consumer handled them
        self.leases: dict[tuple[str, str], Leases] = {}  # (group, topic) -> this process's member's leases

    def _sharded(self, topic: str) -> bool:
        return self.partitioned and topic in self.sharded

    def _key(self, topic: str, partition: int) -> str:
        return shard_key(topic, partition) if self._sharded(topic) else stream_key(topic)

    def _keys(self, topic: str) -> list[str]:
        return [shard_key(topic, p) for p in range(self.shards)] if self._sharded(topic) else [stream_key(topic)]

    def _minid(self) -> str:
        # Trimming by age (stream ids start with the time in ms) bounds memory by rate x retention.
        return str(time.time_ns() // 1_000_000 - self.retention_ms)

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None) -> str:
        stream = self._key(topic, self.partition_of(topic, key) if key is not None else 0)
        mid = await self.redis.xadd(stream, {"p": payload}, minid=self._minid(), approximate=True)
        return _s(mid)

    async def publish_many(self, topic: str, payloads: Sequence[bytes], *,
                           keys: Sequence[str | None] | None = None) -> None:
        if not payloads:
            return
        if keys is not None and len(keys) != len(payloads):
            raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
        minid = self._minid()
        pipe = self.redis.pipeline(transaction=False)
        for p, k in zip(payloads, keys or [None] * len(payloads), strict=True):
            stream = self._key(topic, self.partition_of(topic, k) if k is not None else 0)
            pipe.xadd(stream, {"p": p}, minid=minid, approximate=True)
        await pipe.execute()

    async def subscribe(
        self, topic: str, *, group: str | None = None, consumer: str | None = None, batch: int = 100,
        on_assign: OnAssign | None = None, on_revoke: OnRevoke | None = None,
    ) -> AsyncIterator[Message]:
        # Unsharded: a group's consumers take turns on entries, whatever their key, so a group member
        # that needs whole hosts (alerts) is the group's only member, and owns everything. Sharded,
        # a member that takes rebalance callbacks shares the shards with the others by lease.
        if group is None:
            async for m in self._live(topic, batch):
                yield m
            return
        if consumer is None:
            raise ValueError("a group subscription names its consumer")
        if self._sharded(topic) and on_assign is not None:
            async for m in self._leased(topic, group, consumer, batch, on_assign, on_revoke):
                yield m
        else:
            async for m in self._group(topic, group, consumer, batch, lambda: range(len(self._keys(topic)))):
                if m is not _NOTHING:
                    yield m

    async def _live(self, topic: str, batch: int) -> AsyncIterator[Message]:
        keys = self._keys(topic)
        last: dict[str, str] = {}
        for key in keys:
            # Start at the current end by id (not "$" on every call, which skips entries between reads).
            try:
                last[key] = _s((await self.redis.xinfo_stream(key))["last-generated-id"])
            except redis.exceptions.ResponseError:  # no such stream yet: everything that comes is new
                last[key] = "0-0"
        part = {key: (p if self._sharded(topic) else -1) for p, key in enumerate(keys)}
        while True:
            resp = await self.redis.xread(dict(last), count=batch, block=self.block_ms)
            _honour_cancellation()
            for key, entries in resp or ():
                k = _s(key)
                for mid, fields in entries:
                    last[k] = _s(mid)
                    yield Message(topic, last[k], fields.get(b"p", b""), part[k])

    async def _group(self, topic: str, group: str, consumer: str, batch: int,
                     shards: Callable[[], Iterable[int]], cursors: dict[int, str] | None = None,
                     ) -> AsyncIterator[Message]:
        """Read the streams of `shards()` (asked again before every read) through `group`: first
        what this consumer was given and never acknowledged (it crashed, or the shard's last owner
        did), then new entries."""
        sharded = self._sharded(topic)
        cursors = {} if cursors is None else cursors
        ensured: set[int] = set()
        while True:
            now = list(shards())
            for p in now:
                if p not in ensured:
                    await self._ensure_group(self._key(topic, p), group)
                    ensured.add(p)
                cursors.setdefault(p, "0")
            if not now:
                await asyncio.sleep(self.block_ms / 1000)
                yield _NOTHING
                continue
            pending = [p for p in now if cursors[p] != ">"]
            reading = pending or now
            streams = {self._key(topic, p): cursors[p] for p in reading}
            try:
                resp = await self.redis.xreadgroup(group, consumer, streams, count=batch,
                                                   block=None if pending else self.block_ms)
            except redis.exceptions.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                ensured.clear()  # a stream was deleted under us
                continue
            _honour_cancellation()
            got = {_s(k): entries for k, entries in resp or ()}
            for p in reading:
                key = self._key(topic, p)
                entries = got.get(key, [])
                if cursors[p] != ">" and not entries:
                    cursors[p] = ">"
                    continue
                for mid, fields in entries:
                    if p not in cursors:
                        break  # the shard was given up while its entries were being handed out
                    if cursors[p] != ">":
                        cursors[p] = _s(mid)  # go on through the pending list after this entry
                    if not fields:
                        # Pending, but trimmed by retention while this consumer was away: the payload is
                        # gone. Say so and acknowledge it, rather than hand the consumer an empty message.
                        log.warning("bus %s: entry %s for group %s expired before it was handled", topic, _s(mid),
                                    group)
                        self.expired += 1
                        await self.redis.xack(key, group, mid)
                        continue
                    yield Message(topic, _s(mid), fields[b"p"], p if sharded else -1)
            if not got:
                yield _NOTHING  # a quiet read: the caller looks at its leases between reads

    async def _leased(self, topic: str, group: str, consumer: str, batch: int, on_assign: OnAssign,
                      on_revoke: OnRevoke | None) -> AsyncIterator[Message]:
        """The shards whose leases this member holds, read as `LEASEHOLDER` so that a shard's
        pending entries pass to its next owner; rebalances as the Kafka path has them: revoke (the
        step in hand is stored and acknowledged), give up, assign."""
        leases = Leases(self.redis, f"bus-leases:{topic}:{group}", consumer, self.shards, ttl_ms=self.lease_ms)
        await leases.tick()  # join, and take what is free, before the first assignment
        self.leases[(group, topic)] = leases
        keeper = asyncio.create_task(leases.run(), name=f"bus leases {topic}/{group}/{consumer}")
        owned: frozenset[int] = frozenset()
        cursors: dict[int, str] = {}
        assigned = False
        reader = self._group(topic, group, LEASEHOLDER, batch, lambda: sorted(leases.valid() & owned), cursors)
        try:
            while True:
                if leases.changed.is_set() or not assigned:
                    leases.changed.clear()
                    keep = leases.valid() & leases.target
                    if keep != owned or not assigned:
                        if owned and on_revoke is not None:
                            await on_revoke()
                        await leases.release(leases.held.keys() - keep)
                        for p in [p for p in cursors if p not in keep]:
                            del cursors[p]  # taken up again from the pending list if it comes back
                        for p in keep - owned:
                            cursors[p] = "0"
                        owned = keep
                        assigned = True
                        log.info("bus %s: group %s member %s owns shards %s of %d", topic, group, consumer,
                                 sorted(owned), self.shards)
                        await on_assign(owned, self.shards)
                m = await anext(reader)
                if m is _NOTHING:
                    continue
                if leases.holds(m.partition):  # read just as the lease ran out (a pause): not ours to hand out
                    yield m
        finally:
            await reader.aclose()
            leases.stop()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

            async def leave() -> None:
                # A stop hands over as a rebalance does: what is in hand is stored before the
                # shards are free, so their next owner restores it from PostgreSQL.
                if owned and on_revoke is not None:
                    await on_revoke()
                if self.leases.get((group, topic)) is leases:
                    del self.leases[(group, topic)]
                await leases.leave()

            # Awaited, not shielded: the task that was cancelled ends only once the leases are free,
            # so a service closing its Redis client after its readers ended does not cut this short.
            await leave()

    async def _ensure_group(self, key: str, group: str) -> None:
        with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(key, group, id="0", mkstream=True)

    def partition_of(self, topic: str, key: str) -> int:
        return partition_for(key, self.shards) if self._sharded(topic) else -1

    async def partition_count(self, topic: str) -> int:
        return self.shards if self._sharded(topic) else 1

    def holds(self, topic: str, group: str, partition: int) -> bool:
        leases = self.leases.get((group, topic))
        return leases is None or leases.holds(partition)

    async def ack(self, message: Message, group: str) -> None:
        await self.ack_many([message], group)

    async def ack_many(self, messages: Sequence[Message], group: str) -> None:
        by_key: dict[str, list[str]] = {}
        for m in messages:
            if m.partition >= 0 and not self.holds(m.topic, group, m.partition):
                continue  # a lease run out: the entry is its next owner's, pending still
            by_key.setdefault(self._key(m.topic, m.partition), []).append(m.id)
        for key, ids in by_key.items():
            for i in range(0, len(ids), 500):
                await self.redis.xack(key, group, *ids[i:i + 500])

    async def close(self) -> None:
        """The Redis client is the caller's (it serves the hot tier too): nothing to close."""


# What the shard reader yields after a quiet read, so that its caller gets a turn (never handed on).
_NOTHING = Message("", "", b"")


async def connect_redis(url: str, **kwargs) -> aioredis.Redis:
    r = aioredis.from_url(url, decode_responses=False, health_check_interval=10, **kwargs)
    await asyncio.wait_for(r.ping(), timeout=10)
    return r
