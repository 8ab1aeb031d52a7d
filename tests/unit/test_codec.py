"""Sealed blocks: a bit-exact round trip for every finite float64, and merges that lose nothing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sysmon.core.storage import codec

T0 = 1_795_000_000_000
finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=64)
EDGES = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, sys.float_info.max, -sys.float_info.max,
         1e-300, 1e300, 0.1, 1 / 3]


def bits(a: np.ndarray) -> list[int]:
    return np.asarray(a, dtype=np.float64).view(np.uint64).tolist()


@st.composite
def series(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 800))
    kind = draw(st.sampled_from(["any", "edges", "constant", "runs", "steps"]))
    if kind == "any":
        values = draw(hnp.arrays(np.float64, n, elements=finite))
    elif kind == "edges":
        values = np.array(draw(st.lists(st.sampled_from(EDGES), min_size=n, max_size=n)), dtype=np.float64)
    elif kind == "constant":
        values = np.full(n, draw(finite))
    elif kind == "runs":
        pool = draw(st.lists(finite, min_size=1, max_size=5))
        values = np.array([pool[(i // 7) % len(pool)] for i in range(n)], dtype=np.float64)
    else:
        values = np.round(np.cumsum(np.ones(n)) * draw(st.floats(1e-3, 1e3)), 2)
    gaps = draw(hnp.arrays(np.int64, n, elements=st.integers(1, 10_000)))
    ts = T0 + np.cumsum(gaps)
    return ts, values


@given(series())
@settings(max_examples=300, deadline=None)
def test_every_finite_value_and_time_round_trips_bit_for_bit(data: tuple[np.ndarray, np.ndarray]) -> None:
    ts, values = data
    block = codec.encode(ts, values)
    got_ts, got_values = codec.decode(block.ts_data, block.val_data)
    assert got_ts.tolist() == ts.tolist()
    assert bits(got_values) == bits(values)
    assert (block.count, block.t_first, block.t_last) == (len(ts), int(ts[0]), int(ts[-1]))
    assert bits([block.vlast]) == bits(values[-1:])
    assert block.vmin == values.min()
    assert block.vmax == values.max()
    assert np.isfinite(block.vsum)


def test_a_single_sample_and_signed_zeros() -> None:
    for v in (0.0, -0.0, 5e-324, sys.float_info.max):
        block = codec.encode(np.array([T0]), np.array([v]))
        assert bits(codec.decode(block.ts_data, block.val_data)[1]) == bits([v])


def test_a_regular_hour_costs_next_to_nothing() -> None:
    ts = T0 + np.arange(720, dtype=np.int64) * 5000
    block = codec.encode(ts, np.full(720, 42.0))
    assert block.encoded_bytes < 100


def test_sum_saturates_rather_than_overflowing() -> None:
    block = codec.encode(np.array([T0, T0 + 1]), np.array([sys.float_info.max] * 2))
    assert block.vsum == sys.float_info.max


@pytest.mark.parametrize(("ts", "values", "message"), [
    ([T0, T0], [1.0, 2.0], "strictly increasing"),
    ([T0 + 1, T0], [1.0, 2.0], "strictly increasing"),
    ([T0], [float("nan")], "finite"),
    ([T0], [float("inf")], "finite"),
    ([], [], "at least one"),
])
def test_what_is_not_a_block(ts: list[int], values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.encode(np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64))


def test_merge_keeps_the_first_written_and_counts_the_rest() -> None:
    ts, values, dropped = codec.merge(np.array([10, 20, 30]), np.array([1.0, 2.0, 3.0]),
                                      np.array([5, 20, 40]), np.array([0.5, 9.0, 4.0]))
    assert ts.tolist() == [5, 10, 20, 30, 40]
    assert values.tolist() == [0.5, 1.0, 2.0, 3.0, 4.0]
    assert dropped == 1
