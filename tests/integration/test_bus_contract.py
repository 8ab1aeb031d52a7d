"""The bus contract, the same for every backend: Redis Streams and Kafka (tansu, or a real Kafka
at SYSMON_TEST_KAFKA). What the services rely on: a host's messages arrive in order, a live
reader sees only what is new, a consumer group resumes where it acknowledged, a slow consumer
holds nobody else up, and subscribers carry on through a broker restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sysmon.core.bus import Bus, BusUnavailable, Message, RedisBus
from sysmon.core.bus.kafka import KafkaBus, KafkaOptions, parse_kafka_url
from sysmon.core.embedded import EmbeddedRedis
from tests.helpers import wait_for
from tests.kafka_broker import TansuBroker, real_kafka

TOPIC = "contract"
STOP = b"stop"
BACKENDS = ["redis", "kafka"]
SHARDS = 4


def kafka_bus(url: str, prefix: str, **kw: object) -> KafkaBus:
    # A short session: tansu ignores LeaveGroup, so a member that stopped holds its partitions
    # until its session expires (Kafka hands them over at once).
    opts = KafkaOptions(bootstrap_servers=parse_kafka_url(url), topic_prefix=prefix, partitions=4,
                        session_timeout_ms=1500, **kw)  # type: ignore[arg-type]
    return KafkaBus(opts, block_ms=100)


BusFactory = Callable[[], Bus]


@pytest.fixture(params=[*BACKENDS, "redis-sharded"])
async def new_bus(request: pytest.FixtureRequest, redis_server: EmbeddedRedis, kafka_url: str,
                  kafka_prefix: str) -> AsyncIterator[BusFactory]:
    """Buses of one backend on one broker: a publisher and the consumers of one test share it."""
    made: list[Bus] = []
    if request.param.startswith("redis"):
        r: aioredis.Redis = aioredis.from_url(redis_server.url())
        await r.flushall()
        shards = SHARDS if request.param == "redis-sharded" else 1

        def make() -> Bus:
            made.append(RedisBus(r, block_ms=100, shards=shards, sharded=(TOPIC,)))
            return made[-1]
    else:
        def make() -> Bus:
            made.append(kafka_bus(kafka_url, kafka_prefix))
            return made[-1]
    yield make
    for b in made:
        await b.close()
    if request.param.startswith("redis"):
        await r.aclose()


class Listener:
    """A subscriber in a task, collecting messages until it reads STOP (or is closed)."""

    def __init__(self, bus: Bus, *, group: str | None = None, consumer: str | None = None, ack: bool = False,
                 delay: float = 0.0):
        self.bus, self.group, self.ack, self.delay = bus, group, ack, delay
        self.got: list[Message] = []
        self._task = asyncio.create_task(self._run(consumer))

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.got if not m.payload.startswith(b"warm") and m.payload != STOP]

    async def _run(self, consumer: str | None) -> None:
        sub = self.bus.subscribe(TOPIC, group=self.group, consumer=consumer)
        try:
            async for m in sub:
                if m.payload == STOP:
                    return
                self.got.append(m)
                if self.ack and self.group:
                    await self.bus.ack(m, self.group)
                if self.delay:
                    await asyncio.sleep(self.delay)  # a slow consumer, on purpose
        finally:
            await sub.aclose()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await self._task


async def until_live(bus: Bus, listeners: list[Listener], key: str = "warm") -> None:
    """Publish warm-up messages until every listener has one: from then on, it is reading."""
    async def all_live() -> bool:
        if all(any(m.payload.startswith(b"warm") for m in x.got) for x in listeners):
            return True
        await bus.publish(TOPIC, b"warm", key=key)
        return False

    await wait_for(all_live, within=30, interval=0.2, message="subscribers live")


def per_host(payloads: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for p in payloads:
        out.setdefault(p.split(b":")[0].decode(), []).append(p)
    return out


async def read(gen: AsyncIterator[Message], n: int) -> list[Message]:
    async with asyncio.timeout(30):
        return [await anext(gen) for _ in range(n)]


async def test_live_readers_get_each_hosts_messages_in_order_and_nothing_older(new_bus: BusFactory) -> None:
    bus = new_bus()
    await bus.publish(TOPIC, b"h0:before anyone listened", key="h0")
    listeners = [Listener(new_bus()), Listener(new_bus())]
    try:
        await until_live(bus, listeners)
        sent = [f"h{i % 3}:{i}".encode() for i in range(60)]
        for p in sent[:30]:
            await bus.publish(TOPIC, p, key=p.split(b":")[0].decode())
        await bus.publish_many(TOPIC, sent[30:], keys=[p.split(b":")[0].decode() for p in sent[30:]])
        await wait_for(lambda: all(len(x.payloads) >= len(sent) for x in listeners), within=30,
                       message="every message at every live reader")
        for x in listeners:
            assert sorted(x.payloads) == sorted(sent)
            assert per_host(x.payloads) == per_host(sent)  # each host's in the order published
            assert b"h0:before anyone listened" not in x.payloads
    finally:
        for x in listeners:
            await x.close()


async def test_a_consumer_group_resumes_after_a_restart_where_it_acknowledged(new_bus: BusFactory) -> None:
    bus = new_bus()
    for i in range(3):
        await bus.publish(TOPIC, f"m{i}".encode(), key="h1")

    consumer = new_bus()
    first = consumer.subscribe(TOPIC, group="alerts", consumer="worker-1")
    got = await read(first, 3)
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
    await consumer.ack(got[0], "alerts")
    await first.aclose()  # it stops with m1 and m2 handled but not acknowledged
    await consumer.close()

    await bus.publish_many(TOPIC, [b"m3", b"m4"], keys=["h1", "h1"])
    consumer = new_bus()  # a new process
    second = consumer.subscribe(TOPIC, group="alerts", consumer="worker-1")
    try:
        again = await read(second, 4)
        # First what was handed out and never acknowledged, under the same ids; then the new ones.
        assert [m.payload for m in again] == [b"m1", b"m2", b"m3", b"m4"]
        assert [m.id for m in again[:2]] == [m.id for m in got[1:]]
        await consumer.ack_many(again, "alerts")
    finally:
        await second.aclose()

    await bus.publish(TOPIC, b"m5", key="h1")
    third = consumer.subscribe(TOPIC, group="alerts", consumer="worker-1")
    try:
        assert [m.payload for m in await read(third, 1)] == [b"m5"]  # everything before was acknowledged
    finally:
        await third.aclose()

    other = consumer.subscribe(TOPIC, group="archive", consumer="a1")
    try:
        # Another group is independent: it reads the topic from its start.
        assert [m.payload for m in await read(other, 6)] == [f"m{i}".encode() for i in range(6)]
    finally:
        await other.aclose()


async def test_a_slow_consumer_does_not_hold_up_the_others(new_bus: BusFactory) -> None:
    bus = new_bus()
    slow = Listener(new_bus(), group="slow", consumer="s1", ack=True, delay=5.0)
    fast = Listener(new_bus(), group="fast", consumer="f1", ack=True)
    live = Listener(new_bus())
    try:
        await until_live(bus, [slow, fast, live])
        sent = [f"h{i % 4}:{i}".encode() for i in range(200)]
        await bus.publish_many(TOPIC, sent, keys=[p.split(b":")[0].decode() for p in sent])
        await wait_for(lambda: len(fast.payloads) >= len(sent) and len(live.payloads) >= len(sent), within=30,
                       message="the other consumers have everything while one is slow")
        assert per_host(fast.payloads) == per_host(sent)
        assert per_host(live.payloads) == per_host(sent)
        assert len(slow.payloads) < 10  # still on its first messages
    finally:
        for x in (slow, fast, live):
            await x.close()


async def test_cancelling_a_subscriber_stops_it(new_bus: BusFactory) -> None:
    """Services stop their subscriptions by cancelling the task that iterates them."""
    bus = new_bus()
    received = asyncio.Event()

    async def consume() -> None:
        async for _m in new_bus().subscribe(TOPIC):
            received.set()

    task = asyncio.create_task(consume())
    try:
        async def reading() -> bool:
            if not received.is_set():
                await bus.publish(TOPIC, b"ping")
            return received.is_set()

        await wait_for(reading, within=30, interval=0.2, message="the subscriber reading")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the subscriber ignored its cancellation and is still reading"
    finally:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)


# --- a broker restart -----------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def restartable(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[
        tuple[BusFactory, Callable[[], Awaitable[None]]]]:
    """A broker of this test's own, and a way to restart it under its clients."""
    made: list[Bus] = []
    if request.param == "redis":
        server = EmbeddedRedis(short_dir)
        await asyncio.to_thread(server.start)
        clients: list[aioredis.Redis] = []

        def make() -> Bus:
            clients.append(aioredis.from_url(server.url(), socket_timeout=5, socket_connect_timeout=2))
            made.append(RedisBus(clients[-1], block_ms=100))
            return made[-1]

        async def restart() -> None:
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
    else:
        if real_kafka():
            pytest.skip("restarting the broker needs the tests' own tansu")
        broker = TansuBroker(short_dir / "tansu.log")
        await asyncio.to_thread(broker.start)

        def make() -> Bus:
            made.append(kafka_bus(broker.url, "r.", request_timeout_ms=5000))
            return made[-1]

        async def restart() -> None:
            await asyncio.to_thread(broker.restart)
    try:
        yield make, restart
    finally:
        for b in made:
            await b.close()
        if request.param == "redis":
            for c in clients:
                await c.aclose()
            await asyncio.to_thread(server.stop)
        else:
            await asyncio.to_thread(broker.stop)


