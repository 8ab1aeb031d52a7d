"""The rollup job's pure planning: merging logged ranges, ready vs. open buckets, slicing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.storage.rollups import SLICE, TIER_1H, TIER_1M, merge, plan, slices

M = timedelta(minutes=1)
H = timedelta(hours=1)


def t(h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2026, 11, 24, h, m, s, tzinfo=UTC)


# --- merge -------------------------------------------------------------------------------------


def test_merge_empty() -> None:
    assert merge([]) == []


def test_merge_overlapping_adjacent_and_separate_ranges_in_any_order() -> None:
    ranges = [(t(12), t(13)), (t(10), t(10, 30)), (t(10, 20), t(11)), (t(11), t(11, 15)), (t(10, 5), t(10, 10))]
    assert merge(ranges) == [(t(10), t(11, 15)), (t(12), t(13))]


def test_merge_keeps_a_gap_apart() -> None:
    assert merge([(t(10), t(10, 1)), (t(10, 1, 1), t(10, 2))]) == [(t(10), t(10, 1)), (t(10, 1, 1), t(10, 2))]


def test_merge_contained_range() -> None:
    assert merge([(t(10), t(12)), (t(10, 30), t(11))]) == [(t(10), t(12))]


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50)), max_size=20))
def test_merge_result_is_sorted_disjoint_and_covers_the_same_points(raw: list[tuple[int, int]]) -> None:
    ranges = [(lo, lo + n) for lo, n in raw]
    out = merge(ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(out))
    covered = {x for lo, hi in ranges for x in range(lo, hi)}
    assert {x for lo, hi in out for x in range(lo, hi)} == covered


# --- plan ----------------------------------------------------------------------------------------


def test_plan_closed_buckets_ready_open_bucket_kept_for_later() -> None:
    ready, later = plan([(t(10, 0, 30), t(10, 2, 10))], M, now=t(10, 2, 30))
    assert ready == [(t(10, 0), t(10, 2))]
    assert later == [(t(10, 2), t(10, 3))]


def test_plan_everything_ready_once_the_bucket_closes() -> None:
    ready, later = plan([(t(10, 0, 30), t(10, 2, 10))], M, now=t(10, 3))
    assert ready == [(t(10, 0), t(10, 3))]
    assert later == []


def test_plan_range_entirely_in_the_open_bucket_waits() -> None:
    ready, later = plan([(t(10, 2, 1), t(10, 2, 40))], M, now=t(10, 2, 50))
    assert ready == []
    assert later == [(t(10, 2), t(10, 3))]


def test_plan_exclusive_end_on_a_bucket_boundary_does_not_reach_the_next_bucket() -> None:
    ready, later = plan([(t(10, 0, 10), t(10, 1))], M, now=t(10, 5))
    assert ready == [(t(10, 0), t(10, 1))]
    assert later == []


def test_plan_late_ranges_from_a_replay_recompute_old_buckets() -> None:
    # A collector replays hours-old samples while live data arrives: both become ready, separately.
    ranges = [(t(3, 10, 5), t(3, 12, 1)), (t(10, 0, 2), t(10, 0, 7))]
    ready, later = plan(ranges, M, now=t(10, 0, 30))
    assert ready == [(t(3, 10), t(3, 13))]
    assert later == [(t(10, 0), t(10, 1))]


def test_plan_merges_overlapping_logged_ranges_first() -> None:
    ranges = [(t(10, 0, 1), t(10, 0, 6)), (t(10, 0, 5), t(10, 0, 11)), (t(10, 0, 50), t(10, 1, 3))]
    ready, later = plan(ranges, M, now=t(10, 5))
    assert ready == [(t(10, 0), t(10, 2))]
    assert later == []


def test_plan_hour_buckets() -> None:
    ready, later = plan([(t(8, 30), t(10, 15))], TIER_1H.bucket, now=t(10, 20))
    assert ready == [(t(8), t(10))]
    assert later == [(t(10), t(11))]


def test_plan_nothing_logged() -> None:
    assert plan([], M, now=t(10)) == ([], [])


@given(
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(1, 10_000)), min_size=1, max_size=10),
    st.integers(0, 120_000),
    st.sampled_from([M, H, timedelta(seconds=5)]),
)
def test_plan_properties(raw: list[tuple[int, int]], now_s: int, bucket: timedelta) -> None:
    base = datetime(2026, 11, 24, tzinfo=UTC)
    ranges = [(base + timedelta(seconds=lo), base + timedelta(seconds=lo + n)) for lo, n in raw]
    now = base + timedelta(seconds=now_s)
    closed_until = now - (now - datetime(1970, 1, 1, tzinfo=UTC)) % bucket
    ready, later = plan(ranges, bucket, now)
    for lo, hi in ready + later:
        assert lo < hi
        assert (lo - base) % bucket == timedelta(0)
        assert (hi - base) % bucket == timedelta(0)
    # Ready buckets are closed; later buckets are not.
    assert all(hi <= closed_until for _, hi in ready)
    assert all(lo >= closed_until for lo, _ in later)
    # Every logged instant falls in a ready or a later bucket.
    covered = ready + later
    for lo, hi in ranges:
        for x in (lo, hi - timedelta(microseconds=1)):
            assert any(a <= x < b for a, b in covered)


# --- slices ----------------------------------------------------------------------------------------


def test_slices_split_into_hours_with_a_short_tail() -> None:
    assert slices((t(10), t(12, 30))) == [(t(10), t(11)), (t(11), t(12)), (t(12), t(12, 30))]


def test_slices_of_a_short_range_is_the_range() -> None:
    assert slices((t(10), t(10, 1))) == [(t(10), t(10, 1))]


def test_slices_of_an_empty_range() -> None:
    assert slices((t(10), t(10))) == []


def test_slices_custom_size() -> None:
    assert slices((t(10), t(10, 3)), M) == [(t(10), t(10, 1)), (t(10, 1), t(10, 2)), (t(10, 2), t(10, 3))]


@pytest.mark.parametrize("hours", [1, 2, 5, 24])
def test_slices_are_contiguous_and_bounded(hours: int) -> None:
    r = (t(0, 7), t(0, 7) + timedelta(hours=hours, minutes=13))
    out = slices(r)
    assert out[0][0] == r[0]
    assert out[-1][1] == r[1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(out))
    assert all(hi - lo <= SLICE for lo, hi in out)


def test_tiers_chain_1m_into_1h() -> None:
    assert (TIER_1M.bucket, TIER_1M.table, TIER_1M.source) == (M, "rollup_1m", "samples_raw")
    assert (TIER_1H.bucket, TIER_1H.table, TIER_1H.source) == (H, "rollup_1h", "rollup_1m")
