"""Reading alerts: what is pending or firing now, and the history of transitions.

The alerts service writes these tables (migration 0003); the gateway reads them through
here, so neither knows the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

AlertStateName = Literal["pending", "firing", "resolved", "inactive"]
MAX_HISTORY = 1000


@dataclass(frozen=True)
class AlertRow:
    rule: str
    fingerprint: str
    host_id: str
    state: str
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    active_at: datetime | None
    # current(): when it fired (None while pending); history(): when the transition happened.
    at: datetime | None
    previous: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "fingerprint": self.fingerprint,
            "host": self.host_id,
            "state": self.state,
            "previous": self.previous,
            "severity": self.severity,
            "labels": self.labels,
            "annotations": self.annotations,
            "value": self.value,
            "active_at": self.active_at.isoformat() if self.active_at else None,
            "at": self.at.isoformat() if self.at else None,
            "id": self.id,
        }


async def current(
    pool: asyncpg.Pool, *, host: str | None = None, rule: str | None = None, state: str | None = None
) -> list[AlertRow]:
    """Pending and firing alerts, firing first, then by severity and age."""
    rows = await pool.fetch(
        """
        SELECT rule, fingerprint, host_id, state, severity, labels, annotations, value, active_at, fired_at
        FROM alert_state
        WHERE ($1::text IS NULL OR host_id = $1) AND ($2::text IS NULL OR rule = $2)
          AND ($3::text IS NULL OR state = $3)
        ORDER BY state = 'firing' DESC,
                 CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                 active_at, rule, fingerprint
        """,
        host, rule, state,
    )
    return [
        AlertRow(r["rule"], r["fingerprint"], r["host_id"], r["state"], r["severity"], r["labels"],
                 r["annotations"], r["value"], r["active_at"], r["fired_at"])
        for r in rows
    ]


async def history(
    pool: asyncpg.Pool,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    host: str | None = None,
    rule: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AlertRow]:
    """Transitions newest first (in the order they were stored); page with before_id, the
    smallest id of the previous page."""
    limit = max(1, min(limit, MAX_HISTORY))
    rows = await pool.fetch(
        """
        SELECT id, rule, fingerprint, host_id, state, previous, severity, labels, annotations, value,
               active_at, at
        FROM alert_history
        WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
          AND ($3::text IS NULL OR host_id = $3) AND ($4::text IS NULL OR rule = $4)
          AND ($5::int8 IS NULL OR id < $5)
        ORDER BY id DESC
        LIMIT $6
        """,
        since, until, host, rule, before_id, limit,
    )
    return [
        AlertRow(r["rule"], r["fingerprint"], r["host_id"], r["state"], r["severity"], r["labels"],
                 r["annotations"], r["value"], r["active_at"], r["at"], previous=r["previous"], id=r["id"])
        for r in rows
    ]
