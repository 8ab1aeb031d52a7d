"""Sealing: each closed hour of raw rows becomes one block per series (sysmon.core.storage.codec).

Samples arrive as rows in the hour's raw partition (the open area). Once the hour has ended (and a
grace period for commits in flight has passed) and its 1-minute rollups are computed, one
transaction locks the partition against writers, reads it in series order, writes one block per
series into samples_sealed, records the hour as sealed, and empties the partition. A crash (or a
kill) anywhere before the commit leaves the rows; after it, the blocks: never both, never neither.

Samples that arrive later for a sealed hour (a collector replaying its buffer) go into the
hour's emptied partition as usual; the next run merges them into the blocks (the first value
written for a time wins, as in the row store), computes the touched 1-minute rollups again from
the merged samples, marks the hour for the 1-hour rollup, and empties the partition again. The
rollup job leaves sealed hours to this module (rollups.without_hours).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import numpy as np

from sysmon.core.storage import codec, partitions, rollups
from sysmon.core.storage.partitions import EPOCH, Partition

log = logging.getLogger(__name__)

# Commits of an hour's last batches may still be in flight when it ends.
GRACE = timedelta(minutes=2)
# Rows read at once while sealing: bounds memory to tens of MiB whatever the fleet's size.
CHUNK_ROWS = 500_000
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1

_COPY_HEADER = 19  # signature, flags, header extension length
_ROW = np.dtype([("ncols", ">i2"), ("len_id", ">i4"), ("series_id", ">i8"), ("len_ts", ">i4"), ("ts", ">i8"),
                 ("len_value", ">i4"), ("value", ">f8")])
_PG_EPOCH_MS = 946_684_800_000
_COLUMNS = ["series_id", "block_start", "count", "t_first", "t_last", "min", "max", "sum", "last", "ts_data",
            "val_data"]


@dataclass
class SealRun:
    sealed: list[datetime] = field(default_factory=list)
    merged: list[datetime] = field(default_factory=list)
    waiting: list[datetime] = field(default_factory=list)  # rollups not computed yet
    failed: list[tuple[datetime, str]] = field(default_factory=list)  # hours that could not be sealed
    series: int = 0
    samples: int = 0
    encoded_bytes: int = 0
    duplicates: int = 0  # late samples for a time a block already had
    seconds: float = 0.0


def _dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def id_ranges(chunks: int) -> list[tuple[int, int]]:
    """`chunks` inclusive ranges that split the int8 series ids evenly (ids are hashes: so do rows)."""
    width = (INT8_MAX - INT8_MIN + 1) // chunks
    out = []
    lo = INT8_MIN
    for i in range(chunks):
        hi = INT8_MAX if i == chunks - 1 else lo + width - 1
        out.append((lo, hi))
        lo = hi + 1
    return out


def parse_copy(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series ids, times in Unix ms, values) from PostgreSQL's binary COPY of (series_id, ts, value)."""
    rows = np.frombuffer(data, dtype=_ROW, offset=_COPY_HEADER, count=(len(data) - _COPY_HEADER - 2) // _ROW.itemsize)
    return (rows["series_id"].astype(np.int64), rows["ts"].astype(np.int64) // 1000 + _PG_EPOCH_MS,
            rows["value"].astype(np.float64))


def segments(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(series id, start, end) of each run of one series in rows sorted by series."""
    if not len(ids):
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return list(zip(ids[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))


def record(series_id: int, block_start: datetime, b: codec.Block) -> tuple[Any, ...]:
    return (series_id, block_start, b.count, _dt(b.t_first), _dt(b.t_last), b.vmin, b.vmax, b.vsum, b.vlast,
            b.ts_data, b.val_data)


def minute_rollups(series_id: int, ts: np.ndarray, values: np.ndarray,
                   minutes: set[int]) -> list[tuple[int, datetime, float, float, Decimal, int]]:
    """rollup_1m rows (series, bucket, min, max, sum, count) of the given minutes (Unix ms), from a
    series' samples: the exact sum of shortest decimal forms, as the rollup job computes it."""
    out = []
    keys = ts - ts % 60_000
    for m in sorted(minutes):
        sel = values[keys == m].tolist()
        if sel:
            out.append((series_id, _dt(m), min(sel), max(sel), sum(Decimal(repr(v)) for v in sel), len(sel)))
    return out


async def _copy_rows(conn: asyncpg.Connection, table: str, ids: tuple[int, int] | None = None) -> bytes:
    buf = bytearray()

    async def sink(chunk: bytes) -> None:
        buf.extend(chunk)

    where = "WHERE series_id BETWEEN $1 AND $2" if ids is not None else ""
    await conn.copy_from_query(f"SELECT series_id, ts, value FROM {table} {where} ORDER BY series_id, ts",
                               *(ids or ()), output=sink, format="binary")
    return bytes(buf)


async def raw_partitions(conn: asyncpg.Connection, mode: Literal["plain", "timescale"]) -> list[Partition]:
    """The open area's hours: plain partitions, or TimescaleDB chunks (hour-long, see 0002)."""
    if mode == "timescale":
        rows = await conn.fetch(
            """
            SELECT format('%I.%I', chunk_schema, chunk_name) AS name, range_start, range_end
            FROM timescaledb_information.chunks WHERE hypertable_name = 'samples_raw'
            """)
        return sorted(Partition(r["range_start"], r["range_end"], r["name"]) for r in rows)
    return await rollups.existing_partitions(conn, partitions.RAW.table)


async def seal_once(conn: asyncpg.Connection, now: datetime, *, mode: Literal["plain", "timescale"] = "plain",
                    grace: timedelta = GRACE) -> SealRun:
    """Seal every closed hour not sealed yet, and merge late samples into sealed hours."""
    t0 = time.perf_counter()
    run = SealRun()
    sealed = {r["hour"] for r in await conn.fetch("SELECT hour FROM raw_sealed_hours")}
    for p in await raw_partitions(conn, mode):
        # An hour with no rows is left alone: sealing it would only make later rows a merge.
        if p.hi > now - grace or not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {p.name})"):
            continue
        try:
            if p.lo in sealed:
                await _merge(conn, p, run, mode)
            else:
                await _seal(conn, p, run, mode)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError) as e:
            # This hour stays open (its transaction rolled back) and is tried again; the others go on.
            run.failed.append((p.lo, f"{e.__class__.__name__}: {e}"))
    run.seconds = time.perf_counter() - t0
    return run