async def test_subscribers_carry_on_through_a_broker_restart(
        restartable: tuple[BusFactory, Callable[[], Awaitable[None]]]) -> None:
    new_bus, restart = restartable
    bus = new_bus()
    group = Listener(new_bus(), group="alerts", consumer="a1", ack=True)
    live = Listener(new_bus())

    async def resilient(x: Listener) -> None:
        # A service's reader: when the bus is away, subscribe again (as the services' loops do).
        while True:
            try:
                await x._task
                return
            except (BusUnavailable, OSError, aioredis.RedisError):
                await asyncio.sleep(0.2)
                x._task = asyncio.create_task(x._run("a1" if x.group else None))

    keepers = [asyncio.create_task(resilient(x)) for x in (group, live)]
    try:
        await until_live(bus, [group, live], key="h1")
        await bus.publish_many(TOPIC, [b"h1:before-0", b"h1:before-1"], keys=["h1", "h1"])
        await wait_for(lambda: len(group.payloads) >= 2 and len(live.payloads) >= 2, message="before the restart")
        await restart()
        # Publishing fails while the broker is away, then succeeds; readers pick up without help
        # beyond their own retry loop.
        sent: list[bytes] = []

        async def published_and_seen() -> bool:
            p = f"h1:after-{len(sent)}".encode()
            try:
                await bus.publish(TOPIC, p, key="h1")
                sent.append(p)
            except (BusUnavailable, OSError, aioredis.RedisError):
                return False
            after = [x for x in (group, live) if any(q.startswith(b"h1:after") for q in x.payloads)]
            return len(after) == 2

        await wait_for(published_and_seen, within=60, interval=0.3, message="both readers past the restart")
        for x in (group, live):
            seen = [p for p in x.payloads if p.startswith(b"h1:after")]
            # In order, with nothing missing from the first one it saw after the restart on.
            assert seen == sent[sent.index(seen[0]):sent.index(seen[0]) + len(seen)]
    finally:
        for k in keepers:
            k.cancel()
        for x in (group, live):
            await x.close()


