"""A storage job that fails on a real PostgreSQL error is a WARNING naming the job and its error and
`sysmon_aggregator_storage_job_failing{job} 1` in /metrics, until it works again: for sealing,
rollups and retention, each through the aggregator's own job bookkeeping (maintenance.Jobs)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from sysmon.aggregator import maintenance
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH
from tests.conftest import AggregatorFactory
from tests.helpers import start_idle_aggregator

HOST = "jobs-host"
SID = series_id(HOST, "system.cpu.utilization", {"cpu": "total"})
SERIES = Series(SID, HOST, "system.cpu.utilization", {"cpu": "total"}, "1")


def failing(job: str) -> float | None:
    return REGISTRY.get_sample_value("sysmon_aggregator_storage_job_failing", {"job": job})


def job_warning(caplog: pytest.LogCaptureFixture, job: str) -> str:
    [line] = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.getMessage().startswith(f"storage job {job} failed")]
    return line


async def test_a_failing_sealing_job_is_a_warning_and_a_metric_until_it_works(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    agg = await start_idle_aggregator(start_aggregator)
    jobs = maintenance.Jobs(agg.storage)

    await pool.execute("ALTER TABLE raw_sealed_hours RENAME TO raw_sealed_hours_away")
    try:
        with caplog.at_level(logging.WARNING, logger="sysmon.aggregator.maintenance"):
            await jobs.run("sealing", lambda: maintenance.seal_once(agg.storage))
        assert failing("sealing") == 1.0
        line = job_warning(caplog, "sealing")
        assert line.startswith("storage job sealing failed: UndefinedTableError")
        assert "raw_sealed_hours" in line
    finally:
        await pool.execute("ALTER TABLE raw_sealed_hours_away RENAME TO raw_sealed_hours")
    await jobs.run("sealing", lambda: maintenance.seal_once(agg.storage))
    assert failing("sealing") == 0.0


async def test_a_rollup_job_locked_out_is_a_warning_and_a_metric_until_it_works(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's VACUUM FULL (or ALTER TABLE) holds rollup_1m; with a lock_timeout set on the
    database, as operators do so that nothing queues behind such a lock, the job gives up."""
    agg = await start_idle_aggregator(start_aggregator)
    assert agg.storage.pool is not None
    assert agg.storage.writer is not None
    jobs = maintenance.Jobs(agg.storage)
    now = datetime.now(UTC)
    minute = partitions.floor_time(now - timedelta(minutes=10), timedelta(minutes=1))
    t_ms = int((minute + timedelta(seconds=5) - EPOCH) / timedelta(milliseconds=1))
    stored = await agg.storage.writer.store([NormalizedBatch(HOST, "s1", 1, [SERIES], [t_ms], [[SID]], [[0.75]])])
    assert len(stored.stored) == 1

    await pool.execute(f"ALTER DATABASE {await pool.fetchval('SELECT current_database()')} SET lock_timeout = '200ms'")
    await agg.storage.pool.expire_connections()  # its sessions start again, with the setting
    operator = await asyncpg.connect(pg_dsn)
    held = operator.transaction()
    await held.start()
    await operator.execute("LOCK TABLE rollup_1m IN ACCESS EXCLUSIVE MODE")
    try:
        with caplog.at_level(logging.WARNING, logger="sysmon.aggregator.maintenance"):
            assert await jobs.run("rollups", lambda: maintenance.rollup_once(agg.storage)) is None
        assert failing("rollups") == 1.0
        assert job_warning(caplog, "rollups") == (
            "storage job rollups failed: LockNotAvailableError: canceling statement due to lock timeout")
    finally:
        await held.rollback()
        await operator.close()

    run = await jobs.run("rollups", lambda: maintenance.rollup_once(agg.storage))
    assert isinstance(run, rollups.RollupRun)
    assert failing("rollups") == 0.0
    # Nothing lost: the minute the failed run could not write is written by the next one.
    row = await pool.fetchrow("SELECT min, max, count FROM rollup_1m WHERE series_id = $1 AND bucket = $2",
                              SID, minute)
    assert tuple(row) == (0.75, 0.75, 1)


