"""The /ws/live protocol: what a client may send, what it is sent, and the close codes.

Client -> gateway (JSON text):
  {"type": "subscribe", "hosts": ["web-1"] | ["*"], "metrics": ["system.cpu.utilization"] | ["*"],
   "match": {"cpu": "total"}, "events": ["hosts", "alerts"]}      replaces the subscription
  {"type": "ping"}                                                   answered with {"type": "pong"}
Gateway -> client:
  hello, subscribed, samples, host, alert, heartbeat, dropped, pong (see the frame builders below).

Everything here is pure: the hub and the endpoint do the I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sysmon.core.metrics import ATTR_KEY_RE, HOST_ID_RE, NAME_RE
from sysmon.pb.v1 import events_pb2

# Close codes: 4000-4999 are the application's own (RFC 6455 section 7.4.2), mirroring HTTP.
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_UNKNOWN_HOST = 4404
CLOSE_TOO_SLOW = 4408

MAX_MESSAGE_BYTES = 64 * 1024
MAX_HOSTS = 1000
MAX_METRICS = 100
MAX_MATCH = 16
EVENT_KINDS = frozenset({"hosts", "alerts"})
_SUBSCRIBE_KEYS = frozenset({"type", "hosts", "metrics", "match", "events"})

HOST_STATES = {events_pb2.HOST_STATE_UP: "up", events_pb2.HOST_STATE_DOWN: "down"}
ALERT_STATES = {
    events_pb2.ALERT_STATE_INACTIVE: "inactive",
    events_pb2.ALERT_STATE_PENDING: "pending",
    events_pb2.ALERT_STATE_FIRING: "firing",
    events_pb2.ALERT_STATE_RESOLVED: "resolved",
}


class BadMessage(Exception):
    """A client message the gateway refuses; the connection is closed with `code` and `reason`."""

    def __init__(self, reason: str, code: int = CLOSE_BAD_MESSAGE):
        # A close reason is at most 123 bytes of UTF-8.
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode()[:123].decode(errors="ignore")


@dataclass(frozen=True)
class Subscription:
    hosts: frozenset[str] | None = frozenset()  # None: every host
    metrics: frozenset[str] | None = frozenset()  # None: every metric; empty: no samples
    match: tuple[tuple[str, str], ...] = ()
    host_events: bool = False
    alert_events: bool = False

    def wants_host(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    def wants_series(self, name: str, attributes: Mapping[str, str]) -> bool:
        if self.metrics is not None and name not in self.metrics:
            return False
        return all(attributes.get(k) == v for k, v in self.match)

    def to_json(self) -> dict[str, Any]:
        return {
            "hosts": ["*"] if self.hosts is None else sorted(self.hosts),
            "metrics": ["*"] if self.metrics is None else sorted(self.metrics),
            "match": dict(self.match),
            "events": [k for k, on in (("hosts", self.host_events), ("alerts", self.alert_events)) if on],
        }


def parse_message(data: str | bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("message is not JSON") from None
    if not isinstance(msg, dict):
        raise BadMessage("message must be a JSON object")
    kind = msg.get("type")
    if kind not in ("subscribe", "ping"):
        raise BadMessage(f"unknown message type {str(kind)[:40]!r}; expected subscribe or ping")
    return msg


def _strings(msg: Mapping[str, Any], key: str, limit: int) -> list[str] | None:
    v = msg.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadMessage(f"{key} must be a list of strings")
    if len(v) > limit:
        raise BadMessage(f"{key}: at most {limit}")
    return v


def _names(values: list[str], pattern: re.Pattern[str], max_length: int, what: str) -> frozenset[str] | None:
    """The names given, checked against `pattern`; None for ["*"] (every one)."""
    if "*" in values:
        return None
    for v in values:
        if len(v) > max_length or not pattern.match(v):
            raise BadMessage(f"{v[:40]!r} is not a {what}")
    return frozenset(values)


def parse_subscription(msg: Mapping[str, Any]) -> Subscription:
    unknown = set(msg) - _SUBSCRIBE_KEYS
    if unknown:
        raise BadMessage(f"unknown field {sorted(unknown)[0][:40]!r} in subscribe")
    hosts = _strings(msg, "hosts", MAX_HOSTS) or []
    if not hosts:
        raise BadMessage('hosts must name at least one host, or ["*"] for all')
    host_set = _names(hosts, HOST_ID_RE, 253, "host id")
    metric_set = _names(_strings(msg, "metrics", MAX_METRICS) or [], NAME_RE, 255, "metric name")
    match = msg.get("match") or {}
    if not isinstance(match, dict) or len(match) > MAX_MATCH:
        raise BadMessage(f"match must be an object of at most {MAX_MATCH} attribute: value pairs")
    for k, v in match.items():
        if not ATTR_KEY_RE.match(k) or len(k) > 64 or not isinstance(v, str) or len(v) > 256:
            raise BadMessage(f"match: {k[:40]!r} must be an attribute name with a string value")
    events = _strings(msg, "events", 2) or []
    bad = set(events) - EVENT_KINDS
    if bad:
        raise BadMessage(f"events: {sorted(bad)[0][:40]!r} is not one of hosts, alerts")
    return Subscription(host_set, metric_set, tuple(sorted(match.items())), "hosts" in events, "alerts" in events)


# --- frames -------------------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    # orjson: a frame per event and subscription is built on the fan-out path.
    return orjson.dumps(obj).decode()


def hello_frame(heartbeat_ms: int, queue: int) -> str:
    return dumps({"type": "hello", "protocol": "sysmon.v1", "heartbeat_ms": heartbeat_ms, "queue": queue})


def subscribed_frame(sub: Subscription) -> str:
    return dumps({"type": "subscribed", **sub.to_json()})


def heartbeat_frame(now_ms: int, dropped: int) -> str:
    return dumps({"type": "heartbeat", "t": now_ms, "dropped": dropped})


def dropped_frame(count: int, total: int) -> str:
    return dumps({"type": "dropped", "count": count, "total": total})


PONG_FRAME = dumps({"type": "pong"})


@dataclass(frozen=True, slots=True)
class SeriesMeta:
    name: str
    attributes: dict[str, str]
    unit: str


@dataclass
class EventSeries:
    """One SamplesEvent reorganised by series: times and values of each series id."""

    host: str
    stored_ms: int
    seq: int
    points: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)


def event_series(ev: events_pb2.SamplesEvent) -> EventSeries:
    out = EventSeries(ev.host_id, ev.stored_unix_ms, ev.seq)
    for f in ev.frames:
        for sid, v in zip(f.series_ids, f.values, strict=False):
            ts, vs = out.points.setdefault(sid, ([], []))
            ts.append(f.time_unix_ms)
            vs.append(v)
    return out


def samples_frame(es: EventSeries, sub: Subscription, meta: Mapping[int, SeriesMeta]) -> str | None:
    """The part of one event a subscription wants, or None when it wants none of it."""
    if sub.metrics is not None and not sub.metrics:
        return None
    if not sub.wants_host(es.host):
        return None
    series = []
    for sid, (ts, vs) in es.points.items():
        m = meta.get(sid)
        if m is None or not sub.wants_series(m.name, m.attributes):
            continue
        # Ids are 64-bit: a string, since JavaScript numbers hold 53 bits.
        series.append({"id": str(sid), "metric": m.name, "attributes": m.attributes, "unit": m.unit,
                       "t": ts, "v": vs})
    if not series:
        return None
    return dumps({"type": "samples", "host": es.host, "seq": es.seq, "stored_ms": es.stored_ms,
                  "series": series})


def host_frame(ev: events_pb2.HostEvent) -> str:
    return dumps({"type": "host", "host": ev.host_id, "state": HOST_STATES.get(ev.state, "unknown"),
                  "t": ev.time_unix_ms, "labels": dict(ev.labels)})


def alert_frame(ev: events_pb2.AlertEvent) -> str:
    return dumps({
        "type": "alert", "rule": ev.rule, "fingerprint": ev.fingerprint, "host": ev.host_id,
        "state": ALERT_STATES.get(ev.state, "unknown"), "previous": ALERT_STATES.get(ev.previous, "unknown"),
        "severity": ev.severity, "labels": dict(ev.labels), "annotations": dict(ev.annotations),
        "value": ev.value if math.isfinite(ev.value) else None,
        "active_at_ms": ev.active_at_unix_ms or None, "t": ev.time_unix_ms,
    })


def unknown_hosts(sub: Subscription, known: Iterable[str]) -> list[str]:
    if sub.hosts is None:
        return []
    return sorted(sub.hosts - set(known))
