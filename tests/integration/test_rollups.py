"""Rollups on the plain PostgreSQL path: exact 1-minute and 1-hour buckets, late data, open
buckets, and exactly-once storage of batches, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH, floor_time
from sysmon.core.storage.writer import SampleWriter

HOST = "roll-host"
SESSION = "sess-1"
STEP_MS = 5_000
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
SERIES = [
    Series(series_id(HOST, "system.cpu.utilization", {"cpu": str(c)}), HOST, "system.cpu.utilization",
           {"cpu": str(c)}, "1")
    for c in range(2)
] + [Series(series_id(HOST, "system.memory.usage", {"state": "used"}), HOST, "system.memory.usage",
            {"state": "used"}, "By")]

Key = tuple[int, datetime]  # (series_id, bucket)
Agg = tuple[float, float, float, int]  # (min, max, sum, count)


def ms(t: datetime) -> int:
    return int((t - EPOCH).total_seconds() * 1000)


def at(t_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=t_ms)


def value(i: int, k: int) -> float:
    """Varied values: a wave, a sawtooth and a per-series offset, negatives included."""
    return round(50 * math.sin(i / 7.3 + k) + (i * 37 % 101) / 3.0 - 20 * k + (i % 13) * 0.125, 6)


def make_batches(start: datetime, frames: int, *, seq0: int = 1, per_batch: int = 12) -> list[NormalizedBatch]:
    """One batch per `per_batch` frames (a minute at 5 s), every frame sampling every series."""
    out = []
    t0 = ms(start)
    for b, first in enumerate(range(0, frames, per_batch)):
        idx = range(first, min(first + per_batch, frames))
        out.append(NormalizedBatch(
            host_id=HOST, session_id=SESSION, seq=seq0 + b, series=list(SERIES),
            times_ms=[t0 + i * STEP_MS for i in idx],
            frame_ids=[[s.id for s in SERIES] for _ in idx],
            frame_values=[[value(i, k) for k in range(len(SERIES))] for i in idx],
        ))
    return out


def expected(batches: Iterable[NormalizedBatch], bucket: timedelta) -> dict[Key, Agg]:
    groups: dict[Key, list[float]] = defaultdict(list)
    for b in batches:
        for sid, t, v in b.samples():
            groups[(sid, floor_time(at(t), bucket))].append(v)
    # Rollup sums are exact: the sum of each value's shortest decimal form (what PostgreSQL's
    # float8 output and Python's repr both write), with nothing rounded along the way.
    return {k: (min(vs), max(vs), sum(Decimal(repr(v)) for v in vs), len(vs)) for k, vs in groups.items()}


async def stored(conn: asyncpg.Connection, table: str) -> dict[Key, Agg]:
    rows = await conn.fetch(f"SELECT series_id, bucket, min, max, sum, count FROM {table}")
    return {(r["series_id"], r["bucket"]): (r["min"], r["max"], r["sum"], r["count"]) for r in rows}


def assert_same(actual: dict[Key, Agg], want: dict[Key, Agg]) -> None:
    assert actual.keys() == want.keys()
    for k, (mn, mx, sm, n) in want.items():
        a_mn, a_mx, a_sm, a_n = actual[k]
        assert (a_mn, a_mx, a_sm, a_n) == (mn, mx, sm, n), k


def same(a: Agg, b: Agg) -> bool:
    return a == b


async def make_partitions(conn: asyncpg.Connection, now: datetime) -> None:
    await rollups.ensure_partitions(conn, partitions.RAW, now, timedelta(hours=8), timedelta(hours=3))
    await rollups.ensure_partitions(conn, partitions.ROLLUP_1M, now, timedelta(days=2), timedelta(days=1))
    await rollups.ensure_partitions(conn, partitions.ROLLUP_1H, now, timedelta(days=40), timedelta(days=1))


@pytest.fixture
def base() -> datetime:
    """An hour boundary a few hours in the past."""
    return floor_time(datetime.now(UTC), HOUR) - timedelta(hours=5)


async def test_rollups_match_raw_exactly_and_absorb_late_samples(pool: asyncpg.Pool, base: datetime) -> None:
    frames = (2 * 60 + 10) * 12  # 2h10m at 5 s
    batches = make_batches(base, frames)
    writer = SampleWriter(pool, "plain")
    async with pool.acquire() as conn:
        await make_partitions(conn, datetime.now(UTC))
    for i in range(0, len(batches), 25):
        res = await writer.store(batches[i:i + 25])
        assert res.duplicates == []
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == frames * len(SERIES)

    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        run = await rollups.run_rollups(conn, now)
        m1 = await stored(conn, "rollup_1m")
        h1 = await stored(conn, "rollup_1h")

    want_1m = expected(batches, MINUTE)
    want_1h = expected(batches, HOUR)
    assert len(want_1m) == 130 * len(SERIES)
    assert len(want_1h) == 3 * len(SERIES)
    assert_same(m1, want_1m)
    assert_same(h1, want_1h)
    # Each hour's count is the number of samples: 720 in a full hour, 120 in the last ten minutes.
    assert sorted({v[3] for v in h1.values()}) == [120, 720]
    assert run.rows == {"1m": len(want_1m), "1h": len(want_1h)}
    assert await pool.fetchval("SELECT count(*) FROM rollup_invalidations") == 0

    # A collector replays a batch late: one extreme sample inside an already rolled-up minute.
    late_minute = base + timedelta(minutes=37)
    late_t = ms(late_minute) + 2_500  # between two regular samples
    target = SERIES[1]
    late = NormalizedBatch(HOST, SESSION, seq=len(batches) + 1, series=[target], times_ms=[late_t],
                           frame_ids=[[target.id]], frame_values=[[1e6]])
    res = await writer.store([late])
    assert res.stored == [late.key]

    async with pool.acquire() as conn:
        run2 = await rollups.run_rollups(conn, datetime.now(UTC))
        m1_after = await stored(conn, "rollup_1m")
        h1_after = await stored(conn, "rollup_1h")

    assert run2.buckets_ranges["1m"] == [(late_minute, late_minute + MINUTE)]
    assert run2.buckets_ranges["1h"] == [(base, base + HOUR)]
    assert_same(m1_after, expected([*batches, late], MINUTE))
    assert_same(h1_after, expected([*batches, late], HOUR))
    _, mx, _, n = m1_after[(target.id, late_minute)]
    assert (mx, n) == (1e6, 13)
    assert h1_after[(target.id, base)][1] == 1e6
    assert h1_after[(target.id, base)][3] == 721
    # Every other bucket is what it was (a recomputed sum may differ in its last bit: float addition order).
    changed_1m = {k for k in m1 if not same(m1[k], m1_after[k])}
    changed_1h = {k for k in h1 if not same(h1[k], h1_after[k])}
    assert changed_1m == {(target.id, late_minute)}
    assert changed_1h == {(target.id, base)}


async def test_open_minute_waits_in_the_log_until_it_closes(pool: asyncpg.Pool, base: datetime) -> None:
    writer = SampleWriter(pool, "plain")
    async with pool.acquire() as conn:
        await make_partitions(conn, datetime.now(UTC))
    # "Now" is 30 s into a minute; samples reach back into the previous (closed) minute.
    minute = base + timedelta(hours=2, minutes=30)
    now = minute + timedelta(seconds=30)
    batches = make_batches(minute - timedelta(seconds=20), 9, per_batch=3)  # -20s .. +20s
    assert (await writer.store(batches)).stored == [b.key for b in batches]

    async with pool.acquire() as conn:
        run = await rollups.run_rollups(conn, now)
        m1 = await stored(conn, "rollup_1m")
        log = await conn.fetch("SELECT tier, lo, hi FROM rollup_invalidations ORDER BY tier, lo")
    want = expected(batches, MINUTE)
    closed = {k: v for k, v in want.items() if k[1] < minute}
    assert_same(m1, closed)
    assert run.buckets_ranges["1m"] == [(minute - MINUTE, minute)]
    # The open minute stays logged for the 1-minute tier; the open hour for the 1-hour tier.
    assert [(r["tier"], r["lo"], r["hi"]) for r in log if r["tier"] == "1m"] == [("1m", minute, minute + MINUTE)]
    assert await pool.fetchval("SELECT count(*) FROM rollup_1h") == 0

    # More samples arrive for the open minute; then it closes.
    more = make_batches(minute + timedelta(seconds=25), 3, seq0=len(batches) + 1)
    await writer.store(more)
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, minute + MINUTE)
        m1 = await stored(conn, "rollup_1m")
        tiers = {r["tier"] for r in await conn.fetch("SELECT tier FROM rollup_invalidations")}
    assert_same(m1, expected([*batches, *more], MINUTE))
    assert tiers == {"1h"}  # the minute is done; its hour is still open

    hour = floor_time(minute, HOUR)
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, hour + HOUR)
        h1 = await stored(conn, "rollup_1h")
        left = await conn.fetchval("SELECT count(*) FROM rollup_invalidations")
    assert_same(h1, expected([*batches, *more], HOUR))
    assert left == 0


async def test_store_is_exactly_once(pool: asyncpg.Pool, base: datetime) -> None:
    writer = SampleWriter(pool, "plain")
    async with pool.acquire() as conn:
        await make_partitions(conn, datetime.now(UTC))
    b1, b2, b3 = make_batches(base + HOUR, 36)  # three batches of 12 frames x 3 series
    per_batch = 12 * len(SERIES)

    first = await writer.store([b1, b2])
    assert first.stored == [b1.key, b2.key]
    assert first.duplicates == []
    assert first.samples == 2 * per_batch

    # The same batch again (a replay after a lost ack): nothing stored, reported as duplicate.
    again = await writer.store([b2])
    assert again.stored == []
    assert again.duplicates == [b2.key]
    assert again.samples == 0

    # A fresh writer (another aggregator) knows nothing in memory and still refuses it.
    other = SampleWriter(pool, "plain")
    assert (await other.store([b1])).duplicates == [b1.key]

    # Twice within one call: stored once.
    both = await writer.store([b3, b3])
    assert both.stored == [b3.key]
    assert both.duplicates == [b3.key]
    assert both.samples == per_batch

    # The same seq in another session is another batch, acknowledged; but a series holds one sample
    # per time, so the same samples sent again from another session are not stored twice.
    b1_new_session = NormalizedBatch(HOST, "sess-2", b1.seq, b1.series, b1.times_ms, b1.frame_ids, b1.frame_values)
    res = await writer.store([b1_new_session])
    assert res.stored == [b1_new_session.key]
    assert (res.samples, res.duplicate_samples) == (0, per_batch)

    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 3 * per_batch
    committed = {r["session_id"]: r["committed"] for r in await pool.fetch(
        "SELECT session_id, committed FROM ingest_sessions WHERE host_id = $1", HOST)}
    assert [(r.lower, r.upper) for r in committed[SESSION]] == [(1, 4)]
    assert [(r.lower, r.upper) for r in committed["sess-2"]] == [(1, 2)]


async def test_concurrent_writers_store_a_batch_once(pool: asyncpg.Pool, base: datetime) -> None:
    """Two aggregators handed the same replayed batches at the same moment (a collector that
    reconnected elsewhere) store each batch once between them."""
    async with pool.acquire() as conn:
        await make_partitions(conn, datetime.now(UTC))
    batches = make_batches(base + HOUR, 60)  # five batches, a new session
    writers = [SampleWriter(pool, "plain"), SampleWriter(pool, "plain")]
    results = await asyncio.gather(*(w.store(batches) for w in writers))
    stored = [k for r in results for k in r.stored]
    duplicates = [k for r in results for k in r.duplicates]
    assert sorted(stored) == sorted(b.key for b in batches)
    assert sorted(duplicates) == sorted(b.key for b in batches)
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 60 * len(SERIES)
