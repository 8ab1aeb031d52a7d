"""The hot tier's packed frames: what pack_frame writes, unpack_frame reads back exactly."""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.hot import frames_key, latest_key, pack_frame, series_key, unpack_frame


def test_round_trip() -> None:
    ids = [450208838341033550, -5261963293893618833, 0]
    values = [0.25, -1e300, 7.0]
    t, got_ids, got_values = unpack_frame(pack_frame(1_800_000_000_123, ids, values))
    assert t == 1_800_000_000_123
    assert got_ids.tolist() == ids
    assert got_values.tolist() == values
    assert got_ids.dtype == np.dtype("<i8")
    assert got_values.dtype == np.dtype("<f8")


def test_layout_is_little_endian_time_ids_values() -> None:
    data = pack_frame(5, [1, 2], [1.5, 2.5])
    assert len(data) == 8 + 2 * 8 + 2 * 8
    assert data == struct.pack("<q", 5) + struct.pack("<qq", 1, 2) + struct.pack("<dd", 1.5, 2.5)


def test_empty_frame() -> None:
    data = pack_frame(-1, [], [])
    assert len(data) == 8
    t, ids, values = unpack_frame(data)
    assert t == -1
    assert ids.size == 0
    assert values.size == 0


def test_non_finite_values_survive() -> None:
    _, _, values = unpack_frame(pack_frame(0, [1, 2], [math.inf, math.nan]))
    assert values[0] == math.inf
    assert math.isnan(values[1])


def test_accepts_numpy_arrays() -> None:
    ids = np.array([3, 4], dtype=np.int64)
    values = np.array([0.1, 0.2], dtype=np.float32)
    _t, got_ids, got_values = unpack_frame(pack_frame(9, ids, values))
    assert got_ids.tolist() == [3, 4]
    assert got_values.tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]


@given(
    st.integers(-(2**63), 2**63 - 1),
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False)), max_size=50),
)
def test_round_trip_property(t: int, pairs: list[tuple[int, float]]) -> None:
    ids = [i for i, _ in pairs]
    values = [v for _, v in pairs]
    got_t, got_ids, got_values = unpack_frame(pack_frame(t, ids, values))
    assert got_t == t
    assert got_ids.tolist() == ids
    assert got_values.tolist() == values


def test_keys_are_per_host() -> None:
    assert frames_key("node-1") == "hot:frames:node-1"
    assert latest_key("node-1") == "hot:latest:node-1"
    assert series_key("node-1") == "hot:series:node-1"
