"""Periodic storage jobs: retention, rollups, sealing; and, on TimescaleDB, watching its own jobs.

Several aggregator replicas may run them; an advisory lock per job lets one at a time work.
Each job fails alone: its failure is a WARNING naming it and its error (again every
FAILURE_LOG_EVERY_S while it keeps failing), and in /metrics
(`sysmon_aggregator_storage_job_runs_total{job,outcome}`, `..._job_failing{job}`,
`..._job_last_success_timestamp_seconds{job}`), so a silently stuck job is seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from sysmon.aggregator import telemetry
from sysmon.aggregator.storage import CONNECTION_ERRORS, Storage
from sysmon.core.backoff import wait_or_stop
from sysmon.core.settings import AggregatorSettings
from sysmon.core.storage import partitions, rollups, schema, sealing

log = logging.getLogger(__name__)

ROLLUP_LOCK = 0x5359534D01
RETENTION_LOCK = 0x5359534D02
FAILURE_LOG_EVERY_S = 600.0


async def _locked(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def rollup_once(storage: Storage, now: datetime | None = None) -> rollups.RollupRun | None:
    assert storage.pool is not None
    async with storage.pool.acquire() as conn:
        if not await _locked(conn, ROLLUP_LOCK):
            return None
        try:
            run = await rollups.run_rollups(conn, now or datetime.now(UTC))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK)
    for tier, skipped in run.skipped.items():
        telemetry.ROLLUP_SKIPPED.labels(tier).inc(len(skipped))
    return run


async def seal_once(storage: Storage, now: datetime | None = None) -> sealing.SealRun | None:
    """Seal closed hours (after their rollups: the same lock keeps the two jobs in turn)."""
    assert storage.pool is not None
    async with storage.pool.acquire() as conn:
        if not await _locked(conn, ROLLUP_LOCK):
            return None
        try:
            run = await sealing.seal_once(conn, now or datetime.now(UTC), mode=storage.mode or "plain")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK)
    telemetry.SEALED_SAMPLES.inc(run.samples)
    telemetry.SEALED_BYTES.inc(run.encoded_bytes)
    telemetry.SEAL_SECONDS.inc(run.seconds)
    return run


async def retention_once(storage: Storage, settings: AggregatorSettings, now: datetime | None = None) -> list[str]:
    """Create the partitions ahead, drop those past retention (plain path; TimescaleDB's policies do
    that on its path), forget old ingest sessions and sealed-hour records (both paths)."""
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
                    partitions.SEALED.table: settings.raw_retention,
                    partitions.ROLLUP_1M.table: settings.rollup_1m_retention,
                    partitions.ROLLUP_1H.table: settings.rollup_1h_retention,
                }
                for table in partitions.TABLES:
                    dropped += await rollups.drop_expired(conn, table, now, keep[table.table])
            # A session silent for longer than raw retention can no longer send acceptable batches.
            await conn.execute("DELETE FROM ingest_sessions WHERE updated_at < $1", now - settings.raw_retention)
            await conn.execute("DELETE FROM raw_sealed_hours WHERE hour < $1",
                               now - settings.raw_retention - partitions.RAW.interval)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
    telemetry.PARTITIONS_DROPPED.inc(len(dropped))
    if dropped:
        log.info("retention dropped %s", ", ".join(dropped))
    return dropped


async def timescale_jobs_once(storage: Storage) -> list[str]:
    """TimescaleDB's own jobs (retention policies) whose last run failed, each named with its error."""
    assert storage.pool is not None
    failed = []
    for r in await storage.pool.fetch(schema.TIMESCALE_JOBS_SQL):
        name = f"timescaledb {r['proc_name']} on {r['hypertable_name']} (job {r['job_id']})"
        bad = r["last_run_status"] == "Failed"
        telemetry.TIMESCALE_JOB_FAILING.labels(r["proc_name"], r["hypertable_name"]).set(1 if bad else 0)
        if bad:
            failed.append(f"{name}: {r['last_error'] or 'no error recorded'} ({r['total_failures']} failures)")
    return failed


class Jobs:
    """Runs each job alone, and says when one fails: a warning and its metrics."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._failing_since: dict[str, float] = {}
        self._logged: dict[str, float] = {}

    async def run(self, name: str, job: Callable[[], Awaitable[object]]) -> object | None:
        try:
            result = await job()
        except CONNECTION_ERRORS as e:
            self.storage.mark_down(e)
            return None
        except (asyncpg.PostgresError, ValueError, RuntimeError) as e:
            self.failed(name, f"{e.__class__.__name__}: {e}")
            return None
        telemetry.JOB_RUNS.labels(name, "ok").inc()
        telemetry.JOB_FAILING.labels(name).set(0)
        telemetry.JOB_LAST_SUCCESS.labels(name).set(time.time())
        if self._failing_since.pop(name, None) is not None:
            log.info("storage job %s works again", name)
        return result

    def failed(self, name: str, error: str) -> None:
        telemetry.JOB_RUNS.labels(name, "error").inc()
        telemetry.JOB_FAILING.labels(name).set(1)
        now = time.monotonic()
        self._failing_since.setdefault(name, now)
        if now - self._logged.get(name, -FAILURE_LOG_EVERY_S) >= FAILURE_LOG_EVERY_S:
            self._logged[name] = now
            log.warning("storage job %s failed: %s", name, error)


async def run(storage: Storage, settings: AggregatorSettings, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    jobs = Jobs(storage)
    next_retention = 0.0
    while not stop.is_set():
        await storage.ready.wait()
        if loop.time() >= next_retention:
            await jobs.run("retention", lambda: retention_once(storage, settings))
            next_retention = loop.time() + settings.retention_interval.total_seconds()
            if storage.mode == "timescale":
                failed = await jobs.run("timescaledb jobs", lambda: timescale_jobs_once(storage))
                for line in failed or []:
                    jobs.failed("timescaledb", line)
        await jobs.run("rollups", lambda: rollup_once(storage))
        if storage.ready.is_set():
            sealed = await jobs.run("sealing", lambda: seal_once(storage))
            if isinstance(sealed, sealing.SealRun) and sealed.failed:
                jobs.failed("sealing", "; ".join(f"hour {h.isoformat()}: {e}" for h, e in sealed.failed))
        await wait_or_stop(stop, settings.rollup_interval.total_seconds())
