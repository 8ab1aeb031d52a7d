"""The Kafka bus (SYSMON_BUS_URL=kafka://host:port,...), with aiokafka.

Each bus topic is a Kafka topic (`<prefix><topic>`), created on first use with the configured
partition count, replication and retention. Messages are keyed by host id, so one host's
samples stay on one partition, in order, and the members of a consumer group share the fleet by
host. A group subscriber is a member of a Kafka consumer group that commits nothing by itself:
acknowledging a message commits its offset, which acknowledges every message before it on its
partition (consumers acknowledge in the order they were given, as the alerts service does). What
is not committed when a member stops, crashes or loses a partition in a rebalance is handed out
again from the last committed offset: at least once, as with Redis. A live subscriber is no group
member: it is assigned every partition of the topic and starts at the end of each.

Limits: partitions added to a topic after a live subscriber started are not read by it (until it
resubscribes); an existing topic keeps the partitions and retention it was created with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.helpers import create_ssl_context

from sysmon.core.bus.base import DEFAULT_RETENTION_MS, BusUnavailable, Message, OnAssign, OnRevoke, partition_for

log = logging.getLogger(__name__)

TOPIC_EXISTS = 36  # Kafka's TOPIC_ALREADY_EXISTS error code
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
MAX_PARTITIONS = 10_000


def parse_kafka_url(url: str) -> list[str]:
    """kafka://host:port,host:port -> ["host:port", ...]; the port defaults to 9092."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "kafka":
        raise ValueError(f"{url!r} is not a kafka://host:port[,host:port...] URL")
    servers = []
    for part in rest.split("/", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        host, colon, port = part.rpartition(":")
        if not colon:
            host, port = part, "9092"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} in {url!r} is not host:port")
        servers.append(f"{host}:{port}")
    if not servers:
        raise ValueError(f"{url!r} names no broker")
    return servers


@dataclass(frozen=True)
class KafkaOptions:
    bootstrap_servers: list[str]
    topic_prefix: str = "sysmon."
    partitions: int = 12
    replication: int = 1
    # Per bus topic; topics not named keep the default.
    retention_ms: dict[str, int] = field(default_factory=dict)
    default_retention_ms: int = DEFAULT_RETENTION_MS
    retention_bytes: int = -1  # per partition; -1: no size limit
    security_protocol: SecurityProtocol = "PLAINTEXT"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    client_id: str = "sysmon"
    linger_ms: int = 5
    request_timeout_ms: int = 30_000
    # A member silent this long leaves its group and its hosts move to the others.
    session_timeout_ms: int = 10_000
    # The longest a broker holds a fetch with nothing new: Kafka answers as soon as data arrives,
    # tansu only when this runs out (at aiokafka's 500 ms default, alerts fired 200 ms later at p50).
    fetch_max_wait_ms: int = 50
    # A publish gives up after this long (the producer would wait request_timeout_ms for a broker
    # away): the aggregator's live path goes on to the next group, and the hot tier stays live.
    publish_timeout_ms: int = 5_000

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"bus partitions must be between 1 and {MAX_PARTITIONS}, not {self.partitions}")
        if self.replication < 1:
            raise ValueError("bus replication must be at least 1")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError("SASL needs a username and a password")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            raise ValueError(f"SASL {self.sasl_mechanism} needs security protocol SASL_SSL or SASL_PLAINTEXT, "
                             f"not {self.security_protocol}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("the bus client certificate and its key are given together")

    def topic_config(self, topic: str) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms.get(topic, self.default_retention_ms)),
            "retention.bytes": str(self.retention_bytes),
        }

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw

    def ssl_context(self) -> ssl.SSLContext:
        # The system's roots unless a CA is given; certificate and host name always checked.
        return create_ssl_context(cafile=self.tls_ca, certfile=self.tls_cert, keyfile=self.tls_key)


def _unavailable(action: str, e: Exception) -> BusUnavailable:
    return BusUnavailable(f"Kafka bus: {action} failed: {type(e).__name__}: {e}")


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, topic: str, group: str, consumer: str, consumer_client: AIOKafkaConsumer, name: str,
                 on_assign: OnAssign | None, on_revoke: OnRevoke | None):
        self.topic, self.group, self.consumer = topic, group, consumer
        self.client, self.name = consumer_client, name
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.assigned: frozenset[int] = frozenset()
        self.partitions = 0
        self.generation = 0

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Still a member here: what the consumer finishes now is committed before another owns it.
        if self.on_revoke is not None and self.assigned:
            await self.on_revoke()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned = frozenset(tp.partition for tp in assigned)
        self.partitions = len(self.client.partitions_for_topic(self.name) or ()) or self.partitions
        self.generation += 1
        log.info("bus %s: group %s member %s owns partitions %s of %d", self.topic, self.group, self.consumer,
                 sorted(self.assigned), self.partitions)
        if self.on_assign is not None:
            await self.on_assign(self.assigned, self.partitions)