# --- Kafka's own ---------------------------------------------------------------------------------


async def test_kafka_topics_are_created_with_their_partitions_and_retention(kafka_url: str, kafka_prefix: str) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    bus = KafkaBus(KafkaOptions(parse_kafka_url(kafka_url), topic_prefix=kafka_prefix, partitions=3,
                                default_retention_ms=600_000, retention_ms={"alerts": 86_400_000},
                                retention_bytes=1 << 30))
    try:
        await bus.publish("samples", b"x", key="h1")
        await bus.publish("alerts", b"y")
        await bus.publish("samples", b"z", key="h1")  # created once: the second publish finds it there
    finally:
        await bus.close()
    servers = parse_kafka_url(kafka_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers)
    await admin.start()
    await consumer.start()
    try:
        await consumer.topics()
        assert consumer.partitions_for_topic(f"{kafka_prefix}samples") == {0, 1, 2}
        resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, f"{kafka_prefix}{t}")
                                             for t in ("samples", "alerts")])
        configs = {r[3]: {e[0]: e[1] for e in r[4]} for x in resp for r in x.resources}
    finally:
        await consumer.stop()
        await admin.close()
    assert configs[f"{kafka_prefix}samples"]["retention.ms"] == "600000"
    assert configs[f"{kafka_prefix}alerts"]["retention.ms"] == "86400000"
    assert configs[f"{kafka_prefix}samples"]["retention.bytes"] == str(1 << 30)


