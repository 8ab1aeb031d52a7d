"""Payload formats (Alertmanager's webhook JSON and v2 postable alerts), batching and retry timing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sysmon.alerts.notifiers import Notification, WebhookNotifier, _retry_after
from sysmon.alerts.outbox import RetryPolicy
from sysmon.alerts.payloads import ZERO_TIME, alert_json, iso, postable_alerts, webhook_message


def alert(status: str = "firing", host: str = "web-1", rule: str = "disk") -> dict[str, Any]:
    return alert_json(status=status, labels={"alertname": rule, "host": host, "severity": "critical"},
                      annotations={"summary": f"{host} full"}, active_at=1_700_000_000_000,
                      resolved_at=1_700_000_060_000 if status == "resolved" else None, fingerprint="0123456789abcdef",
                      generator="http://dash/?rule=disk")


def test_alert_json_is_alertmanagers() -> None:
    a = alert()
    assert a == {"status": "firing", "labels": {"alertname": "disk", "host": "web-1", "severity": "critical"},
                 "annotations": {"summary": "web-1 full"}, "startsAt": "2023-11-14T22:13:20.000Z",
                 "endsAt": ZERO_TIME, "generatorURL": "http://dash/?rule=disk", "fingerprint": "0123456789abcdef"}
    assert alert("resolved")["endsAt"] == "2023-11-14T22:14:20.000Z"


def test_webhook_message_envelope() -> None:
    msg = webhook_message([alert(host="a"), alert(host="b")], receiver="sysmon/disk", external_url="http://dash")
    assert msg["version"] == "4"
    assert msg["status"] == "firing"
    assert msg["groupLabels"] == {"alertname": "disk"}
    assert msg["commonLabels"] == {"alertname": "disk", "severity": "critical"}
    assert msg["commonAnnotations"] == {}
    assert msg["truncatedAlerts"] == 0
    assert [a["labels"]["host"] for a in msg["alerts"]] == ["a", "b"]
    assert webhook_message([alert("resolved")], receiver="r", external_url="x")["status"] == "resolved"


def test_postable_alerts_end_ahead_while_firing() -> None:
    now = 1_700_000_100_000
    firing, resolved = postable_alerts([alert(), alert("resolved")], now_ms=now, resend=timedelta(minutes=1))
    assert firing["endsAt"] == iso(now + 240_000)
    assert resolved["endsAt"] == "2023-11-14T22:14:20.000Z"
    assert set(firing) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def row(i: int, rule: str = "disk", status: str = "firing") -> Notification:
    return Notification(i, rule, "f", "webhook:x", {"webhook": {"url": "http://x"}}, alert(status, rule=rule),
                        status, False, 0, datetime.now(UTC))


def test_webhook_batches_one_rule_and_status_at_a_time() -> None:
    n = WebhookNotifier(httpx.AsyncClient(), "http://dash")
    rows = [row(1), row(2), row(3, status="resolved"), row(4)]
    assert n.batch(rows) == 2
    assert n.batch(rows[2:]) == 1
    assert n.batch([row(1), row(2, rule="cpu")]) == 1


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0", 0.0), ("soon", None), (None, None)])
def test_retry_after(header: str | None, seconds: float | None) -> None:
    resp = httpx.Response(503, headers={"retry-after": header} if header else {})
    assert _retry_after(resp) == seconds


def test_retry_after_as_a_date() -> None:
    when = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    got = _retry_after(httpx.Response(429, headers={"retry-after": when}))
    assert got is not None
    assert 25 <= got <= 31


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    random.seed(1)
    p = RetryPolicy(initial=1.0, maximum=60.0)
    for attempts, lo, hi in ((1, 0.8, 1.2), (2, 1.6, 2.4), (5, 12.8, 19.2), (20, 48.0, 60.0)):
        for _ in range(20):
            assert lo <= p.delay(attempts, None) <= hi
    assert p.delay(1, 30.0) == 30.0  # the receiver's Retry-After wins when longer


def test_logs_never_show_a_webhooks_path() -> None:
    from sysmon.alerts.outbox import shown

    assert shown("webhook:https://hooks.example.com/services/T0/B0/SECRET") == "webhook:https://hooks.example.com/…"
    assert shown("alertmanager:http://am:9093") == "alertmanager:http://am:9093"
    assert shown("log") == "log"
