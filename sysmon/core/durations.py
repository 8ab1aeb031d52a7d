"""Durations written the way Prometheus and Kubernetes users write them: 5s, 1m, 2h30m, 7d."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """Parse "90s", "1m30s", "7d" (or a number of seconds) into a timedelta."""
    if isinstance(text, timedelta):
        if text < timedelta(0):
            raise ValueError("a duration cannot be negative")
        return text
    if isinstance(text, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 24h, 7d")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError("a duration is a finite number of seconds")
        if text < 0:
            raise ValueError("a duration cannot be negative")
        total = float(text)
    else:
        s = str(text).strip()
        pos, total = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if s != "0" and (pos != len(s) or not s):
            raise ValueError(f"invalid duration {text!r}: use a number with a unit, e.g. 30s, 5m, 24h, 7d")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(td: timedelta) -> str:
    """The shortest exact form: 300s -> 5m, 90000s -> 1d1h."""
    ms = round(td.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _coerce(v: Any) -> timedelta:
    return parse_duration(v)


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def within(low: timedelta, high: timedelta) -> AfterValidator:
    """Bounds of a Duration, `Annotated[Duration, within(low, high)]`, refused in the units people write."""

    def check(v: timedelta) -> timedelta:
        if not low <= v <= high:
            raise ValueError(f"must be between {format_duration(low)} and {format_duration(high)}")
        return v

    return AfterValidator(check)
