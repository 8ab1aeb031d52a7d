"""Periodic storage jobs on the plain PostgreSQL path: rollups, partitions, retention.

Several aggregator replicas may run them; an advisory lock per job lets one at a time work.
On the TimescaleDB path its own background jobs do all of this.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from sysmon.aggregator import telemetry
from sysmon.aggregator.storage import CONNECTION_ERRORS, Storage, partition_plan
from sysmon.core.backoff import wait_or_stop
from sysmon.core.settings import AggregatorSettings
from sysmon.core.storage import partitions, rollups

log = logging.getLogger(__name__)

ROLLUP_LOCK = 0x5359534D01
RETENTION_LOCK = 0x5359534D02


async def _locked(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def rollup_once(storage: Storage, now: datetime | None = None) -> rollups.RollupRun | None:
    assert storage.pool is not None
    async with storage.pool.acquire() as conn:
        if not await _locked(conn, ROLLUP_LOCK):
            return None
        try:
            return await rollups.run_rollups(conn, now or datetime.now(UTC))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK)


async def retention_once(storage: Storage, settings: AggregatorSettings, now: datetime | None = None) -> list[str]:
    """Create the partitions ahead, drop those past retention (plain path; TimescaleDB's policies do
    that on its path), forget old ingest sessions (both paths)."""
    assert storage.pool is not None
    now = now or datetime.now(UTC)
    dropped: list[str] = []
    async with storage.pool.acquire() as conn:
        if not await _locked(conn, RETENTION_LOCK):
            return dropped
        try:
            if storage.mode == "plain":
                await storage.ensure_partitions(conn, now)
                keep = {
                    partitions.RAW.table: settings.raw_retention,
                    partitions.ROLLUP_1M.table: settings.rollup_1m_retention,
                    partitions.ROLLUP_1H.table: settings.rollup_1h_retention,
                }
                for table, _ in partition_plan(settings):
                    dropped += await rollups.drop_expired(conn, table, now, keep[table.table])
            # A session silent for longer than raw retention can no longer send acceptable batches.
            await conn.execute("DELETE FROM ingest_sessions WHERE updated_at < $1", now - settings.raw_retention)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
    telemetry.PARTITIONS_DROPPED.inc(len(dropped))
    if dropped:
        log.info("retention dropped %s", ", ".join(dropped))
    return dropped


async def run(storage: Storage, settings: AggregatorSettings, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    next_retention = 0.0
    while not stop.is_set():
        await storage.ready.wait()
        try:
            if loop.time() >= next_retention:
                await retention_once(storage, settings)
                next_retention = loop.time() + settings.retention_interval.total_seconds()
            if storage.mode == "plain":
                await rollup_once(storage)
                telemetry.ROLLUP_RUNS.labels("ok").inc()
        except CONNECTION_ERRORS as e:
            storage.mark_down(e)
        except asyncpg.PostgresError as e:
            telemetry.ROLLUP_RUNS.labels("error").inc()
            log.error("storage maintenance failed: %s", e)
        await wait_or_stop(stop, settings.rollup_interval.total_seconds())
