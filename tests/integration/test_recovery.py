"""Coming back whole: the hot tier after Redis restarts empty, the fleet's status while Redis is
away, a collector's first batch after a restart, and what collectors log while the aggregator sends
batches back."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from sysmon.agent.collector import Collector
from sysmon.core.embedded import EmbeddedRedis
from sysmon.core.hot import HotTier
from sysmon.core.settings import AgentSettings
from sysmon.pb.v1 import control_pb2
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import running_gateway
from tests.helpers import running_collector, wait_for


async def test_the_hot_tier_is_whole_again_within_an_interval_of_redis_coming_back_empty(
    start_aggregator: AggregatorFactory, redis_client: aioredis.Redis, pg_dsn: str, redis_url: str
) -> None:
    agg = await start_aggregator()
    hot = HotTier(redis_client)
    async with running_collector(agg.address, host_id="hot-host", interval="500ms") as c:
        await wait_for(lambda: c.buffer.acked >= 2, message="collector stored")
        described = await hot.series("hot-host")
        assert described
        await redis_client.flushall()  # what a restart without persistence leaves
        lost_at = time.monotonic()
        await wait_for(lambda: _described(hot, len(described)), within=10, interval=0.02,
                       message="every series described again")
        took = time.monotonic() - lost_at
        # The next batch (one interval) describes everything again; not the 10-minute re-describe timer.
        assert took < 2 * 0.5 + 1.0, took
        async with running_gateway(pg_dsn, redis_url) as gw:
            r = await gw.http.get("/api/v1/query", params={"metric": "system.memory.usage", "host": "hot-host",
                                                            "start": "now-2m"})
            assert r.status_code == 200
            assert r.json()["tier"] == "hot"
            assert r.json()["series"]
            hosts = (await gw.http.get("/api/v1/hosts")).json()["hosts"]
            assert [(h["host"], h["status"], h["last_seen_source"]) for h in hosts] == [("hot-host", "up", "hot")]


async def test_during_a_redis_outage_hosts_stay_up_from_postgresql(
    start_aggregator: AggregatorFactory, pg_dsn: str, short_dir: Path
) -> None:
    """Redis away, samples still stored in PostgreSQL: the host list must not call the fleet stale
    (and page SysmonNoData for every host). Observed for several stale thresholds."""
    redis = EmbeddedRedis(short_dir)
    url = await asyncio.to_thread(redis.start)
    try:
        agg = await start_aggregator(redis=url)
        async with running_collector(agg.address, host_id="steady", interval="200ms", ack_timeout="3s") as c, \
                running_gateway(pg_dsn, url, stale_after="1s", down_after="3s") as gw:

            async def status() -> tuple[str, str]:
                r = await gw.http.get("/api/v1/hosts")
                assert r.status_code == 200, r.text
                (h,) = r.json()["hosts"]
                return h["status"], h["last_seen_source"]

            await wait_for(lambda: c.buffer.acked >= 3, message="collector stored")
            assert await status() == ("up", "hot")
            await asyncio.to_thread(redis.stop)
            acked = c.buffer.acked
            await wait_for(lambda: _status_is(status, ("up", "postgresql")), within=10,
                           message="the host list answered from PostgreSQL")
            # Three times the stale threshold (and past the down threshold): up all along.
            until = time.monotonic() + 3.5
            while time.monotonic() < until:
                assert await status() == ("up", "postgresql")
                await asyncio.sleep(0.2)
            # Because the samples really are stored meanwhile.
            await wait_for(lambda: c.buffer.acked >= acked + 5, message="stored without Redis")
    finally:
        await asyncio.to_thread(redis.stop)


async def _status_is(status: Any, want: tuple[str, str]) -> bool:
    return await status() == want


async def _described(hot: HotTier, n: int) -> bool:
    return len(await hot.series("hot-host")) >= n


async def test_a_collectors_first_batch_carries_every_rate(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    """Rates (CPU utilization, I/O) need two readings: the collector takes the first before its first
    batch, so a restarted collector loses none of them."""
    agg = await start_aggregator()
    async with running_collector(agg.address, host_id="fresh", interval="5s") as c:
        await wait_for(lambda: c.buffer.acked >= 1, message="first batch stored")
    first = await pool.fetch(
        """
        SELECT DISTINCT s.name FROM samples_raw r JOIN series s USING (series_id)
        WHERE s.host_id = 'fresh' AND r.ts = (SELECT min(ts) FROM samples_raw r2 JOIN series s2 USING (series_id)
                                              WHERE s2.host_id = 'fresh')
        """)
    names = {r["name"] for r in first}
    assert {"system.cpu.utilization", "system.network.io", "system.memory.usage"} <= names, names


def test_batches_sent_back_are_logged_once_per_reason_not_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    c = Collector(AgentSettings(aggregator="127.0.0.1:1", host_id="h"))
    with caplog.at_level(logging.INFO, logger="sysmon.agent.collector"):
        for seq in range(1, 101):
            c._log_nack(control_pb2.Nack(seqs=[seq], retry_after_ms=500, reason="PostgreSQL is unavailable",
                                         code=14))
    lines = [r for r in caplog.records if "sent back" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "UNAVAILABLE: PostgreSQL is unavailable" in lines[0].getMessage()
