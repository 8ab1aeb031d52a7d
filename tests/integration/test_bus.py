"""The Redis bus: live fan-out to every subscriber, and consumer groups that survive a crash,
against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from sysmon.core.bus import Message, RedisBus, stream_key
from tests.helpers import wait_for

TOPIC = "test-topic"


STOP = b"stop"


class Listener:
    """A live subscriber running in a task, collecting payloads until it reads STOP.

    Stopped by a message rather than by cancelling its task: see
    test_cancelling_a_subscriber_stops_it for why cancelling is not reliable.
    """

    def __init__(self, bus: RedisBus, topic: str = TOPIC):
        self.bus = bus
        self.topic = topic
        self.got: list[bytes] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        sub = self.bus.subscribe(self.topic)
        try:
            async for m in sub:
                if m.payload == STOP:
                    return
                self.got.append(m.payload)
        finally:
            await sub.aclose()

    async def close(self) -> None:
        if not self._task.done():
            await self.bus.publish(self.topic, STOP)
        async with asyncio.timeout(10):
            await self._task


async def until_live(bus: RedisBus, listeners: list[Listener]) -> None:
    """Publish warm-up messages until every listener has received one: from then on, it is reading."""
    async def all_live() -> bool:
        if all(any(p.startswith(b"warm") for p in x.got) for x in listeners):
            return True
        await bus.publish(TOPIC, b"warm")
        return False

    await wait_for(all_live, message="subscribers live")


def after_warmup(got: list[bytes]) -> list[bytes]:
    return [p for p in got if not p.startswith(b"warm") and p != STOP]


async def test_every_live_subscriber_gets_every_message_in_order(redis_client: aioredis.Redis) -> None:
    bus = RedisBus(redis_client, block_ms=100)
    await bus.publish(TOPIC, b"before anyone listened")
    listeners = [Listener(bus), Listener(bus)]
    try:
        await until_live(bus, listeners)
        sent = [f"m{i}".encode() for i in range(50)]
        for p in sent[:25]:
            await bus.publish(TOPIC, p)
        await bus.publish_many(TOPIC, sent[25:])
        await wait_for(lambda: all(len(after_warmup(x.got)) >= len(sent) for x in listeners),
                       message="every message at every subscriber")
        for x in listeners:
            assert after_warmup(x.got) == sent
            # A live subscriber starts at the end: what was published before it is not replayed.
            assert b"before anyone listened" not in x.got
    finally:
        for x in listeners:
            await x.close()


async def test_publish_many_reaches_live_and_group_subscribers(redis_client: aioredis.Redis) -> None:
    bus = RedisBus(redis_client, block_ms=100)
    listener = Listener(bus)
    try:
        await until_live(bus, [listener])
        await bus.publish_many(TOPIC, [])  # nothing to send is fine
        await bus.publish_many(TOPIC, [b"a", b"b", b"c"])
        await wait_for(lambda: len(after_warmup(listener.got)) >= 3, message="the batch at the live subscriber")
        assert after_warmup(listener.got) == [b"a", b"b", b"c"]
    finally:
        await listener.close()
    # A consumer group created now reads the topic from its start.
    group = bus.subscribe(TOPIC, group="late", consumer="c1")
    try:
        got = [await anext(group) for _ in range(await redis_client.xlen(stream_key(TOPIC)))]
    finally:
        await group.aclose()
    assert after_warmup([m.payload for m in got]) == [b"a", b"b", b"c"]


async def read(gen: AsyncIterator[Message], n: int) -> list[Message]:
    async with asyncio.timeout(10):
        return [await anext(gen) for _ in range(n)]


async def test_consumer_group_redelivers_unacknowledged_after_a_crash(redis_client: aioredis.Redis) -> None:
    bus = RedisBus(redis_client, block_ms=100)
    for i in range(3):
        await bus.publish(TOPIC, f"m{i}".encode())

    first = bus.subscribe(TOPIC, group="alerts", consumer="worker-1")
    got = await read(first, 3)
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
    await bus.ack(got[0], "alerts")
    await first.aclose()  # the consumer crashes with m1 and m2 handled but not acknowledged

    await bus.publish_many(TOPIC, [b"m3", b"m4"])
    second = bus.subscribe(TOPIC, group="alerts", consumer="worker-1")
    try:
        again = await read(second, 4)
        # First what it was given and never acknowledged, with the same ids; then the new ones.
        assert [m.payload for m in again] == [b"m1", b"m2", b"m3", b"m4"]
        assert [m.id for m in again[:2]] == [m.id for m in got[1:]]
        for m in again:
            await bus.ack(m, "alerts")
    finally:
        await second.aclose()
    pending = await redis_client.xpending(stream_key(TOPIC), "alerts")
    assert pending["pending"] == 0

    # Everything acknowledged: a restart gets only what is new.
    await bus.publish(TOPIC, b"m5")
    third = bus.subscribe(TOPIC, group="alerts", consumer="worker-1")
    try:
        assert [m.payload for m in await read(third, 1)] == [b"m5"]
    finally:
        await third.aclose()

    # Another group is independent: it receives everything, whatever "alerts" acknowledged.
    other = bus.subscribe(TOPIC, group="archive", consumer="a1")
    try:
        assert [m.payload for m in await read(other, 6)] == [f"m{i}".encode() for i in range(6)]
    finally:
        await other.aclose()


async def test_cancelling_a_subscriber_stops_it(redis_client: aioredis.Redis) -> None:
    """Services stop their subscriptions by cancelling the task that iterates them (Aggregator.stop,
    route_commands, ConfigStore.follow). A cancelled subscriber must end, whenever the cancel lands."""
    bus = RedisBus(redis_client, block_ms=200)
    for _ in range(5):
        received = asyncio.Event()

        async def consume(received: asyncio.Event) -> None:
            async for _m in bus.subscribe(TOPIC):
                received.set()

        task = asyncio.create_task(consume(received))
        try:
            async with asyncio.timeout(20):
                while not received.is_set():  # until the subscriber is reading
                    await bus.publish(TOPIC, b"ping")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await received.wait()
            # Cancel just after a delivery: the subscriber is issuing its next read.
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=3)
            assert done, "the subscriber ignored its cancellation and is still reading"
        finally:
            while not task.done():  # clean up even when the first cancel was lost
                task.cancel()
                await asyncio.wait({task}, timeout=1)


async def test_pending_messages_trimmed_by_retention_are_not_delivered_empty(redis_client: aioredis.Redis) -> None:
    bus = RedisBus(redis_client, block_ms=100)
    ids = [await bus.publish(TOPIC, f"m{i}".encode()) for i in range(3)]
    crashed = bus.subscribe(TOPIC, group="alerts", consumer="worker-1")
    assert [m.payload for m in await read(crashed, 3)] == [b"m0", b"m1", b"m2"]
    await crashed.aclose()  # away for longer than the topic keeps entries ...
    # ... so retention trims what it never acknowledged (exactly, as the bus's own age trimming does over time).
    await redis_client.xtrim(stream_key(TOPIC), minid=ids[2], approximate=False)
    await bus.publish(TOPIC, b"m3")

    back = bus.subscribe(TOPIC, group="alerts", consumer="worker-1")
    try:
        assert [m.payload for m in await read(back, 2)] == [b"m2", b"m3"]
        assert bus.expired == 2  # counted, not silently dropped
    finally:
        await back.aclose()
