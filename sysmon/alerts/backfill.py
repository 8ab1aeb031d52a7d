"""Windows after a restart (or for a new rule): what the hot tier, or else PostgreSQL, still has.

An `avg over 5m` rule must not start from an empty window after the service restarts: the hot
tier holds every host's last minutes (series descriptions and frames), and the raw tier holds
the same when Redis is not there. Samples loaded here only fill windows; the evaluator never
alerts on them by themselves (see evaluator.preload).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg
import redis.exceptions

from sysmon.alerts import evaluator
from sysmon.alerts.evaluator import EvalState
from sysmon.core.hot import HotTier
from sysmon.core.metrics import Series
from sysmon.core.storage import raw

log = logging.getLogger(__name__)

# Sample times are the host's clock; reach a little further back than the window for its offset.
SLACK_MS = 60_000


def horizon(state: EvalState) -> int:
    return max((r.window_ms for r in state.rules.values()), default=0)


async def describe_host(hot: HotTier, state: EvalState, host: str, now: int) -> list[evaluator.Change]:
    changes: list[evaluator.Change] = []
    for sid, d in (await hot.series(host)).items():
        if sid not in state.series:
            changes += evaluator.add_series(
                state, Series(sid, host, d["name"], dict(d["attributes"]), d.get("unit", ""), d.get("kind", 1)), now
            )
    return changes


async def from_hot_tier(hot: HotTier, state: EvalState, hosts: Iterable[str], now: int,
                        only: set[int] | None = None) -> tuple[int, list[evaluator.Change]]:
    """Describe the hosts' series and fill the windows of those bound to a rule (of `only` when
    given); returns the samples loaded."""
    span = horizon(state)
    loaded = 0
    changes: list[evaluator.Change] = []
    for host in hosts:
        changes += await describe_host(hot, state, host, now)
        if not span:
            continue
        h = state.hosts.get(host)
        if h is None or not any(s.rules for s in h.series.values()):
            continue
        for f in await hot.frames(host, now - span - SLACK_MS, now + 600_000):
            for sid, v in zip(f.ids.tolist(), f.values.tolist(), strict=True):
                s = state.series.get(sid)
                if s is not None and s.rules and (only is None or sid in only):
                    evaluator.preload(state, sid, (f.time_ms,), (v,))
                    loaded += 1
    return loaded, changes


async def from_postgres(pool: asyncpg.Pool, state: EvalState, now: int) -> tuple[int, list[evaluator.Change]]:
    """The same from the raw tier, for when Redis lost its data or is down."""
    span = horizon(state)
    metrics = sorted({r.metric for r in state.rules.values()})
    changes: list[evaluator.Change] = []
    if not span or not metrics:
        return 0, changes
    rows = await pool.fetch(
        "SELECT series_id, host_id, name, attributes, unit, kind FROM series WHERE name = ANY($1::text[])", metrics
    )
    for r in rows:
        if r["series_id"] not in state.series:
            changes += evaluator.add_series(
                state, Series(r["series_id"], r["host_id"], r["name"], dict(r["attributes"]), r["unit"], r["kind"]),
                now,
            )
    bound = [sid for sid, s in state.series.items() if s.rules]
    if not bound:
        return 0, changes
    since = datetime.fromtimestamp((now - span - SLACK_MS) / 1000, UTC)
    async with pool.acquire() as conn:
        samples = await raw.read(conn, bound, since, datetime.fromtimestamp(now / 1000 + 600, UTC))
    loaded = 0
    for sid, (ts, values) in samples.items():
        evaluator.preload(state, sid, ts.tolist(), values.tolist())
        loaded += len(ts)
    return loaded, changes


async def last_seen(hot: HotTier) -> dict[str, int]:
    try:
        return await hot.hosts_last_seen()
    except (redis.exceptions.RedisError, OSError) as e:
        log.warning("hot tier unavailable for hosts' last samples: %s", e)
        return {}
