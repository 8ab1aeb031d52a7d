"""The alerts service end to end: real aggregator (gRPC), PostgreSQL, Redis, and real HTTP
receivers on sockets. Samples go in through MetricsService.Push like a collector's; rules through
ConfigService.Apply like the operator's; notifications come out as HTTP POSTs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sysmon.aggregator.server import Aggregator
from sysmon.alerts.rules import NO_DATA_RULE
from sysmon.alerts.service import AlertsService
from sysmon.core.bus import ALERTS, RedisBus
from sysmon.core.config_model import spec_to_struct
from sysmon.core.embedded import free_port
from sysmon.core.http_server import EmbeddedServer, bind
from sysmon.core.settings import AlertsSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc, events_pb2
from tests.conftest import AggregatorFactory
from tests.helpers import RawClient, make_batch, running_collector, wait_for

METRIC = "system.filesystem.utilization"
ATTRS = {"device": "/dev/sda1", "mountpoint": "/"}


# --- a real HTTP receiver ------------------------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Receiver:
    """Webhook and Alertmanager endpoints on a socket; `status` is what it answers."""

    port: int = field(default_factory=free_port)
    posts: list[Post] = field(default_factory=list)
    status: int = 200
    _server: EmbeddedServer | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        if self.status < 300:
            self.posts.append(Post(request.url.path, dict(request.headers), body, time.monotonic()))
        return JSONResponse({}, status_code=self.status)

    async def start(self) -> Receiver:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        self._server = EmbeddedServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
        sock = bind(f"127.0.0.1:{self.port}")
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await wait_for(lambda: self._server is not None and self._server.started, message="receiver started")
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    def alerts(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Every alert received on `path`, in order (webhook envelopes unpacked)."""
        out = []
        for p in self.posts:
            if p.path == path:
                out += p.body["alerts"] if isinstance(p.body, dict) else p.body
        return out

    def statuses(self, path: str = "/hook") -> list[str]:
        return [a["status"] for a in self.alerts(path)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


# --- the service, rules, samples -----------------------------------------------------------------


@dataclass
class Alerts:
    service: AlertsService
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, 30)


AlertsFactory = Callable[..., Awaitable[Alerts]]


@pytest.fixture
async def start_alerts(pg_dsn: str, redis_url: str) -> AsyncIterator[AlertsFactory]:
    running: list[Alerts] = []

    async def start(agg: Aggregator, *, wait: bool = True, **overrides: Any) -> Alerts:
        fields: dict[str, Any] = {"aggregator": agg.address, "listen": "127.0.0.1:0", "tick": "100ms",
                                  "retry_initial": "100ms", "retry_max": "500ms", "no_data_after": "0s"}
        fields.update(overrides)
        svc = AlertsService(AlertsSettings(**fields), postgres_url=pg_dsn, redis_url=redis_url)
        a = Alerts(svc, asyncio.create_task(svc.run()))
        running.append(a)
        if wait:
            await wait_for(svc.ready.is_set, message="alerts service ready")
        return a

    yield start
    for a in running:
        if not a.task.done():
            await a.stop()


def rule_spec(url: str | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metric": METRIC, "match": {"mountpoint": "/"}, "condition": {"op": ">", "threshold": 0.9},
        "annotations": {"summary": "{{ host }}: / is {{ value | percent }} full"},
        "actions": [{"webhook": {"url": f"{url}/hook"}}] if url else [],
    }
    base.update(spec)
    return base


class Rules:
    def __init__(self, agg: Aggregator):
        self.channel = grpc.aio.insecure_channel(agg.address)
        self.stub = config_pb2_grpc.ConfigServiceStub(self.channel)

    async def apply(self, name: str, spec: dict[str, Any], generation: int = 1) -> int:
        resp = await self.stub.Apply(config_pb2.ApplyRequest(upserts=[config_pb2.Resource(
            kind="AlertRule", name=name, generation=generation, spec=spec_to_struct(spec))]))
        return resp.version

    async def delete(self, name: str) -> int:
        resp = await self.stub.Apply(config_pb2.ApplyRequest(
            deletes=[config_pb2.ResourceKey(kind="AlertRule", name=name)]))
        return resp.version


