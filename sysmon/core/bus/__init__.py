"""The event bus: publish to a topic; subscribe live (fan-out) or durably (consumer group).

One small interface (base.Bus) so that Kafka can replace Redis without touching the services:
redis.py keeps each topic in a Redis Stream (the default, and `sysmon up`'s choice), kafka.py in
a Kafka topic (SYSMON_BUS_URL=kafka://host:port,...). `from_settings` picks one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from sysmon.core.bus.base import (
    ALERTS,
    COMMANDS,
    CONFIG,
    DEFAULT_RETENTION_MS,
    HOSTS,
    SAMPLES,
    TOPICS,
    Bus,
    BusUnavailable,
    Message,
    partition_for,
)
from sysmon.core.bus.redis import RedisBus, connect_redis, shard_key, stream_key

if TYPE_CHECKING:
    from sysmon.core.bus.kafka import KafkaOptions
    from sysmon.core.settings import BusSettings

__all__ = [
    "ALERTS", "COMMANDS", "CONFIG", "DEFAULT_RETENTION_MS", "HOSTS", "SAMPLES", "TOPICS", "Bus", "BusUnavailable",
    "Message", "RedisBus", "connect_redis", "from_settings", "kafka_options", "partition_for", "shard_key",
    "stream_key",
]


def _ms(td: timedelta) -> int:
    return round(td.total_seconds() * 1000)


def kafka_options(settings: BusSettings, *, client_id: str = "sysmon") -> KafkaOptions:
    from sysmon.core.bus.kafka import KafkaOptions, parse_kafka_url

    ms = _ms
    s = settings
    return KafkaOptions(
        bootstrap_servers=parse_kafka_url(s.bus_url or ""),
        topic_prefix=s.bus_topic_prefix,
        partitions=s.bus_partitions,
        replication=s.bus_replication,
        default_retention_ms=ms(s.bus_retention),
        retention_ms={t: ms(d) for t, d in s.bus_topic_retention.items()},
        retention_bytes=s.bus_retention_bytes,
        security_protocol=s.bus_security(),
        tls_ca=s.bus_tls_ca, tls_cert=s.bus_tls_cert, tls_key=s.bus_tls_key,
        sasl_mechanism=s.bus_sasl_mechanism,
        sasl_username=s.bus_sasl_username,
        sasl_password=s.bus_sasl_password.get_secret_value() if s.bus_sasl_password else None,
        client_id=client_id,
        session_timeout_ms=ms(s.bus_session_timeout),
    )


def from_settings(settings: BusSettings, redis: aioredis.Redis | None, *, client_id: str = "sysmon",
                  block_ms: int = 1000) -> Bus | None:
    """The Kafka bus when SYSMON_BUS_URL is kafka://..., else the Redis bus on `redis` (None without one)."""
    if settings.bus_url:
        from sysmon.core.bus.kafka import KafkaBus

        return KafkaBus(kafka_options(settings, client_id=client_id), block_ms=block_ms)
    if redis is None:
        return None
    return RedisBus(redis, retention_ms=_ms(settings.bus_retention), block_ms=block_ms,
                    shards=settings.bus_redis_shards, lease_ms=_ms(settings.bus_session_timeout))
