"""Notifiers: webhook (Alertmanager's webhook JSON), Alertmanager's v2 API, the log.

Each takes a batch of outbox rows for one receiver and answers with an Outcome, the way
Alertmanager's `Notifier.Notify` answers (retry?, error): delivered, worth trying again (and
when, if the receiver said), or refused for good. Retrying is the outbox's business.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from sysmon.alerts.payloads import postable_alerts, webhook_message
from sysmon.core.durations import parse_duration

log = logging.getLogger(__name__)
notifications_log = logging.getLogger("sysmon.alerts.notifications")

USER_AGENT = "sysmon-alerts/0.1"
# Statuses after which the same request can succeed later (as Alertmanager's notify package and
# OpenTelemetry's exporters treat them); any other 4xx is our request's fault and is not retried.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ERROR = 500


@dataclass(frozen=True)
class Notification:
    id: int
    rule: str
    fingerprint: str
    receiver: str
    action: dict[str, Any]
    payload: dict[str, Any]
    status: str
    repeat: bool
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retry: bool = True
    retry_after: float | None = None
    error: str = ""


class Notifier(Protocol):
    def batch(self, rows: Sequence[Notification]) -> int:
        """How many of rows (from the head) go in one request."""
        ...

    async def notify(self, rows: Sequence[Notification]) -> Outcome: ...


class TokenMissing(Exception):
    pass


def _headers(action: dict[str, Any]) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    env = action.get("bearerTokenEnv")
    if env:
        token = os.environ.get(env)
        if not token:
            # Named, never shown: the variable's name is configuration, its value a secret.
            raise TokenMissing(f"environment variable {env} (bearerTokenEnv) is not set")
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _timeout(action: dict[str, Any]) -> float:
    return parse_duration(action.get("timeout", "10s")).total_seconds()


async def _post(client: httpx.AsyncClient, url: str, body: Any, action: dict[str, Any],
                extra: dict[str, str] | None = None) -> Outcome:
    try:
        headers = _headers(action) | (extra or {})
    except TokenMissing as e:
        return Outcome(False, retry=True, error=str(e))
    try:
        resp = await client.post(url, json=body, headers=headers, timeout=_timeout(action))
    except httpx.HTTPError as e:
        # Connection refused, reset, timed out: the receiver is down or slow; try again later.
        return Outcome(False, retry=True, error=f"{type(e).__name__}: {e}"[:MAX_ERROR] or type(e).__name__)
    if resp.is_success:
        return Outcome(True)
    text = resp.text[:200].replace("\n", " ")
    error = f"HTTP {resp.status_code}: {text}"[:MAX_ERROR]
    if resp.status_code in RETRYABLE_STATUS:
        return Outcome(False, retry=True, retry_after=_retry_after(resp), error=error)
    return Outcome(False, retry=False, error=error)


class WebhookNotifier:
    """POSTs Alertmanager's webhook message; the alerts of one rule and status go together."""

    max_alerts = 100

    def __init__(self, client: httpx.AsyncClient, external_url: str):
        self.client = client
        self.external_url = external_url

    def batch(self, rows: Sequence[Notification]) -> int:
        head = rows[0]
        n = 1
        while n < len(rows) and n < self.max_alerts and rows[n].rule == head.rule and rows[n].status == head.status:
            n += 1
        return n

    async def notify(self, rows: Sequence[Notification]) -> Outcome:
        action = rows[0].action["webhook"]
        body = webhook_message([r.payload for r in rows], receiver=f"sysmon/{rows[0].rule}",
                               external_url=self.external_url)
        # Receivers that remember keys can drop a copy sent again after a crash mid-delivery.
        key = f"sysmon-{rows[0].id}" + (f"-{rows[-1].id}" if len(rows) > 1 else "")
        return await _post(self.client, str(action["url"]), body, action, {"Idempotency-Key": key})


class AlertmanagerNotifier:
    """POSTs to an Alertmanager's /api/v2/alerts; Alertmanager groups and deduplicates itself."""

    max_alerts = 500

    def __init__(self, client: httpx.AsyncClient, resend: timedelta):
        self.client = client
        self.resend = resend

    def batch(self, rows: Sequence[Notification]) -> int:
        return min(len(rows), self.max_alerts)

    @staticmethod
    def endpoint(base: str) -> str:
        return base.rstrip("/") + "/api/v2/alerts"

    async def notify(self, rows: Sequence[Notification]) -> Outcome:
        return await self.push(rows[0].action["alertmanager"], [r.payload for r in rows])

    async def push(self, action: dict[str, Any], alerts: Sequence[dict[str, Any]]) -> Outcome:
        """Post alerts to the action's Alertmanager: the outbox's notifications, and the resends
        saying alerts still fire (not through the outbox: a lost one is replaced by the next)."""
        body = postable_alerts(alerts, now_ms=time.time_ns() // 1_000_000, resend=self.resend)
        return await _post(self.client, self.endpoint(str(action["url"])), body, action)


class LogNotifier:
    """Writes each notification to this service's log, one line each."""

    def batch(self, rows: Sequence[Notification]) -> int:
        return len(rows)

    async def notify(self, rows: Sequence[Notification]) -> Outcome:
        for r in rows:
            level = logging.getLevelName(str(r.action.get("log", {}).get("level", "warning")).upper())
            p = r.payload
            labels = p.get("labels", {})
            summary = p.get("annotations", {}).get("summary", "")
            notifications_log.log(
                level if isinstance(level, int) else logging.WARNING,
                "alert %s%s %s host=%s since=%s labels=%s%s",
                r.rule, " (repeat)" if r.repeat else "", p.get("status", r.status).upper(), labels.get("host", ""),
                p.get("startsAt", ""), labels, f": {summary}" if summary else "",
            )
        return Outcome(True)