@pytest.fixture
async def rules(start_aggregator: AggregatorFactory) -> AsyncIterator[tuple[Aggregator, Rules]]:
    agg = await start_aggregator()
    r = Rules(agg)
    yield agg, r
    await r.channel.close()


class Host:
    """A hand-driven collector: each send() is one batch of one sample, acknowledged (stored)."""

    def __init__(self, agg: Aggregator, host_id: str = "web-1"):
        self.client = RawClient(agg.address, host_id=host_id, session_id=uuid.uuid4().hex)
        self.seq = 0
        self.host_id = host_id

    async def __aenter__(self) -> Host:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def send(self, value: float, *, time_ms: int | None = None) -> None:
        self.seq += 1
        self.client.send(make_batch(self.host_id, self.client.session_id, self.seq, values=(value,), name=METRIC,
                                    attributes=ATTRS, time_ms=time_ms))
        seq = self.seq
        await wait_for(lambda: seq in self.client.acked, message=f"batch {seq} stored")


async def rule_loaded(svc: AlertsService, name: str, present: bool = True) -> None:
    await wait_for(lambda: (name in svc.state.rules) == present, message=f"rule {name} {'in' if present else 'out'}")


async def with_rule(rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, spec: dict[str, Any],
                    **settings: Any) -> tuple[Aggregator, Rules, Alerts]:
    """The service started (with `settings`), and rule "root-full" applied and loaded."""
    agg, api = rules
    alerts = await start_alerts(agg, **settings)
    await api.apply("root-full", spec)
    await rule_loaded(alerts.service, "root-full")
    return agg, api, alerts


async def history(pool: asyncpg.Pool, rule: str) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT previous, state FROM alert_history WHERE rule = $1 ORDER BY id", rule)
    return [(r["previous"], r["state"]) for r in rows]


# --- the tests --------------------------------------------------------------------------------------


