"""Retention on the plain PostgreSQL path: expired partitions go, recent data stays, partitions
are kept ahead of the present; run by an aggregator's retention job against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from sysmon.aggregator import maintenance
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.settings import AggregatorSettings
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH
from tests.conftest import AggregatorFactory
from tests.helpers import start_idle_aggregator

HOST = "ret-host"
SID = series_id(HOST, "system.cpu.utilization", {"cpu": "total"})
SERIES = Series(SID, HOST, "system.cpu.utilization", {"cpu": "total"}, "1")


async def insert_raw(conn: asyncpg.Connection, *times: datetime) -> None:
    await conn.executemany("INSERT INTO raw_frames VALUES ($1, $2, $3, $4)", [(HOST, t, [SID], [0.5]) for t in times])


async def insert_rollup(conn: asyncpg.Connection, table: str, *times: datetime) -> None:
    await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, 0.1, 0.9, 5.0, 10)", [(SID, t) for t in times])


async def times_in(pool: asyncpg.Pool, table: str) -> set[datetime]:
    col = "ts" if table == "samples_raw" else "bucket"
    return {r[0] for r in await pool.fetch(f"SELECT {col} FROM {table}")}


async def partition_names(pool: asyncpg.Pool, table: str) -> set[str]:
    async with pool.acquire() as conn:
        return {p.name for p in await rollups.existing_partitions(conn, table)}


def batch_at(t: datetime, seq: int) -> NormalizedBatch:
    t_ms = int((t - EPOCH).total_seconds() * 1000)
    return NormalizedBatch(HOST, "ret-session", seq, [SERIES], [t_ms], [[SID]], [[0.25]])


async def test_default_retention_drops_only_expired_data(start_aggregator: AggregatorFactory,
                                                         pool: asyncpg.Pool) -> None:
    agg = await start_idle_aggregator(start_aggregator)
    now = datetime.now(UTC).replace(microsecond=0)
    assert agg.storage.pool is not None
    async with agg.storage.pool.acquire() as conn:
        # Partitions as an aggregator 30 hours ago made them, and reaching far enough back for the
        # old rollups.
        await agg.storage.ensure_partitions(conn, now - timedelta(hours=30))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1M, now, timedelta(days=10), timedelta(hours=2))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1H, now, timedelta(days=130), timedelta(hours=2))
        raw_old, raw_kept, raw_recent = now - timedelta(hours=30), now - timedelta(hours=23), now - timedelta(hours=1)
        m1_old, m1_recent = now - timedelta(days=8), now - timedelta(days=1)
        # 1-hour partitions span 30 days, so a row goes once its whole partition is past 90 days:
        # at 120 days at the latest.
        h1_old, h1_recent = now - timedelta(days=125), now - timedelta(days=10)
        await insert_raw(conn, raw_old, raw_kept, raw_recent)
        await insert_rollup(conn, "rollup_1m", m1_old, m1_recent)
        await insert_rollup(conn, "rollup_1h", h1_old, h1_recent)
        await conn.execute(
            "INSERT INTO ingest_sessions (host_id, session_id, updated_at) VALUES ($1, 'gone', $2), ($1, 'live', $3)",
            HOST, now - timedelta(hours=25), now - timedelta(hours=2),
        )
    before = {t: await partition_names(pool, t.table) for t in partitions.TABLES}

    dropped = await maintenance.retention_once(agg.storage, agg.settings, now)

    assert await times_in(pool, "samples_raw") == {raw_kept, raw_recent}
    assert await times_in(pool, "rollup_1m") == {m1_recent}
    assert await times_in(pool, "rollup_1h") == {h1_recent}
    sessions = {r[0] for r in await pool.fetch("SELECT session_id FROM ingest_sessions WHERE host_id = $1", HOST)}
    assert sessions == {"live"}

    after = {t: await partition_names(pool, t.table) for t in partitions.TABLES}
    assert set(dropped) == set().union(*(before[t] - after[t] for t in partitions.TABLES))
    cutoffs = {partitions.RAW: timedelta(hours=24), partitions.ROLLUP_1M: timedelta(days=7),
               partitions.ROLLUP_1H: timedelta(days=90)}
    for table, retention in cutoffs.items():
        async with pool.acquire() as conn:
            existing = await rollups.existing_partitions(conn, table.table)
        # Nothing left that lies wholly past retention; everything that reaches into it is still there.
        assert all(p.hi > now - retention for p in existing), table
        gone = before[table] - after[table]
        assert gone, f"{table.table}: expired partitions were dropped"
        assert all(p.name not in gone for p in existing)
    assert partitions.partition_for(partitions.RAW, partitions.floor_time(raw_old, timedelta(hours=1))).name \
        in dropped

    # Partitions ahead of the present: a later run (six hours on) makes room for that time's future.
    later = now + timedelta(hours=6)
    writer = agg.storage.writer
    assert writer is not None
    with pytest.raises(asyncpg.CheckViolationError):  # no partition there yet
        await writer.store([batch_at(later + timedelta(hours=1), 1)])
    await maintenance.retention_once(agg.storage, agg.settings, later)
    res = await writer.store([batch_at(later + timedelta(hours=1), 1), batch_at(now + timedelta(hours=1), 2)])
    assert len(res.stored) == 2
    assert {later + timedelta(hours=1), now + timedelta(hours=1)} <= await times_in(pool, "samples_raw")


async def test_shorter_configured_retention(start_aggregator: AggregatorFactory, pool: asyncpg.Pool) -> None:
    agg = await start_idle_aggregator(start_aggregator)
    now = datetime.now(UTC).replace(microsecond=0)
    settings = AggregatorSettings(raw_retention="2h", rollup_1m_retention="1d", rollup_1h_retention="30d")
    assert agg.storage.pool is not None
    async with agg.storage.pool.acquire() as conn:
        raw = [now - timedelta(hours=h) for h in (5, 3, 1)]
        m1 = [now - timedelta(days=3), now - timedelta(hours=2)]
        h1 = [now - timedelta(days=70), now - timedelta(days=10)]
        await insert_raw(conn, *raw)
        await insert_rollup(conn, "rollup_1m", *m1)
        await insert_rollup(conn, "rollup_1h", *h1)

    dropped = await maintenance.retention_once(agg.storage, settings, now)

    assert await times_in(pool, "samples_raw") == {raw[2]}
    assert await times_in(pool, "rollup_1m") == {m1[1]}
    assert await times_in(pool, "rollup_1h") == {h1[1]}
    assert dropped
    async with pool.acquire() as conn:
        raw_parts = await rollups.existing_partitions(conn, partitions.RAW.table)
    assert min(p.lo for p in raw_parts) > now - timedelta(hours=3)
    assert max(p.hi for p in raw_parts) >= now + timedelta(hours=2)
