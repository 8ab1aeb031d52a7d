"""Reading the raw tier: sealed blocks and open frames through one function.

Every reader of raw samples (queries, the alerts service's windows, a host's current values)
comes here, so none of them knows whether an hour is sealed yet: `read` gives each series'
samples in a time range sorted by time, one value per time, wherever they are stored. Where a
time is both in a block and in an open row (a late duplicate not merged yet), the block's value
is the one kept, as the row store keeps the first written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from sysmon.core.storage import codec
from sysmon.core.storage.partitions import EPOCH, SEALED, floor_time

Samples = tuple[np.ndarray, np.ndarray]  # (Unix ms int64, float64), sorted by time
_EMPTY_TS = np.empty(0, dtype=np.int64)
_EMPTY_VALUES = np.empty(0, dtype=np.float64)

LATEST_FRAMES = 720


def _ms(t: datetime) -> int:
    return int((t - EPOCH) / timedelta(milliseconds=1))


async def read(conn: asyncpg.Connection, ids: Sequence[int], start: datetime, end: datetime) -> dict[int, Samples]:
    """Each series' samples with start <= time < end."""
    ids = list(ids)
    lo, hi = _ms(start), _ms(end)
    # Blocks and open frames in one round trip; each series' open samples as two arrays (asyncpg
    # decodes arrays in C, where a row per sample costs more in Python than the query). A frame is
    # found through its host (the frames' index) and gives the series' value by its position.
    fetched = await conn.fetch(
        """
        SELECT series_id, block_start, ts_data, val_data, NULL::int8[] AS ts, NULL::float8[] AS vals
        FROM samples_sealed
        WHERE series_id = ANY($1::int8[]) AND block_start >= $2 AND block_start < $4
        UNION ALL
        SELECT s.series_id, NULL, NULL, NULL, array_agg((extract(epoch FROM f.ts) * 1000)::int8 ORDER BY f.ts),
               array_agg(f.vals[array_position(f.ids, s.series_id)] ORDER BY f.ts)
        FROM series s JOIN raw_frames f ON f.host_id = s.host_id
        WHERE s.series_id = ANY($1::int8[]) AND f.ts >= $3 AND f.ts < $4 AND s.series_id = ANY(f.ids)
        GROUP BY s.series_id
        """,
        ids, floor_time(start, SEALED.interval), start, end,
    )
    blocks = sorted((r[0], r[1], r[2], r[3]) for r in fetched if r[1] is not None)
    rows = [(r[0], r[4], r[5]) for r in fetched if r[1] is None]
    sealed: dict[int, list[Samples]] = {}
    for sid, _, ts_data, val_data in blocks:
        ts, values = codec.decode(ts_data, val_data)
        if ts[0] < lo or ts[-1] >= hi:
            keep = (ts >= lo) & (ts < hi)
            ts, values = ts[keep], values[keep]
        if len(ts):
            sealed.setdefault(sid, []).append((ts, values))
    out: dict[int, Samples] = {}
    for sid, parts in sealed.items():
        # Blocks are whole hours in order: concatenated, they stay sorted.
        out[sid] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])) \
            if len(parts) > 1 else parts[0]
    for sid, ts_list, value_list in rows:
        ts = np.fromiter(ts_list, dtype=np.int64, count=len(ts_list))
        values = np.fromiter(value_list, dtype=np.float64, count=len(value_list))
        have = out.get(sid)
        if have is None:
            out[sid] = (ts, values)
        else:
            merged_ts, merged_values, _ = codec.merge(have[0], have[1], ts, values)
            out[sid] = (merged_ts, merged_values)
    return out


async def latest(conn: asyncpg.Connection, host: str) -> list[dict[str, Any]]:
    """The newest sample of each series of a host: {name, attributes, unit, t (Unix ms), value},
    from its newest frames and its blocks' last values, whichever is later."""
    series = {r["series_id"]: r for r in await conn.fetch(
        "SELECT series_id, name, attributes, unit FROM series WHERE host_id = $1", host)}
    newest: dict[int, tuple[int, float]] = {
        r["series_id"]: (r["t"], r["last"]) for r in await conn.fetch(
            """
            SELECT DISTINCT ON (series_id) series_id, (extract(epoch FROM t_last) * 1000)::int8 AS t, last
            FROM samples_sealed WHERE series_id = ANY($1::int8[]) ORDER BY series_id, block_start DESC
            """, list(series))}
    # An hour of frames at most: every series a collector samples is in its newest frames.
    found: set[int] = set()
    for r in await conn.fetch(
            "SELECT (extract(epoch FROM ts) * 1000)::int8 AS t, ids, vals FROM raw_frames WHERE host_id = $1 "
            "ORDER BY ts DESC LIMIT $2", host, LATEST_FRAMES):
        for sid, v in zip(r["ids"], r["vals"], strict=True):
            if sid not in found:
                found.add(sid)
                have = newest.get(sid)
                if have is None or r["t"] > have[0]:
                    newest[sid] = (r["t"], v)
        if len(found) == len(series):
            break
    out = [{"name": series[sid]["name"], "attributes": series[sid]["attributes"], "unit": series[sid]["unit"],
            "t": t, "value": v} for sid, (t, v) in newest.items() if sid in series]
    return sorted(out, key=lambda r: (r["name"], json.dumps(r["attributes"], sort_keys=True)))


EMPTY: Samples = (_EMPTY_TS, _EMPTY_VALUES)
