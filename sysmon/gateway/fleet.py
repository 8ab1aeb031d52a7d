"""What the gateway knows of the fleet: hosts with their status, current values, and which
hosts and metrics exist (so that a typo is a 404, not an empty chart).

PostgreSQL has each host's facts and labels; the hot tier has the exact time of its newest
sample and its latest values. Either may be down: the answer then comes from the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from sysmon.core.hot import HotTier
from sysmon.core.storage import raw
from sysmon.core.storage.writer import LAST_SEEN_EVERY_S
from sysmon.gateway.problems import UNAVAILABLE, Problem
from sysmon.gateway.status import StatusPolicy, host_status

log = logging.getLogger(__name__)

_HOST_COLUMNS = """host_id, hostname, labels, os, agent_version, cpu_count, memory_total_bytes, boot_time,
                   interval_ms, first_seen, last_seen"""


def _ms(t: datetime | None) -> int | None:
    return int(t.timestamp() * 1000) if t is not None else None


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def host_json(row: dict[str, Any] | None, hot_seen_ms: int | None, now_ms: int, policy: StatusPolicy,
              host: str) -> dict[str, Any]:
    row = row or {}
    # The hot tier has the time of the newest sample; PostgreSQL's last_seen is when the aggregator
    # last wrote for the host (replayed history included, and only once a minute): a fallback,
    # trusted to within that minute, so that a Redis outage does not make the whole fleet stale.
    from_hot = hot_seen_ms is not None
    seen = hot_seen_ms if from_hot else _ms(row.get("last_seen"))
    precision = 0 if from_hot else int((LAST_SEEN_EVERY_S + 5) * 1000)
    interval = row.get("interval_ms")
    return {
        "host": host,
        "hostname": row.get("hostname") or "",
        "labels": row.get("labels") or {},
        "os": row.get("os") or "",
        "agent_version": row.get("agent_version") or "",
        "cpu_count": row.get("cpu_count"),
        "memory_total_bytes": row.get("memory_total_bytes"),
        "boot_time": row["boot_time"].isoformat() if row.get("boot_time") else None,
        "interval_ms": interval,
        "last_seen": _iso_ms(seen),
        "last_seen_ms": seen,
        "age_s": round((now_ms - seen) / 1000, 3) if seen is not None else None,
        "status": host_status(seen, now_ms, interval, policy, precision_ms=precision),
        "last_seen_source": "hot" if from_hot else "postgresql",
    }


def labels_match(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class Fleet:
    def __init__(self, pool: asyncpg.Pool, hot: HotTier | None, policy: StatusPolicy):
        self.pool = pool
        self.hot = hot
        self.policy = policy
        # Names that existed once keep existing for this process: checks stay one set lookup.
        self._metrics: set[str] = set()
        self._hosts: set[str] = set()

    async def _hot_seen(self, host: str | None = None) -> dict[str, int] | None:
        if self.hot is None:
            return None
        try:
            return await self.hot.hosts_last_seen(None if host is None else [host])
        except UNAVAILABLE as e:
            log.warning("hot tier unavailable for the host list: %s", e.__class__.__name__)
            return None

    async def _pg_rows(self, host: str | None = None) -> list[dict[str, Any]] | None:
        try:
            rows = await self.pool.fetch(
                f"SELECT {_HOST_COLUMNS} FROM hosts WHERE ($1::text IS NULL OR host_id = $1) ORDER BY host_id",
                host,
            )
        except UNAVAILABLE as e:
            log.warning("PostgreSQL unavailable for the host list: %s", e.__class__.__name__)
            return None
        return [dict(r) for r in rows]

    async def _rows_and_seen(
        self, host: str | None = None
    ) -> tuple[list[dict[str, Any]] | None, dict[str, int] | None]:
        """PostgreSQL's host rows and the hot tier's last-seen times, asked at once; a 503 when neither answers."""
        rows, seen = await asyncio.gather(self._pg_rows(host), self._hot_seen(host))
        if rows is None and seen is None:
            raise Problem(503, "neither PostgreSQL nor Redis is reachable", kind="unavailable",
                          headers={"Retry-After": "5"})
        return rows, seen

    async def hosts(self, labels: dict[str, str] | None = None, status: str | None = None) -> list[dict[str, Any]]:
        rows, seen = await self._rows_and_seen()
        by_host = {r["host_id"]: r for r in rows or []}
        now = time.time_ns() // 1_000_000
        out = []
        for host in sorted(set(by_host) | set(seen or {})):
            h = host_json(by_host.get(host), (seen or {}).get(host), now, self.policy, host)
            if labels and not labels_match(h["labels"], labels):
                continue
            if status and h["status"] != status:
                continue
            out.append(h)
        self._hosts.update(h["host"] for h in out)
        return out

    async def host(self, host: str) -> dict[str, Any] | None:
        rows, seen = await self._rows_and_seen(host)
        row = rows[0] if rows else None
        hot_seen = (seen or {}).get(host)
        if row is None and hot_seen is None:
            return None
        self._hosts.add(host)
        return host_json(row, hot_seen, time.time_ns() // 1_000_000, self.policy, host)

    async def current(self, host: str) -> tuple[str, list[dict[str, Any]]]:
        """(source, the newest value of every series of the host), from Redis or else PostgreSQL."""
        if self.hot is not None:
            try:
                latest, described = await self.hot.latest(host), await self.hot.series(host)
            except UNAVAILABLE:
                latest, described = {}, {}
            values = [
                {"metric": d["name"], "attributes": d["attributes"], "unit": d.get("unit", ""),
                 "t": latest[sid][0], "value": latest[sid][1]}
                for sid, d in described.items() if sid in latest
            ]
            if values:
                return "hot", sorted(values, key=lambda v: (v["metric"], sorted(v["attributes"].items())))
        async with self.pool.acquire() as conn:
            rows = await raw.latest(conn, host)
        return "raw", [
            {"metric": r["name"], "attributes": r["attributes"], "unit": r["unit"], "t": r["t"], "value": r["value"]}
            for r in rows
        ]

    async def unknown_hosts(self, hosts: Iterable[str]) -> list[str]:
        todo = sorted(set(hosts) - self._hosts)
        if not todo:
            return []
        found: set[str] = set()
        reachable = False
        try:
            found |= {r["host_id"] for r in await self.pool.fetch(
                "SELECT host_id FROM hosts WHERE host_id = ANY($1::text[])", todo)}
            reachable = True
        except UNAVAILABLE:
            pass
        if set(todo) - found:
            seen = await self._hot_seen()
            if seen is not None:
                reachable = True
                found |= set(todo) & set(seen)
        if not reachable:
            return []  # cannot tell; the query itself will answer
        self._hosts |= found
        return [h for h in todo if h not in found]

    async def unknown_metrics(self, names: Iterable[str]) -> list[str]:
        todo = sorted(set(names) - self._metrics)
        if not todo:
            return []
        try:
            rows = await self.pool.fetch(
                "SELECT n FROM unnest($1::text[]) AS n WHERE EXISTS (SELECT 1 FROM series WHERE name = n)", todo)
        except UNAVAILABLE:
            return []
        found = {r["n"] for r in rows}
        self._metrics |= found
        return [n for n in todo if n not in found]
