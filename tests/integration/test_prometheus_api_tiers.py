"""The Prometheus API past the raw tier's retention: minutely rollups stand in for raw samples, so a
query over a range whose raw samples are gone still answers (a gauge's mean per minute)."""

from __future__ import annotations

import time

import asyncpg

from sysmon.aggregator import maintenance
from tests.gateway_helpers import running_gateway, write_history


async def test_old_ranges_come_from_the_rollups(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    await write_history(agg.address, "old-host", hours=3, every_s=30, values=(0.25, 0.75))
    assert await maintenance.rollup_once(agg.storage) is not None
    # As retention will: the raw samples older than an hour are gone, the rollups stay.
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("DELETE FROM raw_frames WHERE ts < now() - interval '1 hour'")
    await conn.execute("DELETE FROM samples_sealed")
    await conn.close()
    now = time.time()
    async with running_gateway(pg_dsn, redis_url, raw_retention="1h") as gw:
        r = await gw.http.get("/prometheus/api/v1/query_range", params={
            "query": 'avg_over_time(system_cpu_utilization_ratio{host="old-host", cpu="0"}[10m])',
            "start": f"{now - 2.5 * 3600:.0f}", "end": f"{now - 600:.0f}", "step": "10m"})
        assert r.status_code == 200, r.text
        (series,) = r.json()["data"]["result"]
        values = [float(v) for _, v in series["values"]]
        # 2.5 h ago to 10 min ago every 10 minutes: older than the hour from rollups, the rest raw.
        assert len(values) == 15
        assert all(v == 0.25 for v in values)
