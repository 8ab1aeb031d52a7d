"""Group commits of normalized batches into PostgreSQL, exactly once per (host, session, seq).

One statement per group, `sysmon_store_frames` (migration 0009), in autocommit: it locks the
sessions' rows, skips batches already committed, registers new hosts and series, inserts the
frames (one row per host and time with its series ids and values as arrays: the open area, see
migration 0008), records the committed sequence numbers and logs the touched time ranges for the
rollups, all in one round trip. The caller acknowledges only what this returns as stored or
duplicate, after the commit.

A host holds one frame per time (a unique index), so a series one sample per time. A frame for a
time already stored (a sample sent again under another session) makes the insert fail; the group
is then written again with merge on, each frame merged into the stored one (the first value of a
series wins, the rest are counted). That slower statement is run only for groups carrying such a frame.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series
from sysmon.core.storage.schema import Mode

log = logging.getLogger(__name__)

# hosts.last_seen is refreshed at most this often per host: the hot tier has the exact time.
LAST_SEEN_EVERY_S = 60.0


Row = list[int] | list[float] | list[int | None] | list[float | None]
# Samples per row of the matrices the frames are sent as (see frame_columns).
ROW = 64


def frame_columns(batches: Sequence[NormalizedBatch]) -> tuple[list[int], list[int], list[int], list[Row], list[Row]]:
    """The batches' non-empty frames as sysmon_store_frames takes them (migration 0009): each frame's
    batch (1-based position), time and sample count, then every sample's series id and value,
    frame after frame, as two matrices of ROW columns (the last row padded with NULL).

    Matrices rather than flat arrays: asyncpg checks every element of a list parameter for being a
    nested list (an abstract-base-class check, about a microsecond a sample, a good part of a group
    commit's CPU), but of a matrix only the rows and the first row's elements. Rows of a fixed
    width rather than a row per frame: frames of very different sizes pad nothing."""
    f_batch: list[int] = []
    f_ts: list[int] = []
    f_len: list[int] = []
    ids: list[int | None] = []
    vals: list[float | None] = []
    for k, b in enumerate(batches, 1):
        for t, fids, fvals in zip(b.times_ms, b.frame_ids, b.frame_values, strict=True):
            if fids:
                f_batch.append(k)
                f_ts.append(t)
                f_len.append(len(fids))
                ids.extend(fids)
                vals.extend(fvals)
    pad = -len(ids) % ROW
    if pad:
        ids.extend([None] * pad)
        vals.extend([None] * pad)
    return (f_batch, f_ts, f_len, [ids[i:i + ROW] for i in range(0, len(ids), ROW)],
            [vals[i:i + ROW] for i in range(0, len(vals), ROW)])


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


class SampleWriter:
    """Writes groups of batches; holds a cache of series and hosts already registered."""

    def __init__(self, pool: asyncpg.Pool, mode: Mode, *, series_cache_size: int = 2_000_000):
        self.pool = pool
        self.mode = mode
        self._known_series: set[int] = set()
        self._registered_lists: dict[str, list[Series]] = {}  # host -> a series list registered whole
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

    async def store(self, batches: Sequence[NormalizedBatch]) -> StoreResult:
        async with self.pool.acquire() as conn:
            try:
                return await self.store_with(conn, batches)
            except asyncpg.UniqueViolationError:
                # A frame for a (host, time) stored already, or twice in this group: rare (a sample
                # sent again under another session), so the merging statement is taken only then.
                return await self.store_with(conn, batches, merge=True)

    async def store_with(self, conn: asyncpg.Connection, batches: Sequence[NormalizedBatch], *,
                         merge: bool = False) -> StoreResult:
        """One statement, in autocommit: nothing is committed unless all of it is."""
        result = StoreResult()
        unique: list[NormalizedBatch] = []
        seen: set[tuple[str, str, int]] = set()
        for b in batches:
            if b.key in seen:
                result.duplicates.append(b.key)
            else:
                seen.add(b.key)
                unique.append(b)
        if not unique:
            return result
        sessions = {(b.host_id, b.session_id) for b in unique}
        new_hosts = sorted({b.host_id for b in unique} - self._known_hosts)
        new_series: dict[int, tuple[str, str, str, str, int]] = {}
        for b in unique:
            # The batches of a stream's usual layout share one list of series: checked whole once.
            if self._registered_lists.get(b.host_id) is b.series:
                continue
            for s in b.series:
                if s.id not in self._known_series:
                    new_series[s.id] = (s.host_id, s.name, json.dumps(dict(s.attributes), sort_keys=True), s.unit,
                                        s.kind)
        ser = list(zip(*new_series.values(), strict=True)) if new_series else [()] * 5
        spans = touched_spans(unique)
        dup, skipped = await conn.fetchrow(
            "SELECT * FROM sysmon_store_frames($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, "
            "$17, $18, $19, $20)",
            [b.host_id for b in unique], [b.session_id for b in unique], [b.seq for b in unique],
            *frame_columns(unique),
            [lo for lo, _ in spans], [hi for _, hi in spans], self._stale_hosts(unique),
            not sessions <= self._known_sessions, new_hosts, list(new_series), *[list(c) for c in ser], merge,
        )
        # Only after the commit: a failed statement must register its series again.
        if len(self._known_series) + len(new_series) > self._series_cache_size:
            self._known_series.clear()
            self._registered_lists.clear()
        self._known_series.update(new_series)
        self._registered_lists.update((b.host_id, b.series) for b in unique)
        self._known_hosts.update(new_hosts)
        if len(self._known_sessions) > 100_000:
            self._known_sessions.clear()
        self._known_sessions.update(sessions)
        dup_set = set(dup)
        for k, b in enumerate(unique, 1):
            if k in dup_set:
                result.duplicates.append(b.key)
            else:
                result.stored.append(b.key)
                result.samples += b.sample_count
        result.duplicate_samples = skipped
        result.samples -= skipped
        return result
