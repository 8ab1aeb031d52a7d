"""Time-range partitions for the plain PostgreSQL path: which to create, which to drop, bounds parsing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.storage.partitions import (
    EPOCH,
    RAW,
    ROLLUP_1H,
    ROLLUP_1M,
    Partition,
    PartitionedTable,
    droppable,
    floor_time,
    parse_bound,
    partition_for,
    wanted,
)

NOW = datetime(2026, 11, 24, 10, 37, 12, 345000, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("t", "step", "expected"),
    [
        (NOW, H, datetime(2026, 11, 24, 10, tzinfo=UTC)),
        (NOW, timedelta(minutes=1), datetime(2026, 11, 24, 10, 37, tzinfo=UTC)),
        (NOW, timedelta(seconds=5), datetime(2026, 11, 24, 10, 37, 10, tzinfo=UTC)),
        (NOW, timedelta(days=1), datetime(2026, 11, 24, tzinfo=UTC)),
        (datetime(2026, 11, 24, 10, tzinfo=UTC), H, datetime(2026, 11, 24, 10, tzinfo=UTC)),
        (datetime(1969, 12, 31, 23, 30, tzinfo=UTC), H, datetime(1969, 12, 31, 23, tzinfo=UTC)),
    ],
)
def test_floor_time(t: datetime, step: timedelta, expected: datetime) -> None:
    assert floor_time(t, step) == expected


def test_floor_time_is_aligned_to_the_unix_epoch() -> None:
    # 30-day partitions start at multiples of 30 days since 1970-01-01, not at month starts.
    f = floor_time(NOW, timedelta(days=30))
    assert (f - EPOCH) % timedelta(days=30) == timedelta(0)
    assert f <= NOW < f + timedelta(days=30)


def test_floor_time_of_another_time_zone_is_the_same_instant() -> None:
    t = NOW.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert floor_time(t, H) == datetime(2026, 11, 24, 10, tzinfo=UTC)


@given(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from([timedelta(seconds=5), timedelta(minutes=1), H, timedelta(days=1), timedelta(days=30)]),
)
def test_floor_time_properties(t: datetime, step: timedelta) -> None:
    f = floor_time(t, step)
    assert f <= t < f + step
    assert (f - EPOCH) % step == timedelta(0)


def test_partition_names_and_bounds() -> None:
    lo = datetime(2026, 11, 24, 10, tzinfo=UTC)
    p = partition_for(RAW, lo)
    assert p == Partition(lo, lo + H, "raw_frames_p20261124t1000")
    assert partition_for(ROLLUP_1M, datetime(2026, 11, 24, tzinfo=UTC)).name == "rollup_1m_p20261124t0000"
    assert partition_for(ROLLUP_1M, datetime(2026, 11, 24, tzinfo=UTC)).hi == datetime(2026, 11, 25, tzinfo=UTC)


def test_wanted_raw_covers_keep_back_to_ahead() -> None:
    ps = wanted(RAW, NOW, keep=timedelta(hours=3), ahead=timedelta(minutes=5))
    los = [p.lo for p in ps]
    # From the hour holding now - keep, through the next hour: one partition is always made ahead of time.
    assert los == [datetime(2026, 11, 24, h, tzinfo=UTC) for h in (7, 8, 9, 10, 11)]
    assert [p.name for p in ps] == [f"raw_frames_p20261124t{h:02d}00" for h in (7, 8, 9, 10, 11)]
    assert ps[0].lo <= NOW - timedelta(hours=3)
    assert ps[-1].hi >= NOW + timedelta(minutes=5)


def test_wanted_reaches_as_far_ahead_as_asked() -> None:
    ps = wanted(RAW, NOW, keep=timedelta(0), ahead=timedelta(hours=3))
    assert [p.lo.hour for p in ps] == [10, 11, 12, 13]
    assert ps[-1].hi >= NOW + timedelta(hours=3)


def test_wanted_includes_the_next_partition_when_ahead_crosses_into_it() -> None:
    now = datetime(2026, 11, 24, 10, 58, tzinfo=UTC)
    ps = wanted(RAW, now, keep=timedelta(0), ahead=timedelta(minutes=5))
    assert [p.lo.hour for p in ps] == [10, 11]
    assert ps[-1].hi >= now + timedelta(minutes=5)


def test_wanted_partitions_are_contiguous_and_non_overlapping() -> None:
    ps = wanted(ROLLUP_1M, NOW, keep=timedelta(days=7), ahead=timedelta(minutes=5))
    assert all(a.hi == b.lo for a, b in itertools.pairwise(ps))
    assert all(p.hi - p.lo == timedelta(days=1) for p in ps)
    assert ps[0].lo == datetime(2026, 11, 17, tzinfo=UTC)
    assert ps[-1].lo == datetime(2026, 11, 25, tzinfo=UTC)  # tomorrow's is made ahead of time
    assert len(ps) == 9


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from([RAW, ROLLUP_1M, ROLLUP_1H, PartitionedTable("t", timedelta(minutes=15))]),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)),
)
def test_wanted_covers_every_accepted_timestamp(
    now: datetime, table: PartitionedTable, keep: timedelta, ahead: timedelta
) -> None:
    ps = wanted(table, now, keep, ahead)
    assert ps[0].lo <= now - keep
    assert ps[-1].hi >= now + ahead
    assert ps[-1].hi > now  # "now" always has a home
    assert all(a.hi == b.lo for a, b in itertools.pairwise(ps))
    assert all((p.lo - EPOCH) % table.interval == timedelta(0) for p in ps)


def _raw(h: int) -> Partition:
    return partition_for(RAW, datetime(2026, 11, 24, h, tzinfo=UTC))


def test_droppable_only_fully_expired_partitions() -> None:
    existing = [_raw(h) for h in range(5, 12)]
    now = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)
    # cutoff 09:30: 05..08 end by 09:00 (<= cutoff); 09 ends at 10:00 and holds rows newer than the cutoff.
    dropped = droppable(existing, now, timedelta(hours=3))
    assert [p.lo.hour for p in dropped] == [5, 6, 7, 8]


def test_droppable_partition_ending_exactly_at_the_cutoff() -> None:
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert droppable([_raw(8), _raw(9)], now, timedelta(hours=3)) == [_raw(8)]


def test_droppable_nothing_when_all_are_recent() -> None:
    assert droppable([_raw(10), _raw(11)], NOW, timedelta(hours=24)) == []
    assert droppable([], NOW, timedelta(hours=1)) == []


def test_parse_bound_of_pg_get_expr_output() -> None:
    expr = "FOR VALUES FROM ('2026-11-24 10:00:00+00') TO ('2026-11-24 11:00:00+00')"
    p = parse_bound("raw_frames_p20261124t1000", expr)
    assert p == Partition(
        datetime(2026, 11, 24, 10, tzinfo=UTC), datetime(2026, 11, 24, 11, tzinfo=UTC), "raw_frames_p20261124t1000"
    )
    assert p is not None
    assert p.lo.utcoffset() == timedelta(0)


def test_parse_bound_normalizes_other_offsets_to_utc() -> None:
    p = parse_bound("x", "FOR VALUES FROM ('2026-11-24 12:00:00+02') TO ('2026-11-24 13:00:00+02')")
    assert p is not None
    assert p.lo == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert p.lo.tzinfo == UTC


def test_parse_bound_round_trips_a_wanted_partition() -> None:
    p = _raw(10)
    expr = f"FOR VALUES FROM ('{p.lo:%Y-%m-%d %H:%M:%S}+00') TO ('{p.hi:%Y-%m-%d %H:%M:%S}+00')"
    assert parse_bound(p.name, expr) == p


@pytest.mark.parametrize("expr", ["DEFAULT", "FOR VALUES IN ('a')", "", "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"])
def test_parse_bound_of_other_partitions_is_none(expr: str) -> None:
    assert parse_bound("x", expr) is None


def test_partitions_sort_by_time() -> None:
    assert sorted([_raw(11), _raw(9), _raw(10)]) == [_raw(9), _raw(10), _raw(11)]
