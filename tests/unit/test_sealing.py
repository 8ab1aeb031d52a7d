"""The pure parts of sealing and of raw bucketing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from sysmon.core.query import bucket, bucket_parts
from sysmon.core.storage.rollups import without_hours
from sysmon.core.storage.sealing import INT8_MAX, INT8_MIN, id_ranges, parse_copy, segments
from sysmon.core.storage.writer import copy_payload

H = timedelta(hours=1)
T = datetime(2026, 11, 29, 10, tzinfo=UTC)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_id_ranges_cover_every_id_once(n: int) -> None:
    r = id_ranges(n)
    assert len(r) == n
    assert r[0][0] == INT8_MIN
    assert r[-1][1] == INT8_MAX
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(r))


def test_sealed_hours_are_taken_out_of_rollup_ranges() -> None:
    ranges = [(T + timedelta(minutes=30), T + 2 * H + timedelta(minutes=10)), (T + 5 * H, T + 6 * H)]
    out, removed = without_hours(ranges, {T + H, T + 5 * H})
    assert out == [(T + timedelta(minutes=30), T + H), (T + 2 * H, T + 2 * H + timedelta(minutes=10))]
    assert removed == 2
    assert without_hours(ranges, set()) == (ranges, 0)


def test_copy_rows_parse_back_to_series_times_and_values() -> None:
    from sysmon.core.batch import NormalizedBatch

    b = NormalizedBatch("h", "s", 1, [], [1_795_000_000_123, 1_795_000_005_456], [[5, -7], [5]], [[1.5, -0.0], [2.5]])
    data, _n = copy_payload([b])
    ids, ts, values = parse_copy(data)
    assert ids.tolist() == [5, -7, 5]
    assert ts.tolist() == [1_795_000_000_123, 1_795_000_000_123, 1_795_000_005_456]
    assert values.tolist() == [1.5, -0.0, 2.5]
    assert segments(np.array([3, 3, 9, 9, 9, 1])) == [(3, 0, 2), (9, 2, 5), (1, 5, 6)]


def test_buckets_are_epoch_aligned_and_aggregate_each_way() -> None:
    ts = np.array([0, 4_000, 10_000, 19_999, 20_000], dtype=np.int64) + 1_795_000_000_000
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    keys, means = bucket(ts, values, 10_000, "avg")
    assert keys.tolist() == [1_795_000_000_000, 1_795_000_010_000, 1_795_000_020_000]
    assert means.tolist() == [2.0, 6.0, 9.0]
    assert bucket(ts, values, 10_000, "min")[1].tolist() == [1.0, 5.0, 9.0]
    assert bucket(ts, values, 10_000, "max")[1].tolist() == [3.0, 7.0, 9.0]
    parts = bucket_parts(ts, values, 10_000)
    assert parts[0] == (1_795_000_000_000, [2.0, 2, 1.0, 3.0])


def test_a_bucket_mean_of_extremes_does_not_overflow() -> None:
    big = 1.7976931348623157e308
    _keys, means = bucket(np.array([0, 1, 2], dtype=np.int64), np.array([big, big, big]), 10, "avg")
    assert means.tolist() == [big]
