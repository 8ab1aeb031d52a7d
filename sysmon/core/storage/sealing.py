"""Sealing: each closed hour of raw rows becomes one block per series (sysmon.core.storage.codec).

Samples arrive as frames (a host's series at one time) in the hour's raw partition (the open area).
Once the hour has ended (and a grace period for commits in flight has passed) and its 1-minute
rollups are computed, one transaction locks the partition against writers, reads its frames a few
hosts at a time, writes one block per series into samples_sealed, records the hour as sealed, and
empties the partition. A crash (or a
kill) anywhere before the commit leaves the rows; after it, the blocks: never both, never neither.

Samples that arrive later for a sealed hour (a collector replaying its buffer) go into the
hour's emptied partition as usual; the next run merges them into the blocks (the first value
written for a time wins, as in the row store), computes the touched 1-minute rollups again from
the merged samples, marks the hour for the 1-hour rollup, and empties the partition again. The
rollup job leaves sealed hours to this module (rollups.without_hours).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
# Frames read at once while sealing: bounds memory to tens of MiB whatever the fleet's size.
CHUNK_FRAMES = 20_000
_COLUMNS = ["series_id", "block_start", "count", "t_first", "t_last", "min", "max", "sum", "last", "ts_data",
            "val_data"]
Samples = tuple[np.ndarray, np.ndarray]


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


def frames_to_series(rows: Sequence[tuple[int, Sequence[int], Sequence[float]]]) -> dict[int, Samples]:
    """Each series' (times in Unix ms, values), sorted by time, from frames (time, ids, values) of
    hosts whose frames come in time order. Frames of one layout (the same series in the same order,
    as a collector sends them) become one matrix, sliced by column."""
    layouts: dict[tuple[int, ...], tuple[list[int], list[Sequence[float]]]] = {}
    for t, ids, vals in rows:
        times, values = layouts.setdefault(tuple(ids), ([], []))
        times.append(t)
        values.append(vals)
    parts: dict[int, list[Samples]] = {}
    for layout, (times, values) in layouts.items():
        ts = np.asarray(times, dtype=np.int64)
        matrix = np.asarray(values, dtype=np.float64).reshape(len(times), len(layout))
        for j, sid in enumerate(layout):
            parts.setdefault(sid, []).append((ts, np.ascontiguousarray(matrix[:, j])))
    out: dict[int, Samples] = {}
    for sid, ps in parts.items():
        if len(ps) == 1:
            out[sid] = ps[0]
            continue
        ts = np.concatenate([p[0] for p in ps])
        vs = np.concatenate([p[1] for p in ps])
        order = np.argsort(ts, kind="stable")
        out[sid] = (ts[order], vs[order])
    return out


async def _read_frames(conn: asyncpg.Connection, table: str, hosts: list[str] | None = None) -> dict[int, Samples]:
    where = "WHERE host_id = ANY($1::text[])" if hosts is not None else ""
    rows = await conn.fetch(
        f"SELECT host_id, (extract(epoch FROM ts) * 1000)::int8 AS t, ids, vals FROM {table} {where} "
        "ORDER BY host_id, ts", *((hosts,) if hosts is not None else ()))
    out: dict[int, Samples] = {}
    start = 0
    # Host by host: a series belongs to one host, so each host's frames give its series whole.
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i]["host_id"] != rows[start]["host_id"]:
            out.update(frames_to_series([(r["t"], r["ids"], r["vals"]) for r in rows[start:i]]))
            start = i
    return out


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


async def raw_partitions(conn: asyncpg.Connection, mode: Literal["plain", "timescale"]) -> list[Partition]:
    """The open area's hours: plain partitions, or TimescaleDB chunks (hour-long, see 0002)."""
    if mode == "timescale":
        rows = await conn.fetch(
            """
            SELECT format('%I.%I', chunk_schema, chunk_name) AS name, range_start, range_end
            FROM timescaledb_information.chunks WHERE hypertable_name = 'raw_frames'
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
    # The frame count that sizes the chunks read below.
    await conn.execute(f"ANALYZE {p.name}")
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
            hosts = [r[0] for r in await conn.fetch(f"SELECT DISTINCT host_id FROM {p.name} ORDER BY 1")]
            frames = await conn.fetchval("SELECT reltuples::int8 FROM pg_class WHERE oid = $1::regclass", p.name)
            per_chunk = max(1, CHUNK_FRAMES * len(hosts) // max(frames or 0, 1))
            for i in range(0, len(hosts), per_chunk):
                records = []
                for sid, (ts, values) in (await _read_frames(conn, p.name, hosts[i:i + per_chunk])).items():
                    block = codec.encode(ts, values)
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
        late = await _read_frames(conn, p.name)
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
