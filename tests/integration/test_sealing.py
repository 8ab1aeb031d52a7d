"""Sealed raw blocks on real PostgreSQL: the same answers sealed or not, late samples merged,
replays stored once, and a kill in the middle of sealing leaving the rows or the blocks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import numpy as np
from prometheus_client import REGISTRY

from sysmon.aggregator import maintenance
from sysmon.alerts import backfill, evaluator
from sysmon.alerts.rules import compile_rule
from sysmon.core.alert_rule import AlertRuleSpec
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.query import QueryRequest, QueryService
from sysmon.core.storage import partitions, raw, rollups, sealing
from sysmon.core.storage.partitions import EPOCH
from sysmon.core.storage.writer import SampleWriter
from tests.conftest import AggregatorFactory
from tests.helpers import RawClient, make_batch, start_idle_aggregator, wait_for

ROOT = str(Path(__file__).resolve().parents[2])
HOSTS = ("seal-a", "seal-b")
NAME = "system.cpu.utilization"
HOUR = timedelta(hours=1)


def settled_now() -> datetime:
    """Now, unless this hour began less than 10 minutes ago: then 5 minutes before it began.

    Sealing waits GRACE after an hour ends, so in an hour's first minutes the hour before is still
    open: tests that count the closed hours sealed would depend on when they run. Every job and
    query here takes `now` as an argument, so a moment a few minutes back is as good as the clock."""
    now = datetime.now(UTC)
    this_hour = partitions.floor_time(now, HOUR)
    return now if now - this_hour >= timedelta(minutes=10) else this_hour - timedelta(minutes=5)


def ms(t: datetime) -> int:
    return int((t - EPOCH) / timedelta(milliseconds=1))


def fleet_series() -> dict[str, list[Series]]:
    return {h: [Series(series_id(h, NAME, {"cpu": str(i)}), h, NAME, {"cpu": str(i)}, "1") for i in range(4)]
            for h in HOSTS}


def history(now: datetime, hours: int = 3, every_ms: int = 5000, seed: int = 7) -> list[NormalizedBatch]:
    """Samples from `hours` whole hours ago until a minute ago, 5 s apart with a few ms of jitter;
    values of every kind a collector sends (noise, steps, constants, extremes)."""
    rng = np.random.default_rng(seed)
    start = ms(partitions.floor_time(now - hours * HOUR, HOUR))
    end = ms(now) - 60_000
    out = []
    for h, series in fleet_series().items():
        for k, t in enumerate(range(start, end, every_ms)):
            t += int(rng.integers(0, 4))
            values = [float(rng.random()), round(k / 7, 2), 42.0, [sys.float_info.max, 1e-300, -0.0][k % 3]]
            out.append(NormalizedBatch(h, "sess", k + 1, series, [t], [[s.id for s in series]], [values]))
    return out


async def load(pool: asyncpg.Pool, now: datetime, batches: list[NormalizedBatch]) -> None:
    async with pool.acquire() as conn:
        for t in (partitions.RAW, partitions.SEALED, partitions.ROLLUP_1M, partitions.ROLLUP_1H):
            await rollups.ensure_partitions(conn, t, now, timedelta(hours=26), timedelta(hours=2))
    writer = SampleWriter(pool, "plain")
    for i in range(0, len(batches), 500):
        await writer.store(batches[i:i + 500])


def requests(now: datetime) -> list[QueryRequest]:
    out = []
    for agg in ("avg", "min", "max"):
        for start, step in ((now - 4 * HOUR, timedelta(seconds=5)), (now - 4 * HOUR, timedelta(seconds=37)),
                            (now - 3 * HOUR, timedelta(minutes=10)), (now - 20 * HOUR, timedelta(hours=1)),
                            (now - 2 * timedelta(days=1), timedelta(minutes=5)),
                            (now - 10 * timedelta(days=1), timedelta(hours=1))):
            out.append(QueryRequest(NAME, start, now, step, HOSTS, {}, agg))  # type: ignore[arg-type]
    return out


async def answers(service: QueryService, now: datetime) -> list[tuple[str, list[list[tuple[int, float]]]]]:
    out = []
    for req in requests(now):
        res = await service.query(req, now)
        out.append((str(res.tier), [s.points for s in res.series]))
    return out


async def test_sealed_and_open_give_the_same_answers_on_every_tier(pool: asyncpg.Pool) -> None:
    now = settled_now()
    await load(pool, now, history(now))
    service = QueryService(pool, None)
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
        rows_before = await conn.fetchval("SELECT count(*) FROM samples_raw")
        before = await answers(service, now)
        ids = [s.id for ss in fleet_series().values() for s in ss]
        read_before = await raw.read(conn, ids, now - 4 * HOUR, now)
        latest_before = [tuple(r) for r in await raw.latest(conn, "seal-a")]
        run = await sealing.seal_once(conn, now)
        # Every closed hour sealed (the current one stays open), and nothing left in both places.
        assert len(run.sealed) == 3
        assert run.samples + await conn.fetchval("SELECT count(*) FROM samples_raw") == rows_before
        assert await conn.fetchval("SELECT sum(count) FROM samples_sealed") == run.samples
        after = await answers(service, now)
        read_after = await raw.read(conn, ids, now - 4 * HOUR, now)
        latest_after = [tuple(r) for r in await raw.latest(conn, "seal-a")]
    assert {tier for tier, _ in before} == {"raw", "1m", "1h"}
    assert after == before
    assert read_after.keys() == read_before.keys()
    for sid, (ts, values) in read_before.items():
        assert read_after[sid][0].tolist() == ts.tolist()
        assert read_after[sid][1].view(np.uint64).tolist() == values.view(np.uint64).tolist()  # bit for bit
    assert latest_after == latest_before


async def test_the_current_hour_stays_open_until_it_closes_and_its_rollups_are_done(pool: asyncpg.Pool) -> None:
    now = settled_now()
    await load(pool, now, history(now, hours=1))
    async with pool.acquire() as conn:
        # Rollups not run yet: the closed hour waits for them.
        run = await sealing.seal_once(conn, now)
        assert run.sealed == []
        assert run.waiting == [partitions.floor_time(now - HOUR, HOUR)]
        await rollups.run_rollups(conn, now)
        run = await sealing.seal_once(conn, now)
        assert run.sealed == [partitions.floor_time(now - HOUR, HOUR)]
        # Within the grace after an hour ends, it is not sealed either.
        assert (await sealing.seal_once(conn, partitions.floor_time(now, HOUR) + timedelta(seconds=30))).sealed == []


async def test_late_samples_are_merged_into_sealed_blocks_and_rollups_corrected(pool: asyncpg.Pool) -> None:
    now = settled_now()
    await load(pool, now, history(now, hours=2))
    service = QueryService(pool, None)
    hour = partitions.floor_time(now - 2 * HOUR, HOUR)
    sid = fleet_series()["seal-a"][0].id
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
        await sealing.seal_once(conn, now)
        (ts, values), = (await raw.read(conn, [sid], hour, hour + HOUR)).values()
        # A collector replays, under a new session, a sample between two stored ones, and one for a
        # time already stored with another value: the first is added, the second is not stored twice.
        new_t, dup_t = int(ts[10]) + 1, int(ts[20])
        late = NormalizedBatch("seal-a", "replay", 1, fleet_series()["seal-a"][:1], [new_t, dup_t], [[sid], [sid]],
                               [[123.0], [-1.0]])
        await SampleWriter(pool, "plain").store([late])
        # Readable at once, before any merge, with the block's value kept for the duplicate time.
        (ts2, values2), = (await raw.read(conn, [sid], hour, hour + HOUR)).values()
        assert len(ts2) == len(ts) + 1
        assert values2[ts2.tolist().index(dup_t)] == values[20]
        raw_answers = [a for a in await answers(service, now) if a[0] == "raw"]
        # The rollup job leaves a sealed hour to the merge.
        await rollups.run_rollups(conn, now)
        run = await sealing.seal_once(conn, now)
        assert run.merged == [hour]
        assert (run.samples, run.duplicates) == (1, 1)
        assert await conn.fetchval("SELECT count(*) FROM samples_raw WHERE ts < $1", hour + HOUR) == 0
        assert await conn.fetchval("SELECT count FROM samples_sealed WHERE series_id = $1 AND block_start = $2",
                                   sid, hour) == len(ts) + 1
        minute = new_t - new_t % 60_000
        in_minute = [v for t, v in zip(ts2.tolist(), values2.tolist(), strict=True) if t - t % 60_000 == minute]
        row = await conn.fetchrow("SELECT min, max, sum, count FROM rollup_1m WHERE series_id = $1 AND bucket = $2",
                                  sid, EPOCH + timedelta(milliseconds=minute))
        assert tuple(row) == (min(in_minute), max(in_minute), sum(Decimal(repr(v)) for v in in_minute),
                              len(in_minute))
        # The hour's 1-hour rollup follows.
        await rollups.run_rollups(conn, now)
        assert await conn.fetchval("SELECT count FROM rollup_1h WHERE series_id = $1 AND bucket = $2", sid,
                                   hour) == len(ts) + 1
        # Raw queries answer the same before the merge (late rows beside the blocks) and after.
        assert [a for a in await answers(service, now) if a[0] == "raw"] == raw_answers


async def test_a_replayed_batch_of_a_sealed_hour_stores_nothing_twice(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_idle_aggregator(start_aggregator)
    now = settled_now()
    hour = partitions.floor_time(now - 2 * HOUR, HOUR)
    t = ms(hour) + 5_000
    async with RawClient(agg.address, "replay-host", "s1") as c:
        for seq in (1, 2):
            c.send(make_batch("replay-host", "s1", seq, declare=seq == 1, time_ms=t + seq * 5000))
        await wait_for(lambda: c.acked == {1, 2})
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
        assert len((await sealing.seal_once(conn, now)).sealed) == 1
    async with RawClient(agg.address, "replay-host", "s1") as c:
        c.send(make_batch("replay-host", "s1", 1, time_ms=t + 5000))  # the same batch again
        await wait_for(lambda: 1 in c.acked, message="acknowledged as already stored")
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 0
    assert await pool.fetchval("SELECT sum(count) FROM samples_sealed") == 4

    # The same samples under another session (a collector restarted without its state): stored in
    # the open area, then dropped by the aggregator's sealing job as already sealed, and counted.
    before = sealed_duplicates()
    async with RawClient(agg.address, "replay-host", "s2") as c:
        c.send(make_batch("replay-host", "s2", 1, time_ms=t + 5000))
        await wait_for(lambda: 1 in c.acked, message="the other session's batch acknowledged")
    run = await maintenance.seal_once(agg.storage, now)
    assert run is not None
    assert (run.merged, run.samples, run.duplicates) == ([hour], 0, 2)
    assert sealed_duplicates() - before == 2
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 0
    assert await pool.fetchval("SELECT sum(count) FROM samples_sealed") == 4


def sealed_duplicates() -> float:
    return REGISTRY.get_sample_value("sysmon_aggregator_sealed_duplicate_samples_total") or 0.0


async def test_the_aggregators_retention_drops_expired_sealed_hours_and_their_records(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_idle_aggregator(start_aggregator, raw_retention="2h")
    now = settled_now()
    await load(pool, now, history(now, hours=3))
    this_hour = partitions.floor_time(now, HOUR)
    expired, *kept = [this_hour - k * HOUR for k in (3, 2, 1)]
    assert isinstance(await maintenance.rollup_once(agg.storage, now), rollups.RollupRun)
    run = await maintenance.seal_once(agg.storage, now)
    assert run is not None
    assert run.sealed == [expired, *kept]
    ids = [s.id for ss in fleet_series().values() for s in ss]
    service = QueryService(pool, None)
    request = QueryRequest(NAME, kept[0], now, timedelta(seconds=5), HOSTS, {}, "avg")
    async with pool.acquire() as conn:
        read_before = await raw.read(conn, ids, kept[0], now)
    answer_before = await service.query(request, now)

    # Half past this hour, with 2 hours of raw retention: the oldest sealed hour lies wholly past it.
    at = this_hour + timedelta(minutes=30)
    dropped = await maintenance.retention_once(agg.storage, agg.settings, at)

    sealed_name, raw_name = (partitions.partition_for(t, expired).name for t in (partitions.SEALED, partitions.RAW))
    assert {sealed_name, raw_name} <= set(dropped)
    async with pool.acquire() as conn:
        sealed_parts = {p.lo for p in await rollups.existing_partitions(conn, partitions.SEALED.table)}
        read_after = await raw.read(conn, ids, kept[0], now)
    assert expired not in sealed_parts
    assert set(kept) <= sealed_parts
    # The expired hour's record goes with its blocks (else the table grows forever); the others stay.
    assert {r[0] for r in await pool.fetch("SELECT hour FROM raw_sealed_hours")} == set(kept)
    assert await pool.fetchval("SELECT min(block_start) FROM samples_sealed") == kept[0]
    # The hours kept answer as before, bit for bit.
    assert read_after.keys() == read_before.keys()
    for sid, (ts, values) in read_before.items():
        assert read_after[sid][0].tolist() == ts.tolist()
        assert read_after[sid][1].view(np.uint64).tolist() == values.view(np.uint64).tolist()
    answer_after = await service.query(request, now)
    assert answer_after.tier == answer_before.tier == "raw"
    assert [s.points for s in answer_after.series] == [s.points for s in answer_before.series]
    assert all(s.points for s in answer_after.series)


SEAL_AND_HANG = """
import asyncio, sys
from datetime import datetime
import asyncpg
from sysmon.core.storage import sealing

