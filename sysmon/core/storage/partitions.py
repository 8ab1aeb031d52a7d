"""Time-range partitions for the plain PostgreSQL path: which should exist, which may go.

Pure functions over (now, retention); sysmon.core.storage.maintenance runs the SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PartitionedTable:
    table: str
    interval: timedelta
    # Run on each new partition (older PostgreSQL versions do not copy a column's storage).
    after_create: str = ""


# An hour per raw partition keeps retention within an hour of exact, and is the unit of sealing:
# a raw partition's frames become one block per series in the sealed partition of the same hour.
RAW = PartitionedTable("raw_frames", timedelta(hours=1))
SEALED = PartitionedTable(
    "samples_sealed", timedelta(hours=1),
    "ALTER TABLE {name} ALTER COLUMN ts_data SET STORAGE EXTERNAL, ALTER COLUMN val_data SET STORAGE EXTERNAL",
)
ROLLUP_1M = PartitionedTable("rollup_1m", timedelta(days=1))
ROLLUP_1H = PartitionedTable("rollup_1h", timedelta(days=30))
TABLES = (RAW, SEALED, ROLLUP_1M, ROLLUP_1H)


@dataclass(frozen=True, order=True)
class Partition:
    lo: datetime
    hi: datetime
    name: str


def floor_time(t: datetime, step: timedelta) -> datetime:
    return EPOCH + ((t - EPOCH) // step) * step


def partition_for(table: PartitionedTable, lo: datetime) -> Partition:
    return Partition(lo, lo + table.interval, f"{table.table}_p{lo:%Y%m%dt%H%M}")


def wanted(table: PartitionedTable, now: datetime, keep: timedelta, ahead: timedelta) -> list[Partition]:
    """Partitions covering [now - keep, now + ahead): every timestamp the edge accepts has a home."""
    start = floor_time(now - keep, table.interval)
    end = now + max(ahead, table.interval)
    out = []
    t = start
    while t < end:
        out.append(partition_for(table, t))
        t += table.interval
    return out


def droppable(existing: list[Partition], now: datetime, retention: timedelta) -> list[Partition]:
    """Partitions whose every row is older than the retention."""
    cutoff = now - retention
    return [p for p in existing if p.hi <= cutoff]


_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def parse_bound(name: str, expr: str) -> Partition | None:
    """Parse pg_get_expr(relpartbound) of a range partition (session time zone UTC)."""
    m = _BOUND.search(expr)
    if not m:
        return None
    lo, hi = (datetime.fromisoformat(x).astimezone(UTC) for x in m.groups())
    return Partition(lo, hi, name)
