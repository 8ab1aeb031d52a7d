"""Group commits of normalized batches into PostgreSQL, exactly once per (host, session, seq).

One transaction per group: lock the sessions' rows, skip batches already committed, register
new series, COPY the frames (binary, one row per host and time with its series ids and values as
arrays: the open area, see migration 0008), record the committed sequence numbers, log the touched
time range for the rollups. The caller acknowledges only what this returns as stored or
duplicate, after the commit.

A host holds one frame per time (a unique index), so a series one sample per time. A frame for a
time already stored, sent again under another session, makes COPY fail; the group is then
written again frame by frame, each merged into the stored one (the first value of a series wins,
the rest are counted). That slower path is taken only by groups that carry such a frame.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import numpy as np

from sysmon.core.batch import NormalizedBatch
from sysmon.core.storage.partitions import EPOCH
from sysmon.core.storage.schema import Mode

log = logging.getLogger(__name__)

# hosts.last_seen is refreshed at most this often per host: the hot tier has the exact time.
LAST_SEEN_EVERY_S = 60.0
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01, PostgreSQL's timestamp origin
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_INT8_OID, _FLOAT8_OID = 20, 701
_IDS = np.dtype([("len", ">i4"), ("v", ">i8")])
_VALS = np.dtype([("len", ">i4"), ("v", ">f8")])
COLUMNS = ["host_id", "ts", "ids", "vals"]


def _array(values: Sequence[int] | Sequence[float], dtype: np.dtype, oid: int) -> bytes:
    """A one-dimensional array without nulls in PostgreSQL's binary format, with its length first."""
    n = len(values)
    body = np.empty(n, dtype=dtype)
    body["len"] = 8
    body["v"] = values
    data = struct.pack(">iiiii", 1, 0, oid, n, 1) + body.tobytes()
    return struct.pack(">i", len(data)) + data


def frames(batches: Sequence[NormalizedBatch]) -> list[tuple[str, int, list[int], list[float]]]:
    """(host, time in ms, series ids, values) of every non-empty frame of the batches."""
    return [(b.host_id, t, list(ids), list(vals)) for b in batches
            for t, ids, vals in zip(b.times_ms, b.frame_ids, b.frame_values, strict=True) if len(ids)]


def copy_payload(batches: Sequence[NormalizedBatch]) -> tuple[bytes, int, int]:
    """PostgreSQL binary COPY data for raw_frames (host_id, ts, ids, vals); and (frames, samples)."""
    parts = [_COPY_HEADER]
    samples = 0
    rows = frames(batches)
    hosts: dict[str, bytes] = {}
    for host, t, ids, vals in rows:
        head = hosts.get(host)
        if head is None:
            raw = host.encode()
            head = hosts[host] = struct.pack(">hi", 4, len(raw)) + raw
        parts += [head, struct.pack(">iq", 8, (t - _PG_EPOCH_MS) * 1000), _array(ids, _IDS, _INT8_OID),
                  _array(vals, _VALS, _FLOAT8_OID)]
        samples += len(ids)
    parts.append(_COPY_TRAILER)
    return b"".join(parts), len(rows), samples


def touched_spans(batches: Sequence[NormalizedBatch], gap_ms: int = 60_000) -> list[tuple[int, int]]:
    """Time spans [lo, hi) in ms covered by the batches, merged when at most gap_ms apart.

    A replayed batch from hours ago and live data in one group stay separate spans, so the
    rollup job recomputes two short ranges rather than everything between them.
    """
    spans = sorted((b.min_ts, b.max_ts + 1) for b in batches if b.times_ms)
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + gap_ms:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass
class StoreResult:
    stored: list[tuple[str, str, int]] = field(default_factory=list)
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    samples: int = 0
    # Samples not stored because their series already had a sample at that time.
    duplicate_samples: int = 0


def _committed(ranges: list[asyncpg.Range], seq: int) -> bool:
    return any((r.lower is None or r.lower <= seq) and (r.upper is None or seq < r.upper) for r in ranges)


def _ms_dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


