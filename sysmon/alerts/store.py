"""Alert state in PostgreSQL: transitions, history and the notification outbox in one transaction.

A transition, the history row that records it and the notifications it causes are written
together or not at all, and before the bus messages that caused them are acknowledged. So a
restart finds every alert as it was (a pending alert keeps its active_at, a firing one is not
fired again), and each transition has exactly one notification per receiver (a unique index
says so as well).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from sysmon.alerts.evaluator import FIRING, PENDING, RESOLVED, Alert, Change
from sysmon.alerts.payloads import alert_json, generator_url

# Alert tables come with migration 0004; the aggregator applies migrations, we wait for them.
SCHEMA_VERSION = 4
# PostgreSQL away or failing: what the service's loops retry after.
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def to_dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(dt: datetime | None) -> int | None:
    return None if dt is None else round(dt.timestamp() * 1000)


async def schema_ready(pool: asyncpg.Pool) -> bool:
    try:
        v = await pool.fetchval("SELECT max(version) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return False
    return v is not None and v >= SCHEMA_VERSION


async def load_alerts(pool: asyncpg.Pool) -> list[Alert]:
    rows = await pool.fetch(
        """
        SELECT rule, fingerprint, host_id, series_id, state, severity, labels, annotations, value, active_at,
               fired_at, last_eval_at, last_sent_at, actions
        FROM alert_state
        """
    )
    out = []
    for r in rows:
        actions = tuple((k, a) for k, a in r["actions"]) if r["actions"] else ()
        out.append(Alert(
            rule=r["rule"], fingerprint=r["fingerprint"], host_id=r["host_id"], series_id=r["series_id"],
            state=r["state"], labels=dict(r["labels"]), annotations=dict(r["annotations"]), severity=r["severity"],
            value=r["value"], active_at=to_ms(r["active_at"]) or 0, last_eval_at=to_ms(r["last_eval_at"]) or 0,
            fired_at=to_ms(r["fired_at"]), last_sent_at=to_ms(r["last_sent_at"]), actions=actions,
        ))
    return out


@dataclass(frozen=True)
class Saved:
    history_ids: list[int | None]  # per change; None for repeats
    notifications: int


async def save(conn: asyncpg.Connection, changes: Sequence[Change], *, external_url: str) -> Saved:
    """Write changes in one transaction (the caller's connection, so it can add to it)."""
    transitions = [c for c in changes if not c.repeat]
    async with conn.transaction():
        ids: list[int] = []
        if transitions:
            ids = [r[0] for r in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('alert_history', 'id')) FROM generate_series(1, $1)",
                len(transitions),
            )]
            await conn.executemany(
                """
                INSERT INTO alert_history (id, rule, fingerprint, host_id, state, previous, severity, labels,
                                           annotations, value, active_at, at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                """,
                [(i, c.alert.rule, c.alert.fingerprint, c.alert.host_id, c.state, c.previous, c.alert.severity,
                  c.alert.labels, c.alert.annotations, c.alert.value, to_dt(c.alert.active_at), to_dt(c.at))
                 for i, c in zip(ids, transitions, strict=True)],
            )
        upserts = [c for c in changes if not c.repeat and c.state in (PENDING, FIRING)]
        if upserts:
            await conn.executemany(
                """
                INSERT INTO alert_state (rule, fingerprint, host_id, series_id, state, severity, labels, annotations,
                                         value, active_at, fired_at, last_eval_at, last_sent_at, actions)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                ON CONFLICT (rule, fingerprint) DO UPDATE SET
                    host_id = EXCLUDED.host_id, series_id = EXCLUDED.series_id, state = EXCLUDED.state,
                    severity = EXCLUDED.severity, labels = EXCLUDED.labels, annotations = EXCLUDED.annotations,
                    value = EXCLUDED.value, active_at = EXCLUDED.active_at, fired_at = EXCLUDED.fired_at,
                    last_eval_at = EXCLUDED.last_eval_at, last_sent_at = EXCLUDED.last_sent_at,
                    actions = EXCLUDED.actions
                """,
                [_state_row(c.alert) for c in upserts],
            )
        gone = [c for c in changes if not c.repeat and c.state not in (PENDING, FIRING)]
        if gone:
            await conn.executemany("DELETE FROM alert_state WHERE rule = $1 AND fingerprint = $2",
                                   [(c.alert.rule, c.alert.fingerprint) for c in gone])
        repeats = [c for c in changes if c.repeat]
        if repeats:
            await conn.executemany(
                "UPDATE alert_state SET last_sent_at = $3, value = $4, annotations = $5 "
                "WHERE rule = $1 AND fingerprint = $2",
                [(c.alert.rule, c.alert.fingerprint, to_dt(c.at), c.alert.value, c.alert.annotations) for c in repeats],
            )
        rows = []
        it = iter(ids)
        history: list[int | None] = []
        for c in changes:
            hid = None if c.repeat else next(it)
            history.append(hid)
            if not c.notify:
                continue
            status = RESOLVED if c.state == RESOLVED else FIRING
            payload = alert_json(
                status=status, labels=c.alert.labels, annotations=c.alert.annotations, active_at=c.alert.active_at,
                resolved_at=c.alert.resolved_at, fingerprint=c.alert.fingerprint,
                generator=generator_url(external_url, c.alert.rule),
            )
            for receiver, action in c.notify:
                rows.append((c.alert.rule, c.alert.fingerprint, receiver, action, payload, status, c.repeat, hid))
        if rows:
            await conn.executemany(
                """
                INSERT INTO alert_notifications (rule, fingerprint, receiver, action, payload, status, repeat,
                                                 history_id, created_at, next_attempt)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now())
                ON CONFLICT (history_id, receiver) WHERE history_id IS NOT NULL DO NOTHING
                """,
                rows,
            )
    return Saved(history, len(rows))


def _state_row(a: Alert) -> tuple[Any, ...]:
    return (a.rule, a.fingerprint, a.host_id, a.series_id, a.state, a.severity, a.labels, a.annotations, a.value,
            to_dt(a.active_at), to_dt(a.fired_at), to_dt(a.last_eval_at), to_dt(a.last_sent_at),
            [list(x) for x in a.actions])


async def save_values(pool: asyncpg.Pool, alerts: Iterable[Alert]) -> int:
    """The latest value of active alerts, for the dashboard; written now and then, not per sample."""
    rows = [(a.rule, a.fingerprint, a.value, to_dt(a.last_eval_at)) for a in alerts]
    if rows:
        await pool.executemany(
            "UPDATE alert_state SET value = $3, last_eval_at = $4 WHERE rule = $1 AND fingerprint = $2", rows
        )
    return len(rows)


async def prune(pool: asyncpg.Pool, *, history_days: float, notifications_days: float) -> tuple[int, int]:
    """Retention: old history, and notifications delivered or given up on long ago."""
    h = await pool.execute("DELETE FROM alert_history WHERE at < now() - make_interval(secs => $1)",
                           history_days * 86400)
    n = await pool.execute(
        "DELETE FROM alert_notifications WHERE (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) "
        "AND created_at < now() - make_interval(secs => $1)",
        notifications_days * 86400,
    )
    return int(h.split()[-1]), int(n.split()[-1])

