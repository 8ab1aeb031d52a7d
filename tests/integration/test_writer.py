"""The group commit's one statement (sysmon_store_frames) against a real PostgreSQL: batches once
per (host, session, seq), frames merged when their (host, time) is stored already or twice in a
group, the committed seqs, the rollup log, and two writers racing for one frame."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series, series_id
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH, floor_time
from sysmon.core.storage.writer import SampleWriter

HOST = "writer-host"
S = [Series(series_id(HOST, "w.metric", {"i": str(i)}), HOST, "w.metric", {"i": str(i)}, "1") for i in range(5)]
ID = [s.id for s in S]


def ms(t: datetime) -> int:
    return int((t - EPOCH).total_seconds() * 1000)


def batch(session: str, seq: int, frames: list[tuple[int, list[int], list[float]]]) -> NormalizedBatch:
    """A batch of frames (time, series indexes, values)."""
    used = sorted({i for _, idx, _ in frames for i in idx})
    return NormalizedBatch(HOST, session, seq, [S[i] for i in used], [t for t, _, _ in frames],
                           [[ID[i] for i in idx] for _, idx, _ in frames], [vals for _, _, vals in frames])


async def samples(pool: asyncpg.Pool) -> dict[tuple[int, int], float]:
    rows = await pool.fetch("SELECT series_id, (extract(epoch FROM ts) * 1000)::int8 AS t, value FROM samples_raw")
    return {(r["series_id"], r["t"]): r["value"] for r in rows}


async def start(pool: asyncpg.Pool) -> int:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await rollups.ensure_partitions(conn, partitions.RAW, now, timedelta(hours=2), timedelta(hours=1))
    return ms(floor_time(now, timedelta(minutes=1)) - timedelta(minutes=5))


async def test_batches_are_stored_once_with_their_seqs_and_rollup_log(pool: asyncpg.Pool) -> None:
    t = await start(pool)
    w = SampleWriter(pool, "plain")
    b1 = batch("s1", 1, [(t, [0, 1], [1.0, 2.0]), (t + 5000, [0, 1], [3.0, 4.0])])
    b2 = batch("s1", 2, [(t + 10_000, [0], [5.0])])
    res = await w.store([b1, b2, b1])  # the same batch twice in one group
    assert (res.stored, res.duplicates, res.samples) == ([b1.key, b2.key], [b1.key], 5)
    assert await pool.fetchval("SELECT count(*) FROM raw_frames WHERE host_id = $1", HOST) == 3
    assert (await samples(pool))[(ID[1], t + 5000)] == 4.0
    committed = await pool.fetchval("SELECT committed::text FROM ingest_sessions WHERE session_id = 's1'")
    assert committed == "{[1,3)}"
    span = await pool.fetchrow("SELECT min(lo) AS lo, max(hi) AS hi FROM rollup_invalidations")
    assert (ms(span["lo"]), ms(span["hi"])) == (t, t + 10_001)
    assert await pool.fetchval("SELECT count(*) FROM series WHERE host_id = $1", HOST) == 2
    assert await pool.fetchval("SELECT count(*) FROM hosts WHERE host_id = $1", HOST) == 1

    # Replayed (a collector that missed the ack), by a writer that knows nothing yet: nothing again.
    res = await SampleWriter(pool, "plain").store([b2, b1])
    assert (res.stored, sorted(res.duplicates), res.samples) == ([], sorted([b1.key, b2.key]), 0)
    assert len(await samples(pool)) == 5


async def test_a_frame_stored_already_or_twice_in_a_group_is_merged_first_value_kept(pool: asyncpg.Pool) -> None:
    t = await start(pool)
    w = SampleWriter(pool, "plain")
    await w.store([batch("s1", 1, [(t, [0, 1], [1.0, 2.0])])])
    # Another session (a restarted collector replaying, or a second client) sends series 1..3 at t,
    # and in the same group a third session sends 3..4 at t and a new time.
    a = batch("s2", 1, [(t, [1, 2, 3], [20.0, 30.0, 40.0])])
    b = batch("s3", 1, [(t, [3, 4], [400.0, 50.0]), (t + 5000, [0], [6.0])])
    res = await w.store([a, b])
    assert sorted(res.stored) == sorted([a.key, b.key])
    # Stored: 2, 3 from a; 4 at t and 0 at t+5 from b. Skipped: 1 (stored already), 3 from b (a was first).
    assert (res.samples, res.duplicate_samples) == (4, 2)
    got = await samples(pool)
    assert got == {(ID[0], t): 1.0, (ID[1], t): 2.0, (ID[2], t): 30.0, (ID[3], t): 40.0, (ID[4], t): 50.0,
                   (ID[0], t + 5000): 6.0}
    # Still one frame per host and time.
    assert await pool.fetchval("SELECT count(*) FROM raw_frames WHERE host_id = $1", HOST) == 2
    assert await pool.fetchval("SELECT committed::text FROM ingest_sessions WHERE session_id = 's3'") == "{[1,2)}"


async def test_two_writers_racing_for_one_frame_store_each_sample_once(pool: asyncpg.Pool) -> None:
    t = await start(pool)
    writers = [SampleWriter(pool, "plain") for _ in range(2)]
    for round_ in range(20):
        at = t + round_ * 1000
        a = batch("ra", round_ + 1, [(at, [0, 1], [1.0, 1.0])])
        b = batch("rb", round_ + 1, [(at, [1, 2], [2.0, 2.0])])
        ra, rb = await asyncio.gather(writers[0].store([a]), writers[1].store([b]))
        assert (ra.stored, rb.stored) == ([a.key], [b.key])
        assert ra.samples + rb.samples == 3
        assert ra.duplicate_samples + rb.duplicate_samples == 1
    got = await samples(pool)
    assert len(got) == 60
    assert await pool.fetchval("SELECT count(*) FROM raw_frames WHERE host_id = $1", HOST) == 20


async def test_frames_of_very_different_sizes_in_one_group_are_stored_whole(pool: asyncpg.Pool) -> None:
    t = await start(pool)
    big = [Series(series_id("big-host", "w.metric", {"i": str(i)}), "big-host", "w.metric", {"i": str(i)}, "1")
           for i in range(1500)]
    wide = NormalizedBatch("big-host", "s1", 1, big, [t, t + 5000], [[s.id for s in big], [big[7].id]],
                           [[float(i) for i in range(1500)], [-7.5]])
    small = batch("s2", 1, [(t, [0], [0.25]), (t + 5000, [1, 2], [1.25, 2.25])])
    res = await SampleWriter(pool, "plain").store([small, wide])
    assert (sorted(res.stored), res.samples) == (sorted([small.key, wide.key]), 1504)
    got = await samples(pool)
    assert len(got) == 1504
    assert [got[(s.id, t)] for s in big] == [float(i) for i in range(1500)]
    assert got[(big[7].id, t + 5000)] == -7.5
    assert (got[(ID[0], t)], got[(ID[2], t + 5000)]) == (0.25, 2.25)
