"""Reading the raw tier: sealed blocks and open rows through one function.

Every reader of raw samples (queries, the alerts service's windows, a host's current values)
comes here, so none of them knows whether an hour is sealed yet: `read` gives each series'
samples in a time range sorted by time, one value per time, wherever they are stored. Where a
time is both in a block and in an open row (a late duplicate not merged yet), the block's value
is the one kept, as the row store keeps the first written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import numpy as np

from sysmon.core.storage import codec
from sysmon.core.storage.partitions import EPOCH, SEALED, floor_time

Samples = tuple[np.ndarray, np.ndarray]  # (Unix ms int64, float64), sorted by time
_EMPTY_TS = np.empty(0, dtype=np.int64)
_EMPTY_VALUES = np.empty(0, dtype=np.float64)

# The time of a raw row in Unix ms, computed by PostgreSQL (decoding timestamptz per row in Python
# costs more than the query).
_MS = "(extract(epoch FROM ts) * 1000)::int8"


def _ms(t: datetime) -> int:
    return int((t - EPOCH) / timedelta(milliseconds=1))


async def read(conn: asyncpg.Connection, ids: Sequence[int], start: datetime, end: datetime) -> dict[int, Samples]:
    """Each series' samples with start <= time < end."""
    ids = list(ids)
    lo, hi = _ms(start), _ms(end)
    # Blocks and open rows in one round trip; the open rows as two arrays per series (asyncpg
    # decodes arrays in C, where a row per sample costs more in Python than the query).
    fetched = await conn.fetch(
        f"""
        SELECT series_id, block_start, ts_data, val_data, NULL::int8[] AS ts, NULL::float8[] AS vals
        FROM samples_sealed
        WHERE series_id = ANY($1::int8[]) AND block_start >= $2 AND block_start < $4
        UNION ALL
        SELECT series_id, NULL, NULL, NULL, array_agg({_MS} ORDER BY ts), array_agg(value ORDER BY ts)
        FROM samples_raw
        WHERE series_id = ANY($1::int8[]) AND ts >= $3 AND ts < $4
        GROUP BY series_id
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


async def latest(conn: asyncpg.Connection, host: str) -> list[asyncpg.Record]:
    """The newest sample of each series of a host: (name, attributes, unit, t in Unix ms, value),
    from an open row, or else the newest block's last value."""
    return await conn.fetch(
        f"""
        SELECT s.name, s.attributes, s.unit,
               CASE WHEN r.t IS NULL OR (b.t IS NOT NULL AND b.t > r.t) THEN b.t ELSE r.t END AS t,
               CASE WHEN r.t IS NULL OR (b.t IS NOT NULL AND b.t > r.t) THEN b.value ELSE r.value END AS value
        FROM series s
        LEFT JOIN LATERAL (
            SELECT {_MS} AS t, value FROM samples_raw r WHERE r.series_id = s.series_id ORDER BY ts DESC LIMIT 1
        ) r ON true
        LEFT JOIN LATERAL (
            SELECT (extract(epoch FROM t_last) * 1000)::int8 AS t, last AS value FROM samples_sealed b
            WHERE b.series_id = s.series_id ORDER BY block_start DESC LIMIT 1
        ) b ON true
        WHERE s.host_id = $1 AND (r.t IS NOT NULL OR b.t IS NOT NULL)
        ORDER BY s.name, s.attributes::text
        """,
        host,
    )


EMPTY: Samples = (_EMPTY_TS, _EMPTY_VALUES)
