"""The gateway's REST API against real PostgreSQL and Redis, with data written through the real
aggregator (a running collector for the live tiers, a raw gRPC client for history)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from sysmon.aggregator import maintenance
from sysmon.core.embedded import free_port
from tests.gateway_helpers import running_gateway, write_history
from tests.helpers import running_collector, wait_for

PROBLEM = "application/problem+json"


@pytest.fixture
async def history(start_aggregator, pg_dsn: str, redis_url: str):
    """An aggregator holding 3 h of history for hist-host (rolled up), and a live collector web-1."""
    agg = await start_aggregator()
    await write_history(agg.address, "hist-host", hours=3)
    run = await maintenance.rollup_once(agg.storage)
    assert run is not None
    async with running_collector(agg.address, host_id="web-1", labels={"env": "prod", "team": "web"}):
        yield agg


async def test_hosts_list_and_detail(history, pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        async def listed() -> dict[str, Any] | None:
            body = (await gw.http.get("/api/v1/hosts")).json()
            hosts = {h["host"]: h for h in body["hosts"]}
            return hosts if "web-1" in hosts and hosts["web-1"]["status"] == "up" else None

        hosts = await wait_for(listed, message="web-1 listed as up")
        web = hosts["web-1"]
        assert web["labels"] == {"env": "prod", "team": "web"}
        assert web["age_s"] < 30
        # hist-host's newest sample is about a minute old and it has no collector: not "up" for long.
        assert hosts["hist-host"]["last_seen_ms"] is not None

        only_prod = (await gw.http.get("/api/v1/hosts", params={"label": "env=prod"})).json()
        assert [h["host"] for h in only_prod["hosts"]] == ["web-1"]
        assert (await gw.http.get("/api/v1/hosts", params={"label": "env=dev"})).json()["count"] == 0

        async def described() -> dict[str, Any] | None:
            d = (await gw.http.get("/api/v1/hosts/web-1")).json()
            names = {c["metric"] for c in d["current"]}
            return d if {"system.cpu.utilization", "system.memory.usage"} <= names else None

        detail = await wait_for(described, message="web-1's current CPU and memory values")
        assert detail["source"] == "hot"
        mem = [c for c in detail["current"] if c["metric"] == "system.memory.usage"]
        assert all(c["unit"] == "By" and c["value"] >= 0 for c in mem)

        # A host whose hot tier is gone still shows its last values, from PostgreSQL.
        r = aioredis.from_url(redis_url)
        await r.delete("hot:latest:hist-host", "hot:series:hist-host")
        await r.aclose()
        old = (await gw.http.get("/api/v1/hosts/hist-host")).json()
        assert old["source"] == "raw"
        assert {c["value"] for c in old["current"]} == {0.25, 0.75}


async def test_query_chooses_the_tier_by_range_and_says_which(history, pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        async def q(**params: Any) -> dict[str, Any]:
            r = await gw.http.get("/api/v1/query", params=params)
            assert r.status_code == 200, r.text
            return r.json()

        hot = await wait_for(lambda: _points(q(metric="system.cpu.utilization", host="web-1",
                                               match="cpu=total", start="now-1m")), message="hot points")
        assert hot["tier"] == "hot"
        assert {s["attributes"]["cpu"] for s in hot["series"]} == {"total"}

        raw = await q(metric="system.cpu.utilization", host="hist-host", start="now-3h", step="60s")
        assert raw["tier"] == "raw"
        assert raw["step"] == "1m"
        by_cpu = {s["attributes"]["cpu"]: s for s in raw["series"]}
        assert set(by_cpu) == {"0", "1"}
        assert len(by_cpu["0"]["timestamps"]) >= 170  # one sample a minute for three hours
        assert set(by_cpu["0"]["values"]) == {0.25}
        assert by_cpu["0"]["timestamps"] == sorted(by_cpu["0"]["timestamps"])

        week = await q(metric="system.cpu.utilization", host="hist-host", start="now-7d", step="1h")
        assert week["tier"] == "1m"
        assert sum(len(s["values"]) for s in week["series"]) >= 2 * 3
        assert {v for s in week["series"] for v in s["values"]} == {0.25, 0.75}

        quarter = await q(metric="system.cpu.utilization", host="hist-host", start="now-90d", step="1d")
        assert quarter["tier"] == "1h"
        assert {v for s in quarter["series"] for v in s["values"]} == {0.25, 0.75}

        wanted = {"system.cpu.utilization", "system.memory.usage"}

        async def both_metrics() -> dict[str, Any] | None:
            # The wait above saw CPU points only; the memory series may reach the hot tier later, and
            # until then the metric is unknown (404), as a user asking that early is told.
            r = await gw.http.get("/api/v1/query", params={"metric": sorted(wanted), "host": "web-1",
                                                           "start": "now-1m"})
            if r.status_code == 404:
                return None
            assert r.status_code == 200, r.text
            body = r.json()
            return body if {s["metric"] for s in body["series"]} == wanted else None

        both = await wait_for(both_metrics, message="both metrics of web-1 in the hot tier")
        assert {s["metric"] for s in both["series"]} == wanted

        summed = await q(metric="system.cpu.utilization", host="hist-host", start="now-3h", step="1h",
                         sum_by="host")
        assert len(summed["series"]) == 1
        assert summed["series"][0]["attributes"] == {"state": "user"}
        assert summed["series"][0]["values"][-1] == pytest.approx(1.0)

        mx = await q(metric="system.cpu.utilization", host="hist-host", start="now-3h", step="3h", agg="max")
        assert sorted(s["values"][0] for s in mx["series"]) == [0.25, 0.75]


async def _points(coro) -> dict[str, Any] | None:
    body = await coro
    return body if body["series"] and all(s["values"] for s in body["series"]) else None


BAD = [
    ({"metric": "no.such.metric"}, 404, "metric", "unknown metric"),
    ({"metric": "system.cpu.utilization", "host": "nobody"}, 404, "host", "unknown host"),
    ({"metric": "system.cpu.utilization", "start": "now", "end": "now-1h"}, 400, "start", "is not before end"),
    ({"metric": "system.cpu.utilization", "start": "yesterday"}, 400, "start", "is not a time"),
    ({"metric": "system.cpu.utilization", "start": "2025-01-01T00:00:00"}, 400, "start", "no time zone"),
    ({"metric": "system.cpu.utilization", "start": "-5"}, 400, "start", "Unix seconds"),
    ({"metric": "system.cpu.utilization", "end": "now+10000w"}, 400, "end", "must be between"),
    ({"metric": "system.cpu.utilization", "step": "100ms"}, 400, "step", "too small"),
    ({"metric": "system.cpu.utilization", "step": "fast"}, 400, "step", "not a duration"),
    ({"metric": "system.cpu.utilization", "start": "now-7d", "step": "5s"}, 400, "step", "exceeds 11000"),
    ({"metric": "system cpu"}, 400, "metric", "not a metric name"),
    ({"metric": "system.cpu.utilization", "host": "bad host"}, 400, "host", "not a host id"),
    ({"metric": "system.cpu.utilization", "match": "cpu"}, 400, "match", "not key=value"),
    ({"metric": "system.cpu.utilization", "agg": "median"}, 400, "agg", "'avg', 'min' or 'max'"),
    ({"metric": "system.cpu.utilization", "sum_by": "rack"}, 400, "sum_by", "'host'"),
    ({}, 400, "metric", "Field required"),
    ({"metric": [f"m{i}" for i in range(11)]}, 400, "metric", "at most 10"),
]


async def test_bad_query_parameters_are_problems(history, pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        for params, status, param, words in BAD:
            r = await gw.http.get("/api/v1/query", params=params)
            assert r.status_code == status, (params, r.text)
            assert r.headers["content-type"] == PROBLEM
            body = r.json()
            assert body["status"] == status
            assert body["invalid_params"][0]["name"] == param, (params, body)
            assert words in body["detail"], (params, body)
            assert body["type"].startswith("https://sysmon.dev/problems/")


async def test_too_many_series_and_other_resources(history, pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url, max_series=3) as gw:
        # Five memory states, one series each, from web-1's first sample on (once it is stored).
        params = {"metric": "system.memory.usage", "host": "web-1", "start": "now-1m"}
        await wait_for(lambda: _status(gw.http.get("/api/v1/query", params=params), 400),
                       message="the memory query to match more series than allowed")
        r = await gw.http.get("/api/v1/query", params=params)
        assert "more than 3 series" in r.json()["detail"]
        for path, status in [("/api/v1/hosts/nobody", 404), ("/api/v1/hosts/-bad", 400), ("/api/v1/nothing", 404),
                             ("/api/v1/hosts?status=sleeping", 400), ("/api/v1/hosts?label=env", 400),
                             ("/api/v1/alerts?state=gone", 400), ("/api/v1/alerts/history?limit=5000", 400),
                             ("/api/v1/alerts/history?since=soon", 400), ("/api/v1/alerts?host=a%20b", 400)]:
            r = await gw.http.get(path)
            assert r.status_code == status, (path, r.text)
            assert r.headers["content-type"] == PROBLEM
        r = await gw.http.post("/api/v1/hosts")
        assert r.status_code == 405
        assert r.headers["content-type"] == PROBLEM


async def _status(coro, status: int) -> bool:
    return (await coro).status_code == status


async def test_alerts_current_and_history(pool, pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        assert (await gw.http.get("/api/v1/alerts")).json() == {"alerts": [], "count": 0}
        # What the alerts service stores when a rule fires (it owns these tables; the gateway reads them).
        await pool.execute(
            """
            INSERT INTO alert_state (rule, fingerprint, host_id, state, severity, labels, annotations, value,
                                     active_at, fired_at, last_eval_at)
            VALUES ('root-disk-full', 'f1', 'db-1', 'firing', 'critical', '{"mountpoint": "/"}',
                    '{"summary": "db-1: / is 95% full"}', 0.95, now() - interval '3 minutes',
                    now() - interval '1 minute', now()),
                   ('high-load', 'f2', 'db-2', 'pending', 'warning', '{}', '{}', 7.5, now(), NULL, now())
            """
        )
        await pool.execute(
            """
            INSERT INTO alert_history (rule, fingerprint, host_id, state, previous, severity, value, active_at, at)
            SELECT 'root-disk-full', 'f1', 'db-1', s, p, 'critical', 0.95, now() - interval '3 minutes',
                   now() - (interval '1 minute' * n)
            FROM (VALUES ('pending', 'inactive', 3), ('firing', 'pending', 1)) AS v(s, p, n)
            """
        )
        current = (await gw.http.get("/api/v1/alerts")).json()
        assert [(a["rule"], a["state"]) for a in current["alerts"]] == [("root-disk-full", "firing"),
                                                                         ("high-load", "pending")]
        assert current["alerts"][0]["annotations"]["summary"] == "db-1: / is 95% full"
        firing = (await gw.http.get("/api/v1/alerts", params={"state": "firing"})).json()
        assert firing["count"] == 1
        assert (await gw.http.get("/api/v1/alerts", params={"host": "db-2"})).json()["alerts"][0]["rule"] == "high-load"

        hist = (await gw.http.get("/api/v1/alerts/history", params={"limit": 1})).json()
        assert [(a["state"], a["previous"]) for a in hist["alerts"]] == [("firing", "pending")]
        older = (await gw.http.get("/api/v1/alerts/history",
                                   params={"limit": 1, "before_id": hist["next_before_id"]})).json()
        assert [a["state"] for a in older["alerts"]] == ["pending"]
        assert (await gw.http.get("/api/v1/alerts/history", params={"since": "now-2m"})).json()["count"] == 1


async def test_health_readiness_metrics_docs(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        assert (await gw.http.get("/healthz")).json() == {"status": "ok"}
        ready = await gw.http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        await gw.http.get("/api/v1/hosts")
        metrics = (await gw.http.get("/metrics")).text
        assert 'sysmon_gateway_request_seconds_count{method="GET",route="/api/v1/hosts",status="200"}' in metrics
        assert "sysmon_gateway_ws_clients" in metrics
        spec = (await gw.http.get("/openapi.json")).json()
        assert {"/api/v1/hosts", "/api/v1/hosts/{host}", "/api/v1/query", "/api/v1/alerts"} <= set(spec["paths"])
        docs = (await gw.http.get("/docs")).text
        assert "/assets/vendor/swagger-ui/swagger-ui-bundle.js" in docs  # served here, not from a CDN
        assert (await gw.http.get("/assets/vendor/swagger-ui/swagger-ui-bundle.js")).status_code == 200

    # Redis that does not answer: not ready, with the reason; hosts still listed from PostgreSQL.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(pg_dsn, dead) as gw:
        ready = await gw.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == PROBLEM
        assert ready.json()["checks"]["postgres"] == "ok"
        assert ready.json()["checks"]["redis"].startswith("failed")
        assert (await gw.http.get("/api/v1/hosts")).status_code == 200


async def test_token_guards_rest(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url, token="s3cret-token") as gw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            r = await gw.http.get("/api/v1/hosts", headers=headers)
            assert r.status_code == 401
            assert r.headers["content-type"] == PROBLEM
            assert r.headers["www-authenticate"].startswith("Bearer")
        # Bad parameters without a token are still 401: nothing is revealed before authentication.
        assert (await gw.http.get("/api/v1/query", params={"metric": "x y"})).status_code == 401
        ok = await gw.http.get("/api/v1/hosts", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        # Probes, metrics and the dashboard page need no token.
        assert (await gw.http.get("/healthz")).status_code == 200
        assert (await gw.http.get("/metrics")).status_code == 200
        assert (await gw.http.get("/")).status_code == 200


def test_no_token_is_refused_off_loopback() -> None:
    from sysmon.core.settings import GatewaySettings
    from sysmon.gateway.app import ConfigurationError, create_app

    with pytest.raises(ConfigurationError, match="without authentication"):
        create_app(GatewaySettings(postgres_url="postgresql://x/y", listen="0.0.0.0:8080"))
    with pytest.raises(ConfigurationError, match="without authentication"):
        create_app(GatewaySettings(postgres_url="postgresql://x/y", listen="127.0.0.1:8080"))
    # Only `sysmon up` on loopback runs without one.
    create_app(GatewaySettings(postgres_url="postgresql://x/y", listen="127.0.0.1:8080"), loopback_exempt=True)
    with pytest.raises(ConfigurationError):
        create_app(GatewaySettings(postgres_url="postgresql://x/y", listen="0.0.0.0:8080"), loopback_exempt=True)


async def test_dashboard_page_and_assets(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        page = await gw.http.get("/")
        assert page.status_code == 200
        assert "/assets/app.js" in page.text
        for asset in ("/assets/app.js", "/assets/vendor/uPlot.esm.js", "/assets/style.css"):
            r = await gw.http.get(asset)
            assert r.status_code == 200, asset
        assert (await gw.http.get("/assets/nothing.js")).status_code == 404


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
