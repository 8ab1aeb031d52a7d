"""Aggregates over finite float64 that stay finite at the extremes.

Every stored value is a finite float64 (the wire contract), but the sum of a few values near
1.8e308 is not one. A mean always is (it lies between the smallest and largest value), so it is
computed without ever forming a sum out of range; a sum that truly exceeds float64 saturates at
the largest finite value rather than becoming infinity, which JSON cannot carry.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

MAX = sys.float_info.max


def mean(values: Sequence[float]) -> float:
    """The correctly rounded mean (math.fsum), scaled by a power of two when the sum would overflow."""
    n = len(values)
    if n == 1:
        return values[0]
    lo, hi = min(values), max(values)
    try:
        # Rounded twice (the sum, the division), so clamped: a mean never leaves [min, max].
        return min(max(math.fsum(values) / n, lo), hi)
    except OverflowError:
        pass
    # Scaling by 2^-e is exact (up to values too small to matter beside the largest), and the
    # scaled mean, clamped to the scaled extremes, scales back without overflow.
    e = math.frexp(max(abs(lo), abs(hi)))[1]
    m = math.fsum(math.ldexp(v, -e) for v in values) / n
    m = min(max(m, math.ldexp(lo, -e)), math.ldexp(hi, -e))
    return math.ldexp(m, e)


def total(values: Sequence[float]) -> float:
    """The correctly rounded sum (math.fsum), saturating at the float64 range when it leaves it."""
    try:
        return math.fsum(values)
    except OverflowError:
        # An intermediate partial overflowed: sum at a scale where nothing can (2^-64 is exact).
        s = math.fsum(math.ldexp(v, -64) for v in values)
        try:
            return math.ldexp(s, 64)
        except OverflowError:
            return math.copysign(MAX, s)


def saturate(x: float) -> float:
    """A sum that left the float64 range, at the range's edge."""
    if math.isinf(x):
        return math.copysign(MAX, x)
    return x


def add(a: float, b: float) -> float:
    return saturate(a + b)
