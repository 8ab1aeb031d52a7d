"""Prometheus remote write into the aggregator's HTTP listener, over real HTTP into real PostgreSQL:
2xx only once committed, 400/401/415 for what a sender must not retry, 429/503 with Retry-After for
what it should, and the series in the REST API."""

from __future__ import annotations

import time

import asyncpg
import httpx
import pytest

from sysmon.core.embedded import free_port
from tests.gateway_helpers import running_gateway
from tests.remote_write_helpers import HEADERS, stored, write_request


def _now_ms() -> int:
    return int(time.time() * 1000) // 1000 * 1000


@pytest.fixture
async def rw(start_aggregator):
    agg = await start_aggregator(http_listen="127.0.0.1:0")
    async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
        yield agg, client


async def test_samples_are_stored_before_the_answer(rw, pg_dsn: str, redis_url: str) -> None:
    _, client = rw
    t0 = _now_ms() - 60_000
    body = write_request([
        ({"__name__": "http_requests_total", "job": "api", "instance": "web-1:9100", "code": "200"},
         [(t0, 10.0), (t0 + 15_000, 25.0), (t0 + 30_000, 40.0)]),
        ({"__name__": "node_memory_MemFree_bytes", "job": "node", "instance": "web-1:9100"},
         [(t0, 1.5e9), (t0 + 15_000, 1.4e9)]),
        # An explicit host label wins over instance.
        ({"__name__": "up", "job": "node", "instance": "10.0.0.7:9100", "host": "db-1"}, [(t0, 1.0)]),
    ])
    r = await client.post("/api/v1/write", content=body, headers=HEADERS)
    assert r.status_code == 204, r.text
    # Committed by the time of the answer: no waiting here.
    assert await stored(pg_dsn, "web-1", "http_requests_total", {"job": "api", "instance": "web-1:9100",
                                                                 "code": "200"}) == [
        (t0, 10.0), (t0 + 15_000, 25.0), (t0 + 30_000, 40.0)]
    assert await stored(pg_dsn, "web-1", "node_memory_MemFree_bytes", {"job": "node", "instance": "web-1:9100"}) \
        == [(t0, 1.5e9), (t0 + 15_000, 1.4e9)]
    assert await stored(pg_dsn, "db-1", "up", {"job": "node", "instance": "10.0.0.7:9100"}) == [(t0, 1.0)]
    conn = await asyncpg.connect(pg_dsn)
    kinds = dict(await conn.fetch("SELECT name, kind FROM series WHERE host_id = 'web-1'"))
    await conn.close()
    assert kinds == {"http_requests_total": 3, "node_memory_MemFree_bytes": 1}  # counter, gauge

    # The same request sent again (a sender's retry) stores nothing twice.
    assert (await client.post("/api/v1/write", content=body, headers=HEADERS)).status_code == 204
    assert len(await stored(pg_dsn, "web-1", "node_memory_MemFree_bytes",
                            {"job": "node", "instance": "web-1:9100"})) == 2

    async with running_gateway(pg_dsn, redis_url) as gw:
        q = await gw.http.get("/api/v1/query", params={"metric": "http_requests_total", "host": "web-1",
                                                       "start": str(t0 // 1000 - 1), "step": "15s"})
        assert q.status_code == 200, q.text
        (series,) = q.json()["series"]
        assert series["attributes"] == {"job": "api", "instance": "web-1:9100", "code": "200"}
        assert series["values"] == [10.0, 25.0, 40.0]
        # The hosts the samples named are hosts of the fleet, on the dashboard's list.
        hosts = {h["host"] for h in (await gw.http.get("/api/v1/hosts")).json()["hosts"]}
        assert {"web-1", "db-1"} <= hosts


async def test_bad_requests_are_answered_4xx_and_valid_samples_kept(rw, pg_dsn: str) -> None:
    _, client = rw
    t0 = _now_ms() - 10_000
    not_snappy = await client.post("/api/v1/write", content=b"\x00garbage", headers=HEADERS)
    assert not_snappy.status_code == 400
    assert "snappy" in not_snappy.json()["detail"]
    gzip = await client.post("/api/v1/write", content=write_request([]), headers={**HEADERS,
                                                                                 "Content-Encoding": "gzip"})
    assert gzip.status_code == 415
    assert "Content-Encoding must be snappy" in gzip.json()["detail"]

    mixed = write_request([
        ({"__name__": "job:requests:rate5m", "instance": "web-2:80"}, [(t0, 1.0)]),  # a recording rule's name
        ({"__name__": "temperature_celsius", "instance": "web-2:80"}, [(t0, 21.5), (t0 - 48 * 3600_000, 20.0)]),
    ])
    r = await client.post("/api/v1/write", content=mixed, headers=HEADERS)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert detail.startswith("2 sample(s) refused")
    assert "job:requests:rate5m" in detail
    assert "outside the accepted window" in detail
    # What was valid is stored all the same.
    assert await stored(pg_dsn, "web-2", "temperature_celsius", {"instance": "web-2:80"}) == [(t0, 21.5)]


async def test_token_required_when_configured(start_aggregator) -> None:
    agg = await start_aggregator(http_listen="127.0.0.1:0", token="s3cret-token-for-tests")
    body = write_request([({"__name__": "up", "instance": "h1:1"}, [(_now_ms(), 1.0)])])
    async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
        missing = await client.post("/api/v1/write", content=body, headers=HEADERS)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.post("/api/v1/write", content=body,
                                  headers={**HEADERS, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.post("/api/v1/write", content=body,
                               headers={**HEADERS, "Authorization": "Bearer s3cret-token-for-tests"})
        assert ok.status_code == 204


async def test_over_budget_is_429_with_retry_after(start_aggregator) -> None:
    agg = await start_aggregator(http_listen="127.0.0.1:0", max_samples_per_second_per_host=1,
                                 max_sample_burst_per_host=3)
    t0 = _now_ms() - 10_000
    body = write_request([({"__name__": "g", "instance": "busy:1"}, [(t0 + i, float(i)) for i in range(5)])])
    async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
        first = await client.post("/api/v1/write", content=body, headers=HEADERS)
        assert first.status_code == 204
        second = await client.post("/api/v1/write", content=body, headers=HEADERS)
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= 1
        assert "over its budget" in second.json()["detail"]


async def test_storage_down_is_503_with_retry_after(start_aggregator) -> None:
    # PostgreSQL that never answers: the aggregator starts, keeps the hot tier, stores nothing.
    dead = f"postgresql://sysmon@127.0.0.1:{free_port()}/sysmon"
    agg = await start_aggregator(http_listen="127.0.0.1:0", postgres_url=dead, wait_storage=False)
    body = write_request([({"__name__": "up", "instance": "h1:1"}, [(_now_ms(), 1.0)])])
    async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
        r = await client.post("/api/v1/write", content=body, headers=HEADERS)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert "PostgreSQL is unavailable" in r.json()["detail"]


async def test_a_hosts_scrape_split_over_parallel_requests_is_stored_whole(rw, pg_dsn: str) -> None:
    # Prometheus shards series over parallel requests: one host's samples of one time arrive in several
    # at once (gathered into one frame when they arrive together, merged into it when not).
    import asyncio

    _, client = rw
    t0 = _now_ms() - 20_000
    shards = [write_request([({"__name__": f"m_{s}", "instance": "sharded:9100", "shard": str(k)},
                              [(t0, float(s)), (t0 + 5000, float(s) + 0.5)]) for s in range(k * 10, k * 10 + 10)])
              for k in range(4)]
    answers = await asyncio.gather(*(client.post("/api/v1/write", content=b, headers=HEADERS) for b in shards))
    assert [a.status_code for a in answers] == [204] * 4
    for k in range(4):
        for s in range(k * 10, k * 10 + 10):
            assert await stored(pg_dsn, "sharded", f"m_{s}", {"instance": "sharded:9100", "shard": str(k)}) == [
                (t0, float(s)), (t0 + 5000, float(s) + 0.5)]


async def test_over_tls_when_the_aggregator_has_a_certificate(start_aggregator, tmp_path, pg_dsn: str) -> None:
    from tests.integration.test_tls import CA

    ca = CA(tmp_path, "rw-test-ca")
    cert = ca.issue("aggregator", server=True)
    agg = await start_aggregator(http_listen="127.0.0.1:0", tls_cert=cert.cert, tls_key=cert.key)
    assert agg.http.url.startswith("https://")
    t = _now_ms()
    body = write_request([({"__name__": "up", "instance": "tls-sender:1"}, [(t, 1.0)])])
    import ssl

    trust = ssl.create_default_context(cafile=str(ca.path))
    async with httpx.AsyncClient(base_url=agg.http.url, verify=trust, timeout=30) as client:
        assert (await client.post("/api/v1/write", content=body, headers=HEADERS)).status_code == 204
    assert await stored(pg_dsn, "tls-sender", "up", {"instance": "tls-sender:1"}) == [(t, 1.0)]
    plain = agg.http.url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain, timeout=10) as client:
        with pytest.raises(httpx.HTTPError):
            await client.post("/api/v1/write", content=body, headers=HEADERS)
