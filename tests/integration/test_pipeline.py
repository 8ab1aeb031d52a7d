"""Collector -> aggregator -> every tier, over real gRPC, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from sysmon.aggregator import maintenance
from sysmon.core.batch import SeriesResolver, samples_events
from sysmon.core.bus import SAMPLES, RedisBus
from sysmon.core.hot import HotTier
from sysmon.pb.v1 import events_pb2
from tests.conftest import AggregatorFactory
from tests.helpers import running_collector, wait_for

OTEL_NAMES = {
    "system.cpu.utilization",
    "system.cpu.load_average.1m",
    "system.memory.usage",
    "system.paging.usage",
    "system.filesystem.usage",
    "system.filesystem.utilization",
    "system.network.io",
    "system.process.count",
    "system.uptime",
}


async def test_collector_data_reaches_every_tier(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    agg = await start_aggregator()
    bus = RedisBus(redis_client)
    events: list[events_pb2.SamplesEvent] = []

    async def listen() -> None:
        async for m in bus.subscribe(SAMPLES):
            events.extend(samples_events(m.payload))

    listener = asyncio.create_task(listen())
    try:
        async with running_collector(agg.address, host_id="node-a", labels={"env": "test"}) as c:
            # Acknowledged means committed in PostgreSQL.
            await wait_for(lambda: c.buffer.acked >= 4, message="four acknowledged batches")
            acked = c.buffer.acked
    finally:
        listener.cancel()

    # Raw tier: every acknowledged batch's samples, under OpenTelemetry names.
    names = {r["name"] for r in await pool.fetch("SELECT DISTINCT s.name FROM samples_raw r JOIN series s USING "
                                                 "(series_id) WHERE s.host_id = 'node-a'")}
    assert names >= OTEL_NAMES
    committed = await pool.fetchval("SELECT committed FROM ingest_sessions WHERE host_id = 'node-a'")
    assert sum(r.upper - r.lower for r in committed) >= acked
    host = await pool.fetchrow("SELECT labels, cpu_count FROM hosts WHERE host_id = 'node-a'")
    assert host["labels"] == {"env": "test"}
    assert host["cpu_count"] >= 1
    per_core = await pool.fetchval(
        "SELECT count(DISTINCT attributes->>'cpu') FROM series WHERE name = 'system.cpu.utilization'"
    )
    assert per_core >= 2  # "total" and at least one core

    # Hot tier: latest values and recent frames in Redis.
    hot = HotTier(redis_client)
    latest = await hot.latest("node-a")
    described = await hot.series("node-a")
    assert set(latest) <= set(described)
    assert {d["name"] for d in described.values()} >= OTEL_NAMES
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert len(await hot.frames("node-a", now_ms - 60_000, now_ms + 1000)) >= 4
    assert "node-a" in await hot.hosts_last_seen()
    named = await hot.hosts_last_seen(["node-a", "nobody"])
    assert list(named) == ["node-a"]
    assert abs(named["node-a"] - now_ms) < 60_000

    # Bus: normalized batches. Series are described when first published; a consumer resolves the
    # rest from what it saw or, having joined late, from the hot tier.
    assert len(events) >= 2, "SamplesEvents on the bus"
    assert len(events[0].series) > 0
    assert len(events[-1].series) < len(events[0].series)
    for joined_at in (0, len(events) - 1):
        resolver = SeriesResolver(hot.series)
        seen: set[str] = set()
        for ev in events[joined_at:]:
            batch = await resolver.batch(ev)
            assert batch.host_id == "node-a"
            assert len(batch.series) == len({i for f in batch.frame_ids for i in f})
            seen |= {s.name for s in batch.series}
        assert resolver.unresolved == 0
        assert seen >= OTEL_NAMES

    # Rollups: once the minute and the hour are over, both tiers hold the data.
    run = await maintenance.rollup_once(agg.storage, now=datetime.now(UTC) + timedelta(hours=2))
    assert run is not None
    m1 = await pool.fetchval("SELECT count(*) FROM rollup_1m")
    h1 = await pool.fetchval("SELECT count(*) FROM rollup_1h")
    series_count = await pool.fetchval("SELECT count(DISTINCT series_id) FROM samples_raw")
    assert m1 >= series_count
    assert h1 >= series_count
    raw_total = await pool.fetchval("SELECT count(*) FROM samples_raw")
    assert await pool.fetchval("SELECT sum(count) FROM rollup_1h") == raw_total


async def test_batches_of_many_collectors_arriving_apart_share_a_commit(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    from prometheus_client import REGISTRY

    from tests.helpers import RawClient, make_batch

    # Eight collectors' batches of 13 samples arrive one at a time, each after the last was
    # received. The linger holds the commit open until the group reaches commit_max_samples (100):
    # one commit for all eight, where committing at once would make eight.
    agg = await start_aggregator(writers=1, commit_linger="60s", commit_max_samples=100)
    values = tuple(float(i) for i in range(13))

    def metric(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(RawClient(agg.address, host_id=f"group-{i}", session_id="s"))
                   for i in range(8)]
        commits = metric("sysmon_aggregator_commit_seconds_count")
        for c in clients:
            received = metric("sysmon_aggregator_batches_total", outcome="accepted") + 1
            c.send(make_batch(c.host_id, "s", 1, values=values))
            await wait_for(lambda n=received: metric("sysmon_aggregator_batches_total", outcome="accepted") >= n,
                           message="the batch received")
        await wait_for(lambda: all(c.acked == {1} for c in clients), within=30, message="all eight acked")
        assert metric("sysmon_aggregator_commit_seconds_count") - commits == 1
    rows = await pool.fetchval("SELECT count(*) FROM samples_raw r JOIN series s USING (series_id) "
                               "WHERE s.host_id LIKE 'group-%'")
    assert rows == 8 * 13


async def test_latest_values_outlive_the_frames_per_layout_and_read_the_older_form(
    redis_client: aioredis.Redis,
) -> None:
    from sysmon.core.batch import NormalizedBatch
    from sysmon.core.hot import frames_key, latest_key
    from sysmon.core.metrics import Series

    hot = HotTier(redis_client, window_ms=60_000)
    s = [Series(i, "quiet", "m", {"i": str(i)}, "1") for i in (1, 2, 3)]
    now = int(datetime.now(UTC).timestamp() * 1000)
    # Two layouts (series 1+2 every interval, series 3 only now and then), then a newer frame of
    # the first layout.
    await hot.write([NormalizedBatch("quiet", "s", 1, s, [now - 2000, now - 1000], [[1, 2], [3]], [[1.0, 2.0], [3.0]])],
                    now)
    # Written before layout fields existed: "time value" under the series id, older than the above.
    await redis_client.hset(latest_key("quiet"), mapping={"4": f"{now - 5000} 4.5", "1": f"{now - 9000} -1.0"})
    await redis_client.delete(frames_key("quiet"))  # the frames expired: only the latest hash is left
    assert await hot.latest("quiet") == {1: (now - 2000, 1.0), 2: (now - 2000, 2.0), 3: (now - 1000, 3.0),
                                         4: (now - 5000, 4.5)}
    assert len(await redis_client.hkeys(latest_key("quiet"))) == 4  # two layouts + the two older fields
