"""The pure parts of sealing and of raw bucketing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from sysmon.core.query import bucket, bucket_parts
from sysmon.core.storage.rollups import without_hours
from sysmon.core.storage.sealing import frames_to_series

H = timedelta(hours=1)
T = datetime(2026, 11, 29, 10, tzinfo=UTC)


def test_sealed_hours_are_taken_out_of_rollup_ranges() -> None:
    ranges = [(T + timedelta(minutes=30), T + 2 * H + timedelta(minutes=10)), (T + 5 * H, T + 6 * H)]
    out, removed = without_hours(ranges, {T + H, T + 5 * H})
    assert out == [(T + timedelta(minutes=30), T + H), (T + 2 * H, T + 2 * H + timedelta(minutes=10))]
    assert removed == 2
    assert without_hours(ranges, set()) == (ranges, 0)


def test_frames_become_each_series_samples_in_time_order() -> None:
    rows = [(1000, [5, 7], [1.0, 2.0]), (2000, [5, 7], [1.5, 2.5]), (3000, [7, 5, 9], [3.0, 4.0, 9.0]),
            (4000, [5, 7], [5.0, 6.0])]
    out = frames_to_series(rows)
    assert out[5][0].tolist() == [1000, 2000, 3000, 4000]
    assert out[5][1].tolist() == [1.0, 1.5, 4.0, 5.0]
    assert out[7][1].tolist() == [2.0, 2.5, 3.0, 6.0]
    assert (out[9][0].tolist(), out[9][1].tolist()) == ([3000], [9.0])


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