class _Wait(Exception):
    """The hour's rollups are not done: leave it for the next run (the transaction rolls back)."""


async def _seal(conn: asyncpg.Connection, p: Partition, run: SealRun, mode: str) -> None:
    # All-visible pages make the reads below index-only (VACUUM cannot run in a transaction).
    await conn.execute(f"VACUUM (ANALYZE) {p.name}")
    if mode == "plain":
        await rollups.ensure_partition(conn, partitions.SEALED, p.lo)
    series = samples = encoded = 0
    try:
        async with conn.transaction():
            # Writers wait (readers do not): nothing committed after the read below can be emptied unseen.
            await conn.execute(f"LOCK TABLE {p.name} IN SHARE ROW EXCLUSIVE MODE")
            # Checked under the lock: a writer's rows and its rollup note commit together.
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM rollup_invalidations WHERE tier = '1m' AND lo < $2 AND hi > $1)",
                p.lo, p.hi,
            ):
                raise _Wait
            rows = await conn.fetchval("SELECT reltuples::int8 FROM pg_class WHERE oid = $1::regclass", p.name)
            chunks = max(1, math.ceil(max(rows or 0, 0) / CHUNK_ROWS))
            for ids_range in id_ranges(chunks) if chunks > 1 else [None]:
                ids, ts, values = parse_copy(await _copy_rows(conn, p.name, ids_range))
                records = []
                for sid, a, b in segments(ids):
                    block = codec.encode(ts[a:b], values[a:b])
                    records.append(record(sid, p.lo, block))
                    encoded += block.encoded_bytes
                    samples += block.count
                if records:
                    await conn.copy_records_to_table("samples_sealed", records=records, columns=_COLUMNS)
                series += len(records)
            await conn.execute(
                "INSERT INTO raw_sealed_hours (hour, series, samples, encoded_bytes) VALUES ($1, $2, $3, $4)",
                p.lo, series, samples, encoded,
            )
            await conn.execute(f"TRUNCATE {p.name}")
    except _Wait:
        run.waiting.append(p.lo)
        return
    run.sealed.append(p.lo)
    run.series += series
    run.samples += samples
    run.encoded_bytes += encoded
    if samples:
        log.info("sealed %s: %d samples of %d series in %d bytes (%.2f B/sample)", p.lo.isoformat(), samples,
                 series, encoded, encoded / samples)


