"""/ws/live against the real aggregator and Redis bus: samples as they are stored, host and alert
events, close codes for bad subscriptions, and a slow client that costs the others nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from sysmon.core import bus as busmod
from sysmon.pb.v1 import events_pb2
from tests.gateway_helpers import live_reader, running_gateway
from tests.helpers import RawClient, make_batch, running_collector, wait_for


def _samples(frames: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "samples" and f["host"] == host]


async def test_live_samples_follow_the_subscription(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    async with running_gateway(pg_dsn, redis_url) as gw, \
            running_collector(agg.address, host_id="web-1"), running_collector(agg.address, host_id="web-2"):
        await wait_for(lambda: _status(gw, "/api/v1/hosts/web-2"), message="web-2 known")
        async with live_reader(gw) as live:
            assert live.ws.subprotocol == "sysmon.v1"
            await wait_for(lambda: live.of("hello"), message="hello")
            assert live.of("hello")[0]["queue"] == 256
            await live.subscribe(hosts=["web-1"], metrics=["system.memory.usage"], match={"state": "used"})
            started = time.time() * 1000
            frames = await wait_for(lambda: _samples(live.frames, "web-1")[2:], message="three samples of web-1")
            assert not _samples(live.frames, "web-2"), "web-2 was not subscribed to"
            for f in frames:
                assert [(s["metric"], s["attributes"], s["unit"]) for s in f["series"]] == [
                    ("system.memory.usage", {"state": "used"}, "By")]
                assert f["series"][0]["v"][0] > 0
                assert f["stored_ms"] >= f["series"][0]["t"][0]
            assert frames[-1]["series"][0]["t"][0] > started - 1000  # new samples, not history

            # A new subscription replaces the old one.
            await live.ws.send(json.dumps({"type": "subscribe", "hosts": ["*"], "metrics": ["system.uptime"]}))
            await wait_for(lambda: {f["host"] for f in _samples(live.frames, "web-2")} == {"web-2"}
                           and _samples(live.frames, "web-2")[-1]["series"][0]["metric"] == "system.uptime",
                           message="web-2's uptime after resubscribing")
            await live.ws.send(json.dumps({"type": "ping"}))
            await wait_for(lambda: live.of("pong"), message="pong")


async def _status(gw, path: str) -> bool:
    return (await gw.http.get(path)).status_code == 200


async def test_host_and_alert_events(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    async with running_gateway(pg_dsn, redis_url) as gw, live_reader(gw) as live:
        await live.subscribe(hosts=["*"], metrics=[], events=["hosts", "alerts"])
        async with running_collector(agg.address, host_id="db-1", labels={"env": "prod"}):
            up = await wait_for(lambda: [f for f in live.of("host") if f["state"] == "up"], message="host up")
            assert up[0]["host"] == "db-1"
            assert up[0]["labels"] == {"env": "prod"}
        await wait_for(lambda: [f for f in live.of("host") if f["state"] == "down"], message="host down")
        assert not live.of("samples"), "no metrics were subscribed to"

        # The alerts service publishes each transition after storing it; the gateway relays it.
        r = aioredis.from_url(redis_url)
        ev = events_pb2.AlertEvent(
            rule="root-disk-full", fingerprint="f1", host_id="db-1", state=events_pb2.ALERT_STATE_FIRING,
            previous=events_pb2.ALERT_STATE_PENDING, severity="critical", value=0.97,
            annotations={"summary": "db-1: / is 97% full"}, active_at_unix_ms=1, time_unix_ms=2,
        )
        await busmod.RedisBus(r).publish(busmod.ALERTS, ev.SerializeToString())
        await r.aclose()
        alert = (await wait_for(lambda: live.of("alert"), message="alert event"))[0]
        assert (alert["rule"], alert["state"], alert["previous"], alert["host"]) == (
            "root-disk-full", "firing", "pending", "db-1")
        assert alert["annotations"]["summary"] == "db-1: / is 97% full"


BAD_MESSAGES = [
    ("not json", 4400, "not JSON"),
    ('["subscribe"]', 4400, "JSON object"),
    ('{"type": "unsubscribe"}', 4400, "unknown message type"),
    ('{"type": "subscribe", "metrics": ["system.uptime"]}', 4400, "at least one host"),
    ('{"type": "subscribe", "hosts": ["bad host"]}', 4400, "not a host id"),
    ('{"type": "subscribe", "hosts": ["*"], "metrics": ["no metric"]}', 4400, "not a metric name"),
    ('{"type": "subscribe", "hosts": ["*"], "colour": "red"}', 4400, "unknown field"),
    ('{"type": "subscribe", "hosts": ["*"], "events": ["weather"]}', 4400, "events"),
    ('{"type": "subscribe", "hosts": "web-1"}', 4400, "list of strings"),
    ('{"type": "subscribe", "hosts": ["ghost-host"]}', 4404, "unknown host 'ghost-host'"),
]


async def test_bad_subscriptions_close_with_a_code_and_reason(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    async with running_gateway(pg_dsn, redis_url) as gw, running_collector(agg.address, host_id="web-1"):
        await wait_for(lambda: _status(gw, "/api/v1/hosts/web-1"), message="web-1 known")
        for message, code, words in BAD_MESSAGES:
            async with websockets.connect(gw.ws_url) as ws:
                await ws.send(message)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await _read_until_closed(ws)
                assert closed.value.rcvd is not None, message
                assert closed.value.rcvd.code == code, message
                assert words in closed.value.rcvd.reason, (message, closed.value.rcvd.reason)
        # A known host is accepted.
        async with live_reader(gw) as live:
            await live.subscribe(hosts=["web-1"], metrics=["*"])


async def _read_until_closed(ws) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def test_token_guards_the_websocket(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url, token="s3cret") as gw:
        for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer nope"}},
                       {"subprotocols": ["sysmon.v1", "base64url.bearer.sysmon.dev.bm9wZQ"]}):
            async with websockets.connect(gw.ws_url, **kwargs) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd.code == 4401
        async with websockets.connect(gw.ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        # Browsers cannot set headers: the token rides in a subprotocol, and the server picks sysmon.v1.
        encoded = base64.urlsafe_b64encode(b"s3cret").decode().rstrip("=")
        async with websockets.connect(gw.ws_url, subprotocols=["sysmon.v1", f"base64url.bearer.sysmon.dev.{encoded}"]
                                      ) as ws:
            assert ws.subprotocol == "sysmon.v1"
            assert json.loads(await ws.recv())["type"] == "hello"


async def test_heartbeats_carry_the_dropped_count(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url, ws_heartbeat="200ms") as gw, live_reader(gw) as live:
        await wait_for(lambda: len(live.of("heartbeat")) >= 2, message="two heartbeats")
        beats = live.of("heartbeat")
        assert beats[0]["dropped"] == 0
        assert beats[1]["t"] > beats[0]["t"]


async def test_one_bus_subscription_serves_every_client(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    r = aioredis.from_url(redis_url)

    async def readers() -> int:
        clients = await r.client_list()
        return sum(1 for c in clients if c.get("cmd") in ("xread", "xreadgroup"))

    async with running_gateway(pg_dsn, redis_url) as gw, running_collector(agg.address, host_id="web-1"):
        await wait_for(lambda: _status(gw, "/api/v1/hosts/web-1"), message="web-1 known")
        async with live_reader(gw) as first:
            await first.subscribe(hosts=["web-1"], metrics=["system.uptime"])
            await wait_for(lambda: _samples(first.frames, "web-1"), message="samples for one client")
            with_one = await readers()
        lives = [live_reader(gw) for _ in range(30)]
        entered = [await cm.__aenter__() for cm in lives]
        try:
            for live in entered:
                await live.subscribe(hosts=["web-1"], metrics=["system.uptime"])
            await wait_for(lambda: all(_samples(live.frames, "web-1") for live in entered),
                           message="every client gets samples")
            # The gateway's three topic readers (and the aggregator's own), not one per client.
            assert await readers() == with_one
        finally:
            for cm in lives:
                await cm.__aexit__(None, None, None)
    await r.aclose()


async def test_a_slow_client_loses_its_oldest_frames_and_slows_nobody(start_aggregator, pg_dsn: str,
                                                                      redis_url: str) -> None:
    agg = await start_aggregator()
    series = 2000  # about 200 kB of JSON per frame: the slow client's socket buffers fill quickly
    waves, per_wave = 24, 4
    async with running_gateway(pg_dsn, redis_url, ws_queue_frames=8) as gw, \
            RawClient(agg.address, host_id="burst", session_id="b1") as raw:
        seq = 1
        raw.send(make_batch("burst", "b1", seq, values=tuple(0.5 for _ in range(series))))
        await wait_for(lambda: _status(gw, "/api/v1/hosts/burst"), message="burst host known")
        sub = {"hosts": ["burst"], "metrics": ["system.cpu.utilization"]}
        async with live_reader(gw) as fast, websockets.connect(gw.ws_url, max_queue=1, compression=None) as slow:
            await fast.subscribe(**sub)
            await slow.send(json.dumps({"type": "subscribe", **sub}))
            assert json.loads(await slow.recv())["type"] == "hello"
            assert json.loads(await slow.recv())["type"] == "subscribed"
            # From here on the slow client reads nothing. The fast one gets every wave, in order.
            for _ in range(waves):
                for _ in range(per_wave):
                    seq += 1
                    raw.send(make_batch("burst", "b1", seq, declare=False,
                                        values=tuple(float(seq) for _ in range(series))))
                await wait_for(lambda s=seq: any(f["seq"] == s for f in _samples(fast.frames, "burst")),
                               message=f"the fast client to receive batch {seq}")
            got = [f["seq"] for f in _samples(fast.frames, "burst")]
            assert got == sorted(got)
            assert set(range(2, seq + 1)) <= set(got)
            assert not fast.of("dropped")

            # Now the slow client reads: it was told how many frames it lost, and it still gets the newest.
            dropped, seen = [], []
            async with asyncio.timeout(60):
                while seq not in seen:
                    f = json.loads(await slow.recv())
                    if f["type"] == "dropped":
                        dropped.append(f)
                    elif f["type"] == "samples":
                        seen.append(f["seq"])
            assert dropped
            assert dropped[0]["count"] > 0
            assert len(seen) < seq - 1
            metrics = (await gw.http.get("/metrics")).text
            line = next(x for x in metrics.splitlines() if x.startswith("sysmon_gateway_ws_dropped_frames_total "))
            assert float(line.split()[1]) >= dropped[0]["count"]