@pytest.mark.real_kafka
@pytest.mark.skipif(not real_kafka(), reason="needs a real Kafka: SYSMON_TEST_KAFKA=host:port (tansu ignores "
                                             "LeaveGroup, so its hand-over waits for the session to expire)")
async def test_on_kafka_a_member_that_stops_hands_its_partitions_over_at_once(kafka_prefix: str) -> None:
    url = real_kafka()
    assert url is not None
    owned: dict[str, frozenset[int]] = {}

    def member(name: str) -> tuple[KafkaBus, AsyncIterator[Message]]:
        b = KafkaBus(KafkaOptions(parse_kafka_url(url), topic_prefix=kafka_prefix, partitions=4,
                                  session_timeout_ms=30_000), block_ms=100)

        async def on_assign(parts: frozenset[int], _n: int) -> None:
            owned[name] = parts

        return b, b.subscribe(TOPIC, group="handover", consumer=name, on_assign=on_assign)

    (a, sub_a), (b, sub_b) = member("a"), member("b")
    readers = [asyncio.create_task(_drain(sub_a)), asyncio.create_task(_drain(sub_b))]
    try:
        await wait_for(lambda: owned.get("a") and owned.get("b"), within=60, message="both members own partitions")
        readers[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers[1]
        # Far sooner than the 30 s session: the member left the group when it stopped.
        await wait_for(lambda: owned.get("a") == frozenset(range(4)), within=10, message="the hand-over")
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await a.close()
        await b.close()


async def _drain(sub: AsyncIterator[Message]) -> None:
    async for _ in sub:
        pass


async def test_on_redis_shards_members_share_by_lease_and_a_stop_hands_over_at_once_with_nothing_lost(
        redis_client: aioredis.Redis) -> None:
    """The Redis equivalent of a consumer group's assignment: leases on the shards. A member that
    stops gives its leases back (long before they would run out) and what it read but did not
    acknowledge goes to the shard's next owner."""
    owned: dict[str, frozenset[int]] = {}
    got: dict[str, list[Message]] = {"a": [], "b": []}

    def member(name: str, ack: bool) -> tuple[RedisBus, asyncio.Task[None]]:
        bus = RedisBus(redis_client, block_ms=100, shards=SHARDS, sharded=(TOPIC,), lease_ms=30_000)

        async def on_assign(parts: frozenset[int], n: int) -> None:
            assert n == SHARDS
            owned[name] = parts

        async def run() -> None:
            async for m in bus.subscribe(TOPIC, group="handover", consumer=name, on_assign=on_assign):
                got[name].append(m)
                if ack:
                    await bus.ack(m, "handover")

        return bus, asyncio.create_task(run())

    (a, task_a), (_, task_b) = member("a", ack=True), member("b", ack=False)
    try:
        await wait_for(lambda: owned.get("a") and owned.get("b") and owned["a"] | owned["b"] == set(range(SHARDS))
                       and not owned["a"] & owned["b"], within=30, message="the members sharing the shards")
        hosts = [f"h{i}" for i in range(16)]
        await a.publish_many(TOPIC, [f"{h}:1".encode() for h in hosts], keys=hosts)
        await wait_for(lambda: len(got["a"]) + len(got["b"]) >= len(hosts), message="every message read once")
        assert {m.partition for m in got["a"]} <= owned["a"]
        assert {m.partition for m in got["b"]} <= owned["b"]
        of_b = sorted(m.payload for m in got["b"])
        assert of_b
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)
        # Far sooner than the 30 s lease: b released its shards as it stopped.
        await wait_for(lambda: owned.get("a") == frozenset(range(SHARDS)), within=15, message="the hand-over")
        # What b read and never acknowledged, a reads again (pending under the shard's one consumer).
        await wait_for(lambda: sorted(m.payload for m in got["a"] if m.payload in of_b) == of_b,
                       message="b's unacknowledged messages at a")
        assert await redis_client.exists("bus-leases:contract:handover:lease:0")
    finally:
        for t in (task_a, task_b):
            t.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
