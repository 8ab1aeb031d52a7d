"""QueryService: each range is answered from the tier that holds it, with correct values,
against real PostgreSQL (raw + rollups) and Redis (hot tier)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from sysmon.core.batch import NormalizedBatch
from sysmon.core.hot import HotTier
from sysmon.core.metrics import InvalidInput, Series, series_id
from sysmon.core.query import QueryLimits, QueryRequest, QueryResult, QueryService, TierPolicy
from sysmon.core.storage import partitions, rollups
from sysmon.core.storage.partitions import EPOCH, floor_time
from sysmon.core.storage.writer import SampleWriter

CPU = "system.cpu.utilization"
MEM = "system.memory.usage"
HOSTS = ("q-a", "q-b")
STEP_S = 5
SPAN = timedelta(hours=3)


def ms(t: datetime) -> int:
    return int((t - EPOCH).total_seconds() * 1000)


def value(h: int, sid_index: int, t_ms: int) -> float:
    k = t_ms // (STEP_S * 1000)
    return ((k * 7 + h * 13 + sid_index * 5) % 23) / 10 + h + sid_index * 0.5


@dataclass
class Fleet:
    now: datetime
    series: dict[int, Series]
    samples: dict[int, list[tuple[int, float]]]  # series id -> (time ms, value)
    # Rollup rows written directly (older than any raw sample): series id -> (bucket, min, max, sum, count)
    extra_1m: dict[int, tuple[datetime, float, float, float, int]]
    extra_1h: dict[int, tuple[datetime, float, float, float, int]]
    service: QueryService

    def ids(self, name: str = CPU, hosts: Iterable[str] = HOSTS, **match: str) -> set[int]:
        return {s.id for s in self.series.values() if s.name == name and s.host_id in set(hosts)
                and all(s.attributes.get(k) == v for k, v in match.items())}

    def expected(self, sids: Iterable[int], start: datetime, end: datetime, step: timedelta, agg: str = "avg",
                 extra: Mapping[int, tuple[datetime, float, float, float, int]] | None = None
                 ) -> dict[int, list[tuple[int, float]]]:
        """What a correct answer holds: buckets of `step` from floor(start) to end, aggregated."""
        step_ms = int(step.total_seconds() * 1000)
        lo, hi = ms(floor_time(start, step)), ms(end)
        out: dict[int, list[tuple[int, float]]] = {}
        for sid in sids:
            # bucket -> (min, max, sum, count)
            buckets: dict[int, list[float]] = defaultdict(lambda: [float("inf"), float("-inf"), 0.0, 0])
            rows = [(t, v, v, v, 1) for t, v in self.samples[sid] if lo <= t < hi]
            if extra and sid in extra:
                b, mn, mx, sm, n = extra[sid]
                if lo <= ms(b) < hi:
                    rows.append((ms(b), mn, mx, sm, n))
            for t, mn, mx, sm, n in rows:
                acc = buckets[t - t % step_ms]
                acc[0], acc[1], acc[2], acc[3] = min(acc[0], mn), max(acc[1], mx), acc[2] + sm, acc[3] + n
            pick = {"avg": lambda a: a[2] / a[3], "min": lambda a: a[0], "max": lambda a: a[1]}[agg]
            out[sid] = [(b, pick(a)) for b, a in sorted(buckets.items())]
        return out


def points(result: QueryResult) -> dict[int, list[tuple[int, float]]]:
    return {s.series_id: s.points for s in result.series}


def assert_points(result: QueryResult, want: dict[int, list[tuple[int, float]]]) -> None:
    got = points(result)
    assert got.keys() == want.keys()
    for sid, pts in want.items():
        assert [t for t, _ in got[sid]] == [t for t, _ in pts], sid
        assert [v for _, v in got[sid]] == pytest.approx([v for _, v in pts], rel=1e-9), sid


@pytest.fixture
async def fleet(pool: asyncpg.Pool, redis_client: aioredis.Redis) -> Fleet:
    now = datetime.now(UTC)
    series: dict[int, Series] = {}
    per_host: dict[str, list[Series]] = {}
    for h in HOSTS:
        defs = [(CPU, {"cpu": "0"}, "1"), (CPU, {"cpu": "1"}, "1"), (MEM, {"state": "used"}, "By")]
        per_host[h] = [Series(series_id(h, n, a), h, n, a, u) for n, a, u in defs]
        series.update((s.id, s) for s in per_host[h])
    last = ms(floor_time(now, timedelta(seconds=STEP_S)))
    if last >= ms(now):
        last -= STEP_S * 1000
    times = list(range(last - int(SPAN.total_seconds()) * 1000, last + 1, STEP_S * 1000))
    samples: dict[int, list[tuple[int, float]]] = defaultdict(list)
    batches: list[NormalizedBatch] = []
    for hi, h in enumerate(HOSTS):
        ss = per_host[h]
        for seq, first in enumerate(range(0, len(times), 12), start=1):
            ts = times[first:first + 12]
            vals = [[value(hi, k, t) for k in range(len(ss))] for t in ts]
            batches.append(NormalizedBatch(h, "q-session", seq, list(ss), ts, [[s.id for s in ss] for _ in ts], vals))
            for t, vs in zip(ts, vals, strict=True):
                for s, v in zip(ss, vs, strict=True):
                    samples[s.id].append((t, v))

    async with pool.acquire() as conn:
        await rollups.ensure_partitions(conn, partitions.RAW, now, timedelta(hours=5), timedelta(hours=2))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1M, now, timedelta(days=4), timedelta(days=1))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1H, now, timedelta(days=40), timedelta(days=1))
    writer = SampleWriter(pool, "plain")
    for i in range(0, len(batches), 100):
        await writer.store(batches[i:i + 100])
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
    # Older history that only the rollup tiers hold (raw retention has long dropped its samples).
    a0 = series_id("q-a", CPU, {"cpu": "0"})
    extra_1m = {a0: (floor_time(now - timedelta(days=2), timedelta(hours=1)), 0.1, 0.9, 4.0, 8)}
    extra_1h = {a0: (floor_time(now - timedelta(days=10), timedelta(hours=1)), -1.0, 3.0, 10.0, 20)}
    for table, extra in (("rollup_1m", extra_1m), ("rollup_1h", extra_1h)):
        await pool.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6)",
                               [(sid, *row) for sid, row in extra.items()])

    # The hot tier holds the last few minutes, as the aggregator's live path writes them.
    hot_from = last - 180_000
    hot_batches = [b for b in batches if b.max_ts >= hot_from]
    await HotTier(redis_client).write(hot_batches, ms(now))
    return Fleet(now, series, samples, extra_1m, extra_1h, QueryService(pool, HotTier(redis_client), TierPolicy()))


def req(fleet: Fleet, ago: timedelta, step: timedelta, metric: str = CPU, **kw: Any) -> QueryRequest:
    return QueryRequest(metric=metric, start=fleet.now - ago, end=fleet.now, step=step, **kw)


async def test_last_minutes_come_from_the_hot_tier(fleet: Fleet) -> None:
    step = timedelta(seconds=10)
    r = await fleet.service.query(req(fleet, timedelta(minutes=2), step), now=fleet.now)
    assert r.tier == "hot"
    want = fleet.expected(fleet.ids(), fleet.now - timedelta(minutes=2), fleet.now, step)
    assert all(12 <= len(p) <= 13 for p in want.values())
    assert_points(r, want)
    assert {(s.host_id, s.attributes["cpu"]) for s in r.series} == {(h, c) for h in HOSTS for c in "01"}

    # Filters work on the hot path too.
    r = await fleet.service.query(req(fleet, timedelta(minutes=2), step, hosts=["q-b"], match={"cpu": "1"},
                                      agg="max"), now=fleet.now)
    assert r.tier == "hot"
    ids = fleet.ids(hosts=["q-b"], cpu="1")
    assert len(ids) == 1
    assert_points(r, fleet.expected(ids, fleet.now - timedelta(minutes=2), fleet.now, step, "max"))


async def test_redis_unreachable_answers_from_raw(fleet: Fleet, pool: asyncpg.Pool) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)
    try:
        service = QueryService(pool, HotTier(dead), TierPolicy())
        step = timedelta(seconds=10)
        r = await service.query(req(fleet, timedelta(minutes=2), step), now=fleet.now)
    finally:
        await dead.aclose()
    assert r.tier == "raw"
    assert_points(r, fleet.expected(fleet.ids(), fleet.now - timedelta(minutes=2), fleet.now, step))


async def test_last_hour_comes_from_raw_samples(fleet: Fleet) -> None:
    step = timedelta(minutes=1)
    r = await fleet.service.query(req(fleet, timedelta(hours=1), step), now=fleet.now)
    assert r.tier == "raw"
    assert r.step == step
    want = fleet.expected(fleet.ids(), fleet.now - timedelta(hours=1), fleet.now, step)
    assert all(60 <= len(p) <= 61 for p in want.values())
    assert_points(r, want)
    # Another metric, same hosts: only its own series.
    r = await fleet.service.query(req(fleet, timedelta(hours=1), step, metric=MEM), now=fleet.now)
    assert {s.name for s in r.series} == {MEM}
    assert_points(r, fleet.expected(fleet.ids(MEM), fleet.now - timedelta(hours=1), fleet.now, step))


async def test_last_three_days_come_from_minute_rollups(fleet: Fleet) -> None:
    step = timedelta(minutes=5)
    start = fleet.now - timedelta(days=3)
    r = await fleet.service.query(req(fleet, timedelta(days=3), step), now=fleet.now)
    assert r.tier == "1m"
    want = fleet.expected(fleet.ids(), start, fleet.now, step, extra=fleet.extra_1m)
    assert_points(r, want)
    # History only the 1-minute tier holds is there ...
    (a0,) = fleet.extra_1m
    assert points(r)[a0][0] == (ms(fleet.extra_1m[a0][0]), 0.5)
    # ... and so are the newest buckets, which no rollup covers yet.
    newest = max(t for t, _ in fleet.samples[a0])
    assert points(r)[a0][-1][0] == newest - newest % (5 * 60_000)

    r = await fleet.service.query(req(fleet, timedelta(days=3), step, agg="min", hosts=["q-a"]), now=fleet.now)
    assert_points(r, fleet.expected(fleet.ids(hosts=["q-a"]), start, fleet.now, step, "min", fleet.extra_1m))
    assert points(r)[a0][0] == (ms(fleet.extra_1m[a0][0]), 0.1)


async def test_last_thirty_days_come_from_hour_rollups(fleet: Fleet) -> None:
    step = timedelta(hours=1)
    start = fleet.now - timedelta(days=30)
    r = await fleet.service.query(req(fleet, timedelta(days=30), step), now=fleet.now)
    assert r.tier == "1h"
    want = fleet.expected(fleet.ids(), start, fleet.now, step, extra=fleet.extra_1h)
    assert all(len(p) >= 4 for p in want.values())  # three hours of samples touch four hours
    assert_points(r, want)
    (a0,) = fleet.extra_1h
    assert points(r)[a0][0] == (ms(fleet.extra_1h[a0][0]), 0.5)
    newest = max(t for t, _ in fleet.samples[a0])
    assert points(r)[a0][-1][0] == newest - newest % 3_600_000

    r = await fleet.service.query(req(fleet, timedelta(days=30), step, agg="max", match={"cpu": "0"}),
                                  now=fleet.now)
    assert {s.attributes["cpu"] for s in r.series} == {"0"}
    assert_points(r, fleet.expected(fleet.ids(cpu="0"), start, fleet.now, step, "max", fleet.extra_1h))
    assert points(r)[a0][0] == (ms(fleet.extra_1h[a0][0]), 3.0)


async def test_hosts_and_match_filters(fleet: Fleet) -> None:
    step = timedelta(minutes=10)
    r = await fleet.service.query(req(fleet, timedelta(hours=2), step, hosts=["q-b"]), now=fleet.now)
    assert {(s.host_id, s.name) for s in r.series} == {("q-b", CPU)}
    assert_points(r, fleet.expected(fleet.ids(hosts=["q-b"]), fleet.now - timedelta(hours=2), fleet.now, step))

    r = await fleet.service.query(req(fleet, timedelta(hours=2), step, match={"cpu": "1"}, agg="min"), now=fleet.now)
    assert {(s.host_id, s.attributes["cpu"]) for s in r.series} == {("q-a", "1"), ("q-b", "1")}
    assert_points(r, fleet.expected(fleet.ids(cpu="1"), fleet.now - timedelta(hours=2), fleet.now, step, "min"))

    r = await fleet.service.query(req(fleet, timedelta(hours=2), step, match={"cpu": "7"}), now=fleet.now)
    assert r.series == []
    r = await fleet.service.query(req(fleet, timedelta(hours=2), step, hosts=["nobody"]), now=fleet.now)
    assert r.series == []


async def test_too_many_series_is_refused(fleet: Fleet, pool: asyncpg.Pool, redis_client: aioredis.Redis) -> None:
    service = QueryService(pool, HotTier(redis_client), TierPolicy(), QueryLimits(max_series=3))
    for ago, step in ((timedelta(minutes=2), timedelta(seconds=10)), (timedelta(hours=1), timedelta(minutes=1)),
                      (timedelta(days=3), timedelta(minutes=5))):
        with pytest.raises(InvalidInput) as e:
            await service.query(req(fleet, ago, step), now=fleet.now)  # four CPU series
        assert "more than 3 series" in str(e.value)
        # Narrowed, the same query is answered.
        r = await service.query(req(fleet, ago, step, hosts=["q-a"]), now=fleet.now)
        assert len(r.series) == 2


async def test_daily_step_shortly_after_midnight_keeps_the_newest_day(pool: asyncpg.Pool) -> None:
    day = timedelta(days=1)
    now = floor_time(datetime.now(UTC) - day, day) + timedelta(minutes=30)  # yesterday, 00:30 UTC
    host = "q-night"
    s = Series(series_id(host, CPU, {"cpu": "0"}), host, CPU, {"cpu": "0"}, "1")
    times = list(range(ms(now - timedelta(hours=3)), ms(now), STEP_S * 1000))
    batches = [NormalizedBatch(host, "night", seq, [s], times[i:i + 12], [[s.id]] * len(times[i:i + 12]),
                               [[value(0, 0, t)] for t in times[i:i + 12]])
               for seq, i in enumerate(range(0, len(times), 12), start=1)]
    async with pool.acquire() as conn:
        await rollups.ensure_partitions(conn, partitions.RAW, now, timedelta(hours=4), timedelta(hours=1))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1M, now, timedelta(days=1), timedelta(days=1))
        await rollups.ensure_partitions(conn, partitions.ROLLUP_1H, now, timedelta(days=1), timedelta(days=1))
        await SampleWriter(pool, "plain").store(batches)
        await rollups.run_rollups(conn, now)  # as the job left things at 00:30: hour 00:00 still open

    service = QueryService(pool, None, TierPolicy())
    r = await service.query(QueryRequest(CPU, now - timedelta(days=30), now, day, hosts=[host]), now=now)
    assert r.tier == "1h"
    day_start = ms(floor_time(now, day))
    samples = [(t, value(0, 0, t)) for t in times]
    want = [(day_start - 86_400_000, [v for t, v in samples if t < day_start]),
            (day_start, [v for t, v in samples if t >= day_start])]
    got = points(r)[s.id]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [v for _, v in got] == pytest.approx([sum(vs) / len(vs) for _, vs in want])