async def _insert_deduplicated(conn: asyncpg.Connection, batches: Sequence[NormalizedBatch]) -> tuple[int, int]:
    """Write the frames one by one, each merged into a stored frame of its host and time: a series
    already there keeps its value. Returns (samples offered, samples skipped as already there)."""
    merged: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
    offered = skipped = 0
    for host, t, ids, vals in frames(batches):
        offered += len(ids)
        have = merged.setdefault((host, t), ([], []))
        seen = set(have[0])
        for i, v in zip(ids, vals, strict=True):
            if i in seen:
                skipped += 1
            else:
                have[0].append(i)
                have[1].append(v)
                seen.add(i)
    keys = list(merged)
    stored = {(r["host_id"], r["t"]): set(r["ids"]) for r in await conn.fetch(
        "SELECT host_id, (extract(epoch FROM ts) * 1000)::int8 AS t, ids FROM raw_frames "
        "WHERE (host_id, ts) IN (SELECT h, 'epoch'::timestamptz + t * INTERVAL '1 millisecond' "
        "FROM unnest($1::text[], $2::int8[]) AS u(h, t))",
        [h for h, _ in keys], [t for _, t in keys])}
    inserts, updates = [], []
    for (host, t), (ids, vals) in merged.items():
        there = stored.get((host, t))
        if there is None:
            inserts.append((host, _ms_dt(t), ids, vals))
            continue
        new = [(i, v) for i, v in zip(ids, vals, strict=True) if i not in there]
        skipped += len(ids) - len(new)
        if new:
            updates.append((host, _ms_dt(t), [i for i, _ in new], [v for _, v in new]))
    if inserts:
        await conn.executemany("INSERT INTO raw_frames (host_id, ts, ids, vals) VALUES ($1, $2, $3, $4)", inserts)
    if updates:
        await conn.executemany(
            "UPDATE raw_frames SET ids = ids || $3::int8[], vals = vals || $4::float8[] WHERE host_id = $1 AND ts = $2",
            updates)
    return offered, skipped


