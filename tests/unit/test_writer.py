"""The writer's pure parts: the binary COPY payload (parsed back byte by byte) and touched spans."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.batch import NormalizedBatch
from sysmon.core.storage.writer import copy_payload, touched_spans

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def pg_us(dt: datetime) -> int:
    return (dt - PG_EPOCH) // timedelta(microseconds=1)


def nb(times: list[int], ids: list[list[int]], values: list[list[float]], seq: int = 1) -> NormalizedBatch:
    return NormalizedBatch("h", "s", seq, [], times, ids, values)


def _array(data: bytes, pos: int, fmt: str) -> tuple[list, int]:
    ndim, flags, _oid, n, lbound = struct.unpack_from(">iiiii", data, pos)
    assert (ndim, flags, lbound) == (1, 0, 1)
    pos += 20
    out = []
    for _ in range(n):
        (length,) = struct.unpack_from(">i", data, pos)
        assert length == 8
        out.append(struct.unpack_from(fmt, data, pos + 4)[0])
        pos += 12
    return out, pos


def parse_copy(data: bytes) -> list[tuple[str, int, list[int], list[float]]]:
    """A reader of PostgreSQL's binary COPY format for (text, timestamptz, int8[], float8[]) rows."""
    assert data[:11] == SIGNATURE
    flags, ext_len = struct.unpack_from(">ii", data, 11)
    assert flags == 0
    pos = 19 + ext_len
    rows = []
    while True:
        (ncols,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if ncols == -1:
            break
        assert ncols == 4
        (n,) = struct.unpack_from(">i", data, pos)
        host = data[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
        length, ts = struct.unpack_from(">iq", data, pos)
        assert length == 8
        pos += 12
        (n,) = struct.unpack_from(">i", data, pos)
        ids, end = _array(data, pos + 4, ">q")
        assert end == pos + 4 + n
        pos = end
        (n,) = struct.unpack_from(">i", data, pos)
        values, end = _array(data, pos + 4, ">d")
        assert end == pos + 4 + n
        pos = end
        rows.append((host, ts, ids, values))
    assert pos == len(data), "nothing after the trailer"
    return rows


def test_copy_payload_is_one_row_per_frame() -> None:
    t0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
    t1 = t0 + timedelta(seconds=5, milliseconds=123)
    b = nb([ms(t0), ms(t1)], [[1, -2, 2**62], [1]], [[0.5, -1.25, 1e300], [42.0]])
    data, frames, samples = copy_payload([b])
    assert (frames, samples) == (2, 4)
    assert data.startswith(SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00")
    assert data.endswith(b"\xff\xff")
    assert parse_copy(data) == [
        ("h", pg_us(t0), [1, -2, 2**62], [0.5, -1.25, 1e300]),
        ("h", pg_us(t1), [1], [42.0]),
    ]


def test_copy_timestamps_are_microseconds_since_2000() -> None:
    data, _, _ = copy_payload([nb([946_684_800_000, 946_684_800_001, 0], [[7], [7], [7]], [[1.0], [2.0], [3.0]])])
    assert [ts for _, ts, _, _ in parse_copy(data)] == [0, 1000, -946_684_800_000_000]


def test_copy_payload_of_several_batches_keeps_their_order() -> None:
    a = NormalizedBatch("h1", "s", 1, [], [1_800_000_000_000], [[10, 11]], [[1.0, 2.0]])
    b = NormalizedBatch("h2", "s", 2, [], [1_800_000_005_000], [[12]], [[3.0]])
    data, frames, samples = copy_payload([a, b])
    assert (frames, samples) == (2, 3)
    assert [(h, ids, v) for h, _, ids, v in parse_copy(data)] == [("h1", [10, 11], [1.0, 2.0]), ("h2", [12], [3.0])]


def test_copy_payload_of_nothing_is_header_and_trailer() -> None:
    data, frames, samples = copy_payload([])
    assert (frames, samples) == (0, 0)
    assert parse_copy(data) == []
    assert data == SIGNATURE + bytes(8) + b"\xff\xff"
    data, frames, samples = copy_payload([nb([], [], []), nb([1_800_000_000_000], [[]], [[]])])
    assert (frames, samples) == (0, 0)
    assert parse_copy(data) == []


@given(
    st.lists(
        st.tuples(
            st.integers(0, 4_000_000_000_000),
            st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False)), max_size=5),
        ),
        max_size=5,
    )
)
def test_copy_payload_round_trips(frames: list[tuple[int, list[tuple[int, float]]]]) -> None:
    b = nb([t for t, _ in frames], [[i for i, _ in f] for _, f in frames], [[v for _, v in f] for _, f in frames])
    data, rows, samples = copy_payload([b])
    expected = [("h", (t - 946_684_800_000) * 1000, [i for i, _ in f], [v for _, v in f]) for t, f in frames if f]
    assert (rows, samples) == (len(expected), sum(len(f) for _, f in frames))
    assert parse_copy(data) == expected


# --- touched_spans -------------------------------------------------------------------------------


def test_touched_span_of_one_batch_is_half_open() -> None:
    assert touched_spans([nb([1000, 3000, 2000], [[1], [1], [1]], [[0.0], [0.0], [0.0]])]) == [(1000, 3001)]


def test_touched_spans_merge_nearby_batches() -> None:
    a = nb([100_000, 105_000], [[1], [1]], [[0.0], [0.0]])
    b = nb([130_000], [[1]], [[0.0]])
    assert touched_spans([b, a]) == [(100_000, 130_001)]


def test_touched_spans_keep_a_replay_and_live_data_apart() -> None:
    live = nb([10_000_000], [[1]], [[0.0]])
    replay = nb([1_000_000, 1_005_000], [[1], [1]], [[0.0], [0.0]])
    assert touched_spans([live, replay]) == [(1_000_000, 1_005_001), (10_000_000, 10_000_001)]


def test_touched_spans_custom_gap() -> None:
    a = nb([0], [[1]], [[0.0]])
    b = nb([10_000], [[1]], [[0.0]])
    assert touched_spans([a, b], gap_ms=1000) == [(0, 1), (10_000, 10_001)]
    assert touched_spans([a, b], gap_ms=20_000) == [(0, 10_001)]


def test_touched_spans_skip_batches_without_frames() -> None:
    assert touched_spans([nb([], [], [])]) == []
    assert touched_spans([nb([], [], []), nb([5], [[1]], [[0.0]])]) == [(5, 6)]


def test_touched_spans_overlapping_batches() -> None:
    a = nb([0, 50_000], [[1], [1]], [[0.0], [0.0]])
    b = nb([10_000, 20_000], [[1], [1]], [[0.0], [0.0]])
    assert touched_spans([a, b], gap_ms=0) == [(0, 50_001)]
