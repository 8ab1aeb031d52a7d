"""PostgreSQL going away: the hot tier stays live, nothing is acknowledged, nothing is lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from sysmon.core.embedded import EmbeddedPostgres
from sysmon.core.hot import HotTier
from tests.conftest import AggregatorFactory
from tests.helpers import running_collector, wait_for


async def test_postgres_down_then_back(
    start_aggregator: AggregatorFactory, short_dir: Path, redis_client: aioredis.Redis
) -> None:
    pg = EmbeddedPostgres(short_dir, tuning={"fsync": "off"})
    dsn = await asyncio.to_thread(pg.start)
    try:
        agg = await start_aggregator(postgres_url=dsn)
        hot = HotTier(redis_client)
        async with running_collector(agg.address, host_id="pgdown", interval="100ms", ack_timeout="3s") as c:
            await wait_for(lambda: c.buffer.acked >= 5, message="batches stored")
            await asyncio.to_thread(pg.stop)
            acked_before = c.buffer.acked

            # Nothing is acknowledged while PostgreSQL is away; the collector holds on to its batches.
            await wait_for(lambda: not agg.storage.ready.is_set(), message="aggregator notices")
            await wait_for(lambda: len(c.buffer) >= 20, message="collector buffering")
            assert c.buffer.acked - acked_before <= 3  # at most what was in flight when it stopped

            # The hot tier keeps up meanwhile.
            def newest_ms() -> int:
                return int(datetime.now(UTC).timestamp() * 1000)

            seen = newest_ms()
            await wait_for(lambda: _has_frames_after(hot, "pgdown", seen), message="hot tier live without PG")

            await asyncio.to_thread(pg.start)
            await wait_for(agg.storage.ready.is_set, within=30, message="aggregator reconnects")
            c.paused = True
            await wait_for(lambda: len(c.buffer) == 0, within=60, message="buffered batches stored")
            produced = c.stats.samples
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM samples_raw") == produced
            assert await conn.fetchval(
                "SELECT count(*) FROM (SELECT DISTINCT series_id, ts FROM samples_raw) d"
            ) == produced
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.stop)


async def _has_frames_after(hot: HotTier, host: str, after_ms: int) -> bool:
    return bool(await hot.frames(host, after_ms, after_ms + 60_000))