async def main(dsn, now):
    conn = await asyncpg.connect(dsn)
    real = asyncpg.Connection.copy_records_to_table

    async def copy_then_hang(self, *args, **kwargs):
        await real(self, *args, **kwargs)
        print("blocks written", self.get_server_pid(), flush=True)
        await asyncio.sleep(60)  # killed here: blocks inserted, partition not yet emptied

    asyncpg.Connection.copy_records_to_table = copy_then_hang
    await sealing.seal_once(conn, datetime.fromisoformat(now))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_kill_in_the_middle_of_sealing_leaves_the_rows_and_no_block(pool: asyncpg.Pool, pg_dsn: str) -> None:
    now = settled_now()
    await load(pool, now, history(now, hours=1))
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
    rows = await pool.fetchval("SELECT count(*) FROM samples_raw")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SEAL_AND_HANG, pg_dsn, now.isoformat(), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert line.startswith("blocks written"), line
    backend = int(line.split()[-1])
    assert await pool.fetchval("SELECT count(*) FROM samples_sealed") == 0  # not committed: not visible
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # PostgreSQL ends the dead client's transaction: the rows, and no block.
    await wait_for(lambda: _gone(pool, backend), message="the killed sealer's session gone")
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == rows
    assert await pool.fetchval("SELECT count(*) FROM samples_sealed") == 0
    assert await pool.fetchval("SELECT count(*) FROM raw_sealed_hours") == 0
    # Sealed again: the blocks, and no row of the sealed hour.
    async with pool.acquire() as conn:
        run = await sealing.seal_once(conn, now)
    [hour] = run.sealed
    assert await pool.fetchval("SELECT count(*) FROM samples_raw WHERE ts < $1", hour + HOUR) == 0
    assert run.samples + await pool.fetchval("SELECT count(*) FROM samples_raw") == rows


async def _gone(pool: asyncpg.Pool, backend: int) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend)


async def test_windows_after_a_restart_come_from_sealed_hours_too(pool: asyncpg.Pool) -> None:
    """The alerts service fills an hour's window from the raw tier when Redis lost it, across the
    sealed hour and the open one."""
    now = settled_now()
    await load(pool, now, history(now, hours=3))
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
        await sealing.seal_once(conn, now)
    spec = AlertRuleSpec.model_validate({"metric": NAME, "window": "1h", "aggregation": "avg",
                                         "condition": {"op": ">", "threshold": 2}})
    state = evaluator.EvalState()
    evaluator.set_rules(state, {"r": compile_rule("r", spec)}, ms(now))
    loaded, _ = await backfill.from_postgres(pool, state, ms(now))
    # An hour and the slack, 4 series of 2 hosts, one sample every 5 s.
    assert loaded >= 2 * 4 * 720
