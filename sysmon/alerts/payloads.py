"""What receivers get, in the formats they already understand.

- Webhook: Alertmanager's webhook JSON (version "4"), so anything that takes Alertmanager's
  webhooks (chat bridges, incident tools) takes ours unchanged.
- Alertmanager: the v2 API's postable alerts (POST /api/v2/alerts), so people keep their
  routing, grouping, silences and receivers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

# Alertmanager's zero time: "no end yet" in a webhook payload.
ZERO_TIME = "0001-01-01T00:00:00Z"


def iso(ms: int | None) -> str:
    if ms is None:
        return ZERO_TIME
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generator_url(external_url: str, rule: str) -> str:
    return f"{external_url.rstrip('/')}/?rule={quote(rule, safe='')}"


def alert_json(*, status: str, labels: Mapping[str, str], annotations: Mapping[str, str], active_at: int,
               resolved_at: int | None, fingerprint: str, generator: str) -> dict[str, Any]:
    """One alert as Alertmanager writes it in a webhook (and as an outbox row keeps it)."""
    return {
        "status": status,
        "labels": dict(labels),
        "annotations": dict(annotations),
        "startsAt": iso(active_at),
        "endsAt": iso(resolved_at) if status == "resolved" else ZERO_TIME,
        "generatorURL": generator,
        "fingerprint": fingerprint,
    }


def _common(dicts: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_message(alerts: Sequence[Mapping[str, Any]], *, receiver: str, external_url: str) -> dict[str, Any]:
    """Alertmanager's webhook envelope around alerts of one rule (its group)."""
    common_labels = _common([a["labels"] for a in alerts])
    group_labels = {"alertname": common_labels["alertname"]} if "alertname" in common_labels else {}
    group_key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}"
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": list(alerts),
    }


def postable_alerts(alerts: Sequence[Mapping[str, Any]], *, now_ms: int, resend: timedelta) -> list[dict[str, Any]]:
    """Alertmanager v2 postable alerts. A firing alert carries an end a few resend intervals
    ahead, as Prometheus sends it: Alertmanager resolves it by itself if we stop saying it fires
    (the service gone for good), and we keep saying so every `resend`."""
    valid_until = iso(now_ms + int(4 * resend.total_seconds() * 1000))
    out = []
    for a in alerts:
        out.append({
            "labels": a["labels"],
            "annotations": a["annotations"],
            "startsAt": a["startsAt"],
            "endsAt": a["endsAt"] if a["status"] == "resolved" else valid_until,
            "generatorURL": a["generatorURL"],
        })
    return out
