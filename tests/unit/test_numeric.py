"""Means and sums of finite float64 that stay finite at the extremes."""

from __future__ import annotations

import math
import sys

from hypothesis import given
from hypothesis import strategies as st

from sysmon.core import numeric

MAX = sys.float_info.max
finite = st.floats(allow_nan=False, allow_infinity=False)


def test_mean_of_values_whose_sum_overflows() -> None:
    assert numeric.mean([MAX] * 5) == MAX
    assert numeric.mean([-MAX] * 5) == -MAX
    assert numeric.mean([MAX, -MAX, MAX]) == MAX / 3
    assert numeric.mean([MAX, MAX, 0.0, 0.0]) == MAX / 2


@given(st.lists(finite, min_size=1, max_size=50))
def test_mean_is_finite_and_between_the_extremes(values: list[float]) -> None:
    m = numeric.mean(values)
    assert math.isfinite(m)
    assert min(values) <= m <= max(values)


def test_sum_saturates_instead_of_becoming_infinite() -> None:
    assert numeric.add(MAX, MAX) == MAX
    assert numeric.add(-MAX, -MAX) == -MAX
    assert numeric.add(1.0, 2.0) == 3.0


def test_total_is_exact_where_it_fits_and_saturates_where_it_does_not() -> None:
    assert numeric.total([MAX, MAX, -MAX]) == MAX  # fsum alone overflows in between
    assert numeric.total([MAX] * 3) == MAX
    assert numeric.total([-MAX] * 3) == -MAX
    assert numeric.total([0.1] * 10) == 1.0