class KafkaBus:
    partitioned = True

    def __init__(self, options: KafkaOptions, *, block_ms: int = 1000):
        self.options = options
        self.block_ms = block_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._ready: set[str] = set()
        # The live group consumers of this process, by group and topic: acknowledgements commit there.
        self._members: dict[tuple[str, str], AIOKafkaConsumer] = {}
        self.listeners: dict[tuple[str, str], _Rebalances] = {}
        self._partitions: dict[str, int] = {}
        self.commit_conflicts = 0  # acknowledgements refused because a rebalance moved the partition

    def name(self, topic: str) -> str:
        return self.options.topic_prefix + topic

    # --- topics ------------------------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        missing = [t for t in topics if t not in self._ready]
        if not missing:
            return
        o = self.options
        admin = AIOKafkaAdminClient(**o.client_kwargs())
        try:
            await admin.start()
            resp = await admin.create_topics([
                NewTopic(self.name(t), o.partitions, o.replication, topic_configs=o.topic_config(t)) for t in missing
            ])
        except KafkaError as e:
            raise _unavailable(f"creating topics {missing}", e) from e
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        for name, code, message in ((e[0], e[1], e[2]) for e in resp.topic_errors):
            if code not in (0, TOPIC_EXISTS):
                raise BusUnavailable(f"Kafka bus: creating topic {name} failed (error {code}: {message})")
        self._ready.update(missing)

    # --- publishing --------------------------------------------------------------------------------

    async def _producer_started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                p = AIOKafkaProducer(**self.options.client_kwargs(), acks="all", linger_ms=self.options.linger_ms,
                                     max_request_size=8 * 1024 * 1024)
                try:
                    await p.start()
                except KafkaError as e:
                    with contextlib.suppress(Exception):
                        await p.stop()
                    raise _unavailable("connecting the producer", e) from e
                self._producer = p
            return self._producer

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None) -> str:
        await self.ensure_topics([topic])
        p = await self._producer_started()
        try:
            async with asyncio.timeout(self.options.publish_timeout_ms / 1000):
                md = await p.send_and_wait(self.name(topic), payload, key=key.encode() if key is not None else None)
        except (KafkaError, TimeoutError) as e:
            self._ready.discard(topic)  # a broker that lost its topics: create them again next time
            raise _unavailable(f"publishing to {topic}", e) from e
        return f"{md.partition}-{md.offset}"

    async def publish_many(self, topic: str, payloads: Sequence[bytes], *,
                           keys: Sequence[str | None] | None = None) -> None:
        if not payloads:
            return
        if keys is not None and len(keys) != len(payloads):
            raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
        await self.ensure_topics([topic])
        p = await self._producer_started()
        name = self.name(topic)
        try:
            async with asyncio.timeout(self.options.publish_timeout_ms / 1000):
                # Queued at once (the producer batches them per partition), then awaited together.
                futures = [await p.send(name, v, key=k.encode() if k is not None else None)
                           for v, k in zip(payloads, keys or [None] * len(payloads), strict=True)]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as e:
            self._ready.discard(topic)
            raise _unavailable(f"publishing to {topic}", e) from e

    # --- subscribing -------------------------------------------------------------------------------

    def partition_of(self, topic: str, key: str) -> int:
        """The partition of `topic` that messages keyed `key` go to (after partition_count or a
        group subscription learnt the topic's partitions)."""
        n = self._partitions.get(topic) or self.options.partitions
        return partition_for(key, n)

    def holds(self, topic: str, group: str, partition: int) -> bool:
        # The group's generation fences a member that lost a partition (its commit is refused), and
        # a revoke comes before the loss: nothing to check between.
        return True

    async def partition_count(self, topic: str) -> int:
        """The partitions the topic has (it may have been created with another count than ours)."""
        n = self._partitions.get(topic)
        if n:
            return n
        await self.ensure_topics([topic])
        p = await self._producer_started()
        try:
            async with asyncio.timeout(self.options.publish_timeout_ms / 1000):
                parts = await p.partitions_for(self.name(topic))
        except (KafkaError, TimeoutError) as e:
            raise _unavailable(f"learning the partitions of {topic}", e) from e
        self._partitions[topic] = n = len(parts)
        return n

    async def subscribe(
        self, topic: str, *, group: str | None = None, consumer: str | None = None, batch: int = 100,
        on_assign: OnAssign | None = None, on_revoke: OnRevoke | None = None,
    ) -> AsyncIterator[Message]:
        if group is not None and consumer is None:
            raise ValueError("a group subscription names its consumer")
        await self.ensure_topics([topic])
        name = self.name(topic)
        kw = self.options.client_kwargs()
        kw["fetch_max_wait_ms"] = self.options.fetch_max_wait_ms
        if group is None:
            c = AIOKafkaConsumer(**kw, group_id=None, enable_auto_commit=False, max_poll_records=batch)
        else:
            kw["client_id"] = f"{self.options.client_id}-{consumer}"
            c = AIOKafkaConsumer(**kw, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                                 max_poll_records=batch, session_timeout_ms=self.options.session_timeout_ms,
                                 heartbeat_interval_ms=max(100, self.options.session_timeout_ms // 3))
        try:
            await c.start()
        except KafkaError as e:
            with contextlib.suppress(Exception):
                await c.stop()
            raise _unavailable(f"subscribing to {topic}", e) from e
        try:
            if group is None:
                await self._assign_all_at_end(c, name)
            else:
                assert consumer is not None
                # The topic's own partition count (it may have been created with another than ours).
                self._partitions[topic] = len(c.partitions_for_topic(name) or ()) or len(
                    await self._partitions_now(c, name))
                listener = _Rebalances(topic, group, consumer, c, name, on_assign, on_revoke)
                c.subscribe([name], listener=listener)
                self._members[(group, topic)] = c
                self.listeners[(group, topic)] = listener
            while True:
                try:
                    got = await c.getmany(timeout_ms=self.block_ms, max_records=batch)
                except KafkaError as e:
                    raise _unavailable(f"reading {topic}", e) from e
                for tp, records in got.items():
                    for r in records:
                        yield Message(topic, f"{tp.partition}-{r.offset}", r.value or b"", tp.partition, r.offset)
        finally:
            if group is not None and self._members.get((group, topic)) is c:
                del self._members[(group, topic)]
            with contextlib.suppress(Exception):
                await c.stop()

    async def _partitions_now(self, c: AIOKafkaConsumer, name: str) -> set[int]:
        parts = c.partitions_for_topic(name)
        if not parts:
            await c.topics()  # a metadata refresh: the topic was just created
            parts = c.partitions_for_topic(name)
        if not parts:
            raise BusUnavailable(f"Kafka bus: topic {name} has no partitions yet")
        return set(parts)

    async def _assign_all_at_end(self, c: AIOKafkaConsumer, name: str) -> None:
        parts = await self._partitions_now(c, name)
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_end(*tps)
        # Resolve the end offsets now: what is published from here on is what this reader sees.
        for tp in tps:
            await c.position(tp)

    # --- acknowledging -----------------------------------------------------------------------------

    async def ack(self, message: Message, group: str) -> None:
        await self.ack_many([message], group)

    async def ack_many(self, messages: Sequence[Message], group: str) -> None:
        by_topic: dict[str, dict[int, int]] = {}
        for m in messages:
            parts = by_topic.setdefault(m.topic, {})
            parts[m.partition] = max(parts.get(m.partition, -1), m.offset)
        for topic, parts in by_topic.items():
            c = self._members.get((group, topic))
            if c is None:
                # The subscription ended (a stop): what it did not commit is handed out again.
                log.debug("bus %s: %d acknowledgements for group %s after its subscription ended", topic,
                          len(parts), group)
                continue
            name = self.name(topic)
            mine = {tp.partition for tp in c.assignment()}
            offsets = {TopicPartition(name, p): o + 1 for p, o in parts.items() if p in mine}
            if len(offsets) < len(parts):
                self.commit_conflicts += 1  # partitions a rebalance gave away: their new owner reads them again
            if not offsets:
                continue
            try:
                await c.commit(offsets)
            except (CommitFailedError, IllegalGenerationError, RebalanceInProgressError, IllegalStateError) as e:
                # A rebalance gave (some of) these partitions to another member, which reads them
                # again from the last commit: handled twice, which the consumers are built for.
                self.commit_conflicts += 1
                log.info("bus %s: commit for group %s refused after a rebalance (%s)", topic, group, e)
            except KafkaError as e:
                raise _unavailable(f"acknowledging on {topic}", e) from e

    async def close(self) -> None:
        if self._producer is not None:
            p, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await p.stop()