async def test_a_retention_job_that_cannot_drop_a_partition_is_a_warning_and_a_metric_until_it_works(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone keeps a view over an expired hour (an incident's samples, say): PostgreSQL refuses
    to drop the partition under it, until the view goes."""
    agg = await start_idle_aggregator(start_aggregator)
    assert agg.storage.pool is not None
    jobs = maintenance.Jobs(agg.storage)
    now = datetime.now(UTC)
    old = now - timedelta(hours=30)
    expired = partitions.partition_for(partitions.RAW, partitions.floor_time(old, timedelta(hours=1))).name
    async with agg.storage.pool.acquire() as conn:
        await agg.storage.ensure_partitions(conn, old)  # as an aggregator 30 hours ago made them
        await conn.execute("INSERT INTO raw_frames VALUES ($1, $2, $3, $4)", HOST, old, [SID], [0.5])
        await conn.execute(f"CREATE VIEW incident_samples AS SELECT * FROM {expired}")

    def retention() -> Awaitable[list[str]]:
        return maintenance.retention_once(agg.storage, agg.settings, now)

    async def raw_partition_names() -> set[str]:
        async with pool.acquire() as c:
            return {p.name for p in await rollups.existing_partitions(c, partitions.RAW.table)}

    with caplog.at_level(logging.WARNING, logger="sysmon.aggregator.maintenance"):
        assert await jobs.run("retention", retention) is None
    assert failing("retention") == 1.0
    line = job_warning(caplog, "retention")
    assert line.startswith("storage job retention failed: DependentObjectsStillExistError")
    assert expired in line
    assert expired in await raw_partition_names()

    await pool.execute("DROP VIEW incident_samples")
    dropped = await jobs.run("retention", retention)
    assert failing("retention") == 0.0
    assert isinstance(dropped, list)
    assert expired in dropped
    assert expired not in await raw_partition_names()
    assert await pool.fetchval("SELECT count(*) FROM samples_raw WHERE ts = $1", old) == 0


async def test_a_series_the_rollup_job_cannot_compute_is_skipped_and_counted(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    """One series' 1-minute rows sum past the 1-hour tier's integer count (rows damaged by hand, say):
    PostgreSQL refuses its 1-hour bucket; the job skips that series alone, still works, and says how
    many series it skipped in /metrics."""
    agg = await start_idle_aggregator(start_aggregator)
    jobs = maintenance.Jobs(agg.storage)
    hour = partitions.floor_time(datetime.now(UTC) - timedelta(hours=3), timedelta(hours=1))
    bad = series_id(HOST, "system.cpu.utilization", {"cpu": "damaged"})
    rows = [(SID, hour + timedelta(minutes=m), 12) for m in range(2)]
    rows += [(bad, hour + timedelta(minutes=m), 2**31 - 1) for m in range(2)]
    await pool.executemany("INSERT INTO rollup_1m VALUES ($1, $2, 0.1, 0.9, 5.0, $3)", rows)
    await pool.execute("INSERT INTO rollup_invalidations VALUES ('1h', $1, $2)", hour, hour + timedelta(hours=1))

    def skipped(tier: str) -> float:
        return REGISTRY.get_sample_value("sysmon_aggregator_rollup_series_skipped_total", {"tier": tier}) or 0.0

    before = skipped("1h")
    run = await jobs.run("rollups", lambda: maintenance.rollup_once(agg.storage))
    assert isinstance(run, rollups.RollupRun)
    assert run.skipped["1h"] == [bad]
    assert skipped("1h") - before == 1
    assert failing("rollups") == 0.0
    counts = {r[0]: r[1] for r in await pool.fetch("SELECT series_id, count FROM rollup_1h WHERE bucket = $1", hour)}
    assert counts == {SID: 24}  # the other series was not held back