async def test_a_rule_over_watch_goes_through_every_transition(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    agg, api = rules
    alerts = await start_alerts(agg)
    svc = alerts.service
    assert svc.state.rules == {}
    events: list[events_pb2.AlertEvent] = []

    async def listen() -> None:
        async for m in RedisBus(redis_client).subscribe(ALERTS):
            events.append(events_pb2.AlertEvent.FromString(m.payload))

    listener = asyncio.create_task(listen())
    try:
        # Applied while the service runs: it takes effect without a restart.
        await api.apply("root-full", rule_spec(receiver.url, **{"for": "1s"}, labels={"team": "infra"}))
        await rule_loaded(svc, "root-full")
        async with Host(agg) as host:
            await host.send(0.5)
            await host.send(0.95)
            await wait_for(lambda: receiver.statuses() == ["firing"], message="firing POST")
            row = await pool.fetchrow("SELECT state, active_at, fired_at, value FROM alert_state")
            assert row["state"] == "firing"
            assert row["value"] == 0.95
            assert (row["fired_at"] - row["active_at"]).total_seconds() >= 1.0  # pending for `for: 1s`
            await host.send(0.5)
            await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="resolved POST")
        await wait_for(lambda: len(events) >= 3, message="alert events on the bus")
    finally:
        listener.cancel()
    assert await history(pool, "root-full") == [("inactive", "pending"), ("pending", "firing"),
                                                 ("firing", "resolved")]
    pending = await pool.fetchrow("SELECT value, active_at, at FROM alert_history WHERE state = 'pending'")
    assert pending["value"] == 0.95
    assert pending["at"] == pending["active_at"]
    assert await pool.fetchval("SELECT count(*) FROM alert_state") == 0
    assert [(e.previous, e.state) for e in events] == [
        (events_pb2.ALERT_STATE_INACTIVE, events_pb2.ALERT_STATE_PENDING),
        (events_pb2.ALERT_STATE_PENDING, events_pb2.ALERT_STATE_FIRING),
        (events_pb2.ALERT_STATE_FIRING, events_pb2.ALERT_STATE_RESOLVED),
    ]
    assert events[0].rule == "root-full"
    assert events[0].host_id == "web-1"

    # Alertmanager's webhook payload.
    first = receiver.posts[0]
    msg = first.body
    assert msg["version"] == "4"
    assert msg["status"] == "firing"
    assert msg["groupLabels"] == {"alertname": "root-full"}
    assert msg["groupKey"] == '{}:{alertname="root-full"}'
    assert msg["externalURL"] == "http://127.0.0.1:8080"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["idempotency-key"].startswith("sysmon-")
    alert = msg["alerts"][0]
    assert alert["labels"] == {"alertname": "root-full", "host": "web-1", "severity": "warning", "team": "infra",
                               "device": "/dev/sda1", "mountpoint": "/"}
    assert alert["annotations"] == {"summary": "web-1: / is 95% full"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"] == receiver.posts[1].body["alerts"][0]["startsAt"]
    assert receiver.posts[1].body["alerts"][0]["endsAt"] > alert["startsAt"]
    assert alert["fingerprint"] == events[0].fingerprint
    # Delivered, once each (pending is never notified), and said so in the outbox.
    delivered = await pool.fetch("SELECT status, attempts, delivered_at FROM alert_notifications ORDER BY id")
    assert [(r["status"], r["attempts"], r["delivered_at"] is not None) for r in delivered] == [
        ("firing", 1, True), ("resolved", 1, True)]


async def test_deleting_a_rule_resolves_its_alert(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    agg, api, alerts = await with_rule(rules, start_alerts, rule_spec(receiver.url))
    async with Host(agg) as host:
        await host.send(0.99)
        await wait_for(lambda: receiver.statuses() == ["firing"], message="firing")
        await api.delete("root-full")
        await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="resolved by the deletion")
        await rule_loaded(alerts.service, "root-full", present=False)
        await host.send(0.99)  # no rule, no alert
    assert receiver.alerts()[1]["annotations"]["resolved_reason"] == "rule removed"
    assert await pool.fetchval("SELECT count(*) FROM alert_state") == 0


async def test_hysteresis_fires_once(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    agg, _, _ = await with_rule(rules, start_alerts, rule_spec(
        receiver.url, condition={"op": ">", "threshold": 0.9, "resolveThreshold": 0.85}))
    async with Host(agg) as host:
        for v in (0.91, 0.89, 0.92, 0.88, 0.905, 0.87):
            await host.send(v)
        await wait_for(lambda: receiver.statuses() == ["firing"], message="one firing")
        await host.send(0.84)
        await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="one resolved")
    assert await history(pool, "root-full") == [("inactive", "firing"), ("firing", "resolved")]


async def test_a_silent_host_raises_no_data(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    agg, _, _ = await with_rule(rules, start_alerts, rule_spec(receiver.url), no_data_after="1s")
    async with Host(agg, "quiet-1") as host:
        await host.send(0.1)
        await wait_for(lambda: receiver.statuses() == ["firing"], within=10, message="no-data alert")
        nodata = receiver.alerts()[0]
        assert nodata["labels"]["alertname"] == "SysmonNoData"
        assert nodata["labels"]["host"] == "quiet-1"
        assert "no data for" in nodata["annotations"]["summary"]
        row = await pool.fetchrow("SELECT rule, host_id, state FROM alert_state")
        assert (row["rule"], row["host_id"], row["state"]) == (NO_DATA_RULE, "quiet-1", "firing")
        await host.send(0.1)
        await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="data again")


async def test_restart_in_the_middle_of_pending(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    agg, _, alerts = await with_rule(rules, start_alerts, rule_spec(receiver.url, **{"for": "2s"}))
    async with Host(agg) as host:
        await host.send(0.95)
        await wait_for(lambda: history(pool, "root-full"), message="pending")
        active_at = await pool.fetchval("SELECT active_at FROM alert_state")
        await alerts.stop()
        # While it is away, samples keep coming; the consumer group keeps them.
        await host.send(0.96)
        await host.send(0.97)
        await start_alerts(agg)
        await wait_for(lambda: receiver.statuses() == ["firing"], message="firing after the restart")
    alert = receiver.alerts()[0]
    assert datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")) == active_at.astimezone(UTC)
    fired_at = await pool.fetchval("SELECT fired_at FROM alert_state")
    assert (fired_at - active_at).total_seconds() >= 2.0
    # Neither forgotten (a second pending with a later active_at) nor fired twice.
    assert await history(pool, "root-full") == [("inactive", "pending"), ("pending", "firing")]


async def test_restart_in_the_middle_of_firing(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    agg, _, alerts = await with_rule(rules, start_alerts, rule_spec(receiver.url))
    async with Host(agg) as host:
        await host.send(0.95)
        await wait_for(lambda: receiver.statuses() == ["firing"], message="firing")
        await alerts.stop()
        await host.send(0.97)  # still firing while the service is away
        await host.send(0.50)  # ...and then not: the restarted service must resolve it
        await start_alerts(agg)
        await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="resolved after restart")
        await host.send(0.4)
    assert await history(pool, "root-full") == [("inactive", "firing"), ("firing", "resolved")]
    assert await pool.fetchval("SELECT count(*) FROM alert_notifications") == 2
    # Every bus message was acknowledged once its effects were stored.
    await wait_for(lambda: _unacked(redis_client, 0), message="every message acknowledged")


async def _unacked(redis: aioredis.Redis, want: int) -> bool:
    return (await redis.xpending("bus:samples", "alerts"))["pending"] == want


async def test_a_receiver_down_then_up_gets_each_notification_once_late(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    down = Receiver()  # its port is reserved; nothing listens there yet
    spec = rule_spec(receiver.url)
    spec["actions"] = [{"webhook": {"url": f"{down.url}/hook", "timeout": "1s"}},
                       {"webhook": {"url": f"{receiver.url}/hook"}}]
    agg, _, _ = await with_rule(rules, start_alerts, spec)
    try:
        async with Host(agg) as host:
            await host.send(0.95)
            # The receiver that is up is not held back by the one that is down.
            await wait_for(lambda: receiver.statuses() == ["firing"], message="the healthy receiver")
            # Evaluation goes on meanwhile.
            await host.send(0.2)
            await wait_for(lambda: receiver.statuses() == ["firing", "resolved"], message="resolved")
            await wait_for(lambda: _attempts_at_least(pool, down.url, 2), message="retries to the one down")
            await down.start()
            await wait_for(lambda: down.statuses() == ["firing", "resolved"], message="delivered once up")
            rows = await wait_for(lambda: _all_delivered(pool, down.url), message="marked delivered")
        assert [r["status"] for r in rows] == ["firing", "resolved"]
        assert rows[0]["attempts"] >= 3  # at least two failures, then the one that went through
        assert down.statuses() == ["firing", "resolved"]  # once each
    finally:
        await down.stop()


async def _attempts_at_least(pool: asyncpg.Pool, url: str, n: int) -> bool:
    got = await pool.fetchval("SELECT coalesce(max(attempts), 0) FROM alert_notifications WHERE receiver = $1",
                              f"webhook:{url}/hook")
    return got >= n


async def _all_delivered(pool: asyncpg.Pool, url: str) -> list[asyncpg.Record] | None:
    rows = await pool.fetch("SELECT status, attempts, last_error, delivered_at FROM alert_notifications "
                            "WHERE receiver = $1 ORDER BY id", f"webhook:{url}/hook")
    return rows if rows and all(r["delivered_at"] is not None for r in rows) else None


async def test_a_refusing_receiver_is_given_up_on_and_counted(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    receiver.status = 400
    agg, _, _ = await with_rule(rules, start_alerts, rule_spec(receiver.url))
    async with Host(agg) as host:
        await host.send(0.95)
        row = await wait_for(lambda: pool.fetchrow(
            "SELECT attempts, gave_up_at, last_error FROM alert_notifications WHERE gave_up_at IS NOT NULL"),
            message="given up")
    assert row["attempts"] == 1
    assert "HTTP 400" in row["last_error"]


async def test_alertmanager_v2_and_log_actions(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sysmon.alerts.notifications")
    spec = rule_spec(severity="critical")
    spec["actions"] = [{"alertmanager": {"url": receiver.url}}, {"log": {"level": "info"}}]
    agg, _, alerts = await with_rule(rules, start_alerts, spec, alertmanager_resend="1m")
    async with Host(agg) as host:
        await host.send(0.95)
        await wait_for(lambda: len(receiver.alerts("/api/v2/alerts")) == 1, message="pushed to Alertmanager")
        posted = receiver.alerts("/api/v2/alerts")[0]
        assert set(posted) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        assert posted["labels"]["severity"] == "critical"
        # A firing alert ends a few resend intervals ahead unless said again.
        assert posted["endsAt"] > datetime.now(UTC).isoformat()
        assert await alerts.service.resend_to_alertmanagers() == 1
        assert len(receiver.alerts("/api/v2/alerts")) == 2
        await host.send(0.1)
        await wait_for(lambda: len(receiver.alerts("/api/v2/alerts")) == 3, message="resolved pushed")
        resolved = receiver.alerts("/api/v2/alerts")[2]
        assert resolved["endsAt"] < datetime.now(UTC).isoformat()
    await wait_for(lambda: sum("RESOLVED" in r.getMessage() for r in caplog.records) == 1, message="logged")
    lines = [r.getMessage() for r in caplog.records if r.name == "sysmon.alerts.notifications"]
    assert any("alert root-full FIRING host=web-1" in m for m in lines)


async def test_health_readiness_and_metrics(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver
) -> None:
    agg, _, alerts = await with_rule(rules, start_alerts, rule_spec(receiver.url))
    endpoint = alerts.service.endpoint
    assert endpoint is not None
    async with httpx.AsyncClient(base_url=endpoint.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "waiting_for": []}
        async with Host(agg) as host:
            await host.send(0.95)
            await wait_for(lambda: receiver.statuses() == ["firing"], message="firing")
        text = await wait_for(lambda: _metrics_with(http, "sysmon_alerts_notifications_sent_total{"),
                              message="metrics")
    for name in ("sysmon_alerts_rules_loaded 1.0", "sysmon_alerts_evaluations_total",
                 'sysmon_alerts_notifications_sent_total{receiver_type="webhook"}',
                 "sysmon_alerts_notifications_failed_total", 'sysmon_alerts_transitions_total{state="firing"}'):
        assert name in text, name


async def _metrics_with(http: httpx.AsyncClient, needle: str) -> str | None:
    text = (await http.get("/metrics")).text
    return text if needle in text else None


async def test_a_new_rules_window_starts_from_the_hot_tier(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver
) -> None:
    agg, api = rules
    alerts = await start_alerts(agg)
    async with Host(agg) as host:
        await host.send(0.05)  # before any rule: only the hot tier keeps it
        await host.send(0.50)
        await wait_for(lambda: "web-1" in alerts.service.state.hosts, message="host seen")
        await api.apply("root-low", rule_spec(receiver.url, aggregation="min", window="5m",
                                              condition={"op": "<", "threshold": 0.1}))
        await rule_loaded(alerts.service, "root-low")
        # min over 5 minutes includes the 0.05 from before the rule existed.
        await host.send(0.50)
        await wait_for(lambda: receiver.statuses() == ["firing"], message="fired on the backfilled window")


async def test_a_host_selector_picks_real_collectors(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    agg, api = rules
    alerts = await start_alerts(agg)
    await api.apply("up-test", {"metric": "system.uptime", "condition": {"op": ">", "threshold": 0},
                                "hostSelector": {"matchLabels": {"env": "test"}},
                                "actions": [{"webhook": {"url": f"{receiver.url}/hook"}}]})
    await api.apply("up-prod", {"metric": "system.uptime", "condition": {"op": ">", "threshold": 0},
                                "hostSelector": {"matchLabels": {"env": "prod"}}})
    await rule_loaded(alerts.service, "up-prod")
    async with running_collector(agg.address, host_id="node-t", labels={"env": "test"}):
        await wait_for(lambda: receiver.statuses() == ["firing"], message="the test host's rule fired")
    assert receiver.alerts()[0]["labels"]["env"] == "test"
    assert await history(pool, "up-prod") == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"condition": {"op": "=>", "threshold": 1}}, "spec.condition.op"),
        ({"condition": {"op": ">", "threshold": 1, "resolveThreshold": 2}}, "spec.condition"),
        ({"annotations": {"summary": "{{ hostname }}"}}, "spec.annotations"),
        ({"actions": [{"webhook": {"url": "http://user:pw@receiver/hook"}}]}, "spec.actions.0.webhook.url"),
        ({"actions": [{"webhook": {"url": "http://receiver/hook"}, "log": {}}]}, "spec.actions.0"),
        ({"for": "2d"}, "spec.for"),
        ({"metric": "no spaces"}, "spec.metric"),
    ],
)
async def test_invalid_rules_are_refused_at_apply(
    rules: tuple[Aggregator, Rules], change: dict[str, Any], field: str
) -> None:
    _, api = rules
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await api.apply("bad", {**rule_spec("http://receiver"), **change})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = e.value.details() or ""
    assert f"AlertRule/bad: {field}:" in details, details
    assert "pw" not in details


async def test_rules_come_from_an_aggregator_that_requires_a_token(
    start_aggregator: AggregatorFactory, start_alerts: AlertsFactory
) -> None:
    agg = await start_aggregator(token="s3cret")
    refused = await start_alerts(agg, wait=False, token="wrong")
    await wait_for(lambda: "UNAUTHENTICATED" in refused.service.feed.last_error, message="refused")
    ready, missing = refused.service.readiness()
    assert not ready
    assert "rules (ConfigService.Watch)" in missing
    await refused.stop()
    accepted = await start_alerts(agg, token="s3cret")
    assert accepted.service.readiness() == (True, [])


async def test_readiness_follows_postgresql_without_anyone_asking(
    rules: tuple[Aggregator, Rules], start_alerts: AlertsFactory, pg_server: Any, pg_dsn: str
) -> None:
    """/readyz and sysmon_alerts_ready say PostgreSQL is gone while it is, whether or not anyone
    calls /readyz and whether or not there is anything to store."""
    from prometheus_client import REGISTRY

    agg, _, alerts = await with_rule(rules, start_alerts, rule_spec())

    def ready_gauge() -> float | None:
        return REGISTRY.get_sample_value("sysmon_alerts_ready")

    await wait_for(lambda: ready_gauge() == 1.0, message="ready")
    from urllib.parse import urlsplit

    db = urlsplit(pg_dsn).path.lstrip("/")
    assert db.startswith("t")  # the test's own database, never one the session shares
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        # Nobody may connect to the test's database (superusers neither), and those connected are thrown out.
        await admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
        await wait_for(lambda: ready_gauge() == 0.0, message="not ready while PostgreSQL refuses")
        ok, missing = alerts.service.readiness()
        assert not ok
        assert "postgresql" in missing
    finally:
        await admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        await admin.close()
    await wait_for(lambda: ready_gauge() == 1.0, within=30, message="ready again")
    assert agg.address
