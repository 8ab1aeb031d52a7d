"""The aggregator's PostgreSQL connection: made and migrated in the background, watched, remade.

The aggregator serves from the first second whether or not PostgreSQL is there: while it is
not, batches still reach the hot tier and the bus, and collectors are told to keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from sysmon.aggregator import telemetry
from sysmon.core.backoff import Backoff, wait_any, wait_or_stop
from sysmon.core.settings import AggregatorSettings
from sysmon.core.storage import partitions, rollups, schema
from sysmon.core.storage.schema import Mode
from sysmon.core.storage.writer import SampleWriter

log = logging.getLogger(__name__)

# asyncpg raises these when the server is gone or unreachable, as opposed to rejecting a statement.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


def partition_plan(settings: AggregatorSettings) -> list[tuple[partitions.PartitionedTable, timedelta]]:
    """Each partitioned table whose partitions are made ahead, with how far back they must reach.
    Sealed blocks' partitions are made by the sealing job, for the hours it seals."""
    return [
        (partitions.RAW, settings.raw_retention),
        (partitions.ROLLUP_1M, max(settings.rollup_1m_retention, settings.raw_retention)),
        (partitions.ROLLUP_1H, max(settings.rollup_1h_retention, settings.raw_retention)),
    ]


class Storage:
    def __init__(self, dsn: str, settings: AggregatorSettings, *, pool_size: int | None = None):
        self.dsn = dsn
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.mode: Mode | None = None
        self.writer: SampleWriter | None = None
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self.backoff = Backoff(initial=0.5, maximum=10.0)
        self._pool_size = pool_size or settings.writers + 4

    def retry_after(self) -> float:
        return min(self.backoff.maximum, self.backoff.initial * 2 ** max(self.backoff.attempt - 1, 0))

    def mark_down(self, reason: object) -> None:
        if self.ready.is_set():
            log.warning("PostgreSQL unavailable, no batch is acknowledged until it is back: %s", reason)
        self.ready.clear()
        telemetry.STORAGE_UP.set(0)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, migrate, then keep checking; on failure reconnect with backoff."""
        while not stop.is_set():
            if not self.ready.is_set():
                try:
                    await self._connect()
                except CONNECTION_ERRORS as e:
                    delay = self.backoff.next_delay()
                    log.warning("PostgreSQL not reachable (%s); retrying in %.1fs", e, delay)
                    await wait_or_stop(stop, delay)
                    continue
                self.backoff.reset()
                self.ready.set()
                telemetry.STORAGE_UP.set(1)
                log.info("PostgreSQL ready (%s storage)", self.mode)
            self._wake.clear()
            # Re-check now and then, or at once when a writer reports a failure.
            await wait_any(self._wake, stop, seconds=5.0)
            if self.ready.is_set() and not self._wake.is_set():
                try:
                    assert self.pool is not None
                    await self.pool.fetchval("SELECT 1", timeout=5)
                except CONNECTION_ERRORS as e:
                    self.mark_down(e)

    async def _connect(self) -> None:
        if self.pool is None:
            self.pool = await schema.create_pool(
                self.dsn, min_size=1, max_size=self._pool_size, timeout=10, command_timeout=60
            )
        else:
            await self.pool.expire_connections()
        async with self.pool.acquire(timeout=10) as conn:
            self.mode = await schema.migrate(conn, self.settings.storage_mode)
            if self.mode == "plain":
                await self.ensure_partitions(conn)
            else:
                await schema.apply_timescale_policies(
                    conn,
                    raw=self.settings.raw_retention,
                    rollup_1m=self.settings.rollup_1m_retention,
                    rollup_1h=self.settings.rollup_1h_retention,
                )
        if self.writer is None:
            self.writer = SampleWriter(self.pool, self.mode)

    async def ensure_partitions(self, conn: asyncpg.Connection, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        ahead = max(self.settings.max_future, timedelta(hours=2))
        for table, keep in partition_plan(self.settings):
            await rollups.ensure_partitions(conn, table, now, keep, ahead)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