class SampleWriter:
    """Writes groups of batches; holds a cache of series and hosts already registered."""

    def __init__(self, pool: asyncpg.Pool, mode: Mode, *, series_cache_size: int = 2_000_000):
        self.pool = pool
        self.mode = mode
        self._known_series: set[int] = set()
        self._known_hosts: set[str] = set()
        self._known_sessions: set[tuple[str, str]] = set()
        self._host_touched: dict[str, float] = {}
        self._series_cache_size = series_cache_size

    def _stale_hosts(self, batches: Sequence[NormalizedBatch]) -> list[str]:
        """Hosts whose last_seen in PostgreSQL is older than a minute; the hot tier has the exact time."""
        now = time.monotonic()
        out = sorted({b.host_id for b in batches if now - self._host_touched.get(b.host_id, -1e9) > LAST_SEEN_EVERY_S})
        for h in out:
            self._host_touched[h] = now
        return out

    @staticmethod
    async def _lock_sessions(conn: asyncpg.Connection, hs: list[str], ss: list[str]) -> list[asyncpg.Record]:
        return await conn.fetch(
            "SELECT host_id, session_id, committed FROM ingest_sessions "
            "WHERE (host_id, session_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) "
            "ORDER BY host_id, session_id FOR UPDATE",
            hs,
            ss,
        )

    async def store(self, batches: Sequence[NormalizedBatch]) -> StoreResult:
        async with self.pool.acquire() as conn:
            try:
                return await self.store_with(conn, batches)
            except asyncpg.UniqueViolationError:
                return await self.store_with(conn, batches, dedupe=True)

    async def store_with(self, conn: asyncpg.Connection, batches: Sequence[NormalizedBatch], *,
                         dedupe: bool = False) -> StoreResult:
        result = StoreResult()
        if not batches:
            return result
        sessions = sorted({(b.host_id, b.session_id) for b in batches})
        hs = [h for h, _ in sessions]
        ss = [s for _, s in sessions]
        new_series: dict[int, tuple[str, str, str, str, int]] = {}
        new_hosts: set[str] = set()
        async with conn.transaction():
            # Row locks serialize two aggregators that hold streams of the same session. A session
            # this writer has not seen is made first (once per collector process).
            rows = await self._lock_sessions(conn, hs, ss) if all(k in self._known_sessions for k in sessions) \
                else []
            if len(rows) < len(sessions):
                await conn.execute(
                    "INSERT INTO ingest_sessions (host_id, session_id) "
                    "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                    hs,
                    ss,
                )
                rows = await self._lock_sessions(conn, hs, ss)
            committed = {(r["host_id"], r["session_id"]): r["committed"] for r in rows}
            fresh: list[NormalizedBatch] = []
            seen: set[tuple[str, str, int]] = set()
            for b in batches:
                if b.key in seen or _committed(committed[(b.host_id, b.session_id)], b.seq):
                    result.duplicates.append(b.key)
                    continue
                seen.add(b.key)
                fresh.append(b)
                if b.host_id not in self._known_hosts:
                    new_hosts.add(b.host_id)
                for s in b.series:
                    if s.id not in self._known_series:
                        new_series[s.id] = (s.host_id, s.name, json.dumps(dict(s.attributes), sort_keys=True),
                                            s.unit, s.kind)
            if new_hosts:
                await conn.execute(
                    "INSERT INTO hosts (host_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", sorted(new_hosts)
                )
            stale = self._stale_hosts(fresh)
            if new_series:
                ids = list(new_series)
                cols = list(zip(*new_series.values(), strict=True))
                await conn.execute(
                    """
                    INSERT INTO series (series_id, host_id, name, attributes, unit, kind)
                    SELECT i, h, n, a::jsonb, u, k
                    FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int2[])
                         AS t(i, h, n, a, u, k)
                    ON CONFLICT (series_id) DO NOTHING
                    """,
                    ids,
                    *[list(c) for c in cols],
                )
            if fresh:
                if dedupe:
                    n, result.duplicate_samples = await _insert_deduplicated(conn, fresh)
                else:
                    payload, rows, n = copy_payload(fresh)
                    if rows:
                        # A buffer, not a file object: asyncpg reads files through the thread pool.
                        await conn.copy_to_table("raw_frames", source=memoryview(payload), columns=COLUMNS,
                                                 format="binary")
                spans = touched_spans(fresh) if n else []
                # One statement for what follows the samples: the rollup job's log (both storage paths),
                # the sessions' committed seqs, and the hosts' last-seen times (once a minute each).
                await conn.execute(
                    """
                    WITH inv AS (
                        INSERT INTO rollup_invalidations
                        SELECT '1m', to_timestamp(lo / 1000.0), to_timestamp(hi / 1000.0)
                        FROM unnest($4::int8[], $5::int8[]) AS t(lo, hi)
                    ), seen AS (
                        UPDATE hosts SET last_seen = now() WHERE host_id = ANY($6::text[])
                    )
                    UPDATE ingest_sessions s SET committed = s.committed + u.add, updated_at = now()
                    FROM (SELECT h, sid, range_agg(int8range(q, q + 1)) AS add
                          FROM unnest($1::text[], $2::text[], $3::int8[]) AS t(h, sid, q)
                          GROUP BY h, sid) u
                    WHERE s.host_id = u.h AND s.session_id = u.sid
                    """,
                    [b.host_id for b in fresh],
                    [b.session_id for b in fresh],
                    [b.seq for b in fresh],
                    [lo for lo, _ in spans],
                    [hi for _, hi in spans],
                    stale,
                )
                result.samples = n - result.duplicate_samples
        # Only after the commit: a rolled-back group must register its series again.
        if len(self._known_series) + len(new_series) > self._series_cache_size:
            self._known_series.clear()
        self._known_series.update(new_series)
        self._known_hosts.update(new_hosts)
        if len(self._known_sessions) > 100_000:
            self._known_sessions.clear()
        self._known_sessions.update(sessions)
        result.stored = [b.key for b in fresh]
        return result
