"""Answers "series X for hosts H from T1 to T2 at step S" from the tier that holds that range.

The tier is chosen by how far back the range reaches (hot <= 5 min, raw <= 24 h, 1-minute
rollups <= 7 d, 1-hour rollups beyond, with the configured retentions). Rollups lag the
present by a bucket and a job interval, so the newest part of a rollup query is computed from
raw samples with the same buckets. Redis unavailable: the hot range is served from raw.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

import asyncpg
import numpy as np
import redis.exceptions

from sysmon.core import numeric
from sysmon.core.hot import HotTier
from sysmon.core.metrics import NAME_RE, InvalidInput
from sysmon.core.storage import raw
from sysmon.core.storage.partitions import EPOCH, floor_time

log = logging.getLogger(__name__)

Agg = Literal["avg", "min", "max"]


class Tier(StrEnum):
    HOT = "hot"
    RAW = "raw"
    ROLLUP_1M = "1m"
    ROLLUP_1H = "1h"


RESOLUTION = {
    Tier.HOT: timedelta(seconds=1),
    Tier.RAW: timedelta(seconds=1),
    Tier.ROLLUP_1M: timedelta(minutes=1),
    Tier.ROLLUP_1H: timedelta(hours=1),
}


@dataclass(frozen=True)
class TierPolicy:
    hot_window: timedelta = timedelta(minutes=5)
    raw_retention: timedelta = timedelta(hours=24)
    rollup_1m_retention: timedelta = timedelta(days=7)


def choose_tier(start: datetime, now: datetime, policy: TierPolicy = TierPolicy()) -> Tier:
    """The finest tier that still holds data as old as `start`."""
    age = now - start
    if age <= policy.hot_window:
        return Tier.HOT
    if age <= policy.raw_retention:
        return Tier.RAW
    if age <= policy.rollup_1m_retention:
        return Tier.ROLLUP_1M
    return Tier.ROLLUP_1H


def effective_step(tier: Tier, step: timedelta) -> timedelta:
    """A step is never finer than the tier's resolution, and a whole number of seconds."""
    step = max(step, RESOLUTION[tier])
    return timedelta(seconds=round(step.total_seconds()))


@dataclass(frozen=True)
class QueryRequest:
    metric: str
    start: datetime
    end: datetime
    step: timedelta
    hosts: Sequence[str] = ()  # empty: every host
    match: Mapping[str, str] = field(default_factory=dict)  # attributes every series must have
    agg: Agg = "avg"


@dataclass
class SeriesResult:
    series_id: int
    host_id: str
    name: str
    attributes: dict[str, str]
    unit: str
    points: list[tuple[int, float]]  # (bucket start in ms, value)


@dataclass
class QueryResult:
    tier: Tier
    step: timedelta
    start: datetime
    end: datetime
    series: list[SeriesResult]


@dataclass(frozen=True)
class QueryLimits:
    max_points_per_series: int = 11_000  # Prometheus's limit, for the same reason: browsers
    max_series: int = 1_000
    max_hosts: int = 1_000


def validate(req: QueryRequest, limits: QueryLimits) -> None:
    if not NAME_RE.match(req.metric or ""):
        raise InvalidInput("metric", f"{req.metric!r} is not a metric name")
    if req.start.tzinfo is None or req.end.tzinfo is None:
        raise InvalidInput("start", "times must carry a time zone")
    if req.start >= req.end:
        raise InvalidInput("start", f"start {req.start.isoformat()} is not before end {req.end.isoformat()}")
    if req.step <= timedelta(0):
        raise InvalidInput("step", "must be positive")
    if len(req.hosts) > limits.max_hosts:
        raise InvalidInput("hosts", f"at most {limits.max_hosts} hosts per query")
    points = math.ceil((req.end - req.start) / req.step)
    if points > limits.max_points_per_series:
        raise InvalidInput(
            "step",
            f"{points} points per series exceeds {limits.max_points_per_series}; use a step of at least "
            f"{math.ceil((req.end - req.start).total_seconds() / limits.max_points_per_series)}s",
        )


# How long after a bucket closes the rollup job is assumed to have covered it (it runs every 15 s).
ROLLUP_MARGIN = timedelta(minutes=5)


def _reduce(part: list[Any], agg: Agg) -> float:
    mean, _, lo, hi = part
    if agg == "avg":
        return mean
    return lo if agg == "min" else hi


