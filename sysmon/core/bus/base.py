"""What every bus backend offers: topics, messages, and the Bus protocol the services use.

Delivery is at least once for a group subscriber: a message is handed out again (to this
consumer after a restart, or to whichever member owns its host after a rebalance) until it is
acknowledged; a live subscriber sees what is published after it started and nothing before.
Messages published with the same key reach a subscriber in the order they were published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka.partitioner import murmur2

SAMPLES = "samples"  # sysmon.v1.SamplesEvents, after the hot tier has the batch
HOSTS = "hosts"  # sysmon.v1.HostEvent
COMMANDS = "commands"  # sysmon.v1.CommandEvent, routed to a collector by its aggregator
CONFIG = "config"  # a configuration version changed; payload is the version as text
ALERTS = "alerts"  # sysmon.v1.AlertEvent, after the alerts service stored the transition
TOPICS = (SAMPLES, HOSTS, COMMANDS, CONFIG, ALERTS)

# How long a topic keeps its entries: a durable consumer may be away this long and miss nothing.
DEFAULT_RETENTION_MS = 15 * 60 * 1000


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client's) puts `key` on. The
    Redis bus shards by the same hash, so a host has the same place on either bus."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class BusUnavailable(ConnectionError):
    """The broker cannot be reached, or refused a request it should have taken.

    A ConnectionError (an OSError), so that the services' handlers for a bus that is away
    (which catch OSError beside Redis's errors) need no backend-specific clauses.
    """


@dataclass(frozen=True)
class Message:
    topic: str
    id: str
    payload: bytes
    # Where the backend keeps it (Kafka: partition and offset; Redis: -1 and 0), for acknowledging.
    partition: int = -1
    offset: int = 0


# A group member's share of a partitioned topic changed: the partitions it owns now, of how many.
OnAssign = Callable[[frozenset[int], int], Awaitable[None]]
# It is about to lose what it owns: finish (and acknowledge) what is in hand, now.
OnRevoke = Callable[[], Awaitable[None]]


class Bus(Protocol):
    # True when the backend spreads a topic over partitions by key: publishers then split what
    # they send per key (host) so that one host's messages stay in one partition, in order.
    partitioned: bool

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None) -> str: ...

    async def publish_many(self, topic: str, payloads: Sequence[bytes], *,
                           keys: Sequence[str | None] | None = None) -> None: ...

    def subscribe(
        self, topic: str, *, group: str | None = None, consumer: str | None = None, batch: int = 100,
        on_assign: OnAssign | None = None, on_revoke: OnRevoke | None = None,
    ) -> AsyncIterator[Message]: ...

    def partition_of(self, topic: str, key: str) -> int: ...

    def holds(self, topic: str, group: str, partition: int) -> bool:
        """Whether this process's member of `group` may still act on `partition` (False once a
        lease it held has run out, before it has been told in a revoke)."""
        ...

    async def partition_count(self, topic: str) -> int: ...

    async def ack(self, message: Message, group: str) -> None: ...

    async def ack_many(self, messages: Sequence[Message], group: str) -> None: ...

    async def close(self) -> None: ...
