"""Rollups and retention for the plain PostgreSQL path.

Each commit of raw samples logs the time range it touched; the rollup job recomputes every
completed 1-minute bucket in the logged ranges from raw samples, and logs what it recomputed
for the 1-hour tier, which is computed from the 1-minute rollups the same way. A bucket is
always recomputed whole, so late samples (a collector replaying its buffer) leave it exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from sysmon.core.storage import partitions
from sysmon.core.storage.partitions import Partition, PartitionedTable, floor_time

log = logging.getLogger(__name__)

Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class RollupTier:
    name: str  # the invalidation log's tier tag
    table: str
    source: str
    bucket: timedelta
    select: str  # aggregate expressions over the source, in (min, max, sum, count) order
    time_column: str


# Sums are exact numerics: a float8 sum of a few samples near 1.8e308 overflows, and PostgreSQL
# raises rather than returning infinity (see sysmon.core.query.EXACT_SUM).
TIER_1M = RollupTier(
    "1m", "rollup_1m", "samples_raw", timedelta(minutes=1),
    "min(value), max(value), sum(value::text::numeric), count(*)", "ts",
)
TIER_1H = RollupTier(
    "1h", "rollup_1h", "rollup_1m", timedelta(hours=1), "min(min), max(max), sum(sum), sum(count)", "bucket"
)
# Recompute in slices so that one transaction never aggregates more than this span at once.
SLICE = timedelta(hours=1)
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1


def merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def plan(ranges: list[Range], bucket: timedelta, now: datetime) -> tuple[list[Range], list[Range]]:
    """Split logged ranges into bucket-aligned ranges ready now and the open remainder.

    Ready: whole buckets that ended by `now`. Remainder: the still-open bucket, kept in the log
    so that it is computed once, when it closes.
    """
    closed_until = floor_time(now, bucket)
    ready: list[Range] = []
    later: list[Range] = []
    for lo, hi in merge(ranges):
        a = floor_time(lo, bucket)
        b = floor_time(hi, bucket)
        if b < hi:
            b += bucket
        if a < closed_until:
            ready.append((a, min(b, closed_until)))
        if b > closed_until:
            later.append((max(a, closed_until), b))
    return merge(ready), merge(later)


def without_hours(ranges: list[tuple[datetime, datetime]], hours: set[datetime]) -> tuple[
    list[tuple[datetime, datetime]], int
]:
    """The ranges without the given (sealed) hours in them, whose rollups the sealing job's merges
    compute; and how many hours were taken out. Pure; ranges need not be aligned."""
    out: list[tuple[datetime, datetime]] = []
    removed: set[datetime] = set()
    hour = partitions.RAW.interval
    for lo, hi in ranges:
        cur = lo
        while cur < hi:
            h = floor_time(cur, hour)
            nxt = min(hi, h + hour)
            if h in hours:
                removed.add(h)
            elif out and out[-1][1] == cur:
                out[-1] = (out[-1][0], nxt)
            else:
                out.append((cur, nxt))
            cur = nxt
    return out, len(removed)


def slices(r: Range, size: timedelta = SLICE) -> list[Range]:
    out = []
    lo, hi = r
    while lo < hi:
        out.append((lo, min(hi, lo + size)))
        lo += size
    return out


@dataclass
class RollupRun:
    buckets_ranges: dict[str, list[Range]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    # Series whose buckets could not be computed (and were skipped), per tier.
    skipped: dict[str, list[int]] = field(default_factory=dict)


async def _recompute(conn: asyncpg.Connection, tier: RollupTier, lo: datetime, hi: datetime,
                     ids: tuple[int, int] = (INT8_MIN, INT8_MAX)) -> tuple[int, list[int]]:
    """Recompute the buckets of [lo, hi) for series ids in `ids`; returns (rows, series skipped).

    A statement that fails on the data (SQLSTATE class 22) is retried on each half of the series
    ids until the series at fault is found: one series that cannot be rolled up is skipped, with a
    warning, and never holds back the others.
    """
    # The whole id range is the usual case: no id condition to mislead the planner.
    narrowed = ids != (INT8_MIN, INT8_MAX)
    try:
        async with conn.transaction():
            status = await conn.execute(
                f"""
                INSERT INTO {tier.table} (series_id, bucket, min, max, sum, count)
                SELECT series_id, date_bin($3::interval, {tier.time_column}, 'epoch'), {tier.select}
                FROM {tier.source}
                WHERE {tier.time_column} >= $1 AND {tier.time_column} < $2
                      {"AND series_id BETWEEN $4 AND $5" if narrowed else ""}
                GROUP BY 1, 2
                ON CONFLICT (series_id, bucket) DO UPDATE
                SET min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum, count = EXCLUDED.count
                """,
                lo, hi, tier.bucket, *(ids if narrowed else ()),
            )
        return int(status.split()[-1]), []
    except asyncpg.DataError as e:
        a, b = ids
        if a == b:
            log.warning("rollup %s of series %d over [%s, %s) skipped: %s", tier.name, a, lo.isoformat(),
                        hi.isoformat(), e)
            return 0, [a]
        mid = a + (b - a) // 2
        left = await _recompute(conn, tier, lo, hi, (a, mid))
        right = await _recompute(conn, tier, lo, hi, (mid + 1, b))
        return left[0] + right[0], left[1] + right[1]


async def _run_tier(conn: asyncpg.Connection, tier: RollupTier, now: datetime, next_tier: str | None) -> tuple[
    list[Range], int, list[int]
]:
    rows_written = 0
    skipped: list[int] = []
    async with conn.transaction():
        logged = await conn.fetch("DELETE FROM rollup_invalidations WHERE tier = $1 RETURNING lo, hi", tier.name)
        ready, later = plan([(r["lo"], r["hi"]) for r in logged], tier.bucket, now)
        if tier.source == "samples_raw" and ready:
            # A sealed hour's raw partition holds only late samples: its rollups are recomputed by
            # the merge that seals them in (sysmon.core.storage.sealing), from all of its samples.
            hours = {r["hour"] for r in await conn.fetch(
                "SELECT hour FROM raw_sealed_hours WHERE hour >= $1 AND hour < $2",
                floor_time(ready[0][0], partitions.RAW.interval), ready[-1][1])}
            if hours:
                ready, _ = without_hours(ready, hours)
        for lo, hi in later:
            await conn.execute("INSERT INTO rollup_invalidations VALUES ($1, $2, $3)", tier.name, lo, hi)
        for r in ready:
            for lo, hi in slices(r):
                n, bad = await _recompute(conn, tier, lo, hi)
                rows_written += n
                skipped += bad
            if next_tier is not None:
                await conn.execute("INSERT INTO rollup_invalidations VALUES ($1, $2, $3)", next_tier, *r)
    return ready, rows_written, skipped


async def run_rollups(conn: asyncpg.Connection, now: datetime) -> RollupRun:
    """Bring rollup_1m and then rollup_1h up to date with everything committed so far."""
    run = RollupRun()
    for tier, nxt in ((TIER_1M, "1h"), (TIER_1H, None)):
        ready, rows, skipped = await _run_tier(conn, tier, now, nxt)
        run.buckets_ranges[tier.name] = ready
        run.rows[tier.name] = rows
        run.skipped[tier.name] = skipped
    return run


async def existing_partitions(conn: asyncpg.Connection, table: str) -> list[Partition]:
    rows = await conn.fetch(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = $1::regclass
        """,
        table,
    )
    parsed = (partitions.parse_bound(r["relname"], r["bound"]) for r in rows)
    return sorted(p for p in parsed if p is not None)