def _add_part(buckets: dict[int, list[Any]], t: int, part: list[Any]) -> None:
    """Merge a bucket's [mean, count, min, max] from one source into what another gave (a step
    bucket straddling the rollups' cut): the means weighted exactly."""
    have = buckets.get(t)
    if have is None:
        buckets[t] = part
        return
    count = have[1] + part[1]
    have[0] = float((Decimal(repr(have[0])) * have[1] + Decimal(repr(part[0])) * part[1]) / count)
    have[1] = count
    have[2] = min(have[2], part[2])
    have[3] = max(have[3], part[3])


def _segments(ts: np.ndarray, step_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket start of each segment, index where it starts) of samples sorted by time; buckets are
    aligned to the Unix epoch, as PostgreSQL's date_bin(step, ts, 'epoch')."""
    keys = ts - ts % step_ms
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], starts


def bucket(ts: np.ndarray, values: np.ndarray, step_ms: int, agg: Agg) -> tuple[np.ndarray, np.ndarray]:
    """One value per step bucket: the samples' mean, min or max. Pure, and the same for sealed
    blocks and open rows, since both come here as the same arrays."""
    if not len(ts):
        return ts, values
    keys, starts = _segments(ts, step_ms)
    if agg == "min":
        return keys, np.minimum.reduceat(values, starts)
    if agg == "max":
        return keys, np.maximum.reduceat(values, starts)
    counts = np.diff(np.r_[starts, len(values)])
    with np.errstate(over="ignore", invalid="ignore"):
        means = np.add.reduceat(values, starts) / counts
    # A mean lies between its bucket's extremes: clamp the rounding, and compute again without
    # overflow where a sum left the float64 range.
    means = np.clip(means, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts))
    for i in np.flatnonzero(~np.isfinite(means)):
        lo = starts[i]
        means[i] = numeric.mean(values[lo:lo + counts[i]].tolist())
    return keys, means


def bucket_parts(ts: np.ndarray, values: np.ndarray, step_ms: int) -> list[tuple[int, list[Any]]]:
    """(bucket start, [mean, count, min, max]) per step bucket, to be merged with rollup rows: the
    mean of the exact sum of each value's shortest decimal form, as the rollup tiers compute it."""
    if not len(ts):
        return []
    keys, starts = _segments(ts, step_ms)
    ends = np.r_[starts[1:], len(values)]
    vals = values.tolist()
    return [
        (int(k), [float(sum(Decimal(repr(v)) for v in vals[a:b]) / (b - a)), int(b - a), min(vals[a:b]),
                  max(vals[a:b])])
        for k, a, b in zip(keys.tolist(), starts.tolist(), ends.tolist(), strict=True)
    ]



# Bucket starts as Unix milliseconds, computed by PostgreSQL: decoding a timestamptz per row and
# converting it in Python cost more than the query itself for a day of raw samples.
_BUCKET_MS = "(extract(epoch FROM date_bin($1::interval, {col}, 'epoch')) * 1000)::int8"


def _ms(t: datetime) -> int:
    return int((t - EPOCH).total_seconds() * 1000)


