"""Shared fixtures: real embedded PostgreSQL and Redis, one of each per test session.

Each test that stores data gets a database of its own, cloned from a migrated template, and a
flushed Redis, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from sysmon.aggregator.server import Aggregator
from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, runtime_env
from sysmon.core.settings import AggregatorSettings
from sysmon.core.storage import schema
from tests.helpers import wait_for

runtime_env()
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def data_root() -> Iterator[Path]:
    # Short path: Unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sysmon-t-") as d:
        yield Path(d)


@pytest.fixture
def short_dir(data_root: Path) -> Path:
    """A directory of this test's, under the short session root (servers put sockets in it);
    removed with the root at the end of the session."""
    return Path(tempfile.mkdtemp(prefix="d-", dir=data_root))


@pytest.fixture(scope="session")
def pg_server(data_root: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(data_root / "pg", tuning={"fsync": "off", "max_connections": "300"})
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def redis_server(data_root: Path) -> Iterator[EmbeddedRedis]:
    r = EmbeddedRedis(data_root / "redis")
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def kafka_url(data_root: Path) -> Iterator[str]:
    """kafka://... of a broker for the session: tansu on a free port, or SYSMON_TEST_KAFKA's Kafka.
    Tests keep apart by topic prefix (see kafka_prefix)."""
    from tests.kafka_broker import TansuBroker, real_kafka

    real = real_kafka()
    if real:
        yield real
        return
    broker = TansuBroker(data_root / "tansu.log")
    broker.start()
    yield broker.url
    broker.stop()


@pytest.fixture
def kafka_prefix() -> str:
    """Topic names of this test's own, on the shared broker."""
    return f"t{os.getpid()}-{next(_db_counter)}."


@pytest.fixture(scope="session")
async def template_db(pg_server: EmbeddedPostgres) -> str:
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    await admin.execute("CREATE DATABASE sysmon_template")
    await admin.close()
    conn = await asyncpg.connect(pg_server.dsn("sysmon_template"))
    await schema.migrate(conn, "plain")
    await conn.close()
    return "sysmon_template"


@pytest.fixture
async def pg_dsn(pg_server: EmbeddedPostgres, template_db: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    await admin.close()
    yield pg_server.dsn(name)
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await schema.create_pool(pg_dsn, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def redis_url(redis_server: EmbeddedRedis) -> str:
    r = aioredis.from_url(redis_server.url())
    await r.flushall()
    await r.aclose()
    return redis_server.url()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    yield r
    await r.aclose()


AggregatorFactory = Callable[..., Awaitable[Aggregator]]


@pytest.fixture
async def start_aggregator(pg_dsn: str, redis_url: str) -> AsyncIterator[AggregatorFactory]:
    """Start in-process aggregators on free ports; all stopped after the test."""
    started: list[Aggregator] = []

    async def start(*, postgres_url: str | None = None, redis: str | None = None, wait_storage: bool = True,
                    **overrides: object) -> Aggregator:
        fields: dict[str, object] = {"listen": "127.0.0.1:0", "metrics_listen": "", "rollup_interval": "1h"}
        fields.update(overrides)
        agg = Aggregator(AggregatorSettings(**fields), postgres_url=postgres_url or pg_dsn,
                         redis_url=redis or redis_url)
        await agg.start()
        started.append(agg)
        if wait_storage:
            await wait_for(agg.storage.ready.is_set, message="aggregator storage ready")
        return agg

    yield start
    for agg in started:
        await agg.stop(grace=0.5)