async def _create(conn: asyncpg.Connection, table: PartitionedTable, p: Partition) -> bool:
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {p.name} PARTITION OF {table.table} "
            f"FOR VALUES FROM ('{p.lo.isoformat()}') TO ('{p.hi.isoformat()}')"
        )
        if table.after_create:
            await conn.execute(table.after_create.format(name=p.name))
    except (asyncpg.InvalidObjectDefinitionError, asyncpg.DuplicateTableError, asyncpg.UniqueViolationError) as e:
        # Another aggregator created it (or an overlapping one) first; it covers the range. IF NOT
        # EXISTS does not cover two creating at once: the later fails on the name (pg_type's index).
        log.info("partition %s not created: %s", p.name, e)
        return False
    return True


async def ensure_partitions(
    conn: asyncpg.Connection, table: PartitionedTable, now: datetime, keep: timedelta, ahead: timedelta
) -> list[Partition]:
    """Create missing partitions so that [now - keep, now + ahead) is covered; returns those created."""
    have = {(p.lo, p.hi) for p in await existing_partitions(conn, table.table)}
    return [p for p in partitions.wanted(table, now, keep, ahead)
            if (p.lo, p.hi) not in have and await _create(conn, table, p)]


async def ensure_partition(conn: asyncpg.Connection, table: PartitionedTable, at: datetime) -> None:
    """The partition holding `at`, made if missing (an hour sealed, or merged, past the usual window)."""
    if not any(q.lo <= at < q.hi for q in await existing_partitions(conn, table.table)):
        await _create(conn, table, partitions.partition_for(table, floor_time(at, table.interval)))


async def drop_expired(conn: asyncpg.Connection, table: PartitionedTable, now: datetime, retention: timedelta) -> list[
    str
]:
    dropped = []
    for p in partitions.droppable(await existing_partitions(conn, table.table), now, retention):
        await conn.execute(f"DROP TABLE IF EXISTS {p.name}")
        dropped.append(p.name)
    return dropped
