"""The series and samples PromQL reads: the series catalog under Prometheus names, and samples
from the tiers.

The catalog (every series' Prometheus labels, names.py) is read from PostgreSQL at most every
few seconds and matched in memory. Samples within the raw tier's retention (24 h by default) are
the raw samples (storage.raw.read: sealed blocks and open frames alike), exactly as stored. Older
than that, each 1-minute rollup stands for one sample at the end of its minute: a counter's
maximum (its last value, counters only grow between resets) and a gauge's mean; so a rate over
last week's hour is computed from minutely points, as in a downsampled Prometheus (Thanos).

Which series have samples in a range (the series and label endpoints) is answered by the same
tiers, each at its own grain: within the raw tier a stored block's first and last sample time (as
Prometheus answers from its chunks) and the open frames; older, the 1-minute rollups, and past
their retention the 1-hour rollups.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from sysmon.core.metrics import COUNTER
from sysmon.core.promql.engine import NAME, Labels, Matcher, PromQLError, SeriesData
from sysmon.core.promql.names import prom_label, prom_name
from sysmon.core.storage import raw

CATALOG_TTL_S = 5.0
ROLLUP_MS = 60_000
HOUR_MS = 3_600_000
# Raw samples are read up to this much before the retention's edge (retention drops whole
# partitions, some time after the edge passes them).
EDGE_MARGIN_MS = 10 * 60_000
KIND_TYPES = {1: "gauge", 2: "gauge", 3: "counter"}


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    labels: Labels
    unit: str
    kind: int


def series_labels(host: str, name: str, attributes: dict[str, str], unit: str, kind: int) -> Labels:
    d = {prom_label(k): v for k, v in attributes.items()}
    d["host"] = host
    d[NAME] = prom_name(name, unit, kind)
    return tuple(sorted(d.items()))


def compile_matcher(m: Matcher) -> object:
    if m.op in ("=~", "!~"):
        try:
            return re.compile(m.value)
        except re.error as e:
            raise PromQLError(f"invalid regular expression in {m.name}{m.op}{m.value!r}: {e}") from e
    return m.value


def matches(labels: dict[str, str], matchers: Sequence[Matcher], compiled: Sequence[object]) -> bool:
    for m, c in zip(matchers, compiled, strict=True):
        v = labels.get(m.name, "")
        if m.op == "=":
            ok = v == c
        elif m.op == "!=":
            ok = v != c
        elif m.op == "=~":
            ok = c.fullmatch(v) is not None  # type: ignore[attr-defined]
        else:
            ok = c.fullmatch(v) is None  # type: ignore[attr-defined]
        if not ok:
            return False
    return True


class PostgresSource:
    def __init__(self, pool: asyncpg.Pool, raw_retention: timedelta = timedelta(hours=24),
                 rollup_1m_retention: timedelta = timedelta(days=7)):
        self.pool = pool
        self.raw_retention_ms = int(raw_retention.total_seconds() * 1000)
        self.rollup_1m_retention_ms = int(rollup_1m_retention.total_seconds() * 1000)
        self._catalog: list[CatalogEntry] = []
        self._dicts: list[dict[str, str]] = []
        self._loaded = -1e9

    async def catalog(self) -> list[tuple[CatalogEntry, dict[str, str]]]:
        if time.monotonic() - self._loaded > CATALOG_TTL_S:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch("SELECT series_id, host_id, name, attributes, unit, kind FROM series")
            entries = []
            for r in rows:
                attrs = r["attributes"]
                attrs = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
                entries.append(CatalogEntry(r["series_id"], series_labels(r["host_id"], r["name"], attrs, r["unit"],
                                                                          r["kind"]), r["unit"], r["kind"]))
            self._catalog = entries
            self._dicts = [dict(e.labels) for e in entries]
            self._loaded = time.monotonic()
        return list(zip(self._catalog, self._dicts, strict=True))

    async def matching(self, matchers: Sequence[Matcher]) -> list[CatalogEntry]:
        if not any(m.op in ("=", "=~") and m.value != "" and not (m.op == "=~" and re.fullmatch(m.value, ""))
                   for m in matchers):
            raise PromQLError("vector selector must contain at least one non-empty matcher")
        compiled = [compile_matcher(m) for m in matchers]
        return [e for e, d in await self.catalog() if matches(d, matchers, compiled)]

    async def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        entries = await self.matching(matchers)
        if not entries:
            return []
        cut = max(start_ms, int(time.time() * 1000) - self.raw_retention_ms + EDGE_MARGIN_MS)
        ids = [e.id for e in entries]
        async with self.pool.acquire() as conn:
            got = await raw.read(conn, ids, _dt(cut), _dt(end_ms + 1)) if cut <= end_ms else {}
            old = await self._rollups(conn, entries, start_ms, min(cut, end_ms + 1)) if start_ms < cut else {}
        out = []
        for e in entries:
            parts = [p for p in (old.get(e.id), got.get(e.id)) if p is not None]
            if len(parts) == 2:
                out.append(SeriesData(e.labels, np.concatenate([parts[0][0], parts[1][0]]),
                                      np.concatenate([parts[0][1], parts[1][1]])))
            elif parts:
                out.append(SeriesData(e.labels, *parts[0]))
        return out

    async def with_samples(self, entries: Sequence[CatalogEntry], start_ms: int, end_ms: int) -> list[CatalogEntry]:
        """The entries that have a sample in [start_ms, end_ms], in their order."""
        if not entries or end_ms < start_ms:
            return []
        now = int(time.time() * 1000)
        cut = now - self.raw_retention_ms + EDGE_MARGIN_MS
        minutes_from = now - self.rollup_1m_retention_ms + EDGE_MARGIN_MS
        hi = end_ms + 1
        # [lo, hi) of each tier's part of the range (empty where lo >= hi).
        raw_lo = max(start_ms, cut)
        old_hi = min(hi, cut)
        minute_lo = max(start_ms, minutes_from)
        hour_hi = min(old_hi, minutes_from)
        async with self.pool.acquire() as conn:
            # One probe per series and tier, each stopping at its first row (every table is indexed
            # by series, or by host for the frames, and time). A rollup bucket is named by its start.
            rows = await conn.fetch(
                """
                SELECT s.series_id FROM series s WHERE s.series_id = ANY($1::int8[]) AND (
                  ($2::timestamptz < $3::timestamptz AND (
                    EXISTS (SELECT 1 FROM samples_sealed b WHERE b.series_id = s.series_id
                            AND b.block_start >= $4 AND b.block_start < $3 AND b.t_first < $3 AND b.t_last >= $2)
                    OR EXISTS (SELECT 1 FROM raw_frames f WHERE f.host_id = s.host_id
                               AND f.ts >= $2 AND f.ts < $3 AND s.series_id = ANY(f.ids))))
                  OR ($5::timestamptz < $6::timestamptz AND EXISTS (
                    SELECT 1 FROM rollup_1m m WHERE m.series_id = s.series_id
                    AND m.bucket > $5::timestamptz - interval '1 minute' AND m.bucket < $6 AND m.count > 0))
                  OR ($7::timestamptz < $8::timestamptz AND EXISTS (
                    SELECT 1 FROM rollup_1h h WHERE h.series_id = s.series_id
                    AND h.bucket > $7::timestamptz - interval '1 hour' AND h.bucket < $8 AND h.count > 0)))
                """,
                [e.id for e in entries], _dt(raw_lo), _dt(hi), _dt(raw_lo - raw_lo % HOUR_MS),
                _dt(minute_lo), _dt(old_hi), _dt(start_ms), _dt(hour_hi),
            )
        found = {r[0] for r in rows}
        return [e for e in entries if e.id in found]

    async def _rollups(self, conn: asyncpg.Connection, entries: Sequence[CatalogEntry], start_ms: int,
                       end_ms: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """One point per 1-minute rollup ending in [start_ms, end_ms): a counter's max, a gauge's mean."""
        counters = [e.id for e in entries if e.kind == COUNTER]
        rows = await conn.fetch(
            """
            SELECT series_id, array_agg((extract(epoch FROM bucket) * 1000)::int8 + $4 - 1 ORDER BY bucket),
                   array_agg(CASE WHEN series_id = ANY($5::int8[]) THEN max::float8
                                  ELSE (sum / count)::float8 END ORDER BY bucket)
            FROM rollup_1m
            WHERE series_id = ANY($1::int8[]) AND bucket >= $2 AND bucket < $3 AND count > 0
            GROUP BY series_id
            """,
            [e.id for e in entries], _dt(start_ms - ROLLUP_MS + 1), _dt(end_ms - ROLLUP_MS + 1), ROLLUP_MS, counters,
        )
        return {r[0]: (np.asarray(r[1], dtype=np.int64), np.asarray(r[2], dtype=np.float64)) for r in rows}


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