async def _merge(conn: asyncpg.Connection, p: Partition, run: SealRun, mode: str) -> None:
    if mode == "plain":
        await rollups.ensure_partition(conn, partitions.SEALED, p.lo)
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {p.name} IN SHARE ROW EXCLUSIVE MODE")
        ids, ts, values = parse_copy(await _copy_rows(conn, p.name))
        late = {sid: (ts[a:b], values[a:b]) for sid, a, b in segments(ids)}
        blocks = {r["series_id"]: r for r in await conn.fetch(
            "SELECT series_id, ts_data, val_data FROM samples_sealed WHERE series_id = ANY($1::int8[]) "
            "AND block_start = $2", list(late), p.lo)}
        records = []
        minutes: list[tuple[int, datetime, float, float, Decimal, int]] = []
        added = duplicates = 0
        for sid, (new_ts, new_values) in late.items():
            have = blocks.get(sid)
            if have is not None:
                old_ts, old_values = codec.decode(have["ts_data"], have["val_data"])
                merged_ts, merged_values, dropped = codec.merge(old_ts, old_values, new_ts, new_values)
            else:
                merged_ts, merged_values, dropped = new_ts, new_values, 0
            duplicates += dropped
            added += len(new_ts) - dropped
            records.append(record(sid, p.lo, codec.encode(merged_ts, merged_values)))
            minutes += minute_rollups(sid, merged_ts, merged_values, set((new_ts - new_ts % 60_000).tolist()))
        await conn.executemany(
            f"""
            INSERT INTO samples_sealed ({", ".join(_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (series_id, block_start) DO UPDATE SET count = EXCLUDED.count, t_first = EXCLUDED.t_first,
                t_last = EXCLUDED.t_last, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
                last = EXCLUDED.last, ts_data = EXCLUDED.ts_data, val_data = EXCLUDED.val_data
            """,
            records,
        )
        await conn.executemany(
            """
            INSERT INTO rollup_1m (series_id, bucket, min, max, sum, count) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (series_id, bucket) DO UPDATE
            SET min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum, count = EXCLUDED.count
            """,
            minutes,
        )
        await conn.execute("INSERT INTO rollup_invalidations VALUES ('1h', $1, $2)", p.lo, p.hi)
        await conn.execute("DELETE FROM rollup_invalidations WHERE tier = '1m' AND lo >= $1 AND hi <= $2",
                           p.lo, p.hi)
        await conn.execute(
            "UPDATE raw_sealed_hours SET samples = samples + $2, merges = merges + 1, "
            "series = (SELECT count(*) FROM samples_sealed WHERE block_start = $1) WHERE hour = $1",
            p.lo, added,
        )
        await conn.execute(f"TRUNCATE {p.name}")
    run.merged.append(p.lo)
    run.samples += added
    run.duplicates += duplicates
    log.info("merged %d late samples into the sealed hour %s (%d already there)", added, p.lo.isoformat(),
             duplicates)
