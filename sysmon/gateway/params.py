"""Parsing and checking query parameters: pure functions that raise InvalidInput naming the parameter.

Times are RFC 3339 with a zone ("2025-01-02T03:04:05Z"), Unix seconds ("1735787045.5"), or
relative to now ("now", "now-1h", "now-7d"). Steps and ranges are durations ("15s", "5m", "1h").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sysmon.core.durations import parse_duration
from sysmon.core.metrics import ATTR_KEY_RE, HOST_ID_RE, NAME_RE, InvalidInput

# Far enough for any real query, near enough that arithmetic on them never overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MIN_STEP = timedelta(seconds=1)
MAX_STEP = timedelta(days=366)
MAX_VALUE_LENGTH = 256
MAX_HOST_LENGTH = 253
_RELATIVE = re.compile(r"now(?:\s*([-+])\s*(.+))?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def parse_time(text: str, now: datetime, param: str) -> datetime:
    s = text.strip()
    if not s:
        raise InvalidInput(param, "must not be empty; give RFC 3339 (2025-01-02T03:04:05Z), Unix seconds or now-1h")
    rel = _RELATIVE.match(s)
    if rel:
        t = now
        if rel.group(1):
            try:
                d = parse_duration(rel.group(2).strip())
            except ValueError:
                raise InvalidInput(param, f"{_short(s)}: the offset must be a duration such as 5m, 1h or 7d") from None
            if d > LATEST - EARLIEST:
                raise InvalidInput(param, f"{_short(s)}: the offset is too large")
            t = now - d if rel.group(1) == "-" else now + d
    elif re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", s):
        secs = float(s)
        if not math.isfinite(secs) or not EARLIEST.timestamp() <= secs <= LATEST.timestamp():
            raise InvalidInput(param, f"{_short(s)}: Unix seconds must be between 0 and {int(LATEST.timestamp())}")
        t = datetime.fromtimestamp(secs, UTC)
    else:
        try:
            t = datetime.fromisoformat(s.replace("z", "Z"))
        except ValueError:
            raise InvalidInput(
                param, f"{_short(s)} is not a time: give RFC 3339 (2025-01-02T03:04:05Z), Unix seconds or now-1h"
            ) from None
        if t.tzinfo is None:
            raise InvalidInput(param, f"{_short(s)} has no time zone: add Z or an offset such as +02:00")
    try:
        t = t.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput(param, f"{_short(s)} is out of range") from None
    if not EARLIEST <= t <= LATEST:
        raise InvalidInput(param, f"{_short(s)} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return t


def parse_step(text: str, param: str = "step") -> timedelta:
    try:
        step = parse_duration(text.strip())
    except (ValueError, OverflowError):
        raise InvalidInput(param, f"{_short(text)} is not a duration: use e.g. 15s, 1m, 1h") from None
    if step < MIN_STEP:
        raise InvalidInput(param, f"{_short(text)} is too small: the finest step is {MIN_STEP.seconds}s")
    if step > MAX_STEP:
        raise InvalidInput(param, f"{_short(text)} is too large: at most 366d")
    return step


def auto_step(start: datetime, end: datetime, points: int = 600) -> timedelta:
    """A round step that draws the range in about `points` points: 1s, 5s, 15s, 1m, 5m, ..."""
    want = (end - start).total_seconds() / points
    for s in (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if s >= want:
            return timedelta(seconds=s)
    return timedelta(days=math.ceil(want / 86400))


def check_text(value: str, param: str, *, max_length: int = MAX_VALUE_LENGTH) -> str:
    if len(value) > max_length:
        raise InvalidInput(param, f"longer than {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidInput(param, "contains control characters")
    return value


def check_host(host: str, param: str = "host") -> str:
    if not host or len(host) > MAX_HOST_LENGTH or not HOST_ID_RE.match(host):
        raise InvalidInput(param, f"{_short(host)} is not a host id: 1-{MAX_HOST_LENGTH} of [A-Za-z0-9._-], "
                                  "starting with a letter or digit")
    return host


def check_metric(name: str, param: str = "metric") -> str:
    if not name or len(name) > 255 or not NAME_RE.match(name):
        raise InvalidInput(param, f"{_short(name)} is not a metric name such as system.cpu.utilization")
    return name


def parse_pairs(items: Iterable[str], param: str, *, max_items: int = 16) -> dict[str, str]:
    """["k=v", ...] -> {k: v}; keys are attribute names, values printable text."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(param, f"{_short(item)} is not key=value")
        if len(key) > 64 or not ATTR_KEY_RE.match(key):
            raise InvalidInput(param, f"key {_short(key)} must match [A-Za-z_][A-Za-z0-9_.]* (at most 64)")
        if key in out and out[key] != value:
            raise InvalidInput(param, f"key {key!r} is given twice with different values")
        out[key] = check_text(value, param)
        if len(out) > max_items:
            raise InvalidInput(param, f"at most {max_items} pairs")
    return out


def check_range(start: datetime, end: datetime) -> None:
    if start >= end:
        raise InvalidInput("start", f"start {start.isoformat()} is not before end {end.isoformat()}")
