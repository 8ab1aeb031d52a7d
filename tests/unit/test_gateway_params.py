"""The gateway's pure parts: parameter parsing, host status, subscriptions, frames, the frame queue."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.metrics import InvalidInput
from sysmon.core.query import SeriesResult
from sysmon.gateway import auth, params
from sysmon.gateway.live import protocol
from sysmon.gateway.live.queue import FrameQueue
from sysmon.gateway.problems import validation_problems
from sysmon.gateway.series import sum_by_host
from sysmon.gateway.status import StatusPolicy, host_status
from sysmon.pb.v1 import events_pb2

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("now-1h", NOW - timedelta(hours=1)),
    ("now - 7d", NOW - timedelta(days=7)),
    ("now+5m", NOW + timedelta(minutes=5)),
    ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2025-01-02T05:04:05+02:00", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("1735787045.5", datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
])
def test_times(text: str, expected: datetime) -> None:
    assert params.parse_time(text, NOW, "start") == expected


@pytest.mark.parametrize(("text", "words"), [
    ("", "must not be empty"), ("tomorrow", "is not a time"), ("2025-01-02T03:04:05", "no time zone"),
    ("-1", "Unix seconds"), ("nan", "is not a time"), ("1e400", "Unix seconds"), ("now-5x", "offset"),
    ("now-99999999w", "too large"), ("9999-12-31T23:59:59Z", "must be between"),
    ("0001-01-01T00:00:00+01:00", "out of range"),
])
def test_bad_times_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as e:
        params.parse_time(text, NOW, "end")
    assert e.value.field == "end"


@given(st.text(max_size=80))
def test_any_time_text_parses_or_is_invalid_input(text: str) -> None:
    try:
        t = params.parse_time(text, NOW, "start")
    except InvalidInput:
        return
    assert params.EARLIEST <= t <= params.LATEST


@given(st.text(max_size=40))
def test_any_step_text_parses_or_is_invalid_input(text: str) -> None:
    try:
        step = params.parse_step(text)
    except InvalidInput:
        return
    assert params.MIN_STEP <= step <= params.MAX_STEP


def test_steps() -> None:
    assert params.parse_step("15s") == timedelta(seconds=15)
    assert params.parse_step("1m30s") == timedelta(seconds=90)
    for bad, words in (("0.5s", "too small"), ("400d", "too large"), ("soon", "not a duration")):
        with pytest.raises(InvalidInput, match=words):
            params.parse_step(bad)
    assert params.auto_step(NOW - timedelta(minutes=5), NOW) == timedelta(seconds=1)
    assert params.auto_step(NOW - timedelta(hours=1), NOW) == timedelta(seconds=10)
    assert params.auto_step(NOW - timedelta(days=7), NOW) == timedelta(seconds=1800)
    assert params.auto_step(NOW - timedelta(days=90), NOW) == timedelta(hours=6)


def test_pairs() -> None:
    assert params.parse_pairs(["cpu=total", "state=idle"], "match") == {"cpu": "total", "state": "idle"}
    assert params.parse_pairs(["mountpoint=/"], "match") == {"mountpoint": "/"}
    for bad in (["cpu"], ["=x"], ["a b=c"], ["k=\x00"], ["a=1", "a=2"]):
        with pytest.raises(InvalidInput):
            params.parse_pairs(bad, "match")


def test_host_status() -> None:
    policy = StatusPolicy(stale_after=timedelta(seconds=30), down_after=timedelta(minutes=2))
    assert host_status(None, 1_000_000, 5000, policy) == "down"
    assert host_status(1_000_000 - 10_000, 1_000_000, 5000, policy) == "up"
    assert host_status(1_000_000 - 60_000, 1_000_000, 5000, policy) == "stale"
    assert host_status(1_000_000 - 200_000, 1_000_000, 5000, policy) == "down"
    # A 1-minute collector is up for three of its intervals, and stale until ten.
    assert host_status(1_000_000 - 150_000, 1_000_000, 60_000, policy) == "up"
    assert host_status(1_000_000 - 500_000, 1_000_000, 60_000, policy) == "stale"


def test_subscriptions() -> None:
    sub = protocol.parse_subscription({"type": "subscribe", "hosts": ["a", "b"], "metrics": ["m.x"],
                                       "match": {"cpu": "total"}, "events": ["alerts"]})
    assert sub.wants_host("a")
    assert not sub.wants_host("c")
    assert sub.wants_series("m.x", {"cpu": "total", "state": "idle"})
    assert not sub.wants_series("m.x", {"cpu": "0"})
    assert not sub.wants_series("m.y", {"cpu": "total"})
    assert sub.alert_events
    assert not sub.host_events
    every = protocol.parse_subscription({"type": "subscribe", "hosts": ["*"], "metrics": ["*"]})
    assert every.hosts is None
    assert every.metrics is None
    assert protocol.unknown_hosts(sub, ["a"]) == ["b"]
    assert protocol.unknown_hosts(every, []) == []


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12))
def test_any_message_is_accepted_or_refused_with_4400(value: object) -> None:
    data = json.dumps({"type": "subscribe", "hosts": value}) if not isinstance(value, dict) else json.dumps(
        {"type": "subscribe", **value})
    try:
        msg = protocol.parse_message(data)
        protocol.parse_subscription(msg)
    except protocol.BadMessage as e:
        refused = e
    else:
        return
    assert refused.code == protocol.CLOSE_BAD_MESSAGE
    assert len(refused.reason.encode()) <= 123


def test_samples_frame_selects_per_subscription() -> None:
    ev = events_pb2.SamplesEvent(host_id="h", seq=7, stored_unix_ms=1010)
    ev.frames.add(time_unix_ms=1000, series_ids=[1, 2, -3], values=[0.5, 1.5, 2.5])
    meta = {1: protocol.SeriesMeta("cpu", {"cpu": "0"}, "1"), 2: protocol.SeriesMeta("mem", {}, "By"),
            -3: protocol.SeriesMeta("cpu", {"cpu": "1"}, "1")}
    es = protocol.event_series(ev)
    sub = protocol.Subscription(frozenset({"h"}), frozenset({"cpu"}), (("cpu", "1"),))
    frame = json.loads(protocol.samples_frame(es, sub, meta) or "{}")
    assert frame == {"type": "samples", "host": "h", "seq": 7, "stored_ms": 1010, "series": [
        {"id": "-3", "metric": "cpu", "attributes": {"cpu": "1"}, "unit": "1", "t": [1000], "v": [2.5]}]}
    assert protocol.samples_frame(es, protocol.Subscription(frozenset({"other"}), None), meta) is None
    assert protocol.samples_frame(es, protocol.Subscription(None, frozenset()), meta) is None


async def test_frame_queue_drops_oldest_and_counts() -> None:
    q = FrameQueue(3)
    assert all(q.put(str(i)) for i in range(3))
    assert not q.put("3")
    assert not q.put("4")
    assert (q.dropped, q.take_unreported(), q.take_unreported()) == (2, 2, 0)
    assert [await q.get() for _ in range(3)] == ["2", "3", "4"]
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put("5")
    assert await waiter == "5"
    q.put("6")
    q.close(4400, "bad")
    assert await q.get() is None
    assert q.closed == (4400, "bad")


def test_sum_by_host() -> None:
    a = SeriesResult(1, "h", "disk", {"device": "sda", "direction": "read"}, "By/s", [(0, 1.0), (10, 2.0)])
    b = SeriesResult(2, "h", "disk", {"device": "sdb", "direction": "read"}, "By/s", [(10, 3.0), (20, 4.0)])
    c = SeriesResult(3, "g", "disk", {"device": "sda", "direction": "write"}, "By/s", [(0, 9.0)])
    out = {s.host_id: s for s in sum_by_host([a, b, c])}
    assert out["h"].points == [(0, 1.0), (10, 5.0), (20, 4.0)]
    assert out["h"].attributes == {"direction": "read"}
    assert out["g"].points == [(0, 9.0)]


def test_websocket_tokens() -> None:
    assert auth.bearer_from_subprotocols(["sysmon.v1", "base64url.bearer.sysmon.dev.czNjcmV0"]) == "s3cret"
    assert auth.bearer_from_subprotocols(["base64url.bearer.sysmon.dev.!!"]) is None
    # The header wins; else the subprotocol's token becomes one.
    assert auth.websocket_authorization({"authorization": "Bearer h"}, ["base64url.bearer.sysmon.dev.czNjcmV0"]) \
        == "Bearer h"
    assert auth.websocket_authorization({}, ["sysmon.v1", "base64url.bearer.sysmon.dev.czNjcmV0"]) == "Bearer s3cret"
    assert auth.websocket_authorization({}, ["sysmon.v1"]) is None


def test_validation_errors_name_the_parameter() -> None:
    errors = [{"loc": ("query", "step"), "msg": "Value error, too small"},
              {"loc": ("query", "metric", 0), "msg": "x"}]
    assert validation_problems(errors) == [{"name": "step", "reason": "too small"},
                                           {"name": "metric[0]", "reason": "x"}]


def test_status_from_postgresql_allows_for_its_once_a_minute_record() -> None:
    """While Redis is away, a host's last_seen comes from PostgreSQL, written once a minute: a host
    seen 70 s ago there is up, not stale."""
    from sysmon.gateway.status import StatusPolicy, host_status

    policy = StatusPolicy()
    assert host_status(0, 70_000, 5000, policy) == "stale"
    assert host_status(0, 70_000, 5000, policy, precision_ms=65_000) == "up"
    assert host_status(0, 65_000 + 121_000, 5000, policy, precision_ms=65_000) == "down"
