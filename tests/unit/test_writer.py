"""The writer's pure parts: the frame columns the storing statement takes, and touched spans."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.batch import NormalizedBatch
from sysmon.core.storage.writer import ROW, frame_columns, touched_spans


def nb(times: list[int], ids: list[list[int]], values: list[list[float]], seq: int = 1) -> NormalizedBatch:
    return NormalizedBatch("h", "s", seq, [], times, ids, values)


def frames_back(batches: list[NormalizedBatch]) -> list[tuple[int, int, list[int], list[float]]]:
    """(batch, time, ids, values) per frame, read back from the columns as the SQL function reads them:
    the matrices row by row, then each frame's f_len samples after the frames before it."""
    f_batch, f_ts, f_len, ids, vals = frame_columns(batches)
    assert all(len(r) == ROW for r in ids + vals), "rows of ROW columns"
    flat_ids = [x for r in ids for x in r]
    flat_vals = [x for r in vals for x in r]
    total = sum(f_len)
    assert len(flat_ids) - total < ROW, "at most one row's padding"
    assert flat_ids[total:] == [None] * (len(flat_ids) - total)
    assert flat_vals[total:] == [None] * (len(flat_vals) - total)
    out, at = [], 0
    for b, t, n in zip(f_batch, f_ts, f_len, strict=True):
        out.append((b, t, flat_ids[at:at + n], flat_vals[at:at + n]))
        at += n
    return out


def test_frame_columns_are_one_entry_per_frame_then_the_samples_in_rows() -> None:
    a = NormalizedBatch("h1", "s", 1, [], [1_800_000_000_000, 1_800_000_005_000], [[10, 11], [10]], [[1.0, 2.0], [3.0]])
    b = NormalizedBatch("h2", "s", 2, [], [1_800_000_005_000], [[12, -2, 2**62]], [[-0.0, 1e300, 5e-324]])
    pad = [None] * (ROW - 6)
    assert frame_columns([a, b]) == (
        [1, 1, 2], [1_800_000_000_000, 1_800_000_005_000, 1_800_000_005_000], [2, 1, 3],
        [[10, 11, 10, 12, -2, 2**62, *pad]], [[1.0, 2.0, 3.0, -0.0, 1e300, 5e-324, *pad]])
    # Exactly full rows: no padding row.
    c = nb([5], [list(range(2 * ROW))], [[0.5] * (2 * ROW)])
    assert frame_columns([c])[3] == [list(range(ROW)), list(range(ROW, 2 * ROW))]


def test_empty_frames_and_batches_give_no_frame() -> None:
    assert frame_columns([]) == ([], [], [], [], [])
    # The second batch keeps its position (2) although the first had nothing to store.
    assert frame_columns([nb([1_800_000_000_000], [[]], [[]]), nb([5], [[7]], [[1.5]])]) == (
        [2], [5], [1], [[7, *[None] * (ROW - 1)]], [[1.5, *[None] * (ROW - 1)]])


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 4_000_000_000_000),
                st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False)), max_size=80),
            ),
            max_size=4,
        ),
        max_size=4,
    )
)
def test_frame_columns_round_trip(batches: list[list[tuple[int, list[tuple[int, float]]]]]) -> None:
    bs = [nb([t for t, _ in fr], [[i for i, _ in f] for _, f in fr], [[v for _, v in f] for _, f in fr], seq=k + 1)
          for k, fr in enumerate(batches)]
    expected = [(k + 1, t, [i for i, _ in f], [v for _, v in f]) for k, fr in enumerate(batches) for t, f in fr if f]
    assert frames_back(bs) == expected


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
