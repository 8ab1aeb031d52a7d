"""Delivery of the notification outbox: per receiver, in order, with retries; never in the way.

Every receiver is drained by a task of its own, oldest notification first, so a receiver that is
down holds back only its own notifications (a firing is never overtaken by its own resolved)
while evaluation and the other receivers go on. A failed attempt waits 2**n * uniform(0.8, 1.2)
seconds, capped, or what the receiver asked for in Retry-After when that is longer (the
OpenTelemetry exporter's shape); after `give_up_after` the notification is dropped and counted.

A batch is claimed by moving its next attempt a lease into the future in a committed
transaction, then sent outside any transaction. A crash mid-send makes it due again when the
lease runs out, so nothing is lost; the one case that sends twice is a crash between the
receiver's 2xx and our UPDATE, which is why webhooks carry an Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg

from sysmon.alerts import telemetry
from sysmon.alerts.notifiers import Notification, Notifier, Outcome
from sysmon.alerts.store import DB_ERRORS
from sysmon.core.backoff import Backoff, wait_any

log = logging.getLogger(__name__)

CLAIM_ROWS = 500
STOP_GRACE_S = 5.0
# Longer than any action's timeout (at most 1 minute): a claimed batch is not claimed again
# while it is being sent.
LEASE = timedelta(seconds=90)


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 1.0
    maximum: float = 300.0
    give_up_after: timedelta = timedelta(hours=24)

    def delay(self, attempts: int, hint: float | None) -> float:
        return Backoff(initial=self.initial, maximum=self.maximum, attempt=max(0, attempts - 1)).next_delay(hint)


def receiver_type(receiver: str) -> str:
    return receiver.split(":", 1)[0]


def shown(receiver: str) -> str:
    """A receiver as logs show it: scheme, host and port only. Webhook paths often are the secret
    (chat services put the token there)."""
    kind, _, url = receiver.partition(":")
    if not url:
        return receiver
    parts = urlsplit(url)
    return f"{kind}:{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else receiver


class Delivery:
    def __init__(self, pool: asyncpg.Pool, notifiers: Mapping[str, Notifier], policy: RetryPolicy | None = None):
        self.pool = pool
        self.notifiers = notifiers
        self.policy = policy or RetryPolicy()
        self._wake = asyncio.Event()
        self._drains: dict[str, asyncio.Task[None]] = {}
        self.pending = 0

    def wake(self) -> None:
        """New notifications are in the outbox: look at once rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    wait = await self._dispatch()
                    backoff.reset()
                except DB_ERRORS as e:
                    wait = backoff.next_delay()
                    log.warning("notification outbox unavailable (%s); looking again in %.1fs", e, wait)
                await self._sleep(stop, wait)
        finally:
            # Let sends in flight finish (a cancelled one is sent again when its lease runs out).
            drains = list(self._drains.values())
            if drains:
                await asyncio.wait(drains, timeout=STOP_GRACE_S)
            for t in drains:
                t.cancel()
            await asyncio.gather(*drains, return_exceptions=True)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        await wait_any(stop, self._wake, seconds=seconds)

    async def _dispatch(self) -> float:
        """Start a drain for each receiver whose oldest notification is due; seconds to the next."""
        async with self.pool.acquire() as conn:
            now = await conn.fetchval("SELECT now()")
            heads = await conn.fetch(
                """
                SELECT DISTINCT ON (receiver) receiver, next_attempt
                FROM alert_notifications WHERE delivered_at IS NULL AND gave_up_at IS NULL
                ORDER BY receiver, id
                """
            )
            self.pending = await conn.fetchval(
                "SELECT count(*) FROM alert_notifications WHERE delivered_at IS NULL AND gave_up_at IS NULL"
            )
        telemetry.OUTBOX.set(self.pending)
        wait = 5.0
        for h in heads:
            receiver = h["receiver"]
            if receiver in self._drains:
                continue
            due_in = (h["next_attempt"] - now).total_seconds()
            if due_in <= 0:
                task = asyncio.create_task(self._drain(receiver), name=f"deliver {receiver}")
                self._drains[receiver] = task
                task.add_done_callback(lambda t, r=receiver: self._drained(r, t))
            else:
                wait = min(wait, due_in)
        return max(wait, 0.01)

    def _drained(self, receiver: str, task: asyncio.Task[None]) -> None:
        self._drains.pop(receiver, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("delivery to %s stopped: %s", shown(receiver), task.exception())
        self._wake.set()  # more may be due, or the next retry time changed

    async def _drain(self, receiver: str) -> None:
        notifier = self.notifiers.get(receiver_type(receiver))
        while True:
            rows = await self._claim(receiver, notifier)
            if not rows:
                return
            if notifier is None:
                outcome = Outcome(False, retry=False, error=f"no notifier for {receiver_type(receiver)!r}")
            else:
                try:
                    outcome = await notifier.notify(rows)
                except Exception as e:  # a notifier's bug must not end delivery for everyone
                    log.exception("notifier for %s failed", shown(receiver))
                    outcome = Outcome(False, retry=True, error=f"{type(e).__name__}: {e}")
            await self._settle(rows, outcome)
            if not outcome.ok:
                return  # this receiver waits for its retry time; the dispatcher comes back

    async def _claim(self, receiver: str, notifier: Notifier | None) -> list[Notification]:
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR UPDATE, not SKIP LOCKED: another replica claiming the same receiver waits, then
            # finds the head leased, so no two send a receiver's notifications out of order.
            rows = await conn.fetch(
                """
                SELECT id, rule, fingerprint, receiver, action, payload, status, repeat, attempts, created_at,
                       next_attempt <= now() AS due
                FROM alert_notifications
                WHERE receiver = $1 AND delivered_at IS NULL AND gave_up_at IS NULL
                ORDER BY id LIMIT $2 FOR UPDATE
                """,
                receiver, CLAIM_ROWS,
            )
            if not rows or not rows[0]["due"]:
                return []
            batch = [Notification(r["id"], r["rule"], r["fingerprint"], r["receiver"], r["action"], r["payload"],
                                  r["status"], r["repeat"], r["attempts"], r["created_at"]) for r in rows]
            n = notifier.batch(batch) if notifier is not None else 1
            batch = batch[:max(1, n)]
            await conn.execute(
                "UPDATE alert_notifications SET next_attempt = now() + $2::interval WHERE id = ANY($1::int8[])",
                [b.id for b in batch], LEASE,
            )
        return batch

    async def _settle(self, rows: list[Notification], outcome: Outcome) -> None:
        ids = [r.id for r in rows]
        kind = receiver_type(rows[0].receiver)
        if outcome.ok:
            await self.pool.execute(
                "UPDATE alert_notifications SET delivered_at = now(), attempts = attempts + 1, last_error = NULL "
                "WHERE id = ANY($1::int8[])",
                ids,
            )
            telemetry.NOTIFICATIONS_SENT.labels(kind).inc(len(rows))
            return
        telemetry.NOTIFICATIONS_FAILED.labels(kind).inc(len(rows))
        attempts = rows[0].attempts + 1
        age = _age(rows[0].created_at)
        if not outcome.retry or age >= self.policy.give_up_after:
            why = "refused" if not outcome.retry else f"still failing after {age}"
            log.error("giving up on %d notification(s) to %s (%s): %s", len(rows), shown(rows[0].receiver), why,
                      outcome.error)
            await self.pool.execute(
                "UPDATE alert_notifications SET gave_up_at = now(), attempts = attempts + 1, last_error = $2 "
                "WHERE id = ANY($1::int8[])",
                ids, outcome.error,
            )
            telemetry.NOTIFICATIONS_DROPPED.labels(kind).inc(len(rows))
            return
        delay = self.policy.delay(attempts, outcome.retry_after)
        log.warning("delivery to %s failed (attempt %d), retrying in %.1fs: %s", shown(rows[0].receiver), attempts,
                    delay, outcome.error)
        await self.pool.execute(
            "UPDATE alert_notifications SET attempts = attempts + 1, last_error = $2, "
            "next_attempt = now() + $3::interval WHERE id = ANY($1::int8[])",
            ids, outcome.error, timedelta(seconds=delay),
        )


def _age(created_at: datetime) -> timedelta:
    return datetime.now(UTC) - created_at
