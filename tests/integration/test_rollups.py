"""Rollups on the plain PostgreSQL path: exact 1-minute and 1-hour buckets, late data, open
buckets, and exactly-once storage of batches, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import REGISTRY

from sysmon.aggregator import maintenance
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH, floor_time
from sysmon.core.storage.writer import SampleWriter
from tests.conftest import AggregatorFactory
from tests.helpers import RawClient, make_batch, start_idle_aggregator, wait_for

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


async def test_a_series_postgresql_refuses_to_roll_up_is_skipped_alone_and_said_so(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """One series whose 1-minute bucket PostgreSQL refuses (as it refused float8 sums that overflow,
    SQLSTATE 22003) is skipped with a warning naming it and counted in /metrics; every other series,
    of other hosts and of its own, is rolled up, run after run, and the job keeps working."""
    agg = await start_idle_aggregator(start_aggregator)
    cpu = "system.cpu.utilization"
    bad = series_id("odd-1", cpu, {"cpu": "0", "state": "user"})
    # A real refusal from PostgreSQL, for that series only, inside the job's own statement.
    await pool.execute(f"""
        CREATE FUNCTION refuse_one_series() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.series_id = {bad} THEN
                RAISE EXCEPTION 'value out of range: overflow' USING ERRCODE = 'numeric_value_out_of_range';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_one_series BEFORE INSERT ON rollup_1m
            FOR EACH ROW EXECUTE FUNCTION refuse_one_series();
    """)
    jobs = maintenance.Jobs(agg.storage)
    hosts = ("web-1", "web-2", "odd-1")
    m0 = floor_time(datetime.now(UTC) - 2 * HOUR, MINUTE)

    def skipped_total() -> float:
        return REGISTRY.get_sample_value("sysmon_aggregator_rollup_series_skipped_total", {"tier": "1m"}) or 0.0

    def refused(records: list[logging.LogRecord]) -> list[str]:
        return [r.getMessage() for r in records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]

    async def minutes_of(host: str) -> dict[str, int]:
        rows = await pool.fetch(
            "SELECT s.attributes->>'cpu' AS cpu, count(*) AS n FROM rollup_1m r JOIN series s USING (series_id) "
            "WHERE s.host_id = $1 GROUP BY 1", host)
        return {r["cpu"]: r["n"] for r in rows}

    clients = [RawClient(agg.address, h, "s1") for h in hosts]
    for c in clients:
        await c.__aenter__()
    try:
        seq = 0
        for rnd, first_minute in enumerate((0, 2)):
            for m in (first_minute, first_minute + 1):
                for s in (0, 20, 40):
                    seq += 1
                    t = ms(m0 + m * MINUTE + timedelta(seconds=s))
                    for c in clients:
                        c.send(make_batch(c.host_id, "s1", seq, declare=seq == 1, time_ms=t, values=(0.25, 0.75)))
            await wait_for(lambda n=seq: all(len(c.acked) == n for c in clients), message="every batch stored")

            before = skipped_total()
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                run = await jobs.run("rollups", lambda: maintenance.rollup_once(agg.storage))
            assert isinstance(run, rollups.RollupRun)
            assert run.skipped == {"1m": [bad], "1h": []}
            assert REGISTRY.get_sample_value("sysmon_aggregator_storage_job_failing", {"job": "rollups"}) == 0.0
            assert skipped_total() - before == 1
            (line,) = refused(caplog.records)
            assert f"rollup 1m of series {bad} over" in line
            assert "value out of range: overflow" in line

            # The other hosts' rollups, and the same host's other series, advance: 2 minutes a round.
            done = 2 * (rnd + 1)
            assert await minutes_of("web-1") == {"0": done, "1": done}
            assert await minutes_of("web-2") == {"0": done, "1": done}
            assert await minutes_of("odd-1") == {"1": done}
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    good = await pool.fetchrow("SELECT min, max, sum, count FROM rollup_1m WHERE series_id = $1 AND bucket = $2",
                               series_id("web-1", cpu, {"cpu": "1", "state": "user"}), m0)
    assert tuple(good) == (0.75, 0.75, Decimal("2.25"), 3)
