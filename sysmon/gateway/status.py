"""Whether a host is up, stale or down, from how long it has been silent: a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

HostStatus = Literal["up", "stale", "down"]


@dataclass(frozen=True)
class StatusPolicy:
    stale_after: timedelta = timedelta(seconds=30)
    down_after: timedelta = timedelta(minutes=2)


def host_status(last_seen_ms: int | None, now_ms: int, interval_ms: int | None,
                policy: StatusPolicy = StatusPolicy(), *, precision_ms: int = 0) -> HostStatus:
    """Up while samples arrive; stale after missing a few; down after a long silence.

    A host with a long collection interval is given three of its intervals before it counts
    as stale, and ten before it is down, so that a 1-minute collector is not always "stale".
    `precision_ms` is how far behind the true time `last_seen_ms` may lag (PostgreSQL's record,
    refreshed once a minute, while Redis is away): the host is given that much more.
    """
    if last_seen_ms is None:
        return "down"
    age = now_ms - last_seen_ms - precision_ms
    interval = interval_ms or 0
    if age <= max(policy.stale_after.total_seconds() * 1000, 3 * interval):
        return "up"
    if age <= max(policy.down_after.total_seconds() * 1000, 10 * interval):
        return "stale"
    return "down"