class QueryService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        hot: HotTier | None,
        policy: TierPolicy = TierPolicy(),
        limits: QueryLimits = QueryLimits(),
    ):
        self.pool = pool
        self.hot = hot
        self.policy = policy
        self.limits = limits

    async def query(self, req: QueryRequest, now: datetime | None = None) -> QueryResult:
        validate(req, self.limits)
        now = now or datetime.now(UTC)
        tier = choose_tier(req.start, now, self.policy)
        if tier is Tier.HOT and self.hot is not None:
            try:
                return await self._query_hot(req, now)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                log.warning("hot tier unavailable, answering from raw samples: %s", e)
        if tier is Tier.HOT:
            tier = Tier.RAW
        step = effective_step(tier, req.step)
        start = floor_time(req.start, step)
        series = await self._series_pg(req)
        if not series:
            return QueryResult(tier, step, start, req.end, [])
        ids = list(series)
        points: dict[int, list[tuple[int, float]]] = defaultdict(list)
        async with self.pool.acquire() as conn:
            if tier is Tier.RAW:
                await self._fetch_raw(conn, ids, start, req.end, step, req.agg, points)
            else:
                # Rollups lag the present by a bucket and a job interval; what they do not cover yet
                # comes from raw samples. The cut is aligned to the rollup's own resolution, so a step
                # bucket may straddle it: both parts are fetched as (sum, count, min, max) and merged.
                cut = floor_time(now - RESOLUTION[tier] - ROLLUP_MARGIN, RESOLUTION[tier])
                cut = min(max(cut, start), req.end)
                parts: dict[int, dict[int, list[float]]] = defaultdict(dict)
                await self._fetch_parts(conn, tier, ids, start, cut, step, parts)
                await self._fetch_parts(conn, Tier.RAW, ids, cut, req.end, step, parts)
                for sid, buckets in parts.items():
                    points[sid] = [(t, _reduce(buckets[t], req.agg)) for t in sorted(buckets)]
        return QueryResult(tier, step, start, req.end, [
            SeriesResult(sid, *series[sid], points=points.get(sid, [])) for sid in ids
        ])

    async def _series_pg(self, req: QueryRequest) -> dict[int, tuple[str, str, dict[str, str], str]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT series_id, host_id, name, attributes, unit FROM series
                WHERE name = $1 AND ($2::text[] IS NULL OR host_id = ANY($2::text[])) AND attributes @> $3::jsonb
                ORDER BY host_id, attributes::text
                LIMIT $4
                """,
                req.metric,
                list(req.hosts) or None,
                dict(req.match),
                self.limits.max_series + 1,
            )
        self._check_series_count(len(rows))
        return {r["series_id"]: (r["host_id"], r["name"], r["attributes"], r["unit"]) for r in rows}

    def _check_series_count(self, n: int) -> None:
        if n > self.limits.max_series:
            raise InvalidInput(
                "metric", f"the query matches more than {self.limits.max_series} series; narrow hosts or match"
            )

    async def _fetch_raw(self, conn, ids, start, end, step, agg: Agg, points) -> None:
        step_ms = int(step.total_seconds() * 1000)
        for sid, (ts, values) in (await raw.read(conn, ids, start, end)).items():
            keys, reduced = bucket(ts, values, step_ms, agg)
            points[sid].extend(zip(keys.tolist(), reduced.tolist(), strict=True))

    async def _fetch_parts(self, conn, tier: Tier, ids, start, end, step, parts) -> None:
        """Add each step bucket's [mean, count, min, max] over [start, end) from one tier."""
        if start >= end:
            return
        if tier is Tier.RAW:
            step_ms = int(step.total_seconds() * 1000)
            for sid, (ts, values) in (await raw.read(conn, ids, start, end)).items():
                for t, part in bucket_parts(ts, values, step_ms):
                    _add_part(parts[sid], t, part)
            return
        table = "rollup_1m" if tier is Tier.ROLLUP_1M else "rollup_1h"
        rows = await conn.fetch(
            f"""
            SELECT series_id, {_BUCKET_MS.format(col="bucket")} AS t, (sum(sum) / sum(count))::float8,
                   sum(count), min(min), max(max)
            FROM {table} WHERE series_id = ANY($2::int8[]) AND bucket >= $3 AND bucket < $4
            GROUP BY 1, 2
            """,
            step, ids, start, end,
        )
        # The mean of an exact sum is always within float64 (every row counts a sample).
        for sid, t, mean, count, lo, hi in rows:
            _add_part(parts[sid], t, [mean, count, lo, hi])

    async def _query_hot(self, req: QueryRequest, now: datetime) -> QueryResult:
        assert self.hot is not None
        step = effective_step(Tier.HOT, req.step)
        start = floor_time(req.start, step)
        hosts = list(req.hosts) or sorted(await self.hot.hosts_last_seen())
        step_ms = int(step.total_seconds() * 1000)
        out: list[SeriesResult] = []
        for host in hosts:
            described = await self.hot.series(host)
            wanted = {
                sid: d for sid, d in described.items()
                if d["name"] == req.metric and all(d["attributes"].get(k) == v for k, v in req.match.items())
            }
            if not wanted:
                continue
            self._check_series_count(len(out) + len(wanted))
            buckets: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            want = np.fromiter(wanted, dtype=np.int64)
            for f in await self.hot.frames(host, _ms(start), _ms(req.end)):
                sel = np.isin(f.ids, want)
                b = f.time_ms - f.time_ms % step_ms
                for sid, v in zip(f.ids[sel].tolist(), f.values[sel].tolist(), strict=True):
                    buckets[sid][b].append(v)
            reduce = {"avg": numeric.mean, "min": min, "max": max}[req.agg]
            for sid, d in sorted(wanted.items(), key=lambda kv: json.dumps(kv[1]["attributes"], sort_keys=True)):
                pts = sorted((t, reduce(vs)) for t, vs in buckets.get(sid, {}).items())
                out.append(SeriesResult(sid, host, d["name"], d["attributes"], d["unit"], pts))
        return QueryResult(Tier.HOT, step, start, req.end, out)
